//! A running replication stream: payloads out, confirmations in.
//!
//! Delivery guarantee: at-least-once. The slot only moves past a position the caller passed to
//! [`ReplicationStream::confirm`]; everything after the last confirmed position is sent again
//! by the server in the next session, so consumers must be idempotent (the envelope id is the
//! dedup key downstream).
//!
//! A task owns the connection. It answers the server's keepalive requests and sends a standby
//! status update every `status_interval`, also while the consumer is slow and the buffer is
//! full, so the server's `wal_sender_timeout` never ends a stream whose consumer is merely
//! busy waiting for broker acknowledgements. Those updates always carry the last position the
//! caller confirmed (or `0/0`, "nothing", before the first confirmation), never a position the
//! task saw go by.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pgwire_replication::protocol::framing::{MessageReader, write_copy_data, write_copy_done};
use pgwire_replication::protocol::{
    ErrorFields, ReplicationCopyData, encode_standby_status_update, parse_copy_data,
};
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::connection::{Io, STOP_TIMEOUT};
use super::error::{ReplicationError, Result};
use super::slot::SlotInfo;
use crate::lsn::Lsn;
use crate::pgoutput::PgTimestamp;

/// One message of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL data: one pgoutput message.
    XLogData(XLogData),
    /// A primary keepalive (already answered if the server asked for a reply).
    KeepAlive(KeepAlive),
}

/// An XLogData message: one pgoutput payload and where it sits in the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// The WAL position of the data: the LSN of the change, of the transaction's first
    /// change for Begin, of the end of the commit record for Commit. `0/0` for messages the
    /// walsender writes ahead of another one (Relation, Type, Origin): it never repeats an LSN.
    pub wal_start: Lsn,
    /// The server's current end of WAL as sent by it.
    pub wal_end: Lsn,
    /// When the server sent it.
    pub server_time: PgTimestamp,
    /// The pgoutput message; decode it with [`PgOutputDecoder`](crate::PgOutputDecoder).
    pub payload: Bytes,
}

/// A primary keepalive message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepAlive {
    /// The server's current end of WAL. Once every transaction received so far is confirmed,
    /// confirming this position too lets the slot release WAL written by other databases or
    /// unpublished tables.
    pub wal_end: Lsn,
    /// When the server sent it.
    pub server_time: PgTimestamp,
    /// The server asked for a reply (the stream has already sent it).
    pub reply_requested: bool,
}

/// A started logical replication stream.
///
/// Dropping it ends the stream too, without waiting; [`stop`](Self::stop) ends it and waits
/// for the server to finish.
#[derive(Debug)]
pub struct ReplicationStream {
    events: mpsc::Receiver<ReplicationMessage>,
    confirm: Arc<watch::Sender<Lsn>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<()>>>,
    slot: SlotInfo,
    start_lsn: Lsn,
}

impl ReplicationStream {
    pub(crate) fn spawn(
        io: Io,
        reader: MessageReader,
        slot: SlotInfo,
        start_lsn: Lsn,
        status_interval: Duration,
        buffer: usize,
    ) -> Self {
        let (events_tx, events) = mpsc::channel(buffer.max(1));
        let (confirm, confirm_rx) = watch::channel(Lsn::ZERO);
        let (stop, stop_rx) = watch::channel(false);
        let (read, write) = tokio::io::split(io);
        let worker = Worker {
            read,
            write,
            reader,
            events: events_tx,
            confirm: confirm_rx,
            stop: stop_rx,
            floor: slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO),
            status_interval,
            last_reported: None,
        };
        ReplicationStream {
            events,
            confirm: Arc::new(confirm),
            stop,
            task: Some(tokio::spawn(worker.run())),
            slot,
            start_lsn,
        }
    }

    /// The next message; `Ok(None)` once the stream was stopped.
    ///
    /// # Errors
    ///
    /// Why the stream ended, after every message received before that was returned: server
    /// errors (slot problems map to their [`ReplicationError`] variants), connection failures,
    /// or [`ReplicationError::StreamEnded`].
    pub async fn recv(&mut self) -> Result<Option<ReplicationMessage>> {
        if let Some(message) = self.events.recv().await {
            return Ok(Some(message));
        }
        // Awaited by reference and cleared only once finished, so a caller that gives up
        // waiting (a timeout around `recv`) still gets the reason the stream ended next time.
        let Some(task) = self.task.as_mut() else {
            return Ok(None);
        };
        let result = task.await;
        self.task = None;
        flatten(result).map(|()| None)
    }

    /// The next message if one is already waiting; `None` if none is (or the stream ended:
    /// [`recv`](Self::recv) then says why). Cheaper than `recv` under a timeout when reading
    /// a backlog.
    pub fn try_recv(&mut self) -> Option<ReplicationMessage> {
        self.events.try_recv().ok()
    }

    /// Confirms that everything before `lsn` has been handled for good (published and
    /// acknowledged by the broker), so the slot may release it. A standby status update carrying
    /// it is sent at once. Positions only move forward: an older `lsn` is ignored.
    ///
    /// Confirm a transaction's `Commit::end_lsn` once all of it is acknowledged.
    pub fn confirm(&self, lsn: Lsn) {
        confirm(&self.confirm, lsn);
    }

    /// A handle that confirms positions of this stream from another task (the one marking
    /// batches published while this one keeps reading).
    pub(crate) fn confirmer(&self) -> Confirmer {
        Confirmer(Arc::clone(&self.confirm))
    }

    /// The last position passed to [`confirm`](Self::confirm) (`0/0` if none).
    pub fn confirmed(&self) -> Lsn {
        *self.confirm.borrow()
    }

    /// The slot as it was when streaming started.
    pub fn slot(&self) -> &SlotInfo {
        &self.slot
    }

    /// The position passed to `START_REPLICATION` (`0/0`: the slot's own position).
    pub fn start_lsn(&self) -> Lsn {
        self.start_lsn
    }

    /// Sends the last confirmed position, ends the stream and waits (up to 10 s) for the server
    /// to finish it. Messages not yet received are dropped; the server sends them again next
    /// time, as they were not confirmed.
    ///
    /// # Errors
    ///
    /// The error that had already ended the stream, if any.
    pub async fn stop(mut self) -> Result<()> {
        self.stop.send_replace(true);
        self.events.close();
        match self.task.take() {
            None => Ok(()),
            Some(task) => join(task).await,
        }
    }
}

/// Confirms positions of a [`ReplicationStream`]; see [`ReplicationStream::confirm`].
#[derive(Debug, Clone)]
pub(crate) struct Confirmer(Arc<watch::Sender<Lsn>>);

impl Confirmer {
    pub(crate) fn confirm(&self, lsn: Lsn) {
        confirm(&self.0, lsn);
    }
}

fn confirm(sender: &watch::Sender<Lsn>, lsn: Lsn) {
    sender.send_if_modified(|confirmed| {
        let newer = lsn > *confirmed;
        if newer {
            *confirmed = lsn;
        }
        newer
    });
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        // The task sees the stop and ends the session itself.
        self.stop.send_replace(true);
    }
}

async fn join(task: JoinHandle<Result<()>>) -> Result<()> {
    flatten(task.await)
}

fn flatten(joined: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match joined {
        Ok(result) => result,
        Err(error) => Err(ReplicationError::Protocol {
            message: format!("replication task failed: {error}"),
        }),
    }
}

struct Worker {
    read: ReadHalf<Io>,
    write: WriteHalf<Io>,
    reader: MessageReader,
    events: mpsc::Sender<ReplicationMessage>,
    confirm: watch::Receiver<Lsn>,
    stop: watch::Receiver<bool>,
    /// The slot's confirmed position at start; reporting less could move it back.
    floor: Lsn,
    status_interval: Duration,
    last_reported: Option<Lsn>,
}

/// What the worker should do after handling something.
enum Next {
    Continue,
    Stop,
}

impl Worker {
    async fn run(mut self) -> Result<()> {
        let mut ticker = tokio::time::interval(self.status_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                biased;
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        return self.shutdown().await;
                    }
                    continue;
                }
                Ok(()) = self.confirm.changed() => {
                    self.report(false).await?;
                    continue;
                }
                _ = ticker.tick() => {
                    self.report(true).await?;
                    continue;
                }
                message = self.reader.read(&mut self.read) => message?,
            };
            match message.tag {
                b'd' => {
                    if let Next::Stop = self.copy_data(message.payload, &mut ticker).await? {
                        return self.shutdown().await;
                    }
                }
                b'E' => {
                    return Err(ReplicationError::from_server(
                        ErrorFields::parse(&message.payload),
                        None,
                    ));
                }
                // CopyDone: the server ended the stream on its own.
                b'c' => return Err(ReplicationError::StreamEnded),
                b'N' => {
                    let notice = ErrorFields::parse(&message.payload);
                    tracing::info!(
                        message = notice.message.as_deref().unwrap_or_default(),
                        "server notice on replication stream"
                    );
                }
                _ => {}
            }
        }
    }

    async fn copy_data(
        &mut self,
        payload: Bytes,
        ticker: &mut tokio::time::Interval,
    ) -> Result<Next> {
        match parse_copy_data(payload)? {
            ReplicationCopyData::KeepAlive {
                wal_end,
                server_time_micros,
                reply_requested,
            } => {
                if reply_requested {
                    self.report(true).await?;
                }
                // Informational: dropped rather than waited for when the consumer is behind.
                let _ = self
                    .events
                    .try_send(ReplicationMessage::KeepAlive(KeepAlive {
                        wal_end: Lsn::new(wal_end.as_u64()),
                        server_time: PgTimestamp(server_time_micros),
                        reply_requested,
                    }));
                Ok(Next::Continue)
            }
            ReplicationCopyData::XLogData {
                wal_start,
                wal_end,
                server_time_micros,
                data,
            } => {
                let message = ReplicationMessage::XLogData(XLogData {
                    wal_start: Lsn::new(wal_start.as_u64()),
                    wal_end: Lsn::new(wal_end.as_u64()),
                    server_time: PgTimestamp(server_time_micros),
                    payload: data,
                });
                self.deliver(message, ticker).await
            }
        }
    }

    /// Hands a message to the consumer, still answering the server while the buffer is full.
    async fn deliver(
        &mut self,
        message: ReplicationMessage,
        ticker: &mut tokio::time::Interval,
    ) -> Result<Next> {
        // A clone, so that a waiting permit does not borrow `self` while the other branches
        // report to the server.
        let events = self.events.clone();
        loop {
            tokio::select! {
                biased;
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        return Ok(Next::Stop);
                    }
                }
                Ok(()) = self.confirm.changed() => self.report(false).await?,
                _ = ticker.tick() => self.report(true).await?,
                permit = events.reserve() => {
                    return Ok(match permit {
                        Ok(permit) => {
                            permit.send(message);
                            Next::Continue
                        }
                        // The consumer is gone.
                        Err(_) => Next::Stop,
                    });
                }
            }
        }
    }

    /// The position to report: the caller's, once it is not behind the slot.
    fn reportable(&self) -> Lsn {
        let confirmed = *self.confirm.borrow();
        if confirmed >= self.floor {
            confirmed
        } else {
            Lsn::ZERO
        }
    }

    /// Sends a standby status update: always when `always`, otherwise only if the position
    /// changed since the last one.
    async fn report(&mut self, always: bool) -> Result<()> {
        let lsn = self.reportable();
        if !always && self.last_reported == Some(lsn) {
            return Ok(());
        }
        send_status(&mut self.write, lsn).await?;
        self.last_reported = Some(lsn);
        Ok(())
    }

    /// Reports the final position, ends the copy, lets the server finish, says goodbye.
    async fn shutdown(mut self) -> Result<()> {
        self.report(false).await?;
        write_copy_done(&mut self.write).await?;
        let finish = async {
            loop {
                let message = self.reader.read(&mut self.read).await?;
                match message.tag {
                    b'Z' => return Ok(()),
                    b'E' => {
                        return Err(ReplicationError::from_server(
                            ErrorFields::parse(&message.payload),
                            None,
                        ));
                    }
                    // Remaining CopyData (not confirmed, so sent again next time), CopyDone,
                    // CommandComplete.
                    _ => {}
                }
            }
        };
        match tokio::time::timeout(STOP_TIMEOUT, finish).await {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!("the server did not finish the replication stream in time; closing")
            }
        }
        self.write.write_all(&[b'X', 0, 0, 0, 4]).await?;
        self.write.flush().await?;
        Ok(())
    }
}

/// A standby status update with `lsn` as written, flushed and applied position.
async fn send_status<W: AsyncWrite + Unpin>(write: &mut W, lsn: Lsn) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let pg_now = now.saturating_sub(946_684_800_000_000);
    let update = encode_standby_status_update(
        pgwire_replication::Lsn::from_u64(lsn.as_u64()),
        pg_now,
        false,
    );
    write_copy_data(write, &update).await?;
    Ok(())
}
