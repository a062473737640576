//! Crash tests on the embedded default: the relay or the consumer runs as a child process
//! under a steady load of outbox writes over many keys and is killed with SIGKILL at random
//! points, again and again; then the checker compares what the source committed with what the
//! consumer applied. A deliberately naive relay, which marks rows published before the broker
//! has them, must make the checker report loss.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tributary_core::{Database, Envelope, Error, Payload, Topic};
use tributary_sqlite::{SqliteConfig, SqliteDatabase};
use tributary_testkit::checker::{DeliveryCheck, DeliveryReport};

#[derive(Serialize, Deserialize)]
struct Committed {
    key: String,
    seq: u64,
}

#[derive(Default, Deserialize)]
struct Applied {
    seqs: Vec<u64>,
}

/// A child process killed with SIGKILL when dropped.
struct Worker(Child);

impl Worker {
    fn start(role: &str, dir: &Path, naive: bool) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tributary"));
        cmd.args(["fault-test", role, "--dir"]).arg(dir);
        if naive {
            cmd.arg("--naive");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the tributary binary starts");
        Self(child)
    }

    fn kill(mut self) {
        // SIGKILL: no chance to finish anything.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config() -> SqliteConfig {
    SqliteConfig::default().with_poll_every(Duration::from_millis(50))
}

/// Writes units of 1–3 events over 40 keys until stopped; every event is also recorded as a
/// `committed` document in the same unit.
fn start_producer(
    source: Arc<dyn Database>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let topic = Topic::new("ledger").expect("topic");
        let mut seqs: BTreeMap<String, u64> = BTreeMap::new();
        let mut units = 0;
        while !stop.load(Ordering::SeqCst) {
            let picks: Vec<(String, u64)> = {
                let mut rng = rand::rng();
                (0..rng.random_range(1..=3))
                    .map(|_| {
                        let key = format!("k{}", rng.random_range(0..40));
                        let seq = seqs.entry(key.clone()).or_default();
                        *seq += 1;
                        (key, *seq)
                    })
                    .collect()
            };
            let t = topic.clone();
            source
                .transact(move |unit| {
                    for (key, seq) in &picks {
                        let data = Payload::from_value(&json!({"key": key, "seq": seq}))?;
                        unit.publish(
                            &t,
                            Envelope::new("crash-test", "LedgerEvent", data).with_subject(key),
                        )?;
                        unit.put(
                            "committed",
                            &format!("{key}:{seq:08}"),
                            Payload::from_value(&Committed {
                                key: key.clone(),
                                seq: *seq,
                            })?,
                        )?;
                    }
                    Ok::<_, Error>(())
                })
                .await
                .expect("producer unit");
            units += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        units
    })
}

async fn check(source: &Arc<dyn Database>, sink: &Arc<dyn Database>) -> DeliveryReport {
    let mut check = DeliveryCheck::default();
    for (_, doc) in source.all_documents("committed").await.expect("committed") {
        let c: Committed = doc.decode().expect("committed doc");
        check.committed.entry(c.key).or_default().push(c.seq);
    }
    for (key, doc) in sink.all_documents("applied").await.expect("applied") {
        let a: Applied = doc.decode().expect("applied doc");
        check.applied.insert(key, a.seqs);
    }
    check.report()
}

/// Waits until the sink applied everything the source committed (or `within` passes).
async fn quiesce(
    source: &Arc<dyn Database>,
    sink: &Arc<dyn Database>,
    within: Duration,
) -> DeliveryReport {
    let deadline = Instant::now() + within;
    loop {
        let report = check(source, sink).await;
        if report.applied >= report.committed || Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Setup {
    dir: tempfile::TempDir,
    source: Arc<dyn Database>,
    sink: Arc<dyn Database>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let source: Arc<dyn Database> =
        Arc::new(SqliteDatabase::open(dir.path().join("source.db"), config()).unwrap());
    let sink: Arc<dyn Database> =
        Arc::new(SqliteDatabase::open(dir.path().join("sink.db"), config()).unwrap());
    Setup { dir, source, sink }
}

fn path(s: &Setup) -> PathBuf {
    s.dir.path().to_owned()
}

/// Runs `victim` as a child killed at random points `kills` times while the producer writes;
/// `steady` runs the whole time.
async fn kill_loop(
    s: &Setup,
    victim: &str,
    steady: &str,
    kills: usize,
    naive: bool,
) -> DeliveryReport {
    let stop = Arc::new(AtomicBool::new(false));
    let producer = start_producer(s.source.clone(), stop.clone());
    let steady_worker = Worker::start(steady, &path(s), false);
    for _ in 0..kills {
        let worker = Worker::start(victim, &path(s), naive);
        let alive = rand::rng().random_range(30..400);
        tokio::time::sleep(Duration::from_millis(alive)).await;
        worker.kill();
    }
    stop.store(true, Ordering::SeqCst);
    let units = producer.await.expect("producer");
    assert!(units > 100, "the producer kept writing ({units} units)");
    // Recovery: the victim runs again, uninterrupted, until everything settled.
    let recovering = Worker::start(victim, &path(s), naive);
    let report = quiesce(
        &s.source,
        &s.sink,
        Duration::from_secs(if naive { 10 } else { 90 }),
    )
    .await;
    drop(recovering);
    drop(steady_worker);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_repeatedly_loses_nothing_and_applies_nothing_twice() {
    let s = setup();
    let report = kill_loop(&s, "relay", "consume", 25, false).await;
    eprintln!("relay kills: {report}");
    assert!(report.committed > 300, "enough load: {report}");
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_consumer_repeatedly_loses_nothing_and_applies_nothing_twice() {
    let s = setup();
    let report = kill_loop(&s, "consume", "relay", 25, false).await;
    eprintln!("consumer kills: {report}");
    assert!(report.committed > 300, "enough load: {report}");
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_relay_that_does_not_wait_for_acknowledgements() {
    let s = setup();
    let report = kill_loop(&s, "relay", "consume", 15, true).await;
    eprintln!("naive relay kills: {report}");
    assert!(
        !report.lost.is_empty(),
        "the naive relay must lose events: {report}"
    );
}
