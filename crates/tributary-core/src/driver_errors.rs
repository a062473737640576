//! The one classification of database driver errors: what is worth retrying (the
//! infrastructure was busy, a lock or a race was lost, the connection dropped) and what is not
//! (a value the database refuses, a storage problem).
//!
//! Backends use it for their own statements, and a service's own SQL gets it through
//! `From<sqlx::Error>` / `From<rusqlite::Error>` for [`Error`] and [`crate::HandlerError`], so
//! that `?` on a driver error inside a unit of work or a handler retries a deadlock and
//! dead-letters a bad value without user code knowing a single SQLSTATE.

#[cfg(any(feature = "sqlx", feature = "rusqlite"))]
use crate::error::Error;

#[cfg(feature = "sqlx")]
mod postgres {
    use super::Error;

    /// The SQLSTATE of a database error, if `e` is one.
    pub fn sqlstate(e: &sqlx_core::Error) -> Option<String> {
        match e {
            sqlx_core::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }

    impl Error {
        /// Classifies an sqlx error met while doing `what`. Serialization failures, deadlocks,
        /// lock timeouts, cancelled statements, lost connections, a server that is starting,
        /// stopping or out of connections are [`Error::Unavailable`] (retried); a value the
        /// server cannot store (SQLSTATE class 22) or a row a constraint refuses (class 23: a
        /// duplicate key, a missing foreign key, a failed check) is [`Error::InvalidInput`]
        /// (the same unit fails the same way again); a row that cannot be decoded is
        /// [`Error::Decode`]; the rest is [`Error::Storage`].
        pub fn from_sqlx(what: &str, e: sqlx_core::Error) -> Self {
            match &e {
                sqlx_core::Error::Database(_) => {
                    let code = sqlstate(&e).unwrap_or_default();
                    match code.as_str() {
                        // serialization_failure, deadlock_detected, lock_not_available,
                        // query_canceled (statement_timeout), idle_in_transaction timeout
                        "40001" | "40P01" | "55P03" | "57014" | "25P03" => {
                            Error::unavailable(format!("postgres ({what})"), e)
                        }
                        // connection exceptions, insufficient resources (too many
                        // connections, disk full), operator intervention (shutdown, restart)
                        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
                            Error::unavailable(format!("postgres ({what})"), e)
                        }
                        // data exceptions: a value the server cannot store (`\u0000` in jsonb,
                        // a number out of range)
                        c if c.starts_with("22") => {
                            Error::invalid(format!("postgres refused a value while {what}: {e}"))
                        }
                        // integrity constraint violations: unique, foreign key, check, not null
                        c if c.starts_with("23") => Error::invalid(format!(
                            "postgres refused a row (a constraint) while {what}: {e}"
                        )),
                        _ => Error::storage(format!("postgres failed while {what}"), e),
                    }
                }
                sqlx_core::Error::Io(_)
                | sqlx_core::Error::Tls(_)
                | sqlx_core::Error::PoolTimedOut
                | sqlx_core::Error::PoolClosed
                | sqlx_core::Error::WorkerCrashed
                | sqlx_core::Error::Protocol(_) => {
                    Error::unavailable(format!("postgres ({what})"), e)
                }
                sqlx_core::Error::ColumnDecode { .. } | sqlx_core::Error::Decode(_) => {
                    Error::decode(format!("a row read while {what}"), e)
                }
                _ => Error::storage(format!("postgres failed while {what}"), e),
            }
        }
    }

    impl From<sqlx_core::Error> for Error {
        /// As [`Error::from_sqlx`] for a statement of the caller's.
        fn from(e: sqlx_core::Error) -> Self {
            Error::from_sqlx("running a statement", e)
        }
    }
}

#[cfg(feature = "sqlx")]
pub use postgres::sqlstate;

#[cfg(feature = "rusqlite")]
mod sqlite {
    use super::Error;
    use rusqlite::ErrorCode;

    impl Error {
        /// Classifies a rusqlite error met while doing `what`. A busy or locked database and
        /// I/O trouble (disk full, a failed read or write) are [`Error::Unavailable`]
        /// (retried); a value too big, or a row a constraint refuses (a duplicate key, a
        /// missing foreign key, a failed check or NOT NULL) is [`Error::InvalidInput`]; a file
        /// that is not a database or is corrupted is a [`Error::Storage`] problem that names
        /// it; the rest is [`Error::Storage`].
        pub fn from_rusqlite(what: &str, e: rusqlite::Error) -> Self {
            match e.sqlite_error_code() {
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                    Error::unavailable(format!("sqlite ({what})"), e)
                }
                Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
                    Error::unavailable(format!("sqlite ({what})"), e)
                }
                Some(ErrorCode::TooBig) => {
                    Error::invalid(format!("sqlite refused a value while {what}: {e}"))
                }
                Some(ErrorCode::ConstraintViolation) => Error::invalid(format!(
                    "sqlite refused a row (a constraint) while {what}: {e}"
                )),
                _ => Error::storage(format!("sqlite failed while {what}"), e),
            }
        }
    }

    impl From<rusqlite::Error> for Error {
        /// As [`Error::from_rusqlite`] for a statement of the caller's.
        fn from(e: rusqlite::Error) -> Self {
            Error::from_rusqlite("running a statement", e)
        }
    }
}
