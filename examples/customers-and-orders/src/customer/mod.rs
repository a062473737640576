//! The customer service: customers and their credit reservations as current state (JSON
//! documents in its own database), changed through units of work that publish events through
//! the transactional outbox.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tributary::{
    ConsistencyToken, Database, Dispatch, Envelope, Error, HandlerError, Payload, UnitOfWork,
    UnitOfWorkExt,
};

use crate::AppError;
use crate::events::{
    CreditLimitExceeded, CreditReleased, CreditReserved, CustomerCreated, CustomerValidationFailed,
    OrderCancelled, OrderCreated, customer_topic,
};

pub const SOURCE: &str = "customer-service";
const CUSTOMERS: &str = "customers";

/// A customer as the customer service stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub customer_id: String,
    pub name: String,
    pub credit_limit: i64,
    /// Credit reserved per order id. Keyed by order, so reserving is idempotent per order.
    pub reservations: BTreeMap<String, i64>,
}

impl Customer {
    pub fn reserved(&self) -> i64 {
        self.reservations.values().sum()
    }

    pub fn available_credit(&self) -> i64 {
        self.credit_limit - self.reserved()
    }
}

/// The customer service over its database.
#[derive(Clone)]
pub struct CustomerService {
    db: Arc<dyn Database>,
}

fn event<T: Serialize>(
    event_type: &str,
    data: &T,
    subject: &str,
    key: &str,
) -> Result<Envelope, Error> {
    Ok(
        Envelope::new(SOURCE, event_type, Payload::from_value(data)?)
            .with_subject(subject)
            .with_aggregate_type("Customer")
            .with_partition_key(key),
    )
}

impl CustomerService {
    pub fn new(db: Arc<dyn Database>) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Arc<dyn Database> {
        &self.db
    }

    /// Creates a customer and publishes `CustomerCreated`; returns the customer and the
    /// consistency token of the write.
    ///
    /// # Errors
    /// [`AppError::Invalid`] for an empty or too long name or a negative limit.
    pub async fn create(
        &self,
        name: String,
        credit_limit: i64,
    ) -> Result<(Customer, ConsistencyToken), AppError> {
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(AppError::Invalid("name must be 1 to 200 characters".into()));
        }
        crate::validate_amount("credit_limit", credit_limit, true)?;
        let customer = Customer {
            customer_id: uuid::Uuid::now_v7().to_string(),
            name,
            credit_limit,
            reservations: BTreeMap::new(),
        };
        let c = customer.clone();
        let token = self
            .db
            .transact(move |unit| {
                Box::pin(async move {
                    unit.put_as(CUSTOMERS, &c.customer_id, &c).await?;
                    let created = CustomerCreated {
                        customer_id: c.customer_id.clone(),
                        name: c.name.clone(),
                        credit_limit: c.credit_limit,
                    };
                    unit.publish(
                        &customer_topic(),
                        event("CustomerCreated", &created, &c.customer_id, &c.customer_id)?,
                    )
                    .await?;
                    Ok::<_, Error>(unit.written())
                })
            })
            .await?;
        Ok((customer, token))
    }

    /// The committed state of a customer.
    pub async fn get(&self, customer_id: &str) -> Result<Option<Customer>, AppError> {
        let customer_id = crate::canonical_id("customer id", customer_id)?;
        Ok(self.db.get_document_as(CUSTOMERS, &customer_id).await?)
    }

    /// Every customer, in id order (for the demo's invariant checks).
    pub async fn all(&self) -> Result<Vec<Customer>, AppError> {
        Ok(self.db.all_documents_as(CUSTOMERS).await?)
    }

    /// The customer service's consumer of the order topic: the credit side of the saga.
    pub fn handler() -> Dispatch {
        Dispatch::new()
            .on("OrderCreated", |o, cause, unit| {
                Box::pin(reserve_credit(o, cause, unit))
            })
            .on("OrderCancelled", |o, cause, unit| {
                Box::pin(release_credit(o, cause, unit))
            })
            .ignore(&["OrderApproved", "OrderRejected"])
    }
}

async fn reserve_credit(
    o: OrderCreated,
    cause: &Envelope,
    unit: &mut dyn UnitOfWork,
) -> Result<(), HandlerError> {
    let Some(mut customer) = unit.get_as::<Customer>(CUSTOMERS, &o.customer_id).await? else {
        let failed = CustomerValidationFailed {
            order_id: o.order_id.clone(),
            customer_id: o.customer_id.clone(),
        };
        unit.publish(
            &customer_topic(),
            event(
                "CustomerValidationFailed",
                &failed,
                &o.customer_id,
                &o.order_id,
            )?
            .caused_by(cause),
        )
        .await?;
        return Ok(());
    };
    if customer.reservations.contains_key(&o.order_id) {
        // Already reserved for this order (a repeated request): nothing more to do.
        return Ok(());
    }
    let available = customer.available_credit();
    if o.order_total <= available {
        customer
            .reservations
            .insert(o.order_id.clone(), o.order_total);
        unit.put_as(CUSTOMERS, &customer.customer_id, &customer)
            .await?;
        let reserved = CreditReserved {
            order_id: o.order_id.clone(),
            customer_id: o.customer_id.clone(),
            order_total: o.order_total,
        };
        unit.publish(
            &customer_topic(),
            event("CreditReserved", &reserved, &o.customer_id, &o.order_id)?.caused_by(cause),
        )
        .await?;
    } else {
        let exceeded = CreditLimitExceeded {
            order_id: o.order_id.clone(),
            customer_id: o.customer_id.clone(),
            order_total: o.order_total,
            available_credit: available,
        };
        unit.publish(
            &customer_topic(),
            event(
                "CreditLimitExceeded",
                &exceeded,
                &o.customer_id,
                &o.order_id,
            )?
            .caused_by(cause),
        )
        .await?;
    }
    Ok(())
}

async fn release_credit(
    o: OrderCancelled,
    cause: &Envelope,
    unit: &mut dyn UnitOfWork,
) -> Result<(), HandlerError> {
    let Some(mut customer) = unit.get_as::<Customer>(CUSTOMERS, &o.customer_id).await? else {
        return Err(HandlerError::reject(format!(
            "order {} was cancelled for unknown customer {}",
            o.order_id, o.customer_id
        )));
    };
    let Some(amount) = customer.reservations.remove(&o.order_id) else {
        // Nothing reserved (already released): releasing is idempotent.
        return Ok(());
    };
    unit.put_as(CUSTOMERS, &customer.customer_id, &customer)
        .await?;
    let released = CreditReleased {
        order_id: o.order_id.clone(),
        customer_id: o.customer_id.clone(),
        amount,
    };
    unit.publish(
        &customer_topic(),
        event("CreditReleased", &released, &o.customer_id, &o.order_id)?.caused_by(cause),
    )
    .await?;
    Ok(())
}
