//! 1C:Fresh end to end against the simulator, both flows.

use std::sync::atomic::Ordering;

use docfetch::job::JobState;
use docfetch::sim::SimConfig;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::TestApp;

fn sha256_hex(bytes: &[u8]) -> String {
    docfetch::job::digest::hex(&Sha256::digest(bytes))
}

fn usn_request(account: &str, name: &str) -> serde_json::Value {
    json!({
        "account": account,
        "operation": "tax_usn_calculator",
        "params": {"organization": {"inn": "783900281039", "kpp": ""}, "date": "2018-09-30T23:59:59"},
        "name": name,
    })
}

async fn fetches_the_seed_file(account: &str) {
    let app = TestApp::spawn().await;
    app.submit(usn_request(account, "usn-2018q3")).await;
    let job = app.run_until_finished("usn-2018q3").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(job.polls, 2, "the simulator answers 10202 twice");

    let file = std::fs::read(app.output("usn-2018q3").join("tax_usn_calculator.json")).unwrap();
    assert_eq!(file, docfetch::sim::fresh::TAX_USN_CALCULATOR.as_bytes());
    let receipt = app.receipt("usn-2018q3");
    assert_eq!(receipt["state"], "done");
    assert_eq!(receipt["files"][0]["name"], "tax_usn_calculator.json");
    assert_eq!(receipt["files"][0]["sha256"], sha256_hex(&file));
    assert_eq!(receipt["files"][0]["size"], file.len());
    assert_eq!(app.sim.fresh.orders(), 1);
    assert_eq!(
        app.sim.fresh.counters.unauthorized.load(Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn a_1c_job_runs_end_to_end_in_the_ibsession_flow() {
    fetches_the_seed_file("fresh-sim").await;
}

#[tokio::test]
async fn a_1c_job_runs_end_to_end_in_the_plain_flow() {
    fetches_the_seed_file("fresh-sim-plain").await;
}

#[tokio::test]
async fn an_unknown_data_id_fails_at_once_with_10404_in_the_receipt() {
    let app = TestApp::spawn().await;
    app.submit(json!({"account": "fresh-sim", "operation": "no_such_data", "name": "nf"}))
        .await;
    let job = app.run_until_finished("nf").await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.steps, 1, "a permanent error is not retried");
    let receipt = app.receipt("nf");
    assert_eq!(receipt["state"], "failed");
    let error = receipt["last_error"].as_str().unwrap();
    assert!(error.contains("10404"), "{error}");
}

#[tokio::test]
async fn a_data_error_fails_with_the_services_message() {
    let app = TestApp::spawn().await;
    app.submit(json!({
        "account": "fresh-sim-plain", "operation": "tax_usn_calculator", "name": "bad",
        "params": {"_sim": {"order_code": 10400, "message": "Не указана организация"}},
    }))
    .await;
    let job = app.run_until_finished("bad").await;
    assert_eq!(job.state, JobState::Failed);
    let error = app.receipt("bad")["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("10400") && error.contains("Не указана организация"),
        "{error}"
    );
}

#[tokio::test]
async fn transient_server_errors_are_retried_until_the_file_arrives() {
    let app = TestApp::spawn().await;
    app.submit(json!({
        "account": "fresh-sim", "operation": "balance_sheet", "name": "flaky",
        "params": {"_sim": {"fail_polls": 2, "pending": 1}},
    }))
    .await;
    let job = app.run_until_finished("flaky").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(job.attempts, 0, "a success resets the error count");
    let events = app.store.events(&job.id).await.unwrap();
    let errors = events.iter().filter(|e| e.kind == "error").count();
    assert_eq!(errors, 2, "{events:?}");
    assert!(
        events.iter().any(|e| e.message.contains("HTTP 500")),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_10500_internal_error_is_retried_and_then_gives_up() {
    let app = TestApp::spawn().await;
    app.submit(json!({
        "account": "fresh-sim", "operation": "balance_sheet", "name": "down",
        "params": {"_sim": {"order_code": 10500, "message": "Сервис недоступен"}},
    }))
    .await;
    let job = app.run_until_finished("down").await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.steps, 4, "max_attempts = 4 in the test config");
    let error = job.last_error.unwrap();
    assert!(
        error.contains("gave up after 4 attempts") && error.contains("10500"),
        "{error}"
    );
}

#[tokio::test]
async fn a_restart_while_waiting_resumes_without_ordering_again() {
    let mut app = TestApp::spawn().await;
    app.submit(json!({
        "account": "fresh-sim", "operation": "tax_usn_calculator", "name": "resume",
        "params": {"_sim": {"pending": 3}},
    }))
    .await;
    let job = app.step_once("resume").await;
    assert_eq!(job.state, JobState::Waiting);
    let job = app.step_once("resume").await;
    assert_eq!(job.polls, 1);
    app.restart().await;
    let job = app.run_until_finished("resume").await;
    assert_eq!(job.state, JobState::Done);
    assert_eq!(app.sim.fresh.orders(), 1, "the 1C job was ordered once");
}

#[tokio::test]
async fn a_job_left_running_by_a_dead_daemon_is_taken_back_at_start_up() {
    let mut app = TestApp::spawn().await;
    let submitted = app.submit(usn_request("fresh-sim", "orphan")).await;
    let claimed = app.scheduler.claim(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(app.job("orphan").await.state, JobState::Running);
    // The "dead" daemon never finishes its step; a new one starts.
    app.restart().await;
    let job = app.job("orphan").await;
    assert_eq!(job.state, JobState::Waiting);
    let job = app.run_until_finished("orphan").await;
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.id, submitted.id);
}

#[tokio::test]
async fn a_cut_download_is_retried_and_never_visible_under_its_final_name() {
    let app = TestApp::spawn().await;
    app.submit(json!({
        "account": "fresh-sim", "operation": "sales_book", "name": "cut",
        "params": {"_sim": {"pending": 0, "size": 300000, "truncate": 1, "filename": "book.bin"}},
    }))
    .await;
    // Order, then poll (ready) and the first, cut download.
    app.step_once("cut").await;
    let job = app.step_once("cut").await;
    assert_eq!(job.state, JobState::Waiting);
    assert_eq!(job.attempts, 1, "{:?}", job.last_error);
    // The ready answer was not committed on its own, but the failed
    // download saved it: the retry fetches the file without polling again.
    assert!(
        job.cursor.get("file_id").is_some_and(|id| id.is_string()),
        "{}",
        job.cursor
    );
    let dir = app.output("cut");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "nothing may stay after a cut download: {leftovers:?}"
    );
    let job = app.run_until_finished("cut").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let file = std::fs::read(dir.join("book.bin")).unwrap();
    assert_eq!(file.len(), 300000);
    let served = app.sim.fresh.served_files();
    assert!(served.contains(&("book.bin".to_string(), sha256_hex(&file))));
}

#[tokio::test]
async fn hostile_and_cyrillic_file_names_land_safely_inside_the_job_folder() {
    let app = TestApp::spawn().await;
    app.submit(json!({
        "account": "fresh-sim", "operation": "sales_book", "name": "evil",
        "params": {"_sim": {"pending": 0, "filename": "../../../etc/passwd"}},
    }))
    .await;
    app.submit(json!({
        "account": "fresh-sim", "operation": "sales_book", "name": "cyr",
        "params": {"_sim": {"pending": 0, "filename": "Книга продаж.xlsx", "name_in_handoff_only": true}},
    }))
    .await;
    assert_eq!(app.run_until_finished("evil").await.state, JobState::Done);
    assert_eq!(app.run_until_finished("cyr").await.state, JobState::Done);
    assert!(app.output("evil").join("passwd").is_file());
    assert!(!app.dir.path().join("etc").exists());
    assert!(
        app.output("cyr").join("Книга продаж.xlsx").is_file(),
        "x-file-name from the hand-off is used"
    );
}

#[tokio::test]
async fn a_wrong_password_fails_the_job_with_a_clear_message_and_no_secret() {
    let extra = "[accounts.wrong]\nprovider = \"1c-fresh\"\nbase_url = \"{fresh_base}\"\nusername = \"api\"\npassword = \"not-the-password\"\n";
    let app = TestApp::spawn_with(SimConfig::default(), extra, &[]).await;
    app.submit(usn_request("wrong", "denied")).await;
    let job = app.run_until_finished("denied").await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.steps, 1, "refused credentials are not retried");
    let error = job.last_error.unwrap();
    assert!(error.contains("refused the credentials"), "{error}");
    assert!(!error.contains("not-the-password"));
    let receipt = std::fs::read_to_string(app.output("denied").join("job.json")).unwrap();
    assert!(!receipt.contains("not-the-password"));
}

#[tokio::test]
async fn passwords_never_reach_the_store_or_the_output() {
    let app = TestApp::spawn().await;
    app.submit(usn_request("fresh-sim", "secret-check")).await;
    assert_eq!(
        app.run_until_finished("secret-check").await.state,
        JobState::Done
    );
    let password = app.sim.config.fresh.password.as_bytes().to_vec();
    let mut checked = 0;
    for entry in walk(app.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes
                .windows(password.len())
                .any(|w| w == password.as_slice()),
            "{} contains the password",
            entry.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "the store, its WAL and the output were checked ({checked} files)"
    );
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
async fn a_job_past_its_deadline_fails_as_timed_out() {
    let app = TestApp::spawn_with(
        SimConfig::default(),
        "",
        &[("DOCFETCH__SCHEDULER__DEADLINE", "300ms")],
    )
    .await;
    app.submit(json!({
        "account": "fresh-sim", "operation": "sales_book", "name": "slow",
        "params": {"_sim": {"pending": 1000}},
    }))
    .await;
    let job = app.run_until_finished("slow").await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.last_error.unwrap().contains("timed out"));
    assert!(job.polls >= 1);
}

#[tokio::test]
async fn a_warning_10240_completes_the_job_and_is_kept_in_the_receipt() {
    let app = TestApp::spawn().await;
    app.submit(json!({
        "account": "fresh-sim", "operation": "balance_sheet", "name": "warned",
        "params": {"_sim": {"pending": 0, "warning": "Период не закрыт"}},
    }))
    .await;
    let job = app.run_until_finished("warned").await;
    assert_eq!(job.state, JobState::Done);
    assert_eq!(app.receipt("warned")["warnings"][0], "Период не закрыт");
}

#[tokio::test]
async fn a_400_to_ibsession_is_retried_once_without_the_header() {
    let sim = SimConfig {
        fresh: docfetch::sim::fresh::FreshSimConfig {
            reject_ibsession: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(sim, "", &[]).await;
    app.submit(usn_request("fresh-sim", "no-handoff")).await;
    let job = app.run_until_finished("no-handoff").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(job.attempts, 0);
    assert_eq!(app.sim.fresh.orders(), 1);
}

#[tokio::test]
async fn a_406_no_session_answer_is_retried() {
    let sim = SimConfig {
        fresh: docfetch::sim::fresh::FreshSimConfig {
            busy_starts: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(sim, "", &[]).await;
    app.submit(usn_request("fresh-sim", "busy")).await;
    let job = app.run_until_finished("busy").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let events = app.store.events(&job.id).await.unwrap();
    assert_eq!(
        events.iter().filter(|e| e.message.contains("406")).count(),
        2,
        "{events:?}"
    );
}

#[tokio::test]
async fn a_file_over_the_size_limit_fails_the_job_and_leaves_nothing() {
    let app = TestApp::spawn_with(
        SimConfig::default(),
        "",
        &[("DOCFETCH__SCHEDULER__MAX_FILE_SIZE", "1KiB")],
    )
    .await;
    app.submit(json!({
        "account": "fresh-sim", "operation": "sales_book", "name": "huge",
        "params": {"_sim": {"pending": 0, "size": 5000, "filename": "huge.bin"}},
    }))
    .await;
    let job = app.run_until_finished("huge").await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.last_error.unwrap().contains("max_file_size"));
    let names: Vec<_> = std::fs::read_dir(app.output("huge"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("job.json")]);
}

#[tokio::test]
async fn an_accounts_concurrency_limit_holds_across_its_jobs() {
    async fn max_in_flight(concurrency: &str) -> u64 {
        let sim = SimConfig {
            fresh: docfetch::sim::fresh::FreshSimConfig {
                latency: std::time::Duration::from_millis(30),
                pending_polls: 0,
                ..Default::default()
            },
            ..Default::default()
        };
        let extra = format!(
            "[accounts.narrow]\nprovider = \"1c-fresh\"\nflow = \"plain\"\nbase_url = \"{{fresh_base}}\"\nusername = \"api\"\npassword = \"sim-password\"\nconcurrency = {concurrency}\n"
        );
        let app = TestApp::spawn_with(sim, &extra, &[]).await;
        for i in 0..6 {
            app.submit(usn_request("narrow", &format!("n{i}"))).await;
        }
        for i in 0..6 {
            assert_eq!(
                app.run_until_finished(&format!("n{i}")).await.state,
                JobState::Done
            );
        }
        app.sim.fresh.counters.max_in_flight.load(Ordering::SeqCst)
    }
    assert_eq!(
        max_in_flight("1").await,
        1,
        "one step at a time with concurrency = 1"
    );
    assert!(
        max_in_flight("6").await > 1,
        "the limit is what kept it at one"
    );
}

#[tokio::test]
async fn a_429_pauses_the_whole_account_without_spending_requests() {
    let sim = SimConfig {
        fresh: docfetch::sim::fresh::FreshSimConfig {
            rate_limited_requests: 1,
            retry_after_secs: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(sim, "", &[]).await;
    app.submit(usn_request("fresh-sim", "first")).await;
    let first = app.step_once("first").await;
    assert_eq!(first.state, JobState::Waiting);
    assert!(
        first.last_error.as_deref().unwrap_or("").contains("429"),
        "{:?}",
        first.last_error
    );
    let account = app.scheduler.providers().get("fresh-sim").unwrap();
    assert!(account.cooling_until().is_some(), "the account is pausing");

    let requests = app.sim.fresh.counters.requests.load(Ordering::SeqCst);
    app.submit(usn_request("fresh-sim", "second")).await;
    let second = app.step_once("second").await;
    assert_eq!(
        second.state,
        JobState::Waiting,
        "held back while the account pauses"
    );
    assert_eq!(second.steps, 0, "a postponed job has not run a step");
    assert_eq!(second.attempts, 0);
    assert_eq!(
        app.sim.fresh.counters.requests.load(Ordering::SeqCst),
        requests,
        "no request was sent"
    );

    assert_eq!(app.run_until_finished("first").await.state, JobState::Done);
    assert_eq!(app.run_until_finished("second").await.state, JobState::Done);
}
