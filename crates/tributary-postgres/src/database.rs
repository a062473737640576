//! A service's PostgreSQL database: a connection pool, the service's schema, and the commit
//! announcements that wake readers.
//!
//! Readers (relays, subscriptions) wait on [`tributary_core::Database::commits`]. Commits made
//! through this handle tick it at once; other processes learn of them through `NOTIFY` on the
//! channel `tributary.<schema>`, and every reader also polls, so a lost notification only
//! delays it.
//!
//! Why the `NOTIFY` is sent *after* commit, from a task of its own, rather than by a trigger
//! or inside the writing transaction: PostgreSQL serializes the commits of every transaction
//! that notified, flush included, on one server-wide lock. Measured here, notifying inside
//! the transaction cut appends to a third (one writer) and a fifth (eight writers). After
//! commit, one announcement covers every commit made while the previous one was in flight.
//!
//! Transactions the application runs itself ([`crate::PgOutbox::publish`],
//! [`crate::PgEventStore::append_in`], [`crate::PgInbox::try_record`]) commit where we cannot
//! see it. Notifying inside them would make them pay that serialization, so they do not:
//! writing in one hands the transaction's id to a watcher task, which asks the server for the
//! status of the transactions it watches (`pg_xact_status`, one query every
//! [`WATCH_COMMITS_EVERY`] while any is open) and announces each as soon as it committed — to
//! other processes and to this one's readers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{Notify, watch};
use tributary_core::{Error, Result};

use crate::config::{PgConfig, validate_schema};
use crate::error::SqlxResultExt;
use crate::lag::PgHorizonHolder;
use crate::outbox::PgOutbox;
use crate::schema;
use crate::sql::Statements;

/// A service's database on PostgreSQL: every table in the configured schema, reached through
/// a pool. Cheap to clone; clones share the pool and the commit listener.
///
/// It implements [`tributary_core::Database`] (units of work, documents, outbox, inbox,
/// dead letters, checkpoints, the event store and the relay sources).
#[derive(Clone)]
pub struct PgDatabase {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) config: PgConfig,
    pub(crate) sql: Statements,
    commits: watch::Sender<u64>,
    /// Asks the announcer task to `NOTIFY` other processes.
    announce: Arc<Notify>,
    /// Set when an application's own transaction committed: the next announcement wakes this
    /// process's readers too (they were not woken at a commit of ours).
    external: AtomicBool,
    /// Transactions of the application's own that wrote rows readers wait for, by id, until
    /// they end.
    watched: Mutex<Vec<i64>>,
    watch: Arc<Notify>,
    /// This handle's payload in its own notifications, so its listener can skip them.
    pub(crate) instance: String,
    /// Dropping it stops the listener and announcer tasks.
    _stop_tasks: watch::Sender<()>,
}

impl Inner {
    /// Wakes local readers after a commit made through this handle, and announces it to other
    /// processes.
    pub(crate) fn committed(&self) {
        self.commits.send_modify(|c| *c = c.wrapping_add(1));
        self.announce.notify_one();
    }

    pub(crate) fn channel(&self) -> String {
        channel(&self.config.schema)
    }

    /// A write in transaction `tx_id` of the application's own, which commits out of our
    /// sight: announced to every reader once it committed (see the module doc).
    pub(crate) fn written_externally(&self, tx_id: i64) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if !watched.contains(&tx_id) {
            watched.push(tx_id);
        }
        drop(watched);
        self.watch.notify_one();
    }

    pub(crate) fn commits_receiver(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }
}

impl PgDatabase {
    /// Connects, creates the schema if needed, applies pending migrations and starts listening
    /// for commits (`LISTEN "tributary.<schema>"`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad schema name or URL; [`Error::Storage`] for a schema
    /// that is not Tributary's or comes from a newer version; [`Error::Unavailable`] when the
    /// server cannot be reached.
    pub async fn connect(config: PgConfig) -> Result<Self> {
        validate_schema(&config.schema)?;
        // One connection first: a server that is down is reported at once with its address,
        // where the pool would retry until its acquire timeout and say only "pool timed out".
        let probe = crate::inspect::connect_one(&config).await?;
        // Closing is a courtesy to the server's log; a failure to say goodbye changes nothing.
        let _ = sqlx::Connection::close(probe).await;
        // No ping before every acquire (sqlx's default): it costs a round trip per unit of
        // work; a connection that died is found by the statement that uses it, and that
        // error is retryable.
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .test_before_acquire(false)
            .connect(&config.url)
            .await
            .map_err(|e| match e {
                sqlx::Error::Configuration(_) => {
                    Error::invalid(format!("bad PostgreSQL URL {:?}: {e}", redact(&config.url)))
                }
                other => crate::error::db_error("connecting", other),
            })?;
        Self::start(pool, config).await
    }

    /// Uses an existing pool (shared with the application's own queries); `config.url` and
    /// `config.max_connections` are not used.
    ///
    /// # Errors
    /// As [`PgDatabase::connect`].
    pub async fn from_pool(pool: PgPool, config: PgConfig) -> Result<Self> {
        validate_schema(&config.schema)?;
        Self::start(pool, config).await
    }

    async fn start(pool: PgPool, config: PgConfig) -> Result<Self> {
        // The listener's own single connection (sqlx re-establishes it), named for operators.
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name(&format!("listen {}", config.schema));
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(options.clone())
            .await
            .context("connecting the commit listener")?;
        // The announcer's own connection. A NOTIFY takes a transaction id, so each one is a
        // commit; waiting for its WAL flush would add an fsync per announcement to every
        // writer's bill. An announcement need not survive a crash (readers poll), so its
        // commits do not wait for the flush.
        let announcer_pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *conn, "SET synchronous_commit = off").await?;
                    Ok(())
                })
            })
            .connect_with(options.application_name(&format!("announce {}", config.schema)))
            .await
            .context("connecting the commit announcer")?;
        let mut listener = PgListener::connect_with(&listener_pool)
            .await
            .context("connecting the commit listener")?;
        {
            let mut conn = pool.acquire().await.context("connecting")?;
            schema::prepare(&mut conn, &config.schema).await?;
        }
        listener
            .listen(&channel(&config.schema))
            .await
            .context("listening for commits")?;
        let (stop, stopped) = watch::channel(());
        let announce = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            sql: Statements::for_schema(&config.schema),
            pool: pool.clone(),
            commits: watch::channel(0).0,
            announce: announce.clone(),
            external: AtomicBool::new(false),
            watched: Mutex::default(),
            watch: Arc::default(),
            instance: uuid::Uuid::now_v7().simple().to_string(),
            _stop_tasks: stop,
            config,
        });
        tokio::spawn(listen(listener, Arc::downgrade(&inner), stopped.clone()));
        tokio::spawn(watch_commits(
            announcer_pool.clone(),
            Arc::downgrade(&inner),
            stopped.clone(),
        ));
        tokio::spawn(announcer(
            announcer_pool,
            Arc::downgrade(&inner),
            announce,
            stopped,
        ));
        Ok(Self { inner })
    }

    /// The pool, for the application's own queries and transactions.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn schema(&self) -> &str {
        &self.inner.config.schema
    }

    pub fn config(&self) -> &PgConfig {
        &self.inner.config
    }

    /// The `NOTIFY` channel commits to this schema's events and outbox are announced on.
    pub fn channel(&self) -> String {
        self.inner.channel()
    }

    /// The outbox, for writing events in the application's own sqlx transactions.
    pub fn outbox(&self) -> PgOutbox {
        PgOutbox::new(self.clone())
    }

    /// The inbox, for recording consumed messages in the application's own sqlx transactions.
    pub fn inbox(&self) -> crate::PgInbox {
        crate::PgInbox::new(self.clone())
    }

    /// The event store of this database (the same as [`tributary_core::Database::event_store`],
    /// with its PostgreSQL-specific methods).
    pub fn events(&self) -> crate::PgEventStore {
        crate::PgEventStore::new(self.clone())
    }

    /// The oldest running transaction on the server that has a transaction id, if any: the
    /// one that holds back every reader's horizon.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn horizon_holder(&self) -> Result<Option<PgHorizonHolder>> {
        crate::lag::horizon_holder(self).await
    }

    /// Deletes the schema and everything in it. For tests and decommissioning; irreversible.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn drop_schema(self) -> Result<()> {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema());
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(self.pool())
            .await
            .context("dropping the schema")?;
        self.inner.pool.close().await;
        Ok(())
    }

    /// Closes the pool: waits for checked-out connections to come back, then closes them.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }
}

impl std::fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDatabase")
            .field("url", &redact(&self.inner.config.url))
            .field("schema", &self.inner.config.schema)
            .finish()
    }
}

fn channel(schema: &str) -> String {
    format!("tributary.{schema}")
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// How long commits are gathered into one announcement.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(5);

/// How often the watcher asks whether the application's own transactions that wrote rows have
/// ended, while any is open.
pub const WATCH_COMMITS_EVERY: Duration = Duration::from_millis(2);

/// Announces the application's own transactions that wrote rows as soon as they commit (see
/// the module doc), until the database is dropped.
async fn watch_commits(pool: PgPool, db: Weak<Inner>, mut stop: watch::Receiver<()>) {
    loop {
        let Some(inner) = db.upgrade() else { return };
        let watched = inner
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if watched.is_empty() {
            // Not holding the database while idle, so that dropping it stops this task. A
            // transaction handed over meanwhile leaves a permit in the `Notify`.
            let watch = inner.watch.clone();
            drop(inner);
            tokio::select! {
                _ = stop.changed() => return,
                _ = watch.notified() => continue,
            }
        }
        let statuses: Result<Vec<(i64, Option<String>)>, sqlx::Error> =
            sqlx::query_as(inner.sql.transaction_status.sql())
                .bind(&watched)
                .fetch_all(&pool)
                .await;
        let ended: Vec<(i64, bool)> = match statuses {
            Ok(rows) => rows
                .into_iter()
                .filter(|(_, status)| status.as_deref() != Some("in progress"))
                .map(|(id, status)| (id, status.as_deref() == Some("committed")))
                .collect(),
            Err(e) => {
                // Readers poll anyway; forget what cannot be watched rather than spin on it.
                tracing::debug!(error = %e, "watching application transactions failed");
                watched.iter().map(|&id| (id, true)).collect()
            }
        };
        if !ended.is_empty() {
            inner
                .watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|id| !ended.iter().any(|(e, _)| e == id));
            if ended.iter().any(|(_, committed)| *committed) {
                inner.external.store(true, Ordering::Release);
                inner.announce.notify_one();
            }
        }
        drop(inner);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(WATCH_COMMITS_EVERY) => {}
        }
    }
}

/// Sends one `NOTIFY` per wake-up until the database is dropped; commits made while one is
/// in flight share the next.
async fn announcer(
    pool: PgPool,
    db: Weak<Inner>,
    wanted: Arc<Notify>,
    mut stop: watch::Receiver<()>,
) {
    let Some((notify, channel, instance)) = db
        .upgrade()
        .map(|db| (db.sql.notify.clone(), db.channel(), db.instance.clone()))
    else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = wanted.notified() => {}
        }
        // Gather the commits of the next few milliseconds into the same announcement: each
        // NOTIFY is a transaction and a round trip, and one per commit measured as a third of
        // a single writer's throughput. Readers in this process were woken at commit already;
        // only other processes wait the extra moment (and they poll anyway).
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(ANNOUNCE_EVERY) => {}
        }
        let Some(db) = db.upgrade() else { return };
        if db.external.swap(false, Ordering::AcqRel) {
            // Readers of this process skip our own announcements: wake them here.
            db.commits.send_modify(|c| *c = c.wrapping_add(1));
        }
        drop(db);
        let sent = sqlx::query(notify.sql())
            .bind(&channel)
            .bind(&instance)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            // Other processes fall back to polling.
            tracing::debug!(%channel, error = %e, "announcing a commit failed");
        }
    }
}

/// Turns notifications into ticks of the commit watch until the database is dropped.
/// A lost listener connection is re-established by sqlx; notifications sent meanwhile are
/// lost, so a reconnect also ticks (readers then look), and readers poll anyway.
async fn listen(mut listener: PgListener, db: Weak<Inner>, mut stop: watch::Receiver<()>) {
    let mut failures = 0u32;
    loop {
        let received = tokio::select! {
            _ = stop.changed() => return,
            r = listener.try_recv() => r,
        };
        let Some(db) = db.upgrade() else { return };
        match received {
            // Our own announcement: local readers were woken at commit already.
            Ok(Some(n)) if n.payload() == db.instance => failures = 0,
            Ok(_) => {
                failures = 0;
                db.commits.send_modify(|c| *c = c.wrapping_add(1));
            }
            Err(e) => {
                failures += 1;
                let delay = Duration::from_millis(100 * u64::from(failures.min(50)));
                tracing::warn!(schema = %db.config.schema, error = %e, ?delay, "commit listener failed; readers fall back to polling");
                drop(db);
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_in_messages() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }
}
