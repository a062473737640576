//! The customer service's outbox published from PostgreSQL's WAL instead of by the relay: the
//! service writes its state and its outbox rows as always; a capture of the outbox table
//! (logical replication, `pgoutput`) publishes each row's own envelope and deletes what the
//! broker acknowledged.

use anyhow::Context;
use tributary::cdc::{
    CdcConfig, OutboxCapture, PgReplicationConfig, PublicationName, SlotName, ensure_publication,
    retire_capture,
};

use super::{DbUrl, ServiceName};

/// The schema, slot and publication names of the customer outbox capture for `db`.
fn names(db: &DbUrl) -> anyhow::Result<(PgReplicationConfig, String, SlotName, PublicationName)> {
    let DbUrl::Postgres { url, schema_prefix } = db else {
        anyhow::bail!(
            "publishing through CDC needs the customer database on PostgreSQL (postgres://…)"
        );
    };
    let connection = PgReplicationConfig::from_url(url).map_err(anyhow::Error::msg)?;
    let schema = format!("{schema_prefix}{}", ServiceName::Customers);
    let name = format!("{schema}_outbox");
    Ok((
        connection,
        schema,
        SlotName::new(name.clone()).context("the capture's slot name")?,
        PublicationName::new(name).context("the capture's publication name")?,
    ))
}

/// The capture configuration (creating its publication if missing).
///
/// # Errors
/// When the database is not PostgreSQL or the publication cannot be created.
pub async fn customer_outbox_capture(db: &DbUrl) -> anyhow::Result<CdcConfig> {
    let (connection, schema, slot, publication) = names(db)?;
    ensure_publication(&connection, &publication, &[format!("{schema}.outbox")])
        .await
        .context("creating the publication of the customer outbox")?;
    Ok(CdcConfig::default()
        .with_connection(connection)
        .with_name("customer-outbox")
        .with_slot(slot)
        .with_publication(publication)
        .without_tables()
        .with_state_schema(schema.clone())
        .with_outbox(
            OutboxCapture::default()
                .with_table(&format!("{schema}.outbox"))
                .with_delete_published(true),
        ))
}

/// Drops the capture's slot and publication (when a deployment is torn down).
///
/// # Errors
/// When the server cannot be reached or the slot is in use.
pub async fn retire_customer_outbox_capture(db: &DbUrl) -> anyhow::Result<()> {
    let (connection, _, slot, publication) = names(db)?;
    retire_capture(&connection, &slot, &publication).await?;
    Ok(())
}
