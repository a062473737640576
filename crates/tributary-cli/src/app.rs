//! `tributary demo`, `serve` and `admin`: the reference application.
//!
//! Backends are chosen by URL (see `customers_and_orders::system`): flags, then the
//! `TRIBUTARY_*` environment variables, then a TOML file given with `--config`, then the
//! embedded default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use customers_and_orders::demo::{self, DemoOptions};
use customers_and_orders::http::{self, AppState};
use customers_and_orders::system::{
    self, Backends, BrokerUrl, DbUrl, Publishing, ServiceName, Services,
};
use serde::Deserialize;

/// Where a deployment's data and broker are, from flags, environment or a file.
#[derive(Debug, Default, clap::Args)]
pub struct BackendArgs {
    /// Databases: sqlite://DIR (one file per service) or postgres://user@host/db (one schema
    /// per service).
    #[arg(long, env = "TRIBUTARY_DB")]
    db: Option<String>,
    /// Broker: embedded://DIR or nats://host:port.
    #[arg(long, env = "TRIBUTARY_BROKER")]
    broker: Option<String>,
    /// Shorthand for --db sqlite://DIR --broker embedded://DIR.
    #[arg(long, env = "TRIBUTARY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A TOML file with any of: db, broker, data_dir, service, listen.
    #[arg(long, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,
}

/// The settings a `--config` file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    db: Option<String>,
    broker: Option<String>,
    data_dir: Option<PathBuf>,
    service: Option<String>,
    listen: Option<SocketAddr>,
}

fn read_config(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("{} is not a valid configuration", path.display()))
}

/// The backends a command runs on, resolved from flags, environment and file.
struct Resolved {
    db: DbUrl,
    broker: BrokerUrl,
    file: FileConfig,
}

impl BackendArgs {
    fn resolve(&self, default_dir: Option<&Path>) -> anyhow::Result<Resolved> {
        let file = read_config(self.config.as_deref())?;
        let dir = self
            .data_dir
            .clone()
            .or_else(|| file.data_dir.clone())
            .or_else(|| default_dir.map(Path::to_owned));
        let db = match self.db.clone().or_else(|| file.db.clone()) {
            Some(url) => url.parse::<DbUrl>().map_err(anyhow::Error::msg)?,
            None => DbUrl::Sqlite(
                dir.clone()
                    .context("no database given: use --db or --data-dir")?,
            ),
        };
        let broker = match self.broker.clone().or_else(|| file.broker.clone()) {
            Some(url) => url.parse::<BrokerUrl>().map_err(anyhow::Error::msg)?,
            None => match (&db, dir) {
                (DbUrl::Sqlite(d), _) => BrokerUrl::Embedded { dir: d.clone() },
                (_, Some(d)) => BrokerUrl::Embedded { dir: d },
                _ => anyhow::bail!("no broker given: use --broker nats://… or embedded://DIR"),
            },
        };
        Ok(Resolved { db, broker, file })
    }
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Customers to create.
    #[arg(long, default_value_t = 1000)]
    customers: usize,
    /// Orders to place through each flow.
    #[arg(long, default_value_t = 10_000)]
    orders: usize,
    /// Which order flows to drive: choreography (orders without lines: the services react to
    /// each other's events), orchestration (orders with lines: the CreateOrder saga reserves
    /// credit and stock), or both at once on the same customers.
    #[arg(long, default_value = "both")]
    flow: String,
    /// Orders placed at the same time, per flow.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Offer orders at this rate per second, per flow (default: as fast as they are accepted).
    #[arg(long)]
    rate: Option<f64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// How the customer outbox reaches the broker: relay, or cdc (PostgreSQL's WAL).
    #[arg(long, default_value = "relay")]
    publish: String,
    #[command(flatten)]
    backends: BackendArgs,
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let b = &args.backends;
    let distributed = b.db.is_some() || b.broker.is_some() || b.config.is_some();
    let (db, broker) = if distributed {
        let r = b.resolve(None)?;
        (Some(r.db), Some(r.broker))
    } else {
        (None, None)
    };
    let on = match (&db, &broker) {
        (Some(db), Some(broker)) => format!("{db} + {broker}"),
        _ => "the embedded default (SQLite, synchronous=FULL)".into(),
    };
    eprintln!(
        "demo: {} customers, {} orders per flow ({}), {} at a time, on {on}",
        args.customers, args.orders, args.flow, args.concurrency
    );
    let summary = demo::run(DemoOptions {
        customers: args.customers,
        orders: args.orders,
        flow: args.flow.parse().map_err(anyhow::Error::msg)?,
        concurrency: args.concurrency,
        rate: args.rate,
        data_dir: b.data_dir.clone(),
        db,
        broker,
        cdc: match args.publish.as_str() {
            "relay" => false,
            "cdc" => true,
            other => anyhow::bail!("--publish {other:?}: use relay or cdc"),
        },
        progress: !args.quiet,
        ..DemoOptions::default()
    })
    .await?;
    if let Some(c) = &summary.choreography {
        println!(
            "choreography: {} approved, {} rejected, {} cancelled ({} orders in all)",
            c.approved, c.rejected, c.cancelled, c.orders
        );
        println!(
            "  throughput: {:.0} orders/s ({:.2} s until every order settled)",
            c.orders_per_sec, c.seconds_to_settle
        );
        println!(
            "  order created -> approved/rejected: p50 {:.1} ms, p99 {:.1} ms",
            c.latency_p50_ms, c.latency_p99_ms
        );
    }
    if let Some(o) = &summary.orchestration {
        println!(
            "orchestration: {} approved, {} rejected ({} orders in all); sagas {} completed, {} compensated",
            o.approved, o.rejected, o.orders, o.completed, o.compensated
        );
        println!(
            "  throughput: {:.0} sagas/s ({:.2} s from the first saga started to the last one ended)",
            o.sagas_per_sec, o.seconds_to_finish
        );
        println!(
            "  saga started -> ended: p50 {:.1} ms, p99 {:.1} ms",
            o.latency_p50_ms, o.latency_p99_ms
        );
    }
    let ryw = &summary.read_your_writes;
    if ryw.pairs > 0 {
        println!(
            "read your writes over HTTP ({} order-then-history pairs each): {} stale without tokens, {} with tokens ({} answered 503 after the bound); write -> consistent read p50 {:.1} ms, p99 {:.1} ms",
            ryw.pairs,
            ryw.stale_without_token,
            ryw.stale_with_token,
            ryw.not_yet_with_token,
            ryw.p50_ms,
            ryw.p99_ms
        );
    }
    println!("invariants:");
    for c in &summary.checks {
        println!(
            "  [{}] {} ({})",
            if c.ok { "ok" } else { "FAILED" },
            c.name,
            c.detail
        );
    }
    anyhow::ensure!(summary.ok(), "an invariant failed");
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "TRIBUTARY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Run one service (customer, order, history or inventory) instead of all four.
    #[arg(long, env = "TRIBUTARY_SERVICE")]
    service: Option<String>,
    /// How the customer outbox reaches the broker: relay (default), cdc (a capture of
    /// PostgreSQL's WAL in this process) or external (a separate `tributary cdc` process).
    #[arg(long, env = "TRIBUTARY_PUBLISH", default_value = "relay")]
    publish: String,
    /// The secret consistency tokens are signed with: the same in every service of a
    /// deployment (default on SQLite: DIR/consistency.key, created once).
    #[arg(long, env = "TRIBUTARY_CONSISTENCY_KEY", hide_env_values = true)]
    consistency_key: Option<String>,
    /// Also serve the web console (as `tributary console`) on this address, over this
    /// process's own databases and broker.
    #[arg(long, env = "TRIBUTARY_CONSOLE_LISTEN")]
    console_listen: Option<SocketAddr>,
    /// The console's bearer token (needed when --console-listen is not loopback).
    #[arg(long, env = "TRIBUTARY_CONSOLE_TOKEN", hide_env_values = true)]
    console_token: Option<String>,
    #[command(flatten)]
    backends: BackendArgs,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let resolved = args.backends.resolve(Some(Path::new("tributary-data")))?;
    let services = match args
        .service
        .clone()
        .or_else(|| resolved.file.service.clone())
    {
        Some(s) => vec![s.parse::<ServiceName>().map_err(anyhow::Error::msg)?],
        None => ServiceName::ALL.to_vec(),
    };
    let listen = args
        .listen
        .or(resolved.file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let publishing = match args.publish.as_str() {
        "relay" => Publishing::Relay,
        "cdc" => Publishing::Cdc(resolved.db.clone()),
        "external" => Publishing::External,
        other => anyhow::bail!("--publish {other:?}: use relay, cdc or external"),
    };
    // Bound before anything starts: a port in use is the first thing reported, with its
    // address, and no consumer has run by then.
    let listener = tributary_http::bind(listen).await?;
    let console_listener = match args.console_listen {
        Some(addr) => {
            crate::console::check_token(addr, args.console_token.as_deref())?;
            Some(tributary_http::bind(addr).await?)
        }
        None => None,
    };
    // Before the relays and consumers are built: they register their metrics then.
    let metrics = crate::metrics_http::install()?;
    let backends = Backends::connect(&resolved.db, &resolved.broker, &services).await?;
    let running = system::start_with(backends, publishing).await?;
    let names: Vec<_> = services.iter().map(|s| s.as_str()).collect();
    eprintln!(
        "serving {} on {} + {}",
        names.join(", "),
        resolved.db,
        resolved.broker
    );
    println!("listening on http://{}", listener.local_addr()?);
    if let Some(console_listener) = console_listener {
        eprintln!("console on http://{}", console_listener.local_addr()?);
        let services = running
            .backends
            .databases()
            .into_iter()
            .map(|(name, db)| crate::console::Service::open(format!("{name} service"), db))
            .collect();
        let console = crate::console::serve_open(
            console_listener,
            services,
            running.backends.broker.clone(),
            args.console_token.clone(),
            shutdown_signal(),
        );
        tokio::spawn(async move {
            if let Err(e) = console.await {
                tracing::error!(error = %e, "the console stopped");
            }
        });
    }
    let state = AppState {
        services: running.services.clone(),
        health: Arc::new(running.health()),
        consistency: http::Consistency::new(consistency_key(
            args.consistency_key.as_deref(),
            &resolved.db,
        )?),
    };
    let router = http::router(state).merge(crate::metrics_http::router(metrics));
    http::serve(listener, router, shutdown_signal()).await?;
    eprintln!("stopping: finishing in-flight batches");
    running.stop().await;
    Ok(())
}

/// The deployment's consistency key: given, or kept beside the SQLite files (created once),
/// or — for servers, where no file is shared — a fixed development key, said loudly.
fn consistency_key(given: Option<&str>, db: &DbUrl) -> anyhow::Result<tributary::ConsistencyKey> {
    if let Some(secret) = given {
        anyhow::ensure!(
            secret.len() >= 16,
            "the consistency key must be at least 16 characters"
        );
        return Ok(tributary::ConsistencyKey::new(secret.as_bytes().to_vec()));
    }
    match db {
        DbUrl::Sqlite(dir) => {
            let path = dir.join("consistency.key");
            let secret = match std::fs::read(&path) {
                Ok(secret) => secret,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let secret = format!(
                        "{}{}",
                        uuid::Uuid::now_v7().simple(),
                        uuid::Uuid::now_v7().simple()
                    )
                    .into_bytes();
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    std::fs::write(&path, &secret)
                        .with_context(|| format!("writing {}", path.display()))?;
                    secret
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            Ok(tributary::ConsistencyKey::new(secret))
        }
        DbUrl::Postgres { .. } => {
            eprintln!(
                "warning: no --consistency-key (TRIBUTARY_CONSISTENCY_KEY): consistency tokens are signed with a development key anyone can forge; give every service the same secret"
            );
            Ok(tributary::ConsistencyKey::new(
                b"tributary development consistency key".to_vec(),
            ))
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// `tributary admin`: operations on a deployment.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    backends: BackendArgs,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AdminCommand {
    /// Dead letters of the application's consumer groups.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Rebuilds the order-history view from the broker's retained log. Refused while the
    /// history service runs anywhere (its consumers hold their group's lock); the view fills
    /// up again when the service starts.
    RebuildHistory,
    /// Accepts the loss of a service's vanished database (SQLite file or PostgreSQL schema):
    /// its next start creates it again, empty, instead of being refused.
    ForgetService {
        /// customer, order, history or inventory.
        service: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum DeadLetterCommand {
    /// Lists unresolved dead letters, oldest first, one JSON object per line.
    List {
        /// Only this service's groups: customer, order, history or inventory.
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Replays the dead letters of the key of dead letter ID, in order, through the group's
    /// handler; stops at the first that fails again.
    Replay {
        #[arg(long)]
        service: String,
        id: u64,
    },
    /// Resolves dead letter ID without processing it.
    Skip {
        #[arg(long)]
        service: String,
        id: u64,
    },
}

fn service_arg(s: &str) -> anyhow::Result<ServiceName> {
    s.parse().map_err(anyhow::Error::msg)
}

pub async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    use customers_and_orders::system::{HISTORY_COLLECTION, HISTORY_GROUP};
    use tributary::{Consumer, DeadLetterAdmin};
    use tributary::{DeadLetterId, GroupName};

    let resolved = args.backends.resolve(Some(Path::new("tributary-data")))?;
    let only = match &args.command {
        AdminCommand::DeadLetters(DeadLetterCommand::List {
            service: Some(s), ..
        })
        | AdminCommand::DeadLetters(DeadLetterCommand::Replay { service: s, .. })
        | AdminCommand::DeadLetters(DeadLetterCommand::Skip { service: s, .. }) => {
            vec![service_arg(s)?]
        }
        AdminCommand::RebuildHistory => vec![ServiceName::History],
        // Works on the deployment's record alone: the service's database is gone.
        AdminCommand::ForgetService { service } => {
            return forget_service(&resolved.db, service_arg(service)?).await;
        }
        // The services this deployment has run (a deployment from before the inventory
        // service, or one that does not run it, has no inventory database to open).
        AdminCommand::DeadLetters(DeadLetterCommand::List { service: None, .. }) => {
            let ran = system::DeploymentRecord::of(&resolved.db)
                .services()
                .await?;
            if ran.is_empty() {
                ServiceName::ALL.to_vec()
            } else {
                ran
            }
        }
    };
    // Operations on a deployment that exists: nothing is created or migrated, so a mistyped
    // URL or prefix is "no such deployment", not a new empty one.
    let backends = Backends::connect_existing(&resolved.db, &resolved.broker, &only).await?;
    let services = Services::new(&backends);
    let groups = system::dead_letter_groups(&services);
    // A service can have several groups (the customer service's choreography group and its
    // saga participant): a letter is replayed through the handler of the group it failed in.
    let admin_for = |service: ServiceName| -> anyhow::Result<DeadLetterAdmin> {
        let mut of_service = groups.iter().filter(|g| g.service == service).peekable();
        let db = of_service
            .peek()
            .context("no consumer group for that service")?
            .db
            .clone();
        Ok(of_service.fold(DeadLetterAdmin::new(db), |admin, g| {
            admin.with_group(g.group.clone(), g.handler.clone(), Default::default())
        }))
    };
    match args.command {
        AdminCommand::DeadLetters(DeadLetterCommand::List { limit, .. }) => {
            for g in &groups {
                for letter in g.db.dead_letters().list(Some(&g.group), limit).await? {
                    println!("{}", serde_json::to_string(&letter)?);
                }
            }
        }
        AdminCommand::DeadLetters(DeadLetterCommand::Replay { service, id }) => {
            let outcome = admin_for(service_arg(&service)?)?
                .replay(DeadLetterId::new(id))
                .await?;
            println!("replayed {} dead letter(s)", outcome.replayed.len());
            if let Some((failed, reason)) = outcome.failed {
                anyhow::bail!("dead letter {failed} failed again: {reason}");
            }
        }
        AdminCommand::DeadLetters(DeadLetterCommand::Skip { service, id }) => {
            admin_for(service_arg(&service)?)?
                .skip(DeadLetterId::new(id))
                .await?;
            println!("skipped dead letter {id}");
        }
        AdminCommand::ForgetService { .. } => {} // done before connecting
        AdminCommand::RebuildHistory => {
            let group = GroupName::new(HISTORY_GROUP)?;
            let db = backends.history.as_ref().context("no history database")?;
            Consumer::request_rebuild(db, &group, &[HISTORY_COLLECTION]).await?;
            println!(
                "the order-history view was cleared; it is rebuilt from the broker's log when the history service starts"
            );
        }
    }
    Ok(())
}

/// `admin forget-service`: takes `service` off the deployment's record.
async fn forget_service(db: &DbUrl, service: ServiceName) -> anyhow::Result<()> {
    let record = system::DeploymentRecord::of(db);
    anyhow::ensure!(
        record.remove(service).await?,
        "{} does not list the {service} service: nothing to forget",
        record.describe()
    );
    println!("forgot the {service} service of {db}: its next start creates an empty database");
    Ok(())
}
