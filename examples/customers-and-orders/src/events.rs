//! The events the services exchange, and the topics they travel on.
//!
//! Money is integer minor units (cents). Saga replies are keyed by order, so each order's
//! replies arrive in order; `subject` always names the aggregate the event is about.

use serde::{Deserialize, Serialize};
use tributary::Topic;

/// Topic of the customer service's events (its outbox).
pub fn customer_topic() -> Topic {
    Topic::new("Customer").unwrap_or_else(|_| unreachable!("a valid topic name"))
}

/// Topic of the order service's events (its event store; the aggregate type is the topic).
pub fn order_topic() -> Topic {
    Topic::new("Order").unwrap_or_else(|_| unreachable!("a valid topic name"))
}

/// Topic of the orchestrated orders' events (`OrderCreated`, `OrderApproved`, `OrderRejected`,
/// published by the `CreateOrder` saga's local steps). Not [`order_topic`]: the customer
/// service reacts to an `OrderCreated` there by reserving credit, which the saga asks for by
/// command instead; the order-history view reads both.
pub fn orchestrated_order_topic() -> Topic {
    Topic::new("OrchestratedOrder").unwrap_or_else(|_| unreachable!("a valid topic name"))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerCreated {
    pub customer_id: String,
    pub name: String,
    pub credit_limit: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditReserved {
    pub order_id: String,
    pub customer_id: String,
    pub order_total: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditLimitExceeded {
    pub order_id: String,
    pub customer_id: String,
    pub order_total: i64,
    pub available_credit: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerValidationFailed {
    pub order_id: String,
    pub customer_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditReleased {
    pub order_id: String,
    pub customer_id: String,
    pub amount: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: String,
    pub customer_id: String,
    pub order_total: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderApproved {
    pub order_id: String,
    pub customer_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {
    pub order_id: String,
    pub customer_id: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: String,
    pub customer_id: String,
    pub order_total: i64,
}
