//! The crash test of the binlog capture, as for PostgreSQL (`crash.rs`): the capture runs as
//! a child process — this test binary run again as `binlog_crash_worker`, publishing into the
//! embedded broker — and is killed with SIGKILL 25 times while a producer commits small
//! transactions over many keys and, now and then, one 10,000-row transaction; some kills are
//! aimed at the middle of that transaction. Then the checker compares what MariaDB committed
//! with what the broker stored: nothing lost, nothing phantom, per-key order kept, nothing
//! stored twice (re-published changes carry the same ids), and re-publishing bounded by the
//! batch and transaction in flight.

mod mysql;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tributary_cdc::BinlogConfig;
use tributary_cdc::capture::TableCapture;
use tributary_core::{Broker, GroupName, OutgoingMessage, PartitionConsumer, Topic};
use tributary_testkit::checker::DeliveryCheck;

use mysql::{Server, TestDb, envelope, read_topic, wait_streaming};

const BATCH: usize = 500;
const BIG: u64 = 10_000;
const ROUNDS: usize = 24;

/// A broker that appends `key id` of every acknowledged message to a log file.
struct LoggingBroker {
    inner: Arc<dyn Broker>,
    log: std::sync::Mutex<std::fs::File>,
}

#[async_trait]
impl Broker for LoggingBroker {
    async fn ensure_topic(&self, topic: &Topic, partitions: u32) -> tributary_core::Result<()> {
        self.inner.ensure_topic(topic, partitions).await
    }
    async fn partitions(&self, topic: &Topic) -> tributary_core::Result<u32> {
        self.inner.partitions(topic).await
    }
    async fn publish(&self, messages: &[OutgoingMessage]) -> tributary_core::Result<()> {
        self.inner.publish(messages).await?;
        use std::io::Write;
        let mut text = String::new();
        for m in messages {
            text.push_str(&format!("{} {}\n", m.key, m.id));
        }
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let _ = log.write_all(text.as_bytes());
        let _ = log.flush();
        Ok(())
    }
    async fn consume(
        &self,
        group: &GroupName,
        topic: &Topic,
        partition: tributary_core::Partition,
    ) -> tributary_core::Result<Box<dyn PartitionConsumer>> {
        self.inner.consume(group, topic, partition).await
    }
    fn redelivery_horizon(&self) -> Duration {
        self.inner.redelivery_horizon()
    }
    async fn reset_group(&self, group: &GroupName, topic: &Topic) -> tributary_core::Result<()> {
        self.inner.reset_group(group, topic).await
    }
    async fn delete_group(&self, group: &GroupName, topic: &Topic) -> tributary_core::Result<()> {
        self.inner.delete_group(group, topic).await
    }
}

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
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("published-{}.log", std::process::id())))?;
    let inner = tributary_sqlite::SqliteBroker::open(
        dir.join("broker.db"),
        tributary_sqlite::SqliteBrokerConfig::default().with_default_partitions(4),
    )?;
    let broker = Arc::new(LoggingBroker {
        inner: Arc::new(inner),
        log: std::sync::Mutex::new(log),
    });
    let result =
        tributary_cdc::capture_binlog(worker_config(&url), broker, CancellationToken::new()).await;
    eprintln!("capture ended: {result:?}");
    result?;
    Ok(())
}

struct Worker {
    child: Child,
}

impl Worker {
    fn start(url: &str, dir: &Path, round: usize) -> Result<Self> {
        let stderr = std::fs::File::create(dir.join(format!("worker-{round}.stderr")))?;
        let child = Command::new(std::env::current_exe()?)
            .args(["binlog_crash_worker", "--exact", "--ignored", "--nocapture"])
            .env("BINLOG_CRASH_URL", url)
            .env("BINLOG_CRASH_DIR", dir)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting the worker")?;
        Ok(Worker { child })
    }

    fn log(&self, dir: &Path) -> PathBuf {
        dir.join(format!("published-{}.log", self.child.id()))
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn published(log: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, id) = line.split_once(' ')?;
            (id.len() == 36).then(|| (key.to_owned(), id.to_owned()))
        })
        .collect()
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

    let first = Worker::start(&url, dir.path(), 0)?;
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

    let mut mid_big_kills = 0;
    for round in 1..=ROUNDS {
        let worker = Worker::start(&url, dir.path(), round)?;
        let log = worker.log(dir.path());
        logs.push(log.clone());
        if round % 4 == 2 {
            let before = bigs.load(Ordering::SeqCst);
            big.store(true, Ordering::SeqCst);
            let target = rand::rng().random_range(1..BIG as usize * 9 / 10);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let big_published = published(&log).iter().filter(|(k, _)| k == "big").count();
                if big_published >= target && (big_published as u64) < BIG {
                    mid_big_kills += 1;
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "the big transaction was never published (big transactions committed: {} before, {} now)",
                        before,
                        bigs.load(Ordering::SeqCst)
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } else {
            let alive = rand::rng().random_range(150..1200);
            tokio::time::sleep(Duration::from_millis(alive)).await;
        }
        worker.kill();
    }
    stop.store(true, Ordering::SeqCst);
    let rows = producing
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;

    // Recovery: one more worker runs until the broker holds every committed row.
    let recovering = Worker::start(&url, dir.path(), ROUNDS + 1)?;
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
