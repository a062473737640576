#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod conn;
mod error;
mod guard;
mod head;
mod limits;
mod reply;
mod server;
mod service;
mod trace;

pub use error::{Error, Result};
pub use limits::HttpLimits;
pub use server::{bind, serve};
