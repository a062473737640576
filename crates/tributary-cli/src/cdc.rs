//! `tributary cdc`: change data capture from PostgreSQL's WAL, or from a MySQL/MariaDB binlog
//! (`--db mysql://…`), as a process of its own.

use anyhow::Context;
use tributary::BrokerUrl;
use tributary::CancellationToken;
use tributary::cdc::{
    CdcConfig, MessageCapture, OutboxCapture, PgReplicationConfig, PublicationName, SlotName,
    TableCapture, TableConfig, capture, ensure_publication, resnapshot, slot_lag,
};

#[derive(Debug, clap::Args)]
pub struct CdcArgs {
    /// The captured database: `postgres://user[:password]@host[:port]/database` (needs
    /// wal_level=logical and a user with REPLICATION), or
    /// `mysql://user[:password]@host[:port]/database` (binlog_format=ROW, see the docs).
    #[arg(long, env = "TRIBUTARY_DB")]
    db: String,
    /// Where to publish: nats://host:port or embedded://DIR.
    #[arg(long, env = "TRIBUTARY_BROKER")]
    broker: Option<String>,
    /// The replication slot (one active capture per slot); on MySQL/MariaDB, the capture's
    /// name (its stored position and lease).
    #[arg(long)]
    slot: String,
    /// The publication to read (default: the slot's name).
    #[arg(long)]
    publication: Option<String>,
    /// Create the publication for the captured tables and outbox if it is missing.
    #[arg(long)]
    create_publication: bool,
    /// Table changes of these tables (`schema.table`, comma separated).
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    /// Publish the tables' existing rows first (when the slot is created).
    #[arg(long)]
    snapshot: bool,
    /// Outbox tailing: publish the rows inserted into this outbox table (`schema.table`).
    #[arg(long)]
    outbox: Option<String>,
    /// With --outbox: delete rows once the broker acknowledged them.
    #[arg(long)]
    delete_published: bool,
    /// Publish pg_logical_emit_message(true, prefix, payload) messages (topic = prefix).
    #[arg(long)]
    messages: bool,
    /// Operator command after a lost or recreated slot: drop the slot and the capture's record
    /// of it, so the next start creates it again and re-publishes the snapshot.
    #[arg(long)]
    resnapshot: bool,
    /// Print the slot's lag (bytes of WAL and time behind) as JSON and exit.
    #[arg(long)]
    lag: bool,
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g. 127.0.0.1:9464.
    #[arg(long, env = "TRIBUTARY_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// How the process measures how many bytes of log its capture is behind.
enum LagProbe {
    /// WAL the PostgreSQL slot holds (`tributary_cdc_slot_lag_bytes`).
    Slot(Box<CdcConfig>),
    /// Binlog bytes after the stored position (`tributary_cdc_binlog_lag_bytes`).
    Binlog(Box<tributary::cdc::BinlogConfig>),
}

impl LagProbe {
    fn metric(&self) -> &'static str {
        match self {
            LagProbe::Slot(_) => "tributary_cdc_slot_lag_bytes",
            LagProbe::Binlog(_) => "tributary_cdc_binlog_lag_bytes",
        }
    }

    /// The lag now (`None`: the binlog capture never stored a position).
    async fn bytes(&self) -> anyhow::Result<Option<u64>> {
        Ok(match self {
            LagProbe::Slot(config) => Some(slot_lag(config).await?.bytes),
            LagProbe::Binlog(config) => tributary::cdc::binlog_lag(config).await?.bytes,
        })
    }
}

/// Serves `/metrics` when asked to, and samples the capture's lag every 15 s, which costs one
/// or two queries on a connection of its own. (The capture itself records its confirmed
/// position and the ages of its last confirmation and heartbeat.)
async fn serve_metrics(
    args: &CdcArgs,
    probe: LagProbe,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(addr) = args.metrics_listen else {
        return Ok(());
    };
    let handle = crate::metrics_http::install()?;
    let stop = shutdown.clone();
    crate::metrics_http::serve_alone(addr, handle, async move { stop.cancelled().await }).await?;
    {
        let gauge = metrics::gauge!(probe.metric(), "slot" => args.slot.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                match probe.bytes().await {
                    Ok(Some(bytes)) => gauge.set(bytes as f64),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "measuring the capture's lag failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
    Ok(())
}

fn config(args: &CdcArgs) -> anyhow::Result<CdcConfig> {
    let connection = PgReplicationConfig::from_url(&args.db).map_err(anyhow::Error::msg)?;
    let slot = SlotName::new(args.slot.clone()).context("--slot")?;
    let publication = PublicationName::new(
        args.publication
            .clone()
            .unwrap_or_else(|| args.slot.clone()),
    )
    .context("--publication")?;
    let mut config = CdcConfig::default()
        .with_connection(connection)
        .with_name(format!("cdc-{}", args.slot))
        .with_slot(slot)
        .with_publication(publication)
        .without_tables();
    if !args.tables.is_empty() {
        config = config.with_tables(TableCapture::only(
            args.tables
                .iter()
                .map(|t| TableConfig::new(t).with_snapshot(args.snapshot))
                .collect(),
        ));
    }
    if let Some(outbox) = &args.outbox {
        config = config.with_outbox(
            OutboxCapture::default()
                .with_table(outbox)
                .with_delete_published(args.delete_published),
        );
    }
    if args.messages {
        config = config.with_messages(MessageCapture::default());
    }
    anyhow::ensure!(
        config.tables.is_some()
            || config.outbox.is_some()
            || config.messages.is_some()
            || args.resnapshot
            || args.lag,
        "nothing to capture: give --tables, --outbox or --messages"
    );
    Ok(config)
}

pub async fn run(args: CdcArgs) -> anyhow::Result<()> {
    if args.db.starts_with("mysql://") || args.db.starts_with("mariadb://") {
        return binlog::run(args).await;
    }
    let config = config(&args)?;
    if args.resnapshot {
        resnapshot(&config).await?;
        println!(
            "slot {} dropped; the next start creates it and publishes the snapshot again",
            args.slot
        );
        return Ok(());
    }
    if args.lag {
        let lag = slot_lag(&config).await?;
        println!(
            "{}",
            serde_json::json!({
                "slot": lag.slot,
                "current_wal_lsn": lag.current_wal_lsn.to_string(),
                "confirmed_flush_lsn": lag.confirmed_flush_lsn.map(|l| l.to_string()),
                "bytes": lag.bytes,
                "wal_status": lag.wal_status.map(|s| format!("{s:?}")),
            })
        );
        return Ok(());
    }
    if args.create_publication {
        let mut tables = args.tables.clone();
        tables.extend(args.outbox.clone());
        let created =
            ensure_publication(&config.connection, &config.publications[0], &tables).await?;
        if created {
            eprintln!("created publication {}", config.publications[0]);
        }
    }
    let broker_url: BrokerUrl = args
        .broker
        .as_deref()
        .context("--broker is required")?
        .parse()
        .map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    serve_metrics(&args, LagProbe::Slot(Box::new(config.clone())), &shutdown).await?;
    let broker = broker_url.connect().await?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::app::shutdown_signal().await;
        stop.cancel();
    });
    eprintln!("capturing slot {} into {broker_url}", args.slot);
    capture(config, broker, shutdown).await?;
    Ok(())
}

/// `tributary cdc --db mysql://…`: the binlog capture (see `tributary::cdc::binlog`).
mod binlog {
    use anyhow::Context;
    use tributary::BrokerUrl;
    use tributary::CancellationToken;
    use tributary::cdc::capture::{OutboxCapture, TableCapture};
    use tributary::cdc::{BinlogConfig, binlog_lag, capture_binlog, resnapshot_binlog};

    use super::CdcArgs;

    fn config(args: &CdcArgs) -> anyhow::Result<BinlogConfig> {
        anyhow::ensure!(
            !args.messages,
            "MySQL and MariaDB have no transactional logical messages: write an outbox table \
             and use --outbox"
        );
        let url = args.db.replacen("mariadb://", "mysql://", 1);
        let mut config = BinlogConfig::default()
            .with_url(url)
            .with_name(format!("cdc-{}", args.slot))
            .with_capture(args.slot.clone())
            .without_tables();
        if !args.tables.is_empty() {
            let tables = args
                .tables
                .iter()
                .map(|t| config.table(t).with_snapshot(args.snapshot))
                .collect();
            config = config.with_tables(TableCapture::only(tables));
        }
        if let Some(outbox) = &args.outbox {
            let table = config.table(outbox);
            config = config.with_outbox(
                OutboxCapture::default()
                    .with_table(&format!("{}.{}", table.schema, table.table))
                    .with_delete_published(args.delete_published),
            );
        }
        anyhow::ensure!(
            config.tables.is_some() || config.outbox.is_some() || args.resnapshot || args.lag,
            "nothing to capture: give --tables or --outbox"
        );
        Ok(config)
    }

    pub(super) async fn run(args: CdcArgs) -> anyhow::Result<()> {
        let mut config = config(&args)?;
        if config.tables.is_none() && config.outbox.is_none() {
            // --lag and --resnapshot need no mode; the source wants one.
            config = config.with_outbox(OutboxCapture::default());
        }
        if args.resnapshot {
            resnapshot_binlog(&config).await?;
            println!(
                "capture {} forgotten; the next start takes a new snapshot (or starts at the binlog's end)",
                args.slot
            );
            return Ok(());
        }
        if args.lag {
            let lag = binlog_lag(&config).await?;
            println!(
                "{}",
                serde_json::json!({
                    "capture": lag.capture,
                    "stored": lag.stored.as_ref().map(ToString::to_string),
                    "current": lag.current.to_string(),
                    "bytes": lag.bytes,
                    "transactions": lag.transactions,
                    "stored_at": lag.stored_at,
                })
            );
            return Ok(());
        }
        let broker_url: BrokerUrl = args
            .broker
            .as_deref()
            .context("--broker is required")?
            .parse()
            .map_err(anyhow::Error::msg)?;
        let shutdown = CancellationToken::new();
        super::serve_metrics(
            &args,
            super::LagProbe::Binlog(Box::new(config.clone())),
            &shutdown,
        )
        .await?;
        let broker = broker_url.connect().await?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            crate::app::shutdown_signal().await;
            stop.cancel();
        });
        eprintln!("capturing the binlog as {} into {broker_url}", args.slot);
        capture_binlog(config, broker, shutdown).await?;
        Ok(())
    }
}
