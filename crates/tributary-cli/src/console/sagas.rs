//! The console's saga pages, for any database that holds saga instances (an orchestrator's):
//!
//! - `/sagas[?db=N][&state=S][&type=T]` — per database, how many sagas of each type are in each
//!   state, and the sagas that need a look: unfinished or `compensation_failed` (or those of
//!   the state asked for), most recently moved first.
//! - `/sagas/{db}/{id}` — one saga: state, step, what it waits for, its data, its timeline, and
//!   Cancel / Retry buttons.
//! - `POST /sagas/{db}/{id}/cancel|retry` — a request that the running orchestrator of the
//!   saga's type performs (it alone has the definition); the saga page shows its outcome.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tributary::saga::{
    RequestState, SagaAdmin, SagaFilter, SagaId, SagaState, SagaSummary, UNREADABLE, UnreadableSaga,
};

use super::{Shared, esc, failed, page, page_error, url_value};

/// Most sagas a list shows.
const LIST: usize = 200;

/// Whether a saga needs an operator's eye by default: it has not ended, or it ended stuck.
fn needs_a_look(state: SagaState) -> bool {
    !state.is_final() || state == SagaState::CompensationFailed
}

/// How long the overview reuses a database's saga counts. Counting reads every saga document
/// (sagas have no index by state yet) and the page refreshes every 2 s, so without this each
/// open tab would read them all every 2 s; the counts lag by at most this much.
const COUNTS_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// One line of the overview about a database's sagas, or nothing when it holds none; counted
/// at most once per [`COUNTS_FOR`] (the lock also keeps concurrent refreshes from counting
/// together).
pub(super) async fn overview_line(c: &Shared, db: usize) -> tributary::Result<String> {
    let service = &c.services[db];
    let mut cached = service.saga_line.lock().await;
    if let Some((at, line)) = cached.as_ref()
        && at.elapsed() < COUNTS_FOR
    {
        return Ok(line.clone());
    }
    let line = count_line(service.db.clone(), db).await?;
    *cached = Some((std::time::Instant::now(), line.clone()));
    Ok(line)
}

async fn count_line(
    database: std::sync::Arc<dyn tributary::Database>,
    db: usize,
) -> tributary::Result<String> {
    let counts = SagaAdmin::new(database).counts().await?;
    if counts.is_empty() {
        return Ok(String::new());
    }
    let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
    for ((_, state), n) in &counts {
        *by_state.entry(state).or_default() += n;
    }
    let parts: Vec<String> = by_state
        .iter()
        .map(|(state, n)| {
            let class = if [SagaState::CompensationFailed.as_str(), UNREADABLE].contains(state) {
                " class=\"bad\""
            } else {
                ""
            };
            format!("<span{class} data-sagas=\"{state}\">{n} {state}</span>")
        })
        .collect();
    Ok(format!(
        "<p>Sagas: {} (counted at {}) · <a href=\"/sagas?db={db}\">inspect</a></p>",
        parts.join(", "),
        chrono::Utc::now().format("%H:%M:%S UTC")
    ))
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    db: Option<usize>,
    state: Option<String>,
    #[serde(rename = "type")]
    saga_type: Option<String>,
}

pub(super) async fn list(State(c): State<Shared>, Query(q): Query<ListQuery>) -> Response {
    let state = match q.state.as_deref().filter(|s| !s.is_empty()).map(str::parse) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return page_error(StatusCode::BAD_REQUEST, &format!("{e}")),
    };
    let dbs: Vec<usize> = match q.db {
        Some(n) if n < c.services.len() => vec![n],
        Some(_) => return page_error(StatusCode::NOT_FOUND, "no such database"),
        None => (0..c.services.len()).collect(),
    };
    let mut body = String::from("<p><a href=\"/\">overview</a></p>");
    for n in dbs {
        let s = &c.services[n];
        let admin = SagaAdmin::new(s.db.clone());
        let mut filter = SagaFilter::default();
        if let Some(t) = q.saga_type.as_deref().filter(|t| !t.is_empty()) {
            filter = filter.with_type(t);
        }
        if let Some(state) = state {
            filter = filter.with_state(state);
        }
        let listing = match admin.scan(&filter).await {
            Ok(l) => l,
            Err(e) => return failed(e),
        };
        let mut sagas = listing.sagas;
        let _ = write!(body, "<h2>{}</h2>", esc(&s.shown));
        unreadable_table(&mut body, &listing.unreadable);
        if sagas.is_empty() && state.is_none() && q.saga_type.is_none() {
            body.push_str("<p>No sagas.</p>");
            continue;
        }
        counts_table(&mut body, n, &sagas);
        if state.is_none() {
            sagas.retain(|s| needs_a_look(s.state));
        }
        sagas.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
        list_table(&mut body, n, &sagas, state.is_none());
    }
    page("Sagas", true, &body).into_response()
}

/// Saga documents no saga definition can read: shown, not skipped, so that none disappears.
fn unreadable_table(body: &mut String, unreadable: &[UnreadableSaga]) {
    if unreadable.is_empty() {
        return;
    }
    body.push_str(
        "<p class=\"bad\">Sagas that cannot be read (written by a newer version, or damaged):</p>\
         <table><tr><th>saga</th><th>why</th></tr>",
    );
    for u in unreadable {
        let _ = write!(
            body,
            "<tr data-unreadable=\"{id}\"><td>{id}</td><td class=\"bad\">{}</td></tr>",
            esc(&u.error),
            id = esc(&u.id),
        );
    }
    body.push_str("</table>");
}

/// Sagas per (type, state), each count a link to that list.
fn counts_table(body: &mut String, db: usize, sagas: &[SagaSummary]) {
    let mut counts = std::collections::BTreeMap::<(&str, &str), usize>::new();
    for s in sagas {
        *counts.entry((&s.saga_type, s.state.as_str())).or_default() += 1;
    }
    body.push_str("<table><tr><th>saga type</th><th>state</th><th>sagas</th></tr>");
    for ((saga_type, state), n) in counts {
        let class = if state == SagaState::CompensationFailed.as_str() {
            " class=\"bad\""
        } else {
            ""
        };
        let _ = write!(
            body,
            "<tr><td>{t}</td><td{class}>{state}</td><td><a data-count=\"{t}/{state}\" \
             href=\"/sagas?db={db}&amp;type={tq}&amp;state={state}\">{n}</a></td></tr>",
            t = esc(saga_type),
            tq = url_value(saga_type),
        );
    }
    body.push_str("</table>");
}

fn list_table(body: &mut String, db: usize, sagas: &[SagaSummary], by_default: bool) {
    if sagas.is_empty() {
        body.push_str("<p class=\"ok\">No saga needs a look.</p>");
        return;
    }
    let _ = write!(
        body,
        "<p>{} ({}{}):</p><table><tr><th>saga</th><th>type</th><th>state</th><th>step</th>\
         <th>attempt</th><th>failure</th><th>started</th><th>last moved</th></tr>",
        if by_default {
            "Unfinished or stuck"
        } else {
            "Sagas"
        },
        sagas.len(),
        if sagas.len() > LIST {
            format!(", the {LIST} that moved last")
        } else {
            String::new()
        },
    );
    for s in sagas.iter().take(LIST) {
        let _ = write!(
            body,
            "<tr data-saga=\"{id}\"><td><a href=\"/sagas/{db}/{idq}\">{id}</a></td><td>{t}</td>\
             <td>{state}</td><td>{step}</td><td>{attempt}</td><td>{failure}</td><td>{started}</td>\
             <td>{moved}</td></tr>",
            id = esc(s.id.as_str()),
            idq = url_value(s.id.as_str()),
            t = esc(&s.saga_type),
            state = s.state.as_str(),
            step = esc(s.step_name.as_deref().unwrap_or("")),
            attempt = s.attempt,
            failure = esc(s.failure.as_deref().unwrap_or("")),
            started = s.started_at.to_rfc3339(),
            moved = s.updated_at.to_rfc3339(),
        );
    }
    body.push_str("</table>");
}

/// The database `db` of the console, saga `id` parsed, and an admin of that database; or the
/// error page (404 for no such database, 400 for a malformed id).
fn saga_of(
    c: &Shared,
    db: usize,
    id: String,
) -> Result<(&super::Service, SagaId, SagaAdmin), Box<Response>> {
    let Some(s) = c.services.get(db) else {
        return Err(Box::new(page_error(
            StatusCode::NOT_FOUND,
            "no such database",
        )));
    };
    let id = SagaId::new(id)
        .map_err(|e| Box::new(page_error(StatusCode::BAD_REQUEST, &e.to_string())))?;
    Ok((s, id, SagaAdmin::new(s.db.clone())))
}

pub(super) async fn show(
    State(c): State<Shared>,
    Path((db, id)): Path<(usize, String)>,
) -> Response {
    let (s, id, admin) = match saga_of(&c, db, id) {
        Ok(found) => found,
        Err(r) => return *r,
    };
    let saga = match admin.show(&id).await {
        Ok(Some(saga)) => saga,
        Ok(None) => return page_error(StatusCode::NOT_FOUND, "no such saga"),
        Err(e) => return failed(e),
    };
    let request = match admin.request(&id).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let mut body = format!(
        "<p><a href=\"/\">overview</a> · <a href=\"/sagas?db={db}\">sagas</a> · {}</p>\
         <table><tr><th>type</th><td>{}</td></tr>\
         <tr><th>state</th><td id=\"saga-state\">{}</td></tr>\
         <tr><th>step</th><td>{} {}{}</td></tr><tr><th>attempt</th><td>{}</td></tr>\
         <tr><th>waits for</th><td><pre>{}</pre></td></tr><tr><th>failure</th><td>{}</td></tr>\
         <tr><th>data</th><td><pre>{}</pre></td></tr></table>",
        esc(&s.shown),
        esc(&saga.saga_type),
        saga.state.as_str(),
        saga.step,
        esc(saga.step_name.as_deref().unwrap_or("")),
        if saga.compensating {
            " (compensating)"
        } else {
            ""
        },
        saga.attempt,
        esc(&saga
            .awaiting
            .as_ref()
            .and_then(|a| serde_json::to_string_pretty(a).ok())
            .unwrap_or_default()),
        esc(saga.failure.as_deref().unwrap_or("")),
        esc(&serde_json::to_string_pretty(&saga.data).unwrap_or_default()),
    );
    if let Some(r) = request {
        let outcome = match &r.state {
            RequestState::Requested => "waiting for a running orchestrator".to_owned(),
            RequestState::Done { at } => format!("done at {}", at.to_rfc3339()),
            RequestState::Refused { reason, .. } => format!("refused: {reason}"),
        };
        let _ = write!(
            body,
            "<p id=\"request\">Last request: {} ({}), {}</p>",
            esc(&format!("{:?}", r.action)),
            r.requested_at.to_rfc3339(),
            esc(&outcome)
        );
    }
    let idq = url_value(id.as_str());
    let _ = write!(
        body,
        "<p><form method=\"post\" action=\"/sagas/{db}/{idq}/cancel\"><button data-cancel>Cancel \
         (compensate what it did)</button></form> <form method=\"post\" \
         action=\"/sagas/{db}/{idq}/retry\"><button data-retry>Retry the current step</button>\
         </form></p><h2>Timeline</h2><table><tr><th>at</th><th>step</th><th>what</th>\
         <th>detail</th><th>message</th></tr>"
    );
    for h in &saga.history {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            h.at.to_rfc3339(),
            h.step.map(|s| s.to_string()).unwrap_or_default(),
            esc(&h.what),
            esc(h.detail.as_deref().unwrap_or("")),
            esc(h.message_id.as_deref().unwrap_or("")),
        );
    }
    body.push_str("</table>");
    page(&format!("Saga {id}"), !saga.state.is_final(), &body).into_response()
}

pub(super) async fn cancel(
    State(c): State<Shared>,
    Path((db, id)): Path<(usize, String)>,
) -> Response {
    request(c, db, id, true).await
}

pub(super) async fn retry(
    State(c): State<Shared>,
    Path((db, id)): Path<(usize, String)>,
) -> Response {
    request(c, db, id, false).await
}

async fn request(c: Shared, db: usize, id: String, cancel: bool) -> Response {
    let (_, id, admin) = match saga_of(&c, db, id) {
        Ok(found) => found,
        Err(r) => return *r,
    };
    let requested = if cancel {
        admin
            .request_cancel(&id, "cancelled from the console")
            .await
    } else {
        admin.request_retry(&id).await
    };
    match requested {
        Ok(_) => Redirect::to(&format!("/sagas/{db}/{}", url_value(id.as_str()))).into_response(),
        Err(e) if !e.is_retryable() => page_error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => failed(e),
    }
}
