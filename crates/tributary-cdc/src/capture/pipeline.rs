//! Decoding ahead of publishing: a task reads the replication stream, decodes pgoutput,
//! builds envelopes and assembles batches of whole transactions while the relay publishes
//! the batches before them. The channel between the two holds at most `depth` batches, so
//! memory stays bounded (about `(depth + 2) × batch_size` messages); confirmation stays with
//! the source, which confirms a batch's end only after the broker acknowledged it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::assembler::{Assembler, Step, Taken};
use super::error::{CdcError, Result};
use super::mapping::Mapper;
use crate::lsn::Lsn;
use crate::pgoutput::PgOutputDecoder;
use crate::replication::{Confirmer, ReplicationError, ReplicationMessage, ReplicationStream};

/// What the task needs from the source.
pub(crate) struct Hooks {
    /// The position confirmed so far (a partial batch is confirmed nowhere beyond it).
    pub(crate) confirmed: Box<dyn Fn() -> Lsn + Send + Sync>,
    /// Given a position that covers nothing unpublished, records and returns what may be
    /// confirmed of it (bounded by the slot record's limit), if anything new.
    pub(crate) idle: Box<dyn Fn(Lsn) -> Option<Lsn> + Send + Sync>,
    /// A heartbeat came back through the stream (for the metrics).
    pub(crate) heartbeat: Box<dyn Fn() + Send + Sync>,
    /// A stream error as the capture's error.
    pub(crate) stream_error: Box<dyn Fn(ReplicationError) -> CdcError + Send + Sync>,
}

/// The running decoder and the batches it made.
pub(crate) struct Pipeline {
    batches: mpsc::Receiver<Result<Taken>>,
    peeked: Option<Taken>,
    pub(crate) confirmer: Confirmer,
    /// Batches made and not yet marked published (while any are, nothing is confirmed as
    /// idle).
    pub(crate) in_flight: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Pipeline {
    pub(crate) fn spawn(
        stream: ReplicationStream,
        mapper: Arc<Mapper>,
        batch_size: usize,
        depth: usize,
        hooks: Hooks,
    ) -> Self {
        let (tx, batches) = mpsc::channel(depth.max(1));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let confirmer = stream.confirmer();
        let task = tokio::spawn(run(
            stream,
            mapper,
            batch_size.max(1),
            hooks,
            Arc::clone(&in_flight),
            tx,
            stop.clone(),
        ));
        Pipeline {
            batches,
            peeked: None,
            confirmer,
            in_flight,
            stop,
            task: Some(task),
        }
    }

    /// The next batch (batches waiting are merged up to `max` messages), waiting up to
    /// `wait`; with the number of batches merged.
    ///
    /// # Errors
    ///
    /// The error that stopped the decoder.
    pub(crate) async fn next(
        &mut self,
        wait: Duration,
        max: usize,
        stop: &CancellationToken,
    ) -> Result<Option<(Taken, usize)>> {
        let first = match self.peeked.take() {
            Some(batch) => batch,
            None => {
                let received = tokio::select! {
                    biased;
                    () = stop.cancelled() => return Ok(None),
                    received = tokio::time::timeout(wait, self.batches.recv()) => received,
                };
                match received {
                    Err(_) => return Ok(None),
                    Ok(None) => return Err(ReplicationError::StreamEnded.into()),
                    Ok(Some(batch)) => batch?,
                }
            }
        };
        let mut batch = first;
        let mut merged = 1;
        while batch.messages.len() < max {
            let Ok(next) = self.batches.try_recv() else {
                break;
            };
            let next = next?;
            if batch.messages.len() + next.messages.len() > max {
                self.peeked = Some(next);
                break;
            }
            batch.messages.extend(next.messages);
            // A part of an oversized transaction is confirmed nowhere new; a whole one moves
            // the position to its end. Ends only grow along the stream.
            batch.through = batch.through.max(next.through);
            batch.outbox_max = batch.outbox_max.max(next.outbox_max);
            if !next.partial {
                batch.commit_time = next.commit_time;
            }
            batch.partial = next.partial;
            merged += 1;
        }
        Ok(Some((batch, merged)))
    }

    /// Ends the decoder and the stream (which sends the last confirmed position).
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        self.batches.close();
        if let Some(task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .is_err()
        {
            tracing::debug!("the decoder did not stop in time");
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn run(
    mut stream: ReplicationStream,
    mapper: Arc<Mapper>,
    max: usize,
    hooks: Hooks,
    in_flight: Arc<AtomicUsize>,
    out: mpsc::Sender<Result<Taken>>,
    stop: CancellationToken,
) {
    let mut decoder = PgOutputDecoder::new();
    let mut assembler = Assembler::default();
    let send = |item: Result<Taken>| {
        let out = out.clone();
        let stop = stop.clone();
        async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => false,
                sent = out.send(item) => sent.is_ok(),
            }
        }
    };
    loop {
        // A backlog is read without waiting; with a whole transaction in hand and nothing
        // more there, the batch goes out.
        let message = match stream.try_recv() {
            Some(message) => message,
            None => {
                if assembler.has_complete() {
                    if let Some(taken) = assembler.take(max, (hooks.confirmed)()) {
                        in_flight.fetch_add(1, Ordering::SeqCst);
                        if !send(Ok(taken)).await {
                            break;
                        }
                    }
                    continue;
                }
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = out.closed() => break,
                    received = stream.recv() => match received {
                        Ok(Some(message)) => message,
                        Ok(None) => {
                            let _ = send(Err(ReplicationError::StreamEnded.into())).await;
                            break;
                        }
                        Err(error) => {
                            let _ = send(Err((hooks.stream_error)(error))).await;
                            break;
                        }
                    },
                }
            }
        };
        let step = match message {
            ReplicationMessage::KeepAlive(keepalive) => Ok(Step::Idle(keepalive.wal_end)),
            ReplicationMessage::XLogData(data) => decoder
                .decode(&data.payload)
                .map_err(CdcError::from)
                .and_then(|message| assembler.apply(&message, &decoder, &mapper)),
        };
        if let Ok(Step::Heartbeat(_)) = step {
            (hooks.heartbeat)();
        }
        match step {
            Ok(Step::Idle(position) | Step::Heartbeat(position))
                if assembler.is_idle() && in_flight.load(Ordering::SeqCst) == 0 =>
            {
                if let Some(target) = (hooks.idle)(position) {
                    stream.confirm(target);
                }
            }
            Ok(_) => {}
            Err(error) => {
                let _ = send(Err(error)).await;
                break;
            }
        }
        if assembler.len() >= max
            && let Some(taken) = assembler.take(max, (hooks.confirmed)())
        {
            in_flight.fetch_add(1, Ordering::SeqCst);
            if !send(Ok(taken)).await {
                break;
            }
        }
    }
    if let Err(error) = stream.stop().await {
        tracing::debug!(%error, "replication stream ended with an error");
    }
}
