//! A JSON body extractor whose rejections are JSON errors that say what is wrong.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// Like `axum::Json`, but a malformed, oversized or mistyped body gets `{"error": "..."}`.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(reject(rejection)),
        }
    }
}

fn reject(rejection: JsonRejection) -> Response {
    let status = rejection.status();
    let message = match &rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "the body must be JSON (Content-Type: application/json)".to_owned()
        }
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the body is larger than {} bytes", super::MAX_BODY_BYTES)
        }
        _ => rejection.body_text(),
    };
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        // A well-formed JSON body of the wrong shape is as much a bad request as a broken one.
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}
