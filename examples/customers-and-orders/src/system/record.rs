//! What a deployment remembers about itself: which services have run in it (their
//! databases opened), so that a database that later vanishes (a SQLite file deleted or
//! emptied to 0 bytes, a PostgreSQL schema dropped) is refused instead of being created again
//! empty while the broker and the other services still hold the history that referred to it.
//!
//! - Embedded (`sqlite://DIR`): the file `DIR/services`, one service name per line, written
//!   atomically (a temporary file renamed over it).
//! - PostgreSQL (`postgres://…?schema_prefix=P`): documents of the deployment's own schema
//!   `Pdeployment` (a Tributary database, like a service's), one per service.
//!
//! A service is recorded after its database was opened. `tributary admin forget-service NAME`
//! takes it off the record, which accepts the loss.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tributary::{Database, DatabaseUrl, Found, Payload, redact};

use super::{DbUrl, ServiceName};

/// The record of a deployment.
pub enum DeploymentRecord {
    File { path: PathBuf },
    Postgres { url: DatabaseUrl, shown: String },
}

const HEADER: &str = "# services that have run in this deployment: a database of one that vanished is refused; `tributary admin forget-service NAME` accepts its loss";

/// The name of the PostgreSQL record's schema, after the deployment's prefix.
const RECORD_SCHEMA: &str = "deployment";

/// The collection of the PostgreSQL record: one document per service that ran.
const SERVICES: &str = "services";

impl DeploymentRecord {
    pub fn in_dir(dir: &Path) -> Self {
        DeploymentRecord::File {
            path: dir.join("services"),
        }
    }

    /// The record of the deployment whose databases are at `db`.
    pub fn of(db: &DbUrl) -> Self {
        match db {
            DbUrl::Sqlite(dir) => Self::in_dir(dir),
            DbUrl::Postgres { url, schema_prefix } => DeploymentRecord::Postgres {
                url: db.for_service(RECORD_SCHEMA),
                shown: format!(
                    "the schema {schema_prefix}{RECORD_SCHEMA} on {}",
                    redact(url)
                ),
            },
        }
    }

    /// Where the record is, for messages.
    pub fn describe(&self) -> String {
        match self {
            DeploymentRecord::File { path } => path.display().to_string(),
            DeploymentRecord::Postgres { shown, .. } => shown.clone(),
        }
    }

    /// The services recorded; none when there is no record yet (reading creates nothing).
    ///
    /// # Errors
    /// When the record exists but cannot be read or names an unknown service.
    pub async fn services(&self) -> anyhow::Result<Vec<ServiceName>> {
        match self {
            DeploymentRecord::File { path } => {
                let text = match std::fs::read_to_string(path) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => {
                        return Err(e).with_context(|| format!("reading {}", path.display()));
                    }
                };
                let names = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'));
                names
                    .map(|l| {
                        l.parse::<ServiceName>()
                            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
                    })
                    .collect()
            }
            DeploymentRecord::Postgres { url, shown } => {
                let Some(db) = self.open_existing().await? else {
                    return Ok(Vec::new());
                };
                let docs = db.list_documents(SERVICES, None, 64).await?;
                docs.into_iter()
                    .map(|(name, _)| {
                        name.parse::<ServiceName>()
                            .map_err(|e| anyhow::anyhow!("{shown} ({url}): {e}"))
                    })
                    .collect()
            }
        }
    }

    /// Records that `services` have run here: one read and, if any is new, one write (on
    /// PostgreSQL one connection, which creates the record's schema the first time).
    ///
    /// # Errors
    /// When the record cannot be read or written.
    pub async fn add(&self, services: &[ServiceName]) -> anyhow::Result<()> {
        match self {
            DeploymentRecord::File { path } => {
                let mut recorded = self.services().await?;
                let before = recorded.len();
                for service in services {
                    if !recorded.contains(service) {
                        recorded.push(*service);
                    }
                }
                if recorded.len() == before {
                    return Ok(());
                }
                write_file(path, &recorded)
            }
            DeploymentRecord::Postgres { url, .. } => {
                let db = url.connect().await?;
                let recorded = db.list_documents(SERVICES, None, 64).await?;
                let missing: Vec<ServiceName> = services
                    .iter()
                    .copied()
                    .filter(|s| !recorded.iter().any(|(name, _)| name == s.as_str()))
                    .collect();
                if missing.is_empty() {
                    return Ok(());
                }
                let at = Payload::from_value(&serde_json::json!({
                    "recorded_at": chrono::Utc::now(),
                }))?;
                db.transact(move |unit| {
                    Box::pin(async move {
                        for service in missing {
                            unit.put(SERVICES, service.as_str(), at.clone()).await?;
                        }
                        Ok::<_, tributary::Error>(())
                    })
                })
                .await?;
                Ok(())
            }
        }
    }

    /// Takes `service` off the record; returns whether it was on it.
    ///
    /// # Errors
    /// When the record cannot be read or written.
    pub async fn remove(&self, service: ServiceName) -> anyhow::Result<bool> {
        match self {
            DeploymentRecord::File { path } => {
                let mut services = self.services().await?;
                let before = services.len();
                services.retain(|s| *s != service);
                if services.len() == before {
                    return Ok(false);
                }
                write_file(path, &services)?;
                Ok(true)
            }
            DeploymentRecord::Postgres { .. } => {
                let Some(db) = self.open_existing().await? else {
                    return Ok(false);
                };
                Ok(db
                    .transact(move |unit| {
                        Box::pin(async move { unit.delete(SERVICES, service.as_str()).await })
                    })
                    .await?)
            }
        }
    }

    /// Removes the record itself: the cleanup of a throwaway deployment (the demo's, a test's)
    /// on a shared server, beside dropping its services' schemas.
    ///
    /// # Errors
    /// When the record exists and cannot be removed.
    pub async fn erase(&self) -> anyhow::Result<()> {
        match self {
            DeploymentRecord::File { path } => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", path.display()))
                }
                _ => Ok(()),
            },
            DeploymentRecord::Postgres { url, shown } => {
                // Connecting would create the schema: look first, as every reader here does.
                let DatabaseUrl::Postgres {
                    url: server,
                    schema,
                } = url
                else {
                    return Ok(());
                };
                if matches!(url.inspect().await?, Found::Nothing) {
                    return Ok(());
                }
                let config = tributary::postgres::PgConfig::default()
                    .with_url(server.clone())
                    .with_schema(schema.clone());
                tributary::postgres::PgDatabase::connect(config)
                    .await?
                    .drop_schema()
                    .await
                    .with_context(|| format!("removing {shown}"))
            }
        }
    }

    /// The PostgreSQL record's database if it exists; nothing is created.
    async fn open_existing(&self) -> anyhow::Result<Option<std::sync::Arc<dyn Database>>> {
        let DeploymentRecord::Postgres { url, shown } = self else {
            return Ok(None);
        };
        match url.inspect().await? {
            Found::Nothing => Ok(None),
            Found::Older => anyhow::bail!(
                "{shown} has an older schema version; start a service of the deployment once to migrate it"
            ),
            _ => Ok(Some(url.connect().await?)),
        }
    }
}

fn write_file(path: &Path, services: &[ServiceName]) -> anyhow::Result<()> {
    let mut text = format!("{HEADER}\n");
    for s in services {
        text.push_str(s.as_str());
        text.push('\n');
    }
    // Per process: services of one deployment may start side by side, each recording itself
    // (the last rename wins, which at worst forgets a service: less protection, never a
    // refusal).
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn services_are_added_once_and_removed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let record = DeploymentRecord::in_dir(dir.path());
        assert!(record.services().await?.is_empty());
        record.add(&[ServiceName::Orders]).await?;
        record
            .add(&[ServiceName::Customers, ServiceName::Orders])
            .await?;
        assert_eq!(
            record.services().await?,
            vec![ServiceName::Orders, ServiceName::Customers]
        );
        assert!(record.remove(ServiceName::Orders).await?);
        assert!(!record.remove(ServiceName::Orders).await?);
        assert_eq!(record.services().await?, vec![ServiceName::Customers]);
        Ok(())
    }
}
