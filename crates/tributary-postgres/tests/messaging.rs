//! PostgreSQL service databases (with the in-memory broker: the point is the database)
//! against the messaging conformance suite, each database in its own schema.

mod common;

use std::sync::Arc;

use tributary_core::{Database, InMemoryBroker};
use tributary_postgres::PgDatabase;
use tributary_testkit::messaging::MessagingFixture;

async fn make() -> Option<MessagingFixture> {
    common::server("postgres messaging")?;
    let guard = Arc::new(common::SchemaGuard::new());
    let g = guard.clone();
    Some(MessagingFixture {
        broker: Arc::new(InMemoryBroker::default()),
        new_database: Box::new(move || {
            let config = common::config();
            g.track(&config.schema);
            Box::pin(async move {
                let db = PgDatabase::connect(config).await.expect("service database");
                Arc::new(db) as Arc<dyn Database>
            })
        }),
        guard: Box::new(guard),
    })
}

tributary_testkit::messaging_conformance!(make);

/// The PostgreSQL unit holds updates of documents it read until commit, where jsonb refuses a
/// number beyond numeric's range (valid JSON, so nothing refuses it earlier): the consumer
/// dead-letters the message that wrote it — the unit names it in `Error::Refused` — and
/// neither retries its unit forever nor reruns the others one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_document_refused_at_commit_dead_letters_only_its_message() {
    let Some(fixture) = make().await else { return };
    let refused = tributary_core::Payload::from_json_str(r#"{"n":1e1000000}"#).unwrap();
    tributary_testkit::messaging::a_refused_document_dead_letters_only_its_message(
        &fixture, refused, "refused",
    )
    .await;
}
