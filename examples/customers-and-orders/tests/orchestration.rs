//! The orchestrated `CreateOrder` flow on the embedded deployment (a SQLite file per service
//! and the embedded broker), started as every deployment starts (`system::start`): orders
//! that fit, orders beyond the customer's credit, orders beyond the stock and orders for
//! unknown customers and products, then the application's invariants.

use std::time::{Duration, Instant};

use customers_and_orders::invariants::{self, State};
use customers_and_orders::orchestration::{APPROVED, Line, REJECTED};
use customers_and_orders::order::OrderState;
use customers_and_orders::system::{self, Backends};
use tributary::saga::SagaState;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orchestrated_orders_reserve_credit_and_stock_or_release_both() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let running = system::start(Backends::embedded(dir.path()).await?).await?;
    let customers = running.services.customers()?.clone();
    let inventory = running.services.inventory()?.clone();
    let orders = running.services.orchestrated()?.clone();

    let mut ids = Vec::new();
    for (name, limit) in [("Acme", 1000), ("Bolt", 300), ("Cogs", 50)] {
        let (c, _) = customers.create(name.into(), limit).await?;
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
    let state = State::read(&running.services).await?;
    let (approved, rejected) = (
        state.orchestrated_count(APPROVED),
        state.orchestrated_count(REJECTED),
    );
    assert_eq!(approved + rejected, placed.len(), "every order settled");
    assert!(
        approved > 0 && rejected >= 7,
        "{approved} approved, {rejected} rejected"
    );
    // The stock and saga invariants are each checked here on their own, so that a break
    // names itself; then every invariant of the application, once the view caught up.
    for check in [
        invariants::stock(&state),
        invariants::sagas(&state),
        invariants::credit(&state),
    ] {
        assert!(check.ok, "{check:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let checks = loop {
        let checks = invariants::all(&running.services, running.backends.broker.as_ref()).await?;
        if checks.iter().all(|c| c.ok) || Instant::now() > deadline {
            break checks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    // The order-history view lists the orchestrated orders of each customer, settled.
    let history = running.services.history()?.clone();
    for o in state
        .orchestrated
        .iter()
        .filter(|o| ids.contains(&o.customer_id))
    {
        let view = history
            .get(&o.customer_id)
            .await?
            .expect("a known customer");
        let listed = view
            .orders
            .get(&o.order_id)
            .map(|s| (s.order_total, s.state));
        let state = if o.state == APPROVED {
            OrderState::Approved
        } else {
            OrderState::Rejected
        };
        assert_eq!(listed, Some((o.order_total, state)), "order {}", o.order_id);
    }
    running.stop().await;
    Ok(())
}
