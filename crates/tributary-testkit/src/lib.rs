#![doc = include_str!("../README.md")]

pub mod broker;
pub mod checker;
pub mod event_store;
pub mod files;
mod given;
pub mod logs;
pub mod messaging;
pub mod sample;
pub mod servers;

pub use given::{AggregateFixture, AggregateOutcome, given};

/// Re-exported for the conformance macros.
#[doc(hidden)]
pub use tokio;
