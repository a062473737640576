//! [`BinlogSource`]: the binlog capture as a [`RelaySource`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mysql_async::Conn;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tributary_core::{Broker, LeaseGuard, Position, RelaySource, SourceBatch};
use tributary_runtime::{Relay, RelayConfig};

use super::config::BinlogConfig;
use super::error::{BinlogError, Result};
use super::mapping::Mapper;
use super::position::BinlogPosition;
use super::snapshot::Snapshot;
use super::state::{self, ServerInfo, StateSql, Status};
use super::stream::{self, ReadyBatch, Shared, StreamSettings, lock};
use crate::metrics::CaptureMetrics;

/// A binlog capture as a relay source: [`read_batch`](RelaySource::read_batch) hands out
/// batches of whole committed transactions that a task decoded ahead (see the module doc),
/// [`mark_published`](RelaySource::mark_published) stores the position after them, and
/// [`try_lease`](RelaySource::try_lease) takes the capture's named lock.
pub struct BinlogSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BinlogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinlogSource")
            .field("capture", &self.inner.config.capture)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: Arc<BinlogConfig>,
    name: String,
    state_database: String,
    state: StateSql,
    reader: Mutex<Reader>,
    /// The control connection: holds the lease and writes the state row.
    control: Mutex<Option<Conn>>,
    lease_epoch: AtomicU64,
    lease_held: AtomicBool,
    progress: StdMutex<Progress>,
    metrics: StdMutex<CaptureMetrics>,
    fatal: StdMutex<Option<BinlogError>>,
    stop: CancellationToken,
    commits: watch::Sender<u64>,
}

impl Inner {
    /// `position` (reached at stream `ordinal`) is in the state row now.
    fn stored(&self, ordinal: u64, position: &BinlogPosition) {
        lock(&self.progress).stored = Some((ordinal, position.clone()));
        lock(&self.metrics).confirmed(None);
    }
}

#[derive(Debug, Default, Clone)]
struct Progress {
    /// The position stored last, with its stream ordinal (0: stored before this stream).
    stored: Option<(u64, BinlogPosition)>,
    last_commit: Option<DateTime<Utc>>,
    published: u64,
}

#[derive(Default)]
struct Reader {
    phase: Phase,
    /// The batch handed out and not yet marked.
    handed: Option<Handed>,
}

#[derive(Default)]
enum Phase {
    #[default]
    Idle,
    Snapshot(Box<Snapshot>),
    Streaming(Streaming),
}

struct Streaming {
    batches: mpsc::Receiver<Result<ReadyBatch>>,
    /// A batch taken off the channel that did not fit into the last one handed out.
    peeked: Option<ReadyBatch>,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Handed {
    Stream {
        end: Option<(u64, BinlogPosition)>,
        outbox_ids: Vec<u64>,
        commit_time: Option<DateTime<Utc>>,
        messages: usize,
        /// Decoded batches merged into this one.
        batches: usize,
    },
    Snapshot {
        rows: usize,
        outbox_ids: Vec<u64>,
    },
}

/// How many handed-out batches numbered so far (the relay's `through`).
static BATCHES: AtomicU64 = AtomicU64::new(1);

impl BinlogSource {
    /// A source for `config`; nothing connects until the relay asks for the lease.
    ///
    /// # Errors
    ///
    /// [`BinlogError::Config`] when the configuration cannot work.
    pub fn new(config: BinlogConfig) -> Result<Self> {
        if config.tables.is_none() && config.outbox.is_none() {
            return Err(BinlogError::Config {
                reason: "no capture mode is on: enable table changes or the outbox".into(),
            });
        }
        let state_database = config.database().ok_or_else(|| BinlogError::Config {
            reason: format!(
                "{} names no database (mysql://user@host:port/database): the capture's state lives there",
                config.url
            ),
        })?;
        if config.capture.is_empty() || config.capture.len() > 190 {
            return Err(BinlogError::Config {
                reason: "the capture's name must be 1 to 190 characters".into(),
            });
        }
        let state = StateSql::new(&state_database, &config.capture);
        let (commits, _) = watch::channel(0);
        let metrics = CaptureMetrics::new(&config.capture);
        Ok(BinlogSource {
            inner: Arc::new(Inner {
                name: format!("cdc:{}", config.capture),
                config: Arc::new(config),
                state_database,
                state,
                reader: Mutex::new(Reader::default()),
                control: Mutex::new(None),
                lease_epoch: AtomicU64::new(0),
                lease_held: AtomicBool::new(false),
                progress: StdMutex::new(Progress::default()),
                metrics: StdMutex::new(metrics),
                fatal: StdMutex::new(None),
                stop: CancellationToken::new(),
                commits,
            }),
        })
    }

    pub fn config(&self) -> &BinlogConfig {
        &self.inner.config
    }

    /// Messages acknowledged by the broker and marked published by this process.
    pub fn published(&self) -> u64 {
        lock(&self.inner.progress).published
    }

    /// The position stored last by this process.
    pub fn stored(&self) -> Option<BinlogPosition> {
        lock(&self.inner.progress).stored.clone().map(|(_, p)| p)
    }

    /// Publishes into `broker` with a [`Relay`] until `shutdown` or an error that must not be
    /// retried.
    ///
    /// # Errors
    ///
    /// The error that stopped the capture (each names the operator command where one helps).
    pub async fn run(
        self: Arc<Self>,
        broker: Arc<dyn Broker>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let stop = self.inner.stop.clone();
        let forward = {
            let stop = stop.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stop.cancel();
            })
        };
        let relay_config = RelayConfig::default()
            .with_batch_size(self.inner.config.batch_size)
            .with_standby_poll(Duration::from_millis(500));
        let relayed = Relay::new(self.clone(), broker, relay_config)
            .run(stop)
            .await;
        forward.abort();
        self.close().await;
        // The source's own fatal error is the cause (the relay only saw it as a storage
        // problem); otherwise whatever stopped the relay.
        match (lock(&self.inner.fatal).take(), relayed) {
            (Some(error), _) => Err(error),
            (None, Err(error)) => Err(BinlogError::Publish(error)),
            (None, Ok(())) => Ok(()),
        }
    }

    /// Stops reading and releases the lease.
    pub async fn close(&self) {
        self.inner.lease_held.store(false, Ordering::SeqCst);
        self.inner.lease_epoch.fetch_add(1, Ordering::SeqCst);
        let mut reader = self.inner.reader.lock().await;
        reader.phase = Phase::Idle;
        reader.handed = None;
        drop(reader);
        if let Some(mut conn) = self.inner.control.lock().await.take() {
            let _ = state::unlock(&mut conn, &self.inner.config.lease_lock()).await;
            disconnect(conn).await;
        }
    }

    fn fail(&self, error: BinlogError) -> tributary_core::Error {
        let core = error.to_core();
        if error.is_retryable() {
            tracing::warn!(source = self.inner.name, %error, "binlog capture failed; retrying");
        } else {
            tracing::error!(source = self.inner.name, %error, "binlog capture stopped");
            lock(&self.inner.fatal).get_or_insert(error);
            self.inner.stop.cancel();
        }
        core
    }

    fn stopped_error(&self) -> Option<tributary_core::Error> {
        lock(&self.inner.fatal)
            .as_ref()
            .map(|e| tributary_core::Error::storage_msg(e.to_string()))
    }

    async fn read(&self, reader: &mut Reader) -> Result<Option<SourceBatch>> {
        loop {
            match &mut reader.phase {
                Phase::Idle => self.start(reader).await?,
                Phase::Snapshot(snapshot) => {
                    let (messages, outbox_ids) =
                        snapshot.read(self.inner.config.batch_size).await?;
                    if messages.is_empty() {
                        let position = snapshot.position().clone();
                        reader.phase = Phase::Idle;
                        self.finish_snapshot(&position).await?;
                        continue;
                    }
                    reader.handed = Some(Handed::Snapshot {
                        rows: messages.len(),
                        outbox_ids,
                    });
                    return Ok(Some(SourceBatch {
                        messages,
                        through: Position::new(BATCHES.fetch_add(1, Ordering::Relaxed)),
                    }));
                }
                Phase::Streaming(streaming) => {
                    let wait = self.inner.config.idle_wait;
                    let first = match streaming.peeked.take() {
                        Some(batch) => batch,
                        None => {
                            let received = tokio::select! {
                                biased;
                                () = self.inner.stop.cancelled() => return Ok(None),
                                received = tokio::time::timeout(wait, streaming.batches.recv()) => received,
                            };
                            match received {
                                Err(_) => return Ok(None),
                                Ok(None) => {
                                    return Err(BinlogError::Unavailable {
                                        reason: "the binlog reader stopped".into(),
                                    });
                                }
                                Ok(Some(batch)) => batch?,
                            }
                        }
                    };
                    // Batches that queued up while the broker had the previous one go out
                    // together: a queue of small batches would add a round trip each.
                    let max = self.inner.config.batch_size.max(1);
                    let mut batch = first;
                    let mut merged = 1;
                    while batch.messages.len() < max {
                        let Ok(next) = streaming.batches.try_recv() else {
                            break;
                        };
                        let next = next?;
                        if batch.messages.len() + next.messages.len() > max {
                            streaming.peeked = Some(next);
                            break;
                        }
                        batch.messages.extend(next.messages);
                        batch.outbox_ids.extend(next.outbox_ids);
                        if next.end.is_some() {
                            batch.end = next.end;
                            batch.commit_time = next.commit_time;
                        }
                        merged += 1;
                    }
                    reader.handed = Some(Handed::Stream {
                        end: batch.end,
                        outbox_ids: batch.outbox_ids,
                        commit_time: batch.commit_time,
                        messages: batch.messages.len(),
                        batches: merged,
                    });
                    return Ok(Some(SourceBatch {
                        messages: batch.messages,
                        through: Position::new(BATCHES.fetch_add(1, Ordering::Relaxed)),
                    }));
                }
            }
        }
    }

    /// Checks the server and the stored position, then starts the snapshot or the stream.
    async fn start(&self, reader: &mut Reader) -> Result<()> {
        let config = Arc::clone(&self.inner.config);
        let capture = config.capture.as_str();
        let mut control_guard = self.inner.control.lock().await;
        let control = control_guard.as_mut().ok_or_else(lease_lost)?;
        let server = ServerInfo::read(control).await?;
        server.check(capture)?;
        if server.server_id == config.server_id {
            return Err(BinlogError::Config {
                reason: format!(
                    "the capture's replica server id {} is the server's own server_id; choose another",
                    config.server_id
                ),
            });
        }
        let mapper = Arc::new(Mapper::new(
            Arc::clone(&config),
            self.inner.state_database.clone(),
        ));
        let record = self.inner.state.load(control).await?;
        let position = match record {
            Some(row) if row.status == Status::Streaming => {
                self.check_position(control, &server, &row.position).await?;
                row.position
            }
            // A snapshot that did not finish starts over (its rows are published again,
            // with new ids: harmless for upserts, and no gap).
            _ if config.wants_snapshot() => {
                drop(control_guard);
                let snapshot = Snapshot::open(&config, Arc::clone(&mapper), &server).await?;
                let mut control_guard = self.inner.control.lock().await;
                let control = control_guard.as_mut().ok_or_else(lease_lost)?;
                self.inner
                    .state
                    .create(control, Status::Snapshot, snapshot.position())
                    .await?;
                tracing::info!(capture, at = %snapshot.position(), "publishing the initial snapshot");
                reader.phase = Phase::Snapshot(Box::new(snapshot));
                return Ok(());
            }
            _ => {
                let now = server.current(control).await?;
                self.inner
                    .state
                    .create(control, Status::Streaming, &now)
                    .await?;
                tracing::info!(capture, at = %now, "capture created; streaming from the binlog's end");
                now
            }
        };
        drop(control_guard);
        lock(&self.inner.progress).stored = Some((0, position.clone()));
        let settings = StreamSettings {
            url: config.url.clone(),
            server_id: config.server_id,
            mariadb: server.mariadb,
            heartbeat: config
                .heartbeat_interval
                .unwrap_or(Duration::from_secs(30))
                .min(config.idle_wait.max(Duration::from_millis(100)) * 4),
            batch_size: config.batch_size,
            capture: config.capture.clone(),
        };
        let binlog = stream::open(&settings, &position).await?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(config.pipeline_depth.max(1));
        let task = tokio::spawn(stream::run(
            binlog,
            settings,
            mapper,
            position.clone(),
            Arc::clone(&shared),
            tx,
        ));
        tracing::info!(capture, from = %position, "streaming the binlog");
        reader.phase = Phase::Streaming(Streaming {
            batches: rx,
            peeked: None,
            task,
            shared,
        });
        Ok(())
    }

    /// The guards: the stored position must still be readable and continued by the server.
    async fn check_position(
        &self,
        control: &mut Conn,
        server: &ServerInfo,
        stored: &BinlogPosition,
    ) -> Result<()> {
        let capture = &self.inner.config.capture;
        match (&stored.gtids, server.mariadb) {
            (Some(gtids), true) => {
                let current = state::gtid_variable(control, "@@global.gtid_binlog_pos").await?;
                let changed = |detail: String| {
                    Err(BinlogError::GtidDomainChanged {
                        capture: capture.clone(),
                        position: stored.clone(),
                        detail,
                    })
                };
                if !gtids.is_empty() {
                    for gtid in gtids.iter() {
                        match current.get(gtid.domain) {
                            None => {
                                return changed(format!(
                                    "the server's binlog has no GTID of domain {} (it is at {current})",
                                    gtid.domain
                                ));
                            }
                            Some(now) if now.sequence < gtid.sequence => {
                                return changed(format!(
                                    "the server is at {now} in domain {}, behind the stored {gtid}",
                                    gtid.domain
                                ));
                            }
                            Some(_) => {}
                        }
                    }
                    for now in current.iter() {
                        if gtids.get(now.domain).is_none() {
                            return changed(format!(
                                "the server now writes GTID domain {} ({now}), which the stored \
                                 position does not know",
                                now.domain
                            ));
                        }
                    }
                }
                // Purged past the position: the first binlog's GTID list is beyond it.
                if let Some((first, _)) = state::binlog_files(control).await?.first() {
                    let sql = format!("SHOW BINLOG EVENTS IN {} LIMIT 4", state::literal(first));
                    for row in state::rows(control, &sql).await? {
                        let kind: Option<String> = row.get(2);
                        let info: Option<String> = row.get(5);
                        if kind.as_deref() != Some("Gtid_list") {
                            continue;
                        }
                        let listed = info
                            .unwrap_or_default()
                            .trim_matches(|c| c == '[' || c == ']')
                            .parse::<super::position::GtidList>()
                            .unwrap_or_default();
                        for oldest in listed.iter() {
                            let behind = gtids
                                .get(oldest.domain)
                                .is_none_or(|s| s.sequence < oldest.sequence);
                            if behind && !gtids.is_empty() {
                                return Err(BinlogError::BinlogPurged {
                                    capture: capture.clone(),
                                    position: stored.clone(),
                                    detail: format!(
                                        "the oldest binlog {first} starts after {oldest}"
                                    ),
                                });
                            }
                        }
                    }
                }
            }
            _ => {
                let files = state::binlog_files(control).await?;
                if !files.iter().any(|(f, _)| f == &stored.file) {
                    return Err(BinlogError::BinlogPurged {
                        capture: capture.clone(),
                        position: stored.clone(),
                        detail: format!(
                            "binlog file {} is not on the server any more (it has {})",
                            stored.file,
                            files
                                .iter()
                                .map(|(f, _)| f.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    async fn finish_snapshot(&self, position: &BinlogPosition) -> Result<()> {
        let mut control = self.inner.control.lock().await;
        let conn = control.as_mut().ok_or_else(lease_lost)?;
        self.inner.state.snapshot_done(conn).await?;
        tracing::info!(capture = self.inner.config.capture, at = %position, "initial snapshot published; streaming");
        Ok(())
    }

    async fn mark(&self, reader: &mut Reader, handed: Handed) -> Result<()> {
        match handed {
            Handed::Snapshot { rows, outbox_ids } => {
                let mut control = self.inner.control.lock().await;
                let conn = control.as_mut().ok_or_else(lease_lost)?;
                self.inner.state.snapshot_progress(conn, rows).await?;
                drop(control);
                self.delete_published(&outbox_ids).await;
                lock(&self.inner.progress).published += rows as u64;
            }
            Handed::Stream {
                end,
                outbox_ids,
                commit_time,
                messages,
                batches,
            } => {
                if let Some((ordinal, position)) = end {
                    self.store(ordinal, &position).await?;
                    let mut progress = lock(&self.inner.progress);
                    if commit_time.is_some() {
                        progress.last_commit = commit_time;
                    }
                }
                // Only now: an idle position read while these were in flight is not stored.
                if let Phase::Streaming(streaming) = &reader.phase {
                    streaming
                        .shared
                        .in_flight
                        .fetch_sub(batches, Ordering::SeqCst);
                }
                self.delete_published(&outbox_ids).await;
                lock(&self.inner.progress).published += messages as u64;
            }
        }
        Ok(())
    }

    /// Stores `position` (reached at stream `ordinal`) unless a later one is stored.
    async fn store(&self, ordinal: u64, position: &BinlogPosition) -> Result<()> {
        let newer = lock(&self.inner.progress)
            .stored
            .as_ref()
            .is_none_or(|(o, p)| ordinal > *o && p != position);
        if !newer {
            return Ok(());
        }
        let mut control = self.inner.control.lock().await;
        let conn = control.as_mut().ok_or_else(lease_lost)?;
        self.inner.state.store(conn, position).await?;
        self.inner.stored(ordinal, position);
        Ok(())
    }

    async fn delete_published(&self, ids: &[u64]) {
        let Some(outbox) = &self.inner.config.outbox else {
            return;
        };
        if !outbox.delete_published || ids.is_empty() {
            return;
        }
        let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let sql = format!(
            "DELETE FROM {}.{} WHERE {} IN ({list})",
            state::ident(&outbox.schema),
            state::ident(&outbox.table),
            state::ident(&outbox.id_column)
        );
        let mut control = self.inner.control.lock().await;
        if let Some(conn) = control.as_mut()
            && let Err(error) = state::exec(conn, &sql).await
        {
            // Not worth failing the batch: the rows are published; a later run deletes the
            // leftovers by hand or they stay.
            tracing::warn!(%error, "deleting published outbox rows failed");
        }
    }

    async fn lose_lease(&self) {
        self.inner.lease_held.store(false, Ordering::SeqCst);
        self.inner.control.lock().await.take();
    }
}

#[async_trait]
impl RelaySource for BinlogSource {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn read_batch(&self, _max: usize) -> tributary_core::Result<Option<SourceBatch>> {
        if let Some(error) = self.stopped_error() {
            return Err(error);
        }
        let mut reader = self.inner.reader.lock().await;
        if reader.handed.is_some() {
            // Handed out but never marked (the relay gave up on it): read again from the
            // stored position, which gives the same changes with the same ids.
            reader.phase = Phase::Idle;
            reader.handed = None;
        }
        match self.read(&mut reader).await {
            Ok(batch) => Ok(batch),
            Err(error) => {
                reader.phase = Phase::Idle;
                reader.handed = None;
                Err(self.fail(error))
            }
        }
    }

    async fn mark_published(&self, _through: Position) -> tributary_core::Result<()> {
        let mut reader = self.inner.reader.lock().await;
        let Some(handed) = reader.handed.take() else {
            return Ok(());
        };
        match self.mark(&mut reader, handed).await {
            Ok(()) => Ok(()),
            Err(error) if error.is_retryable() || matches!(error, BinlogError::Server { .. }) => {
                tracing::warn!(%error, "storing the binlog position failed; giving up the lease");
                reader.phase = Phase::Idle;
                drop(reader);
                self.lose_lease().await;
                Ok(())
            }
            Err(error) => {
                reader.phase = Phase::Idle;
                Err(self.fail(error))
            }
        }
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }

    fn poll_every(&self) -> Duration {
        Duration::from_millis(1)
    }

    async fn try_lease(&self) -> tributary_core::Result<Option<Box<dyn LeaseGuard>>> {
        if let Some(error) = self.stopped_error() {
            return Err(error);
        }
        let epoch = self.inner.lease_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.lease_held.store(false, Ordering::SeqCst);
        {
            let mut reader = self.inner.reader.lock().await;
            reader.phase = Phase::Idle;
            reader.handed = None;
        }
        if let Some(old) = self.inner.control.lock().await.take() {
            disconnect(old).await;
        }
        let config = &self.inner.config;
        let acquired = async {
            let mut conn = state::connect(&config.url).await?;
            if !state::try_lock(&mut conn, &config.lease_lock()).await? {
                disconnect(conn).await;
                return Ok(None);
            }
            self.inner.state.ensure_table(&mut conn).await?;
            Ok::<_, BinlogError>(Some(conn))
        }
        .await;
        let conn = match acquired {
            Ok(Some(conn)) => conn,
            Ok(None) => return Ok(None),
            Err(error) => return Err(self.fail(error)),
        };
        *self.inner.control.lock().await = Some(conn);
        self.inner.lease_held.store(true, Ordering::SeqCst);
        let keeper = tokio::spawn(keep_lease(Arc::downgrade(&self.inner), epoch));
        tracing::info!(capture = config.capture, "binlog capture holds its lease");
        Ok(Some(Box::new(BinlogLease {
            inner: Arc::downgrade(&self.inner),
            epoch,
            keeper,
        })))
    }
}

struct BinlogLease {
    inner: Weak<Inner>,
    epoch: u64,
    keeper: JoinHandle<()>,
}

impl LeaseGuard for BinlogLease {
    fn is_held(&self) -> bool {
        self.inner.upgrade().is_some_and(|inner| {
            inner.lease_epoch.load(Ordering::SeqCst) == self.epoch
                && inner.lease_held.load(Ordering::SeqCst)
        })
    }
}

impl Drop for BinlogLease {
    fn drop(&mut self) {
        self.keeper.abort();
        if let Some(inner) = self.inner.upgrade()
            && inner.lease_epoch.load(Ordering::SeqCst) == self.epoch
        {
            inner.lease_held.store(false, Ordering::SeqCst);
        }
    }
}

/// Checks the lease's connection and, every heartbeat interval, stores the idle position
/// the stream reached (nothing in flight), until the lease ends.
async fn keep_lease(inner: Weak<Inner>, epoch: u64) {
    let mut last_beat = Instant::now();
    loop {
        let Some(check) = inner.upgrade().map(|i| i.config.lease_check_interval) else {
            return;
        };
        tokio::time::sleep(check).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.lease_epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        let beat = inner
            .config
            .heartbeat_interval
            .is_some_and(|every| last_beat.elapsed() >= every);
        // The idle position, if nothing is in flight: read it before the in-flight count, so
        // that every batch before it is known to be marked.
        let idle = if beat {
            let reader = inner.reader.lock().await;
            match &reader.phase {
                Phase::Streaming(streaming) if reader.handed.is_none() => {
                    let idle = lock(&streaming.shared.idle).clone();
                    (streaming.shared.in_flight.load(Ordering::SeqCst) == 0)
                        .then_some(idle)
                        .flatten()
                }
                _ => None,
            }
        } else {
            None
        };
        let mut control = inner.control.lock().await;
        let Some(conn) = control.as_mut() else {
            inner.lease_held.store(false, Ordering::SeqCst);
            return;
        };
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            if let Some((ordinal, position)) = &idle {
                let newer = lock(&inner.progress)
                    .stored
                    .as_ref()
                    .is_none_or(|(o, p)| ordinal > o && p != position);
                if newer {
                    inner.state.store(conn, position).await?;
                    inner.stored(*ordinal, position);
                }
                Ok(())
            } else {
                state::exec(conn, "SELECT 1").await
            }
        })
        .await;
        if beat {
            last_beat = Instant::now();
        }
        lock(&inner.metrics).sample();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) if !error.is_retryable() => {
                tracing::warn!(%error, "binlog heartbeat failed");
            }
            failed => {
                let reason = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::warn!(
                    reason,
                    "the binlog capture's control connection failed; lease lost"
                );
                *control = None;
                inner.lease_held.store(false, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Says goodbye to the server, but never waits long for a connection that may be dead.
async fn disconnect(conn: Conn) {
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.disconnect()).await;
}

fn lease_lost() -> BinlogError {
    BinlogError::Unavailable {
        reason: "the capture's lease (control connection) was lost".into(),
    }
}

/// Runs a binlog capture until `shutdown`: the entry point of `tributary cdc --db mysql://…`.
///
/// # Errors
///
/// As [`BinlogSource::run`].
pub async fn capture_binlog(
    config: BinlogConfig,
    broker: Arc<dyn Broker>,
    shutdown: CancellationToken,
) -> Result<()> {
    Arc::new(BinlogSource::new(config)?)
        .run(broker, shutdown)
        .await
}

/// The operator's re-snapshot: forgets the capture's stored position, so the next run starts
/// over (with a new snapshot where configured, else from the binlog's end). Run it with the
/// capture stopped.
///
/// # Errors
///
/// [`BinlogError::LeaseHeld`] while the capture runs; connection failures.
pub async fn resnapshot_binlog(config: &BinlogConfig) -> Result<()> {
    let source = BinlogSource::new(config.clone())?;
    let mut conn = state::connect(&config.url).await?;
    if !state::try_lock(&mut conn, &config.lease_lock()).await? {
        disconnect(conn).await;
        return Err(BinlogError::LeaseHeld {
            capture: config.capture.clone(),
        });
    }
    source.inner.state.ensure_table(&mut conn).await?;
    let result = source.inner.state.forget(&mut conn).await;
    let _ = state::unlock(&mut conn, &config.lease_lock()).await;
    disconnect(conn).await;
    result
}

/// How far behind a binlog capture is.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BinlogLag {
    pub capture: String,
    /// The stored position (`None`: the capture never ran).
    pub stored: Option<BinlogPosition>,
    /// Where the server's binlog ends.
    pub current: BinlogPosition,
    /// Binlog bytes between the two (summed over files).
    pub bytes: Option<u64>,
    /// GTIDs between the two, summed over domains (MariaDB).
    pub transactions: Option<u64>,
    /// When the state row was written last.
    pub stored_at: Option<String>,
}

/// Reads a capture's lag from the server. Reads only: where no capture ever ran (no state
/// table), nothing is created and nothing is stored.
///
/// # Errors
///
/// Connection failures.
pub async fn binlog_lag(config: &BinlogConfig) -> Result<BinlogLag> {
    use mysql_async::prelude::Queryable;
    let source = BinlogSource::new(config.clone())?;
    let mut conn = state::connect(&config.url).await?;
    let server = ServerInfo::read(&mut conn).await?;
    let current = server.current(&mut conn).await?;
    let database = &source.inner.state_database;
    let sql = format!(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
        state::literal(database),
        state::literal(super::mapping::STATE_TABLE)
    );
    let tables: Option<u64> = conn
        .query_first(&sql)
        .await
        .map_err(|e| BinlogError::driver(&sql, e))?;
    let (stored, stored_at) = if tables.unwrap_or(0) == 0 {
        (None, None)
    } else {
        let stored = source
            .inner
            .state
            .load(&mut conn)
            .await?
            .map(|r| r.position);
        let sql = format!(
            "SELECT CAST(updated_at AS CHAR) FROM {}.{} WHERE capture = {}",
            state::ident(database),
            state::ident(super::mapping::STATE_TABLE),
            state::literal(&config.capture)
        );
        let stored_at: Option<String> = conn
            .query_first(&sql)
            .await
            .map_err(|e| BinlogError::driver(&sql, e))?;
        (stored, stored_at)
    };
    let files = state::binlog_files(&mut conn).await?;
    disconnect(conn).await;
    let bytes = stored.as_ref().and_then(|s| {
        let start = files.iter().position(|(f, _)| f == &s.file)?;
        let end = files.iter().position(|(f, _)| f == &current.file)?;
        let mut total = 0u64;
        for (i, (_, size)) in files.iter().enumerate().take(end + 1).skip(start) {
            let from = if i == start { s.offset } else { 0 };
            let to = if i == end { current.offset } else { *size };
            total += to.saturating_sub(from);
        }
        Some(total)
    });
    let transactions = match (
        stored.as_ref().and_then(|s| s.gtids.as_ref()),
        &current.gtids,
    ) {
        (Some(stored), Some(now)) => Some(
            now.iter()
                .map(|g| {
                    g.sequence
                        .saturating_sub(stored.get(g.domain).map_or(0, |s| s.sequence))
                })
                .sum(),
        ),
        _ => None,
    };
    Ok(BinlogLag {
        capture: config.capture.clone(),
        stored,
        current,
        bytes,
        transactions,
        stored_at,
    })
}
