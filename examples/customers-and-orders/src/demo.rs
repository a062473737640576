//! `tributary demo`: the whole system in one process on the embedded default, a workload of
//! customers and concurrent orders through both order flows at once — the choreography (some
//! approved, some rejected, some unknown customers, some approved ones cancelled) and the
//! orchestrated `CreateOrder` saga over credit and stock (see [`OrchestrationFigures`]) — progress
//! bars, and a summary with the invariant checks.

mod orchestrated;

pub use orchestrated::OrchestrationFigures;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::OptionFuture;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;
use tributary::Position;

use crate::http::{AppState, Consistency};
use crate::invariants::{self, Check, State};
use crate::order::OrderState;
use crate::read_your_writes::ReadYourWrites;
use crate::system::{
    self, Backends, BrokerUrl, DbUrl, DeploymentRecord, Publishing, Running, ServiceName, Services,
};

/// Which order flows the demo drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// `POST /orders` without lines: the services react to each other's events.
    Choreography,
    /// Orders with lines: the order service's `CreateOrder` saga commands the others.
    Orchestration,
    /// Both at once, on the same customers (their credit is shared by the two flows).
    Both,
}

impl Flow {
    fn choreographs(self) -> bool {
        self != Flow::Orchestration
    }
    fn orchestrates(self) -> bool {
        self != Flow::Choreography
    }
}

impl std::str::FromStr for Flow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "choreography" => Ok(Flow::Choreography),
            "orchestration" => Ok(Flow::Orchestration),
            "both" => Ok(Flow::Both),
            other => Err(format!(
                "unknown flow {other:?}: use choreography, orchestration or both"
            )),
        }
    }
}

/// Options of the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub customers: usize,
    /// Orders placed through each flow the demo drives.
    pub orders: usize,
    pub flow: Flow,
    /// Orders created at the same time, per flow.
    pub concurrency: usize,
    /// Offer orders at this rate (per second, per flow) instead of as fast as possible.
    pub rate: Option<f64>,
    /// Fraction of approved orders that are then cancelled.
    pub cancel_fraction: f64,
    /// Fraction of orders for customers that do not exist.
    pub unknown_customer_fraction: f64,
    /// Where the databases go on the embedded default (default: a temporary directory).
    pub data_dir: Option<PathBuf>,
    /// Distributed backends instead: the demo gets fresh schemas and streams of its own on
    /// them, and removes them at the end.
    pub db: Option<DbUrl>,
    pub broker: Option<BrokerUrl>,
    /// Publish the customer outbox from PostgreSQL's WAL (CDC) instead of by the relay.
    pub cdc: bool,
    pub progress: bool,
    /// Write-then-read pairs through HTTP, without and with consistency tokens.
    pub read_your_writes_pairs: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            customers: 1000,
            orders: 10_000,
            flow: Flow::Both,
            concurrency: 64,
            rate: None,
            cancel_fraction: 0.1,
            unknown_customer_fraction: 0.02,
            data_dir: None,
            db: None,
            broker: None,
            cdc: false,
            progress: true,
            read_your_writes_pairs: 200,
        }
    }
}

/// What the demo measured and found.
#[derive(Debug)]
pub struct DemoSummary {
    /// The choreographed flow's figures, when the demo drove it.
    pub choreography: Option<ChoreographyFigures>,
    pub orchestration: Option<OrchestrationFigures>,
    pub read_your_writes: ReadYourWrites,
    pub checks: Vec<Check>,
}

/// What the choreographed flow measured.
#[derive(Clone, Debug)]
pub struct ChoreographyFigures {
    pub orders: usize,
    pub approved: usize,
    pub rejected: usize,
    pub cancelled: usize,
    pub seconds_to_settle: f64,
    pub orders_per_sec: f64,
    /// Order created (its command returned) → APPROVED/REJECTED committed, in ms.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

impl DemoSummary {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// A tiny deterministic generator, so that runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

/// Runs the demo.
///
/// # Errors
/// When the system cannot start or does not settle within two minutes.
pub async fn run(options: DemoOptions) -> anyhow::Result<DemoSummary> {
    let temp = tempfile_dir()?;
    let dir = options.data_dir.clone().unwrap_or_else(|| temp.clone());
    let run_id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let db = match &options.db {
        None => DbUrl::Sqlite(dir.clone()),
        Some(DbUrl::Postgres { url, .. }) => DbUrl::Postgres {
            url: url.clone(),
            schema_prefix: format!("demo_{run_id}_"),
        },
        Some(other) => other.clone(),
    };
    let broker = match &options.broker {
        None => match &db {
            DbUrl::Sqlite(d) => BrokerUrl::Embedded { dir: d.clone() },
            DbUrl::Postgres { .. } => {
                anyhow::bail!("a PostgreSQL demo needs a broker URL (nats://… or embedded://DIR)")
            }
        },
        Some(BrokerUrl::Nats { url, replicas, .. }) => BrokerUrl::Nats {
            url: url.clone(),
            prefix: format!("DEMO{}", run_id.to_uppercase()),
            replicas: *replicas,
        },
        Some(other) => other.clone(),
    };
    let backends = Backends::connect(&db, &broker, &ServiceName::ALL).await?;
    let publishing = if options.cdc {
        Publishing::Cdc(db.clone())
    } else {
        Publishing::Relay
    };
    let running = match system::start_with(backends, publishing).await {
        Ok(running) => running,
        Err(e) => {
            cleanup(&db, &broker).await;
            return Err(e);
        }
    };
    let result = drive(&running, &options).await;
    running.stop().await;
    if options.cdc
        && let Err(e) = system::cdc::retire_customer_outbox_capture(&db).await
    {
        tracing::warn!(error = %e, "could not remove the demo's replication slot");
    }
    cleanup(&db, &broker).await;
    if options.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

/// Removes the demo's schemas and streams from shared servers.
async fn cleanup(db: &DbUrl, broker: &BrokerUrl) {
    if let DbUrl::Postgres { url, schema_prefix } = db {
        for service in ServiceName::ALL {
            let config = tributary::postgres::PgConfig::default()
                .with_url(url.clone())
                .with_schema(format!("{schema_prefix}{service}"));
            if let Ok(db) = tributary::postgres::PgDatabase::connect(config).await
                && let Err(e) = db.drop_schema().await
            {
                tracing::warn!(error = %e, "could not drop the demo's schema");
            }
        }
        if let Err(e) = DeploymentRecord::of(db).erase().await {
            tracing::warn!(error = %e, "could not drop the demo's deployment record");
        }
    }
    if let BrokerUrl::Nats { url, prefix, .. } = broker {
        let config = tributary::nats::NatsBrokerConfig::default()
            .with_url(url.clone())
            .with_stream_prefix(prefix.clone());
        if let Ok(nats) = tributary::nats::NatsBroker::connect(config).await {
            for topic in system::all_topics() {
                let _ = nats.delete_topic(&topic).await;
            }
        }
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("tributary-demo-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn drive(running: &Running, options: &DemoOptions) -> anyhow::Result<DemoSummary> {
    let services = running.services.clone();
    let customer_service = services.customers()?.clone();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);

    // Customers first, concurrently.
    let mut customer_ids = Vec::with_capacity(options.customers);
    let limits: Vec<i64> = (0..options.customers)
        .map(|_| rng.range(50, 200) * 100)
        .collect();
    let mut created = futures::stream::iter(limits.into_iter().enumerate().map(|(i, limit)| {
        let customers = customer_service.clone();
        async move { customers.create(format!("Customer {i}"), limit).await }
    }))
    .buffer_unordered(options.concurrency.max(1));
    while let Some(c) = created.next().await {
        customer_ids.push(c?.0.customer_id);
    }

    // Both flows at once, on the same customers: their credit is shared, so the credit
    // invariant covers the race between a choreographed and an orchestrated order.
    let bars = if options.progress {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    };
    let choreographed = OptionFuture::from(options.flow.choreographs().then(|| {
        choreography(
            &services,
            &customer_ids,
            options,
            bars.add(progress_bar(options, "choreographed orders settled")),
        )
    }));
    let orchestrated = OptionFuture::from(options.flow.orchestrates().then(|| {
        orchestrated::drive(
            &services,
            &customer_ids,
            options,
            bars.add(progress_bar(options, "orchestrated sagas ended     ")),
        )
    }));
    let (choreographed, orchestrated) = tokio::join!(choreographed, orchestrated);
    let (mut choreography, orchestration) = (choreographed.transpose()?, orchestrated.transpose()?);

    // Every order is decided; let the view and the credit releases catch up, and check
    // everything.
    let state = AppState {
        services: running.services.clone(),
        health: Arc::new(running.health()),
        consistency: Consistency::new(tributary::ConsistencyKey::new(
            uuid::Uuid::now_v7().as_bytes().to_vec(),
        )),
    };
    let known: Vec<String> = customer_ids.iter().take(50).cloned().collect();
    let pairs = if options.flow.choreographs() {
        options.read_your_writes_pairs
    } else {
        0
    };
    let read_your_writes = crate::read_your_writes::measure(running, state, &known, pairs).await?;
    let mut checks = settle_and_check(running, Duration::from_secs(60)).await?;
    if read_your_writes.pairs > 0 {
        checks.push(Check {
            name: "a read with a consistency token includes the write and its saga's decision",
            ok: read_your_writes.stale_with_token == 0,
            detail: format!(
                "{} of {} reads with tokens stale, {} answered 503 after the bound ({} of {} without tokens stale)",
                read_your_writes.stale_with_token,
                read_your_writes.pairs,
                read_your_writes.not_yet_with_token,
                read_your_writes.stale_without_token,
                read_your_writes.pairs
            ),
        });
    }
    if let Some(c) = &mut choreography {
        // Counted at the end: the read-your-writes pairs are choreographed orders too.
        let state = State::read(&services).await?;
        c.orders = state.orders.len();
        c.approved = state.count(OrderState::Approved);
        c.rejected = state.count(OrderState::Rejected);
        c.cancelled = state.count(OrderState::Cancelled);
    }
    Ok(DemoSummary {
        choreography,
        orchestration,
        read_your_writes,
        checks,
    })
}

/// Offers one flow's orders at the demo's rate (if it has one) and concurrency.
struct Offer {
    started: Instant,
    rate: Option<f64>,
    permits: Arc<Semaphore>,
}

impl Offer {
    fn new(options: &DemoOptions) -> Self {
        Self {
            started: Instant::now(),
            rate: options.rate,
            permits: Arc::new(Semaphore::new(options.concurrency.max(1))),
        }
    }

    /// Waits until order `i` is due and one of the concurrent slots is free; the slot is held
    /// until the permit is dropped.
    async fn slot(&self, i: usize) -> anyhow::Result<tokio::sync::OwnedSemaphorePermit> {
        if let Some(rate) = self.rate {
            let due = self.started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        Ok(self.permits.clone().acquire_owned().await?)
    }
}

/// One of `customers`, or (as often as `unknown_fraction` says) one nobody knows.
fn pick_customer(rng: &mut Rng, customers: &[String], unknown_fraction: f64) -> String {
    if rng.chance(unknown_fraction) || customers.is_empty() {
        uuid::Uuid::now_v7().to_string()
    } else {
        customers[(rng.next() % customers.len() as u64) as usize].clone()
    }
}

/// The `q` quantile of sorted `durations`, in ms (0 when there are none).
fn percentile(durations: &[Duration], q: f64) -> f64 {
    let n = durations.len();
    durations
        .get(((n as f64 * q).ceil() as usize).clamp(1, n.max(1)) - 1)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The choreographed flow: `options.orders` orders without lines, some of the approved ones
/// cancelled; returns once every order is decided and every cancellation done.
async fn choreography(
    services: &Services,
    customer_ids: &[String],
    options: &DemoOptions,
    bar: ProgressBar,
) -> anyhow::Result<ChoreographyFigures> {
    let order_service = services.orders()?.clone();
    let mut rng = Rng(0x5eed_1234_abcd_ef02);
    // Watch the order service's own events: when each order settles, and cancel some
    // approved ones (the compensation releases their credit).
    let created_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let settled = Arc::new(AtomicU64::new(0));
    let cancelled = Arc::new(AtomicU64::new(0));
    let store = order_service.database().event_store();
    let start = store
        .read_all(Position::START, usize::MAX)
        .await?
        .last()
        .map_or(Position::START, |e| e.position.next());
    let cancels: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
    let watcher = {
        let (created_at, latencies, settled, cancelled) = (
            created_at.clone(),
            latencies.clone(),
            settled.clone(),
            cancelled.clone(),
        );
        let cancels = cancels.clone();
        let orders = order_service.clone();
        let cancel_fraction = options.cancel_fraction;
        let mut events = store.subscribe_all(start);
        tokio::spawn(async move {
            let mut rng = Rng(0xcafe_f00d_1234_5678);
            while let Some(Ok(e)) = events.next().await {
                let id = e.envelope.subject.clone().unwrap_or_default();
                match e.envelope.event_type.as_str() {
                    "OrderApproved" | "OrderRejected" => {
                        let now = Instant::now();
                        // Creation is recorded when the create call returns; the decision may
                        // land before that bookkeeping, so wait for it.
                        let began = loop {
                            if let Some(t) = created_at
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get(&id)
                            {
                                break *t;
                            }
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        };
                        latencies
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(now.saturating_duration_since(began));
                        if e.envelope.event_type == "OrderApproved" && rng.chance(cancel_fraction) {
                            let orders = orders.clone();
                            let cancelled = cancelled.clone();
                            cancels
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(tokio::spawn(async move {
                                    if orders.cancel(&id).await.is_ok() {
                                        cancelled.fetch_add(1, Ordering::Relaxed);
                                    }
                                }));
                        }
                        // Counted last, so that a cancellation it starts is already known
                        // when the count completes.
                        settled.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
    };

    let offer = Offer::new(options);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..options.orders {
        let permit = offer.slot(i).await?;
        let customer = pick_customer(&mut rng, customer_ids, options.unknown_customer_fraction);
        let total = rng.range(5, 40) * 100;
        let (orders, created_at) = (order_service.clone(), created_at.clone());
        tasks.spawn(async move {
            let o = orders.create(customer, total).await;
            if let Ok(o) = &o {
                created_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(o.0.order_id.clone(), Instant::now());
            }
            drop(permit);
            o.map(|_| ())
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
        bar.set_position(settled.load(Ordering::Relaxed));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while settled.load(Ordering::Relaxed) < options.orders as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "orders did not settle within two minutes"
        );
        bar.set_position(settled.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds_to_settle = offer.started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let pending: Vec<_> = std::mem::take(&mut *cancels.lock().unwrap_or_else(|p| p.into_inner()));
    for c in pending {
        c.await?;
    }
    watcher.abort();
    let mut l = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    l.sort_unstable();
    Ok(ChoreographyFigures {
        orders: options.orders,
        approved: 0,
        rejected: 0,
        cancelled: cancelled.load(Ordering::Relaxed) as usize,
        seconds_to_settle,
        orders_per_sec: options.orders as f64 / seconds_to_settle,
        latency_p50_ms: percentile(&l, 0.5),
        latency_p99_ms: percentile(&l, 0.99),
    })
}

/// Waits until the invariants hold (or `within` passes) and returns the final checks.
async fn settle_and_check(running: &Running, within: Duration) -> anyhow::Result<Vec<Check>> {
    let deadline = Instant::now() + within;
    loop {
        let checks = invariants::all(&running.services, running.backends.broker.as_ref()).await?;
        if checks.iter().all(|c| c.ok) || Instant::now() > deadline {
            return Ok(checks);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn progress_bar(options: &DemoOptions, label: &str) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(options.orders as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {label} {{pos}}/{{len}} [{{bar:40}}] {{per_sec}} {{elapsed}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}
