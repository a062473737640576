//! NATS-specific behaviour beyond the conformance suite, on the shared server (each test
//! under a stream prefix of its own).

mod common;

use std::time::{Duration, Instant};

use tributary_core::{
    Broker, Error, EventId, GroupName, OutgoingMessage, Partition, PartitionConsumer, Topic,
};
use tributary_nats::{NatsBroker, NatsBrokerConfig, NatsStorage};
use tributary_testkit::broker::{fetch_answered, fetch_n, fresh_group, fresh_topic};

fn message(topic: &Topic, key: &str, n: usize) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.clone(),
        key: key.to_owned(),
        id: EventId::new(),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

fn batch(topic: &Topic, n: usize) -> Vec<OutgoingMessage> {
    (0..n).map(|i| message(topic, "k", i)).collect()
}

async fn connect(config: NatsBrokerConfig) -> (NatsBroker, common::DeleteStreams) {
    let broker = NatsBroker::connect(config).await.expect("connect");
    let cleanup = common::DeleteStreams(broker.clone());
    (broker, cleanup)
}

async fn js(url: &str) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(url).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_with_other_settings_is_refused_not_reconfigured() {
    let Some(url) = common::shared_server("NATS stream settings check") else {
        return;
    };
    let config = common::test_config(url.clone()).with_max_age(Duration::from_secs(3600));
    let (broker, _cleanup) = connect(config.clone()).await;
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 2).await.unwrap();

    for (what, other) in [
        (
            "max_age",
            config.clone().with_max_age(Duration::from_secs(7200)),
        ),
        (
            "duplicate_window",
            config
                .clone()
                .with_duplicate_window(Duration::from_secs(30)),
        ),
        ("storage", config.clone().with_storage(NatsStorage::Memory)),
    ] {
        // Checked when connecting: every stream under the prefix.
        let err = NatsBroker::connect(other).await.err();
        assert!(
            matches!(&err, Some(Error::InvalidInput { reason }) if reason.contains(what)),
            "a different {what} must be refused at start, got {err:?}"
        );
    }
    let err = broker.ensure_topic(&topic, 3).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "got {err:?}");

    let stream = js(&url)
        .await
        .get_stream(broker.stream_name(&topic))
        .await
        .expect("stream")
        .get_info()
        .await
        .expect("info");
    assert_eq!(stream.config.max_age, Duration::from_secs(3600));
    assert_eq!(stream.config.subjects.len(), 2, "nothing was reconfigured");
    assert_eq!(broker.partitions(&topic).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_not_created_by_tributary_is_refused() {
    let Some(url) = common::shared_server("NATS stream settings check") else {
        return;
    };
    let config = common::test_config(url.clone());
    let (broker, _cleanup) = connect(config.clone()).await;
    let topic = fresh_topic();
    js(&url)
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: broker.stream_name(&topic),
            subjects: vec![format!("{}.{topic}.>", config.stream_prefix)],
            ..Default::default()
        })
        .await
        .expect("foreign stream");
    let err = broker.partitions(&topic).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { reason } if reason.contains("not created by Tributary")),
        "got {err:?}"
    );
    let err = broker.publish(&batch(&topic, 1)).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "got {err:?}");
    let err = NatsBroker::connect(config).await.err();
    assert!(
        matches!(err, Some(Error::InvalidInput { .. })),
        "refused at start too, got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_an_unreachable_server_fails_unavailable_within_the_connect_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = NatsBroker::connect(common::test_config(format!("nats://127.0.0.1:{port}")))
        .await
        .err();
    assert!(
        matches!(err, Some(Error::Unavailable { .. })),
        "got {err:?}"
    );
    assert!(err.is_some_and(|e| e.is_retryable()));
    assert!(started.elapsed() < Duration::from_secs(10));

    let err = NatsBroker::connect(common::test_config("nats://[not a url"))
        .await
        .err();
    assert!(
        matches!(err, Some(Error::InvalidInput { .. })),
        "got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_past_ack_wait_are_not_returned_twice_and_later_commits_count() {
    let Some(url) = common::shared_server("NATS consumer redelivery") else {
        return;
    };
    let config = common::test_config(url).with_ack_wait(Duration::from_secs(1));
    let (broker, _cleanup) = connect(config).await;
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let sent = batch(&topic, 6);
    broker.publish(&sent).await.unwrap();
    let (group, p0) = (fresh_group(), Partition::new(0));
    let mut c = broker.consume(&group, &topic, p0).await.unwrap();
    let got = fetch_n(c.as_mut(), 6, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 6);

    // The server redelivers the uncommitted messages to this instance after ack_wait.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = fetch_answered(c.as_mut(), 10, Duration::from_millis(500)).await;
    assert!(again.is_empty(), "already fetched: {again:?}");
    c.commit(got[1].offset).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        fetch_answered(c.as_mut(), 10, Duration::from_millis(300))
            .await
            .is_empty()
    );
    // An earlier commit used a newer delivery; this one must still move the floor.
    c.commit(got[3].offset).await.unwrap();
    drop(c);

    let mut next = broker.consume(&group, &topic, p0).await.unwrap();
    let rest = fetch_n(next.as_mut(), 2, Duration::from_secs(10)).await;
    let ids: Vec<_> = rest.iter().map(|d| d.id).collect();
    assert_eq!(ids, vec![Some(sent[4].id), Some(sent[5].id)]);
    assert!(
        rest.iter().all(|d| d.delivery_count >= 2),
        "delivered before: {rest:?}"
    );
    let more = fetch_answered(next.as_mut(), 10, Duration::from_millis(300)).await;
    assert!(more.is_empty(), "nothing else: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_consumer_of_the_same_partition_takes_it_over() {
    let Some(url) = common::shared_server("NATS consumer takeover") else {
        return;
    };
    let (broker, _cleanup) = connect(common::test_config(url)).await;
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let sent = batch(&topic, 4);
    broker.publish(&sent).await.unwrap();
    let (group, p0) = (fresh_group(), Partition::new(0));
    let mut old = broker.consume(&group, &topic, p0).await.unwrap();
    let got = fetch_n(old.as_mut(), 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    old.commit(got[0].offset).await.unwrap();

    let mut new = broker.consume(&group, &topic, p0).await.unwrap();
    let took = fetch_n(new.as_mut(), 3, Duration::from_secs(10)).await;
    let ids: Vec<_> = took.iter().map(|d| d.id).collect();
    let expected: Vec<_> = sent[1..].iter().map(|m| Some(m.id)).collect();
    assert_eq!(ids, expected, "starts after the committed offset, in order");

    broker.publish(&batch(&topic, 1)).await.unwrap();
    let err = old.fetch(10, Duration::from_millis(500)).await.err();
    assert!(
        matches!(err, Some(Error::Shutdown { .. })),
        "the old instance stops instead of fighting back, got {err:?}"
    );
    let last = fetch_n(new.as_mut(), 1, Duration::from_secs(10)).await;
    assert_eq!(last.len(), 1, "the new instance keeps going");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_consumer_that_vanished_without_a_successor_is_recreated_from_the_last_commit() {
    let Some(url) = common::shared_server("NATS consumer lost by the server") else {
        return;
    };
    let one = OnePartition::holding(&url, 5).await;
    let (group, mut consumer) = one.three_fetched_first_committed().await;
    let (broker, js, topic, stream, sent) =
        (&one.broker, &one.js, &one.topic, &one.stream, &one.sent);
    let p0 = Partition::new(0);

    // What a cluster that lost a consumer in a leader election answers (and what an operator
    // deleting it by hand does): "consumer not found", and no newer generation. No other
    // instance took over, so this one must not stop: it goes on after its last commit.
    js.delete_consumer_from_stream(format!("{group}_0"), &stream)
        .await
        .unwrap();
    let mut rest = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rest.len() < 2 && Instant::now() < deadline {
        match consumer.fetch(10, Duration::from_millis(500)).await {
            Ok(batch) => rest.extend(batch),
            Err(e) => assert!(
                e.is_retryable(),
                "a lost server consumer is no takeover: {e}"
            ),
        }
    }
    // The two fetched and not committed come again on the server, and this instance skips
    // them as it skips any redelivery of what it already returned.
    let ids: Vec<_> = rest.iter().map(|d| d.id).collect();
    let expected: Vec<_> = sent[3..].iter().map(|m| Some(m.id)).collect();
    assert_eq!(ids, expected, "the rest, once, in order");
    assert_eq!(
        consumers_of(js, stream, group.as_str()).await,
        vec![format!("{group}_0_g1")],
        "re-created as the next generation, never under the deleted name"
    );
    consumer.commit(rest[1].offset).await.unwrap();
    drop(consumer);
    let mut next = broker.consume(&group, topic, p0).await.unwrap();
    let more = fetch_answered(next.as_mut(), 10, Duration::from_millis(300)).await;
    assert!(more.is_empty(), "the commit after the loss holds: {more:?}");
}

/// A broker on the shared server, a fresh one-partition topic holding some messages, and a
/// JetStream context to look at the server's side.
struct OnePartition {
    broker: NatsBroker,
    _cleanup: common::DeleteStreams,
    js: async_nats::jetstream::Context,
    topic: Topic,
    stream: String,
    sent: Vec<OutgoingMessage>,
}

impl OnePartition {
    async fn holding(url: &str, messages: usize) -> Self {
        let (broker, _cleanup) = connect(common::test_config(url.to_owned())).await;
        let js = js(url).await;
        let topic = fresh_topic();
        broker.ensure_topic(&topic, 1).await.unwrap();
        let stream = broker.stream_name(&topic);
        let sent = batch(&topic, messages);
        broker.publish(&sent).await.unwrap();
        Self {
            broker,
            _cleanup,
            js,
            topic,
            stream,
            sent,
        }
    }

    /// A fresh group's consumer of the partition that fetched three messages and committed
    /// only the first.
    async fn three_fetched_first_committed(&self) -> (GroupName, Box<dyn PartitionConsumer>) {
        let group = fresh_group();
        let mut consumer = self
            .broker
            .consume(&group, &self.topic, Partition::new(0))
            .await
            .unwrap();
        let got = fetch_n(consumer.as_mut(), 3, Duration::from_secs(10)).await;
        consumer.commit(got[0].offset).await.unwrap();
        (group, consumer)
    }
}

/// The names of the stream's consumers that belong to `group`.
async fn consumers_of(
    js: &async_nats::jetstream::Context,
    stream: &str,
    group: &str,
) -> Vec<String> {
    use futures::StreamExt;
    let stream = js.get_stream(stream).await.expect("stream");
    let mut names: Vec<String> = stream
        .consumer_names()
        .map(|n| n.expect("consumer name"))
        .filter(|n| futures::future::ready(n.starts_with(&format!("{group}_"))))
        .collect()
        .await;
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_creates_the_next_generation_and_a_leftover_older_one_is_ignored_and_deleted() {
    let Some(url) = common::shared_server("NATS consumer generations") else {
        return;
    };
    // Messages fetched and not committed make the next instance reset the group's cursor:
    // it creates generation 1 after the ack floor and deletes generation 0, never re-creating
    // a consumer under a deleted name.
    let one = OnePartition::holding(&url, 6).await;
    let (group, first) = one.three_fetched_first_committed().await;
    drop(first);
    let (broker, js, topic, stream, sent) =
        (&one.broker, &one.js, &one.topic, &one.stream, &one.sent);
    let p0 = Partition::new(0);
    assert_eq!(
        consumers_of(js, stream, group.as_str()).await,
        vec![format!("{group}_0")]
    );
    let mut second = broker.consume(&group, topic, p0).await.unwrap();
    assert_eq!(
        consumers_of(js, stream, group.as_str()).await,
        vec![format!("{group}_0_g1")]
    );
    let again = fetch_n(second.as_mut(), 2, Duration::from_secs(10)).await;
    let ids: Vec<_> = again.iter().map(|d| d.id).collect();
    assert_eq!(
        ids,
        vec![Some(sent[1].id), Some(sent[2].id)],
        "after the floor, in order"
    );
    second.commit(again[1].offset).await.unwrap();
    drop(second);

    // A crash after a reset created its generation and before it deleted the older one leaves
    // both: the newest is the cursor (the old one, from the start of the stream, must not be).
    let partition_subject = js
        .get_stream(&stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .config
        .subjects[0]
        .clone();
    let stale = async_nats::jetstream::consumer::pull::Config {
        durable_name: Some(format!("{group}_0")),
        filter_subject: partition_subject,
        ack_policy: async_nats::jetstream::consumer::AckPolicy::All,
        ..Default::default()
    };
    js.create_consumer_on_stream(stale, &stream).await.unwrap();
    assert_eq!(
        consumers_of(js, stream, group.as_str()).await,
        vec![format!("{group}_0"), format!("{group}_0_g1")]
    );
    let mut third = broker.consume(&group, topic, p0).await.unwrap();
    assert_eq!(
        consumers_of(js, stream, group.as_str()).await,
        vec![format!("{group}_0_g1")],
        "the leftover is deleted before anything is pulled"
    );
    let rest = fetch_n(third.as_mut(), 3, Duration::from_secs(10)).await;
    let ids: Vec<_> = rest.iter().map(|d| d.id).collect();
    let expected: Vec<_> = sent[3..].iter().map(|m| Some(m.id)).collect();
    assert_eq!(
        ids, expected,
        "resumes after generation 1's committed offset"
    );
    drop(third);

    // Rewinding the group (a rebuild) starts a new generation at the oldest message.
    broker.reset_group(&group, topic).await.unwrap();
    assert_eq!(
        consumers_of(js, stream, group.as_str()).await,
        vec![format!("{group}_0_g2")]
    );
    let mut fourth = broker.consume(&group, topic, p0).await.unwrap();
    let all = fetch_n(fourth.as_mut(), 6, Duration::from_secs(10)).await;
    let ids: Vec<_> = all.iter().map(|d| d.id).collect();
    let expected: Vec<_> = sent.iter().map(|m| Some(m.id)).collect();
    assert_eq!(ids, expected, "everything again, in order");
    drop(fourth);

    // Deleting the group deletes every generation.
    broker.delete_group(&group, topic).await.unwrap();
    assert!(consumers_of(js, stream, group.as_str()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_past_the_last_fetched_offset_commits_only_what_was_fetched() {
    let Some(url) = common::shared_server("NATS consumer commit") else {
        return;
    };
    let (broker, _cleanup) = connect(common::test_config(url)).await;
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let sent = batch(&topic, 5);
    broker.publish(&sent).await.unwrap();
    let (group, p0) = (fresh_group(), Partition::new(0));
    let mut c = broker.consume(&group, &topic, p0).await.unwrap();
    let got = fetch_answered(c.as_mut(), 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    c.commit(tributary_core::Offset::new(u64::MAX))
        .await
        .unwrap();
    drop(c);
    let mut next = broker.consume(&group, &topic, p0).await.unwrap();
    let rest = fetch_n(next.as_mut(), 3, Duration::from_secs(10)).await;
    let ids: Vec<_> = rest.iter().map(|d| d.id).collect();
    let expected: Vec<_> = sent[2..].iter().map(|m| Some(m.id)).collect();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_after_a_newer_redelivery_was_acknowledged_still_moves_the_floor() {
    let Some(url) = common::shared_server("NATS consumer redelivery") else {
        return;
    };
    let config = common::test_config(url).with_ack_wait(Duration::from_secs(1));
    let (broker, _cleanup) = connect(config).await;
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.unwrap();
    let sent = batch(&topic, 7);
    broker.publish(&sent).await.unwrap();
    let (group, p0) = (fresh_group(), Partition::new(0));
    let mut c = broker.consume(&group, &topic, p0).await.unwrap();
    // Two fetches half an ack_wait apart: the first three come back (to this instance, which
    // skips them) before the next three do, so their newer deliveries carry higher delivery
    // sequences than the later messages' first deliveries. JetStream ignores an "ack all"
    // whose delivery sequence is below one it already processed.
    let first = fetch_answered(c.as_mut(), 3, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = fetch_answered(c.as_mut(), 3, Duration::from_secs(5)).await;
    assert_eq!((first.len(), second.len()), (3, 3));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let skipped = fetch_answered(c.as_mut(), 3, Duration::from_millis(300)).await;
    let seventh: Vec<_> = skipped.iter().map(|d| d.id).collect();
    assert!(seventh.len() <= 1, "only the 7th is new: {skipped:?}");
    c.commit(first[1].offset).await.unwrap();
    c.commit(second[1].offset).await.unwrap();
    drop(c);

    let mut next = broker.consume(&group, &topic, p0).await.unwrap();
    let rest = fetch_n(next.as_mut(), 2, Duration::from_secs(10)).await;
    let ids: Vec<_> = rest.iter().map(|d| d.id).collect();
    assert_eq!(ids, vec![Some(sent[5].id), Some(sent[6].id)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comma_separated_server_list_connects_through_a_live_server() {
    let Some(url) = common::shared_server("NATS server list") else {
        return;
    };
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A cluster's URLs, one of them down: the broker connects through another one.
    let list = format!("nats://127.0.0.1:{dead}, {url}");
    let (broker, _cleanup) = connect(common::test_config(list)).await;
    let topic = fresh_topic();
    broker.ensure_topic(&topic, 1).await.expect("a topic");
    broker.publish(&batch(&topic, 3)).await.expect("publish");
    let err = NatsBroker::connect(common::test_config(" , ")).await.err();
    assert!(
        matches!(err, Some(Error::InvalidInput { .. })),
        "got {err:?}"
    );
}
