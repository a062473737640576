//! The saga instance as it is stored: one document per saga in the orchestrator's database,
//! written in the same unit of work as the commands it sends and the deadlines it sets.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tributary_core::{Error, EventId, Result};

use crate::definition::StepKind;

/// The collection holding saga instances (id = the saga id).
pub const SAGAS: &str = "tributary_sagas";

/// The longest saga id accepted.
pub const MAX_SAGA_ID_LEN: usize = 128;

/// The id of one saga instance; also the `correlationid` of every command and reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SagaId(String);

impl SagaId {
    /// A fresh UUIDv7 id (ordered by creation).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// An id chosen by the caller (e.g. the order id), so that starting twice is noticed.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty id, one longer than [`MAX_SAGA_ID_LEN`], or one
    /// with a control character or `:` (deadline keys use it as a separator).
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty()
            || id.len() > MAX_SAGA_ID_LEN
            || id.chars().any(|c| c.is_control() || c == ':')
        {
            return Err(Error::invalid(format!(
                "a saga id must be 1 to {MAX_SAGA_ID_LEN} characters without ':' or control characters, got {id:?}"
            )));
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SagaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SagaId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// Where a saga is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    /// Going forward through its steps.
    Running,
    /// A step failed: undoing the completed compensatable steps in reverse order.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed and every completed step was undone.
    Compensated,
    /// A compensation kept failing: an operator must look (`SagaAdmin`, `tributary sagas`).
    CompensationFailed,
}

impl SagaState {
    pub const ALL: [SagaState; 5] = [
        SagaState::Running,
        SagaState::Compensating,
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::CompensationFailed,
    ];

    /// Whether the saga ended (nothing more happens without an operator).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SagaState::Completed | SagaState::Compensated | SagaState::CompensationFailed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::Completed => "completed",
            SagaState::Compensated => "compensated",
            SagaState::CompensationFailed => "compensation_failed",
        }
    }
}

impl std::str::FromStr for SagaState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.replace('-', "_").to_ascii_lowercase().as_str() {
            "running" => SagaState::Running,
            "compensating" => SagaState::Compensating,
            "completed" => SagaState::Completed,
            "compensated" => SagaState::Compensated,
            "compensation_failed" | "compensationfailed" => SagaState::CompensationFailed,
            _ => {
                return Err(Error::invalid(format!(
                    "unknown saga state {s:?} (running, compensating, completed, compensated, compensation_failed)"
                )));
            }
        })
    }
}

/// What the saga waits for now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Awaiting {
    /// The command sent (a reply's `causationid` must name it) or the retry timer set.
    pub message_id: EventId,
    pub what: AwaitKind,
    /// When the wait ends by itself: the step's deadline, or when to try again.
    pub due: Option<DateTime<Utc>>,
    /// The deadline document, deleted in the unit that ends the wait.
    pub deadline_key: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AwaitKind {
    /// The reply to a command.
    Reply,
    /// The time to run the current step (or compensation) again.
    Retry,
    /// The end of the time the whole saga may take.
    Saga,
}

/// One line of a saga's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    /// The step index the entry is about (none for the saga as a whole).
    pub step: Option<usize>,
    pub what: String,
    /// The message concerned (command, reply, deadline or timer id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The stored saga instance, with its data as JSON (typed by its definition).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaInstance {
    pub id: SagaId,
    pub saga_type: String,
    pub state: SagaState,
    /// The step being run, or (while compensating) the step being undone; equal to the step
    /// count once completed.
    pub step: usize,
    pub step_name: Option<String>,
    pub step_kind: Option<StepKind>,
    pub compensating: bool,
    /// Attempts of the current step or compensation (1 for the first).
    pub attempt: u32,
    pub data: serde_json::Value,
    pub awaiting: Option<Awaiting>,
    /// Why the saga compensates, or why a compensation failed.
    pub failure: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub history: Vec<HistoryEntry>,
    /// The pending deadline of the saga as a whole, if its definition has one.
    #[serde(default)]
    pub saga_deadline: Option<SagaDeadline>,
}

/// The stored deadline of a whole saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaDeadline {
    pub message_id: EventId,
    pub due: DateTime<Utc>,
    pub deadline_key: String,
}

impl SagaInstance {
    pub(crate) fn record(
        &mut self,
        at: DateTime<Utc>,
        step: Option<usize>,
        what: &str,
        message_id: Option<&EventId>,
        detail: Option<String>,
    ) {
        self.updated_at = at;
        self.history.push(HistoryEntry {
            at,
            step,
            what: what.to_owned(),
            message_id: message_id.map(ToString::to_string),
            detail,
        });
    }
}
