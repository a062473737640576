//! MariaDB for the binlog capture's tests: the shared server (`TRIBUTARY_TEST_MYSQL_URL`, a
//! database of the test's own, dropped afterwards) and private servers for tests that
//! reconfigure, purge or kill one (`mariadb-install-db` into a temporary directory,
//! `mariadbd` on a free loopback port, stopped by its own pid when dropped).
//!
//! SQL goes through the `mariadb` command-line client: an independent client, so the capture
//! under test is not also the code that checks it. Without MariaDB the tests print
//! `SKIPPED …` and pass, unless `TRIBUTARY_TEST_SERVERS=required` (as under `.ci/run`).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub fn servers_required() -> bool {
    std::env::var("TRIBUTARY_TEST_SERVERS").is_ok_and(|v| v == "required")
}

/// Prints why a test skips (or panics when servers are required).
pub fn skip<T>(test: &str, reason: &str) -> Option<T> {
    if servers_required() {
        panic!("{test}: {reason} (TRIBUTARY_TEST_SERVERS=required)");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {reason}; set TRIBUTARY_TEST_SERVERS=required to make this fail"
    );
    None
}

/// The shared server's URL: `TRIBUTARY_TEST_MYSQL_URL`, else the local default.
pub fn mysql_url() -> String {
    std::env::var("TRIBUTARY_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

fn client() -> Option<PathBuf> {
    ["/usr/bin/mariadb", "/usr/bin/mysql"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A server reachable with the `mariadb` client.
#[derive(Debug, Clone)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl Server {
    pub fn url(&self, db: &str) -> String {
        format!("mysql://{}@{}:{}/{db}", self.user, self.host, self.port)
    }

    /// Runs `script` in `db` (empty: none), returning tab-separated output without headers.
    pub fn sql(&self, db: &str, script: &str) -> Result<String> {
        let client = client().context("the mariadb client is not installed")?;
        let mut command = Command::new(client);
        command
            .args(["-N", "-B", "-u", &self.user, "-h", &self.host, "-P"])
            .arg(self.port.to_string());
        if !db.is_empty() {
            command.arg(db);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running mariadb")?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().context("stdin")?;
            stdin.write_all(script.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "mariadb failed: {}\n{}",
                String::from_utf8_lossy(&output.stderr),
                script.chars().take(500).collect::<String>()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned())
    }
}

/// A database of the test's own on the shared server, dropped when the value is.
pub struct TestDb {
    pub server: Server,
    pub name: String,
}

impl TestDb {
    /// A fresh database, or `None` (printing why) without a usable server.
    pub fn create_or_skip(test: &str) -> Option<Self> {
        let url = mysql_url();
        let Some(rest) = url.strip_prefix("mysql://") else {
            return skip(test, "TRIBUTARY_TEST_MYSQL_URL is not a mysql:// URL");
        };
        let (user, rest) = rest.split_once('@').unwrap_or(("root", rest));
        let host_port = rest.split('/').next().unwrap_or("127.0.0.1:3306");
        let (host, port) = host_port.split_once(':').unwrap_or((host_port, "3306"));
        let server = Server {
            host: host.to_owned(),
            port: port.parse().unwrap_or(3306),
            user: user.split(':').next().unwrap_or("root").to_owned(),
        };
        if client().is_none() {
            return skip(test, "the mariadb client is not installed");
        }
        if std::net::TcpStream::connect_timeout(
            &match format!("{}:{}", server.host, server.port).parse() {
                Ok(addr) => addr,
                Err(_) => return skip(test, "the MariaDB host is not an IP address"),
            },
            Duration::from_secs(1),
        )
        .is_err()
        {
            return skip(test, &format!("MariaDB is not reachable at {url}"));
        }
        match server.sql(
            "",
            "SELECT CONCAT_WS(',', @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata)",
        ) {
            Ok(settings) if settings == "1,ROW,FULL,FULL" || settings == "ON,ROW,FULL,FULL" => {}
            Ok(settings) => {
                return skip(
                    test,
                    &format!("MariaDB at {url} runs without a ROW/FULL binlog ({settings}); .ci/run turns it on"),
                );
            }
            Err(e) => return skip(test, &format!("MariaDB at {url} does not answer: {e}")),
        }
        let name = format!("t_{}", unique());
        if let Err(e) = server.sql("", &format!("CREATE DATABASE {name}")) {
            panic!("{test}: creating database {name}: {e}");
        }
        Some(TestDb { server, name })
    }

    pub fn url(&self) -> String {
        self.server.url(&self.name)
    }

    pub fn sql(&self, script: &str) -> Result<String> {
        self.server.sql(&self.name, script)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self
            .server
            .sql("", &format!("DROP DATABASE IF EXISTS {}", self.name));
    }
}

pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000);
    format!(
        "{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A MariaDB server of the test's own.
pub struct PrivateMariaDb {
    pub server: Server,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
}

fn binaries() -> Option<(PathBuf, PathBuf)> {
    let server = ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    let install = ["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    Some((server, install))
}

impl PrivateMariaDb {
    /// Starts a server with the binlog on (ROW, FULL images and metadata, GTID strict mode)
    /// plus `extra` options, or skips without MariaDB's server binaries.
    pub fn start_or_skip(test: &str, extra: &[&str]) -> Option<Self> {
        let Some((_, install)) = binaries() else {
            return skip(
                test,
                "MariaDB's server binaries (mariadbd, mariadb-install-db) are not installed",
            );
        };
        let dir = tempfile::Builder::new()
            .prefix("tributary-mariadb-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let data = dir.path().join("data");
        // A temporary directory of its own: servers bootstrapping side by side in /tmp name
        // their temporary tables alike and remove each other's.
        let tmp = dir.path().join("tmp");
        let _ = std::fs::create_dir_all(&tmp);
        // The server runs as `mysql` when started as root: it must own the directory.
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        let _ = std::fs::create_dir_all(&data);
        if as_root {
            let _ = Command::new("chown")
                .args(["-R", "mysql:mysql"])
                .arg(dir.path())
                .status();
        }
        let mut command = Command::new(install);
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if as_root {
            command.arg("--user=mysql");
        }
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("{test}: mariadb-install-db: {e}"));
        assert!(
            output.status.success(),
            "{test}: mariadb-install-db failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let mut args: Vec<String> = vec![
            "--no-defaults".into(),
            format!("--datadir={}", data.display()),
            format!("--tmpdir={}", tmp.display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".into(),
            format!("--socket={}", dir.path().join("sock").display()),
            format!("--pid-file={}", dir.path().join("pid").display()),
            format!("--log-error={}", dir.path().join("error.log").display()),
            "--log-bin=binlog".into(),
            "--binlog-format=ROW".into(),
            "--binlog-row-image=FULL".into(),
            "--binlog-row-metadata=FULL".into(),
            "--server-id=1".into(),
            "--gtid-strict-mode=ON".into(),
            "--skip-name-resolve".into(),
            "--innodb-buffer-pool-size=32M".into(),
            "--innodb-log-file-size=16M".into(),
            "--character-set-server=utf8mb4".into(),
        ];
        if as_root {
            args.push("--user=mysql".into());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut server = PrivateMariaDb {
            server: Server {
                host: "127.0.0.1".into(),
                port,
                user: "root".into(),
            },
            dir,
            child: None,
            args,
        };
        server.launch();
        if let Err(e) = server.server.sql("", "CREATE DATABASE test") {
            panic!("{test}: {e}");
        }
        Some(server)
    }

    fn launch(&mut self) {
        let Some((binary, _)) = binaries() else {
            panic!("mariadbd vanished");
        };
        let child = Command::new(binary)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting mariadbd: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.server.sql("", "SELECT 1").is_err() {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
                panic!("the private mariadbd did not start:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, db: &str) -> String {
        self.server.url(db)
    }

    pub fn sql(&self, db: &str, script: &str) -> Result<String> {
        self.server.sql(db, script)
    }

    /// The binlog files' directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server (SIGKILL by its pid) and starts it again with `extra` options added.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill();
        self.args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.launch();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The bytes of a binlog file after its 4-byte magic.
pub fn binlog_bytes(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.starts_with(b"\xfebin"),
        "{} is not a binlog",
        path.display()
    );
    Ok(bytes[4..].to_vec())
}

/// The embedded broker in a temporary directory.
pub fn broker(dir: &tempfile::TempDir) -> Result<std::sync::Arc<tributary_sqlite::SqliteBroker>> {
    Ok(std::sync::Arc::new(tributary_sqlite::SqliteBroker::open(
        dir.path().join("broker.db"),
        tributary_sqlite::SqliteBrokerConfig::default().with_default_partitions(4),
    )?))
}

/// Everything the broker stored on `topic`, partition by partition, in offset order.
pub async fn read_topic(
    broker: &dyn tributary_core::Broker,
    topic: &str,
) -> Result<Vec<tributary_core::Delivery>> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tributary_core::{GroupName, Partition, Topic};
    static READERS: AtomicU64 = AtomicU64::new(0);
    let topic = Topic::new(topic)?;
    let group = GroupName::new(format!("check-{}", READERS.fetch_add(1, Ordering::Relaxed)))?;
    let mut out = Vec::new();
    for partition in 0..broker.partitions(&topic).await.unwrap_or(0) {
        let mut consumer = broker
            .consume(&group, &topic, Partition::new(partition))
            .await?;
        loop {
            let batch = consumer.fetch(1000, Duration::from_millis(1)).await?;
            if batch.is_empty() {
                break;
            }
            out.extend(batch);
        }
    }
    Ok(out)
}

/// Waits until `topic` holds at least `count` messages, and returns them.
pub async fn wait_for(
    broker: &dyn tributary_core::Broker,
    topic: &str,
    count: usize,
) -> Result<Vec<tributary_core::Delivery>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = read_topic(broker, topic).await.unwrap_or_default();
        if stored.len() >= count {
            return Ok(stored);
        }
        if Instant::now() > deadline {
            bail!("{topic} holds {} messages, expected {count}", stored.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn envelope(delivery: &tributary_core::Delivery) -> tributary_core::Envelope {
    tributary_core::Envelope::from_json(&delivery.payload).expect("a CloudEvents envelope")
}

/// A binlog capture publishing in the background.
pub struct Running {
    pub source: std::sync::Arc<tributary_cdc::BinlogSource>,
    token: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tributary_cdc::BinlogError>>,
}

impl Running {
    pub fn start(
        config: tributary_cdc::BinlogConfig,
        broker: std::sync::Arc<dyn tributary_core::Broker>,
    ) -> Result<Self> {
        let source = std::sync::Arc::new(tributary_cdc::BinlogSource::new(config)?);
        let token = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(std::sync::Arc::clone(&source).run(broker, token.clone()));
        Ok(Running {
            source,
            token,
            task,
        })
    }

    pub async fn stop(self) -> Result<Result<(), tributary_cdc::BinlogError>> {
        self.token.cancel();
        Ok(tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("the capture did not stop")??)
    }

    /// Waits for the capture to end on its own (a fatal error).
    pub async fn ended(self, within: Duration) -> Result<Result<(), tributary_cdc::BinlogError>> {
        Ok(tokio::time::timeout(within, self.task)
            .await
            .context("the capture kept running")??)
    }
}

/// The capture settings of the tests: short intervals, a capture named `cdc`.
pub fn config(url: &str) -> tributary_cdc::BinlogConfig {
    tributary_cdc::BinlogConfig::default()
        .with_url(url)
        .with_name("test-capture")
        .with_capture("cdc")
        .with_server_id(rand::random::<u32>() | 0x4000_0000)
        .with_heartbeat_interval(Some(Duration::from_millis(300)))
        .with_lease_check_interval(Duration::from_millis(100))
        .with_idle_wait(Duration::from_millis(100))
}

/// Waits until the capture's state row says it streams.
pub async fn wait_streaming(sql: impl Fn(&str) -> Result<String>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = sql("SELECT status FROM tributary_cdc_binlog WHERE capture = 'cdc'")
            .unwrap_or_default();
        if status == "streaming" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the capture did not start streaming (status {status:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
