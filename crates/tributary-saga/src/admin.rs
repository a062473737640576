//! Listing and inspecting saga instances in a service's database, by type, state and age,
//! without the saga's definition (what an operator's tool has).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tributary_core::{Database, Result};

use crate::deadlines::{Deadline, deadlines_collection};
use crate::instance::{SAGAS, SagaId, SagaInstance, SagaState};
use crate::requests::{self, SagaAction, SagaRequest};

/// Which sagas to list.
#[derive(Clone, Debug, Default)]
pub struct SagaFilter {
    pub saga_type: Option<String>,
    pub state: Option<SagaState>,
    /// Only sagas that have not finished and have not moved for at least this long.
    pub stuck_for: Option<Duration>,
}

impl SagaFilter {
    pub fn with_type(mut self, saga_type: impl Into<String>) -> Self {
        self.saga_type = Some(saga_type.into());
        self
    }
    pub fn with_state(mut self, state: SagaState) -> Self {
        self.state = Some(state);
        self
    }
    pub fn with_stuck_for(mut self, d: Duration) -> Self {
        self.stuck_for = Some(d);
        self
    }

    fn matches(&self, inst: &SagaInstance, now: DateTime<Utc>) -> bool {
        self.saga_type.as_ref().is_none_or(|t| *t == inst.saga_type)
            && self.state.is_none_or(|s| s == inst.state)
            && self.stuck_for.is_none_or(|d| {
                !inst.state.is_final()
                    && now - inst.updated_at
                        >= chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
            })
    }
}

/// One line of a saga listing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SagaSummary {
    pub id: SagaId,
    pub saga_type: String,
    pub state: SagaState,
    pub step: usize,
    pub step_name: Option<String>,
    pub attempt: u32,
    pub failure: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&SagaInstance> for SagaSummary {
    fn from(i: &SagaInstance) -> Self {
        Self {
            id: i.id.clone(),
            saga_type: i.saga_type.clone(),
            state: i.state,
            step: i.step,
            step_name: i.step_name.clone(),
            attempt: i.attempt,
            failure: i.failure.clone(),
            started_at: i.started_at,
            updated_at: i.updated_at,
        }
    }
}

/// Reads the saga instances of one service's database.
pub struct SagaAdmin {
    db: Arc<dyn Database>,
}

impl SagaAdmin {
    pub fn new(db: Arc<dyn Database>) -> Self {
        Self { db }
    }

    /// The sagas `filter` selects, oldest first (by start).
    ///
    /// # Errors
    /// Storage errors, or [`tributary_core::Error::Decode`] for a stored instance that is not
    /// one.
    pub async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaSummary>> {
        let now = Utc::now();
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .db
                .list_documents(SAGAS, after.as_deref(), 1000)
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (_, doc) in page {
                let inst: SagaInstance = doc.decode()?;
                if filter.matches(&inst, now) {
                    out.push(SagaSummary::from(&inst));
                }
            }
        }
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// How many sagas are in each (type, state).
    ///
    /// # Errors
    /// As [`SagaAdmin::list`].
    pub async fn counts(&self) -> Result<BTreeMap<(String, &'static str), u64>> {
        let mut counts = BTreeMap::new();
        for s in self.list(&SagaFilter::default()).await? {
            *counts.entry((s.saga_type, s.state.as_str())).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Asks the running orchestrator of saga `id`'s type to cancel it (compensate what it
    /// did); [`SagaAdmin::request`] tells when it was done or refused.
    ///
    /// # Errors
    /// [`tributary_core::Error::InvalidInput`] for an unknown or finished saga; storage
    /// errors.
    pub async fn request_cancel(&self, id: &SagaId, reason: &str) -> Result<SagaRequest> {
        let action = SagaAction::Cancel {
            reason: reason.to_owned(),
        };
        requests::request(&self.db, id, action).await
    }

    /// Asks the running orchestrator of saga `id`'s type to run its current step or
    /// compensation again (also after `CompensationFailed`).
    ///
    /// # Errors
    /// [`tributary_core::Error::InvalidInput`] for an unknown saga or one that completed or
    /// was compensated; storage errors.
    pub async fn request_retry(&self, id: &SagaId) -> Result<SagaRequest> {
        requests::request(&self.db, id, SagaAction::Retry).await
    }

    /// The latest operator request for saga `id`, with its outcome.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn request(&self, id: &SagaId) -> Result<Option<SagaRequest>> {
        requests::get(&self.db, id).await
    }

    /// Saga `id` with its whole history.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn show(&self, id: &SagaId) -> Result<Option<SagaInstance>> {
        self.db.get_document_as(SAGAS, id.as_str()).await
    }

    /// The pending deadlines of `saga_type`, earliest first (at most `max`).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn deadlines(&self, saga_type: &str, max: usize) -> Result<Vec<Deadline>> {
        self.db
            .list_documents(&deadlines_collection(saga_type), None, max)
            .await?
            .into_iter()
            .map(|(_, doc)| doc.decode())
            .collect()
    }
}
