//! The console's event browser: `/events?stream=S`, `?correlation=C` or `?id=E` (each with
//! an optional `db=N`, else every database), over the event stores of the console's
//! databases. A correlation id is the business transaction's (an order's), so its events
//! across streams and services — the order's saga included — are its causal chain; each row
//! links its correlation and causation.
//!
//! A stream is read by its index. Correlation and id are not indexed: they scan the store in
//! commit order, at most [`SCAN`] events per database, and the page says when it stopped.

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tributary::{Database, EventId, Position, RecordedEvent, StreamId, StreamVersion};

use super::{Shared, esc, failed, page, page_error, url_value};

/// Most events a page shows.
const SHOWN: usize = 500;
/// Most events a correlation or id search reads per database.
const SCAN: u64 = 200_000;
/// Events read per request of a scan.
const BATCH: usize = 1_000;

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    db: Option<usize>,
    stream: Option<String>,
    correlation: Option<String>,
    id: Option<String>,
}

/// What a search looks for; every event it shows satisfies all of it.
struct Wanted {
    stream: Option<StreamId>,
    correlation: Option<String>,
    id: Option<EventId>,
}

impl Wanted {
    fn matches(&self, e: &RecordedEvent) -> bool {
        self.stream.as_ref().is_none_or(|s| &e.stream == s)
            && self
                .correlation
                .as_deref()
                .is_none_or(|c| e.envelope.correlation_id.as_deref() == Some(c))
            && self.id.is_none_or(|id| e.envelope.id == id)
    }
}

/// A search's hits in one database, and whether it stopped before the end of the store.
struct Found {
    events: Vec<RecordedEvent>,
    truncated: bool,
}

async fn search(db: &dyn Database, wanted: &Wanted) -> tributary::Result<Found> {
    let store = db.event_store();
    if let Some(stream) = &wanted.stream {
        let events = store
            .read_stream(stream, StreamVersion::NONE.next(), SHOWN + 1)
            .await?;
        let truncated = events.len() > SHOWN;
        let events = events
            .into_iter()
            .take(SHOWN)
            .filter(|e| wanted.matches(e))
            .collect();
        return Ok(Found { events, truncated });
    }
    let (mut events, mut from, mut scanned) = (Vec::new(), Position::START, 0u64);
    loop {
        let batch = store.read_all(from, BATCH).await?;
        let Some(last) = batch.last() else {
            return Ok(Found {
                events,
                truncated: false,
            });
        };
        from = last.position.next();
        scanned += batch.len() as u64;
        events.extend(batch.into_iter().filter(|e| wanted.matches(e)));
        if events.len() >= SHOWN || scanned >= SCAN {
            events.truncate(SHOWN);
            return Ok(Found {
                events,
                truncated: true,
            });
        }
    }
}

fn wanted(q: &EventsQuery) -> Result<Wanted, String> {
    let blank = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let stream = blank(&q.stream)
        .map(StreamId::new)
        .transpose()
        .map_err(|e| e.to_string())?;
    let id = blank(&q.id)
        .map(|id| id.parse::<EventId>())
        .transpose()
        .map_err(|_| "id: not an event id (a UUID)".to_owned())?;
    let correlation = blank(&q.correlation);
    if stream.is_none() && id.is_none() && correlation.is_none() {
        return Err("give a stream, a correlation id or an event id".into());
    }
    Ok(Wanted {
        stream,
        correlation,
        id,
    })
}

/// The search form, filled with what was asked.
fn form(q: &EventsQuery) -> String {
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or_default());
    format!(
        "<form method=\"get\" action=\"/events\" id=\"event-search\">\
         stream <input name=\"stream\" value=\"{}\"> correlation id \
         <input name=\"correlation\" value=\"{}\"> event id <input name=\"id\" value=\"{}\"> \
         <button>Find</button></form>",
        value(&q.stream),
        value(&q.correlation),
        value(&q.id),
    )
}

pub(super) async fn browse(State(c): State<Shared>, Query(q): Query<EventsQuery>) -> Response {
    let mut body = format!("<p><a href=\"/\">overview</a></p>{}", form(&q));
    if q.stream.is_none() && q.correlation.is_none() && q.id.is_none() {
        return page("Events", false, &body).into_response();
    }
    let wanted = match wanted(&q) {
        Ok(w) => w,
        Err(e) => return page_error(StatusCode::BAD_REQUEST, &e),
    };
    let dbs: Vec<usize> = match q.db {
        Some(n) if n < c.services.len() => vec![n],
        Some(_) => return page_error(StatusCode::NOT_FOUND, "no such database"),
        None => (0..c.services.len()).collect(),
    };
    let mut rows = 0;
    for n in dbs {
        let service = &c.services[n];
        let found = match search(service.db.as_ref(), &wanted).await {
            Ok(f) => f,
            Err(e) => return failed(e),
        };
        if found.events.is_empty() && !found.truncated {
            continue;
        }
        let _ = write!(body, "<h2>{}</h2>", esc(&service.shown));
        if found.truncated {
            let _ = write!(
                body,
                "<p class=\"bad\">Stopped after {SHOWN} events or {SCAN} read: narrow the search.</p>"
            );
        }
        body.push_str(&table(&found.events));
        rows += found.events.len();
    }
    if rows == 0 {
        body.push_str("<p id=\"no-events\">No event matches.</p>");
    }
    page("Events", false, &body).into_response()
}

fn table(events: &[RecordedEvent]) -> String {
    let link = |key: &str, value: &Option<String>| match value {
        Some(v) => format!("<a href=\"/events?{key}={}\">{}</a>", url_value(v), esc(v)),
        None => String::new(),
    };
    let mut html = String::from(
        "<table><tr><th>position</th><th>stream</th><th>version</th><th>time</th><th>type</th>\
         <th>id</th><th>correlation</th><th>causation</th><th>data</th></tr>",
    );
    for e in events {
        let env = &e.envelope;
        let _ = write!(
            html,
            "<tr data-event=\"{id}\"><td>{}</td><td><a href=\"/events?stream={sq}\">{s}</a></td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{id}</td><td>{}</td><td>{}</td>\
             <td><pre>{}</pre></td></tr>",
            e.position.get(),
            e.version.get(),
            env.time.to_rfc3339(),
            esc(&env.event_type),
            link("correlation", &env.correlation_id),
            link("id", &env.causation_id),
            esc(env.data.as_str()),
            id = env.id,
            s = esc(e.stream.as_str()),
            sq = url_value(e.stream.as_str()),
        );
    }
    html.push_str("</table>");
    html
}
