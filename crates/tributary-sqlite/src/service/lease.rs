//! Leases as kernel file locks on files next to the database: one relay active per source
//! (exclusive), and consumer groups' locks (shared while they run, exclusive for a rebuild).
//! The kernel releases a lock the moment the holding process dies, so a standby takes over,
//! or a rebuild proceeds, without waiting for an expiry.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

use tributary_core::{Error, GroupLock, LeaseGuard, Result};

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
            Ok(()) => Ok(Some(
                Box::new(FileLease { _file: file }) as Box<dyn LeaseGuard>
            )),
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
