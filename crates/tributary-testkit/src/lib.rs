#![doc = include_str!("../README.md")]

pub mod event_store;
mod given;
pub mod sample;

pub use given::{AggregateFixture, AggregateOutcome, given};

/// Re-exported for the conformance macros.
#[doc(hidden)]
pub use tokio;
