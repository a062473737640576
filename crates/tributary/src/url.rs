//! Backends chosen by URL: the one place that knows which scheme means which crate.
//!
//! | URL | backend | feature |
//! |---|---|---|
//! | `sqlite://PATH` (e.g. `sqlite://data/orders.db`, `sqlite:///var/lib/app/orders.db`) | a SQLite file, created if missing | `sqlite` (default) |
//! | `postgres://user[:password]@host[:port]/db[?schema=NAME]` (also `postgresql://`) | PostgreSQL; Tributary's tables in the schema `NAME` (default `tributary`), apart from the service's own | `postgres` |
//! | `memory://` | a new in-memory database (tests, examples) | — |
//!
//! | broker URL | broker | feature |
//! |---|---|---|
//! | `embedded://DIR` | the embedded log, the file `DIR/broker.db` | `sqlite` (default) |
//! | `nats://host:port[,host:port…][?prefix=P&replicas=N]` | NATS JetStream, streams `P_<topic>` (default `TRIB`), `N` replicas (default 1) | `nats` |
//! | `memory://` | a new in-memory broker | — |
//!
//! Passwords and tokens in URLs never appear in errors or logs: [`redact`] removes them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use tributary_core::{Broker, Database, Error, InMemoryBroker, InMemoryDatabase, Result};

/// A service database, by URL. Parse one with [`str::parse`]; display shows no secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatabaseUrl {
    /// A SQLite file.
    Sqlite { path: PathBuf },
    /// PostgreSQL: the server URL (without Tributary's own parameters) and the schema of
    /// Tributary's tables.
    Postgres { url: String, schema: String },
    /// A new in-memory database.
    Memory,
}

/// A broker, by URL. Parse one with [`str::parse`]; display shows no secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerUrl {
    /// The embedded log in `dir/broker.db`.
    Embedded { dir: PathBuf },
    /// NATS JetStream.
    Nats {
        url: String,
        prefix: String,
        replicas: usize,
    },
    /// A new in-memory broker.
    Memory,
}

/// `url` without its password (or token): `postgres://app:***@db/x`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let scheme = &url[..scheme_end];
    let shown = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // A lone userinfo is a user name for a database, but a token for NATS: a secret.
        None if ["postgres", "postgresql", "mysql"].contains(&scheme) => userinfo.to_owned(),
        None => "***".to_owned(),
    };
    format!("{}{shown}{}", &url[..scheme_end + 3], &rest[at..])
}

/// Splits `?k=v&…` off a URL, keeping the parameters in order.
fn split_query(url: &str) -> (&str, Vec<(&str, &str)>) {
    match url.split_once('?') {
        Some((base, query)) => (
            base,
            query
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                .collect(),
        ),
        None => (url, Vec::new()),
    }
}

fn scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(s, _)| s)
}

impl FromStr for DatabaseUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        let shown = redact(url);
        match scheme(url) {
            "sqlite" => {
                let path = url.strip_prefix("sqlite://").unwrap_or("");
                if path.is_empty() || path.contains('?') {
                    return Err(Error::invalid(format!(
                        "bad database URL {shown:?}: use sqlite://PATH, e.g. sqlite://data/orders.db"
                    )));
                }
                Ok(DatabaseUrl::Sqlite {
                    path: PathBuf::from(path),
                })
            }
            "postgres" | "postgresql" => {
                let (base, params) = split_query(url);
                let rest = base.split_once("://").map_or("", |(_, r)| r);
                if rest.is_empty() || rest.starts_with('/') {
                    return Err(Error::invalid(format!(
                        "bad database URL {shown:?}: use postgres://user@host[:port]/database"
                    )));
                }
                let mut schema = "tributary".to_owned();
                let mut passed = Vec::new();
                for (k, v) in params {
                    if k == "schema" {
                        schema = v.to_owned();
                    } else {
                        passed.push(format!("{k}={v}"));
                    }
                }
                let url = if passed.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", passed.join("&"))
                };
                Ok(DatabaseUrl::Postgres { url, schema })
            }
            "memory" => Ok(DatabaseUrl::Memory),
            other => Err(Error::invalid(format!(
                "unknown database URL scheme {other:?} in {shown:?}: use sqlite://PATH, postgres://user@host/db or memory://"
            ))),
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        let shown = redact(url);
        match scheme(url) {
            "embedded" => {
                let dir = url.strip_prefix("embedded://").unwrap_or("");
                if dir.is_empty() || dir.contains('?') {
                    return Err(Error::invalid(format!(
                        "bad broker URL {shown:?}: use embedded://DIR (the log is DIR/broker.db)"
                    )));
                }
                Ok(BrokerUrl::Embedded {
                    dir: PathBuf::from(dir),
                })
            }
            "nats" => {
                let (base, params) = split_query(url);
                if base.len() <= "nats://".len() {
                    return Err(Error::invalid(format!(
                        "bad broker URL {shown:?}: use nats://host:port"
                    )));
                }
                let (mut prefix, mut replicas) = ("TRIB".to_owned(), 1);
                for (k, v) in params {
                    match k {
                        "prefix" => prefix = v.to_owned(),
                        "replicas" => {
                            replicas = v.parse().ok().filter(|n| (1..=5).contains(n)).ok_or_else(
                                || {
                                    Error::invalid(format!(
                                        "bad broker URL {shown:?}: replicas must be 1 to 5, got {v:?}"
                                    ))
                                },
                            )?;
                        }
                        other => {
                            return Err(Error::invalid(format!(
                                "bad broker URL {shown:?}: unknown parameter {other:?} (use prefix= or replicas=)"
                            )));
                        }
                    }
                }
                Ok(BrokerUrl::Nats {
                    url: base.to_owned(),
                    prefix,
                    replicas,
                })
            }
            "memory" => Ok(BrokerUrl::Memory),
            other => Err(Error::invalid(format!(
                "unknown broker URL scheme {other:?} in {shown:?}: use embedded://DIR, nats://host:port or memory://"
            ))),
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite { path } => write!(f, "sqlite://{}", path.display()),
            DatabaseUrl::Postgres { url, schema } => {
                write!(f, "{} (schema {schema})", redact(url))
            }
            DatabaseUrl::Memory => f.write_str("memory://"),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Embedded { dir } => write!(f, "embedded://{}", dir.display()),
            BrokerUrl::Nats {
                url,
                prefix,
                replicas,
            } => write!(
                f,
                "{} (streams {prefix}_*, {replicas} replica{})",
                redact(url),
                if *replicas == 1 { "" } else { "s" }
            ),
            BrokerUrl::Memory => f.write_str("memory://"),
        }
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

/// The error for a URL whose backend this build leaves out.
#[allow(dead_code)] // unused when every feature is on
pub(crate) fn feature_off(url: &dyn fmt::Display, feature: &str) -> Error {
    Error::invalid(format!(
        "{url} needs the `{feature}` feature of the tributary crate, which this build leaves out"
    ))
}

impl DatabaseUrl {
    /// Opens (creating if needed) the service database, with default settings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a backend whose feature is off; otherwise as the backend's
    /// own `open`/`connect` (a foreign file or schema, a server that cannot be reached).
    pub async fn connect(&self) -> Result<Arc<dyn Database>> {
        match self {
            DatabaseUrl::Memory => Ok(Arc::new(InMemoryDatabase::new())),
            #[cfg(feature = "sqlite")]
            DatabaseUrl::Sqlite { path } => {
                use tributary_sqlite::{SqliteConfig, SqliteDatabase};
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Error::unavailable(format!("the directory {}", dir.display()), e)
                    })?;
                }
                Ok(Arc::new(SqliteDatabase::open(
                    path,
                    SqliteConfig::default(),
                )?))
            }
            #[cfg(not(feature = "sqlite"))]
            DatabaseUrl::Sqlite { .. } => Err(feature_off(self, "sqlite")),
            #[cfg(feature = "postgres")]
            DatabaseUrl::Postgres { url, schema } => {
                use tributary_postgres::{PgConfig, PgDatabase};
                let config = PgConfig::default()
                    .with_url(url.clone())
                    .with_schema(schema.clone());
                Ok(Arc::new(PgDatabase::connect(config).await?))
            }
            #[cfg(not(feature = "postgres"))]
            DatabaseUrl::Postgres { .. } => Err(feature_off(self, "postgres")),
        }
    }
}

impl BrokerUrl {
    /// Opens (creating if needed) or connects to the broker, with default settings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a backend whose feature is off; otherwise as the backend's
    /// own `open`/`connect`.
    pub async fn connect(&self) -> Result<Arc<dyn Broker>> {
        match self {
            BrokerUrl::Memory => Ok(Arc::new(InMemoryBroker::default())),
            #[cfg(feature = "sqlite")]
            BrokerUrl::Embedded { dir } => {
                use tributary_sqlite::{SqliteBroker, SqliteBrokerConfig};
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::unavailable(format!("the directory {}", dir.display()), e)
                })?;
                Ok(Arc::new(SqliteBroker::open(
                    dir.join("broker.db"),
                    SqliteBrokerConfig::default(),
                )?))
            }
            #[cfg(not(feature = "sqlite"))]
            BrokerUrl::Embedded { .. } => Err(feature_off(self, "sqlite")),
            #[cfg(feature = "nats")]
            BrokerUrl::Nats {
                url,
                prefix,
                replicas,
            } => {
                use tributary_nats::{NatsBroker, NatsBrokerConfig};
                let config = NatsBrokerConfig::default()
                    .with_url(url.clone())
                    .with_stream_prefix(prefix.clone())
                    .with_replicas(*replicas);
                Ok(Arc::new(NatsBroker::connect(config).await?))
            }
            #[cfg(not(feature = "nats"))]
            BrokerUrl::Nats { .. } => Err(feature_off(self, "nats")),
        }
    }
}

/// Opens the service database at `url` (see the module docs for the schemes).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let db = tributary::connect("memory://").await?;
/// assert!(tributary::connect("mysql://x").await.is_err());
/// # Ok::<_, tributary::Error>(()) }).unwrap();
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] for an unknown scheme, a malformed URL or a backend whose feature
/// is off (the message never shows a password); otherwise as the backend's own `connect`.
pub async fn connect(url: &str) -> Result<Arc<dyn Database>> {
    url.parse::<DatabaseUrl>()?.connect().await
}

/// Opens or connects to the broker at `url` (see the module docs for the schemes).
///
/// # Errors
/// As [`connect`].
pub async fn connect_broker(url: &str) -> Result<Arc<dyn Broker>> {
    url.parse::<BrokerUrl>()?.connect().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_parse_into_backends() -> Result<()> {
        assert_eq!(
            "sqlite://data/orders.db".parse::<DatabaseUrl>()?,
            DatabaseUrl::Sqlite {
                path: "data/orders.db".into()
            }
        );
        assert_eq!(
            "sqlite:///var/lib/x.db".parse::<DatabaseUrl>()?,
            DatabaseUrl::Sqlite {
                path: "/var/lib/x.db".into()
            }
        );
        assert_eq!(
            "postgres://u:pw@h:5432/db?schema=orders_tributary&sslmode=disable"
                .parse::<DatabaseUrl>()?,
            DatabaseUrl::Postgres {
                url: "postgres://u:pw@h:5432/db?sslmode=disable".into(),
                schema: "orders_tributary".into()
            }
        );
        assert_eq!(
            "postgresql://h/db".parse::<DatabaseUrl>()?,
            DatabaseUrl::Postgres {
                url: "postgresql://h/db".into(),
                schema: "tributary".into()
            }
        );
        assert_eq!("memory://".parse::<DatabaseUrl>()?, DatabaseUrl::Memory);
        Ok(())
    }

    #[test]
    fn broker_urls_parse_into_backends() -> Result<()> {
        assert_eq!(
            "embedded://data".parse::<BrokerUrl>()?,
            BrokerUrl::Embedded { dir: "data".into() }
        );
        assert_eq!(
            "nats://a:4222,b:4222?prefix=SHOP&replicas=3".parse::<BrokerUrl>()?,
            BrokerUrl::Nats {
                url: "nats://a:4222,b:4222".into(),
                prefix: "SHOP".into(),
                replicas: 3
            }
        );
        Ok(())
    }

    #[test]
    fn bad_urls_are_clear_errors_without_secrets() {
        let cases = [
            "mysql://root:hunter2@db/x",
            "sqlite://",
            "postgres://",
            "postgres:///db",
            "oracle://scott:tiger@db",
        ];
        for url in cases {
            let e = url.parse::<DatabaseUrl>().expect_err(url).to_string();
            assert!(!e.contains("hunter2") && !e.contains("tiger"), "{e}");
            assert!(e.contains("use "), "the error says what to use: {e}");
        }
        for url in [
            "kafka://k:9092",
            "embedded://",
            "nats://",
            "nats://s3cret@h:4222?replicas=9",
            "nats://h?durable=x",
        ] {
            let e = url.parse::<BrokerUrl>().expect_err(url).to_string();
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn passwords_and_tokens_are_redacted() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/x?schema=a"),
            "postgres://app:***@db:5432/x?schema=a"
        );
        assert_eq!(redact("nats://tok3n@h:4222"), "nats://***@h:4222");
        assert_eq!(
            redact("postgres://app@db:5432/x"),
            "postgres://app@db:5432/x",
            "a user name alone is no secret"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact("postgres://db/x?q=a@b"), "postgres://db/x?q=a@b");
        let shown = DatabaseUrl::Postgres {
            url: "postgres://app:secret@db/x".into(),
            schema: "t".into(),
        }
        .to_string();
        assert!(!shown.contains("secret"), "{shown}");
    }
}
