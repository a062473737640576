//! `tributary status --db URL`: what a service's database holds back — the outbox backlog
//! and every consumer group's open dead letters — as text or `--json`, with a non-zero exit
//! when a threshold is passed.

use serde::Serialize;
use tributary::{Database, DeadLetterSummary};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The service's database: sqlite://PATH or postgres://user@host/db[?schema=S].
    #[arg(long, env = "TRIBUTARY_DB")]
    pub db: String,
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
}

/// What `status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    pub database: String,
    pub outbox: Option<Outbox>,
    pub dead_letters: Vec<DeadLetterSummary>,
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
pub async fn read(db: &dyn Database, shown: String, args: &StatusArgs) -> anyhow::Result<Status> {
    let outbox = db.outbox_source().backlog().await?.map(|b| Outbox {
        pending: b.pending,
        oldest_age_seconds: b
            .oldest_age
            .map(|a| (a.as_secs_f64() * 1000.0).round() / 1000.0),
    });
    let dead_letters = db.dead_letters().summary().await?;
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
    Ok(Status {
        database: shown,
        outbox,
        dead_letters,
        healthy: problems.is_empty(),
        problems,
    })
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let db = super::open_existing(&args.db).await?;
    let status = read(db.as_ref(), super::shown(&args.db), &args).await?;
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
    }
    anyhow::ensure!(status.healthy, "unhealthy: {}", status.problems.join("; "));
    Ok(())
}
