//! The binary's log subscriber: human-readable text by default, or one JSON object per line
//! (`--log-format json`) for a log pipeline that parses fields instead of scraping text. Both
//! write to stderr, so stdout stays the command's output; `RUST_LOG` filters either.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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

/// Installs the process's subscriber.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,sqlx::query=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never escape codes in a log file.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        // Spans as a list so that a request's or a group's fields are on every line.
        LogFormat::Json => builder.json().with_span_list(true).init(),
    }
}
