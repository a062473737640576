//! Server outages, on private nats-servers (never the shared one): calls fail with
//! `Unavailable` within bounded time while the server is down, then publishing and consuming
//! resume, and nothing that was acknowledged is lost (the server is stopped or killed, not the
//! machine: power loss is another matter, see the crate docs on durability).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use tributary_core::{
    Broker, Delivery, Error, EventId, GroupName, OutgoingMessage, Partition, PartitionConsumer,
    Topic,
};
use tributary_nats::NatsBroker;
use tributary_testkit::broker::{fetch_answered, fetch_n};

const PARTITIONS: u32 = 2;

fn batch(topic: &Topic, from: usize, n: usize) -> Vec<OutgoingMessage> {
    (from..from + n)
        .map(|i| OutgoingMessage {
            topic: topic.clone(),
            key: format!("key-{}", i % 6),
            id: EventId::new(),
            payload: format!("{{\"n\":{i}}}").into_bytes(),
        })
        .collect()
}

/// Publishes until the server acknowledges (the client reconnects with a backoff).
async fn publish_until_acknowledged(broker: &NatsBroker, messages: &[OutgoingMessage]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match broker.publish(messages).await {
            Ok(()) => return,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("publish after the restart: {e}"),
        }
    }
}

/// Everything a consumer delivers up to and including `last` (waited for up to `within`),
/// then whatever one more short fetch brings: a message after `last` is one too many. Not
/// "ask for more than will come and stop at a deadline", which a slow server cuts short.
async fn fetch_through_last(
    consumer: &mut dyn PartitionConsumer,
    last: Option<EventId>,
    within: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut got: Vec<Delivery> = Vec::new();
    while last.is_some() && !got.iter().any(|d| d.id == last) {
        assert!(
            Instant::now() < deadline,
            "{last:?} not delivered within {within:?}; got {:?}",
            ids(&got)
        );
        match consumer.fetch(100, Duration::from_millis(300)).await {
            Ok(batch) => got.extend(batch),
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("fetch after the restart: {e}"),
        }
    }
    got.extend(fetch_answered(consumer, 100, Duration::from_millis(300)).await);
    got
}

fn ids_by_partition(messages: &[OutgoingMessage]) -> BTreeMap<u32, Vec<EventId>> {
    let mut by: BTreeMap<u32, Vec<EventId>> = BTreeMap::new();
    for m in messages {
        by.entry(Partition::for_key(&m.key, PARTITIONS).get())
            .or_default()
            .push(m.id);
    }
    by
}

/// `got` holds each of `expected` once, in its order, except that the messages of the batch
/// whose publish failed (`failed`, a contiguous block of `expected`) may be permuted among
/// themselves: the retry of a batch that was stored in part can store it out of order (see
/// the publish path's `BatchOrder`).
fn assert_delivered(got: &[EventId], expected: &[EventId], failed: &HashSet<EventId>, what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: {got:?} vs {expected:?}");
    let start = expected
        .iter()
        .position(|id| failed.contains(id))
        .unwrap_or(expected.len());
    let end = expected
        .iter()
        .rposition(|id| failed.contains(id))
        .map_or(start, |i| i + 1);
    assert_eq!(
        got[..start],
        expected[..start],
        "{what}: before the failed batch"
    );
    assert_eq!(
        got[end..],
        expected[end..],
        "{what}: after the failed batch"
    );
    let mut a = got[start..end].to_vec();
    let mut b = expected[start..end].to_vec();
    a.sort();
    b.sort();
    assert_eq!(a, b, "{what}: the failed batch, once each");
    if got[start..end] != expected[start..end] {
        eprintln!("{what}: the retried batch was stored out of order (a known limit on 2.9)");
    }
}

fn ids(deliveries: &[Delivery]) -> Vec<EventId> {
    deliveries.iter().filter_map(|d| d.id).collect()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outage {
    /// SIGTERM: the server shuts down cleanly.
    Stop,
    /// SIGKILL: the process dies at once (the machine keeps running, so its page cache too).
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_consume_resume_after_a_server_restart_and_nothing_acknowledged_is_lost() {
    outage_and_recovery(Outage::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_consume_resume_after_the_server_is_killed_and_nothing_acknowledged_is_lost() {
    outage_and_recovery(Outage::Kill).await;
}

async fn outage_and_recovery(outage: Outage) {
    let Some(mut server) = common::PrivateServer::start("NATS server restart") else {
        return;
    };
    let broker = NatsBroker::connect(common::test_config(server.url()))
        .await
        .expect("connect");
    let topic = Topic::new("orders").unwrap();
    broker.ensure_topic(&topic, PARTITIONS).await.unwrap();
    let before = batch(&topic, 0, 40);
    broker.publish(&before).await.unwrap();
    let expected_before = ids_by_partition(&before);

    // Group "live" keeps its consumers across the outage; group "fresh" commits half, drops
    // its consumers and opens new ones after the restart.
    let live = GroupName::new("live").unwrap();
    let fresh = GroupName::new("fresh").unwrap();
    let mut live_consumers = Vec::new();
    for p in 0..PARTITIONS {
        let want = expected_before[&p].len();
        for group in [&live, &fresh] {
            let mut c = broker
                .consume(group, &topic, Partition::new(p))
                .await
                .unwrap();
            let got = fetch_n(c.as_mut(), want, Duration::from_secs(10)).await;
            assert_eq!(ids(&got), expected_before[&p]);
            c.commit(got[want / 2 - 1].offset).await.unwrap();
            if group == &live {
                live_consumers.push(c);
            }
        }
    }

    match outage {
        Outage::Stop => server.stop(),
        Outage::Kill => server.kill(),
    }

    let during = batch(&topic, 40, 10);
    let started = Instant::now();
    let err = broker.publish(&during).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. }),
        "publishing to a stopped server: {err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "publish gave up after {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    match live_consumers[0]
        .fetch(10, Duration::from_millis(300))
        .await
    {
        Err(e) => assert!(e.is_retryable(), "fetching from a stopped server: {e:?}"),
        Ok(batch) => assert!(batch.is_empty(), "nothing to fetch: {batch:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));

    server.restart();

    // The failed batch may or may not have been stored, in whole or in part: the relay
    // publishes it again, and the duplicate window keeps each message single.
    publish_until_acknowledged(&broker, &during).await;
    let after = batch(&topic, 50, 20);
    publish_until_acknowledged(&broker, &after).await;
    let acknowledged: Vec<OutgoingMessage> = before
        .iter()
        .chain(&during)
        .chain(&after)
        .cloned()
        .collect();
    let expected_all = ids_by_partition(&acknowledged);
    let expected_new = ids_by_partition(&[during.clone(), after.clone()].concat());
    let failed: HashSet<EventId> = during.iter().map(|m| m.id).collect();

    for p in 0..PARTITIONS {
        // The live consumer continues after what it fetched, without duplicates.
        let c = &mut live_consumers[p as usize];
        let want = expected_new[&p].len();
        let got = fetch_through_last(
            c.as_mut(),
            expected_new[&p].last().copied(),
            Duration::from_secs(60),
        )
        .await;
        assert_delivered(
            &ids(&got),
            &expected_new[&p],
            &failed,
            &format!("live group, partition {p}"),
        );
        c.commit(got[want - 1].offset).await.unwrap();
        let extra = fetch_answered(c.as_mut(), 10, Duration::from_millis(300)).await;
        assert!(extra.is_empty(), "live group, partition {p}: {extra:?}");

        // A new instance of the other group gets everything after its committed offset. A
        // killed 2.9 server may have lost the commit itself (consumer state is written
        // asynchronously): then committed messages come again first, which at-least-once
        // allows and the inbox absorbs.
        let mut c = broker
            .consume(&fresh, &topic, Partition::new(p))
            .await
            .unwrap();
        let half = expected_before[&p].len() / 2;
        let want: Vec<EventId> = expected_all[&p][half..].to_vec();
        let got =
            ids(
                &fetch_through_last(c.as_mut(), want.last().copied(), Duration::from_secs(60))
                    .await,
            );
        let again = got.len().saturating_sub(want.len());
        assert_delivered(
            &got[again..],
            &want,
            &failed,
            &format!("fresh group, partition {p}"),
        );
        assert_eq!(
            got[..again],
            expected_all[&p][half - again..half],
            "fresh group, partition {p}: only committed messages come again, in order"
        );
        if outage == Outage::Stop {
            assert_eq!(again, 0, "a clean shutdown keeps the commit");
        }
    }

    // Every acknowledged message is in the stream exactly once, in per-key order.
    let audit = GroupName::new("audit").unwrap();
    let mut seen = HashSet::new();
    let mut order: HashMap<String, Vec<EventId>> = HashMap::new();
    for p in 0..PARTITIONS {
        let mut c = broker
            .consume(&audit, &topic, Partition::new(p))
            .await
            .unwrap();
        let got = fetch_through_last(
            c.as_mut(),
            expected_all[&p].last().copied(),
            Duration::from_secs(60),
        )
        .await;
        assert_delivered(
            &ids(&got),
            &expected_all[&p],
            &failed,
            &format!("audit, partition {p}"),
        );
        for d in got {
            assert!(seen.insert(d.id), "stored twice: {d:?}");
            order
                .entry(d.key)
                .or_default()
                .extend(d.id.filter(|id| !failed.contains(id)));
        }
    }
    let mut published: HashMap<String, Vec<EventId>> = HashMap::new();
    for m in acknowledged.iter().filter(|m| !failed.contains(&m.id)) {
        published.entry(m.key.clone()).or_default().push(m.id);
    }
    assert_eq!(order, published, "per-key order survives the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_stopped_server_fails_unavailable_within_a_bounded_time() {
    let Some(mut server) = common::PrivateServer::start("NATS unreachable server") else {
        return;
    };
    let config = common::test_config(server.url());
    let broker = NatsBroker::connect(config.clone()).await.expect("connect");
    let topic = Topic::new("orders").unwrap();
    broker.ensure_topic(&topic, 1).await.unwrap();
    server.stop();
    // A big batch: acknowledgement timeouts must run concurrently, not one after another.
    let messages = batch(&topic, 0, 3 * config.publish_window);
    for _ in 0..2 {
        let started = Instant::now();
        let err = broker.publish(&messages).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "got {err:?}");
        assert!(
            started.elapsed() < 3 * config.request_timeout,
            "gave up after {:?}",
            started.elapsed()
        );
    }
    // A topic this process has not seen yet needs the server to be looked up: same answer.
    let other = Topic::new("payments").unwrap();
    let started = Instant::now();
    let err = broker.publish(&batch(&other, 0, 1)).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "got {err:?}");
    assert!(started.elapsed() < 3 * config.request_timeout);
}
