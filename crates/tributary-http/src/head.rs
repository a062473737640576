//! Checking a request head before hyper sees it.
//!
//! hyper answers a malformed or oversized head itself, with an empty body (`400`, `414`,
//! `431`), and offers no way to change that answer. So the connection guard collects each head
//! and runs it through the same parser hyper uses (`httparse`, default settings) and the same
//! framing rules (RFC 9112 §6: `Transfer-Encoding` must end in `chunked` and wins over
//! `Content-Length`; differing or malformed lengths are an error; HTTP/1.0 has no
//! `Transfer-Encoding`). A head refused here gets a JSON answer; a head accepted here is one
//! hyper accepts too, so hyper's own empty answers are never sent. The check is never stricter
//! than hyper: the worst a disagreement could do is let hyper answer with its empty body.

use http::StatusCode;

use crate::reply::Reply;

/// The limits a head is checked against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_headers: usize,
}

/// How the body after a head is delimited, as far as the guard needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `Content-Length` (0 without a body): the next head starts after that many bytes.
    Length(u64),
    /// Chunked, an upgrade or `CONNECT`: the guard stops reading heads on this connection,
    /// and the service closes it after the response.
    Opaque,
}

/// A complete, acceptable head of `len` bytes (leading empty lines included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub len: usize,
    pub framing: Framing,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// More bytes are needed.
    Partial,
    Complete(Head),
    /// Refused: this answer, then close.
    Reject(Reply),
}

/// Looks for the end of a head as bytes arrive, looking at each byte once (a client sending
/// one byte at a time must not cost quadratic time).
#[derive(Debug, Default)]
pub(crate) struct HeadScanner {
    /// Bytes already looked at.
    scanned: usize,
    stage: Stage,
    /// Where the request line starts (after empty lines).
    start: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Empty lines before the request line.
    #[default]
    Leading,
    /// The method token.
    Method,
    /// The rest of the request line.
    Line,
    /// Header lines; the state tells how much of an empty line was seen.
    Headers(EmptyLine),
    /// The end of the head is at this index.
    Done(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EmptyLine {
    /// Inside a line.
    No,
    /// Just after a `\n`.
    LineStart,
    /// After `\n\r`.
    Cr,
}

/// Characters of a method token (RFC 9110 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn bad_request(message: impl Into<String>) -> Reply {
    Reply::new(StatusCode::BAD_REQUEST, message).closing()
}

fn uri_too_long(limits: &HeadLimits) -> Reply {
    Reply::new(
        StatusCode::URI_TOO_LONG,
        format!(
            "the request target is longer than {} bytes",
            limits.max_uri_bytes
        ),
    )
    .closing()
}

fn head_too_large(limits: &HeadLimits) -> Reply {
    Reply::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        format!(
            "the request head (request line and headers) is larger than {} bytes",
            limits.max_head_bytes
        ),
    )
    .closing()
}

impl HeadScanner {
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Checks the head at the start of `buf`, which holds everything received of it so far
    /// (and maybe bytes after it).
    pub fn scan(&mut self, buf: &[u8], limits: &HeadLimits) -> Scan {
        let mut i = self.scanned;
        while i < buf.len() {
            let b = buf[i];
            match self.stage {
                Stage::Leading => {
                    if b != b'\r' && b != b'\n' {
                        self.start = i;
                        self.stage = Stage::Method;
                        continue;
                    }
                }
                Stage::Method => {
                    // Garbage (a TLS hello, a binary protocol) is refused at once instead of
                    // waiting for a line end that may never come.
                    if b == b' ' {
                        self.stage = Stage::Line;
                    } else if !is_tchar(b) {
                        return Scan::Reject(bad_request(
                            "malformed request line: the method is not a token",
                        ));
                    }
                }
                Stage::Line => {
                    if b == b'\n' {
                        // A complete request line: check it once, so that a garbage line is
                        // answered without waiting for the rest of the head.
                        if let Err(reply) = check_request_line(&buf[self.start..=i], limits) {
                            return Scan::Reject(reply);
                        }
                        self.stage = Stage::Headers(EmptyLine::LineStart);
                    }
                }
                Stage::Headers(state) => {
                    self.stage = match (state, b) {
                        (EmptyLine::LineStart | EmptyLine::Cr, b'\n') => Stage::Done(i + 1),
                        (EmptyLine::LineStart, b'\r') => Stage::Headers(EmptyLine::Cr),
                        (_, b'\n') => Stage::Headers(EmptyLine::LineStart),
                        _ => Stage::Headers(EmptyLine::No),
                    };
                }
                Stage::Done(_) => break,
            }
            i += 1;
        }
        self.scanned = i;
        match self.stage {
            Stage::Done(end) => match parse_head(&buf[..end], limits) {
                Ok(head) => Scan::Complete(head),
                Err(reply) => Scan::Reject(reply),
            },
            Stage::Method | Stage::Line if buf.len() - self.start > limits.max_uri_bytes + 64 => {
                Scan::Reject(uri_too_long(limits))
            }
            _ if buf.len() > limits.max_head_bytes => {
                // Garbage in the headers is a 400 even when there is a lot of it.
                match parse_head(buf, limits) {
                    Err(reply) if reply.status == StatusCode::BAD_REQUEST => Scan::Reject(reply),
                    _ => Scan::Reject(head_too_large(limits)),
                }
            }
            _ => Scan::Partial,
        }
    }
}

/// Parses a request line alone (with an empty header section appended), for early refusal.
fn check_request_line(line: &[u8], limits: &HeadLimits) -> Result<(), Reply> {
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    let mut probe = Vec::with_capacity(line.len() + 2);
    probe.extend_from_slice(line);
    probe.extend_from_slice(if line.ends_with(b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    });
    match req.parse(&probe) {
        Ok(_) => {
            if req.path.is_some_and(|p| p.len() > limits.max_uri_bytes) {
                Err(uri_too_long(limits))
            } else {
                Ok(())
            }
        }
        Err(e) => Err(bad_request(format!("malformed request line: {e}"))),
    }
}

/// Parses a complete head (or, at the size limit, as much as there is) with hyper's rules.
pub(crate) fn parse_head(bytes: &[u8], limits: &HeadLimits) -> Result<Head, Reply> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(head_too_large(limits)),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reply::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "the request has more than {} header fields",
                    limits.max_headers
                ),
            )
            .closing());
        }
        Err(e) => return Err(bad_request(format!("malformed request head: {e}"))),
    };
    if len > limits.max_head_bytes {
        return Err(head_too_large(limits));
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(bad_request("malformed request line"));
    };
    if path.len() > limits.max_uri_bytes {
        return Err(uri_too_long(limits));
    }
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| bad_request("malformed request line: invalid method"))?;
    if http::Uri::try_from(path).is_err() {
        return Err(bad_request(format!(
            "malformed request target {:?}",
            truncate(path)
        )));
    }
    let http11 = version == 1;
    let mut upgrade = method == http::Method::CONNECT;
    let (mut te, mut chunked) = (false, false);
    let mut content_length: Option<u64> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Err(bad_request(
                    "HTTP/1.0 requests cannot use Transfer-Encoding",
                ));
            }
            te = true;
            content_length = None;
            chunked = std::str::from_utf8(h.value).is_ok_and(|v| {
                v.rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
            });
        } else if h.name.eq_ignore_ascii_case("content-length") {
            if te {
                continue;
            }
            let n = digits(h.value).ok_or_else(|| {
                bad_request(format!(
                    "invalid Content-Length {:?}",
                    truncate(&String::from_utf8_lossy(h.value))
                ))
            })?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(bad_request("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = http11;
        }
    }
    if te && !chunked {
        return Err(bad_request(
            "Transfer-Encoding must end with chunked in a request",
        ));
    }
    let framing = if chunked || upgrade {
        Framing::Opaque
    } else {
        Framing::Length(content_length.unwrap_or(0))
    };
    Ok(Head { len, framing })
}

/// A decimal length without sign or spaces, as hyper reads `Content-Length`.
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 1024,
        max_uri_bytes: 256,
        max_headers: 8,
    };

    fn scan_all(bytes: &[u8]) -> Scan {
        let mut s = HeadScanner::default();
        s.scan(bytes, &LIMITS)
    }

    fn scan_bytewise(bytes: &[u8]) -> Scan {
        let mut s = HeadScanner::default();
        for n in 1..bytes.len() {
            match s.scan(&bytes[..n], &LIMITS) {
                Scan::Partial => {}
                other => return other,
            }
        }
        s.scan(bytes, &LIMITS)
    }

    fn status(scan: Scan) -> u16 {
        match scan {
            Scan::Reject(r) => r.status.as_u16(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_complete_head_is_found_however_the_bytes_arrive() {
        let req = b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let want = Scan::Complete(Head {
            len: req.len() - 5,
            framing: Framing::Length(5),
        });
        assert_eq!(scan_all(req), want);
        assert_eq!(scan_bytewise(req), want);
        let bare = b"\r\nGET / HTTP/1.0\nHost: x\n\n";
        assert_eq!(
            scan_bytewise(bare),
            Scan::Complete(Head {
                len: bare.len(),
                framing: Framing::Length(0)
            })
        );
    }

    #[test]
    fn chunked_bodies_upgrades_and_connect_make_the_connection_opaque() {
        for req in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
        ] {
            match scan_all(req) {
                Scan::Complete(h) => assert_eq!(h.framing, Framing::Opaque, "{req:?}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn malformed_heads_are_bad_requests() {
        for req in [
            &b"GARBAGE\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                status(scan_bytewise(req)),
                400,
                "{:?}",
                String::from_utf8_lossy(req)
            );
        }
        // A garbage request line is answered before the head ends.
        assert_eq!(status(scan_all(b"GARBAGE\r\nHost: x\r\n")), 400);
    }

    #[test]
    fn long_targets_and_large_heads_are_refused_with_their_status() {
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
        assert_eq!(status(scan_all(long_target.as_bytes())), 414);
        // Without a line end yet: refused once the line cannot hold a valid target.
        let unfinished = format!("GET /{}", "a".repeat(400));
        assert_eq!(status(scan_all(unfinished.as_bytes())), 414);
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(1100));
        assert_eq!(status(scan_all(big.as_bytes())), 431);
        assert_eq!(status(scan_bytewise(big.as_bytes())), 431);
        let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(status(scan_all(many.as_bytes())), 431);
    }

    #[test]
    fn what_is_accepted_here_hyper_accepts_as_ordinary_requests() {
        // Extension methods, absolute targets, lengths with leading zeros, HTTP/1.0.
        for req in [
            &b"PURGE /cache HTTP/1.1\r\n\r\n"[..],
            b"GET http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: 007\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(scan_bytewise(req), Scan::Complete(_)),
                "{:?}",
                String::from_utf8_lossy(req)
            );
        }
    }
}
