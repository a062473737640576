//! A replication connection before it streams: connect, authenticate, manage slots, start.
//!
//! The wire pieces (framing, SCRAM, TLS, CopyData parsing) come from `pgwire-replication`;
//! its ready-made client is not used because it consumes the Begin, Commit and Message
//! payloads itself (handing out parsed fields instead of the bytes and their WAL positions)
//! and reports the start position as flushed on its own. Here every pgoutput payload reaches
//! the caller untouched, and nothing is confirmed to the slot unless the caller says so.

use std::time::Duration;

use pgwire_replication::protocol::framing::{
    MessageReader, write_password_message, write_query, write_startup_message,
};
use pgwire_replication::protocol::{ErrorFields, parse_auth_request};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::config::PgReplicationConfig;
use super::error::{ReplicationError, Result};
use super::slot::{
    CreatedSlot, PublicationName, SlotInfo, SlotName, SnapshotAction, SystemIdentity, WalStatus,
};
use super::stream::ReplicationStream;
use crate::lsn::Lsn;
use crate::pgoutput::Oid;

/// Anything the connection can run over (TCP or TLS).
pub(crate) trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

pub(crate) type Io = BufReader<Box<dyn Transport>>;

/// One row of a simple-query answer: text values, `None` for NULL.
pub(crate) type Row = Vec<Option<String>>;

/// A column of a simple-query answer, from its RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnDescription {
    pub(crate) name: String,
    pub(crate) type_oid: Oid,
}

/// Every row of a simple-query answer (of all its statements), with the columns of the last
/// statement that returned rows.
#[derive(Debug, Default)]
pub(crate) struct QueryResult {
    pub(crate) columns: Vec<ColumnDescription>,
    pub(crate) rows: Vec<Row>,
}

/// Where and how to start streaming.
#[derive(Debug, Clone)]
pub struct StartReplication {
    /// The slot to stream from.
    pub slot: SlotName,
    /// The publications whose tables are streamed.
    pub publications: Vec<PublicationName>,
    /// The position the caller has everything before, or `None` to start wherever the slot
    /// is. With a position, starting fails with [`ReplicationError::SlotAhead`] if the slot has
    /// already confirmed past it (a recreated or foreign-advanced slot), instead of silently
    /// skipping the changes in between.
    pub resume_from: Option<Lsn>,
    /// Ask for `pg_logical_emit_message` messages too (`messages 'true'`).
    pub messages: bool,
}

impl StartReplication {
    /// Streams `publications` from `slot`, from wherever the slot is, with logical messages.
    pub fn new(slot: SlotName, publications: Vec<PublicationName>) -> Self {
        StartReplication {
            slot,
            publications,
            resume_from: None,
            messages: true,
        }
    }

    /// Resumes from the caller's own position (see [`resume_from`](Self::resume_from)).
    pub fn with_resume_from(mut self, lsn: Lsn) -> Self {
        self.resume_from = Some(lsn);
        self
    }

    /// Whether to ask for logical decoding messages.
    pub fn with_messages(mut self, messages: bool) -> Self {
        self.messages = messages;
        self
    }
}

/// An authenticated `replication=database` connection that is not streaming yet.
///
/// It runs replication commands (and plain SQL) one at a time until
/// [`start`](Self::start) turns it into a [`ReplicationStream`].
pub struct ReplicationConnection {
    io: Io,
    reader: MessageReader,
    config: PgReplicationConfig,
    /// `replication=database`; a plain SQL session (see [`connect_sql`](Self::connect_sql))
    /// otherwise.
    replication: bool,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("host", &self.config.host)
            .field("port", &self.config.port)
            .field("database", &self.config.database)
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Connects and authenticates.
    ///
    /// The session pins `DateStyle=ISO`, `TimeZone=UTC` and `client_encoding=UTF8`, so the
    /// text of decoded values does not depend on server or role settings.
    ///
    /// # Errors
    ///
    /// [`ReplicationError::Connect`], [`ReplicationError::Tls`], [`ReplicationError::Auth`] or
    /// a server error (for example too many connections, or `max_wal_senders` reached).
    pub async fn connect(config: &PgReplicationConfig) -> Result<Self> {
        Self::open(config, true).await
    }

    /// Connects a plain SQL session (no `replication` parameter): the capture's control
    /// connection (lease, state, heartbeats), snapshot reads and outbox deletes. It speaks the
    /// simple query protocol only, which is all those need, so the crate carries no second
    /// PostgreSQL driver.
    pub(crate) async fn connect_sql(config: &PgReplicationConfig) -> Result<Self> {
        Self::open(config, false).await
    }

    async fn open(config: &PgReplicationConfig, replication: bool) -> Result<Self> {
        let address = format!("{}:{}", config.host, config.port);
        let connect_error = |source| ReplicationError::Connect {
            address: address.clone(),
            source,
        };
        let tcp = tokio::time::timeout(
            config.connect_timeout,
            TcpStream::connect((config.host.as_str(), config.port)),
        )
        .await
        .map_err(|_| {
            connect_error(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(connect_error)?;
        tcp.set_nodelay(true)?;
        let stream = pgwire_replication::tls::rustls::maybe_upgrade_to_tls(
            tcp,
            &config.wire_tls(),
            &config.host,
        )
        .await?;
        let transport: Box<dyn Transport> = Box::new(stream);
        let mut connection = ReplicationConnection {
            io: BufReader::with_capacity(128 * 1024, transport),
            reader: MessageReader::new().with_max_message_size(config.max_message_size),
            config: config.clone(),
            replication,
        };
        connection.startup().await?;
        Ok(connection)
    }

    async fn startup(&mut self) -> Result<()> {
        let mut params = vec![
            ("user", self.config.user.as_str()),
            ("database", self.config.database.as_str()),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("TimeZone", "UTC"),
            // SQL literals are written with only quotes doubled (no bind parameters in the
            // simple protocol); that is only safe while backslashes are not escapes.
            ("standard_conforming_strings", "on"),
            ("application_name", self.config.application_name.as_str()),
        ];
        if self.replication {
            params.push(("replication", "database"));
        }
        write_startup_message(&mut self.io, 196_608, &params).await?;
        let mut scram = None;
        let mut scram_state = None;
        loop {
            let message = self.reader.read(&mut self.io).await?;
            match message.tag {
                b'R' => {
                    let (code, data) = parse_auth_request(&message.payload)?;
                    match code {
                        0 => {}
                        3 => {
                            let mut payload = self.password()?.as_bytes().to_vec();
                            payload.push(0);
                            write_password_message(&mut self.io, &payload).await?;
                        }
                        10 => {
                            let mechanisms = data.split(|&b| b == 0).filter(|m| !m.is_empty());
                            if !mechanisms.into_iter().any(|m| m == b"SCRAM-SHA-256") {
                                return Err(ReplicationError::Auth {
                                    message: "the server offers no SASL mechanism this client supports (SCRAM-SHA-256)"
                                        .into(),
                                });
                            }
                            let client =
                                pgwire_replication::auth::ScramClient::new(&self.config.user);
                            let mut initial = b"SCRAM-SHA-256\0".to_vec();
                            let first = client.client_first.as_bytes();
                            initial.extend(
                                i32::try_from(first.len()).unwrap_or(i32::MAX).to_be_bytes(),
                            );
                            initial.extend(first);
                            write_password_message(&mut self.io, &initial).await?;
                            scram = Some(client);
                        }
                        11 => {
                            let client = scram
                                .as_ref()
                                .ok_or_else(|| protocol("SASL continue without SASL start"))?;
                            let server_first = String::from_utf8_lossy(data).into_owned();
                            let password = self.password()?.to_owned();
                            let (client_final, auth_message, salted) =
                                client.client_final(&password, &server_first)?;
                            write_password_message(&mut self.io, client_final.as_bytes()).await?;
                            scram_state = Some((auth_message, salted));
                        }
                        12 => {
                            let (auth_message, salted) = scram_state
                                .take()
                                .ok_or_else(|| protocol("SASL final before SASL continue"))?;
                            let server_final = String::from_utf8_lossy(data).into_owned();
                            pgwire_replication::auth::ScramClient::verify_server_final(
                                &server_final,
                                &salted,
                                &auth_message,
                            )?;
                        }
                        5 => {
                            return Err(ReplicationError::Auth {
                                message: "the server asks for MD5 password authentication, which this client does not support; use scram-sha-256".into(),
                            });
                        }
                        other => {
                            return Err(ReplicationError::Auth {
                                message: format!("unsupported authentication request {other}"),
                            });
                        }
                    }
                }
                b'E' => {
                    return Err(ReplicationError::from_server(
                        ErrorFields::parse(&message.payload),
                        None,
                    ));
                }
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, NoticeResponse.
                _ => {}
            }
        }
    }

    fn password(&self) -> Result<&str> {
        self.config
            .password
            .as_deref()
            .ok_or_else(|| ReplicationError::Auth {
                message: "the server asks for a password and none is configured".into(),
            })
    }

    /// Runs one command with the simple query protocol and returns its rows as text.
    async fn query(&mut self, sql: &str, slot: Option<&str>) -> Result<Vec<Row>> {
        self.query_described(sql, slot)
            .await
            .map(|result| result.rows)
    }

    /// Runs one or more statements with the simple query protocol and returns every row as
    /// text, with the column descriptions. The first error is returned once the server is
    /// ready again (inside an explicit transaction block, the block is then aborted).
    pub(crate) async fn query_described(
        &mut self,
        sql: &str,
        slot: Option<&str>,
    ) -> Result<QueryResult> {
        write_query(&mut self.io, sql).await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            let message = self.reader.read(&mut self.io).await?;
            match message.tag {
                b'T' => result.columns = row_description(&message.payload)?,
                b'D' => result.rows.push(data_row(&message.payload)?),
                b'E' => {
                    error.get_or_insert(ReplicationError::from_server(
                        ErrorFields::parse(&message.payload),
                        slot,
                    ));
                }
                // The server is ready for the next command, also after an error.
                b'Z' => return error.map_or(Ok(result), Err),
                // CommandComplete, EmptyQueryResponse, notices.
                _ => {}
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    ///
    /// # Errors
    ///
    /// Connection failures, or [`ReplicationError::Protocol`] for an unexpected answer.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let rows = self.query("IDENTIFY_SYSTEM", None).await?;
        let row = single_row(rows, "IDENTIFY_SYSTEM")?;
        let column = |i: usize| row.get(i).cloned().flatten();
        let required =
            |i: usize| column(i).ok_or_else(|| protocol("IDENTIFY_SYSTEM: missing column"));
        Ok(SystemIdentity {
            system_id: required(0)?,
            timeline: required(1)?
                .parse()
                .map_err(|_| protocol("IDENTIFY_SYSTEM: timeline is not a number"))?,
            xlog_position: parse_lsn(&required(2)?)?,
            database: column(3),
        })
    }

    /// `CREATE_REPLICATION_SLOT … LOGICAL pgoutput`: a permanent slot that keeps every change
    /// committed after its consistent point until a consumer confirms it.
    ///
    /// With [`SnapshotAction::Export`] the answer names a snapshot of the database at the
    /// consistent point; it stays valid only until this connection runs its next command, so
    /// import it in another connection before calling anything else here.
    ///
    /// # Errors
    ///
    /// A server error, for example when the slot exists (SQLSTATE 42710) or
    /// `max_replication_slots` is reached.
    pub async fn create_slot(
        &mut self,
        slot: &SlotName,
        snapshot: SnapshotAction,
    ) -> Result<CreatedSlot> {
        let action = match snapshot {
            SnapshotAction::Export => "EXPORT_SNAPSHOT",
            SnapshotAction::NoExport => "NOEXPORT_SNAPSHOT",
        };
        let sql = format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput {action}");
        let row = single_row(
            self.query(&sql, Some(slot.as_str())).await?,
            "CREATE_REPLICATION_SLOT",
        )?;
        let consistent_point = row
            .get(1)
            .cloned()
            .flatten()
            .ok_or_else(|| protocol("CREATE_REPLICATION_SLOT: no consistent point"))?;
        Ok(CreatedSlot {
            slot: slot.clone(),
            consistent_point: parse_lsn(&consistent_point)?,
            snapshot_name: row.get(2).cloned().flatten(),
        })
    }

    /// `DROP_REPLICATION_SLOT … WAIT`: drops the slot, waiting for a session still using it.
    ///
    /// # Errors
    ///
    /// [`ReplicationError::SlotMissing`] if there is no such slot.
    pub async fn drop_slot(&mut self, slot: &SlotName) -> Result<()> {
        self.query(
            &format!("DROP_REPLICATION_SLOT {slot} WAIT"),
            Some(slot.as_str()),
        )
        .await
        .map(drop)
    }

    /// The slot as `pg_replication_slots` shows it, or `None` if it does not exist.
    ///
    /// # Errors
    ///
    /// Connection failures.
    pub async fn slot(&mut self, slot: &SlotName) -> Result<Option<SlotInfo>> {
        // SlotName allows only [a-z0-9_], so the literal needs no escaping.
        let sql = include_str!("slot_info.sql").replace("$1", &format!("'{slot}'"));
        let rows = self.query(&sql, Some(slot.as_str())).await?;
        rows.first().map(|row| SlotInfo::from_row(row)).transpose()
    }

    /// Checks the slot and starts streaming from it.
    ///
    /// Before `START_REPLICATION` the slot is looked up, so that the common failures come back
    /// as their own errors rather than as a server message: missing, invalidated
    /// (`wal_status = lost`), held by another session, made with another plugin, in another
    /// database, or past `resume_from`. The same failures reported by the server itself
    /// (a race with the check) map to the same errors.
    ///
    /// # Errors
    ///
    /// The slot errors of [`ReplicationError`], [`ReplicationError::PublicationMissing`], or
    /// connection failures.
    pub async fn start(mut self, options: StartReplication) -> Result<ReplicationStream> {
        let slot = &options.slot;
        let info = self
            .slot(slot)
            .await?
            .ok_or_else(|| ReplicationError::SlotMissing {
                slot: slot.to_string(),
            })?;
        if info.wal_status == Some(WalStatus::Lost)
            || (info.restart_lsn.is_none() && info.plugin.is_some())
        {
            return Err(ReplicationError::SlotInvalidated {
                slot: slot.to_string(),
                detail:
                    "wal_status is lost: the WAL it needed was removed, see max_slot_wal_keep_size"
                        .into(),
            });
        }
        match info.plugin.as_deref() {
            Some("pgoutput") => {}
            other => {
                return Err(ReplicationError::SlotWrongPlugin {
                    slot: slot.to_string(),
                    plugin: other.unwrap_or("none (physical slot)").to_owned(),
                });
            }
        }
        let current = self
            .query(include_str!("current_database.sql"), None)
            .await?;
        let current = current
            .first()
            .and_then(|row| row.first().cloned().flatten());
        if info.database.is_some() && info.database != current {
            return Err(ReplicationError::SlotInOtherDatabase {
                slot: slot.to_string(),
                database: info.database.clone().unwrap_or_default(),
            });
        }
        if let Some(pid) = info.active_pid {
            return Err(ReplicationError::SlotInUse {
                slot: slot.to_string(),
                pid: Some(pid),
            });
        }
        let confirmed = info.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
        if let Some(resume_from) = options.resume_from
            && confirmed > resume_from
        {
            return Err(ReplicationError::SlotAhead {
                slot: slot.to_string(),
                confirmed_flush: confirmed,
                resume_from,
            });
        }
        if options.publications.is_empty() {
            return Err(ReplicationError::InvalidName {
                kind: "publication",
                name: String::new(),
                reason: "at least one publication is needed",
            });
        }
        let publications = options
            .publications
            .iter()
            .map(PublicationName::quoted)
            .collect::<Vec<_>>()
            .join(",");
        let start_lsn = options.resume_from.unwrap_or(Lsn::ZERO);
        let sql = format!(
            "START_REPLICATION SLOT {slot} LOGICAL {start_lsn} (proto_version '1', publication_names '{}', messages '{}')",
            publications.replace('\'', "''"),
            options.messages,
        );
        write_query(&mut self.io, &sql).await?;
        loop {
            let message = self.reader.read(&mut self.io).await?;
            match message.tag {
                // CopyBothResponse: the stream has started.
                b'W' => break,
                b'E' => {
                    return Err(ReplicationError::from_server(
                        ErrorFields::parse(&message.payload),
                        Some(slot.as_str()),
                    ));
                }
                _ => {}
            }
        }
        Ok(ReplicationStream::spawn(
            self.io,
            self.reader,
            info,
            start_lsn,
            self.config.status_interval,
            self.config.buffer,
        ))
    }

    /// Ends the session politely (Terminate).
    ///
    /// # Errors
    ///
    /// Connection failures while saying goodbye.
    pub async fn close(mut self) -> Result<()> {
        self.io.write_all(&[b'X', 0, 0, 0, 4]).await?;
        self.io.flush().await?;
        Ok(())
    }
}

pub(crate) fn protocol(message: &str) -> ReplicationError {
    ReplicationError::Protocol {
        message: message.to_owned(),
    }
}

fn parse_lsn(text: &str) -> Result<Lsn> {
    text.parse()
        .map_err(|e: crate::lsn::ParseLsnError| ReplicationError::Protocol {
            message: e.to_string(),
        })
}

fn single_row(rows: Vec<Row>, command: &str) -> Result<Row> {
    let mut rows = rows.into_iter();
    match (rows.next(), rows.next()) {
        (Some(row), None) => Ok(row),
        _ => Err(ReplicationError::Protocol {
            message: format!("{command}: expected exactly one row"),
        }),
    }
}

/// A DataRow ('D') payload: Int16 column count, then per column Int32 length (-1 for NULL)
/// and the bytes.
fn data_row(payload: &[u8]) -> Result<Row> {
    let malformed = || protocol("malformed DataRow");
    let (count, mut rest) = payload.split_first_chunk::<2>().ok_or_else(malformed)?;
    let count = i16::from_be_bytes(*count);
    let mut row = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let (length, tail) = rest.split_first_chunk::<4>().ok_or_else(malformed)?;
        let length = i32::from_be_bytes(*length);
        rest = tail;
        match usize::try_from(length) {
            Err(_) => row.push(None),
            Ok(length) => {
                let (value, tail) = rest.split_at_checked(length).ok_or_else(malformed)?;
                rest = tail;
                let value = std::str::from_utf8(value)
                    .map_err(|_| protocol("DataRow value is not UTF-8"))?;
                row.push(Some(value.to_owned()));
            }
        }
    }
    Ok(row)
}

/// A RowDescription ('T') payload: Int16 field count, then per field its name (NUL-terminated),
/// table OID (Int32), column number (Int16), type OID (Int32), type size (Int16), type
/// modifier (Int32) and format code (Int16).
fn row_description(payload: &[u8]) -> Result<Vec<ColumnDescription>> {
    let malformed = || protocol("malformed RowDescription");
    let (count, mut rest) = payload.split_first_chunk::<2>().ok_or_else(malformed)?;
    let count = i16::from_be_bytes(*count);
    let mut columns = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let end = rest.iter().position(|&b| b == 0).ok_or_else(malformed)?;
        let (name, fields) = rest.split_at(end);
        let name = std::str::from_utf8(name)
            .map_err(|_| protocol("RowDescription field name is not UTF-8"))?
            .to_owned();
        let fields = fields.get(1..).ok_or_else(malformed)?;
        // The table OID (4 bytes) and column number (2) come before the type OID.
        let type_oid: [u8; 4] = fields
            .get(6..10)
            .and_then(|oid| oid.try_into().ok())
            .ok_or_else(malformed)?;
        let type_oid = u32::from_be_bytes(type_oid);
        rest = fields.get(18..).ok_or_else(malformed)?;
        columns.push(ColumnDescription {
            name,
            type_oid: Oid(type_oid),
        });
    }
    Ok(columns)
}

/// How long [`ReplicationStream::stop`] waits for the server to finish the stream.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(10);
