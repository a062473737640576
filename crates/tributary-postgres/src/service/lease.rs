//! One active relay per source, and consumer groups' locks (shared while the group runs,
//! exclusive for a rebuild): a session-level advisory lock on a connection of its own.
//!
//! The lock lives as long as the session that took it, so a relay that dies — process killed,
//! connection cut — loses it at once, and a standby's next `try_lease` succeeds. The holder
//! pings its connection; when a ping fails, [`PgLease::is_held`] turns false and the relay
//! stops publishing (the server has ended, or will end, the session and its lock). Lease
//! connections carry the application name `lease <source>@<schema>` (cut to 63 bytes by the
//! server), so operators can see who holds a lease in `pg_stat_activity`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;
use tributary_core::{GroupLock, LeaseGuard, LeaseState, Result};

use crate::database::PgDatabase;
use crate::error::SqlxResultExt;
use crate::sql::Statement;

/// A held lease; dropping it releases the lock and closes its connection.
pub struct PgLease {
    held: Arc<AtomicBool>,
    name: String,
    /// Dropped: the keeper unlocks. Sent: the keeper unlocks, then answers on the channel.
    stop: oneshot::Sender<oneshot::Sender<()>>,
}

impl PgLease {
    /// The lock's name (`<schema>:<source>`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait::async_trait]
impl LeaseGuard for PgLease {
    fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    async fn release(self: Box<Self>) {
        let (done, unlocked) = oneshot::channel();
        if self.stop.send(done).is_ok() {
            let _ = unlocked.await;
        }
    }
}

impl std::fmt::Debug for PgLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLease")
            .field("name", &self.name)
            .field("held", &self.is_held())
            .finish()
    }
}

/// Takes the lease of `source` if no one holds it.
///
/// # Errors
/// [`tributary_core::Error::Unavailable`] when the server cannot be reached.
pub(crate) async fn try_lease(
    db: &PgDatabase,
    source: &str,
    mode: GroupLock,
) -> Result<Option<PgLease>> {
    let name = format!("{}:{source}", db.schema());
    let application = format!("lease {source}@{}", db.schema());
    let options = db
        .pool()
        .connect_options()
        .as_ref()
        .clone()
        .application_name(&application);
    let mut conn = PgConnection::connect_with(&options)
        .await
        .context("connecting for a lease")?;
    let sql = &db.inner.sql;
    let key = lock_key(&name);
    let (lock, unlock) = match mode {
        GroupLock::Exclusive => (&sql.lease, &sql.unlease),
        GroupLock::Shared => (&sql.lease_shared, &sql.unlease_shared),
    };
    let got: bool = sqlx::query_scalar(lock.sql())
        .bind(&key)
        .fetch_one(&mut conn)
        .await
        .context("taking a lease")?;
    if !got {
        let _ = conn.close().await;
        return Ok(None);
    }
    let held = Arc::new(AtomicBool::new(true));
    let (stop, stopped) = oneshot::channel();
    let ping_every = db.config().poll_every.min(Duration::from_secs(1));
    tokio::spawn(keep(
        conn,
        key,
        unlock.clone(),
        held.clone(),
        stopped,
        ping_every,
    ));
    Ok(Some(PgLease { held, name, stop }))
}

/// The advisory lock's key for the lease named `<schema>:<source>`.
fn lock_key(name: &str) -> String {
    format!("tributary lease {name}")
}

/// The lease holder's server pid, client address and port, and session start.
type HolderRow = (i32, Option<String>, Option<i32>, DateTime<Utc>);

/// Who holds the lease of `source` (exclusive leases: relays), read from `pg_locks` without
/// taking it.
///
/// # Errors
/// [`tributary_core::Error::Unavailable`] when the server cannot be reached.
pub(crate) async fn lease_state(db: &PgDatabase, source: &str) -> Result<LeaseState> {
    let key = lock_key(&format!("{}:{source}", db.schema()));
    let row: Option<HolderRow> = sqlx::query_as(db.inner.sql.lease_holder.sql())
        .bind(&key)
        .fetch_optional(db.pool())
        .await
        .context("reading who holds a lease")?;
    Ok(match row {
        None => LeaseState::Free,
        Some((pid, addr, port, since)) => LeaseState::Held {
            holder: match (addr, port) {
                (Some(addr), Some(port)) => format!("server pid {pid}, client {addr}:{port}"),
                _ => format!("server pid {pid}, client on a local socket"),
            },
            since: Some(since),
        },
    })
}

/// Holds the lease's connection: pings it, and unlocks and closes it when the guard drops.
async fn keep(
    mut conn: PgConnection,
    key: String,
    unlock: Statement,
    held: Arc<AtomicBool>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
    ping_every: Duration,
) {
    loop {
        tokio::select! {
            released = &mut stop => {
                held.store(false, Ordering::Release);
                // Unlock explicitly so a standby can take over before the session ends.
                let _ = sqlx::query(unlock.sql()).bind(&key).execute(&mut conn).await;
                let _ = conn.close().await;
                if let Ok(done) = released {
                    let _ = done.send(());
                }
                return;
            }
            _ = tokio::time::sleep(ping_every) => {
                let alive = tokio::time::timeout(Duration::from_secs(5), conn.ping()).await;
                if !matches!(alive, Ok(Ok(()))) {
                    held.store(false, Ordering::Release);
                    tracing::warn!(lease = %key, "the lease connection was lost; the lease is gone");
                    return;
                }
            }
        }
    }
}
