//! The event-store conformance suite. Every [`EventStore`] implementation runs it through
//! [`event_store_conformance!`](crate::event_store_conformance).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tributary_core::{
    DEFAULT_MAX_EVENT_BYTES, Envelope, Error, EventId, EventStore, ExpectedVersion, Payload,
    Position, StreamId, StreamVersion,
};

/// A store under test and whatever keeps it alive (a temporary directory, a schema).
pub struct Fixture {
    pub store: Arc<dyn EventStore>,
    pub guard: Box<dyn std::any::Any + Send + Sync>,
}

impl Fixture {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            guard: Box::new(()),
        }
    }

    pub fn with_guard(store: Arc<dyn EventStore>, guard: impl std::any::Any + Send + Sync) -> Self {
        Self {
            store,
            guard: Box::new(guard),
        }
    }
}

/// Generates one `#[tokio::test]` per check for the store made by `$make` (an async fn
/// returning `Some(`[`Fixture`]`)` with a fresh, empty store, or `None` when its server is
/// unavailable and the suite is skipped — see [`crate::servers`]).
#[macro_export]
macro_rules! event_store_conformance {
    ($make:path) => {
        $crate::event_store_conformance!(@tests $make;
            append_then_read_stream_returns_events_in_version_order,
            append_rejects_stale_expected_version,
            no_stream_expectation_rejects_an_existing_stream,
            concurrent_writers_on_one_stream_win_exactly_once_per_version,
            reappending_the_same_events_is_idempotent,
            reusing_an_event_id_for_another_event_is_rejected,
            read_ranges_respect_from_and_max,
            read_all_keeps_global_commit_order_across_streams,
            catch_up_subscription_switches_to_live_without_gap_or_duplicate,
            subscription_from_a_middle_position_starts_there,
            oversized_and_empty_appends_change_nothing,
            payloads_and_metadata_round_trip_exactly,
        );
    };
    (@tests $make:path; $($check:ident),* $(,)?) => {
        $(
            #[$crate::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let Some(fixture) = $make().await else { return };
                $crate::event_store::$check(fixture.store.clone()).await;
                drop(fixture);
            }
        )*
    };
}

fn stream(name: &str) -> StreamId {
    StreamId::new(format!("{name}-{}", EventId::new())).expect("valid stream id")
}

fn event(n: u64) -> Envelope {
    Envelope::new(
        "conformance",
        "Numbered",
        Payload::from_value(&json!({ "n": n })).expect("json"),
    )
}

fn n_of(e: &Envelope) -> u64 {
    e.data.to_value()["n"].as_u64().expect("numbered event")
}

pub async fn append_then_read_stream_returns_events_in_version_order(store: Arc<dyn EventStore>) {
    let s = stream("order");
    let out = store
        .append(&s, ExpectedVersion::NoStream, (1..=3).map(event).collect())
        .await
        .expect("first append");
    assert_eq!(out.first_version, StreamVersion::new(1));
    assert_eq!(out.next_expected, StreamVersion::new(3));
    assert!(!out.deduplicated);
    let out = store
        .append(
            &s,
            ExpectedVersion::Exact(StreamVersion::new(3)),
            vec![event(4)],
        )
        .await
        .expect("second append");
    assert_eq!(out.next_expected, StreamVersion::new(4));
    let read = store
        .read_stream(&s, StreamVersion::new(1), 100)
        .await
        .unwrap();
    assert_eq!(read.len(), 4);
    for (i, r) in read.iter().enumerate() {
        assert_eq!(r.version, StreamVersion::new(i as u64 + 1));
        assert_eq!(r.envelope.sequence, Some(r.version));
        assert_eq!(r.stream, s);
        assert_eq!(n_of(&r.envelope), i as u64 + 1);
    }
    assert_eq!(read[3].position, out.last_position);
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        StreamVersion::new(4)
    );
    assert_eq!(
        store.stream_version(&stream("absent")).await.unwrap(),
        StreamVersion::NONE
    );
    assert!(
        store
            .read_stream(&stream("absent"), StreamVersion::new(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn append_rejects_stale_expected_version(store: Arc<dyn EventStore>) {
    let s = stream("order");
    store
        .append(&s, ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .unwrap();
    let err = store
        .append(
            &s,
            ExpectedVersion::Exact(StreamVersion::new(1)),
            vec![event(3)],
        )
        .await
        .expect_err("stale version must conflict");
    match err {
        Error::Conflict {
            stream: cs,
            expected,
            actual,
        } => {
            assert_eq!(cs, s);
            assert_eq!(expected, ExpectedVersion::Exact(StreamVersion::new(1)));
            assert_eq!(actual, StreamVersion::new(2));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(err_is_retryable_conflict(&store, &s).await);
    // An expectation no stream can meet is a conflict too, never "any version".
    let err = store
        .append(
            &s,
            ExpectedVersion::Exact(StreamVersion::new(u64::MAX)),
            vec![event(3)],
        )
        .await
        .expect_err("an impossible version must conflict");
    assert!(matches!(err, Error::Conflict { .. }), "got {err:?}");
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        StreamVersion::new(2)
    );
    // Exact(0) on an absent stream is the same as NoStream.
    let fresh = stream("fresh");
    store
        .append(
            &fresh,
            ExpectedVersion::Exact(StreamVersion::NONE),
            vec![event(1)],
        )
        .await
        .unwrap();
}

async fn err_is_retryable_conflict(store: &Arc<dyn EventStore>, s: &StreamId) -> bool {
    store
        .append(
            s,
            ExpectedVersion::Exact(StreamVersion::new(99)),
            vec![event(0)],
        )
        .await
        .err()
        .is_some_and(|e| matches!(e, Error::Conflict { .. }) && e.is_retryable())
}

pub async fn no_stream_expectation_rejects_an_existing_stream(store: Arc<dyn EventStore>) {
    let s = stream("customer");
    store
        .append(&s, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    let err = store
        .append(&s, ExpectedVersion::NoStream, vec![event(2)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { actual, .. } if actual == StreamVersion::new(1)));
    store
        .append(&s, ExpectedVersion::Any, vec![event(2)])
        .await
        .unwrap();
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        StreamVersion::new(2)
    );
}

pub async fn concurrent_writers_on_one_stream_win_exactly_once_per_version(
    store: Arc<dyn EventStore>,
) {
    const WRITERS: u64 = 16;
    const ROUNDS: u64 = 12;
    let s = stream("race");
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            let mut conflicts = 0u64;
            for round in 0..ROUNDS {
                let v = store.stream_version(&s).await.unwrap();
                let expected = if v == StreamVersion::NONE {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(v)
                };
                match store
                    .append(&s, expected, vec![event(w * 1000 + round)])
                    .await
                {
                    Ok(out) => {
                        assert_eq!(out.next_expected, v.next());
                        wins.push((out.next_expected, w * 1000 + round));
                    }
                    Err(Error::Conflict { actual, .. }) => {
                        assert!(actual > v, "a conflict must report a newer version");
                        conflicts += 1;
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            (wins, conflicts)
        }));
    }
    let mut wins = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (w, c) = t.await.unwrap();
        wins.extend(w);
        conflicts += c;
    }
    let stored = store
        .read_stream(&s, StreamVersion::new(1), 10_000)
        .await
        .unwrap();
    assert_eq!(
        wins.len(),
        stored.len(),
        "every success is stored, nothing else"
    );
    assert_eq!(wins.len() as u64 + conflicts, WRITERS * ROUNDS);
    wins.sort();
    for (i, (version, n)) in wins.iter().enumerate() {
        assert_eq!(
            version.get(),
            i as u64 + 1,
            "exactly one winner per version"
        );
        assert_eq!(
            n_of(&stored[i].envelope),
            *n,
            "the winner's event is at its version"
        );
    }
}

pub async fn reappending_the_same_events_is_idempotent(store: Arc<dyn EventStore>) {
    let s = stream("idem");
    let batch: Vec<_> = (1..=3).map(event).collect();
    let first = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    // The reply was "lost": the caller retries the very same batch with the same expectation.
    let again = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.first_version, first.first_version);
    assert_eq!(again.next_expected, first.next_expected);
    assert_eq!(again.last_position, first.last_position);
    assert_eq!(
        store
            .read_stream(&s, StreamVersion::new(1), 100)
            .await
            .unwrap()
            .len(),
        3
    );
    let all = store.read_all(Position::START, 100_000).await.unwrap();
    assert_eq!(all.iter().filter(|r| r.stream == s).count(), 3);
    // A later retry, after others appended, is still recognised.
    store
        .append(&s, ExpectedVersion::Any, vec![event(4)])
        .await
        .unwrap();
    assert!(
        store
            .append(&s, ExpectedVersion::NoStream, batch)
            .await
            .unwrap()
            .deduplicated
    );
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        StreamVersion::new(4)
    );
}

pub async fn reusing_an_event_id_for_another_event_is_rejected(store: Arc<dyn EventStore>) {
    let s = stream("reuse");
    let e1 = event(1);
    store
        .append(&s, ExpectedVersion::NoStream, vec![e1.clone()])
        .await
        .unwrap();
    // The same id in another stream.
    let other = stream("other");
    let err = store
        .append(&other, ExpectedVersion::Any, vec![e1.clone()])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "got {err:?}");
    // A stored id followed by a new one.
    let err = store
        .append(&s, ExpectedVersion::Any, vec![e1.clone(), event(2)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "got {err:?}");
    // A new id followed by a stored one: all or nothing.
    let err = store
        .append(&s, ExpectedVersion::Any, vec![event(3), e1.clone()])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "got {err:?}");
    // The same id twice in one batch.
    let dup = event(5);
    let err = store
        .append(&other, ExpectedVersion::Any, vec![dup.clone(), dup])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "got {err:?}");
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        StreamVersion::new(1)
    );
    assert_eq!(
        store.stream_version(&other).await.unwrap(),
        StreamVersion::NONE
    );
}

pub async fn read_ranges_respect_from_and_max(store: Arc<dyn EventStore>) {
    let s = stream("range");
    store
        .append(&s, ExpectedVersion::NoStream, (1..=10).map(event).collect())
        .await
        .unwrap();
    let mid = store
        .read_stream(&s, StreamVersion::new(4), 3)
        .await
        .unwrap();
    assert_eq!(
        mid.iter().map(|r| r.version.get()).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert!(
        store
            .read_stream(&s, StreamVersion::new(11), 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .read_stream(&s, StreamVersion::new(1), 0)
            .await
            .unwrap()
            .is_empty()
    );
    // Version 0 reads from the start.
    assert_eq!(
        store
            .read_stream(&s, StreamVersion::NONE, 100)
            .await
            .unwrap()
            .len(),
        10
    );

    let all = store.read_all(Position::START, 1_000_000).await.unwrap();
    let mine: Vec<_> = all.iter().filter(|r| r.stream == s).collect();
    assert_eq!(mine.len(), 10);
    let third = mine[2].position;
    let from_third = store.read_all(third, 2).await.unwrap();
    assert_eq!(from_third.len(), 2);
    assert_eq!(from_third[0].position, third);
    assert!(from_third[1].position > third);
    let last = all.last().unwrap().position;
    assert!(store.read_all(last.next(), 10).await.unwrap().is_empty());
}

pub async fn read_all_keeps_global_commit_order_across_streams(store: Arc<dyn EventStore>) {
    let streams: Vec<_> = (0..4).map(|i| stream(&format!("g{i}"))).collect();
    let mut appended = Vec::new();
    for round in 0..5u64 {
        for (i, s) in streams.iter().enumerate() {
            let e = event(round * 10 + i as u64);
            appended.push(e.id);
            store
                .append(s, ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
        }
    }
    let all = store.read_all(Position::START, 1_000_000).await.unwrap();
    let ids: Vec<_> = all
        .iter()
        .filter(|r| streams.contains(&r.stream))
        .map(|r| r.envelope.id)
        .collect();
    assert_eq!(
        ids, appended,
        "read_all returns events in the order they committed"
    );
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
}

pub async fn catch_up_subscription_switches_to_live_without_gap_or_duplicate(
    store: Arc<dyn EventStore>,
) {
    const HISTORY: u64 = 600;
    const LIVE_WRITERS: u64 = 4;
    const LIVE_EACH: u64 = 150;
    let start = store
        .read_all(Position::START, usize::MAX)
        .await
        .unwrap()
        .last()
        .map_or(Position::START, |r| r.position.next());
    let s = stream("history");
    for chunk in (0..HISTORY).collect::<Vec<_>>().chunks(50) {
        store
            .append(
                &s,
                ExpectedVersion::Any,
                chunk.iter().map(|&n| event(n)).collect(),
            )
            .await
            .unwrap();
    }
    let mut sub = store.subscribe_all(start);
    // Live appends race with the subscription's catch-up.
    let mut writers = Vec::new();
    for w in 0..LIVE_WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let s = stream(&format!("live{w}"));
            for i in 0..LIVE_EACH {
                store
                    .append(
                        &s,
                        ExpectedVersion::Any,
                        vec![event(HISTORY + w * LIVE_EACH + i)],
                    )
                    .await
                    .unwrap();
                if i % 25 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }));
    }
    let total = HISTORY + LIVE_WRITERS * LIVE_EACH;
    let mut seen = HashSet::new();
    let mut last = None;
    while (seen.len() as u64) < total {
        let next = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("the subscription must deliver every event promptly")
            .expect("the subscription does not end")
            .expect("no error");
        if let Some(prev) = last {
            assert!(
                next.position > prev,
                "positions strictly increase: no duplicate, no reorder"
            );
        }
        last = Some(next.position);
        assert!(seen.insert(n_of(&next.envelope)), "event delivered twice");
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(seen, (0..total).collect::<HashSet<_>>(), "no gap");
    // Nothing more arrives.
    let extra = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(extra.is_err(), "no event after the last one");
}

pub async fn subscription_from_a_middle_position_starts_there(store: Arc<dyn EventStore>) {
    let s = stream("mid");
    store
        .append(&s, ExpectedVersion::NoStream, (1..=5).map(event).collect())
        .await
        .unwrap();
    let all = store.read_all(Position::START, usize::MAX).await.unwrap();
    let mine: Vec<_> = all.into_iter().filter(|r| r.stream == s).collect();
    let mut sub = store.subscribe_all(mine[3].position);
    let first = sub.next().await.unwrap().unwrap();
    assert_eq!(first.envelope.id, mine[3].envelope.id);
    let second = sub.next().await.unwrap().unwrap();
    assert_eq!(second.envelope.id, mine[4].envelope.id);
}

pub async fn oversized_and_empty_appends_change_nothing(store: Arc<dyn EventStore>) {
    let s = stream("limits");
    let big = "x".repeat(DEFAULT_MAX_EVENT_BYTES);
    let too_big = Envelope::new(
        "conformance",
        "Big",
        Payload::from_value(&json!({ "blob": big })).unwrap(),
    );
    let err = store
        .append(&s, ExpectedVersion::Any, vec![event(1), too_big])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit, .. } if limit == DEFAULT_MAX_EVENT_BYTES),
        "got {err:?}"
    );
    let err = store
        .append(&s, ExpectedVersion::Any, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "got {err:?}");
    assert_eq!(store.stream_version(&s).await.unwrap(), StreamVersion::NONE);
    // Just under the limit is fine.
    let fits = Envelope::new(
        "conformance",
        "Big",
        Payload::from_value(&"y".repeat(DEFAULT_MAX_EVENT_BYTES / 2)).unwrap(),
    );
    store
        .append(&s, ExpectedVersion::Any, vec![fits])
        .await
        .unwrap();
}

pub async fn payloads_and_metadata_round_trip_exactly(store: Arc<dyn EventStore>) {
    let s = stream("meta");
    let cause = event(0);
    let mut e = Envelope::new(
        "svc-a",
        "Detailed",
        Payload::from_json_str(
            r#"{ "unicode": "žluťoučký 🐎", "nested": {"a": [1, 2.5, null, true]} }"#,
        )
        .unwrap(),
    )
    .with_subject("subject-1")
    .with_aggregate_type("Thing")
    .with_partition_key("pk-1")
    .with_schema_version(3)
    .caused_by(&cause);
    e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    store
        .append(&s, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .unwrap();
    let read = store
        .read_stream(&s, StreamVersion::new(1), 1)
        .await
        .unwrap()
        .remove(0);
    let mut expected = e;
    expected.sequence = Some(StreamVersion::new(1));
    // Stores may keep time at a coarser resolution than nanoseconds, never coarser than µs.
    assert!(
        (read.envelope.time - expected.time)
            .num_microseconds()
            .unwrap()
            .abs()
            < 1
    );
    let mut got = read.envelope;
    got.time = expected.time;
    assert_eq!(got, expected);
}
