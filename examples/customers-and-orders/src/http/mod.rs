//! The HTTP API (axum, JSON). Errors are `{"error": "..."}` with a 4xx/5xx status.

pub mod consistency;
mod json;
mod path;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tributary::Health;

pub use consistency::{Consistency, ConsistencyQuery};
pub use json::ApiJson;
pub use path::{IdPath, ProductPath};

use crate::AppError;
use crate::orchestration::{Line, OrchestratedOrder};
use crate::order::Order;
use crate::system::{ServiceName, Services};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    pub health: Arc<Vec<Health>>,
    pub consistency: Consistency,
}

/// The routes of the services this process runs (all four, or one in a distributed
/// deployment).
pub fn router(state: AppState) -> Router {
    let mut router = Router::new().route("/health", get(health));
    if state.services.runs(ServiceName::Customers) {
        router = router
            .route("/customers", post(create_customer))
            .route("/customers/{id}", get(get_customer));
    }
    if state.services.runs(ServiceName::History) {
        router = router.route("/customers/{id}/orderhistory", get(get_history));
    }
    if state.services.runs(ServiceName::Orders) {
        router = router
            .route("/orders", post(create_order))
            .route("/orders/{id}", get(get_order))
            .route("/orders/{id}/cancel", post(cancel_order))
            .route("/orders/{id}/saga", get(get_order_saga));
    }
    if state.services.runs(ServiceName::Inventory) {
        router = router
            .route("/products/{id}", get(get_product))
            .route("/products/{id}/restock", post(restock_product));
    }
    router
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::Invalid(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Store(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::BadToken(_) => StatusCode::BAD_REQUEST,
            AppError::NotConsistent(e) => return consistency::not_consistent(e),
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        error(status, self.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCustomer {
    name: String,
    credit_limit: i64,
}

#[derive(Serialize)]
struct CustomerView {
    customer_id: String,
    name: String,
    credit_limit: i64,
    available_credit: i64,
}

async fn create_customer(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<NewCustomer>,
) -> Result<Response, AppError> {
    let (c, token) = s
        .services
        .customers()?
        .create(body.name, body.credit_limit)
        .await?;
    let sealed = s.consistency.seal(&token);
    let body = json!({ "customer_id": c.customer_id, "consistency_token": sealed });
    Ok(consistency::with_token(
        (StatusCode::CREATED, Json(body)).into_response(),
        &sealed,
    ))
}

async fn get_customer(
    State(s): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<CustomerView>, AppError> {
    let c = s
        .services
        .customers()?
        .get(&id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("customer {id}")))?;
    Ok(Json(CustomerView {
        available_credit: c.available_credit(),
        customer_id: c.customer_id,
        name: c.name,
        credit_limit: c.credit_limit,
    }))
}

/// An order: without `lines`, the choreographed credit-only flow (the default); with them,
/// the orchestrated `CreateOrder` saga, which also reserves the stock of every line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    customer_id: String,
    order_total: i64,
    /// Absent: the choreography. `null` is refused, not read as absent: a client that sends
    /// `"lines": null` meant something, and the flow it gets must not be a guess.
    #[serde(default, deserialize_with = "present")]
    lines: Option<Vec<NewLine>>,
}

/// A field that may be absent (`#[serde(default)]` gives `None`) but not `null`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// A line as a client sends it: as strict as the order around it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLine {
    product_id: String,
    quantity: i64,
}

#[derive(Serialize)]
struct OrderView {
    order_id: String,
    customer_id: String,
    order_total: i64,
    state: String,
    /// Only orchestrated orders have lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    lines: Option<Vec<Line>>,
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        Self {
            state: o.state.to_string(),
            order_id: o.order_id,
            customer_id: o.customer_id,
            order_total: o.order_total,
            lines: None,
        }
    }
}

impl From<OrchestratedOrder> for OrderView {
    fn from(o: OrchestratedOrder) -> Self {
        Self {
            order_id: o.order_id,
            customer_id: o.customer_id,
            order_total: o.order_total,
            state: o.state,
            lines: Some(o.lines),
        }
    }
}

async fn create_order(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<NewOrder>,
) -> Result<Response, AppError> {
    if let Some(lines) = body.lines {
        // The saga's first step records the order PENDING in the unit that starts it.
        let order_id = s
            .services
            .orchestrated()?
            .place(
                &body.customer_id,
                body.order_total,
                lines
                    .into_iter()
                    .map(|l| Line {
                        product_id: l.product_id,
                        quantity: l.quantity,
                    })
                    .collect(),
            )
            .await?;
        let body = json!({ "order_id": order_id, "state": crate::orchestration::PENDING });
        return Ok((StatusCode::CREATED, Json(body)).into_response());
    }
    let (o, token) = s
        .services
        .orders()?
        .create(body.customer_id, body.order_total)
        .await?;
    let sealed = s.consistency.seal(&token);
    let body = json!({
        "order_id": o.order_id,
        "state": o.state.to_string(),
        "consistency_token": sealed,
    });
    Ok(consistency::with_token(
        (StatusCode::CREATED, Json(body)).into_response(),
        &sealed,
    ))
}

async fn get_order(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    Query(query): Query<ConsistencyQuery>,
    headers: HeaderMap,
) -> Result<Json<OrderView>, AppError> {
    let orders = s.services.orders()?;
    let o = match s.consistency.requested(&headers, &query)? {
        Some((token, wait)) => orders.get_consistent(&id, &token, wait).await?,
        None => orders.get(&id).await?,
    };
    if let Some(o) = o {
        return Ok(Json(o.into()));
    }
    let o = s.services.orchestrated()?.get(&id).await?;
    let o = o.ok_or_else(|| AppError::NotFound(format!("order {id}")))?;
    Ok(Json(o.into()))
}

/// The `CreateOrder` saga of an orchestrated order: state, step and timeline.
async fn get_order_saga(
    State(s): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<tributary::saga::SagaInstance>, AppError> {
    let saga = s.services.orchestrated()?.saga(&id).await?;
    Ok(Json(saga.ok_or_else(|| {
        AppError::NotFound(format!("saga of order {id}"))
    })?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Restock {
    quantity: i64,
}

async fn get_product(
    State(s): State<AppState>,
    ProductPath(id): ProductPath,
) -> Result<Json<crate::orchestration::inventory::Product>, AppError> {
    let p = s.services.inventory()?.get(&id).await?;
    Ok(Json(p.ok_or_else(|| {
        AppError::NotFound(format!("product {id}"))
    })?))
}

async fn restock_product(
    State(s): State<AppState>,
    ProductPath(id): ProductPath,
    ApiJson(body): ApiJson<Restock>,
) -> Result<Json<crate::orchestration::inventory::Product>, AppError> {
    Ok(Json(
        s.services.inventory()?.restock(&id, body.quantity).await?,
    ))
}

async fn cancel_order(State(s): State<AppState>, IdPath(id): IdPath) -> Result<Response, AppError> {
    let (o, token) = s.services.orders()?.cancel(&id).await?;
    let sealed = s.consistency.seal(&token);
    let mut body = serde_json::to_value(OrderView::from(o))
        .map_err(|e| AppError::Invalid(format!("cannot show the order: {e}")))?;
    body["consistency_token"] = json!(sealed);
    Ok(consistency::with_token(Json(body).into_response(), &sealed))
}

async fn get_history(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    Query(query): Query<ConsistencyQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, AppError> {
    let history = s.services.history()?;
    let h = match s.consistency.requested(&headers, &query)? {
        Some((token, wait)) => history.get_consistent(&id, &token, wait).await?,
        None => history.get(&id).await?,
    };
    let h = h.ok_or_else(|| AppError::NotFound(format!("order history of customer {id}")))?;
    let orders: Vec<_> = h
        .orders
        .iter()
        .map(|(order_id, o)| json!({ "order_id": order_id, "order_total": o.order_total, "state": o.state.to_string() }))
        .collect();
    Ok(Json(json!({
        "customer_id": h.customer_id,
        "name": h.name,
        "credit_limit": h.credit_limit,
        "orders": orders,
    })))
}

async fn health(State(s): State<AppState>) -> Response {
    let components: serde_json::Map<String, serde_json::Value> = s
        .health
        .iter()
        .map(|h| (h.name().to_owned(), json!(format!("{:?}", h.get()))))
        .collect();
    let ok = s.health.iter().all(Health::is_ok);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "status": if ok { "ok" } else { "degraded" }, "components": components })),
    )
        .into_response()
}

/// Serves `router` on `listener` (bound with [`tributary_http::bind`], before anything else
/// starts, so that a port in use is reported first and with its address) until `stop`
/// resolves, then stops accepting and lets requests in flight finish. Slow and stalled
/// clients are cut off, connections and requests in flight are bounded, protocol errors are
/// JSON like every other error (see [`tributary_http::HttpLimits`]).
///
/// # Errors
/// When serving fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = tributary_http::HttpLimits::default().with_max_body_bytes(MAX_BODY_BYTES);
    tributary_http::serve(listener, router, stop, limits).await?;
    Ok(())
}
