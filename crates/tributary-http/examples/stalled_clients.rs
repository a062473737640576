//! Load generator: N stalled (or idle) connections against a hardened server, `/health`
//! latency while they are held, and the server's memory before, during and 30 s after.
//!
//! ```sh
//! cargo run --release -p tributary-http --example stalled_clients -- --connections 10000
//! ```
//!
//! By default it starts the server as a child process (this same binary with `--serve`, a
//! trivial router, `HttpLimits::default()` unless told otherwise) so that the server's memory
//! is measured alone; `--target ADDR --pid PID` points it at a server already running.
//! `--plain-axum` serves with `axum::serve` instead, for the comparison.
//!
//! Each stalled connection sends part of a request head and nothing more; when the server
//! closes one (header timeout, or shed for a newcomer), the client opens another, so N stay
//! offered for the whole hold. With `--mode idle` each connection sends one complete request,
//! reads the answer and then stays idle (keep-alive).
//!
//! Prints one JSON object (the project's benchmark line format) on stdout, a summary on stderr.
//! Needs about N + 100 open files in this process (and as many as the server holds in the
//! server's): raise `ulimit -n` when the soft limit is lower.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::routing::get;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tributary_http::HttpLimits;

// The tributary binary's allocator: the server's memory is measured as the binary holds it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    serve: bool,
    plain_axum: bool,
    listen: String,
    target: Option<SocketAddr>,
    pid: Option<u32>,
    connections: usize,
    idle: bool,
    hold: Duration,
    settle: Duration,
    probe_every: Duration,
    max_connections: Option<usize>,
    rounds: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        serve: false,
        plain_axum: false,
        listen: "127.0.0.1:0".into(),
        target: None,
        pid: None,
        connections: 10_000,
        idle: false,
        hold: Duration::from_secs(20),
        settle: Duration::from_secs(30),
        probe_every: Duration::from_millis(20),
        max_connections: None,
        rounds: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--serve" => a.serve = true,
            "--plain-axum" => a.plain_axum = true,
            "--listen" => a.listen = value()?,
            "--target" => a.target = Some(value()?.parse()?),
            "--pid" => a.pid = Some(value()?.parse()?),
            "--connections" => a.connections = value()?.parse()?,
            "--mode" => {
                a.idle = match value()?.as_str() {
                    "idle" => true,
                    "stalled" => false,
                    other => bail!("--mode is stalled or idle, not {other}"),
                }
            }
            "--hold-secs" => a.hold = Duration::from_secs(value()?.parse()?),
            "--settle-secs" => a.settle = Duration::from_secs(value()?.parse()?),
            "--probe-every-ms" => a.probe_every = Duration::from_millis(value()?.parse()?),
            "--max-connections" => a.max_connections = Some(value()?.parse()?),
            "--rounds" => a.rounds = value()?.parse::<usize>()?.max(1),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn limits(args: &Args) -> HttpLimits {
    let limits = HttpLimits::default();
    match args.max_connections {
        Some(n) => limits.with_max_connections(n),
        None => limits,
    }
}

fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let router = Router::new().route("/health", get(|| async { "{\"status\":\"ok\"}" }));
    let listener = tributary_http::bind(args.listen.parse()?).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // Stop when the parent closes our stdin, too.
    let stdin_closed = async {
        let mut buf = [0u8; 1];
        let _ = tokio::io::stdin().read(&mut buf).await;
    };
    let shutdown = async move {
        tokio::select! { () = stop => {}, () = stdin_closed => {} }
    };
    if args.plain_axum {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await?;
    } else {
        let limits = limits(&args);
        tributary_http::serve(listener, router, shutdown, limits).await?;
    }
    Ok(())
}

/// One GET /health on a fresh connection: the time to the complete answer.
async fn probe(addr: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!("answer: {:?}", String::from_utf8_lossy(&answer));
    }
    Ok(started.elapsed())
}

#[derive(Default)]
struct Counters {
    open: AtomicUsize,
    opened: AtomicU64,
    closed_by_server: AtomicU64,
    connect_errors: AtomicU64,
}

/// Keeps one connection offered until `stop`: reopens it when the server closes it.
async fn stalled(addr: SocketAddr, idle: bool, c: Arc<Counters>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let connected = tokio::select! {
            s = TcpStream::connect(addr) => s,
            () = stop.cancelled() => return,
        };
        let Ok(mut s) = connected else {
            c.connect_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        c.opened.fetch_add(1, Ordering::Relaxed);
        let request: &[u8] = if idle {
            b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"
        } else {
            b"GET /health HTTP/1.1\r\nHost: bench\r\nUser-Agent: slow"
        };
        if s.write_all(request).await.is_err() {
            continue;
        }
        c.open.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                read = s.read(&mut buf) => match read {
                    Ok(0) | Err(_) => {
                        c.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(_) => {}
                },
                () = stop.cancelled() => {
                    c.open.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        c.open.fetch_sub(1, Ordering::Relaxed);
        // Do not hammer a server that keeps closing: a real slow client comes back slowly too.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn drive(args: Args) -> anyhow::Result<()> {
    let fds = open_file_limit();
    if let Some(fds) = fds
        && fds < args.connections + 100
    {
        bail!(
            "the open-file limit is {fds}, too low for {} connections: raise it (ulimit -n {})",
            args.connections + 200,
            args.connections + 200
        );
    }
    let mut child = None;
    let (addr, pid) = match (args.target, args.pid) {
        (Some(addr), Some(pid)) => (addr, pid),
        (Some(_), None) | (None, Some(_)) => bail!("give --target and --pid together"),
        (None, None) => {
            let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
            cmd.arg("--serve");
            if args.plain_axum {
                cmd.arg("--plain-axum");
            }
            if let Some(n) = args.max_connections {
                cmd.args(["--max-connections", &n.to_string()]);
            }
            let mut c = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stdout = c.stdout.take().context("stdout")?;
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).await?;
            let addr: SocketAddr = line
                .trim()
                .strip_prefix("listening on http://")
                .with_context(|| format!("unexpected first line {line:?}"))?
                .parse()?;
            let pid = c.id().context("pid")?;
            child = Some(c);
            (addr, pid)
        }
    };
    // Warm up, then the baseline.
    for _ in 0..200 {
        probe(addr).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_mb(pid)?;

    let mut after_rounds = Vec::new();
    let mut last = None;
    for round in 1..=args.rounds {
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let mut tasks = Vec::with_capacity(args.connections);
        let opening = Instant::now();
        for i in 0..args.connections {
            tasks.push(tokio::spawn(stalled(
                addr,
                args.idle,
                counters.clone(),
                stop.clone(),
            )));
            if i % 500 == 499 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Until every connection was opened once (or 30 s).
        while (counters.opened.load(Ordering::Relaxed) as usize) < args.connections
            && opening.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let opened_in = opening.elapsed();
        eprintln!(
            "{} connections opened in {:.1} s ({} open now)",
            counters.opened.load(Ordering::Relaxed),
            opened_in.as_secs_f64(),
            counters.open.load(Ordering::Relaxed)
        );

        let mut latencies = Vec::new();
        let mut errors = 0u64;
        let mut peak = rss_before;
        let mut min_open = usize::MAX;
        let hold_until = Instant::now() + args.hold;
        let mut next_rss = Instant::now();
        while Instant::now() < hold_until {
            match tokio::time::timeout(Duration::from_secs(5), probe(addr)).await {
                Ok(Ok(d)) => latencies.push(d.as_secs_f64() * 1000.0),
                _ => errors += 1,
            }
            if Instant::now() >= next_rss {
                peak = peak.max(rss_mb(pid)?);
                min_open = min_open.min(counters.open.load(Ordering::Relaxed));
                next_rss = Instant::now() + Duration::from_millis(500);
            }
            tokio::time::sleep(args.probe_every).await;
        }
        let rss_during = rss_mb(pid)?;
        peak = peak.max(rss_during);
        stop.cancel();
        for t in tasks {
            let _ = t.await;
        }
        eprintln!(
            "held for {:?}: {} /health probes ({errors} failed); the client kept {min_open}+ connections open; the server closed {} (header timeout or shed)",
            args.hold,
            latencies.len(),
            counters.closed_by_server.load(Ordering::Relaxed)
        );
        // A live service keeps being asked for its health after a burst: probe on, as during
        // the hold, so the server's threads keep running as they would.
        let settle_until = Instant::now() + args.settle;
        while Instant::now() < settle_until {
            let _ = tokio::time::timeout(Duration::from_secs(5), probe(addr)).await;
            tokio::time::sleep(args.probe_every).await;
        }
        let rss_after = rss_mb(pid)?;
        after_rounds.push(rss_after);
        eprintln!(
            "round {round}: server RSS {rss_after:.1} MB, {} open files, {} s after closing",
            open_fds(pid),
            args.settle.as_secs()
        );
        last = Some((counters, latencies, errors, peak, rss_during, rss_after));
    }
    let Some((counters, mut latencies, errors, peak, rss_during, rss_after)) = last else {
        bail!("no round ran");
    };
    // The server still answers after all that.
    probe(addr).await?;
    latencies.sort_by(f64::total_cmp);
    let line = json!({
        "bench": "http",
        "scenario": if args.idle { "idle_connections" } else { "stalled_connections" },
        "backend": if args.plain_axum { "axum::serve" } else { "tributary-http" },
        "connections": args.connections,
        "events": latencies.len(),
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or(f64::NAN),
        "health_errors": errors,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "rss_during_mb": rss_during,
        "rss_after_mb": rss_after,
        "rss_after_ratio": rss_after / rss_before,
        "rss_after_each_round_mb": after_rounds,
        "closed_by_server": counters.closed_by_server.load(Ordering::Relaxed),
        "connect_errors": counters.connect_errors.load(Ordering::Relaxed),
        "settings": {
            "max_connections": limits(&args).max_connections,
            "header_read_timeout_s": HttpLimits::default().header_read_timeout.as_secs(),
            "idle_timeout_s": HttpLimits::default().idle_timeout.as_secs(),
            "hold_s": args.hold.as_secs(),
            "settle_s": args.settle.as_secs(),
            "probe_every_ms": args.probe_every.as_millis() as u64,
            "client_open_file_limit": fds,
        },
    });
    println!("{line}");
    eprintln!(
        "/health p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; server RSS {:.1} MB before, {:.1} MB peak, {:.1} MB {} s after closing ({:.0}% of before)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        rss_before,
        peak,
        rss_after,
        args.settle.as_secs(),
        rss_after / rss_before * 100.0
    );
    drop(child);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.serve {
        rt.block_on(serve(args))
    } else {
        rt.block_on(drive(args))
    }
}
