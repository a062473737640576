//! Finding the servers that server-backed suites need, and skipping loudly without them.
//!
//! A plain `cargo test` on a machine with only Rust skips these suites and prints a line
//! starting with `SKIPPED` that says why. With `TRIBUTARY_TEST_SERVERS=required` (as `.ci/run`
//! sets it) an unreachable server fails the test instead.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The PostgreSQL URL for tests: `TRIBUTARY_TEST_POSTGRES_URL`, else the local default.
pub fn postgres_url() -> String {
    std::env::var("TRIBUTARY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The NATS URL for tests: `TRIBUTARY_TEST_NATS_URL`, else the local default.
pub fn nats_url() -> String {
    std::env::var("TRIBUTARY_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Whether server-backed suites must run (and fail when a server is missing).
pub fn servers_required() -> bool {
    std::env::var("TRIBUTARY_TEST_SERVERS").is_ok_and(|v| v == "required")
}

/// Skips (returns `None`, printing why) or, when servers are required, panics.
#[track_caller]
pub fn skip<T>(suite: &str, reason: &str) -> Option<T> {
    if servers_required() {
        panic!("{suite} needs a server but {reason} (TRIBUTARY_TEST_SERVERS=required)");
    }
    eprintln!("SKIPPED {suite}: {reason}; set TRIBUTARY_TEST_SERVERS=required to make this fail");
    None
}

/// Whether something accepts TCP connections at the host and port of `url`.
pub fn reachable(url: &str) -> bool {
    let Some(authority) = url.split("://").nth(1) else {
        return false;
    };
    let host_port = authority
        .rsplit('@')
        .next()
        .unwrap_or(authority)
        .split('/')
        .next()
        .unwrap_or("");
    let Ok(addrs) = host_port.to_socket_addrs() else {
        return false;
    };
    addrs
        .collect::<Vec<SocketAddr>>()
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unused_port_is_not_reachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(reachable(&format!("nats://127.0.0.1:{port}")));
        drop(listener);
        assert!(!reachable(&format!("nats://127.0.0.1:{port}")));
        assert!(!reachable("not a url"));
    }
}
