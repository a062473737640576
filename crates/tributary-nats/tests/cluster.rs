//! The distributed engine against a 3-node JetStream cluster that loses nodes.
//!
//! Three private `nats-server` processes (loopback ports, `-js`, routes between them) hold a
//! topic whose stream has 3 replicas. A service database (SQLite) writes events through its
//! outbox, the real relay publishes them, the real consumer runtime applies them to another
//! database through its inbox. While that runs, the test SIGKILLs the stream leader and
//! restarts it, then kills and restarts nodes several times in a row (a flapping node, as a
//! partition looks from the others). Then it checks with the delivery checker: nothing that
//! was committed is lost, no phantom, no effect applied twice, per-key order kept; and that
//! the relay and the consumer rode through every election without anyone restarting them.
//!
//! Prints the figures: messages acknowledged, lost, and after each kill how long until the
//! relay published and the consumer applied again. Skips without `nats-server` unless
//! `TRIBUTARY_TEST_SERVERS=required`.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tributary_core::{Broker, Database, EventId, GroupName, Topic};
use tributary_nats::{NatsBroker, NatsBrokerConfig};
use tributary_runtime::{
    Backoff, CancellationToken, Consumer, ConsumerConfig, Relay, RelayConfig, RelayStats,
};
use tributary_sqlite::{SqliteConfig, SqliteDatabase};
use tributary_testkit::checker::DeliveryCheck;
use tributary_testkit::servers::skip;

const PARTITIONS: u32 = 4;
const KEYS: u64 = 40;

/// Bound on everything the test waits for, so that a pipeline that does not recover fails
/// the test instead of hanging it.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The parts that touch units of work: kept here, small, so they port to async units as is.

mod units {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use serde_json::json;
    use tributary_core::{Database, Envelope, Error, Payload, Topic, UnitOfWorkExt};
    use tributary_runtime::{Dispatch, HandlerError};

    use super::{Applied, Committed};

    /// One unit of the producing service: each event in its outbox, and a `committed`
    /// record of it in the same unit (the checker's view of what was committed).
    pub async fn commit_events(
        db: &Arc<dyn Database>,
        topic: &Topic,
        events: Vec<(String, u64)>,
    ) -> Result<(), Error> {
        let topic = topic.clone();
        db.transact(move |unit| {
            Box::pin(async move {
                for (key, seq) in &events {
                    let data = Payload::from_value(&json!({"key": key, "seq": seq}))?;
                    unit.publish(
                        &topic,
                        Envelope::new("cluster-test", "LedgerEvent", data).with_subject(key),
                    )
                    .await?;
                    unit.put_as(
                        "committed",
                        &format!("{key}:{seq:08}"),
                        &Committed {
                            key: key.clone(),
                            seq: *seq,
                        },
                    )
                    .await?;
                }
                Ok::<_, Error>(())
            })
        })
        .await
    }

    /// The consuming service's handler: appends each event's sequence number to its key's
    /// `applied` document, in the consumer's unit with the inbox entry. `calls` counts handler
    /// runs (including ones rolled back), as a progress signal only.
    pub fn handler(calls: Arc<AtomicU64>) -> Dispatch {
        Dispatch::new().on("LedgerEvent", move |e: Committed, _envelope, unit| {
            let calls = calls.clone();
            Box::pin(async move {
                let mut applied: Applied =
                    unit.get_as("applied", &e.key).await?.unwrap_or_default();
                applied.seqs.push(e.seq);
                unit.put_as("applied", &e.key, &applied).await?;
                calls.fetch_add(1, Ordering::Relaxed);
                Ok::<_, HandlerError>(())
            })
        })
    }
}

/// An event as committed (and as its payload).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Committed {
    key: String,
    seq: u64,
}

/// Per key, the sequence numbers applied, in the order they were applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Applied {
    seqs: Vec<u64>,
}

// ---------------------------------------------------------------------------------------
// Three nats-server processes of this test alone.

fn nats_server_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    child: Option<Child>,
    starts: u32,
}

/// A 3-node JetStream cluster on loopback, each node with its own store directory. Nodes are
/// stopped by their own process ids; dropped, the cluster is killed.
struct Cluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl Cluster {
    fn start(suite: &str) -> Option<Self> {
        let Some(binary) = nats_server_binary() else {
            return skip(suite, "nats-server is not installed");
        };
        let mut cluster = Self {
            binary,
            dir: tempfile::tempdir().expect("a temporary directory"),
            nodes: (0..3)
                .map(|i| Node {
                    name: format!("n{i}"),
                    port: free_port(),
                    cluster_port: free_port(),
                    child: None,
                    starts: 0,
                })
                .collect(),
        };
        for i in 0..3 {
            cluster.spawn(i);
        }
        for i in 0..3 {
            cluster.wait_ready(i);
        }
        Some(cluster)
    }

    /// Every node, so that the client fails over to a live one.
    fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log(&self, i: usize) -> PathBuf {
        let n = &self.nodes[i];
        self.dir.path().join(format!("{}-{}.log", n.name, n.starts))
    }

    fn spawn(&mut self, i: usize) {
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        self.nodes[i].starts += 1;
        let log = File::create(self.log(i)).expect("log file");
        let n = &self.nodes[i];
        let child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &n.port.to_string(),
                "-n",
                &n.name,
            ])
            .arg("-sd")
            .arg(self.dir.path().join(&n.name))
            .args([
                "--cluster_name",
                "tributary-test",
                "--cluster",
                &format!("nats://127.0.0.1:{}", n.cluster_port),
                "--routes",
                &routes,
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        self.nodes[i].child = Some(child);
    }

    fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(self.log(i)).unwrap_or_default();
            if text.contains("Server is ready") {
                return;
            }
            if let Some(child) = self.nodes[i].child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "nats-server {} exited with {status}: {text}",
                    self.nodes[i].name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server {} did not become ready", self.nodes[i].name);
    }

    /// SIGKILL: no goodbye to its peers, no flush.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again on its ports and store directory.
    fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_ready(i);
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

// ---------------------------------------------------------------------------------------

/// The current leader of a stream, by the JetStream API (stream info's cluster leader).
async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), js.get_stream(stream))
        .await
        .ok()?
        .ok()?;
    let info = tokio::time::timeout(Duration::from_secs(2), stream.info())
        .await
        .ok()?
        .ok()?;
    info.cluster.as_ref().and_then(|c| c.leader.clone())
}

/// Retries `make` until it succeeds or `RECOVERY_BOUND` passes.
async fn until_ok<T, F, Fut>(what: &str, mut make: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = tributary_core::Result<T>>,
{
    let deadline = Instant::now() + RECOVERY_BOUND;
    loop {
        match make().await {
            Ok(v) => return v,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                eprintln!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Progress counters of the running pipeline.
struct Progress {
    relay: Arc<RelayStats>,
    handled: Arc<AtomicU64>,
}

/// What one kill cost: time from the kill until the relay finished a publish that started
/// after it, and until the consumer applied an event the relay had not published before it.
#[derive(Debug)]
struct Recovery {
    what: String,
    /// Until the monitor saw another node lead the stream (leader kills only).
    election: Option<Duration>,
    publish: Duration,
    consume: Duration,
}

/// Watches the stream's leader after `killed` was killed: the time until another node
/// reports itself leader.
fn watch_election(
    js: &async_nats::jetstream::Context,
    stream: &str,
    killed: String,
    killed_at: Instant,
) -> tokio::task::JoinHandle<Option<Duration>> {
    let (js, stream) = (js.clone(), stream.to_owned());
    tokio::spawn(async move {
        while killed_at.elapsed() < RECOVERY_BOUND {
            if let Some(leader) = stream_leader(&js, &stream).await
                && leader != killed
            {
                return Some(killed_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    })
}

impl Progress {
    async fn recovery_after_kill(
        &self,
        what: String,
        killed_at: Instant,
    ) -> Result<Recovery, String> {
        let batches = self.relay.batches.load(Ordering::SeqCst);
        let published = self.relay.published.load(Ordering::SeqCst);
        let handled = self.handled.load(Ordering::SeqCst);
        let (mut publish, mut consume) = (None, None);
        while publish.is_none() || consume.is_none() {
            if killed_at.elapsed() > RECOVERY_BOUND {
                return Err(format!(
                    "{what}: no recovery within {RECOVERY_BOUND:?} (publish {publish:?}, consume {consume:?})"
                ));
            }
            // A batch in flight at the kill may still complete; the one after it started
            // after the kill.
            if publish.is_none() && self.relay.batches.load(Ordering::SeqCst) >= batches + 2 {
                publish = Some(killed_at.elapsed());
            }
            // Handler runs beyond everything published (and so fetched) before the kill.
            let beyond = self.handled.load(Ordering::SeqCst).saturating_sub(handled);
            if consume.is_none() && beyond > published.saturating_sub(handled) {
                consume = Some(killed_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Recovery {
            what,
            election: None,
            publish: publish.unwrap_or_default(),
            consume: consume.unwrap_or_default(),
        })
    }
}

fn producer(
    source: Arc<dyn Database>,
    topic: Topic,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut seqs: BTreeMap<String, u64> = BTreeMap::new();
        let mut units = 0u64;
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            // 1–3 events per unit over KEYS keys, deterministic but mixed.
            let events: Vec<(String, u64)> = (0..=(n % 3))
                .map(|j| {
                    let key = format!("k{}", (n * 7 + j * 13) % KEYS);
                    let seq = seqs.entry(key.clone()).or_default();
                    *seq += 1;
                    (key, *seq)
                })
                .collect();
            n += 1;
            units::commit_events(&source, &topic, events)
                .await
                .expect("the source database commits");
            units += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        units
    })
}

async fn delivery_report(
    source: &Arc<dyn Database>,
    sink: &Arc<dyn Database>,
) -> tributary_testkit::checker::DeliveryReport {
    let mut check = DeliveryCheck::default();
    for c in source
        .all_documents_as::<Committed>("committed")
        .await
        .expect("committed")
    {
        check.committed.entry(c.key).or_default().push(c.seq);
    }
    for (key, doc) in sink.all_documents("applied").await.expect("applied") {
        check
            .applied
            .insert(key, doc.decode::<Applied>().expect("applied doc").seqs);
    }
    check.report()
}

/// What the servers say when the check fails: where each partition's consumer stands, and
/// whether the missing events are a tail (a consumer that stopped) or a gap (a loss).
async fn diagnose(
    js: &async_nats::jetstream::Context,
    stream: &str,
    report: Option<&tributary_testkit::checker::DeliveryReport>,
) {
    let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (k, seq) in report.iter().flat_map(|r| &r.lost) {
        by_key.entry(k).or_default().push(*seq);
    }
    for (k, seqs) in by_key.iter().take(8) {
        let partition = tributary_core::Partition::for_key(k, PARTITIONS);
        eprintln!(
            "  key {k} (partition {partition}): {} missing, {}..={}",
            seqs.len(),
            seqs[0],
            seqs[seqs.len() - 1]
        );
    }
    if let Ok(mut s) = js.get_stream(stream).await {
        if let Ok(info) = s.info().await {
            eprintln!(
                "  stream {stream}: {} messages, last seq {}, leader {:?}",
                info.state.messages,
                info.state.last_sequence,
                info.cluster.as_ref().and_then(|c| c.leader.clone())
            );
        }
        // A reset replaces a consumer by its next generation (`ledger-checker_<p>_g<n>`).
        let mut names: Vec<String> = Vec::new();
        match tokio::time::timeout(
            Duration::from_secs(5),
            s.consumer_names().collect::<Vec<_>>(),
        )
        .await
        {
            Ok(listed) => {
                for name in listed {
                    match name {
                        Ok(name) if name.starts_with("ledger-checker_") => names.push(name),
                        Ok(_) => {}
                        Err(e) => eprintln!("  listing consumers: {e}"),
                    }
                }
            }
            Err(_) => eprintln!("  listing consumers: no answer within 5 s"),
        }
        names.sort();
        for name in names {
            match s
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                .await
            {
                Ok(mut c) => match c.info().await {
                    Ok(i) => eprintln!(
                        "  consumer {name}: delivered {}, ack floor {}, pending {}, ack pending {}, waiting {}, leader {:?}",
                        i.delivered.stream_sequence,
                        i.ack_floor.stream_sequence,
                        i.num_pending,
                        i.num_ack_pending,
                        i.num_waiting,
                        i.cluster.as_ref().and_then(|c| c.leader.clone())
                    ),
                    Err(e) => eprintln!("  consumer {name}: info failed: {e}"),
                },
                Err(e) => eprintln!("  consumer {name}: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consumers_ride_through_node_kills_in_a_three_node_cluster() {
    // The consumer's own account of every reset and lost delivery, shown when the test fails
    // (the harness keeps a passing test's output to itself).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("tributary_nats=debug,warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let started = Instant::now();
    let Some(mut cluster) = Cluster::start("NATS 3-node cluster test") else {
        return;
    };
    let prefix = format!("C{}", &EventId::new().as_uuid().simple().to_string()[8..20]);
    let config = NatsBrokerConfig::default()
        .with_url(cluster.url())
        .with_stream_prefix(prefix)
        .with_replicas(3)
        .with_ack_wait(Duration::from_secs(2))
        .with_request_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(5));
    // The cluster elects its JetStream meta leader after the nodes meet.
    let broker = until_ok("connecting to the cluster", || {
        NatsBroker::connect(config.clone())
    })
    .await;
    let topic = Topic::new("ledger").expect("topic");
    until_ok("creating the topic", || {
        broker.ensure_topic(&topic, PARTITIONS)
    })
    .await;
    let stream = broker.stream_name(&topic);
    let urls: Vec<String> = cluster.url().split(',').map(str::to_owned).collect();
    let monitor = async_nats::connect(urls).await.expect("monitor client");
    let js = async_nats::jetstream::new(monitor);
    let info = js
        .get_stream(&stream)
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .clone();
    assert_eq!(info.config.num_replicas, 3, "the stream has 3 replicas");
    let server_version = broker.server_version();
    // The stream's settings are checked at start, replicas included.
    match NatsBroker::connect(config.clone().with_replicas(1)).await {
        Err(tributary_core::Error::InvalidInput { reason: message }) => {
            assert!(message.contains("3 replicas (configured: 1)"), "{message}")
        }
        Err(e) => panic!("a broker configured for 1 replica: {e}"),
        Ok(_) => panic!("a broker configured for 1 replica accepted a stream with 3"),
    }

    let dir = tempfile::tempdir().expect("a temporary directory");
    let open = |name: &str| -> Arc<dyn Database> {
        Arc::new(
            SqliteDatabase::open(
                dir.path().join(format!("{name}.db")),
                SqliteConfig::default(),
            )
            .expect("sqlite database"),
        )
    };
    let (source, sink) = (open("source"), open("sink"));
    let broker: Arc<dyn Broker> = Arc::new(broker);
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        source.outbox_source(),
        broker.clone(),
        RelayConfig::default(),
    );
    let progress = Progress {
        relay: relay.stats(),
        handled: Arc::new(AtomicU64::new(0)),
    };
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let consumer = Consumer::new(
        GroupName::new("ledger-checker").expect("group"),
        vec![topic.clone()],
        sink.clone(),
        broker.clone(),
        Arc::new(units::handler(progress.handled.clone())),
        ConsumerConfig::default()
            .with_fetch_wait(Duration::from_millis(100))
            .with_backoff(Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(500),
            )),
    )
    .expect("consumer");
    let consumer_task = tokio::spawn(consumer.run(shutdown.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let producing = producer(source.clone(), topic.clone(), stop.clone());

    // Flowing before anything is killed.
    let flowing = Instant::now();
    while progress.handled.load(Ordering::SeqCst) < 200 {
        assert!(
            flowing.elapsed() < RECOVERY_BOUND,
            "the pipeline never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut recoveries = Vec::new();
    // Kill the stream leader twice (it moves after the first kill), restarting it each time.
    for round in 1..=2 {
        let leader = stream_leader(&js, &stream)
            .await
            .expect("the stream has a leader");
        let i = cluster.index_of(&leader).expect("a node of this cluster");
        let killed_at = Instant::now();
        cluster.kill(i);
        let election = watch_election(&js, &stream, leader.clone(), killed_at);
        let r = match progress
            .recovery_after_kill(
                format!("stream leader {leader} killed (round {round})"),
                killed_at,
            )
            .await
        {
            Ok(r) => Recovery {
                election: election.await.expect("election watch"),
                ..r
            },
            Err(e) => {
                diagnose(&js, &stream, None).await;
                panic!("{e}");
            }
        };
        eprintln!("{r:?}");
        recoveries.push(r);
        cluster.restart(i);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // A flapping node: killed and restarted four times in a row, barely given time to rejoin.
    for round in 1..=4 {
        let i = round % 3;
        let killed_at = Instant::now();
        cluster.kill(i);
        tokio::time::sleep(Duration::from_millis(800)).await;
        cluster.restart(i);
        let r = match progress
            .recovery_after_kill(format!("node n{i} flapped (round {round})"), killed_at)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                diagnose(&js, &stream, None).await;
                panic!("{e}");
            }
        };
        eprintln!("{r:?}");
        recoveries.push(r);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    stop.store(true, Ordering::SeqCst);
    let units_written = producing.await.expect("producer");
    // Everything committed reaches the sink.
    let deadline = Instant::now() + RECOVERY_BOUND;
    let report = loop {
        let report = delivery_report(&source, &sink).await;
        if report.applied >= report.committed || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !relay_task.is_finished() && !consumer_task.is_finished(),
        "the relay and the consumer ran through every kill without being restarted"
    );
    shutdown.cancel();
    relay_task
        .await
        .expect("relay stops")
        .expect("the relay rode through without a fatal error");
    consumer_task
        .await
        .expect("consumer task")
        .expect("the consumer stops cleanly");

    let acknowledged = progress.relay.published.load(Ordering::SeqCst);
    let mut figures = format!(
        "NATS 3-node cluster, R3 stream ({}): {units_written} units, {} events committed, \
         {acknowledged} acknowledged by JetStream, {} applied, lost {}, phantom {}, duplicated {}, \
         out of order {}; {:.1} s in all\n",
        server_version,
        report.committed,
        report.applied,
        report.lost.len(),
        report.phantom.len(),
        report.duplicated.len(),
        report.out_of_order.len(),
        started.elapsed().as_secs_f64()
    );
    for r in &recoveries {
        let election = r
            .election
            .map(|d| {
                format!(
                    "another node led the stream after {:.2} s, ",
                    d.as_secs_f64()
                )
            })
            .unwrap_or_default();
        figures.push_str(&format!(
            "  {}: {election}publishing resumed after {:.2} s, consuming after {:.2} s\n",
            r.what,
            r.publish.as_secs_f64(),
            r.consume.as_secs_f64()
        ));
    }
    // Straight to the process's stderr, past the test harness's capture: the figures belong
    // in the output of every run, passing or not.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), figures.as_bytes());
    if !report.is_clean() {
        diagnose(&js, &stream, Some(&report)).await;
    }
    assert!(report.committed > 500, "enough load: {report}");
    assert!(report.is_clean(), "{report}");
}
