//! What the binary refuses, and that a refusal changes nothing and names what it is about:
//! another application's SQLite file, a data directory that is a regular file, a damaged
//! database, a port in use, a PostgreSQL server that is down, and operations on a deployment
//! that does not exist (which must never create one).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tributary_testkit::servers::{postgres_url, reachable, skip};

/// Runs the binary to its exit; one that is still running after `within` is killed and the
/// test fails (a refusal must not start serving).
fn tributary(args: &[&str], within: Duration) -> Output {
    run(env!("CARGO_BIN_EXE_tributary"), args, within)
}

/// Runs `program` to its exit, as [`tributary`] does.
fn run(program: &str, args: &[&str], within: Duration) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("waits").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{program} {args:?} still ran after {within:?}; stdout {} stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Creates one customer through `backends`, so that the deployment holds data; the handles
/// are closed when the caller drops `backends`.
async fn create_a_customer(backends: &customers_and_orders::system::Backends) {
    customers_and_orders::system::Services::new(backends)
        .customers()
        .unwrap()
        .create("a customer".into(), 1_000)
        .await
        .unwrap();
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every entry of `dir` with its bytes and modification time.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, SystemTime)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
                e.metadata().unwrap().modified().unwrap(),
            )
        })
        .collect();
    entries.sort();
    entries
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const WITHIN: Duration = Duration::from_secs(30);

/// Waits until every connection of this process to the database `path` has closed: the last
/// one to close checkpoints the WAL into the file and removes it (the writer thread closes
/// its connection after its database handle was dropped, not at the drop).
fn closed(path: &Path) {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let deadline = Instant::now() + WITHIN;
    while Path::new(&wal).exists() {
        assert!(Instant::now() < deadline, "{} stayed open", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn serve_refuses_another_applications_sqlite_file_before_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.db");
    {
        let c = tributary::sqlite::rusqlite::Connection::open(&history).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        c.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
             INSERT INTO users (email) VALUES ('a@example.com');",
        )
        .unwrap();
    }
    let before = snapshot(dir.path());
    let listen = format!("127.0.0.1:{}", free_port());
    let d = dir.path().to_str().unwrap();
    let out = tributary(&["serve", "--listen", &listen, "--data-dir", d], WITHIN);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains(&history.display().to_string())
            && message.contains("not a Tributary database"),
        "{message}"
    );
    // Same bytes (still journal mode delete), same mtime, and no file beside it: no other
    // service's database, no broker log, no -wal or -shm, no consistency key.
    assert_eq!(snapshot(dir.path()), before, "{message}");
}

#[test]
fn a_data_dir_that_is_a_regular_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"not a directory").unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let out = tributary(
        &[
            "serve",
            "--listen",
            &listen,
            "--data-dir",
            file.to_str().unwrap(),
        ],
        WITHIN,
    );
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains(&format!("{} is not a directory", file.display())),
        "{message}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_refused_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        use customers_and_orders::system::{Backends, Services};
        let services = Services::new(&Backends::embedded(dir.path()).await.unwrap());
        for i in 0..300 {
            services
                .customers()
                .unwrap()
                .create(format!("customer {i} {}", "x".repeat(150)), 1_000)
                .await
                .unwrap();
        }
    }
    // Checkpointed into the main file when it closed, then cut in half as a failed copy or a
    // full disk leaves it.
    let customers = dir.path().join("customers.db");
    closed(&customers);
    let len = std::fs::metadata(&customers).unwrap().len();
    assert!(len > 64 * 1024, "a file of many pages ({len} bytes)");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&customers)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let out = tributary(
        &[
            "serve",
            "--listen",
            &listen,
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        WITHIN,
    );
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains(&customers.display().to_string())
            && (message.contains("damaged") || message.contains("malformed")),
        "names the file and what is wrong with it: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_deployment_is_refused_at_start_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    create_a_customer(
        &customers_and_orders::system::Backends::embedded(dir.path())
            .await
            .unwrap(),
    )
    .await;
    closed(&dir.path().join("customers.db"));
    let set_mode = |mode_dir: u32, mode_file: u32| {
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode_file)).unwrap();
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode_dir)).unwrap();
    };
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false);
    // Read-only files in a writable directory (SQLite then opens them read-only and the
    // server used to start), and a read-only directory as well.
    for (what, dir_mode) in [("read-only files", 0o777), ("a read-only directory", 0o555)] {
        set_mode(dir_mode, 0o444);
        let listen = format!("127.0.0.1:{}", free_port());
        let serve = ["serve", "--listen", &listen, "--data-dir", &data_dir];
        // Root ignores file permissions: the server then runs as nobody, as a service
        // account that does not own its data would.
        let out = if root {
            let binary = env!("CARGO_BIN_EXE_tributary");
            let mut args = vec![
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                binary,
            ];
            args.extend(serve);
            run("setpriv", &args, WITHIN)
        } else {
            tributary(&serve, WITHIN)
        };
        set_mode(0o755, 0o644);
        assert!(!out.status.success(), "{what}: must not start");
        let message = stderr(&out);
        assert!(
            (message.contains("read-only") || message.contains("readonly"))
                && message.contains(&data_dir),
            "{what}: names the file and why: {message}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening"),
            "{what}: refused before it listens"
        );
    }
}

#[test]
fn a_port_in_use_is_named_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let out = tributary(
        &[
            "serve",
            "--listen",
            &addr,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        WITHIN,
    );
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains(&addr), "{message}");
    assert!(!data.exists(), "nothing was created before the bind failed");
}

#[test]
fn a_postgresql_server_that_is_down_fails_at_once_naming_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let db = format!("postgres://postgres@{server}/test");
    let broker = format!("embedded://{}", dir.path().display());
    let started = Instant::now();
    // Well under the pool's 10-second acquire timeout that used to end in "pool timed out".
    let out = tributary(
        &[
            "serve", "--listen", &listen, "--db", &db, "--broker", &broker,
        ],
        Duration::from_secs(5),
    );
    let took = started.elapsed();
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains(&server), "{message}");
    assert!(!message.contains("pool timed out"), "{message}");
    let refused = message.matches("refused").count();
    assert_eq!(refused, 1, "the cause is said once ({took:?}): {message}");
}

#[test]
fn admin_on_a_directory_without_a_deployment_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for data in [&missing, &empty] {
        let d = data.to_str().unwrap();
        for command in [
            &["dead-letters", "list"][..],
            &["dead-letters", "replay", "--service", "order", "1"],
            &["dead-letters", "skip", "--service", "order", "1"],
            &["rebuild-history"],
        ] {
            let mut args = vec!["admin", "--data-dir", d];
            args.extend_from_slice(command);
            let out = tributary(&args, WITHIN);
            assert!(!out.status.success(), "{args:?}");
            let message = stderr(&out);
            assert!(
                message.contains("no such deployment"),
                "{args:?}: {message}"
            );
        }
    }
    assert!(!missing.exists(), "no directory was created");
    assert!(snapshot(&empty).is_empty(), "no file was created");
}

#[test]
fn a_dead_letter_id_that_is_not_a_number_is_refused_before_anything_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for id in ["abc", "0x10", "1.5", "", "99999999999999999999"] {
        for command in ["replay", "skip"] {
            let out = tributary(
                &[
                    "admin",
                    "--data-dir",
                    d,
                    "dead-letters",
                    command,
                    "--service",
                    "order",
                    id,
                ],
                WITHIN,
            );
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command} {id:?}: a usage error"
            );
            let message = stderr(&out);
            assert!(
                message.contains(&format!("invalid value '{id}'")),
                "{message}"
            );
        }
    }
    assert!(
        snapshot(dir.path()).is_empty(),
        "nothing was opened or created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_on_postgres_with_an_unknown_prefix_says_so_and_creates_no_schema() {
    let pg = postgres_url();
    if !reachable(&pg) {
        return skip("admin on PostgreSQL", "PostgreSQL is not reachable").unwrap_or(());
    }
    let prefix = format!(
        "nonexist_{}_",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let db = format!("{pg}?schema_prefix={prefix}");
    for command in [
        &["dead-letters", "list"][..],
        &["dead-letters", "list", "--service", "history"],
        &["dead-letters", "replay", "--service", "customer", "1"],
        &["dead-letters", "skip", "--service", "order", "1"],
        &["rebuild-history"],
    ] {
        let mut args = vec!["admin", "--db", &db, "--broker", "nats://127.0.0.1:4222"];
        args.extend_from_slice(command);
        let out = tributary(&args, WITHIN);
        assert!(!out.status.success(), "{args:?}");
        let message = stderr(&out);
        assert!(
            message.contains("no such deployment") && message.contains(&prefix),
            "{args:?}: {message}"
        );
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg)
        .await
        .unwrap();
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(&prefix)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(schemas.is_empty(), "created {schemas:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_database_that_vanished_is_refused_until_its_loss_is_accepted() {
    use customers_and_orders::system::{Backends, Services};
    let dir = tempfile::tempdir().unwrap();
    create_a_customer(&Backends::embedded(dir.path()).await.unwrap()).await;
    // Emptied to 0 bytes as a mistaken redirect or a broken copy leaves it.
    let customers = dir.path().join("customers.db");
    closed(&customers);
    std::fs::File::create(&customers).unwrap();
    let d = dir.path().to_str().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let out = tributary(&["serve", "--listen", &listen, "--data-dir", d], WITHIN);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains(&customers.display().to_string())
            && message.contains(&format!(
                "tributary admin --data-dir {d} forget-service customers"
            )),
        "names the file and the command that accepts the loss: {message}"
    );
    assert_eq!(
        std::fs::metadata(&customers).unwrap().len(),
        0,
        "not re-created"
    );
    let forgot = tributary(
        &["admin", "--data-dir", d, "forget-service", "customers"],
        WITHIN,
    );
    assert!(forgot.status.success(), "{}", stderr(&forgot));
    let again = tributary(
        &["admin", "--data-dir", d, "forget-service", "customers"],
        WITHIN,
    );
    assert!(
        !again.status.success(),
        "forgetting twice says there is nothing to forget"
    );
    // Accepted: the service starts on an empty database.
    let services = Services::new(&Backends::embedded(dir.path()).await.unwrap());
    assert!(
        services
            .customers()
            .unwrap()
            .all()
            .await
            .unwrap()
            .is_empty()
    );
}

/// Drops every schema whose name starts with `prefix` (the test's own), also when it fails.
struct DropSchemas {
    url: String,
    prefix: String,
}

impl Drop for DropSchemas {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        // Async I/O, and this may run inside a runtime: a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                    .await
                    .ok()?;
                let schemas: Vec<String> = sqlx::query_scalar(
                    "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)",
                )
                .bind(&prefix)
                .fetch_all(&mut conn)
                .await
                .ok()?;
                for schema in schemas {
                    let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
                Some(())
            })
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_postgres_service_schema_is_refused_until_its_loss_is_accepted() {
    use customers_and_orders::system::{Backends, BrokerUrl, DbUrl, ServiceName, Services};
    let pg = postgres_url();
    if !reachable(&pg) {
        return skip(
            "vanished schema on PostgreSQL",
            "PostgreSQL is not reachable",
        )
        .unwrap_or(());
    }
    let prefix = format!(
        "vanish_{}_",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let _cleanup = DropSchemas {
        url: pg.clone(),
        prefix: prefix.clone(),
    };
    let db_arg = format!("{pg}?schema_prefix={prefix}");
    let db: DbUrl = db_arg.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerUrl::Embedded {
        dir: dir.path().to_owned(),
    };
    create_a_customer(
        &Backends::connect(&db, &broker, &ServiceName::ALL)
            .await
            .unwrap(),
    )
    .await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{prefix}customers\" CASCADE"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let broker_arg = format!("embedded://{}", dir.path().display());
    let listen = format!("127.0.0.1:{}", free_port());
    let out = tributary(
        &[
            "serve",
            "--listen",
            &listen,
            "--db",
            &db_arg,
            "--broker",
            &broker_arg,
        ],
        WITHIN,
    );
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains(&format!("{prefix}customers"))
            && message.contains(&format!("{prefix}deployment"))
            && message.contains("forget-service customers"),
        "names the schema, the record and the command that accepts the loss: {message}"
    );
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = $1")
            .bind(format!("{prefix}customers"))
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(schemas.is_empty(), "not re-created");
    let forget = ["admin", "--db", &db_arg, "forget-service", "customers"];
    let forgot = tributary(&forget, WITHIN);
    assert!(forgot.status.success(), "{}", stderr(&forgot));
    let again = tributary(&forget, WITHIN);
    assert!(
        !again.status.success(),
        "forgetting twice says there is nothing to forget"
    );
    // Accepted: the service starts on an empty schema.
    let backends = Backends::connect(&db, &broker, &ServiceName::ALL)
        .await
        .unwrap();
    assert!(
        Services::new(&backends)
            .customers()
            .unwrap()
            .all()
            .await
            .unwrap()
            .is_empty()
    );
}
