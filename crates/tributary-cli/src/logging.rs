//! The binary's log subscriber: human-readable text by default, or one JSON object per line
//! (`--log-format json`) for a log pipeline that parses fields instead of scraping text. Both
//! write to stderr, so stdout stays the command's output; `RUST_LOG` filters either.
//!
//! With `--otlp-endpoint` (feature `otlp`, on by default) the process also exports its spans —
//! HTTP requests, the outbox's create spans, the relays' send spans, the consumers' process
//! spans and the handlers' own — to an OpenTelemetry collector over OTLP/HTTP (protobuf). The
//! export filter is its own (INFO and above), so a quiet log does not silence the traces.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log events are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event: `timestamp`, `level`, `target`, `fields` (with `message`),
    /// and the spans it happened in.
    Json,
}

/// What the process's subscriber keeps until exit: the span exporter, flushed when dropped.
#[must_use = "dropping it stops the span export"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    traces: Option<otlp::Exporting>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(traces) = self.traces.take() {
            traces.shutdown();
        }
    }
}

/// Installs the process's subscriber; with an `otlp_endpoint`, spans are exported there.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,sqlx::query=error"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never escape codes in a log file.
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        // Spans as a list so that a request's or a group's fields are on every line.
        LogFormat::Json => fmt.json().with_span_list(true).boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    match otlp_endpoint {
        None => {
            registry.init();
            Ok(Telemetry {
                #[cfg(feature = "otlp")]
                traces: None,
            })
        }
        #[cfg(feature = "otlp")]
        Some(endpoint) => {
            let (exporting, layer) = otlp::start(endpoint)?;
            registry.with(layer).init();
            Ok(Telemetry {
                traces: Some(exporting),
            })
        }
        #[cfg(not(feature = "otlp"))]
        Some(_) => anyhow::bail!(
            "--otlp-endpoint needs the `otlp` feature, which this build of tributary left out"
        ),
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use anyhow::Context as _;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
    use tracing::Subscriber;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::{Layer, filter::Filtered};

    /// The running export: its batch processor's thread sends what is left at shutdown.
    pub struct Exporting(SdkTracerProvider);

    impl Exporting {
        pub fn shutdown(self) {
            if let Err(e) = self.0.shutdown() {
                eprintln!("warning: the last spans were not exported: {e}");
            }
        }
    }

    /// `http://host:4318` (the OTLP/HTTP port) is a collector's base address: the traces
    /// path is added, as `OTEL_EXPORTER_OTLP_ENDPOINT` does. A URL with a path is used as is.
    fn traces_url(endpoint: &str) -> anyhow::Result<String> {
        let url = url::Url::parse(endpoint)
            .with_context(|| format!("--otlp-endpoint {endpoint:?} is not a URL"))?;
        anyhow::ensure!(
            url.scheme() == "http",
            "--otlp-endpoint {endpoint:?}: only http:// collectors are supported (OTLP/HTTP \
             without TLS; run a local collector or agent)"
        );
        Ok(if url.path() == "/" {
            format!("{}v1/traces", url.as_str())
        } else {
            url.to_string()
        })
    }

    type OtelLayer<S> = Filtered<
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        LevelFilter,
        S,
    >;

    pub fn start<S>(endpoint: &str) -> anyhow::Result<(Exporting, OtelLayer<S>)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url(endpoint)?)
            .with_timeout(std::time::Duration::from_secs(5))
            .build()
            .context("starting the OTLP span exporter")?;
        // Sent at least every second, so that a trace is complete at the collector soon after
        // the work; a full queue drops spans (counted by the SDK), never blocks the service.
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(std::time::Duration::from_secs(1))
                    .build(),
            )
            .build();
        // `service.name`: OTEL_SERVICE_NAME when set (one name per process; the spans'
        // attributes name the topic, group and relay source within it), else "tributary".
        let resource = Resource::builder()
            .with_service_name(
                std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "tributary".to_owned()),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tributary"))
            .with_filter(LevelFilter::INFO);
        Ok((Exporting(provider), layer))
    }

    #[cfg(test)]
    mod tests {
        use super::traces_url;

        #[test]
        fn a_base_address_gets_the_traces_path_and_a_full_url_is_kept() {
            assert_eq!(
                traces_url("http://127.0.0.1:4318").unwrap(),
                "http://127.0.0.1:4318/v1/traces"
            );
            assert_eq!(
                traces_url("http://collector:4318/custom/traces").unwrap(),
                "http://collector:4318/custom/traces"
            );
            assert!(traces_url("collector:4318").is_err());
            assert!(traces_url("https://collector:4318").is_err());
            assert!(traces_url("not a url").is_err());
        }
    }
}
