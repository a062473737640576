//! `tributary dead-letters list|show|replay|discard --db URL`: the dead letters of any
//! consumer group in a service's database.
//!
//! `replay` cannot run the group's handler from here (only the service has it): it records a
//! replay request, which the group's running consumer performs in key order through its own
//! handler, and waits for the outcome. `discard` resolves a letter without processing it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary::{
    Database, DeadLetter, DeadLetterAdmin, DeadLetterId, GroupName, ReplayRequest, ReplayState,
};

#[derive(Debug, clap::Args)]
pub struct DeadLettersArgs {
    /// The service's database: sqlite://PATH or postgres://user@host/db[?schema=S].
    #[arg(long, env = "TRIBUTARY_DB", global = true)]
    pub db: Option<String>,
    #[command(subcommand)]
    pub command: DeadLettersCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeadLettersCommand {
    /// Unresolved dead letters, oldest first, one JSON object per line.
    List {
        /// Only this consumer group's.
        #[arg(long)]
        group: Option<String>,
        /// Only those of this message key.
        #[arg(long)]
        key: Option<String>,
        /// Only those whose reason contains this text.
        #[arg(long)]
        reason_like: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One dead letter, resolved or not, with its payload and any replay request.
    Show { id: u64 },
    /// Asks the group's running consumer to replay dead letter ID and those parked behind it
    /// (in key order), and waits for the outcome.
    Replay {
        id: u64,
        /// Seconds to wait for the consumer (0: record the request and return).
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Resolves dead letter ID without processing it; letters parked behind it stay parked
    /// until they are replayed.
    #[command(alias = "skip")]
    Discard { id: u64 },
}

/// Letters of `group` matching the filters, oldest first, at most `limit`.
pub async fn matching(
    db: &Arc<dyn Database>,
    group: Option<&GroupName>,
    key: Option<&str>,
    reason_like: Option<&str>,
    limit: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    let filtered = key.is_some() || reason_like.is_some();
    // Filters apply after reading: read everything open only when one is given.
    let read = if filtered { usize::MAX } else { limit };
    Ok(db
        .dead_letters()
        .list(group, read)
        .await?
        .into_iter()
        .filter(|l| key.is_none_or(|k| l.key == k))
        .filter(|l| reason_like.is_none_or(|r| l.reason.contains(r)))
        .take(limit)
        .collect())
}

/// Waits until the request for `id` has an outcome, or `within` passed.
pub async fn await_replay(
    db: &Arc<dyn Database>,
    id: DeadLetterId,
    within: Duration,
) -> anyhow::Result<Option<ReplayRequest>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(r) = tributary::replay_request(db, id).await?
            && r.state != ReplayState::Requested
        {
            return Ok(Some(r));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: DeadLettersArgs) -> anyhow::Result<()> {
    let url = args
        .db
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--db is required (the service's database URL)"))?;
    let db = super::open_existing(url).await?;
    match args.command {
        DeadLettersCommand::List {
            group,
            key,
            reason_like,
            limit,
        } => {
            let group = group.map(GroupName::new).transpose()?;
            for letter in matching(
                &db,
                group.as_ref(),
                key.as_deref(),
                reason_like.as_deref(),
                limit,
            )
            .await?
            {
                println!("{}", serde_json::to_string(&letter)?);
            }
        }
        DeadLettersCommand::Show { id } => {
            let id = DeadLetterId::new(id);
            let letter = db
                .dead_letters()
                .get(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no dead letter {id}"))?;
            let request = tributary::replay_request(&db, id).await?;
            let mut shown = serde_json::to_value(&letter)?;
            shown["replay_request"] = serde_json::to_value(&request)?;
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        DeadLettersCommand::Replay { id, wait } => {
            let id = DeadLetterId::new(id);
            let request = tributary::request_replay(&db, id).await?;
            eprintln!(
                "replay of dead letter {id} requested from group {}",
                request.group
            );
            if wait == 0 {
                return Ok(());
            }
            match await_replay(&db, id, Duration::from_secs(wait)).await? {
                Some(ReplayRequest {
                    state: ReplayState::Replayed { replayed },
                    ..
                }) => println!("replayed {} dead letter(s)", replayed.len()),
                Some(ReplayRequest {
                    state:
                        ReplayState::Failed {
                            replayed,
                            failed,
                            reason,
                        },
                    ..
                }) => anyhow::bail!(
                    "replayed {} dead letter(s), then dead letter {failed} failed again: {reason}",
                    replayed.len()
                ),
                _ => anyhow::bail!(
                    "no consumer of group {} performed the replay within {wait} s: is the service running? (the request stays and runs when it starts)",
                    request.group
                ),
            }
        }
        DeadLettersCommand::Discard { id } => {
            DeadLetterAdmin::new(db).skip(DeadLetterId::new(id)).await?;
            println!("discarded dead letter {id}");
        }
    }
    Ok(())
}
