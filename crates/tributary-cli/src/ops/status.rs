//! `tributary status --db URL [--broker URL]`: what a service's database holds back — the
//! outbox backlog and every consumer group's open dead letters — and, with the broker, how far
//! behind every consumer group is on every partition; as text or `--json`, with a non-zero
//! exit when a threshold is passed.

use serde::Serialize;
use tributary::{Broker, Database, DeadLetterSummary, GroupLag, GroupName, LeaseState};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The service's database: sqlite://PATH or postgres://user@host/db[?schema=S].
    #[arg(long, env = "TRIBUTARY_DB")]
    pub db: String,
    /// The broker (embedded://DIR or nats://host:port): adds every consumer group's lag per
    /// partition. Read only: no group or topic is created.
    #[arg(long, env = "TRIBUTARY_BROKER")]
    pub broker: Option<String>,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Unhealthy (exit 1) when more outbox rows than this wait for the relay.
    #[arg(long)]
    pub max_pending: Option<u64>,
    /// Unhealthy when the oldest unpublished outbox row is older than this many seconds.
    #[arg(long)]
    pub max_age: Option<f64>,
    /// Unhealthy when a group has more open dead letters than this.
    #[arg(long)]
    pub max_dead_letters: Option<u64>,
    /// Unhealthy when a group is more than this many messages behind on a partition (needs
    /// --broker).
    #[arg(long, requires = "broker")]
    pub max_lag: Option<u64>,
    /// Unhealthy when a replication slot keeps more WAL than this many bytes (PostgreSQL).
    #[arg(long)]
    pub max_slot_lag_bytes: Option<u64>,
}

/// What `status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    pub database: String,
    /// Every relay source: the outbox, then each event-store source that has published.
    pub relays: Vec<RelayStatus>,
    pub dead_letters: Vec<DeadLetterSummary>,
    /// Messages each consumer group handled in the last minute (`null` when the backend
    /// cannot tell).
    pub handled_last_minute: Option<Vec<Handled>>,
    /// Every group the broker knows, per topic and partition (with `--broker`; `null`
    /// without, or when the broker cannot tell).
    pub consumer_groups: Option<Vec<GroupLag>>,
    /// The database's logical replication slots (PostgreSQL; `null` for other databases).
    pub cdc_slots: Option<Vec<CdcSlot>>,
    pub healthy: bool,
    pub problems: Vec<String>,
}

/// One relay source: what waits for it, and who publishes it.
#[derive(Debug, Serialize)]
pub struct RelayStatus {
    /// `outbox`, or `events:<name>` for an event-store source.
    pub source: String,
    /// Committed rows not yet published (`null` when the source cannot tell).
    pub pending: Option<u64>,
    pub oldest_age_seconds: Option<f64>,
    /// Who holds the source's lease (`null` when the source cannot tell).
    pub lease: Option<LeaseState>,
}

#[derive(Debug, Serialize)]
pub struct Handled {
    pub group: GroupName,
    pub messages: u64,
}

/// A replication slot, as a CDC capture reads from it.
#[derive(Debug, Serialize)]
pub struct CdcSlot {
    pub slot: String,
    /// The server process streaming from it; `null` when no capture is connected.
    pub active_pid: Option<i32>,
    pub confirmed_flush_lsn: Option<String>,
    /// WAL the slot keeps the server from recycling.
    pub lag_bytes: u64,
    /// `reserved`, `extended`, `unreserved` (about to be lost), `lost`.
    pub wal_status: Option<String>,
}

/// Reads the status of `db` and judges it against the thresholds of `args`.
///
/// # Errors
/// Storage errors.
pub async fn read(
    db: &dyn Database,
    broker: Option<&dyn Broker>,
    url: &str,
    args: &StatusArgs,
) -> anyhow::Result<Status> {
    let relays = relays(db).await?;
    let dead_letters = db.dead_letters().summary().await?;
    let handled_last_minute = handled_last_minute(db).await?;
    let consumer_groups = match broker {
        Some(broker) => broker.group_lags().await?,
        None => None,
    };
    let cdc_slots = cdc_slots(url).await?;
    let mut problems = Vec::new();
    for r in &relays {
        if let Some(max) = args
            .max_pending
            .filter(|m| r.pending.is_some_and(|p| p > *m))
        {
            problems.push(format!(
                "{} rows of {} wait for the relay (more than {max})",
                r.pending.unwrap_or_default(),
                r.source
            ));
        }
        if let (Some(max), Some(age)) = (args.max_age, r.oldest_age_seconds)
            && age > max
        {
            problems.push(format!(
                "the oldest row of {} waits {age:.1} s (more than {max} s)",
                r.source
            ));
        }
    }
    if let Some(max) = args.max_dead_letters {
        for g in dead_letters.iter().filter(|g| g.open > max) {
            problems.push(format!(
                "group {} has {} open dead letters (more than {max})",
                g.group, g.open
            ));
        }
    }
    if let (Some(max), Some(groups)) = (args.max_lag, &consumer_groups) {
        // A tail's throwaway group (one killed with SIGKILL leaves it behind) is nobody's
        // backlog: listed, never a reason to page anyone.
        let services = groups.iter().filter(|g| !is_tail_group(g));
        for g in services.filter(|g| g.lag > max) {
            problems.push(format!(
                "group {} is {} messages behind on {} partition {} (more than {max})",
                g.group, g.lag, g.topic, g.partition
            ));
        }
    }
    for slot in cdc_slots.iter().flatten() {
        if let Some(max) = args.max_slot_lag_bytes.filter(|m| slot.lag_bytes > *m) {
            problems.push(format!(
                "slot {} holds {} bytes of WAL (more than {max})",
                slot.slot, slot.lag_bytes
            ));
        }
        if let Some(status @ ("unreserved" | "lost")) = slot.wal_status.as_deref() {
            problems.push(format!(
                "slot {} is {status}: the WAL it needs is being removed",
                slot.slot
            ));
        }
    }
    Ok(Status {
        database: super::shown(url),
        relays,
        dead_letters,
        handled_last_minute,
        consumer_groups,
        cdc_slots,
        healthy: problems.is_empty(),
        problems,
    })
}

/// What each consumer group handled in the last minute.
pub async fn handled_last_minute(db: &dyn Database) -> anyhow::Result<Option<Vec<Handled>>> {
    Ok(db
        .handled_since(chrono::Utc::now() - chrono::Duration::minutes(1))
        .await?
        .map(|groups| {
            groups
                .into_iter()
                .map(|(group, messages)| Handled { group, messages })
                .collect()
        }))
}

/// The outbox and every event-store source with a cursor. The event-store sources are opened
/// only to read their backlog and lease: the topic they would publish to plays no part.
pub async fn relays(db: &dyn Database) -> anyhow::Result<Vec<RelayStatus>> {
    let placeholder = tributary::Topic::new("status").expect("a valid topic name");
    let mut sources = vec![db.outbox_source()];
    for name in db.relay_cursors().await? {
        sources.push(db.event_store_source(&name, placeholder.clone()));
    }
    let mut relays = Vec::with_capacity(sources.len());
    for source in sources {
        let backlog = source.backlog().await?;
        relays.push(RelayStatus {
            source: source.name().to_owned(),
            pending: backlog.as_ref().map(|b| b.pending),
            oldest_age_seconds: backlog
                .and_then(|b| b.oldest_age)
                .map(|a| (a.as_secs_f64() * 1000.0).round() / 1000.0),
            lease: source.lease_state().await?,
        });
    }
    Ok(relays)
}

/// The slots of a PostgreSQL database; `None` for any other.
pub async fn cdc_slots(url: &str) -> anyhow::Result<Option<Vec<CdcSlot>>> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok(None);
    }
    let connection = tributary::cdc::PgReplicationConfig::from_url(url)
        .map_err(anyhow::Error::msg)?
        .with_application_name("tributary status");
    let lags = tributary::cdc::slot_lags(&connection)
        .await
        .map_err(|e| anyhow::anyhow!("reading the replication slots: {e}"))?;
    Ok(Some(
        lags.into_iter()
            .map(|l| CdcSlot {
                slot: l.slot,
                active_pid: l.active_pid,
                confirmed_flush_lsn: l.confirmed_flush_lsn.map(|lsn| lsn.to_string()),
                lag_bytes: l.bytes,
                wal_status: l.wal_status.map(|w| w.as_str().to_owned()),
            })
            .collect(),
    ))
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let db = super::open_existing(&args.db).await?;
    let broker = match &args.broker {
        Some(url) => Some(super::open_existing_broker(url).await?),
        None => None,
    };
    let status = read(db.as_ref(), broker.as_deref(), &args.db, &args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        println!("database {}", status.database);
        for r in &status.relays {
            println!("relay {}: {}", r.source, describe_relay(r));
        }
        if status.dead_letters.is_empty() {
            println!("dead letters: none open");
        }
        for g in &status.dead_letters {
            println!(
                "group {}: {} open dead letters ({} parked) on {} keys, oldest {}",
                g.group,
                g.open,
                g.parked,
                g.keys,
                g.oldest_failed_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            );
        }
        match (&args.broker, &status.consumer_groups) {
            (None, _) => {}
            (Some(_), None) => println!("consumer groups: this broker cannot tell"),
            (Some(_), Some(groups)) if groups.is_empty() => println!("consumer groups: none"),
            (Some(_), Some(groups)) => {
                for g in groups {
                    println!(
                        "group {} on {} partition {}: {} behind{}",
                        g.group,
                        g.topic,
                        g.partition,
                        g.lag,
                        if is_tail_group(g) {
                            " (an `events tail`'s group; not checked by --max-lag)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        for h in status.handled_last_minute.iter().flatten() {
            println!(
                "group {}: {} handled in the last minute",
                h.group, h.messages
            );
        }
        for slot in status.cdc_slots.iter().flatten() {
            println!(
                "slot {}: {} bytes behind, confirmed {}, {}{}",
                slot.slot,
                slot.lag_bytes,
                slot.confirmed_flush_lsn.as_deref().unwrap_or("nothing"),
                slot.active_pid
                    .map(|p| format!("streaming to server pid {p}"))
                    .unwrap_or_else(|| "no capture connected".into()),
                slot.wal_status
                    .as_deref()
                    .map(|w| format!(", WAL {w}"))
                    .unwrap_or_default()
            );
        }
    }
    anyhow::ensure!(status.healthy, "unhealthy: {}", status.problems.join("; "));
    Ok(())
}

/// Whether `g` is the throwaway group of an `events tail`.
fn is_tail_group(g: &GroupLag) -> bool {
    g.group.as_str().starts_with(super::tail::GROUP_PREFIX)
}

pub fn describe_relay(r: &RelayStatus) -> String {
    let backlog = match (r.pending, r.oldest_age_seconds) {
        (None, _) => "backlog unknown".to_owned(),
        (Some(p), None) => format!("{p} pending"),
        (Some(p), Some(age)) => format!("{p} pending, oldest {age:.1} s"),
    };
    let lease = match &r.lease {
        None => "lease unknown".to_owned(),
        Some(LeaseState::Free) => "no relay holds the lease".to_owned(),
        Some(LeaseState::Held { holder, since }) => format!(
            "lease held by {holder}{}",
            since
                .map(|t| format!(" since {}", t.to_rfc3339()))
                .unwrap_or_default()
        ),
    };
    format!("{backlog}; {lease}")
}
