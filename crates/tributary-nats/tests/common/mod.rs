//! Helpers shared by the integration tests: brokers on the shared server under a prefix of
//! their own, and private servers for tests that stop one.

#![allow(dead_code)] // each test binary uses part of this module

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tributary_core::EventId;
use tributary_nats::{NatsBroker, NatsBrokerConfig};
use tributary_testkit::servers::{nats_url, reachable, skip};

/// A stream prefix no other test uses: the tail of a UUIDv7, whose leading characters (the
/// time, then a counter) are the same for ids made in the same millisecond.
pub fn fresh_prefix() -> String {
    format!("T{}", &EventId::new().as_uuid().simple().to_string()[8..])
}

/// Settings for tests: short timeouts and `ack_wait`, so failures show quickly.
pub fn test_config(url: impl Into<String>) -> NatsBrokerConfig {
    NatsBrokerConfig::default()
        .with_url(url)
        .with_stream_prefix(fresh_prefix())
        .with_ack_wait(Duration::from_secs(2))
        .with_request_timeout(Duration::from_secs(3))
        .with_connect_timeout(Duration::from_secs(3))
}

/// The shared server's URL, or `None` (after printing why) when it is unreachable.
pub fn shared_server(suite: &str) -> Option<String> {
    let url = nats_url();
    if reachable(&url) {
        Some(url)
    } else {
        skip(suite, &format!("no NATS server at {url}"))
    }
}

/// Deletes every stream under a broker's prefix when dropped.
pub struct DeleteStreams(pub NatsBroker);

impl Drop for DeleteStreams {
    fn drop(&mut self) {
        let broker = self.0.clone();
        let cleanup = async move {
            if let Ok(topics) = broker.topics().await {
                for topic in topics {
                    let _ = broker.delete_topic(&topic).await;
                }
            }
        };
        // Run to completion on a thread of its own: the caller may be inside a runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(cleanup);
            }
        })
        .join();
    }
}

/// A nats-server of this test alone, on a free loopback port with a temporary store
/// directory. Stopped by its own process id; dropped, it is killed.
pub struct PrivateServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    starts: u32,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PrivateServer {
    /// Starts one, or returns `None` (after printing why) when `nats-server` is missing.
    pub fn start(suite: &str) -> Option<Self> {
        if Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            return skip(suite, "nats-server is not on PATH");
        }
        let mut server = Self {
            child: None,
            port: free_port().expect("a free port"),
            dir: tempfile::tempdir().expect("a temporary directory"),
            starts: 0,
        };
        server.spawn();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join(format!("server-{}.log", self.starts))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = File::create(self.log()).expect("log file");
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path().join("store"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(self.log()).unwrap_or_default();
            if text.contains("Server is ready") {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("nats-server exited with {status}: {text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server on port {} did not become ready", self.port);
    }

    /// Stops the server gracefully (SIGTERM to its own pid) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server (SIGKILL to its own pid) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
