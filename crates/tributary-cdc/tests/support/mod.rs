//! A private PostgreSQL server for tests that need `wal_level = logical`.
//!
//! The machine's shared server runs with `wal_level = replica` and must not be reconfigured,
//! so each test starts its own cluster: `initdb` into a temporary directory, a free loopback
//! port, logical replication settings, trust authentication (replication included), and
//! `pg_ctl stop` for exactly that data directory when the value is dropped. `initdb` refuses
//! to run as root, so as root the server runs as the `postgres` user (`runuser`), with the
//! temporary directory handed to it.
//!
//! SQL goes through `psql` from the same installation: an independent client, so the
//! replication code under test is not also the code that checks it.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tributary_cdc::PgReplicationConfig;

/// A running private PostgreSQL cluster.
pub struct PrivatePostgres {
    bindir: PathBuf,
    data: PathBuf,
    /// Owns the data directory; removed after the server stopped.
    _dir: tempfile::TempDir,
    run_as: Option<String>,
    pub port: u16,
}

/// Where `initdb` and `pg_ctl` are: `$TRIBUTARY_PG_BINDIR`, `pg_config --bindir`, or the
/// newest `/usr/lib/postgresql/*/bin` (Debian keeps them off PATH).
fn find_bindir() -> Option<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(dir) = std::env::var("TRIBUTARY_PG_BINDIR") {
        return Some(PathBuf::from(dir)).filter(|d| usable(d));
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if usable(&dir) {
            return Some(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| usable(dir))
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, dir)| dir)
}

fn servers_required() -> bool {
    std::env::var("TRIBUTARY_TEST_SERVERS").is_ok_and(|v| v == "required")
}

impl PrivatePostgres {
    /// Starts a server for `test`, or prints `SKIPPED …` and returns `None` when PostgreSQL is
    /// not installed (a failure instead under `TRIBUTARY_TEST_SERVERS=required`).
    pub fn start_or_skip(test: &str, extra_config: &[&str]) -> Option<Self> {
        let Some(bindir) = find_bindir() else {
            let reason = "PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql or set TRIBUTARY_PG_BINDIR";
            if servers_required() {
                panic!("{test}: {reason} (TRIBUTARY_TEST_SERVERS=required)");
            }
            // Straight to the process's stderr: the test harness captures eprintln! of
            // passing tests, and CI looks for these lines.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
            return None;
        };
        match Self::start(bindir, extra_config) {
            Ok(server) => Some(server),
            Err(error) => panic!("{test}: cannot start a private PostgreSQL: {error:#}"),
        }
    }

    fn start(bindir: PathBuf, extra_config: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tributary-pg-").tempdir()?;
        let data = dir.path().join("data");
        let is_root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let run_as = is_root.then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            run(Command::new("chown")
                .arg(format!("{user}:"))
                .arg(dir.path()))?;
        }
        let port = free_port()?;
        let server = PrivatePostgres {
            bindir,
            data,
            _dir: dir,
            run_as,
            port,
        };
        run(server
            .command("initdb")
            .args([
                "--no-sync",
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "-D",
            ])
            .arg(&server.data))
        .context("initdb")?;
        // Not synchronous_commit = off: SQL decoding reads only flushed WAL, and would miss
        // transactions whose commit record is not flushed yet.
        let mut config = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_replication_slots = 20\nmax_wal_senders = 20\n\
             fsync = off\nfull_page_writes = off\n\
             timezone = 'Asia/Kolkata'\n",
            server.socket_dir().display()
        );
        for line in extra_config {
            config.push_str(line);
            config.push('\n');
        }
        append(&server.data.join("postgresql.conf"), &config)?;
        std::fs::write(
            server.data.join("pg_hba.conf"),
            "local all all trust\nlocal replication all trust\n\
             host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )?;
        let log = server.socket_dir().join("postgres.log");
        run(server
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&server.data)
            .arg("-l")
            .arg(&log))
        .with_context(|| {
            format!(
                "pg_ctl start (log: {})",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(server)
    }

    fn socket_dir(&self) -> PathBuf {
        self._dir.path().to_path_buf()
    }

    /// A command from the server's bindir, as the server's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        }
    }

    /// Runs the `sql` script in `database` with psql, statement by statement in one session
    /// (autocommit; use BEGIN/COMMIT for a transaction), stopping at the first error, and
    /// returns the unaligned, tuples-only output of all statements. The session pins the same
    /// `TimeZone` and `DateStyle` the replication connection does.
    pub fn sql(&self, database: &str, sql: &str) -> Result<String> {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = Command::new(self.bindir.join("psql"))
            .env("PGOPTIONS", "-c TimeZone=UTC -c DateStyle=ISO,MDY")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(database)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running psql")?;
        child
            .stdin
            .take()
            .context("psql stdin")?
            .write_all(sql.as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "psql failed on {sql:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?
            .trim_end_matches('\n')
            .to_owned())
    }

    /// Creates a database for one test.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.sql("postgres", &format!("CREATE DATABASE {name}"))
            .map(drop)
    }

    /// Replication settings for `database` on this server.
    pub fn replication_config(&self, database: &str) -> PgReplicationConfig {
        PgReplicationConfig::new("127.0.0.1", self.port, "postgres", database)
            .with_status_interval(Duration::from_millis(200))
    }

    /// Path of a program in the server's bindir (for `pg_recvlogical`).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // This data directory's postmaster only, found by its postmaster.pid.
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&self.data)
            .output();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn run(command: &mut Command) -> Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(output)
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
