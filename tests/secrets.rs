//! Secrets never leave memory: the real daemon runs every provider (1C:Fresh,
//! OFD.ru, ATOL Online, Kontur.Extern, Kontur.Diadoc with both of its
//! sign-ins) at `trace` log level, with credentials given inline, through
//! `_env` and through `_file`, one account with a wrong password, tokens
//! refused once mid-job and a connection reset on a token-bearing URL; its
//! API is called with its token (and a wrong one), and signed webhooks are
//! sent with a named hook's secret and an account's. Then the log, the
//! store (and its WAL), receipts, rejection notes, request folders and
//! output are searched for every secret and every token the simulators
//! issued: zero hits. File modes are checked too.

use std::time::Duration;

use base64::Engine;
use docfetch::job::JobState;
use docfetch::sim::SimConfig;
use docfetch::store::Store;
use serde_json::json;

use crate::helpers::wait_until;
use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::fs::{contains, dirs_under, drop_request, files_under, mode};
use crate::support::proxy::Fault;

const FRESH_PASSWORD_ENV: &str = "DOCFETCH_TEST_FRESH_PASSWORD";
const WRONG_PASSWORD: &str = "wrong-secret-pw-8c1d";
const HOOK_SECRET: &str = "named-hook-secret-4b7e2a91";
const ACCOUNT_WEBHOOK_SECRET: &str = "account-webhook-secret-e03c";
const WRONG_API_TOKEN: &str = "wrong-api-token-1d5f0c3e8a9b7d2e4f6a8c0b1e3d5f7a";

static DIADOC_DOCUMENT: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| {
    json!({"boxId": "0f4bb5a6-6c1d-4c2c-9a57-7a6f7d1f0b31",
           "messageId": "b1e9c0d2-2f4a-4f5e-8d43-6f3c1a9e7b20",
           "documentId": "5d6a4c8e-3b7f-4e0a-9c1d-8f2e6b4a7c90"})
});

fn extern_request(name: &str, account: &str, attachments: &std::path::Path) -> serde_json::Value {
    let rel = format!("{name}/scan.pdf");
    std::fs::create_dir_all(attachments.join(name)).unwrap();
    std::fs::write(attachments.join(&rel), b"%PDF-1.4 secret-test scan").unwrap();
    json!({
        "account": account, "operation": "drafts-build", "name": name,
        "params": {
            "builder-type": "urn:drafts-builder-type:fns534-inventory",
            "sender": {"inn": "7810000000", "kpp": "781001001", "certificate": {"content": "MIIBsim"}},
            "payer": {"inn": "7810000000", "organization": {"kpp": "781001001"}},
            "recipient": {"ifns-code": "7810"},
            "builder-data": {"related-document": {
                "related-docflow-id": "d6b0c7a2-5f0e-4f37-9a5b-0c1e2d3f4a5b",
                "related-document-id": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"}},
            "documents": [{
                "builder-data": {"claim-item-number": "1.01", "scanned-document-name": "Скан.pdf", "type": "scanned"},
                "files": [{"path": rel}],
            }],
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_reaches_logs_store_receipts_or_files_even_at_trace_level() {
    let mut sim_config = SimConfig::default();
    sim_config.ofd.assumptive_delay = Duration::from_millis(100);
    // One refused token per service: the re-login paths run too.
    sim_config.ofd.reject_tokens = 1;
    sim_config.kontur_extern.unauthorized_requests = 1;
    sim_config.kontur_diadoc.retry_after_secs = 0;
    let (sim, proxy) = crate::crash::sim_behind_proxy(sim_config).await;
    // A reset on a request whose URL carries OFD's AuthToken: the error
    // path must not print the URL.
    proxy.add(
        "GET /ofd/api/customer/reports?",
        Fault::ResetAfter(10),
        Some(1),
    );

    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("fresh-password");
    std::fs::write(&secret_file, format!("{}\n", sim.config.fresh.password)).unwrap();
    let fresh = &sim.config.fresh;
    let ofd = &sim.config.ofd;
    let id = &sim.identity.config;
    let extern_base = sim.kontur_extern.base_url();
    let identity = sim.identity.url();
    let account_id = &sim.kontur_extern.config.account_id;
    let atol = &sim.config.atol;
    let diadoc = &sim.config.kontur_diadoc;
    // A webhook receiver that keeps what it gets.
    let received = std::sync::Arc::new(std::sync::Mutex::new(
        Vec::<(String, String, Vec<u8>)>::new(),
    ));
    let sink = received.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let get = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    sink.lock().unwrap().push((
                        get("x-docfetch-timestamp"),
                        get("x-docfetch-signature"),
                        body.to_vec(),
                    ));
                    "ok"
                }
            },
        ),
    );
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hook_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(hook_listener, receiver).await });
    let accounts = format!(
        r#"[accounts.fresh-env]
provider = "1c-fresh"
flow = "ibsession"
base_url = "{fresh_base}"
username = "{user}"
password_env = "{FRESH_PASSWORD_ENV}"

[accounts.fresh-file]
provider = "1c-fresh"
flow = "plain"
base_url = "{fresh_base}"
username = "{user}"
password_file = "{secret_file}"
on_done_url = "{hook_url}"
webhook_secret = "{ACCOUNT_WEBHOOK_SECRET}"

[hooks.notify]
url = "{hook_url}"
secret = "{HOOK_SECRET}"

[accounts.atol-sim]
provider = "atol-kkt"
base_url = "{atol_base}"
login = "{atol_login}"
password = "{atol_password}"

[accounts.diadoc-classic]
provider = "kontur-diadoc"
base_url = "{diadoc_base}"
auth = "diadoc"
client_id = "{diadoc_client}"
login = "{diadoc_login}"
password = "{diadoc_password}"

[accounts.diadoc-oidc]
provider = "kontur-diadoc"
base_url = "{diadoc_base}"
auth = "oidc"
identity_url = "{identity}"
client_id = "{client_id}"
api_key = "{api_key}"

[accounts.fresh-wrong]
provider = "1c-fresh"
flow = "plain"
base_url = "{fresh_base}"
username = "{user}"
password = "{WRONG_PASSWORD}"

[accounts.ofd-sim]
provider = "ofd-ru"
base_url = "{ofd_base}"
login = "{ofd_login}"
password = "{ofd_password}"

[accounts.extern-cc]
provider = "kontur-extern"
base_url = "{extern_base}"
identity_url = "{identity}"
account_id = "{account_id}"
client_id = "{client_id}"
api_key = "{api_key}"

[accounts.extern-pw]
provider = "kontur-extern"
base_url = "{extern_base}"
identity_url = "{identity}"
account_id = "{account_id}"
client_id = "{client_id}"
api_key = "{api_key}"
grant = "password"
login = "{id_login}"
password = "{id_password}"

[accounts.extern-rt]
provider = "kontur-extern"
base_url = "{extern_base}"
identity_url = "{identity}"
account_id = "{account_id}"
client_id = "{client_id}"
api_key = "{api_key}"
grant = "refresh_token"
refresh_token = "{refresh}"
"#,
        fresh_base = sim.fresh.base_url(),
        user = fresh.username,
        secret_file = secret_file.display(),
        ofd_base = sim.ofd.base_url(),
        ofd_login = ofd.login,
        ofd_password = ofd.password,
        client_id = id.client_id,
        api_key = id.api_key,
        id_login = id.login,
        id_password = id.password,
        refresh = id.refresh_token,
        atol_base = sim.atol.base_url(),
        atol_login = atol.login,
        atol_password = atol.password,
        diadoc_base = sim.kontur_diadoc.base_url(),
        diadoc_client = diadoc.client_id,
        diadoc_login = diadoc.login,
        diadoc_password = diadoc.password,
    );
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = DaemonConfig::new(dir.path(), accounts);
    config.api_listen = format!("127.0.0.1:{api_port}");
    let config_path = config.write();
    let log = dir.path().join("daemon.log");
    std::fs::create_dir_all(config.requests()).unwrap();
    // The variable is given to the child only.
    let mut daemon = Daemon::start_with_env(
        &config_path,
        &log,
        "trace",
        &[(FRESH_PASSWORD_ENV, fresh.password.as_str())],
    );

    let requests = config.requests();
    let attachments = config.attachments();
    let jobs = vec![
        json!({"account": "fresh-env", "operation": "sales_book", "name": "s-env",
               "params": {"_sim": {"pending": 1}}}),
        json!({"account": "fresh-file", "operation": "tax_usn_calculator", "name": "s-file"}),
        json!({"account": "fresh-wrong", "operation": "sales_book", "name": "s-wrong"}),
        json!({"account": "ofd-sim", "operation": "report", "name": "s-ofd", "params": {
            "ReportType": "ReceiptReport", "DateFrom": "2026-10-01T00:00:00",
            "DateTo": "2026-10-31T23:59:59", "SelectAllKkts": true}}),
        extern_request("s-cc", "extern-cc", &attachments),
        extern_request("s-pw", "extern-pw", &attachments),
        extern_request("s-rt", "extern-rt", &attachments),
        json!({"account": "atol-sim", "operation": "cash-registers", "name": "s-atol",
               "params": {"limit": 3}}),
        json!({"account": "diadoc-classic", "operation": "document-protocol", "name": "s-diadoc",
               "params": DIADOC_DOCUMENT.clone()}),
        json!({"account": "diadoc-oidc", "operation": "print-form", "name": "s-diadoc-oidc",
               "params": DIADOC_DOCUMENT.clone()}),
    ];
    for job in &jobs {
        let name = job["name"].as_str().unwrap();
        drop_request(
            &requests,
            &format!("{name}.json"),
            &serde_json::to_vec(job).unwrap(),
        );
    }
    // And one bad request, so a rejection note exists to be searched.
    drop_request(
        &requests,
        "bad.json",
        br#"{"account": "fresh-file", "operation": "x", "params": 5}"#,
    );
    // The API, with the token the daemon made and a wrong one.
    let base = format!("http://127.0.0.1:{api_port}");
    let api_token = dir.path().join("api-token");
    let token = wait_until(Duration::from_secs(30), "the API token", || async {
        let r = reqwest::get(format!("{base}/healthz")).await.ok()?;
        (r.status() == 200).then_some(())?;
        std::fs::read_to_string(&api_token).ok()
    })
    .await
    .trim()
    .to_string();
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{base}/api/jobs"))
        .bearer_auth(WRONG_API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{base}/api/jobs"))
        .bearer_auth(&token)
        .json(
            &json!({"account": "fresh-env", "operation": "balance_sheet", "name": "s-api",
                      "on_done": "notify"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let store = Store::open(&config.store_url()).await.unwrap();
    let finished = wait_until(Duration::from_secs(60), "every job to finish", || async {
        let jobs = store.list(&Default::default()).await.ok()?;
        (jobs.len() == 11 && jobs.iter().all(|j| j.state.is_finished())).then_some(jobs)
    })
    .await;
    let r = client
        .get(format!("{base}/api/jobs/s-api"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Both webhooks arrive, signed with their own secrets.
    let calls = wait_until(Duration::from_secs(30), "both webhooks", || async {
        let calls = received.lock().unwrap().clone();
        (calls.len() >= 2).then_some(calls)
    })
    .await;
    for (timestamp, signature, body) in &calls {
        let ts: u64 = timestamp.parse().unwrap();
        let by = |secret: &str| docfetch::hooks::webhook_signature(secret.as_bytes(), ts, body);
        assert!(
            *signature == by(HOOK_SECRET) || *signature == by(ACCOUNT_WEBHOOK_SECRET),
            "{signature}"
        );
    }
    assert!(daemon.terminate().await.success());
    for job in &finished {
        let expected = if job.name == "s-wrong" {
            JobState::Failed
        } else {
            JobState::Done
        };
        assert_eq!(job.state, expected, "{}: {:?}", job.name, job.last_error);
    }
    assert!(
        proxy.faults() >= 1,
        "the reset on a token-bearing URL happened"
    );
    assert!(sim.ofd.unauthorized() >= 1 && sim.ofd.logins() >= 2);
    // Closed, not just dropped: a dropped pool closes in the background and
    // its files (the WAL index) would vanish while they are being read.
    store.close().await.unwrap();

    // Everything issued or configured that grants access.
    let mut secrets: Vec<(String, String)> = vec![
        ("1C password".into(), fresh.password.clone()),
        (
            "1C Basic credentials".into(),
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", fresh.username, fresh.password)),
        ),
        ("wrong 1C password".into(), WRONG_PASSWORD.into()),
        (
            "wrong 1C Basic credentials".into(),
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{WRONG_PASSWORD}", fresh.username)),
        ),
        ("OFD password".into(), ofd.password.clone()),
        ("Kontur API key".into(), id.api_key.clone()),
        ("Kontur password".into(), id.password.clone()),
        // The initial refresh token and every rotated one share the prefix.
        ("Kontur refresh token".into(), "sim-refresh-".into()),
        ("ATOL password".into(), atol.password.clone()),
        ("Diadoc password".into(), diadoc.password.clone()),
        ("Diadoc client id".into(), diadoc.client_id.clone()),
        ("API token".into(), token.clone()),
        ("wrong API token".into(), WRONG_API_TOKEN.into()),
        ("named hook's webhook secret".into(), HOOK_SECRET.into()),
        (
            "account's webhook secret".into(),
            ACCOUNT_WEBHOOK_SECRET.into(),
        ),
    ];
    let atol_tokens = sim.atol.issued_tokens();
    let diadoc_tokens = sim.kontur_diadoc.issued_tokens();
    assert!(!atol_tokens.is_empty() && !diadoc_tokens.is_empty());
    secrets.extend(
        atol_tokens
            .into_iter()
            .map(|t| ("ATOL token".to_string(), t)),
    );
    secrets.extend(
        diadoc_tokens
            .into_iter()
            .map(|t| ("DiadocAuth token".to_string(), t)),
    );
    let ofd_tokens = sim.ofd.issued_tokens();
    let kontur_tokens = sim.identity.issued_tokens();
    assert!(ofd_tokens.len() >= 2, "{ofd_tokens:?}");
    assert!(kontur_tokens.len() >= 3, "{kontur_tokens:?}");
    secrets.extend(
        ofd_tokens
            .into_iter()
            .map(|t| ("OFD AuthToken".to_string(), t)),
    );
    secrets.extend(
        kontur_tokens
            .into_iter()
            .map(|t| ("Kontur access token".to_string(), t)),
    );

    // Every file the daemon could have written; the config, the secret
    // file and the API token's own file hold the credentials on purpose.
    let files: Vec<_> = files_under(dir.path())
        .into_iter()
        .filter(|f| *f != config_path && *f != secret_file && *f != api_token)
        .collect();
    let has = |suffix: &str| files.iter().any(|f| f.to_string_lossy().ends_with(suffix));
    for must in [
        "daemon.log",
        "docfetch.db",
        "s-env/job.json",
        "s-wrong/job.json",
        "s-ofd/job.json",
        "s-rt/build-result.json",
        "rejected/bad.error.txt",
        "accepted/s-env.json",
        "s-atol/job.json",
        "s-diadoc/job.json",
        "s-diadoc-oidc/job.json",
        "s-api/job.json",
    ] {
        assert!(has(must), "{must} should exist among {files:?}");
    }
    // A clean stop checkpoints the WAL into the database file.
    assert!(
        !has("docfetch.db-wal"),
        "the WAL is left after a clean stop: {files:?}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.lines().filter(|l| l.contains("TRACE")).count() > 100,
        "the daemon really logged at trace level"
    );
    let mut hits = Vec::new();
    for file in &files {
        let bytes =
            std::fs::read(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        for (what, secret) in &secrets {
            if contains(&bytes, secret.as_bytes()) {
                hits.push(format!("{what} in {}", file.display()));
            }
        }
    }
    assert!(hits.is_empty(), "secrets leaked:\n{}", hits.join("\n"));
    // The search does see what is there: job names in the store (or its
    // WAL) and the log, the OFD report id in the store.
    let in_any = |suffixes: &[&str], needle: &[u8]| {
        files.iter().any(|f| {
            suffixes.iter().any(|s| f.to_string_lossy().ends_with(s))
                && contains(&std::fs::read(f).unwrap(), needle)
        })
    };
    assert!(in_any(
        &["docfetch.db", "docfetch.db-wal"],
        b"docfetch:s-ofd:"
    ));
    assert!(in_any(&["daemon.log"], b"s-rt"));
    println!(
        "searched {} files ({} bytes of log) for {} secrets and tokens: 0 hits",
        files.len(),
        log_text.len(),
        secrets.len()
    );

    // Modes: output files 0640, folders 0750, the store 0600.
    let output = config.output();
    for d in dirs_under(&output) {
        assert_eq!(mode(&d), 0o750, "{}", d.display());
    }
    for f in files_under(&output) {
        assert_eq!(mode(&f), 0o640, "{}", f.display());
    }
    assert_eq!(mode(&config.store_path()), 0o600, "the store file");
    assert_eq!(mode(&api_token), 0o600, "the API token");
    for suffix in ["-wal", "-shm"] {
        let path = dir.path().join(format!("docfetch.db{suffix}"));
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}
