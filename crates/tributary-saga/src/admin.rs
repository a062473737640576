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

/// The state [`SagaAdmin::counts`] gives sagas that cannot be read (type `?`).
pub const UNREADABLE: &str = "unreadable";

/// What [`SagaAdmin::scan`] found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SagaListing {
    pub sagas: Vec<SagaSummary>,
    pub unreadable: Vec<UnreadableSaga>,
}

/// A saga document that could not be decoded, and why.
#[derive(Clone, Debug, Serialize)]
pub struct UnreadableSaga {
    pub id: String,
    pub error: String,
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

    /// The sagas `filter` selects, oldest first (by start), and every saga document that
    /// cannot be read (written by a newer version, or damaged): one bad saga neither hides
    /// the others nor disappears from view.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn scan(&self, filter: &SagaFilter) -> Result<SagaListing> {
        let now = Utc::now();
        let mut listing = SagaListing::default();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .db
                .list_documents(SAGAS, after.as_deref(), 1000)
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (id, doc) in page {
                match doc.decode::<SagaInstance>() {
                    Ok(inst) if filter.matches(&inst, now) => {
                        listing.sagas.push(SagaSummary::from(&inst));
                    }
                    Ok(_) => {}
                    Err(e) => listing.unreadable.push(UnreadableSaga {
                        id,
                        error: e.to_string(),
                    }),
                }
            }
        }
        listing
            .sagas
            .sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        Ok(listing)
    }

    /// The sagas `filter` selects, oldest first (by start).
    ///
    /// # Errors
    /// Storage errors, and [`tributary_core::Error::Decode`] naming the first saga that cannot
    /// be read (see [`SagaAdmin::scan`] to list around it).
    pub async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaSummary>> {
        let listing = self.scan(filter).await?;
        if let Some(bad) = listing.unreadable.first() {
            return Err(tributary_core::Error::decode(
                format!("saga {}", bad.id),
                bad.error.clone(),
            ));
        }
        Ok(listing.sagas)
    }

    /// How many sagas are in each (type, state).
    ///
    /// # Errors
    /// As [`SagaAdmin::list`].
    pub async fn counts(&self) -> Result<BTreeMap<(String, &'static str), u64>> {
        let mut counts = BTreeMap::new();
        let listing = self.scan(&SagaFilter::default()).await?;
        for s in listing.sagas {
            *counts.entry((s.saga_type, s.state.as_str())).or_insert(0) += 1;
        }
        if !listing.unreadable.is_empty() {
            counts.insert(
                (String::from("?"), UNREADABLE),
                listing.unreadable.len() as u64,
            );
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
