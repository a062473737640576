//! The crash-test harness shared by the embedded and the distributed crash tests: a producer
//! writing outbox events over many keys, `tributary fault-test` children (relay, consumer)
//! killed with SIGKILL at random points, and the delivery checker.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tributary::{Database, Envelope, Error, Payload, Topic};
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

/// Where the children find their databases and broker, and the test's own handles on them.
pub struct Deployment {
    /// Arguments after `fault-test <role>`: `--dir D`, or `--db URL --broker URL`.
    pub worker_args: Vec<String>,
    pub source: Arc<dyn Database>,
    pub sink: Arc<dyn Database>,
}

/// A child process killed with SIGKILL when dropped.
pub struct Worker(Child);

/// Where this test process's workers write their stderr (appended, one header per start), so
/// that a failed check can show what the workers said.
pub fn worker_log() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "tributary-fault-workers-{}.log",
        std::process::id()
    ))
}

/// The last `lines` lines the workers wrote, for a failure message.
pub fn worker_log_tail(lines: usize) -> String {
    tributary_testkit::logs::tail(&worker_log(), lines)
}

impl Worker {
    pub fn start(role: &str, d: &Deployment, naive: bool) -> Self {
        use std::io::Write;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tributary"));
        cmd.args(["fault-test", role]).args(&d.worker_args);
        if naive {
            cmd.arg("--naive");
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(worker_log())
            .expect("the workers' log opens");
        let _ = writeln!(log, "== {role} {:?}", d.worker_args);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .env("RUST_LOG", "warn,tributary_nats=info")
            .spawn()
            .expect("the tributary binary starts");
        Self(child)
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(mut self) {
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

/// Writes units of 1–3 events over 40 keys until stopped; every event is also recorded as a
/// `committed` document in the same unit. Returns the number of units.
pub fn start_producer(
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
                    Box::pin(async move {
                        for (key, seq) in &picks {
                            let data = Payload::from_value(&json!({"key": key, "seq": seq}))?;
                            unit.publish(
                                &t,
                                Envelope::new("crash-test", "LedgerEvent", data).with_subject(key),
                            )
                            .await?;
                            unit.put(
                                "committed",
                                &format!("{key}:{seq:08}"),
                                Payload::from_value(&Committed {
                                    key: key.clone(),
                                    seq: *seq,
                                })?,
                            )
                            .await?;
                        }
                        Ok::<_, Error>(())
                    })
                })
                .await
                .expect("producer unit");
            units += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        units
    })
}

pub async fn check(d: &Deployment) -> DeliveryReport {
    let mut check = DeliveryCheck::default();
    for (_, doc) in d
        .source
        .all_documents("committed")
        .await
        .expect("committed")
    {
        let c: Committed = doc.decode().expect("committed doc");
        check.committed.entry(c.key).or_default().push(c.seq);
    }
    for (key, doc) in d.sink.all_documents("applied").await.expect("applied") {
        let a: Applied = doc.decode().expect("applied doc");
        check.applied.insert(key, a.seqs);
    }
    check.report()
}

/// Waits until the sink applied everything the source committed (or `within` passes).
pub async fn quiesce(d: &Deployment, within: Duration) -> DeliveryReport {
    let deadline = Instant::now() + within;
    loop {
        let report = check(d).await;
        if report.applied >= report.committed || Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `victim` as a child killed at random points `kills` times while the producer writes;
/// `steady` runs the whole time. Then the victim runs uninterrupted until everything settles.
pub async fn kill_loop(
    d: &Deployment,
    victim: &str,
    steady: &str,
    kills: usize,
    naive: bool,
) -> DeliveryReport {
    let stop = Arc::new(AtomicBool::new(false));
    let producer = start_producer(d.source.clone(), stop.clone());
    let steady_worker = Worker::start(steady, d, false);
    for _ in 0..kills {
        let worker = Worker::start(victim, d, naive);
        let alive = rand::rng().random_range(30..400);
        tokio::time::sleep(Duration::from_millis(alive)).await;
        worker.kill();
    }
    stop.store(true, Ordering::SeqCst);
    let units = producer.await.expect("producer");
    assert!(units > 100, "the producer kept writing ({units} units)");
    let recovering = Worker::start(victim, d, naive);
    let report = quiesce(d, Duration::from_secs(if naive { 10 } else { 120 })).await;
    if !naive && !report.is_clean() {
        eprintln!(
            "the workers' last words ({}):\n{}",
            worker_log().display(),
            worker_log_tail(60)
        );
    }
    drop(recovering);
    drop(steady_worker);
    report
}
