//! `tributary admin` on a real deployment directory.

mod listening;

use std::process::Command;
use std::time::{Duration, Instant};

use customers_and_orders::system::{self, Backends, Services};
use listening::Listening;
use tributary::sqlite::{SqliteBroker, SqliteBrokerConfig};
use tributary::{Broker, EventId, OutgoingMessage, Topic};

fn tributary(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .output()
        .expect("runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_the_history_view_restores_it_from_the_broker_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let demo = tributary(&[
        "demo",
        "--quiet",
        "--customers",
        "20",
        "--orders",
        "300",
        "--data-dir",
        d,
    ]);
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stdout)
    );

    let before = {
        let services = Services::new(&Backends::embedded(dir.path()).await.unwrap());
        services.history().unwrap().all().await.unwrap()
    };
    assert!(before.len() >= 20);

    let listed = tributary(&["admin", "--data-dir", d, "dead-letters", "list"]);
    assert!(listed.status.success());
    assert!(
        listed.stdout.is_empty(),
        "a healthy run leaves no dead letters"
    );

    let rebuilt = tributary(&["admin", "--data-dir", d, "rebuild-history"]);
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    {
        let services = Services::new(&Backends::embedded(dir.path()).await.unwrap());
        assert!(
            services.history().unwrap().all().await.unwrap().is_empty(),
            "cleared at once"
        );
    }
    // Starting the system replays the retained log into the empty view.
    let running = system::start(Backends::embedded(dir.path()).await.unwrap())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = running.services.history().unwrap().all().await.unwrap();
        if now == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the view was not rebuilt ({} of {} documents)",
            now.len(),
            before.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While the history service runs (here, in this process) a rebuild is refused and
    // clears nothing: the service's consumers hold their group's lock.
    let refused = tributary(&["admin", "--data-dir", d, "rebuild-history"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a rebuild while the history service runs must be refused"
    );
    assert!(
        stderr.contains("in use") && stderr.contains("stop them"),
        "{stderr}"
    );
    assert_eq!(
        running.services.history().unwrap().all().await.unwrap(),
        before,
        "a refused rebuild clears nothing"
    );
    running.stop().await;

    let bad = tributary(&[
        "admin",
        "--data-dir",
        d,
        "dead-letters",
        "skip",
        "--service",
        "nope",
        "1",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown service"));
}

/// The saga orchestrator runs its own reply group: `/health` lists it among the groups, and a
/// reply it cannot read is a dead letter the reference admin lists and skips like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrators_reply_group_is_in_health_and_in_the_dead_letter_admin() {
    const GROUP: &str = "saga-CreateOrder";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let serve = Listening::start(&["serve", "--data-dir", d, "--listen", "127.0.0.1:0"]);
    let component = format!("consumer {GROUP}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health: serde_json::Value = reqwest::get(format!("{}/health", serve.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if health["components"][&component] == "Running" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reply group never reported running: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let broker = SqliteBroker::open(dir.path().join("broker.db"), SqliteBrokerConfig::default())
        .expect("the broker log opens beside the serving process");
    broker
        .publish(&[OutgoingMessage {
            topic: Topic::new("CreateOrder-replies").unwrap(),
            key: "poison".into(),
            id: EventId::new(),
            payload: b"{not a reply".to_vec(),
        }])
        .await
        .unwrap();
    let letter = loop {
        let listed = tributary(&["admin", "--data-dir", d, "dead-letters", "list"]);
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let letters: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if let Some(letter) = letters.into_iter().find(|l| l["group"] == GROUP) {
            break letter;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "the poison reply never became a dead letter of {GROUP}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(letter["key"], "poison");
    let id = letter["id"].to_string();
    let skipped = tributary(&[
        "admin",
        "--data-dir",
        d,
        "dead-letters",
        "skip",
        "--service",
        "order",
        &id,
    ]);
    assert!(
        skipped.status.success(),
        "{}",
        String::from_utf8_lossy(&skipped.stderr)
    );
    let listed = tributary(&["admin", "--data-dir", d, "dead-letters", "list"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains(GROUP),
        "the skipped letter is resolved"
    );
}
