//! A hardened server with a trivial router on a free loopback port, and raw clients that
//! misbehave on purpose.
//!
//! Every test here must fail on a plain `axum::serve`: run the suite with
//! `TRIBUTARY_HTTP_TEST_PLAIN_AXUM=1` and the harness serves the same router with
//! `axum::serve` (no limits) instead; every test but the bind one should then fail.

#![allow(dead_code)] // each test binary uses part of this module

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, oneshot};
use tributary_http::HttpLimits;

/// Generous bound on anything the server must do "soon": the suite runs on loaded 2-core
/// machines, and the point is "it happens", not "it is fast".
pub const SOON: Duration = Duration::from_secs(10);

/// A short timeout to configure, so the suite stays fast.
pub const SHORT: Duration = Duration::from_millis(300);

pub struct TestServer {
    pub addr: SocketAddr,
    /// Requests to `/slow` wait for a permit of this gate.
    pub gate: Arc<Semaphore>,
    /// How many requests entered `/slow`.
    pub entered: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn plain_axum() -> bool {
    std::env::var_os("TRIBUTARY_HTTP_TEST_PLAIN_AXUM").is_some()
}

fn router(limits: &HttpLimits, gate: Arc<Semaphore>, entered: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route(
            "/echo",
            post(|body: Bytes| async move { axum::Json(json!({"received": body.len()})) }),
        )
        .route(
            "/slow",
            get(move || {
                let (gate, entered) = (gate.clone(), entered.clone());
                async move {
                    entered.fetch_add(1, Ordering::SeqCst);
                    let _permit = gate.acquire().await;
                    axum::Json(json!({"slow": "done"}))
                }
            }),
        )
        .route("/big", get(|| async { vec![b'x'; 64 * 1024 * 1024] }))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
}

impl TestServer {
    pub async fn start(limits: HttpLimits) -> anyhow::Result<Self> {
        let gate = Arc::new(Semaphore::new(0));
        let entered = Arc::new(AtomicUsize::new(0));
        let router = router(&limits, gate.clone(), entered.clone());
        let listener = tributary_http::bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = if plain_axum() {
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await?;
                Ok(())
            })
        } else {
            tokio::spawn(async move {
                tributary_http::serve(listener, router, shutdown, limits).await?;
                Ok(())
            })
        };
        Ok(Self {
            addr,
            gate,
            entered,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub async fn connect(&self) -> anyhow::Result<TcpStream> {
        Ok(TcpStream::connect(self.addr).await?)
    }

    /// Signals shutdown; `finished` then waits for `serve` to return.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn finished(&mut self, within: Duration) -> anyhow::Result<()> {
        let task = self.task.take().context("already finished")?;
        tokio::time::timeout(within, task)
            .await
            .context("serve did not return")???;
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "body is not JSON: {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `{"error": "..."}` message, checking the content type.
    pub fn error_message(&self) -> anyhow::Result<String> {
        let ct = self.header("content-type").unwrap_or("");
        if !ct.starts_with("application/json") {
            bail!(
                "{} has content type {ct:?}, not JSON: {self:?}",
                self.status
            );
        }
        match self.json()?.get("error").and_then(Value::as_str) {
            Some(m) if !m.is_empty() => Ok(m.to_owned()),
            _ => bail!("no error message in {self:?}"),
        }
    }
}

/// Parses one response at the start of `bytes`, if complete: (answer, its length).
pub fn parse_answer(bytes: &[u8]) -> anyhow::Result<Option<(Answer, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(bytes)? else {
        return Ok(None);
    };
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let status = response.code.context("no status")?;
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse())
        .transpose()?
        .unwrap_or(0);
    if bytes.len() < head + length {
        return Ok(None);
    }
    Ok(Some((
        Answer {
            status,
            headers,
            body: bytes[head..head + length].to_vec(),
        },
        head + length,
    )))
}

/// Reads one response (within `within`).
pub async fn read_answer(stream: &mut TcpStream, within: Duration) -> anyhow::Result<Answer> {
    let deadline = Instant::now() + within;
    let mut bytes = Vec::new();
    loop {
        if let Some((answer, _)) = parse_answer(&bytes)? {
            return Ok(answer);
        }
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut chunk))
            .await
            .with_context(|| {
                format!(
                    "no complete response within {within:?} (got {:?})",
                    String::from_utf8_lossy(&bytes)
                )
            })??;
        if n == 0 {
            bail!(
                "connection closed before a complete response (got {:?})",
                String::from_utf8_lossy(&bytes)
            );
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// What the server did with a connection within some time.
#[derive(Debug)]
pub struct Ending {
    /// Bytes received before the end (or the deadline).
    pub received: Vec<u8>,
    /// Whether the server closed the connection (end of file or reset) by the deadline.
    pub closed: bool,
    pub after: Duration,
}

impl Ending {
    pub fn answer(&self) -> anyhow::Result<Answer> {
        parse_answer(&self.received)?
            .map(|(a, _)| a)
            .with_context(|| {
                format!(
                    "no complete response in {:?}",
                    String::from_utf8_lossy(&self.received)
                )
            })
    }
}

/// Reads until the server closes the connection or `within` passes.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Ending {
    let started = Instant::now();
    let deadline = started + within;
    let mut received = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Ending {
                    received,
                    closed: true,
                    after: started.elapsed(),
                };
            }
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            Err(_) => {
                return Ending {
                    received,
                    closed: false,
                    after: started.elapsed(),
                };
            }
        }
    }
}

/// Sends a complete GET on a fresh connection and reads the answer.
pub async fn get_fresh(addr: SocketAddr, path: &str) -> anyhow::Result<Answer> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await?;
    read_answer(&mut stream, SOON).await
}
