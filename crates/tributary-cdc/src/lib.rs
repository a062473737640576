#![doc = include_str!("../README.md")]

mod lsn;
pub mod pgoutput;

pub use lsn::{Lsn, ParseLsnError};
pub use pgoutput::{DecodeError, PgOutputDecoder, PgOutputMessage, Row, RowChange, decode_message};
