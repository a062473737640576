//! The inventory service: stock per product in its own database, reserved and released by
//! the `CreateOrder` saga's commands (it takes part in the orchestrated flow only).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tributary::saga::{Participant, Reply};
use tributary::{Database, Error, HandlerError, UnitOfWork, UnitOfWorkExt};

use super::{Line, StockRequest};
use crate::AppError;

pub const SOURCE: &str = "inventory-service";
const PRODUCTS: &str = "products";

/// A product's stock: what is free, and what each order holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub product_id: String,
    pub available: i64,
    /// Everything ever restocked: free + reserved always equals it.
    #[serde(default)]
    pub received: i64,
    /// Quantity reserved per order id (reserving is idempotent per order).
    pub reservations: BTreeMap<String, i64>,
}

impl Product {
    pub fn reserved(&self) -> i64 {
        self.reservations.values().sum()
    }
}

/// The inventory service over its database.
#[derive(Clone)]
pub struct InventoryService {
    db: Arc<dyn Database>,
}

impl InventoryService {
    pub fn new(db: Arc<dyn Database>) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Arc<dyn Database> {
        &self.db
    }

    /// Adds `quantity` to the free stock of `product_id` (creating the product).
    ///
    /// # Errors
    /// [`AppError::Invalid`] for an empty product id or a quantity that is not positive.
    pub async fn restock(&self, product_id: &str, quantity: i64) -> Result<Product, AppError> {
        if product_id.is_empty() || product_id.len() > 200 {
            return Err(AppError::Invalid(
                "product_id must be 1 to 200 bytes".into(),
            ));
        }
        crate::validate_amount("quantity", quantity, false)?;
        let id = product_id.to_owned();
        Ok(self
            .db
            .transact(move |unit| {
                Box::pin(async move {
                    let mut p = unit
                        .get_as::<Product>(PRODUCTS, &id)
                        .await?
                        .unwrap_or(Product {
                            product_id: id.clone(),
                            available: 0,
                            received: 0,
                            reservations: BTreeMap::new(),
                        });
                    p.available = p
                        .available
                        .checked_add(quantity)
                        .ok_or_else(|| Error::invalid("stock overflows"))?;
                    p.received = p
                        .received
                        .checked_add(quantity)
                        .ok_or_else(|| Error::invalid("stock overflows"))?;
                    unit.put_as(PRODUCTS, &id, &p).await?;
                    Ok::<_, Error>(p)
                })
            })
            .await?)
    }

    pub async fn get(&self, product_id: &str) -> Result<Option<Product>, AppError> {
        Ok(self.db.get_document_as(PRODUCTS, product_id).await?)
    }

    /// Every product, in id order.
    pub async fn all(&self) -> Result<Vec<Product>, AppError> {
        Ok(self.db.all_documents_as(PRODUCTS).await?)
    }

    /// The participant handling the saga's `ReserveStock` / `ReleaseStock` commands.
    pub fn participant() -> Participant {
        Participant::new(SOURCE)
            .on("ReserveStock", |r: StockRequest, _cmd, unit| {
                Box::pin(reserve(r, unit))
            })
            .on_compensation("ReleaseStock", |r: StockRequest, _cmd, unit| {
                Box::pin(release(r, unit))
            })
    }
}

/// Reserves every line or none: a line for an unknown product or beyond the free stock fails
/// the step (the saga then releases the customer's credit).
async fn reserve(r: StockRequest, unit: &mut dyn UnitOfWork) -> Result<Reply, HandlerError> {
    let mut products = Vec::new();
    for Line {
        product_id,
        quantity,
    } in &r.lines
    {
        let Some(mut p) = unit.get_as::<Product>(PRODUCTS, product_id).await? else {
            return Ok(Reply::failure(format!("unknown product {product_id}")));
        };
        if p.reservations.contains_key(&r.order_id) {
            continue; // reserved already for this order
        }
        if p.available < *quantity {
            return Ok(Reply::failure(format!(
                "out of stock: {product_id} has {} of {quantity}",
                p.available
            )));
        }
        p.available -= quantity;
        p.reservations.insert(r.order_id.clone(), *quantity);
        products.push(p);
    }
    for p in products {
        unit.put_as(PRODUCTS, &p.product_id, &p).await?;
    }
    Ok(Reply::ok())
}

async fn release(r: StockRequest, unit: &mut dyn UnitOfWork) -> Result<Reply, HandlerError> {
    for line in &r.lines {
        let Some(mut p) = unit.get_as::<Product>(PRODUCTS, &line.product_id).await? else {
            continue;
        };
        if let Some(q) = p.reservations.remove(&r.order_id) {
            p.available += q;
            unit.put_as(PRODUCTS, &p.product_id, &p).await?;
        }
    }
    Ok(Reply::ok())
}
