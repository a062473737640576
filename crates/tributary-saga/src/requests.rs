//! Cancels and retries asked for from outside the orchestrator's process. `tributary sagas
//! cancel|retry` knows a deployment only by its database URL, not the saga's definition, which
//! compensating or resending needs. A request is a document in the orchestrator's own
//! database; the running [`crate::Orchestrator`] of the saga's type performs it in one unit
//! with the saga's new state (so it is done exactly once) and records the outcome in the same
//! document, where the requester reads it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tributary_core::{Database, Error, Result, UnitOfWork, UnitOfWorkExt};

use crate::instance::{SAGAS, SagaId, SagaInstance, SagaState};

/// The collection requests are kept in, one document per saga (a new request replaces the
/// saga's earlier one).
pub const SAGA_REQUESTS: &str = "tributary_saga_requests";

/// What an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SagaAction {
    /// Compensate what the saga did, as [`crate::Orchestrator::cancel`].
    Cancel { reason: String },
    /// Run the current step or compensation again, as [`crate::Orchestrator::retry`].
    Retry,
}

/// Where a request is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for a running orchestrator of the saga's type.
    Requested,
    /// Performed: the saga's timeline shows it.
    Done { at: DateTime<Utc> },
    /// The orchestrator refused it (e.g. a cancel past the pivot); nothing changed.
    Refused { at: DateTime<Utc>, reason: String },
}

/// A request and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaRequest {
    pub saga_id: SagaId,
    pub saga_type: String,
    pub requested_at: DateTime<Utc>,
    /// Nested, not flattened: both the action and the outcome can carry a `reason`.
    pub action: SagaAction,
    pub state: RequestState,
}

impl SagaRequest {
    pub fn is_pending(&self) -> bool {
        self.state == RequestState::Requested
    }
}

/// Records `action` for saga `id`, for its orchestrator to perform.
///
/// # Errors
/// [`Error::InvalidInput`] for an unknown saga or one that has finished; storage errors.
pub(crate) async fn request(
    db: &Arc<dyn Database>,
    id: &SagaId,
    action: SagaAction,
) -> Result<SagaRequest> {
    let inst: SagaInstance = db
        .get_document_as(SAGAS, id.as_str())
        .await?
        .ok_or_else(|| Error::invalid(format!("no saga {id}")))?;
    let refusal = match (&action, inst.state) {
        (SagaAction::Cancel { .. }, state) if state.is_final() => Some("nothing to cancel"),
        (SagaAction::Retry, SagaState::Completed | SagaState::Compensated) => {
            Some("nothing to retry")
        }
        _ => None,
    };
    if let Some(refusal) = refusal {
        return Err(Error::invalid(format!(
            "saga {id} is {}: {refusal}",
            inst.state.as_str()
        )));
    }
    let request = SagaRequest {
        saga_id: id.clone(),
        saga_type: inst.saga_type,
        requested_at: Utc::now(),
        action,
        state: RequestState::Requested,
    };
    let doc = request.clone();
    db.transact(move |unit: &mut dyn UnitOfWork| {
        Box::pin(async move { unit.put_as(SAGA_REQUESTS, doc.saga_id.as_str(), &doc).await })
    })
    .await?;
    Ok(request)
}

/// The latest request for saga `id`, with its outcome.
///
/// # Errors
/// Storage errors; [`Error::Decode`] for a document that is not a request.
pub(crate) async fn get(db: &Arc<dyn Database>, id: &SagaId) -> Result<Option<SagaRequest>> {
    db.get_document_as(SAGA_REQUESTS, id.as_str()).await
}

/// The pending requests for sagas of `saga_type`, oldest first.
///
/// # Errors
/// Storage errors.
pub(crate) async fn pending(db: &Arc<dyn Database>, saga_type: &str) -> Result<Vec<SagaRequest>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = db
            .list_documents(SAGA_REQUESTS, after.as_deref(), 500)
            .await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (_, doc) in page {
            let request: SagaRequest = doc.decode()?;
            if request.is_pending() && request.saga_type == saga_type {
                out.push(request);
            }
        }
    }
    out.sort_by_key(|r| r.requested_at);
    Ok(out)
}

/// Marks `request` as performed or refused, in `unit`.
pub(crate) async fn record(
    unit: &mut dyn UnitOfWork,
    request: &SagaRequest,
    state: RequestState,
) -> Result<()> {
    let done = SagaRequest {
        state,
        ..request.clone()
    };
    unit.put_as(SAGA_REQUESTS, request.saga_id.as_str(), &done)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_cancel_keeps_both_reasons_through_storage() {
        let request = SagaRequest {
            saga_id: "s-1".parse().unwrap(),
            saga_type: "T".into(),
            requested_at: Utc::now(),
            action: SagaAction::Cancel {
                reason: "customer called".into(),
            },
            state: RequestState::Refused {
                at: Utc::now(),
                reason: "past the pivot".into(),
            },
        };
        let stored = serde_json::to_string(&request).unwrap();
        let read: SagaRequest = serde_json::from_str(&stored).unwrap();
        assert_eq!(read, request);
    }
}
