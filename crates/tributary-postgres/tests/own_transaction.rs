//! Adopting Tributary one call at a time: the outbox, the event store and the inbox inside a
//! transaction the service opened itself with plain sqlx (`pool.begin()`), rolled back and
//! committed, and what the relay makes of it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tributary_core::{
    Broker, Database, Envelope, EventId, ExpectedVersion, GroupName, InMemoryBroker, Partition,
    Payload, RelaySource, StreamId, Topic,
};
use tributary_postgres::{PgDatabase, Recorded};
use tributary_runtime::{CancellationToken, Relay, RelayConfig};

fn numbered(n: u64) -> Envelope {
    Envelope::new("own-tx", "Numbered", Payload::from_value(&n).expect("json")).with_subject("k")
}

/// What the broker holds on `topic` (one partition), in order, as numbers.
async fn delivered(broker: &InMemoryBroker, topic: &Topic, expected: usize) -> Vec<u64> {
    let group = GroupName::new(format!("g-{}", EventId::new())).unwrap();
    let mut consumer = broker
        .consume(&group, topic, Partition::new(0))
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < expected && tokio::time::Instant::now() < deadline {
        for d in consumer
            .fetch(100, Duration::from_millis(200))
            .await
            .unwrap()
        {
            let e = Envelope::from_json(&d.payload).unwrap();
            got.push(e.data.decode::<u64>().unwrap());
        }
    }
    got
}

/// Runs the relay of `source` with polling effectively off (an hour), so that only a wake-up
/// of the database handle can make it publish.
fn relay(source: Arc<dyn RelaySource>, broker: Arc<InMemoryBroker>) -> CancellationToken {
    let stop = CancellationToken::new();
    let relay = Relay::new(source, broker, RelayConfig::default());
    tokio::spawn(relay.run(stop.clone()));
    stop
}

async fn database(suite: &str) -> Option<(PgDatabase, common::SchemaGuard)> {
    common::database_with(
        suite,
        common::config().with_poll_every(Duration::from_secs(3600)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishing_in_the_services_own_transaction_commits_or_rolls_back_with_it() {
    let Some((db, _guard)) = database("postgres own transaction").await else {
        return;
    };
    let broker = Arc::new(InMemoryBroker::default());
    let topic = Topic::new("Own").unwrap();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let stop = relay(db.outbox_source(), broker.clone());
    let outbox = db.outbox();
    for n in 1..=6u64 {
        let mut tx = db.pool().begin().await.unwrap();
        outbox.publish(&mut tx, &topic, &numbered(n)).await.unwrap();
        if n % 3 == 0 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
        }
    }
    // The relay never polls here: what it publishes, it was woken for after each commit.
    let got = delivered(&broker, &topic, 4).await;
    stop.cancel();
    assert_eq!(got, [1, 2, 4, 5], "the committed events, in commit order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appending_in_the_services_own_transaction_commits_or_rolls_back_with_it() {
    let Some((db, _guard)) = database("postgres own transaction").await else {
        return;
    };
    let broker = Arc::new(InMemoryBroker::default());
    let topic = Topic::new("Own").unwrap();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let stop = relay(db.event_store_source("own", topic.clone()), broker.clone());
    let store = db.events();
    let stream = StreamId::new("own-1").unwrap();
    let mut version = ExpectedVersion::NoStream;
    for n in 1..=6u64 {
        let mut tx = db.pool().begin().await.unwrap();
        let done = store
            .append_in(&mut tx, &stream, version, vec![numbered(n)])
            .await
            .unwrap();
        if n % 2 == 0 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            version = ExpectedVersion::Exact(done.next_expected);
        }
    }
    let got = delivered(&broker, &topic, 3).await;
    stop.cancel();
    assert_eq!(got, [1, 3, 5], "the committed appends, in order");
    assert_eq!(
        tributary_core::EventStore::stream_version(&store, &stream)
            .await
            .unwrap()
            .get(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recording_a_message_in_the_services_own_transaction_tells_new_from_seen() {
    let Some((db, _guard)) = database("postgres own transaction").await else {
        return;
    };
    let inbox = db.inbox();
    let group = GroupName::new("inventory").unwrap();
    let event = numbered(1);
    // Rolled back: as if it never happened.
    let mut tx = db.pool().begin().await.unwrap();
    assert_eq!(
        inbox.try_record(&mut tx, &group, &event).await.unwrap(),
        Recorded::New
    );
    tx.rollback().await.unwrap();
    let mut tx = db.pool().begin().await.unwrap();
    assert_eq!(
        inbox.try_record(&mut tx, &group, &event).await.unwrap(),
        Recorded::New
    );
    tx.commit().await.unwrap();
    // A redelivery is recognised; another group is not affected.
    let mut tx = db.pool().begin().await.unwrap();
    assert_eq!(
        inbox.try_record(&mut tx, &group, &event).await.unwrap(),
        Recorded::AlreadySeen
    );
    let other = GroupName::new("billing").unwrap();
    assert_eq!(
        inbox.try_record(&mut tx, &other, &event).await.unwrap(),
        Recorded::New
    );
    tx.commit().await.unwrap();
}
