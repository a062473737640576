//! `tributary status` on a PostgreSQL service database: the relay's lease holder as the
//! server sees it, the database's replication slots, and a schema that does not exist refused
//! without being created. Skips without the server unless `TRIBUTARY_TEST_SERVERS=required`.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tributary::{CancellationToken, DatabaseUrl, InMemoryBroker, Relay};
use tributary_testkit::servers::{postgres_url, reachable, skip};

fn tributary(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .output()
        .expect("the tributary binary runs")
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-Atqc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Drops the test's schema and slot however the test ends: a slot left behind would keep
/// the shared server's WAL forever.
struct Cleanup {
    pg: String,
    schema: String,
    slot: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            let _ = Command::new("psql")
                .args([&self.pg, "-Atqc"])
                .arg(format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = '{slot}'"
                ))
                .output();
        }
        let _ = Command::new("psql")
            .args([&self.pg, "-Atqc"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .output();
    }
}

fn status_json(url: &str, extra: &[&str]) -> (bool, Value, String) {
    let mut args = vec!["status", "--db", url, "--json"];
    args.extend_from_slice(extra);
    let out = tributary(&args);
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_postgres_names_the_lease_holder_and_the_slots() {
    let pg = postgres_url();
    if !reachable(&pg) {
        return skip(
            "status on PostgreSQL",
            &format!("PostgreSQL is not reachable at {pg}"),
        )
        .unwrap_or(());
    }
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let mut cleanup = Cleanup {
        pg: pg.clone(),
        schema: format!("status_{run}"),
        slot: None,
    };

    // A schema that is not there is refused, and stays not there.
    let absent = format!("{pg}?schema=status_absent_{run}");
    let (ok, _, err) = status_json(&absent, &[]);
    assert!(!ok && err.contains("no such deployment"), "{err}");
    assert_eq!(
        psql(
            &pg,
            &format!("SELECT count(*) FROM pg_namespace WHERE nspname = 'status_absent_{run}'")
        ),
        "0",
        "status created the schema it was asked about"
    );

    let url = format!("{pg}?schema={}", cleanup.schema);
    let db = url.parse::<DatabaseUrl>().unwrap().connect().await.unwrap();
    let (ok, json, err) = status_json(&url, &[]);
    assert!(ok, "{err}");
    assert_eq!(json["relays"][0]["lease"]["state"], "free", "{json}");
    assert!(json["cdc_slots"].is_array(), "{json}");

    let stop = CancellationToken::new();
    let relay = Relay::new(
        db.outbox_source(),
        std::sync::Arc::new(InMemoryBroker::default()),
        Default::default(),
    );
    let s = stop.clone();
    let relay = tokio::spawn(async move { relay.run(s).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        let (ok, json, err) = status_json(&url, &[]);
        assert!(ok, "{err}");
        if json["relays"][0]["lease"]["state"] == "held" {
            break json;
        }
        assert!(
            Instant::now() < deadline,
            "the relay never took its lease: {json}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let holder = held["relays"][0]["lease"]["holder"].as_str().unwrap();
    let pid: i32 = holder
        .strip_prefix("server pid ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{holder}"));
    assert_eq!(
        psql(
            &pg,
            &format!("SELECT application_name FROM pg_stat_activity WHERE pid = {pid}")
        ),
        format!("lease outbox@{}", cleanup.schema),
        "the holder named is the lease's own session"
    );
    stop.cancel();
    relay.await.unwrap().unwrap();

    if psql(&pg, "SHOW wal_level") != "logical" {
        return skip(
            "status's replication slots",
            "the shared PostgreSQL does not run with wal_level=logical (.ci/run sets it)",
        )
        .unwrap_or(());
    }
    let slot = format!("status_{run}");
    cleanup.slot = Some(slot.clone());
    psql(
        &pg,
        &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
    );
    // WAL written after the slot's position is what it holds back.
    psql(
        &pg,
        &format!(
            "CREATE TABLE {0}.filler AS SELECT g FROM generate_series(1, 1000) g",
            cleanup.schema
        ),
    );
    let (ok, json, err) = status_json(&url, &["--max-slot-lag-bytes", "1"]);
    assert!(
        !ok,
        "a slot behind by more than a byte is unhealthy: {json}"
    );
    assert!(err.contains(&format!("slot {slot} holds")), "{err}");
    let listed = json["cdc_slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == slot.as_str())
        .unwrap_or_else(|| panic!("{json}"))
        .clone();
    assert_eq!(
        listed["active_pid"],
        Value::Null,
        "no capture streams: {listed}"
    );
    assert!(listed["lag_bytes"].as_u64().unwrap() > 0, "{listed}");
    assert!(listed["confirmed_flush_lsn"].is_string(), "{listed}");
    drop(cleanup);
}
