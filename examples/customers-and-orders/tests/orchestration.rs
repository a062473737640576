//! The orchestrated `CreateOrder` flow on the embedded deployment (a SQLite file per service
//! and the embedded broker): orders that fit, orders beyond the customer's credit, orders
//! beyond the stock and orders for unknown customers and products, then the invariants.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use customers_and_orders::customer::CustomerService;
use customers_and_orders::orchestration::{
    self, Databases, Line, OrchestratedOrders, inventory::InventoryService,
};
use tributary::saga::SagaState;
use tributary::sqlite::{SqliteBroker, SqliteBrokerConfig, SqliteConfig, SqliteDatabase};
use tributary::{CancellationToken, Database};

fn open(dir: &std::path::Path, name: &str) -> anyhow::Result<Arc<dyn Database>> {
    let config = SqliteConfig::default().with_poll_every(Duration::from_millis(50));
    Ok(Arc::new(SqliteDatabase::open(
        dir.join(format!("{name}.db")),
        config,
    )?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orchestrated_orders_reserve_credit_and_stock_or_release_both() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Arc::new(SqliteBroker::open(
        dir.path().join("broker.db"),
        SqliteBrokerConfig::default(),
    )?);
    let dbs = Databases {
        customer: open(dir.path(), "customer")?,
        order: open(dir.path(), "order")?,
        inventory: open(dir.path(), "inventory")?,
    };
    let customers = CustomerService::new(dbs.customer.clone());
    let inventory = InventoryService::new(dbs.inventory.clone());
    let orders = OrchestratedOrders::new(dbs.order.clone(), broker.clone());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(orchestration::run(
        dbs,
        broker,
        orders.clone(),
        shutdown.clone(),
    ));

    let mut limits = HashMap::new();
    let mut ids = Vec::new();
    for (name, limit) in [("Acme", 1000), ("Bolt", 300), ("Cogs", 50)] {
        let (c, _) = customers.create(name.into(), limit).await?;
        limits.insert(c.customer_id.clone(), limit);
        ids.push(c.customer_id);
    }
    let initial = [("apple", 20), ("pear", 5)];
    for (p, q) in initial {
        inventory.restock(p, q).await?;
    }
    let line = |p: &str, q: i64| Line {
        product_id: p.into(),
        quantity: q,
    };
    let mut placed = Vec::new();
    for i in 0..30usize {
        let customer = &ids[i % 3];
        let lines = match i % 5 {
            0 => vec![line("apple", 2), line("pear", 1)],
            1 => vec![line("apple", 1)],
            2 => vec![line("pear", 2)],
            3 => vec![line("plum", 1)], // unknown product: the stock step fails
            _ => vec![line("apple", 3)],
        };
        placed.push(
            orders
                .place(customer, 40 + (i as i64 % 4) * 30, lines)
                .await?,
        );
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    placed.push(orders.place(&unknown, 10, vec![line("apple", 1)]).await?);
    assert!(
        orders
            .place(&ids[0], 10, vec![line("apple", 1), line("apple", 2)])
            .await
            .is_err(),
        "a product listed twice is refused"
    );

    // Every saga ends Completed or Compensated (awaited on the order database's commits).
    let mut changes = orders.database().commits();
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let sagas = orders.sagas().await?;
            if sagas.len() == placed.len() && sagas.iter().all(|s| s.state.is_final()) {
                return Ok::<_, anyhow::Error>(sagas);
            }
            changes.changed().await?;
        }
    })
    .await??;
    for s in &finished {
        assert!(
            matches!(s.state, SagaState::Completed | SagaState::Compensated),
            "{s:#?}"
        );
    }
    let approved: Vec<_> = orders
        .all()
        .await?
        .into_iter()
        .filter(|o| o.state == "APPROVED")
        .collect();
    let rejected = orders
        .all()
        .await?
        .into_iter()
        .filter(|o| o.state == "REJECTED")
        .count();
    assert_eq!(
        approved.len() + rejected,
        placed.len(),
        "every order settled"
    );
    assert!(
        !approved.is_empty() && rejected >= 7,
        "{} approved, {rejected} rejected",
        approved.len()
    );

    // Stock reserved = the approved orders' lines, never negative, nothing lost.
    for (p, initial) in initial {
        let product = inventory.get(p).await?.expect("product");
        let wanted: i64 = approved
            .iter()
            .flat_map(|o| &o.lines)
            .filter(|l| l.product_id == p)
            .map(|l| l.quantity)
            .sum();
        assert_eq!(product.reserved(), wanted, "{p}");
        assert!(product.available >= 0);
        assert_eq!(product.available + product.reserved(), initial, "{p}");
        for order_id in product.reservations.keys() {
            assert!(
                approved.iter().any(|o| &o.order_id == order_id),
                "a reservation without its approved order"
            );
        }
    }
    // Credit reserved = the approved orders' totals, within the limit.
    for c in customers.all().await? {
        let wanted: i64 = approved
            .iter()
            .filter(|o| o.customer_id == c.customer_id)
            .map(|o| o.order_total)
            .sum();
        assert_eq!(c.reserved(), wanted, "{}", c.name);
        assert!(c.reserved() <= limits[&c.customer_id]);
    }
    // No compensation without its step: a compensated saga undid only steps it had done.
    for s in &finished {
        let saga = orders.saga(s.id.as_str()).await?.expect("saga");
        for h in saga.history.iter().filter(|h| h.what == "step compensated") {
            let done = saga
                .history
                .iter()
                .any(|d| d.what == "step succeeded" && d.step == h.step)
                || saga
                    .history
                    .iter()
                    .any(|d| d.what == "deadline passed" && d.step == h.step);
            assert!(done, "compensated step {:?} never ran: {saga:#?}", h.step);
        }
    }
    shutdown.cancel();
    running.await??;
    Ok(())
}
