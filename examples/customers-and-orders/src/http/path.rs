//! The id in a route's path, read as a UUID in any spelling and turned into its one canonical
//! form before a handler sees it; a path that is not one is a JSON 400 like every other error.

use axum::extract::{FromRequestParts, Path};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::AppError;

/// The `{id}` of a route, canonical (see [`crate::canonical_id`]).
pub struct IdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = path_text(parts, state).await?;
        let what = if parts.uri.path().starts_with("/orders/") {
            "order id"
        } else {
            "customer id"
        };
        crate::canonical_id(what, &raw)
            .map(Self)
            .map_err(AppError::into_response)
    }
}

/// The `{id}` of a product's route, as given (product ids are the inventory's own names).
pub struct ProductPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ProductPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        path_text(parts, state).await.map(Self)
    }
}

/// The path's one parameter; axum's own rejection (e.g. percent-encoding that is not UTF-8)
/// is plain text, so it becomes a JSON 400.
async fn path_text<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, Response> {
    let Path(raw) = Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(|rejection| {
            (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({ "error": rejection.body_text() })),
            )
                .into_response()
        })?;
    Ok(raw)
}
