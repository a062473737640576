//! The capture's state row in the captured server, its lease, and the server checks.

use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, Row};

use super::error::{BinlogError, Result};
use super::mapping::STATE_TABLE;
use super::position::{BinlogPosition, GtidList};

/// A connection to the captured server.
pub(crate) async fn connect(url: &str) -> Result<Conn> {
    let opts = Opts::from_url(url).map_err(|e| BinlogError::Config {
        reason: format!("{url}: {e}"),
    })?;
    Conn::new(opts)
        .await
        .map_err(|e| BinlogError::driver("connect", e))
}

pub(crate) async fn exec(conn: &mut Conn, sql: &str) -> Result<()> {
    conn.query_drop(sql)
        .await
        .map_err(|e| BinlogError::driver(sql, e))
}

pub(crate) async fn rows(conn: &mut Conn, sql: &str) -> Result<Vec<Row>> {
    conn.query(sql)
        .await
        .map_err(|e| BinlogError::driver(sql, e))
}

/// `name` as a quoted identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `text` as a quoted string literal.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// What the server is and how its binlog is set up.
#[derive(Debug, Clone)]
pub(crate) struct ServerInfo {
    pub(crate) mariadb: bool,
    pub(crate) version: String,
    pub(crate) log_bin: bool,
    pub(crate) binlog_format: String,
    pub(crate) row_image: String,
    pub(crate) row_metadata: String,
    pub(crate) server_id: u32,
}

impl ServerInfo {
    pub(crate) async fn read(conn: &mut Conn) -> Result<Self> {
        let sql = "SELECT @@version, @@global.log_bin, @@global.binlog_format, \
                   @@global.binlog_row_image, @@global.binlog_row_metadata, @@global.server_id";
        let row: Option<(String, String, String, String, String, u32)> = conn
            .query_first(sql)
            .await
            .map_err(|e| BinlogError::driver(sql, e))?;
        let (version, log_bin, binlog_format, row_image, row_metadata, server_id) =
            row.ok_or_else(|| BinlogError::decode("no server settings"))?;
        Ok(ServerInfo {
            mariadb: version.contains("MariaDB"),
            version,
            log_bin: log_bin == "1" || log_bin.eq_ignore_ascii_case("ON"),
            binlog_format,
            row_image,
            row_metadata,
            server_id,
        })
    }

    /// The settings row capture needs, or the error saying which is wrong.
    pub(crate) fn check(&self, capture: &str) -> Result<()> {
        let wrong = |reason: String| {
            Err(BinlogError::ServerSettings {
                capture: capture.to_owned(),
                reason,
            })
        };
        if !self.log_bin {
            return wrong("the binlog is off (log_bin)".into());
        }
        if !self.binlog_format.eq_ignore_ascii_case("ROW") {
            return wrong(format!(
                "binlog_format is {}, not ROW: statement-based changes carry no rows",
                self.binlog_format
            ));
        }
        if !self.row_image.eq_ignore_ascii_case("FULL") {
            return wrong(format!(
                "binlog_row_image is {}, not FULL: before images would miss columns",
                self.row_image
            ));
        }
        if !self.row_metadata.eq_ignore_ascii_case("FULL") {
            return wrong(format!(
                "binlog_row_metadata is {}, not FULL: table maps would carry no column names, \
                 so a row written before an ALTER TABLE could be read with the new columns",
                self.row_metadata
            ));
        }
        Ok(())
    }

    /// Where the server's binlog ends now.
    pub(crate) async fn current(&self, conn: &mut Conn) -> Result<BinlogPosition> {
        let status = rows(conn, "SHOW MASTER STATUS").await?;
        let row = status
            .first()
            .ok_or_else(|| BinlogError::decode("SHOW MASTER STATUS returned nothing"))?;
        let file: String = row
            .get(0)
            .ok_or_else(|| BinlogError::decode("SHOW MASTER STATUS without a file"))?;
        let offset: u64 = row
            .get(1)
            .ok_or_else(|| BinlogError::decode("SHOW MASTER STATUS without a position"))?;
        let gtids = if self.mariadb {
            Some(gtid_variable(conn, "@@global.gtid_binlog_pos").await?)
        } else {
            None
        };
        Ok(BinlogPosition {
            gtids,
            file,
            offset,
        })
    }
}

pub(crate) async fn gtid_variable(conn: &mut Conn, variable: &str) -> Result<GtidList> {
    let sql = format!("SELECT {variable}");
    let text: Option<Option<String>> = conn
        .query_first(&sql)
        .await
        .map_err(|e| BinlogError::driver(&sql, e))?;
    text.flatten()
        .unwrap_or_default()
        .parse()
        .map_err(BinlogError::decode)
}

/// The binlog files the server still has.
pub(crate) async fn binlog_files(conn: &mut Conn) -> Result<Vec<(String, u64)>> {
    Ok(rows(conn, "SHOW BINARY LOGS")
        .await?
        .iter()
        .filter_map(|row| Some((row.get::<String, _>(0)?, row.get::<u64, _>(1)?)))
        .collect())
}

/// The stored state of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateRow {
    pub(crate) status: Status,
    pub(crate) position: BinlogPosition,
    pub(crate) snapshot_rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// The initial snapshot was being published; the position is where it was taken.
    Snapshot,
    /// Streaming: the position is where to resume.
    Streaming,
}

/// SQL for one capture's state row in `database`.
#[derive(Debug, Clone)]
pub(crate) struct StateSql {
    table: String,
    capture: String,
}

impl StateSql {
    pub(crate) fn new(database: &str, capture: &str) -> Self {
        StateSql {
            table: format!("{}.{}", ident(database), ident(STATE_TABLE)),
            capture: capture.to_owned(),
        }
    }

    pub(crate) async fn ensure_table(&self, conn: &mut Conn) -> Result<()> {
        exec(
            conn,
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (
                   capture VARCHAR(190) NOT NULL PRIMARY KEY,
                   status VARCHAR(16) NOT NULL,
                   gtid_position TEXT NULL,
                   binlog_file VARCHAR(255) NOT NULL,
                   binlog_pos BIGINT UNSIGNED NOT NULL,
                   snapshot_rows BIGINT UNSIGNED NOT NULL DEFAULT 0,
                   updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
                 ) ENGINE=InnoDB",
                self.table
            ),
        )
        .await
    }

    pub(crate) async fn load(&self, conn: &mut Conn) -> Result<Option<StateRow>> {
        let sql = format!(
            "SELECT status, gtid_position, binlog_file, binlog_pos, snapshot_rows FROM {} \
             WHERE capture = {}",
            self.table,
            literal(&self.capture)
        );
        let row: Option<(String, Option<String>, String, u64, u64)> = conn
            .query_first(&sql)
            .await
            .map_err(|e| BinlogError::driver(&sql, e))?;
        let Some((status, gtids, file, offset, snapshot_rows)) = row else {
            return Ok(None);
        };
        let status = match status.as_str() {
            "snapshot" => Status::Snapshot,
            "streaming" => Status::Streaming,
            other => {
                return Err(BinlogError::State {
                    capture: self.capture.clone(),
                    reason: format!("unknown status {other:?}"),
                });
            }
        };
        let gtids = gtids
            .map(|g| g.parse::<GtidList>())
            .transpose()
            .map_err(|reason| BinlogError::State {
                capture: self.capture.clone(),
                reason,
            })?;
        Ok(Some(StateRow {
            status,
            position: BinlogPosition {
                gtids,
                file,
                offset,
            },
            snapshot_rows,
        }))
    }

    /// Creates (or replaces) the row.
    pub(crate) async fn create(
        &self,
        conn: &mut Conn,
        status: Status,
        position: &BinlogPosition,
    ) -> Result<()> {
        exec(
            conn,
            &format!(
                "REPLACE INTO {} (capture, status, gtid_position, binlog_file, binlog_pos, \
                 snapshot_rows, updated_at) VALUES ({}, {}, {}, {}, {}, 0, NOW(6))",
                self.table,
                literal(&self.capture),
                literal(status_name(status)),
                gtid_literal(position),
                literal(&position.file),
                position.offset
            ),
        )
        .await
    }

    /// Stores a position the broker acknowledged everything before (one autocommit
    /// statement: durable when it returns).
    pub(crate) async fn store(&self, conn: &mut Conn, position: &BinlogPosition) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET gtid_position = {}, binlog_file = {}, binlog_pos = {}, \
             updated_at = NOW(6) WHERE capture = {} AND status = 'streaming'",
            self.table,
            gtid_literal(position),
            literal(&position.file),
            position.offset,
            literal(&self.capture)
        );
        let result = conn
            .query_iter(&sql)
            .await
            .map_err(|e| BinlogError::driver(&sql, e))?;
        let matched = result.affected_rows();
        drop(result);
        if matched == 0 {
            return Err(BinlogError::State {
                capture: self.capture.clone(),
                reason: "its state row is gone or no longer streaming (was --resnapshot run while it ran?)"
                    .into(),
            });
        }
        Ok(())
    }

    pub(crate) async fn snapshot_progress(&self, conn: &mut Conn, rows: usize) -> Result<()> {
        exec(
            conn,
            &format!(
                "UPDATE {} SET snapshot_rows = snapshot_rows + {rows}, updated_at = NOW(6) \
                 WHERE capture = {}",
                self.table,
                literal(&self.capture)
            ),
        )
        .await
    }

    pub(crate) async fn snapshot_done(&self, conn: &mut Conn) -> Result<()> {
        exec(
            conn,
            &format!(
                "UPDATE {} SET status = 'streaming', updated_at = NOW(6) WHERE capture = {}",
                self.table,
                literal(&self.capture)
            ),
        )
        .await
    }

    pub(crate) async fn forget(&self, conn: &mut Conn) -> Result<()> {
        exec(
            conn,
            &format!(
                "DELETE FROM {} WHERE capture = {}",
                self.table,
                literal(&self.capture)
            ),
        )
        .await
    }
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Snapshot => "snapshot",
        Status::Streaming => "streaming",
    }
}

fn gtid_literal(position: &BinlogPosition) -> String {
    match &position.gtids {
        Some(gtids) => literal(&gtids.to_string()),
        None => "NULL".into(),
    }
}

/// Takes the capture's lease: the named lock [`BinlogConfig::lease_lock`] held by `conn`'s
/// session.
pub(crate) async fn try_lock(conn: &mut Conn, lock: &str) -> Result<bool> {
    let sql = format!("SELECT GET_LOCK({}, 0)", literal(lock));
    let got: Option<Option<i64>> = conn
        .query_first(&sql)
        .await
        .map_err(|e| BinlogError::driver(&sql, e))?;
    Ok(got.flatten() == Some(1))
}

/// Gives the capture's lease back at once. Ending the session releases it too, but the server
/// does that after it closed the socket, so a client that saw the disconnect could still find
/// the lock held (an operator command run right after a capture stopped).
pub(crate) async fn unlock(conn: &mut Conn, lock: &str) -> Result<()> {
    let sql = format!("SELECT RELEASE_LOCK({})", literal(lock));
    let _: Option<Option<i64>> = conn
        .query_first(&sql)
        .await
        .map_err(|e| BinlogError::driver(&sql, e))?;
    Ok(())
}
