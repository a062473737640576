//! Operating on dead letters: list, replay in key order, skip. The CLI and HTTP layers use
//! this API.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use tributary_core::backend::{ConsumerTx, InboxEntry, WorkOrigin};
use tributary_core::{
    Database, DeadLetter, DeadLetterId, Envelope, Error, GroupName, Resolution, Result, UnitOfWork,
    Upcasters,
};

use crate::handler::Handler;

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayOutcome {
    /// Dead letters handled successfully, in order.
    pub replayed: Vec<DeadLetterId>,
    /// The dead letter that failed again (it stays, and still blocks its key), and why.
    pub failed: Option<(DeadLetterId, String)>,
}

/// Dead-letter operations for the consumer groups of one database.
pub struct DeadLetterAdmin {
    db: Arc<dyn Database>,
    groups: HashMap<GroupName, (Arc<dyn Handler>, Upcasters)>,
}

/// The most dead letters replayed in one transaction.
const REPLAY_CHUNK: usize = 256;

impl DeadLetterAdmin {
    pub fn new(db: Arc<dyn Database>) -> Self {
        Self {
            db,
            groups: HashMap::new(),
        }
    }

    /// Registers the handler replays of `group` go through (the group's own handler).
    pub fn with_group(
        mut self,
        group: GroupName,
        handler: Arc<dyn Handler>,
        upcasters: Upcasters,
    ) -> Self {
        self.groups.insert(group, (handler, upcasters));
        self
    }

    /// Unresolved dead letters, oldest first.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn list(&self, group: Option<&GroupName>, max: usize) -> Result<Vec<DeadLetter>> {
        self.db.dead_letters().list(group, max).await
    }

    /// Replays the dead letters of the key of dead letter `id`, oldest first (the failed
    /// message, then those parked behind it), through the group's handler, each in the same
    /// transaction as its resolution. Stops at the first one that fails again. When none is
    /// left, the key flows again.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown id, a group without a registered handler, or a
    /// letter already resolved with nothing left to replay on its key (so that a second replay
    /// or a replay of a skipped letter is not mistaken for a success).
    pub async fn replay(&self, id: DeadLetterId) -> Result<ReplayOutcome> {
        let letter = self
            .db
            .dead_letters()
            .get(id)
            .await?
            .ok_or_else(|| Error::invalid(format!("no dead letter {id}")))?;
        let (handler, upcasters) = self.groups.get(&letter.group).cloned().ok_or_else(|| {
            Error::invalid(format!("no handler registered for group {}", letter.group))
        })?;
        let mut outcome = ReplayOutcome::default();
        loop {
            let (group, key) = (letter.group.clone(), letter.key.clone());
            let (h, u) = (handler.clone(), upcasters.clone());
            let chunk = self
                .db
                .transact_consumer(origin(), move |tx| {
                    Box::pin(async move { replay_chunk(tx, &group, &key, h.as_ref(), &u).await })
                })
                .await?;
            let finished = chunk.failed.is_some() || chunk.replayed.len() < REPLAY_CHUNK;
            outcome.replayed.extend(chunk.replayed);
            outcome.failed = chunk.failed;
            if finished && outcome.replayed.is_empty() && outcome.failed.is_none() {
                // Had the letter been unresolved, the oldest unresolved one of its key would
                // have been replayed or have failed.
                return Err(Error::invalid(format!(
                    "dead letter {id} was already resolved and key {:?} of group {} has none left to replay",
                    letter.key, letter.group
                )));
            }
            if finished {
                return Ok(outcome);
            }
        }
    }

    /// Resolves dead letter `id` without processing it. Messages parked behind it stay parked
    /// until they are replayed.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown or already resolved id.
    pub async fn skip(&self, id: DeadLetterId) -> Result<()> {
        self.db
            .transact_consumer(origin(), move |tx| {
                Box::pin(async move { tx.resolve_dead_letter(id, Resolution::Skipped).await })
            })
            .await
    }
}

fn origin() -> WorkOrigin {
    WorkOrigin::Task("the dead-letter admin".into())
}

async fn replay_chunk(
    tx: &mut dyn ConsumerTx,
    group: &GroupName,
    key: &str,
    handler: &dyn Handler,
    upcasters: &Upcasters,
) -> Result<ReplayOutcome> {
    let mut outcome = ReplayOutcome::default();
    while outcome.replayed.len() < REPLAY_CHUNK {
        let Some(id) = tx.blocking_dead_letter(group, key).await? else {
            break;
        };
        let letter = tx
            .dead_letter(id)
            .await?
            .ok_or_else(|| Error::storage_msg(format!("dead letter {id} vanished")))?;
        let envelope = match Envelope::from_json(&letter.payload).and_then(|e| upcasters.upcast(e))
        {
            Ok(e) => e,
            Err(e) => {
                let reason = format!("still undecodable: {e}");
                tx.record_dead_letter_failure(id, &reason).await?;
                outcome.failed = Some((id, reason));
                break;
            }
        };
        tx.savepoint().await?;
        let unit: &mut dyn UnitOfWork = &mut *tx;
        let result = AssertUnwindSafe(handler.handle(&envelope, unit))
            .catch_unwind()
            .await;
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.message().to_owned()),
            Err(panic) => Some(Error::panicked("handler", panic.as_ref()).to_string()),
        };
        match failure {
            None => {
                tx.release_savepoint().await?;
                tx.inbox_mark_applied(group, &InboxEntry::of(&envelope, true))
                    .await?;
                tx.resolve_dead_letter(id, Resolution::Replayed).await?;
                outcome.replayed.push(id);
            }
            Some(reason) => {
                tx.rollback_savepoint().await?;
                tx.record_dead_letter_failure(id, &reason).await?;
                outcome.failed = Some((id, reason));
                break;
            }
        }
    }
    Ok(outcome)
}
