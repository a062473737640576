#![doc = include_str!("../README.md")]

mod backoff;
mod consumer;
mod dead_letters;
#[cfg(test)]
mod faulty_broker;
mod handler;
mod health;
pub mod metrics;
mod projector;
mod relay;
mod replay_requests;
mod retry;
mod trace;
mod view;

pub use backoff::Backoff;
pub use consumer::{Consumer, ConsumerConfig};
pub use dead_letters::{DeadLetterAdmin, ReplayOutcome};
pub use handler::{Dispatch, Handler, handler_fn};
pub use health::{Health, HealthState};
pub use projector::{Projector, ProjectorConfig};
pub use relay::{Relay, RelayConfig, RelayStats};
pub use replay_requests::{
    REPLAY_REQUESTS, ReplayRequest, ReplayState, replay_request, request_replay,
};
pub use tributary_core::HandlerError;
pub use view::{View, WaitError};

pub use tokio_util::sync::CancellationToken;
