//! The broker conformance suite. Every [`Broker`] runs it through
//! [`broker_conformance!`](crate::broker_conformance).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_core::{
    Broker, Delivery, Error, EventId, GroupLag, GroupName, Offset, OutgoingMessage, Partition,
    PartitionConsumer, Topic,
};

/// A broker under test and whatever keeps it alive.
pub struct BrokerFixture {
    pub broker: Arc<dyn Broker>,
    pub guard: Box<dyn std::any::Any + Send + Sync>,
}

impl BrokerFixture {
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            guard: Box::new(()),
        }
    }

    pub fn with_guard(broker: Arc<dyn Broker>, guard: impl std::any::Any + Send + Sync) -> Self {
        Self {
            broker,
            guard: Box::new(guard),
        }
    }
}

/// Generates one `#[tokio::test]` per check for the broker made by `$make` (an async fn
/// returning a [`BrokerFixture`]). Checks use fresh topic and group names, so a shared server
/// is fine.
#[macro_export]
macro_rules! broker_conformance {
    ($make:path) => {
        $crate::broker_conformance!(@tests $make;
            messages_of_one_key_arrive_in_publish_order_in_one_partition,
            a_new_consumer_resumes_after_the_committed_offset,
            consumer_groups_are_independent,
            a_message_id_is_stored_once,
            payload_bytes_and_keys_are_delivered_exactly,
            ensure_topic_refuses_a_different_partition_count,
            fetch_waits_for_new_messages_and_returns_empty_when_none_come,
            consuming_a_partition_that_does_not_exist_is_an_error,
            a_deleted_group_starts_over_like_a_new_one,
            lag_counts_the_messages_after_the_committed_offset,
            group_lags_report_every_known_group_without_creating_anything,
            last_messages_are_each_partitions_newest,
        );
    };
    (@tests $make:path; $($check:ident),* $(,)?) => {
        $(
            #[$crate::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(fixture) = $make().await else { return };
                $crate::broker::$check(fixture.broker.clone()).await;
                drop(fixture);
            }
        )*
    };
}

/// A topic name no other test uses.
pub fn fresh_topic() -> Topic {
    Topic::new(format!("t{}", EventId::new().as_uuid().simple())).expect("valid topic")
}

/// A group name no other test uses.
pub fn fresh_group() -> GroupName {
    GroupName::new(format!("g{}", EventId::new().as_uuid().simple())).expect("valid group")
}

fn message(topic: &Topic, key: &str, body: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.clone(),
        key: key.to_owned(),
        id: EventId::new(),
        payload: body.as_bytes().to_vec(),
    }
}

/// How long [`fetch_answered`] keeps retrying a broker that does not answer.
const UNANSWERED_FOR: Duration = Duration::from_secs(30);

/// One fetch that the broker answered. `Unavailable` is the broker contract's "try again" —
/// a loaded server may not answer a pull request within the client's timeout — and the
/// runtime's consumers retry it, so a check does too (printing each, for at most
/// 30 s). Every other error fails the check.
pub async fn fetch_answered(
    consumer: &mut dyn PartitionConsumer,
    max: usize,
    wait: Duration,
) -> Vec<Delivery> {
    let give_up = Instant::now() + UNANSWERED_FOR;
    loop {
        match consumer.fetch(max, wait).await {
            Ok(batch) => return batch,
            Err(e @ Error::Unavailable { .. }) if Instant::now() < give_up => {
                eprintln!("fetch unanswered, trying again: {e}");
            }
            Err(e) => panic!("fetch: {e:?}"),
        }
    }
}

/// Fetches from `consumer` until `n` messages arrived or `within` passed.
pub async fn fetch_n(
    consumer: &mut dyn PartitionConsumer,
    n: usize,
    within: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        let batch = fetch_answered(consumer, n - got.len(), Duration::from_millis(200)).await;
        got.extend(batch);
    }
    got
}

async fn consume_all(
    broker: &Arc<dyn Broker>,
    group: &GroupName,
    topic: &Topic,
    expected: usize,
    within: Duration,
) -> BTreeMap<u32, Vec<Delivery>> {
    let partitions = broker.partitions(topic).await.expect("partitions");
    let mut consumers = Vec::new();
    for p in 0..partitions {
        consumers.push((
            p,
            broker
                .consume(group, topic, Partition::new(p))
                .await
                .expect("consume"),
        ));
    }
    let deadline = Instant::now() + within;
    let mut by_partition: BTreeMap<u32, Vec<Delivery>> = BTreeMap::new();
    while by_partition.values().map(Vec::len).sum::<usize>() < expected && Instant::now() < deadline
    {
        for (p, c) in consumers.iter_mut() {
            let batch = fetch_answered(c.as_mut(), 1000, Duration::from_millis(50)).await;
            by_partition.entry(*p).or_default().extend(batch);
        }
    }
    by_partition
}

pub async fn messages_of_one_key_arrive_in_publish_order_in_one_partition(broker: Arc<dyn Broker>) {
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 4).await.unwrap();
    let mut published: HashMap<String, Vec<EventId>> = HashMap::new();
    for round in 0..5 {
        let batch: Vec<_> = (0..40)
            .map(|i| {
                message(
                    &topic,
                    &format!("key-{}", i % 10),
                    &format!("{{\"n\":{}}}", round * 40 + i),
                )
            })
            .collect();
        for m in &batch {
            published.entry(m.key.clone()).or_default().push(m.id);
        }
        broker.publish(&batch).await.unwrap();
    }
    let got = consume_all(
        &broker,
        &fresh_group(),
        &topic,
        200,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        got.values().map(Vec::len).sum::<usize>(),
        200,
        "every message delivered once"
    );
    let mut seen: HashMap<String, Vec<EventId>> = HashMap::new();
    let mut partition_of: HashMap<String, u32> = HashMap::new();
    for (p, deliveries) in &got {
        assert!(
            deliveries.windows(2).all(|w| w[0].offset < w[1].offset),
            "offsets grow within a partition"
        );
        for d in deliveries {
            assert_eq!(d.partition.get(), *p);
            assert_eq!(d.delivery_count, 1);
            let first = partition_of.entry(d.key.clone()).or_insert(*p);
            assert_eq!(*first, *p, "a key stays in one partition");
            assert_eq!(
                Partition::for_key(&d.key, 4).get(),
                *p,
                "partition = hash(key) mod N"
            );
            seen.entry(d.key.clone())
                .or_default()
                .push(d.id.expect("id carried"));
        }
    }
    assert_eq!(seen, published, "per-key publish order is kept");
}

pub async fn a_new_consumer_resumes_after_the_committed_offset(broker: Arc<dyn Broker>) {
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let batch: Vec<_> = (0..10)
        .map(|i| message(&topic, "k", &i.to_string()))
        .collect();
    broker.publish(&batch).await.unwrap();
    let group = fresh_group();
    let p0 = Partition::new(0);
    let mut first = broker.consume(&group, &topic, p0).await.unwrap();
    let got = fetch_n(first.as_mut(), 10, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 10);
    first.commit(got[3].offset).await.unwrap();
    drop(first);
    // Messages 5..10 were fetched but not committed: a new consumer gets them again.
    let mut second = broker.consume(&group, &topic, p0).await.unwrap();
    let again = fetch_n(second.as_mut(), 6, Duration::from_secs(30)).await;
    let ids: Vec<_> = again.iter().map(|d| d.id).collect();
    let expected: Vec<_> = batch[4..].iter().map(|m| Some(m.id)).collect();
    assert_eq!(
        ids, expected,
        "redelivery starts right after the committed offset, in order"
    );
    assert!(again.iter().all(|d| d.delivery_count >= 1));
    second.commit(again[5].offset).await.unwrap();
    drop(second);
    let mut third = broker.consume(&group, &topic, p0).await.unwrap();
    let none = fetch_answered(third.as_mut(), 10, Duration::from_millis(300)).await;
    assert!(
        none.is_empty(),
        "nothing after the last committed offset: {none:?}"
    );
}

pub async fn lag_counts_the_messages_after_the_committed_offset(broker: Arc<dyn Broker>) {
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let publish = |n: usize| {
        let (broker, topic) = (broker.clone(), topic.clone());
        async move {
            let batch: Vec<_> = (0..n)
                .map(|i| message(&topic, "k", &i.to_string()))
                .collect();
            broker.publish(&batch).await.unwrap();
        }
    };
    publish(6).await;
    let (group, p0) = (fresh_group(), Partition::new(0));
    let mut c = broker.consume(&group, &topic, p0).await.unwrap();
    // Every Tributary broker counts it (the trait allows None for others).
    assert_eq!(c.lag().await.unwrap(), Some(6), "nothing committed yet");
    let got = fetch_n(c.as_mut(), 6, Duration::from_secs(10)).await;
    assert_eq!(c.lag().await.unwrap(), Some(6), "fetched is not committed");
    c.commit(got[3].offset).await.unwrap();
    assert_eq!(c.lag().await.unwrap(), Some(2));
    c.commit(got[5].offset).await.unwrap();
    assert_eq!(c.lag().await.unwrap(), Some(0));
    publish(3).await;
    assert_eq!(c.lag().await.unwrap(), Some(3), "published since");
}

pub async fn group_lags_report_every_known_group_without_creating_anything(
    broker: Arc<dyn Broker>,
) {
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let batch: Vec<_> = (0..6)
        .map(|i| message(&topic, "k", &i.to_string()))
        .collect();
    broker.publish(&batch).await.unwrap();
    let ours = |lags: Option<Vec<GroupLag>>, group: &GroupName| -> Vec<(u32, u64)> {
        lags.expect("every Tributary broker tells")
            .into_iter()
            .filter(|l| &l.group == group && l.topic == topic)
            .map(|l| (l.partition.get(), l.lag))
            .collect()
    };
    let group = fresh_group();
    assert_eq!(
        ours(broker.group_lags().await.unwrap(), &group),
        vec![],
        "a group that never consumed is not known"
    );
    let mut c = broker
        .consume(&group, &topic, Partition::new(0))
        .await
        .unwrap();
    assert_eq!(
        ours(broker.group_lags().await.unwrap(), &group),
        vec![(0, 6)],
        "a group is known from its first consumer on"
    );
    let got = fetch_n(c.as_mut(), 6, Duration::from_secs(10)).await;
    c.commit(got[3].offset).await.unwrap();
    assert_eq!(
        ours(broker.group_lags().await.unwrap(), &group),
        vec![(0, 2)],
        "the messages after the committed offset"
    );
    let lags = broker.group_lags().await.unwrap().unwrap();
    let mut sorted = lags.clone();
    sorted
        .sort_by(|a, b| (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition)));
    assert_eq!(lags, sorted, "sorted by group, topic and partition");
    let stranger = fresh_group();
    broker.group_lags().await.unwrap();
    assert_eq!(
        ours(broker.group_lags().await.unwrap(), &stranger),
        vec![],
        "reading the lags created no group"
    );
}

pub async fn last_messages_are_each_partitions_newest(broker: Arc<dyn Broker>) {
    let (topic, empty) = (fresh_topic(), fresh_topic());
    broker.ensure_topic(&topic, 3).await.unwrap();
    broker.ensure_topic(&empty, 2).await.unwrap();
    let ours = |t: &Topic| {
        let t = t.clone();
        let broker = broker.clone();
        async move {
            let all = broker
                .last_messages()
                .await
                .unwrap()
                .expect("every Tributary broker tells");
            let mut sorted = all.clone();
            sorted.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            assert_eq!(all, sorted, "sorted by topic and partition");
            all.into_iter().filter(|m| m.topic == t).collect::<Vec<_>>()
        }
    };
    assert_eq!(ours(&topic).await, vec![], "nothing published yet");
    // Two rounds over eight keys: most partitions get several messages, in key order.
    let batch: Vec<_> = (0..16)
        .map(|i| message(&topic, &format!("k{}", i % 8), &format!("m{i}")))
        .collect();
    broker.publish(&batch).await.unwrap();
    let last = ours(&topic).await;
    assert!(!last.is_empty());
    assert_eq!(
        ours(&empty).await,
        vec![],
        "an empty topic has no newest message"
    );
    // Each partition's newest message is the last one a consumer of it gets.
    let group = fresh_group();
    for p in 0..3 {
        let mut c = broker
            .consume(&group, &topic, Partition::new(p))
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            let more = fetch_answered(c.as_mut(), 100, Duration::from_millis(300)).await;
            if more.is_empty() {
                break;
            }
            got.extend(more);
        }
        let newest = last.iter().find(|m| m.partition.get() == p);
        match got.last() {
            None => assert_eq!(newest, None, "partition {p} is empty"),
            Some(d) => {
                let newest = newest.unwrap_or_else(|| panic!("partition {p} has messages"));
                assert_eq!(newest.offset, d.offset, "partition {p}");
                assert_eq!(newest.payload, d.payload, "partition {p}");
            }
        }
    }
}

pub async fn consumer_groups_are_independent(broker: Arc<dyn Broker>) {
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    broker
        .publish(
            &(0..5)
                .map(|i| message(&topic, "k", &i.to_string()))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let (a, b) = (fresh_group(), fresh_group());
    let p0 = Partition::new(0);
    let mut ca = broker.consume(&a, &topic, p0).await.unwrap();
    let got_a = fetch_n(ca.as_mut(), 5, Duration::from_secs(10)).await;
    ca.commit(got_a[4].offset).await.unwrap();
    let mut cb = broker.consume(&b, &topic, p0).await.unwrap();
    let got_b = fetch_n(cb.as_mut(), 5, Duration::from_secs(10)).await;
    assert_eq!(got_b.len(), 5, "a new group starts at the oldest message");
    assert_eq!(
        got_a.iter().map(|d| d.id).collect::<Vec<_>>(),
        got_b.iter().map(|d| d.id).collect::<Vec<_>>()
    );
}

pub async fn a_message_id_is_stored_once(broker: Arc<dyn Broker>) {
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 2).await.unwrap();
    let batch: Vec<_> = (0..6)
        .map(|i| message(&topic, &format!("k{i}"), "x"))
        .collect();
    broker.publish(&batch).await.unwrap();
    // A relay that crashed before recording its progress publishes the batch again.
    broker.publish(&batch).await.unwrap();
    broker.publish(&batch[2..4]).await.unwrap();
    let got = consume_all(&broker, &fresh_group(), &topic, 6, Duration::from_secs(20)).await;
    // Give duplicates, if any, time to show up.
    let extra = consume_all(&broker, &fresh_group(), &topic, 7, Duration::from_secs(2)).await;
    let ids: Vec<_> = got.values().flatten().filter_map(|d| d.id).collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 6);
    assert_eq!(
        extra.values().map(Vec::len).sum::<usize>(),
        6,
        "no duplicate stored"
    );
}

pub async fn payload_bytes_and_keys_are_delivered_exactly(broker: Arc<dyn Broker>) {
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let mut odd = message(&topic, "kľúč with spaces/and:colons", "");
    odd.payload = vec![0, 159, 146, 150, b'{', 255, b'\n'];
    let big = OutgoingMessage {
        payload: vec![b'x'; 512 * 1024],
        ..message(&topic, "big", "")
    };
    broker.publish(&[odd.clone(), big.clone()]).await.unwrap();
    let mut c = broker
        .consume(&fresh_group(), &topic, Partition::new(0))
        .await
        .unwrap();
    let got = fetch_n(c.as_mut(), 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload, odd.payload);
    assert_eq!(got[0].key, odd.key);
    assert_eq!(got[0].id, Some(odd.id));
    assert_eq!(got[0].topic, topic);
    assert_eq!(got[1].payload.len(), big.payload.len());
}

pub async fn ensure_topic_refuses_a_different_partition_count(broker: Arc<dyn Broker>) {
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 3).await.unwrap();
    broker.ensure_topic(&topic, 3).await.unwrap();
    assert_eq!(broker.partitions(&topic).await.unwrap(), 3);
    let err = broker.ensure_topic(&topic, 5).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "got {err:?}");
    assert_eq!(
        broker.partitions(&topic).await.unwrap(),
        3,
        "nothing was reconfigured"
    );
}

pub async fn fetch_waits_for_new_messages_and_returns_empty_when_none_come(
    broker: Arc<dyn Broker>,
) {
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let mut c = broker
        .consume(&fresh_group(), &topic, Partition::new(0))
        .await
        .unwrap();
    let started = Instant::now();
    let none = fetch_answered(c.as_mut(), 10, Duration::from_millis(300)).await;
    assert!(none.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "fetch waited"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fetch returned after its wait"
    );
    let publisher = broker.clone();
    let t = topic.clone();
    let publish = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        publisher
            .publish(&[message(&t, "k", "late")])
            .await
            .unwrap();
    });
    let started = Instant::now();
    let got = fetch_n(c.as_mut(), 1, Duration::from_secs(10)).await;
    publish.await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a waiting fetch wakes up on publish"
    );
    let offset: Offset = got[0].offset;
    c.commit(offset).await.unwrap();
}

pub async fn consuming_a_partition_that_does_not_exist_is_an_error(broker: Arc<dyn Broker>) {
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 2).await.unwrap();
    assert!(
        broker
            .consume(&fresh_group(), &topic, Partition::new(2))
            .await
            .is_err()
    );
}

pub async fn a_deleted_group_starts_over_like_a_new_one(broker: Arc<dyn Broker>) {
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    broker
        .publish(
            &(0..3)
                .map(|i| message(&topic, "k", &i.to_string()))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let group = fresh_group();
    let p0 = Partition::new(0);
    let mut c = broker.consume(&group, &topic, p0).await.unwrap();
    let got = fetch_n(c.as_mut(), 3, Duration::from_secs(10)).await;
    c.commit(got[2].offset).await.unwrap();
    drop(c);
    broker.delete_group(&group, &topic).await.unwrap();
    let mut again = broker.consume(&group, &topic, p0).await.unwrap();
    let all = fetch_n(again.as_mut(), 3, Duration::from_secs(10)).await;
    assert_eq!(all.len(), 3, "the deleted group's progress is gone");
    drop(again);
    broker.delete_group(&group, &topic).await.unwrap();
}
