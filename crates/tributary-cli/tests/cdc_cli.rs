//! `tributary cdc` as a process of its own on the shared PostgreSQL (wal_level=logical, set by
//! `.ci/run`), and the reference application's demo with the customer outbox published from
//! the WAL. Skip without the servers unless `TRIBUTARY_TEST_SERVERS=required`.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary::sqlite::{SqliteBroker, SqliteBrokerConfig};
use tributary::{Broker, GroupName, Partition, Topic};
use tributary_testkit::servers::{nats_url, postgres_url, reachable, skip};

/// What `sql` printed, or `None` if psql failed (e.g. the table does not exist yet).
/// psql's answer, or what it wrote to stderr.
fn run_psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-Atqc", sql])
        .output()
        .expect("psql runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn try_psql(url: &str, sql: &str) -> Option<String> {
    run_psql(url, sql).ok()
}

fn psql(url: &str, sql: &str) -> String {
    run_psql(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The last lines a child process wrote to its log, for a failure message.
fn log_tail(log: &std::path::Path) -> String {
    format!(
        "\n--- last lines of {} ---\n{}",
        log.display(),
        tributary_testkit::logs::tail(log, 40)
    )
}

/// The shared server, if it can do logical replication.
fn logical_postgres(suite: &str) -> Option<String> {
    let pg = postgres_url();
    if !reachable(&pg) {
        return skip(suite, &format!("PostgreSQL is not reachable at {pg}"));
    }
    if psql(&pg, "SHOW wal_level") != "logical" {
        return skip(
            suite,
            "the shared PostgreSQL does not run with wal_level=logical (.ci/run sets it)",
        );
    }
    Some(pg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cdc_command_publishes_table_changes_until_stopped() {
    let Some(pg) = logical_postgres("tributary cdc command test") else {
        return;
    };
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let (schema, slot) = (format!("cdc_cli_{run}"), format!("cdc_cli_{run}"));
    psql(
        &pg,
        &format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.items (id int PRIMARY KEY, name text)"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("cdc.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "cdc",
            "--db",
            &pg,
            "--broker",
            &format!("embedded://{}", dir.path().display()),
        ])
        .args([
            "--slot",
            &slot,
            "--tables",
            &format!("{schema}.items"),
            "--create-publication",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("tributary cdc starts");
    // Rows committed once the capture streams are captured. Not "the slot is active": a slot
    // is active while CREATE_REPLICATION_SLOT still waits for its consistent point, and a
    // transaction that commits before that point is not in the stream (nor, without a
    // snapshot, anywhere). The capture records `streaming` after the slot reached it.
    let deadline = Instant::now() + Duration::from_secs(120);
    // (The record's table exists only once the capture has started: until then psql fails.)
    while try_psql(
        &pg,
        &format!("SELECT status FROM public.tributary_cdc_slots WHERE slot_name = '{slot}'"),
    )
    .as_deref()
        != Some("streaming")
    {
        assert!(
            Instant::now() < deadline,
            "the capture never streamed: {}",
            log_tail(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    psql(
        &pg,
        &format!(
            "INSERT INTO {schema}.items SELECT g, 'item ' || g FROM generate_series(1, 50) g; UPDATE {schema}.items SET name = 'renamed' WHERE id = 7; DELETE FROM {schema}.items WHERE id = 9"
        ),
    );
    let broker = Arc::new(
        SqliteBroker::open(dir.path().join("broker.db"), SqliteBrokerConfig::default()).unwrap(),
    );
    let topic = Topic::new("items").unwrap();
    let group = GroupName::new("audit").unwrap();
    let mut types = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while types.len() < 52 && Instant::now() < deadline {
        for p in 0..broker.partitions(&topic).await.unwrap() {
            let mut c = broker
                .consume(&group, &topic, Partition::new(p))
                .await
                .unwrap();
            let batch = c.fetch(1000, Duration::from_millis(100)).await.unwrap();
            if let Some(last) = batch.last() {
                c.commit(last.offset).await.unwrap();
            }
            types.extend(batch.iter().map(|d| {
                tributary::Envelope::from_json(&d.payload)
                    .unwrap()
                    .event_type
            }));
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM stops the capture cleanly: {status}"
    );
    assert_eq!(
        types.iter().filter(|t| *t == "items.inserted").count(),
        50,
        "{types:?}{}",
        log_tail(&log)
    );
    assert_eq!(types.iter().filter(|t| *t == "items.updated").count(), 1);
    assert_eq!(types.iter().filter(|t| *t == "items.deleted").count(), 1);
    // The operator's lag report and re-snapshot command work on the stopped capture.
    let lag = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["cdc", "--db", &pg, "--slot", &slot, "--lag"])
        .output()
        .unwrap();
    assert!(
        lag.status.success(),
        "{}",
        String::from_utf8_lossy(&lag.stderr)
    );
    assert!(String::from_utf8_lossy(&lag.stdout).contains("confirmed_flush_lsn"));
    let again = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "cdc",
            "--db",
            &pg,
            "--slot",
            &slot,
            "--tables",
            &format!("{schema}.items"),
            "--resnapshot",
        ])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        psql(
            &pg,
            &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")
        ),
        "0"
    );
    psql(
        &pg,
        &format!("DROP PUBLICATION IF EXISTS {slot}; DROP SCHEMA {schema} CASCADE"),
    );
    let _ = psql(
        &pg,
        &format!("DELETE FROM public.tributary_cdc_slots WHERE slot_name = '{slot}'"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_passes_with_the_customer_outbox_published_from_the_wal() {
    let Some(pg) = logical_postgres("CDC demo test") else {
        return;
    };
    let nats = nats_url();
    if !reachable(&nats) {
        return skip::<()>("CDC demo test", &format!("NATS is not reachable at {nats}"))
            .unwrap_or(());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "demo",
            "--quiet",
            "--customers",
            "40",
            "--orders",
            "400",
            "--publish",
            "cdc",
            "--db",
            &pg,
            "--broker",
            &nats,
        ])
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[ok] each order decided once"), "{stdout}");
}
