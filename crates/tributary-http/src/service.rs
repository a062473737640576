//! The per-request part of serving: the body is read in full (bounded in size and time)
//! before the router sees the request, then the request waits for no one: beyond
//! `max_in_flight` it is shed with `503`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::Semaphore;
use tower_service::Service;
use tracing::Instrument;

use crate::conn::{ConnPhase, ConnState};
use crate::limits::HttpLimits;
use crate::reply::Reply;

/// What every connection of one server shares.
pub(crate) struct Shared {
    pub limits: Arc<HttpLimits>,
    pub in_flight: Arc<Semaphore>,
    pub router: Router,
}

/// Whether the guard stops checking heads after this request (see [`crate::head::Framing`]);
/// the connection then closes after the response.
fn is_opaque<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        || req.headers().contains_key(header::UPGRADE)
        || req.headers().contains_key(header::TRANSFER_ENCODING)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub(crate) async fn handle<B>(
    req: Request<B>,
    conn: Arc<ConnState>,
    shared: Arc<Shared>,
    peer: SocketAddr,
) -> Result<Response<TrackedBody>, Infallible>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    conn.set(ConnPhase::Body);
    let response = respond(req, &conn, &shared, peer).await;
    Ok(response.map(|body| TrackedBody {
        inner: body,
        conn: Some(conn),
    }))
}

async fn respond<B>(
    req: Request<B>,
    conn: &ConnState,
    shared: &Shared,
    peer: SocketAddr,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = &shared.limits;
    let opaque = is_opaque(&req);
    let (mut parts, body) = req.into_parts();
    let too_large = || {
        Reply::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {} bytes", limits.max_body_bytes),
        )
        .closing()
        .response()
    };
    if declared_length(&parts.headers).is_some_and(|n| n > limits.max_body_bytes as u64) {
        // Not read: the guard discards it while lingering, so the client gets to read this.
        return too_large();
    }
    let collect = Limited::new(body, limits.max_body_bytes).collect();
    let bytes = match tokio::time::timeout(limits.body_read_timeout, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => {
            return Reply::new(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            )
            .closing()
            .response();
        }
        Err(_) => {
            return Reply::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body was not complete within {:?}",
                    limits.body_read_timeout
                ),
            )
            .closing()
            .response();
        }
    };
    conn.set(ConnPhase::Handling);
    let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
        return Reply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is handling as many requests as it takes ({}); retry later",
                limits.max_in_flight
            ),
        )
        .retry_after(limits.retry_after_secs())
        .response();
    };
    parts.extensions.insert(ConnectInfo(peer));
    let span = crate::trace::server_span(&parts);
    let request = Request::from_parts(parts, Body::from(bytes));
    let mut router = shared.router.clone();
    let mut response = match router.call(request).instrument(span.clone()).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    span.record("http.response.status_code", response.status().as_u16());
    drop(permit);
    if opaque {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A response body that tells the connection when it was sent (or dropped), so that the
/// idle clock starts and the connection becomes sheddable again.
pub(crate) struct TrackedBody {
    inner: Body,
    conn: Option<Arc<ConnState>>,
}

impl TrackedBody {
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.set(ConnPhase::Waiting);
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() {
            this.finish();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
