//! Reading your own writes: waiting until a consumer group's view has applied the writes a
//! [`ConsistencyToken`] names.
//!
//! A view answers from its inbox (one indexed read per entry of the token that concerns it)
//! and is woken by its own database's commits, so a wait costs nothing while nothing changes
//! and ends as soon as the last write it waits for is applied. Entries for topics the group
//! does not read are not its concern and are left out.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tributary_core::backend::{Pending, PendingReason};
use tributary_core::{ConsistencyToken, Database, Error, GroupName, TokenEntry, Topic, name_hash};

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

/// A consumer group's view of its topics, for readers that must see their own writes.
#[derive(Clone)]
pub struct View {
    db: Arc<dyn Database>,
    group: GroupName,
    topics: HashSet<u64>,
}

impl View {
    /// The view `group` keeps in `db` from `topics` (the group's own topics).
    pub fn new(db: Arc<dyn Database>, group: GroupName, topics: &[Topic]) -> Self {
        Self {
            db,
            group,
            topics: topics.iter().map(|t| name_hash(t.as_str())).collect(),
        }
    }

    /// The entries of `token` this view is concerned with: writes and follow-ups on its
    /// topics.
    pub fn concerned(&self, token: &ConsistencyToken) -> Vec<TokenEntry> {
        token
            .entries()
            .iter()
            .filter(|e| self.topics.contains(&e.topic()))
            .copied()
            .collect()
    }

    /// What of `token` the view has not applied yet (empty: everything it is concerned with).
    ///
    /// # Errors
    /// When the view's database cannot be read.
    pub async fn pending(&self, token: &ConsistencyToken) -> Result<Vec<Pending>, Error> {
        let entries = self.concerned(token);
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.db.pending(&self.group, &entries).await
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
            let pending = self.db.pending(&self.group, &entries).await?;
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
                    let pending = self.db.pending(&self.group, &entries).await?;
                    if pending.is_empty() {
                        return Ok(());
                    }
                    return Err(WaitError::Timeout { pending, waited: started.elapsed() });
                }
            }
        }
    }
}
