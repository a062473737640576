//! `--log-format`: the binary's log events on stderr as text (the default) or as one JSON
//! object per line, seen on a real event of a real command (the relay taking its lease).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const LEASE: &str = "relay holds the lease; publishing";

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `tributary relay` with `format` (none: the default) and returns the stderr line of
/// the lease event, waiting for it for at most a minute.
fn lease_line(format: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("svc.db").display());
    let broker = format!("embedded://{}", dir.path().join("broker").display());
    let mut command = Command::new(env!("CARGO_BIN_EXE_tributary"));
    command
        .args(["relay", "--db", &db, "--broker", &broker])
        .env("RUST_LOG", "info")
        .env_remove("TRIBUTARY_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(format) = format {
        command.args(["--log-format", format]);
    }
    let mut relay = Relay(command.spawn().expect("relay starts"));
    let stderr = relay.0.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains(LEASE) => return line,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no lease event ({e}); stderr so far: {seen:#?}"),
        }
    }
}

#[test]
fn json_log_lines_are_objects_with_level_target_and_fields() {
    let line = lease_line(Some("json"));
    let event: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(event["level"], "INFO", "{line}");
    assert_eq!(event["fields"]["message"], LEASE, "{line}");
    assert_eq!(event["fields"]["source"], "outbox", "{line}");
    assert!(
        event["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("tributary_runtime")),
        "{line}"
    );
    assert!(event["timestamp"].is_string(), "{line}");
}

#[test]
fn text_is_the_default_and_not_json() {
    for format in [None, Some("text")] {
        let line = lease_line(format);
        assert!(
            serde_json::from_str::<serde_json::Value>(&line).is_err(),
            "{format:?}: {line}"
        );
        assert!(line.contains("INFO"), "{format:?}: {line}");
        assert!(line.contains("source=\"outbox\""), "{format:?}: {line}");
    }
}

#[test]
fn an_unknown_format_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "--log-format",
            "yaml",
            "status",
            "--db",
            "sqlite:///nowhere.db",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("yaml"), "{stderr}");
}
