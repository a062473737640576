//! Answers the server gives on its own, outside the router: every one has a JSON body
//! `{"error": "..."}`, the shape of every other error of a Tributary service.

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// An answer the server gives on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub message: String,
    /// `Retry-After` in seconds, for `503`.
    pub retry_after: Option<u64>,
    /// Whether the connection closes after it.
    pub close: bool,
}

impl Reply {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            close: false,
        }
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    fn body(&self) -> Bytes {
        Bytes::from(serde_json::json!({ "error": self.message }).to_string())
    }

    /// As a response handed to hyper.
    pub fn response(&self) -> Response<Body> {
        let mut response = Response::new(Body::from(self.body()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// As bytes written straight to a socket (before or instead of hyper): always closes.
    pub fn wire(&self) -> Bytes {
        let body = self.body();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some(secs) = self.retry_after {
            out.push_str(&format!("retry-after: {secs}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&body);
        Bytes::from(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wire_reply_is_a_complete_http_response_with_a_json_body() {
        let wire = Reply::new(StatusCode::SERVICE_UNAVAILABLE, "busy \"now\"")
            .retry_after(3)
            .wire();
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = response.parse(&wire).unwrap() else {
            panic!("incomplete head")
        };
        assert_eq!(response.code, Some(503));
        let get = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).unwrap().to_owned())
        };
        assert_eq!(get("retry-after").as_deref(), Some("3"));
        assert_eq!(get("connection").as_deref(), Some("close"));
        let body: serde_json::Value = serde_json::from_slice(&wire[len..]).unwrap();
        assert_eq!(body, serde_json::json!({"error": "busy \"now\""}));
        assert_eq!(get("content-length"), Some((wire.len() - len).to_string()));
    }
}
