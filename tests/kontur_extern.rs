//! Kontur.Extern DraftsBuilder (seed `002_7cb98a187ae5719e.txt`) end to end against the simulator.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use docfetch::job::JobState;
use docfetch::job::request::RequestFormat;
use docfetch::providers::{Step, StepContext};
use docfetch::sim::SimConfig;
use docfetch::sim::kontur_extern::KonturExternSimConfig;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, wait_until};

pub(crate) const ACCOUNT: &str = "kontur-extern-sim";

fn sha256_hex(bytes: &[u8]) -> String {
    docfetch::job::digest::hex(&Sha256::digest(bytes))
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(len as u64);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Writes `bytes` to `paths.attachments/rel`, returning its SHA-256.
pub(crate) fn attach(app: &TestApp, rel: &str, bytes: &[u8]) -> String {
    let path = app.settings.paths.attachments.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    sha256_hex(bytes)
}

pub(crate) fn sim_config(kontur_extern: KonturExternSimConfig) -> SimConfig {
    SimConfig {
        kontur_extern,
        ..Default::default()
    }
}

async fn spawn_with(kontur_extern: KonturExternSimConfig) -> TestApp {
    TestApp::spawn_with(sim_config(kontur_extern), "", &[]).await
}

/// A `drafts-build` request for an inventory (fns534-inventory) answering a demand.
pub(crate) fn request(name: &str, builder_data: Value, documents: Value) -> Value {
    json!({
        "account": ACCOUNT,
        "operation": "drafts-build",
        "name": name,
        "params": {
            "builder-type": "urn:drafts-builder-type:fns534-inventory",
            "sender": {"inn": "7810000000", "kpp": "781001001", "certificate": {"content": "MIIBsim"}},
            "payer": {"inn": "7810000000", "organization": {"kpp": "781001001"}},
            "recipient": {"ifns-code": "7810"},
            "builder-data": builder_data,
            "documents": documents,
        },
    })
}

pub(crate) fn scanned(name: &str, files: Value) -> Value {
    json!({
        "builder-data": {"claim-item-number": "1.01", "scanned-document-name": name, "type": "scanned"},
        "files": files,
    })
}

pub(crate) fn related() -> Value {
    json!({"related-document": {"related-docflow-id": "d6b0c7a2-5f0e-4f37-9a5b-0c1e2d3f4a5b",
                                "related-document-id": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"}})
}

/// One small document with one file: the shortest valid job.
fn small_job(app: &TestApp, name: &str, builder_data: Value) -> Value {
    attach(app, &format!("{name}/scan.pdf"), b"%PDF-1.4 small scan");
    request(
        name,
        builder_data,
        json!([scanned(
            "Скан.pdf",
            json!([{"path": format!("{name}/scan.pdf")}])
        )]),
    )
}

pub(crate) fn counter(
    app: &TestApp,
    pick: impl Fn(&docfetch::sim::kontur_extern::KonturExternCounters) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    pick(&app.sim.kontur_extern.counters).load(Ordering::SeqCst)
}

async fn events_text(app: &TestApp, job_id: &str) -> String {
    app.store
        .events(job_id)
        .await
        .unwrap()
        .iter()
        .map(|e| format!("{}: {}\n", e.kind, e.message))
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                out.push(path);
            }
        }
    }
    out
}

/// No access token the identity server issued, and not the API key, is in
/// any file of the test's folder: store, WAL, receipts, outputs.
fn assert_no_secrets_on_disk(app: &TestApp) {
    let mut secrets = app.sim.identity.issued_tokens();
    assert!(!secrets.is_empty(), "the test should have logged in");
    secrets.push(app.sim.identity.config.api_key.clone());
    let files = files_under(app.dir.path());
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().ends_with("docfetch.db")),
        "{files:?}"
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret leaked into {}",
                file.display()
            );
        }
    }
}

#[tokio::test]
async fn a_build_with_two_documents_uploads_every_byte_and_saves_the_result() {
    let app = TestApp::spawn().await;
    let act = random_bytes(150_000);
    let act_page2 = random_bytes(30_000);
    let signature = random_bytes(3_000);
    let bill = random_bytes(70_000);
    let bill_annex = random_bytes(1);
    let mut hashes = vec![
        attach(&app, "inv/act.pdf", &act),
        attach(&app, "inv/act-2.pdf", &act_page2),
        attach(&app, "bills/bill.pdf", &bill),
        attach(&app, "bills/annex.pdf", &bill_annex),
    ];
    attach(&app, "inv/act.pdf.sig", &signature);
    app.submit(request(
        "inventory",
        related(),
        json!([
            scanned("Акт сверки", json!([
                {"path": "inv/act.pdf", "signature_path": "inv/act.pdf.sig",
                 "meta": {"builder-data": {"scanned-file-order": "1"}}},
                {"path": "./inv/act-2.pdf", "meta": {"file-name": "Акт сверки, стр. 2.pdf",
                                                    "builder-data": {"scanned-file-order": "2"}}},
            ])),
            scanned("Счёт", json!([{"path": "bills/bill.pdf"}, {"path": "bills/annex.pdf"}])),
        ]),
    ))
    .await;

    let job = app.run_until_finished("inventory").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);

    let sim = &app.sim.kontur_extern;
    let mut uploaded = sim.content_hashes();
    uploaded.sort();
    hashes.sort();
    assert_eq!(uploaded, hashes, "every file arrived byte for byte");
    let files = sim.files();
    assert_eq!(files.len(), 4);
    let signed = files.iter().find(|f| f.file_name == "act.pdf").unwrap();
    assert_eq!(signed.signature.as_deref(), Some(&signature[..]));
    assert_eq!(signed.content_sha256, sha256_hex(&act));
    assert!(
        files
            .iter()
            .any(|f| f.file_name == "Акт сверки, стр. 2.pdf")
    );
    assert_eq!(files.iter().filter(|f| f.signature.is_some()).count(), 1);
    assert_eq!(
        files
            .iter()
            .map(|f| &f.document_id)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        2
    );
    assert_eq!(sim.builds(), 1);
    assert_eq!(counter(&app, |c| &c.unauthorized), 0);
    assert_eq!(
        app.sim.identity.issued.load(Ordering::SeqCst),
        1,
        "one login for the whole job"
    );

    let result_bytes = std::fs::read(app.output("inventory").join("build-result.json")).unwrap();
    let result: Value = serde_json::from_slice(&result_bytes).unwrap();
    assert_eq!(result["task-state"], "succeed");
    assert_eq!(result["draft-ids"].as_array().unwrap().len(), 1);
    assert_eq!(result["error-drafts-builder-documents"], json!([]));
    let receipt = app.receipt("inventory");
    assert_eq!(receipt["state"], "done");
    assert_eq!(receipt["files"][0]["name"], "build-result.json");
    assert_eq!(receipt["files"][0]["sha256"], sha256_hex(&result_bytes));
    assert_eq!(receipt["files"][0]["size"], result_bytes.len());
    assert!(receipt.get("warnings").is_none());
    assert_no_secrets_on_disk(&app);
}

#[tokio::test]
async fn a_file_larger_than_one_part_is_uploaded_in_several_content_range_parts() {
    let app = spawn_with(KonturExternSimConfig {
        upload_part_size: Some(64 * 1024),
        ..Default::default()
    })
    .await;
    // 20 parts: more steps in a row than the scheduler allows without a wait.
    let big = random_bytes(19 * 65536 + 4321);
    let exact = random_bytes(65536);
    let mut hashes = vec![
        attach(&app, "big.bin", &big),
        attach(&app, "exact.bin", &exact),
    ];
    app.submit(request(
        "parts",
        related(),
        json!([scanned(
            "Большой",
            json!([{"path": "big.bin"}, {"path": "exact.bin"}])
        )]),
    ))
    .await;
    let job = app.run_until_finished("parts").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(counter(&app, |c| &c.parts), 21);
    assert_eq!(counter(&app, |c| &c.contents), 2);
    let mut uploaded = app.sim.kontur_extern.content_hashes();
    uploaded.sort();
    hashes.sort();
    assert_eq!(uploaded, hashes);
    let events = events_text(&app, &job.id).await;
    // 20 parts and the rest exceed the scheduler's 16 steps in a row: the
    // job pauses briefly between bursts instead of being stopped.
    let pauses = events.matches(" bytes uploaded; next check").count();
    assert!(pauses >= 2, "{events}");
    assert!(
        events.contains(&format!("of {} bytes", big.len())),
        "{events}"
    );
}

#[tokio::test]
async fn a_build_running_longer_than_a_lease_is_followed_to_the_end_and_started_once() {
    let app = TestApp::spawn().await;
    let lease = app.settings.scheduler.lease;
    app.submit(small_job(&app, "slow", json!({"_sim": {"polls": 25}})))
        .await;
    let started = Instant::now();
    let job = app.run_until_finished("slow").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert!(
        started.elapsed() > lease,
        "the build should outlast one lease ({:?})",
        started.elapsed()
    );
    assert_eq!(job.polls, 25, "every 'running' answer is a poll");
    assert_eq!(app.sim.kontur_extern.builds(), 1);
    assert_eq!(counter(&app, |c| &c.conflicts), 0);
}

#[tokio::test]
async fn a_build_already_running_is_adopted_from_the_409_instead_of_started_again() {
    let app = TestApp::spawn().await;
    app.submit(small_job(&app, "busy", json!({"_sim": {"busy": true}})))
        .await;
    let job = app.run_until_finished("busy").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(app.sim.kontur_extern.builds(), 1);
    assert_eq!(counter(&app, |c| &c.conflicts), 1);
    let events = events_text(&app, &job.id).await;
    assert!(events.contains("already running"), "{events}");
    assert!(app.output("busy").join("build-result.json").exists());
}

#[tokio::test]
async fn a_409_that_names_no_running_task_fails_instead_of_building_twice() {
    let app = TestApp::spawn().await;
    app.submit(small_job(
        &app,
        "anon",
        json!({"_sim": {"busy_without_task": true}}),
    ))
    .await;
    let job = app.run_until_finished("anon").await;
    assert_eq!(job.state, JobState::Failed);
    let error = job.last_error.unwrap();
    assert!(
        error.contains("did not say which task") && error.contains("concurrentApiTaskActive"),
        "{error}"
    );
    assert_eq!(app.sim.kontur_extern.builds(), 1);
}

#[tokio::test]
async fn a_crash_between_starting_the_build_and_saving_it_adopts_the_running_build() {
    let mut app = TestApp::spawn().await;
    let doc = random_bytes(10_000);
    attach(&app, "crash/a.pdf", &doc);
    attach(&app, "crash/b.pdf", b"second");
    app.submit(request(
        "crash",
        related(),
        json!([
            scanned("A", json!([{"path": "crash/a.pdf"}])),
            scanned("B", json!([{"path": "crash/b.pdf"}]))
        ]),
    ))
    .await;

    // Play the scheduler: run the provider's steps and save each cursor,
    // but "crash" right after the step that started the build, so its
    // task id never reaches the store.
    let mut job = app
        .scheduler
        .claim(10)
        .await
        .unwrap()
        .pop()
        .expect("claimed");
    let account = app.scheduler.providers().get(ACCOUNT).expect("account");
    let http = docfetch::http::client(&app.settings.http).unwrap();
    for _ in 0..50 {
        let ctx = StepContext {
            job: &job,
            http: &http,
            output_dir: docfetch::beneath::Subfolder::new(&app.settings.paths.output, "crash"),
            attachments_dir: app.settings.paths.attachments.clone(),
            max_file_size: app.settings.scheduler.max_file_size,
            timeout: app.settings.http.timeout,
        };
        let cursor = match account.provider.step(&ctx).await.expect("step") {
            Step::Continue(cursor) | Step::Next(cursor) | Step::Wait { cursor, .. } => cursor,
            Step::Done { .. } => panic!("done before the build was even polled"),
        };
        if cursor.get("task-id").is_some() {
            break;
        }
        app.store
            .checkpoint(&job.id, app.scheduler.owner(), &cursor)
            .await
            .unwrap();
        job.cursor = cursor;
    }
    assert_eq!(app.sim.kontur_extern.builds(), 1, "the build was started");
    let saved = app.job("crash").await;
    assert!(saved.cursor.get("builder-id").is_some());
    assert!(
        saved.cursor.get("task-id").is_none(),
        "but that was never saved"
    );

    app.restart().await;
    let job = app.run_until_finished("crash").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(app.sim.kontur_extern.builds(), 1, "no second build");
    assert_eq!(
        counter(&app, |c| &c.conflicts),
        1,
        "the running one was adopted"
    );
    assert_eq!(
        counter(&app, |c| &c.contents),
        2,
        "nothing was uploaded twice"
    );
    assert_eq!(counter(&app, |c| &c.builders), 1);
}

#[tokio::test]
async fn attachment_paths_that_leave_the_attachments_folder_are_refused_at_submit() {
    let app = TestApp::spawn().await;
    for (path, field, why) in [
        (
            "../secret.pdf",
            "params.documents[0].files[0].path",
            "\"..\"",
        ),
        (
            "/etc/passwd",
            "params.documents[0].files[0].path",
            "absolute",
        ),
        (
            "inv/../../x.pdf",
            "params.documents[0].files[0].path",
            "\"..\"",
        ),
    ] {
        let bytes = serde_json::to_vec(&request(
            "evil",
            related(),
            json!([scanned("X", json!([{"path": path}]))]),
        ))
        .unwrap();
        let err = docfetch::inbox::accept(
            &app.store,
            &app.settings,
            &bytes,
            RequestFormat::Json,
            None,
            "test",
        )
        .await
        .expect_err(path)
        .to_string();
        assert!(err.contains(field) && err.contains(why), "{path}: {err}");
    }
    let bytes = serde_json::to_vec(&request(
        "evil",
        related(),
        json!([scanned(
            "X",
            json!([{"path": "ok.pdf", "signature_path": "../../key.sig"}])
        )]),
    ))
    .unwrap();
    let err = docfetch::inbox::accept(
        &app.store,
        &app.settings,
        &bytes,
        RequestFormat::Json,
        None,
        "test",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("params.documents[0].files[0].signature_path"),
        "{err}"
    );
    assert!(app.store.find("evil").await.unwrap().is_none());
}

#[tokio::test]
async fn a_symlink_out_of_the_attachments_folder_is_refused_at_run_time_before_any_upload() {
    let app = TestApp::spawn().await;
    attach(&app, "fine.pdf", b"fine");
    let secret = app.dir.path().join("secret.pdf");
    std::fs::write(&secret, b"not for Extern").unwrap();
    std::os::unix::fs::symlink(&secret, app.settings.paths.attachments.join("link.pdf")).unwrap();
    app.submit(request(
        "link",
        related(),
        json!([
            scanned("Fine", json!([{"path": "fine.pdf"}])),
            scanned("Link", json!([{"path": "link.pdf"}])),
        ]),
    ))
    .await;
    let job = app.run_until_finished("link").await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.steps, 1, "refused for good, not retried");
    let error = job.last_error.unwrap();
    assert!(
        error.contains("params.documents[1].files[0].path")
            && error.contains("outside paths.attachments"),
        "{error}"
    );
    assert!(
        !error.contains(&secret.display().to_string()),
        "the target is not shown: {error}"
    );
    assert_eq!(counter(&app, |c| &c.requests), 0, "nothing was uploaded");
}

#[tokio::test]
async fn a_symlinked_signature_out_of_the_attachments_folder_is_refused_too() {
    let app = TestApp::spawn().await;
    attach(&app, "doc.pdf", b"doc");
    let key = app.dir.path().join("key.sig");
    std::fs::write(&key, b"private").unwrap();
    std::os::unix::fs::symlink(&key, app.settings.paths.attachments.join("doc.pdf.sig")).unwrap();
    app.submit(request(
        "sig",
        related(),
        json!([scanned(
            "Doc",
            json!([{"path": "doc.pdf", "signature_path": "doc.pdf.sig"}])
        )]),
    ))
    .await;
    let job = app.run_until_finished("sig").await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.last_error.unwrap().contains("signature_path"));
    assert_eq!(counter(&app, |c| &c.requests), 0);
}

#[tokio::test]
async fn expired_tokens_mid_job_cost_one_new_login_and_the_job_finishes() {
    let app = TestApp::spawn().await;
    app.submit(small_job(&app, "expire", related())).await;
    wait_until(Duration::from_secs(10), "the build to start", || async {
        app.scheduler.step().await.unwrap();
        let job = app.job("expire").await;
        job.cursor.get("task-id").is_some().then_some(())
    })
    .await;
    assert_eq!(app.sim.identity.issued.load(Ordering::SeqCst), 1);
    app.sim.identity.expire_all();
    let job = app.run_until_finished("expire").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(
        app.sim.identity.issued.load(Ordering::SeqCst),
        2,
        "one re-login"
    );
    assert_eq!(counter(&app, |c| &c.unauthorized), 1);
    assert_no_secrets_on_disk(&app);
}

#[tokio::test]
async fn a_token_refused_twice_fails_the_job_at_once() {
    let app = spawn_with(KonturExternSimConfig {
        unauthorized_requests: 2,
        ..Default::default()
    })
    .await;
    app.submit(small_job(&app, "revoked", related())).await;
    let job = app.run_until_finished("revoked").await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.steps, 1);
    let error = job.last_error.unwrap();
    assert!(
        error.contains("HTTP 401") && error.contains("unauthorized"),
        "{error}"
    );
    assert_eq!(
        app.sim.identity.issued.load(Ordering::SeqCst),
        2,
        "exactly one re-login"
    );
    assert_no_secrets_on_disk(&app);
}

#[tokio::test]
async fn the_password_and_refresh_token_grants_work_too() {
    for grant in ["password", "refresh_token"] {
        let app = spawn_with(KonturExternSimConfig {
            grant: Some(grant.into()),
            ..Default::default()
        })
        .await;
        app.submit(small_job(&app, "grant", related())).await;
        let job = app.run_until_finished("grant").await;
        assert_eq!(job.state, JobState::Done, "{grant}: {:?}", job.last_error);
        assert_eq!(
            app.sim.identity.refused.load(Ordering::SeqCst),
            0,
            "{grant}"
        );
    }
}

#[tokio::test]
async fn refused_requests_fail_at_once_with_externs_error_id_message_and_trace() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            400,
            "urn:error:externapi:validation",
            "Не указан ИНН отправителя",
        ),
        (
            403,
            "urn:error:externapi:accessDenied",
            "Нет доступа к организации",
        ),
        (
            404,
            "urn:error:externapi:notFound",
            "Организация не найдена",
        ),
        (
            409,
            "urn:error:externapi:draftsBuilderLocked",
            "Черновик заблокирован",
        ),
    ];
    for (status, id, message) in cases {
        let name = format!("refused-{status}");
        app.submit(small_job(
            &app,
            &name,
            json!({"_sim": {"create_error": {"status": status, "id": id, "message": message}}}),
        ))
        .await;
    }
    for (status, id, message) in cases {
        let job = app.run_until_finished(&format!("refused-{status}")).await;
        assert_eq!(job.state, JobState::Failed, "{status}");
        assert_eq!(job.steps, 1, "{status}: not retried");
        let error = job.last_error.unwrap();
        assert!(
            error.contains(&format!("HTTP {status}"))
                && error.contains(id)
                && error.contains(message)
                && error.contains("trace-id"),
            "{status}: {error}"
        );
    }
    assert_eq!(counter(&app, |c| &c.builders), 0);
}

#[tokio::test]
async fn server_errors_and_garbage_are_retried_until_the_build_succeeds() {
    let app = TestApp::spawn().await;
    app.submit(small_job(
        &app,
        "flaky",
        json!({"_sim": {"create_error": {"status": 503, "raw": "<html>503 Service Unavailable</html>", "times": 2}}}),
    ))
    .await;
    app.submit(small_job(
        &app,
        "garbled",
        json!({"_sim": {"create_error": {"status": 200, "raw": "<html>maintenance</html>", "times": 1}}}),
    ))
    .await;
    for name in ["flaky", "garbled"] {
        let job = app.run_until_finished(name).await;
        assert_eq!(job.state, JobState::Done, "{name}: {:?}", job.last_error);
        assert_eq!(job.attempts, 0);
        let events = events_text(&app, &job.id).await;
        assert!(
            events.contains("503 Service Unavailable") || events.contains("maintenance"),
            "{events}"
        );
    }
}

#[tokio::test]
async fn a_server_error_that_never_ends_gives_up_after_max_attempts() {
    let app = TestApp::spawn().await;
    app.submit(small_job(
        &app,
        "down",
        json!({"_sim": {"create_error": {"status": 500, "id": "urn:error:externapi:internal", "message": "Сервис недоступен"}}}),
    ))
    .await;
    let job = app.run_until_finished("down").await;
    assert_eq!(job.state, JobState::Failed);
    let error = job.last_error.unwrap();
    assert!(
        error.contains("gave up after 4 attempts") && error.contains("Сервис недоступен"),
        "{error}"
    );
}

#[tokio::test]
async fn a_429_pauses_the_account_and_the_job_carries_on() {
    let app = spawn_with(KonturExternSimConfig {
        rate_limited_requests: 1,
        retry_after_secs: 1,
        ..Default::default()
    })
    .await;
    app.submit(small_job(&app, "slowdown", related())).await;
    let job = app.run_until_finished("slowdown").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(counter(&app, |c| &c.rate_limited), 1);
    let events = events_text(&app, &job.id).await;
    assert!(
        events.contains("HTTP 429") && events.contains("tooManyRequests"),
        "{events}"
    );
}

#[tokio::test]
async fn a_500_while_polling_is_retried_without_a_second_build() {
    let app = spawn_with(KonturExternSimConfig {
        fail_poll: Some(1),
        ..Default::default()
    })
    .await;
    app.submit(small_job(&app, "poll500", related())).await;
    let job = app.run_until_finished("poll500").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(app.sim.kontur_extern.builds(), 1);
    let events = events_text(&app, &job.id).await;
    assert!(events.contains("HTTP 500"), "{events}");
}

#[tokio::test]
async fn documents_extern_could_not_build_make_the_job_done_with_warnings() {
    let app = TestApp::spawn().await;
    attach(&app, "w/good.pdf", b"good");
    attach(&app, "w/bad.pdf", b"bad");
    app.submit(request(
        "warned",
        related(),
        json!([
            scanned("Хороший", json!([{"path": "w/good.pdf"}])),
            {"name": "Плохой акт",
             "builder-data": {"type": "scanned", "_sim": {"error": "Файл не соответствует формату"}},
             "files": [{"path": "w/bad.pdf"}]},
        ]),
    ))
    .await;
    let job = app.run_until_finished("warned").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let receipt = app.receipt("warned");
    let warnings = receipt["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1);
    let warning = warnings[0].as_str().unwrap();
    assert!(
        warning.contains("documents[1]")
            && warning.contains("Плохой акт")
            && warning.contains("Файл не соответствует формату"),
        "{warning}"
    );
    let result: Value = serde_json::from_slice(
        &std::fs::read(app.output("warned").join("build-result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(result["draft-ids"].as_array().unwrap().len(), 1);
    let error = &result["error-drafts-builder-documents"][0];
    assert_eq!(error["document-index"], 1);
    assert_eq!(error["document-name"], "Плохой акт");
    assert_eq!(error["error-message"], "Файл не соответствует формату");
}

#[tokio::test]
async fn a_build_without_any_draft_fails_and_names_the_documents() {
    let app = TestApp::spawn().await;
    attach(&app, "n/only.pdf", b"only");
    app.submit(request(
        "nodraft",
        related(),
        json!([{"builder-data": {"type": "scanned", "scanned-document-name": "Единственный",
                                 "_sim": {"error": "Неверный формат"}},
                "files": [{"path": "n/only.pdf"}]}]),
    ))
    .await;
    let job = app.run_until_finished("nodraft").await;
    assert_eq!(job.state, JobState::Failed);
    let error = job.last_error.unwrap();
    assert!(
        error.contains("no draft")
            && error.contains("Единственный")
            && error.contains("Неверный формат"),
        "{error}"
    );
    assert!(
        app.output("nodraft").join("build-result.json").exists(),
        "kept for diagnosis"
    );
}

#[tokio::test]
async fn a_build_without_any_draft_names_each_document_once_and_briefly() {
    let app = TestApp::spawn().await;
    attach(&app, "brief/a.pdf", b"a");
    attach(&app, "brief/b.pdf", b"b");
    // Extern lists the first document three times: a long, multi-line
    // message twice and another once.
    let long = "Строка описи не соответствует формату.\n".repeat(20);
    app.submit(request(
        "brief",
        related(),
        json!([
            {"builder-data": {"type": "scanned", "scanned-document-name": "Первый",
                              "_sim": {"error": long, "more_errors": [long, "Вторая ошибка"]}},
             "files": [{"path": "brief/a.pdf"}]},
            {"builder-data": {"type": "scanned", "scanned-document-name": "Второй",
                              "_sim": {"error": "Неверный формат"}},
             "files": [{"path": "brief/b.pdf"}]},
        ]),
    ))
    .await;
    let job = app.run_until_finished("brief").await;
    assert_eq!(job.state, JobState::Failed);
    let error = job.last_error.unwrap();
    assert_eq!(error.matches("documents[0] (Первый)").count(), 1, "{error}");
    assert_eq!(error.matches("documents[1] (Второй)").count(), 1, "{error}");
    assert!(error.contains("(+1 more)"), "{error}");
    assert!(error.contains("Неверный формат"), "{error}");
    assert!(!error.contains('\n'), "one line: {error}");
    assert!(
        error.chars().count() < 600,
        "brief ({} characters): {error}",
        error.chars().count()
    );
    assert!(!error.contains("Вторая ошибка"), "{error}");
    // The result file keeps every entry Extern gave.
    let result: Value = serde_json::from_slice(
        &std::fs::read(app.output("brief").join("build-result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        result["error-drafts-builder-documents"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
}

#[tokio::test]
async fn a_failed_build_task_fails_the_job_with_the_error_id_message_and_trace() {
    let app = TestApp::spawn().await;
    app.submit(small_job(
        &app,
        "failed",
        json!({"_sim": {"fail": {"id": "urn:error:externapi:draftsBuilderBuildFailed", "message": "Не удалось сформировать опись"}}}),
    ))
    .await;
    let job = app.run_until_finished("failed").await;
    assert_eq!(job.state, JobState::Failed);
    let error = app.receipt("failed")["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("urn:error:externapi:draftsBuilderBuildFailed")
            && error.contains("Не удалось сформировать опись")
            && error.contains("trace-id [T-"),
        "{error}"
    );
}

#[tokio::test]
async fn an_accounts_jobs_never_send_more_requests_at_once_than_its_limit() {
    let app = spawn_with(KonturExternSimConfig {
        concurrency: Some(2),
        latency: Duration::from_millis(15),
        ..Default::default()
    })
    .await;
    let names: Vec<String> = (0..6).map(|i| format!("many-{i}")).collect();
    for name in &names {
        app.submit(small_job(&app, name, related())).await;
    }
    for name in &names {
        let job = app.run_until_finished(name).await;
        assert_eq!(job.state, JobState::Done, "{name}: {:?}", job.last_error);
    }
    let max = counter(&app, |c| &c.max_in_flight);
    assert!((1..=2).contains(&max), "at most 2 at once, saw {max}");
    assert_eq!(app.sim.kontur_extern.builds(), 6);
}

#[tokio::test]
async fn requests_for_extern_are_checked_before_they_are_accepted() {
    let app = TestApp::spawn().await;
    let accept = |value: Value| {
        let bytes = serde_json::to_vec(&value).unwrap();
        let app = &app;
        async move {
            docfetch::inbox::accept(
                &app.store,
                &app.settings,
                &bytes,
                RequestFormat::Json,
                None,
                "test",
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        }
    };
    let mut wrong_operation = request(
        "v1",
        related(),
        json!([scanned("A", json!([{"path": "a.pdf"}]))]),
    );
    wrong_operation["operation"] = json!("build");
    assert!(
        accept(wrong_operation)
            .await
            .unwrap_err()
            .contains("drafts-build")
    );
    let no_documents = request("v2", related(), json!([]));
    assert!(
        accept(no_documents)
            .await
            .unwrap_err()
            .contains("params.documents")
    );
    let no_files = request("v3", related(), json!([{"builder-data": {}, "files": []}]));
    assert!(
        accept(no_files)
            .await
            .unwrap_err()
            .contains("params.documents[0].files")
    );
    let bad_path = request(
        "v4",
        related(),
        json!([scanned("A", json!([{"path": "a.pdf"}, {"path": 7}]))]),
    );
    assert!(
        accept(bad_path)
            .await
            .unwrap_err()
            .contains("params.documents[0].files[1].path")
    );
    let good = request(
        "v5",
        related(),
        json!([scanned("A", json!([{"path": "a.pdf"}]))]),
    );
    accept(good)
        .await
        .expect("a well-formed request is accepted");
}
