//! Prometheus metrics: what the daemon did (counters and histograms, recorded
//! where it happens) and what the store holds (gauges, computed when
//! `/metrics` is scraped, so they are never stale and cost nothing between
//! scrapes).
//!
//! Names follow Prometheus conventions: `docfetch_…_total` for counters,
//! `_seconds` and `_bytes` units.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::job::now_ms;
use crate::store::{Store, StoreError};

/// Buckets for durations, from a fast loopback call to a long download.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle (`None`
/// if another recorder was installed first).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets(BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|()| handle)
        })
        .clone()
}

/// A "not ready yet" answer.
pub fn poll(provider: &str, account: &str) {
    metrics::counter!("docfetch_polls_total", "provider" => provider.to_string(), "account" => account.to_string())
        .increment(1);
}

/// How a step ended: `waiting`, `done`, `failed`, `retry` or `postponed`.
pub fn step(provider: &str, account: &str, outcome: &'static str) {
    metrics::counter!(
        "docfetch_steps_total",
        "provider" => provider.to_string(),
        "account" => account.to_string(),
        "outcome" => outcome
    )
    .increment(1);
}

/// A provider error, by class (`transient` or `permanent`).
pub fn error(provider: &str, account: &str, class: &'static str) {
    metrics::counter!(
        "docfetch_errors_total",
        "provider" => provider.to_string(),
        "account" => account.to_string(),
        "class" => class
    )
    .increment(1);
}

/// Time a provider step spent talking to its service.
pub fn step_duration(provider: &str, elapsed: Duration) {
    metrics::histogram!("docfetch_provider_step_duration_seconds", "provider" => provider.to_string())
        .record(elapsed.as_secs_f64());
}

/// A file saved.
pub fn download(provider: &str, bytes: u64, elapsed: Duration) {
    metrics::counter!("docfetch_downloaded_bytes_total", "provider" => provider.to_string())
        .increment(bytes);
    metrics::histogram!("docfetch_download_duration_seconds", "provider" => provider.to_string())
        .record(elapsed.as_secs_f64());
}

/// A store operation's latency (`claim`, `finish`, `checkpoint`, …).
pub fn store_op(op: &'static str, elapsed: Duration) {
    metrics::histogram!("docfetch_store_operation_duration_seconds", "op" => op)
        .record(elapsed.as_secs_f64());
}

/// One group commit of the SQLite store: how many writes it carried and how
/// long it took (statements and the WAL `fsync`).
pub fn store_commit(writes: usize, elapsed: Duration) {
    metrics::counter!("docfetch_store_commits_total").increment(1);
    metrics::counter!("docfetch_store_writes_total").increment(writes as u64);
    metrics::histogram!("docfetch_store_commit_duration_seconds").record(elapsed.as_secs_f64());
}

/// A login to a service (a new token).
pub fn token_refresh(provider: &str, account: &str) {
    metrics::counter!(
        "docfetch_token_refreshes_total",
        "provider" => provider.to_string(),
        "account" => account.to_string()
    )
    .increment(1);
}

/// A request accepted or rejected, by where it came from (`inbox`, `api`, `cli`).
pub fn request(source: &'static str, accepted: bool) {
    let name = if accepted {
        "docfetch_requests_accepted_total"
    } else {
        "docfetch_requests_rejected_total"
    };
    metrics::counter!(name, "source" => source).increment(1);
}

/// Renders everything: the recorded metrics plus gauges read from the store.
pub async fn render(handle: &PrometheusHandle, store: &Store) -> Result<String, StoreError> {
    let mut out = handle.render();
    let now = now_ms();
    let snapshot = store.snapshot().await?;
    out.push_str("# HELP docfetch_jobs Jobs in the store by state and provider.\n# TYPE docfetch_jobs gauge\n");
    for (state, provider, count) in &snapshot.by_state {
        out.push_str(&format!(
            "docfetch_jobs{{state=\"{state}\",provider=\"{}\"}} {count}\n",
            escape(provider)
        ));
    }
    out.push_str(
        "# HELP docfetch_oldest_waiting_job_age_seconds Age of the oldest queued or waiting job.\n# TYPE docfetch_oldest_waiting_job_age_seconds gauge\n",
    );
    let oldest = snapshot
        .oldest_waiting_created
        .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
    out.push_str(&format!(
        "docfetch_oldest_waiting_job_age_seconds {oldest}\n"
    ));
    out.push_str(
        "# HELP docfetch_next_due_seconds Seconds until the next job is due (negative when overdue; absent when none waits).\n# TYPE docfetch_next_due_seconds gauge\n",
    );
    if let Some(due) = snapshot.next_due {
        out.push_str(&format!(
            "docfetch_next_due_seconds {}\n",
            (due - now) as f64 / 1000.0
        ));
    }
    Ok(out)
}

/// Escapes a label value for the text exposition format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
