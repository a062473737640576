//! Wiring the services to their databases and the broker: relays, consumer groups, health.

use std::path::Path;
use std::sync::Arc;

use tributary_core::{Broker, Database, GroupName, Topic};
use tributary_runtime::{
    CancellationToken, Consumer, ConsumerConfig, Handler, Health, Relay, RelayConfig,
};
use tributary_sqlite::{SqliteBroker, SqliteBrokerConfig, SqliteConfig, SqliteDatabase};

use crate::customer::CustomerService;
use crate::events::{customer_topic, order_topic};
use crate::history::HistoryService;
use crate::order::OrderService;

/// Partitions of the two topics.
pub const PARTITIONS: u32 = 8;

/// Where each service keeps its data, and the broker between them.
#[derive(Clone)]
pub struct Backends {
    pub customers: Arc<dyn Database>,
    pub orders: Arc<dyn Database>,
    pub history: Arc<dyn Database>,
    pub broker: Arc<dyn Broker>,
}

impl Backends {
    /// The embedded default: one SQLite file per service plus the broker's, in `data_dir`.
    ///
    /// # Errors
    /// When a file cannot be created or is not a Tributary database.
    pub fn embedded(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let config = SqliteConfig::default();
        Ok(Self {
            customers: Arc::new(SqliteDatabase::open(
                data_dir.join("customers.db"),
                config.clone(),
            )?),
            orders: Arc::new(SqliteDatabase::open(
                data_dir.join("orders.db"),
                config.clone(),
            )?),
            history: Arc::new(SqliteDatabase::open(
                data_dir.join("history.db"),
                config.clone(),
            )?),
            broker: Arc::new(SqliteBroker::open(
                data_dir.join("broker.db"),
                SqliteBrokerConfig::default().with_sqlite(config),
            )?),
        })
    }
}

/// The three services of one deployment.
#[derive(Clone)]
pub struct Services {
    pub customers: CustomerService,
    pub orders: OrderService,
    pub history: HistoryService,
}

/// A started system: the services, and the relays and consumers that connect them.
pub struct Running {
    pub services: Services,
    pub backends: Backends,
    health: Vec<Health>,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    /// Every relay and consumer group, with its state.
    pub fn health(&self) -> Vec<Health> {
        self.health.clone()
    }

    /// Stops every relay and consumer: each finishes (or abandons, to be redone) its batch.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The order-history view's consumer group and the collection it owns.
pub const HISTORY_GROUP: &str = "order-history";
pub const HISTORY_COLLECTION: &str = "customer_order_history";

/// One consumer group of the application: which service, which topics, which handler.
pub struct Group {
    /// The service that owns the group: `customers`, `orders` or `history`.
    pub service: &'static str,
    pub group: GroupName,
    pub topics: Vec<Topic>,
    pub db: Arc<dyn Database>,
    pub handler: Arc<dyn Handler>,
}

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap_or_else(|_| unreachable!("a valid group name"))
}

/// The application's consumer groups (what `start` runs, and what dead-letter replays use).
pub fn consumer_groups(backends: &Backends, services: &Services) -> Vec<Group> {
    vec![
        Group {
            service: "customers",
            group: group("customer-service"),
            topics: vec![order_topic()],
            db: backends.customers.clone(),
            handler: Arc::new(CustomerService::handler()),
        },
        Group {
            service: "orders",
            group: group("order-service"),
            topics: vec![customer_topic()],
            db: backends.orders.clone(),
            handler: Arc::new(services.orders.handler()),
        },
        Group {
            service: "history",
            group: group(HISTORY_GROUP),
            topics: vec![customer_topic(), order_topic()],
            db: backends.history.clone(),
            handler: Arc::new(HistoryService::handler()),
        },
    ]
}

impl Services {
    pub fn new(backends: &Backends) -> Self {
        Self {
            customers: CustomerService::new(backends.customers.clone()),
            orders: OrderService::new(backends.orders.clone()),
            history: HistoryService::new(backends.history.clone()),
        }
    }
}

/// Starts all three services on `backends`.
///
/// # Errors
/// When a topic cannot be created or a consumer is misconfigured.
pub async fn start(backends: Backends) -> anyhow::Result<Running> {
    for topic in [customer_topic(), order_topic()] {
        backends.broker.ensure_topic(&topic, PARTITIONS).await?;
    }
    let services = Services::new(&backends);
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut health = Vec::new();
    let mut relay = |source, name: &str| {
        let relay = Relay::new(source, backends.broker.clone(), RelayConfig::default());
        let h = relay.health();
        tracing::debug!(relay = name, "starting");
        health.push(h);
        tasks.spawn(relay.run(shutdown.clone()));
    };
    relay(backends.customers.outbox_source(), "customers");
    relay(
        backends
            .orders
            .event_store_source("order-relay", order_topic()),
        "orders",
    );
    let consumers = consumer_groups(&backends, &services);
    for g in consumers {
        let consumer = Consumer::new(
            g.group,
            g.topics,
            g.db,
            backends.broker.clone(),
            g.handler,
            ConsumerConfig::default(),
        )?;
        health.push(consumer.health());
        let s = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = consumer.run(s).await {
                tracing::error!(error = %e, "consumer group stopped");
            }
        });
    }
    Ok(Running {
        services,
        backends,
        health,
        shutdown,
        tasks,
    })
}

/// Topics of the application, for tools that audit the broker.
pub fn topics() -> Vec<Topic> {
    vec![customer_topic(), order_topic()]
}
