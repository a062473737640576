//! Looking at a database file without changing it, so that a deployment of several files can
//! check every one before it opens (and so changes) any.
//!
//! Opening a file for writing switches it to WAL and creates `-wal` and `-shm` files beside
//! it, and a new deployment creates its other files too; a foreign file found only then has
//! been changed already. [`inspect`] reads the header itself and then, only when the file may
//! be Tributary's, asks SQLite through a read-only connection that cannot create anything
//! (`immutable=1`, or the file's own existing WAL).

use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tributary_core::{Error, Result};

use crate::schema::{APPLICATION_ID, SqliteDatabaseKind, latest_version};

/// What a database file holds, as [`inspect`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqliteFileState {
    /// No file yet: opening creates it.
    Absent,
    /// An empty file or a SQLite database with nothing in it: opening initializes it.
    Empty,
    /// A Tributary database of the kind asked for, at schema `version` (opening applies the
    /// migrations after it, up to [`latest_version`]).
    Tributary { version: i64 },
}

impl SqliteFileState {
    /// Whether the file is a Tributary database at this build's schema version, so that
    /// opening it changes nothing.
    pub fn is_current(self, kind: SqliteDatabaseKind) -> bool {
        self == SqliteFileState::Tributary {
            version: latest_version(kind),
        }
    }
}

const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Finds what `path` holds without changing it or creating anything beside it.
///
/// # Errors
/// [`Error::Storage`] naming the file when it is not a SQLite database (or is truncated below
/// its header), is another application's database (one with tables and no Tributary
/// `application_id`), is a Tributary database of another kind, or has a newer schema than this
/// build knows; [`Error::Unavailable`] naming the path when it cannot be read (for instance
/// when its directory is a regular file).
pub fn inspect(path: &Path, kind: SqliteDatabaseKind) -> Result<SqliteFileState> {
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Said plainly: otherwise the first error is the OS's "File exists" or "Not a
        // directory" from creating the file, without the path.
        if dir.exists() && !dir.is_dir() {
            return Err(Error::storage_msg(format!(
                "{} is not a directory (a data directory must be one)",
                dir.display()
            )));
        }
    }
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SqliteFileState::Absent),
        Err(e) => return Err(Error::unavailable(format!("database file {shown}"), e)),
    };
    if meta.is_dir() {
        return Err(Error::storage_msg(format!(
            "{shown} is a directory, not a database file"
        )));
    }
    if meta.len() == 0 {
        return Ok(SqliteFileState::Empty);
    }
    let mut header = [0u8; 100];
    let read = std::fs::File::open(path)
        .and_then(|mut f| read_up_to(&mut f, &mut header))
        .map_err(|e| Error::unavailable(format!("database file {shown}"), e))?;
    if read < header.len() || &header[..16] != MAGIC {
        return Err(Error::storage_msg(format!(
            "{shown} is not a SQLite database (or is truncated); refusing to touch it"
        )));
    }
    let header_app_id = i32::from_be_bytes([header[68], header[69], header[70], header[71]]);
    if header_app_id != 0 && header_app_id != APPLICATION_ID {
        return Err(foreign(path, header_app_id, None));
    }
    let conn = reader(path, header_app_id, header[18] == 2)?;
    let query = |what: &str, e: rusqlite::Error| {
        Error::storage(format!("{shown} cannot be read ({what})"), e)
    };
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| query("application_id", e))?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name LIMIT 6")
        .and_then(|mut s| {
            s.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(|e| query("its tables", e))?;
    if app_id == 0 && tables.is_empty() {
        return Ok(SqliteFileState::Empty);
    }
    if app_id != APPLICATION_ID {
        return Err(foreign(path, app_id, Some(&tables)));
    }
    let found: Option<String> = conn
        .query_row(
            "SELECT value FROM tributary_meta WHERE key = 'kind'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| query("its kind", e))?;
    if found.as_deref() != Some(kind.name()) {
        return Err(Error::storage_msg(format!(
            "{shown} is a Tributary {} database, not a {} database",
            found.as_deref().unwrap_or("unknown"),
            kind.name()
        )));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| query("its schema version", e))?;
    let latest = latest_version(kind);
    if version > latest {
        return Err(Error::storage_msg(format!(
            "{shown} has schema version {version}, newer than this build of Tributary knows ({latest}); upgrade Tributary"
        )));
    }
    Ok(SqliteFileState::Tributary { version })
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn foreign(path: &Path, app_id: i32, tables: Option<&[String]>) -> Error {
    let holds = match tables {
        Some(t) if !t.is_empty() => format!(", tables {}", t.join(", ")),
        _ => String::new(),
    };
    Error::storage_msg(format!(
        "{} is not a Tributary database (application_id {app_id:#x}{holds}); refusing to touch it",
        path.display()
    ))
}

/// A connection that reads `path` without changing what it holds and without creating files
/// beside it that are not there already.
///
/// - No WAL with commits in it: the main file is the whole database, read as immutable.
/// - A WAL, and a Tributary header: the file is ours, and after a crash its WAL needs
///   recovery, which a read-only connection cannot run (`SQLITE_READONLY_RECOVERY`); it is
///   read through a read-write connection limited to queries, as opening it would anyway.
/// - A WAL, and no Tributary header (a file of ours whose first commit is still only in its
///   WAL, or another application's): read-only through the WAL; when that needs a recovery,
///   the main file alone, immutable (a file of ours then shows as empty, and opening finds
///   the rest).
fn reader(path: &Path, header_app_id: i32, wal_mode: bool) -> Result<Connection> {
    let unavailable = |e| Error::unavailable(format!("database file {}", path.display()), e);
    let wal = sibling(path, "-wal");
    let has_wal = wal_mode && std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let immutable = || {
        Connection::open_with_flags(
            format!("file:{}?immutable=1", uri_path(path)),
            read_only | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(unavailable)
    };
    if !has_wal {
        return immutable();
    }
    if header_app_id == APPLICATION_ID {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(unavailable)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(unavailable)?;
        return Ok(conn);
    }
    let conn = Connection::open_with_flags(path, read_only).map_err(unavailable)?;
    match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly) => immutable(),
        _ => Ok(conn),
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `path` as the path part of a `file:` URI: the characters a URI gives meaning to escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_paths_escape_what_a_uri_reads() {
        assert_eq!(
            uri_path(Path::new("/a b/c%d?e#f.db")),
            "/a b/c%25d%3fe%23f.db"
        );
    }
}
