//! Wiring the services to their databases and the broker: relays, consumer groups, health.
//! One process can run all four services (the demo, `serve` on the embedded default) or just
//! one (`serve --service …` in a distributed deployment); only the URLs differ. Both order
//! flows run wherever their services do: the choreography, and the orchestrated `CreateOrder`
//! saga (its orchestrator in the order service, its participants in the customer and
//! inventory services).

mod backends;
pub mod cdc;
mod record;

use std::sync::Arc;

use tributary::{CancellationToken, Consumer, ConsumerConfig, Handler, Health, Relay, RelayConfig};
use tributary::{Database, GroupName, Topic};

pub use backends::{Backends, BrokerUrl, DbUrl, ServiceName, connect_broker, connect_named};
pub use record::DeploymentRecord;

use crate::AppError;
use crate::customer::CustomerService;
use crate::events::{customer_topic, order_topic};
use crate::history::HistoryService;
use crate::orchestration::inventory::InventoryService;
use crate::orchestration::{self, OrchestratedOrders};
use crate::order::OrderService;

/// Partitions of every topic of the application (see [`all_topics`]).
pub const PARTITIONS: u32 = 8;

/// The order-history view's consumer group and the collection it owns.
pub const HISTORY_GROUP: &str = "order-history";
pub const HISTORY_COLLECTION: &str = "customer_order_history";

/// The services a process runs.
#[derive(Clone)]
pub struct Services {
    customers: Option<CustomerService>,
    orders: Option<OrderService>,
    history: Option<HistoryService>,
    inventory: Option<InventoryService>,
    orchestrated: Option<OrchestratedOrders>,
}

fn absent(service: &str) -> AppError {
    AppError::NotFound(format!("the {service} service in this process"))
}

impl Services {
    pub fn new(backends: &Backends) -> Self {
        Self {
            customers: backends.customers.clone().map(CustomerService::new),
            orders: backends.orders.clone().map(OrderService::new),
            history: backends.history.clone().map(HistoryService::new),
            inventory: backends.inventory.clone().map(InventoryService::new),
            orchestrated: backends
                .orders
                .clone()
                .map(|db| OrchestratedOrders::new(db, backends.broker.clone())),
        }
    }

    /// # Errors
    /// [`AppError::NotFound`] when this process does not run the customer service.
    pub fn customers(&self) -> Result<&CustomerService, AppError> {
        self.customers.as_ref().ok_or_else(|| absent("customer"))
    }

    /// # Errors
    /// [`AppError::NotFound`] when this process does not run the order service.
    pub fn orders(&self) -> Result<&OrderService, AppError> {
        self.orders.as_ref().ok_or_else(|| absent("order"))
    }

    /// # Errors
    /// [`AppError::NotFound`] when this process does not run the order-history service.
    pub fn history(&self) -> Result<&HistoryService, AppError> {
        self.history.as_ref().ok_or_else(|| absent("order-history"))
    }

    /// # Errors
    /// [`AppError::NotFound`] when this process does not run the inventory service.
    pub fn inventory(&self) -> Result<&InventoryService, AppError> {
        self.inventory.as_ref().ok_or_else(|| absent("inventory"))
    }

    /// The order service's orchestrated flow.
    ///
    /// # Errors
    /// [`AppError::NotFound`] when this process does not run the order service.
    pub fn orchestrated(&self) -> Result<&OrchestratedOrders, AppError> {
        self.orchestrated.as_ref().ok_or_else(|| absent("order"))
    }

    pub fn runs(&self, service: ServiceName) -> bool {
        match service {
            ServiceName::Customers => self.customers.is_some(),
            ServiceName::Orders => self.orders.is_some(),
            ServiceName::History => self.history.is_some(),
            ServiceName::Inventory => self.inventory.is_some(),
        }
    }
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

/// One consumer group of the application: which service, which topics, which handler.
pub struct Group {
    pub service: ServiceName,
    pub group: GroupName,
    pub topics: Vec<Topic>,
    pub db: Arc<dyn Database>,
    pub handler: Arc<dyn Handler>,
}

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap_or_else(|_| unreachable!("a valid group name"))
}

/// Every group whose dead letters an operator may list, replay or skip: the
/// [`consumer_groups`], then the orchestrator's reply group (which the orchestrator runs
/// itself, so `start` does not).
pub fn dead_letter_groups(services: &Services) -> Vec<Group> {
    let mut groups = consumer_groups(services);
    if let Ok(orders) = services.orchestrated() {
        let orchestrator = orders.orchestrator();
        let definition = orchestrator.definition();
        groups.push(Group {
            service: ServiceName::Orders,
            group: definition.group().clone(),
            topics: vec![definition.reply_topic().clone()],
            db: orders.database().clone(),
            handler: orchestrator.reply_handler(),
        });
    }
    groups
}

/// The consumer groups of the services in `services` (what `start` runs): each service's
/// group of the choreography first, then the orchestrated flow's participants. (The
/// orchestrator's reply group is its own: see [`OrchestratedOrders::orchestrator`] and
/// [`dead_letter_groups`].)
pub fn consumer_groups(services: &Services) -> Vec<Group> {
    let mut groups = Vec::new();
    if let Ok(c) = services.customers() {
        groups.push(Group {
            service: ServiceName::Customers,
            group: group("customer-service"),
            topics: vec![order_topic()],
            db: c.database().clone(),
            handler: Arc::new(CustomerService::handler()),
        });
    }
    if let Ok(o) = services.orders() {
        groups.push(Group {
            service: ServiceName::Orders,
            group: group("order-service"),
            topics: vec![customer_topic()],
            db: o.database().clone(),
            handler: Arc::new(o.handler()),
        });
    }
    if let Ok(h) = services.history() {
        groups.push(Group {
            service: ServiceName::History,
            group: group(HISTORY_GROUP),
            topics: crate::history::topics(),
            db: h.database().clone(),
            handler: Arc::new(HistoryService::handler()),
        });
    }
    if let Ok(c) = services.customers() {
        groups.push(Group {
            service: ServiceName::Customers,
            group: group("customer-saga-commands"),
            topics: vec![orchestration::customer_commands()],
            db: c.database().clone(),
            handler: Arc::new(orchestration::customer_participant()),
        });
    }
    if let Ok(i) = services.inventory() {
        groups.push(Group {
            service: ServiceName::Inventory,
            group: group("inventory-saga-commands"),
            topics: vec![orchestration::inventory_commands()],
            db: i.database().clone(),
            handler: Arc::new(InventoryService::participant()),
        });
    }
    groups
}

/// How the customer service's outbox reaches the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Publishing {
    /// The relay reads the outbox table (woken by commits, polling as a fallback).
    #[default]
    Relay,
    /// A capture of the outbox table from PostgreSQL's WAL (logical replication), run in this
    /// process. Needs the customer database on PostgreSQL with `wal_level = logical`.
    Cdc(DbUrl),
    /// Nothing in this process: a separate `tributary cdc` process publishes the outbox.
    External,
}

/// Starts the services `backends` holds databases for, each with its relay (or capture) and
/// its consumer group.
///
/// # Errors
/// When a topic cannot be created or a consumer is misconfigured.
pub async fn start(backends: Backends) -> anyhow::Result<Running> {
    start_with(backends, Publishing::Relay).await
}

/// As [`start`], with the customer outbox published as `publishing` says.
///
/// # Errors
/// As [`start`]; for [`Publishing::Cdc`], when the database is not PostgreSQL or its
/// publication cannot be created.
pub async fn start_with(backends: Backends, publishing: Publishing) -> anyhow::Result<Running> {
    for topic in all_topics() {
        backends.broker.ensure_topic(&topic, PARTITIONS).await?;
    }
    let services = Services::new(&backends);
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let broker = backends.broker.clone();
    let mut health = vec![watch(
        "broker",
        &shutdown,
        &mut tasks,
        move || match broker.unreachable() {
            None => tributary::HealthState::Running,
            Some(why) => tributary::HealthState::Degraded(why),
        },
    )];
    for (service, db) in backends.databases() {
        // Corruption a read met after start: every read of the damaged pages fails until
        // the file is restored, so health must say so rather than stay "ok".
        health.push(watch(
            &format!("database {service}"),
            &shutdown,
            &mut tasks,
            move || match db.damage() {
                None => tributary::HealthState::Running,
                Some(why) => tributary::HealthState::Failed(why),
            },
        ));
    }
    let mut relays = Vec::new();
    if let Some(db) = &backends.customers {
        match &publishing {
            Publishing::Relay => relays.push(db.outbox_source()),
            Publishing::External => {}
            Publishing::Cdc(url) => {
                let config = cdc::customer_outbox_capture(url).await?;
                let h = Health::new("cdc customer outbox");
                health.push(h.clone());
                let (broker, s) = (backends.broker.clone(), shutdown.clone());
                tasks.spawn(async move {
                    h.set(tributary::HealthState::Running);
                    if let Err(e) = tributary::cdc::capture(config, broker, s).await {
                        tracing::error!(error = %e, "the customer outbox capture stopped");
                        h.set(tributary::HealthState::Degraded(e.to_string()));
                    } else {
                        h.set(tributary::HealthState::Stopped);
                    }
                });
            }
        }
    }
    if let Some(db) = &backends.orders {
        relays.push(db.event_store_source("order-relay", order_topic()));
        // The orchestrator's commands.
        relays.push(db.outbox_source());
    }
    if let Some(db) = &backends.inventory {
        // The inventory participant's replies.
        relays.push(db.outbox_source());
    }
    if let Ok(orders) = services.orchestrated() {
        let orchestrator = orders.orchestrator().clone();
        // The reply consumer's own health (starting, running, degraded per partition), and
        // failed when either half of the orchestrator stops on an error.
        let h = orchestrator.health();
        health.push(h.clone());
        let s = shutdown.clone();
        tasks.spawn(async move {
            match orchestrator.run(s).await {
                Ok(()) => h.set(tributary::HealthState::Stopped),
                Err(e) => {
                    tracing::error!(error = %e, "the saga orchestrator stopped");
                    h.set(tributary::HealthState::Failed(e.to_string()));
                }
            }
        });
    }
    for source in relays {
        let relay = Relay::new(source, backends.broker.clone(), RelayConfig::default());
        health.push(relay.health());
        let s = shutdown.clone();
        tasks.spawn(async move {
            // The relay logs its fatal error and its health shows it.
            let _ = relay.run(s).await;
        });
    }
    for g in consumer_groups(&services) {
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
            // The consumer logs its fatal error and its health shows it.
            let _ = consumer.run(s).await;
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

/// How often the broker's and the databases' own views of themselves are copied into health.
pub const BROKER_HEALTH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// A health component copied from `state` every [`BROKER_HEALTH_EVERY`]: the broker client's
/// view of its connection (a lost broker shows within that, where relays and consumers
/// notice only when their next call fails or times out, seconds later), or a database's
/// damage.
fn watch(
    name: &str,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
    state: impl Fn() -> tributary::HealthState + Send + 'static,
) -> Health {
    let health = Health::new(name.to_owned());
    let (h, shutdown) = (health.clone(), shutdown.clone());
    h.set(state());
    tasks.spawn(async move {
        let mut every = tokio::time::interval(BROKER_HEALTH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => h.set(state()),
            }
        }
        h.set(tributary::HealthState::Stopped);
    });
    health
}

/// The event topics of the choreography, for tools that audit the broker.
pub fn topics() -> Vec<Topic> {
    vec![customer_topic(), order_topic()]
}

/// Every topic of the application: the choreography's events, and the orchestrated flow's
/// commands and replies.
pub fn all_topics() -> Vec<Topic> {
    let mut all = topics();
    all.extend(orchestration::topics());
    all
}
