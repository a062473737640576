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
            // The factory is synchronous; the suite runs on a multi-threaded runtime.
            let db = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(PgDatabase::connect(config))
            })
            .expect("service database");
            Arc::new(db) as Arc<dyn Database>
        }),
        guard: Box::new(guard),
    })
}

tributary_testkit::messaging_conformance!(make);

/// The PostgreSQL unit holds updates of documents it read until commit, where jsonb refuses
/// `\u0000`: the consumer must dead-letter the message that wrote it, not retry its unit forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_document_refused_at_commit_dead_letters_only_its_message() {
    let Some(fixture) = make().await else { return };
    let refused = tributary_core::Payload::from_json_str(r#"{"nul":"\u0000"}"#).unwrap();
    tributary_testkit::messaging::a_document_refused_at_commit_dead_letters_only_its_message(
        &fixture, refused,
    )
    .await;
}
