//! The messaging conformance suite: outbox + relay, consumers with inbox, retries, dead
//! letters and projections, written once and run against every (database, broker) pair
//! through [`messaging_conformance!`](crate::messaging_conformance).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tributary_core::backend::{InboxEntry, PendingReason, WorkOrigin};
use tributary_core::{
    Broker, CommandError, ConsistencyToken, Database, Envelope, Error, EventId, ExpectedVersion,
    GroupLock, GroupName, Metadata, OutgoingMessage, Payload, Repository, Snapshot, StreamId,
    StreamVersion, Topic, UnitOfWorkExt, Upcasters,
};
use tributary_runtime::{
    Backoff, CancellationToken, Consumer, ConsumerConfig, DeadLetterAdmin, Dispatch, Handler,
    HandlerError, HealthState, Projector, ProjectorConfig, Relay, RelayConfig, WaitError,
    handler_fn,
};

use crate::broker::{fresh_group, fresh_topic};
use crate::sample::{Account, AccountCommand, AccountError};

/// Makes a fresh, empty service database.
pub type DatabaseFactory =
    Box<dyn Fn() -> tributary_core::BoxFuture<'static, Arc<dyn Database>> + Send + Sync>;

/// The origin the suite's own runtime-level units report.
fn origin() -> WorkOrigin {
    WorkOrigin::Task("the messaging conformance suite".into())
}

/// A broker and a source of fresh databases, and whatever keeps them alive.
pub struct MessagingFixture {
    pub broker: Arc<dyn Broker>,
    pub new_database: DatabaseFactory,
    pub guard: Box<dyn std::any::Any + Send + Sync>,
}

/// Generates one `#[tokio::test]` per check for the fixture made by `$make` (an async fn
/// returning `Option<`[`MessagingFixture`]`>`).
#[macro_export]
macro_rules! messaging_conformance {
    // In-memory backends: tokio's clock is paused and jumps ahead whenever every task waits,
    // so retries, backoffs and bounded waits take no wall-clock time and no machine load can
    // stretch them.
    (paused: $make:path) => {
        $crate::messaging_conformance!(@checks $make; (start_paused = true));
    };
    ($make:path) => {
        $crate::messaging_conformance!(@checks $make; (flavor = "multi_thread", worker_threads = 4));
    };
    (@checks $make:path; $runtime:tt) => {
        $crate::messaging_conformance!(@tests $make; $runtime;
            outbox_events_reach_consumers_in_per_key_order_exactly_once,
            a_rolled_back_unit_publishes_nothing,
            published_outbox_rows_are_removed,
            event_store_events_are_relayed_once_by_their_cursor,
            a_standby_relay_takes_over_when_the_active_one_stops,
            redelivered_messages_do_not_run_the_handler_again,
            handler_writes_and_published_events_commit_with_the_inbox_entry,
            a_failing_message_is_retried_then_dead_lettered_and_its_key_parked,
            a_retryable_failure_that_clears_is_not_dead_lettered,
            undecodable_unknown_and_panicking_messages_are_dead_lettered_with_a_reason,
            skipping_a_dead_letter_resolves_only_that_letter,
            inbox_retention_shorter_than_the_redelivery_horizon_is_rejected,
            a_projection_rebuilds_while_events_keep_arriving,
            a_consumer_view_rebuilds_from_the_broker_log,
            a_groups_lock_is_shared_by_its_consumers_and_exclusive_for_a_rebuild,
            a_failed_append_inside_a_unit_leaves_nothing_behind,
            pruning_a_groups_inbox_leaves_other_groups_entries,
            batched_inbox_and_dead_letter_lookups_agree_with_single_ones,
            events_published_in_a_rolled_back_savepoint_are_dropped_and_the_rest_keep_their_order,
            document_updates_are_read_back_in_the_unit_and_undone_by_a_savepoint_rollback,
            a_document_no_backend_can_store_dead_letters_only_its_message,
            a_consistency_token_is_satisfied_only_after_every_write_it_names_is_applied,
            consistency_tokens_survive_a_restart_of_the_view,
            a_token_waits_for_the_follow_ups_of_its_writes_in_another_service,
            a_projectors_view_waits_for_the_events_a_unit_appended,
            repository_upcasts_old_events_on_read,
            repository_snapshots_every_n_events_and_loads_from_them,
            repository_retries_conflicts_and_stays_consistent,
        );
    };
    (@tests $make:path; $runtime:tt; $($check:ident),* $(,)?) => {
        $(
            #[$crate::tokio::test $runtime]
            async fn $check() {
                let Some(fixture) = $make().await else { return };
                $crate::messaging::$check(&fixture).await;
                drop(fixture);
            }
        )*
    };
}

/// Polls `check` until it is true or `within` passes; returns whether it became true.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const WITHIN: Duration = Duration::from_secs(30);

/// Data of the numbered events the suite publishes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Numbered {
    pub key: String,
    pub seq: u64,
}

fn numbered(key: &str, seq: u64) -> Envelope {
    Envelope::new(
        "conformance",
        "Numbered",
        Payload::from_value(&Numbered {
            key: key.into(),
            seq,
        })
        .expect("json"),
    )
    .with_subject(key)
}

/// What the ledger handler records per key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub last_seq: u64,
    pub applied: u64,
    pub out_of_order: u64,
}

/// A handler that applies `Numbered` events to a per-key ledger document, counting every
/// application and any event that arrives out of per-key order.
pub fn ledger_handler() -> Arc<dyn Handler> {
    Arc::new(Dispatch::new().on("Numbered", |n: Numbered, _e, unit| {
        Box::pin(async move {
            let mut ledger: Ledger = unit.get_as("ledger", &n.key).await?.unwrap_or_default();
            if n.seq != ledger.last_seq + 1 {
                ledger.out_of_order += 1;
            }
            ledger.last_seq = n.seq;
            ledger.applied += 1;
            unit.put_as("ledger", &n.key, &ledger).await?;
            Ok(())
        })
    }))
}

async fn ledger(db: &Arc<dyn Database>, key: &str) -> Ledger {
    db.get_document("ledger", key)
        .await
        .expect("read")
        .map(|p| p.decode().expect("ledger"))
        .unwrap_or_default()
}

fn fast_config() -> ConsumerConfig {
    ConsumerConfig::default()
        .with_backoff(Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(50),
        ))
        .with_fetch_wait(Duration::from_millis(100))
        .with_max_attempts(3)
        // Several messages per unit on every database, so that failures, duplicates and
        // parking inside a unit are exercised everywhere (PostgreSQL's default is one).
        .with_messages_per_unit(8)
}

/// Publishes `per_key` numbered events for each key through units of work (several events
/// per unit).
async fn publish_numbered(db: &Arc<dyn Database>, topic: &Topic, keys: &[String], per_key: u64) {
    for seq in 1..=per_key {
        for chunk in keys.chunks(4) {
            let (t, chunk) = (topic.clone(), chunk.to_vec());
            db.transact(move |unit| {
                Box::pin(async move {
                    for k in &chunk {
                        unit.publish(&t, numbered(k, seq)).await?;
                    }
                    Ok::<_, Error>(())
                })
            })
            .await
            .expect("publish");
        }
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key-{i}")).collect()
}

struct Running {
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<tributary_core::Result<()>>>,
}

impl Running {
    fn new() -> Self {
        Self {
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
        }
    }

    fn relay(&mut self, db: &Arc<dyn Database>, broker: &Arc<dyn Broker>) {
        let relay = Relay::new(db.outbox_source(), broker.clone(), RelayConfig::default());
        let shutdown = self.shutdown.clone();
        self.tasks.push(tokio::spawn(relay.run(shutdown)));
    }

    fn consumer(&mut self, consumer: Consumer) {
        let shutdown = self.shutdown.clone();
        self.tasks.push(tokio::spawn(consumer.run(shutdown)));
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await
                .expect("task ends cleanly")
                .expect("the task stops without a fatal error");
        }
    }
}

fn consumer(
    group: &GroupName,
    topic: &Topic,
    db: &Arc<dyn Database>,
    broker: &Arc<dyn Broker>,
    handler: Arc<dyn Handler>,
) -> Consumer {
    Consumer::new(
        group.clone(),
        vec![topic.clone()],
        db.clone(),
        broker.clone(),
        handler,
        fast_config(),
    )
    .expect("valid consumer")
}

pub async fn outbox_events_reach_consumers_in_per_key_order_exactly_once(f: &MessagingFixture) {
    let (producer, service) = ((f.new_database)().await, (f.new_database)().await);
    let topic = fresh_topic();
    f.broker.ensure_topic(&topic, 4).await.unwrap();
    let keys = keys(12);
    let mut running = Running::new();
    running.relay(&producer, &f.broker);
    running.consumer(consumer(
        &fresh_group(),
        &topic,
        &service,
        &f.broker,
        ledger_handler(),
    ));
    publish_numbered(&producer, &topic, &keys, 20).await;
    let done = eventually(WITHIN, || {
        let (service, keys) = (service.clone(), keys.clone());
        async move {
            for k in &keys {
                if ledger(&service, k).await.last_seq < 20 {
                    return false;
                }
            }
            true
        }
    })
    .await;
    running.stop().await;
    assert!(done, "every event reached the consumer");
    for k in &keys {
        let l = ledger(&service, k).await;
        assert_eq!(
            l,
            Ledger {
                last_seq: 20,
                applied: 20,
                out_of_order: 0
            },
            "key {k}"
        );
    }
}

pub async fn a_rolled_back_unit_publishes_nothing(f: &MessagingFixture) {
    let db = (f.new_database)().await;
    let topic = fresh_topic();
    let t = topic.clone();
    let err = db
        .transact(move |unit| {
            Box::pin(async move {
                unit.put("things", "a", Payload::from_value(&json!({"v": 1}))?)
                    .await?;
                unit.publish(&t, numbered("a", 1)).await?;
                Err::<(), _>(Error::invalid("the business rule says no"))
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }));
    assert!(
        db.outbox_source().read_batch(10).await.unwrap().is_none(),
        "no outbox row"
    );
    assert!(
        db.get_document("things", "a").await.unwrap().is_none(),
        "no state change"
    );
    // A panicking unit is rolled back the same way.
    let t = topic.clone();
    let panicked = db
        .transact(move |unit| {
            Box::pin(async move {
                unit.publish(&t, numbered("b", 1)).await?;
                if unit.get("things", "b").await?.is_none() {
                    panic!("bug in the unit");
                }
                Ok::<_, Error>(())
            })
        })
        .await
        .unwrap_err();
    assert!(
        matches!(panicked, Error::Panicked { .. }),
        "got {panicked:?}"
    );
    assert!(db.outbox_source().read_batch(10).await.unwrap().is_none());
}

pub async fn published_outbox_rows_are_removed(f: &MessagingFixture) {
    let db = (f.new_database)().await;
    let topic = fresh_topic();
    publish_numbered(&db, &topic, &keys(3), 5).await;
    let batch = db
        .outbox_source()
        .read_batch(1000)
        .await
        .unwrap()
        .expect("rows");
    assert_eq!(batch.messages.len(), 15);
    let mut running = Running::new();
    running.relay(&db, &f.broker);
    let drained = eventually(WITHIN, || {
        let db = db.clone();
        async move { db.outbox_source().read_batch(10).await.unwrap().is_none() }
    })
    .await;
    running.stop().await;
    assert!(drained, "the relay removes what the broker acknowledged");
}

pub async fn event_store_events_are_relayed_once_by_their_cursor(f: &MessagingFixture) {
    let db = (f.new_database)().await;
    let store = db.event_store();
    let topic = fresh_topic();
    for i in 0..10u64 {
        let s = StreamId::new(format!("thing-{}", i % 3)).unwrap();
        let e = numbered(&format!("thing-{}", i % 3), i).with_aggregate_type(topic.as_str());
        store
            .append(&s, ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
    }
    let source = db.event_store_source("test", Topic::new("fallback").unwrap());
    let batch = source.read_batch(100).await.unwrap().expect("events");
    assert_eq!(batch.messages.len(), 10);
    let backlog = source.backlog().await.unwrap().expect("the source counts");
    assert_eq!(backlog.pending, 10, "nothing published yet");
    assert!(backlog.oldest_age.is_some());
    assert_eq!(
        source.lease_state().await.unwrap(),
        Some(tributary_core::LeaseState::Free)
    );
    assert!(
        db.relay_cursors().await.unwrap().is_empty(),
        "no cursor before the first publish"
    );
    assert!(
        batch.messages.iter().all(|m| m.topic == topic),
        "topic = aggregate type"
    );
    let shutdown = CancellationToken::new();
    let relay = Relay::new(source.clone(), f.broker.clone(), RelayConfig::default());
    let task = tokio::spawn(relay.run(shutdown.clone()));
    let caught_up = eventually(WITHIN, || {
        let s = source.clone();
        async move { s.read_batch(10).await.unwrap().is_none() }
    })
    .await;
    assert!(caught_up, "the cursor moved past every event");
    assert_eq!(source.backlog().await.unwrap().unwrap().pending, 0);
    assert!(
        matches!(
            source.lease_state().await.unwrap(),
            Some(tributary_core::LeaseState::Held { .. })
        ),
        "the running relay holds the lease"
    );
    assert_eq!(db.relay_cursors().await.unwrap(), ["test"]);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        source.lease_state().await.unwrap(),
        Some(tributary_core::LeaseState::Free),
        "a stopped relay holds no lease"
    );
    let again = db.event_store_source("test", Topic::new("fallback").unwrap());
    assert!(
        again.read_batch(10).await.unwrap().is_none(),
        "the cursor is durable"
    );
    assert_eq!(
        store
            .read_all(tributary_core::Position::START, 100)
            .await
            .unwrap()
            .len(),
        10,
        "events stay in the store"
    );
    let mut c = f
        .broker
        .consume(&fresh_group(), &topic, tributary_core::Partition::new(0))
        .await
        .unwrap();
    let partitions = f.broker.partitions(&topic).await.unwrap();
    let mut total = crate::broker::fetch_n(c.as_mut(), 10, Duration::from_secs(2))
        .await
        .len();
    for p in 1..partitions {
        let mut c = f
            .broker
            .consume(&fresh_group(), &topic, tributary_core::Partition::new(p))
            .await
            .unwrap();
        total += crate::broker::fetch_n(c.as_mut(), 10, Duration::from_secs(1))
            .await
            .len();
    }
    assert_eq!(total, 10, "each event published once");
}

pub async fn a_standby_relay_takes_over_when_the_active_one_stops(f: &MessagingFixture) {
    let db = (f.new_database)().await;
    let topic = fresh_topic();
    let first_stop = CancellationToken::new();
    let first = Relay::new(db.outbox_source(), f.broker.clone(), RelayConfig::default());
    let first_health = first.health();
    let first_task = tokio::spawn(first.run(first_stop.clone()));
    assert!(
        eventually(WITHIN, || {
            let h = first_health.clone();
            async move { h.get() == HealthState::Running }
        })
        .await
    );
    let second_stop = CancellationToken::new();
    let second = Relay::new(
        db.outbox_source(),
        f.broker.clone(),
        RelayConfig::default().with_standby_poll(Duration::from_millis(50)),
    );
    let (second_health, second_stats) = (second.health(), second.stats());
    let second_task = tokio::spawn(second.run(second_stop.clone()));
    assert!(
        eventually(WITHIN, || {
            let h = second_health.clone();
            async move { h.get() == HealthState::Standby }
        })
        .await,
        "a second relay on the same source stands by"
    );
    publish_numbered(&db, &topic, &keys(1), 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        second_stats.published.load(Ordering::Relaxed),
        0,
        "the standby publishes nothing"
    );
    first_stop.cancel();
    first_task.await.unwrap().unwrap();
    let started = Instant::now();
    publish_numbered(&db, &topic, &keys(1), 2).await;
    // The relay counts a batch after it recorded it published (the rows gone), so the test
    // waits for both rather than reading the count the moment the outbox is empty.
    let took_over = eventually(WITHIN, || {
        let (db, stats) = (db.clone(), second_stats.clone());
        async move {
            db.outbox_source().read_batch(10).await.unwrap().is_none()
                && stats.published.load(Ordering::Relaxed) >= 2
        }
    })
    .await;
    assert!(
        took_over,
        "the standby took over, published the new events and drained the outbox"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    second_stop.cancel();
    second_task.await.unwrap().unwrap();
}

pub async fn redelivered_messages_do_not_run_the_handler_again(f: &MessagingFixture) {
    let service = (f.new_database)().await;
    let topic = fresh_topic();
    f.broker.ensure_topic(&topic, 2).await.unwrap();
    let group = fresh_group();
    let messages: Vec<_> = (1..=10)
        .map(|seq| OutgoingMessage::from_envelope(topic.clone(), &numbered("k", seq)))
        .collect();
    f.broker.publish(&messages).await.unwrap();
    let mut running = Running::new();
    running.consumer(consumer(
        &group,
        &topic,
        &service,
        &f.broker,
        ledger_handler(),
    ));
    assert!(
        eventually(WITHIN, || {
            let s = service.clone();
            async move { ledger(&s, "k").await.last_seq == 10 }
        })
        .await
    );
    running.stop().await;
    // The same messages arrive again (a redelivery, here through a second topic the group
    // also reads), followed by one new message of the same key: once that one is applied,
    // every copy before it in its partition was handled, and the inbox must have recognised
    // them all.
    let replay_topic = fresh_topic();
    let mut again: Vec<_> = messages
        .iter()
        .map(|m| OutgoingMessage {
            topic: replay_topic.clone(),
            ..m.clone()
        })
        .collect();
    again.push(OutgoingMessage::from_envelope(
        replay_topic.clone(),
        &numbered("k", 11),
    ));
    f.broker.publish(&again).await.unwrap();
    let mut running = Running::new();
    running.consumer(consumer(
        &group,
        &replay_topic,
        &service,
        &f.broker,
        ledger_handler(),
    ));
    let marker = eventually(WITHIN, || {
        let s = service.clone();
        async move { ledger(&s, "k").await.last_seq == 11 }
    })
    .await;
    running.stop().await;
    assert!(marker, "the message after the copies was handled");
    assert_eq!(
        ledger(&service, "k").await,
        Ledger {
            last_seq: 11,
            applied: 11,
            out_of_order: 0
        }
    );
}

pub async fn handler_writes_and_published_events_commit_with_the_inbox_entry(f: &MessagingFixture) {
    let service = (f.new_database)().await;
    let (input, output) = (fresh_topic(), fresh_topic());
    let out = output.clone();
    let handler: Arc<dyn Handler> =
        Arc::new(Dispatch::new().on("Numbered", move |n: Numbered, e, unit| {
            let out = out.clone();
            Box::pin(async move {
                unit.put_as(
                    "seen",
                    &format!("{}-{}", n.key, n.seq),
                    &json!({"ok": true}),
                )
                .await?;
                unit.publish(
                    &out,
                    Envelope::new("svc", "Reacted", Payload::from_value(&n)?).caused_by(e),
                )
                .await?;
                Ok(())
            })
        }));
    f.broker
        .publish(
            &(1..=5)
                .map(|s| OutgoingMessage::from_envelope(input.clone(), &numbered("k", s)))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let mut running = Running::new();
    running.consumer(consumer(
        &fresh_group(),
        &input,
        &service,
        &f.broker,
        handler,
    ));
    assert!(
        eventually(WITHIN, || {
            let s = service.clone();
            async move { s.get_document("seen", "k-5").await.unwrap().is_some() }
        })
        .await
    );
    running.stop().await;
    let batch = service
        .outbox_source()
        .read_batch(100)
        .await
        .unwrap()
        .expect("reactions");
    assert_eq!(
        batch.messages.len(),
        5,
        "one reaction per message, published atomically"
    );
    let reaction = Envelope::from_json(&batch.messages[0].payload).unwrap();
    assert!(
        reaction.causation_id.is_some(),
        "reactions carry their cause"
    );
}

/// A handler that fails permanently for (key, seq) pairs while `broken` is set.
fn flaky_ledger(broken: Arc<AtomicBool>, poison: (&'static str, u64)) -> Arc<dyn Handler> {
    let inner = ledger_handler();
    handler_fn(move |e, unit| {
        let (inner, broken) = (inner.clone(), broken.clone());
        Box::pin(async move {
            let n: Numbered = e.data.decode().map_err(HandlerError::from)?;
            if broken.load(Ordering::SeqCst) && n.key == poison.0 && n.seq == poison.1 {
                return Err(HandlerError::retry("downstream rule is broken"));
            }
            inner.handle(e, unit).await
        })
    })
}

pub async fn a_failing_message_is_retried_then_dead_lettered_and_its_key_parked(
    f: &MessagingFixture,
) {
    let service = (f.new_database)().await;
    let topic = fresh_topic();
    f.broker.ensure_topic(&topic, 1).await.unwrap();
    let group = fresh_group();
    let broken = Arc::new(AtomicBool::new(true));
    let handler = flaky_ledger(broken.clone(), ("bad", 2));
    let mut messages = Vec::new();
    for seq in 1..=5 {
        messages.push(OutgoingMessage::from_envelope(
            topic.clone(),
            &numbered("bad", seq),
        ));
        messages.push(OutgoingMessage::from_envelope(
            topic.clone(),
            &numbered("good", seq),
        ));
    }
    f.broker.publish(&messages).await.unwrap();
    let mut running = Running::new();
    running.consumer(consumer(
        &group,
        &topic,
        &service,
        &f.broker,
        handler.clone(),
    ));
    let settled = eventually(WITHIN, || {
        let s = service.clone();
        async move {
            ledger(&s, "good").await.last_seq == 5
                && s.dead_letters().list(None, 10).await.unwrap().len() == 4
        }
    })
    .await;
    running.stop().await;
    assert!(settled, "other keys flow while the bad key is parked");
    assert_eq!(
        ledger(&service, "bad").await.last_seq,
        1,
        "the bad key stopped before its poison message"
    );
    let letters = service.dead_letters().list(Some(&group), 10).await.unwrap();
    assert_eq!(
        letters[0].attempts, 3,
        "retried up to the configured attempts"
    );
    assert!(letters[0].reason.contains("broken"));
    assert!(letters[0].parked_behind.is_none());
    assert!(
        letters[1..]
            .iter()
            .all(|l| l.parked_behind == Some(letters[0].id)),
        "later messages parked behind it"
    );
    // Replaying while still broken fails again and changes nothing.
    let admin = DeadLetterAdmin::new(service.clone()).with_group(
        group.clone(),
        handler.clone(),
        Default::default(),
    );
    let outcome = admin.replay(letters[2].id).await.unwrap();
    assert!(outcome.replayed.is_empty());
    assert_eq!(
        outcome.failed.as_ref().map(|f| f.0),
        Some(letters[0].id),
        "replay starts at the oldest of the key"
    );
    // Fixed: replay applies the key's messages in order, and new messages flow again.
    broken.store(false, Ordering::SeqCst);
    let outcome = admin.replay(letters[0].id).await.unwrap();
    assert_eq!(outcome.replayed.len(), 4);
    assert!(outcome.failed.is_none());
    assert_eq!(
        ledger(&service, "bad").await,
        Ledger {
            last_seq: 5,
            applied: 5,
            out_of_order: 0
        }
    );
    assert!(
        service
            .dead_letters()
            .list(None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    f.broker
        .publish(&[OutgoingMessage::from_envelope(
            topic.clone(),
            &numbered("bad", 6),
        )])
        .await
        .unwrap();
    let mut running = Running::new();
    running.consumer(consumer(&group, &topic, &service, &f.broker, handler));
    let flowed = eventually(WITHIN, || {
        let s = service.clone();
        async move { ledger(&s, "bad").await.last_seq == 6 }
    })
    .await;
    running.stop().await;
    assert!(
        flowed,
        "the key flows again after its dead letters were replayed"
    );
}

pub async fn a_retryable_failure_that_clears_is_not_dead_lettered(f: &MessagingFixture) {
    let service = (f.new_database)().await;
    let topic = fresh_topic();
    let failures_left = Arc::new(AtomicU32::new(2));
    let inner = ledger_handler();
    let left = failures_left.clone();
    let handler = handler_fn(move |e, unit| {
        let (inner, left) = (inner.clone(), left.clone());
        Box::pin(async move {
            if left.load(Ordering::SeqCst) > 0 {
                left.fetch_sub(1, Ordering::SeqCst);
                // The write is rolled back with the failure.
                unit.put_as(
                    "ledger",
                    "k",
                    &Ledger {
                        last_seq: 99,
                        applied: 99,
                        out_of_order: 99,
                    },
                )
                .await?;
                return Err(HandlerError::retry("database of a partner is busy"));
            }
            inner.handle(e, unit).await
        })
    });
    f.broker
        .publish(
            &(1..=3)
                .map(|s| OutgoingMessage::from_envelope(topic.clone(), &numbered("k", s)))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let mut running = Running::new();
    running.consumer(consumer(
        &fresh_group(),
        &topic,
        &service,
        &f.broker,
        handler,
    ));
    let done = eventually(WITHIN, || {
        let s = service.clone();
        async move { ledger(&s, "k").await.last_seq == 3 }
    })
    .await;
    running.stop().await;
    assert!(done);
    assert_eq!(
        ledger(&service, "k").await,
        Ledger {
            last_seq: 3,
            applied: 3,
            out_of_order: 0
        }
    );
    assert!(
        service
            .dead_letters()
            .list(None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn undecodable_unknown_and_panicking_messages_are_dead_lettered_with_a_reason(
    f: &MessagingFixture,
) {
    let service = (f.new_database)().await;
    let topic = fresh_topic();
    f.broker.ensure_topic(&topic, 1).await.unwrap();
    let handler: Arc<dyn Handler> = Arc::new(
        Dispatch::new()
            .on("Numbered", |_: Numbered, e, unit| {
                Box::pin(async move { ledger_handler().handle(e, unit).await })
            })
            .on("Exploding", |_: serde_json::Value, _e, _unit| {
                Box::pin(async move { panic!("handler bug") })
            }),
    );
    let garbage = OutgoingMessage {
        topic: topic.clone(),
        key: "x".into(),
        id: EventId::new(),
        payload: b"\xff not json".to_vec(),
    };
    let unknown = OutgoingMessage::from_envelope(
        topic.clone(),
        &Envelope::new("t", "NeverHeardOf", Payload::null()).with_subject("y"),
    );
    let exploding = OutgoingMessage::from_envelope(
        topic.clone(),
        &Envelope::new("t", "Exploding", Payload::null()).with_subject("z"),
    );
    let wrong_shape = OutgoingMessage::from_envelope(
        topic.clone(),
        &Envelope::new(
            "t",
            "Numbered",
            Payload::from_value(&json!({"key": 5})).unwrap(),
        )
        .with_subject("w"),
    );
    let fine = OutgoingMessage::from_envelope(topic.clone(), &numbered("ok", 1));
    f.broker
        .publish(&[garbage, unknown, exploding, wrong_shape, fine])
        .await
        .unwrap();
    let mut running = Running::new();
    running.consumer(consumer(
        &fresh_group(),
        &topic,
        &service,
        &f.broker,
        handler,
    ));
    let settled = eventually(WITHIN, || {
        let s = service.clone();
        async move {
            ledger(&s, "ok").await.last_seq == 1
                && s.dead_letters().list(None, 10).await.unwrap().len() == 4
        }
    })
    .await;
    running.stop().await;
    assert!(
        settled,
        "bad messages are dead-lettered and the flow continues"
    );
    let letters = service.dead_letters().list(None, 10).await.unwrap();
    let reasons: HashMap<_, _> = letters
        .iter()
        .map(|l| (l.key.clone(), (l.reason.clone(), l.attempts)))
        .collect();
    assert!(reasons["x"].0.contains("undecodable"), "{reasons:?}");
    assert!(reasons["y"].0.contains("unknown event type"), "{reasons:?}");
    assert!(
        reasons["z"].0.contains("panicked") && reasons["z"].0.contains("handler bug"),
        "{reasons:?}"
    );
    assert!(reasons["w"].0.contains("cannot decode"), "{reasons:?}");
    assert!(
        letters.iter().all(|l| l.attempts == 1),
        "permanent failures are not retried"
    );
    assert_eq!(
        letters.iter().find(|l| l.key == "x").unwrap().payload,
        b"\xff not json".to_vec(),
        "the raw payload is kept"
    );
}

pub async fn skipping_a_dead_letter_resolves_only_that_letter(f: &MessagingFixture) {
    let service = (f.new_database)().await;
    let topic = fresh_topic();
    f.broker.ensure_topic(&topic, 1).await.unwrap();
    let group = fresh_group();
    let broken = Arc::new(AtomicBool::new(true));
    let handler = flaky_ledger(broken.clone(), ("k", 1));
    f.broker
        .publish(
            &(1..=3)
                .map(|s| OutgoingMessage::from_envelope(topic.clone(), &numbered("k", s)))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let mut running = Running::new();
    running.consumer(consumer(
        &group,
        &topic,
        &service,
        &f.broker,
        handler.clone(),
    ));
    assert!(
        eventually(WITHIN, || {
            let s = service.clone();
            async move { s.dead_letters().list(None, 10).await.unwrap().len() == 3 }
        })
        .await
    );
    running.stop().await;
    let letters = service.dead_letters().list(None, 10).await.unwrap();
    let admin =
        DeadLetterAdmin::new(service.clone()).with_group(group, handler, Default::default());
    admin.skip(letters[0].id).await.unwrap();
    assert!(
        admin.skip(letters[0].id).await.is_err(),
        "a resolved letter cannot be skipped again"
    );
    assert_eq!(
        service.dead_letters().list(None, 10).await.unwrap().len(),
        2,
        "the parked ones stay"
    );
    let outcome = admin.replay(letters[1].id).await.unwrap();
    assert_eq!(outcome.replayed, vec![letters[1].id, letters[2].id]);
    let l = ledger(&service, "k").await;
    assert_eq!(
        (l.last_seq, l.applied),
        (3, 2),
        "the skipped message was never applied"
    );
    // A letter already resolved, skipped or replayed, is not replayed "successfully" again.
    for resolved in [letters[0].id, letters[1].id] {
        let err = admin.replay(resolved).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput { reason } if reason.contains("already resolved")),
            "{err}"
        );
    }
    let l = ledger(&service, "k").await;
    assert_eq!((l.last_seq, l.applied), (3, 2), "nothing ran again");
}

pub async fn inbox_retention_shorter_than_the_redelivery_horizon_is_rejected(f: &MessagingFixture) {
    let service = (f.new_database)().await;
    let horizon = f.broker.redelivery_horizon();
    let too_short = horizon.min(Duration::from_secs(3600 * 24 * 365 * 100));
    let result = Consumer::new(
        fresh_group(),
        vec![fresh_topic()],
        service.clone(),
        f.broker.clone(),
        ledger_handler(),
        ConsumerConfig::default().with_inbox_retention(too_short),
    );
    assert!(
        matches!(result, Err(Error::InvalidInput { .. })),
        "a retention of {too_short:?} must be refused"
    );
    if let Some(longer) = horizon.checked_add(Duration::from_secs(1)) {
        Consumer::new(
            fresh_group(),
            vec![fresh_topic()],
            service,
            f.broker.clone(),
            ledger_handler(),
            ConsumerConfig::default().with_inbox_retention(longer),
        )
        .expect("a retention longer than the horizon is fine");
    }
}

/// A projection of `Numbered` events into per-key ledgers in the collection `view`.
fn ledger_projection() -> Arc<dyn Handler> {
    handler_fn(move |e, unit| {
        Box::pin(async move {
            let n: Numbered = e.data.decode().map_err(HandlerError::from)?;
            let mut l: Ledger = unit.get_as("view", &n.key).await?.unwrap_or_default();
            l.applied += 1;
            l.last_seq = l.last_seq.max(n.seq);
            unit.put_as("view", &n.key, &l).await?;
            Ok(())
        })
    })
}

pub async fn a_projection_rebuilds_while_events_keep_arriving(f: &MessagingFixture) {
    let db = (f.new_database)().await;
    let store = db.event_store();
    let handler = ledger_projection();
    let name = format!("p{}", EventId::new().as_uuid().simple());
    let projector = Projector::new(
        name.clone(),
        db.clone(),
        handler.clone(),
        ProjectorConfig::default(),
    );
    // A second handle on the same projection, as an operator's command would hold.
    let rebuild_handle = Projector::new(name, db.clone(), handler, ProjectorConfig::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(projector.run(shutdown.clone()));
    let append = |from: u64, to: u64| {
        let store = store.clone();
        async move {
            for seq in from..=to {
                for k in ["a", "b"] {
                    let s = StreamId::new(format!("v-{k}")).unwrap();
                    store
                        .append(&s, ExpectedVersion::Any, vec![numbered(k, seq)])
                        .await
                        .unwrap();
                }
            }
        }
    };
    append(1, 50).await;
    assert!(
        eventually(WITHIN, || {
            let db = db.clone();
            async move { view(&db, "b").await.last_seq == 50 }
        })
        .await
    );
    let writer = tokio::spawn(append(51, 150));
    rebuild_handle.rebuild(&["view"]).await.unwrap();
    writer.await.unwrap();
    let rebuilt = eventually(WITHIN, || {
        let db = db.clone();
        async move { view(&db, "a").await.last_seq == 150 && view(&db, "b").await.last_seq == 150 }
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(
        rebuilt,
        "view after rebuild: a={:?} b={:?}",
        view(&db, "a").await,
        view(&db, "b").await
    );
    for k in ["a", "b"] {
        assert_eq!(
            view(&db, k).await.applied,
            150,
            "key {k}: every event applied exactly once after the rebuild"
        );
    }
}

pub async fn a_groups_lock_is_shared_by_its_consumers_and_exclusive_for_a_rebuild(
    f: &MessagingFixture,
) {
    let db = (f.new_database)().await;
    let (group, other) = (fresh_group(), fresh_group());
    let take = |group: &GroupName, mode| {
        let (db, group) = (db.clone(), group.clone());
        async move { db.try_lock_group(&group, mode).await.unwrap() }
    };
    let first = take(&group, GroupLock::Shared).await.expect("a free group");
    let second = take(&group, GroupLock::Shared)
        .await
        .expect("a second running consumer shares the lock");
    assert!(
        take(&group, GroupLock::Exclusive).await.is_none(),
        "no exclusive holder while consumers run"
    );
    take(&other, GroupLock::Exclusive)
        .await
        .expect("another group's lock is its own")
        .release()
        .await;
    // `release` returns once the lock is free; a drop may finish later on a network backend.
    first.release().await;
    assert!(
        take(&group, GroupLock::Exclusive).await.is_none(),
        "one consumer still runs"
    );
    second.release().await;
    let exclusive = take(&group, GroupLock::Exclusive)
        .await
        .expect("free once the last consumer stopped");
    assert!(
        take(&group, GroupLock::Shared).await.is_none(),
        "no consumer starts while the exclusive holder works"
    );
    assert!(take(&group, GroupLock::Exclusive).await.is_none());
    exclusive.release().await;
    assert!(take(&group, GroupLock::Shared).await.is_some());
}

async fn view(db: &Arc<dyn Database>, key: &str) -> Ledger {
    db.get_document("view", key)
        .await
        .unwrap()
        .map(|p| p.decode().unwrap())
        .unwrap_or_default()
}

pub async fn a_consumer_view_rebuilds_from_the_broker_log(f: &MessagingFixture) {
    let service = (f.new_database)().await;
    let topic = fresh_topic();
    f.broker.ensure_topic(&topic, 2).await.unwrap();
    let group = fresh_group();
    let publish = |from: u64, to: u64| {
        let (broker, topic) = (f.broker.clone(), topic.clone());
        async move {
            let messages: Vec<_> = (from..=to)
                .flat_map(|seq| {
                    ["a", "b"]
                        .map(|k| OutgoingMessage::from_envelope(topic.clone(), &numbered(k, seq)))
                })
                .collect();
            broker.publish(&messages).await.unwrap();
        }
    };
    publish(1, 30).await;
    let mut running = Running::new();
    running.consumer(consumer(
        &group,
        &topic,
        &service,
        &f.broker,
        ledger_handler(),
    ));
    assert!(
        eventually(WITHIN, || {
            let s = service.clone();
            async move { ledger(&s, "b").await.last_seq == 30 }
        })
        .await
    );
    let refused = Consumer::request_rebuild(&service, &group, &["ledger"]).await;
    assert!(
        matches!(refused, Err(Error::InUse { .. })),
        "a rebuild while the group runs is refused: {refused:?}"
    );
    assert_eq!(
        ledger(&service, "b").await.last_seq,
        30,
        "a refused rebuild clears nothing"
    );
    running.stop().await;
    Consumer::request_rebuild(&service, &group, &["ledger"])
        .await
        .unwrap();
    assert_eq!(
        ledger(&service, "a").await,
        Ledger::default(),
        "the view is cleared at once"
    );
    publish(31, 40).await;
    let mut running = Running::new();
    running.consumer(consumer(
        &group,
        &topic,
        &service,
        &f.broker,
        ledger_handler(),
    ));
    let rebuilt = eventually(WITHIN, || {
        let s = service.clone();
        async move { ledger(&s, "a").await.last_seq == 40 && ledger(&s, "b").await.last_seq == 40 }
    })
    .await;
    running.stop().await;
    assert!(
        rebuilt,
        "the group replayed the retained log and what arrived since"
    );
    for k in ["a", "b"] {
        assert_eq!(
            ledger(&service, k).await,
            Ledger {
                last_seq: 40,
                applied: 40,
                out_of_order: 0
            },
            "key {k}"
        );
    }
    // A later restart does not rebuild again.
    let mut running = Running::new();
    running.consumer(consumer(
        &group,
        &topic,
        &service,
        &f.broker,
        ledger_handler(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;
    assert_eq!(ledger(&service, "a").await.applied, 40);
}

pub async fn a_failed_append_inside_a_unit_leaves_nothing_behind(f: &MessagingFixture) {
    let db = (f.new_database)().await;
    let store = db.event_store();
    let taken = numbered("elsewhere", 1);
    let other = StreamId::new(format!("other-{}", EventId::new())).unwrap();
    store
        .append(&other, ExpectedVersion::NoStream, vec![taken.clone()])
        .await
        .unwrap();
    let s = StreamId::new(format!("atomic-{}", EventId::new())).unwrap();
    let stream = s.clone();
    // The unit swallows the append's error and goes on: the batch must still be all or nothing.
    db.transact(move |unit| {
        Box::pin(async move {
            let failed = unit
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    vec![numbered("a", 1), numbered("a", 2), taken],
                )
                .await;
            assert!(failed.is_err(), "an id used elsewhere is refused");
            unit.put_as("after", "1", &json!({"went": "on"})).await?;
            Ok::<_, Error>(())
        })
    })
    .await
    .unwrap();
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        tributary_core::StreamVersion::NONE
    );
    assert!(
        db.get_document("after", "1").await.unwrap().is_some(),
        "the rest of the unit committed"
    );
}

/// Backends may hold published events in the unit and write them later (PostgreSQL writes
/// them in one statement at commit): savepoints and order must still hold.
pub async fn events_published_in_a_rolled_back_savepoint_are_dropped_and_the_rest_keep_their_order(
    f: &MessagingFixture,
) {
    let db = (f.new_database)().await;
    let topic = fresh_topic();
    let t = topic.clone();
    db.transact_consumer(origin(), move |tx| {
        Box::pin(async move {
            tx.publish(&t, numbered("k", 1)).await?;
            tx.savepoint().await?;
            tx.publish(&t, numbered("k", 2)).await?;
            tx.savepoint().await?;
            tx.publish(&t, numbered("dropped", 1)).await?;
            tx.rollback_savepoint().await?;
            tx.publish(&t, numbered("k", 3)).await?;
            tx.release_savepoint().await?;
            tx.savepoint().await?;
            tx.publish(&t, numbered("dropped", 2)).await?;
            tx.rollback_savepoint().await?;
            for seq in 4..=1200 {
                tx.publish(&t, numbered("k", seq)).await?;
            }
            Ok::<_, Error>(())
        })
    })
    .await
    .unwrap();
    let mut seqs = Vec::new();
    let source = db.outbox_source();
    while let Some(batch) = source.read_batch(500).await.unwrap() {
        for message in &batch.messages {
            let event: Envelope = serde_json::from_slice(&message.payload).expect("an envelope");
            let n: Numbered = event.data.decode().expect("a numbered event");
            assert_eq!(
                n.key, "k",
                "nothing of a rolled-back savepoint is published"
            );
            seqs.push(n.seq);
        }
        source.mark_published(batch.through).await.unwrap();
    }
    assert_eq!(seqs, (1..=1200).collect::<Vec<u64>>(), "in publish order");
}

/// Backends may hold the updates of documents a unit read and write them later (PostgreSQL
/// writes them in one statement at commit): the unit must still read its own writes, and a
/// savepoint rollback must undo them.
pub async fn document_updates_are_read_back_in_the_unit_and_undone_by_a_savepoint_rollback(
    f: &MessagingFixture,
) {
    let db = (f.new_database)().await;
    db.transact(|unit| {
        Box::pin(async move {
            for id in ["a", "b", "c"] {
                unit.put_as("counters", id, &0u64).await?;
            }
            Ok::<_, Error>(())
        })
    })
    .await
    .unwrap();
    let seen = db
        .transact_consumer(origin(), |tx| {
            Box::pin(async move {
                let mut seen = Vec::new();
                for _ in 0..3 {
                    let n: u64 = tx.get_as("counters", "a").await?.expect("a");
                    tx.put_as("counters", "a", &(n + 1)).await?;
                    seen.push(tx.get_as::<u64>("counters", "a").await?.expect("a"));
                }
                let b: u64 = tx.get_as("counters", "b").await?.expect("b");
                tx.savepoint().await?;
                tx.put_as("counters", "b", &(b + 100)).await?;
                let c: u64 = tx.get_as("counters", "c").await?.expect("c");
                tx.put_as("counters", "c", &(c + 100)).await?;
                seen.push(tx.get_as::<u64>("counters", "b").await?.expect("b"));
                tx.rollback_savepoint().await?;
                seen.push(tx.get_as::<u64>("counters", "b").await?.expect("b"));
                seen.push(tx.get_as::<u64>("counters", "c").await?.expect("c"));
                tx.delete("counters", "a").await?;
                seen.push(u64::from(tx.get("counters", "a").await?.is_some()));
                tx.put_as("counters", "a", &7u64).await?;
                Ok::<_, Error>(seen)
            })
        })
        .await
        .unwrap();
    assert_eq!(
        seen,
        [1, 2, 3, 100, 0, 0, 0],
        "the unit reads its own writes"
    );
    let stored: Vec<Option<u64>> = futures::future::join_all(
        ["a", "b", "c"].map(|id| db.get_document_as::<u64>("counters", id)),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert_eq!(
        stored,
        [Some(7), Some(0), Some(0)],
        "committed: the last write of a, nothing of the rolled-back savepoint"
    );
}

/// A document no backend can store (the NUL character, which PostgreSQL's jsonb refuses) is
/// refused by every backend at the call that writes it: the message whose handler wrote it is
/// dead-lettered alone, with the reason, and the other messages of its unit are handled.
pub async fn a_document_no_backend_can_store_dead_letters_only_its_message(f: &MessagingFixture) {
    let refused = Payload::from_json_str(r#"{"nul":"\u0000"}"#).expect("valid JSON");
    a_refused_document_dead_letters_only_its_message(f, refused, "NUL").await;
}

/// For a backend that holds a unit's writes until commit and refuses `refused` only then
/// (PostgreSQL's jsonb refuses a number beyond its numeric range): the message whose handler
/// wrote it is dead-lettered alone, with `reason` in its reason, and the other messages of its
/// unit are handled — without running them one by one. Not in the common suite: SQLite and
/// memory store any JSON.
pub async fn a_refused_document_dead_letters_only_its_message(
    f: &MessagingFixture,
    refused: Payload,
    reason: &str,
) {
    let service = (f.new_database)().await;
    let topic = fresh_topic();
    let group = fresh_group();
    // One partition, so that all the messages share units.
    f.broker.ensure_topic(&topic, 1).await.unwrap();
    service
        .transact(|unit| {
            Box::pin(async move {
                for key in ["a", "b", "c"] {
                    unit.put_as("docs", key, &0u64).await?;
                }
                Ok::<_, Error>(())
            })
        })
        .await
        .unwrap();
    let handler = handler_fn(move |e, unit| {
        let refused = refused.clone();
        Box::pin(async move {
            let n: Numbered = e.data.decode()?;
            // Read first: the update of a document the unit holds locked may be held to commit.
            let _: Option<u64> = unit.get_as("docs", &n.key).await?;
            if (n.key.as_str(), n.seq) == ("b", 2) {
                unit.put("docs", &n.key, refused).await?;
            } else {
                unit.put_as("docs", &n.key, &n.seq).await?;
            }
            Ok(())
        })
    });
    let messages: Vec<_> = [
        ("a", 1),
        ("b", 1),
        ("c", 1),
        ("a", 2),
        ("b", 2),
        ("c", 2),
        ("a", 3),
    ]
    .into_iter()
    .map(|(key, seq)| OutgoingMessage::from_envelope(topic.clone(), &numbered(key, seq)))
    .collect();
    f.broker.publish(&messages).await.unwrap();
    let mut running = Running::new();
    running.consumer(consumer(&group, &topic, &service, &f.broker, handler));
    let settled = eventually(WITHIN, || {
        let s = service.clone();
        async move {
            s.get_document_as::<u64>("docs", "a").await.unwrap() == Some(3)
                && s.get_document_as::<u64>("docs", "c").await.unwrap() == Some(2)
        }
    })
    .await;
    let letters = service.dead_letters().list(Some(&group), 10).await.unwrap();
    running.stop().await;
    assert!(settled, "the other messages of the unit are handled");
    assert_eq!(
        service.get_document_as::<u64>("docs", "b").await.unwrap(),
        Some(1),
        "b's first message is handled, the refused write is not"
    );
    assert_eq!(
        letters.len(),
        1,
        "only the message that wrote it: {letters:?}"
    );
    assert_eq!(letters[0].key, "b");
    assert!(
        letters[0].reason.contains(reason),
        "the reason says why: {}",
        letters[0].reason
    );
}

pub async fn pruning_a_groups_inbox_leaves_other_groups_entries(f: &MessagingFixture) {
    let db = (f.new_database)().await;
    let (pruned, other) = (fresh_group(), fresh_group());
    let id = EventId::new();
    let (p, o) = (pruned.clone(), other.clone());
    db.transact_consumer(origin(), move |tx| {
        Box::pin(async move {
            tx.inbox_insert(&p, &InboxEntry::undecodable(id)).await?;
            tx.inbox_insert(&o, &InboxEntry::undecodable(id)).await
        })
    })
    .await
    .unwrap();
    let recent = db
        .handled_since(chrono::Utc::now() - chrono::Duration::minutes(1))
        .await
        .unwrap()
        .expect("every backend counts its inbox");
    for group in [&pruned, &other] {
        assert_eq!(
            recent.iter().find(|(g, _)| g == group).map(|(_, n)| *n),
            Some(1),
            "{recent:?}"
        );
    }
    let later = db
        .handled_since(chrono::Utc::now() + chrono::Duration::seconds(5))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !later.iter().any(|(g, _)| g == &pruned),
        "nothing was handled in the future: {later:?}"
    );
    let cutoff = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(db.prune_inbox(&pruned, cutoff).await.unwrap(), 1);
    let (p, o) = (pruned.clone(), other.clone());
    let kept = db
        .transact_consumer(origin(), move |tx| {
            Box::pin(async move {
                Ok::<_, Error>((
                    tx.inbox_contains(&p, &id).await?,
                    tx.inbox_contains(&o, &id).await?,
                ))
            })
        })
        .await
        .unwrap();
    assert_eq!(
        kept,
        (false, true),
        "a group's retention only ever removes its own entries"
    );
}

pub async fn batched_inbox_and_dead_letter_lookups_agree_with_single_ones(f: &MessagingFixture) {
    let db = (f.new_database)().await;
    let group = fresh_group();
    let ids: Vec<EventId> = (0..5).map(|_| EventId::new()).collect();
    let (g, recorded) = (
        group.clone(),
        ids[..3]
            .iter()
            .map(|id| InboxEntry::undecodable(*id))
            .collect::<Vec<_>>(),
    );
    db.transact_consumer(origin(), move |tx| {
        Box::pin(async move {
            tx.inbox_insert_all(&g, &recorded).await?;
            assert!(
                tx.inbox_insert_all(&g, &[]).await.is_ok(),
                "nothing to record"
            );
            let again = tx.inbox_insert_all(&g, &recorded[..1]).await;
            assert!(
                matches!(again, Err(Error::InvalidInput { .. })),
                "recording a message twice is refused: {again:?}"
            );
            Ok::<_, Error>(())
        })
    })
    .await
    .unwrap();
    let (g, all) = (group.clone(), ids.clone());
    let (seen, single) = db
        .transact_consumer(origin(), move |tx| {
            Box::pin(async move {
                let seen = tx.inbox_seen(&g, &all).await?;
                let mut single = Vec::new();
                for id in &all {
                    single.push(tx.inbox_contains(&g, id).await?);
                }
                Ok::<_, Error>((seen, single))
            })
        })
        .await
        .unwrap();
    assert_eq!(seen, ids[..3].iter().copied().collect());
    assert_eq!(single, [true, true, true, false, false]);

    let g = group.clone();
    let (blockers, first) = db
        .transact_consumer(origin(), move |tx| {
            Box::pin(async move {
                let letter = |key: &str, offset: u64| tributary_core::NewDeadLetter {
                    group: g.clone(),
                    topic: Topic::new("t").unwrap(),
                    partition: tributary_core::Partition::new(0),
                    offset: tributary_core::Offset::new(offset),
                    message_id: None,
                    key: key.into(),
                    event_type: None,
                    payload: b"{}".to_vec(),
                    reason: "test".into(),
                    attempts: 1,
                    first_failed_at: chrono::Utc::now(),
                    parked_behind: None,
                };
                let first = tx.insert_dead_letter(letter("k1", 1)).await?;
                tx.insert_dead_letter(letter("k1", 2)).await?;
                let skipped = tx.insert_dead_letter(letter("k2", 3)).await?;
                tx.resolve_dead_letter(skipped, tributary_core::Resolution::Skipped)
                    .await?;
                let blockers = tx.blocking_dead_letters(&g, &["k1", "k2", "k3"]).await?;
                assert_eq!(tx.blocking_dead_letter(&g, "k1").await?, Some(first));
                Ok::<_, Error>((blockers, first))
            })
        })
        .await
        .unwrap();
    assert_eq!(
        blockers,
        [("k1".to_owned(), first)].into_iter().collect(),
        "the oldest unresolved letter of each key that has one"
    );
}

/// Runs `command` on the account `id` through `repository`, in a unit of its own.
async fn execute(
    db: &Arc<dyn Database>,
    repository: &Repository<Account>,
    id: &str,
    command: AccountCommand,
) -> Result<tributary_core::Executed<Account>, CommandError<AccountError>> {
    let (repository, id) = (repository.clone(), id.to_owned());
    db.transact(move |unit| {
        Box::pin(async move {
            repository
                .execute(unit, &id, command, &Metadata::default())
                .await
        })
    })
    .await
}

pub async fn repository_upcasts_old_events_on_read(f: &MessagingFixture) {
    // Version 1 of `Deposited` had {"cents": n}; version 2 renamed it to {"amount": n}.
    let db = (f.new_database)().await;
    let store = db.event_store();
    let id = EventId::new().to_string();
    let s = StreamId::for_aggregate("Account", &id).unwrap();
    let opened = Envelope::new("legacy", "Opened", Payload::null()).with_subject(&id);
    let old = Envelope::new(
        "legacy",
        "Deposited",
        Payload::from_value(&json!({"cents": 700})).unwrap(),
    )
    .with_subject(&id);
    store
        .append(&s, ExpectedVersion::NoStream, vec![opened, old])
        .await
        .unwrap();
    let upcasters = Upcasters::new().register("Deposited", 1, |e| {
        let cents = e.data["cents"].take();
        e.data = json!({ "amount": cents });
        Ok(())
    });
    let plain = Repository::<Account>::new(store.clone(), "test");
    assert!(
        matches!(plain.load(&id).await, Err(Error::Decode { .. })),
        "without the upcaster the old shape does not decode"
    );
    let repo = Repository::<Account>::new(store.clone(), "test").with_upcasters(upcasters);
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(loaded.state.balance, 700);
    let done = execute(&db, &repo, &id, AccountCommand::Deposit(5))
        .await
        .unwrap();
    assert_eq!(done.state.balance, 705);
    assert_eq!(
        done.events[0].schema_version, 2,
        "new events are written in the latest shape"
    );
    let stored = store
        .read_stream(&s, StreamVersion::new(2), 10)
        .await
        .unwrap();
    assert_eq!(
        stored[0].envelope.schema_version, 1,
        "stored events are never rewritten"
    );
}

pub async fn repository_snapshots_every_n_events_and_loads_from_them(f: &MessagingFixture) {
    let db = (f.new_database)().await;
    let store = db.event_store();
    let id = EventId::new().to_string();
    let s = StreamId::for_aggregate("Account", &id).unwrap();
    let repo = Repository::<Account>::new(store.clone(), "test").with_snapshots_every(3);
    execute(&db, &repo, &id, AccountCommand::Open)
        .await
        .unwrap();
    for _ in 0..7 {
        execute(&db, &repo, &id, AccountCommand::Deposit(10))
            .await
            .unwrap();
    }
    let snapshot = store
        .load_snapshot(&s)
        .await
        .unwrap()
        .expect("a snapshot was saved");
    assert_eq!(snapshot.version, StreamVersion::new(6));
    let from_snapshot = repo.load(&id).await.unwrap();
    let replayed = Repository::<Account>::new(store.clone(), "test")
        .load(&id)
        .await
        .unwrap();
    assert_eq!(from_snapshot.state, replayed.state);
    assert_eq!(from_snapshot.version, StreamVersion::new(8));
    assert_eq!(from_snapshot.state.balance, 70);

    // The snapshot is what loading uses: a doctored snapshot shows through.
    let mut doctored = snapshot.state.decode::<Account>().unwrap();
    doctored.deposits = 1000;
    store
        .save_snapshot(
            &s,
            Snapshot {
                version: snapshot.version,
                state: Payload::from_value(&doctored).unwrap(),
            },
        )
        .await
        .unwrap();
    assert_eq!(repo.load(&id).await.unwrap().state.deposits, 1002);

    // An undecodable snapshot is ignored, not fatal: the state is replayed.
    store
        .save_snapshot(
            &s,
            Snapshot {
                version: StreamVersion::new(6),
                state: Payload::from_json_str("[1,2]").unwrap(),
            },
        )
        .await
        .unwrap();
    assert_eq!(repo.load(&id).await.unwrap().state, replayed.state);
}

pub async fn repository_retries_conflicts_and_stays_consistent(f: &MessagingFixture) {
    let db = (f.new_database)().await;
    let store = db.event_store();
    let id = EventId::new().to_string();
    let repo = Repository::<Account>::new(store.clone(), "test").with_max_attempts(50);
    execute(&db, &repo, &id, AccountCommand::Open)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (db, repo, id) = (db.clone(), repo.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                execute(&db, &repo, &id, AccountCommand::Deposit(1))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(loaded.state.balance, 40);
    assert_eq!(loaded.version, StreamVersion::new(41));
    // A domain rejection is not retried and writes nothing.
    let err = execute(&db, &repo, &id, AccountCommand::Withdraw(41))
        .await
        .unwrap_err();
    assert!(matches!(err, tributary_core::CommandError::Rejected(_)));
    assert_eq!(
        repo.load(&id).await.unwrap().version,
        StreamVersion::new(41)
    );
}

/// Publishes one numbered event per key on `topic` in one unit and returns the unit's token.
async fn publish_with_token(
    db: &Arc<dyn Database>,
    topic: &Topic,
    keys: &[&str],
    seq: u64,
) -> ConsistencyToken {
    let (t, keys): (Topic, Vec<String>) = (
        topic.clone(),
        keys.iter().map(|k| (*k).to_owned()).collect(),
    );
    db.transact(move |unit| {
        Box::pin(async move {
            for k in &keys {
                unit.publish(&t, numbered(k, seq)).await?;
            }
            Ok::<_, Error>(unit.written())
        })
    })
    .await
    .expect("publish")
}

/// A ledger handler that holds back (retries, without counting it as an attempt) every
/// message of `held` while `hold` is set.
fn holding_ledger(hold: Arc<AtomicBool>, held: &'static str) -> Arc<dyn Handler> {
    let inner = ledger_handler();
    handler_fn(move |e, unit| {
        let (inner, hold) = (inner.clone(), hold.clone());
        Box::pin(async move {
            if hold.load(Ordering::SeqCst) && e.subject.as_deref() == Some(held) {
                return Err(HandlerError::transient("held back by the test"));
            }
            inner.handle(e, unit).await
        })
    })
}

pub async fn a_consistency_token_is_satisfied_only_after_every_write_it_names_is_applied(
    f: &MessagingFixture,
) {
    let (producer, view_db) = ((f.new_database)().await, (f.new_database)().await);
    let (first, second) = (fresh_topic(), fresh_topic());
    f.broker.ensure_topic(&first, 8).await.unwrap();
    f.broker.ensure_topic(&second, 8).await.unwrap();
    let hold = Arc::new(AtomicBool::new(true));
    let consumer = Consumer::new(
        fresh_group(),
        vec![first.clone(), second.clone()],
        view_db.clone(),
        f.broker.clone(),
        holding_ledger(hold.clone(), "held"),
        fast_config(),
    )
    .expect("valid consumer");
    let view = consumer.view();
    let mut running = Running::new();
    running.relay(&producer, &f.broker);
    running.consumer(consumer);
    // Writes over both topics and many keys (so many partitions), one of them held back; no
    // more than a token holds (2 × 16 = MAX_ENTRIES). With more, the token keeps the latest
    // writes only, and the assertions below would ask of the view what the token never named:
    // with 24 keys, 1 run in ~20 under load read a dropped write before it was applied.
    let keys: Vec<String> = (0..16).map(|i| format!("k{i}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let flowing = publish_with_token(&producer, &first, &key_refs, 1)
        .await
        .merge(&publish_with_token(&producer, &second, &key_refs, 1).await);
    assert_eq!(flowing.entries().len(), 2 * keys.len());
    assert!(!flowing.is_truncated(), "the token names every write");
    view.wait_for(&flowing, WITHIN)
        .await
        .expect("the writes of flowing keys are applied");
    for k in &keys {
        assert_eq!(
            ledger(&view_db, k).await.applied,
            2,
            "both topics applied for {k}"
        );
    }
    let others = publish_with_token(&producer, &second, &["k1", "k2"], 2).await;
    let with_held = others
        .clone()
        .merge(&publish_with_token(&producer, &second, &["held"], 2).await);
    assert_eq!(with_held.entries().len(), 3);
    // The other writes are awaited first: the short wait below is to end with only the held
    // write pending, however long the others took to flow on a loaded machine.
    view.wait_for(&others, WITHIN)
        .await
        .expect("the writes that are not held back are applied");
    let err = view
        .wait_for(&with_held, Duration::from_millis(300))
        .await
        .expect_err("one write is held back");
    let pending = match err {
        WaitError::Timeout { pending, .. } => pending,
        other => panic!("a timeout, not {other:?}"),
    };
    assert_eq!(
        pending.len(),
        1,
        "only the held-back write is pending: {pending:?}"
    );
    assert_eq!(pending[0].reason, PendingReason::NotYet);
    assert_eq!(
        ledger(&view_db, "k1").await.last_seq,
        2,
        "the other writes of the token are applied"
    );
    hold.store(false, Ordering::SeqCst);
    view.wait_for(&with_held, WITHIN)
        .await
        .expect("applied once released");
    assert_eq!(ledger(&view_db, "held").await.last_seq, 2);
    // A token for topics the view does not read asks nothing of it.
    let elsewhere = publish_with_token(&producer, &fresh_topic(), &["x"], 1).await;
    assert!(view.concerned(&elsewhere).is_empty());
    view.wait_for(&elsewhere, Duration::ZERO)
        .await
        .expect("nothing to wait for");
    running.stop().await;
}

pub async fn consistency_tokens_survive_a_restart_of_the_view(f: &MessagingFixture) {
    let (producer, view_db) = ((f.new_database)().await, (f.new_database)().await);
    let topic = fresh_topic();
    f.broker.ensure_topic(&topic, 4).await.unwrap();
    let group = fresh_group();
    let token = publish_with_token(&producer, &topic, &["a", "b"], 1).await;
    let mut relay = Running::new();
    relay.relay(&producer, &f.broker);
    let first = consumer(&group, &topic, &view_db, &f.broker, ledger_handler());
    let view = first.view();
    let mut running = Running::new();
    running.consumer(first);
    view.wait_for(&token, WITHIN).await.expect("applied");
    running.stop().await;
    // A new process's view of the same group answers from the durable inbox at once.
    let again = consumer(&group, &topic, &view_db, &f.broker, ledger_handler()).view();
    assert!(again.pending(&token).await.unwrap().is_empty());
    // Written while the view is down: pending until it runs again.
    let later = publish_with_token(&producer, &topic, &["a"], 2).await;
    assert!(
        matches!(
            again.wait_for(&later, Duration::from_millis(200)).await,
            Err(WaitError::Timeout { .. })
        ),
        "nothing applies it while the view is stopped"
    );
    let mut running = Running::new();
    running.consumer(consumer(
        &group,
        &topic,
        &view_db,
        &f.broker,
        ledger_handler(),
    ));
    again
        .wait_for(&later, WITHIN)
        .await
        .expect("applied after the restart");
    running.stop().await;
    relay.stop().await;
}

pub async fn a_token_waits_for_the_follow_ups_of_its_writes_in_another_service(
    f: &MessagingFixture,
) {
    let (orders, credit, view_db) = (
        (f.new_database)().await,
        (f.new_database)().await,
        (f.new_database)().await,
    );
    let (order_topic, decisions) = (fresh_topic(), fresh_topic());
    f.broker.ensure_topic(&order_topic, 2).await.unwrap();
    f.broker.ensure_topic(&decisions, 2).await.unwrap();
    let hold = Arc::new(AtomicBool::new(true));
    // The "credit service" decides on each order, caused by it, when it is not held back.
    let out = decisions.clone();
    let h = hold.clone();
    let decide = handler_fn(move |e, unit| {
        let (out, h) = (out.clone(), h.clone());
        Box::pin(async move {
            if h.load(Ordering::SeqCst) {
                return Err(HandlerError::transient("held back by the test"));
            }
            let decision = Envelope::new("credit-service", "Decided", e.data.clone())
                .with_subject(e.subject.clone().unwrap_or_default())
                .caused_by(e);
            unit.publish(&out, decision).await?;
            Ok(())
        })
    });
    let view = Consumer::new(
        fresh_group(),
        vec![order_topic.clone(), decisions.clone()],
        view_db.clone(),
        f.broker.clone(),
        Arc::new(Dispatch::new().ignore(&["Numbered", "Decided"])),
        fast_config(),
    )
    .expect("view");
    let waiter = view.view();
    let mut running = Running::new();
    running.relay(&orders, &f.broker);
    running.relay(&credit, &f.broker);
    running.consumer(consumer(
        &fresh_group(),
        &order_topic,
        &credit,
        &f.broker,
        decide,
    ));
    running.consumer(view);
    let created = publish_with_token(&orders, &order_topic, &["o-1"], 1).await;
    let with_decision = created.clone().and_follow_ups(&decisions, "credit-service");
    waiter
        .wait_for(&created, WITHIN)
        .await
        .expect("the order itself is applied");
    assert!(
        matches!(
            waiter
                .wait_for(&with_decision, Duration::from_millis(300))
                .await,
            Err(WaitError::Timeout { .. })
        ),
        "the decision has not been made yet"
    );
    hold.store(false, Ordering::SeqCst);
    waiter
        .wait_for(&with_decision, WITHIN)
        .await
        .expect("the decision reached the view");
    // A decision from another service of the same correlation does not count.
    let other_source = created.and_follow_ups(&decisions, "billing-service");
    assert!(!waiter.pending(&other_source).await.unwrap().is_empty());
    running.stop().await;
}

/// Appends `Numbered` events with `seq` to the streams `v-<key>` in one unit; returns its token.
async fn append_with_token(db: &Arc<dyn Database>, keys: &[&str], seq: u64) -> ConsistencyToken {
    let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    db.transact(move |unit| {
        Box::pin(async move {
            for k in &keys {
                let stream = StreamId::new(format!("v-{k}")).expect("stream id");
                unit.append(&stream, ExpectedVersion::Any, vec![numbered(k, seq)])
                    .await?;
            }
            Ok::<_, Error>(unit.written())
        })
    })
    .await
    .expect("append")
}

pub async fn a_projectors_view_waits_for_the_events_a_unit_appended(f: &MessagingFixture) {
    let db = (f.new_database)().await;
    let name = format!("p{}", EventId::new().as_uuid().simple());
    let projector = Projector::new(
        name,
        db.clone(),
        ledger_projection(),
        ProjectorConfig::default(),
    );
    let projection = projector.view();
    let first = append_with_token(&db, &["a", "b"], 1).await;

    // Not running yet: both appends are pending, and the wait ends at its bound.
    let pending = match projection
        .wait_for(&first, Duration::from_millis(200))
        .await
    {
        Err(WaitError::Timeout { pending, .. }) => pending,
        other => panic!("expected a timeout, got {other:?}"),
    };
    assert_eq!(pending.len(), 2, "{pending:?}");
    // A write this store does not hold (published elsewhere) is not the projector's concern.
    let elsewhere = publish_with_token(&(f.new_database)().await, &fresh_topic(), &["x"], 1).await;
    projection
        .wait_for(&elsewhere, Duration::ZERO)
        .await
        .expect("not the projector's concern");

    let shutdown = CancellationToken::new();
    let task = tokio::spawn(projector.run(shutdown.clone()));
    projection.wait_for(&first, WITHIN).await.expect("applied");
    assert_eq!(view(&db, "a").await.last_seq, 1);
    // Read your writes while it runs: once the wait returns, the view shows the write.
    for seq in 2..=20 {
        let token = append_with_token(&db, &["a", "b"], seq).await;
        projection.wait_for(&token, WITHIN).await.expect("applied");
        assert_eq!(view(&db, "b").await.last_seq, seq, "seq {seq}");
    }
    shutdown.cancel();
    task.await.expect("projector task").expect("projector");
}
