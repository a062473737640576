//! # customers-and-orders — Tributary's reference application
//!
//! The B2B store: four services that own private databases and talk only through messages.
//!
//! - [`customer::CustomerService`] — customers with credit limits, kept as current state
//!   (documents) and published through the transactional outbox. On `OrderCreated` it reserves
//!   credit (`CreditReserved`), refuses (`CreditLimitExceeded`) or does not know the customer
//!   (`CustomerValidationFailed`); on `OrderCancelled` it releases the credit.
//! - [`order::OrderService`] — orders, event sourced. Creating one emits `OrderCreated`; the
//!   saga's reply approves it or rejects it (the compensation); an approved order can be
//!   cancelled.
//! - [`history::HistoryService`] — a CQRS view: one document per customer with its orders.
//!
//! - [`orchestration::inventory::InventoryService`] — stock per product; reserves and releases
//!   it on the commands of the orchestrated flow.
//!
//! [`orchestration`] is the second order flow: an order with line items starts a `CreateOrder`
//! saga in the order service (reserve credit → reserve stock → approve → notify, compensating
//! in reverse when a reservation is refused). The choreography stays the default of
//! `POST /orders`; an order with `lines` takes the orchestrated flow.
//!
//! [`system`] wires them to a broker with relays and consumer groups; [`http`] serves the API;
//! [`demo`] runs a workload and checks the [`invariants`].

pub mod customer;
pub mod demo;
pub mod events;
pub mod history;
pub mod http;
pub mod invariants;
pub mod orchestration;
pub mod order;
pub mod read_your_writes;
pub mod system;

/// What can go wrong in a service call, mapped to HTTP statuses by [`http`].
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed or breaks a rule (400).
    #[error("{0}")]
    Invalid(String),
    /// The thing asked for does not exist (404).
    #[error("{0} not found")]
    NotFound(String),
    /// The request is not allowed in the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The service's storage failed (503 when worth retrying, else 500).
    #[error(transparent)]
    Store(#[from] tributary::Error),
    /// A read asked to include writes (a consistency token) the view has not applied yet (503
    /// with `Retry-After`, and what is pending).
    #[error("{0}")]
    NotConsistent(tributary::WaitError),
    /// A consistency token from outside is malformed or not this deployment's (400).
    #[error("{0}")]
    BadToken(#[from] tributary::TokenError),
}

/// The largest amount accepted (cents): far beyond any real order, far below overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

pub(crate) fn validate_amount(name: &str, value: i64, allow_zero: bool) -> Result<(), AppError> {
    if value < 0 || (value == 0 && !allow_zero) {
        let min = if allow_zero { "0 or more" } else { "positive" };
        return Err(AppError::Invalid(format!(
            "{name} must be {min} (cents), got {value}"
        )));
    }
    if value > MAX_AMOUNT {
        return Err(AppError::Invalid(format!(
            "{name} must be at most {MAX_AMOUNT} (cents)"
        )));
    }
    Ok(())
}

/// The one spelling of an id from outside (HTTP, the CLI) that the services store and look
/// up: a UUID in lower-case hyphenated form. Every spelling of a UUID is accepted (upper case,
/// `{…}`, `urn:uuid:…`, no hyphens) and turned into it, so that the same customer is never
/// two customers; anything else is [`AppError::Invalid`] before it reaches a unit of work.
///
/// # Errors
/// [`AppError::Invalid`] when `id` is not a UUID.
pub fn canonical_id(what: &str, id: &str) -> Result<String, AppError> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| AppError::Invalid(format!("{what} must be a UUID, got {id:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_uuid_is_one_id_and_anything_else_is_refused() {
        let id = "0192f3a4-5b6c-7d8e-9f01-23456789abcd";
        for spelling in [
            id,
            "0192F3A4-5B6C-7D8E-9F01-23456789ABCD",
            "{0192f3a4-5b6c-7d8e-9f01-23456789abcd}",
            "urn:uuid:0192f3a4-5b6c-7d8e-9f01-23456789abcd",
            "URN:UUID:0192F3A4-5B6C-7D8E-9F01-23456789ABCD",
            "0192f3a45b6c7d8e9f0123456789abcd",
        ] {
            assert_eq!(
                canonical_id("id", spelling).ok().as_deref(),
                Some(id),
                "{spelling}"
            );
        }
        for bad in [
            "",
            "x",
            "0192f3a4-5b6c-7d8e-9f01-23456789abcg",
            "0192f3a45b6c7d8e9f0123456789abc",
        ] {
            assert!(
                matches!(canonical_id("id", bad), Err(AppError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
