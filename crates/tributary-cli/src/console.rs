//! `tributary console --db URL… [--broker URL] --listen ADDR`: a web console for any
//! deployment, rendered on the server (no script, no asset from anywhere else), served
//! through tributary-http.
//!
//! - `/` — every service database: outbox backlog, consumer groups with open dead letters;
//!   with `--broker`, every consumer group's lag per partition and which groups consume each
//!   topic (see [`groups`]). It refreshes itself every 2 s.
//! - `/events?stream=S|correlation=C|id=E` — the event browser (see [`events`]).
//! - `/dead-letters?db=N&group=G` — the group's open dead letters with payload, reason,
//!   attempts, parking, and Replay / Discard buttons. The page refreshes itself every 2 s.
//! - `POST /dead-letters/{db}/{id}/replay|discard` — a replay is a request that the group's
//!   running consumer performs (see `tributary::request_replay`); discard resolves at once.
//! - `/sagas`, `/sagas/{db}/{id}` — saga instances and their timelines, with Cancel and Retry
//!   (see [`sagas`]).
//! - `/metrics` — the console's own metrics.
//!
//! Listening beyond loopback needs `--token`: every request then carries it (a bearer header,
//! or the cookie `GET /login?token=…` sets). Every state-changing request must also come from
//! the console's own pages (its `Origin` is the console's), so another site cannot post to it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tributary::{Broker, Database, DeadLetterAdmin, DeadLetterId, GroupName, ReplayState};

mod events;
mod groups;
mod sagas;
mod service;

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// A service database (repeat for each service): sqlite://PATH or postgres://…
    #[arg(
        long = "db",
        env = "TRIBUTARY_DB",
        required = true,
        value_delimiter = ','
    )]
    pub dbs: Vec<String>,
    /// The broker (embedded://DIR or nats://host:port): the overview then shows every
    /// consumer group's lag and the topology. Read only.
    #[arg(long, env = "TRIBUTARY_BROKER")]
    pub broker: Option<String>,
    /// Where to listen; anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// The bearer token every request must carry.
    #[arg(long, env = "TRIBUTARY_CONSOLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// One service database the console shows.
pub struct Service {
    /// Its URL when the console opened it (replication slots are read on a connection of
    /// their own); `None` for a database handed over already open.
    url: Option<String>,
    shown: String,
    db: Arc<dyn Database>,
    /// The overview's line about the database's sagas, and when it was counted (see
    /// `sagas::overview_line`).
    saga_line: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl Service {
    /// A database already open in this process (`serve --console-listen`), shown as `shown`.
    pub fn open(shown: impl Into<String>, db: Arc<dyn Database>) -> Self {
        Self {
            url: None,
            shown: shown.into(),
            db,
            saga_line: Default::default(),
        }
    }
}

struct Console {
    services: Vec<Service>,
    broker: Option<Arc<dyn Broker>>,
    /// Who publishes which topic, read at most every 15 s (see `groups::section`).
    publishers: groups::Publishers,
    token: Option<String>,
}

type Shared = Arc<Console>;

pub async fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    check_token(args.listen, args.token.as_deref())?;
    let metrics = crate::metrics_http::install()?;
    let listener = tributary_http::bind(args.listen).await?;
    let mut services = Vec::new();
    for url in &args.dbs {
        services.push(Service {
            url: Some(url.clone()),
            shown: crate::ops::shown(url),
            db: crate::ops::open_existing(url).await?,
            saga_line: Default::default(),
        });
    }
    let broker = match &args.broker {
        Some(url) => Some(crate::ops::open_existing_broker(url).await?),
        None => None,
    };
    println!("listening on http://{}", listener.local_addr()?);
    let router = router(Arc::new(Console {
        services,
        broker,
        publishers: Default::default(),
        token: args.token,
    }))
    .merge(crate::metrics_http::router(metrics));
    serve_router(listener, router, crate::app::shutdown_signal()).await
}

/// Anything but loopback needs a token long enough not to be guessed.
pub fn check_token(listen: SocketAddr, token: Option<&str>) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() {
        anyhow::ensure!(
            token.is_some_and(|t| t.len() >= 16),
            "listening on {listen} (not loopback) needs a console token of at least 16 characters"
        );
    }
    Ok(())
}

/// The console over databases and a broker this process already has open, on `listener`,
/// until `shutdown` (`serve --console-listen`).
///
/// # Errors
/// When the server fails.
pub async fn serve_open(
    listener: tokio::net::TcpListener,
    services: Vec<Service>,
    broker: Arc<dyn Broker>,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = router(Arc::new(Console {
        services,
        broker: Some(broker),
        publishers: Default::default(),
        token,
    }));
    serve_router(listener, router, shutdown).await
}

async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = tributary_http::HttpLimits::default().with_max_body_bytes(16 << 10);
    tributary_http::serve(listener, router, shutdown, limits).await?;
    Ok(())
}

fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/dead-letters", get(dead_letters))
        .route("/events", get(events::browse))
        .route("/dead-letters/{db}/{id}/replay", post(replay))
        .route("/dead-letters/{db}/{id}/discard", post(discard))
        .route("/sagas", get(sagas::list))
        .route("/sagas/{db}/{id}", get(sagas::show))
        .route("/sagas/{db}/{id}/cancel", post(sagas::cancel))
        .route("/sagas/{db}/{id}/retry", post(sagas::retry))
        .route("/login", get(login))
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

const COOKIE: &str = "tributary_console";

/// The token (when one is set) on every request; the console's own origin on every change.
async fn guard(State(c): State<Shared>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let Some(token) = &c.token
        && request.uri().path() != "/login"
        && !carries_token(headers, token)
    {
        return page_error(
            StatusCode::UNAUTHORIZED,
            "a token is required: open /login?token=…",
        );
    }
    if request.method() != axum::http::Method::GET && !same_origin(headers) {
        return page_error(
            StatusCode::FORBIDDEN,
            "changes are accepted only from the console's own pages",
        );
    }
    next.run(request).await
}

fn carries_token(headers: &HeaderMap, token: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .next();
    [bearer, cookie]
        .into_iter()
        .flatten()
        .any(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Origin` names this console (the `Host` it was reached at), or — for clients that send
/// no `Origin` — `Sec-Fetch-Site` says same-origin.
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
    match (get(header::ORIGIN), get(header::HOST)) {
        (Some(origin), Some(host)) => origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o == host),
        (None, _) => get(header::HeaderName::from_static("sec-fetch-site")) == Some("same-origin"),
        _ => false,
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    token: String,
}

async fn login(State(c): State<Shared>, Query(q): Query<LoginQuery>) -> Response {
    match &c.token {
        Some(t) if constant_time_eq(q.token.as_bytes(), t.as_bytes()) => (
            [(
                header::SET_COOKIE,
                format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", q.token),
            )],
            Redirect::to("/"),
        )
            .into_response(),
        Some(_) => page_error(StatusCode::UNAUTHORIZED, "wrong token"),
        None => Redirect::to("/").into_response(),
    }
}

/// Text made safe for HTML, attribute values included.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string value made safe for a URL.
fn url_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;\
text-align:left;vertical-align:top}th{background:#f4f4f4}pre{margin:0;max-width:40em;\
white-space:pre-wrap;word-break:break-all}.bad{color:#a00}.ok{color:#070}form{display:inline}";

fn page(title: &str, refresh: bool, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} — Tributary</title>{r}\
         <style>{STYLE}</style></head><body><h1>{t}</h1>{body}</body></html>",
        t = esc(title),
        r = if refresh {
            "<meta http-equiv=\"refresh\" content=\"2\">"
        } else {
            ""
        },
    ))
}

fn page_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        page(
            "Error",
            false,
            &format!(
                "<p class=\"bad\" id=\"error\">{}</p><p><a href=\"/\">overview</a></p>",
                esc(message)
            ),
        ),
    )
        .into_response()
}

fn failed(e: impl std::fmt::Display) -> Response {
    page_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
}

async fn overview(State(c): State<Shared>) -> Response {
    let mut body =
        String::from("<p><a href=\"/sagas\">Sagas</a> · <a href=\"/events\">Events</a></p>");
    for (n, s) in c.services.iter().enumerate() {
        let summary = match s.db.dead_letters().summary().await {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        let _ = write!(body, "<h2>{}</h2>", esc(&s.shown));
        match service::activity(n, s.db.as_ref(), s.url.as_deref()).await {
            Ok(html) => body.push_str(&html),
            Err(e) => return failed(e),
        }
        match sagas::overview_line(&c, n).await {
            Ok(line) => body.push_str(&line),
            Err(e) => return failed(e),
        }
        if summary.is_empty() {
            body.push_str("<p class=\"ok\">No open dead letters.</p>");
            continue;
        }
        body.push_str(
            "<table><tr><th>consumer group</th><th>open dead letters</th><th>parked</th>\
             <th>keys held</th><th>oldest</th></tr>",
        );
        for g in &summary {
            let _ = write!(
                body,
                "<tr><td><a data-group=\"{g}\" href=\"/dead-letters?db={n}&amp;group={gq}\">{g}</a></td>\
                 <td class=\"bad\" data-open=\"{g}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                g.open,
                g.parked,
                g.keys,
                g.oldest_failed_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default(),
                g = esc(g.group.as_str()),
                gq = url_value(g.group.as_str()),
            );
        }
        body.push_str("</table>");
    }
    if let Some(broker) = &c.broker {
        match groups::section(broker.as_ref(), &c.publishers).await {
            Ok(section) => body.push_str(&section),
            Err(e) => return failed(e),
        }
    }
    page("Deployment", true, &body).into_response()
}

#[derive(Deserialize)]
struct GroupQuery {
    db: usize,
    group: String,
}

/// Most letters a page shows.
const PAGE: usize = 200;

async fn dead_letters(State(c): State<Shared>, Query(q): Query<GroupQuery>) -> Response {
    let Some(s) = c.services.get(q.db) else {
        return page_error(StatusCode::NOT_FOUND, "no such database");
    };
    let group = match GroupName::new(q.group) {
        Ok(g) => g,
        Err(e) => return page_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let letters = match s.db.dead_letters().list(Some(&group), PAGE).await {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    let mut body = format!(
        "<p><a href=\"/\">overview</a> · {} · group <b>{}</b></p>",
        esc(&s.shown),
        esc(group.as_str())
    );
    if letters.is_empty() {
        body.push_str("<p class=\"ok\" id=\"none\">No open dead letters.</p>");
    } else {
        body.push_str(
            "<table><tr><th>id</th><th>where</th><th>key</th><th>type</th><th>reason</th>\
             <th>attempts</th><th>payload</th><th>replay</th><th></th></tr>",
        );
    }
    for l in &letters {
        let request = tributary::replay_request(&s.db, l.id).await.ok().flatten();
        let state = match request.map(|r| r.state) {
            None => String::new(),
            Some(ReplayState::Requested) => "requested".into(),
            Some(ReplayState::Replayed { .. }) => "replayed".into(),
            Some(ReplayState::Failed { reason, .. }) => format!("failed again: {reason}"),
        };
        let parked = l
            .parked_behind
            .map(|p| format!("<br>parked behind {p}"))
            .unwrap_or_default();
        let _ = write!(
            body,
            "<tr data-dead-letter=\"{id}\"><td>{id}</td><td>{topic}/{partition}@{offset}</td>\
             <td>{key}</td><td>{kind}</td><td>{reason}{parked}</td><td>{attempts}</td>\
             <td><pre>{payload}</pre></td><td data-replay-state=\"{id}\">{state}</td><td>\
             <form method=\"post\" action=\"/dead-letters/{db}/{id}/replay\">\
             <button data-replay=\"{id}\">Replay</button></form> \
             <form method=\"post\" action=\"/dead-letters/{db}/{id}/discard\">\
             <button data-discard=\"{id}\">Discard</button></form></td></tr>",
            id = l.id,
            topic = esc(l.topic.as_str()),
            partition = l.partition.get(),
            offset = l.offset.get(),
            key = esc(&l.key),
            kind = esc(l.event_type.as_deref().unwrap_or("")),
            reason = esc(&l.reason),
            attempts = l.attempts,
            payload = esc(&String::from_utf8_lossy(&l.payload)),
            state = esc(&state),
            db = q.db,
        );
    }
    if !letters.is_empty() {
        body.push_str("</table>");
    }
    page("Dead letters", true, &body).into_response()
}

fn back_to(db: usize, group: &str) -> Redirect {
    Redirect::to(&format!("/dead-letters?db={db}&group={}", url_value(group)))
}

async fn replay(State(c): State<Shared>, Path((db, id)): Path<(usize, u64)>) -> Response {
    let Some(s) = c.services.get(db) else {
        return page_error(StatusCode::NOT_FOUND, "no such database");
    };
    match tributary::request_replay(&s.db, DeadLetterId::new(id)).await {
        Ok(request) => back_to(db, &request.group).into_response(),
        Err(e) if !e.is_retryable() => page_error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => failed(e),
    }
}

async fn discard(State(c): State<Shared>, Path((db, id)): Path<(usize, u64)>) -> Response {
    let Some(s) = c.services.get(db) else {
        return page_error(StatusCode::NOT_FOUND, "no such database");
    };
    let id = DeadLetterId::new(id);
    let group = match s.db.dead_letters().get(id).await {
        Ok(Some(l)) => l.group,
        Ok(None) => return page_error(StatusCode::NOT_FOUND, "no such dead letter"),
        Err(e) => return failed(e),
    };
    match DeadLetterAdmin::new(s.db.clone()).skip(id).await {
        Ok(()) => back_to(db, group.as_str()).into_response(),
        Err(e) if !e.is_retryable() => page_error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_database_cannot_become_markup() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(url_value("a b&c"), "a%20b%26c");
    }

    #[test]
    fn changes_need_the_consoles_own_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:7070".parse().unwrap());
        assert!(!same_origin(&h), "no Origin and no Sec-Fetch-Site");
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:7070".parse().unwrap());
        assert!(same_origin(&h));
    }

    #[test]
    fn the_token_is_read_from_a_bearer_header_or_the_cookie() {
        let token = "0123456789abcdef";
        let mut h = HeaderMap::new();
        assert!(!carries_token(&h, token));
        h.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={token}").parse().unwrap(),
        );
        assert!(carries_token(&h, token));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(!carries_token(&h, token));
    }
}
