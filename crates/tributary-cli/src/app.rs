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
