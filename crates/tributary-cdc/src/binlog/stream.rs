//! The decoding side of the pipeline: a task that reads the binlog stream, decodes events,
//! assembles whole transactions into batches of messages and hands them on through a bounded
//! channel, while the relay publishes the batches before them.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use mysql_async::{BinlogStream, BinlogStreamRequest};
use tokio::sync::mpsc;
use tributary_core::OutgoingMessage;

use super::decode::{BinlogDecoder, BinlogEvent, Decoded};
use super::error::{BinlogError, Result};
use super::mapping::{Mapped, Mapper, TxInfo};
use super::position::{BinlogPosition, MariaGtid};
use super::state::literal;

/// A batch ready for the broker.
#[derive(Debug)]
pub(crate) struct ReadyBatch {
    pub(crate) messages: Vec<OutgoingMessage>,
    /// Where the capture stands once the broker has the batch: the end of its last whole
    /// transaction, with the stream ordinal of that commit; `None` for the first part of a
    /// transaction larger than a batch (nothing to store).
    pub(crate) end: Option<(u64, BinlogPosition)>,
    pub(crate) outbox_ids: Vec<u64>,
    pub(crate) commit_time: Option<DateTime<Utc>>,
}

/// Shared between the stream task and the source.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Batches sent and not yet marked published.
    pub(crate) in_flight: AtomicUsize,
    /// The latest position that covers nothing unpublished, seen when no transaction was
    /// open and nothing waited: (stream ordinal, position).
    pub(crate) idle: StdMutex<Option<(u64, BinlogPosition)>>,
}

pub(crate) struct StreamSettings {
    pub(crate) url: String,
    pub(crate) server_id: u32,
    pub(crate) mariadb: bool,
    pub(crate) heartbeat: Duration,
    pub(crate) batch_size: usize,
    pub(crate) capture: String,
}

/// Opens the replication connection at `from`.
pub(crate) async fn open(settings: &StreamSettings, from: &BinlogPosition) -> Result<BinlogStream> {
    let mut conn = super::state::connect(&settings.url).await?;
    // The server sends a heartbeat when it has had nothing to send for this long.
    let period = settings
        .heartbeat
        .as_nanos()
        .clamp(1_000_000, 4_294_967_000_000_000);
    super::state::exec(
        &mut conn,
        &format!("SET @master_heartbeat_period = {period}"),
    )
    .await?;
    let mut request = BinlogStreamRequest::new(settings.server_id);
    match (&from.gtids, settings.mariadb) {
        (Some(gtids), true) => {
            // MariaDB resumes from a GTID position set on the session; the file and offset
            // of COM_BINLOG_DUMP are then ignored.
            for sql in [
                "SET @mariadb_slave_capability = 4".to_owned(),
                format!("SET @slave_connect_state = {}", literal(&gtids.to_string())),
                "SET @slave_gtid_strict_mode = 1".to_owned(),
                "SET @slave_gtid_ignore_duplicates = 0".to_owned(),
            ] {
                super::state::exec(&mut conn, &sql).await?;
            }
            request = request.with_pos(4u64);
        }
        _ => {
            if settings.mariadb {
                super::state::exec(&mut conn, "SET @mariadb_slave_capability = 4").await?;
            }
            request = request
                .with_filename(from.file.as_bytes())
                .with_pos(from.offset.max(4));
        }
    }
    conn.get_binlog_stream(request)
        .await
        .map_err(|e| BinlogError::driver("COM_BINLOG_DUMP", e))
}

/// The open transaction.
struct OpenTx {
    info: TxInfo,
    gtid: Option<MariaGtid>,
    next_index: u64,
    standalone: bool,
}

/// Collects the messages of committed transactions.
#[derive(Default)]
struct Assembler {
    messages: Vec<OutgoingMessage>,
    outbox_ids: Vec<u64>,
    /// Messages (and outbox ids) of whole transactions: the first `complete`.
    complete: usize,
    complete_ids: usize,
    end: Option<(u64, BinlogPosition)>,
    commit_time: Option<DateTime<Utc>>,
    open: Option<OpenTx>,
}

impl Assembler {
    fn is_idle(&self) -> bool {
        self.messages.is_empty() && self.open.is_none()
    }

    fn push(&mut self, mapped: Mapped) {
        self.outbox_ids.extend(mapped.outbox_id);
        self.messages.push(mapped.message);
    }

    fn take(&mut self, max: usize) -> Option<ReadyBatch> {
        if let Some(end) = self.end.take() {
            let rest = self.messages.split_off(self.complete);
            let rest_ids = self.outbox_ids.split_off(self.complete_ids);
            let messages = std::mem::replace(&mut self.messages, rest);
            let outbox_ids = std::mem::replace(&mut self.outbox_ids, rest_ids);
            self.complete = 0;
            self.complete_ids = 0;
            return Some(ReadyBatch {
                messages,
                end: Some(end),
                outbox_ids,
                commit_time: self.commit_time.take(),
            });
        }
        if self.open.is_some() && self.messages.len() >= max {
            return Some(ReadyBatch {
                messages: std::mem::take(&mut self.messages),
                end: None,
                outbox_ids: std::mem::take(&mut self.outbox_ids),
                commit_time: None,
            });
        }
        None
    }
}

/// Reads `stream` until the receiver goes away or an error stops it (sent as the last item).
pub(crate) async fn run(
    mut stream: BinlogStream,
    settings: StreamSettings,
    mapper: Arc<Mapper>,
    from: BinlogPosition,
    shared: Arc<Shared>,
    out: mpsc::Sender<Result<ReadyBatch>>,
) {
    let mut reader = Reader {
        decoder: BinlogDecoder::new(),
        assembler: Assembler::default(),
        position: from,
        ordinal: 0,
        mapper,
        shared,
        capture: settings.capture.clone(),
        captured_names: Vec::new(),
        seen_format: false,
        pending_rotate: None,
    };
    reader.captured_names = reader.mapper.captured_names();
    let max = settings.batch_size.max(1);
    loop {
        let ready = reader.assembler.end.is_some() || reader.assembler.messages.len() >= max;
        // mysql_common panics on some malformed frames inside the stream's poll: fenced.
        let next = if ready {
            match AssertUnwindSafe(stream.next())
                .catch_unwind()
                .now_or_never()
            {
                Some(next) => next,
                None => {
                    if !reader.flush(max, &out).await {
                        return;
                    }
                    continue;
                }
            }
        } else {
            tokio::select! {
                next = AssertUnwindSafe(stream.next()).catch_unwind() => next,
                () = out.closed() => return,
            }
        };
        let Ok(next) = next else {
            let _ = out
                .send(Err(BinlogError::decode(
                    "malformed event in the binlog stream (the parser gave up on it)",
                )))
                .await;
            return;
        };
        let event = match next {
            Some(Ok(event)) => event,
            Some(Err(error)) => {
                let _ = out.send(Err(reader.stream_error(error))).await;
                return;
            }
            None => {
                let _ = out
                    .send(Err(BinlogError::Unavailable {
                        reason: "the server ended the binlog stream".into(),
                    }))
                    .await;
                return;
            }
        };
        let step = reader
            .decoder
            .decode(&event)
            .and_then(|decoded| reader.apply(decoded));
        if let Err(error) = step {
            let _ = out.send(Err(error)).await;
            return;
        }
        if reader.assembler.messages.len() >= max && !reader.flush(max, &out).await {
            return;
        }
    }
}

struct Reader {
    decoder: BinlogDecoder,
    assembler: Assembler,
    /// The position after the last whole transaction read.
    position: BinlogPosition,
    /// Events read in this session: orders positions.
    ordinal: u64,
    mapper: Arc<Mapper>,
    shared: Arc<Shared>,
    capture: String,
    captured_names: Vec<String>,
    /// Whether this session's format description was read.
    seen_format: bool,
    pending_rotate: Option<Vec<u8>>,
}

impl Reader {
    /// Sends what is ready; false once nobody listens.
    async fn flush(&mut self, max: usize, out: &mpsc::Sender<Result<ReadyBatch>>) -> bool {
        let Some(batch) = self.assembler.take(max) else {
            return true;
        };
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        out.send(Ok(batch)).await.is_ok()
    }

    fn stream_error(&self, error: mysql_async::Error) -> BinlogError {
        if let mysql_async::Error::Server(server) = &error
            && server.code == 1236
        {
            let detail = format!("{} (error 1236)", server.message);
            let lower = server.message.to_lowercase();
            return if lower.contains("purged") || lower.contains("could not find first log") {
                BinlogError::BinlogPurged {
                    capture: self.capture.clone(),
                    position: self.position.clone(),
                    detail,
                }
            } else {
                BinlogError::GtidDomainChanged {
                    capture: self.capture.clone(),
                    position: self.position.clone(),
                    detail,
                }
            };
        }
        BinlogError::driver("reading the binlog stream", error)
    }

    fn cannot_follow(&self, reason: String) -> BinlogError {
        BinlogError::CannotFollow {
            capture: self.capture.clone(),
            position: self.position.clone(),
            reason,
        }
    }

    fn open(&mut self, gtid: Option<MariaGtid>, standalone: bool, at: &Decoded) -> Result<()> {
        if self.assembler.open.is_some() {
            return Err(BinlogError::decode("a transaction starts inside another"));
        }
        // Where the transaction's first event (GTID or BEGIN) ends: unique per transaction
        // in its file, so it names the transaction in ids where there is no GTID.
        let offset = at.log_pos;
        let id = match gtid {
            Some(gtid) => gtid.to_string(),
            None => format!("{}:{offset}", self.position.file),
        };
        self.assembler.open = Some(OpenTx {
            info: TxInfo {
                id,
                gtid: gtid.map(|g| g.to_string()),
                file: self.position.file.clone(),
                offset,
                time: time_of(at.timestamp),
            },
            gtid,
            next_index: 0,
            standalone,
        });
        Ok(())
    }

    fn commit(&mut self, at: &Decoded) {
        let Some(open) = self.assembler.open.take() else {
            return;
        };
        if let (Some(gtid), Some(gtids)) = (open.gtid, self.position.gtids.as_mut()) {
            gtids.advance(gtid);
        }
        if at.log_pos > 0 {
            self.position.offset = at.log_pos;
        }
        let assembler = &mut self.assembler;
        if assembler.messages.is_empty() {
            // Nothing of it (or before it) waits: this position covers nothing unpublished.
            *lock(&self.shared.idle) = Some((self.ordinal, self.position.clone()));
            return;
        }
        assembler.complete = assembler.messages.len();
        assembler.complete_ids = assembler.outbox_ids.len();
        assembler.end = Some((self.ordinal, self.position.clone()));
        assembler.commit_time = Some(time_of(at.timestamp));
    }

    fn apply(&mut self, decoded: Decoded) -> Result<()> {
        self.ordinal += 1;
        match &decoded.event {
            BinlogEvent::Rotate { file, offset } => {
                if self.seen_format {
                    self.position.file = String::from_utf8_lossy(file).into_owned();
                } else {
                    // The checksum, if any, is still part of the name: decided at the format
                    // description that follows.
                    self.pending_rotate = Some(file.clone());
                }
                if decoded.log_pos == 0 || self.assembler.open.is_none() {
                    self.position.offset = *offset;
                }
            }
            BinlogEvent::FormatDescription { checksum } => {
                if let Some(mut name) = self.pending_rotate.take() {
                    if *checksum {
                        name.truncate(name.len().saturating_sub(4));
                    }
                    self.position.file = String::from_utf8_lossy(&name).into_owned();
                }
                self.seen_format = true;
            }
            BinlogEvent::Gtid { gtid, standalone } => {
                if self.position.gtids.is_none() {
                    // A server with GTIDs resumed by file and offset: track them from now.
                    self.position.gtids = Some(Default::default());
                }
                self.open(Some(*gtid), *standalone, &decoded)?;
            }
            BinlogEvent::Query { query, .. } => {
                let head = query.trim_start();
                let word = head
                    .split(|c: char| c.is_whitespace() || c == ';')
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                match word.as_str() {
                    "BEGIN" | "XA" if self.assembler.open.is_none() => {
                        self.open(None, false, &decoded)?;
                    }
                    "BEGIN" => {}
                    "COMMIT" => self.commit(&decoded),
                    "ROLLBACK" => {
                        // A transaction that wrote non-transactional tables and rolled back
                        // still reaches the binlog; what it changed stayed changed.
                        self.commit(&decoded);
                    }
                    "SAVEPOINT" => {}
                    "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "LOAD" => {
                        // A statement-logged change (a session with binlog_format=STATEMENT):
                        // it carries no rows, so a captured table's change would be lost.
                        let lower = head.to_lowercase();
                        if let Some(name) = self
                            .captured_names
                            .iter()
                            .find(|n| lower.contains(n.as_str()))
                        {
                            return Err(self.cannot_follow(format!(
                                "a statement-logged change (binlog_format=STATEMENT in the \
                                 writing session) may touch captured table {name}: {}",
                                head.chars().take(120).collect::<String>()
                            )));
                        }
                        if self.assembler.open.as_ref().is_some_and(|o| o.standalone) {
                            self.commit(&decoded);
                        }
                    }
                    _ => {
                        // DDL and other standalone statements end their event group; table
                        // maps tell the new shape of an altered table.
                        if self.assembler.open.as_ref().is_none_or(|o| o.standalone) {
                            if self.assembler.open.is_none() {
                                self.open(None, true, &decoded)?;
                            }
                            self.commit(&decoded);
                        }
                    }
                }
            }
            BinlogEvent::TableMap(table) => {
                if !table.named && self.mapper.captures(&table.database, &table.table) {
                    return Err(self.cannot_follow(format!(
                        "the table map of {}.{} carries no column names \
                         (binlog_row_metadata is not FULL)",
                        table.database, table.table
                    )));
                }
            }
            BinlogEvent::Rows(change) => {
                let table = Arc::clone(&change.table);
                if !self.mapper.captures(&table.database, &table.table) {
                    return Ok(());
                }
                let Some(open) = self.assembler.open.as_mut() else {
                    return Err(BinlogError::decode("rows outside a transaction"));
                };
                let info = open.info.clone();
                let mut index = open.next_index;
                let mut mapped_rows = Vec::with_capacity(change.rows.len());
                for (before, after) in &change.rows {
                    let mapped = self
                        .mapper
                        .change(
                            &info,
                            index,
                            &table,
                            change.kind,
                            before.as_ref(),
                            after.as_ref(),
                        )
                        .map_err(|e| match e {
                            BinlogError::Decode { reason } => self.cannot_follow(reason),
                            other => other,
                        })?;
                    index += 1;
                    mapped_rows.extend(mapped);
                }
                if let Some(open) = self.assembler.open.as_mut() {
                    open.next_index = index;
                }
                for mapped in mapped_rows {
                    self.assembler.push(mapped);
                }
            }
            BinlogEvent::Xid(_) => self.commit(&decoded),
            BinlogEvent::Heartbeat => {
                if self.assembler.is_idle() && decoded.log_pos > 0 {
                    self.position.offset = decoded.log_pos;
                    *lock(&self.shared.idle) = Some((self.ordinal, self.position.clone()));
                }
            }
            BinlogEvent::GtidList(_) | BinlogEvent::Other => {}
        }
        Ok(())
    }
}

fn time_of(seconds: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(seconds), 0).unwrap_or_else(Utc::now)
}

pub(crate) fn lock<T>(mutex: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
