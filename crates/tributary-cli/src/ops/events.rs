//! `tributary events show --db URL --stream S`: a stream of a service's event store, one
//! envelope (CloudEvents JSON) per line; `tributary events tail --broker URL --topic T`: a
//! topic's messages as they arrive (see [`super::tail`]).

use tributary::{StreamId, StreamVersion};

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// The events of one stream, in version order.
    Show {
        /// The service's database: sqlite://PATH or postgres://user@host/db[?schema=S].
        #[arg(long, env = "TRIBUTARY_DB")]
        db: String,
        #[arg(long)]
        stream: String,
        /// Only events whose correlation id is this.
        #[arg(long)]
        correlation: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// The messages of a topic, one JSON line each, as they arrive, until Ctrl-C. Reads as a
    /// throwaway consumer group `tributary-tail-<uuid>`, deleted on exit.
    Tail(super::tail::TailArgs),
}

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    match args.command {
        EventsCommand::Tail(args) => return super::tail::run(args).await,
        EventsCommand::Show {
            db,
            stream,
            correlation,
            limit,
        } => {
            let db = super::open_existing(&db).await?;
            let stream = StreamId::new(stream)?;
            let events = db
                .event_store()
                .read_stream(&stream, StreamVersion::NONE.next(), limit)
                .await?;
            for e in events {
                if correlation
                    .as_deref()
                    .is_some_and(|c| e.envelope.correlation_id.as_deref() != Some(c))
                {
                    continue;
                }
                println!("{}", e.envelope.to_json());
            }
        }
    }
    Ok(())
}
