//! The crash test of the capture (issue 6, "Proof"): the capture runs as a child process —
//! this test binary run again as `cdc_crash_worker`, publishing into the embedded broker —
//! and is killed with SIGKILL at random points, again and again, while a producer commits
//! small transactions over many keys and, now and then, one 10,000-row transaction; some
//! kills are aimed at the middle of that transaction. Then the checker compares what the
//! database committed with what the broker stored: nothing lost, nothing phantom, per-key
//! order kept, nothing stored twice (re-published changes carry the same ids, which the
//! broker deduplicates), and re-publishing bounded by the batch and transaction in flight.

mod common;
mod crash_kit;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tributary_cdc::{
    CdcConfig, PgReplicationConfig, PublicationName, SlotName, TableCapture, TableConfig,
};
use tributary_testkit::checker::DeliveryCheck;

use common::{broker, confirmed_flush, current_lsn, envelope, read_topic};
use crash_kit::{BIG, LoggingBroker, Worker, kill_rounds, published};
use support::PrivatePostgres;

const BATCH: usize = 500;
const ROUNDS: usize = 24;

fn worker_config(port: u16, db: &str) -> Result<CdcConfig> {
    Ok(CdcConfig::default()
        .with_connection(
            PgReplicationConfig::new("127.0.0.1", port, "postgres", db)
                .with_status_interval(Duration::from_millis(200)),
        )
        .with_name("crash-capture")
        .with_slot(SlotName::new("cdc")?)
        .with_publication(PublicationName::new("pub")?)
        .with_tables(TableCapture::only(vec![
            TableConfig::new("ledger").with_key_columns(["k"]),
        ]))
        .with_batch_size(BATCH)
        .with_heartbeat_interval(Some(Duration::from_millis(300)))
        .with_lease_check_interval(Duration::from_millis(200))
        .with_idle_wait(Duration::from_millis(50)))
}

/// The child: runs the capture until killed. Does nothing unless started by the crash test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the crash test's child process, started by the test itself"]
async fn cdc_crash_worker() -> Result<()> {
    let (Ok(port), Ok(db), Ok(dir)) = (
        std::env::var("CDC_CRASH_PORT"),
        std::env::var("CDC_CRASH_DB"),
        std::env::var("CDC_CRASH_DIR"),
    ) else {
        return Ok(());
    };
    let dir = PathBuf::from(dir);
    let broker = LoggingBroker::open_in(&dir)?;
    let result = tributary_cdc::capture(
        worker_config(port.parse()?, &db)?,
        broker,
        CancellationToken::new(),
    )
    .await;
    eprintln!("capture ended: {result:?}");
    result?;
    Ok(())
}

/// Commits small transactions (1–3 rows over 30 keys, per-key sequence numbers in commit
/// order) until stopped; when `big` is set, one transaction of 10,000 rows on key `big`.
fn producer(
    pg: Arc<PrivatePostgres>,
    db: &'static str,
    stop: Arc<AtomicBool>,
    big: Arc<AtomicBool>,
    bigs: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Result<u64>> {
    std::thread::spawn(move || {
        let mut rng = rand::rng();
        let mut seqs: HashMap<String, u64> = HashMap::new();
        let mut rows = 0;
        while !stop.load(Ordering::SeqCst) {
            let mut script = String::new();
            if big.swap(false, Ordering::SeqCst) {
                let seq = seqs.entry("big".into()).or_default();
                script.push_str(&format!(
                    "INSERT INTO ledger (k, seq) SELECT 'big', g FROM generate_series({}, {}) g;\n",
                    *seq + 1,
                    *seq + BIG
                ));
                *seq += BIG;
                rows += BIG;
                bigs.fetch_add(1, Ordering::SeqCst);
            }
            for _ in 0..20 {
                script.push_str("BEGIN;\n");
                for _ in 0..rng.random_range(1..=3) {
                    let key = format!("k{}", rng.random_range(0..30));
                    let seq = seqs.entry(key.clone()).or_default();
                    *seq += 1;
                    script.push_str(&format!(
                        "INSERT INTO ledger (k, seq) VALUES ('{key}', {seq});\n"
                    ));
                    rows += 1;
                }
                script.push_str("COMMIT;\n");
            }
            pg.sql(db, &script)?;
        }
        Ok(rows)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing_and_stores_nothing_twice() -> Result<()> {
    let db = "crash";
    let Some(pg) = PrivatePostgres::start_or_skip(
        "sigkill_at_random_points_loses_nothing_and_stores_nothing_twice",
        &[],
    ) else {
        return Ok(());
    };
    pg.create_database(db)?;
    pg.sql(
        db,
        "CREATE TABLE ledger (id bigserial PRIMARY KEY, k text NOT NULL, seq bigint NOT NULL);
         CREATE PUBLICATION pub FOR TABLE ledger;",
    )?;
    let pg = Arc::new(pg);
    let dir = tempfile::tempdir()?;

    // The first worker creates the slot before the load starts.
    let env = [
        ("CDC_CRASH_PORT", pg.port.to_string()),
        ("CDC_CRASH_DB", db.to_owned()),
        ("CDC_CRASH_DIR", dir.path().display().to_string()),
    ];
    let start = |round, kill_after_big| {
        Worker::start("cdc_crash_worker", &env, dir.path(), round, kill_after_big)
    };
    let first = start(0, None)?;
    let mut logs = vec![first.log(dir.path())];
    common::wait_streaming(&pg, db).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let big = Arc::new(AtomicBool::new(false));
    let bigs = Arc::new(AtomicUsize::new(0));
    let producing = producer(pg.clone(), db, stop.clone(), big.clone(), bigs.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill();

    let mid_big_kills = kill_rounds(ROUNDS, &start, dir.path(), &big, &bigs, &mut logs).await?;
    stop.store(true, Ordering::SeqCst);
    let rows = producing
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;

    // Recovery: one more worker runs until the slot confirmed everything committed.
    let end = current_lsn(&pg, db)?;
    let recovering = start(ROUNDS + 1, None)?;
    logs.push(recovering.log(dir.path()));
    let deadline = Instant::now() + Duration::from_secs(180);
    while confirmed_flush(&pg, db)? < end {
        ensure!(Instant::now() < deadline, "the capture did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    recovering.kill();

    // What the database committed, per key in commit order.
    let mut check = DeliveryCheck::default();
    for line in pg
        .sql(db, "SELECT k || ' ' || seq FROM ledger ORDER BY id;")?
        .lines()
    {
        let (key, seq) = line.split_once(' ').context("k seq")?;
        check
            .committed
            .entry(key.to_owned())
            .or_default()
            .push(seq.parse()?);
    }
    // What the broker stored, per key in partition order.
    let broker = broker(&dir)?;
    let stored = read_topic(broker.as_ref(), "ledger").await?;
    for delivery in &stored {
        let data = envelope(delivery).data.to_value();
        let seq = data["new"]["seq"].as_u64().context("seq")?;
        check
            .applied
            .entry(delivery.key.clone())
            .or_default()
            .push(seq);
    }
    let report = check.report();

    // What the workers published, copies included.
    let mut times: HashMap<String, usize> = HashMap::new();
    let mut seen_before: std::collections::HashSet<String> = Default::default();
    let mut republished_per_start = Vec::new();
    let mut total_published = 0;
    for log in &logs {
        let lines = published(log);
        total_published += lines.len();
        let again = |big: bool| {
            lines
                .iter()
                .filter(|(key, id)| (key == "big") == big && seen_before.contains(id))
                .count()
        };
        // (small transactions, the big one)
        republished_per_start.push((again(false), again(true)));
        for (_, id) in lines {
            *times.entry(id.clone()).or_default() += 1;
            seen_before.insert(id);
        }
    }
    let duplicates = total_published - times.len();
    let max_small = republished_per_start.iter().map(|r| r.0).max().unwrap_or(0);
    let max_big = republished_per_start.iter().map(|r| r.1).max().unwrap_or(0);
    let per_key: BTreeMap<_, _> = check.committed.iter().map(|(k, v)| (k, v.len())).collect();
    eprintln!(
        "crash test: {kills} kills ({mid_big_kills} in a {BIG}-row transaction), {rows} rows committed \
         ({} big transactions), {} stored, {total_published} published, {duplicates} re-published \
         copies (per restart, small transactions / the big one: {republished_per_start:?}), \
         {} keys; {report}",
        bigs.load(Ordering::SeqCst),
        stored.len(),
        per_key.len(),
        kills = ROUNDS + 1,
    );
    ensure!(report.is_clean(), "{report}");
    assert_eq!(
        report.committed as u64, rows,
        "the producer's rows are all in the table"
    );
    assert_eq!(stored.len(), report.committed, "stored once each");
    ensure!(
        mid_big_kills >= ROUNDS / 4,
        "kills landed in the big transaction"
    );
    // Re-published after a kill: the batch in flight (and one marked whose confirmation had
    // not reached the server yet), or the big transaction in flight — up to all of it, when
    // the kill came after its last row was published and before its end was confirmed.
    ensure!(
        max_small <= 2 * BATCH && max_big <= BIG as usize,
        "re-publishing after a kill is bounded by what was in flight: {republished_per_start:?}"
    );
    Ok(())
}
