//! Crash tests on PostgreSQL and NATS JetStream: the relay (PostgreSQL outbox → NATS) or the
//! consumer (NATS → PostgreSQL with inbox) is killed with SIGKILL at random points under load,
//! and the NATS server itself is killed and restarted mid-stream (a private server: the
//! shared one must stay up). The checker must find nothing lost, nothing phantom, per-key
//! order kept and no effect applied twice. Skips without the servers unless
//! `TRIBUTARY_TEST_SERVERS=required`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Deployment, Worker, kill_loop, quiesce, start_producer};
use customers_and_orders::system::{DbUrl, connect_named};
use tributary_testkit::servers::{PrivateNats, nats_url, postgres_url, reachable, skip};

struct Distributed {
    d: Deployment,
    pg: String,
    schema_prefix: String,
    nats: String,
    stream_prefix: String,
}

impl Distributed {
    async fn new(suite: &str, nats: &str) -> Option<Self> {
        let pg = postgres_url();
        if !reachable(&pg) {
            return skip(suite, &format!("PostgreSQL is not reachable at {pg}"));
        }
        if !reachable(nats) {
            return skip(suite, &format!("NATS is not reachable at {nats}"));
        }
        let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
        let schema_prefix = format!("crash_{run}_");
        let stream_prefix = format!("CRASH{}", run.to_uppercase());
        let db = DbUrl::Postgres {
            url: pg.clone(),
            schema_prefix: schema_prefix.clone(),
        };
        let source = connect_named(&db, "source").await.expect("source schema");
        let sink = connect_named(&db, "sink").await.expect("sink schema");
        let worker_args = vec![
            "--db".to_owned(),
            format!("{pg}?schema_prefix={schema_prefix}"),
            "--broker".to_owned(),
            format!("{nats}?prefix={stream_prefix}"),
        ];
        Some(Self {
            d: Deployment {
                worker_args,
                source,
                sink,
            },
            pg,
            schema_prefix,
            nats: nats.to_owned(),
            stream_prefix,
        })
    }

    /// Removes the run's schemas and streams from the shared servers.
    async fn cleanup(self) {
        let config = tributary::nats::NatsBrokerConfig::default()
            .with_url(self.nats.clone())
            .with_stream_prefix(self.stream_prefix.clone());
        if let Ok(broker) = tributary::nats::NatsBroker::connect(config).await {
            let _ = broker
                .delete_topic(&tributary::Topic::new("ledger").unwrap())
                .await;
        }
        for name in ["source", "sink"] {
            let config = tributary::postgres::PgConfig::default()
                .with_url(self.pg.clone())
                .with_schema(format!("{}{name}", self.schema_prefix));
            if let Ok(db) = tributary::postgres::PgDatabase::connect(config).await {
                let _ = db.drop_schema().await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_on_postgres_and_nats_loses_nothing() {
    let Some(t) = Distributed::new("distributed relay crash test", &nats_url()).await else {
        return;
    };
    let report = kill_loop(&t.d, "relay", "consume", 20, false).await;
    eprintln!("relay kills (PostgreSQL + NATS): {report}");
    assert!(report.committed > 200, "enough load: {report}");
    assert!(report.is_clean(), "{report}");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_consumer_on_postgres_and_nats_applies_nothing_twice() {
    let Some(t) = Distributed::new("distributed consumer crash test", &nats_url()).await else {
        return;
    };
    let report = kill_loop(&t.d, "consume", "relay", 20, false).await;
    eprintln!("consumer kills (PostgreSQL + NATS): {report}");
    assert!(report.committed > 200, "enough load: {report}");
    assert!(report.is_clean(), "{report}");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_nats_server_mid_stream_loses_nothing() {
    let Some(mut nats) = PrivateNats::start("NATS restart crash test") else {
        return;
    };
    let Some(t) = Distributed::new("NATS restart crash test", &nats.url()).await else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let producer = start_producer(t.d.source.clone(), stop.clone());
    let relay = Worker::start("relay", &t.d, false);
    let consumer = Worker::start("consume", &t.d, false);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        nats.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        nats.restart();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    producer.await.expect("producer");
    let report = quiesce(&t.d, Duration::from_secs(120)).await;
    drop((relay, consumer));
    eprintln!("NATS restarts: {report}");
    assert!(report.committed > 200, "enough load: {report}");
    assert!(report.is_clean(), "{report}");
    t.cleanup().await;
}
