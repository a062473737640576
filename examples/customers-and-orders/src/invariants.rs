//! The invariants of the reference application, checked by the demo and the tests once the
//! system is quiet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tributary::saga::{SagaInstance, SagaState};
use tributary::{Broker, Envelope, GroupName, Partition};

use crate::AppError;
use crate::customer::Customer;
use crate::history::{CustomerHistory, OrderSummary};
use crate::orchestration::inventory::Product;
use crate::orchestration::{APPROVED, OrchestratedOrder, REJECTED};
use crate::order::{Order, OrderState};
use crate::system::{Services, topics};

/// The result of one invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// What the four services hold, read once.
pub struct State {
    pub customers: Vec<Customer>,
    /// The choreography's orders.
    pub orders: BTreeMap<String, Order>,
    pub history: Vec<CustomerHistory>,
    /// The orchestrated flow's orders, their `CreateOrder` sagas, and the inventory.
    pub orchestrated: Vec<OrchestratedOrder>,
    pub sagas: Vec<SagaInstance>,
    pub products: Vec<Product>,
}

impl State {
    pub async fn read(services: &Services) -> Result<Self, AppError> {
        let orchestrated = services.orchestrated()?;
        Ok(Self {
            customers: services.customers()?.all().await?,
            orders: services.orders()?.all().await?,
            history: services.history()?.all().await?,
            orchestrated: orchestrated.all().await?,
            sagas: orchestrated.instances().await?,
            products: services.inventory()?.all().await?,
        })
    }

    pub fn count(&self, state: OrderState) -> usize {
        self.orders.values().filter(|o| o.state == state).count()
    }

    /// Orchestrated orders in `state` (`APPROVED`, `REJECTED`, `PENDING`).
    pub fn orchestrated_count(&self, state: &str) -> usize {
        self.orchestrated
            .iter()
            .filter(|o| o.state == state)
            .count()
    }

    fn approved_orchestrated(&self) -> impl Iterator<Item = &OrchestratedOrder> {
        self.orchestrated.iter().filter(|o| o.state == APPROVED)
    }
}

fn check(name: &'static str, problems: Vec<String>, fine: String) -> Check {
    Check {
        name,
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            fine
        } else {
            format!(
                "{} problem(s), e.g. {}",
                problems.len(),
                problems.into_iter().take(3).collect::<Vec<_>>().join("; ")
            )
        },
    }
}

/// For every customer: credit reserved = the sum of its APPROVED orders' totals ≤ its limit,
/// the orders of both flows together (they reserve from the same credit).
pub fn credit(state: &State) -> Check {
    let mut approved: HashMap<&str, (i64, HashSet<&str>)> = HashMap::new();
    let choreographed = state
        .orders
        .values()
        .filter(|o| o.state == OrderState::Approved)
        .map(|o| (&o.customer_id, &o.order_id, o.order_total));
    let orchestrated = state
        .approved_orchestrated()
        .map(|o| (&o.customer_id, &o.order_id, o.order_total));
    for (customer_id, order_id, total) in choreographed.chain(orchestrated) {
        let entry = approved.entry(customer_id.as_str()).or_default();
        entry.0 += total;
        entry.1.insert(order_id.as_str());
    }
    let mut problems = Vec::new();
    for c in &state.customers {
        let (sum, ids) = approved.remove(c.customer_id.as_str()).unwrap_or_default();
        let reserved_ids: HashSet<&str> = c.reservations.keys().map(String::as_str).collect();
        if c.reserved() != sum || reserved_ids != ids {
            problems.push(format!(
                "customer {} reserved {} for {} orders, approved orders total {} for {}",
                c.customer_id,
                c.reserved(),
                reserved_ids.len(),
                sum,
                ids.len()
            ));
        }
        if c.reserved() > c.credit_limit {
            problems.push(format!(
                "customer {} reserved {} over its limit {}",
                c.customer_id,
                c.reserved(),
                c.credit_limit
            ));
        }
    }
    for (customer, (sum, _)) in approved {
        problems.push(format!(
            "{sum} approved for customer {customer}, whom the customer service does not know"
        ));
    }
    check(
        "credit reserved = approved orders ≤ credit limit",
        problems,
        format!("{} customers", state.customers.len()),
    )
}

/// Every order reached APPROVED, REJECTED or CANCELLED.
pub fn settled(state: &State) -> Check {
    let problems = state
        .orders
        .values()
        .filter(|o| !o.state.is_final())
        .map(|o| format!("order {} is {}", o.order_id, o.state))
        .collect();
    check(
        "every order settled",
        problems,
        format!("{} orders", state.orders.len()),
    )
}

/// For every product: stock reserved = the APPROVED orchestrated orders' lines of it, held by
/// exactly those orders; free stock never negative; free + reserved = everything received.
pub fn stock(state: &State) -> Check {
    let mut wanted: HashMap<&str, BTreeMap<&str, i64>> = HashMap::new();
    for o in state.approved_orchestrated() {
        for l in &o.lines {
            wanted
                .entry(l.product_id.as_str())
                .or_default()
                .insert(o.order_id.as_str(), l.quantity);
        }
    }
    let mut problems = Vec::new();
    for p in &state.products {
        let held: BTreeMap<&str, i64> = p
            .reservations
            .iter()
            .map(|(order, q)| (order.as_str(), *q))
            .collect();
        let expected = wanted.remove(p.product_id.as_str()).unwrap_or_default();
        if held != expected {
            problems.push(format!(
                "product {} holds {} for {} orders, approved orders want {} for {}",
                p.product_id,
                p.reserved(),
                held.len(),
                expected.values().sum::<i64>(),
                expected.len()
            ));
        }
        if p.available < 0 || p.available + p.reserved() != p.received {
            problems.push(format!(
                "product {}: {} free + {} reserved, {} received",
                p.product_id,
                p.available,
                p.reserved(),
                p.received
            ));
        }
    }
    for product in wanted.keys() {
        problems.push(format!(
            "approved orders hold {product}, which the inventory does not know"
        ));
    }
    check(
        "stock reserved = approved orders' lines, never negative",
        problems,
        format!("{} products", state.products.len()),
    )
}

/// Every `CreateOrder` saga ended `Completed` (its order `APPROVED`) or `Compensated` (its
/// order `REJECTED`), and compensated only steps it had run.
pub fn sagas(state: &State) -> Check {
    let orders: HashMap<&str, &str> = state
        .orchestrated
        .iter()
        .map(|o| (o.order_id.as_str(), o.state.as_str()))
        .collect();
    let mut problems = Vec::new();
    for saga in &state.sagas {
        let order = orders.get(saga.id.as_str()).copied();
        match (saga.state, order) {
            (SagaState::Completed, Some(APPROVED)) | (SagaState::Compensated, Some(REJECTED)) => {}
            (s, o) => problems.push(format!(
                "saga {} is {s:?} with its order {}",
                saga.id,
                o.unwrap_or("missing")
            )),
        }
        // A reply applied twice (a redelivery the inbox let through, or a resumed
        // orchestrator taking a step again) would record its outcome twice.
        let mut outcomes = HashSet::new();
        for h in &saga.history {
            if matches!(h.what.as_str(), "step succeeded" | "step compensated")
                && !outcomes.insert((h.step, h.what.as_str()))
            {
                problems.push(format!(
                    "saga {} recorded \"{}\" of step {:?} twice",
                    saga.id, h.what, h.step
                ));
            }
        }
        for undone in saga.history.iter().filter(|h| h.what == "step compensated") {
            // A step that succeeded, or whose command was sent and then went unanswered
            // (its deadline, the saga's, or an operator's cancel): the participant may have
            // done it, so undoing it is due.
            let ran = saga.history.iter().any(|h| {
                h.step == undone.step
                    && matches!(
                        h.what.as_str(),
                        "step succeeded" | "deadline passed" | "command sent"
                    )
            });
            if !ran {
                problems.push(format!(
                    "saga {} compensated step {:?}, which never ran",
                    saga.id, undone.step
                ));
            }
        }
    }
    if state.sagas.len() != state.orchestrated.len() {
        problems.push(format!(
            "{} sagas for {} orchestrated orders",
            state.sagas.len(),
            state.orchestrated.len()
        ));
    }
    check(
        "every saga Completed or Compensated, each step's outcome once, no compensation without its step",
        problems,
        format!("{} sagas", state.sagas.len()),
    )
}

/// Each customer's history document equals what the customer and order services hold, orders
/// of both flows.
pub fn history(state: &State) -> Check {
    let mut expected: BTreeMap<&str, BTreeMap<String, OrderSummary>> = BTreeMap::new();
    for o in state.orders.values() {
        expected.entry(o.customer_id.as_str()).or_default().insert(
            o.order_id.clone(),
            OrderSummary {
                order_total: o.order_total,
                state: o.state,
            },
        );
    }
    for o in &state.orchestrated {
        let state = match o.state.as_str() {
            APPROVED => OrderState::Approved,
            REJECTED => OrderState::Rejected,
            _ => OrderState::New,
        };
        expected.entry(o.customer_id.as_str()).or_default().insert(
            o.order_id.clone(),
            OrderSummary {
                order_total: o.order_total,
                state,
            },
        );
    }
    let views: HashMap<&str, &CustomerHistory> = state
        .history
        .iter()
        .map(|h| (h.customer_id.as_str(), h))
        .collect();
    let mut problems = Vec::new();
    for c in &state.customers {
        let Some(view) = views.get(c.customer_id.as_str()) else {
            problems.push(format!("no history for customer {}", c.customer_id));
            continue;
        };
        if view.name.as_deref() != Some(c.name.as_str())
            || view.credit_limit != Some(c.credit_limit)
        {
            problems.push(format!(
                "history of {} has name/limit {:?}/{:?}",
                c.customer_id, view.name, view.credit_limit
            ));
        }
        let orders = expected.remove(c.customer_id.as_str()).unwrap_or_default();
        if view.orders != orders {
            problems.push(format!(
                "history of {} lists {} orders, the order service {}",
                c.customer_id,
                view.orders.len(),
                orders.len()
            ));
        }
    }
    // Orders of unknown customers: the view keeps them under a nameless document.
    for (customer, orders) in expected {
        let listed = views.get(customer).map(|v| &v.orders);
        if listed != Some(&orders) {
            problems.push(format!(
                "orders of unknown customer {customer} missing from the view"
            ));
        }
    }
    check(
        "order history = customer and order services",
        problems,
        format!("{} documents", state.history.len()),
    )
}

/// Reads every message of the application's topics with a fresh consumer group and checks that
/// the customer service decided each order exactly once (no lost and no doubly handled
/// `OrderCreated`) and that each order's events were published once.
pub async fn audit_broker(broker: &dyn Broker, state: &State) -> Result<Check, AppError> {
    let group = GroupName::new(format!("audit-{}", uuid::Uuid::now_v7().simple()))?;
    let mut decisions: HashMap<String, HashSet<String>> = HashMap::new();
    let mut created: HashMap<String, usize> = HashMap::new();
    for topic in topics() {
        for p in 0..broker.partitions(&topic).await? {
            let mut consumer = broker.consume(&group, &topic, Partition::new(p)).await?;
            loop {
                let batch = consumer.fetch(4096, Duration::from_millis(50)).await?;
                let Some(last) = batch.last().map(|d| d.offset) else {
                    break;
                };
                // Committing keeps the audit group from pinning the log against retention.
                consumer.commit(last).await?;
                for d in batch {
                    let Ok(e) = Envelope::from_json(&d.payload) else {
                        continue;
                    };
                    let order_id = e.data.to_value()["order_id"].as_str().map(str::to_owned);
                    match (e.event_type.as_str(), order_id) {
                        (
                            "CreditReserved" | "CreditLimitExceeded" | "CustomerValidationFailed",
                            Some(o),
                        ) => {
                            decisions.entry(o).or_default().insert(e.id.to_string());
                        }
                        ("OrderCreated", Some(o)) => *created.entry(o).or_default() += 1,
                        _ => {}
                    }
                }
            }
        }
    }
    for topic in topics() {
        // The audit group will not come back: it must not hold the log against retention.
        broker.delete_group(&group, &topic).await?;
    }
    let mut problems = Vec::new();
    for id in state.orders.keys() {
        match decisions.get(id).map(HashSet::len) {
            Some(1) => {}
            n => problems.push(format!(
                "order {id} got {} credit decisions",
                n.unwrap_or(0)
            )),
        }
        if created.get(id) != Some(&1) {
            problems.push(format!(
                "OrderCreated of {id} was published {} times",
                created.get(id).copied().unwrap_or(0)
            ));
        }
    }
    Ok(check(
        "each order decided once, each event published once",
        problems,
        format!(
            "{} decisions",
            decisions.values().map(HashSet::len).sum::<usize>()
        ),
    ))
}

/// Every invariant, including the broker audit.
pub async fn all(services: &Services, broker: &dyn Broker) -> Result<Vec<Check>, AppError> {
    let state = State::read(services).await?;
    Ok(vec![
        credit(&state),
        settled(&state),
        stock(&state),
        sagas(&state),
        history(&state),
        audit_broker(broker, &state).await?,
    ])
}
