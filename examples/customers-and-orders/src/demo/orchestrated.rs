//! The demo's orchestrated flow: products restocked, then orders with line items, each a
//! `CreateOrder` saga that reserves the customer's credit and the inventory's stock and
//! compensates when either is refused (unknown customer, too little credit, too little stock,
//! a product nobody stocks).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tributary::saga::{SagaState, SagaSummary};

use super::{DemoOptions, Offer, Rng, percentile, pick_customer};
use crate::orchestration::{APPROVED, Line, REJECTED};
use crate::system::Services;

/// Products the demo stocks; orders name one to three of them.
const PRODUCTS: usize = 20;

/// What the orchestrated flow measured.
#[derive(Clone, Debug)]
pub struct OrchestrationFigures {
    pub orders: usize,
    pub approved: usize,
    pub rejected: usize,
    /// Sagas that ended `Completed` / `Compensated` (every saga ends one way or the other:
    /// the invariants check it).
    pub completed: usize,
    pub compensated: usize,
    /// First saga started → last saga ended, by the sagas' own timestamps.
    pub seconds_to_finish: f64,
    pub sagas_per_sec: f64,
    /// Saga started → ended, in ms.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

/// Restocks the products, places `options.orders` orders with lines at the demo's
/// concurrency (or rate), and waits until every saga ended.
///
/// # Errors
/// When a service fails, or the sagas do not end within two minutes.
pub(super) async fn drive(
    services: &Services,
    customers: &[String],
    options: &DemoOptions,
    bar: ProgressBar,
) -> anyhow::Result<OrchestrationFigures> {
    let (inventory, orders) = (services.inventory()?, services.orchestrated()?.clone());
    let mut rng = Rng(0x0bad_cafe_5eed_0042);
    let products: Vec<String> = (0..PRODUCTS).map(|i| format!("product-{i:02}")).collect();
    // An order asks for six units on average: stock for about half of the demand, so that
    // some sagas are compensated for stock after their credit was reserved.
    let per_product = (options.orders * 3 / PRODUCTS).max(1) as i64;
    for p in &products {
        inventory.restock(p, per_product).await?;
    }

    let offer = Offer::new(options);
    let mut tasks = tokio::task::JoinSet::new();
    // A data directory used before holds older sagas: the figures are this run's.
    let mut ours = HashSet::new();
    for i in 0..options.orders {
        let permit = offer.slot(i).await?;
        let customer = pick_customer(&mut rng, customers, options.unknown_customer_fraction);
        let lines = order_lines(&mut rng, &products, options.unknown_customer_fraction);
        let total = rng.range(5, 40) * 100;
        let orders = orders.clone();
        tasks.spawn(async move {
            let placed = orders.place(&customer, total, lines).await;
            drop(permit);
            placed
        });
        while let Some(done) = tasks.try_join_next() {
            ours.insert(done??);
        }
    }
    while let Some(done) = tasks.join_next().await {
        ours.insert(done??);
    }

    let sagas = until_all_ended(&orders, &ours, &bar).await?;
    bar.finish_and_clear();
    let mut placed = orders.all().await?;
    placed.retain(|o| ours.contains(&o.order_id));
    let count = |state: &str| placed.iter().filter(|o| o.state == state).count();
    let ended = |state: SagaState| sagas.iter().filter(|s| s.state == state).count();
    let mut latencies: Vec<Duration> = sagas
        .iter()
        .map(|s| (s.updated_at - s.started_at).to_std().unwrap_or_default())
        .collect();
    latencies.sort_unstable();
    let first = sagas.iter().map(|s| s.started_at).min();
    let last = sagas.iter().map(|s| s.updated_at).max();
    let seconds_to_finish = match (first, last) {
        (Some(a), Some(b)) => (b - a).to_std().unwrap_or_default().as_secs_f64(),
        _ => 0.0,
    };
    Ok(OrchestrationFigures {
        orders: placed.len(),
        approved: count(APPROVED),
        rejected: count(REJECTED),
        completed: ended(SagaState::Completed),
        compensated: ended(SagaState::Compensated),
        seconds_to_finish,
        sagas_per_sec: sagas.len() as f64 / seconds_to_finish.max(f64::EPSILON),
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
    })
}

/// One to three distinct products, one to five of each; now and then (as often as an unknown
/// customer) a product that nobody stocks.
fn order_lines(rng: &mut Rng, products: &[String], unknown: f64) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    for _ in 0..rng.range(1, 3) {
        let product_id = products[(rng.next() % products.len() as u64) as usize].clone();
        if lines.iter().all(|l| l.product_id != product_id) {
            lines.push(Line {
                product_id,
                quantity: rng.range(1, 5),
            });
        }
    }
    if rng.chance(unknown) {
        lines.push(Line {
            product_id: "discontinued".into(),
            quantity: 1,
        });
    }
    lines
}

/// Polls the sagas until all of `ours` ended; returns them.
async fn until_all_ended(
    orders: &crate::orchestration::OrchestratedOrders,
    ours: &HashSet<String>,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<SagaSummary>> {
    let n = ours.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut sagas = orders.sagas().await?;
        sagas.retain(|s| ours.contains(s.id.as_str()));
        let ended = sagas.iter().filter(|s| s.state.is_final()).count();
        bar.set_position(ended as u64);
        if ended >= n {
            return Ok(sagas);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {ended} of {n} sagas ended within two minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
