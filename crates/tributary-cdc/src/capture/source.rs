//! [`CdcSource`]: the capture as a [`RelaySource`], published by the same relay as an outbox.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tributary_core::{Broker, LeaseGuard, Position, RelaySource, SourceBatch};
use tributary_runtime::{Relay, RelayConfig};

use super::config::CdcConfig;
use super::error::{CdcError, Result};
use super::ids::IdSpace;
use super::lag::{SlotLag, query_lag};
use super::mapping::Mapper;
use super::pipeline::{Hooks, Pipeline};
use super::snapshot::SnapshotReader;
use super::state::{self, SlotStatus, StateSql};
use crate::lsn::Lsn;
use crate::metrics::CaptureMetrics;
use crate::pgoutput::PgTimestamp;
use crate::replication::{
    ReplicationConnection, ReplicationError, SnapshotAction, StartReplication,
};
use crate::sql::{SqlSession, fill, ident};

/// How long a control statement may take before the lease is considered lost.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL capture as a relay source: [`read_batch`](RelaySource::read_batch) returns
/// the events of whole committed transactions (after the initial snapshot, if any),
/// [`mark_published`](RelaySource::mark_published) confirms their end to the slot, and
/// [`try_lease`](RelaySource::try_lease) takes the slot's advisory lock.
///
/// Run it with [`CdcSource::run`] (or [`capture`](super::capture)), or hand it to a
/// [`Relay`] yourself and call [`close`](Self::close) when done.
pub struct CdcSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CdcSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdcSource")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: Arc<CdcConfig>,
    name: String,
    state: StateSql,
    /// The replication stream, the decoder and the batch being built.
    reader: Mutex<Reader>,
    /// The control connection; it holds the lease (a session advisory lock).
    control: Mutex<Option<SqlSession>>,
    /// Which lease is current; a guard of an older one reports itself lost.
    lease_epoch: AtomicU64,
    lease_held: AtomicBool,
    progress: StdMutex<Progress>,
    metrics: StdMutex<CaptureMetrics>,
    /// The error that stopped the capture.
    fatal: StdMutex<Option<CdcError>>,
    stop: CancellationToken,
    commits: watch::Sender<u64>,
}

/// What has been confirmed, for the lag API and the limit check.
#[derive(Debug, Default, Clone)]
struct Progress {
    /// The last position confirmed to the slot.
    confirmed: Lsn,
    /// The record's `position_limit` as last read or written.
    limit: Lsn,
    last_confirmed_commit: Option<DateTime<Utc>>,
    published: u64,
}

#[derive(Default)]
struct Reader {
    phase: Phase,
    mapper: Option<Arc<Mapper>>,
    /// The batch handed out and not yet marked published.
    outstanding: Option<Outstanding>,
}

#[derive(Default)]
enum Phase {
    /// Nothing open: the next read checks the slot and starts.
    #[default]
    Idle,
    Snapshot(Box<SnapshotReader>),
    /// The stream, decoded ahead by the pipeline's task.
    Streaming(Pipeline),
}

struct Outstanding {
    through: Position,
    messages: usize,
    /// Pipeline batches merged into this one.
    batches: usize,
    kind: BatchKind,
}

enum BatchKind {
    Stream {
        through: Lsn,
        outbox_max: Option<i64>,
        commit_time: Option<PgTimestamp>,
    },
    Snapshot {
        rows: usize,
        done: bool,
        outbox_max: Option<i64>,
    },
}

impl Reader {
    /// Ends whatever is open; the next read starts from the slot again.
    async fn stop(&mut self) {
        match std::mem::take(&mut self.phase) {
            Phase::Idle => {}
            Phase::Snapshot(snapshot) => snapshot.finish().await,
            Phase::Streaming(pipeline) => pipeline.stop().await,
        }
        self.outstanding = None;
    }
}

impl CdcSource {
    /// A source for `config`; nothing connects until the relay asks for the lease.
    ///
    /// # Errors
    ///
    /// [`CdcError::Config`] when the configuration cannot work.
    pub fn new(config: CdcConfig) -> Result<Self> {
        validate(&config)?;
        let state = StateSql::new(&config.state_schema, &config.slot);
        let (commits, _) = watch::channel(0);
        let metrics = CaptureMetrics::new(config.slot.as_str());
        Ok(CdcSource {
            inner: Arc::new(Inner {
                name: format!("cdc:{}", config.slot),
                config: Arc::new(config),
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

    /// The configuration.
    pub fn config(&self) -> &CdcConfig {
        &self.inner.config
    }

    /// Publishes into `broker` with a [`Relay`] until `shutdown` is cancelled or the capture
    /// hits an error it must not retry, then closes its connections.
    ///
    /// # Errors
    ///
    /// The error that stopped the capture: slot trouble ([`CdcError::SlotMissing`],
    /// [`CdcError::SlotRecreated`], [`CdcError::SlotInvalidated`], …), a configuration the
    /// server rejects, or undecodable data. `Ok` after a requested shutdown.
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
        let relay = Relay::new(self.clone(), broker, relay_config);
        let relayed = relay.run(stop).await;
        forward.abort();
        self.close().await;
        // The source's own fatal error is the cause (the relay only saw it as a storage
        // problem); otherwise whatever stopped the relay.
        match (lock(&self.inner.fatal).take(), relayed) {
            (Some(error), _) => Err(error),
            (None, Err(error)) => Err(CdcError::Publish(error)),
            (None, Ok(())) => Ok(()),
        }
    }

    /// Stops streaming (sending the last confirmed position) and closes the control
    /// connection, releasing the lease.
    pub async fn close(&self) {
        self.inner.lease_held.store(false, Ordering::SeqCst);
        self.inner.lease_epoch.fetch_add(1, Ordering::SeqCst);
        self.inner.reader.lock().await.stop().await;
        if let Some(mut session) = self.inner.control.lock().await.take() {
            let _ = state::unlock(&mut session, &self.inner.config.slot).await;
            session.close().await;
        }
    }

    /// The last position confirmed to the slot by this process.
    pub fn confirmed(&self) -> Lsn {
        lock(&self.inner.progress).confirmed
    }

    /// Messages acknowledged by the broker and marked published by this process.
    pub fn published(&self) -> u64 {
        lock(&self.inner.progress).published
    }

    /// The slot's lag now: WAL bytes the slot still holds for this capture, and how long
    /// ago the last confirmed transaction committed.
    ///
    /// # Errors
    ///
    /// Connection failures; [`CdcError::SlotMissing`] if the slot does not exist.
    pub async fn lag(&self) -> Result<SlotLag> {
        let mut lag = super::lag::slot_lag(&self.inner.config).await?;
        let progress = lock(&self.inner.progress).clone();
        lag.last_confirmed_commit = progress.last_confirmed_commit;
        lag.since_last_confirmed_commit = progress
            .last_confirmed_commit
            .and_then(|at| (Utc::now() - at).to_std().ok());
        Ok(lag)
    }

    /// Records a failure: errors that cannot heal stop the capture.
    fn fail(&self, error: CdcError) -> tributary_core::Error {
        let core = error.to_core();
        if error.is_retryable() {
            tracing::warn!(source = self.inner.name, %error, "capture failed; retrying");
        } else {
            tracing::error!(source = self.inner.name, %error, "capture stopped");
            lock(&self.inner.fatal).get_or_insert(error);
            self.inner.stop.cancel();
        }
        core
    }

    fn stopped_error(&self) -> Option<tributary_core::Error> {
        lock(&self.inner.fatal)
            .as_ref()
            .map(|error| tributary_core::Error::storage_msg(error.to_string()))
    }

    /// Reads the next batch; see the module doc of `capture`.
    async fn read(&self, reader: &mut Reader, max: usize) -> Result<Option<SourceBatch>> {
        loop {
            match &mut reader.phase {
                Phase::Idle => self.start(reader).await?,
                Phase::Snapshot(snapshot) => {
                    let mapper = reader
                        .mapper
                        .as_ref()
                        .ok_or_else(|| CdcError::protocol("snapshot without a mapper"))?;
                    let (messages, outbox_max) = snapshot.read(max, mapper).await?;
                    if messages.is_empty() {
                        self.finish_snapshot(reader).await?;
                        continue;
                    }
                    let batch = SourceBatch {
                        through: Position::new(snapshot.consistent_point().as_u64()),
                        messages,
                    };
                    reader.outstanding = Some(Outstanding {
                        through: batch.through,
                        messages: batch.messages.len(),
                        batches: 0,
                        kind: BatchKind::Snapshot {
                            rows: batch.messages.len(),
                            done: snapshot.is_done(),
                            outbox_max,
                        },
                    });
                    return Ok(Some(batch));
                }
                Phase::Streaming(_) => return self.read_stream(reader, max).await,
            }
        }
    }

    async fn read_stream(&self, reader: &mut Reader, max: usize) -> Result<Option<SourceBatch>> {
        let Reader {
            phase, outstanding, ..
        } = reader;
        let Phase::Streaming(pipeline) = phase else {
            return Err(CdcError::protocol("reading a stream that is not open"));
        };
        let Some((taken, batches)) = pipeline
            .next(self.inner.config.idle_wait, max, &self.inner.stop)
            .await?
        else {
            return Ok(None);
        };
        // A part of an oversized transaction moves nothing: its position is whatever is
        // confirmed when it is handed out (the decoder took it earlier, maybe before the
        // batch ahead of it was confirmed).
        let mut taken = taken;
        taken.through = taken.through.max(self.confirmed());
        let batch = SourceBatch {
            messages: taken.messages,
            through: Position::new(taken.through.as_u64()),
        };
        *outstanding = Some(Outstanding {
            through: batch.through,
            messages: batch.messages.len(),
            batches,
            kind: BatchKind::Stream {
                through: taken.through,
                outbox_max: taken.outbox_max,
                commit_time: taken.commit_time,
            },
        });
        Ok(Some(batch))
    }

    /// What the pipeline's task asks of the source: the confirmed position, confirming idle
    /// positions (a keepalive, a heartbeat, an empty transaction: they cover nothing
    /// unpublished) as far as the recorded limit allows, and the errors of the stream.
    fn hooks(&self) -> Hooks {
        let (confirmed, idle) = (Arc::downgrade(&self.inner), Arc::downgrade(&self.inner));
        let heartbeat = Arc::downgrade(&self.inner);
        let slot = self.inner.config.slot.to_string();
        let errors = Arc::downgrade(&self.inner);
        Hooks {
            confirmed: Box::new(move || {
                confirmed
                    .upgrade()
                    .map_or(Lsn::ZERO, |inner| lock(&inner.progress).confirmed)
            }),
            idle: Box::new(move |position| {
                let inner = idle.upgrade()?;
                let mut progress = lock(&inner.progress);
                let target = position.min(progress.limit);
                (target > progress.confirmed).then(|| {
                    progress.confirmed = target;
                    lock(&inner.metrics).confirmed(Some(target.as_u64()));
                    target
                })
            }),
            heartbeat: Box::new(move || {
                if let Some(inner) = heartbeat.upgrade() {
                    lock(&inner.metrics).heartbeat_seen();
                }
            }),
            stream_error: Box::new(move |error| {
                let confirmed = errors
                    .upgrade()
                    .map_or(Lsn::ZERO, |inner| lock(&inner.progress).confirmed);
                CdcError::from_stream(error, &slot, confirmed)
            }),
        }
    }

    /// Checks the slot against the record and starts the snapshot or the stream.
    async fn start(&self, reader: &mut Reader) -> Result<()> {
        let config = Arc::clone(&self.inner.config);
        let slot = &config.slot;
        let mut control_guard = self.inner.control.lock().await;
        let control = control_guard.as_mut().ok_or_else(lease_lost)?;
        let mut replication = ReplicationConnection::connect(&config.connection).await?;
        let system = replication.identify_system().await?;
        let database = system
            .database
            .clone()
            .unwrap_or_else(|| config.connection.database.clone());
        let ids = IdSpace::new(&system.system_id, &database, slot.as_str());
        let record = self.inner.state.load(control).await?;
        let info = replication.slot(slot).await?;
        let slot_confirmed = info
            .as_ref()
            .and_then(|i| i.confirmed_flush_lsn)
            .unwrap_or(Lsn::ZERO);
        let limit = match (&record, &info) {
            (None, None) => None,
            (None, Some(_)) => {
                if config.wants_snapshot() {
                    return Err(CdcError::SlotNotManaged {
                        slot: slot.to_string(),
                    });
                }
                tracing::warn!(
                    slot = slot.as_str(),
                    confirmed = %slot_confirmed,
                    "taking over a slot this capture did not create; streaming from its confirmed position"
                );
                Some(
                    self.inner
                        .state
                        .adopt(control, &system.system_id, &database, slot_confirmed)
                        .await?,
                )
            }
            (Some(record), _) if record.system_id != system.system_id => {
                return Err(CdcError::OtherSystem {
                    slot: slot.to_string(),
                    recorded: record.system_id.clone(),
                    actual: system.system_id.clone(),
                });
            }
            // An interrupted creation or snapshot: nothing was confirmed, start over.
            (Some(record), _) if record.status != SlotStatus::Streaming => None,
            (Some(record), None) => {
                return Err(CdcError::SlotMissing {
                    slot: slot.to_string(),
                    confirmed: record.position_limit.unwrap_or(Lsn::ZERO),
                });
            }
            (Some(record), Some(_)) => {
                let limit = record.position_limit.unwrap_or(Lsn::ZERO);
                if slot_confirmed > limit {
                    return Err(CdcError::SlotRecreated {
                        slot: slot.to_string(),
                        slot_confirmed,
                        recorded: limit,
                    });
                }
                Some(limit)
            }
        };
        let primary_keys = state::primary_keys(control, &config.publications).await?;
        let mapper = Arc::new(Mapper::new(Arc::clone(&config), ids, primary_keys));
        reader.mapper = Some(Arc::clone(&mapper));
        // Where the slot stands; starting there explicitly makes the server refuse a slot
        // that moved since it was checked (dropped and recreated in between).
        let (limit, resume) = match limit {
            Some(limit) => (limit, slot_confirmed),
            None => {
                let created = self
                    .create(control, &mut replication, &system.system_id, &database)
                    .await?;
                if let Some(snapshot) = created {
                    replication.close().await?;
                    self.set_positions(snapshot.consistent_point(), snapshot.consistent_point());
                    tracing::info!(
                        slot = slot.as_str(),
                        at = %snapshot.consistent_point(),
                        "slot created; publishing the initial snapshot"
                    );
                    reader.phase = Phase::Snapshot(Box::new(snapshot));
                    return Ok(());
                }
                let record = self.inner.state.load(control).await?;
                let created = record.and_then(|r| r.position_limit).unwrap_or(Lsn::ZERO);
                (created, created)
            }
        };
        drop(control_guard);
        let mut start =
            StartReplication::new(slot.clone(), config.publications.clone()).with_messages(true);
        if !resume.is_zero() {
            start = start.with_resume_from(resume);
        }
        let stream = replication
            .start(start)
            .await
            .map_err(|e| CdcError::from_stream(e, slot.as_str(), limit))?;
        let confirmed = stream.slot().confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
        self.set_positions(confirmed, limit);
        tracing::info!(slot = slot.as_str(), from = %confirmed, "streaming from the slot");
        reader.phase = Phase::Streaming(Pipeline::spawn(
            stream,
            mapper,
            config.batch_size,
            config.pipeline_depth,
            self.hooks(),
        ));
        Ok(())
    }

    /// Creates the slot (dropping an unfinished one first); with snapshot tables, imports its
    /// exported snapshot and returns the reader.
    async fn create(
        &self,
        control: &mut SqlSession,
        replication: &mut ReplicationConnection,
        system_id: &str,
        database: &str,
    ) -> Result<Option<SnapshotReader>> {
        let config = &self.inner.config;
        let tables: Vec<_> = config.snapshot_tables().cloned().collect();
        let outbox = config.snapshot_outbox().cloned();
        let status = if !config.wants_snapshot() {
            SlotStatus::Creating
        } else {
            SlotStatus::Snapshot
        };
        let state = &self.inner.state;
        state
            .begin_creating(control, system_id, database, status)
            .await?;
        state.drop_slot(control).await?;
        let action = if config.wants_snapshot() {
            SnapshotAction::Export
        } else {
            SnapshotAction::NoExport
        };
        let created = replication.create_slot(&config.slot, action).await?;
        if !config.wants_snapshot() {
            state
                .slot_created(control, SlotStatus::Streaming, created.consistent_point)
                .await?;
            tracing::info!(slot = config.slot.as_str(), at = %created.consistent_point, "slot created");
            return Ok(None);
        }
        let name = created
            .snapshot_name
            .ok_or_else(|| CdcError::protocol("CREATE_REPLICATION_SLOT exported no snapshot"))?;
        // Before the replication connection runs anything else, which ends the snapshot.
        let snapshot = SnapshotReader::open(
            &config.connection,
            &name,
            tables,
            outbox,
            created.consistent_point,
            Utc::now(),
        )
        .await?;
        state
            .slot_created(control, SlotStatus::Snapshot, created.consistent_point)
            .await?;
        Ok(Some(snapshot))
    }

    async fn finish_snapshot(&self, reader: &mut Reader) -> Result<()> {
        if let Phase::Snapshot(snapshot) = std::mem::take(&mut reader.phase) {
            snapshot.finish().await;
        }
        let mut control = self.inner.control.lock().await;
        let session = control.as_mut().ok_or_else(lease_lost)?;
        self.inner.state.snapshot_done(session).await?;
        tracing::info!(
            slot = self.inner.config.slot.as_str(),
            "initial snapshot published; streaming"
        );
        Ok(())
    }

    fn set_positions(&self, confirmed: Lsn, limit: Lsn) {
        let mut progress = lock(&self.inner.progress);
        progress.confirmed = confirmed;
        progress.limit = limit;
    }

    /// Records a published batch; see [`RelaySource::mark_published`].
    async fn mark(&self, reader: &mut Reader, outstanding: &Outstanding) -> Result<()> {
        match outstanding.kind {
            BatchKind::Snapshot {
                rows,
                done,
                outbox_max,
            } => {
                let mut control = self.inner.control.lock().await;
                let session = control.as_mut().ok_or_else(lease_lost)?;
                self.inner.state.snapshot_progress(session, rows).await?;
                drop(control);
                self.delete_published(outbox_max).await;
                if done {
                    self.finish_snapshot(reader).await?;
                }
            }
            BatchKind::Stream {
                through,
                outbox_max,
                commit_time,
            } => {
                let (confirmed, limit) = {
                    let progress = lock(&self.inner.progress);
                    (progress.confirmed, progress.limit)
                };
                if through > confirmed {
                    if through > limit {
                        let mut control = self.inner.control.lock().await;
                        let session = control.as_mut().ok_or_else(lease_lost)?;
                        let limit = self.inner.state.raise_limit(session, through).await?;
                        let mut progress = lock(&self.inner.progress);
                        progress.limit = progress.limit.max(limit);
                        if progress.limit < through {
                            return Err(CdcError::protocol(
                                "the slot record was not raised (is the record still there?)",
                            ));
                        }
                    }
                    let Phase::Streaming(pipeline) = &reader.phase else {
                        return Err(CdcError::protocol("confirming without a stream"));
                    };
                    pipeline.confirmer.confirm(through);
                    let mut progress = lock(&self.inner.progress);
                    progress.confirmed = progress.confirmed.max(through);
                    lock(&self.inner.metrics).confirmed(Some(progress.confirmed.as_u64()));
                    if let Some(time) = commit_time.and_then(PgTimestamp::to_utc) {
                        progress.last_confirmed_commit = Some(time);
                    }
                }
                // Only now may the decoder confirm idle positions again.
                if let Phase::Streaming(pipeline) = &reader.phase {
                    pipeline
                        .in_flight
                        .fetch_sub(outstanding.batches, std::sync::atomic::Ordering::SeqCst);
                }
                self.delete_published(outbox_max).await;
            }
        }
        lock(&self.inner.progress).published += outstanding.messages as u64;
        Ok(())
    }

    /// Deletes the outbox rows up to `outbox_max` once they were published, if configured.
    async fn delete_published(&self, outbox_max: Option<i64>) {
        let (Some(outbox), Some(id)) = (&self.inner.config.outbox, outbox_max) else {
            return;
        };
        if !outbox.delete_published {
            return;
        }
        let sql = fill(
            include_str!("sql/delete_outbox.sql"),
            &[
                &format!("{}.{}", ident(&outbox.schema), ident(&outbox.table)),
                &ident(&outbox.id_column),
                &id.to_string(),
            ],
        );
        let mut control = self.inner.control.lock().await;
        if let Some(session) = control.as_mut()
            && let Err(error) = session.query(&sql).await
        {
            // Not worth failing the batch: the next delete covers these rows.
            tracing::warn!(%error, "deleting published outbox rows failed");
        }
    }

    /// Drops the control connection (releasing the lease) after it failed.
    async fn lose_lease(&self) {
        self.inner.lease_held.store(false, Ordering::SeqCst);
        if let Some(session) = self.inner.control.lock().await.take() {
            drop(session);
        }
    }
}

#[async_trait]
impl RelaySource for CdcSource {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn read_batch(&self, max: usize) -> tributary_core::Result<Option<SourceBatch>> {
        if let Some(error) = self.stopped_error() {
            return Err(error);
        }
        let mut reader = self.inner.reader.lock().await;
        if reader.outstanding.is_some() {
            // Handed out but never marked (the relay gave up on it): read again from the
            // slot, which gives the same changes with the same ids. Rare enough not to keep
            // a copy of every batch for it. (A snapshot batch restarts the snapshot.)
            reader.stop().await;
        }
        match self.read(&mut reader, max.max(1)).await {
            Ok(batch) => Ok(batch),
            Err(error) => {
                reader.stop().await;
                Err(self.fail(error))
            }
        }
    }

    async fn mark_published(&self, through: Position) -> tributary_core::Result<()> {
        let mut reader = self.inner.reader.lock().await;
        let Some(outstanding) = reader.outstanding.take() else {
            return Ok(());
        };
        if outstanding.through != through {
            tracing::warn!(
                expected = %outstanding.through,
                got = %through,
                "mark_published for another batch than the one handed out"
            );
        }
        match self.mark(&mut reader, &outstanding).await {
            Ok(()) => Ok(()),
            Err(error) if error.is_retryable() || matches!(error, CdcError::Protocol { .. }) => {
                // The control connection failed: give the lease up. Nothing was confirmed
                // beyond what the broker has; whoever takes the lease reads from the slot.
                tracing::warn!(%error, "recording a published batch failed; giving up the lease");
                reader.stop().await;
                drop(reader);
                self.lose_lease().await;
                Ok(())
            }
            Err(error) => {
                reader.stop().await;
                Err(self.fail(error))
            }
        }
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }

    fn poll_every(&self) -> Duration {
        // Reads already wait up to `idle_wait` for the stream.
        Duration::from_millis(1)
    }

    async fn try_lease(&self) -> tributary_core::Result<Option<Box<dyn LeaseGuard>>> {
        if let Some(error) = self.stopped_error() {
            return Err(error);
        }
        // Whatever ran under an earlier lease is over; stopping the stream frees the slot.
        let epoch = self.inner.lease_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.lease_held.store(false, Ordering::SeqCst);
        self.inner.reader.lock().await.stop().await;
        if let Some(old) = self.inner.control.lock().await.take() {
            old.close().await;
        }
        let config = &self.inner.config;
        let acquired = async {
            let mut session = SqlSession::connect(&config.connection).await?;
            if !state::try_lock(&mut session, &config.slot).await? {
                session.close().await;
                return Ok(None);
            }
            self.inner.state.ensure_table(&mut session).await?;
            Ok::<_, CdcError>(Some(session))
        }
        .await;
        let session = match acquired {
            Ok(Some(session)) => session,
            Ok(None) => return Ok(None),
            Err(error) => return Err(self.fail(error)),
        };
        *self.inner.control.lock().await = Some(session);
        self.inner.lease_held.store(true, Ordering::SeqCst);
        let keeper = tokio::spawn(keep_lease(Arc::downgrade(&self.inner), epoch));
        tracing::info!(
            slot = config.slot.as_str(),
            "capture holds the slot's lease"
        );
        Ok(Some(Box::new(CdcLease {
            inner: Arc::downgrade(&self.inner),
            epoch,
            keeper,
        })))
    }
}

/// The lease: valid while its control connection lives and no newer lease replaced it.
struct CdcLease {
    inner: Weak<Inner>,
    epoch: u64,
    keeper: JoinHandle<()>,
}

impl LeaseGuard for CdcLease {
    fn is_held(&self) -> bool {
        self.inner.upgrade().is_some_and(|inner| {
            inner.lease_epoch.load(Ordering::SeqCst) == self.epoch
                && inner.lease_held.load(Ordering::SeqCst)
        })
    }
}

impl Drop for CdcLease {
    fn drop(&mut self) {
        self.keeper.abort();
        if let Some(inner) = self.inner.upgrade()
            && inner.lease_epoch.load(Ordering::SeqCst) == self.epoch
        {
            inner.lease_held.store(false, Ordering::SeqCst);
        }
    }
}

/// Checks the lease's connection and writes heartbeats until the lease ends.
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
        let mut control = inner.control.lock().await;
        let Some(session) = control.as_mut() else {
            inner.lease_held.store(false, Ordering::SeqCst);
            return;
        };
        let outcome = tokio::time::timeout(CONTROL_TIMEOUT, async {
            if beat {
                inner.state.heartbeat(session).await
            } else {
                session.query("SELECT 1").await?;
                Ok(None)
            }
        })
        .await;
        lock(&inner.metrics).sample();
        match outcome {
            Ok(Ok(limit)) => {
                if beat {
                    last_beat = Instant::now();
                }
                if let Some(limit) = limit {
                    let mut progress = lock(&inner.progress);
                    progress.limit = progress.limit.max(limit);
                }
            }
            Ok(Err(error)) if !error.is_retryable() => {
                // The session is fine, the statement is not (permissions, say): keep the
                // lease, say it loudly.
                tracing::warn!(%error, "heartbeat failed");
                last_beat = Instant::now();
            }
            failed => {
                let reason = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::warn!(
                    reason,
                    "the capture's control connection failed; lease lost"
                );
                *control = None;
                inner.lease_held.store(false, Ordering::SeqCst);
                return;
            }
        }
    }
}

fn lease_lost() -> CdcError {
    CdcError::Replication(ReplicationError::Io {
        source: std::io::Error::other("the capture's lease (control connection) was lost"),
    })
}

fn lock<T>(mutex: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn validate(config: &CdcConfig) -> Result<()> {
    let invalid = |reason: &str| {
        Err(CdcError::Config {
            reason: reason.to_owned(),
        })
    };
    if config.publications.is_empty() {
        return invalid("at least one publication is needed");
    }
    if config.tables.is_none() && config.outbox.is_none() && config.messages.is_none() {
        return invalid("no capture mode is on: enable table changes, the outbox or messages");
    }
    if config.name.is_empty() {
        return invalid("the capture needs a name (the events' source)");
    }
    if let (Some(tables), Some(outbox)) = (&config.tables, &config.outbox)
        && tables
            .tables
            .iter()
            .any(|t| t.matches(&outbox.schema, &outbox.table))
    {
        return invalid("the outbox table cannot also be a captured table");
    }
    Ok(())
}

/// Runs a capture until `shutdown` is cancelled: builds a [`CdcSource`] for `config` and
/// publishes it into `broker` with the relay. The entry point of `tributary cdc`.
///
/// # Errors
///
/// As [`CdcSource::run`].
pub async fn capture(
    config: CdcConfig,
    broker: Arc<dyn Broker>,
    shutdown: CancellationToken,
) -> Result<()> {
    Arc::new(CdcSource::new(config)?)
        .run(broker, shutdown)
        .await
}

/// The operator's re-snapshot: drops the slot and forgets the capture's record of it, so that
/// the next run creates the slot again and (with snapshot tables) publishes every row again.
/// Run it with the capture stopped.
///
/// # Errors
///
/// [`CdcError::LeaseHeld`] while a capture of the slot runs; connection failures.
pub async fn resnapshot(config: &CdcConfig) -> Result<()> {
    let mut session = SqlSession::connect(&config.connection).await?;
    if !state::try_lock(&mut session, &config.slot).await? {
        session.close().await;
        return Err(CdcError::LeaseHeld {
            slot: config.slot.to_string(),
        });
    }
    let state = StateSql::new(&config.state_schema, &config.slot);
    state.ensure_table(&mut session).await?;
    let result = state.forget(&mut session).await;
    let _ = state::unlock(&mut session, &config.slot).await;
    session.close().await;
    result
}

pub(crate) async fn lag_of(config: &CdcConfig) -> Result<Option<SlotLag>> {
    let mut session = SqlSession::connect(&config.connection).await?;
    let lag = query_lag(&mut session, &config.slot).await;
    session.close().await;
    lag
}
