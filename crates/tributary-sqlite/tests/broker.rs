//! The embedded broker against the broker conformance suite, plus its retention rules.

use std::sync::Arc;
use std::time::Duration;

use tributary_core::{Broker, EventId, OutgoingMessage, Partition};
use tributary_sqlite::{SqliteBroker, SqliteBrokerConfig, SqliteConfig, SqliteDatabase};
use tributary_testkit::broker::{BrokerFixture, fetch_n, fresh_group, fresh_topic};

async fn make() -> Option<BrokerFixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = SqliteBroker::open(dir.path().join("broker.db"), SqliteBrokerConfig::default())
        .expect("open");
    Some(BrokerFixture::with_guard(Arc::new(broker), dir))
}

tributary_testkit::broker_conformance!(make);

fn msg(topic: &tributary_core::Topic, i: usize) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.clone(),
        key: "k".into(),
        id: EventId::new(),
        payload: vec![b'x'; 100 + i],
    }
}

#[tokio::test]
async fn retention_never_removes_what_a_group_has_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = SqliteBroker::open(
        dir.path().join("broker.db"),
        SqliteBrokerConfig::default().with_max_age(Duration::ZERO),
    )
    .unwrap();
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let (slow, fast) = (fresh_group(), fresh_group());
    let p0 = Partition::new(0);
    let mut slow_c = broker.consume(&slow, &topic, p0).await.unwrap();
    let mut fast_c = broker.consume(&fast, &topic, p0).await.unwrap();
    broker
        .publish(&(0..10).map(|i| msg(&topic, i)).collect::<Vec<_>>())
        .await
        .unwrap();
    let got = fetch_n(fast_c.as_mut(), 10, Duration::from_secs(5)).await;
    fast_c.commit(got[9].offset).await.unwrap();
    let early = fetch_n(slow_c.as_mut(), 4, Duration::from_secs(5)).await;
    slow_c.commit(early[3].offset).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let removed = broker.enforce_retention().await.unwrap();
    assert_eq!(
        removed, 4,
        "only what both groups committed is old enough to go"
    );
    drop(slow_c);
    let mut again = broker.consume(&slow, &topic, p0).await.unwrap();
    let rest = fetch_n(again.as_mut(), 6, Duration::from_secs(5)).await;
    assert_eq!(
        rest.len(),
        6,
        "the slow group still gets everything it did not commit"
    );
    assert_eq!(rest[0].offset, got[4].offset);
}

#[tokio::test]
async fn size_retention_keeps_uncommitted_messages_even_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = SqliteBroker::open(
        dir.path().join("broker.db"),
        SqliteBrokerConfig::default().with_max_partition_bytes(Some(500)),
    )
    .unwrap();
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let group = fresh_group();
    let mut c = broker
        .consume(&group, &topic, Partition::new(0))
        .await
        .unwrap();
    broker
        .publish(&(0..20).map(|i| msg(&topic, i)).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(
        broker.enforce_retention().await.unwrap(),
        0,
        "nothing is committed yet"
    );
    let got = fetch_n(c.as_mut(), 20, Duration::from_secs(5)).await;
    c.commit(got[14].offset).await.unwrap();
    let removed = broker.enforce_retention().await.unwrap();
    assert_eq!(
        removed, 15,
        "all committed messages go, the 5 uncommitted stay"
    );
}

#[test]
fn a_service_database_cannot_be_opened_as_a_broker_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svc.db");
    drop(SqliteDatabase::open(&path, SqliteConfig::default()).unwrap());
    let err = SqliteBroker::open(&path, SqliteBrokerConfig::default())
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("not a broker database"),
        "got {err}"
    );
}
