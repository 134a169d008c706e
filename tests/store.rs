//! The SQLite store: compare-and-set transitions, leases, the due index.

use std::sync::Arc;

use docfetch::job::{JobState, now_ms};
use docfetch::scheduler::Outcome;
use docfetch::store::{Store, StoreError, Transition};
use serde_json::json;

use crate::helpers::TestApp;

fn waiting() -> Transition {
    Transition {
        state: JobState::Waiting,
        cursor: json!({"job_id": "x"}),
        next_run_at: now_ms(),
        attempts: 0,
        polls: 1,
        last_error: None,
        result: None,
        event: ("poll".into(), "still waiting".into()),
        hooks_pending: false,
    }
}

#[tokio::test]
async fn a_transition_under_someone_elses_lease_is_refused() {
    let app = TestApp::spawn().await;
    let job = app
        .submit(json!({"account": "fresh-sim", "operation": "x", "name": "cas"}))
        .await;
    let claimed = app
        .store
        .claim_due("owner-a", now_ms(), now_ms() + 60_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let err = app
        .store
        .finish_step(&job.id, "owner-b", &waiting())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let saved = app
        .store
        .finish_step(&job.id, "owner-a", &waiting())
        .await
        .unwrap();
    assert_eq!(saved.state, JobState::Waiting);
    assert_eq!(saved.cursor, json!({"job_id": "x"}));
    // The same transition cannot be applied twice: the job is no longer running.
    assert!(
        app.store
            .finish_step(&job.id, "owner-a", &waiting())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_job_cancelled_while_running_stays_cancelled_and_its_receipt_says_so() {
    let app = TestApp::spawn().await;
    app.submit(
        json!({"account": "fresh-sim", "operation": "tax_usn_calculator", "name": "stop-me"}),
    )
    .await;
    let mut claimed = app.scheduler.claim(1).await.unwrap();
    let job = claimed.pop().unwrap();
    app.store.cancel("stop-me", now_ms()).await.unwrap();
    let outcome = Arc::clone(&app.scheduler)
        .run_job(job, Default::default())
        .await;
    assert!(matches!(outcome, Outcome::Abandoned(_)), "{outcome:?}");
    assert_eq!(app.job("stop-me").await.state, JobState::Cancelled);
    assert_eq!(app.receipt("stop-me")["state"], "cancelled");
}

#[tokio::test]
async fn a_failed_job_can_be_retried_from_the_start() {
    let app = TestApp::spawn().await;
    app.submit(json!({"account": "fresh-sim", "operation": "missing_data", "name": "again"}))
        .await;
    assert_eq!(
        app.run_until_finished("again").await.state,
        JobState::Failed
    );
    let err = app.store.cancel("again", now_ms()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot cancel a job that is failed"),
        "{err}"
    );
    let queued = app
        .store
        .retry("again", now_ms(), now_ms() + 60_000)
        .await
        .unwrap();
    assert_eq!(queued.state, JobState::Queued);
    assert_eq!(queued.cursor, json!({}));
    assert!(queued.last_error.is_none());
    assert!(matches!(
        app.store.retry("again", now_ms(), 0).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        app.store.retry("nope", now_ms(), 0).await,
        Err(StoreError::NotFound(_))
    ));
}

/// A batch's checkpoints and step outcomes are one `UPDATE … FROM
/// json_each(?)`: each element must find its job by primary key, never by
/// scanning the jobs (which would make every commit cost the whole store).
#[tokio::test]
async fn grouped_updates_find_each_job_by_its_key() {
    let app = TestApp::spawn().await;
    let Store::Sqlite(sqlite) = &app.store else {
        panic!("these tests run on the SQLite store")
    };
    for statement in [
        docfetch::store::sqlite::CHECKPOINT_JOBS,
        docfetch::store::sqlite::FINISH_JOBS,
        docfetch::store::sqlite::SETTLE_JOBS,
    ] {
        let explain = format!("EXPLAIN QUERY PLAN {statement}");
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(explain))
            .bind("[]")
            .bind(0_i64)
            .fetch_all(sqlite.pool())
            .await
            .unwrap();
        let plan: Vec<String> = plan.into_iter().map(|r| r.3).collect();
        assert!(
            plan.iter()
                .any(|p| p.starts_with("SEARCH jobs USING INDEX") && p.contains("(id=?)")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|p| p.starts_with("SCAN jobs")), "{plan:?}");
    }
}

#[tokio::test]
async fn due_jobs_are_claimed_in_due_order_through_the_index_without_sorting() {
    let app = TestApp::spawn().await;
    let Store::Sqlite(sqlite) = &app.store else {
        panic!("these tests run on the SQLite store")
    };
    let explain = format!("EXPLAIN QUERY PLAN {}", docfetch::store::sqlite::DUE_JOBS);
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(explain))
        .bind(None::<String>)
        .bind(None::<i64>)
        .bind(1_i64)
        .bind(10_i64)
        .fetch_all(sqlite.pool())
        .await
        .unwrap();
    let plan: Vec<String> = plan.into_iter().map(|r| r.3).collect();
    assert!(plan.iter().any(|p| p.contains("jobs_due")), "{plan:?}");
    assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");

    for name in ["c", "a", "b"] {
        app.submit(json!({"account": "fresh-sim", "operation": "x", "name": name}))
            .await;
    }
    let first = app
        .store
        .claim_due("o", now_ms(), now_ms() + 1000, 2)
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    let rest = app
        .store
        .claim_due("o", now_ms(), now_ms() + 1000, 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(
        app.store
            .claim_due("o", now_ms(), now_ms() + 1000, 10)
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(app.store.next_due_at().await.unwrap(), None);
}

#[tokio::test]
async fn expired_leases_are_taken_back_and_live_ones_are_not() {
    let app = TestApp::spawn().await;
    app.submit(json!({"account": "fresh-sim", "operation": "x", "name": "l1"}))
        .await;
    app.submit(json!({"account": "fresh-sim", "operation": "x", "name": "l2"}))
        .await;
    let now = now_ms();
    app.store.claim_due("dead", now, now - 1, 1).await.unwrap();
    app.store
        .claim_due("alive", now, now + 60_000, 1)
        .await
        .unwrap();
    assert_eq!(app.store.reclaim_expired(now_ms(), &[]).await.unwrap(), 1);
    let states: Vec<JobState> = futures_states(&app, &["l1", "l2"]).await;
    assert!(
        states.contains(&JobState::Waiting) && states.contains(&JobState::Running),
        "{states:?}"
    );
}

async fn futures_states(app: &TestApp, names: &[&str]) -> Vec<JobState> {
    let mut out = Vec::new();
    for name in names {
        out.push(app.job(name).await.state);
    }
    out
}

#[tokio::test]
async fn a_second_daemon_on_the_same_store_is_refused() {
    let app = TestApp::spawn().await;
    let Store::Sqlite(sqlite) = &app.store else {
        panic!("these tests run on the SQLite store")
    };
    let first = docfetch::store::sqlite::DaemonLock::acquire(sqlite.path()).unwrap();
    let second = docfetch::store::sqlite::DaemonLock::acquire(sqlite.path());
    let Err(err) = second else {
        panic!("a second lock must fail")
    };
    assert!(
        err.to_string()
            .contains("another docfetch daemon is running"),
        "{err}"
    );
    drop(first);
    assert!(docfetch::store::sqlite::DaemonLock::acquire(sqlite.path()).is_ok());
}

/// A daemon starting while `docfetch submit` runs: both open a new store at
/// once and both try to migrate it. Without a lock around the migrations
/// one of them fails on a duplicate column.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_opening_a_new_store_together_migrate_it_once() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("docfetch.db").display());
        let opens = (0..4).map(|_| Store::open(&url));
        let stores: Vec<Store> = futures_util::future::join_all(opens)
            .await
            .into_iter()
            .map(|opened| opened.unwrap_or_else(|e| panic!("round {round}: {e}")))
            .collect();
        for store in &stores {
            store.ping().await.unwrap();
        }
        let Store::Sqlite(sqlite) = &stores[0] else {
            panic!("an SQLite store")
        };
        let applied: Vec<(i64,)> =
            sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(sqlite.pool())
                .await
                .unwrap();
        assert_eq!(
            applied,
            [(1,), (2,), (3,), (4,), (6,)],
            "round {round}: each migration once"
        );
    }
}
