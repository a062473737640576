//! `tributary status --db URL [--broker URL]`: what a service's database holds back — the
//! outbox backlog and every consumer group's open dead letters — and, with the broker, how far
//! behind every consumer group is on every partition; as text or `--json`, with a non-zero
//! exit when a threshold is passed.

use serde::Serialize;
use tributary::{Broker, Database, DeadLetterSummary, GroupLag};

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
}

/// What `status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    pub database: String,
    pub outbox: Option<Outbox>,
    pub dead_letters: Vec<DeadLetterSummary>,
    /// Every group the broker knows, per topic and partition (with `--broker`; `null`
    /// without, or when the broker cannot tell).
    pub consumer_groups: Option<Vec<GroupLag>>,
    pub healthy: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Outbox {
    pub pending: u64,
    pub oldest_age_seconds: Option<f64>,
}

/// Reads the status of `db` and judges it against the thresholds of `args`.
///
/// # Errors
/// Storage errors.
pub async fn read(
    db: &dyn Database,
    broker: Option<&dyn Broker>,
    shown: String,
    args: &StatusArgs,
) -> anyhow::Result<Status> {
    let outbox = db.outbox_source().backlog().await?.map(|b| Outbox {
        pending: b.pending,
        oldest_age_seconds: b
            .oldest_age
            .map(|a| (a.as_secs_f64() * 1000.0).round() / 1000.0),
    });
    let dead_letters = db.dead_letters().summary().await?;
    let consumer_groups = match broker {
        Some(broker) => broker.group_lags().await?,
        None => None,
    };
    let mut problems = Vec::new();
    if let Some(o) = &outbox {
        if let Some(max) = args.max_pending.filter(|m| o.pending > *m) {
            problems.push(format!(
                "{} outbox rows pending (more than {max})",
                o.pending
            ));
        }
        if let (Some(max), Some(age)) = (args.max_age, o.oldest_age_seconds)
            && age > max
        {
            problems.push(format!(
                "the oldest outbox row waits {age:.1} s (more than {max} s)"
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
        for g in groups.iter().filter(|g| g.lag > max) {
            problems.push(format!(
                "group {} is {} messages behind on {} partition {} (more than {max})",
                g.group, g.lag, g.topic, g.partition
            ));
        }
    }
    Ok(Status {
        database: shown,
        outbox,
        dead_letters,
        consumer_groups,
        healthy: problems.is_empty(),
        problems,
    })
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let db = super::open_existing(&args.db).await?;
    let broker = match &args.broker {
        Some(url) => Some(super::open_existing_broker(url).await?),
        None => None,
    };
    let status = read(
        db.as_ref(),
        broker.as_deref(),
        super::shown(&args.db),
        &args,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        println!("database {}", status.database);
        match &status.outbox {
            Some(o) => println!(
                "outbox: {} pending{}",
                o.pending,
                o.oldest_age_seconds
                    .map(|a| format!(", oldest {a:.1} s"))
                    .unwrap_or_default()
            ),
            None => println!("outbox: this backend cannot tell"),
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
                        "group {} on {} partition {}: {} behind",
                        g.group, g.topic, g.partition, g.lag
                    );
                }
            }
        }
    }
    anyhow::ensure!(status.healthy, "unhealthy: {}", status.problems.join("; "));
    Ok(())
}
