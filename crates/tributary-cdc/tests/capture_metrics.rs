//! The captures' own metrics, read as Prometheus would read them: a PostgreSQL capture (a
//! private server) and a binlog capture (the shared MariaDB) each publish a change, and what
//! they recorded is checked against what happened. One test binary installs one recorder.

mod common;
mod mysql;
mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tributary_cdc::metrics::names;
use tributary_cdc::{TableCapture, TableConfig};

use support::PrivatePostgres;

fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("no other recorder in this test binary");
        handle
    })
}

/// The value of gauge `name{slot="<slot>"}` in the exporter's text.
fn gauge(name: &str, slot: &str) -> Option<f64> {
    let label = format!("slot=\"{slot}\"");
    prometheus()
        .render()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// Waits (polling the exporter every 50 ms, at most 60 s) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        if Instant::now() > deadline {
            bail!("never: {what}\n{}", prometheus().render());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_capture_records_its_confirmed_lsn_and_the_ages_of_confirmation_and_heartbeat()
-> Result<()> {
    let test =
        "a_postgres_capture_records_its_confirmed_lsn_and_the_ages_of_confirmation_and_heartbeat";
    // Before the capture exists: its handles belong to the recorder installed then.
    prometheus();
    let started = Instant::now();
    let Some(pg) = PrivatePostgres::start_or_skip(test, &[]) else {
        return Ok(());
    };
    let db = "metered";
    pg.create_database(db)?;
    pg.sql(
        db,
        "CREATE TABLE items (id int PRIMARY KEY);
         CREATE PUBLICATION pub FOR TABLE items;",
    )?;
    let dir = tempfile::tempdir()?;
    let broker = common::broker(&dir)?;
    let tables = TableCapture::only(vec![TableConfig::new("items")]);
    let running =
        common::Running::start(common::config(&pg, db).with_tables(tables), broker.clone())?;
    common::wait_streaming(&pg, db).await?;
    let before = common::current_lsn(&pg, db)?.as_u64() as f64;
    pg.sql(db, "INSERT INTO items VALUES (1);")?;
    common::wait_for(broker.as_ref(), "items", 1).await?;
    // The insert's commit is confirmed once the broker has it (heartbeats move the position
    // on after it): the gauge passes the position before the insert.
    until("the confirmed LSN passes the insert", || {
        gauge(names::CONFIRMED_LSN, "cdc").is_some_and(|lsn| lsn > before)
    })
    .await?;
    // It is a position this capture confirmed: never ahead of what the source says.
    let recorded = gauge(names::CONFIRMED_LSN, "cdc").context("recorded")?;
    let confirmed = running.source.confirmed().as_u64() as f64;
    ensure!(
        recorded <= confirmed,
        "gauge {recorded}, source {confirmed}"
    );
    // The capture writes a heartbeat every 300 ms (the tests' setting) and reads it back.
    until("a heartbeat came back through the stream", || {
        gauge(names::HEARTBEAT_AGE_SECONDS, "cdc").is_some()
    })
    .await?;
    // Ages are measured from events of this test, so they are below its running time.
    let bound = started.elapsed().as_secs_f64();
    for name in [names::CONFIRMED_AGE_SECONDS, names::HEARTBEAT_AGE_SECONDS] {
        let age = gauge(name, "cdc").context(name)?;
        ensure!(
            (0.0..=bound).contains(&age),
            "{name} = {age}, test ran {bound} s"
        );
    }
    running.stop().await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binlog_capture_records_the_age_of_its_stored_position() -> Result<()> {
    prometheus();
    let started = Instant::now();
    let Some(db) =
        mysql::TestDb::create_or_skip("a_binlog_capture_records_the_age_of_its_stored_position")
    else {
        return Ok(());
    };
    db.sql("CREATE TABLE orders (id INT PRIMARY KEY);")?;
    let dir = tempfile::tempdir()?;
    let broker = mysql::broker(&dir)?;
    let base = mysql::config(&db.url()).with_capture("metered");
    let config = base
        .clone()
        .with_tables(TableCapture::only(vec![base.table("orders")]));
    let running = mysql::Running::start(config, broker.clone())?;
    until("the capture streams", || {
        db.sql("SELECT status FROM tributary_cdc_binlog WHERE capture = 'metered'")
            .is_ok_and(|s| s == "streaming")
    })
    .await?;
    db.sql("INSERT INTO orders VALUES (1);")?;
    mysql::wait_for(broker.as_ref(), "orders", 1).await?;
    until("the stored position's age is recorded", || {
        gauge(names::CONFIRMED_AGE_SECONDS, "metered").is_some()
    })
    .await?;
    let age = gauge(names::CONFIRMED_AGE_SECONDS, "metered").context("age")?;
    let bound = started.elapsed().as_secs_f64();
    ensure!(
        (0.0..=bound).contains(&age),
        "age {age}, test ran {bound} s"
    );
    ensure!(
        gauge(names::CONFIRMED_LSN, "metered").is_none(),
        "a binlog position is not an LSN"
    );
    ensure!(
        gauge(names::HEARTBEAT_AGE_SECONDS, "metered").is_none(),
        "the binlog stream carries no heartbeat of the capture's own"
    );
    running.stop().await??;
    Ok(())
}
