//! `tributary bench …`: benchmarks that print one JSON object per result on stdout.

mod baseline;
mod cdc;
mod console;
mod event_store;
mod pipeline;
mod postgres;
mod report;
mod saga;

pub use event_store::EventStoreBenchArgs;
pub use pipeline::PipelineBenchArgs;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Event store appends: one_event_per_txn, eight_writers, hundred_events_per_txn.
    Append(EventStoreBenchArgs),
    /// Event store reads: read_stream, read_all.
    Read(EventStoreBenchArgs),
    /// Outbox -> relay -> broker -> consumer: sustained, fixed_rate, relay_restart.
    Pipeline(PipelineBenchArgs),
    /// Change data capture from PostgreSQL's WAL: throughput (vs pg_recvlogical), latency.
    Cdc(cdc::CdcBenchArgs),
    /// Orchestrated three-step order sagas beside the same flow as a choreography.
    Saga(saga::SagaBenchArgs),
    /// The web console's overview with many consumer groups and dead letters.
    Console(console::ConsoleBenchArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(args) => event_store::append(args).await,
        BenchCommand::Read(args) => event_store::read(args).await,
        BenchCommand::Pipeline(args) => pipeline::run(args).await,
        BenchCommand::Cdc(args) => cdc::run(args).await,
        BenchCommand::Saga(args) => saga::run(args).await,
        BenchCommand::Console(args) => console::run(args).await,
    }
}
