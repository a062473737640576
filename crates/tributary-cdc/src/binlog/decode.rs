//! Binlog events to row changes: the part of decoding that is ours.
//!
//! `mysql_common` parses event headers, format descriptions, table maps (with their optional
//! metadata), rows events and every column value. This module adds what it does not do:
//!
//! - **Validation before `mysql_common` sees bytes.** `mysql_common` indexes into buffers it
//!   trusts: an event shorter than its header's size, or a table map whose per-column metadata
//!   is shorter than the column type needs, makes it panic. [`BinlogDecoder::read_event`]
//!   checks the frame, [`TableInfo`] checks every column's metadata length and decimal
//!   precision when the table map arrives, and every call into `mysql_common` runs behind a
//!   panic fence that turns a panic we did not foresee into [`BinlogError::Decode`].
//! - **MariaDB's own events** (GTID 162, GTID list 163, binlog checkpoint 161, annotate rows
//!   160), which `mysql_common` does not know.
//! - **Column names and keys** from the table map's optional metadata
//!   (`binlog_row_metadata=FULL`): every row is read with the table map written just before
//!   it, so a row written before an `ALTER TABLE` is read with the old columns and one written
//!   after with the new ones. There is no schema history to keep and nothing to look up.
//! - **Values to JSON** ([`write_value_json`]), in the shapes the PostgreSQL capture uses:
//!   integers and floats as numbers, `DECIMAL` as a string (exact), text as a string, binary
//!   strings and blobs as `\x…` hex (like `bytea`), `DATETIME` as wall-clock text without a
//!   zone (`2024-01-02 03:04:05.678`, MySQL stores no zone for it), `TIMESTAMP` in UTC with the
//!   zone stated (`2024-01-02 03:04:05.123456+00`), MySQL's binary `JSON` as the document, and
//!   MariaDB's `JSON`, which is `LONGTEXT` with a `json_valid` check and arrives as text, as
//!   the text (a JSON string: the binlog does not say a column was declared `JSON`).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use mysql_common::binlog::EventStreamReader;
use mysql_common::binlog::consts::{BinlogVersion, EventType};
use mysql_common::binlog::events::{
    Event, EventData, OptionalMetaExtractor, OptionalMetadataField, RowsEventData, TableMapEvent,
};
use mysql_common::binlog::row::BinlogRow;
use mysql_common::binlog::value::BinlogValue;
use mysql_common::constants::ColumnType;
use mysql_common::value::Value as MyValue;

use super::error::{BinlogError, Result};
use super::position::{GtidList, MariaGtid};
use crate::pgoutput::write_json_string;

/// MariaDB's event types (`log_event.h`), unknown to `mysql_common`.
pub(crate) mod mariadb_event {
    pub const ANNOTATE_ROWS: u8 = 160;
    pub const BINLOG_CHECKPOINT: u8 = 161;
    pub const GTID: u8 = 162;
    pub const GTID_LIST: u8 = 163;
    pub const START_ENCRYPTION: u8 = 164;
    /// Compressed query and rows events (`log_bin_compress=ON`), 165–171.
    pub const FIRST_COMPRESSED: u8 = 165;
    pub const LAST_COMPRESSED: u8 = 171;
}

/// Flags of a MariaDB GTID event.
const GTID_STANDALONE: u8 = 1;

/// The header every event starts with.
const HEADER_LEN: usize = 19;

/// The largest event accepted (MariaDB's `max_allowed_packet` ceiling is 1 GiB).
pub const MAX_EVENT_BYTES: usize = 1 << 30;

/// One column of a table as a table map describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub column_type: ColumnType,
    /// `UNSIGNED` (numeric columns).
    pub unsigned: bool,
    /// Character set id of a character column (63 = binary).
    pub charset: Option<u16>,
    /// The values of an `ENUM` column, in order.
    pub enum_values: Vec<String>,
    /// The values of a `SET` column, in order.
    pub set_values: Vec<String>,
    /// Fractional second digits of a temporal column.
    pub fsp: u8,
}

impl ColumnInfo {
    fn is_binary(&self) -> bool {
        self.charset == Some(BINARY_CHARSET)
    }
}

const BINARY_CHARSET: u16 = 63;

/// A table as of one table map event: its columns and primary key.
#[derive(Debug)]
pub struct TableInfo {
    pub table_id: u64,
    pub database: String,
    pub table: String,
    pub columns: Vec<ColumnInfo>,
    /// Primary key column indexes (from `binlog_row_metadata=FULL`).
    pub primary_key: Vec<usize>,
    /// Whether the table map carried column names (`binlog_row_metadata=FULL`).
    pub named: bool,
    event: TableMapEvent<'static>,
}

impl TableInfo {
    /// Reads and checks a table map.
    ///
    /// # Errors
    ///
    /// [`BinlogError::Decode`] for metadata that cannot describe its columns.
    pub fn new(event: TableMapEvent<'static>) -> Result<Self> {
        fence("table map", || Self::build(event))?
    }

    fn build(event: TableMapEvent<'static>) -> Result<Self> {
        let count = usize::try_from(event.columns_count())
            .map_err(|_| BinlogError::decode("table map with too many columns"))?;
        if count > 4096 {
            return Err(BinlogError::decode(format!(
                "table map with {count} columns (MySQL allows 4096)"
            )));
        }
        let mut columns = Vec::with_capacity(count);
        for i in 0..count {
            let column_type = match event.get_column_type(i) {
                Ok(Some(t)) => t,
                Ok(None) => {
                    return Err(BinlogError::decode(format!("column {i} has no type")));
                }
                Err(e) => return Err(BinlogError::decode(format!("column {i}: {e}"))),
            };
            let meta = event.get_column_metadata(i).unwrap_or(&[]);
            check_metadata(i, column_type, meta)?;
            let fsp = match column_type {
                ColumnType::MYSQL_TYPE_TIMESTAMP2
                | ColumnType::MYSQL_TYPE_DATETIME2
                | ColumnType::MYSQL_TYPE_TIME2 => meta.first().copied().unwrap_or(0).min(6),
                _ => 0,
            };
            columns.push(ColumnInfo {
                name: format!("col{}", i + 1),
                column_type,
                unsigned: false,
                charset: None,
                enum_values: Vec::new(),
                set_values: Vec::new(),
                fsp,
            });
        }
        let (named, primary_key) = Self::describe(&event, &mut columns, count)?;
        Ok(TableInfo {
            table_id: event.table_id(),
            database: event.database_name().into_owned(),
            table: event.table_name().into_owned(),
            columns,
            primary_key,
            named,
            event,
        })
    }

    /// Names, signedness, character sets, ENUM/SET values and the primary key from the
    /// optional metadata.
    fn describe(
        event: &TableMapEvent<'static>,
        columns: &mut [ColumnInfo],
        count: usize,
    ) -> Result<(bool, Vec<usize>)> {
        let meta = OptionalMetaExtractor::new(event.iter_optional_meta())
            .map_err(|e| BinlogError::decode(format!("table map metadata: {e}")))?;
        let mut unsigned = meta.iter_signedness();
        let mut charsets = meta.iter_charset();
        let mut names = meta.iter_column_name();
        let mut named = false;
        for column in columns.iter_mut() {
            if column.column_type.is_numeric_type() {
                column.unsigned = unsigned.next().unwrap_or(false);
            }
            if column.column_type.is_character_type() {
                column.charset = charsets.next().transpose().ok().flatten();
            }
            match names.next() {
                Some(Ok(name)) => {
                    column.name = name.name().into_owned();
                    named = true;
                }
                Some(Err(e)) => return Err(BinlogError::decode(format!("column names: {e}"))),
                None => {}
            }
        }
        let mut primary_key = Vec::new();
        for index in meta.iter_primary_key() {
            let index = index.map_err(|e| BinlogError::decode(format!("primary key: {e}")))?;
            let index = usize::try_from(index)
                .ok()
                .filter(|i| *i < count)
                .ok_or_else(|| BinlogError::decode("primary key names a column out of range"))?;
            primary_key.push(index);
        }
        // ENUM and SET value names, in column order.
        let mut enums = Vec::new();
        let mut sets = Vec::new();
        for field in event.iter_optional_meta() {
            match field {
                Ok(OptionalMetadataField::EnumStrValue(values)) => {
                    for column in values.iter_values() {
                        let column = column.map_err(|e| BinlogError::decode(e.to_string()))?;
                        enums.push(
                            column
                                .values()
                                .iter()
                                .map(|v| v.value().into_owned())
                                .collect::<Vec<_>>(),
                        );
                    }
                }
                Ok(OptionalMetadataField::SetStrValue(values)) => {
                    for column in values.iter_values() {
                        let column = column.map_err(|e| BinlogError::decode(e.to_string()))?;
                        sets.push(
                            column
                                .values()
                                .iter()
                                .map(|v| v.value().into_owned())
                                .collect::<Vec<_>>(),
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(BinlogError::decode(format!("table map metadata: {e}"))),
            }
        }
        let (mut enums, mut sets) = (enums.into_iter(), sets.into_iter());
        for column in columns.iter_mut() {
            match column.column_type {
                ColumnType::MYSQL_TYPE_ENUM => {
                    column.enum_values = enums.next().unwrap_or_default()
                }
                ColumnType::MYSQL_TYPE_SET => column.set_values = sets.next().unwrap_or_default(),
                _ => {}
            }
        }
        Ok((named, primary_key))
    }

    /// The index of the column called `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// Metadata bytes each column type needs (`mysql_common` indexes them unchecked).
fn check_metadata(index: usize, column_type: ColumnType, meta: &[u8]) -> Result<()> {
    use ColumnType::*;
    let needed = match column_type {
        MYSQL_TYPE_NEWDECIMAL
        | MYSQL_TYPE_STRING
        | MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_BIT
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_SET => 2,
        MYSQL_TYPE_BLOB
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_GEOMETRY
        | MYSQL_TYPE_VECTOR
        | MYSQL_TYPE_JSON
        | MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIME2
        | MYSQL_TYPE_TYPED_ARRAY
        | MYSQL_TYPE_FLOAT
        | MYSQL_TYPE_DOUBLE => 1,
        _ => 0,
    };
    if meta.len() < needed {
        return Err(BinlogError::decode(format!(
            "column {index} ({column_type:?}) has {} metadata bytes, needs {needed}",
            meta.len()
        )));
    }
    if column_type == MYSQL_TYPE_NEWDECIMAL {
        let (precision, scale) = (meta[0], meta[1]);
        if precision == 0 || precision > 65 || scale > 30 || scale > precision {
            return Err(BinlogError::decode(format!(
                "column {index}: DECIMAL({precision},{scale}) is not a valid decimal"
            )));
        }
    }
    if column_type == MYSQL_TYPE_TYPED_ARRAY {
        return Err(BinlogError::decode(format!(
            "column {index}: typed arrays (multi-valued indexes) are not supported"
        )));
    }
    Ok(())
}

/// What a rows event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsKind {
    Insert,
    Update,
    Delete,
}

/// The rows of one rows event, with the table map they were written with.
#[derive(Debug)]
pub struct RowsChange {
    pub table: Arc<TableInfo>,
    pub kind: RowsKind,
    /// (before image, after image) of each row.
    pub rows: Vec<(Option<RowImage>, Option<RowImage>)>,
}

/// One row image: a value per column of the table map (`None` for a column the image left
/// out, which `binlog_row_image=FULL` never does).
#[derive(Debug, Clone, PartialEq)]
pub struct RowImage {
    pub values: Vec<Option<BinlogValue<'static>>>,
}

impl RowImage {
    fn from_row(row: BinlogRow, table: &TableInfo) -> Self {
        let mut row = row;
        let values = table
            .columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                row.take(i)
                    .map(BinlogValue::into_owned)
                    .map(|value| match value {
                        // mysql_common reads a signed MEDIUMINT without sign extension (-1 comes
                        // out as 16777215): extend it here.
                        BinlogValue::Value(MyValue::Int(v))
                            if column.column_type == ColumnType::MYSQL_TYPE_INT24
                                && !column.unsigned
                                && v > 0x7f_ffff =>
                        {
                            BinlogValue::Value(MyValue::Int(v - 0x100_0000))
                        }
                        other => other,
                    })
            })
            .collect();
        RowImage { values }
    }
}

/// A decoded event, in the terms the capture needs.
#[derive(Debug)]
pub enum BinlogEvent {
    /// The stream continues in `file` (raw bytes) at `offset` (real or fake rotate). A fake
    /// rotate that comes before the stream's first format description still carries its
    /// checksum in the name (nothing said yet that there is one): see
    /// [`BinlogEvent::FormatDescription`].
    Rotate {
        file: Vec<u8>,
        offset: u64,
    },
    /// A format description: whether events carry a CRC32 checksum.
    FormatDescription {
        checksum: bool,
    },
    /// A MariaDB transaction (or standalone statement) starts.
    Gtid {
        gtid: MariaGtid,
        standalone: bool,
    },
    /// MariaDB's state at the start of a binlog file.
    GtidList(GtidList),
    TableMap(Arc<TableInfo>),
    Rows(RowsChange),
    /// An InnoDB transaction committed.
    Xid(u64),
    /// A statement: `BEGIN`, `COMMIT`, DDL, or a statement-logged change.
    Query {
        database: String,
        query: String,
    },
    /// The server has nothing to send; the stream stands at the header's position.
    Heartbeat,
    /// Anything else (format description, checkpoints, annotations, …).
    Other,
}

/// An event with the header fields the capture uses.
#[derive(Debug)]
pub struct Decoded {
    pub event: BinlogEvent,
    /// The end of the event in its file (`log_pos`; 0 for fake events).
    pub log_pos: u64,
    /// When the server wrote it (seconds since the epoch).
    pub timestamp: u32,
    pub server_id: u32,
    pub event_type: u8,
}

/// Turns `mysql_common` events into [`Decoded`] ones, keeping the table maps.
#[derive(Debug, Default)]
pub struct BinlogDecoder {
    tables: HashMap<u64, Arc<TableInfo>>,
}

impl BinlogDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The table map last seen for `table_id`.
    pub fn table(&self, table_id: u64) -> Option<&Arc<TableInfo>> {
        self.tables.get(&table_id)
    }

    /// Reads one event of raw binlog bytes (as in a binlog file after its 4-byte magic, or a
    /// replication packet after its 0 byte) with `reader`, which tracks the format
    /// description. Returns the event and the number of bytes it took.
    ///
    /// # Errors
    ///
    /// [`BinlogError::Decode`] for a frame that does not hold a whole event.
    pub fn read_event(reader: &mut EventStreamReader, bytes: &[u8]) -> Result<(Event, usize)> {
        if bytes.len() < HEADER_LEN {
            return Err(BinlogError::decode(format!(
                "{} bytes cannot hold an event header",
                bytes.len()
            )));
        }
        let size = u32::from_le_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]) as usize;
        if size > bytes.len() || size > MAX_EVENT_BYTES {
            return Err(BinlogError::decode(format!(
                "event of {size} bytes in a buffer of {}",
                bytes.len()
            )));
        }
        let data = size.saturating_sub(HEADER_LEN);
        let is_fde = bytes[4] == EventType::FORMAT_DESCRIPTION_EVENT as u8;
        // The checksum (4 bytes) and, in a format description, its algorithm (1 byte) are cut
        // off the data: there must be that much.
        let checksummed = reader
            .get_fde()
            .footer()
            .get_checksum_alg()
            .ok()
            .flatten()
            .is_some_and(|alg| alg as u8 != 0);
        let needed = if is_fde {
            5 + 57
        } else if checksummed {
            4
        } else {
            0
        };
        if size < HEADER_LEN || data < needed {
            return Err(BinlogError::decode(format!(
                "event of {size} bytes is too short for its header and checksum"
            )));
        }
        let event = fence("event", || reader.read(&bytes[..size]))?
            .map_err(|e| BinlogError::decode(format!("event: {e}")))?
            .ok_or_else(|| BinlogError::decode("empty event"))?;
        Ok((event, size))
    }

    /// Decodes one event.
    ///
    /// # Errors
    ///
    /// [`BinlogError::Decode`] for an event that does not parse, a rows event without its
    /// table map, a compressed or encrypted binlog.
    pub fn decode(&mut self, event: &Event) -> Result<Decoded> {
        let header = event.header();
        let event_type = header.event_type_raw();
        let decoded = |event| Decoded {
            event,
            log_pos: u64::from(header.log_pos()),
            timestamp: header.timestamp(),
            server_id: header.server_id(),
            event_type,
        };
        let data = event.data();
        match event_type {
            mariadb_event::GTID => return Ok(decoded(mariadb_gtid(data, header.server_id())?)),
            mariadb_event::GTID_LIST => return Ok(decoded(mariadb_gtid_list(data)?)),
            mariadb_event::ANNOTATE_ROWS | mariadb_event::BINLOG_CHECKPOINT => {
                return Ok(decoded(BinlogEvent::Other));
            }
            mariadb_event::START_ENCRYPTION => {
                return Err(BinlogError::decode(
                    "the binlog is encrypted (encrypt_binlog=ON); the capture cannot read it",
                ));
            }
            t if (mariadb_event::FIRST_COMPRESSED..=mariadb_event::LAST_COMPRESSED)
                .contains(&t) =>
            {
                return Err(BinlogError::decode(
                    "the binlog is compressed (log_bin_compress=ON); turn it off for the capture",
                ));
            }
            _ => {}
        }
        let parsed = fence("event data", || event.read_data())?
            .map_err(|e| BinlogError::decode(format!("event type {event_type}: {e}")))?;
        let event = match parsed {
            Some(EventData::RotateEvent(rotate)) => BinlogEvent::Rotate {
                file: rotate.name_raw().to_vec(),
                offset: rotate.position(),
            },
            Some(EventData::FormatDescriptionEvent(fde)) => BinlogEvent::FormatDescription {
                checksum: fde
                    .footer()
                    .get_checksum_alg()
                    .ok()
                    .flatten()
                    .is_some_and(|alg| alg as u8 != 0),
            },
            Some(EventData::TableMapEvent(map)) => {
                let info = Arc::new(TableInfo::new(map.into_owned())?);
                self.tables.insert(info.table_id, Arc::clone(&info));
                BinlogEvent::TableMap(info)
            }
            Some(EventData::RowsEvent(rows)) => BinlogEvent::Rows(self.rows(&rows)?),
            Some(EventData::XidEvent(xid)) => BinlogEvent::Xid(xid.xid),
            Some(EventData::QueryEvent(query)) => BinlogEvent::Query {
                database: query.schema().into_owned(),
                query: query.query().into_owned(),
            },
            Some(EventData::HeartbeatEvent) => BinlogEvent::Heartbeat,
            Some(EventData::TransactionPayloadEvent(_)) => {
                return Err(BinlogError::decode(
                    "compressed transactions (binlog_transaction_compression=ON) are not supported",
                ));
            }
            _ => BinlogEvent::Other,
        };
        Ok(decoded(event))
    }

    fn rows(&self, rows: &RowsEventData<'_>) -> Result<RowsChange> {
        let kind = match rows {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => {
                RowsKind::Insert
            }
            RowsEventData::UpdateRowsEventV1(_) | RowsEventData::UpdateRowsEvent(_) => {
                RowsKind::Update
            }
            RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => {
                RowsKind::Delete
            }
            RowsEventData::PartialUpdateRowsEvent(_) => {
                return Err(BinlogError::decode(
                    "partial JSON updates (binlog_row_value_options=PARTIAL_JSON) are not supported",
                ));
            }
        };
        let table = self.tables.get(&rows.table_id()).cloned().ok_or_else(|| {
            BinlogError::decode(format!(
                "rows event for table id {} without its table map",
                rows.table_id()
            ))
        })?;
        if rows.num_columns() != table.columns.len() as u64 {
            return Err(BinlogError::decode(format!(
                "rows event with {} columns for a table map of {}",
                rows.num_columns(),
                table.columns.len()
            )));
        }
        let images = fence("rows", || {
            let mut out = Vec::new();
            for row in rows.rows(&table.event) {
                let (before, after) = row.map_err(|e| BinlogError::decode(format!("row: {e}")))?;
                out.push((
                    before.map(|r| RowImage::from_row(r, &table)),
                    after.map(|r| RowImage::from_row(r, &table)),
                ));
            }
            Ok::<_, BinlogError>(out)
        })??;
        Ok(RowsChange {
            table,
            kind,
            rows: images,
        })
    }
}

/// Runs `f`, turning a panic inside `mysql_common` into an error.
fn fence<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|_| BinlogError::decode(format!("malformed {what} (the parser gave up on it)")))
}

fn mariadb_gtid(data: &[u8], server: u32) -> Result<BinlogEvent> {
    if data.len() < 13 {
        return Err(BinlogError::decode(
            "MariaDB GTID event shorter than 13 bytes",
        ));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&data[..8]);
    let mut domain = [0u8; 4];
    domain.copy_from_slice(&data[8..12]);
    Ok(BinlogEvent::Gtid {
        gtid: MariaGtid {
            domain: u32::from_le_bytes(domain),
            server,
            sequence: u64::from_le_bytes(seq),
        },
        standalone: data[12] & GTID_STANDALONE != 0,
    })
}

fn mariadb_gtid_list(data: &[u8]) -> Result<BinlogEvent> {
    if data.len() < 4 {
        return Err(BinlogError::decode(
            "MariaDB GTID list event shorter than 4 bytes",
        ));
    }
    let count = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) & 0x0fff_ffff;
    let mut list = GtidList::default();
    let mut rest = &data[4..];
    for _ in 0..count {
        if rest.len() < 16 {
            return Err(BinlogError::decode("MariaDB GTID list event cut short"));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&rest[8..16]);
        list.advance(MariaGtid {
            domain: u32_at(0),
            server: u32_at(4),
            sequence: u64::from_le_bytes(seq),
        });
        rest = &rest[16..];
    }
    Ok(BinlogEvent::GtidList(list))
}

/// Writes the JSON form of `value` (a value of `column`) to `out`; see the module doc for the
/// shapes. `None` (a column the image left out) is written as `null`.
///
/// # Errors
///
/// [`BinlogError::Decode`] for a value that does not fit its column type.
pub fn write_value_json(
    column: &ColumnInfo,
    value: Option<&BinlogValue<'_>>,
    out: &mut String,
) -> Result<()> {
    use ColumnType::*;
    let Some(value) = value else {
        out.push_str("null");
        return Ok(());
    };
    let value = match value {
        BinlogValue::Value(value) => value,
        BinlogValue::Jsonb(jsonb) => {
            let json = serde_json::Value::try_from(jsonb.clone())
                .map_err(|e| BinlogError::decode(format!("JSON column {}: {e}", column.name)))?;
            out.push_str(&json.to_string());
            return Ok(());
        }
        BinlogValue::JsonDiff(_) => {
            return Err(BinlogError::decode(format!(
                "partial JSON update of column {}",
                column.name
            )));
        }
    };
    let bad = |what: &str| {
        BinlogError::decode(format!(
            "column {} ({:?}): unexpected {what}",
            column.name, column.column_type
        ))
    };
    match (column.column_type, value) {
        (_, MyValue::NULL) => out.push_str("null"),
        (_, MyValue::Int(i)) if column.column_type != MYSQL_TYPE_ENUM => {
            out.push_str(&i.to_string());
        }
        (_, MyValue::UInt(u)) => out.push_str(&u.to_string()),
        (_, MyValue::Float(f)) => write_float(f64::from(*f), out),
        (_, MyValue::Double(f)) => write_float(*f, out),
        (MYSQL_TYPE_ENUM, MyValue::Int(i)) => {
            // 1-based; 0 is the empty string of an invalid value.
            match usize::try_from(*i)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| column.enum_values.get(i))
            {
                Some(name) => write_json_string(name, out),
                None if *i == 0 => write_json_string("", out),
                None => out.push_str(&i.to_string()),
            }
        }
        (MYSQL_TYPE_TIMESTAMP2 | MYSQL_TYPE_TIMESTAMP, MyValue::Bytes(bytes)) => {
            let text = std::str::from_utf8(bytes).map_err(|_| bad("timestamp bytes"))?;
            write_timestamp(text, column.fsp, out).ok_or_else(|| bad("timestamp"))?;
        }
        (MYSQL_TYPE_YEAR, MyValue::Bytes(bytes)) => {
            let text = std::str::from_utf8(bytes).map_err(|_| bad("year"))?;
            let year: u16 = text.parse().map_err(|_| bad("year"))?;
            // YEAR 0 is stored as 0 and means 0000.
            out.push_str(&if year == 1900 { 0 } else { year }.to_string());
        }
        (MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL, MyValue::Bytes(bytes)) => {
            let text = std::str::from_utf8(bytes).map_err(|_| bad("decimal"))?;
            write_json_string(text, out);
        }
        (MYSQL_TYPE_BIT, MyValue::Bytes(bytes)) => {
            let value = bytes
                .iter()
                .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
            out.push_str(&value.to_string());
        }
        (MYSQL_TYPE_SET, MyValue::Bytes(bytes)) => {
            let mut names = Vec::new();
            for (byte_index, byte) in bytes.iter().enumerate() {
                for bit in 0..8 {
                    if byte & (1 << bit) != 0 {
                        let index = byte_index * 8 + bit;
                        match column.set_values.get(index) {
                            Some(name) => names.push(name.clone()),
                            None => names.push(index.to_string()),
                        }
                    }
                }
            }
            write_json_string(&names.join(","), out);
        }
        (MYSQL_TYPE_GEOMETRY, MyValue::Bytes(bytes)) => write_hex(bytes, out),
        (_, MyValue::Bytes(bytes)) => {
            if column.is_binary() {
                write_hex(bytes, out);
            } else {
                match std::str::from_utf8(bytes) {
                    Ok(text) => write_json_string(text, out),
                    Err(_) if is_latin1(column.charset) => {
                        let text: String = bytes.iter().map(|b| char::from(*b)).collect();
                        write_json_string(&text, out);
                    }
                    Err(_) => write_hex(bytes, out),
                }
            }
        }
        (MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE, MyValue::Date(y, m, d, ..)) => {
            write_json_string(&format!("{y:04}-{m:02}-{d:02}"), out);
        }
        (_, MyValue::Date(y, mo, d, h, mi, s, us)) => {
            let mut text = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}");
            push_fraction(&mut text, *us, column.fsp);
            write_json_string(&text, out);
        }
        (_, MyValue::Time(negative, days, h, m, s, us)) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let mut text = format!(
                "{}{hours:02}:{m:02}:{s:02}",
                if *negative { "-" } else { "" }
            );
            push_fraction(&mut text, *us, column.fsp);
            write_json_string(&text, out);
        }
        (_, MyValue::Int(_)) => return Err(bad("integer")),
    }
    Ok(())
}

fn is_latin1(charset: Option<u16>) -> bool {
    // latin1_* collations.
    matches!(charset, Some(5 | 8 | 15 | 31 | 47 | 48 | 49 | 94))
}

fn write_float(value: f64, out: &mut String) {
    match serde_json::Number::from_f64(value) {
        Some(number) => out.push_str(&number.to_string()),
        None => write_json_string(&value.to_string(), out),
    }
}

fn push_fraction(text: &mut String, micros: u32, fsp: u8) {
    if fsp > 0 {
        let digits = format!("{:06}", micros.min(999_999));
        text.push('.');
        text.push_str(&digits[..usize::from(fsp.min(6))]);
    }
}

/// `mysql_common` gives a `TIMESTAMP` as `seconds[.micros]` since the epoch (UTC).
fn write_timestamp(text: &str, fsp: u8, out: &mut String) -> Option<()> {
    let (seconds, micros) = match text.split_once('.') {
        Some((s, us)) => (s.parse::<i64>().ok()?, us.parse::<u32>().ok()?),
        None => (text.parse::<i64>().ok()?, 0),
    };
    if seconds == 0 && micros == 0 {
        // The zero timestamp MySQL allows in non-strict modes.
        write_json_string("0000-00-00 00:00:00+00", out);
        return Some(());
    }
    let time = chrono::DateTime::from_timestamp(seconds, micros.saturating_mul(1000))?;
    let mut formatted = time.format("%Y-%m-%d %H:%M:%S").to_string();
    push_fraction(&mut formatted, micros, fsp);
    formatted.push_str("+00");
    write_json_string(&formatted, out);
    Some(())
}

fn write_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2 + 4);
    out.push_str("\"\\\\x");
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    out.push('"');
}

/// Decodes a whole binlog (a file's bytes after the 4-byte magic `\xfebin`), event by event:
/// for tests, tools and the fuzz target. Rows are turned into JSON text to exercise every
/// value path. Stops at the first error, returning what was decoded before it.
pub fn decode_binlog(bytes: &[u8]) -> (Vec<DecodedJson>, Option<BinlogError>) {
    let mut reader = EventStreamReader::new(BinlogVersion::Version4);
    let mut decoder = BinlogDecoder::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let step = BinlogDecoder::read_event(&mut reader, rest).and_then(|(event, used)| {
            rest = &rest[used..];
            let decoded = decoder.decode(&event)?;
            DecodedJson::new(decoded)
        });
        match step {
            Ok(decoded) => out.push(decoded),
            Err(error) => return (out, Some(error)),
        }
    }
    (out, None)
}

/// An event of [`decode_binlog`], with its rows as JSON objects (`{"column": value}`).
#[derive(Debug)]
pub struct DecodedJson {
    pub decoded: Decoded,
    /// (before, after) of each row, for rows events.
    pub rows: Vec<(Option<serde_json::Value>, Option<serde_json::Value>)>,
}

impl DecodedJson {
    fn new(decoded: Decoded) -> Result<Self> {
        let mut rows = Vec::new();
        if let BinlogEvent::Rows(change) = &decoded.event {
            for (before, after) in &change.rows {
                let json = |image: &Option<RowImage>| -> Result<Option<serde_json::Value>> {
                    let Some(image) = image else { return Ok(None) };
                    let mut text = String::new();
                    write_row_json(&change.table, image, &mut text)?;
                    serde_json::from_str(&text)
                        .map(Some)
                        .map_err(|e| BinlogError::decode(format!("row JSON: {e}")))
                };
                rows.push((json(before)?, json(after)?));
            }
        }
        Ok(DecodedJson { decoded, rows })
    }
}

/// Writes a row image as a JSON object of column name → value.
///
/// # Errors
///
/// As [`write_value_json`].
pub fn write_row_json(table: &TableInfo, image: &RowImage, out: &mut String) -> Result<()> {
    out.push('{');
    for (i, column) in table.columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(&column.name, out);
        out.push(':');
        write_value_json(column, image.values.get(i).and_then(Option::as_ref), out)?;
    }
    out.push('}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_garbage_frames_are_errors_not_panics() {
        for bytes in [
            &b""[..],
            &[0u8; 5][..],
            &[0u8; 19][..],
            &[0, 0, 0, 0, 15, 1, 0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[0, 0, 0, 0, 15, 1, 0, 0, 0, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[0xff; 64][..],
        ] {
            let (_, error) = decode_binlog(bytes);
            assert!(bytes.is_empty() || error.is_some(), "{bytes:?}");
        }
    }

    #[test]
    fn mariadb_gtid_events_decode_domain_server_and_sequence() {
        let mut data = 7u64.to_le_bytes().to_vec();
        data.extend(3u32.to_le_bytes());
        data.push(GTID_STANDALONE);
        match mariadb_gtid(&data, 9).unwrap() {
            BinlogEvent::Gtid { gtid, standalone } => {
                assert_eq!(gtid.to_string(), "3-9-7");
                assert!(standalone);
            }
            other => panic!("{other:?}"),
        }
        assert!(mariadb_gtid(&data[..12], 9).is_err());
        let mut list = 2u32.to_le_bytes().to_vec();
        for (d, s, q) in [(0u32, 1u32, 5u64), (4, 2, 9)] {
            list.extend(d.to_le_bytes());
            list.extend(s.to_le_bytes());
            list.extend(q.to_le_bytes());
        }
        match mariadb_gtid_list(&list).unwrap() {
            BinlogEvent::GtidList(list) => assert_eq!(list.to_string(), "0-1-5,4-2-9"),
            other => panic!("{other:?}"),
        }
        assert!(mariadb_gtid_list(&list[..20]).is_err());
    }

    #[test]
    fn timestamps_are_utc_with_the_zone_stated() {
        let mut out = String::new();
        write_timestamp("1704164645.123456", 6, &mut out).unwrap();
        assert_eq!(out, "\"2024-01-02 03:04:05.123456+00\"");
        out.clear();
        write_timestamp("1704164645", 0, &mut out).unwrap();
        assert_eq!(out, "\"2024-01-02 03:04:05+00\"");
    }
}
