//! Replays asked for from outside the consumer's process: `tributary dead-letters replay` and
//! the console know a deployment only by its database URL, not its handlers. A request is a
//! document in the service's own database; the group's running [`crate::Consumer`] picks it up
//! and replays through its own handler ([`DeadLetterAdmin::replay`], in key order), then
//! records the outcome in the same document.
//!
//! A replay that is interrupted runs again from the request; replaying resolved letters does
//! nothing, so that is harmless.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tributary_core::{Database, DeadLetterId, Error, Payload, Result, UnitOfWork, UnitOfWorkExt};

use crate::consumer::Context;
use crate::dead_letters::DeadLetterAdmin;

/// The collection replay requests are kept in, one document per dead letter.
pub const REPLAY_REQUESTS: &str = "tributary_replay_requests";

/// Where a requested replay is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ReplayState {
    /// Waiting for the group's consumer.
    Requested,
    /// Every letter of the key was handled (these ids, in order).
    Replayed { replayed: Vec<DeadLetterId> },
    /// `failed` failed again after `replayed` were handled; it still blocks its key.
    Failed {
        replayed: Vec<DeadLetterId>,
        failed: DeadLetterId,
        reason: String,
    },
}

/// A replay request and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRequest {
    pub dead_letter: DeadLetterId,
    /// The group whose consumer performs it.
    pub group: String,
    pub requested_at: DateTime<Utc>,
    #[serde(flatten)]
    pub state: ReplayState,
}

fn doc_id(id: DeadLetterId) -> String {
    // Zero-padded, so that document order is request order by id.
    format!("{:020}", id.get())
}

/// Asks the running consumer of dead letter `id`'s group to replay it (and the letters parked
/// behind it). Asking again replaces an earlier outcome with a new request.
///
/// # Errors
/// [`Error::InvalidInput`] for an unknown or resolved dead letter; storage errors.
pub async fn request_replay(db: &Arc<dyn Database>, id: DeadLetterId) -> Result<ReplayRequest> {
    let letter = db
        .dead_letters()
        .get(id)
        .await?
        .ok_or_else(|| Error::invalid(format!("no dead letter {id}")))?;
    let open = db
        .dead_letters()
        .list(Some(&letter.group), usize::MAX)
        .await?
        .iter()
        .any(|l| l.id == id);
    if !open {
        return Err(Error::invalid(format!(
            "dead letter {id} is already resolved"
        )));
    }
    let request = ReplayRequest {
        dead_letter: id,
        group: letter.group.as_str().to_owned(),
        requested_at: Utc::now(),
        state: ReplayState::Requested,
    };
    let doc = request.clone();
    db.transact(move |unit: &mut dyn UnitOfWork| {
        Box::pin(async move { unit.put_as(REPLAY_REQUESTS, &doc_id(id), &doc).await })
    })
    .await?;
    Ok(request)
}

/// The request for dead letter `id`, with its outcome, if one was made.
///
/// # Errors
/// Storage errors; [`Error::Decode`] for a document that is not a request.
pub async fn replay_request(
    db: &Arc<dyn Database>,
    id: DeadLetterId,
) -> Result<Option<ReplayRequest>> {
    db.get_document(REPLAY_REQUESTS, &doc_id(id))
        .await?
        .map(|p| p.decode())
        .transpose()
}

/// Performs the group's pending requests every `every` until `shutdown`. A failure to read or
/// record only delays the request to the next round (the partitions report a database that is
/// down).
pub(crate) async fn serve(ctx: Arc<Context>, every: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(e) = perform_pending(&ctx).await {
            tracing::warn!(group = %ctx.group, error = %e, "performing replay requests failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn perform_pending(ctx: &Arc<Context>) -> Result<()> {
    let mut after: Option<String> = None;
    loop {
        let page = ctx
            .db
            .list_documents(REPLAY_REQUESTS, after.as_deref(), 256)
            .await?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        after = Some(last.clone());
        for (id, doc) in &page {
            let Ok(request) = doc.decode::<ReplayRequest>() else {
                tracing::warn!(id, "ignoring a replay request that does not decode");
                continue;
            };
            if request.group == ctx.group.as_str() && request.state == ReplayState::Requested {
                perform(ctx, id, request).await?;
            }
        }
    }
}

async fn perform(ctx: &Arc<Context>, doc: &str, mut request: ReplayRequest) -> Result<()> {
    let admin = DeadLetterAdmin::new(ctx.db.clone()).with_group(
        ctx.group.clone(),
        ctx.handler.clone(),
        ctx.config.upcasters.clone(),
    );
    let outcome = admin.replay(request.dead_letter).await?;
    request.state = match outcome.failed {
        None => ReplayState::Replayed {
            replayed: outcome.replayed,
        },
        Some((failed, reason)) => ReplayState::Failed {
            replayed: outcome.replayed,
            failed,
            reason,
        },
    };
    tracing::info!(group = %ctx.group, dead_letter = %request.dead_letter, state = ?request.state, "performed a replay request");
    let (doc, body) = (doc.to_owned(), Payload::from_value(&request)?);
    ctx.db
        .transact(move |unit: &mut dyn UnitOfWork| {
            Box::pin(async move { unit.put(REPLAY_REQUESTS, &doc, body).await })
        })
        .await
}
