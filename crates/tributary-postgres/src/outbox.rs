//! The outbox for applications that use sqlx directly: events written in the caller's own
//! transaction, published by the relay after it commits.

use sqlx::{PgConnection, Postgres, Transaction};
use tributary_core::backend::validate_batch;
use tributary_core::{Envelope, OutgoingMessage, Result, Topic};

use crate::database::PgDatabase;
use crate::error::SqlxResultExt;
use crate::sql::Statements;

/// Writes outbox rows in transactions the application manages itself.
///
/// ```no_run
/// use tributary_core::{Envelope, Payload, Topic};
/// use tributary_postgres::{PgConfig, PgDatabase};
///
/// # async fn f() -> tributary_core::Result<()> {
/// let db = PgDatabase::connect(PgConfig::default().with_schema("orders")).await?;
/// let outbox = db.outbox();
/// let mut tx = db.pool().begin().await.expect("begin");
/// sqlx::query("UPDATE my_orders SET state = 'approved' WHERE id = 7")
///     .execute(&mut *tx)
///     .await
///     .expect("update");
/// let event = Envelope::new("orders", "OrderApproved", Payload::null()).with_subject("7");
/// outbox.publish(&mut tx, &Topic::new("Order")?, &event).await?;
/// tx.commit().await.expect("commit"); // the state change and the event, or neither
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgOutbox {
    db: PgDatabase,
}

impl PgOutbox {
    pub fn new(db: PgDatabase) -> Self {
        Self { db }
    }

    /// Records `event` in the outbox inside `tx`, to be published on `topic` once `tx`
    /// commits (and never if it rolls back). One statement, no more: the relay is woken from
    /// outside once the transaction committed (see [`crate::WATCH_COMMITS_EVERY`]), so the
    /// transaction commits as fast as one without the event.
    ///
    /// # Errors
    /// [`tributary_core::Error::TooLarge`] / [`tributary_core::Error::InvalidInput`] for an
    /// event the store refuses; [`tributary_core::Error::Unavailable`] when the statement
    /// fails for a retryable reason (the transaction is then aborted: roll it back).
    pub async fn publish(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        topic: &Topic,
        event: &Envelope,
    ) -> Result<()> {
        let inner = &self.db.inner;
        // The caller's current span, as every unit's publish does.
        let stamped;
        let event = match tributary_core::trace::current_trace_context() {
            Some(_) => {
                let mut copy = event.clone();
                tributary_core::trace::stamp(topic, &mut copy);
                stamped = copy;
                &stamped
            }
            None => event,
        };
        let message = outgoing(topic, event, inner.config.max_event_bytes)?;
        let tx_id: i64 = sqlx::query_scalar(inner.sql.insert_outbox.sql())
            .bind(message.topic.as_str())
            .bind(&message.key)
            .bind(message.id.as_uuid())
            .bind(&message.payload)
            .fetch_one(&mut **tx)
            .await
            .context("writing to the outbox")?;
        inner.written_externally(tx_id);
        Ok(())
    }
}

/// The outbox row of `event`, if the store accepts it.
pub(crate) fn outgoing(
    topic: &Topic,
    event: &Envelope,
    max_event_bytes: usize,
) -> Result<OutgoingMessage> {
    validate_batch(std::slice::from_ref(event), max_event_bytes)?;
    Ok(OutgoingMessage::from_envelope(topic.clone(), event))
}

/// The columns of outbox rows, as the arrays the insert statements unnest.
pub(crate) struct Columns<'m> {
    pub topics: Vec<&'m str>,
    pub keys: Vec<&'m str>,
    pub ids: Vec<uuid::Uuid>,
    pub payloads: Vec<&'m [u8]>,
}

pub(crate) fn columns<'m>(messages: &[&'m OutgoingMessage]) -> Columns<'m> {
    Columns {
        topics: messages.iter().map(|m| m.topic.as_str()).collect(),
        keys: messages.iter().map(|m| m.key.as_str()).collect(),
        ids: messages.iter().map(|m| m.id.as_uuid()).collect(),
        payloads: messages.iter().map(|m| m.payload.as_slice()).collect(),
    }
}

/// Inserts `messages` (already validated) as outbox rows of the transaction on `conn`, in
/// order, in one statement.
pub(crate) async fn insert_all(
    conn: &mut PgConnection,
    sql: &Statements,
    messages: &[OutgoingMessage],
) -> Result<()> {
    match messages {
        [] => {}
        [message] => {
            sqlx::query(sql.insert_outbox.sql())
                .bind(message.topic.as_str())
                .bind(&message.key)
                .bind(message.id.as_uuid())
                .bind(&message.payload)
                .execute(conn)
                .await
                .context("writing to the outbox")?;
        }
        _ => {
            let refs: Vec<&OutgoingMessage> = messages.iter().collect();
            let Columns {
                topics,
                keys,
                ids,
                payloads,
            } = columns(&refs);
            sqlx::query(sql.insert_outbox_all.sql())
                .bind(topics)
                .bind(keys)
                .bind(ids)
                .bind(payloads)
                .execute(conn)
                .await
                .context("writing to the outbox")?;
        }
    }
    Ok(())
}
