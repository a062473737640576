//! `tributary relay --db URL --broker URL`: the relay of any service database as a process of
//! its own (one active per source through the lease; others stand by), with `/metrics`.

use std::net::SocketAddr;

use anyhow::Context;
use tributary::{BrokerUrl, CancellationToken, DatabaseUrl, Relay, RelayConfig, Topic};

#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// The service's database: sqlite://PATH or postgres://user@host/db[?schema=S].
    #[arg(long, env = "TRIBUTARY_DB")]
    pub db: String,
    /// Where to publish: embedded://DIR or nats://host:port.
    #[arg(long, env = "TRIBUTARY_BROKER")]
    pub broker: String,
    /// What to publish: the outbox table, or the event store (by position, with a cursor).
    #[arg(long, default_value = "outbox")]
    pub source: String,
    /// With --source events: the cursor's name.
    #[arg(long, default_value = "relay")]
    pub name: String,
    /// With --source events: the topic of events whose aggregate type is not a topic name.
    #[arg(long)]
    pub topic: Option<String>,
    /// The `service` label of the relay's metrics.
    #[arg(long)]
    pub service: Option<String>,
    /// Serve Prometheus metrics on this address (`GET /metrics`).
    #[arg(long, env = "TRIBUTARY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    if let Some(addr) = args.metrics_listen {
        let handle = crate::metrics_http::install()?;
        let stop = shutdown.clone();
        crate::metrics_http::serve_alone(addr, handle, async move { stop.cancelled().await })
            .await?;
    }
    let db_url: DatabaseUrl = args.db.parse()?;
    let broker_url: BrokerUrl = args.broker.parse()?;
    let db = db_url.connect().await?;
    let broker = broker_url.connect().await?;
    let source = match args.source.as_str() {
        "outbox" => db.outbox_source(),
        "events" => {
            let topic = args.topic.as_deref().context(
                "--source events needs --topic (for events without a topic of their own)",
            )?;
            db.event_store_source(&args.name, Topic::new(topic)?)
        }
        other => anyhow::bail!("--source {other:?}: use outbox or events"),
    };
    let mut config = RelayConfig::default();
    if let Some(service) = &args.service {
        config = config.with_service(service.clone());
    }
    let relay = Relay::new(source, broker, config);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::app::shutdown_signal().await;
        stop.cancel();
    });
    eprintln!("relaying {} of {db_url} to {broker_url}", args.source);
    relay.run(shutdown).await?;
    Ok(())
}
