//! `tributary sagas list|show|cancel|retry` on an orchestrator's SQLite database.

mod listening;

use std::process::Command;
use std::sync::Arc;

use listening::Listening;
use tributary::saga::{
    Command as SagaCommand, Compensation, Orchestrator, OrchestratorConfig, SagaDefinition, Step,
};
use tributary::sqlite::{SqliteConfig, SqliteDatabase};
use tributary::{Database, InMemoryBroker, Topic};

fn tributary(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .output()
        .expect("runs")
}

/// Stores a saga document no saga definition can decode, as a newer version or damage would.
async fn put_unreadable_saga(db: &Arc<dyn Database>, id: &'static str) -> tributary::Result<()> {
    db.transact(move |unit| {
        Box::pin(async move {
            let doc = tributary::Payload::from_value(&serde_json::json!({"not": "a saga"}))?;
            unit.put("tributary_sagas", id, doc).await
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_are_listed_by_state_and_shown_with_their_timeline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("orders.db");
    let db: Arc<dyn Database> = Arc::new(SqliteDatabase::open(&path, SqliteConfig::default())?);
    let definition = SagaDefinition::<u32>::builder("CliOrder")?
        .pivot(Step::send(
            "approve",
            Topic::new("approvals")?,
            |n: &u32| SagaCommand::new("Approve", n),
        ))
        .build();
    // Nobody answers: the saga waits for its first reply.
    let orchestrator = Orchestrator::new(
        definition,
        db.clone(),
        Arc::new(InMemoryBroker::default()),
        OrchestratorConfig::default(),
    );
    let id = orchestrator.start(7).await?;
    drop(orchestrator);
    let url = format!("sqlite://{}", path.display());

    let running = tributary(&["sagas", "list", "--db", &url, "--state", "running"]);
    assert!(
        running.status.success(),
        "{}",
        String::from_utf8_lossy(&running.stderr)
    );
    let out = String::from_utf8(running.stdout)?;
    assert!(
        out.contains(&id.to_string()) && out.contains("CliOrder"),
        "{out}"
    );

    let completed = tributary(&[
        "sagas",
        "list",
        "--db",
        &url,
        "--state",
        "completed",
        "--json",
    ]);
    assert!(completed.status.success());
    assert!(completed.stdout.is_empty(), "no saga completed");

    let stuck = tributary(&["sagas", "list", "--db", &url, "--stuck-for", "1h", "--json"]);
    assert!(
        stuck.stdout.is_empty(),
        "nothing has been stuck for an hour"
    );

    let show = tributary(&["sagas", "show", "--db", &url, &id.to_string()]);
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let out = String::from_utf8(show.stdout)?;
    assert!(out.contains("state      running"), "{out}");
    assert!(
        out.contains("command sent") && out.contains("Approve to approvals"),
        "{out}"
    );
    assert!(out.contains("awaiting   Reply"), "{out}");

    // A saga document no definition can read (a newer version's, or damaged) is reported, and
    // hides neither the others nor itself.
    put_unreadable_saga(&db, "broken-saga").await?;
    drop(db);
    let listed = tributary(&["sagas", "list", "--db", &url]);
    assert!(
        !listed.status.success(),
        "an unreadable saga fails the listing's exit code"
    );
    let (out, err) = (
        String::from_utf8_lossy(&listed.stdout),
        String::from_utf8_lossy(&listed.stderr),
    );
    assert!(
        out.contains(&id.to_string()),
        "the readable saga is still listed: {out}"
    );
    assert!(err.contains("saga broken-saga cannot be read"), "{err}");
    let console = Listening::start(&["console", "--db", &url, "--listen", "127.0.0.1:0"]);
    let page = reqwest::get(format!("{}/sagas", console.base)).await?;
    assert_eq!(
        page.status().as_u16(),
        200,
        "one bad saga does not take the page down"
    );
    let page = page.text().await?;
    assert!(page.contains("data-unreadable=\"broken-saga\""), "{page}");
    assert!(page.contains(&id.to_string()), "{page}");
    let overview = reqwest::get(format!("{}/", console.base))
        .await?
        .text()
        .await?;
    assert!(
        overview.contains("data-sagas=\"unreadable\">1 unreadable"),
        "{overview}"
    );
    // The overview recounts at most every 15 s (counting reads every saga); the list is live.
    let db: Arc<dyn Database> = Arc::new(SqliteDatabase::open(&path, SqliteConfig::default())?);
    put_unreadable_saga(&db, "broken-saga-2").await?;
    let overview = reqwest::get(format!("{}/", console.base))
        .await?
        .text()
        .await?;
    assert!(
        overview.contains("data-sagas=\"unreadable\">1 unreadable"),
        "{overview}"
    );
    let page = reqwest::get(format!("{}/sagas", console.base))
        .await?
        .text()
        .await?;
    assert!(page.contains("data-unreadable=\"broken-saga-2\""), "{page}");

    let missing = tributary(&[
        "sagas",
        "show",
        "--db",
        &format!("sqlite://{}/nothing.db", dir.path().display()),
        "x",
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
    Ok(())
}

/// A saga that holds something (compensatable), then asks for an approval (the pivot).
fn hold_then_approve(saga_type: &str) -> tributary::Result<SagaDefinition<u32>> {
    let holds = Topic::new("holds")?;
    Ok(SagaDefinition::<u32>::builder(saga_type)?
        .compensatable(
            Step::send("hold", holds.clone(), |n: &u32| SagaCommand::new("Hold", n)),
            Compensation::send(holds, |n: &u32| SagaCommand::new("Release", n)),
        )
        .pivot(Step::send(
            "approve",
            Topic::new("approvals")?,
            |n: &u32| SagaCommand::new("Approve", n),
        ))
        .build())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_cancel_is_performed_by_the_running_orchestrator_or_refused_with_its_reason()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("orders.db");
    let db: Arc<dyn Database> = Arc::new(SqliteDatabase::open(&path, SqliteConfig::default())?);
    let definition = hold_then_approve("CliHold")?;
    let orchestrator = Orchestrator::new(
        definition,
        db.clone(),
        Arc::new(InMemoryBroker::default()),
        OrchestratorConfig::default(),
    );
    // Nobody answers: both sagas wait for the reply to their first command.
    let (first, second) = (orchestrator.start(1).await?, orchestrator.start(2).await?);
    let url = format!("sqlite://{}", path.display());

    // No orchestrator runs yet: the request stays, and the command says so.
    let unanswered = tributary(&[
        "sagas",
        "cancel",
        "--db",
        &url,
        &first.to_string(),
        "--wait",
        "1s",
    ]);
    assert!(!unanswered.status.success());
    let stderr = String::from_utf8_lossy(&unanswered.stderr);
    assert!(stderr.contains("no orchestrator of CliHold"), "{stderr}");

    let shutdown = tributary::CancellationToken::new();
    let running = tokio::spawn(orchestrator.clone().run(shutdown.clone()));
    // The request made while it was down is performed now.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let shown = loop {
        let show = tributary(&["sagas", "show", "--db", &url, &first.to_string()]);
        let out = String::from_utf8(show.stdout)?;
        if out.contains("cancelled by an operator") {
            break out;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the pending cancel was never performed:\n{out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(shown.contains("state      compensating"), "{shown}");
    assert!(shown.contains("Release to holds"), "{shown}");

    let cancel = tributary(&[
        "sagas",
        "cancel",
        "--db",
        &url,
        &second.to_string(),
        "--reason",
        "customer called",
    ]);
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    assert!(String::from_utf8_lossy(&cancel.stdout).contains("cancelled"));
    let second_now = orchestrator.instance(&second).await?.expect("the saga");
    assert!(
        second_now
            .history
            .iter()
            .any(|h| h.what == "cancelled by an operator"
                && h.detail.as_deref() == Some("customer called")),
        "{second_now:#?}"
    );

    // A saga the orchestrator cannot cancel (already compensating): refused, with why.
    let again = tributary(&["sagas", "cancel", "--db", &url, &second.to_string()]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("compensating"),
        "{stderr}"
    );

    let retry = tributary(&["sagas", "retry", "--db", &url, &second.to_string()]);
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    let retried = orchestrator.instance(&second).await?.expect("the saga");
    assert!(
        retried
            .history
            .iter()
            .any(|h| h.what == "retried by an operator"),
        "{retried:#?}"
    );
    shutdown.cancel();
    running.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_sagas_shows_a_timeline_and_cancels_through_the_orchestrator()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("orders.db");
    let db: Arc<dyn Database> = Arc::new(SqliteDatabase::open(&path, SqliteConfig::default())?);
    let definition = hold_then_approve("ConsoleHold")?;
    let orchestrator = Orchestrator::new(
        definition,
        db.clone(),
        Arc::new(InMemoryBroker::default()),
        OrchestratorConfig::default(),
    );
    // Nobody answers: both wait for the reply to their first command.
    let (first, second) = (orchestrator.start(1).await?, orchestrator.start(2).await?);

    let url = format!("sqlite://{}", path.display());
    let console = Listening::start(&["console", "--listen", "127.0.0.1:0", "--db", &url]);
    let site = console.base.clone();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let get = async |path: &str| -> anyhow::Result<(u16, String)> {
        let r = http.get(format!("{site}{path}")).send().await?;
        Ok((r.status().as_u16(), r.text().await?))
    };

    let (status, overview) = get("/").await?;
    assert_eq!(status, 200, "{overview}");
    assert!(
        overview.contains("data-sagas=\"running\">2 running"),
        "{overview}"
    );
    let (status, list) = get("/sagas").await?;
    assert_eq!(status, 200, "{list}");
    for id in [&first, &second] {
        assert!(list.contains(&format!("data-saga=\"{id}\"")), "{list}");
    }
    assert!(
        list.contains("data-count=\"ConsoleHold/running\""),
        "{list}"
    );
    let (_, completed) = get("/sagas?state=completed").await?;
    assert!(!completed.contains("data-saga="), "{completed}");
    let (status, _) = get("/sagas?state=sideways").await?;
    assert_eq!(status, 400);
    let (status, _) = get("/sagas/0/no-such-saga").await?;
    assert_eq!(status, 404);
    let (status, _) = get(&format!("/sagas/7/{first}")).await?;
    assert_eq!(status, 404);

    let (status, page) = get(&format!("/sagas/0/{first}")).await?;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"saga-state\">running"), "{page}");
    assert!(page.contains("Hold to holds"), "{page}");

    // A change needs the console's own origin; then it is a request for the orchestrator.
    let cancel = format!("{site}/sagas/0/{first}/cancel");
    let foreign = http.post(&cancel).send().await?;
    assert_eq!(foreign.status().as_u16(), 403);
    let host = site.strip_prefix("http://").expect("http").to_owned();
    let posted = http
        .post(&cancel)
        .header("origin", format!("http://{host}"))
        .send()
        .await?;
    assert_eq!(posted.status().as_u16(), 303);
    let (_, page) = get(&format!("/sagas/0/{first}")).await?;
    assert!(
        page.contains("waiting for a running orchestrator"),
        "{page}"
    );

    let shutdown = tributary::CancellationToken::new();
    let running = tokio::spawn(orchestrator.clone().run(shutdown.clone()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, page) = get(&format!("/sagas/0/{first}")).await?;
        if page.contains("cancelled by an operator") {
            assert!(page.contains("id=\"saga-state\">compensating"), "{page}");
            assert!(page.contains("cancelled from the console"), "{page}");
            assert!(page.contains("Release to holds"), "{page}");
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the console's cancel was never performed:\n{page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    running.await??;
    Ok(())
}
