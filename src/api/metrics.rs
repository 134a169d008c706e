//! `/metrics`: the recorded metrics ([`crate::metrics`]) plus what the store
//! holds and the accounts' logins, computed when Prometheus scrapes, so they
//! are never stale and cost nothing between scrapes.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::job::now_ms;
use crate::providers::Providers;
use crate::store::Store;

/// How long a scrape waits for the store before it reports it not ready
/// (a scrape that hangs on a dead database would hide everything else).
const STORE_SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Renders everything: the recorded metrics, the accounts' logins (counted
/// by their token caches) and gauges read from the store. A store that does
/// not answer is reported as `docfetch_store_ready 0`
/// (without the store's gauges) rather than failing the scrape, so the
/// alert says what is wrong.
pub async fn render(handle: &PrometheusHandle, store: &Store, providers: &Providers) -> String {
    let mut out = handle.render();
    out.push_str(
        "# HELP docfetch_token_refreshes_total Logins to a service (new tokens), by account.\n# TYPE docfetch_token_refreshes_total counter\n",
    );
    for account in providers.iter() {
        out.push_str(&format!(
            "docfetch_token_refreshes_total{{provider=\"{}\",account=\"{}\"}} {}\n",
            account.provider.name(),
            escape(&account.name),
            account.provider.logins()
        ));
    }
    let now = now_ms();
    let snapshot = tokio::time::timeout(STORE_SCRAPE_TIMEOUT, store.snapshot()).await;
    out.push_str(
        "# HELP docfetch_store_ready 1 when the store answered this scrape, 0 when it failed or took over 5s.\n# TYPE docfetch_store_ready gauge\n",
    );
    let snapshot = match snapshot {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: the store did not answer");
            out.push_str("docfetch_store_ready 0\n");
            return out;
        }
        Err(_) => {
            tracing::warn!("metrics: the store did not answer within 5s");
            out.push_str("docfetch_store_ready 0\n");
            return out;
        }
    };
    out.push_str("docfetch_store_ready 1\n");
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
    out
}

/// Escapes a label value for the text exposition format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Environment, Settings};
    use metrics_exporter_prometheus::PrometheusBuilder;

    /// The value of the sample line `series` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[tokio::test]
    async fn a_store_that_fails_is_reported_not_ready_instead_of_failing_the_scrape() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Store::open(&url).await.unwrap();
        let settings = Settings::from_toml(
            "[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/a/hs/dt/storage\"\nusername = \"u\"\npassword = \"p\"\n",
            &Environment::default(),
        )
        .unwrap();
        let providers = Providers::from_settings(&settings);
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let text = render(&handle, &store, &providers).await;
        assert_eq!(sample(&text, "docfetch_store_ready"), Some(1.0), "{text}");
        let logins = "docfetch_token_refreshes_total{provider=\"1c-fresh\",account=\"a\"}";
        assert_eq!(sample(&text, logins), Some(0.0), "{text}");
        assert_eq!(
            sample(&text, "docfetch_oldest_waiting_job_age_seconds"),
            Some(0.0)
        );

        store.close().await.unwrap();
        let text = render(&handle, &store, &providers).await;
        assert_eq!(sample(&text, "docfetch_store_ready"), Some(0.0), "{text}");
        assert_eq!(
            sample(&text, "docfetch_oldest_waiting_job_age_seconds"),
            None
        );
    }
}
