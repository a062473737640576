//! [`HttpLimits`]: what one hardened server allows a client.

use std::time::Duration;

use crate::error::{Error, Result};

/// What a server allows its clients: time to send a request, size of a request, connections
/// and requests at once. Every field has a default that suits a JSON service on a private
/// network; tests configure short timeouts.
///
/// The timeouts, and what happens when one expires:
///
/// | timeout | runs from … until … | on expiry |
/// |---|---|---|
/// | `header_read` | the connection was accepted, or the first byte of a later request arrived, until the request head is complete | `408` with a JSON body if any byte of the head arrived, then the connection is closed |
/// | `body_read` | the head is complete until the whole body arrived | `408` with a JSON body, connection closed |
/// | `idle` | a response was sent until the first byte of the next request | connection closed |
/// | `write` | a write to the client blocks (the client does not read) | connection closed |
/// | `linger` | the server closed its side until the client closed its own | connection dropped |
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HttpLimits {
    /// Time for a complete request head (request line and headers).
    pub header_read_timeout: Duration,
    /// Time for a complete request body once the head is in.
    pub body_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// How long a write to a client that does not read may block.
    pub write_timeout: Duration,
    /// After the server closed its side (after an error answer, a `Connection: close` or an
    /// idle timeout), how long it keeps reading and discarding what the client still sends, so
    /// that the client reads the answer instead of a connection reset.
    pub linger_timeout: Duration,
    /// The most bytes discarded while lingering.
    pub linger_bytes: u64,
    /// Connections held at once. A new connection beyond it takes the place of the connection
    /// that has waited longest without a request being handled (idle, or stalled in its head
    /// or body); when every connection is handling a request, the new one gets `503`.
    /// Lowered at start when the process's open-file limit cannot hold it.
    pub max_connections: usize,
    /// Requests handled by the router at once; more get `503` with `Retry-After`.
    pub max_in_flight: usize,
    /// The largest request body; larger ones get `413` (readable: the body is discarded up
    /// to `linger_bytes`).
    pub max_body_bytes: usize,
    /// The largest request head (request line and headers); larger ones get `431`.
    pub max_head_bytes: usize,
    /// The longest request target (path and query); longer ones get `414`.
    pub max_uri_bytes: usize,
    /// The most header fields in a request; more get `431`.
    pub max_headers: usize,
    /// The `Retry-After` of a `503` (whole seconds, at least one).
    pub retry_after: Duration,
    /// After the shutdown signal, how long requests in flight may take before their
    /// connections are dropped.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            linger_timeout: Duration::from_secs(2),
            linger_bytes: 4 * 1024 * 1024,
            max_connections: 16_384,
            max_in_flight: 512,
            max_body_bytes: 2 * 1024 * 1024,
            max_head_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
            max_headers: 100,
            retry_after: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl HttpLimits {
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    pub fn with_body_read_timeout(mut self, timeout: Duration) -> Self {
        self.body_read_timeout = timeout;
        self
    }

    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    pub fn with_linger(mut self, timeout: Duration, bytes: u64) -> Self {
        self.linger_timeout = timeout;
        self.linger_bytes = bytes;
        self
    }

    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    pub fn with_max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }

    pub fn with_max_head_bytes(mut self, n: usize) -> Self {
        self.max_head_bytes = n;
        self
    }

    pub fn with_max_uri_bytes(mut self, n: usize) -> Self {
        self.max_uri_bytes = n;
        self
    }

    pub fn with_max_headers(mut self, n: usize) -> Self {
        self.max_headers = n;
        self
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The `Retry-After` value in whole seconds (at least 1).
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs().max(1)
    }

    /// # Errors
    /// [`Error::InvalidLimits`] for a zero timeout or bound, or a head limit the request line
    /// of an ordinary request would not fit.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: String| Err(Error::InvalidLimits(what));
        for (name, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("write_timeout", self.write_timeout),
            ("linger_timeout", self.linger_timeout),
            ("shutdown_grace", self.shutdown_grace),
        ] {
            if d.is_zero() {
                return invalid(format!("{name} must be positive"));
            }
        }
        for (name, n) in [
            ("max_connections", self.max_connections),
            ("max_in_flight", self.max_in_flight),
            ("max_headers", self.max_headers),
        ] {
            if n == 0 {
                return invalid(format!("{name} must be at least 1"));
            }
        }
        if self.max_uri_bytes < 64 {
            return invalid(format!(
                "max_uri_bytes must be at least 64, got {}",
                self.max_uri_bytes
            ));
        }
        if self.max_head_bytes < self.max_uri_bytes + 64 {
            return invalid(format!(
                "max_head_bytes ({}) must leave room for a request line with the longest \
                 target (max_uri_bytes {} + 64)",
                self.max_head_bytes, self.max_uri_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        HttpLimits::default().validate().unwrap();
    }

    #[test]
    fn zero_timeouts_and_bounds_are_refused() {
        let base = HttpLimits::default;
        for bad in [
            base().with_header_read_timeout(Duration::ZERO),
            base().with_body_read_timeout(Duration::ZERO),
            base().with_idle_timeout(Duration::ZERO),
            base().with_write_timeout(Duration::ZERO),
            base().with_linger(Duration::ZERO, 1),
            base().with_shutdown_grace(Duration::ZERO),
            base().with_max_connections(0),
            base().with_max_in_flight(0),
            base().with_max_headers(0),
            base().with_max_uri_bytes(10),
            base().with_max_uri_bytes(8192).with_max_head_bytes(8192),
        ] {
            assert!(
                matches!(bad.validate(), Err(Error::InvalidLimits(_))),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let l = HttpLimits::default().with_retry_after(Duration::from_millis(10));
        assert_eq!(l.retry_after_secs(), 1);
        let l = HttpLimits::default().with_retry_after(Duration::from_secs(7));
        assert_eq!(l.retry_after_secs(), 7);
    }
}
