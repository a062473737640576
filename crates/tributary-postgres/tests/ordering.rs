//! The ordering test every PostgreSQL relay must pass.
//!
//! 64 concurrent writers insert rows (an event and an outbox row each, as an application
//! using sqlx directly would), wait a random time before committing — some for seconds —
//! and sometimes roll back. Readers poll all the while. Every reader must deliver every
//! committed row exactly once, in `(tx_id, row)` order, and no rolled-back row.
//!
//! The run is made to catch the classic relay bug every time: before the other writers
//! start, a straggler inserts a row (so it holds the smallest id and the oldest transaction)
//! and keeps its transaction open for seconds while everyone else commits. A reader that
//! remembers the last id it saw and asks for `id > last` has moved past the straggler's id
//! by the time it commits, and never delivers it. The same harness run with such a naive
//! reader (test-only code below) must report lost rows — proof the test can fail.

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;
use tributary_core::{
    Envelope, EventStore, ExpectedVersion, Payload, Position, RelaySource, StreamId, Topic,
};
use tributary_postgres::{PgDatabase, PgEventsSource, PgOutboxSource};
use uuid::Uuid;

const WRITERS: u64 = 64;
const ROUNDS: u64 = 4;
/// How long the straggler keeps its early transaction open while the others commit.
const STRAGGLER_HOLD: Duration = Duration::from_secs(3);
/// How long a "slow" writer holds a transaction, at most.
const SLOW_HOLD_MS: u64 = 2_500;

/// One run at a time: a run holds about 75 connections of the shared server.
static ONE_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A small deterministic generator, so every run makes the same plan.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Where a committed row sits in the reading order: its transaction and its place in it.
type Place = (i64, u64);

#[derive(Default)]
struct Written {
    committed: HashMap<Uuid, Place>,
    rolled_back: HashSet<Uuid>,
    max_xid: i64,
    straggler: Option<Uuid>,
}

/// What one reader delivered, judged against what the writers committed.
#[derive(Debug)]
struct Verdict {
    reader: &'static str,
    delivered: usize,
    committed: usize,
    lost: usize,
    duplicated: usize,
    phantoms: usize,
    out_of_order: usize,
}

impl Verdict {
    fn judge(reader: &'static str, delivered: &[Uuid], written: &Written) -> Self {
        let mut seen = HashSet::new();
        let (mut duplicated, mut phantoms, mut out_of_order) = (0, 0, 0);
        let mut last: Option<Place> = None;
        for id in delivered {
            if !seen.insert(*id) {
                duplicated += 1;
            }
            match written.committed.get(id) {
                Some(place) => {
                    if last.is_some_and(|l| *place < l) {
                        out_of_order += 1;
                    }
                    last = Some(*place);
                }
                None => phantoms += 1,
            }
        }
        let lost = written
            .committed
            .keys()
            .filter(|id| !seen.contains(id))
            .count();
        Self {
            reader,
            delivered: delivered.len(),
            committed: written.committed.len(),
            lost,
            duplicated,
            phantoms,
            out_of_order,
        }
    }

    fn is_perfect(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.phantoms == 0
            && self.out_of_order == 0
            && self.delivered == self.committed
    }
}

fn row(writer: u64, round: u64, k: u64) -> Envelope {
    Envelope::new(
        "ordering",
        "Row",
        Payload::from_json_str(format!(r#"{{"writer":{writer},"round":{round},"k":{k}}}"#))
            .expect("json"),
    )
    .with_subject(format!("w{writer}"))
    .with_aggregate_type("Row")
}

/// One writer transaction: insert `rows` rows (event + outbox row each), hold, then commit
/// or roll back. Records the outcome.
#[allow(clippy::too_many_arguments)]
async fn write_one(
    db: &PgDatabase,
    writers: &PgPool,
    writer: u64,
    round: u64,
    rows: u64,
    hold: HoldFor,
    rollback: bool,
    written: &Mutex<Written>,
    inserted: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let topic = Topic::new("Row").expect("topic");
    let stream = StreamId::new(format!("w{writer}")).expect("stream");
    let (outbox, store) = (db.outbox(), db.events());
    let mut tx = writers.begin().await.expect("begin");
    let mut ids = Vec::new();
    for k in 0..rows {
        let e = row(writer, round, k);
        ids.push(e.id.as_uuid());
        outbox
            .publish(&mut tx, &topic, &e)
            .await
            .expect("outbox row");
        store
            .append_in(&mut tx, &stream, ExpectedVersion::Any, vec![e])
            .await
            .expect("event");
    }
    let xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *tx)
        .await
        .expect("xid");
    if let Some(inserted) = inserted {
        written.lock().expect("lock").straggler = ids.first().copied();
        let _ = inserted.send(());
    }
    match hold {
        HoldFor::Millis(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        HoldFor::Straggler => tokio::time::sleep(STRAGGLER_HOLD).await,
    }
    if rollback {
        tx.rollback().await.expect("rollback");
        let mut w = written.lock().expect("lock");
        w.rolled_back.extend(ids);
    } else {
        tx.commit().await.expect("commit");
        let mut w = written.lock().expect("lock");
        for (k, id) in ids.into_iter().enumerate() {
            w.committed.insert(id, (xid, k as u64));
        }
        w.max_xid = w.max_xid.max(xid);
    }
}

#[derive(Clone, Copy)]
enum HoldFor {
    Millis(u64),
    Straggler,
}

/// Runs the writers; returns what they committed once every writer transaction has ended
/// and the server's transaction horizon has passed all of them (from then on, a reader that
/// reads until it finds nothing has seen everything it will ever see).
async fn run_writers(db: &PgDatabase, done: watch::Sender<bool>) -> Written {
    let writers = PgPoolOptions::new()
        .max_connections(WRITERS as u32)
        .connect(&db.config().url)
        .await
        .expect("writer pool");
    let written = Arc::new(Mutex::new(Written::default()));
    // The straggler inserts first, so it holds the smallest id and the oldest transaction.
    let (inserted, straggler_in) = tokio::sync::oneshot::channel();
    let straggler = {
        let (db, writers, written) = (db.clone(), writers.clone(), written.clone());
        tokio::spawn(async move {
            write_one(
                &db,
                &writers,
                0,
                0,
                1,
                HoldFor::Straggler,
                false,
                &written,
                Some(inserted),
            )
            .await;
        })
    };
    straggler_in.await.expect("the straggler inserted");
    let mut tasks = vec![straggler];
    for w in 0..WRITERS {
        let (db, writers, written) = (db.clone(), writers.clone(), written.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
            // Writer 0 already ran its first round as the straggler.
            let first = u64::from(w == 0);
            for round in first..ROUNDS {
                let rows = 1 + rng.below(3);
                let hold = if rng.below(100) < 6 {
                    800 + rng.below(SLOW_HOLD_MS - 800)
                } else {
                    rng.below(25)
                };
                let rollback = rng.below(100) < 12;
                write_one(
                    &db,
                    &writers,
                    w,
                    round,
                    rows,
                    HoldFor::Millis(hold),
                    rollback,
                    &written,
                    None,
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    writers.close().await;
    let max_xid = written.lock().expect("lock").max_xid;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let horizon: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(db.pool())
                .await
                .expect("horizon");
        if horizon > max_xid {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "another transaction on the server kept the horizon below the writers for a minute"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = done.send(true);
    Arc::try_unwrap(written)
        .map_err(|_| "writers still hold the record")
        .expect("writers finished")
        .into_inner()
        .expect("lock")
}

/// Polls `read` until the writers are done and a read that started after that finds nothing.
async fn poll_until_drained<F, Fut>(mut done: watch::Receiver<bool>, mut read: F) -> Vec<Uuid>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Vec<Uuid>>,
{
    let mut delivered = Vec::new();
    loop {
        // Looked at before reading: an empty read that began after the end is conclusive.
        let finished = *done.borrow_and_update();
        let batch = read().await;
        if batch.is_empty() {
            if finished {
                return delivered;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        delivered.extend(batch);
    }
}

fn ids_of(messages: &[tributary_core::OutgoingMessage]) -> Vec<Uuid> {
    messages.iter().map(|m| m.id.as_uuid()).collect()
}

async fn outbox_source_reader(source: PgOutboxSource, done: watch::Receiver<bool>) -> Vec<Uuid> {
    poll_until_drained(done, || async {
        match source.read_batch(50).await.expect("read the outbox") {
            Some(batch) => {
                source
                    .mark_published(batch.through)
                    .await
                    .expect("mark published");
                ids_of(&batch.messages)
            }
            None => Vec::new(),
        }
    })
    .await
}

async fn events_source_reader(source: PgEventsSource, done: watch::Receiver<bool>) -> Vec<Uuid> {
    poll_until_drained(done, || async {
        match source.read_batch(50).await.expect("read the events") {
            Some(batch) => {
                source
                    .mark_published(batch.through)
                    .await
                    .expect("advance the cursor");
                ids_of(&batch.messages)
            }
            None => Vec::new(),
        }
    })
    .await
}

async fn read_all_reader(db: PgDatabase, done: watch::Receiver<bool>) -> Vec<Uuid> {
    let store = db.events();
    let next = Arc::new(Mutex::new(Position::START));
    poll_until_drained(done, || {
        let (store, next) = (store.clone(), next.clone());
        async move {
            let from = *next.lock().expect("lock");
            let events = store.read_all(from, 50).await.expect("read_all");
            if let Some(last) = events.last() {
                *next.lock().expect("lock") = last.position.next();
            }
            events.iter().map(|e| e.envelope.id.as_uuid()).collect()
        }
    })
    .await
}

async fn subscription_reader(db: PgDatabase, mut done: watch::Receiver<bool>) -> Vec<Uuid> {
    let store = db.events();
    let mut sub = store.subscribe_all(Position::START);
    let mut delivered = Vec::new();
    let mut last_delivered = None;
    let mut until = None;
    loop {
        if until.is_none() && *done.borrow_and_update() {
            // The writers are done, so the store's last event is final: read on until the
            // subscription has delivered it, however far behind a loaded machine keeps it.
            until = Some(last_position(&store).await);
        }
        if let Some(last) = until
            && last_delivered >= last
        {
            return delivered;
        }
        match tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            Ok(Some(event)) => {
                let event = event.expect("subscription");
                last_delivered = Some(event.position);
                delivered.push(event.envelope.id.as_uuid());
            }
            Ok(None) => panic!("the subscription ended"),
            Err(_) => {}
        }
    }
}

/// The position of the store's last event, or `None` when it is empty.
async fn last_position(store: &tributary_postgres::PgEventStore) -> Option<Position> {
    let (mut from, mut last) = (Position::START, None);
    loop {
        let events = store.read_all(from, 10_000).await.expect("read_all");
        let Some(event) = events.last() else {
            return last;
        };
        last = Some(event.position);
        from = event.position.next();
    }
}

/// The classic bug, on purpose: remember the largest id read and ask for larger ones.
async fn naive_id_reader(db: PgDatabase, done: watch::Receiver<bool>) -> Vec<Uuid> {
    let sql = format!(
        "SELECT id, event_id FROM \"{}\".outbox WHERE id > $1 ORDER BY id LIMIT 50",
        db.schema()
    );
    let last_seen = Arc::new(Mutex::new(0i64));
    poll_until_drained(done, || {
        let (db, sql, last_seen) = (db.clone(), sql.clone(), last_seen.clone());
        async move {
            let from = *last_seen.lock().expect("lock");
            let rows: Vec<(i64, Uuid)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(from)
                .fetch_all(db.pool())
                .await
                .expect("naive read");
            if let Some((id, _)) = rows.last() {
                *last_seen.lock().expect("lock") = *id;
            }
            rows.into_iter().map(|(_, e)| e).collect()
        }
    })
    .await
}

async fn ordering_database() -> Option<(PgDatabase, common::SchemaGuard)> {
    common::database_with(
        "postgres ordering",
        common::config().with_max_connections(12),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_and_read_all_never_skip_rows_from_late_commits() {
    let _one = ONE_RUN_AT_A_TIME.lock().await;
    let Some((db, _guard)) = ordering_database().await else {
        return;
    };
    let (done, until) = watch::channel(false);
    let readers = (
        tokio::spawn(outbox_source_reader(
            PgOutboxSource::new(db.clone()),
            until.clone(),
        )),
        tokio::spawn(events_source_reader(
            PgEventsSource::new(db.clone(), "ordering", Topic::new("Row").expect("topic")),
            until.clone(),
        )),
        tokio::spawn(read_all_reader(db.clone(), until.clone())),
        tokio::spawn(subscription_reader(db.clone(), until.clone())),
    );
    let written = run_writers(&db, done).await;
    assert!(
        !written.rolled_back.is_empty(),
        "the plan rolls some transactions back"
    );
    let verdicts = [
        Verdict::judge("outbox source", &readers.0.await.expect("reader"), &written),
        Verdict::judge(
            "event-store source",
            &readers.1.await.expect("reader"),
            &written,
        ),
        Verdict::judge("read_all", &readers.2.await.expect("reader"), &written),
        Verdict::judge("subscribe_all", &readers.3.await.expect("reader"), &written),
    ];
    for v in &verdicts {
        eprintln!("{v:?}");
    }
    for v in &verdicts {
        assert!(
            v.is_perfect(),
            "{}: every committed row exactly once, in order, nothing rolled back: {v:?}",
            v.reader
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_naive_id_cursor_loses_rows_that_commit_late() {
    let _one = ONE_RUN_AT_A_TIME.lock().await;
    let Some((db, _guard)) = ordering_database().await else {
        return;
    };
    let (done, until) = watch::channel(false);
    let naive = tokio::spawn(naive_id_reader(db.clone(), until.clone()));
    let correct = tokio::spawn(read_all_reader(db.clone(), until.clone()));
    let written = run_writers(&db, done).await;
    let naive_delivered = naive.await.expect("reader");
    let naive = Verdict::judge("naive id > last_seen", &naive_delivered, &written);
    let straggler = written.straggler.expect("the straggler's row");
    assert!(
        !naive_delivered.contains(&straggler),
        "the naive reader had moved past the straggler's id before it committed"
    );
    let correct = Verdict::judge("read_all", &correct.await.expect("reader"), &written);
    eprintln!("{naive:?}\n{correct:?}");
    assert!(
        naive.lost > 0,
        "the naive reader must lose the straggler's row (and others): {naive:?}"
    );
    assert!(
        correct.is_perfect(),
        "in the same run, the horizon reader loses nothing: {correct:?}"
    );
}
