//! End-to-end tests of the reference application through its HTTP API, on the embedded
//! default: every request goes over TCP to the real router, every saga step through the real
//! relays, broker and consumers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use customers_and_orders::http::{self, AppState};
use customers_and_orders::invariants;
use customers_and_orders::system::{self, Backends, Running};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct App {
    base: String,
    client: reqwest::Client,
    running: Option<Running>,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap()).await
    }

    /// The application on the embedded files in `dir` (new, or left by [`App::stop`]).
    async fn start_in(dir: tempfile::TempDir) -> Self {
        let running = system::start(Backends::embedded(dir.path()).await.unwrap())
            .await
            .unwrap();
        let state = AppState {
            services: running.services.clone(),
            health: Arc::new(running.health()),
            consistency: http::Consistency::new(tributary::ConsistencyKey::new(
                b"the http tests' consistency key".to_vec(),
            )),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            // The server the binary runs: its limits and JSON protocol errors are the API too.
            http::serve(listener, http::router(state), async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            running: Some(running),
            dir,
            stop: Some(stop),
            server,
        }
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn customer(&self, name: &str, limit: i64) -> String {
        let (status, body) = self
            .post("/customers", json!({"name": name, "credit_limit": limit}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["customer_id"].as_str().unwrap().to_owned()
    }

    async fn order(&self, customer: &str, total: i64) -> String {
        let (status, body) = self
            .post(
                "/orders",
                json!({"customer_id": customer, "order_total": total}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["state"], "NEW");
        body["order_id"].as_str().unwrap().to_owned()
    }

    /// Polls the order until it leaves NEW.
    async fn settled(&self, order: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.get(&format!("/orders/{order}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if body["state"] != "NEW" {
                return body;
            }
            assert!(Instant::now() < deadline, "order {order} stayed NEW");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn available(&self, customer: &str) -> i64 {
        self.get(&format!("/customers/{customer}")).await.1["available_credit"]
            .as_i64()
            .unwrap()
    }

    /// Polls until `check` holds for the customer's order history.
    async fn history_until(&self, customer: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self
                .get(&format!("/customers/{customer}/orderhistory"))
                .await;
            if status == StatusCode::OK && check(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "history never became as expected: {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn invariants_hold(&self) {
        let running = self.running.as_ref().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let checks = invariants::all(&running.services, running.backends.broker.as_ref())
                .await
                .unwrap();
            if checks.iter().all(|c| c.ok) {
                return;
            }
            assert!(Instant::now() < deadline, "invariants: {checks:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server and the services; once every handle is dropped, the databases are
    /// closed (their pages checkpointed into the files) and `dir` holds only the files.
    async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.await.unwrap();
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.dir
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_affordable_order_is_approved_and_reserves_credit() {
    let app = App::start().await;
    let c = app.customer("Acme", 10_000).await;
    let (status, body) = app.get(&format!("/customers/{c}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"customer_id": c, "name": "Acme", "credit_limit": 10_000, "available_credit": 10_000})
    );
    let o = app.order(&c, 2_500).await;
    let settled = app.settled(&o).await;
    assert_eq!(
        settled,
        json!({"order_id": o, "customer_id": c, "order_total": 2_500, "state": "APPROVED"})
    );
    assert_eq!(app.available(&c).await, 7_500);
    let history = app
        .history_until(&c, |h| h["orders"][0]["state"] == "APPROVED")
        .await;
    assert_eq!(
        history,
        json!({"customer_id": c, "name": "Acme", "credit_limit": 10_000, "orders": [{"order_id": o, "order_total": 2_500, "state": "APPROVED"}]})
    );
    app.invariants_hold().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_over_the_limit_is_rejected_and_reserves_nothing() {
    let app = App::start().await;
    let c = app.customer("Small Ltd", 1_000).await;
    let o = app.order(&c, 1_001).await;
    assert_eq!(app.settled(&o).await["state"], "REJECTED");
    assert_eq!(app.available(&c).await, 1_000);
    app.history_until(&c, |h| h["orders"][0]["state"] == "REJECTED")
        .await;
    app.invariants_hold().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_for_an_unknown_customer_is_rejected() {
    let app = App::start().await;
    let stranger = uuid::Uuid::now_v7().to_string();
    let o = app.order(&stranger, 100).await;
    assert_eq!(app.settled(&o).await["state"], "REJECTED");
    let (status, body) = app
        .get(&format!("/customers/{stranger}/orderhistory"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_releases_credit_so_a_later_order_is_approved() {
    let app = App::start().await;
    let c = app.customer("Cyclic", 5_000).await;
    let first = app.order(&c, 4_000).await;
    assert_eq!(app.settled(&first).await["state"], "APPROVED");
    let second = app.order(&c, 3_000).await;
    assert_eq!(
        app.settled(&second).await["state"],
        "REJECTED",
        "only 1000 left"
    );
    // Only an APPROVED order can be cancelled.
    let (status, body) = app
        .post(&format!("/orders/{second}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("REJECTED"));
    let (status, body) = app
        .post(&format!("/orders/{first}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "CANCELLED");
    let (status, _) = app
        .post(&format!("/orders/{first}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "cancelling twice is refused");
    // The release travels through the saga back to the customer service.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.available(&c).await != 5_000 {
        assert!(Instant::now() < deadline, "credit was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let third = app.order(&c, 3_000).await;
    assert_eq!(app.settled(&third).await["state"], "APPROVED");
    assert_eq!(app.available(&c).await, 2_000);
    app.history_until(&c, |h| {
        let states: Vec<_> = h["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["state"].as_str().unwrap().to_owned())
            .collect();
        states == ["CANCELLED", "REJECTED", "APPROVED"]
    })
    .await;
    app.invariants_hold().await;
    app.stop().await;
}

/// Polls the orchestrated order's saga until it ended, then returns the order.
async fn decided(app: &App, order: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, saga) = app.get(&format!("/orders/{order}/saga")).await;
        assert_eq!(status, StatusCode::OK, "{saga}");
        if ["completed", "compensated", "compensation_failed"]
            .contains(&saga["state"].as_str().unwrap())
        {
            let (status, body) = app.get(&format!("/orders/{order}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the saga of order {order} did not end: {saga}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_with_lines_runs_the_orchestrated_saga_over_credit_and_stock() {
    let app = App::start().await;
    let c = app.customer("Acme", 1_000).await;
    let (status, apple) = app
        .post("/products/apple/restock", json!({"quantity": 5}))
        .await;
    assert_eq!(status, StatusCode::OK, "{apple}");
    assert_eq!(apple["available"], 5);
    let place = |total: i64, quantity: i64| json!({"customer_id": c, "order_total": total, "lines": [{"product_id": "apple", "quantity": quantity}]});

    let (status, body) = app.post("/orders", place(300, 3)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "PENDING");
    let fits = body["order_id"].as_str().unwrap().to_owned();
    assert_eq!(
        decided(&app, &fits).await,
        json!({"order_id": fits, "customer_id": c, "order_total": 300, "state": "APPROVED",
               "lines": [{"product_id": "apple", "quantity": 3}]})
    );
    // Credit and stock are both held for it; the saga's timeline says how it got there.
    assert_eq!(app.available(&c).await, 700);
    let (_, apple) = app.get("/products/apple").await;
    assert_eq!(
        (
            apple["available"].clone(),
            apple["reservations"][&fits].clone()
        ),
        (json!(2), json!(3))
    );
    let (status, saga) = app.get(&format!("/orders/{fits}/saga")).await;
    assert_eq!(status, StatusCode::OK, "{saga}");
    assert_eq!(saga["state"], "completed", "{saga}");

    // Beyond the stock: the credit it reserved first is released, the stock untouched.
    let (_, body) = app.post("/orders", place(100, 4)).await;
    let short = body["order_id"].as_str().unwrap().to_owned();
    assert_eq!(decided(&app, &short).await["state"], "REJECTED");
    let (_, saga) = app.get(&format!("/orders/{short}/saga")).await;
    assert_eq!(saga["state"], "compensated", "{saga}");
    assert!(
        saga["failure"].as_str().unwrap().contains("out of stock"),
        "{saga}"
    );
    assert_eq!(app.available(&c).await, 700);
    assert_eq!(app.get("/products/apple").await.1["available"], 2);

    // Bad orders with lines are refused before a saga starts.
    for bad in [
        json!({"customer_id": c, "order_total": 10, "lines": []}),
        json!({"customer_id": c, "order_total": 10, "lines": null}),
        json!({"customer_id": c, "order_total": 10, "lines": [{"product_id": "apple", "quantity": -1}]}),
        json!({"customer_id": c, "order_total": 10, "lines": [{"product_id": "apple", "quantity": 1, "price": 3}]}),
        json!({"customer_id": c, "order_total": 10, "lines": [{"product_id": "", "quantity": 1}]}),
        json!({"customer_id": "nope", "order_total": 10, "lines": [{"product_id": "apple", "quantity": 1}]}),
    ] {
        let (status, body) = app.post("/orders", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, _) = app
        .post("/products/apple/restock", json!({"quantity": 0}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = app.get("/products/pear").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = app
        .get(&format!("/orders/{}/saga", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.invariants_hold().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_orders_racing_for_the_last_credit_approve_exactly_the_affordable_ones() {
    let app = Arc::new(App::start().await);
    let c = app.customer("Contended", 10_000).await;
    // Twenty orders of 1,000 at once: exactly ten fit.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (app, c) = (app.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            let o = app.order(&c, 1_000).await;
            app.settled(&o).await["state"].as_str().unwrap().to_owned()
        }));
    }
    let mut states = Vec::new();
    for t in tasks {
        states.push(t.await.unwrap());
    }
    assert_eq!(
        states.iter().filter(|s| *s == "APPROVED").count(),
        10,
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| *s == "REJECTED").count(),
        10,
        "{states:?}"
    );
    assert_eq!(app.available(&c).await, 0);
    app.invariants_hold().await;
    let app = Arc::into_inner(app).expect("no other handle");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_a_clear_4xx_and_change_nothing() {
    let app = App::start().await;
    let c = app.customer("Valid", 100).await;
    let url = |p: &str| format!("{}{p}", app.base);
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            app.client
                .post(url("/customers"))
                .header("content-type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            app.client
                .post(url("/customers"))
                .json(&json!({"name": "x"})),
            StatusCode::BAD_REQUEST,
            "credit_limit",
        ),
        (
            app.client
                .post(url("/customers"))
                .json(&json!({"name": "x", "credit_limit": -5})),
            StatusCode::BAD_REQUEST,
            "credit_limit",
        ),
        (
            app.client
                .post(url("/customers"))
                .json(&json!({"name": "", "credit_limit": 5})),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            app.client
                .post(url("/customers"))
                .json(&json!({"name": "x", "credit_limit": "lots"})),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            app.client
                .post(url("/customers"))
                .json(&json!({"name": "x", "credit_limit": 1.5})),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            app.client
                .post(url("/customers"))
                .json(&json!({"name": "x", "credit_limit": 5, "vip": true})),
            StatusCode::BAD_REQUEST,
            "vip",
        ),
        (
            app.client
                .post(url("/customers"))
                .body(r#"{"name":"x","credit_limit":5}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            app.client
                .post(url("/customers"))
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"name":"{}","credit_limit":1}}"#,
                    "x".repeat(20_000)
                )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger",
        ),
        (
            app.client
                .post(url("/orders"))
                .json(&json!({"customer_id": c, "order_total": 0})),
            StatusCode::BAD_REQUEST,
            "order_total",
        ),
        (
            app.client
                .post(url("/orders"))
                .json(&json!({"customer_id": c, "order_total": -100})),
            StatusCode::BAD_REQUEST,
            "order_total",
        ),
        (
            app.client
                .post(url("/orders"))
                .json(&json!({"customer_id": "not-a-uuid", "order_total": 100})),
            StatusCode::BAD_REQUEST,
            "UUID",
        ),
        (
            app.client
                .post(url("/orders"))
                .json(&json!({"order_total": 100})),
            StatusCode::BAD_REQUEST,
            "customer_id",
        ),
        (
            app.client
                .get(url(&format!("/customers/{}", uuid::Uuid::now_v7()))),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            app.client.get(url("/customers/garbage")),
            StatusCode::BAD_REQUEST,
            "UUID",
        ),
        (
            app.client
                .get(url(&format!("/orders/{}", uuid::Uuid::now_v7()))),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            app.client
                .post(url(&format!("/orders/{}/cancel", uuid::Uuid::now_v7()))),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            app.client.get(url("/nowhere")),
            StatusCode::NOT_FOUND,
            "route",
        ),
        (
            app.client.delete(url("/customers")),
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
        ),
    ];
    for (request, expected, mentions) in cases {
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{body}");
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("a JSON error body, got {body}"));
        assert!(
            message.contains(mentions),
            "{message:?} should mention {mentions:?}"
        );
    }
    // Nothing was half-written: still exactly one customer, no orders.
    let running = app.running.as_ref().unwrap();
    assert_eq!(
        running
            .services
            .customers()
            .unwrap()
            .all()
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        running
            .services
            .orders()
            .unwrap()
            .all()
            .await
            .unwrap()
            .is_empty()
    );
    let (status, body) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    app.stop().await;
}

/// The spellings of one UUID that clients send: upper case, braces, a URN, no hyphens.
fn spellings(id: &str) -> Vec<String> {
    let simple = id.replace('-', "");
    vec![
        id.to_uppercase(),
        format!("{{{id}}}"),
        format!("urn:uuid:{id}"),
        format!("URN:UUID:{}", id.to_uppercase()),
        simple.clone(),
        simple.to_uppercase(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_spelling_of_an_id_names_the_same_customer_and_order() {
    let app = App::start().await;
    let c = app.customer("Spelled", 10_000).await;
    for spelling in spellings(&c) {
        let (status, body) = app.get(&format!("/customers/{spelling}")).await;
        assert_eq!(status, StatusCode::OK, "{spelling}: {body}");
        assert_eq!(body["customer_id"], c, "{spelling}: the canonical id");
    }
    // An order for the customer spelled in upper case is the customer's order: approved,
    // credit reserved, in the customer's history.
    let o = app.order(&c.to_uppercase(), 2_000).await;
    let settled = app.settled(&o).await;
    assert_eq!(settled["state"], "APPROVED", "{settled}");
    assert_eq!(settled["customer_id"], c);
    assert_eq!(app.available(&c).await, 8_000);
    for spelling in spellings(&o) {
        let (status, body) = app.get(&format!("/orders/{spelling}")).await;
        assert_eq!(status, StatusCode::OK, "{spelling}: {body}");
        assert_eq!(body["order_id"], o, "{spelling}");
    }
    for spelling in spellings(&c) {
        let history = app
            .history_until(&spelling, |h| h["orders"][0]["state"] == "APPROVED")
            .await;
        assert_eq!(history["customer_id"], c, "{spelling}");
    }
    // Cancelling through another spelling cancels the one order and releases its credit.
    let (status, body) = app
        .post(
            &format!("/orders/{{{}}}/cancel", o.to_uppercase()),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["order_id"], o);
    assert_eq!(body["state"], "CANCELLED");
    // What is not a UUID is refused with a JSON 400 before any unit of work.
    for (path, mentions) in [
        (format!("/customers/{}x", &c[..35]), "UUID"),
        (format!("/orders/{}", &o[..30]), "UUID"),
        ("/customers/%FF".to_owned(), ""),
        (format!("/customers/urn:uuid:{{{c}}}"), "UUID"),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: a JSON error body, got {body}"));
        assert!(message.contains(mentions), "{path}: {message:?}");
    }
    let running = app.running.as_ref().unwrap();
    assert_eq!(
        running
            .services
            .customers()
            .unwrap()
            .all()
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        running
            .services
            .orders()
            .unwrap()
            .all()
            .await
            .unwrap()
            .len(),
        1
    );
    app.invariants_hold().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_with_the_writes_token_includes_the_write_and_its_decision() {
    let app = App::start().await;
    let c = app.customer("Reader", 10_000).await;
    let response = app
        .client
        .post(format!("{}/orders", app.base))
        .json(&json!({"customer_id": c, "order_total": 2_500}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let header = response
        .headers()
        .get("tributary-consistency")
        .expect("the token in a header")
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["consistency_token"],
        header.as_str(),
        "and in the body"
    );
    let order = body["order_id"].as_str().unwrap().to_owned();
    // No polling: one read that waits for exactly these writes.
    let history = app
        .client
        // The longest wait a client may ask for: the whole saga runs before the read answers.
        .get(format!(
            "{}/customers/{c}/orderhistory?wait_ms=10000",
            app.base
        ))
        .header("tributary-consistency", &header)
        .send()
        .await
        .unwrap();
    assert_eq!(history.status(), StatusCode::OK);
    let history: Value = history.json().await.unwrap();
    assert_eq!(
        history["orders"][0],
        json!({"order_id": order, "order_total": 2_500, "state": "APPROVED"}),
        "the order and its saga's decision"
    );
    let (status, settled) = app
        .get(&format!(
            "/orders/{order}?consistent_with={header}&wait_ms=10000"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{settled}");
    assert_eq!(
        settled["state"], "APPROVED",
        "the order service applied the decision"
    );
    // A cancellation's token: the history shows it at once.
    let (status, cancelled) = app
        .post(&format!("/orders/{order}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let token = cancelled["consistency_token"].as_str().unwrap();
    let (status, history) = app
        .get(&format!(
            "/customers/{c}/orderhistory?consistent_with={token}&wait_ms=10000"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history["orders"][0]["state"], "CANCELLED");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_or_forged_token_is_a_400_and_an_unmet_one_a_503_that_says_what_is_pending() {
    let app = App::start().await;
    let c = app.customer("Wary", 100).await;
    let history = format!("/customers/{c}/orderhistory");
    let (status, body) = app
        .get(&format!("{history}?consistent_with=not-a-token"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("malformed"),
        "{body}"
    );
    // Signed with another deployment's key.
    let mut elsewhere = tributary::ConsistencyToken::new();
    elsewhere.record(
        Some(&tributary::Topic::new("Order").unwrap()),
        &tributary::Envelope::new("x", "OrderCreated", tributary::Payload::null()),
    );
    let forged = elsewhere.seal(&tributary::ConsistencyKey::new(
        b"another deployment".to_vec(),
    ));
    let (status, body) = app
        .get(&format!("{history}?consistent_with={forged}"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not issued"),
        "{body}"
    );
    // A genuine token of a write the view never receives: a bounded wait, then 503.
    let unmet = elsewhere.seal(&tributary::ConsistencyKey::new(
        b"the http tests' consistency key".to_vec(),
    ));
    let started = Instant::now();
    let response = app
        .client
        .get(format!("{}{history}?wait_ms=200", app.base))
        .header("tributary-consistency", &unmet)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= Duration::from_millis(200), "it waited");
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["pending"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["pending"][0]["reason"], "not applied yet");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corruption_found_after_start_turns_health_503_naming_the_file() {
    // Enough customers that their documents and outbox rows span many pages.
    let app = App::start().await;
    let mut customers = Vec::new();
    for i in 0..300 {
        customers.push(app.customer(&format!("Customer {i:03}"), 1_000).await);
    }
    let dir = app.stop().await;

    // Started again, the files pass the check at start; then every page of the customers'
    // database but the first is overwritten, as a failing disk would.
    let app = App::start_in(dir).await;
    let (_, body) = app.get("/health").await;
    assert_eq!(
        body["components"]["database customers"], "Running",
        "sound at start: {body}"
    );
    tributary_testkit::files::overwrite_all_but_the_first_page(
        &app.dir.path().join("customers.db"),
        8,
    );

    let mut failed = 0;
    for c in &customers {
        let (status, body) = app.get(&format!("/customers/{c}")).await;
        if status != StatusCode::OK {
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
            assert!(body["error"].is_string(), "a JSON error: {body}");
            failed += 1;
        }
    }
    assert!(failed > 0, "reads of the overwritten pages fail");

    // Health reports the damage (its watcher samples every database a few times a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = app.get("/health").await;
        let customers_db = body["components"]["database customers"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if customers_db.contains("Failed") {
            assert!(
                customers_db.contains("customers.db") && customers_db.contains("corrupted"),
                "health names the damaged file: {body}"
            );
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["status"], "degraded");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health did not report the damage after reads failed: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}
