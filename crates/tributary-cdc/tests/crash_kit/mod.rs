//! What the two crash tests (logical replication and binlog) share: worker processes that the
//! test starts and kills with SIGKILL, a broker that logs what a worker published (and kills
//! its own process at a chosen point of the big transaction), and the rounds of kills.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use rand::Rng;
use tributary_core::{Broker, GroupName, OutgoingMessage, PartitionConsumer, Topic};

/// Rows of the big transaction, all on key [`BIG_KEY`].
pub const BIG: u64 = 10_000;
pub const BIG_KEY: &str = "big";

const KILL_AFTER_BIG: &str = "CRASH_KILL_AFTER_BIG";

/// A broker that appends `key id` of every acknowledged message to a log file, so the test
/// can count what was published (including copies the broker deduplicated), and that kills its
/// own process with SIGKILL once it published a given number of rows of the big transaction:
/// a kill aimed from outside, by watching the log, could miss the window on a loaded machine.
pub struct LoggingBroker {
    inner: Arc<dyn Broker>,
    log: std::sync::Mutex<std::fs::File>,
    kill_after_big: Option<usize>,
    big_published: AtomicUsize,
}

impl LoggingBroker {
    /// In a worker: the embedded broker in `dir`, logging to this process's log there, and
    /// killing this process as its [`Worker::start`] asked.
    pub fn open_in(dir: &Path) -> Result<Arc<Self>> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("published-{}.log", std::process::id())))?;
        let inner = tributary_sqlite::SqliteBroker::open(
            dir.join("broker.db"),
            tributary_sqlite::SqliteBrokerConfig::default().with_default_partitions(4),
        )?;
        let kill_after_big = match std::env::var(KILL_AFTER_BIG) {
            Ok(n) => Some(n.parse().context(KILL_AFTER_BIG)?),
            Err(_) => None,
        };
        Ok(Arc::new(LoggingBroker {
            inner: Arc::new(inner),
            log: std::sync::Mutex::new(log),
            kill_after_big,
            big_published: AtomicUsize::new(0),
        }))
    }

    fn count_big(&self, messages: &[OutgoingMessage]) {
        let Some(target) = self.kill_after_big else {
            return;
        };
        let big = messages.iter().filter(|m| m.key == BIG_KEY).count();
        let total = self.big_published.fetch_add(big, Ordering::SeqCst) + big;
        if total >= target {
            eprintln!("{total} big rows published: this worker kills itself");
            let pid = std::process::id().to_string();
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
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
        {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            let _ = log.write_all(text.as_bytes());
            let _ = log.flush();
        }
        self.count_big(messages);
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

/// A worker: this test binary run as a child on its ignored `entry` test, killed with SIGKILL
/// when dropped.
pub struct Worker {
    child: Child,
}

impl Worker {
    /// Starts `entry` with `env`, its stderr in `worker-<round>.stderr` in `dir`; with
    /// `kill_after_big` it kills itself once it published that many rows of the big
    /// transaction.
    pub fn start(
        entry: &str,
        env: &[(&str, String)],
        dir: &Path,
        round: usize,
        kill_after_big: Option<usize>,
    ) -> Result<Self> {
        let stderr = std::fs::File::create(dir.join(format!("worker-{round}.stderr")))?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args([entry, "--exact", "--ignored", "--nocapture"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(n) = kill_after_big {
            command.env(KILL_AFTER_BIG, n.to_string());
        }
        let child = command.spawn().context("starting the worker")?;
        Ok(Worker { child })
    }

    /// The worker's publish log.
    pub fn log(&self, dir: &Path) -> PathBuf {
        dir.join(format!("published-{}.log", self.child.id()))
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `within` for the worker to end by itself.
    async fn ended(&mut self, within: Duration) -> Result<bool> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(false)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(key, id)` lines of a worker's publish log (a line cut by a kill is skipped).
pub fn published(log: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, id) = line.split_once(' ')?;
            (id.len() == 36).then(|| (key.to_owned(), id.to_owned()))
        })
        .collect()
}

/// Rounds `1..=rounds` of a worker killed with SIGKILL: every fourth (from the second) inside
/// the big transaction, at a random row of it (the producer commits one when `big` is set and
/// counts them in `bigs`), the others after a random 150–1,200 ms. Each worker's log is added
/// to `logs`. Returns how many kills landed inside the big transaction.
pub async fn kill_rounds(
    rounds: usize,
    start: impl Fn(usize, Option<usize>) -> Result<Worker>,
    dir: &Path,
    big: &AtomicBool,
    bigs: &AtomicUsize,
    logs: &mut Vec<PathBuf>,
) -> Result<usize> {
    let mut inside_big = 0;
    for round in 1..=rounds {
        if round % 4 != 2 {
            let worker = start(round, None)?;
            logs.push(worker.log(dir));
            let alive = rand::rng().random_range(150..1200);
            tokio::time::sleep(Duration::from_millis(alive)).await;
            worker.kill();
            continue;
        }
        let before = bigs.load(Ordering::SeqCst);
        let target = rand::rng().random_range(1..BIG as usize * 9 / 10);
        let mut worker = start(round, Some(target))?;
        let log = worker.log(dir);
        logs.push(log.clone());
        big.store(true, Ordering::SeqCst);
        if !worker.ended(Duration::from_secs(60)).await? {
            bail!(
                "the big transaction was never published (big transactions committed: {} before, {} now)",
                before,
                bigs.load(Ordering::SeqCst)
            );
        }
        let big_published = published(&log).iter().filter(|(k, _)| k == BIG_KEY).count();
        ensure!(
            big_published >= target && (big_published as u64) < BIG,
            "the worker of round {round} ended after {big_published} big rows, aiming at {target} \
             (see worker-{round}.stderr)"
        );
        inside_big += 1;
    }
    Ok(inside_big)
}
