//! Turning rusqlite errors into Tributary errors: the driver's error is wrapped, never leaked.

use tributary_core::Error;

/// Maps a SQLite error met while doing `what`, with the one classification every caller
/// shares ([`Error::from_rusqlite`]).
pub(crate) fn sql_error(what: &str, e: rusqlite::Error) -> Error {
    Error::from_rusqlite(what, e)
}

/// Whether `e` is a UNIQUE or PRIMARY KEY violation.
pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

pub(crate) trait SqlResultExt<T> {
    fn context(self, what: &str) -> Result<T, Error>;
}

impl<T> SqlResultExt<T> for Result<T, rusqlite::Error> {
    fn context(self, what: &str) -> Result<T, Error> {
        self.map_err(|e| sql_error(what, e))
    }
}
