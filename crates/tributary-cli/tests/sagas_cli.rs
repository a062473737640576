//! `tributary sagas list|show` on an orchestrator's SQLite database.

use std::process::Command;
use std::sync::Arc;

use tributary::saga::{
    Command as SagaCommand, Orchestrator, OrchestratorConfig, SagaDefinition, Step,
};
use tributary::sqlite::{SqliteConfig, SqliteDatabase};
use tributary::{Database, InMemoryBroker, Topic};

fn tributary(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .output()
        .expect("runs")
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
    drop((orchestrator, db));
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
