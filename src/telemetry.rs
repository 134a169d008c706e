//! Logging: one line per event through `tracing`, as text or JSON, to
//! stderr (stdout is kept for command output).
//!
//! Secrets never reach a log line: they are wrapped in
//! [`crate::config::Secret`], URLs are printed through
//! [`crate::http::redact_url`], and HTTP errors through
//! [`crate::http::describe`], which drops the URL.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{Environment, LogFormat, LogSettings};

/// Noisy dependencies are kept at `warn` unless `RUST_LOG` says otherwise.
const QUIET: &str =
    "sqlx=warn,tokio_cron_scheduler=warn,hyper=warn,hyper_util=warn,reqwest=warn,axum=warn";

/// Installs the global subscriber. `RUST_LOG` (from `env`) wins over `log.level`.
pub fn init(settings: &LogSettings, env: &Environment) {
    let directives = match env.get("RUST_LOG") {
        Some(filter) if !filter.trim().is_empty() => filter.to_string(),
        _ => format!("{},{QUIET}", settings.level),
    };
    let filter =
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")));
    // Under systemd, journald adds its own timestamps and shows no colours.
    let journal = env.get("JOURNAL_STREAM").is_some();
    let ansi = !journal && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE)
        .with_target(false);
    let result = match (settings.format, journal) {
        (LogFormat::Json, _) => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        (LogFormat::Text, true) => builder.without_time().with_ansi(false).try_init(),
        (LogFormat::Text, false) => builder.with_ansi(ansi).try_init(),
    };
    // A second init (tests, demo) keeps the first subscriber.
    let _ = result;
}
