//! `tributary events tail --broker URL --topic T`: every message of a topic's partitions, one
//! JSON line each, as it arrives, until Ctrl-C (or SIGTERM).
//!
//! The Broker trait reads only through consumer groups, so the tail is a group of its own: a
//! throwaway group `tributary-tail-<uuid>`, new each run, that no service uses. A new group
//! starts at the oldest retained message, which is `--from-start`; otherwise the tail first
//! reads past what is already there without printing it. It commits what it printed (a NATS
//! consumer would redeliver unacknowledged messages), and on the way out it deletes the group,
//! so it holds nothing back from retention. A tail killed with SIGKILL leaves its group
//! behind; its name says what it was, and `status --max-lag` does not count it. The trait
//! also cannot ask whether a topic exists: a tail of a new name creates that topic with the
//! broker's default partition count, as a consumer would.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tributary::{
    Broker, CancellationToken, Delivery, Envelope, GroupName, Partition, PartitionConsumer, Topic,
};

/// The name prefix of the tail's throwaway consumer groups.
pub const GROUP_PREFIX: &str = "tributary-tail-";

/// How long one fetch waits for a message before checking for Ctrl-C again.
const FETCH_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The broker: embedded://DIR or nats://host:port.
    #[arg(long, env = "TRIBUTARY_BROKER")]
    pub broker: String,
    #[arg(long)]
    pub topic: String,
    /// Print the retained log first, not only what arrives from now on.
    #[arg(long)]
    pub from_start: bool,
    /// Only events whose correlation id is this (undecodable messages have none).
    #[arg(long)]
    pub correlation: Option<String>,
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    // A tail reads: it does not create an embedded log where there is none.
    let broker = super::open_existing_broker(&args.broker).await?;
    let topic = Topic::new(&args.topic)?;
    let group = GroupName::new(format!("{GROUP_PREFIX}{}", uuid::Uuid::now_v7()))?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::app::shutdown_signal().await;
        stop.cancel();
    });
    let tailed = tail(&*broker, &group, &topic, &args, &shutdown).await;
    // Whatever happened, the group goes: it must not hold messages back from retention.
    let deleted = broker
        .delete_group(&group, &topic)
        .await
        .with_context(|| format!("deleting the tail's consumer group {group}"));
    tailed?;
    deleted?;
    eprintln!("stopped; deleted consumer group {group}");
    Ok(())
}

async fn tail(
    broker: &dyn Broker,
    group: &GroupName,
    topic: &Topic,
    args: &TailArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let partitions = broker.partitions(topic).await?;
    let mut consumers = Vec::new();
    for p in 0..partitions {
        let mut consumer = broker.consume(group, topic, Partition::new(p)).await?;
        if !args.from_start {
            skip_retained(consumer.as_mut()).await?;
        }
        consumers.push(consumer);
    }
    let from = if args.from_start { "the start" } else { "now" };
    eprintln!("tailing {topic} ({partitions} partitions) from {from} as consumer group {group}");

    let (lines, mut printed) = mpsc::channel::<String>(1024);
    let mut tasks = tokio::task::JoinSet::new();
    for consumer in consumers {
        let (lines, shutdown) = (lines.clone(), shutdown.clone());
        let correlation = args.correlation.clone();
        tasks.spawn(follow(consumer, lines, shutdown, correlation));
    }
    drop(lines);
    // One writer, so that lines of different partitions never interleave.
    while let Some(line) = printed.recv().await {
        println!("{line}");
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a partition's tail panicked")??;
    }
    Ok(())
}

/// Reads (and commits) everything already in the partition, so that only what arrives later
/// is printed. What arrives while it reads is skipped too: "now" is when this returns.
async fn skip_retained(consumer: &mut dyn PartitionConsumer) -> anyhow::Result<()> {
    loop {
        let batch = consumer.fetch(1000, Duration::ZERO).await?;
        let Some(last) = batch.last() else {
            return Ok(());
        };
        consumer.commit(last.offset).await?;
    }
}

async fn follow(
    mut consumer: Box<dyn PartitionConsumer>,
    lines: mpsc::Sender<String>,
    shutdown: CancellationToken,
    correlation: Option<String>,
) -> anyhow::Result<()> {
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            batch = consumer.fetch(100, FETCH_WAIT) => batch?,
        };
        let Some(last) = batch.last().map(|d| d.offset) else {
            continue;
        };
        for delivery in &batch {
            let Some(line) = line_of(delivery, correlation.as_deref()) else {
                continue;
            };
            if lines.send(line).await.is_err() {
                return Ok(());
            }
        }
        consumer.commit(last).await?;
    }
}

/// The JSON line of one message: where it is, its key, and the envelope as it was published
/// (or why it does not decode, with its bytes as text). `None` when filtered out.
fn line_of(delivery: &Delivery, correlation: Option<&str>) -> Option<String> {
    let (event, error) = match Envelope::from_json(&delivery.payload) {
        Ok(envelope) => {
            if correlation.is_some_and(|c| envelope.correlation_id.as_deref() != Some(c)) {
                return None;
            }
            let value: Value = serde_json::from_slice(&delivery.payload).ok()?;
            (value, Value::Null)
        }
        Err(_) if correlation.is_some() => return None,
        Err(e) => (
            Value::String(String::from_utf8_lossy(&delivery.payload).into_owned()),
            Value::String(format!("{e:#}")),
        ),
    };
    let mut line = json!({
        "topic": delivery.topic.as_str(),
        "partition": delivery.partition.get(),
        "offset": delivery.offset.get(),
        "key": delivery.key,
        "event": event,
    });
    if !error.is_null() {
        line["undecodable"] = error;
    }
    Some(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::{Offset, Payload};

    fn delivery(payload: Vec<u8>) -> Delivery {
        Delivery {
            topic: Topic::new("orders").unwrap(),
            partition: Partition::new(1),
            offset: Offset::new(7),
            key: "k".into(),
            id: None,
            payload,
            delivery_count: 1,
        }
    }

    #[test]
    fn a_line_carries_the_place_and_the_envelope_and_filters_by_correlation() {
        let mut e = Envelope::new("s", "T", Payload::from_value(&1).unwrap());
        e.correlation_id = Some("c-1".into());
        let d = delivery(e.to_json().into_bytes());
        let line: Value = serde_json::from_str(&line_of(&d, None).unwrap()).unwrap();
        assert_eq!(line["partition"], 1);
        assert_eq!(line["offset"], 7);
        assert_eq!(line["event"]["correlationid"], "c-1");
        assert!(line_of(&d, Some("c-1")).is_some());
        assert!(line_of(&d, Some("c-2")).is_none());
    }

    #[test]
    fn an_undecodable_message_is_shown_not_dropped() {
        let d = delivery(b"not json \xff".to_vec());
        let line: Value = serde_json::from_str(&line_of(&d, None).unwrap()).unwrap();
        assert!(line["undecodable"].is_string());
        assert!(line["event"].as_str().unwrap().starts_with("not json"));
        assert!(line_of(&d, Some("c")).is_none(), "it has no correlation id");
    }
}
