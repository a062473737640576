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

/// A NATS server of a test's own, on a free loopback port with a temporary storage directory,
/// for tests that stop, kill or restart a server (the shared one must stay up). Stopped by its
/// own process id when dropped.
pub struct PrivateNats {
    child: Option<std::process::Child>,
    port: u16,
    dir: std::path::PathBuf,
    _temp: Option<TempDirGuard>,
}

/// Removes a directory when dropped.
struct TempDirGuard(std::path::PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nats_server_binary() -> Option<std::path::PathBuf> {
    let candidates = [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ];
    candidates
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("nats-server"))
                    .find(|p| p.exists())
            })
        })
}

impl PrivateNats {
    /// Starts a server, or skips (see [`skip`]) when `nats-server` is not installed.
    #[track_caller]
    pub fn start(suite: &str) -> Option<Self> {
        let Some(binary) = nats_server_binary() else {
            return skip(suite, "nats-server is not installed");
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let dir = std::env::temp_dir().join(format!("tributary-nats-{}", uuid_like()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("temp dir: {e}"));
        let mut server = Self {
            child: None,
            port,
            dir: dir.clone(),
            _temp: Some(TempDirGuard(dir)),
        };
        server.launch(&binary);
        Some(server)
    }

    fn launch(&mut self, binary: &std::path::Path) {
        let child = std::process::Command::new(binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting nats-server: {e}"));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !reachable(&self.url()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the private nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the server gets no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        let binary = nats_server_binary().unwrap_or_else(|| panic!("nats-server vanished"));
        self.launch(&binary);
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
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
