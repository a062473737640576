//! # customers-and-orders — Tributary's reference application
//!
//! The B2B store: three services that own private databases and talk only through events.
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
//! [`orchestration`] adds an orchestrated `CreateOrder` saga (credit, then stock at an inventory
//! service, then approval) beside that choreography, which stays the default.
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

pub(crate) fn validate_id(what: &str, id: &str) -> Result<(), AppError> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| AppError::Invalid(format!("{what} must be a UUID, got {id:?}")))
}
