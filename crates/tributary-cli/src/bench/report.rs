//! Benchmark results: one JSON object per line on stdout (the format of DESIGN.md, "Benchmark
//! output"), a human-readable line on stderr.

use std::time::Duration;

use serde::Serialize;

/// One benchmark figure. Fields that do not apply are left out of the JSON.
#[derive(Debug, Default, Serialize)]
pub struct BenchResult {
    pub bench: String,
    pub scenario: String,
    pub backend: String,
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_events_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    pub settings: serde_json::Value,
}

impl BenchResult {
    pub fn new(bench: &str, scenario: &str, backend: &str, events: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            bench: bench.into(),
            scenario: scenario.into(),
            backend: backend.into(),
            events,
            seconds: round(seconds, 4),
            events_per_sec: round(events as f64 / seconds.max(1e-9), 1),
            settings: serde_json::json!({}),
            ..Self::default()
        }
    }

    /// Adds latency percentiles from per-operation samples.
    pub fn with_latencies(mut self, samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return self;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            round(samples[i].as_secs_f64() * 1000.0, 3)
        };
        self.p50_ms = Some(at(0.50));
        self.p99_ms = Some(at(0.99));
        self.max_ms = Some(at(1.0));
        self
    }

    /// Compares with a raw baseline measured in the same run.
    pub fn against(mut self, baseline: &str, baseline_events_per_sec: f64) -> Self {
        self.baseline = Some(baseline.into());
        self.baseline_events_per_sec = Some(round(baseline_events_per_sec, 1));
        self.ratio = Some(round(
            self.events_per_sec / baseline_events_per_sec.max(1e-9),
            3,
        ));
        self
    }

    pub fn with_settings(mut self, settings: serde_json::Value) -> Self {
        self.settings = settings;
        self
    }

    pub fn with_peak_rss(mut self, mb: Option<f64>) -> Self {
        self.peak_rss_mb = mb.map(|m| round(m, 1));
        self
    }

    /// Prints the JSON line to stdout and a readable line to stderr.
    pub fn emit(&self) {
        let mut line = format!(
            "{:<10} {:<24} {:<9} {:>10} events {:>8.3}s {:>12.0}/s",
            self.bench, self.scenario, self.backend, self.events, self.seconds, self.events_per_sec
        );
        if let (Some(p50), Some(p99)) = (self.p50_ms, self.p99_ms) {
            line.push_str(&format!("  p50 {p50:.2}ms p99 {p99:.2}ms"));
        }
        if let (Some(b), Some(r)) = (&self.baseline, self.ratio) {
            line.push_str(&format!("  ratio {r:.2} of {b}"));
        }
        if let Some(rss) = self.peak_rss_mb {
            line.push_str(&format!("  peak RSS {rss:.0} MB"));
        }
        eprintln!("{line}");
        match serde_json::to_string(self) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("cannot serialize result: {e}"),
        }
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Resident memory high-water mark of this process, in MB (Linux only).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the high-water mark so the next reading covers only what follows (Linux only).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
