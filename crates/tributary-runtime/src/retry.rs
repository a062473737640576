//! The one retry-until-shutdown loop every long-running task uses: retryable failures are
//! retried with backoff (health degraded, logged), a failure retrying cannot fix ends the task
//! with that error, and shutdown ends it quietly.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tributary_core::Error;

use crate::backoff::Backoff;
use crate::health::{Health, HealthState};

/// Why a retried step did not complete.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Shutdown was requested: the task returns `Ok(())`.
    Shutdown,
    /// A failure retrying cannot fix: the task returns it.
    Fatal(Error),
}

/// What a task's retries share: its backoff, its shutdown token, its health cell.
#[derive(Clone)]
pub(crate) struct Retry {
    pub backoff: Backoff,
    pub shutdown: CancellationToken,
    pub health: Health,
}

impl Retry {
    pub fn new(backoff: Backoff, shutdown: CancellationToken, health: Health) -> Self {
        Self {
            backoff,
            shutdown,
            health,
        }
    }

    /// Runs `op` until it succeeds. A retryable error is logged, shown in health, and retried
    /// after a growing delay; any other error stops with [`Stop::Fatal`].
    pub async fn until_ok<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut failures = 0;
        loop {
            if self.shutdown.is_cancelled() {
                return Err(Stop::Shutdown);
            }
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) => self.after_failure(what, e, &mut failures).await?,
            }
        }
    }

    /// After a failed attempt of `what` (the `failures`-th in a row, counted here): waits to
    /// try again, or says why not to. For loops whose step borrows mutably, which
    /// [`Retry::until_ok`] cannot express.
    pub async fn after_failure(
        &self,
        what: &str,
        e: Error,
        failures: &mut u32,
    ) -> Result<(), Stop> {
        if !e.is_retryable() {
            return Err(Stop::Fatal(e));
        }
        *failures += 1;
        self.degraded(what, &e);
        self.nap(self.backoff.delay(*failures)).await
    }

    /// Marks the task degraded because `what` failed with `e`.
    pub fn degraded(&self, what: &str, e: &dyn std::fmt::Display) {
        tracing::warn!(task = self.health.name(), error = %e, "{what} failed; retrying");
        self.health
            .set(HealthState::Degraded(format!("{what}: {e}")));
    }

    /// Sleeps for `d` unless shutdown comes first.
    pub async fn nap(&self, d: Duration) -> Result<(), Stop> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.shutdown.cancelled() => Err(Stop::Shutdown),
        }
    }

    /// The task's result for how it stopped, with its health set to match.
    pub fn finish(&self, stop: Result<(), Stop>) -> Result<(), Error> {
        match stop {
            Ok(()) | Err(Stop::Shutdown) => {
                self.health.set(HealthState::Stopped);
                Ok(())
            }
            Err(Stop::Fatal(e)) => {
                tracing::error!(task = self.health.name(), error = %e, "stopped by an error retrying cannot fix");
                self.health.set(HealthState::Failed(e.to_string()));
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn retry() -> Retry {
        Retry::new(
            Backoff::new(Duration::from_millis(10), Duration::from_millis(100)),
            CancellationToken::new(),
            Health::new("test"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_until_the_step_succeeds() {
        let r = retry();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let got = r
            .until_ok("stepping", move || {
                let c = c.clone();
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) < 3 {
                        Err(Error::unavailable("db", "busy"))
                    } else {
                        Ok(7)
                    }
                }
            })
            .await;
        assert!(matches!(got, Ok(7)));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_retrying_cannot_fix_stops_at_once() {
        let r = retry();
        let got: Result<(), Stop> = r
            .until_ok("stepping", || async { Err(Error::storage_msg("corrupt")) })
            .await;
        assert!(matches!(got, Err(Stop::Fatal(Error::Storage { .. }))));
        assert!(r.finish(got.map(|_| ())).is_err());
        assert!(matches!(r.health.get(), HealthState::Failed(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_retries() {
        let r = retry();
        let token = r.shutdown.clone();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            token.cancel();
        });
        let got: Result<(), Stop> = r
            .until_ok("stepping", || async {
                Err(Error::unavailable("db", "down"))
            })
            .await;
        assert!(matches!(got, Err(Stop::Shutdown)));
        stopper.await.expect("stopper");
        assert!(r.finish(got).is_ok());
    }
}
