//! Leases as kernel file locks on files next to the database: one relay active per source
//! (exclusive), and consumer groups' locks (shared while they run, exclusive for a rebuild).
//! The kernel releases a lock the moment the holding process dies, so a standby takes over,
//! or a rebuild proceeds, without waiting for an expiry.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::PathBuf;

use tributary_core::{Error, GroupLock, LeaseGuard, LeaseState, Result};

use crate::database::SqliteDatabase;

/// Holds the lock while the file stays open.
struct FileLease {
    _file: File,
}

impl LeaseGuard for FileLease {
    fn is_held(&self) -> bool {
        true
    }
}

/// `<database file>.<name>.lease`, with every character a file name could trip on replaced.
fn lease_path(db: &SqliteDatabase, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut path = db.path().as_os_str().to_owned();
    path.push(format!(".{safe}.lease"));
    PathBuf::from(path)
}

/// Takes the lock named `name` in `mode`, or `None` if another holder excludes it.
pub(super) async fn try_file_lease(
    db: &SqliteDatabase,
    name: &str,
    mode: GroupLock,
) -> Result<Option<Box<dyn LeaseGuard>>> {
    let path = lease_path(db, name);
    tokio::task::spawn_blocking(move || {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::unavailable(format!("lease file {}", path.display()), e))?;
        let locked = match mode {
            GroupLock::Exclusive => file.try_lock(),
            GroupLock::Shared => file.try_lock_shared(),
        };
        match locked {
            Ok(()) => {
                if mode == GroupLock::Exclusive {
                    write_holder(&file);
                }
                Ok(Some(
                    Box::new(FileLease { _file: file }) as Box<dyn LeaseGuard>
                ))
            }
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(Error::unavailable(
                format!("lease file {}", path.display()),
                e,
            )),
        }
    })
    .await
    .map_err(|e| Error::unavailable("lease thread", e))?
}

/// Records who took an exclusive lease in its file, for [`file_lease_state`]. Best effort: a
/// lease whose note could not be written is still held, and says "unknown holder".
fn write_holder(mut file: &File) {
    let note = format!(
        "pid {} since {}\n",
        std::process::id(),
        chrono::Utc::now().to_rfc3339()
    );
    let _ = file
        .set_len(0)
        .and_then(|()| file.write_all(note.as_bytes()));
}

/// Who holds the exclusive lease `name`: probed with a shared lock taken and dropped at once
/// (a standby's `try_lease` in that instant fails, and succeeds on its next poll), the holder
/// read from the note [`write_holder`] left. A lease file that does not exist was never taken;
/// the probe creates nothing.
pub(super) async fn file_lease_state(db: &SqliteDatabase, name: &str) -> Result<LeaseState> {
    let path = lease_path(db, name);
    tokio::task::spawn_blocking(move || {
        let unavailable = |e| Error::unavailable(format!("lease file {}", path.display()), e);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LeaseState::Free),
            Err(e) => return Err(unavailable(e)),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(LeaseState::Free),
            Err(TryLockError::WouldBlock) => {
                let note = std::fs::read_to_string(&path).unwrap_or_default();
                Ok(parse_holder(&note))
            }
            Err(TryLockError::Error(e)) => Err(unavailable(e)),
        }
    })
    .await
    .map_err(|e| Error::unavailable("lease thread", e))?
}

fn parse_holder(note: &str) -> LeaseState {
    let note = note.trim();
    match note.split_once(" since ") {
        Some((holder, since)) => LeaseState::Held {
            holder: holder.to_owned(),
            since: chrono::DateTime::parse_from_rfc3339(since)
                .ok()
                .map(|t| t.to_utc()),
        },
        None => LeaseState::Held {
            holder: if note.is_empty() {
                "unknown holder".to_owned()
            } else {
                note.to_owned()
            },
            since: None,
        },
    }
}
