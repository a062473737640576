//! The orchestrated order flow, beside the choreography of the seed (which stays the
//! default): `place` starts a `CreateOrder` saga in the order service's database, which
//!
//! 1. records the order as `PENDING` (local, compensatable: compensated by `REJECTED`);
//! 2. reserves the customer's credit (the customer service, compensatable);
//! 3. reserves the stock of every line (the [`inventory`] service, compensatable);
//! 4. approves the order (local, the pivot);
//! 5. notifies the customer (the customer service, retriable).
//!
//! A failed reservation rejects the order and releases what was reserved, in reverse order.
//! Orchestrated orders are documents of the order service (`orchestrated_orders`), apart from
//! its event-sourced choreographed orders; each change of state publishes the order's event on
//! [`orchestrated_order_topic`] in the same unit, for the order-history view.

pub mod inventory;

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tributary::saga::{
    Command, Compensation, LocalError, Orchestrator, OrchestratorConfig, Participant, Reply,
    SagaAdmin, SagaDefinition, SagaFilter, SagaId, SagaInstance, Started, Step,
};
use tributary::{Broker, Database, Topic, UnitOfWorkExt};

use crate::AppError;
use crate::customer::Customer;
use crate::events::{OrderApproved, OrderCreated, OrderRejected, orchestrated_order_topic};

pub const SAGA_TYPE: &str = "CreateOrder";
/// The states of an orchestrated order.
pub const PENDING: &str = "PENDING";
pub const APPROVED: &str = "APPROVED";
pub const REJECTED: &str = "REJECTED";
pub const ORDERS: &str = "orchestrated_orders";
const CUSTOMERS: &str = "customers";
const NOTIFICATIONS: &str = "order_notifications";

/// Topic of the commands to the customer service.
pub fn customer_commands() -> Topic {
    Topic::new("CustomerCommands").unwrap_or_else(|_| unreachable!("a valid topic name"))
}

/// Topic of the commands to the inventory service.
pub fn inventory_commands() -> Topic {
    Topic::new("InventoryCommands").unwrap_or_else(|_| unreachable!("a valid topic name"))
}

/// The flow's topics: the participants' commands, the orchestrator's replies and the orders'
/// events.
pub fn topics() -> Vec<Topic> {
    vec![
        customer_commands(),
        inventory_commands(),
        orchestrated_order_topic(),
        tributary::saga::reply_topic(SAGA_TYPE)
            .unwrap_or_else(|_| unreachable!("a valid saga type")),
    ]
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product_id: String,
    pub quantity: i64,
}

/// The saga's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOrder {
    pub order_id: String,
    pub customer_id: String,
    pub order_total: i64,
    pub lines: Vec<Line>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreditRequest {
    pub order_id: String,
    pub customer_id: String,
    pub order_total: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StockRequest {
    pub order_id: String,
    pub lines: Vec<Line>,
}

/// An orchestrated order as the order service stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestratedOrder {
    pub order_id: String,
    pub customer_id: String,
    pub order_total: i64,
    pub lines: Vec<Line>,
    /// `PENDING`, `APPROVED` or `REJECTED`.
    pub state: String,
}

/// Stores the order in `state` and publishes the event that says so, in the saga's unit.
fn set_state<'a>(
    o: &'a CreateOrder,
    unit: &'a mut dyn tributary::UnitOfWork,
    state: &'static str,
) -> tributary::BoxFuture<'a, Result<(), LocalError>> {
    Box::pin(async move {
        let order = OrchestratedOrder {
            order_id: o.order_id.clone(),
            customer_id: o.customer_id.clone(),
            order_total: o.order_total,
            lines: o.lines.clone(),
            state: state.into(),
        };
        unit.put_as(ORDERS, &o.order_id, &order).await?;
        let (order_id, customer_id) = (o.order_id.clone(), o.customer_id.clone());
        let event = match state {
            PENDING => order_event(
                "OrderCreated",
                &OrderCreated {
                    order_id,
                    customer_id,
                    order_total: o.order_total,
                },
                &o.order_id,
            ),
            APPROVED => order_event(
                "OrderApproved",
                &OrderApproved {
                    order_id,
                    customer_id,
                },
                &o.order_id,
            ),
            // REJECTED: the first step's compensation, the only other state set.
            _ => order_event(
                "OrderRejected",
                &OrderRejected {
                    order_id,
                    customer_id,
                    reason: "the CreateOrder saga was compensated".into(),
                },
                &o.order_id,
            ),
        }?;
        unit.publish(&orchestrated_order_topic(), event).await?;
        Ok(())
    })
}

/// An orchestrated order's event, keyed by the order so that its events stay in order.
fn order_event<T: Serialize>(
    event_type: &str,
    data: &T,
    order_id: &str,
) -> Result<tributary::Envelope, tributary::Error> {
    Ok(tributary::Envelope::new(
        crate::order::SOURCE,
        event_type,
        tributary::Payload::from_value(data)?,
    )
    .with_subject(order_id)
    .with_aggregate_type("Order")
    .with_partition_key(order_id))
}

/// The `CreateOrder` saga.
pub fn definition() -> SagaDefinition<CreateOrder> {
    let credit = |o: &CreateOrder| CreditRequest {
        order_id: o.order_id.clone(),
        customer_id: o.customer_id.clone(),
        order_total: o.order_total,
    };
    let stock = |o: &CreateOrder| StockRequest {
        order_id: o.order_id.clone(),
        lines: o.lines.clone(),
    };
    SagaDefinition::<CreateOrder>::builder(SAGA_TYPE)
        .unwrap_or_else(|_| unreachable!("a valid saga type"))
        .compensatable(
            Step::local("record-order", |o: &mut CreateOrder, unit| {
                set_state(o, unit, PENDING)
            }),
            Compensation::local(|o: &mut CreateOrder, unit| set_state(o, unit, REJECTED)),
        )
        .compensatable(
            Step::send(
                "reserve-credit",
                customer_commands(),
                move |o: &CreateOrder| Command::new("ReserveCredit", &credit(o)),
            ),
            Compensation::send(customer_commands(), move |o: &CreateOrder| {
                Command::new("ReleaseCredit", &credit(o))
            }),
        )
        .compensatable(
            Step::send(
                "reserve-stock",
                inventory_commands(),
                move |o: &CreateOrder| Command::new("ReserveStock", &stock(o)),
            ),
            Compensation::send(inventory_commands(), move |o: &CreateOrder| {
                Command::new("ReleaseStock", &stock(o))
            }),
        )
        .pivot(Step::local("approve", |o: &mut CreateOrder, unit| {
            set_state(o, unit, APPROVED)
        }))
        .retriable(Step::send(
            "notify",
            customer_commands(),
            |o: &CreateOrder| {
                Command::new(
                    "NotifyCustomer",
                    &serde_json::json!({"order_id": o.order_id, "customer_id": o.customer_id}),
                )
            },
        ))
        .build()
}

/// The customer service's side of the saga: credit reserved per order (in the same customer
/// documents as the choreography's reservations), released, and a notification recorded.
pub fn customer_participant() -> Participant {
    Participant::new(crate::customer::SOURCE)
        .on("ReserveCredit", |r: CreditRequest, _cmd, unit| {
            Box::pin(async move {
                let Some(mut c) = unit.get_as::<Customer>(CUSTOMERS, &r.customer_id).await? else {
                    return Ok(Reply::failure(format!(
                        "unknown customer {}",
                        r.customer_id
                    )));
                };
                if c.reservations.contains_key(&r.order_id) {
                    return Ok(Reply::ok());
                }
                if c.available_credit() < r.order_total {
                    return Ok(Reply::failure(format!(
                        "credit limit exceeded: {} available, {} asked",
                        c.available_credit(),
                        r.order_total
                    )));
                }
                c.reservations.insert(r.order_id.clone(), r.order_total);
                unit.put_as(CUSTOMERS, &c.customer_id, &c).await?;
                Ok(Reply::ok())
            })
        })
        .on_compensation("ReleaseCredit", |r: CreditRequest, _cmd, unit| {
            Box::pin(async move {
                if let Some(mut c) = unit.get_as::<Customer>(CUSTOMERS, &r.customer_id).await?
                    && c.reservations.remove(&r.order_id).is_some()
                {
                    unit.put_as(CUSTOMERS, &c.customer_id, &c).await?;
                }
                Ok(Reply::ok())
            })
        })
        .on("NotifyCustomer", |n: serde_json::Value, _cmd, unit| {
            Box::pin(async move {
                let order_id = n["order_id"].as_str().unwrap_or_default().to_owned();
                unit.put_as(NOTIFICATIONS, &order_id, &n).await?;
                Ok(Reply::ok())
            })
        })
}

/// The orchestrated flow's side of the order service.
#[derive(Clone)]
pub struct OrchestratedOrders {
    orchestrator: Orchestrator<CreateOrder>,
    db: Arc<dyn Database>,
}

impl OrchestratedOrders {
    pub fn new(db: Arc<dyn Database>, broker: Arc<dyn Broker>) -> Self {
        let config = OrchestratorConfig::default().with_service(crate::order::SOURCE);
        Self {
            orchestrator: Orchestrator::new(definition(), db.clone(), broker, config),
            db,
        }
    }

    /// The order service's database, where the sagas live.
    pub fn database(&self) -> &Arc<dyn Database> {
        &self.db
    }

    pub fn orchestrator(&self) -> &Orchestrator<CreateOrder> {
        &self.orchestrator
    }

    /// Places an order of `lines` for `customer_id`: starts its saga; returns the order id.
    ///
    /// # Errors
    /// [`AppError::Invalid`] for a malformed customer id, no lines, a line that is not
    /// positive, a product listed twice, or a total out of range.
    pub async fn place(
        &self,
        customer_id: &str,
        order_total: i64,
        lines: Vec<Line>,
    ) -> Result<String, AppError> {
        let customer_id = crate::canonical_id("customer id", customer_id)?;
        crate::validate_amount("order_total", order_total, false)?;
        if lines.is_empty() || lines.len() > 100 {
            return Err(AppError::Invalid("an order has 1 to 100 lines".into()));
        }
        let mut seen = HashSet::new();
        for l in &lines {
            crate::validate_amount("quantity", l.quantity, false)?;
            if l.product_id.is_empty() || l.product_id.len() > 200 || !seen.insert(&l.product_id) {
                return Err(AppError::Invalid(format!(
                    "product ids must be 1 to 200 bytes and listed once, got {:?}",
                    l.product_id
                )));
            }
        }
        let order_id = uuid::Uuid::now_v7().to_string();
        let data = CreateOrder {
            order_id: order_id.clone(),
            customer_id,
            order_total,
            lines,
        };
        let id = SagaId::new(order_id.clone())?;
        match self.orchestrator.start_with_id(id, data).await? {
            Started::New => Ok(order_id),
            Started::Exists => Err(AppError::Conflict(format!("order {order_id} exists"))),
        }
    }

    pub async fn get(&self, order_id: &str) -> Result<Option<OrchestratedOrder>, AppError> {
        Ok(self.db.get_document_as(ORDERS, order_id).await?)
    }

    /// Every orchestrated order, in id order.
    pub async fn all(&self) -> Result<Vec<OrchestratedOrder>, AppError> {
        Ok(self.db.all_documents_as(ORDERS).await?)
    }

    /// The order's saga, with its timeline.
    pub async fn saga(&self, order_id: &str) -> Result<Option<SagaInstance>, AppError> {
        Ok(self.orchestrator.instance(&SagaId::new(order_id)?).await?)
    }

    /// Every `CreateOrder` saga.
    pub async fn sagas(&self) -> Result<Vec<tributary::saga::SagaSummary>, AppError> {
        Ok(SagaAdmin::new(self.db.clone())
            .list(&SagaFilter::default().with_type(SAGA_TYPE))
            .await?)
    }

    /// Every `CreateOrder` saga with its timeline.
    pub async fn instances(&self) -> Result<Vec<SagaInstance>, AppError> {
        let all: Vec<SagaInstance> = self.db.all_documents_as(tributary::saga::SAGAS).await?;
        Ok(all
            .into_iter()
            .filter(|s| s.saga_type == SAGA_TYPE)
            .collect())
    }
}
