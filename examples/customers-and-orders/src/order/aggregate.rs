//! The `Order` aggregate: event sourced, its state rebuilt from its events.

use std::fmt;

use serde::{Deserialize, Serialize};
use tributary::Aggregate;

use crate::events::{OrderApproved, OrderCancelled, OrderCreated, OrderRejected};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderState {
    /// No order yet (no events).
    #[default]
    None,
    New,
    Approved,
    Rejected,
    Cancelled,
}

impl OrderState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderState::Approved | OrderState::Rejected | OrderState::Cancelled
        )
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrderState::None => "NONE",
            OrderState::New => "NEW",
            OrderState::Approved => "APPROVED",
            OrderState::Rejected => "REJECTED",
            OrderState::Cancelled => "CANCELLED",
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub customer_id: String,
    pub order_total: i64,
    pub state: OrderState,
}

#[derive(Clone, Debug)]
pub enum OrderCommand {
    Create {
        order_id: String,
        customer_id: String,
        order_total: i64,
    },
    Approve,
    Reject {
        reason: String,
    },
    Cancel,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    OrderCreated(OrderCreated),
    OrderApproved(OrderApproved),
    OrderRejected(OrderRejected),
    OrderCancelled(OrderCancelled),
}

/// A command the order's current state does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("order {0} already exists")]
    AlreadyExists(String),
    #[error("no such order")]
    NotFound,
    #[error("order is {state}; it cannot be {action}")]
    InvalidTransition {
        state: OrderState,
        action: &'static str,
    },
}

impl Aggregate for Order {
    const TYPE: &'static str = "Order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        let not_allowed = |action| OrderError::InvalidTransition {
            state: self.state,
            action,
        };
        match (command, self.state) {
            (
                OrderCommand::Create {
                    order_id,
                    customer_id,
                    order_total,
                },
                OrderState::None,
            ) => Ok(vec![OrderEvent::OrderCreated(OrderCreated {
                order_id,
                customer_id,
                order_total,
            })]),
            (OrderCommand::Create { .. }, _) => {
                Err(OrderError::AlreadyExists(self.order_id.clone()))
            }
            (_, OrderState::None) => Err(OrderError::NotFound),
            (OrderCommand::Approve, OrderState::New) => {
                Ok(vec![OrderEvent::OrderApproved(OrderApproved {
                    order_id: self.order_id.clone(),
                    customer_id: self.customer_id.clone(),
                })])
            }
            (OrderCommand::Approve, _) => Err(not_allowed("approved")),
            (OrderCommand::Reject { reason }, OrderState::New) => {
                Ok(vec![OrderEvent::OrderRejected(OrderRejected {
                    order_id: self.order_id.clone(),
                    customer_id: self.customer_id.clone(),
                    reason,
                })])
            }
            (OrderCommand::Reject { .. }, _) => Err(not_allowed("rejected")),
            (OrderCommand::Cancel, OrderState::Approved) => {
                Ok(vec![OrderEvent::OrderCancelled(OrderCancelled {
                    order_id: self.order_id.clone(),
                    customer_id: self.customer_id.clone(),
                    order_total: self.order_total,
                })])
            }
            (OrderCommand::Cancel, _) => Err(not_allowed("cancelled")),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderCreated(e) => {
                self.order_id = e.order_id.clone();
                self.customer_id = e.customer_id.clone();
                self.order_total = e.order_total;
                self.state = OrderState::New;
            }
            OrderEvent::OrderApproved(_) => self.state = OrderState::Approved,
            OrderEvent::OrderRejected(_) => self.state = OrderState::Rejected,
            OrderEvent::OrderCancelled(_) => self.state = OrderState::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use tributary_testkit::given;

    use super::*;

    fn created() -> OrderEvent {
        OrderEvent::OrderCreated(OrderCreated {
            order_id: "o1".into(),
            customer_id: "c1".into(),
            order_total: 2500,
        })
    }

    #[test]
    fn a_new_order_is_created_once() {
        given::<Order>(vec![])
            .when(OrderCommand::Create {
                order_id: "o1".into(),
                customer_id: "c1".into(),
                order_total: 2500,
            })
            .then_expect(vec![created()]);
        let err = given::<Order>(vec![created()])
            .when(OrderCommand::Create {
                order_id: "o1".into(),
                customer_id: "c1".into(),
                order_total: 1,
            })
            .then_expect_error();
        assert_eq!(err, OrderError::AlreadyExists("o1".into()));
    }

    #[test]
    fn approval_and_rejection_only_from_new() {
        given::<Order>(vec![created()])
            .when(OrderCommand::Approve)
            .then_expect(vec![OrderEvent::OrderApproved(OrderApproved {
                order_id: "o1".into(),
                customer_id: "c1".into(),
            })]);
        let approved = OrderEvent::OrderApproved(OrderApproved {
            order_id: "o1".into(),
            customer_id: "c1".into(),
        });
        let err = given::<Order>(vec![created(), approved.clone()])
            .when(OrderCommand::Reject {
                reason: "late".into(),
            })
            .then_expect_error();
        assert!(matches!(
            err,
            OrderError::InvalidTransition {
                state: OrderState::Approved,
                ..
            }
        ));
        given::<Order>(vec![])
            .when(OrderCommand::Approve)
            .then_expect_error();
    }

    #[test]
    fn only_approved_orders_can_be_cancelled() {
        let err = given::<Order>(vec![created()])
            .when(OrderCommand::Cancel)
            .then_expect_error();
        assert!(matches!(
            err,
            OrderError::InvalidTransition {
                state: OrderState::New,
                ..
            }
        ));
        let approved = OrderEvent::OrderApproved(OrderApproved {
            order_id: "o1".into(),
            customer_id: "c1".into(),
        });
        given::<Order>(vec![created(), approved])
            .when(OrderCommand::Cancel)
            .then_expect(vec![OrderEvent::OrderCancelled(OrderCancelled {
                order_id: "o1".into(),
                customer_id: "c1".into(),
                order_total: 2500,
            })]);
    }
}
