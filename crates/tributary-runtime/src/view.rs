//! Reading your own writes: waiting until a view — a consumer group's or a projector's — has
//! applied the writes a [`ConsistencyToken`] names.
//!
//! A consumer group answers from its inbox (one indexed read per entry of the token that
//! concerns it); entries for topics the group does not read are not its concern and are left
//! out. A projector answers from its checkpoint: it applies its event store in global order,
//! so an event is applied once the checkpoint is at or past the event's position (one indexed
//! read per entry); writes its store does not hold (events published elsewhere) and follow-ups
//! are not its concern. Either view is woken by its own database's commits, so a wait costs
//! nothing while nothing changes and ends as soon as the last write it waits for is applied.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tributary_core::backend::{Pending, PendingReason};
use tributary_core::{
    ConsistencyToken, Database, Error, GroupName, Position, TokenEntry, Topic, name_hash,
};

/// Why a wait ended without every write applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The view had not applied these writes when the time was up.
    #[error("the view has not applied {} of the writes after {waited:?}", pending.len())]
    Timeout {
        pending: Vec<Pending>,
        waited: Duration,
    },
    /// A write was dead-lettered by the view: it will not be applied until an operator
    /// replays it.
    #[error("the view dead-lettered a write it was asked to wait for")]
    DeadLettered { pending: Vec<Pending> },
    /// The view's database could not be read.
    #[error(transparent)]
    Store(#[from] Error),
}

impl WaitError {
    /// The writes still pending, and why.
    pub fn pending(&self) -> &[Pending] {
        match self {
            WaitError::Timeout { pending, .. } | WaitError::DeadLettered { pending } => pending,
            WaitError::Store(_) => &[],
        }
    }
}

/// A view kept by a consumer group or a projector, for readers that must see their own
/// writes: [`Consumer::view`](crate::Consumer::view), [`Projector::view`](crate::Projector::view).
#[derive(Clone)]
pub struct View {
    db: Arc<dyn Database>,
    keeper: Keeper,
}

/// Who keeps the view, and so how it knows what it applied.
#[derive(Clone)]
enum Keeper {
    /// A consumer group: its inbox records each message it dealt with.
    Group {
        group: GroupName,
        topics: HashSet<u64>,
    },
    /// A projector: its checkpoint is the position of the last event it applied.
    Projection { checkpoint: String },
}

impl View {
    /// The view `group` keeps in `db` from `topics` (the group's own topics).
    pub fn new(db: Arc<dyn Database>, group: GroupName, topics: &[Topic]) -> Self {
        Self {
            db,
            keeper: Keeper::Group {
                group,
                topics: topics.iter().map(|t| name_hash(t.as_str())).collect(),
            },
        }
    }

    /// The view a projector keeps in `db` under the checkpoint named `checkpoint`.
    pub(crate) fn of_projection(db: Arc<dyn Database>, checkpoint: String) -> Self {
        Self {
            db,
            keeper: Keeper::Projection { checkpoint },
        }
    }

    /// The entries of `token` this view may be concerned with: for a consumer group, writes
    /// and follow-ups on its topics; for a projector, writes (those its store does not hold
    /// are left out when the view is asked).
    pub fn concerned(&self, token: &ConsistencyToken) -> Vec<TokenEntry> {
        token
            .entries()
            .iter()
            .filter(|e| match &self.keeper {
                Keeper::Group { topics, .. } => topics.contains(&e.topic()),
                Keeper::Projection { .. } => matches!(e, TokenEntry::Write { .. }),
            })
            .copied()
            .collect()
    }

    /// What of `token` the view has not applied yet (empty: everything it is concerned with).
    ///
    /// # Errors
    /// When the view's database cannot be read.
    pub async fn pending(&self, token: &ConsistencyToken) -> Result<Vec<Pending>, Error> {
        self.pending_of(&self.concerned(token)).await
    }

    async fn pending_of(&self, entries: &[TokenEntry]) -> Result<Vec<Pending>, Error> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        match &self.keeper {
            Keeper::Group { group, .. } => self.db.pending(group, entries).await,
            Keeper::Projection { checkpoint } => {
                let applied = self.db.checkpoint(checkpoint).await?;
                let store = self.db.event_store();
                let mut pending = Vec::new();
                for entry in entries {
                    let TokenEntry::Write { id, .. } = entry else {
                        continue;
                    };
                    let at = store.position_of(id).await?;
                    if at.is_some_and(|at| applied.is_none_or(|c: Position| c < at)) {
                        pending.push(Pending {
                            entry: *entry,
                            reason: PendingReason::NotYet,
                        });
                    }
                }
                Ok(pending)
            }
        }
    }

    /// Returns once the view has applied every write of `token` it is concerned with, or when
    /// `timeout` passed. Woken by the view's commits (and, for commits made by other
    /// processes, by the database's polling interval at most).
    ///
    /// # Errors
    /// [`WaitError::Timeout`] with what is still pending; [`WaitError::DeadLettered`] at once
    /// when a write was dead-lettered (waiting longer cannot help); [`WaitError::Store`].
    pub async fn wait_for(
        &self,
        token: &ConsistencyToken,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let entries = self.concerned(token);
        if entries.is_empty() {
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let mut commits = self.db.commits();
        loop {
            // Seen before reading: a commit during the read wakes the wait below.
            commits.borrow_and_update();
            let pending = self.pending_of(&entries).await?;
            if pending.is_empty() {
                return Ok(());
            }
            if pending
                .iter()
                .any(|p| p.reason == PendingReason::DeadLettered)
            {
                return Err(WaitError::DeadLettered { pending });
            }
            let poll = tokio::time::sleep(self.db.poll_every());
            tokio::select! {
                _ = commits.changed() => {}
                _ = poll => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let pending = self.pending_of(&entries).await?;
                    if pending.is_empty() {
                        return Ok(());
                    }
                    return Err(WaitError::Timeout { pending, waited: started.elapsed() });
                }
            }
        }
    }
}
