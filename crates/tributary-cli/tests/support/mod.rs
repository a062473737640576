//! A deployment that is not the reference application: one SQLite service database, the
//! embedded broker, and a consumer group whose handler rejects every message while `broken`
//! is set — so that a test can make a dead letter, fix the handler, and replay it from outside
//! the process, as an operator would.

#![allow(dead_code)] // each test binary uses its own part

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tributary::sqlite::{SqliteBroker, SqliteBrokerConfig, SqliteConfig, SqliteDatabase};
use tributary::{
    Broker, CancellationToken, Consumer, ConsumerConfig, Database, DeadLetter, Envelope, GroupName,
    HandlerError, OutgoingMessage, Partition, PartitionConsumer, Payload, Topic, handler_fn,
};

pub const GROUP: &str = "billing";
pub const TOPIC: &str = "invoices";
/// A group that consumes nothing (see [`Deployment::idle_group`]).
pub const IDLE_GROUP: &str = "audit";

pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub db: Arc<dyn Database>,
    pub broker: Arc<dyn Broker>,
    pub broken: Arc<AtomicBool>,
    pub handled: Arc<AtomicU64>,
    shutdown: CancellationToken,
    consumer: Option<tokio::task::JoinHandle<()>>,
}

impl Deployment {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("billing.db");
        let db: Arc<dyn Database> =
            Arc::new(SqliteDatabase::open(&path, SqliteConfig::default()).unwrap());
        let broker: Arc<dyn Broker> = Arc::new(
            SqliteBroker::open(dir.path().join("broker.db"), SqliteBrokerConfig::default())
                .unwrap(),
        );
        let topic = Topic::new(TOPIC).unwrap();
        broker.ensure_topic(&topic, 2).await.unwrap();
        let broken = Arc::new(AtomicBool::new(true));
        let handled = Arc::new(AtomicU64::new(0));
        let (b, h) = (broken.clone(), handled.clone());
        let handler = handler_fn(move |_event, _unit| {
            let (b, h) = (b.clone(), h.clone());
            Box::pin(async move {
                if b.load(Ordering::SeqCst) {
                    return Err(HandlerError::reject("the billing handler is broken"));
                }
                h.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        });
        let config = ConsumerConfig::default()
            .with_fetch_wait(Duration::from_millis(50))
            .with_replay_requests_every(Duration::from_millis(100))
            .with_dead_letters_every(Duration::from_millis(100));
        let consumer = Consumer::new(
            GroupName::new(GROUP).unwrap(),
            vec![topic],
            db.clone(),
            broker.clone(),
            handler,
            config,
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let consumer = tokio::spawn(async move {
            consumer.run(s).await.unwrap();
        });
        Self {
            url: format!("sqlite://{}", path.display()),
            dir,
            db,
            broker,
            broken,
            handled,
            shutdown,
            consumer: Some(consumer),
        }
    }

    /// Publishes an invoice event with `key`; while the handler is broken it becomes a dead
    /// letter.
    pub async fn publish(&self, key: &str) {
        let event = Envelope::new(
            "billing",
            "InvoiceIssued",
            Payload::from_value(&key).unwrap(),
        )
        .with_partition_key(key);
        self.broker
            .publish(&[OutgoingMessage::from_envelope(
                Topic::new(TOPIC).unwrap(),
                &event,
            )])
            .await
            .unwrap();
    }

    /// Waits until the group has `n` open dead letters, and returns them.
    pub async fn dead_letters(&self, n: usize) -> Vec<DeadLetter> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let open = self
                .db
                .dead_letters()
                .list(Some(&GroupName::new(GROUP).unwrap()), 100)
                .await
                .unwrap();
            if open.len() == n {
                return open;
            }
            assert!(
                Instant::now() < deadline,
                "{} dead letters, not {n}",
                open.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The broker's URL.
    pub fn broker_url(&self) -> String {
        format!("embedded://{}", self.dir.path().display())
    }

    /// `tributary status --db <this> --broker <this> <extra…>`.
    pub fn status_with_broker(&self, extra: &[&str]) -> std::process::Output {
        let broker = self.broker_url();
        let mut args = vec!["status", "--db", &self.url, "--broker", &broker];
        args.extend_from_slice(extra);
        tributary(&args)
    }

    /// Opens a second group, [`IDLE_GROUP`], on both partitions of the topic and returns its
    /// consumers: it never fetches or commits, so its lag is everything published.
    pub async fn idle_group(&self) -> Vec<Box<dyn PartitionConsumer>> {
        self.idle_group_named(IDLE_GROUP).await
    }

    /// As [`Deployment::idle_group`], for a group named `name`.
    pub async fn idle_group_named(&self, name: &str) -> Vec<Box<dyn PartitionConsumer>> {
        let (group, topic) = (GroupName::new(name).unwrap(), Topic::new(TOPIC).unwrap());
        let mut consumers = Vec::new();
        for p in 0..2 {
            consumers.push(
                self.broker
                    .consume(&group, &topic, Partition::new(p))
                    .await
                    .unwrap(),
            );
        }
        consumers
    }

    /// Waits until the billing group has handled `n` messages.
    pub async fn handled(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.handled.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "not {n} handled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(c) = self.consumer.take() {
            c.await.unwrap();
        }
    }
}

/// The lag of `group` summed over its partitions in `status --broker --json`.
pub fn total_lag(status: &serde_json::Value, group: &str) -> u64 {
    status["consumer_groups"]
        .as_array()
        .expect("status --broker lists the groups")
        .iter()
        .filter(|g| g["group"] == group)
        .map(|g| g["lag"].as_u64().unwrap())
        .sum()
}

/// Runs the `tributary` binary.
pub fn tributary(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .output()
        .expect("runs")
}
