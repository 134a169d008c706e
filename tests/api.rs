//! The local HTTP API over loopback: health, metrics, jobs, auth, limits.

use std::sync::Arc;

use docfetch::api::{ApiState, Bound};
use docfetch::config::{ApiListen, Secret};
use docfetch::job::JobState;
use docfetch::providers::Providers;
use serde_json::json;

use crate::helpers::TestApp;

const TOKEN: &str = "test-token-0123456789abcdef";

/// Serves the API of `app` on a free loopback port; returns its base URL.
async fn serve(app: &TestApp, token: Option<&str>) -> String {
    let mut settings = (*app.settings).clone();
    settings.api.token = token.map(Secret::new);
    let settings = Arc::new(settings);
    let state = Arc::new(ApiState {
        store: app.store.clone(),
        providers: Providers::from_settings(&settings),
        http: docfetch::http::client(&settings.http).unwrap(),
        settings,
        metrics: docfetch::metrics::install(),
    });
    let bound = docfetch::api::bind(&ApiListen::Tcp("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    let base = format!("http://{}", bound.describe());
    assert!(matches!(bound, Bound::Tcp(_)));
    tokio::spawn(docfetch::api::serve(
        bound,
        docfetch::api::router(state),
        Default::default(),
    ));
    base
}

fn usn(name: &str) -> serde_json::Value {
    json!({"account": "fresh-sim", "operation": "tax_usn_calculator",
           "params": {"organization": {"inn": "783900281039", "kpp": ""}, "date": "2018-09-30T23:59:59"},
           "name": name})
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let base = serve(&app, Some(TOKEN)).await;
    let client = reqwest::Client::new();
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "health needs no token");
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["store"], "ok");
    assert_eq!(body["requests_dir"], "ok");
}

#[tokio::test]
async fn jobs_are_submitted_listed_shown_and_duplicates_refused() {
    let app = TestApp::spawn().await;
    let base = serve(&app, None).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/api/jobs"))
        .json(&usn("api-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["location"], "/api/jobs/api-1");
    let created: serde_json::Value = r.json().await.unwrap();
    assert_eq!(created["state"], "queued");

    let r = client
        .post(format!("{base}/api/jobs"))
        .json(&usn("api-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = r.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{problem}"
    );

    let r = client
        .post(format!("{base}/api/jobs"))
        .body("{\"account\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("line 1"),
        "{problem}"
    );

    let r = client
        .post(format!("{base}/api/jobs"))
        .json(&json!({"account": "nope", "operation": "x", "name": "n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = client
        .get(format!("{base}/api/jobs?state=queued"))
        .send()
        .await
        .unwrap();
    let list: serde_json::Value = r.json().await.unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    let r = client
        .get(format!("{base}/api/jobs?state=done"))
        .send()
        .await
        .unwrap();
    let list: serde_json::Value = r.json().await.unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0);
    let r = client
        .get(format!("{base}/api/jobs?state=bogus"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = client
        .get(format!("{base}/api/jobs/api-1"))
        .send()
        .await
        .unwrap();
    let shown: serde_json::Value = r.json().await.unwrap();
    assert_eq!(shown["events"][0]["kind"], "accepted");
    let r = client
        .get(format!("{base}/api/jobs/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_refused() {
    let app = TestApp::spawn().await;
    let base = serve(&app, None).await;
    let big = format!(
        "{{\"account\": \"fresh-sim\", \"operation\": \"x\", \"params\": \"{}\"}}",
        "a".repeat(2 << 20)
    );
    let r = reqwest::Client::new()
        .post(format!("{base}/api/jobs"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        app.store
            .list(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn with_a_token_every_api_call_needs_it() {
    let app = TestApp::spawn().await;
    let base = serve(&app, Some(TOKEN)).await;
    let client = reqwest::Client::new();
    let r = client.get(format!("{base}/api/jobs")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = client
        .get(format!("{base}/api/jobs"))
        .bearer_auth("wrong-token-0123456789abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{base}/api/jobs"))
        .json(&usn("sneaky"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        app.store.find("sneaky").await.unwrap().is_none(),
        "nothing was submitted"
    );
    let r = client
        .get(format!("{base}/api/jobs"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn cancel_and_retry_follow_the_state_machine() {
    let app = TestApp::spawn().await;
    let base = serve(&app, None).await;
    let client = reqwest::Client::new();
    client
        .post(format!("{base}/api/jobs"))
        .json(&usn("cr"))
        .send()
        .await
        .unwrap();
    let r = client
        .post(format!("{base}/api/jobs/cr/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.job("cr").await.state, JobState::Cancelled);
    assert_eq!(app.receipt("cr")["state"], "cancelled");
    let r = client
        .post(format!("{base}/api/jobs/cr/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = client
        .post(format!("{base}/api/jobs/cr/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.job("cr").await.state, JobState::Queued);
    assert!(
        !app.output("cr").join("job.json").exists(),
        "a queued job has no receipt"
    );
    let r = client
        .post(format!("{base}/api/jobs/cr/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = client
        .post(format!("{base}/api/jobs/missing/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(app.run_until_finished("cr").await.state, JobState::Done);
}

#[tokio::test]
async fn finished_files_are_served_and_nothing_else() {
    let app = TestApp::spawn().await;
    let base = serve(&app, None).await;
    let client = reqwest::Client::new();
    client
        .post(format!("{base}/api/jobs"))
        .json(&usn("files"))
        .send()
        .await
        .unwrap();
    assert_eq!(app.run_until_finished("files").await.state, JobState::Done);
    let r = client
        .get(format!(
            "{base}/api/jobs/files/files/tax_usn_calculator.json"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().await.unwrap(),
        docfetch::sim::fresh::TAX_USN_CALCULATOR.as_bytes()
    );
    let r = client
        .get(format!("{base}/api/jobs/files/files/job.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for bad in ["..%2F..%2Fdocfetch.db", "other.json", "%2Fetc%2Fpasswd"] {
        let r = client
            .get(format!("{base}/api/jobs/files/files/{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }
}

/// Checks the text exposition format line by line and returns the samples.
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        samples.push((series.to_string(), value));
    }
    samples
}

fn sum(samples: &[(String, f64)], prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| s.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_and_move_when_a_job_runs() {
    let app = TestApp::spawn().await;
    let base = serve(&app, Some(TOKEN)).await;
    let client = reqwest::Client::new();
    let scrape = || async {
        let r = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200, "metrics need no token");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        parse_exposition(&r.text().await.unwrap())
    };
    let before = scrape().await;
    app.submit(usn("metered")).await;
    assert_eq!(
        app.run_until_finished("metered").await.state,
        JobState::Done
    );
    let after = scrape().await;
    let polls = "docfetch_polls_total{provider=\"1c-fresh\",account=\"fresh-sim\"}";
    assert!(
        sum(&after, polls) >= sum(&before, polls) + 2.0,
        "two 10202 answers were polls"
    );
    let bytes = "docfetch_downloaded_bytes_total{provider=\"1c-fresh\"}";
    assert!(sum(&after, bytes) >= sum(&before, bytes) + 1651.0);
    assert!(
        sum(&after, "docfetch_provider_step_duration_seconds_count")
            > sum(&before, "docfetch_provider_step_duration_seconds_count")
    );
    assert!(
        after
            .iter()
            .any(|(s, v)| s == "docfetch_jobs{state=\"done\",provider=\"1c-fresh\"}" && *v >= 1.0),
        "{after:?}"
    );
    assert!(
        after
            .iter()
            .any(|(s, _)| s == "docfetch_oldest_waiting_job_age_seconds")
    );
}

#[tokio::test]
async fn the_api_also_listens_on_a_unix_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let path = app.dir.path().join("run/api.sock");
    let state = Arc::new(ApiState {
        store: app.store.clone(),
        providers: Providers::from_settings(&app.settings),
        http: docfetch::http::client(&app.settings.http).unwrap(),
        settings: app.settings.clone(),
        metrics: docfetch::metrics::install(),
    });
    let bound = docfetch::api::bind(&ApiListen::Unix(path.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bound.describe(), format!("unix:{}", path.display()));
    tokio::spawn(docfetch::api::serve(
        bound,
        docfetch::api::router(state),
        Default::default(),
    ));
    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"ok\""), "{answer}");
}
