//! The `tributary` command.

mod allocator;
mod app;
mod bench;
mod cdc;
mod console;
mod fault_test;
mod logging;
mod metrics_http;
mod ops;
mod report;
mod sagas;
mod urls;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tributary",
    version,
    about = "Event-driven data management between microservices"
)]
struct Cli {
    /// How log lines on stderr are written: text, or one JSON object per line.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "TRIBUTARY_LOG_FORMAT"
    )]
    log_format: logging::LogFormat,
    /// Exports spans (HTTP requests, outbox create, relay send, consumer process) to this
    /// OpenTelemetry collector over OTLP/HTTP, e.g. `http://127.0.0.1:4318`; off by default.
    #[arg(
        long,
        global = true,
        env = "TRIBUTARY_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the reference application (customers, orders, order history) in one process on
    /// the embedded default with a workload, and checks its invariants.
    Demo(app::DemoArgs),
    /// Serves the reference application's HTTP API on the embedded default.
    Serve(app::ServeArgs),
    /// Operations on the reference application: dead letters, view rebuilds.
    Admin(app::AdminArgs),
    /// What a service database holds back: outbox backlog, open dead letters per group.
    Status(ops::status::StatusArgs),
    /// Dead letters of any consumer group in a service database.
    DeadLetters(ops::dead_letters::DeadLettersArgs),
    /// A web console: outbox backlogs, dead letters with replay and discard.
    Console(console::ConsoleArgs),
    /// Reads a service's event store.
    Events(ops::events::EventsArgs),
    /// Publishes a service database's outbox (or event store) to a broker, as its own process.
    Relay(ops::relay::RelayArgs),
    /// Saga instances in an orchestrator's database: list (by type, state, age) and show.
    Sagas(sagas::SagasArgs),
    /// Change data capture: publishes table changes, outbox rows or logical messages from
    /// PostgreSQL's WAL.
    Cdc(cdc::CdcArgs),
    /// Benchmarks; each result is one JSON object per line on stdout.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Child processes of the crash tests.
    #[command(subcommand, hide = true)]
    FaultTest(fault_test::FaultTestCommand),
}

fn main() -> std::process::ExitCode {
    allocator::tune();
    let cli = Cli::parse();
    // Kept until the process ends, so that the last spans are exported.
    let _telemetry = match logging::init(cli.log_format, cli.otlp_endpoint.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {}", report::one_line(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, each once, not a backtrace: this is for operators.
            eprintln!("error: {}", report::one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => app::demo(args).await,
            Command::Serve(args) => app::serve(args).await,
            Command::Admin(args) => app::admin(args).await,
            Command::Status(args) => ops::status::run(args).await,
            Command::DeadLetters(args) => ops::dead_letters::run(args).await,
            Command::Events(args) => ops::events::run(args).await,
            Command::Console(args) => console::run(args).await,
            Command::Relay(args) => ops::relay::run(args).await,
            Command::Sagas(args) => sagas::run(args).await,
            Command::Cdc(args) => cdc::run(args).await,
            Command::Bench(command) => bench::run(command).await,
            Command::FaultTest(command) => fault_test::run(command).await,
        }
    })
}
