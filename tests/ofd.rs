//! OFD.ru reports end to end against the simulator: the real store,
//! scheduler and downloads, the fake "ИС Отчеты" over loopback HTTP.

use docfetch::inbox;
use docfetch::job::JobState;
use docfetch::job::request::RequestFormat;
use docfetch::providers::{Providers, Step, StepContext};
use docfetch::sim::SimConfig;
use docfetch::sim::ofd::{ListShape, OfdSimConfig, SEED_AGREEMENT_ID, SimAgreement};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::TestApp;

fn sha256_hex(bytes: &[u8]) -> String {
    docfetch::job::digest::hex(&Sha256::digest(bytes))
}

/// The seed's order example (3.1) as a request, with `extra` merged into
/// its params.
fn report_request(account: &str, name: &str, extra: Value) -> Value {
    let mut params = json!({
        "ReportType": "ReceiptReport",
        "DateFrom": "2021-11-01T00:00:00.000+03:00",
        "DateTo": "2021-11-02T23:59:59.000+03:00",
        "KktList": ["7961d10e-f36a-4cce-a8db-add93309bb9e"],
        "GroupsList": [],
        "SelectAllKkts": false,
        "UseXlsxFile": true,
        "EmailsToNotify": "",
    });
    if let (Some(params), Some(extra)) = (params.as_object_mut(), extra.as_object()) {
        params.extend(extra.clone());
    }
    json!({"account": account, "operation": "report", "name": name, "params": params})
}

fn sim_with(ofd: OfdSimConfig) -> SimConfig {
    SimConfig {
        ofd,
        ..Default::default()
    }
}

async fn error_events(app: &TestApp, name: &str) -> Vec<String> {
    let job = app.job(name).await;
    app.store
        .events(&job.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "error")
        .map(|e| e.message)
        .collect()
}

fn account_toml(name: &str, extra_keys: &str) -> String {
    format!(
        "[accounts.{name}]\nprovider = \"ofd-ru\"\nbase_url = \"{{ofd_base}}\"\nlogin = \"docfetch\"\npassword = \"sim-ofd-password\"\n{extra_keys}\n"
    )
}

#[tokio::test]
async fn an_ofd_report_is_ordered_polled_downloaded_and_receipted() {
    let app = TestApp::spawn().await;
    app.submit(report_request(
        "ofd-sim",
        "nov-2021",
        json!({"Name": "Сверка"}),
    ))
    .await;
    let job = app.run_until_finished("nov-2021").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(
        job.polls, 1,
        "one list answer said Processing, the next Done"
    );
    assert_eq!(job.attempts, 0);

    let name = "Сверка 2021-11-01 - 2021-11-02.xlsx";
    let file = std::fs::read(app.output("nov-2021").join(name)).unwrap();
    assert!(file.starts_with(b"PK\x03\x04"));
    let served = app.sim.ofd.served_files();
    assert_eq!(served, vec![(name.to_string(), sha256_hex(&file))]);
    let receipt = app.receipt("nov-2021");
    assert_eq!(receipt["state"], "done");
    assert_eq!(receipt["files"][0]["name"], name);
    assert_eq!(receipt["files"][0]["sha256"], sha256_hex(&file));

    let sim = &app.sim.ofd;
    assert_eq!((sim.logins(), sim.orders(), sim.downloads()), (1, 1, 1));
    assert_eq!(
        sim.lists(),
        2,
        "a fresh order is sent without looking in the list first"
    );
    let ordered = &sim.order_bodies()[0];
    let report_name = ordered["Name"].as_str().unwrap();
    assert!(
        report_name.starts_with("Сверка [docfetch:nov-2021:"),
        "{report_name}"
    );
    assert_eq!(ordered["ReportType"], "ReceiptReport");
    assert_eq!(ordered["DateFrom"], "2021-11-01T00:00:00.000+03:00");
    assert!(
        ordered.get("OfdAgreementId").is_none(),
        "one legal entity: no agreement needed"
    );
    // The token rides in the query string as `AuthToken`, on every call but the login.
    let token = &sim.issued_tokens()[0];
    for request in sim.requests() {
        if request.contains("CreateAuthToken") {
            assert!(!request.contains('?'), "{request}");
        } else {
            assert!(request.contains(&format!("AuthToken={token}")), "{request}");
        }
    }
}

#[tokio::test]
async fn the_first_poll_waits_for_the_assumptive_complete_time() {
    let sim = sim_with(OfdSimConfig {
        assumptive_delay: std::time::Duration::from_secs(1),
        pending_lists: 0,
        ..Default::default()
    });
    // A long poll_max, so the service's estimate is not cut short.
    let app = TestApp::spawn_with(sim, "", &[("DOCFETCH__SCHEDULER__POLL_MAX", "10s")]).await;
    app.submit(report_request("ofd-sim", "eta", json!({})))
        .await;
    // Measured from before the step: the estimate is about a second after
    // the order, however long a loaded machine takes over the step.
    let before = docfetch::job::now_ms();
    let ordered = app.step_once("eta").await;
    assert_eq!(ordered.state, JobState::Waiting);
    assert!(
        ordered.next_run_at - before >= 500,
        "the next look is due about a second later, not at poll_initial"
    );
    let job = app.run_until_finished("eta").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(app.sim.ofd.early_views(), 0, "no look before the estimate");
    assert_eq!(job.polls, 0, "ready at the first look");
    assert_eq!(app.sim.ofd.lists(), 1);
}

#[tokio::test]
async fn the_bare_list_with_a_spaced_total_count_and_an_unquoted_email_is_understood() {
    let sim = sim_with(OfdSimConfig {
        list_shape: ListShape::Bare,
        unquoted_email: true,
        ..Default::default()
    });
    let app = TestApp::spawn_with(sim, "", &[]).await;
    app.submit(report_request("ofd-sim", "bare", json!({})))
        .await;
    let job = app.run_until_finished("bare").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(job.polls, 1);

    // The simulator really sends the seed's invalid JSON.
    let http = reqwest::Client::new();
    let token = app.sim.ofd.issued_tokens()[0].clone();
    let body = http
        .get(format!(
            "{}/api/customer/reports?SkipPageFilter=true&AuthToken={token}",
            app.sim.ofd.base_url()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("\"AccountEmail\": ofdtester1@ofd.ru"),
        "{body}"
    );
    assert!(body.contains("\" TotalCount \": 1"), "{body}");
    assert!(serde_json::from_str::<Value>(&body).is_err());
}

#[tokio::test]
async fn an_expired_token_is_replaced_by_a_new_login_mid_job() {
    let sim = sim_with(OfdSimConfig {
        token_lifetime: std::time::Duration::from_secs(1),
        ..Default::default()
    });
    let app = TestApp::spawn_with(sim, "", &[]).await;
    app.submit(report_request(
        "ofd-sim",
        "long",
        json!({"_sim": {"ready_after_ms": 3000}}),
    ))
    .await;
    let job = app.run_until_finished("long").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert!(
        app.sim.ofd.logins() >= 2,
        "the token lives a second or two; the job three: {} logins",
        app.sim.ofd.logins()
    );
    assert!(error_events(&app, "long").await.is_empty());
}

#[tokio::test]
async fn a_401_from_the_api_brings_one_new_login_and_the_job_goes_on() {
    let sim = sim_with(OfdSimConfig {
        reject_tokens: 1,
        ..Default::default()
    });
    let app = TestApp::spawn_with(sim, "", &[]).await;
    app.submit(report_request("ofd-sim", "relogin", json!({})))
        .await;
    let job = app.run_until_finished("relogin").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(app.sim.ofd.unauthorized(), 1);
    assert_eq!(app.sim.ofd.logins(), 2);
    assert_eq!(app.sim.ofd.orders(), 1);
    assert!(error_events(&app, "relogin").await.is_empty());
}

#[tokio::test]
async fn an_api_refusing_even_a_new_token_fails_the_job() {
    let sim = sim_with(OfdSimConfig {
        reject_tokens: 2,
        ..Default::default()
    });
    let app = TestApp::spawn_with(sim, "", &[]).await;
    app.submit(report_request("ofd-sim", "refused", json!({})))
        .await;
    let job = app.run_until_finished("refused").await;
    assert_eq!(job.state, JobState::Failed);
    let error = job.last_error.unwrap();
    assert!(error.contains("even with a new AuthToken"), "{error}");
    assert_eq!(app.sim.ofd.logins(), 2, "one new login, not more");
    assert_eq!(job.attempts, 0, "not retried");
}

#[tokio::test]
async fn a_wrong_password_fails_every_job_of_the_account_after_a_single_login() {
    let extra = account_toml("ofd-wrong", "").replace("sim-ofd-password", "not-the-password");
    let app = TestApp::spawn_with(SimConfig::default(), &extra, &[]).await;
    for name in ["w1", "w2", "w3"] {
        app.submit(report_request("ofd-wrong", name, json!({})))
            .await;
    }
    for name in ["w1", "w2", "w3"] {
        let job = app.run_until_finished(name).await;
        assert_eq!(job.state, JobState::Failed);
        let error = job.last_error.unwrap();
        assert!(
            error.contains("OFD.ru refused the login")
                && error.contains("check login and password of account ofd-wrong"),
            "{error}"
        );
        assert!(!error.contains("not-the-password"));
        let receipt = std::fs::read_to_string(app.output(name).join("job.json")).unwrap();
        assert!(!receipt.contains("not-the-password"));
    }
    assert_eq!(
        app.sim.ofd.logins(),
        1,
        "the refusal is remembered for the account"
    );
    assert_eq!(app.sim.ofd.orders(), 0);
}

#[tokio::test]
async fn seed_error_names_of_an_order_fail_the_job_at_once_with_their_meaning() {
    let app = TestApp::spawn().await;
    let cases = [
        ("AccessDenied", "denied access"),
        ("OfdAgreementNotFound", "no such cabinet"),
        ("ReportSizeError", "too many records"),
        (
            "DateFromGreaterThanDateTo",
            "DateFrom must not be after DateTo",
        ),
    ];
    for (error, _) in cases {
        app.submit(report_request(
            "ofd-sim",
            error,
            json!({"_sim": {"order_error": error}}),
        ))
        .await;
    }
    for (error, meaning) in cases {
        let job = app.run_until_finished(error).await;
        assert_eq!(job.state, JobState::Failed, "{error}");
        assert_eq!(job.attempts, 0, "{error} is not retried");
        let message = job.last_error.unwrap();
        assert!(
            message.contains(error) && message.contains(meaning),
            "{message}"
        );
    }
    assert_eq!(app.sim.ofd.orders(), 0);
}

#[tokio::test]
async fn limit_exhausted_fails_with_advice_to_free_space_or_delete_after_download() {
    let sim = sim_with(OfdSimConfig {
        agreement_limit: 0,
        ..Default::default()
    });
    let app = TestApp::spawn_with(sim, "", &[]).await;
    app.submit(report_request("ofd-sim", "full", json!({})))
        .await;
    let job = app.run_until_finished("full").await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 0);
    let error = app.receipt("full")["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    for needed in [
        "LimitExhausted",
        "deleting old reports",
        "delete_after_download = true",
        "account ofd-sim",
        "docfetch retry full",
    ] {
        assert!(error.contains(needed), "{needed:?} missing: {error}");
    }
}

#[tokio::test]
async fn an_internal_error_is_retried_and_the_report_still_arrives() {
    let app = TestApp::spawn().await;
    app.submit(report_request(
        "ofd-sim",
        "flaky",
        json!({"_sim": {"download_error": "InternalError", "download_errors": 1}}),
    ))
    .await;
    let job = app.run_until_finished("flaky").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let errors = error_events(&app, "flaky").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("InternalError"), "{errors:?}");
    assert_eq!(app.sim.ofd.orders(), 1);
}

#[tokio::test]
async fn a_lasting_internal_error_gives_up_after_max_attempts_without_duplicate_orders() {
    let app = TestApp::spawn().await;
    app.submit(report_request(
        "ofd-sim",
        "down",
        json!({"_sim": {"order_error": "InternalError"}}),
    ))
    .await;
    let job = app.run_until_finished("down").await;
    assert_eq!(job.state, JobState::Failed);
    let error = job.last_error.unwrap();
    assert!(
        error.contains("gave up after 4 attempts") && error.contains("InternalError"),
        "{error}"
    );
    assert!(
        app.sim.ofd.lists() >= 3,
        "each retry looks for an earlier order first"
    );
}

#[tokio::test]
async fn report_not_done_at_download_means_waiting_not_failing() {
    let app = TestApp::spawn().await;
    app.submit(report_request(
        "ofd-sim",
        "notyet",
        json!({"_sim": {"not_done_downloads": 2}}),
    ))
    .await;
    let job = app.run_until_finished("notyet").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(job.polls, 3, "one Processing and two ReportNotDone answers");
    assert!(error_events(&app, "notyet").await.is_empty());
    assert_eq!(app.sim.ofd.downloads(), 1);
}

#[tokio::test]
async fn a_list_error_from_the_seed_fails_the_job() {
    let app = TestApp::spawn().await;
    app.submit(report_request(
        "ofd-sim",
        "gone-cabinet",
        json!({"_sim": {"list_error": "OfdAgreementNotFound", "list_errors": 1}}),
    ))
    .await;
    let job = app.run_until_finished("gone-cabinet").await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.last_error.unwrap().contains("OfdAgreementNotFound"));
}

#[tokio::test]
async fn html_error_pages_and_a_429_are_retried() {
    let sim = sim_with(OfdSimConfig {
        fail_lists: 2,
        rate_limit_once: true,
        ..Default::default()
    });
    let app = TestApp::spawn_with(sim, "", &[]).await;
    app.submit(report_request("ofd-sim", "bumpy", json!({})))
        .await;
    let job = app.run_until_finished("bumpy").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let errors = error_events(&app, "bumpy").await;
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].contains("429"), "{errors:?}");
    assert!(
        errors[1].contains("500") && errors[2].contains("500"),
        "{errors:?}"
    );
    assert_eq!(app.sim.ofd.orders(), 1);
}

#[tokio::test]
async fn reports_ending_in_error_or_deleted_fail_the_job() {
    let app = TestApp::spawn().await;
    for status in ["Error", "Deleted"] {
        app.submit(report_request(
            "ofd-sim",
            status,
            json!({"_sim": {"final_status": status}}),
        ))
        .await;
    }
    for status in ["Error", "Deleted"] {
        let job = app.run_until_finished(status).await;
        assert_eq!(job.state, JobState::Failed);
        let error = job.last_error.unwrap();
        assert!(
            error.contains(&format!("status {status}"))
                && error.contains(&format!("docfetch retry {status}")),
            "{error}"
        );
    }
}

#[tokio::test]
async fn invalid_report_requests_are_refused_at_submit_time() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            json!({"ReportType": "SalesBook"}),
            "params.ReportType",
            "not an OFD.ru report type",
        ),
        (
            json!({"DateFrom": "2021-11-03T00:00:00.000+03:00"}),
            "params.DateFrom",
            "after DateTo",
        ),
        (
            json!({"DateTo": "tomorrow"}),
            "params.DateTo",
            "not an ISO 8601",
        ),
    ];
    for (extra, field, says) in cases {
        let request = report_request("ofd-sim", "bad", extra);
        let bytes = serde_json::to_vec(&request).unwrap();
        let error = inbox::accept(
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
        assert!(error.contains(field) && error.contains(says), "{error}");
    }
    let mut no_type = report_request("ofd-sim", "bad", json!({}));
    no_type["params"]
        .as_object_mut()
        .unwrap()
        .remove("ReportType");
    let bytes = serde_json::to_vec(&no_type).unwrap();
    let error = inbox::accept(
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
    assert!(error.contains("CustomReportId"), "{error}");
    assert!(app.store.find("bad").await.unwrap().is_none());
    assert!(
        app.sim.ofd.requests().is_empty(),
        "nothing was sent to OFD.ru"
    );
}

#[tokio::test]
async fn the_agreement_is_found_by_inn_and_kpp_once_for_the_account() {
    const OTHER: &str = "d64249c5-61b8-4ed9-b729-9bd7cde127db";
    let sim = sim_with(OfdSimConfig {
        agreements: vec![
            SimAgreement {
                id: SEED_AGREEMENT_ID.into(),
                inn: "7841465198".into(),
                kpp: "772501001".into(),
            },
            SimAgreement {
                id: OTHER.into(),
                inn: "7701234567".into(),
                kpp: "770101001".into(),
            },
        ],
        ..Default::default()
    });
    let extra = account_toml("ofd-inn", "inn = \"7701234567\"\nkpp = \"770101001\"");
    let app = TestApp::spawn_with(sim, &extra, &[]).await;
    app.submit(report_request("ofd-inn", "first", json!({})))
        .await;
    app.submit(report_request("ofd-inn", "second", json!({})))
        .await;
    // With two legal entities and no way to tell, the order is refused.
    app.submit(report_request("ofd-sim", "which", json!({})))
        .await;
    for name in ["first", "second"] {
        let job = app.run_until_finished(name).await;
        assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    }
    assert_eq!(app.sim.ofd.agreement_lookups(), 1, "cached for the account");
    let which = app.run_until_finished("which").await;
    assert_eq!(which.state, JobState::Failed);
    assert!(which.last_error.unwrap().contains("OfdAgreementNotFound"));

    let bodies = app.sim.ofd.order_bodies();
    let with_agreement: Vec<_> = bodies
        .iter()
        .filter(|b| b["OfdAgreementId"] == OTHER)
        .collect();
    assert_eq!(with_agreement.len(), 2, "{bodies:?}");
    assert!(app.sim.ofd.reports().iter().all(|r| r.agreement == OTHER));
    let lookup = app
        .sim
        .ofd
        .requests()
        .into_iter()
        .find(|r| r.contains("Inn="))
        .unwrap();
    assert!(
        lookup.contains("Inn=7701234567&Kpp=770101001&SkipPageFilter=true&AuthToken="),
        "{lookup}"
    );
}

#[tokio::test]
async fn an_agreement_given_in_the_request_is_used_as_is() {
    let app = TestApp::spawn().await;
    app.submit(report_request(
        "ofd-sim",
        "given",
        json!({"ofdAgreementId": SEED_AGREEMENT_ID}),
    ))
    .await;
    let job = app.run_until_finished("given").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let body = &app.sim.ofd.order_bodies()[0];
    assert_eq!(body["ofdAgreementId"], SEED_AGREEMENT_ID);
    assert!(
        body.get("OfdAgreementId").is_none(),
        "not sent twice in two spellings"
    );
    assert_eq!(app.sim.ofd.agreement_lookups(), 0);
    assert!(
        app.sim
            .ofd
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/customer/reports?"))
            .all(|r| r.contains(&format!("OfdAgreementId={SEED_AGREEMENT_ID}"))),
        "lists are asked for the job's agreement"
    );
}

#[tokio::test]
async fn delete_after_download_deletes_the_report_once_it_is_saved() {
    let extra = account_toml("ofd-del", "delete_after_download = true");
    let app = TestApp::spawn_with(SimConfig::default(), &extra, &[]).await;
    app.submit(report_request("ofd-del", "tidy", json!({})))
        .await;
    let job = app.run_until_finished("tidy").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(app.sim.ofd.deletes(), 1);
    assert_eq!(app.sim.ofd.reports()[0].status, "Deleted");
    let delete = app
        .sim
        .ofd
        .requests()
        .into_iter()
        .find(|r| r.starts_with("DELETE"))
        .unwrap();
    assert!(
        delete.contains(&format!("?ofdAgreementId={SEED_AGREEMENT_ID}&AuthToken=")),
        "the DeleteUrl with the token added: {delete}"
    );
    assert!(app.receipt("tidy").get("warnings").is_none());
    let file = &job.result.unwrap().files[0];
    assert!(app.output("tidy").join(&file.name).is_file());
}

#[tokio::test]
async fn a_failed_delete_is_a_warning_and_never_fails_the_job() {
    let extra = account_toml("ofd-del", "delete_after_download = true");
    let app = TestApp::spawn_with(SimConfig::default(), &extra, &[]).await;
    app.submit(report_request(
        "ofd-del",
        "sticky",
        json!({"_sim": {"delete_error": "AccessDenied"}}),
    ))
    .await;
    let job = app.run_until_finished("sticky").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let warning = app.receipt("sticky")["warnings"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        warning.contains("AccessDenied") && warning.contains("stays in the OFD.ru cabinet"),
        "{warning}"
    );
}

#[tokio::test]
async fn a_crash_between_the_order_and_its_commit_finds_the_report_by_name_instead_of_reordering() {
    let mut app = TestApp::spawn().await;
    app.submit(report_request("ofd-sim", "crash", json!({})))
        .await;
    // A daemon claims the job and runs its steps, as the scheduler would…
    let job = app.scheduler.claim(10).await.unwrap().remove(0);
    let providers = Providers::from_settings(&app.settings);
    let account = providers.get("ofd-sim").unwrap();
    let http = docfetch::http::client(&app.settings.http).unwrap();
    let context = StepContext {
        job: &job,
        http: &http,
        output_dir: docfetch::beneath::Subfolder::new(&app.settings.paths.output, "crash"),
        attachments_dir: app.settings.paths.attachments.clone(),
        max_file_size: app.settings.scheduler.max_file_size,
        timeout: app.settings.http.timeout,
    };
    let Step::Continue(named) = account.provider.step(&context).await.unwrap() else {
        panic!("the first step only names the report")
    };
    assert_eq!(app.sim.ofd.requests().len(), 0);
    app.store
        .checkpoint(&job.id, app.scheduler.owner(), &named)
        .await
        .unwrap();
    let mut ordering = job.clone();
    ordering.cursor = named;
    let context = StepContext {
        job: &ordering,
        ..context
    };
    let step = account.provider.step(&context).await.unwrap();
    assert!(matches!(step, Step::Wait { .. }), "{step:?}");
    assert_eq!(app.sim.ofd.orders(), 1);
    drop(context);
    // …and dies before committing that step.
    app.restart().await;
    let job = app.run_until_finished("crash").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(app.sim.ofd.orders(), 1, "found by name, not ordered twice");
    let reports = app.sim.ofd.reports();
    assert_eq!(reports.len(), 1);
    assert!(
        reports[0].name.starts_with("docfetch:crash:"),
        "{reports:?}"
    );
}

#[tokio::test]
async fn an_order_whose_answer_was_lost_is_found_again_by_name() {
    let app = TestApp::spawn().await;
    app.submit(report_request(
        "ofd-sim",
        "lost",
        json!({"_sim": {"fail_after_create": true}}),
    ))
    .await;
    let job = app.run_until_finished("lost").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(app.sim.ofd.orders(), 1);
    assert_eq!(error_events(&app, "lost").await.len(), 1);
}

#[tokio::test]
async fn a_lost_order_is_found_in_a_name_less_bare_list_by_type_and_period() {
    let sim = sim_with(OfdSimConfig {
        list_shape: ListShape::Bare,
        ..Default::default()
    });
    let app = TestApp::spawn_with(sim, "", &[]).await;
    app.submit(report_request(
        "ofd-sim",
        "lost-bare",
        json!({"_sim": {"fail_after_create": true}}),
    ))
    .await;
    let job = app.run_until_finished("lost-bare").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(app.sim.ofd.orders(), 1);
}

#[tokio::test]
async fn the_token_never_reaches_the_store_the_output_or_the_receipts() {
    let extra = account_toml("ofd-del", "delete_after_download = true");
    let sim = sim_with(OfdSimConfig {
        reject_tokens: 1,
        ..Default::default()
    });
    let app = TestApp::spawn_with(sim, &extra, &[]).await;
    app.submit(report_request("ofd-sim", "t1", json!({}))).await;
    app.submit(report_request("ofd-del", "t2", json!({}))).await;
    app.submit(report_request(
        "ofd-sim",
        "t3",
        json!({"_sim": {"final_status": "Error"}}),
    ))
    .await;
    assert_eq!(app.run_until_finished("t1").await.state, JobState::Done);
    assert_eq!(app.run_until_finished("t2").await.state, JobState::Done);
    assert_eq!(app.run_until_finished("t3").await.state, JobState::Failed);
    let tokens = app.sim.ofd.issued_tokens();
    assert!(
        tokens.len() >= 3,
        "a rejected token and two accounts' tokens"
    );
    let mut checked = 0;
    for path in walk(app.dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        for token in &tokens {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "{} contains a token",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 6, "store, WAL, files and receipts ({checked})");
    for name in ["t1", "t2", "t3"] {
        let job = app.job(name).await;
        let text = format!(
            "{} {:?} {:?}",
            job.cursor,
            job.last_error,
            app.store.events(&job.id).await.unwrap()
        );
        assert!(!tokens.iter().any(|t| text.contains(t.as_str())), "{text}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn cancelling_a_waiting_job_calls_the_reports_cancel_url() {
    let app = TestApp::spawn().await;
    app.submit(report_request(
        "ofd-sim",
        "stop",
        json!({"_sim": {"pending_lists": 100}}),
    ))
    .await;
    let job = app.step_once("stop").await;
    assert_eq!(job.state, JobState::Waiting);
    assert_eq!(job.cursor["phase"], "waiting");
    // Through the one cancel that `docfetch cancel` and the API share: the
    // transition, the receipt, then the service with a login of its own.
    let providers = Providers::from_settings(&app.settings);
    let http = docfetch::http::client(&app.settings.http).unwrap();
    let done = docfetch::commands::cancel(&app.store, &app.settings, &providers, &http, "stop")
        .await
        .unwrap();
    assert_eq!(done.job.state, JobState::Cancelled);
    assert_eq!(done.warnings, vec![], "nothing failed after the commit");
    assert!(
        app.settings
            .paths
            .output
            .join("stop")
            .join("job.json")
            .exists(),
        "the receipt is written after the cancellation"
    );
    assert_eq!(app.sim.ofd.cancels(), 1);
    let report = &app.sim.ofd.reports()[0];
    assert_eq!(
        report.status, "Deleted",
        "a cancelled report shows as Deleted"
    );
    let request = app
        .sim
        .ofd
        .requests()
        .into_iter()
        .find(|r| r.contains("/cancel"))
        .unwrap();
    assert!(
        request.starts_with(&format!(
            "GET /api/customer/reports/{}/cancel?ofdAgreementId={SEED_AGREEMENT_ID}&AuthToken=",
            report.id
        )),
        "{request}"
    );
}

#[tokio::test]
async fn a_download_without_a_file_name_is_named_after_the_report() {
    let app = TestApp::spawn().await;
    app.submit(report_request(
        "ofd-sim",
        "unnamed",
        json!({"_sim": {"no_disposition": true}}),
    ))
    .await;
    let job = app.run_until_finished("unnamed").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert!(app.output("unnamed").join("ReceiptReport.xlsx").is_file());
}
