//! Reading your own writes over HTTP: every write response carries a consistency token (the
//! `Tributary-Consistency` header and a `consistency_token` field), and the reads of views
//! accept one (the header or `?consistent_with=`) and answer only with data that includes
//! those writes — or a `503` with `Retry-After` saying what is still pending after the wait.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::http::header::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tributary::backend::{Pending, PendingReason};
use tributary::{ConsistencyKey, ConsistencyToken, TokenEntry, WaitError};

use crate::AppError;

/// The header a write's token travels in, both ways.
pub const HEADER: HeaderName = HeaderName::from_static("tributary-consistency");

/// How long a read waits for a token's writes when the client does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);

/// The longest a client may ask a read to wait (`?wait_ms=`).
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// What signs and reads this deployment's tokens.
#[derive(Clone, Debug)]
pub struct Consistency {
    pub key: ConsistencyKey,
}

impl Consistency {
    pub fn new(key: ConsistencyKey) -> Self {
        Self { key }
    }

    /// The sealed form of a write's token, for the header and the JSON field.
    pub fn seal(&self, token: &ConsistencyToken) -> String {
        token.seal(&self.key)
    }

    /// The token and the wait a read asks for, if it asks for one.
    ///
    /// # Errors
    /// [`AppError::BadToken`] for a malformed or forged token, [`AppError::Invalid`] for a bad
    /// wait.
    pub fn requested(
        &self,
        headers: &HeaderMap,
        query: &ConsistencyQuery,
    ) -> Result<Option<(ConsistencyToken, Duration)>, AppError> {
        let sealed = match (&query.consistent_with, headers.get(&HEADER)) {
            (Some(q), _) => q.clone(),
            (None, Some(h)) => h
                .to_str()
                .map_err(|_| AppError::Invalid("the consistency token is not ASCII".into()))?
                .to_owned(),
            (None, None) => return Ok(None),
        };
        let token = ConsistencyToken::open(&self.key, &sealed)?;
        let wait = match query.wait_ms {
            None => DEFAULT_WAIT,
            Some(ms) => Duration::from_millis(ms).min(MAX_WAIT),
        };
        Ok(Some((token, wait)))
    }
}

/// The query parameters of a read that may wait for a token.
#[derive(Debug, Default, Deserialize)]
pub struct ConsistencyQuery {
    pub consistent_with: Option<String>,
    pub wait_ms: Option<u64>,
}

/// `response` with the write's token in the header.
pub fn with_token(mut response: Response, sealed: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(sealed) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

fn describe(p: &Pending) -> serde_json::Value {
    let reason = match p.reason {
        PendingReason::NotYet => "not applied yet",
        PendingReason::DeadLettered => "dead-lettered by the view",
    };
    match p.entry {
        TokenEntry::Write { id, .. } => json!({ "event_id": id.to_string(), "reason": reason }),
        TokenEntry::FollowUp { after, .. } => {
            json!({ "follow_up_of": after.to_string(), "reason": reason })
        }
    }
}

/// The answer to a read whose token's writes were not applied in time.
pub fn not_consistent(e: &WaitError) -> Response {
    let pending: Vec<_> = e.pending().iter().map(describe).collect();
    let body = Json(json!({
        "error": format!("the view does not include the writes of the consistency token yet: {e}"),
        "pending": pending,
    }));
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    // Waiting longer cannot help a dead-lettered write: no Retry-After for it.
    if matches!(e, WaitError::Timeout { .. }) {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    response
}
