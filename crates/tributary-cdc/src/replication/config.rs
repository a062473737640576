//! How to reach the server and how the stream behaves.

use std::path::PathBuf;
use std::time::Duration;

/// Whether and how to use TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS if the server offers it, plain otherwise.
    Prefer,
    /// TLS without checking the certificate.
    Require,
    /// TLS with a certificate signed by this CA (or the system roots), host not checked.
    VerifyCa {
        /// PEM file of the CA; `None` for the built-in web roots.
        ca: Option<PathBuf>,
    },
    /// TLS with a certificate signed by this CA and issued for the host.
    VerifyFull {
        /// PEM file of the CA; `None` for the built-in web roots.
        ca: Option<PathBuf>,
    },
}

/// Connection and stream settings for [`ReplicationConnection`](super::ReplicationConnection).
#[derive(Debug, Clone)]
pub struct PgReplicationConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// A user with the REPLICATION attribute.
    pub user: String,
    /// Its password, if the server asks for one (SCRAM-SHA-256 or cleartext).
    pub password: Option<String>,
    /// The database whose changes are streamed.
    pub database: String,
    /// TLS.
    pub tls: TlsMode,
    /// Shown in `pg_stat_replication`, so operators can tell readers apart.
    pub application_name: String,
    /// How long to wait for the TCP connection.
    pub connect_timeout: Duration,
    /// How often a standby status update is sent when nothing else prompts one. Must be
    /// well under the server's `wal_sender_timeout` (60 s by default), which ends streams
    /// whose client stays silent.
    pub status_interval: Duration,
    /// How many messages may wait between the connection task and the consumer.
    pub buffer: usize,
    /// The largest message accepted (PostgreSQL's own limit is 1 GiB per value).
    pub max_message_size: usize,
}

impl Default for PgReplicationConfig {
    fn default() -> Self {
        PgReplicationConfig {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            tls: TlsMode::Disable,
            application_name: "tributary-cdc".into(),
            connect_timeout: Duration::from_secs(10),
            status_interval: Duration::from_secs(10),
            buffer: 1024,
            max_message_size: 1 << 30,
        }
    }
}

impl PgReplicationConfig {
    /// Settings for this server, user and database; everything else default.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        database: impl Into<String>,
    ) -> Self {
        PgReplicationConfig {
            host: host.into(),
            port,
            user: user.into(),
            database: database.into(),
            ..Self::default()
        }
    }

    /// Settings from a `postgres://user[:password]@host[:port]/database` URL (query
    /// parameters are ignored; TLS stays disabled unless `sslmode=require`).
    ///
    /// # Errors
    /// A message saying what is wrong with the URL.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| format!("{url:?} is not a postgres:// URL"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, database) = rest.split_once('/').unwrap_or((rest, "postgres"));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in {url:?}"))?,
            ),
            None => (hostport, 5432),
        };
        if host.is_empty() {
            return Err(format!("no host in {url:?}"));
        }
        let mut config = Self::new(
            host,
            port,
            "postgres",
            if database.is_empty() {
                "postgres"
            } else {
                database
            },
        );
        if let Some(userinfo) = userinfo {
            match userinfo.split_once(':') {
                Some((user, password)) => {
                    config.user = user.to_owned();
                    config.password = Some(password.to_owned());
                }
                None => config.user = userinfo.to_owned(),
            }
        }
        if query.split('&').any(|kv| kv == "sslmode=require") {
            config.tls = TlsMode::Require;
        }
        Ok(config)
    }

    /// Sets the password.
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets TLS.
    pub fn with_tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }

    /// Sets the application name.
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the status interval.
    pub fn with_status_interval(mut self, interval: Duration) -> Self {
        self.status_interval = interval;
        self
    }

    /// Sets the buffer size (at least 1).
    pub fn with_buffer(mut self, messages: usize) -> Self {
        self.buffer = messages.max(1);
        self
    }

    /// Sets the largest accepted message.
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    pub(crate) fn wire_tls(&self) -> pgwire_replication::TlsConfig {
        use pgwire_replication::{SslMode, TlsConfig};
        let mut tls = TlsConfig::disabled();
        match &self.tls {
            TlsMode::Disable => {}
            TlsMode::Prefer => {
                tls = TlsConfig::require();
                tls.mode = SslMode::Prefer;
            }
            TlsMode::Require => tls = TlsConfig::require(),
            TlsMode::VerifyCa { ca } => tls = TlsConfig::verify_ca(ca.clone()),
            TlsMode::VerifyFull { ca } => tls = TlsConfig::verify_full(ca.clone()),
        }
        tls
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn a_postgres_url_gives_the_connection_settings() {
        let c = PgReplicationConfig::from_url(
            "postgres://app:s3cret@db.example:6543/shop?schema_prefix=x",
        )
        .unwrap();
        assert_eq!(
            (
                c.host.as_str(),
                c.port,
                c.user.as_str(),
                c.database.as_str()
            ),
            ("db.example", 6543, "app", "shop")
        );
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        let c = PgReplicationConfig::from_url("postgresql://127.0.0.1/test").unwrap();
        assert_eq!(
            (c.port, c.user.as_str(), c.password),
            (5432, "postgres", None)
        );
        assert!(PgReplicationConfig::from_url("mysql://x/y").is_err());
        assert!(PgReplicationConfig::from_url("postgres://u@:abc/db").is_err());
    }
}
