//! Where the services keep their data and which broker connects them, chosen by URL:
//!
//! - databases: `sqlite://DIR` — one SQLite file per service in DIR (the embedded default);
//!   `postgres://user@host:port/db?schema_prefix=P` — one schema per service (`P` + service
//!   name; `P` defaults to `tributary_`).
//! - broker: `embedded://DIR` — the embedded log `DIR/broker.db`;
//!   `nats://host:port?prefix=P` — NATS JetStream, streams named `P_<topic>` (`P` defaults to
//!   `TRIB`).
//!
//! Application code does not change between them: only these URLs do.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use tributary_core::{Broker, Database};
use tributary_nats::{NatsBroker, NatsBrokerConfig};
use tributary_postgres::{PgConfig, PgDatabase};
use tributary_sqlite::{SqliteBroker, SqliteBrokerConfig, SqliteConfig, SqliteDatabase};

/// One of the application's three services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceName {
    Customers,
    Orders,
    History,
}

impl ServiceName {
    pub const ALL: [ServiceName; 3] = [
        ServiceName::Customers,
        ServiceName::Orders,
        ServiceName::History,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Customers => "customers",
            ServiceName::Orders => "orders",
            ServiceName::History => "history",
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
            other => Err(format!(
                "unknown service {other:?}: use customer, order or history"
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

/// Where the broker is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerUrl {
    Embedded(PathBuf),
    Nats { url: String, prefix: String },
}

/// Splits `?key=value&…` off a URL.
fn query(url: &str) -> (&str, Vec<(&str, &str)>) {
    match url.split_once('?') {
        Some((base, q)) => (
            base,
            q.split('&').filter_map(|kv| kv.split_once('=')).collect(),
        ),
        None => (url, Vec::new()),
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
            let (base, params) = query(s);
            let mut schema_prefix = "tributary_".to_owned();
            let mut rest = Vec::new();
            for (k, v) in params {
                if k == "schema_prefix" {
                    schema_prefix = v.to_owned();
                } else {
                    rest.push(format!("{k}={v}"));
                }
            }
            let url = if rest.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", rest.join("&"))
            };
            return Ok(DbUrl::Postgres { url, schema_prefix });
        }
        Err(format!(
            "unsupported database URL {s:?}: use sqlite://DIR or postgres://…"
        ))
    }
}

impl FromStr for BrokerUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(dir) = s.strip_prefix("embedded://") {
            if dir.is_empty() {
                return Err("embedded:// needs a directory, e.g. embedded://tributary-data".into());
            }
            return Ok(BrokerUrl::Embedded(PathBuf::from(dir)));
        }
        if s.starts_with("nats://") {
            let (base, params) = query(s);
            let prefix = params
                .iter()
                .find(|(k, _)| *k == "prefix")
                .map_or("TRIB", |(_, v)| v)
                .to_owned();
            return Ok(BrokerUrl::Nats {
                url: base.to_owned(),
                prefix,
            });
        }
        Err(format!(
            "unsupported broker URL {s:?}: use embedded://DIR or nats://host:port"
        ))
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbUrl::Sqlite(dir) => write!(f, "sqlite://{}", dir.display()),
            DbUrl::Postgres { url, schema_prefix } => write!(f, "{url} (schemas {schema_prefix}*)"),
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Embedded(dir) => write!(f, "embedded://{}", dir.display()),
            BrokerUrl::Nats { url, prefix } => write!(f, "{url} (streams {prefix}_*)"),
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
    pub broker: Arc<dyn Broker>,
}

impl Backends {
    /// The embedded default for all three services: one SQLite file per service plus the
    /// broker's, in `data_dir`.
    ///
    /// # Errors
    /// When a file cannot be created or is not a Tributary database.
    pub fn embedded(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let config = SqliteConfig::default();
        let open = |name: &str| -> anyhow::Result<Option<Arc<dyn Database>>> {
            Ok(Some(Arc::new(SqliteDatabase::open(
                data_dir.join(format!("{name}.db")),
                config.clone(),
            )?)))
        };
        Ok(Self {
            customers: open("customers")?,
            orders: open("orders")?,
            history: open("history")?,
            broker: Arc::new(SqliteBroker::open(
                data_dir.join("broker.db"),
                SqliteBrokerConfig::default().with_sqlite(config.clone()),
            )?),
        })
    }

    /// Connects to the databases of `services` and to the broker.
    ///
    /// # Errors
    /// When a server cannot be reached, or a file or schema is not a Tributary database.
    pub async fn connect(
        db: &DbUrl,
        broker: &BrokerUrl,
        services: &[ServiceName],
    ) -> anyhow::Result<Self> {
        let mut backends = Self {
            customers: None,
            orders: None,
            history: None,
            broker: connect_broker(broker).await?,
        };
        for &service in services {
            let database = connect_database(db, service).await?;
            match service {
                ServiceName::Customers => backends.customers = Some(database),
                ServiceName::Orders => backends.orders = Some(database),
                ServiceName::History => backends.history = Some(database),
            }
        }
        Ok(backends)
    }

    pub fn database(&self, service: ServiceName) -> Option<&Arc<dyn Database>> {
        match service {
            ServiceName::Customers => self.customers.as_ref(),
            ServiceName::Orders => self.orders.as_ref(),
            ServiceName::History => self.history.as_ref(),
        }
    }
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
    Ok(match db {
        DbUrl::Sqlite(dir) => {
            std::fs::create_dir_all(dir)?;
            Arc::new(SqliteDatabase::open(
                dir.join(format!("{name}.db")),
                SqliteConfig::default(),
            )?)
        }
        DbUrl::Postgres { url, schema_prefix } => Arc::new(
            PgDatabase::connect(
                PgConfig::default()
                    .with_url(url.clone())
                    .with_schema(format!("{schema_prefix}{name}")),
            )
            .await?,
        ),
    })
}

/// Connects to the broker at `broker`.
///
/// # Errors
/// When the server cannot be reached or the file is not a broker log.
pub async fn connect_broker(broker: &BrokerUrl) -> anyhow::Result<Arc<dyn Broker>> {
    Ok(match broker {
        BrokerUrl::Embedded(dir) => {
            std::fs::create_dir_all(dir)?;
            Arc::new(SqliteBroker::open(
                dir.join("broker.db"),
                SqliteBrokerConfig::default(),
            )?)
        }
        BrokerUrl::Nats { url, prefix } => Arc::new(
            NatsBroker::connect(
                NatsBrokerConfig::default()
                    .with_url(url.clone())
                    .with_stream_prefix(prefix.clone()),
            )
            .await?,
        ),
    })
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
            "nats://127.0.0.1:4222?prefix=SHOP".parse::<BrokerUrl>(),
            Ok(BrokerUrl::Nats {
                url: "nats://127.0.0.1:4222".into(),
                prefix: "SHOP".into()
            })
        );
        assert_eq!(
            "embedded://d".parse::<BrokerUrl>(),
            Ok(BrokerUrl::Embedded("d".into()))
        );
        assert!("mysql://x".parse::<DbUrl>().is_err());
        assert!("sqlite://".parse::<DbUrl>().is_err());
        assert!("kafka://x".parse::<BrokerUrl>().is_err());
        assert_eq!("order".parse::<ServiceName>(), Ok(ServiceName::Orders));
        assert!("billing".parse::<ServiceName>().is_err());
    }
}
