//! The saga scenarios on the distributed deployment: PostgreSQL (the orchestrator and the
//! participants each in a schema of their own on the shared test server) and NATS JetStream
//! (streams under a prefix of the test's own).

mod common;

use std::sync::Arc;
use std::time::Duration;

use tributary_core::Database;
use tributary_nats::{NatsBroker, NatsBrokerConfig};
use tributary_postgres::{PgConfig, PgDatabase};
use tributary_testkit::servers::{nats_url, postgres_url, reachable, skip};

/// Deletes the test's streams when the test ends.
struct Streams(NatsBroker);

impl Drop for Streams {
    fn drop(&mut self) {
        let broker = self.0.clone();
        // Async I/O, and this may run inside a runtime: a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                for topic in broker.topics().await? {
                    broker.delete_topic(&topic).await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .join();
    }
}

/// Drops the test's schemas when the test ends (also when it panics).
struct Schemas(Vec<String>);

impl Drop for Schemas {
    fn drop(&mut self) {
        let schemas = std::mem::take(&mut self.0);
        let url = postgres_url();
        // Dropping needs async I/O and this may run inside a runtime: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                for s in schemas {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS \"{s}\" CASCADE"
                    )))
                    .execute(&mut conn)
                    .await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schemas: {dropped:?}");
        }
    }
}

fn config(schema: &str) -> PgConfig {
    PgConfig::default()
        .with_url(postgres_url())
        .with_schema(schema)
        .with_max_connections(8)
        .with_poll_every(Duration::from_millis(50))
}

async fn make() -> Option<common::Fixture> {
    if !reachable(&postgres_url()) {
        return skip(
            "saga scenarios on postgres",
            &format!("{} is not reachable", postgres_url()),
        );
    }
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let (orders, participants) = (
        format!("saga_orders_{suffix}"),
        format!("saga_participants_{suffix}"),
    );
    if !reachable(&nats_url()) {
        return skip(
            "saga scenarios on postgres and nats",
            &format!("{} is not reachable", nats_url()),
        );
    }
    let broker = NatsBroker::connect(
        NatsBrokerConfig::default()
            .with_url(nats_url())
            .with_stream_prefix(format!("S{}", &suffix[8..]))
            .with_ack_wait(Duration::from_secs(2)),
    )
    .await
    .expect("nats");
    let guard = (
        Schemas(vec![orders.clone(), participants.clone()]),
        Streams(broker.clone()),
    );
    let participant_db = PgDatabase::connect(config(&participants))
        .await
        .expect("participants");
    Some(common::Fixture {
        broker: Arc::new(broker),
        participant_db: Arc::new(participant_db),
        open_orchestrator_db: Box::new(move || {
            let config = config(&orders);
            Box::pin(async move {
                Arc::new(
                    PgDatabase::connect(config)
                        .await
                        .expect("orchestrator database"),
                ) as Arc<dyn Database>
            })
        }),
        guard: Box::new(guard),
    })
}

saga_scenarios!(make, #[tokio::test(flavor = "multi_thread", worker_threads = 4)]);
