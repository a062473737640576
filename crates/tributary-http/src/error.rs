//! The errors of serving.

use std::net::SocketAddr;

/// Why a server could not start. Once it serves, nothing a client does makes `serve` fail:
/// bad requests get answers, and accept errors are logged and waited out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}; is another process using it?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The listener's own address could not be read.
    #[error("cannot read the address of the listening socket: {0}")]
    LocalAddr(#[source] std::io::Error),
    /// A limit is out of range.
    #[error("invalid HTTP limits: {0}")]
    InvalidLimits(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
