//! Where the services keep their data and which broker connects them, chosen by URL. The
//! broker URL is the `tributary` crate's ([`BrokerUrl`]); the database URL of a deployment of
//! four services names where each service's database is, and turns into one
//! [`tributary::DatabaseUrl`] per service:
//!
//! - `sqlite://DIR` — one SQLite file per service, `DIR/<service>.db` (the embedded default);
//! - `postgres://user@host:port/db?schema_prefix=P` — one schema per service, `P<service>`
//!   (`P` defaults to `tributary_`).
//!
//! Application code does not change between them: only these URLs do.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use tributary::{Broker, Database, DatabaseUrl, Found, redact};

use super::DeploymentRecord;

pub use tributary::BrokerUrl;

/// One of the application's four services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceName {
    Customers,
    Orders,
    History,
    /// Stock per product; takes part in the orchestrated order flow only.
    Inventory,
}

impl ServiceName {
    pub const ALL: [ServiceName; 4] = [
        ServiceName::Customers,
        ServiceName::Orders,
        ServiceName::History,
        ServiceName::Inventory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Customers => "customers",
            ServiceName::Orders => "orders",
            ServiceName::History => "history",
            ServiceName::Inventory => "inventory",
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "customer" | "customers" => Ok(ServiceName::Customers),
            "order" | "orders" => Ok(ServiceName::Orders),
            "history" | "order-history" => Ok(ServiceName::History),
            "inventory" => Ok(ServiceName::Inventory),
            other => Err(format!(
                "unknown service {other:?}: use customer, order, history or inventory"
            )),
        }
    }
}

/// Where the services' databases are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbUrl {
    Sqlite(PathBuf),
    Postgres { url: String, schema_prefix: String },
}

impl DbUrl {
    /// The database of the service called `name`.
    pub fn for_service(&self, name: &str) -> DatabaseUrl {
        let url = match self {
            DbUrl::Sqlite(dir) => format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
            DbUrl::Postgres { url, schema_prefix } => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}schema={schema_prefix}{name}")
            }
        };
        url.parse()
            .unwrap_or_else(|_| unreachable!("a URL made from a parsed one parses"))
    }
}

impl DbUrl {
    /// How a command line names this deployment (a password shown as `***`).
    pub fn as_admin_args(&self) -> String {
        match self {
            DbUrl::Sqlite(dir) => format!("--data-dir {}", dir.display()),
            DbUrl::Postgres { url, schema_prefix } => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("--db '{}{sep}schema_prefix={schema_prefix}'", redact(url))
            }
        }
    }
}

impl FromStr for DbUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(dir) = s.strip_prefix("sqlite://") {
            if dir.is_empty() {
                return Err("sqlite:// needs a directory, e.g. sqlite://tributary-data".into());
            }
            return Ok(DbUrl::Sqlite(PathBuf::from(dir)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            let (base, query) = s.split_once('?').unwrap_or((s, ""));
            let mut schema_prefix = "tributary_".to_owned();
            let mut rest = Vec::new();
            for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                match kv.split_once('=') {
                    Some(("schema_prefix", v)) => schema_prefix = v.to_owned(),
                    _ => rest.push(kv),
                }
            }
            let url = if rest.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", rest.join("&"))
            };
            // Checked now, so that a bad URL is reported before anything starts.
            url.parse::<DatabaseUrl>().map_err(|e| e.to_string())?;
            return Ok(DbUrl::Postgres { url, schema_prefix });
        }
        Err(format!(
            "unsupported database URL {:?}: use sqlite://DIR or postgres://…",
            redact(s)
        ))
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbUrl::Sqlite(dir) => write!(f, "sqlite://{}", dir.display()),
            DbUrl::Postgres { url, schema_prefix } => {
                write!(f, "{} (schemas {schema_prefix}*)", redact(url))
            }
        }
    }
}

/// Where each service keeps its data, and the broker between them. A process holds only the
/// databases of the services it runs.
#[derive(Clone)]
pub struct Backends {
    pub customers: Option<Arc<dyn Database>>,
    pub orders: Option<Arc<dyn Database>>,
    pub history: Option<Arc<dyn Database>>,
    pub inventory: Option<Arc<dyn Database>>,
    pub broker: Arc<dyn Broker>,
}

impl Backends {
    /// The service databases this process holds, by service.
    pub fn databases(&self) -> Vec<(ServiceName, Arc<dyn Database>)> {
        [
            (ServiceName::Customers, &self.customers),
            (ServiceName::Orders, &self.orders),
            (ServiceName::History, &self.history),
            (ServiceName::Inventory, &self.inventory),
        ]
        .into_iter()
        .filter_map(|(service, db)| db.clone().map(|db| (service, db)))
        .collect()
    }

    /// The embedded default for all four services: one SQLite file per service plus the
    /// broker's, in `data_dir`.
    ///
    /// # Errors
    /// When a file cannot be created or is not a Tributary database.
    pub async fn embedded(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let dir = data_dir.to_owned();
        Self::connect(
            &DbUrl::Sqlite(dir.clone()),
            &BrokerUrl::Embedded { dir },
            &ServiceName::ALL,
        )
        .await
    }

    /// Connects to the databases of `services` and to the broker, creating what is missing.
    /// Every file or schema is checked before any is opened: one that is refused (another
    /// application's SQLite file, a newer version) leaves every other as it was, and nothing
    /// is created beside it. A service database that vanished (see [`DeploymentRecord`]) is
    /// refused rather than created again empty.
    ///
    /// # Errors
    /// When a server cannot be reached, a file or schema is not a Tributary database, or a
    /// service's database vanished.
    pub async fn connect(
        db: &DbUrl,
        broker: &BrokerUrl,
        services: &[ServiceName],
    ) -> anyhow::Result<Self> {
        let found = inspect(db, broker, services).await?;
        let record = DeploymentRecord::of(db);
        let held_data = record.services().await?;
        for (service, (what, found)) in services.iter().zip(&found) {
            if *found == Found::Nothing && held_data.contains(service) {
                anyhow::bail!(
                    "{what} is missing or empty, but the {service} service has run in this deployment ({} says so): its data is gone, and starting would create it again empty beside a broker and services that still refer to it. Restore it from a backup, or accept the loss with `tributary admin {} forget-service {service}`",
                    record.describe(),
                    db.as_admin_args()
                );
            }
        }
        let backends = Self::open(db, broker, services).await?;
        record.add(services).await?;
        Ok(backends)
    }

    /// Connects to a deployment that exists, for commands that only read it: nothing is
    /// created, no schema and no file, and no migration is applied.
    ///
    /// # Errors
    /// "no such deployment" when a database or the embedded broker's file of `services` is
    /// not there (or holds nothing of Tributary's); an older schema, which only a service's
    /// start migrates; otherwise as [`Backends::connect`].
    pub async fn connect_existing(
        db: &DbUrl,
        broker: &BrokerUrl,
        services: &[ServiceName],
    ) -> anyhow::Result<Self> {
        for (what, found) in inspect(db, broker, services).await? {
            match found {
                Found::Nothing => anyhow::bail!("no such deployment: {what} does not exist"),
                Found::Older => anyhow::bail!(
                    "{what} has an older schema version; start its service once to migrate it (read-only commands change nothing)"
                ),
                _ => {}
            }
        }
        Self::open(db, broker, services).await
    }

    async fn open(
        db: &DbUrl,
        broker: &BrokerUrl,
        services: &[ServiceName],
    ) -> anyhow::Result<Self> {
        let mut backends = Self {
            customers: None,
            orders: None,
            history: None,
            inventory: None,
            broker: connect_broker(broker).await?,
        };
        for &service in services {
            let database = connect_database(db, service).await?;
            match service {
                ServiceName::Customers => backends.customers = Some(database),
                ServiceName::Orders => backends.orders = Some(database),
                ServiceName::History => backends.history = Some(database),
                ServiceName::Inventory => backends.inventory = Some(database),
            }
        }
        Ok(backends)
    }

    pub fn database(&self, service: ServiceName) -> Option<&Arc<dyn Database>> {
        match service {
            ServiceName::Customers => self.customers.as_ref(),
            ServiceName::Orders => self.orders.as_ref(),
            ServiceName::History => self.history.as_ref(),
            ServiceName::Inventory => self.inventory.as_ref(),
        }
    }
}

/// What each database of `services` and the broker hold, every one checked before any is
/// opened; named for messages.
async fn inspect(
    db: &DbUrl,
    broker: &BrokerUrl,
    services: &[ServiceName],
) -> anyhow::Result<Vec<(String, Found)>> {
    let mut found = Vec::new();
    for service in services {
        let url = db.for_service(service.as_str());
        let what = match &url {
            DatabaseUrl::Postgres { url, schema } => {
                format!("the {service} schema {schema:?} on {}", redact(url))
            }
            other => format!("the {service} database {other}"),
        };
        found.push((what, url.inspect().await?));
    }
    // Last: a command that only reads a service's database names the database it lacks
    // before the broker it may not need.
    found.push((format!("the broker {broker}"), broker.inspect().await?));
    Ok(found)
}

async fn connect_database(db: &DbUrl, service: ServiceName) -> anyhow::Result<Arc<dyn Database>> {
    connect_named(db, service.as_str()).await
}

/// Opens the database called `name` at `db`: the file `DIR/<name>.db`, or the schema
/// `<prefix><name>`.
///
/// # Errors
/// When the server cannot be reached or the file or schema is not a Tributary database.
pub async fn connect_named(db: &DbUrl, name: &str) -> anyhow::Result<Arc<dyn Database>> {
    Ok(db.for_service(name).connect().await?)
}

/// Connects to the broker at `broker`.
///
/// # Errors
/// When the server cannot be reached or the file is not a broker log.
pub async fn connect_broker(broker: &BrokerUrl) -> anyhow::Result<Arc<dyn Broker>> {
    Ok(broker.connect().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_backends() {
        assert_eq!(
            "sqlite://data".parse::<DbUrl>(),
            Ok(DbUrl::Sqlite("data".into()))
        );
        assert_eq!(
            "postgres://u@h:5432/db?schema_prefix=shop_&sslmode=disable".parse::<DbUrl>(),
            Ok(DbUrl::Postgres {
                url: "postgres://u@h:5432/db?sslmode=disable".into(),
                schema_prefix: "shop_".into()
            })
        );
        assert_eq!(
            "postgres://u@h/db?schema_prefix=shop_"
                .parse::<DbUrl>()
                .unwrap()
                .for_service("orders"),
            "postgres://u@h/db?schema=shop_orders".parse().unwrap()
        );
        assert_eq!(
            DbUrl::Sqlite("d".into()).for_service("orders"),
            "sqlite://d/orders.db".parse().unwrap()
        );
        assert!("mysql://x".parse::<DbUrl>().is_err());
        assert!("sqlite://".parse::<DbUrl>().is_err());
        let secret = "mysql://u:hunter2@h/x".parse::<DbUrl>().unwrap_err();
        assert!(!secret.contains("hunter2"), "{secret}");
        assert_eq!("order".parse::<ServiceName>(), Ok(ServiceName::Orders));
        assert!("billing".parse::<ServiceName>().is_err());
    }
}
