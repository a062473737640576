//! `GET /metrics`: the Prometheus exporter at the edge, for everything the libraries record
//! through the `metrics` facade.
//!
//! The recorder is installed once per process, before any relay or consumer is built (their
//! handles are registered when they are built; handles registered before the recorder record
//! nothing). Histograms of seconds and of sizes get fixed buckets, so that Prometheus can
//! aggregate them across processes.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// From 100 µs to 30 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Messages per batch, units per commit.
const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static RECORDING: AtomicBool = AtomicBool::new(true);

/// Whether handles registered from now on record (`true` after [`install`]). Handles already
/// registered keep what they were: `bench pipeline --metrics ab` flips this between runs, each
/// of which builds its relay, consumer and databases afresh.
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::SeqCst);
}

/// The Prometheus recorder, or no-op handles while recording is off.
struct Switch(PrometheusRecorder);

impl Recorder for Switch {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description)
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description)
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description)
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if RECORDING.load(Ordering::Relaxed) {
            self.0.register_counter(key, metadata)
        } else {
            Counter::noop()
        }
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if RECORDING.load(Ordering::Relaxed) {
            self.0.register_gauge(key, metadata)
        } else {
            Gauge::noop()
        }
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if RECORDING.load(Ordering::Relaxed) {
            self.0.register_histogram(key, metadata)
        } else {
            Histogram::noop()
        }
    }
}

/// Installs the process's Prometheus recorder (once; later calls return the same handle) and
/// starts its upkeep, which drains histogram samples so memory stays bounded between scrapes.
///
/// # Errors
/// When another recorder was installed in this process.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), SIZES)?
        .set_buckets_for_metric(Matcher::Suffix("_units_per_commit".into()), SIZES)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(Switch(recorder))
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// `GET /metrics` on `handle`, to merge into a service's router.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    handle.render(),
                )
            }
        }),
    )
}

/// Serves `/metrics` alone on `addr` (for `relay` and `cdc`, which have no other HTTP), through
/// tributary-http's bounded server, until `shutdown` resolves.
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn serve_alone(
    addr: SocketAddr,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tributary_http::bind(addr).await?;
    eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
    Ok(tokio::spawn(async move {
        let limits = tributary_http::HttpLimits::default();
        if let Err(e) = tributary_http::serve(listener, router(handle), shutdown, limits).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    }))
}
