//! Turning sqlx errors into Tributary errors: the driver's error is wrapped as the source,
//! never part of the API.

use tributary_core::Error;

pub(crate) use tributary_core::backend::sqlstate;

/// The constraint a database error names, if any.
pub(crate) fn constraint(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

/// Whether `e` is a UNIQUE or PRIMARY KEY violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    sqlstate(e).as_deref() == Some("23505")
}

/// Maps an sqlx error met while doing `what`, with the one classification the service's own
/// SQL gets too ([`Error::from_sqlx`]).
pub(crate) fn db_error(what: &str, e: sqlx::Error) -> Error {
    Error::from_sqlx(what, e)
}

/// `.context("doing x")` on sqlx results.
pub(crate) trait SqlxResultExt<T> {
    fn context(self, what: &str) -> Result<T, Error>;
}

impl<T> SqlxResultExt<T> for Result<T, sqlx::Error> {
    fn context(self, what: &str) -> Result<T, Error> {
        self.map_err(|e| db_error(what, e))
    }
}
