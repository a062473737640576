//! `tributary serve` killed in the middle of a burst of orders, started again on the same data
//! directory: once it is quiet, every invariant holds. Then a SIGTERM stops it gracefully.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use customers_and_orders::invariants;
use customers_and_orders::system::{self, Backends};
use serde_json::{Value, json};

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next().expect("a line").expect("readable");
        assert!(line.starts_with("listening on http://"), "{line}");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> Option<Value> {
    let r = client.post(url).json(&body).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_killed_mid_burst_resumes_and_every_invariant_holds() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = Server::start(dir.path());
    let mut customers = Vec::new();
    for i in 0..30 {
        let c = post(
            &client,
            format!("{}/customers", server.base),
            json!({"name": format!("C{i}"), "credit_limit": 20_000}),
        )
        .await
        .expect("customer created");
        customers.push(c["customer_id"].as_str().unwrap().to_owned());
    }
    // A burst of orders, killed in the middle.
    let mut burst = Vec::new();
    let answered = Arc::new(AtomicUsize::new(0));
    for i in 0..600 {
        let (client, url, c, answered) = (
            client.clone(),
            format!("{}/orders", server.base),
            customers[i % customers.len()].clone(),
            answered.clone(),
        );
        burst.push(tokio::spawn(async move {
            let order = post(
                &client,
                url,
                json!({"customer_id": c, "order_total": 100 + (i as i64 % 20) * 100}),
            )
            .await;
            if order.is_some() {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            order
        }));
    }
    // Killed once some orders were acknowledged (not after a fixed time: on a loaded machine
    // none may have been answered yet), while most are still in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::SeqCst) < 10 {
        assert!(Instant::now() < deadline, "no order was acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let mut acknowledged = Vec::new();
    for b in burst {
        if let Some(o) = b.await.unwrap() {
            acknowledged.push(o["order_id"].as_str().unwrap().to_owned());
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "some orders were accepted before the kill"
    );
    // Started again on the same data: it resumes and settles what was left in flight.
    let server = Server::start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    for o in &acknowledged {
        loop {
            let r: Value = client
                .get(format!("{}/orders/{o}", server.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if r["state"] != "NEW" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "order {o} never settled after the restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let status = server.terminate();
    assert!(status.success(), "SIGTERM stops serve gracefully: {status}");
    // Every order that exists (acknowledged or not) satisfies the invariants.
    let running = system::start(Backends::embedded(dir.path()).await.unwrap())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let checks = loop {
        let checks = invariants::all(&running.services, running.backends.broker.as_ref())
            .await
            .unwrap();
        if checks.iter().all(|c| c.ok) || Instant::now() > deadline {
            break checks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let orders = running.services.orders().unwrap().all().await.unwrap();
    running.stop().await;
    eprintln!(
        "{} orders acknowledged before the kill, {} exist: {checks:?}",
        acknowledged.len(),
        orders.len()
    );
    assert!(orders.len() >= acknowledged.len());
    assert!(checks.iter().all(|c| c.ok), "{checks:?}");
}
