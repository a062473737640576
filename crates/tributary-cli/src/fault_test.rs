//! `tributary fault-test …` (hidden): the child processes of the crash tests. They run the
//! real relay and consumer on files in one directory until they are killed:
//! `source.db` (a service writing its outbox), `broker.db` (the embedded broker) and
//! `sink.db` (a service consuming the `ledger` topic).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tributary::sqlite::{SqliteBroker, SqliteBrokerConfig, SqliteConfig, SqliteDatabase};
use tributary::{
    Backoff, CancellationToken, Consumer, ConsumerConfig, Dispatch, HandlerError, Relay,
    RelayConfig,
};
use tributary::{Broker, Database, GroupName, RelaySource, Topic, UnitOfWorkExt};

#[derive(Debug, clap::Subcommand)]
pub enum FaultTestCommand {
    /// Relays the `source` database's outbox to the broker until killed.
    Relay {
        #[command(flatten)]
        at: Where,
        /// Marks rows published before the broker acknowledged them (the bug the crash test
        /// must catch).
        #[arg(long)]
        naive: bool,
    },
    /// Consumes the `ledger` topic into the `sink` database until killed.
    Consume {
        #[command(flatten)]
        at: Where,
    },
}

/// Where the databases and the broker are: a directory (embedded) or URLs.
#[derive(Debug, clap::Args)]
pub struct Where {
    /// Embedded: `source.db`, `sink.db` and `broker.db` in this directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Or a database URL (the `source` and `sink` databases, e.g. schemas `<prefix>source`).
    #[arg(long)]
    db: Option<String>,
    /// And a broker URL.
    #[arg(long)]
    broker: Option<String>,
    /// How often embedded readers poll for other processes' commits.
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
}

impl Where {
    async fn open(&self, database: &str) -> anyhow::Result<(Arc<dyn Database>, Arc<dyn Broker>)> {
        if let Some(dir) = &self.dir {
            let db: Arc<dyn Database> = Arc::new(SqliteDatabase::open(
                dir.join(format!("{database}.db")),
                config(self.poll_ms),
            )?);
            let broker: Arc<dyn Broker> = Arc::new(SqliteBroker::open(
                dir.join("broker.db"),
                SqliteBrokerConfig::default().with_sqlite(config(self.poll_ms)),
            )?);
            return Ok((db, broker));
        }
        let (Some(db), Some(broker)) = (&self.db, &self.broker) else {
            anyhow::bail!("give --dir, or --db and --broker");
        };
        Ok((
            crate::urls::named_database(db, database)?.connect().await?,
            tributary::connect_broker(broker).await?,
        ))
    }
}

/// The data of the events the crash tests publish.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LedgerEvent {
    pub key: String,
    pub seq: u64,
}

/// Per key, the sequence numbers applied, in the order they were applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub seqs: Vec<u64>,
}

fn config(poll_ms: u64) -> SqliteConfig {
    SqliteConfig::default().with_poll_every(Duration::from_millis(poll_ms))
}

pub async fn run(command: FaultTestCommand) -> anyhow::Result<()> {
    match command {
        FaultTestCommand::Relay { at, naive } => relay(at, naive).await,
        FaultTestCommand::Consume { at } => consume(at).await,
    }
}

async fn relay(at: Where, naive: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let (source, broker) = at.open("source").await?;
    let outbox = source.outbox_source();
    if naive {
        return naive_relay(outbox, broker).await;
    }
    let relay = Relay::new(outbox, broker, RelayConfig::default());
    let stats = relay.stats();
    tokio::spawn(async move {
        while stats.batches.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!(
            "first publish {} ms after start",
            started.elapsed().as_millis()
        );
    });
    relay.run(CancellationToken::new()).await?;
    Ok(())
}

/// The classic bug: mark the batch published, then publish without waiting for the broker.
/// A crash in between loses the batch.
async fn naive_relay(source: Arc<dyn RelaySource>, broker: Arc<dyn Broker>) -> anyhow::Result<()> {
    let _lease = loop {
        if let Some(lease) = source.try_lease().await? {
            break lease;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    loop {
        match source.read_batch(100).await? {
            Some(batch) => {
                source.mark_published(batch.through).await?;
                let broker = broker.clone();
                tokio::spawn(async move {
                    // An asynchronous send buffer: the publish happens "later".
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = broker.publish(&batch.messages).await;
                });
            }
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn consume(at: Where) -> anyhow::Result<()> {
    let (sink, broker) = at.open("sink").await?;
    let handler = Dispatch::new().on("LedgerEvent", |e: LedgerEvent, _envelope, unit| {
        Box::pin(async move {
            let mut applied: Applied = unit.get_as("applied", &e.key).await?.unwrap_or_default();
            applied.seqs.push(e.seq);
            unit.put_as("applied", &e.key, &applied).await?;
            Ok::<_, HandlerError>(())
        })
    });
    let consumer = Consumer::new(
        GroupName::new("ledger-checker")?,
        vec![Topic::new("ledger")?],
        sink,
        broker,
        Arc::new(handler),
        ConsumerConfig::default()
            .with_fetch_wait(Duration::from_millis(100))
            .with_backoff(Backoff::new(
                Duration::from_millis(5),
                Duration::from_millis(200),
            )),
    )?;
    consumer.run(CancellationToken::new()).await?;
    Ok(())
}
