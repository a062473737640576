//! [`Guarded`]: the socket as hyper sees it, with the checks hyper does not make.
//!
//! The guard sits between the TCP stream and hyper's HTTP/1 connection and
//!
//! - collects each request head itself and hands it to hyper only once it is complete and
//!   acceptable ([`crate::head`]); a refused head gets a JSON answer written by the guard;
//! - times the head (`header_read_timeout`, from the accept or the head's first byte) and the
//!   wait for the next request on a kept-alive connection (`idle_timeout`): hyper's own header
//!   timer cannot tell the two apart and cannot answer `408`;
//! - bounds every blocked write (`write_timeout`), so a client that never reads cannot hold a
//!   connection;
//! - closes gracefully: on shutdown it writes any pending answer, sends FIN, then, when the
//!   client may still be sending (a refused head, a body not read to its end), reads and
//!   discards what it sends (bounded in time and bytes) before the socket is dropped. Dropping a socket with unread input makes the kernel send a reset, which
//!   destroys the answer before a client that is still sending (a `413` to a large upload)
//!   has read it.
//!
//! Request bodies are counted (`Content-Length`) so the guard knows where the next head
//! starts; a chunked body, an upgrade or `CONNECT` makes the rest of the connection opaque
//! and the service closes it after that response.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::conn::{ConnPhase, ConnState};
use crate::head::{Framing, HeadLimits, HeadScanner, Scan};
use crate::limits::HttpLimits;
use crate::reply::Reply;

/// How much is read from the socket at once while collecting a head or lingering.
const CHUNK: usize = 2048;

/// What collecting a head came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeadEvent {
    /// A complete, acceptable head is ready for hyper.
    Ready,
    /// Refused (malformed, too large, timed out part-way): the answer goes out on shutdown.
    Refused,
    /// The client closed, or stayed silent past its timeout: close without an answer.
    Closed,
}

enum Phase {
    /// Collecting a head.
    Head,
    /// Handing `left` bytes of an accepted head to hyper, then the body.
    Release { left: usize, then: Framing },
    /// Passing `left` bytes of a body through.
    Body(u64),
    /// No more heads are checked on this connection.
    Opaque,
    /// Refused or timed out: hyper reads end-of-file once no response is in progress.
    Closing,
}

enum Shutdown {
    Reply,
    Flush,
    Fin,
    Linger { read: u64 },
    Done,
}

pub(crate) struct Guarded {
    io: TcpStream,
    conn: Arc<ConnState>,
    limits: Arc<HttpLimits>,
    head_limits: HeadLimits,
    /// Bytes read from the socket and not yet handed to hyper.
    buf: BytesMut,
    scanner: HeadScanner,
    phase: Phase,
    accepted: Instant,
    /// A head was handed to hyper on this connection.
    served: bool,
    /// When the first byte of the head being collected arrived.
    head_started: Option<Instant>,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    write_blocked: Option<Instant>,
    /// The answer to write before closing.
    reply: Option<Bytes>,
    /// A head was refused: the client may still be sending the rest of its request.
    refused: bool,
    shutdown: Shutdown,
}

impl Guarded {
    pub fn new(io: TcpStream, conn: Arc<ConnState>, limits: Arc<HttpLimits>) -> Self {
        let head_limits = HeadLimits {
            max_head_bytes: limits.max_head_bytes,
            max_uri_bytes: limits.max_uri_bytes,
            max_headers: limits.max_headers,
        };
        let now = tokio::time::Instant::now();
        Self {
            io,
            conn,
            limits,
            head_limits,
            buf: BytesMut::new(),
            scanner: HeadScanner::default(),
            phase: Phase::Head,
            accepted: Instant::now(),
            served: false,
            head_started: None,
            read_timer: Box::pin(tokio::time::sleep_until(now)),
            write_timer: Box::pin(tokio::time::sleep_until(now)),
            write_blocked: None,
            reply: None,
            refused: false,
            shutdown: Shutdown::Reply,
        }
    }

    /// Collects the connection's first head before hyper is involved: a connection that never
    /// sends a complete head costs no HTTP machinery.
    pub async fn first_head(&mut self) -> io::Result<HeadEvent> {
        std::future::poll_fn(|cx| self.poll_head(cx)).await
    }

    /// An answer to write when the connection is shut down (before any HTTP was spoken).
    pub fn set_reply(&mut self, reply: &Reply) {
        self.refuse(reply);
    }

    /// When collecting the current head must end.
    fn read_deadline(&self) -> Option<Instant> {
        let l = &self.limits;
        if let Some(t) = self.head_started {
            return Some(t + l.header_read_timeout);
        }
        if !self.served {
            return Some(self.accepted + l.header_read_timeout);
        }
        // Between requests. While a response is still being sent the clock has not started.
        (self.conn.phase() == ConnPhase::Waiting).then(|| self.conn.since() + l.idle_timeout)
    }

    fn refuse(&mut self, reply: &Reply) {
        self.reply = Some(reply.wire());
        self.refused = true;
        self.phase = Phase::Closing;
    }

    /// Whether the client may still be sending when the server closes: a refused head, a
    /// body not read to its end, bytes not handed to hyper, or a stream not followed. Only
    /// then is lingering worth its time; a connection closed between requests is not kept.
    fn may_have_unread_input(&self) -> bool {
        self.refused
            || !self.buf.is_empty()
            || matches!(
                self.phase,
                Phase::Body(_) | Phase::Opaque | Phase::Release { .. }
            )
    }

    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<HeadEvent>> {
        loop {
            if !self.buf.is_empty() {
                if self.head_started.is_none() {
                    self.head_started = Some(Instant::now());
                }
                match self.scanner.scan(&self.buf, &self.head_limits) {
                    Scan::Complete(head) => {
                        self.scanner.reset();
                        self.head_started = None;
                        self.served = true;
                        self.phase = Phase::Release {
                            left: head.len,
                            then: head.framing,
                        };
                        return Poll::Ready(Ok(HeadEvent::Ready));
                    }
                    Scan::Reject(reply) => {
                        self.refuse(&reply);
                        return Poll::Ready(Ok(HeadEvent::Refused));
                    }
                    Scan::Partial => {}
                }
            }
            let deadline = self.read_deadline();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                if self.head_started.is_some() {
                    let reply = Reply::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "the request head was not complete within {:?}",
                            self.limits.header_read_timeout
                        ),
                    );
                    self.refuse(&reply);
                    return Poll::Ready(Ok(HeadEvent::Refused));
                }
                self.phase = Phase::Closing;
                return Poll::Ready(Ok(HeadEvent::Closed));
            }
            let mut chunk = [0u8; CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    self.phase = Phase::Closing;
                    return Poll::Ready(Ok(HeadEvent::Closed));
                }
                Poll::Ready(Ok(())) => self.buf.extend_from_slice(read.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if let Some(d) = deadline {
                        self.read_timer.as_mut().reset(d.into());
                        if self.read_timer.as_mut().poll(cx).is_ready() {
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// After a head and its body, the next head starts: its clock runs from now if bytes of
    /// it already arrived.
    fn next_head(&mut self) {
        self.phase = Phase::Head;
        self.head_started = (!self.buf.is_empty()).then(Instant::now);
    }

    fn copy_out(&mut self, out: &mut ReadBuf<'_>, max: usize) -> usize {
        let n = max.min(self.buf.len()).min(out.remaining());
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
        n
    }

    /// Runs a blocked write against `write_timeout`.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.write_blocked = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let since = *self.write_blocked.get_or_insert_with(Instant::now);
                let deadline = since + self.limits.write_timeout;
                self.write_timer.as_mut().reset(deadline.into());
                if self.write_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not read the response within the write timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }

    fn poll_linger(&mut self, cx: &mut Context<'_>, read: &mut u64) -> Poll<()> {
        loop {
            if *read >= self.limits.linger_bytes {
                return Poll::Ready(());
            }
            let mut chunk = [0u8; CHUNK];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    *read += buf.filled().len() as u64;
                }
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => {
                    return if self.read_timer.as_mut().poll(cx).is_ready() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match this.phase {
                Phase::Opaque => {
                    if !this.buf.is_empty() {
                        this.copy_out(out, usize::MAX);
                        return Poll::Ready(Ok(()));
                    }
                    return Pin::new(&mut this.io).poll_read(cx, out);
                }
                Phase::Release { left, then } => {
                    let n = this.copy_out(out, left);
                    if n == left {
                        match then {
                            Framing::Length(0) => this.next_head(),
                            Framing::Length(len) => this.phase = Phase::Body(len),
                            Framing::Opaque => this.phase = Phase::Opaque,
                        }
                    } else {
                        this.phase = Phase::Release {
                            left: left - n,
                            then,
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
                Phase::Body(left) => {
                    let want = usize::try_from(left).unwrap_or(usize::MAX);
                    let n = if this.buf.is_empty() {
                        let mut chunk = [0u8; 8192];
                        let max = want.min(chunk.len()).min(out.remaining());
                        let mut read = ReadBuf::new(&mut chunk[..max]);
                        ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
                        out.put_slice(read.filled());
                        read.filled().len()
                    } else {
                        this.copy_out(out, want)
                    };
                    // End of file part-way through a body: hyper sees it and fails the body.
                    let left = left - n as u64;
                    if left == 0 {
                        this.next_head();
                    } else {
                        this.phase = Phase::Body(left);
                    }
                    return Poll::Ready(Ok(()));
                }
                Phase::Head => match ready!(this.poll_head(cx))? {
                    HeadEvent::Ready | HeadEvent::Refused | HeadEvent::Closed => {}
                },
                Phase::Closing => {
                    // hyper takes end-of-file as the client leaving, and shuts the
                    // connection down after finishing what it is writing; wait for a
                    // response in progress to end first so that it is not cut.
                    if this.conn.phase() == ConnPhase::Waiting {
                        return Poll::Ready(Ok(()));
                    }
                    this.conn.register(cx.waker());
                    if this.conn.phase() == ConnPhase::Waiting {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.timed(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.timed(cx, polled)
    }

    /// Writes the pending answer, sends FIN and lingers: see the module docs. Never fails:
    /// a client that is gone has nothing left to be told.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.shutdown {
                Shutdown::Reply => {
                    if let Some(mut reply) = this.reply.take() {
                        while !reply.is_empty() {
                            let polled = Pin::new(&mut this.io).poll_write(cx, &reply);
                            match this.timed(cx, polled) {
                                Poll::Ready(Ok(n)) if n > 0 => reply.advance(n),
                                Poll::Ready(_) => {
                                    this.shutdown = Shutdown::Done;
                                    break;
                                }
                                Poll::Pending => {
                                    this.reply = Some(reply);
                                    return Poll::Pending;
                                }
                            }
                        }
                    }
                    if let Shutdown::Reply = this.shutdown {
                        this.shutdown = Shutdown::Flush;
                    }
                }
                Shutdown::Flush => {
                    let polled = Pin::new(&mut this.io).poll_flush(cx);
                    this.shutdown = match ready!(this.timed(cx, polled)) {
                        Ok(()) => Shutdown::Fin,
                        Err(_) => Shutdown::Done,
                    };
                }
                Shutdown::Fin => {
                    let polled = Pin::new(&mut this.io).poll_shutdown(cx);
                    this.shutdown = match ready!(this.timed(cx, polled)) {
                        Ok(()) if this.may_have_unread_input() => {
                            let deadline = Instant::now() + this.limits.linger_timeout;
                            this.read_timer.as_mut().reset(deadline.into());
                            this.buf = BytesMut::new();
                            Shutdown::Linger { read: 0 }
                        }
                        Ok(()) => Shutdown::Done,
                        Err(_) => Shutdown::Done,
                    };
                }
                Shutdown::Linger { mut read } => {
                    let polled = this.poll_linger(cx, &mut read);
                    this.shutdown = Shutdown::Linger { read };
                    ready!(polled);
                    this.shutdown = Shutdown::Done;
                }
                Shutdown::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}
