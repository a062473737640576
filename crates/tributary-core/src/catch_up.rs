//! Catch-up subscriptions: read history in batches, then follow new commits, written once for
//! every backend.
//!
//! The switch from history to live cannot lose or repeat an event because there is no
//! switch: the subscription always reads from the store by position, and commit notifications
//! only tell it when to read again. The notification is marked seen *before* each read, so a
//! commit that lands during the read wakes the next wait.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::watch;

use crate::error::Result;
use crate::event_store::RecordedEvent;
use crate::ids::Position;

/// Something with a place in a global order.
pub trait Positioned {
    fn position(&self) -> Position;
}

impl Positioned for RecordedEvent {
    fn position(&self) -> Position {
        self.position
    }
}

/// How a catch-up subscription reads and waits.
#[derive(Clone, Debug)]
pub struct CatchUpConfig {
    /// Items read per query; the subscription never holds more than this many.
    pub batch: usize,
    /// Read again after this long even without a commit notification (commits made by other
    /// processes are not notified).
    pub poll_every: Duration,
}

impl Default for CatchUpConfig {
    fn default() -> Self {
        Self {
            batch: 1024,
            poll_every: Duration::from_secs(1),
        }
    }
}

struct State<R, T> {
    next: Position,
    buffered: VecDeque<T>,
    commits: watch::Receiver<u64>,
    read: R,
    config: CatchUpConfig,
    failed: bool,
    retry_delay: Duration,
}

/// A stream of every item at position `from` or later: history first, then live.
///
/// `read(from, max)` returns up to `max` items at position `from` or later in position order.
/// `commits` changes after every local commit. Retryable read errors are retried with backoff;
/// any other error is yielded once and ends the stream.
pub fn catch_up<T, R, Fut>(
    from: Position,
    commits: watch::Receiver<u64>,
    config: CatchUpConfig,
    read: R,
) -> BoxStream<'static, Result<T>>
where
    T: Positioned + Send + 'static,
    R: Fn(Position, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<T>>> + Send,
{
    let state = State {
        next: from,
        buffered: VecDeque::<T>::new(),
        commits,
        read,
        config,
        failed: false,
        retry_delay: Duration::from_millis(10),
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.failed {
            return None;
        }
        loop {
            if let Some(item) = s.buffered.pop_front() {
                s.next = item.position().next();
                return Some((Ok(item), s));
            }
            // Mark the current commit as seen before reading: a commit after this point
            // makes `changed()` below return at once.
            s.commits.borrow_and_update();
            match (s.read)(s.next, s.config.batch).await {
                Ok(items) if !items.is_empty() => {
                    s.retry_delay = Duration::from_millis(10);
                    s.buffered = items.into();
                }
                Ok(_) => {
                    // Caught up: wait for a commit, or poll for other processes' commits.
                    let _ = tokio::time::timeout(s.config.poll_every, s.commits.changed()).await;
                    if s.commits.has_changed().is_err() {
                        // The store was dropped: nothing will ever be committed again through
                        // this handle, but other processes may still write; keep polling.
                        tokio::time::sleep(s.config.poll_every).await;
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, delay = ?s.retry_delay, "subscription read failed; retrying");
                    tokio::time::sleep(s.retry_delay).await;
                    s.retry_delay = (s.retry_delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    s.failed = true;
                    return Some((Err(e), s));
                }
            }
        }
    })
    .boxed()
}
