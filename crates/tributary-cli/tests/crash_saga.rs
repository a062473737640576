//! Crash tests of the orchestrated flow on the embedded default: the reference application's
//! customer, inventory and order services as three `tributary serve --service …` processes on
//! one data directory, `CreateOrder` sagas started at a steady rate, and one process — the
//! order service (the saga orchestrator) or the customer service (a participant) — killed with
//! SIGKILL 25 times at random points. Then the victim runs undisturbed, and every saga must end
//! with the invariants holding: credit and stock reserved = the approved orders', every saga
//! `Completed` (order approved) or `Compensated` (order rejected), each step's outcome recorded
//! once, no compensation without its step.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use customers_and_orders::invariants::{self, State};
use customers_and_orders::orchestration::Line;
use customers_and_orders::system::{Backends, Services};
use rand::Rng;

const CUSTOMERS: usize = 30;
const PRODUCTS: usize = 5;
const KILLS: usize = 25;

/// One `tributary serve --service NAME` process; SIGKILLed when dropped.
struct Serve(Child);

impl Serve {
    /// Starts the service and waits until it listens.
    fn start(service: &str, dir: &Path, log: &Path) -> Self {
        use std::io::Write;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the log opens");
        let _ = writeln!(stderr, "== serve --service {service}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["serve", "--service", service, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("serve starts");
        let first = BufReader::new(child.stdout.take().expect("stdout"))
            .lines()
            .next();
        match first {
            Some(Ok(line)) if line.starts_with("listening on http://") => Self(child),
            other => panic!(
                "serve --service {service} did not start: {other:?}\n{}",
                tributary_testkit::logs::tail(log, 40)
            ),
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts sagas until stopped, a few milliseconds apart: one or two lines over a handful of
/// products, so that credit and stock both run out and both compensations happen. Returns
/// how many sagas it started.
fn start_load(
    services: Services,
    customers: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let orders = services.orchestrated().expect("the order service").clone();
        let mut started = 0;
        while !stop.load(Ordering::SeqCst) {
            let (customer, total, lines) = {
                let mut rng = rand::rng();
                let first = rng.random_range(0..PRODUCTS);
                let products = if rng.random_bool(0.5) {
                    vec![first]
                } else {
                    vec![first, (first + 1) % PRODUCTS]
                };
                let lines: Vec<Line> = products
                    .into_iter()
                    .map(|p| Line {
                        product_id: format!("product-{p}"),
                        quantity: rng.random_range(1..=3),
                    })
                    .collect();
                (
                    customers[rng.random_range(0..customers.len())].clone(),
                    rng.random_range(1..=10) * 100,
                    lines,
                )
            };
            orders
                .place(&customer, total, lines)
                .await
                .expect("a saga starts");
            started += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        started
    })
}

/// Runs the three services, kills `victim` `KILLS` times under load, lets it recover, and
/// checks the sagas and the invariants.
async fn kill_under_load(victim: &str) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = dir.path().join("serve.log");
    // The test's own handles on the four databases: it starts the sagas itself, as a second
    // writer of the order service's database, so that the load does not stop while the order
    // process is down.
    let services = Services::new(&Backends::embedded(dir.path()).await.expect("backends"));
    let mut customers = Vec::new();
    for i in 0..CUSTOMERS {
        let (c, _) = services
            .customers()
            .unwrap()
            .create(format!("Customer {i}"), 2_000 + 100 * i as i64)
            .await
            .expect("a customer");
        customers.push(c.customer_id);
    }
    for p in 0..PRODUCTS {
        services
            .inventory()
            .unwrap()
            .restock(&format!("product-{p}"), 150)
            .await
            .expect("restocked");
    }
    // The other two services run the whole time (and are killed when the test ends).
    let _others: Vec<Serve> = ["customer", "inventory", "order"]
        .into_iter()
        .filter(|s| *s != victim)
        .map(|s| Serve::start(s, dir.path(), &log))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(services.clone(), customers, stop.clone());
    for _ in 0..KILLS {
        let process = Serve::start(victim, dir.path(), &log);
        let alive = rand::rng().random_range(30..400);
        tokio::time::sleep(Duration::from_millis(alive)).await;
        drop(process);
    }
    stop.store(true, Ordering::SeqCst);
    let started = load.await.expect("the load");
    // How many depends on how loaded the machine is; a few sagas per kill at least, so that
    // kills land while sagas are in flight.
    assert!(
        started >= 4 * KILLS,
        "enough load: {started} sagas for {KILLS} kills"
    );

    let _recovered = Serve::start(victim, dir.path(), &log);
    let orders = services.orchestrated().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let sagas = loop {
        let sagas = orders.sagas().await.expect("the sagas");
        if sagas.iter().all(|s| s.state.is_final()) || Instant::now() > deadline {
            break sagas;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let unfinished: Vec<_> = sagas.iter().filter(|s| !s.state.is_final()).collect();
    assert!(
        unfinished.is_empty(),
        "{} of {} sagas did not end after the {victim} process recovered, e.g. {:?}\n{}",
        unfinished.len(),
        sagas.len(),
        unfinished.first(),
        tributary_testkit::logs::tail(&log, 60)
    );
    assert_eq!(sagas.len(), started, "one saga per order placed");

    // The participants' effects follow the sagas' ends a moment later (the last replies'
    // units commit before the orchestrator reads them, but the customer process's relay may
    // still be publishing unrelated events): the checks settle within a bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    let checks = loop {
        let state = State::read(&services).await.expect("the state");
        let checks = [
            invariants::credit(&state),
            invariants::stock(&state),
            invariants::sagas(&state),
        ];
        if checks.iter().all(|c| c.ok) || Instant::now() > deadline {
            break checks;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let completed = sagas
        .iter()
        .filter(|s| s.state == tributary::saga::SagaState::Completed)
        .count();
    eprintln!(
        "{victim} killed {KILLS} times: {started} sagas, {completed} completed, {} compensated",
        sagas.len() - completed
    );
    for c in &checks {
        assert!(c.ok, "{}: {}", c.name, c.detail);
    }
    assert!(
        completed > 0 && completed < sagas.len(),
        "the load approves some orders and rejects others: {completed} of {}",
        sagas.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_orchestrator_repeatedly_finishes_every_saga_once() {
    kill_under_load("order").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_participant_repeatedly_finishes_every_saga_once() {
    kill_under_load("customer").await;
}
