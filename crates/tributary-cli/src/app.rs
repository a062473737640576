//! `tributary demo` and `tributary serve`: the reference application.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use customers_and_orders::demo::{self, DemoOptions};
use customers_and_orders::http::{self, AppState};
use customers_and_orders::system::{self, Backends};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Customers to create.
    #[arg(long, default_value_t = 1000)]
    customers: usize,
    /// Orders to place.
    #[arg(long, default_value_t = 10_000)]
    orders: usize,
    /// Orders placed at the same time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Offer orders at this rate per second (default: as fast as they are accepted).
    #[arg(long)]
    rate: Option<f64>,
    /// Keep the databases here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    eprintln!(
        "demo: {} customers, {} orders, {} at a time, on the embedded default (SQLite, synchronous=FULL)",
        args.customers, args.orders, args.concurrency
    );
    let summary = demo::run(DemoOptions {
        customers: args.customers,
        orders: args.orders,
        concurrency: args.concurrency,
        rate: args.rate,
        data_dir: args.data_dir,
        progress: !args.quiet,
        ..DemoOptions::default()
    })
    .await?;
    println!(
        "orders: {} approved, {} rejected, {} cancelled ({} in all)",
        summary.approved, summary.rejected, summary.cancelled, summary.orders
    );
    println!(
        "throughput: {:.0} orders/s ({:.2} s until every order settled)",
        summary.orders_per_sec, summary.seconds_to_settle
    );
    println!(
        "order created -> approved/rejected: p50 {:.1} ms, p99 {:.1} ms",
        summary.latency_p50_ms, summary.latency_p99_ms
    );
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
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory of the databases (one SQLite file per service, plus the broker's).
    #[arg(long, default_value = "tributary-data")]
    data_dir: PathBuf,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let running = system::start(Backends::embedded(&args.data_dir)?).await?;
    eprintln!("data in {}", args.data_dir.display());
    let state = AppState {
        services: running.services.clone(),
        health: Arc::new(running.health()),
    };
    http::serve(args.listen, http::router(state), shutdown_signal()).await?;
    eprintln!("stopping: finishing in-flight batches");
    running.stop().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
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

/// `tributary admin`: operating on a stopped (or running) embedded deployment.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Directory of the databases.
    #[arg(long, default_value = "tributary-data")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AdminCommand {
    /// Dead letters of the application's consumer groups.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Rebuilds the order-history view from the broker's retained log. Run it while `serve`
    /// is stopped; the view fills up again when `serve` starts.
    RebuildHistory,
}

#[derive(Debug, clap::Subcommand)]
enum DeadLetterCommand {
    /// Lists unresolved dead letters, oldest first, one JSON object per line.
    List {
        /// Only this service's groups: customers, orders or history.
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

pub async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    use customers_and_orders::system::{
        HISTORY_COLLECTION, HISTORY_GROUP, Services, consumer_groups,
    };
    use tributary_core::{DeadLetterId, GroupName};
    use tributary_runtime::{Consumer, DeadLetterAdmin};

    anyhow::ensure!(
        args.data_dir.join("broker.db").exists(),
        "{} holds no Tributary deployment (no broker.db)",
        args.data_dir.display()
    );
    let backends = Backends::embedded(&args.data_dir)?;
    let services = Services::new(&backends);
    let groups = consumer_groups(&backends, &services);
    let find = |service: &str| {
        groups.iter().find(|g| g.service == service).ok_or_else(|| {
            anyhow::anyhow!("unknown service {service:?}: use customers, orders or history")
        })
    };
    let admin_for = |service: &str| -> anyhow::Result<DeadLetterAdmin> {
        let g = find(service)?;
        Ok(DeadLetterAdmin::new(g.db.clone()).with_group(
            g.group.clone(),
            g.handler.clone(),
            Default::default(),
        ))
    };
    match args.command {
        AdminCommand::DeadLetters(DeadLetterCommand::List { service, limit }) => {
            let chosen: Vec<_> = match &service {
                Some(s) => vec![find(s)?],
                None => groups.iter().collect(),
            };
            for g in chosen {
                for letter in g.db.dead_letters().list(Some(&g.group), limit).await? {
                    println!("{}", serde_json::to_string(&letter)?);
                }
            }
        }
        AdminCommand::DeadLetters(DeadLetterCommand::Replay { service, id }) => {
            let outcome = admin_for(&service)?.replay(DeadLetterId::new(id)).await?;
            println!("replayed {} dead letter(s)", outcome.replayed.len());
            if let Some((failed, reason)) = outcome.failed {
                anyhow::bail!("dead letter {failed} failed again: {reason}");
            }
        }
        AdminCommand::DeadLetters(DeadLetterCommand::Skip { service, id }) => {
            admin_for(&service)?.skip(DeadLetterId::new(id)).await?;
            println!("skipped dead letter {id}");
        }
        AdminCommand::RebuildHistory => {
            let group = GroupName::new(HISTORY_GROUP)?;
            Consumer::request_rebuild(&backends.history, &group, &[HISTORY_COLLECTION]).await?;
            println!(
                "the order-history view was cleared; it is rebuilt from the broker's log when serve starts"
            );
        }
    }
    Ok(())
}
