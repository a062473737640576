//! The order service: `Order` is event sourced in the service's own event store; the store is
//! relayed to the `Order` topic. Its consumer completes the saga: approve on `CreditReserved`,
//! reject (the compensating step) on `CreditLimitExceeded` or `CustomerValidationFailed`.

mod aggregate;

use std::sync::Arc;

use std::time::Duration;

use tributary::{
    CommandError, ConsistencyToken, Database, Dispatch, Envelope, Executed, GroupName,
    HandlerError, Metadata, Repository, UnitOfWork, View, WaitError,
};

pub use aggregate::{Order, OrderCommand, OrderError, OrderEvent, OrderState};

use crate::AppError;
use crate::events::{
    CreditLimitExceeded, CreditReserved, CustomerValidationFailed, customer_topic, order_topic,
};

pub const SOURCE: &str = "order-service";

/// The order service over its database.
#[derive(Clone)]
pub struct OrderService {
    db: Arc<dyn Database>,
    repository: Repository<Order>,
    /// The service's consumer group's view of the customer topic: an order's state includes
    /// the credit decision once this view applied it.
    decisions: View,
}

/// The order service's consumer group (the saga's replies from the customer service).
pub const GROUP: &str = "order-service";

impl OrderService {
    pub fn new(db: Arc<dyn Database>) -> Self {
        let repository = Repository::new(db.event_store(), SOURCE).with_max_attempts(10);
        let group = GroupName::new(GROUP).unwrap_or_else(|_| unreachable!("a valid group name"));
        let decisions = View::new(db.clone(), group, &[customer_topic()]);
        Self {
            db,
            repository,
            decisions,
        }
    }

    pub fn database(&self) -> &Arc<dyn Database> {
        &self.db
    }

    /// Records a new order as NEW and emits `OrderCreated`, which starts the saga. The token
    /// covers the order and the saga's steps it causes: the credit decision (customer
    /// service) and the approval or rejection (this service).
    ///
    /// # Errors
    /// [`AppError::Invalid`] for a malformed customer id or a total that is not positive.
    pub async fn create(
        &self,
        customer_id: String,
        order_total: i64,
    ) -> Result<(Order, ConsistencyToken), AppError> {
        let customer_id = crate::canonical_id("customer id", &customer_id)?;
        crate::validate_amount("order_total", order_total, false)?;
        let order_id = uuid::Uuid::now_v7().to_string();
        let command = OrderCommand::Create {
            order_id: order_id.clone(),
            customer_id,
            order_total,
        };
        let (done, token) = self.run(order_id, command).await?;
        let token = token
            .and_follow_ups(&customer_topic(), crate::customer::SOURCE)
            .and_follow_ups(&order_topic(), SOURCE);
        Ok((done.state, token))
    }

    /// Runs `command` on order `order_id` in a unit of work of its own.
    async fn run(
        &self,
        order_id: String,
        command: OrderCommand,
    ) -> Result<(Executed<Order>, ConsistencyToken), AppError> {
        let repository = self.repository.clone();
        self.db
            .transact(move |unit| {
                Box::pin(async move {
                    let done = repository
                        .execute(unit, &order_id, command, &Metadata::default())
                        .await?;
                    Ok((done, unit.written()))
                })
            })
            .await
            .map_err(order_error)
    }

    /// The order, once this service has applied every write of `token` it reads (the credit
    /// decision of the saga a created order started), waiting up to `wait`.
    ///
    /// # Errors
    /// As [`OrderService::get`], or [`AppError::NotConsistent`] when the writes were not
    /// applied within `wait`.
    pub async fn get_consistent(
        &self,
        order_id: &str,
        token: &ConsistencyToken,
        wait: Duration,
    ) -> Result<Option<Order>, AppError> {
        self.decisions.wait_for(token, wait).await?;
        self.get(order_id).await
    }

    /// The current state of an order, from its events.
    pub async fn get(&self, order_id: &str) -> Result<Option<Order>, AppError> {
        let order_id = crate::canonical_id("order id", order_id)?;
        let loaded = self.repository.load(&order_id).await?;
        Ok(loaded.exists().then_some(loaded.state))
    }

    /// Cancels an APPROVED order (emitting `OrderCancelled`, which releases its credit).
    ///
    /// # Errors
    /// [`AppError::NotFound`], or [`AppError::Conflict`] when the order is not APPROVED.
    pub async fn cancel(&self, order_id: &str) -> Result<(Order, ConsistencyToken), AppError> {
        let order_id = crate::canonical_id("order id", order_id)?;
        let (done, token) = self.run(order_id, OrderCommand::Cancel).await?;
        Ok((done.state, token))
    }

    /// Every order, folded from the whole event store (for invariant checks and audits).
    pub async fn all(&self) -> Result<std::collections::BTreeMap<String, Order>, AppError> {
        let store = self.db.event_store();
        let mut orders: std::collections::BTreeMap<String, Order> = Default::default();
        let mut next = tributary::Position::START;
        loop {
            let page = store.read_all(next, 4096).await?;
            let Some(last) = page.last().map(|e| e.position) else {
                return Ok(orders);
            };
            next = last.next();
            for recorded in page {
                let Some(id) = recorded.envelope.subject.clone() else {
                    continue;
                };
                let event: OrderEvent = tributary::decode_event(
                    &recorded.envelope.event_type,
                    &recorded.envelope.data,
                )?;
                tributary::Aggregate::apply(orders.entry(id).or_default(), &event);
            }
        }
    }

    /// The order service's consumer of the customer topic.
    pub fn handler(&self) -> Dispatch {
        let (approve, reject_limit, reject_customer) = (
            self.repository.clone(),
            self.repository.clone(),
            self.repository.clone(),
        );
        Dispatch::new()
            .on("CreditReserved", move |e: CreditReserved, cause, unit| {
                let repository = approve.clone();
                Box::pin(async move {
                    let command = OrderCommand::Approve;
                    settle(&repository, unit, &e.order_id, command, cause).await
                })
            })
            .on(
                "CreditLimitExceeded",
                move |e: CreditLimitExceeded, cause, unit| {
                    let repository = reject_limit.clone();
                    Box::pin(async move {
                        let reason =
                            format!("credit limit exceeded: {} available", e.available_credit);
                        let command = OrderCommand::Reject { reason };
                        settle(&repository, unit, &e.order_id, command, cause).await
                    })
                },
            )
            .on(
                "CustomerValidationFailed",
                move |e: CustomerValidationFailed, cause, unit| {
                    let repository = reject_customer.clone();
                    Box::pin(async move {
                        let reason = format!("unknown customer {}", e.customer_id);
                        let command = OrderCommand::Reject { reason };
                        settle(&repository, unit, &e.order_id, command, cause).await
                    })
                },
            )
            .ignore(&["CustomerCreated", "CreditReleased"])
    }
}

/// Applies a saga reply. A reply for an order that is already settled is a repeat and is
/// acknowledged without effect; a reply for an order that does not exist is a real error.
async fn settle(
    repository: &Repository<Order>,
    unit: &mut dyn UnitOfWork,
    order_id: &str,
    command: OrderCommand,
    cause: &Envelope,
) -> Result<(), HandlerError> {
    let metadata = Metadata::caused_by(cause);
    match repository.execute(unit, order_id, command, &metadata).await {
        Ok(_) => Ok(()),
        Err(CommandError::Rejected(OrderError::InvalidTransition { state, action })) => {
            tracing::info!(order_id, %state, action, "saga reply for a settled order ignored");
            Ok(())
        }
        Err(CommandError::Rejected(e)) => {
            Err(HandlerError::reject(format!("order {order_id}: {e}")))
        }
        Err(CommandError::Store(e)) => Err(e.into()),
    }
}

impl From<WaitError> for AppError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Store(e) => AppError::Store(e),
            other => AppError::NotConsistent(other),
        }
    }
}

fn order_error(e: CommandError<OrderError>) -> AppError {
    match e {
        CommandError::Rejected(OrderError::NotFound) => AppError::NotFound("order".into()),
        CommandError::Rejected(e) => AppError::Conflict(e.to_string()),
        CommandError::Store(e) => e.into(),
    }
}
