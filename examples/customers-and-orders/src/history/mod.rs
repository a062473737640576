//! The order-history service: a CQRS view. It consumes customer and order events and keeps one
//! JSON document per customer, and answers queries from that document only.
//!
//! Events of one order arrive in order (they share the order's key), but a customer's events
//! and its orders' events travel on different topics and may interleave in any order, so
//! every update merges into the document instead of assuming what came before.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use std::time::Duration;

use tributary::{
    ConsistencyToken, Database, Dispatch, GroupName, HandlerError, UnitOfWork, UnitOfWorkExt, View,
};

use crate::AppError;
use crate::events::{
    CustomerCreated, OrderApproved, OrderCancelled, OrderCreated, OrderRejected, customer_topic,
    orchestrated_order_topic, order_topic,
};
use crate::order::OrderState;

const HISTORY: &str = crate::system::HISTORY_COLLECTION;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    pub order_total: i64,
    pub state: OrderState,
}

/// One customer's view: name, limit, and every order with its current state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerHistory {
    pub customer_id: String,
    /// `None` until the customer's own event has arrived.
    pub name: Option<String>,
    pub credit_limit: Option<i64>,
    pub orders: BTreeMap<String, OrderSummary>,
}

/// The topics the view reads: customers, and orders of both flows (the same events).
pub fn topics() -> Vec<tributary::Topic> {
    vec![customer_topic(), order_topic(), orchestrated_order_topic()]
}

#[derive(Clone)]
pub struct HistoryService {
    db: Arc<dyn Database>,
    view: View,
}

impl HistoryService {
    pub fn new(db: Arc<dyn Database>) -> Self {
        let group = GroupName::new(crate::system::HISTORY_GROUP)
            .unwrap_or_else(|_| unreachable!("a valid group name"));
        let view = View::new(db.clone(), group, &topics());
        Self { db, view }
    }

    /// A customer's history once the view has applied every write of `token` (waiting up to
    /// `wait`).
    ///
    /// # Errors
    /// As [`HistoryService::get`], or [`AppError::NotConsistent`] when the writes were not
    /// applied within `wait`.
    pub async fn get_consistent(
        &self,
        customer_id: &str,
        token: &ConsistencyToken,
        wait: Duration,
    ) -> Result<Option<CustomerHistory>, AppError> {
        self.view.wait_for(token, wait).await?;
        self.get(customer_id).await
    }

    pub fn database(&self) -> &Arc<dyn Database> {
        &self.db
    }

    /// A customer's history, if the view knows the customer.
    pub async fn get(&self, customer_id: &str) -> Result<Option<CustomerHistory>, AppError> {
        let customer_id = crate::canonical_id("customer id", customer_id)?;
        let doc: Option<CustomerHistory> = self.db.get_document_as(HISTORY, &customer_id).await?;
        Ok(doc.filter(|h| h.name.is_some()))
    }

    /// Every document of the view (for invariant checks).
    pub async fn all(&self) -> Result<Vec<CustomerHistory>, AppError> {
        Ok(self.db.all_documents_as(HISTORY).await?)
    }

    /// The view's consumer of both topics.
    pub fn handler() -> Dispatch {
        Dispatch::new()
            .on("CustomerCreated", |e: CustomerCreated, _, unit| {
                Box::pin(async move {
                    update(unit, &e.customer_id, |h| {
                        h.name = Some(e.name.clone());
                        h.credit_limit = Some(e.credit_limit);
                    })
                    .await
                })
            })
            .on("OrderCreated", |e: OrderCreated, _, unit| {
                Box::pin(async move {
                    update(unit, &e.customer_id, |h| {
                        let order = h.orders.entry(e.order_id.clone()).or_default();
                        order.order_total = e.order_total;
                        if order.state == OrderState::None {
                            order.state = OrderState::New;
                        }
                    })
                    .await
                })
            })
            .on("OrderApproved", |e: OrderApproved, _, unit| {
                Box::pin(async move {
                    set_state(unit, &e.customer_id, &e.order_id, OrderState::Approved).await
                })
            })
            .on("OrderRejected", |e: OrderRejected, _, unit| {
                Box::pin(async move {
                    set_state(unit, &e.customer_id, &e.order_id, OrderState::Rejected).await
                })
            })
            .on("OrderCancelled", |e: OrderCancelled, _, unit| {
                Box::pin(async move {
                    set_state(unit, &e.customer_id, &e.order_id, OrderState::Cancelled).await
                })
            })
            .ignore(&[
                "CreditReserved",
                "CreditLimitExceeded",
                "CustomerValidationFailed",
                "CreditReleased",
            ])
    }
}

async fn update(
    unit: &mut dyn UnitOfWork,
    customer_id: &str,
    change: impl FnOnce(&mut CustomerHistory) + Send,
) -> Result<(), HandlerError> {
    let mut history: CustomerHistory =
        unit.get_as(HISTORY, customer_id)
            .await?
            .unwrap_or_else(|| CustomerHistory {
                customer_id: customer_id.to_owned(),
                ..CustomerHistory::default()
            });
    change(&mut history);
    unit.put_as(HISTORY, customer_id, &history).await?;
    Ok(())
}

async fn set_state(
    unit: &mut dyn UnitOfWork,
    customer_id: &str,
    order_id: &str,
    state: OrderState,
) -> Result<(), HandlerError> {
    update(unit, customer_id, |h| {
        h.orders.entry(order_id.to_owned()).or_default().state = state;
    })
    .await
}
