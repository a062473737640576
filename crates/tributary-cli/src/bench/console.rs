//! `tributary bench console`: how long the web console's overview page takes, end to end over
//! HTTP, for a service with many consumer groups and open dead letters (the target: under 1 s
//! with 100 groups and 10k dead letters).
//!
//! It fills a SQLite service database with `--dead-letters` open letters spread over
//! `--groups` groups (a tenth of them parked behind an earlier letter of their key), registers
//! the same groups on an embedded broker with a backlog on every partition, starts
//! `tributary console` on both as a child process, and times `--requests` sequential
//! `GET /` requests on fresh connections.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tributary::backend::WorkOrigin;
use tributary::{
    Database, DatabaseUrl, Envelope, GroupName, NewDeadLetter, Offset, OutgoingMessage, Partition,
    Payload, Topic,
};

use super::report::BenchResult;

#[derive(Clone, Debug, clap::Args)]
pub struct ConsoleBenchArgs {
    /// Consumer groups, each with its share of the dead letters and a backlog on the broker.
    #[arg(long, default_value_t = 100)]
    pub groups: usize,
    /// Open dead letters in the service database.
    #[arg(long, default_value_t = 10_000)]
    pub dead_letters: usize,
    /// Timed requests of the overview.
    #[arg(long, default_value_t = 30)]
    pub requests: usize,
}

const PARTITIONS: u32 = 4;

pub async fn run(args: ConsoleBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.groups > 0 && args.requests > 0,
        "--groups and --requests must be > 0"
    );
    let dir = tempfile::tempdir()?;
    let db_url = format!("sqlite://{}", dir.path().join("service.db").display());
    let db = db_url.parse::<DatabaseUrl>()?.connect().await?;
    fill_dead_letters(db.as_ref(), &args).await?;
    let broker_url = format!("embedded://{}", dir.path().display());
    fill_broker(&broker_url, args.groups).await?;
    drop(db);

    let mut console = tokio::process::Command::new(std::env::current_exe()?)
        .args(["console", "--db", &db_url, "--broker", &broker_url])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting tributary console")?;
    let stdout = console.stdout.take().context("the console's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the console did not say where it listens within 30 s")??
            .context("the console exited before listening")?;
        if let Some(addr) = line.strip_prefix("listening on http://") {
            break addr.to_owned();
        }
    };

    // One untimed request warms the page cache and the read pool.
    let (_, warm) = get_overview(&addr).await?;
    anyhow::ensure!(
        warm.contains("open dead letters"),
        "the overview does not list the dead letters"
    );
    let mut samples = Vec::with_capacity(args.requests);
    let mut bytes = 0;
    let started = Instant::now();
    for _ in 0..args.requests {
        let (took, page) = get_overview(&addr).await?;
        samples.push(took);
        bytes = page.len();
    }
    let elapsed = started.elapsed();
    console.kill().await.ok();
    let result = BenchResult::new(
        "console",
        "overview",
        "sqlite",
        args.requests as u64,
        elapsed,
    )
    .with_latencies(&mut samples)
    .with_settings(json!({
        "groups": args.groups,
        "dead_letters": args.dead_letters,
        "partitions_per_group": PARTITIONS,
        "page_bytes": bytes,
        "includes": "one HTTP request on a new connection, the page built from the database \
                     and the broker, the whole body read",
    }));
    result.emit();
    Ok(())
}

/// Open letters, 1,000 per unit, round robin over the groups; every tenth is parked behind
/// the letter before it on the same key.
async fn fill_dead_letters(db: &dyn Database, args: &ConsoleBenchArgs) -> anyhow::Result<()> {
    let topic = Topic::new("orders")?;
    let groups: Vec<GroupName> = (0..args.groups)
        .map(|g| GroupName::new(format!("group-{g:03}")))
        .collect::<Result<_, _>>()?;
    let mut next = 0;
    while next < args.dead_letters {
        let batch: Vec<NewDeadLetter> = (next..args.dead_letters.min(next + 1000))
            .map(|i| NewDeadLetter {
                group: groups[i % groups.len()].clone(),
                topic: topic.clone(),
                partition: Partition::new((i % PARTITIONS as usize) as u32),
                offset: Offset::new(i as u64),
                message_id: None,
                key: format!("order-{}", i / 2),
                event_type: Some("OrderCreated".into()),
                payload: format!("{{\"order\":{i},\"total\":{}}}", i * 3).into_bytes(),
                reason: "the credit service answered 503".into(),
                attempts: 5,
                first_failed_at: chrono::Utc::now(),
                parked_behind: None,
            })
            .collect();
        next += batch.len();
        db.transact_consumer(WorkOrigin::Task("bench console".into()), move |tx| {
            Box::pin(async move {
                let mut previous = None;
                for (n, mut letter) in batch.into_iter().enumerate() {
                    if n % 10 == 9 {
                        letter.parked_behind = previous;
                    }
                    previous = Some(tx.insert_dead_letter(letter).await?);
                }
                Ok(())
            })
        })
        .await?;
    }
    Ok(())
}

/// The same groups on the broker: ten messages per partition, none consumed.
async fn fill_broker(url: &str, groups: usize) -> anyhow::Result<()> {
    let broker = url.parse::<tributary::BrokerUrl>()?.connect().await?;
    let topic = Topic::new("orders")?;
    broker.ensure_topic(&topic, PARTITIONS).await?;
    let messages: Vec<OutgoingMessage> = (0..10 * PARTITIONS)
        .map(|i| {
            let event = Envelope::new("bench", "OrderCreated", Payload::from_value(&i)?)
                .with_partition_key(format!("order-{i}"));
            Ok(OutgoingMessage::from_envelope(topic.clone(), &event))
        })
        .collect::<tributary::Result<_>>()?;
    broker.publish(&messages).await?;
    for g in 0..groups {
        let group = GroupName::new(format!("group-{g:03}"))?;
        for p in 0..PARTITIONS {
            broker.consume(&group, &topic, Partition::new(p)).await?;
        }
    }
    Ok(())
}

/// `GET /` on a new connection; the time until the whole body was read.
async fn get_overview(addr: &str) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    let took = started.elapsed();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    anyhow::ensure!(
        reply.starts_with("HTTP/1.1 200"),
        "the overview answered {}",
        reply.lines().next().unwrap_or("nothing")
    );
    Ok((took, reply))
}
