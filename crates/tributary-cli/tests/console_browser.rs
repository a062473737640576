//! `tributary console` in a real browser: Debian's headless Chromium driven through
//! chromedriver (WebDriver over HTTP). The page shows a dead letter the test made, clicking
//! Replay resolves it through the group's running consumer, and the open count it showed is
//! the one `tributary status --json` reports. Skips (or fails, under
//! `TRIBUTARY_TEST_SERVERS=required`) without chromium and chromedriver.

mod listening;
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use listening::Listening;
use serde_json::{Value, json};
use support::{Deployment, GROUP, IDLE_GROUP, TOPIC, total_lag, tributary};
use tributary_testkit::servers::skip;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn found(program: &str) -> Option<String> {
    ["/usr/bin", "/usr/lib/chromium", "/usr/local/bin"]
        .iter()
        .map(|d| format!("{d}/{program}"))
        .find(|p| std::path::Path::new(p).is_file())
}

/// A WebDriver session on chromedriver.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Browser {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method.clone(), url);
        // WebDriver refuses a body on GET.
        if method != reqwest::Method::GET {
            request = request.json(&body);
        }
        let json: Value = request.send().await.unwrap().json().await.unwrap();
        json["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// The element ids matching `css` (none, one or more).
    async fn find(&self, css: &str) -> Vec<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_object()?.values().next()?.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `css` matches, then returns the first match.
    async fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.find(css).await.into_iter().next() {
                return e;
            }
            assert!(Instant::now() < deadline, "the page never showed {css}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the first match of `css`. The pages refresh themselves, so an element
    /// can go stale between finding and reading it: find it again until the read succeeds.
    async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let element = self.wait_for(css).await;
            let path = format!("/element/{element}/text");
            let v = self.call(reqwest::Method::GET, &path, json!(null)).await;
            if let Some(text) = v.as_str() {
                return text.to_owned();
            }
            assert!(Instant::now() < deadline, "could not read {css}: {v}");
        }
    }

    /// Clicks the first match of `css`, finding it again if it went stale.
    async fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let element = self.wait_for(css).await;
            let path = format!("/element/{element}/click");
            let v = self.call(reqwest::Method::POST, &path, json!({})).await;
            if v.get("error").is_none() {
                return;
            }
            assert!(Instant::now() < deadline, "could not click {css}: {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicking_replay_in_the_console_resolves_a_dead_letter() {
    let (Some(chromium), Some(driver)) = (found("chromium"), found("chromedriver")) else {
        skip::<()>(
            "the console browser test",
            "chromium or chromedriver is not installed",
        );
        return;
    };
    let d = Deployment::start().await;
    d.publish("invoice-7").await;
    let letter = d.dead_letters(1).await.remove(0);

    // A second group that reads nothing, so that the lag the page shows is not zero.
    let _idle = d.idle_group().await;
    let broker = d.broker_url();
    let console = Listening::start(&[
        "console",
        "--db",
        &d.url,
        "--broker",
        &broker,
        "--listen",
        "127.0.0.1:0",
    ]);
    let site = console.base.clone();

    let port = free_port();
    let _driver = Killed(
        Command::new(driver)
            .args([format!("--port={port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/status"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let created: Value = http
        .post(format!("{base}/session"))
        .json(&json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage",
                         format!("--user-data-dir={}", profile.path().display())],
            }
        }}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = created["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {created}"))
        .to_owned();
    let browser = Browser {
        http: http.clone(),
        base: base.clone(),
        session,
    };

    browser.open(&site).await;
    let shown_open = browser.text(&format!("[data-open=\"{GROUP}\"]")).await;
    let shown_lag = browser
        .text(&format!("[data-total-lag=\"{IDLE_GROUP}/{TOPIC}\"]"))
        .await;
    let status = tributary(&["status", "--db", &d.url, "--broker", &broker, "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        shown_open,
        status["dead_letters"][0]["open"].to_string(),
        "the console and `status --json` agree"
    );
    let lag = total_lag(&status, IDLE_GROUP);
    assert_eq!(
        lag, 1,
        "the idle group is behind by the one message: {status}"
    );
    assert_eq!(shown_lag, lag.to_string(), "the console's lag is status's");

    browser.click(&format!("a[data-group=\"{GROUP}\"]")).await;
    let row = browser
        .text(&format!("tr[data-dead-letter=\"{}\"]", letter.id))
        .await;
    assert!(row.contains("the billing handler is broken"), "{row}");

    d.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    browser
        .click(&format!("button[data-replay=\"{}\"]", letter.id))
        .await;
    // The page refreshes itself; the letter leaves it once the consumer replayed it.
    browser.wait_for("#none").await;
    d.dead_letters(0).await;
    assert_eq!(d.handled.load(std::sync::atomic::Ordering::SeqCst), 1);

    let _ = http
        .delete(format!("{base}/session/{}", browser.session))
        .send()
        .await;
    d.stop().await;
}
