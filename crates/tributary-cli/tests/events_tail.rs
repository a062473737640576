//! `tributary events tail --broker embedded://DIR --topic T`: the messages of a topic's
//! partitions printed as JSON lines as they arrive, from the start or from now, filtered by
//! correlation id; SIGTERM stops it and it deletes its throwaway consumer group.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tributary::sqlite::{SqliteBroker, SqliteBrokerConfig};
use tributary::{Broker, Envelope, OutgoingMessage, Payload, Topic};

const TOPIC: &str = "invoices";
const WAIT: Duration = Duration::from_secs(60);

/// A running tail with its stdout and stderr lines.
struct Tail {
    child: Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

fn lines_of(read: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(read).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Tail {
    /// Starts the tail and waits until it says it is tailing (for `--from-start` absent: past
    /// what was already there).
    fn start(broker: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["events", "tail", "--broker", broker, "--topic", TOPIC])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tail starts");
        let out = lines_of(child.stdout.take().unwrap());
        let err = lines_of(child.stderr.take().unwrap());
        let tail = Self { child, out, err };
        let ready = tail
            .err
            .recv_timeout(WAIT)
            .expect("the tail says it started");
        assert!(ready.starts_with("tailing invoices"), "{ready}");
        tail
    }

    fn next(&self) -> Value {
        let line = self.out.recv_timeout(WAIT).expect("a line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// SIGTERM, as a service manager stops it; returns the rest of stdout and stderr.
    fn stop(mut self) -> (Vec<String>, String) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        let err: Vec<String> = self.err.iter().collect();
        assert!(status.success(), "{status}: {err:?}");
        (self.out.iter().collect(), err.join("\n"))
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn publish(broker: &dyn Broker, n: u32, correlation: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut messages = Vec::new();
    for i in 0..n {
        let mut e = Envelope::new("billing", "InvoiceIssued", Payload::from_value(&i).unwrap())
            .with_partition_key(format!("{correlation}-{i}"));
        e.correlation_id = Some(correlation.into());
        ids.push(e.id.to_string());
        messages.push(OutgoingMessage::from_envelope(
            Topic::new(TOPIC).unwrap(),
            &e,
        ));
    }
    broker.publish(&messages).await.unwrap();
    ids
}

/// The tail groups' rows in the embedded log's committed offsets.
fn tail_groups(dir: &std::path::Path) -> i64 {
    rusqlite::Connection::open(dir.join("broker.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM group_offsets WHERE consumer_group LIKE 'tributary-tail-%'",
            [],
            |row| row.get(0),
        )
        .unwrap()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Three tails of a topic on `url` (through `broker`): from the start, from now, and from the
/// start filtered by correlation; three messages before they start, two after. `groups` counts
/// the tails' consumer groups where the test can see them.
async fn tails_see_what_they_should(
    url: &str,
    broker: &dyn Broker,
    groups: &dyn Fn() -> Option<i64>,
) {
    broker
        .ensure_topic(&Topic::new(TOPIC).unwrap(), 3)
        .await
        .unwrap();
    let before = publish(broker, 3, "before").await;

    let from_start = Tail::start(url, &["--from-start"]);
    let from_now = Tail::start(url, &[]);
    let filtered = Tail::start(url, &["--from-start", "--correlation", "after"]);
    let got: Vec<Value> = (0..3).map(|_| from_start.next()).collect();
    let ids = got
        .iter()
        .map(|l| l["event"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sorted(ids), sorted(before.clone()), "the retained three");
    for line in &got {
        assert_eq!(line["topic"], TOPIC);
        assert_eq!(line["event"]["type"], "InvoiceIssued");
        assert!(line["partition"].as_u64().unwrap() < 3);
    }

    let after = publish(broker, 2, "after").await;
    let ids = |tail: &Tail| {
        sorted(
            (0..2)
                .map(|_| tail.next()["event"]["id"].as_str().unwrap().to_owned())
                .collect(),
        )
    };
    assert_eq!(
        ids(&from_now),
        sorted(after.clone()),
        "only what came later"
    );
    assert_eq!(ids(&from_start), sorted(after.clone()));
    assert_eq!(ids(&filtered), sorted(after), "only correlation 'after'");

    if let Some(n) = groups() {
        assert!(n > 0, "the tails read as groups");
    }
    for tail in [from_start, from_now, filtered] {
        let (rest, err) = tail.stop();
        assert!(rest.is_empty(), "nothing printed twice: {rest:?}");
        assert!(
            err.contains("deleted consumer group tributary-tail-"),
            "{err}"
        );
    }
    if let Some(n) = groups() {
        assert_eq!(n, 0, "no tail group is left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_prints_each_message_once_as_it_arrives_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        SqliteBroker::open(dir.path().join("broker.db"), SqliteBrokerConfig::default()).unwrap();
    let url = format!("embedded://{}", dir.path().display());
    tails_see_what_they_should(&url, &broker, &|| Some(tail_groups(dir.path()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_reads_nats_jetstream_too() {
    let nats = tributary_testkit::servers::nats_url();
    if !tributary_testkit::servers::reachable(&nats) {
        tributary_testkit::servers::skip::<()>("events tail on NATS", "NATS is not reachable");
        return;
    }
    // A stream prefix of this test's own, so that parallel runs never share a stream.
    // (at most 32 characters: the random end of a UUIDv7).
    let id = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("TAIL{}", &id[8..]);
    let url = format!("{nats}?prefix={prefix}");
    let broker = url
        .parse::<tributary::BrokerUrl>()
        .unwrap()
        .connect()
        .await
        .unwrap();
    tails_see_what_they_should(&url, &*broker, &|| None).await;
    // The run's stream is not left on the shared server.
    let config = tributary::nats::NatsBrokerConfig::default()
        .with_url(nats)
        .with_stream_prefix(prefix);
    let nats = tributary::nats::NatsBroker::connect(config).await.unwrap();
    nats.delete_topic(&Topic::new(TOPIC).unwrap())
        .await
        .unwrap();
}

#[test]
fn a_missing_embedded_log_is_refused_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("embedded://{}", dir.path().display());
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["events", "tail", "--broker", &broker, "--topic", TOPIC])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no embedded log"));
    assert!(!dir.path().join("broker.db").exists());
}
