//! The wire form of saga commands and replies: ordinary envelopes on topics.
//!
//! A command's data is `{"saga": <header>, "command": <the step's payload>}`; the header names
//! the saga, the step, whether it is a compensation, and the topic to reply on. A reply is an
//! envelope of type [`REPLY_TYPE`] whose data is `{"saga": <the command's header>, "outcome":
//! "succeeded" | "failed", "reason": …, "data": …}`. Both carry `correlationid` = the saga id
//! and `subject` = the saga id; a reply's `causationid` is the id of the command it answers,
//! which is how the orchestrator tells the reply it waits for from a late or duplicate one.
//!
//! Forward commands are keyed by the saga id, so a participant sees a saga's commands in the
//! order they were sent. Compensations are keyed apart (`<saga id>/compensation`): a forward
//! command that was dead-lettered parks later messages with its key, and must not park the
//! compensation that undoes the saga. The participant helper makes the two orders safe (see
//! `participant`).

use serde::{Deserialize, Serialize};
use tributary_core::{Envelope, Error, Payload, Result, Topic};

use crate::definition::Command;
use crate::instance::SagaId;

/// The event type of every reply.
pub const REPLY_TYPE: &str = "SagaReply";

/// What a command says about the saga that sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaCommandHeader {
    pub saga_type: String,
    pub saga_id: SagaId,
    pub step: usize,
    pub step_name: String,
    pub compensation: bool,
    pub attempt: u32,
    pub reply_to: Topic,
}

#[derive(Serialize, Deserialize)]
struct CommandBody {
    saga: SagaCommandHeader,
    command: serde_json::Value,
}

/// How a participant answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// A reply's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyBody {
    pub saga: SagaCommandHeader,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// The envelope of `command`, sent by `source` for the step named in `header`, caused by
/// `cause` (the reply, deadline or timer that made the orchestrator send it).
pub(crate) fn command_envelope(
    source: &str,
    header: SagaCommandHeader,
    command: &Command,
    cause: Option<String>,
) -> Result<Envelope> {
    let key = if header.compensation {
        format!("{}/compensation", header.saga_id)
    } else {
        header.saga_id.to_string()
    };
    let saga_id = header.saga_id.to_string();
    let body = CommandBody {
        saga: header,
        command: command.payload.to_value(),
    };
    let mut envelope = Envelope::new(
        source,
        command.command_type.clone(),
        Payload::from_value(&body)?,
    )
    .with_subject(saga_id.clone())
    .with_partition_key(key);
    envelope.correlation_id = Some(saga_id);
    envelope.causation_id = cause;
    Ok(envelope)
}

/// A saga command as a participant receives it.
#[derive(Clone, Debug)]
pub struct SagaCommand {
    pub header: SagaCommandHeader,
    pub command_type: String,
    pub payload: Payload,
}

impl SagaCommand {
    /// # Errors
    /// [`Error::Decode`] when `envelope` is not a saga command.
    pub fn from_envelope(envelope: &Envelope) -> Result<Self> {
        let body: CommandBody = envelope.data.decode()?;
        Ok(Self {
            header: body.saga,
            command_type: envelope.event_type.clone(),
            payload: Payload::from_value(&body.command)?,
        })
    }
}

/// The reply to `command` (its envelope), from `source`.
pub(crate) fn reply_envelope(
    source: &str,
    command: &Envelope,
    header: &SagaCommandHeader,
    outcome: Outcome,
    reason: Option<String>,
    data: serde_json::Value,
) -> Result<Envelope> {
    let body = ReplyBody {
        saga: header.clone(),
        outcome,
        reason,
        data,
    };
    let saga_id = header.saga_id.to_string();
    let mut envelope = Envelope::new(source, REPLY_TYPE, Payload::from_value(&body)?)
        .with_subject(saga_id.clone())
        .with_partition_key(saga_id.clone());
    envelope.correlation_id = Some(saga_id);
    envelope.causation_id = Some(command.id.to_string());
    envelope.traceparent = command.traceparent.clone();
    Ok(envelope)
}

/// A reply as the orchestrator receives it.
pub(crate) struct Reply {
    pub body: ReplyBody,
    pub command_id: String,
}

impl Reply {
    pub fn from_envelope(envelope: &Envelope) -> Result<Self> {
        if envelope.event_type != REPLY_TYPE {
            return Err(Error::invalid(format!(
                "a saga reply has type {REPLY_TYPE}, not {:?}",
                envelope.event_type
            )));
        }
        let body: ReplyBody = envelope.data.decode()?;
        let command_id = envelope
            .causation_id
            .clone()
            .ok_or_else(|| Error::invalid("a saga reply without causationid (the command id)"))?;
        Ok(Self { body, command_id })
    }
}
