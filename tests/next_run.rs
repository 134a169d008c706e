//! Every history event that sets a job's next run says why, in its
//! `detail`: the service's Retry-After, the provider's ETA, our backoff,
//! an account pause or a busy account, the deadline, or "due now". Run
//! against the simulators through the real scheduler and SQLite store.

use std::time::Duration;

use docfetch::job::{JobEvent, JobState, NextRun, NextRunWhy, now_ms};
use docfetch::sim::SimConfig;
use docfetch::sim::kontur_diadoc::KonturDiadocSimConfig;
use serde_json::json;

use crate::helpers::TestApp;

async fn details(app: &TestApp, name: &str) -> Vec<(String, NextRun)> {
    let job = app.job(name).await;
    app.store
        .events(&job.id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e: JobEvent| e.detail.map(|d| (e.kind, d)))
        .collect()
}

async fn whys(app: &TestApp, name: &str) -> Vec<NextRunWhy> {
    details(app, name)
        .await
        .into_iter()
        .map(|(_, d)| d.why)
        .collect()
}

fn fresh(name: &str) -> serde_json::Value {
    json!({
        "account": "fresh-sim",
        "operation": "tax_usn_calculator",
        "params": {"organization": {"inn": "783900281039", "kpp": ""}, "date": "2018-09-30T23:59:59"},
        "name": name,
    })
}

fn ofd(name: &str, sim: serde_json::Value) -> serde_json::Value {
    json!({"account": "ofd-sim", "operation": "report", "name": name, "params": {
        "ReportType": "ReceiptReport",
        "DateFrom": "2021-11-01T00:00:00.000+03:00",
        "DateTo": "2021-11-02T23:59:59.000+03:00",
        "KktList": ["7961d10e-f36a-4cce-a8db-add93309bb9e"],
        "GroupsList": [], "SelectAllKkts": false, "UseXlsxFile": true, "EmailsToNotify": "",
        "_sim": sim,
    }})
}

#[tokio::test]
async fn acceptance_is_due_now_and_unanswered_polls_back_off_step_by_step() {
    let app = TestApp::spawn().await;
    let job = app.submit(fresh("usn")).await;
    let accepted = &details(&app, "usn").await[0];
    assert_eq!(accepted.0, "accepted");
    assert_eq!(accepted.1, NextRun::now(job.created_at));

    let job = app.run_until_finished("usn").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let polls: Vec<NextRun> = details(&app, "usn")
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "poll")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(polls.len(), 2, "the simulator answers 10202 twice");
    for (i, poll) in polls.iter().enumerate() {
        assert_eq!(poll.why, NextRunWhy::Backoff, "{poll:?}");
        assert_eq!(poll.step, Some(i as u32 + 1), "the step is the poll count");
        assert_eq!(poll.hint_ms, None, "1C:Fresh gives no estimate");
        assert!(poll.wait_ms > 0 && poll.wait_ms <= 201, "{poll:?}");
    }
}

#[tokio::test]
async fn the_ofd_estimate_is_named_as_such() {
    let app = TestApp::spawn().await;
    app.submit(ofd("eta", json!({"eta_ms": 150}))).await;
    let job = app.run_until_finished("eta").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let details = details(&app, "eta").await;
    let eta = details
        .iter()
        .find(|(_, d)| d.why == NextRunWhy::Eta)
        .unwrap_or_else(|| panic!("no wait explained by the ETA: {details:?}"));
    assert!(eta.1.hint_ms.is_some(), "{eta:?}");
    assert!(eta.1.describe("ofd-ru").ends_with("(OFD.ru's estimate)"));
}

#[tokio::test]
async fn diadocs_retry_after_is_named_as_such() {
    let sim = SimConfig {
        kontur_diadoc: KonturDiadocSimConfig {
            retry_after_secs: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(sim, "", &[]).await;
    app.submit(json!({
        "account": "kontur-diadoc-sim",
        "operation": "document-protocol",
        "name": "protocol",
        "params": {"boxId": "0f4bb5a6-6c1d-4c2c-9a57-7a6f7d1f0b31",
                   "messageId": "b1e9c0d2-2f4a-4f5e-8d43-6f3c1a9e7b20",
                   "documentId": "5d6a4c8e-3b7f-4e0a-9c1d-8f2e6b4a7c90"},
    }))
    .await;
    let job = app.run_until_finished("protocol").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let polls: Vec<NextRun> = details(&app, "protocol")
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "poll")
        .map(|(_, d)| d)
        .collect();
    assert!(!polls.is_empty());
    for poll in polls {
        assert_eq!(poll.why, NextRunWhy::RetryAfter, "{poll:?}");
        assert_eq!(
            poll.hint_ms,
            Some(1000),
            "the header, before poll_max cut it"
        );
        assert!(
            poll.wait_ms <= 201,
            "poll_max (200ms) still bounds it: {poll:?}"
        );
    }
}

#[tokio::test]
async fn a_wait_past_the_deadline_is_cut_to_it_and_says_so() {
    let app = TestApp::spawn_with(
        SimConfig::default(),
        "",
        &[
            ("DOCFETCH__SCHEDULER__DEADLINE", "5s"),
            ("DOCFETCH__SCHEDULER__POLL_MAX", "10m"),
        ],
    )
    .await;
    let job = app.submit(ofd("late", json!({"eta_ms": 60_000}))).await;
    let after = app.step_once("late").await;
    assert_eq!(after.state, JobState::Waiting, "{:?}", after.last_error);
    let last = details(&app, "late").await.pop().expect("a detail").1;
    assert_eq!(last.why, NextRunWhy::Deadline, "{last:?}");
    assert_eq!(last.next_run_at, job.deadline_at);
    assert_eq!(after.next_run_at, job.deadline_at);
    assert!(last.hint_ms.is_some_and(|h| h > 50_000), "{last:?}");
}

#[tokio::test]
async fn a_paused_account_postpones_its_jobs_and_says_why() {
    let app = TestApp::spawn().await;
    app.submit(fresh("paused")).await;
    let account = app.scheduler.providers().get("fresh-sim").expect("account");
    account.cool_down(Duration::from_secs(30));
    let job = app.step_once("paused").await;
    assert_eq!(job.state, JobState::Waiting);
    let (kind, last) = details(&app, "paused").await.pop().expect("a detail");
    assert_eq!(kind, "postponed");
    assert_eq!(last.why, NextRunWhy::AccountPause, "{last:?}");
    assert!(
        last.hint_ms.is_some_and(|h| h > 25_000 && h <= 30_000),
        "{last:?}"
    );
    assert_eq!(job.next_run_at, last.next_run_at);
    assert!(job.next_run_at > now_ms() + 25_000);
    assert_eq!(
        app.sim
            .fresh
            .counters
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no request is spent"
    );
}

#[tokio::test]
async fn a_busy_account_postpones_its_jobs_and_says_why() {
    let app = TestApp::spawn().await;
    app.submit(fresh("busy")).await;
    let account = app.scheduler.providers().get("fresh-sim").expect("account");
    let permits = u32::try_from(account.limit.available_permits()).unwrap();
    // Every slot taken by someone else: the job waits ACCOUNT_WAIT (2 s)
    // for one and then steps aside.
    let _held = account
        .limit
        .clone()
        .acquire_many_owned(permits)
        .await
        .unwrap();
    let job = app.step_once("busy").await;
    assert_eq!(job.state, JobState::Waiting);
    let (kind, last) = details(&app, "busy").await.pop().expect("a detail");
    assert_eq!(kind, "postponed");
    assert_eq!(last.why, NextRunWhy::AccountBusy, "{last:?}");
    assert_eq!(
        whys(&app, "busy").await,
        [NextRunWhy::Now, NextRunWhy::AccountBusy]
    );
}
