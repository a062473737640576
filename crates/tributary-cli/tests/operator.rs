//! The generic operator commands on a deployment that is not the reference application:
//! `status`, `dead-letters list|show|replay|discard`, by database URL alone, and with the
//! broker's URL the groups' lag (in `status` and the console), plus the console's event
//! browser.

mod listening;
mod support;

use listening::Listening;
use serde_json::Value;
use support::{Deployment, GROUP, IDLE_GROUP, total_lag, tributary};
use tributary::{Envelope, ExpectedVersion, Payload, StreamId};

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
    assert_eq!(json["relays"][0]["source"], "outbox");
    assert_eq!(json["relays"][0]["pending"], 0);
    assert_eq!(json["relays"][0]["lease"]["state"], "free", "no relay runs");
    assert_eq!(json["cdc_slots"], Value::Null, "SQLite has no slots");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_left_behind_by_a_killed_tail_is_listed_but_not_checked_by_max_lag() {
    let d = Deployment::start().await;
    d.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    for key in ["invoice-1", "invoice-2"] {
        d.publish(key).await;
    }
    d.handled(2).await;
    // What `events tail` leaves when it is killed with SIGKILL: its group, behind by all.
    let tail = "tributary-tail-0193a5c2-0000-7000-8000-000000000000";
    let _left = d.idle_group_named(tail).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let healthy = loop {
        let status = d.status_with_broker(&["--max-lag", "0"]);
        // The billing group's commit trails its handler by a moment.
        if status.status.success() || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(healthy.status.success(), "{}", stderr(&healthy));
    let listed = stdout(&healthy);
    let expected = format!("group {tail} on invoices partition 0: 1 behind (an `events tail`'s");
    assert!(listed.contains(&expected), "{listed}");
    let json = d.status_with_broker(&["--json"]);
    let json: Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(total_lag(&json, tail), 2, "{json}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_the_console_show_every_groups_lag_from_the_broker() {
    let d = Deployment::start().await;
    d.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    for key in ["invoice-1", "invoice-2", "invoice-3"] {
        d.publish(key).await;
    }
    d.handled(3).await;
    let _idle = d.idle_group().await;
    let broker = d.broker_url();

    // The billing group committed what it handled (its commit trails the handler by a
    // moment); the idle group is behind by everything.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let json = loop {
        let status = d.status_with_broker(&["--json"]);
        assert!(status.status.success(), "{}", stderr(&status));
        let json: Value = serde_json::from_str(&stdout(&status)).unwrap();
        if total_lag(&json, GROUP) == 0 {
            break json;
        }
        assert!(std::time::Instant::now() < deadline, "{json}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(total_lag(&json, IDLE_GROUP), 3, "{json}");
    let partitions: Vec<_> = json["consumer_groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["group"] == GROUP)
        .map(|g| (g["topic"].clone(), g["partition"].clone()))
        .collect();
    assert_eq!(
        partitions,
        [(0, "invoices"), (1, "invoices")].map(|(p, t)| (Value::from(t), Value::from(p))),
        "one entry per partition"
    );

    let behind = d.status_with_broker(&["--max-lag", "1"]);
    // Three messages on two partitions: one partition holds at least two.
    assert!(
        !behind.status.success(),
        "a partition 2 or 3 behind is more than 1"
    );
    assert!(
        stderr(&behind).contains("group audit is"),
        "{}",
        stderr(&behind)
    );
    assert!(
        stdout(&behind).contains("group audit on invoices partition"),
        "{}",
        stdout(&behind)
    );
    let no_broker = tributary(&["status", "--db", &d.url, "--max-lag", "2"]);
    assert!(!no_broker.status.success(), "--max-lag needs --broker");
    let missing = tributary(&[
        "status",
        "--db",
        &d.url,
        "--broker",
        "embedded:///nonexistent/deployment",
    ]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no such deployment"),
        "{}",
        stderr(&missing)
    );
    assert!(
        !std::path::Path::new("/nonexistent/deployment").exists(),
        "a status created nothing"
    );

    let console = Listening::start(&[
        "console",
        "--db",
        &d.url,
        "--broker",
        &broker,
        "--listen",
        "127.0.0.1:0",
    ]);
    let overview = reqwest::get(format!("{}/", console.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        overview.contains("data-total-lag=\"audit/invoices\">3<"),
        "the console agrees with status: {overview}"
    );
    assert!(
        overview.contains(
            "<li data-topic=\"invoices\"><span data-publishers=\"invoices\"><i>billing</i></span> \
             → invoices → <b>audit</b>, <b>billing</b></li>"
        ),
        "who publishes the topic (the envelopes' source) and who consumes it: {overview}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_finds_events_by_stream_correlation_and_id() {
    let d = Deployment::start().await;
    let store = d.db.event_store();
    let event = |n: u32, correlation: &str| {
        let mut e = Envelope::new("billing", "InvoiceIssued", Payload::from_value(&n).unwrap());
        e.correlation_id = Some(correlation.to_owned());
        e
    };
    let first = event(1, "order-7");
    let first_id = first.id;
    let one = StreamId::new("Invoice-1").unwrap();
    let two = StreamId::new("Invoice-2").unwrap();
    store
        .append(
            &one,
            ExpectedVersion::NoStream,
            vec![first, event(2, "order-8")],
        )
        .await
        .unwrap();
    store
        .append(&two, ExpectedVersion::NoStream, vec![event(3, "order-7")])
        .await
        .unwrap();
    let console = Listening::start(&["console", "--db", &d.url, "--listen", "127.0.0.1:0"]);
    let get = async |query: &str| {
        let reply = reqwest::get(format!("{}/events{query}", console.base))
            .await
            .unwrap();
        (reply.status().as_u16(), reply.text().await.unwrap())
    };
    let rows = |page: &str| page.matches("<tr data-event=").count();

    let (status, page) = get("?correlation=order-7").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        rows(&page),
        2,
        "the transaction's events in both streams: {page}"
    );
    assert!(
        page.contains("Invoice-1") && page.contains("Invoice-2"),
        "{page}"
    );
    let (_, page) = get("?stream=Invoice-1").await;
    assert_eq!(rows(&page), 2, "{page}");
    let (_, page) = get("?stream=Invoice-1&correlation=order-8").await;
    assert_eq!(rows(&page), 1, "{page}");
    let (_, page) = get(&format!("?id={first_id}")).await;
    assert_eq!(rows(&page), 1, "{page}");
    assert!(
        page.contains(&format!("data-event=\"{first_id}\"")),
        "{page}"
    );
    let (_, page) = get("?correlation=nobody").await;
    assert!(page.contains("id=\"no-events\""), "{page}");
    let (status, page) = get("?id=not-a-uuid").await;
    assert_eq!(status, 400, "{page}");
    let (status, page) = get("?stream=").await;
    assert_eq!(status, 400, "an empty search is refused: {page}");
    let (status, page) = get("?correlation=%3Cscript%3E").await;
    assert_eq!(status, 200);
    assert!(
        !page.contains("<script>"),
        "what was asked is escaped: {page}"
    );
    d.stop().await;
}

/// Waits until `status --json` satisfies `done`, and returns it.
async fn status_until(url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = tributary(&["status", "--db", url, "--json"]);
        assert!(status.status.success(), "{}", stderr(&status));
        let json: Value = serde_json::from_str(&stdout(&status)).unwrap();
        if done(&json) {
            return json;
        }
        assert!(std::time::Instant::now() < deadline, "{json}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_every_relay_source_its_lease_holder_and_what_each_group_handled() {
    let d = Deployment::start().await;
    d.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    let invoices = tributary::Topic::new(support::TOPIC).unwrap();
    let events: Vec<Envelope> = (1..=3)
        .map(|n| {
            Envelope::new("billing", "InvoiceIssued", Payload::from_value(&n).unwrap())
                .with_partition_key(format!("invoice-{n}"))
        })
        .collect();
    d.db.event_store()
        .append(
            &StreamId::new("Invoice-9").unwrap(),
            ExpectedVersion::NoStream,
            events,
        )
        .await
        .unwrap();

    // Two relays in this process: the outbox's and the event store's.
    let stop = tributary::CancellationToken::new();
    let mut relays = Vec::new();
    for source in [
        d.db.outbox_source(),
        d.db.event_store_source("invoices", invoices.clone()),
    ] {
        let relay = tributary::Relay::new(source, d.broker.clone(), Default::default());
        let s = stop.clone();
        relays.push(tokio::spawn(async move { relay.run(s).await }));
    }
    d.handled(3).await;
    let me = format!("pid {}", std::process::id());
    let json = status_until(&d.url, |j| {
        j["relays"].as_array().is_some_and(|r| r.len() == 2)
            && j["relays"][1]["pending"] == 0
            && j["handled_last_minute"][0]["messages"] == 3
    })
    .await;
    let relays_json = json["relays"].as_array().unwrap();
    assert_eq!(relays_json[0]["source"], "outbox", "{json}");
    assert_eq!(relays_json[1]["source"], "events:invoices", "{json}");
    for r in relays_json {
        assert_eq!(r["lease"]["state"], "held", "{json}");
        assert_eq!(r["lease"]["holder"], me.as_str(), "{json}");
        assert!(r["lease"]["since"].is_string(), "{json}");
    }
    assert_eq!(json["handled_last_minute"][0]["group"], GROUP, "{json}");
    let text = tributary(&["status", "--db", &d.url]);
    assert!(
        stdout(&text).contains(&format!(
            "relay events:invoices: 0 pending; lease held by {me}"
        )),
        "{}",
        stdout(&text)
    );

    stop.cancel();
    for r in relays {
        r.await.unwrap().unwrap();
    }
    let json = status_until(&d.url, |j| j["relays"][0]["lease"]["state"] == "free").await;
    assert_eq!(
        json["relays"][1]["lease"]["state"], "free",
        "both leases went with their relays: {json}"
    );
    // The lease's note is read only while a relay holds it: the probe changed nothing.
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_also_serves_the_console_over_its_own_databases() {
    let dir = tempfile::tempdir().unwrap();
    let refused = tributary(&[
        "serve",
        "--data-dir",
        &dir.path().display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--console-listen",
        "0.0.0.0:0",
    ]);
    assert!(
        !refused.status.success(),
        "a console beyond loopback needs a token"
    );
    assert!(
        stderr(&refused).contains("needs a console token"),
        "{}",
        stderr(&refused)
    );
    // A free port, picked and released: the console's address is not printed on stdout.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let serve = Listening::start(&[
        "serve",
        "--data-dir",
        &dir.path().display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--console-listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let created = reqwest::Client::new()
        .post(format!("{}/customers", serve.base))
        .json(&serde_json::json!({"name": "Acme", "credit_limit": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let overview = loop {
        if let Ok(reply) = reqwest::get(format!("http://127.0.0.1:{port}/")).await {
            let page = reply.text().await.unwrap();
            // The customer's event went through the outbox, which the serve's relay holds.
            if page.contains("data-pending=\"0/outbox\">0<") && page.contains("held by pid") {
                break page;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the console never showed the relay"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for service in ["customers service", "orders service", "history service"] {
        assert!(overview.contains(service), "{service}: {overview}");
    }
    assert!(
        overview.contains("<h2>Consumer groups</h2>"),
        "the serve's broker is the console's: {overview}"
    );
}
