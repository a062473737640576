//! The saga scenarios on the in-memory database and broker, with tokio's clock paused: every
//! deadline and backoff passes in virtual time, deterministically and without waiting.

mod common;

use std::sync::Arc;

use tributary_core::{Database, InMemoryBroker, InMemoryDatabase};

async fn make() -> Option<common::Fixture> {
    let orchestrator_db: Arc<dyn Database> = Arc::new(InMemoryDatabase::new());
    Some(common::Fixture {
        broker: Arc::new(InMemoryBroker::default()),
        participant_db: Arc::new(InMemoryDatabase::new()),
        // A "restart" in memory keeps the same database (it is the process's memory).
        open_orchestrator_db: Box::new(move || {
            let db = orchestrator_db.clone();
            Box::pin(async move { db })
        }),
        guard: Box::new(()),
    })
}

saga_scenarios!(make, #[tokio::test(start_paused = true)]);
