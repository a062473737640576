//! What an embedded deployment remembers about itself: which services have run in it (their
//! databases opened), so that a database that later vanishes (deleted, or emptied to 0 bytes) is refused
//! instead of being created again empty while the broker and the other services still hold
//! the history that referred to it.
//!
//! The record is the file `DIR/services`, one service name per line, written atomically
//! (a temporary file renamed over it) after a service's database was opened.
//! `tributary admin forget-service NAME` takes a service off it, which accepts the loss.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::ServiceName;

/// The record of the deployment in `dir`.
pub struct DeploymentRecord {
    path: PathBuf,
}

const HEADER: &str = "# services that have run in this deployment: a database of one that vanished is refused; `tributary admin forget-service NAME` accepts its loss";

impl DeploymentRecord {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("services"),
        }
    }

    /// The services recorded; none when there is no record yet.
    ///
    /// # Errors
    /// When the record exists but cannot be read or names an unknown service.
    pub fn services(&self) -> anyhow::Result<Vec<ServiceName>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                l.parse::<ServiceName>()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))
            })
            .collect()
    }

    /// Records that `service` has run here (does nothing when it is recorded).
    ///
    /// # Errors
    /// When the record cannot be read or written.
    pub fn add(&self, service: ServiceName) -> anyhow::Result<()> {
        let mut services = self.services()?;
        if services.contains(&service) {
            return Ok(());
        }
        services.push(service);
        self.write(&services)
    }

    /// Takes `service` off the record; returns whether it was on it.
    ///
    /// # Errors
    /// When the record cannot be read or written.
    pub fn remove(&self, service: ServiceName) -> anyhow::Result<bool> {
        let mut services = self.services()?;
        let before = services.len();
        services.retain(|s| *s != service);
        if services.len() == before {
            return Ok(false);
        }
        self.write(&services)?;
        Ok(true)
    }

    fn write(&self, services: &[ServiceName]) -> anyhow::Result<()> {
        let mut text = format!("{HEADER}\n");
        for s in services {
            text.push_str(s.as_str());
            text.push('\n');
        }
        // Per process: services of one deployment may start side by side, each recording
        // itself (the last rename wins, which at worst forgets a service: less protection,
        // never a refusal).
        let temporary = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &self.path))
            .with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_added_once_and_removed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let record = DeploymentRecord::in_dir(dir.path());
        assert!(record.services()?.is_empty());
        record.add(ServiceName::Orders)?;
        record.add(ServiceName::Customers)?;
        record.add(ServiceName::Orders)?;
        assert_eq!(
            record.services()?,
            vec![ServiceName::Orders, ServiceName::Customers]
        );
        assert!(record.remove(ServiceName::Orders)?);
        assert!(!record.remove(ServiceName::Orders)?);
        assert_eq!(record.services()?, vec![ServiceName::Customers]);
        Ok(())
    }
}
