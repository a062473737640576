//! The crash test of the binlog capture, as for PostgreSQL (`crash.rs`): the capture runs as
//! a child process — this test binary run again as `binlog_crash_worker`, publishing into the
//! embedded broker — and is killed with SIGKILL 25 times while a producer commits small
//! transactions over many keys and, now and then, one 10,000-row transaction; some kills are
//! aimed at the middle of that transaction. Then the checker compares what MariaDB committed
//! with what the broker stored: nothing lost, nothing phantom, per-key order kept, nothing
//! stored twice (re-published changes carry the same ids), and re-publishing bounded by the
//! batch and transaction in flight.

mod crash_kit;
mod mysql;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tributary_cdc::BinlogConfig;
use tributary_cdc::capture::TableCapture;
use tributary_testkit::checker::DeliveryCheck;

use crash_kit::{BIG, LoggingBroker, Worker, kill_rounds, published};
use mysql::{Server, TestDb, envelope, read_topic, wait_streaming};

const BATCH: usize = 500;
const ROUNDS: usize = 24;

fn worker_config(url: &str) -> BinlogConfig {
    let base = BinlogConfig::default()
        .with_url(url)
        .with_name("crash-capture")
        .with_capture("cdc");
    base.clone()
        .with_tables(TableCapture::only(vec![
            base.table("ledger").with_key_columns(["k"]),
        ]))
        .with_batch_size(BATCH)
        .with_heartbeat_interval(Some(Duration::from_millis(300)))
        .with_lease_check_interval(Duration::from_millis(200))
        .with_idle_wait(Duration::from_millis(50))
}

/// The child: runs the capture until killed. Does nothing unless started by the crash test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the crash test's child process, started by the test itself"]
async fn binlog_crash_worker() -> Result<()> {
    let (Ok(url), Ok(dir)) = (
        std::env::var("BINLOG_CRASH_URL"),
        std::env::var("BINLOG_CRASH_DIR"),
    ) else {
        return Ok(());
    };
    let dir = PathBuf::from(dir);
    let broker = LoggingBroker::open_in(&dir)?;
    let result =
        tributary_cdc::capture_binlog(worker_config(&url), broker, CancellationToken::new()).await;
    eprintln!("capture ended: {result:?}");
    result?;
    Ok(())
}

/// Commits small transactions (1–3 rows over 30 keys, per-key sequence numbers in commit
/// order) until stopped; when `big` is set, one transaction of 10,000 rows on key `big`.
fn producer(
    server: Server,
    db: String,
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
                    "INSERT INTO ledger (k, seq) SELECT 'big', seq + {} FROM seq_1_to_{BIG};\n",
                    *seq
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
            server.sql(&db, &script)?;
        }
        Ok(rows)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing_and_stores_nothing_twice() -> Result<()> {
    let Some(db) = TestDb::create_or_skip(
        "binlog: sigkill_at_random_points_loses_nothing_and_stores_nothing_twice",
    ) else {
        return Ok(());
    };
    db.sql("CREATE TABLE ledger (id BIGINT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(10) NOT NULL, seq BIGINT NOT NULL) ENGINE=InnoDB;")?;
    let dir = tempfile::tempdir()?;
    let url = db.url();

    let env = [
        ("BINLOG_CRASH_URL", url.clone()),
        ("BINLOG_CRASH_DIR", dir.path().display().to_string()),
    ];
    let start = |round, kill_after_big| {
        Worker::start(
            "binlog_crash_worker",
            &env,
            dir.path(),
            round,
            kill_after_big,
        )
    };
    let first = start(0, None)?;
    let mut logs = vec![first.log(dir.path())];
    wait_streaming(|q| db.sql(q)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let big = Arc::new(AtomicBool::new(false));
    let bigs = Arc::new(AtomicUsize::new(0));
    let producing = producer(
        db.server.clone(),
        db.name.clone(),
        stop.clone(),
        big.clone(),
        bigs.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill();

    let mid_big_kills = kill_rounds(ROUNDS, &start, dir.path(), &big, &bigs, &mut logs).await?;
    stop.store(true, Ordering::SeqCst);
    let rows = producing
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;

    // Recovery: one more worker runs until the broker holds every committed row.
    let recovering = start(ROUNDS + 1, None)?;
    logs.push(recovering.log(dir.path()));
    let broker = mysql::broker(&dir)?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let stored = read_topic(broker.as_ref(), "ledger").await?.len() as u64;
        if stored >= rows {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the capture did not catch up: {stored} of {rows}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    recovering.kill();

    let mut check = DeliveryCheck::default();
    for line in db
        .sql("SELECT CONCAT(k, ' ', seq) FROM ledger ORDER BY id")?
        .lines()
    {
        let (key, seq) = line.split_once(' ').context("k seq")?;
        check
            .committed
            .entry(key.to_owned())
            .or_default()
            .push(seq.parse()?);
    }
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

    let mut times: HashMap<String, usize> = HashMap::new();
    let mut seen_before: HashSet<String> = HashSet::new();
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
        republished_per_start.push((again(false), again(true)));
        for (_, id) in lines {
            *times.entry(id.clone()).or_default() += 1;
            seen_before.insert(id);
        }
    }
    let duplicates = total_published - times.len();
    let max_small = republished_per_start.iter().map(|r| r.0).max().unwrap_or(0);
    let max_big = republished_per_start.iter().map(|r| r.1).max().unwrap_or(0);
    eprintln!(
        "binlog crash test: {kills} kills ({mid_big_kills} in a {BIG}-row transaction), {rows} rows committed \
         ({} big transactions), {} stored, {total_published} published, {duplicates} re-published \
         copies (per restart, small transactions / the big one: {republished_per_start:?}); {report}",
        bigs.load(Ordering::SeqCst),
        stored.len(),
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
    // What a kill makes the next run publish again is the transaction in flight: a small
    // batch's worth, or (part of, at most all of) the big one when its end was not stored yet.
    // The batches decoded ahead were never published, so they are not copies.
    ensure!(
        max_small <= 2 * BATCH && max_big <= BIG as usize,
        "re-publishing after a kill is bounded by what was in flight: {republished_per_start:?}"
    );
    Ok(())
}
