#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod admin;
mod deadlines;
pub mod definition;
mod engine;
mod instance;
pub mod lock;
mod message;
mod orchestrator;
mod participant;
mod requests;

pub use admin::{SagaAdmin, SagaFilter, SagaListing, SagaSummary, UNREADABLE, UnreadableSaga};
pub use deadlines::{Clock, Deadline, DeadlineOutcome, deadlines_collection};
pub use definition::{
    AfterPivot, BeforePivot, Command, Compensation, DefinedStep, LocalError, SagaBuilder, SagaData,
    SagaDefinition, Step, StepKind, reply_topic,
};
pub use instance::{
    AwaitKind, Awaiting, HistoryEntry, MAX_SAGA_ID_LEN, SAGAS, SagaDeadline, SagaId, SagaInstance,
    SagaState,
};
pub use message::{Outcome, REPLY_TYPE, ReplyBody, SagaCommand, SagaCommandHeader};
pub use orchestrator::{Orchestrator, OrchestratorConfig, SAGAS_GAUGE, Started};
pub use participant::{PARTICIPANT_MARKERS, Participant, Reply};
pub use requests::{RequestState, SAGA_REQUESTS, SagaAction, SagaRequest};
