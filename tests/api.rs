//! The local HTTP API over loopback, used as it is meant to be (with its
//! token, JSON bodies) and attacked as a web page, a DNS-rebinding page, a
//! local user without the token and a slow client would attack it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use docfetch::api::{ApiState, Bound};
use docfetch::config::{ApiAuth, ApiListen, Settings};
use docfetch::job::JobState;
use docfetch::providers::Providers;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::TestApp;

/// An API served for a test.
pub struct Api {
    pub base: String,
    pub addr: SocketAddr,
    pub token: String,
}

impl Api {
    /// A client that sends the token with every call.
    pub fn client(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    }

    /// POST with an empty JSON body (cancel, retry).
    pub async fn post_empty(&self, path: &str) -> reqwest::Response {
        self.client()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap()
    }
}

/// Serves the API of `app` on a free loopback port with its own settings
/// (a token made in the test's folder, as `docfetch run` makes it).
pub async fn serve(app: &TestApp) -> Api {
    serve_with(app, (*app.settings).clone()).await
}

/// Serves the API of `app` with `settings` (the listener included).
pub async fn serve_with(app: &TestApp, settings: Settings) -> Api {
    let settings = Arc::new(settings);
    let token = docfetch::api::token::resolve(&settings.api.auth).unwrap();
    let state = Arc::new(ApiState {
        store: app.store.clone(),
        providers: Providers::from_settings(&settings),
        http: docfetch::http::client(&settings.http).unwrap(),
        metrics: docfetch::metrics::install(),
        token: token.clone(),
        settings: settings.clone(),
    });
    let bound = docfetch::api::bind(&settings.api.listen)
        .await
        .unwrap()
        .unwrap();
    let Bound::Tcp(listener) = &bound else {
        panic!("a TCP listener")
    };
    let port = listener.local_addr().unwrap().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    tokio::spawn(docfetch::api::serve(bound, state, Default::default()));
    Api {
        base: format!("http://{addr}"),
        addr,
        token: token.map(|t| t.expose().to_string()).unwrap_or_default(),
    }
}

/// Sends `request` as written (it should say `Connection: close`) and
/// returns the status code and the whole answer.
pub async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    (status, answer)
}

fn usn(name: &str) -> serde_json::Value {
    json!({"account": "fresh-sim", "operation": "tax_usn_calculator",
           "params": {"organization": {"inn": "783900281039", "kpp": ""}, "date": "2018-09-30T23:59:59"},
           "name": name})
}

async fn no_jobs(app: &TestApp) -> bool {
    app.store
        .list(&Default::default())
        .await
        .unwrap()
        .is_empty()
}

#[tokio::test]
async fn health_and_readiness_answer_without_the_token() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/healthz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "health needs no token");
    let r = client
        .get(format!("{}/readyz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["store"], "ok");
    assert_eq!(body["requests_dir"], "ok");
}

#[tokio::test]
async fn the_token_is_made_beside_the_store_with_mode_0600_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn().await;
    let ApiAuth::Generated(path) = &app.settings.api.auth else {
        panic!("no token_file: a generated token")
    };
    assert_eq!(path, &app.dir.path().join("api-token"));
    let first = serve(&app).await;
    assert_eq!(first.token.len(), 64);
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let second = serve(&app).await;
    assert_eq!(first.token, second.token, "a restart keeps the token");
}

#[tokio::test]
async fn jobs_are_submitted_listed_shown_and_duplicates_refused() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    let base = &api.base;
    let client = api.client();
    let r = client
        .post(format!("{base}/api/jobs"))
        .json(&usn("api-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["location"], "/api/jobs/api-1");
    assert_eq!(r.headers()["cache-control"], "no-store");
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
        .header("content-type", "application/json")
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
    let api = serve(&app).await;
    let big = format!(
        "{{\"account\": \"fresh-sim\", \"operation\": \"x\", \"params\": \"{}\"}}",
        "a".repeat(2 << 20)
    );
    let r = api
        .client()
        .post(format!("{}/api/jobs", api.base))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(no_jobs(&app).await);
}

#[tokio::test]
async fn every_api_call_needs_the_token_and_a_wrong_one_gets_nothing() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    let base = &api.base;
    let anonymous = reqwest::Client::new();
    for path in ["/api/jobs", "/api/jobs/x", "/api/jobs/x/files/job.json"] {
        let r = anonymous.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
    let r = anonymous
        .get(format!("{base}/api/jobs"))
        .bearer_auth("0".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a wrong token of the right length");
    let r = anonymous
        .get(format!("{base}/api/jobs"))
        .bearer_auth(&api.token[..63])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a prefix of the token");
    for path in ["/api/jobs/x/cancel", "/api/jobs/x/retry"] {
        let r = anonymous
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = anonymous
        .post(format!("{base}/api/jobs"))
        .json(&usn("sneaky"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(no_jobs(&app).await, "nothing was submitted");
    let r = api
        .client()
        .get(format!("{base}/api/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the right token works");
}

#[tokio::test]
async fn a_cross_site_text_plain_post_from_a_web_page_is_refused_and_creates_nothing() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    // What a page on another site makes the operator's browser send, with
    // no preflight: a "simple" request, carrying a command to run.
    let body = serde_json::to_string(&json!({
        "account": "fresh-sim", "operation": "balance_sheet", "name": "from-a-web-page",
        "on_done": ["/bin/sh", "-c", "touch /tmp/docfetch-pwned"]}))
    .unwrap();
    let host = api.addr.to_string();
    for token in [None, Some(api.token.as_str())] {
        // Even a request that somehow carried the token is refused.
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "POST /api/jobs HTTP/1.1\r\nHost: {host}\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, answer) = raw(api.addr, &request).await;
        assert_eq!(status, 403, "{answer}");
        assert!(answer.contains("Cross-origin request refused"), "{answer}");
    }
    // A page on the same machine (another port) is another site too.
    let request = format!(
        "POST /api/jobs HTTP/1.1\r\nHost: {host}\r\nOrigin: http://localhost:3000\r\nContent-Type: application/json\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        api.token,
        body.len()
    );
    assert_eq!(raw(api.addr, &request).await.0, 403);
    // So is a sandboxed page (Origin: null), and a browser's Sec-Fetch-Site.
    for header in ["Origin: null", "Sec-Fetch-Site: cross-site"] {
        let request = format!(
            "GET /api/jobs HTTP/1.1\r\nHost: {host}\r\n{header}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            api.token
        );
        assert_eq!(raw(api.addr, &request).await.0, 403, "{header}");
    }
    assert!(no_jobs(&app).await, "nothing was created");
    // The API's own origin is not a foreign one.
    let request = format!(
        "GET /api/jobs HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nSec-Fetch-Site: same-origin\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        api.token
    );
    assert_eq!(raw(api.addr, &request).await.0, 200);
}

#[tokio::test]
async fn a_call_that_changes_something_must_be_json_even_with_the_token() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    let body = serde_json::to_string(&usn("form")).unwrap();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut request = api.client().post(format!("{}/api/jobs", api.base));
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let r = request.body(body.clone()).send().await.unwrap();
        assert_eq!(r.status(), 415, "{content_type:?}");
    }
    let r = api
        .client()
        .post(format!("{}/api/jobs/form/cancel", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415, "cancel without a JSON content type");
    assert!(no_jobs(&app).await);
}

#[tokio::test]
async fn a_dns_rebinding_host_is_refused_even_with_the_token() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    let port = api.addr.port();
    for host in [
        format!("rebind.attacker.example:{port}"),
        format!("localhost:{}", port.wrapping_add(1)),
        "localhost".to_string(),
    ] {
        for path in ["/api/jobs", "/healthz", "/metrics"] {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                api.token
            );
            let (status, answer) = raw(api.addr, &request).await;
            assert_eq!(status, 421, "{host} {path}: {answer}");
        }
    }
    let body = serde_json::to_string(&usn("rebound")).unwrap();
    let request = format!(
        "POST /api/jobs HTTP/1.1\r\nHost: rebind.attacker.example:{port}\r\nContent-Type: application/json\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        api.token,
        body.len()
    );
    assert_eq!(raw(api.addr, &request).await.0, 421);
    assert!(no_jobs(&app).await);
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw(api.addr, &request).await.0, 200, "{host}");
    }
}

#[tokio::test]
async fn a_request_carrying_a_command_is_refused_with_how_to_configure_it() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    let mut request = usn("carries-argv");
    request["on_done"] = json!(["/usr/local/bin/import-usn", "--quiet"]);
    let r = api
        .client()
        .post(format!("{}/api/jobs", api.base))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let problem: serde_json::Value = r.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("[hooks.import-usn]")
            && detail.contains("on_done = \"import-usn\"")
            && detail.contains("hooks.allow_request_commands"),
        "{detail}"
    );
    let mut request = usn("carries-url");
    request["on_done_url"] = json!("https://attacker.example/collect");
    let r = api
        .client()
        .post(format!("{}/api/jobs", api.base))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let mut request = usn("names-nothing");
    request["on_done"] = json!("import-usn");
    let r = api
        .client()
        .post(format!("{}/api/jobs", api.base))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a name that is not configured");
    let problem: serde_json::Value = r.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no hook named \"import-usn\""),
        "{problem}"
    );
    assert!(no_jobs(&app).await);
}

#[tokio::test]
async fn cancel_and_retry_follow_the_state_machine() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    api.client()
        .post(format!("{}/api/jobs", api.base))
        .json(&usn("cr"))
        .send()
        .await
        .unwrap();
    let r = api.post_empty("/api/jobs/cr/cancel").await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.job("cr").await.state, JobState::Cancelled);
    assert_eq!(app.receipt("cr")["state"], "cancelled");
    assert_eq!(api.post_empty("/api/jobs/cr/cancel").await.status(), 409);
    assert_eq!(api.post_empty("/api/jobs/cr/retry").await.status(), 200);
    assert_eq!(app.job("cr").await.state, JobState::Queued);
    assert!(
        !app.output("cr").join("job.json").exists(),
        "a queued job has no receipt"
    );
    assert_eq!(api.post_empty("/api/jobs/cr/retry").await.status(), 409);
    assert_eq!(
        api.post_empty("/api/jobs/missing/retry").await.status(),
        404
    );
    assert_eq!(app.run_until_finished("cr").await.state, JobState::Done);
}

#[tokio::test]
async fn finished_files_are_served_and_nothing_else() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    let base = &api.base;
    let client = api.client();
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
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
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
    let api = serve(&app).await;
    let base = &api.base;
    let client = reqwest::Client::new();
    let scrape = || async {
        let r = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200, "metrics need no token on loopback");
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
async fn metrics_need_the_token_on_an_address_other_machines_can_reach_unless_made_public() {
    let app = TestApp::spawn().await;
    let mut settings = (*app.settings).clone();
    settings.api.listen = ApiListen::Tcp("0.0.0.0:0".parse().unwrap());
    let api = serve_with(&app, settings.clone()).await;
    let anonymous = reqwest::Client::new();
    let r = anonymous
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = api
        .client()
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = anonymous
        .get(format!("{}/healthz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "health stays open");
    settings.api.metrics_public = true;
    let public = serve_with(&app, settings).await;
    let r = anonymous
        .get(format!("{}/metrics", public.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "api.metrics_public = true");
    let r = anonymous
        .get(format!("{}/api/jobs", public.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the jobs still need the token");
}

/// Settings for the slow-client tests: short limits.
fn impatient(app: &TestApp) -> Settings {
    let mut settings = (*app.settings).clone();
    settings.api.header_timeout = Duration::from_millis(500);
    settings.api.body_timeout = Duration::from_millis(500);
    settings
}

/// Reads from `stream` until the server closes it; returns what came.
async fn until_closed(stream: &mut tokio::net::tcp::OwnedReadHalf) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes `bytes` one at a time, one every 50 ms; returns how many were
/// written before the server stopped taking them (all of them if it never did).
async fn trickle(stream: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8]) -> usize {
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    for (i, byte) in bytes.iter().enumerate() {
        pace.tick().await;
        if stream.write_all(&[*byte]).await.is_err() {
            return i;
        }
    }
    bytes.len()
}

#[tokio::test]
async fn a_client_sending_its_headers_byte_by_byte_too_slowly_is_cut_off() {
    let app = TestApp::spawn().await;
    let api = serve_with(&app, impatient(&app)).await;
    // About 15 s of headers at this pace; the limit is half a second.
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Slow: {}\r\n\r\n",
        api.addr,
        "a".repeat(250)
    );
    let (mut read, mut write) = tokio::net::TcpStream::connect(api.addr)
        .await
        .unwrap()
        .into_split();
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::select! {
            answer = until_closed(&mut read) => answer,
            sent = trickle(&mut write, head.as_bytes()) => {
                panic!("the server took the whole slow head ({sent} bytes) without closing")
            }
        }
    })
    .await
    .expect("the server closes the connection");
    assert!(
        !outcome.contains(" 200 "),
        "the slow request was not served: {outcome}"
    );
    // The server itself is fine.
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        api.addr
    );
    assert_eq!(raw(api.addr, &request).await.0, 200);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let app = TestApp::spawn().await;
    let api = serve_with(&app, impatient(&app)).await;
    let (mut read, mut write) = tokio::net::TcpStream::connect(api.addr)
        .await
        .unwrap()
        .into_split();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", api.addr);
    write.write_all(request.as_bytes()).await.unwrap();
    // The answer comes, the connection stays open for a next request, and
    // when none comes it is closed.
    let answer = tokio::time::timeout(Duration::from_secs(60), until_closed(&mut read))
        .await
        .expect("the idle connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.contains("connection: close"),
        "kept alive: {answer}"
    );
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_refused_and_creates_nothing() {
    let app = TestApp::spawn().await;
    let api = serve_with(&app, impatient(&app)).await;
    let body = serde_json::to_string(&usn("slow-body")).unwrap();
    let head = format!(
        "POST /api/jobs HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        api.addr,
        api.token,
        body.len()
    );
    let (mut read, mut write) = tokio::net::TcpStream::connect(api.addr)
        .await
        .unwrap()
        .into_split();
    write.write_all(head.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::select! {
            answer = until_closed(&mut read) => answer,
            sent = trickle(&mut write, body.as_bytes()) => {
                // Every byte went out: the answer must still be a refusal.
                let _ = sent;
                until_closed(&mut read).await
            }
        }
    })
    .await
    .expect("the server answers and closes");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(no_jobs(&app).await);
}

#[tokio::test]
async fn the_api_listens_on_a_unix_socket_with_mode_0660_and_may_go_without_a_token_there() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn().await;
    let path = app.dir.path().join("run/api.sock");
    let mut settings = (*app.settings).clone();
    settings.api.listen = ApiListen::Unix(path.clone());
    settings.api.auth = ApiAuth::None;
    let settings = Arc::new(settings);
    let state = Arc::new(ApiState {
        store: app.store.clone(),
        providers: Providers::from_settings(&settings),
        http: docfetch::http::client(&settings.http).unwrap(),
        metrics: docfetch::metrics::install(),
        token: None,
        settings: settings.clone(),
    });
    // A stale socket from a previous run is replaced.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let bound = docfetch::api::bind(&settings.api.listen)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bound.describe(), format!("unix:{}", path.display()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o660,
        "the socket's mode is set, not left to the umask"
    );
    let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["api.sock"], "no staging folder is left behind");
    tokio::spawn(docfetch::api::serve(bound, state, Default::default()));
    let ask = |request: String| {
        let path = path.clone();
        async move {
            let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        }
    };
    // What `curl --unix-socket PATH http://localhost/healthz` sends.
    let answer =
        ask("GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"ok\""), "{answer}");
    let answer =
        ask("GET /api/jobs HTTP/1.1\r\nHost: docfetch\r\nConnection: close\r\n\r\n".into()).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "api.auth = none: {answer}"
    );
    let answer =
        ask("GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Still no browser: a foreign Origin is refused there too.
    let answer = ask("POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".into()).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}
