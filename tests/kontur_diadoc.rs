//! Kontur.Diadoc end to end against the simulator: both auth schemes, the
//! three operations, pending answers, every error status, and secrets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use docfetch::job::JobState;
use docfetch::job::request::RequestFormat;
use docfetch::sim::SimConfig;
use docfetch::sim::kontur_diadoc::{
    self as diadoc, DocumentKnobs, KonturDiadocSim, KonturDiadocSimConfig,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, wait_until};

const CLASSIC: &str = "kontur-diadoc-sim";
const OIDC: &str = "kontur-diadoc-oidc-sim";
const BOX: &str = "0f4bb5a6-6c1d-4c2c-9a57-7a6f7d1f0b31";
const MESSAGE: &str = "b1e9c0d2-2f4a-4f5e-8d43-6f3c1a9e7b20";
const DOCUMENT: &str = "5d6a4c8e-3b7f-4e0a-9c1d-8f2e6b4a7c90";
const OTHER_DOCUMENT: &str = "9a0e2b7c-41d3-4f6b-b8e5-0c2d7f3a91e4";

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::SeqCst)
}

fn sha256_hex(bytes: &[u8]) -> String {
    docfetch::job::digest::hex(&Sha256::digest(bytes))
}

fn request(account: &str, operation: &str, document_id: &str, name: &str) -> serde_json::Value {
    json!({
        "account": account,
        "operation": operation,
        "name": name,
        "params": {"boxId": BOX, "messageId": MESSAGE, "documentId": document_id},
    })
}

/// A simulator whose Diadoc answers `Retry-After: 0` (the scheduler waits
/// its minimum), adjusted by `f`.
fn sim(f: impl FnOnce(&mut KonturDiadocSimConfig)) -> SimConfig {
    let mut diadoc = KonturDiadocSimConfig {
        retry_after_secs: 0,
        ..Default::default()
    };
    f(&mut diadoc);
    SimConfig {
        kontur_diadoc: diadoc,
        ..Default::default()
    }
}

async fn spawn(f: impl FnOnce(&mut KonturDiadocSimConfig)) -> TestApp {
    TestApp::spawn_with(sim(f), "", &[]).await
}

/// The files in a job's folder, sorted.
fn files_in(app: &TestApp, name: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(app.output(name))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn last_error(app: &TestApp, name: &str) -> String {
    app.receipt(name)["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Steps the scheduler once all `names` are due, so they advance together.
async fn step_all(app: &TestApp, names: &[String]) {
    wait_until(Duration::from_secs(10), "the jobs to be due", || async {
        for name in names {
            if app.job(name).await.next_run_at > docfetch::job::now_ms() {
                return None;
            }
        }
        Some(())
    })
    .await;
    app.scheduler.step().await.expect("scheduler step");
}

async fn events_text(app: &TestApp, name: &str) -> String {
    let job = app.job(name).await;
    app.store
        .events(&job.id)
        .await
        .unwrap()
        .iter()
        .map(|e| format!("{}: {}\n", e.kind, e.message))
        .collect()
}

#[tokio::test]
async fn a_document_protocol_is_saved_as_its_pdf_and_its_signature() {
    let app = TestApp::spawn_with(SimConfig::default(), "", &[]).await;
    app.submit(request(CLASSIC, "document-protocol", DOCUMENT, "protocol"))
        .await;
    let job = app.run_until_finished("protocol").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(
        job.polls, 2,
        "the simulator answers 'not ready' twice by default"
    );

    let expected = KonturDiadocSim::protocol_of(DOCUMENT);
    let pdf_name = format!("{DOCUMENT}.protocol.pdf");
    let sig_name = format!("{DOCUMENT}.protocol.sig");
    let pdf = std::fs::read(app.output("protocol").join(&pdf_name)).unwrap();
    let sig = std::fs::read(app.output("protocol").join(&sig_name)).unwrap();
    assert!(pdf.starts_with(b"%PDF-1.4"));
    assert_eq!(pdf, expected.print_form);
    assert_eq!(sig, expected.signature);
    assert_eq!(
        files_in(&app, "protocol"),
        [pdf_name.clone(), sig_name.clone(), "job.json".into()]
    );

    let receipt = app.receipt("protocol");
    assert_eq!(receipt["state"], "done");
    assert_eq!(receipt["provider"], "kontur-diadoc");
    assert_eq!(receipt["files"][0]["name"], pdf_name.as_str());
    assert_eq!(receipt["files"][0]["size"], pdf.len());
    assert_eq!(receipt["files"][0]["sha256"], sha256_hex(&pdf));
    assert_eq!(receipt["files"][1]["name"], sig_name.as_str());
    assert_eq!(receipt["files"][1]["sha256"], sha256_hex(&sig));

    let c = &app.sim.kontur_diadoc.counters;
    assert_eq!(count(&c.protocol_requests), 3);
    assert_eq!(count(&c.auths), 1);
    assert_eq!(count(&c.unauthorized), 0);
}

#[tokio::test]
async fn a_print_form_waits_through_204_answers_and_keeps_the_servers_cyrillic_name() {
    let app = spawn(|c| c.pending_status = 204).await;
    app.submit(request(CLASSIC, "print-form", DOCUMENT, "pf"))
        .await;
    let job = app.run_until_finished("pf").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(job.polls, 2);
    let name = format!("Печатная форма {DOCUMENT}.pdf");
    assert_eq!(files_in(&app, "pf"), ["job.json".to_string(), name.clone()]);
    let file = std::fs::read(app.output("pf").join(&name)).unwrap();
    assert_eq!(file, KonturDiadocSim::print_form_of(DOCUMENT));
    assert_eq!(app.receipt("pf")["files"][0]["name"], name.as_str());
    assert_eq!(
        count(&app.sim.kontur_diadoc.counters.print_form_requests),
        3
    );
}

#[tokio::test]
async fn a_document_archive_is_generated_then_downloaded_from_the_shelf() {
    let app = spawn(|_| {}).await;
    let mut req = request(CLASSIC, "document-zip", DOCUMENT, "zip");
    req["params"]["fullDocflow"] = json!(true);
    app.submit(req).await;
    let job = app.run_until_finished("zip").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(job.polls, 2);
    let name = format!("{DOCUMENT}.zip");
    assert_eq!(files_in(&app, "zip"), [name.clone(), "job.json".into()]);
    let file = std::fs::read(app.output("zip").join(&name)).unwrap();
    assert!(file.starts_with(b"PK\x03\x04"));
    assert_eq!(
        file,
        KonturDiadocSim::archive_of(DOCUMENT, true),
        "fullDocflow=true reached the service"
    );
    let c = &app.sim.kontur_diadoc.counters;
    assert_eq!(count(&c.zip_requests), 3);
    assert_eq!(count(&c.shelf_downloads), 1);
    let cursor = &app.job("zip").await.cursor;
    assert!(
        cursor["name_on_shelf"]
            .as_str()
            .is_some_and(|n| n.ends_with(".zip")),
        "{cursor}"
    );
}

#[tokio::test]
async fn pending_answers_with_200_202_and_204_are_counted_as_polls_and_never_saved() {
    for status in [200u16, 202, 204] {
        let app = spawn(|c| {
            c.pending_status = status;
            c.pending = 3;
        })
        .await;
        for op in ["document-protocol", "print-form", "document-zip"] {
            app.submit(request(CLASSIC, op, DOCUMENT, &format!("{op}-{status}")))
                .await;
        }
        let names: Vec<String> = ["document-protocol", "print-form", "document-zip"]
            .iter()
            .map(|op| format!("{op}-{status}"))
            .collect();
        // While pending, nothing is written.
        for poll in 1..=3 {
            step_all(&app, &names).await;
            for name in &names {
                let job = app.job(name).await;
                assert_eq!(job.state, JobState::Waiting, "{name}: {:?}", job.last_error);
                assert_eq!(job.polls, poll, "{name}");
                assert_eq!(job.attempts, 0, "{name}: a pending answer is not an error");
                assert!(
                    files_in(&app, name).is_empty(),
                    "{name}: {:?}",
                    files_in(&app, name)
                );
            }
        }
        for op in ["document-protocol", "print-form", "document-zip"] {
            let name = format!("{op}-{status}");
            let job = app.run_until_finished(&name).await;
            assert_eq!(
                job.state,
                JobState::Done,
                "{status} {op}: {:?}",
                job.last_error
            );
            assert_eq!(job.polls, 3, "{status} {op}");
            let files = files_in(&app, &name);
            let expected = if op == "document-protocol" { 3 } else { 2 };
            assert_eq!(files.len(), expected, "{status} {op}: {files:?}");
            for file in files.iter().filter(|f| f.ends_with(".pdf")) {
                let bytes = std::fs::read(app.output(&name).join(file)).unwrap();
                assert!(bytes.starts_with(b"%PDF"), "{status} {op}: {file}");
            }
            let events = events_text(&app, &name).await;
            assert!(
                events.contains(&format!("not ready yet (HTTP {status}")),
                "{status} {op}: {events}"
            );
        }
        assert_eq!(count(&app.sim.kontur_diadoc.counters.pending_answers), 9);
    }
}

#[tokio::test]
async fn a_protocol_ready_only_after_several_retry_afters_counts_every_poll() {
    let app = spawn(|c| {
        c.documents.insert(
            DOCUMENT.into(),
            DocumentKnobs {
                pending: Some(5),
                retry_after_secs: Some(1),
                ..Default::default()
            },
        );
    })
    .await;
    app.submit(request(CLASSIC, "document-protocol", DOCUMENT, "slow"))
        .await;
    for poll in 1..=5 {
        let before = docfetch::job::now_ms();
        let job = app.step_once("slow").await;
        let after = docfetch::job::now_ms();
        assert_eq!(job.state, JobState::Waiting);
        assert_eq!(job.polls, poll);
        // Retry-After 1 s is followed, within the test's poll_max of 200 ms
        // (plus the scheduler's 1 ms margin). The step ran somewhere between
        // `before` and `after`, so the bounds are taken from both ends: a
        // loaded machine makes the step slower, not the check wrong.
        assert!(
            job.next_run_at >= before + 100 && job.next_run_at <= after + 201,
            "next poll at {} for a step between {before} and {after}",
            job.next_run_at
        );
        assert!(files_in(&app, "slow").is_empty());
    }
    let job = app.step_once("slow").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(job.polls, 5);
    assert_eq!(count(&app.sim.kontur_diadoc.counters.protocol_requests), 6);
    let events = events_text(&app, "slow").await;
    assert_eq!(events.matches("poll: ").count(), 5, "{events}");
    assert!(events.contains("Retry-After 1s"), "{events}");
}

#[tokio::test]
async fn the_oidc_account_fetches_a_protocol_with_a_bearer_token() {
    let app = spawn(|_| {}).await;
    app.submit(request(OIDC, "document-protocol", DOCUMENT, "oidc"))
        .await;
    app.submit(request(OIDC, "print-form", DOCUMENT, "oidc-pf"))
        .await;
    for name in ["oidc", "oidc-pf"] {
        let job = app.run_until_finished(name).await;
        assert_eq!(job.state, JobState::Done, "{name}: {:?}", job.last_error);
    }
    assert_eq!(
        count(&app.sim.identity.issued),
        1,
        "one token for the account's jobs"
    );
    assert_eq!(
        count(&app.sim.kontur_diadoc.counters.auths),
        0,
        "no classic login"
    );
    assert_eq!(count(&app.sim.kontur_diadoc.counters.unauthorized), 0);
    assert_eq!(files_in(&app, "oidc").len(), 3);
}

#[tokio::test]
async fn the_oidc_account_also_works_with_the_refresh_token_grant() {
    let app = TestApp::spawn_with(
        sim(|_| {}),
        "",
        &[
            (
                "DOCFETCH__ACCOUNTS__KONTUR-DIADOC-OIDC-SIM__GRANT",
                "refresh_token",
            ),
            (
                "DOCFETCH__ACCOUNTS__KONTUR-DIADOC-OIDC-SIM__REFRESH_TOKEN",
                "sim-refresh-0",
            ),
        ],
    )
    .await;
    app.submit(request(OIDC, "document-protocol", DOCUMENT, "refresh"))
        .await;
    app.step_once("refresh").await;
    // The next token comes from the rotated refresh token kept in memory.
    app.sim.identity.expire_all();
    let job = app.run_until_finished("refresh").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(count(&app.sim.identity.issued), 2);
    assert_eq!(count(&app.sim.identity.refused), 0);
}

#[tokio::test]
async fn an_expired_classic_token_is_renewed_with_one_new_login_and_the_job_finishes() {
    let app = spawn(|_| {}).await;
    app.submit(request(CLASSIC, "document-protocol", DOCUMENT, "renew"))
        .await;
    app.submit(request(CLASSIC, "print-form", DOCUMENT, "renew-pf"))
        .await;
    app.step_once("renew").await;
    assert_eq!(count(&app.sim.kontur_diadoc.counters.auths), 1);
    app.sim.kontur_diadoc.expire_tokens();
    for name in ["renew", "renew-pf"] {
        let job = app.run_until_finished(name).await;
        assert_eq!(job.state, JobState::Done, "{name}: {:?}", job.last_error);
        assert_eq!(job.attempts, 0);
    }
    let c = &app.sim.kontur_diadoc.counters;
    assert_eq!(count(&c.auths), 2, "one new login, shared by both jobs");
    assert!(count(&c.unauthorized) >= 1);
}

#[tokio::test]
async fn an_expired_bearer_token_is_renewed_once_and_the_job_finishes() {
    let app = spawn(|_| {}).await;
    app.submit(request(OIDC, "document-zip", DOCUMENT, "renew"))
        .await;
    app.step_once("renew").await;
    app.sim.identity.expire_all();
    let job = app.run_until_finished("renew").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(count(&app.sim.identity.issued), 2);
    assert_eq!(count(&app.sim.kontur_diadoc.counters.unauthorized), 1);
}

#[tokio::test]
async fn a_token_refused_twice_fails_the_job_instead_of_logging_in_forever() {
    // Tokens that expire the moment they are issued: the service refuses
    // the first one and the fresh one alike.
    let mut config = sim(|_| {});
    config.identity.token_lifetime = Duration::ZERO;
    let app = TestApp::spawn_with(config, "", &[]).await;
    app.submit(request(OIDC, "document-protocol", DOCUMENT, "refused"))
        .await;
    let job = app.run_until_finished("refused").await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.steps, 1, "a refused authorization is not retried");
    let error = last_error(&app, "refused");
    assert!(
        error.contains("HTTP 401") && error.contains("scope"),
        "{error}"
    );
    assert_eq!(
        count(&app.sim.kontur_diadoc.counters.unauthorized),
        2,
        "one new login, not more"
    );
}

#[tokio::test]
async fn a_wrong_password_fails_at_once_with_a_clear_message_and_is_remembered() {
    let wrong = "wrong-password-3c8e1f";
    let app = TestApp::spawn_with(
        sim(|_| {}),
        "",
        &[("DOCFETCH__ACCOUNTS__KONTUR-DIADOC-SIM__PASSWORD", wrong)],
    )
    .await;
    app.submit(request(CLASSIC, "document-protocol", DOCUMENT, "a"))
        .await;
    app.submit(request(CLASSIC, "print-form", DOCUMENT, "b"))
        .await;
    for name in ["a", "b"] {
        let job = app.run_until_finished(name).await;
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.steps, 1, "{name}: wrong credentials are not retried");
        let error = last_error(&app, name);
        assert!(
            error.contains("refused the login") && error.contains("login and password"),
            "{error}"
        );
        assert!(!error.contains(wrong), "{error}");
    }
    let c = &app.sim.kontur_diadoc.counters;
    assert_eq!(
        count(&c.auth_refused),
        1,
        "the refusal is remembered, not retried"
    );
    assert_eq!(
        count(&c.protocol_requests) + count(&c.print_form_requests),
        0
    );
}

#[tokio::test]
async fn each_refusal_status_fails_at_once_with_a_message_that_says_what_to_do() {
    let app = spawn(|_| {}).await;
    let cases: &[(&str, &str, &[&str])] = &[
        (
            diadoc::BAD_REQUEST,
            "document-protocol",
            &["HTTP 400", "check boxId"],
        ),
        (
            diadoc::UNPAID,
            "document-protocol",
            &["HTTP 402", "subscription", "renew", BOX],
        ),
        (
            diadoc::FORBIDDEN,
            "print-form",
            &["HTTP 403", "no access", "grant", BOX],
        ),
        (
            diadoc::MISSING,
            "document-zip",
            &["HTTP 404", "no such document"],
        ),
        (
            diadoc::NOT_ALLOWED,
            "document-protocol",
            &["HTTP 405", "base_url"],
        ),
        (
            diadoc::CONFLICT,
            "print-form",
            &["HTTP 409", diadoc::CONFLICT_TEXT],
        ),
    ];
    for (doc, op, _) in cases {
        app.submit(request(CLASSIC, op, doc, doc)).await;
    }
    for (doc, _, fragments) in cases {
        let job = app.run_until_finished(doc).await;
        assert_eq!(job.state, JobState::Failed, "{doc}");
        assert_eq!(job.steps, 1, "{doc}: permanent errors are not retried");
        let error = last_error(&app, doc);
        for fragment in *fragments {
            assert!(
                error.contains(fragment),
                "{doc}: {fragment:?} missing from {error}"
            );
        }
        assert_eq!(files_in(&app, doc), ["job.json"], "{doc}");
    }
}

#[tokio::test]
async fn a_429_pauses_the_whole_account_and_the_job_still_finishes() {
    let app = spawn(|c| {
        c.pending = 0;
        c.retry_after_secs = 1;
    })
    .await;
    app.submit(request(CLASSIC, "document-protocol", diadoc::BUSY, "busy"))
        .await;
    let job = app.step_once("busy").await;
    assert_eq!(job.state, JobState::Waiting);
    assert_eq!(job.attempts, 1);
    let account = app.scheduler.providers().get(CLASSIC).unwrap();
    assert!(account.cooling_until().is_some(), "the account pauses");

    // Another job of the account waits out the pause without a request.
    app.submit(request(CLASSIC, "print-form", DOCUMENT, "other"))
        .await;
    let other = app.step_once("other").await;
    assert_eq!(other.steps, 0, "{other:?}");
    assert_eq!(
        count(&app.sim.kontur_diadoc.counters.print_form_requests),
        0
    );

    for name in ["busy", "other"] {
        let job = app.run_until_finished(name).await;
        assert_eq!(job.state, JobState::Done, "{name}: {:?}", job.last_error);
    }
    assert_eq!(count(&app.sim.kontur_diadoc.counters.rate_limited), 1);
    let events = events_text(&app, "busy").await;
    assert!(events.contains("HTTP 429"), "{events}");
}

#[tokio::test]
async fn a_500_is_retried_and_the_job_finishes() {
    let app = spawn(|c| c.pending = 1).await;
    app.submit(request(CLASSIC, "document-zip", diadoc::BROKEN, "broken"))
        .await;
    let job = app.run_until_finished("broken").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(job.attempts, 0, "a success resets the error count");
    let events = events_text(&app, "broken").await;
    assert!(events.contains("HTTP 500"), "{events}");
    assert_eq!(files_in(&app, "broken"), ["broken.zip", "job.json"]);
}

#[tokio::test]
async fn a_protocol_whose_print_form_is_not_a_pdf_fails_and_saves_nothing() {
    let app = spawn(|c| c.pending = 0).await;
    app.submit(request(
        CLASSIC,
        "document-protocol",
        diadoc::NOT_PDF,
        "notpdf",
    ))
    .await;
    let job = app.run_until_finished("notpdf").await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.steps, 1);
    let error = last_error(&app, "notpdf");
    assert!(error.contains("not a PDF"), "{error}");
    assert_eq!(files_in(&app, "notpdf"), ["job.json"]);
}

#[tokio::test]
async fn a_print_form_that_is_not_a_pdf_fails_and_leaves_no_file() {
    let app = spawn(|c| c.pending = 0).await;
    app.submit(request(CLASSIC, "print-form", diadoc::NOT_PDF, "notpdf"))
        .await;
    let job = app.run_until_finished("notpdf").await;
    assert_eq!(job.state, JobState::Failed);
    assert!(last_error(&app, "notpdf").contains("not a PDF"));
    assert_eq!(files_in(&app, "notpdf"), ["job.json"]);
}

#[tokio::test]
async fn an_archive_gone_from_the_shelf_is_generated_again_once() {
    let app = spawn(|c| c.pending = 0).await;
    app.submit(request(CLASSIC, "document-zip", diadoc::EXPIRED, "expired"))
        .await;
    let job = app.run_until_finished("expired").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let c = &app.sim.kontur_diadoc.counters;
    assert_eq!(count(&c.zip_requests), 2);
    assert_eq!(count(&c.shelf_downloads), 2);
    assert_eq!(files_in(&app, "expired"), ["expired.zip", "job.json"]);
}

#[tokio::test]
async fn the_deadline_ends_a_protocol_that_never_comes() {
    let app = TestApp::spawn_with(
        sim(|c| {
            c.documents.insert(
                "never".into(),
                DocumentKnobs {
                    pending: Some(u32::MAX),
                    ..Default::default()
                },
            );
        }),
        "",
        // Long enough for three polls on a loaded machine (1 s was not).
        &[("DOCFETCH__SCHEDULER__DEADLINE", "3s")],
    )
    .await;
    app.submit(request(CLASSIC, "document-protocol", "never", "never"))
        .await;
    let job = app.run_until_finished("never").await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.polls >= 3, "polled {} times", job.polls);
    let error = last_error(&app, "never");
    assert!(error.contains("timed out"), "{error}");
    assert_eq!(files_in(&app, "never"), ["job.json"]);
}

#[tokio::test]
async fn an_account_runs_at_most_four_requests_at_once_and_logs_in_once() {
    let app = spawn(|c| {
        c.pending = 1;
        c.latency = Duration::from_millis(50);
    })
    .await;
    for i in 0..8 {
        app.submit(request(
            CLASSIC,
            "document-protocol",
            &format!("doc-{i}"),
            &format!("j{i}"),
        ))
        .await;
    }
    for i in 0..8 {
        let job = app.run_until_finished(&format!("j{i}")).await;
        assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    }
    let c = &app.sim.kontur_diadoc.counters;
    let most = count(&c.max_in_flight);
    assert!(
        (2..=4).contains(&most),
        "at most 4 at once (concurrency default), saw {most}"
    );
    assert_eq!(count(&c.auths), 1, "the jobs share one token");
}

#[tokio::test]
async fn requests_without_the_three_ids_are_refused_at_submit_time() {
    let app = spawn(|_| {}).await;
    for (request, field) in [
        (
            json!({"account": CLASSIC, "operation": "document-protocol", "name": "x",
                   "params": {"boxId": BOX, "messageId": MESSAGE}}),
            "params.documentId",
        ),
        (
            json!({"account": CLASSIC, "operation": "protocol", "name": "x",
                   "params": {"boxId": BOX, "messageId": MESSAGE, "documentId": DOCUMENT}}),
            "document-protocol, print-form, document-zip",
        ),
        (
            json!({"account": OIDC, "operation": "document-zip", "name": "x",
                   "params": {"boxId": BOX, "messageId": MESSAGE, "documentId": DOCUMENT, "fullDocflow": "yes"}}),
            "params.fullDocflow",
        ),
    ] {
        let bytes = serde_json::to_vec(&request).unwrap();
        let err = docfetch::inbox::accept(
            &app.store,
            &app.settings,
            &bytes,
            RequestFormat::Json,
            None,
            "test",
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[tokio::test]
async fn secrets_never_reach_the_store_the_receipts_or_the_outputs() {
    let wrong = "wrong-password-77d1a0";
    let app = spawn(|c| c.pending = 1).await;
    // A second app with refused credentials, for the error paths.
    let refused = TestApp::spawn_with(
        sim(|_| {}),
        "",
        &[("DOCFETCH__ACCOUNTS__KONTUR-DIADOC-SIM__PASSWORD", wrong)],
    )
    .await;
    let mut names = Vec::new();
    // Each account asks for its own document: the service generates per
    // document, so a shared one would already be ready for the second.
    for (account, document) in [(CLASSIC, DOCUMENT), (OIDC, OTHER_DOCUMENT)] {
        for op in ["document-protocol", "print-form", "document-zip"] {
            let name = format!("{account}-{op}");
            app.submit(request(account, op, document, &name)).await;
            names.push(name);
        }
        let name = format!("{account}-forbidden");
        app.submit(request(
            account,
            "document-protocol",
            diadoc::FORBIDDEN,
            &name,
        ))
        .await;
        names.push(name);
    }
    app.step_once(&names[0]).await;
    app.sim.kontur_diadoc.expire_tokens();
    app.sim.identity.expire_all();
    for name in &names {
        app.run_until_finished(name).await;
    }
    refused
        .submit(request(CLASSIC, "document-protocol", DOCUMENT, "refused"))
        .await;
    assert_eq!(
        refused.run_until_finished("refused").await.state,
        JobState::Failed
    );

    let mut secrets: Vec<String> = app.sim.kontur_diadoc.issued_tokens();
    assert_eq!(secrets.len(), 2, "a token before and after the expiry");
    let bearer = app.sim.identity.issued_tokens();
    assert_eq!(bearer.len(), 2);
    secrets.extend(bearer);
    for c in [
        &app.sim.kontur_diadoc.config,
        &refused.sim.kontur_diadoc.config,
    ] {
        secrets.push(c.client_id.clone());
        secrets.push(c.password.clone());
    }
    secrets.push(app.sim.identity.config.api_key.clone());
    secrets.push(wrong.to_string());

    for dir in [app.dir.path(), refused.dir.path()] {
        let mut stack = vec![dir.to_path_buf()];
        let mut checked = 0;
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(
                    std::fs::read_dir(&path)
                        .unwrap()
                        .flatten()
                        .map(|e| e.path()),
                );
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            checked += 1;
            for secret in &secrets {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "a secret ({}…) leaked into {}",
                    &secret[..6],
                    path.display()
                );
            }
        }
        assert!(checked > 3, "the walk saw the store and outputs");
    }
}
