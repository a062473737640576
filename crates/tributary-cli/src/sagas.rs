//! `tributary sagas list|show|cancel|retry --db URL`: the saga instances of one service's
//! database (the orchestrator's), by type, state and age, one saga's timeline, and an
//! operator's cancel or retry, which the running orchestrator of the saga's type performs (it
//! alone has the saga's definition).

use std::time::Duration;

use anyhow::Context;
use tributary::DatabaseUrl;
use tributary::saga::{
    RequestState, SagaAdmin, SagaFilter, SagaId, SagaInstance, SagaRequest, SagaState,
};

#[derive(Debug, clap::Args)]
pub struct SagasArgs {
    #[command(subcommand)]
    command: SagasCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SagasCommand {
    /// Lists sagas, oldest first.
    List {
        /// The orchestrator's database (sqlite://FILE or postgres://…?schema=S).
        #[arg(long, env = "TRIBUTARY_DB")]
        db: String,
        /// Only this saga type.
        #[arg(long = "type")]
        saga_type: Option<String>,
        /// Only this state: running, compensating, completed, compensated, compensation_failed.
        #[arg(long)]
        state: Option<SagaState>,
        /// Only unfinished sagas that have not moved for this long (e.g. 30s, 5m, 2h).
        #[arg(long, value_parser = parse_duration)]
        stuck_for: Option<Duration>,
        /// One JSON object per saga instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows one saga: its state, what it waits for, and its timeline.
    Show {
        #[arg(long, env = "TRIBUTARY_DB")]
        db: String,
        id: String,
        /// The whole instance as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancels a running saga: the steps it completed are compensated in reverse order.
    Cancel {
        #[arg(long, env = "TRIBUTARY_DB")]
        db: String,
        id: String,
        /// Why, for the saga's timeline.
        #[arg(long, default_value = "cancelled by an operator")]
        reason: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Runs a saga's current step or compensation again (also after compensation_failed).
    Retry {
        #[arg(long, env = "TRIBUTARY_DB")]
        db: String,
        id: String,
        #[command(flatten)]
        wait: Wait,
    },
}

#[derive(Debug, clap::Args)]
struct Wait {
    /// How long to wait for the orchestrator to perform the request (0: do not wait).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    wait: Duration,
}

pub async fn run(args: SagasArgs) -> anyhow::Result<()> {
    match args.command {
        SagasCommand::List {
            db,
            saga_type,
            state,
            stuck_for,
            json,
        } => {
            let admin = SagaAdmin::new(open(&db).await?);
            let filter = SagaFilter {
                saga_type,
                state,
                stuck_for,
            };
            let listing = admin.scan(&filter).await?;
            let sagas = &listing.sagas;
            if json {
                for s in sagas {
                    println!("{}", serde_json::to_string(s)?);
                }
            } else {
                println!(
                    "{:<36}  {:<20}  {:<19}  {:<18}  {:>7}  updated",
                    "id", "type", "state", "step", "attempt"
                );
                for s in sagas {
                    println!(
                        "{:<36}  {:<20}  {:<19}  {:<18}  {:>7}  {}",
                        s.id,
                        s.saga_type,
                        s.state.as_str(),
                        format!("{} {}", s.step, s.step_name.as_deref().unwrap_or("")),
                        s.attempt,
                        s.updated_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    );
                }
                eprintln!("{} saga(s)", sagas.len());
            }
            for u in &listing.unreadable {
                eprintln!("saga {} cannot be read: {}", u.id, u.error);
            }
            anyhow::ensure!(
                listing.unreadable.is_empty(),
                "{} saga(s) cannot be read",
                listing.unreadable.len()
            );
        }
        SagasCommand::Show { db, id, json } => {
            let id: SagaId = id.parse()?;
            let admin = SagaAdmin::new(open(&db).await?);
            let saga = admin
                .show(&id)
                .await?
                .with_context(|| format!("no saga {id} in {}", tributary::redact(&db)))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&saga)?);
            } else {
                print!("{}", timeline(&saga));
            }
        }
        SagasCommand::Cancel {
            db,
            id,
            reason,
            wait,
        } => {
            let (id, admin) = (id.parse::<SagaId>()?, SagaAdmin::new(open(&db).await?));
            let request = admin.request_cancel(&id, &reason).await?;
            performed(&admin, request, wait.wait, "cancelled").await?;
        }
        SagasCommand::Retry { db, id, wait } => {
            let (id, admin) = (id.parse::<SagaId>()?, SagaAdmin::new(open(&db).await?));
            let request = admin.request_retry(&id).await?;
            performed(&admin, request, wait.wait, "retried").await?;
        }
    }
    Ok(())
}

/// Waits up to `wait` for the orchestrator to perform `request`, and says what came of it:
/// an error (non-zero exit) when it was refused or nobody performed it in time.
async fn performed(
    admin: &SagaAdmin,
    request: SagaRequest,
    wait: Duration,
    done: &str,
) -> anyhow::Result<()> {
    let id = request.saga_id.clone();
    if wait.is_zero() {
        println!(
            "requested: saga {id} will be {done} by a running orchestrator of {}",
            request.saga_type
        );
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let now = admin.request(&id).await?.unwrap_or(request.clone());
        match now.state {
            RequestState::Done { .. } => {
                println!("saga {id} {done}; `tributary sagas show {id}` shows its timeline");
                return Ok(());
            }
            RequestState::Refused { reason, .. } => {
                anyhow::bail!("the orchestrator refused: {reason}")
            }
            RequestState::Requested => {}
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no orchestrator of {} performed the request within {wait:?}: is one running? \
             (the request stays; a running orchestrator performs it when it starts)",
            request.saga_type
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The human-readable form of `saga`.
fn timeline(saga: &SagaInstance) -> String {
    let mut out = format!(
        "saga {} ({})\nstate      {}\nstep       {} {}{}\nattempt    {}\nstarted    {}\nupdated    {}\n",
        saga.id,
        saga.saga_type,
        saga.state.as_str(),
        saga.step,
        saga.step_name.as_deref().unwrap_or(""),
        if saga.compensating {
            " (compensating)"
        } else {
            ""
        },
        saga.attempt,
        saga.started_at,
        saga.updated_at,
    );
    if let Some(failure) = &saga.failure {
        out.push_str(&format!("failure    {failure}\n"));
    }
    if let Some(a) = &saga.awaiting {
        out.push_str(&format!(
            "awaiting   {:?} {}{}\n",
            a.what,
            a.message_id,
            a.due.map(|d| format!(" until {d}")).unwrap_or_default()
        ));
    }
    out.push_str(&format!("data       {}\ntimeline\n", saga.data));
    for h in &saga.history {
        out.push_str(&format!(
            "  {}  {:<5} {:<22} {}{}\n",
            h.at.format("%H:%M:%S%.3f"),
            h.step.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            h.what,
            h.message_id.as_deref().unwrap_or(""),
            h.detail
                .as_deref()
                .map(|d| format!("  {d}"))
                .unwrap_or_default(),
        ));
    }
    out
}

/// Opens an existing database only: an inspection must not create one at a mistyped path.
async fn open(url: &str) -> anyhow::Result<std::sync::Arc<dyn tributary::Database>> {
    let parsed: DatabaseUrl = url.parse()?;
    if let DatabaseUrl::Sqlite { path } = &parsed {
        anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    }
    Ok(parsed.connect().await?)
}

/// `100ms`, `30s`, `5m`, `2h`, `1d`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s or 5m"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (ms, s, m, h, d)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_their_unit() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }
}
