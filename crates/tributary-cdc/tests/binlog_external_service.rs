//! A service written without Tributary — `tests/mysql/orders_service.sh`, a shell script
//! using only the `mariadb` client — writes orders and, in the same transactions, outbox
//! rows. One binlog capture publishes both (table changes of `orders` keyed by customer, and
//! the outbox) into NATS JetStream; the reference checker compares what MariaDB committed with
//! what NATS holds: nothing lost, nothing phantom (rolled-back rows never appear), nothing
//! twice, per-key order kept.

mod mysql;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tributary_cdc::capture::{OutboxCapture, TableCapture};
use tributary_core::{Broker, Envelope, Topic};
use tributary_nats::{NatsBroker, NatsBrokerConfig};
use tributary_testkit::checker::DeliveryCheck;

use mysql::{Running, TestDb, config, read_topic, skip, unique, wait_streaming};

const ORDERS: usize = 400;

fn nats_url() -> String {
    std::env::var("TRIBUTARY_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_script_service_gets_its_rows_and_outbox_published_to_nats() -> Result<()> {
    let test = "a_shell_script_service_gets_its_rows_and_outbox_published_to_nats";
    let Some(db) = TestDb::create_or_skip(test) else {
        return Ok(());
    };
    let prefix = format!("BINLOGSH{}", unique().replace('_', ""));
    let nats = match NatsBroker::connect(
        NatsBrokerConfig::default()
            .with_url(nats_url())
            .with_stream_prefix(prefix),
    )
    .await
    {
        Ok(nats) => Arc::new(nats),
        Err(e) => {
            return skip(
                test,
                &format!("NATS is not reachable at {}: {e}", nats_url()),
            )
            .unwrap_or(Ok(()));
        }
    };
    // The service creates its tables on first run; run it once with no orders.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mysql/orders_service.sh");
    let args = [
        db.server.host.clone(),
        db.server.port.to_string(),
        db.server.user.clone(),
        db.name.clone(),
    ];
    let run_service = move |orders: usize| -> Result<()> {
        let status = std::process::Command::new("bash")
            .arg(script)
            .args(&args)
            .arg(orders.to_string())
            .status()
            .context("running the shell service")?;
        ensure!(status.success(), "the shell service failed: {status}");
        Ok(())
    };
    run_service(0)?;
    let run_service = Arc::new(run_service);
    let base = config(&db.url());
    let cfg = base
        .clone()
        .with_tables(TableCapture::only(vec![
            base.table("orders").with_key_columns(["customer"]),
        ]))
        .with_outbox(
            OutboxCapture::default()
                .with_table(&format!("{}.outbox", db.name))
                .with_snapshot(false),
        );
    let broker: Arc<dyn Broker> = nats.clone();
    let running = Running::start(cfg, broker.clone())?;
    wait_streaming(|q| db.sql(q)).await?;
    let service = tokio::task::spawn_blocking({
        let run_service = Arc::clone(&run_service);
        move || run_service(ORDERS)
    });

    // Wait until NATS holds every order change and every outbox event.
    let orders_expected: usize = db_count_after(
        &service,
        &db,
        "SELECT COUNT(*) + SUM(id % 7 = 0) FROM orders",
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (changes, events) = loop {
        let changes = read_topic(broker.as_ref(), "orders").await?;
        let events = read_topic(broker.as_ref(), "OrderPlaced").await?;
        if changes.len() >= orders_expected && events.len() >= ORDERS {
            break (changes, events);
        }
        ensure!(
            Instant::now() < deadline,
            "NATS holds {} of {orders_expected} changes and {} of {ORDERS} events",
            changes.len(),
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await??;

    // Table changes: per customer, the seq of each insert in commit order (updates repeat it).
    let mut check = DeliveryCheck::default();
    for line in db
        .sql("SELECT customer, seq FROM orders ORDER BY seq")?
        .lines()
    {
        let (customer, seq) = line.split_once('\t').context("customer seq")?;
        check
            .committed
            .entry(format!("row:{customer}"))
            .or_default()
            .push(seq.parse()?);
    }
    for line in db
        .sql("SELECT message_key, JSON_VALUE(payload, '$.data.seq') FROM outbox ORDER BY id")?
        .lines()
    {
        let (customer, seq) = line.split_once('\t').context("key seq")?;
        check
            .committed
            .entry(format!("outbox:{customer}"))
            .or_default()
            .push(seq.parse()?);
    }
    let mut updates = 0;
    for delivery in &changes {
        let envelope = Envelope::from_json(&delivery.payload)?;
        let data = envelope.data.to_value();
        if envelope.event_type == "orders.updated" {
            updates += 1;
            ensure!(
                data["old"]["seq"] == data["new"]["seq"],
                "an update keeps its seq"
            );
            continue;
        }
        ensure!(
            envelope.event_type == "orders.inserted",
            "{}",
            envelope.event_type
        );
        ensure!(
            delivery.key == data["new"]["customer"].as_str().unwrap_or_default(),
            "keyed by customer"
        );
        check
            .applied
            .entry(format!("row:{}", delivery.key))
            .or_default()
            .push(data["new"]["seq"].as_u64().context("seq")?);
    }
    for delivery in &events {
        // Published exactly as the script wrote it: its own id, key and envelope.
        let envelope = Envelope::from_json(&delivery.payload)?;
        ensure!(
            Some(envelope.id) == delivery.id,
            "the outbox row's event id is the message id"
        );
        check
            .applied
            .entry(format!("outbox:{}", delivery.key))
            .or_default()
            .push(envelope.data.to_value()["seq"].as_u64().context("seq")?);
    }
    let report = check.report();
    eprintln!("shell service through the binlog into NATS: {report}; {updates} updates");
    ensure!(report.is_clean(), "{report}");
    ensure!(report.committed == 2 * ORDERS, "{report}");
    ensure!(updates == ORDERS / 7, "{updates} updates");
    for topic in ["orders", "OrderPlaced"] {
        let _ = nats.delete_topic(&Topic::new(topic)?).await;
    }
    Ok(())
}

/// Waits for the service to finish, then counts.
async fn db_count_after(
    service: &tokio::task::JoinHandle<Result<()>>,
    db: &TestDb,
    sql: &str,
) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !service.is_finished() {
        ensure!(
            Instant::now() < deadline,
            "the shell service did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(db.sql(sql)?.trim().parse()?)
}
