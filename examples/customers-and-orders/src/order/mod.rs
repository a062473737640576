//! The order service: `Order` is event sourced in the service's own event store; the store is
//! relayed to the `Order` topic. Its consumer completes the saga: approve on `CreditReserved`,
//! reject (the compensating step) on `CreditLimitExceeded` or `CustomerValidationFailed`.

mod aggregate;

use std::sync::Arc;

use tributary::{
    CommandError, Database, Dispatch, Envelope, Executed, HandlerError, Metadata, Repository,
    UnitOfWork,
};

pub use aggregate::{Order, OrderCommand, OrderError, OrderEvent, OrderState};

use crate::AppError;
use crate::events::{CreditLimitExceeded, CreditReserved, CustomerValidationFailed};

pub const SOURCE: &str = "order-service";

/// The order service over its database.
#[derive(Clone)]
pub struct OrderService {
    db: Arc<dyn Database>,
    repository: Repository<Order>,
}

impl OrderService {
    pub fn new(db: Arc<dyn Database>) -> Self {
        let repository = Repository::new(db.event_store(), SOURCE).with_max_attempts(10);
        Self { db, repository }
    }

    pub fn database(&self) -> &Arc<dyn Database> {
        &self.db
    }

    /// Records a new order as NEW and emits `OrderCreated`, which starts the saga.
    ///
    /// # Errors
    /// [`AppError::Invalid`] for a malformed customer id or a total that is not positive.
    pub async fn create(&self, customer_id: String, order_total: i64) -> Result<Order, AppError> {
        crate::validate_id("customer id", &customer_id)?;
        crate::validate_amount("order_total", order_total, false)?;
        let order_id = uuid::Uuid::now_v7().to_string();
        let command = OrderCommand::Create {
            order_id: order_id.clone(),
            customer_id,
            order_total,
        };
        let done = self.run(order_id, command).await?;
        Ok(done.state)
    }

    /// Runs `command` on order `order_id` in a unit of work of its own.
    async fn run(
        &self,
        order_id: String,
        command: OrderCommand,
    ) -> Result<Executed<Order>, AppError> {
        let repository = self.repository.clone();
        self.db
            .transact(move |unit| {
                Box::pin(async move {
                    repository
                        .execute(unit, &order_id, command, &Metadata::default())
                        .await
                })
            })
            .await
            .map_err(order_error)
    }

    /// The current state of an order, from its events.
    pub async fn get(&self, order_id: &str) -> Result<Option<Order>, AppError> {
        crate::validate_id("order id", order_id)?;
        let loaded = self.repository.load(order_id).await?;
        Ok(loaded.exists().then_some(loaded.state))
    }

    /// Cancels an APPROVED order (emitting `OrderCancelled`, which releases its credit).
    ///
    /// # Errors
    /// [`AppError::NotFound`], or [`AppError::Conflict`] when the order is not APPROVED.
    pub async fn cancel(&self, order_id: &str) -> Result<Order, AppError> {
        crate::validate_id("order id", order_id)?;
        let done = self.run(order_id.to_owned(), OrderCommand::Cancel).await?;
        Ok(done.state)
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

fn order_error(e: CommandError<OrderError>) -> AppError {
    match e {
        CommandError::Rejected(OrderError::NotFound) => AppError::NotFound("order".into()),
        CommandError::Rejected(e) => AppError::Conflict(e.to_string()),
        CommandError::Store(e) => e.into(),
    }
}
