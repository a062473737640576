//! `tributary bench saga`: a three-step order saga (reserve credit at the customer service,
//! reserve stock at the inventory service, approve in the order service — the pivot) run by
//! the orchestrator, beside the same business flow as a choreography (each service reacting
//! to the previous one's event), in the same run, on the embedded default (one SQLite file
//! per service and the embedded broker, in one process) or, with `--db postgres://…
//! --broker nats://…`, on PostgreSQL (fresh schemas) and NATS JetStream (fresh streams).
//!
//! Both flows end with the order service publishing `OrderApproved`, which a downstream
//! consumer (a database of its own) observes: "completed" is when the approval is seen there,
//! so both flows are measured from the same points.
//!
//! - `throughput`: `--sagas` orders started by `--concurrency` tasks as fast as they can;
//!   orders per second from the first start to the last approval seen.
//! - `fixed_rate`: `--rate` orders per second offered for `--seconds`; start → approval seen
//!   latency, p50/p99/max.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tributary::saga::{
    Command, Compensation, LocalError, Orchestrator, OrchestratorConfig, Participant, Reply,
    SagaDefinition, SagaId, Step,
};
use tributary::sqlite::{SqliteBroker, SqliteBrokerConfig, SqliteConfig, SqliteDatabase};
use tributary::{
    Broker, CancellationToken, Consumer, ConsumerConfig, Database, Dispatch, Envelope, Error,
    GroupName, HandlerError, Payload, Relay, RelayConfig, Topic, UnitOfWorkExt,
};

use super::report::BenchResult;
use crate::urls::named_database;

#[derive(Clone, Debug, clap::Args)]
pub struct SagaBenchArgs {
    /// Run only this scenario: throughput or fixed_rate.
    #[arg(long)]
    pub scenario: Option<String>,
    /// Orders for `throughput`.
    #[arg(long, default_value_t = 5000)]
    pub sagas: u64,
    /// Concurrent tasks starting orders in `throughput`.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u64,
    /// Offered orders per second for `fixed_rate`.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds of offered load for `fixed_rate`.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
    /// Distributed: a PostgreSQL URL.
    #[arg(long)]
    pub db: Option<String>,
    /// Distributed: a NATS URL.
    #[arg(long)]
    pub broker: Option<String>,
}

const SCENARIOS: &[&str] = &["throughput", "fixed_rate"];
const SERVICES: &[&str] = &["orders", "customers", "inventory", "downstream"];
const TOPICS: &[&str] = &[
    "bench-credit",
    "bench-stock",
    "BenchOrder-replies",
    "bench-approved",
    "chor-orders",
    "chor-credit",
    "chor-stock",
];
/// Customers and SKUs the orders spread over (so that units rarely race for one document).
const KEYS: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Choreography,
    Orchestration,
}

impl Flow {
    fn name(self) -> &'static str {
        match self {
            Flow::Choreography => "choreography",
            Flow::Orchestration => "orchestration",
        }
    }
}

pub async fn run(args: SagaBenchArgs) -> anyhow::Result<()> {
    let chosen: Vec<&str> = match &args.scenario {
        None => SCENARIOS.to_vec(),
        Some(s) if SCENARIOS.contains(&s.as_str()) => vec![s.as_str()],
        Some(s) => anyhow::bail!(
            "unknown scenario {s:?}; choose one of {}",
            SCENARIOS.join(", ")
        ),
    };
    for scenario in chosen {
        let mut figures = Vec::new();
        for flow in [Flow::Choreography, Flow::Orchestration] {
            let temp = tempfile::Builder::new()
                .prefix("tributary-saga-")
                .tempdir()?;
            let backend = Backend::open(&args, temp.path()).await?;
            let outcome = measure(&args, &backend, scenario, flow).await;
            backend.remove().await;
            figures.push(outcome?);
        }
        let (chor, orch) = (&figures[0], &figures[1]);
        let settings = json!({
            "partitions": args.partitions,
            "concurrency": args.concurrency,
            "steps": "reserve credit (compensatable), reserve stock (compensatable), approve (pivot, local)",
            "synchronous": if args.db.is_some() {
                "the server's synchronous_commit (PostgreSQL)"
            } else {
                "FULL (SQLite)"
            },
            "completed": "OrderApproved seen by a downstream consumer",
        });
        for (flow, (count, elapsed, latencies)) in [
            (Flow::Choreography.name(), chor),
            (Flow::Orchestration.name(), orch),
        ] {
            let mut latencies = latencies.clone();
            let mut result = BenchResult::new(
                "saga",
                &format!("{scenario}_{flow}"),
                backend_name(&args),
                *count,
                *elapsed,
            )
            .with_latencies(&mut latencies)
            .with_settings(settings.clone());
            if scenario == "fixed_rate" {
                result.offered_rate = Some(args.rate as f64);
            }
            if flow == "orchestration" {
                result = result.against(
                    "choreography",
                    chor.0 as f64 / chor.1.as_secs_f64().max(1e-9),
                );
            }
            result.emit();
        }
    }
    Ok(())
}

fn backend_name(args: &SagaBenchArgs) -> &'static str {
    if args.db.is_some() {
        "postgres+nats"
    } else {
        "embedded"
    }
}

/// Runs one flow in one scenario: (orders completed, elapsed, latencies).
async fn measure(
    args: &SagaBenchArgs,
    backend: &Backend,
    scenario: &str,
    flow: Flow,
) -> anyhow::Result<(u64, Duration, Vec<Duration>)> {
    let system = System::start(args, backend, flow).await?;
    let outcome = match scenario {
        "throughput" => {
            let started = Instant::now();
            let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut starters = Vec::new();
            for _ in 0..args.concurrency.max(1) {
                let (next, system) = (next.clone(), system.starter());
                let total = args.sagas;
                starters.push(tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n >= total {
                            return Ok::<_, anyhow::Error>(());
                        }
                        system.start_order(n).await?;
                    }
                }));
            }
            for s in starters {
                s.await??;
            }
            system.wait_for(args.sagas).await?;
            (args.sagas, started.elapsed(), Vec::new())
        }
        _ => {
            let started = Instant::now();
            let total = args.rate * args.seconds;
            let every = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut starts = Vec::new();
            for n in 0..total {
                ticker.tick().await;
                let s = system.starter();
                starts.push(tokio::spawn(async move { s.start_order(n).await }));
            }
            for s in starts {
                s.await??;
            }
            system.wait_for(total).await?;
            let latencies = system.latencies();
            (total, started.elapsed(), latencies)
        }
    };
    system.stop().await;
    Ok(outcome)
}

/// Where the four services' databases and the broker live.
struct Backend {
    dbs: HashMap<&'static str, Arc<dyn Database>>,
    broker: Arc<dyn Broker>,
    cleanup: Option<(String, String, String, String)>,
}

impl Backend {
    async fn open(args: &SagaBenchArgs, dir: &Path) -> anyhow::Result<Self> {
        match (&args.db, &args.broker) {
            (None, None) => {
                let sqlite = SqliteConfig::default();
                let mut dbs = HashMap::new();
                for s in SERVICES {
                    let db: Arc<dyn Database> = Arc::new(SqliteDatabase::open(
                        dir.join(format!("{s}.db")),
                        sqlite.clone(),
                    )?);
                    dbs.insert(*s, db);
                }
                let broker = SqliteBroker::open(
                    dir.join("broker.db"),
                    SqliteBrokerConfig::default().with_sqlite(sqlite),
                )?;
                Ok(Self {
                    dbs,
                    broker: Arc::new(broker),
                    cleanup: None,
                })
            }
            (Some(pg), Some(nats)) => {
                let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
                let schema_prefix = format!("bench_saga_{run}_");
                let stream_prefix = format!("BSAGA{}", run.to_uppercase());
                let db_url = format!("{pg}?schema_prefix={schema_prefix}");
                let mut dbs = HashMap::new();
                for s in SERVICES {
                    dbs.insert(*s, named_database(&db_url, s)?.connect().await?);
                }
                let broker =
                    tributary::connect_broker(&format!("{nats}?prefix={stream_prefix}")).await?;
                Ok(Self {
                    dbs,
                    broker,
                    cleanup: Some((pg.clone(), schema_prefix, nats.clone(), stream_prefix)),
                })
            }
            _ => anyhow::bail!("give both --db postgres://… and --broker nats://…, or neither"),
        }
    }

    fn db(&self, service: &str) -> Arc<dyn Database> {
        self.dbs[service].clone()
    }

    async fn remove(self) {
        let Some((pg, schema_prefix, nats, stream_prefix)) = self.cleanup else {
            return;
        };
        drop(self.dbs);
        for s in SERVICES {
            let config = tributary::postgres::PgConfig::default()
                .with_url(pg.clone())
                .with_schema(format!("{schema_prefix}{s}"));
            if let Ok(db) = tributary::postgres::PgDatabase::connect(config).await {
                let _ = db.drop_schema().await;
            }
        }
        let config = tributary::nats::NatsBrokerConfig::default()
            .with_url(nats)
            .with_stream_prefix(stream_prefix);
        if let Ok(nats) = tributary::nats::NatsBroker::connect(config).await {
            for t in TOPICS {
                if let Ok(t) = Topic::new(*t) {
                    let _ = nats.delete_topic(&t).await;
                }
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Order {
    id: String,
    customer: String,
    sku: String,
    amount: i64,
}

fn order(n: u64) -> Order {
    Order {
        id: uuid::Uuid::now_v7().to_string(),
        customer: format!("c{}", n % KEYS),
        sku: format!("s{}", (n * 7) % KEYS),
        amount: 1,
    }
}

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap_or_else(|e| unreachable!("{name} is a valid topic: {e}"))
}

/// Reserves one unit of the counter `collection/id` (credit or stock): the participant's work.
async fn reserve(
    unit: &mut dyn tributary::UnitOfWork,
    collection: &str,
    id: &str,
    n: i64,
) -> Result<(), Error> {
    let used: i64 = unit.get_as(collection, id).await?.unwrap_or(0);
    unit.put_as(collection, id, &(used + n)).await
}

/// The order service's approval: the order document and the `OrderApproved` event.
async fn approve(unit: &mut dyn tributary::UnitOfWork, order: &Order) -> Result<(), Error> {
    unit.put_as(
        "orders",
        &order.id,
        &json!({"state": "APPROVED", "customer": order.customer}),
    )
    .await?;
    let approved = Envelope::new(
        "orders",
        "OrderApproved",
        Payload::from_value(&json!({"id": order.id}))?,
    )
    .with_subject(order.id.clone());
    unit.publish(&topic("bench-approved"), approved).await
}

/// The running services of one flow, and the downstream consumer's observations.
struct System {
    flow: Flow,
    orders: Arc<dyn Database>,
    orchestrator: Option<Orchestrator<Order>>,
    started: Arc<Mutex<HashMap<String, Instant>>>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    seen: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a task needs to start orders.
#[derive(Clone)]
struct Starter {
    flow: Flow,
    orders: Arc<dyn Database>,
    orchestrator: Option<Orchestrator<Order>>,
    started: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Starter {
    async fn start_order(&self, n: u64) -> anyhow::Result<()> {
        let o = order(n);
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(o.id.clone(), Instant::now());
        match (&self.orchestrator, self.flow) {
            (Some(orchestrator), Flow::Orchestration) => {
                orchestrator
                    .start_with_id(SagaId::new(o.id.clone())?, o)
                    .await?;
            }
            _ => {
                self.orders
                    .transact(move |unit| {
                        Box::pin(async move {
                            unit.put_as("orders", &o.id, &json!({"state": "NEW"}))
                                .await?;
                            let created =
                                Envelope::new("orders", "OrderCreated", Payload::from_value(&o)?)
                                    .with_subject(o.id.clone());
                            unit.publish(&topic("chor-orders"), created).await
                        })
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

fn spawn<F>(tasks: &mut Vec<tokio::task::JoinHandle<()>>, what: &'static str, f: F)
where
    F: std::future::Future<Output = Result<(), Error>> + Send + 'static,
{
    tasks.push(tokio::spawn(async move {
        if let Err(e) = f.await {
            eprintln!("{what} stopped: {e}");
        }
    }));
}

impl System {
    async fn start(args: &SagaBenchArgs, backend: &Backend, flow: Flow) -> anyhow::Result<Self> {
        for t in TOPICS {
            backend
                .broker
                .ensure_topic(&topic(t), args.partitions)
                .await?;
        }
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let broker = backend.broker.clone();
        for s in SERVICES {
            let relay = Relay::new(
                backend.db(s).outbox_source(),
                broker.clone(),
                RelayConfig::default(),
            );
            spawn(&mut tasks, "a relay", relay.run(shutdown.clone()));
        }
        let consumer =
            |service: &str, group: &str, topics: &[&str], handler: Arc<dyn tributary::Handler>| {
                Consumer::new(
                    GroupName::new(group)?,
                    topics.iter().map(|t| topic(t)).collect(),
                    backend.db(service),
                    broker.clone(),
                    handler,
                    ConsumerConfig::default(),
                )
            };

        // Downstream: sees every approval, of either flow.
        let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let (seen_tx, seen) = tokio::sync::watch::channel(0u64);
        let seen_tx = Arc::new(seen_tx);
        let (s, l) = (started.clone(), latencies.clone());
        let downstream =
            Dispatch::new().on("OrderApproved", move |a: serde_json::Value, _e, _unit| {
                let (s, l, seen) = (s.clone(), l.clone(), seen_tx.clone());
                Box::pin(async move {
                    let id = a["id"].as_str().unwrap_or_default();
                    // A unit run again sees the order a second time: only the first counts.
                    if let Some(at) = s.lock().unwrap_or_else(|p| p.into_inner()).remove(id) {
                        l.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(at.elapsed());
                        seen.send_modify(|n| *n += 1);
                    }
                    Ok::<_, HandlerError>(())
                })
            });
        spawn(
            &mut tasks,
            "downstream",
            consumer(
                "downstream",
                "downstream",
                &["bench-approved"],
                Arc::new(downstream),
            )?
            .run(shutdown.clone()),
        );

        let mut orchestrator = None;
        match flow {
            Flow::Orchestration => {
                let definition = SagaDefinition::<Order>::builder("BenchOrder")?
                    .compensatable(
                        Step::send("reserve-credit", topic("bench-credit"), |o: &Order| {
                            Command::new("ReserveCredit", o)
                        }),
                        Compensation::send(topic("bench-credit"), |o: &Order| {
                            Command::new("ReleaseCredit", o)
                        }),
                    )
                    .compensatable(
                        Step::send("reserve-stock", topic("bench-stock"), |o: &Order| {
                            Command::new("ReserveStock", o)
                        }),
                        Compensation::send(topic("bench-stock"), |o: &Order| {
                            Command::new("ReleaseStock", o)
                        }),
                    )
                    .pivot(Step::local("approve", |o: &mut Order, unit| {
                        Box::pin(async move { Ok::<_, LocalError>(approve(unit, o).await?) })
                    }))
                    .build();
                let o = Orchestrator::new(
                    definition,
                    backend.db("orders"),
                    broker.clone(),
                    OrchestratorConfig::default().with_service("orders"),
                );
                spawn(
                    &mut tasks,
                    "the orchestrator",
                    o.clone().run(shutdown.clone()),
                );
                orchestrator = Some(o);
                let customers = Participant::new("customers")
                    .on("ReserveCredit", |o: Order, _c, unit| {
                        Box::pin(async move {
                            reserve(unit, "credit", &o.customer, o.amount).await?;
                            Ok(Reply::ok())
                        })
                    })
                    .on_compensation("ReleaseCredit", |o: Order, _c, unit| {
                        Box::pin(async move {
                            reserve(unit, "credit", &o.customer, -o.amount).await?;
                            Ok(Reply::ok())
                        })
                    });
                spawn(
                    &mut tasks,
                    "customers",
                    consumer(
                        "customers",
                        "customers",
                        &["bench-credit"],
                        Arc::new(customers),
                    )?
                    .run(shutdown.clone()),
                );
                let inventory = Participant::new("inventory")
                    .on("ReserveStock", |o: Order, _c, unit| {
                        Box::pin(async move {
                            reserve(unit, "stock", &o.sku, 1).await?;
                            Ok(Reply::ok())
                        })
                    })
                    .on_compensation("ReleaseStock", |o: Order, _c, unit| {
                        Box::pin(async move {
                            reserve(unit, "stock", &o.sku, -1).await?;
                            Ok(Reply::ok())
                        })
                    });
                spawn(
                    &mut tasks,
                    "inventory",
                    consumer(
                        "inventory",
                        "inventory",
                        &["bench-stock"],
                        Arc::new(inventory),
                    )?
                    .run(shutdown.clone()),
                );
            }
            Flow::Choreography => {
                let customers = Dispatch::new().on("OrderCreated", |o: Order, cause, unit| {
                    Box::pin(async move {
                        reserve(unit, "credit", &o.customer, o.amount).await?;
                        let e =
                            Envelope::new("customers", "CreditReserved", Payload::from_value(&o)?)
                                .with_subject(o.id.clone())
                                .caused_by(cause);
                        unit.publish(&topic("chor-credit"), e).await?;
                        Ok::<_, HandlerError>(())
                    })
                });
                spawn(
                    &mut tasks,
                    "customers",
                    consumer(
                        "customers",
                        "customers",
                        &["chor-orders"],
                        Arc::new(customers),
                    )?
                    .run(shutdown.clone()),
                );
                let inventory = Dispatch::new().on("CreditReserved", |o: Order, cause, unit| {
                    Box::pin(async move {
                        reserve(unit, "stock", &o.sku, 1).await?;
                        let e =
                            Envelope::new("inventory", "StockReserved", Payload::from_value(&o)?)
                                .with_subject(o.id.clone())
                                .caused_by(cause);
                        unit.publish(&topic("chor-stock"), e).await?;
                        Ok::<_, HandlerError>(())
                    })
                });
                spawn(
                    &mut tasks,
                    "inventory",
                    consumer(
                        "inventory",
                        "inventory",
                        &["chor-credit"],
                        Arc::new(inventory),
                    )?
                    .run(shutdown.clone()),
                );
                let orders = Dispatch::new().on("StockReserved", |o: Order, _cause, unit| {
                    Box::pin(async move {
                        approve(unit, &o).await?;
                        Ok::<_, HandlerError>(())
                    })
                });
                spawn(
                    &mut tasks,
                    "orders",
                    consumer("orders", "orders", &["chor-stock"], Arc::new(orders))?
                        .run(shutdown.clone()),
                );
            }
        }
        Ok(Self {
            flow,
            orders: backend.db("orders"),
            orchestrator,
            started,
            latencies,
            seen,
            shutdown,
            tasks,
        })
    }

    fn starter(&self) -> Starter {
        Starter {
            flow: self.flow,
            orders: self.orders.clone(),
            orchestrator: self.orchestrator.clone(),
            started: self.started.clone(),
        }
    }

    /// Waits until the downstream consumer saw `n` approvals (at most ten minutes).
    async fn wait_for(&self, n: u64) -> anyhow::Result<()> {
        let mut seen = self.seen.clone();
        tokio::time::timeout(Duration::from_secs(600), seen.wait_for(|s| *s >= n))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {n} orders completed in ten minutes",
                    *self.seen.borrow()
                )
            })??;
        Ok(())
    }

    fn latencies(&self) -> Vec<Duration> {
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
