//! Prometheus metrics, recorded: what the daemon did (counters and
//! histograms, recorded where it happens). What the store holds is computed
//! when `/metrics` is scraped, in [`crate::api::metrics`]; this module needs
//! nothing of the settings, the store or the providers, so every module can
//! record.
//!
//! Names follow Prometheus conventions: `docfetch_…_total` for counters,
//! `_seconds` and `_bytes` units, `_timestamp_seconds` for Unix times.
//!
//! The alert rules and the dashboard in `deploy/monitoring/` use these names;
//! CI checks that every name they use is one `/metrics` exports. Series an
//! alert counts are [`register`]ed at zero when the daemon starts, so the
//! first failure is an increase Prometheus can see, not a new series.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::job::now_ms;

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

/// How a step can end, as [`step`] labels it.
const STEP_OUTCOMES: &[&str] = &["waiting", "done", "failed", "retry", "postponed"];
/// Error classes, as [`error`] labels them.
const ERROR_CLASSES: &[&str] = &["transient", "permanent"];
/// How a job's hooks can end, as [`hooks_ran`] labels it.
const HOOK_OUTCOMES: &[&str] = &["ok", "retry", "given_up"];
/// Where requests come from, as [`request`] labels them.
const REQUEST_SOURCES: &[&str] = &["inbox", "api", "cli"];

/// Describes every metric and creates, at zero, the series the alert rules
/// count for each configured account (its name and provider), plus the
/// configured job deadline.
pub fn register<'a>(deadline: Duration, accounts: impl IntoIterator<Item = (&'a str, &'a str)>) {
    describe();
    metrics::gauge!("docfetch_job_deadline_seconds").set(deadline.as_secs_f64());
    for (name, provider) in accounts {
        let name = name.to_string();
        let labels = [
            ("provider", provider.to_string()),
            ("account", name.clone()),
        ];
        metrics::counter!("docfetch_polls_total", &labels).increment(0);
        for outcome in STEP_OUTCOMES {
            let mut labels = labels.to_vec();
            labels.push(("outcome", (*outcome).to_string()));
            metrics::counter!("docfetch_steps_total", &labels).increment(0);
        }
        for class in ERROR_CLASSES {
            let mut labels = labels.to_vec();
            labels.push(("class", (*class).to_string()));
            metrics::counter!("docfetch_errors_total", &labels).increment(0);
        }
        for outcome in HOOK_OUTCOMES {
            metrics::counter!("docfetch_hook_runs_total", "account" => name.clone(), "outcome" => *outcome)
                .increment(0);
        }
        // Never paused yet: a time long past.
        metrics::gauge!("docfetch_account_paused_until_timestamp_seconds", "account" => name.clone())
            .increment(0.0);
    }
    for source in REQUEST_SOURCES {
        metrics::counter!("docfetch_requests_accepted_total", "source" => *source).increment(0);
        metrics::counter!("docfetch_requests_rejected_total", "source" => *source).increment(0);
    }
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "docfetch_polls_total",
        "\"Not ready yet\" answers from a service."
    );
    describe_counter!(
        "docfetch_steps_total",
        "Provider steps by how they ended: waiting, done, failed (the job failed), retry, postponed."
    );
    describe_counter!(
        "docfetch_errors_total",
        "Provider errors by class: transient or permanent."
    );
    describe_histogram!(
        "docfetch_provider_step_duration_seconds",
        "Time a provider step spent talking to its service."
    );
    describe_counter!("docfetch_downloaded_bytes_total", "Bytes of files saved.");
    describe_histogram!(
        "docfetch_download_duration_seconds",
        "Time to download and save a file."
    );
    describe_histogram!(
        "docfetch_store_operation_duration_seconds",
        "Latency of store operations."
    );
    describe_counter!(
        "docfetch_store_commits_total",
        "Commits of the store: its group commits, and on PostgreSQL also the statements run outside them (each its own commit)."
    );
    describe_counter!(
        "docfetch_store_writes_total",
        "Writes carried by the store's group commits."
    );
    describe_histogram!(
        "docfetch_store_commit_duration_seconds",
        "Time of one group commit (statements and the commit's WAL flush)."
    );
    describe_counter!(
        "docfetch_store_round_trips_total",
        "Statements the PostgreSQL store sent to the server, each a round trip (BEGIN and COMMIT included)."
    );
    describe_counter!(
        "docfetch_token_refreshes_total",
        "Logins to a service (new tokens)."
    );
    describe_counter!(
        "docfetch_requests_accepted_total",
        "Requests accepted, by source."
    );
    describe_counter!(
        "docfetch_requests_rejected_total",
        "Requests rejected, by source."
    );
    describe_counter!(
        "docfetch_hook_runs_total",
        "Runs of a finished job's hooks: ok, retry (failed, will run again), given_up."
    );
    describe_gauge!(
        "docfetch_account_paused_until_timestamp_seconds",
        "Unix time until which the account pauses after a 429 (in the past when it runs)."
    );
    describe_gauge!(
        "docfetch_inbox_last_scan_timestamp_seconds",
        "Unix time the drop directory was last scanned through."
    );
    describe_gauge!(
        "docfetch_job_deadline_seconds",
        "The configured scheduler.deadline: a job older than this fails as timed out."
    );
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

/// One group commit of the store: how many writes it carried and how long
/// it took (statements and the commit's WAL flush).
pub fn store_commit(writes: usize, elapsed: Duration) {
    metrics::counter!("docfetch_store_commits_total").increment(1);
    metrics::counter!("docfetch_store_writes_total").increment(writes as u64);
    metrics::histogram!("docfetch_store_commit_duration_seconds").record(elapsed.as_secs_f64());
}

/// `n` statements the PostgreSQL store sent and waited for.
pub fn store_round_trips(n: u64) {
    metrics::counter!("docfetch_store_round_trips_total").increment(n);
}

/// A statement the PostgreSQL store ran outside a group commit: its own
/// commit (the round trip is counted by [`store_round_trips`]).
pub fn store_autocommit() {
    metrics::counter!("docfetch_store_commits_total").increment(1);
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

/// A job's hooks ran: `state` is what the hook runner stores for them
/// (`done`: all succeeded; `pending`: one failed and they run again;
/// `failed`: given up).
pub fn hooks_ran(account: &str, state: &str) {
    let outcome = match state {
        "done" => "ok",
        "pending" => "retry",
        _ => "given_up",
    };
    metrics::counter!("docfetch_hook_runs_total", "account" => account.to_string(), "outcome" => outcome)
        .increment(1);
}

/// The account pauses for `pause` from now (a 429).
pub fn account_paused(account: &str, pause: Duration) {
    let until = unix_seconds(now_ms()) + pause.as_secs_f64();
    metrics::gauge!("docfetch_account_paused_until_timestamp_seconds", "account" => account.to_string())
        .set(until);
}

/// The drop directory was scanned through.
pub fn inbox_scanned() {
    metrics::gauge!("docfetch_inbox_last_scan_timestamp_seconds").set(unix_seconds(now_ms()));
}

fn unix_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusRecorder;

    fn recorder() -> (PrometheusRecorder, PrometheusHandle) {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        (recorder, handle)
    }

    /// The value of the sample line `series` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn register_creates_what_the_alerts_count_at_zero_and_exports_the_deadline() {
        let (recorder, handle) = recorder();
        metrics::with_local_recorder(&recorder, || {
            register(Duration::from_secs(7200), [("a", "1c-fresh")])
        });
        let text = handle.render();
        for series in [
            "docfetch_steps_total{provider=\"1c-fresh\",account=\"a\",outcome=\"failed\"}",
            "docfetch_errors_total{provider=\"1c-fresh\",account=\"a\",class=\"permanent\"}",
            "docfetch_polls_total{provider=\"1c-fresh\",account=\"a\"}",
            "docfetch_hook_runs_total{account=\"a\",outcome=\"given_up\"}",
            "docfetch_account_paused_until_timestamp_seconds{account=\"a\"}",
            "docfetch_requests_rejected_total{source=\"inbox\"}",
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
        }
        assert_eq!(sample(&text, "docfetch_job_deadline_seconds"), Some(7200.0));
        assert!(text.contains("# HELP docfetch_hook_runs_total"), "{text}");
    }

    #[test]
    fn hooks_pauses_and_scans_are_recorded_with_their_times() {
        let (recorder, handle) = recorder();
        let before = unix_seconds(now_ms());
        metrics::with_local_recorder(&recorder, || {
            hooks_ran("a", "done");
            hooks_ran("a", "pending");
            hooks_ran("a", "pending");
            hooks_ran("a", "failed");
            account_paused("a", Duration::from_secs(600));
            inbox_scanned();
        });
        let after = unix_seconds(now_ms());
        let text = handle.render();
        let runs = |outcome: &str| {
            sample(
                &text,
                &format!("docfetch_hook_runs_total{{account=\"a\",outcome=\"{outcome}\"}}"),
            )
        };
        assert_eq!(runs("ok"), Some(1.0));
        assert_eq!(runs("retry"), Some(2.0));
        assert_eq!(runs("given_up"), Some(1.0));
        let until = sample(
            &text,
            "docfetch_account_paused_until_timestamp_seconds{account=\"a\"}",
        )
        .unwrap();
        assert!((before + 600.0..=after + 600.0).contains(&until), "{until}");
        let scanned = sample(&text, "docfetch_inbox_last_scan_timestamp_seconds").unwrap();
        assert!((before..=after).contains(&scanned), "{scanned}");
    }
}
