//! The generic operator commands on a deployment that is not the reference application:
//! `status`, `dead-letters list|show|replay|discard`, by database URL alone.

mod support;

use serde_json::Value;
use support::{Deployment, GROUP, tributary};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_and_replays_a_dead_letter_of_any_group_by_url() {
    let d = Deployment::start().await;
    d.publish("invoice-1").await;
    let letter = d.dead_letters(1).await.remove(0);
    let id = letter.id.to_string();

    let status = tributary(&["status", "--db", &d.url, "--json"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let json: Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(json["dead_letters"][0]["group"], GROUP);
    assert_eq!(json["dead_letters"][0]["open"], 1);
    assert_eq!(json["outbox"]["pending"], 0);
    assert_eq!(json["healthy"], true);

    let unhealthy = tributary(&["status", "--db", &d.url, "--max-dead-letters", "0"]);
    assert!(
        !unhealthy.status.success(),
        "one open dead letter is more than 0"
    );
    assert!(
        stderr(&unhealthy).contains("unhealthy"),
        "{}",
        stderr(&unhealthy)
    );

    let listed = tributary(&["dead-letters", "--db", &d.url, "list", "--group", GROUP]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let lines: Vec<Value> = stdout(&listed)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["key"], "invoice-1");
    let filtered = tributary(&["dead-letters", "--db", &d.url, "list", "--key", "other"]);
    assert!(stdout(&filtered).is_empty(), "no letter of another key");

    let shown = tributary(&["dead-letters", "--db", &d.url, "show", &id]);
    assert!(stdout(&shown).contains("the billing handler is broken"));

    // Still broken: the consumer replays it, it fails again and stays.
    let again = tributary(&[
        "dead-letters",
        "--db",
        &d.url,
        "replay",
        &id,
        "--wait",
        "30",
    ]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("failed again"),
        "{}",
        stderr(&again)
    );
    assert_eq!(d.dead_letters(1).await[0].id, letter.id);

    // Fixed: the replay goes through the group's own handler, in its process.
    d.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    let replayed = tributary(&[
        "dead-letters",
        "--db",
        &d.url,
        "replay",
        &id,
        "--wait",
        "30",
    ]);
    assert!(replayed.status.success(), "{}", stderr(&replayed));
    assert!(
        stdout(&replayed).contains("replayed 1"),
        "{}",
        stdout(&replayed)
    );
    assert_eq!(d.handled.load(std::sync::atomic::Ordering::SeqCst), 1);
    d.dead_letters(0).await;

    // Discarded without processing.
    d.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    d.publish("invoice-2").await;
    let second = d.dead_letters(1).await.remove(0);
    let discarded = tributary(&[
        "dead-letters",
        "--db",
        &d.url,
        "discard",
        &second.id.to_string(),
    ]);
    assert!(discarded.status.success(), "{}", stderr(&discarded));
    d.dead_letters(0).await;
    assert_eq!(d.handled.load(std::sync::atomic::Ordering::SeqCst), 1);

    let missing = d.dir.path().join("nothing-here.db");
    let none = tributary(&["status", "--db", &format!("sqlite://{}", missing.display())]);
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("no such deployment"),
        "{}",
        stderr(&none)
    );
    assert!(
        !missing.exists(),
        "a read-only command created the database"
    );
    d.stop().await;
}
