//! The accept loop: connections counted and shed, graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::ConnState;
use crate::error::{Error, Result};
use crate::guard::{Guarded, HeadEvent};
use crate::limits::HttpLimits;
use crate::reply::Reply;
use crate::service::{Shared, handle};

/// Connections beyond `max_connections`, when none can be shed, that still get a written
/// `503` (each for at most a linger timeout); more than this are closed at once.
const OVERFLOW_ANSWERS: usize = 64;

/// File descriptors kept for everything else a process opens (databases, broker
/// connections, logs) when `max_connections` is fitted to the open-file limit.
const FD_RESERVE: usize = 128;

/// The accept queue asked for (see [`bind`]).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr`. Bind first, report the bound address, then start the rest of the process:
/// a port in use is then reported with its address before anything else has started.
///
/// # Errors
/// [`Error::Bind`], naming the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    let listen = |socket: TcpSocket| {
        // As std and tokio do on Unix: a restarted server can bind while old connections
        // are in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // A deep accept queue: a burst of connections (thousands of clients reconnecting
        // at once) must not drop the SYN of a client that only wants `/health`, which would
        // cost it a one-second retransmission. The kernel caps it at net.core.somaxconn.
        socket.listen(LISTEN_BACKLOG)
    };
    socket
        .and_then(listen)
        .map_err(|source| Error::Bind { addr, source })
}

/// The connections of one server, for shedding.
#[derive(Default)]
struct Table {
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        // A map of handles: whatever a panicking thread left in it is still usable.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Sheds the connection that has waited longest without a request being handled.
    /// Returns whether there was one.
    fn evict_one(&self) -> bool {
        let mut conns = self.lock();
        let victim = conns
            .iter()
            .filter(|(_, c)| c.evictable())
            .min_by_key(|(_, c)| c.since_us())
            .map(|(id, _)| *id);
        match victim.and_then(|id| conns.remove(&id)) {
            Some(conn) => {
                conn.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from the table when its task ends.
struct Entry {
    table: Arc<Table>,
    id: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut conns = self.table.lock();
        conns.remove(&self.id);
        // A map that grew for a burst of connections gives its memory back afterwards.
        if conns.capacity() > 1024 && conns.len() < conns.capacity() / 4 {
            conns.shrink_to_fit();
        }
    }
}

/// The soft open-file limit of this process, where the platform tells it.
fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// Lowers `max_connections` to what the open-file limit can hold, so that the limit is
/// reached before `accept` fails with "too many open files".
fn fit_to_open_file_limit(mut limits: HttpLimits) -> HttpLimits {
    if let Some(soft) = open_file_limit() {
        let room = soft.saturating_sub(FD_RESERVE + OVERFLOW_ANSWERS).max(1);
        if limits.max_connections > room {
            tracing::warn!(
                max_connections = limits.max_connections,
                open_file_limit = soft,
                serving_at_most = room,
                "the open-file limit cannot hold max_connections; raise it (ulimit -n) to \
                 serve more connections at once"
            );
            limits.max_connections = room;
        }
    }
    limits
}

/// Errors `accept` returns for one failed connection rather than for the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets
/// requests in flight finish (for up to `shutdown_grace`) and returns.
///
/// HTTP/1.1 only (HTTP/1.0 too); every limit of [`HttpLimits`] applies, see the crate docs.
/// Handlers can extract `ConnectInfo<SocketAddr>`.
///
/// # Errors
/// [`Error::InvalidLimits`] before serving anything; [`Error::LocalAddr`] when the listener
/// is unusable. Nothing a client does makes it fail.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    shutdown: F,
    limits: HttpLimits,
) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    limits.validate()?;
    let local = listener.local_addr().map_err(Error::LocalAddr)?;
    let limits = Arc::new(fit_to_open_file_limit(limits));
    let shared = Arc::new(Shared {
        limits: limits.clone(),
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        router,
    });
    let epoch = Instant::now();
    let table = Arc::new(Table::default());
    let tracker = TaskTracker::new();
    let graceful = CancellationToken::new();
    let hard = CancellationToken::new();
    let overflow = Arc::new(Semaphore::new(OVERFLOW_ANSWERS));
    let mut next_id = 0u64;
    let mut last_warning: Option<Instant> = None;
    tracing::debug!(%local, ?limits, "serving HTTP");
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors (or memory): make room and slow down instead of
                // spinning on an accept that keeps failing.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    tracing::warn!(%local, error = %e, "accept failed; shedding the connection that waited longest");
                    last_warning = Some(Instant::now());
                }
                table.evict_one();
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if table.len() >= limits.max_connections && !table.evict_one() {
            answer_overflow(stream, &overflow, &limits, epoch, &tracker);
            continue;
        }
        next_id += 1;
        let conn = ConnState::new(epoch, hard.child_token());
        table.lock().insert(next_id, conn.clone());
        let entry = Entry {
            table: table.clone(),
            id: next_id,
        };
        tracker.spawn(connection(
            stream,
            peer,
            conn,
            shared.clone(),
            graceful.clone(),
            entry,
        ));
    }
    drop(listener);
    graceful.cancel();
    tracker.close();
    if tokio::time::timeout(limits.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            %local,
            open = table.len(),
            grace = ?limits.shutdown_grace,
            "requests still in flight after the shutdown grace period; dropping their connections"
        );
        hard.cancel();
        tracker.wait().await;
    }
    Ok(())
}

/// Every connection is handling a request: tell the newcomer to come back, cheaply and
/// bounded, or just close it when even those answers are at their bound.
fn answer_overflow(
    stream: TcpStream,
    overflow: &Arc<Semaphore>,
    limits: &Arc<HttpLimits>,
    epoch: Instant,
    tracker: &TaskTracker,
) {
    let Ok(permit) = overflow.clone().try_acquire_owned() else {
        return;
    };
    let limits = limits.clone();
    tracker.spawn(async move {
        let _permit = permit;
        let reply = Reply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server holds as many connections as it takes ({}), all busy; retry later",
                limits.max_connections
            ),
        )
        .retry_after(limits.retry_after_secs());
        let bound = limits.linger_timeout * 2;
        let mut io = Guarded::new(
            stream,
            ConnState::new(epoch, CancellationToken::new()),
            limits,
        );
        io.set_reply(&reply);
        let _ = tokio::time::timeout(bound, io.shutdown()).await;
    });
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    conn: Arc<ConnState>,
    shared: Arc<Shared>,
    graceful: CancellationToken,
    _entry: Entry,
) {
    let mut io = Guarded::new(stream, conn.clone(), shared.limits.clone());
    let first = tokio::select! {
        first = io.first_head() => first,
        () = conn.evict.cancelled() => return,
        () = graceful.cancelled() => return,
    };
    match first {
        Ok(HeadEvent::Ready) => {}
        Ok(HeadEvent::Refused) => {
            tokio::select! {
                _ = io.shutdown() => {}
                () = conn.evict.cancelled() => {}
            }
            return;
        }
        Ok(HeadEvent::Closed) | Err(_) => return,
    }
    // Boxed: a connection that never completes a head does not carry the (larger) state of
    // an HTTP connection in its task.
    Box::pin(serve_http(io, peer, conn, shared, graceful)).await;
}

async fn serve_http(
    io: Guarded,
    peer: SocketAddr,
    conn: Arc<ConnState>,
    shared: Arc<Shared>,
    graceful: CancellationToken,
) {
    let max_headers = shared.limits.max_headers;
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req| handle(req, conn.clone(), shared.clone(), peer))
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .max_headers(max_headers)
        // The guard times heads and idle waits itself (and can answer 408).
        .header_read_timeout(None);
    let http = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(http);
    let mut draining = false;
    loop {
        tokio::select! {
            done = http.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = conn.evict.cancelled() => return,
            () = graceful.cancelled(), if !draining => {
                draining = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
}
