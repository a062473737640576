#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod bench;
mod broker;
mod config;
mod consumer;
mod last_messages;
mod naming;

pub use broker::NatsBroker;
pub use config::{NatsBrokerConfig, NatsStorage};
pub use naming::{KEY_HEADER, MAX_PARTITIONS};
