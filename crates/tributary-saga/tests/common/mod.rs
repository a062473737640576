//! The saga runtime's scenarios, written once and run on every backend (see
//! `saga_scenarios!`): an order saga of a reservation of credit, a reservation of stock, an
//! approval (the pivot, local) and a notification (retriable), against real participants in
//! a database of their own, over a real broker, with the outbox relays running.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tributary_core::{
    BoxFuture, Broker, Database, Envelope, GroupName, OutgoingMessage, Payload, Topic,
    UnitOfWorkExt,
};
use tributary_runtime::{Backoff, CancellationToken, Consumer, ConsumerConfig, Relay, RelayConfig};
use tributary_saga::lock::{self, Hold};
use tributary_saga::{
    AwaitKind, Command, Compensation, DeadlineOutcome, LocalError, Orchestrator,
    OrchestratorConfig, Outcome, PARTICIPANT_MARKERS, Participant, REPLY_TYPE, Reply, ReplyBody,
    RequestState, SagaAdmin, SagaCommandHeader, SagaDefinition, SagaFilter, SagaId, SagaInstance,
    SagaState, Step,
};

pub type DbFactory = Box<dyn Fn() -> BoxFuture<'static, Arc<dyn Database>> + Send + Sync>;

/// A broker, the participants' database, and a way to open (and reopen, after a "crash") the
/// orchestrator's database.
pub struct Fixture {
    pub broker: Arc<dyn Broker>,
    pub participant_db: Arc<dyn Database>,
    pub open_orchestrator_db: DbFactory,
    pub guard: Box<dyn std::any::Any + Send + Sync>,
}

#[macro_export]
macro_rules! saga_scenarios {
    ($make:path, #[$test:meta]) => {
        $crate::saga_scenarios!(@tests $make, #[$test];
            a_saga_runs_every_step_and_completes,
            a_failure_at_the_first_step_compensates_nothing,
            a_failure_at_the_second_step_compensates_the_first,
            a_retriable_step_is_retried_until_it_succeeds,
            a_compensation_that_keeps_failing_ends_in_compensation_failed,
            a_poison_command_is_dead_lettered_and_the_saga_times_out_and_compensates,
            a_deadline_that_fires_after_the_saga_completed_is_ignored,
            late_and_duplicate_replies_are_recorded_and_ignored,
            a_reply_that_arrives_while_the_orchestrator_is_down_is_not_lost,
            an_orchestrator_killed_mid_saga_resumes_where_it_was,
            an_operator_cancels_a_waiting_saga_and_retries_a_failed_compensation,
            operator_requests_written_elsewhere_are_performed_by_the_running_orchestrator,
            a_saga_past_its_own_deadline_before_the_pivot_is_compensated,
            a_record_held_by_a_running_saga_refuses_another_saga_until_it_ends,
        );
    };
    (@tests $make:path, #[$test:meta]; $($check:ident),* $(,)?) => {
        $(
            #[$test]
            async fn $check() {
                let Some(fixture) = $make().await else { return };
                common::$check(fixture).await;
            }
        )*
    };
}

/// The saga's data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrderData {
    pub customer: String,
    pub amount: i64,
    pub sku: String,
    /// A number; a string makes the stock command undecodable (a poison command).
    pub qty: serde_json::Value,
    pub credit_ref: Option<String>,
    pub approved: bool,
}

#[derive(Serialize, Deserialize)]
struct Credit {
    customer: String,
    amount: i64,
}

#[derive(Serialize, Deserialize)]
struct Stock {
    sku: String,
    qty: i64,
}

#[derive(Serialize, Deserialize)]
struct Notify {
    customer: String,
}

#[derive(Deserialize)]
struct CreditReserved {
    reference: String,
}

pub struct Topics {
    pub credit: Topic,
    pub stock: Topic,
    pub notify: Topic,
}

fn fresh() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_owned()
}

pub const SAGA: &str = "CreateOrder";

/// The deadline of a command's reply in the scenarios that do not wait for one to pass: far
/// beyond what a reply takes on a loaded machine (and beyond `wait_for`'s patience), so that
/// no scenario's outcome depends on how fast the participants happen to run.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(120);

/// The stock step's deadline in the scenario whose command is never answered.
pub const POISON_DEADLINE: Duration = Duration::from_secs(5);

/// The deadline of every scenario's saga as a whole.
pub const SAGA_DEADLINE: Duration = Duration::from_secs(3600);

/// The scenarios' saga; `stock_deadline` bounds the wait for the stock step's reply (and its
/// compensation's).
pub fn definition(
    saga_type: &str,
    topics: &Topics,
    stock_deadline: Duration,
) -> SagaDefinition<OrderData> {
    let (credit, stock, notify) = (
        topics.credit.clone(),
        topics.stock.clone(),
        topics.notify.clone(),
    );
    SagaDefinition::<OrderData>::builder(saga_type)
        .expect("saga type")
        .compensatable(
            Step::send("reserve-credit", credit.clone(), |o: &OrderData| {
                Command::new(
                    "ReserveCredit",
                    &Credit {
                        customer: o.customer.clone(),
                        amount: o.amount,
                    },
                )
            })
            .on_reply(|o: &mut OrderData, r: CreditReserved| {
                o.credit_ref = Some(r.reference);
                Ok(())
            }),
            Compensation::send(credit, |o: &OrderData| {
                Command::new(
                    "ReleaseCredit",
                    &Credit {
                        customer: o.customer.clone(),
                        amount: o.amount,
                    },
                )
            }),
        )
        .compensatable(
            Step::send("reserve-stock", stock.clone(), |o: &OrderData| {
                Command::new("ReserveStock", &json!({"sku": o.sku, "qty": o.qty}))
            })
            .with_deadline(stock_deadline),
            Compensation::send(stock, |o: &OrderData| {
                Command::new(
                    "ReleaseStock",
                    &Stock {
                        sku: o.sku.clone(),
                        qty: o.qty.as_i64().unwrap_or(0),
                    },
                )
            }),
        )
        .pivot(Step::local("approve", |o: &mut OrderData, unit| {
            Box::pin(async move {
                let n: i64 = unit.get_as("approvals", &o.customer).await?.unwrap_or(0);
                unit.put_as("approvals", &o.customer, &(n + 1)).await?;
                o.approved = true;
                Ok::<_, LocalError>(())
            })
        }))
        .retriable(Step::send("notify", notify, |o: &OrderData| {
            Command::new(
                "Notify",
                &Notify {
                    customer: o.customer.clone(),
                },
            )
        }))
        // Far beyond any scenario; `a_saga_past_its_own_deadline_…` fires it by hand.
        .with_saga_deadline(SAGA_DEADLINE)
        .build()
}

/// The participants: credit per customer, stock per SKU, notifications that fail as often as
/// `notify_failures/<customer>` says (or while `notify_down/<customer>` is not 0), releases of
/// credit refused while `release_refused/<customer>` exists. A customer listed in
/// `locked_customers` is held by the saga that reserved its credit (a semantic lock) until
/// that saga's notification or credit release.
pub fn participant() -> Participant {
    Participant::new("participants")
        .on("ReserveCredit", |c: Credit, cmd, unit| {
            Box::pin(async move {
                let available: i64 = unit.get_as("credit", &c.customer).await?.unwrap_or(0);
                if available < c.amount {
                    return Ok(Reply::failure("credit limit exceeded"));
                }
                // Held last, right before the change: a refusal after it would commit the
                // hold with no step to compensate, and the customer would stay held.
                if unit.get("locked_customers", &c.customer).await?.is_some()
                    && let Hold::Refused(reply) =
                        lock::hold(unit, &format!("customer:{}", c.customer), cmd).await?
                {
                    return Ok(reply);
                }
                unit.put_as("credit", &c.customer, &(available - c.amount))
                    .await?;
                Reply::success(&json!({"reference": format!("r-{}", c.customer)}))
            })
        })
        .on_compensation("ReleaseCredit", |c: Credit, cmd, unit| {
            Box::pin(async move {
                if unit.get("release_refused", &c.customer).await?.is_some() {
                    return Ok(Reply::failure("release refused"));
                }
                lock::release(unit, &format!("customer:{}", c.customer), cmd).await?;
                let available: i64 = unit.get_as("credit", &c.customer).await?.unwrap_or(0);
                unit.put_as("credit", &c.customer, &(available + c.amount))
                    .await?;
                Ok(Reply::ok())
            })
        })
        .on("ReserveStock", |s: Stock, _cmd, unit| {
            Box::pin(async move {
                let stock: i64 = unit.get_as("stock", &s.sku).await?.unwrap_or(0);
                if stock < s.qty {
                    return Ok(Reply::failure("out of stock"));
                }
                unit.put_as("stock", &s.sku, &(stock - s.qty)).await?;
                Ok(Reply::ok())
            })
        })
        .on_compensation("ReleaseStock", |s: Stock, _cmd, unit| {
            Box::pin(async move {
                let stock: i64 = unit.get_as("stock", &s.sku).await?.unwrap_or(0);
                unit.put_as("stock", &s.sku, &(stock + s.qty)).await?;
                Ok(Reply::ok())
            })
        })
        .on("Notify", |n: Notify, cmd, unit| {
            Box::pin(async move {
                let down: i64 = unit.get_as("notify_down", &n.customer).await?.unwrap_or(0);
                if down != 0 {
                    return Ok(Reply::failure("mail server down"));
                }
                let left: i64 = unit
                    .get_as("notify_failures", &n.customer)
                    .await?
                    .unwrap_or(0);
                if left > 0 {
                    unit.put_as("notify_failures", &n.customer, &(left - 1))
                        .await?;
                    return Ok(Reply::failure("mail server down"));
                }
                let sent: i64 = unit.get_as("notified", &n.customer).await?.unwrap_or(0);
                unit.put_as("notified", &n.customer, &(sent + 1)).await?;
                lock::release(unit, &format!("customer:{}", n.customer), cmd).await?;
                Ok(Reply::ok())
            })
        })
}

fn consumer_config() -> ConsumerConfig {
    ConsumerConfig::default()
        .with_fetch_wait(Duration::from_millis(100))
        .with_max_attempts(2)
        .with_backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
        ))
}

pub fn orchestrator_config() -> OrchestratorConfig {
    OrchestratorConfig::default()
        .with_service("orders")
        .with_step_deadline(Some(REPLY_DEADLINE))
        .with_compensation_attempts(3)
        .with_retry_backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(100),
        ))
        .with_consumer(consumer_config())
        .with_deadline_poll(Duration::from_millis(100))
}

/// One test's system: the participants and both relays run for the whole test; the
/// orchestrator can be stopped (or killed) and started again on a fresh database handle.
pub struct System {
    pub fixture: Fixture,
    pub saga_type: String,
    pub topics: Topics,
    pub orchestrator_db: Arc<dyn Database>,
    pub orchestrator: Orchestrator<OrderData>,
    stock_deadline: Duration,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    orchestrator_tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn spawn<F>(what: &'static str, f: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), tributary_core::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = f.await {
            panic!("{what} failed: {e}");
        }
    })
}

impl System {
    pub async fn new(fixture: Fixture) -> Self {
        Self::with_stock_deadline(fixture, REPLY_DEADLINE).await
    }

    pub async fn with_stock_deadline(fixture: Fixture, stock_deadline: Duration) -> Self {
        let suffix = fresh();
        let saga_type = format!("{SAGA}{suffix}");
        let topics = Topics {
            credit: Topic::new(format!("credit{suffix}")).expect("topic"),
            stock: Topic::new(format!("stock{suffix}")).expect("topic"),
            notify: Topic::new(format!("notify{suffix}")).expect("topic"),
        };
        let orchestrator_db = (fixture.open_orchestrator_db)().await;
        let orchestrator = Orchestrator::new(
            definition(&saga_type, &topics, stock_deadline),
            orchestrator_db.clone(),
            fixture.broker.clone(),
            orchestrator_config(),
        );
        let mut system = Self {
            fixture,
            saga_type,
            topics,
            orchestrator_db,
            orchestrator,
            stock_deadline,
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
            orchestrator_tasks: Vec::new(),
        };
        system.start_participants();
        system
    }

    fn start_participants(&mut self) {
        let f = &self.fixture;
        let consumer = Consumer::new(
            GroupName::new("participants").expect("group"),
            vec![
                self.topics.credit.clone(),
                self.topics.stock.clone(),
                self.topics.notify.clone(),
            ],
            f.participant_db.clone(),
            f.broker.clone(),
            Arc::new(participant()),
            consumer_config(),
        )
        .expect("participant consumer");
        self.tasks.push(spawn(
            "the participants",
            consumer.run(self.shutdown.clone()),
        ));
        let relay = Relay::new(
            f.participant_db.outbox_source(),
            f.broker.clone(),
            RelayConfig::default(),
        );
        self.tasks.push(spawn(
            "the participants' relay",
            relay.run(self.shutdown.clone()),
        ));
    }

    /// Runs the orchestrator and its relay.
    pub fn run_orchestrator(&mut self) -> CancellationToken {
        let stop = self.shutdown.child_token();
        let relay = Relay::new(
            self.orchestrator_db.outbox_source(),
            self.fixture.broker.clone(),
            RelayConfig::default(),
        );
        self.orchestrator_tasks
            .push(spawn("the orchestrator's relay", relay.run(stop.clone())));
        self.orchestrator_tasks.push(spawn(
            "the orchestrator",
            self.orchestrator.clone().run(stop.clone()),
        ));
        stop
    }

    /// Kills the orchestrator (its tasks are dropped wherever they were, as in a crash) and
    /// opens its database again, as a new process would.
    pub async fn kill_and_reopen_orchestrator(&mut self) {
        for task in self.orchestrator_tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.orchestrator_db = (self.fixture.open_orchestrator_db)().await;
        self.orchestrator = Orchestrator::new(
            definition(&self.saga_type, &self.topics, self.stock_deadline),
            self.orchestrator_db.clone(),
            self.fixture.broker.clone(),
            orchestrator_config(),
        );
    }

    pub async fn seed(&self, collection: &str, id: &str, value: i64) {
        let (collection, id) = (collection.to_owned(), id.to_owned());
        self.fixture
            .participant_db
            .transact(move |unit| {
                Box::pin(async move { unit.put_as(&collection, &id, &value).await })
            })
            .await
            .expect("seed");
    }

    pub async fn participant_value(&self, collection: &str, id: &str) -> Option<i64> {
        self.fixture
            .participant_db
            .get_document_as(collection, id)
            .await
            .expect("read")
    }

    /// The saga holding `record` in the participants' database (a semantic lock), if any.
    pub async fn lock_holder(&self, record: &str) -> Option<lock::LockHolder> {
        self.fixture
            .participant_db
            .get_document_as(lock::SEMANTIC_LOCKS, record)
            .await
            .expect("read")
    }

    pub async fn instance(&self, id: &SagaId) -> SagaInstance {
        self.orchestrator
            .instance(id)
            .await
            .expect("read")
            .expect("the saga exists")
    }

    /// Waits (on the orchestrator database's commits) until saga `id` satisfies `done`.
    pub async fn wait_for(
        &self,
        id: &SagaId,
        done: impl Fn(&SagaInstance) -> bool,
    ) -> SagaInstance {
        let mut commits = self.orchestrator_db.commits();
        let waited = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                commits.borrow_and_update();
                if let Some(inst) = self.orchestrator.instance(id).await.expect("read")
                    && done(&inst)
                {
                    return inst;
                }
                // A commit made through another handle (the reopened one) is found by polling.
                let _ = tokio::time::timeout(Duration::from_millis(200), commits.changed()).await;
            }
        })
        .await;
        match waited {
            Ok(inst) => inst,
            Err(_) => panic!(
                "saga {id} did not get there: {:#?}",
                self.orchestrator.instance(id).await
            ),
        }
    }

    pub async fn wait_final(&self, id: &SagaId) -> SagaInstance {
        self.wait_for(id, |i| i.state.is_final()).await
    }

    /// Waits until the participants' database satisfies `done`.
    pub async fn wait_participant(&self, what: &str, done: impl AsyncFn(&Self) -> bool) {
        let mut commits = self.fixture.participant_db.commits();
        let waited = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                commits.borrow_and_update();
                if done(self).await {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(200), commits.changed()).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the participants never got to: {what}");
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks.into_iter().chain(self.orchestrator_tasks) {
            task.await.expect("a task panicked");
        }
    }

    pub fn order(
        &self,
        customer: &str,
        amount: i64,
        sku: &str,
        qty: serde_json::Value,
    ) -> OrderData {
        OrderData {
            customer: customer.into(),
            amount,
            sku: sku.into(),
            qty,
            credit_ref: None,
            approved: false,
        }
    }
}

fn count(inst: &SagaInstance, what: &str) -> usize {
    inst.history.iter().filter(|h| h.what == what).count()
}

pub async fn a_saga_runs_every_step_and_completes(fixture: Fixture) {
    let mut sys = System::new(fixture).await;
    sys.seed("credit", "c1", 100).await;
    sys.seed("stock", "sku1", 10).await;
    sys.run_orchestrator();
    let id = sys
        .orchestrator
        .start(sys.order("c1", 30, "sku1", json!(4)))
        .await
        .expect("start");
    let inst = sys.wait_final(&id).await;
    assert_eq!(inst.state, SagaState::Completed, "{inst:#?}");
    assert_eq!(inst.step, 4);
    assert_eq!(count(&inst, "command sent"), 3);
    assert_eq!(count(&inst, "step succeeded"), 4);
    assert_eq!(count(&inst, "compensation sent"), 0);
    let data = sys
        .orchestrator
        .data(&id)
        .await
        .expect("read")
        .expect("data");
    assert!(data.approved);
    assert_eq!(
        data.credit_ref.as_deref(),
        Some("r-c1"),
        "the reply's data reached the saga"
    );
    assert_eq!(sys.participant_value("credit", "c1").await, Some(70));
    assert_eq!(sys.participant_value("stock", "sku1").await, Some(6));
    assert_eq!(sys.participant_value("notified", "c1").await, Some(1));
    assert_eq!(
        sys.orchestrator_db
            .get_document_as::<i64>("approvals", "c1")
            .await
            .expect("read"),
        Some(1),
        "the local pivot wrote in the orchestrator's unit"
    );
    assert!(
        sys.orchestrator
            .deadlines(10)
            .await
            .expect("read")
            .is_empty(),
        "every deadline was cancelled"
    );
    let listed = SagaAdmin::new(sys.orchestrator_db.clone())
        .list(
            &SagaFilter::default()
                .with_type(sys.saga_type.clone())
                .with_state(SagaState::Completed),
        )
        .await
        .expect("list");
    assert_eq!(listed.iter().map(|s| &s.id).collect::<Vec<_>>(), vec![&id]);
    sys.stop().await;
}

pub async fn a_failure_at_the_first_step_compensates_nothing(fixture: Fixture) {
    let mut sys = System::new(fixture).await;
    sys.seed("credit", "c1", 10).await;
    sys.seed("stock", "sku1", 10).await;
    sys.run_orchestrator();
    let id = sys
        .orchestrator
        .start(sys.order("c1", 30, "sku1", json!(4)))
        .await
        .expect("start");
    let inst = sys.wait_final(&id).await;
    assert_eq!(inst.state, SagaState::Compensated, "{inst:#?}");
    assert_eq!(inst.failure.as_deref(), Some("credit limit exceeded"));
    assert_eq!(
        count(&inst, "compensation sent"),
        0,
        "nothing was done, so nothing is undone"
    );
    assert_eq!(sys.participant_value("credit", "c1").await, Some(10));
    assert_eq!(sys.participant_value("stock", "sku1").await, Some(10));
    assert!(
        !sys.orchestrator
            .data(&id)
            .await
            .expect("read")
            .expect("data")
            .approved
    );
    sys.stop().await;
}

pub async fn a_failure_at_the_second_step_compensates_the_first(fixture: Fixture) {
    let mut sys = System::new(fixture).await;
    sys.seed("credit", "c1", 100).await;
    sys.seed("stock", "sku1", 3).await;
    sys.run_orchestrator();
    let id = sys
        .orchestrator
        .start(sys.order("c1", 30, "sku1", json!(4)))
        .await
        .expect("start");
    let inst = sys.wait_final(&id).await;
    assert_eq!(inst.state, SagaState::Compensated, "{inst:#?}");
    assert_eq!(inst.failure.as_deref(), Some("out of stock"));
    // Only the credit reservation is compensated, after the stock step failed.
    let compensations: Vec<_> = inst
        .history
        .iter()
        .filter(|h| h.what == "compensation sent")
        .collect();
    assert_eq!(compensations.len(), 1);
    assert_eq!(compensations[0].step, Some(0));
    assert_eq!(
        sys.participant_value("credit", "c1").await,
        Some(100),
        "credit released"
    );
    assert_eq!(sys.participant_value("stock", "sku1").await, Some(3));
    assert_eq!(
        sys.orchestrator_db
            .get_document_as::<i64>("approvals", "c1")
            .await
            .expect("read"),
        None
    );
    sys.stop().await;
}

pub async fn a_retriable_step_is_retried_until_it_succeeds(fixture: Fixture) {
    let mut sys = System::new(fixture).await;
    sys.seed("credit", "c1", 100).await;
    sys.seed("stock", "sku1", 10).await;
    sys.seed("notify_failures", "c1", 3).await;
    sys.run_orchestrator();
    let id = sys
        .orchestrator
        .start(sys.order("c1", 30, "sku1", json!(4)))
        .await
        .expect("start");
    let inst = sys.wait_final(&id).await;
    assert_eq!(inst.state, SagaState::Completed, "{inst:#?}");
    assert_eq!(count(&inst, "retry scheduled"), 3);
    let sends: Vec<_> = inst
        .history
        .iter()
        .filter(|h| h.what == "command sent" && h.step == Some(3))
        .filter_map(|h| h.detail.clone())
        .collect();
    assert_eq!(sends.len(), 4, "{sends:?}");
    assert!(
        sends[3].ends_with("(attempt 4)"),
        "the fourth attempt succeeded: {sends:?}"
    );
    assert_eq!(sys.participant_value("notified", "c1").await, Some(1));
    assert_eq!(
        sys.participant_value("notify_failures", "c1").await,
        Some(0)
    );
    sys.stop().await;
}

/// The process's Prometheus recorder, installed once per test binary: the saga gauges are
/// checked through what an exporter would serve.
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("no other recorder in this test binary");
        handle
    })
}

/// The value of `tributary_sagas{saga_type, state}` in `text`.
fn sagas_gauge(text: &str, saga_type: &str, state: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(tributary_saga::SAGAS_GAUGE))
        .filter(|l| {
            l.contains(&format!("saga_type=\"{saga_type}\""))
                && l.contains(&format!("state=\"{state}\""))
        })
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

pub async fn a_compensation_that_keeps_failing_ends_in_compensation_failed(fixture: Fixture) {
    let prometheus = prometheus();
    let mut sys = System::new(fixture).await;
    sys.seed("credit", "c1", 100).await;
    sys.seed("stock", "sku1", 0).await;
    sys.seed("release_refused", "c1", 1).await;
    sys.run_orchestrator();
    let id = sys
        .orchestrator
        .start(sys.order("c1", 30, "sku1", json!(4)))
        .await
        .expect("start");
    let inst = sys.wait_final(&id).await;
    assert_eq!(inst.state, SagaState::CompensationFailed, "{inst:#?}");
    assert_eq!(
        inst.step, 0,
        "stuck at the credit reservation's compensation"
    );
    assert_eq!(inst.attempt, 3, "{inst:#?}");
    // Visible and alerting: the gauge an alert watches counts it.
    sys.orchestrator.record_counts().await.expect("count");
    let text = prometheus.render();
    assert_eq!(
        sagas_gauge(&text, &sys.saga_type, "compensation_failed"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sagas_gauge(&text, &sys.saga_type, "running"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(inst.failure.as_deref(), Some("release refused"));
    assert_eq!(count(&inst, "compensation sent"), 3);
    assert_eq!(
        sys.participant_value("credit", "c1").await,
        Some(70),
        "still reserved"
    );
    let admin = SagaAdmin::new(sys.orchestrator_db.clone());
    let failed = admin
        .list(&SagaFilter::default().with_state(SagaState::CompensationFailed))
        .await
        .expect("list");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, id);
    let counts = admin.counts().await.expect("counts");
    assert_eq!(
        counts.get(&(sys.saga_type.clone(), "compensation_failed")),
        Some(&1)
    );
    sys.stop().await;
}

pub async fn a_poison_command_is_dead_lettered_and_the_saga_times_out_and_compensates(
    fixture: Fixture,
) {
    let mut sys = System::with_stock_deadline(fixture, POISON_DEADLINE).await;
    sys.seed("credit", "c1", 100).await;
    sys.seed("stock", "sku1", 10).await;
    sys.run_orchestrator();
    let id = sys
        .orchestrator
        .start(sys.order("c1", 30, "sku1", json!("not a number")))
        .await
        .expect("start");
    let inst = sys.wait_final(&id).await;
    assert_eq!(inst.state, SagaState::Compensated, "{inst:#?}");
    // The poison command's deadline began the compensation. (A compensation's reply slower
    // than the same deadline would be retried and pass another: not counted here.)
    let began = inst
        .history
        .iter()
        .position(|h| h.what == "compensating")
        .expect("compensated");
    let timed_out: Vec<_> = inst.history[..began]
        .iter()
        .filter(|h| h.what == "deadline passed")
        .map(|h| h.step)
        .collect();
    assert_eq!(timed_out, vec![Some(1)], "{inst:#?}");
    assert!(
        inst.failure
            .as_deref()
            .is_some_and(|f| f.contains("deadline")),
        "{inst:#?}"
    );
    // The timed-out step is compensated too (its outcome is unknown); the participant knows it
    // never ran and undoes nothing.
    let compensated: Vec<_> = inst
        .history
        .iter()
        .filter(|h| h.what == "step compensated")
        .map(|h| h.step)
        .collect();
    assert_eq!(compensated, vec![Some(1), Some(0)], "in reverse order");
    assert_eq!(sys.participant_value("credit", "c1").await, Some(100));
    assert_eq!(sys.participant_value("stock", "sku1").await, Some(10));
    // The saga does not wait for the participant's unit that dead-letters the command: the
    // deadline can compensate it first, so wait for the letter.
    let waited_until = std::time::Instant::now() + Duration::from_secs(10);
    let letters = loop {
        let letters = sys
            .fixture
            .participant_db
            .dead_letters()
            .list(None, 10)
            .await
            .expect("dead letters");
        if !letters.is_empty() || std::time::Instant::now() > waited_until {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0].event_type.as_deref(), Some("ReserveStock"));
    assert!(
        letters[0].reason.contains("cannot decode"),
        "{}",
        letters[0].reason
    );
    sys.stop().await;
}

pub async fn a_deadline_that_fires_after_the_saga_completed_is_ignored(fixture: Fixture) {
    let mut sys = System::new(fixture).await;
    sys.seed("credit", "c1", 100).await;
    sys.seed("stock", "sku1", 10).await;
    // Started before the orchestrator runs: the first command's deadline is stored.
    let id = sys
        .orchestrator
        .start(sys.order("c1", 30, "sku1", json!(4)))
        .await
        .expect("start");
    let stored = sys.orchestrator.deadlines(10).await.expect("deadlines");
    assert_eq!(
        stored.iter().filter(|d| d.what == AwaitKind::Saga).count(),
        1,
        "the saga's own deadline: {stored:#?}"
    );
    let pending: Vec<_> = stored
        .into_iter()
        .filter(|d| d.what == AwaitKind::Reply)
        .collect();
    assert_eq!(pending.len(), 1, "{pending:#?}");
    assert_eq!(pending[0].saga_id, id);
    sys.run_orchestrator();
    let done = sys.wait_final(&id).await;
    assert_eq!(done.state, SagaState::Completed, "{done:#?}");
    // The timer read the deadline before the reply's unit cancelled it, and fires it now.
    let outcome = sys
        .orchestrator
        .fire_deadline(&pending[0])
        .await
        .expect("fire");
    assert_eq!(outcome, DeadlineOutcome::Ignored);
    let after = sys.instance(&id).await;
    assert_eq!(after, done, "an ignored deadline changes nothing");
    assert_eq!(
        sys.participant_value("credit", "c1").await,
        Some(70),
        "nothing compensated"
    );

    // And a deadline document left behind (here: put back by hand) that the saga no longer
    // waits for is deleted, recorded, and otherwise ignored.
    let collection = tributary_saga::deadlines_collection(&sys.saga_type);
    let stale = pending[0].clone();
    sys.orchestrator_db
        .transact(move |unit| {
            Box::pin(async move { unit.put_as(&collection, &stale.key, &stale).await })
        })
        .await
        .expect("put back");
    let outcome = sys
        .orchestrator
        .fire_deadline(&pending[0])
        .await
        .expect("fire");
    assert_eq!(outcome, DeadlineOutcome::Ignored);
    let after = sys.instance(&id).await;
    assert_eq!(after.state, SagaState::Completed);
    assert_eq!(count(&after, "late deadline ignored"), 1);
    assert!(
        sys.orchestrator
            .deadlines(10)
            .await
            .expect("read")
            .is_empty()
    );
    sys.stop().await;
}

pub async fn late_and_duplicate_replies_are_recorded_and_ignored(fixture: Fixture) {
    let mut sys = System::new(fixture).await;
    sys.seed("credit", "c1", 100).await;
    sys.seed("stock", "sku1", 10).await;
    sys.run_orchestrator();
    let id = sys
        .orchestrator
        .start(sys.order("c1", 30, "sku1", json!(4)))
        .await
        .expect("start");
    let done = sys.wait_final(&id).await;
    assert_eq!(done.state, SagaState::Completed);
    // A second reply to the first command (a participant that answered twice), a failure this
    // time, with a new envelope id so the inbox does not already know it.
    let first_command = done
        .history
        .iter()
        .find(|h| h.what == "command sent")
        .and_then(|h| h.message_id.clone())
        .expect("the first command");
    let body = ReplyBody {
        saga: SagaCommandHeader {
            saga_type: sys.saga_type.clone(),
            saga_id: id.clone(),
            step: 0,
            step_name: "reserve-credit".into(),
            compensation: false,
            attempt: 1,
            reply_to: sys.orchestrator.definition().reply_topic().clone(),
        },
        outcome: Outcome::Failed,
        reason: Some("changed my mind".into()),
        data: serde_json::Value::Null,
    };
    let mut reply = Envelope::new(
        "participants",
        REPLY_TYPE,
        Payload::from_value(&body).expect("json"),
    )
    .with_subject(id.to_string());
    reply.correlation_id = Some(id.to_string());
    reply.causation_id = Some(first_command);
    let topic = sys.orchestrator.definition().reply_topic().clone();
    sys.fixture
        .broker
        .publish(&[OutgoingMessage::from_envelope(topic.clone(), &reply)])
        .await
        .expect("publish");
    // The same envelope again: the inbox drops it without a second history entry.
    sys.fixture
        .broker
        .publish(&[OutgoingMessage::from_envelope(topic, &reply)])
        .await
        .expect("publish");
    let after = sys.wait_for(&id, |i| count(i, "reply ignored") >= 1).await;
    assert_eq!(after.state, SagaState::Completed);
    assert_eq!(after.step, done.step);
    assert_eq!(sys.participant_value("credit", "c1").await, Some(70));
    // Let the duplicate through the consumer, then check it left no trace: a marker reply on
    // a saga of its own goes through the same partition order after it.
    let marker_id = sys
        .orchestrator
        .start(sys.order("c1", 1, "sku1", json!(1)))
        .await
        .expect("start");
    sys.wait_final(&marker_id).await;
    assert_eq!(
        count(&sys.instance(&id).await, "reply ignored"),
        1,
        "the duplicate had no effect"
    );
    sys.stop().await;
}

pub async fn a_reply_that_arrives_while_the_orchestrator_is_down_is_not_lost(fixture: Fixture) {
    let mut sys = System::new(fixture).await;
    sys.seed("credit", "c1", 100).await;
    sys.seed("stock", "sku1", 10).await;
    let id = sys
        .orchestrator
        .start(sys.order("c1", 30, "sku1", json!(4)))
        .await
        .expect("start");
    // Only the relay runs on the orchestrator's side: the command goes out, the reply comes
    // back to a broker nobody reads.
    let relay = Relay::new(
        sys.orchestrator_db.outbox_source(),
        sys.fixture.broker.clone(),
        RelayConfig::default(),
    );
    let stop_relay = CancellationToken::new();
    let relay = tokio::spawn(relay.run(stop_relay.clone()));
    let marker = format!("{}:{}:0", sys.saga_type, id);
    sys.wait_participant("reply to the first command", async |s: &System| {
        s.fixture
            .participant_db
            .get_document(PARTICIPANT_MARKERS, &marker)
            .await
            .expect("read")
            .is_some()
    })
    .await;
    stop_relay.cancel();
    relay.await.expect("relay").expect("relay");
    assert_eq!(
        sys.instance(&id).await.step,
        0,
        "nobody consumed the reply yet"
    );
    sys.kill_and_reopen_orchestrator().await;
    sys.run_orchestrator();
    let inst = sys.wait_final(&id).await;
    assert_eq!(inst.state, SagaState::Completed, "{inst:#?}");
    assert_eq!(sys.participant_value("credit", "c1").await, Some(70));
    sys.stop().await;
}

pub async fn an_orchestrator_killed_mid_saga_resumes_where_it_was(fixture: Fixture) {
    let mut sys = System::new(fixture).await;
    sys.seed("credit", "c1", 1000).await;
    sys.seed("stock", "sku1", 100).await;
    sys.seed("notify_failures", "c1", 2).await;
    sys.run_orchestrator();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            sys.orchestrator
                .start(sys.order("c1", 10, "sku1", json!(1)))
                .await
                .expect("start"),
        );
    }
    sys.wait_for(&ids[0], |i| i.step >= 1).await;
    sys.kill_and_reopen_orchestrator().await;
    sys.run_orchestrator();
    for id in &ids {
        let inst = sys.wait_final(id).await;
        assert_eq!(inst.state, SagaState::Completed, "{inst:#?}");
        assert_eq!(
            count(&inst, "step succeeded"),
            4,
            "no step ran twice: {inst:#?}"
        );
    }
    assert_eq!(
        sys.participant_value("credit", "c1").await,
        Some(950),
        "each reservation once"
    );
    assert_eq!(sys.participant_value("stock", "sku1").await, Some(95));
    assert_eq!(sys.participant_value("notified", "c1").await, Some(5));
    sys.stop().await;
}

/// Starts a saga whose first command (reserve 30 of c1's credit of 100) is performed while
/// only the orchestrator's relay runs: the saga still waits for the reply. c1's release is
/// refused until the test deletes `release_refused/c1`.
async fn a_saga_waiting_for_its_first_reply(sys: &System) -> SagaId {
    sys.seed("credit", "c1", 100).await;
    sys.seed("stock", "sku1", 10).await;
    sys.seed("release_refused", "c1", 1).await;
    let id = sys
        .orchestrator
        .start(sys.order("c1", 30, "sku1", json!(4)))
        .await
        .expect("start");
    let relay = Relay::new(
        sys.orchestrator_db.outbox_source(),
        sys.fixture.broker.clone(),
        RelayConfig::default(),
    );
    let stop_relay = CancellationToken::new();
    let relay = tokio::spawn(relay.run(stop_relay.clone()));
    let marker = format!("{}:{}:0", sys.saga_type, id);
    sys.wait_participant("reserve the credit", async |s: &System| {
        s.fixture
            .participant_db
            .get_document(PARTICIPANT_MARKERS, &marker)
            .await
            .expect("read")
            .is_some()
    })
    .await;
    stop_relay.cancel();
    relay.await.expect("relay").expect("relay");
    assert_eq!(sys.participant_value("credit", "c1").await, Some(70));
    id
}

async fn allow_the_release(sys: &System) {
    let refused = "release_refused".to_owned();
    sys.fixture
        .participant_db
        .transact(move |unit| Box::pin(async move { unit.delete(&refused, "c1").await }))
        .await
        .expect("fixed");
}

pub async fn an_operator_cancels_a_waiting_saga_and_retries_a_failed_compensation(
    fixture: Fixture,
) {
    let mut sys = System::new(fixture).await;
    let id = a_saga_waiting_for_its_first_reply(&sys).await;
    sys.orchestrator
        .cancel(&id, "customer called")
        .await
        .expect("cancel");
    let cancelled = sys.instance(&id).await;
    assert_eq!(cancelled.state, SagaState::Compensating, "{cancelled:#?}");
    assert_eq!(count(&cancelled, "cancelled by an operator"), 1);
    assert!(
        sys.orchestrator.retry(&id).await.is_ok(),
        "a compensating saga can be retried"
    );
    sys.run_orchestrator();
    // The release is refused until the operator fixes it, so the saga ends CompensationFailed.
    let failed = sys.wait_final(&id).await;
    assert_eq!(failed.state, SagaState::CompensationFailed, "{failed:#?}");
    assert!(
        sys.orchestrator.cancel(&id, "again").await.is_err(),
        "a failed saga is not cancelled twice"
    );
    allow_the_release(&sys).await;
    sys.orchestrator.retry(&id).await.expect("retry");
    let done = sys.wait_final(&id).await;
    assert_eq!(done.state, SagaState::Compensated, "{done:#?}");
    assert_eq!(count(&done, "retried by an operator"), 2);
    assert_eq!(
        sys.participant_value("credit", "c1").await,
        Some(100),
        "reserved once, released once"
    );
    assert!(
        sys.orchestrator.retry(&id).await.is_err(),
        "nothing to retry once compensated"
    );
    sys.stop().await;
}

/// What `tributary sagas cancel|retry` does: the request is a document written without the
/// saga's definition; the running orchestrator performs it with the saga's new state.
pub async fn operator_requests_written_elsewhere_are_performed_by_the_running_orchestrator(
    fixture: Fixture,
) {
    let mut sys = System::new(fixture).await;
    let id = a_saga_waiting_for_its_first_reply(&sys).await;
    let admin = SagaAdmin::new(sys.orchestrator_db.clone());
    let requested = admin
        .request_cancel(&id, "customer called")
        .await
        .expect("request");
    assert!(requested.is_pending());
    assert_eq!(
        sys.instance(&id).await.state,
        SagaState::Running,
        "nothing happens until an orchestrator runs"
    );
    // What the running orchestrator's loop does; called here before its reply consumer runs,
    // which would otherwise race the cancel with the waiting reply (and could take the saga
    // past its pivot, where a cancel is refused).
    assert_eq!(
        sys.orchestrator.perform_requests().await.expect("perform"),
        1
    );
    let cancelled = sys.instance(&id).await;
    assert_eq!(cancelled.state, SagaState::Compensating, "{cancelled:#?}");
    assert_eq!(count(&cancelled, "cancelled by an operator"), 1);
    let done = admin.request(&id).await.expect("read").expect("recorded");
    assert!(matches!(done.state, RequestState::Done { .. }), "{done:?}");
    assert_eq!(
        sys.orchestrator.perform_requests().await.expect("perform"),
        0,
        "done once"
    );
    sys.run_orchestrator();
    // The release is refused, so the cancelled saga ends CompensationFailed.
    let failed = sys.wait_final(&id).await;
    assert_eq!(failed.state, SagaState::CompensationFailed, "{failed:#?}");
    assert!(
        admin.request_cancel(&id, "again").await.is_err(),
        "a finished saga is not cancelled"
    );
    allow_the_release(&sys).await;
    // Performed by the running orchestrator's own loop this time.
    admin.request_retry(&id).await.expect("request a retry");
    let compensated = sys
        .wait_for(&id, |i| i.state == SagaState::Compensated)
        .await;
    assert_eq!(
        count(&compensated, "retried by an operator"),
        1,
        "{compensated:#?}"
    );
    assert_eq!(
        sys.participant_value("credit", "c1").await,
        Some(100),
        "reserved once, released once"
    );
    assert!(
        admin.request_retry(&id).await.is_err(),
        "nothing to retry once compensated"
    );
    sys.stop().await;
}

pub async fn a_saga_past_its_own_deadline_before_the_pivot_is_compensated(fixture: Fixture) {
    let mut sys = System::new(fixture).await;
    let id = a_saga_waiting_for_its_first_reply(&sys).await;
    allow_the_release(&sys).await;
    let started = sys.instance(&id).await;
    let pending = sys.orchestrator.deadlines(10).await.expect("deadlines");
    let whole: Vec<_> = pending
        .iter()
        .filter(|d| d.what == AwaitKind::Saga)
        .cloned()
        .collect();
    assert_eq!(whole.len(), 1, "stored with the saga: {pending:?}");
    assert_eq!(
        whole[0].due - started.started_at,
        chrono::Duration::from_std(SAGA_DEADLINE).unwrap(),
        "counted from the start"
    );
    // What the deadline runner does when it is due (an hour is not waited for here).
    let fired = sys
        .orchestrator
        .fire_deadline(&whole[0])
        .await
        .expect("fire");
    assert_eq!(fired, DeadlineOutcome::Fired);
    let compensating = sys.instance(&id).await;
    assert_eq!(
        compensating.state,
        SagaState::Compensating,
        "{compensating:#?}"
    );
    assert_eq!(count(&compensating, "saga deadline passed"), 1);
    assert!(compensating.saga_deadline.is_none());
    sys.run_orchestrator();
    let done = sys.wait_final(&id).await;
    assert_eq!(done.state, SagaState::Compensated, "{done:#?}");
    assert_eq!(
        sys.participant_value("credit", "c1").await,
        Some(100),
        "the reserved credit was released"
    );
    // Fired again (a second runner that read it before the first deleted it): ignored.
    let again = sys
        .orchestrator
        .fire_deadline(&whole[0])
        .await
        .expect("fire");
    assert_eq!(again, DeadlineOutcome::Ignored);
    assert!(
        sys.orchestrator
            .deadlines(10)
            .await
            .expect("read")
            .is_empty(),
        "nothing left to fire"
    );
    sys.stop().await;
}

pub async fn a_record_held_by_a_running_saga_refuses_another_saga_until_it_ends(fixture: Fixture) {
    let mut sys = System::new(fixture).await;
    sys.seed("credit", "c1", 100).await;
    sys.seed("stock", "sku1", 10).await;
    sys.seed("locked_customers", "c1", 1).await;
    // The first saga's notification fails until the test says otherwise: it is past its
    // pivot, still running, and holds the customer.
    sys.seed("notify_down", "c1", 1).await;
    sys.run_orchestrator();
    // A saga refused for its credit takes no hold: nothing would compensate it.
    let refused_credit = sys
        .orchestrator
        .start(sys.order("c1", 1_000, "sku1", json!(1)))
        .await
        .expect("start");
    let inst = sys.wait_final(&refused_credit).await;
    assert_eq!(inst.state, SagaState::Compensated, "{inst:#?}");
    let held = sys.lock_holder("customer:c1").await;
    assert_eq!(held, None, "a refused step holds nothing");

    let first = sys
        .orchestrator
        .start(sys.order("c1", 30, "sku1", json!(1)))
        .await
        .expect("start");
    sys.wait_for(&first, |i| count(i, "retry scheduled") > 0)
        .await;

    let second = sys
        .orchestrator
        .start(sys.order("c1", 10, "sku1", json!(1)))
        .await
        .expect("start");
    let refused = sys.wait_final(&second).await;
    assert_eq!(refused.state, SagaState::Compensated, "{refused:#?}");
    assert!(
        refused
            .failure
            .as_deref()
            .is_some_and(|f| f.contains(&format!("held by saga {} {first}", sys.saga_type))),
        "the refusal names the holder: {refused:#?}"
    );
    assert_eq!(
        sys.participant_value("credit", "c1").await,
        Some(70),
        "the refused saga took no credit"
    );
    let held = sys.lock_holder("customer:c1").await;
    assert_eq!(held.map(|h| h.saga_id), Some(first.clone()));

    // The first saga's last step releases the customer; the next saga gets it.
    sys.seed("notify_down", "c1", 0).await;
    assert_eq!(sys.wait_final(&first).await.state, SagaState::Completed);
    let third = sys
        .orchestrator
        .start(sys.order("c1", 20, "sku1", json!(1)))
        .await
        .expect("start");
    let inst = sys.wait_final(&third).await;
    assert_eq!(inst.state, SagaState::Completed, "{inst:#?}");
    assert_eq!(sys.participant_value("credit", "c1").await, Some(50));
    let held = sys.lock_holder("customer:c1").await;
    assert_eq!(held, None, "released by the third saga's notification");
    sys.stop().await;
}
