//! Turning sqlx errors into Tributary errors: the driver's error is wrapped as the source,
//! never part of the API.

use tributary_core::Error;

/// The SQLSTATE of a database error, if `e` is one.
pub(crate) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

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

/// Maps an sqlx error met while doing `what`. Lost connections, a busy server, deadlocks and
/// serialization failures are worth retrying; bad values are the caller's input; everything
/// else is a storage problem.
pub(crate) fn db_error(what: &str, e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(_) => {
            let code = sqlstate(&e).unwrap_or_default();
            match code.as_str() {
                // serialization_failure, deadlock_detected, lock_not_available, query_canceled
                "40001" | "40P01" | "55P03" | "57014" => {
                    Error::unavailable(format!("postgres ({what})"), e)
                }
                // connection exceptions, insufficient resources, operator intervention
                c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
                    Error::unavailable(format!("postgres ({what})"), e)
                }
                // data exceptions: a value the server cannot store (e.g. `\u0000` in jsonb)
                c if c.starts_with("22") => {
                    Error::invalid(format!("postgres refused a value while {what}: {e}"))
                }
                _ => Error::storage(format!("postgres failed while {what}"), e),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Error::unavailable(format!("postgres ({what})"), e),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            Error::decode(format!("a row read while {what}"), e)
        }
        _ => Error::storage(format!("postgres failed while {what}"), e),
    }
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
