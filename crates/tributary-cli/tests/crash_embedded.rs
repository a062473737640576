//! Crash tests on the embedded default: the relay or the consumer runs as a child process
//! under a steady load of outbox writes over many keys and is killed with SIGKILL at random
//! points, again and again; then the checker compares what the source committed with what the
//! consumer applied. A deliberately naive relay, which marks rows published before the broker
//! has them, must make the checker report loss.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Deployment, kill_loop};
use tributary::Database;
use tributary::sqlite::{SqliteConfig, SqliteDatabase};

fn setup() -> (tempfile::TempDir, Deployment) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = SqliteConfig::default().with_poll_every(Duration::from_millis(50));
    let source: Arc<dyn Database> =
        Arc::new(SqliteDatabase::open(dir.path().join("source.db"), config.clone()).unwrap());
    let sink: Arc<dyn Database> =
        Arc::new(SqliteDatabase::open(dir.path().join("sink.db"), config).unwrap());
    let worker_args = vec!["--dir".to_owned(), dir.path().display().to_string()];
    (
        dir,
        Deployment {
            worker_args,
            source,
            sink,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_repeatedly_loses_nothing_and_applies_nothing_twice() {
    let (_dir, d) = setup();
    let report = kill_loop(&d, "relay", "consume", 25, false).await;
    eprintln!("relay kills: {report}");
    assert!(report.committed > 300, "enough load: {report}");
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_consumer_repeatedly_loses_nothing_and_applies_nothing_twice() {
    let (_dir, d) = setup();
    let report = kill_loop(&d, "consume", "relay", 25, false).await;
    eprintln!("consumer kills: {report}");
    assert!(report.committed > 300, "enough load: {report}");
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_relay_that_does_not_wait_for_acknowledgements() {
    let (_dir, d) = setup();
    let report = kill_loop(&d, "relay", "consume", 15, true).await;
    eprintln!("naive relay kills: {report}");
    assert!(
        !report.lost.is_empty(),
        "the naive relay must lose events: {report}"
    );
}
