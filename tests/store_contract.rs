//! One contract for every job store. Each contract below runs against
//! SQLite (a temporary file) always, and against PostgreSQL when
//! `DOCFETCH_TEST_POSTGRES_URL` names a server, each test in a database of
//! its own that is dropped afterwards (see [`TestDb`]). The `pg_*` tests at
//! the end cover what only PostgreSQL has: concurrent migrations, the claim
//! plan, notifications between daemons, and error classification.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use docfetch::job::{
    EventKind, HookRef, Hooks, Job, JobEvent, JobResult, JobState, Millis, NewJob, SavedFile,
    now_ms,
};
use docfetch::store::{JobFilter, Settlement, Store, StoreError, StoredJob, Transition};
use serde_json::json;

use crate::helpers::wait_until;

/// The variable naming a PostgreSQL server the tests may create databases on.
pub const PG_ENV: &str = "DOCFETCH_TEST_POSTGRES_URL";

/// Test databases older than this are left over from a run that was killed
/// before it could drop them, and are dropped by the next run.
const STALE_AFTER_SECS: u64 = 3600;

const DB_PREFIX: &str = "docfetch_test_";

// ---------------------------------------------------------------------------
// Fixtures

/// A PostgreSQL database of its own for one test: created on the server
/// named by `DOCFETCH_TEST_POSTGRES_URL`, dropped (`WITH (FORCE)`, so open
/// connections do not keep it) when this value is dropped, including when
/// the test panics. Databases that a killed run left behind carry their
/// creation time in their name and are dropped by the next run.
pub struct TestDb {
    admin_url: String,
    pub name: String,
    url: url::Url,
}

impl TestDb {
    /// A fresh database, or `None` (after saying so) when no server is configured.
    pub async fn create() -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(PG_ENV) else {
            crate::support::evidence::skip(&format!("{PG_ENV} is not set"));
            return None;
        };
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let name = format!(
            "{DB_PREFIX}{created}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut admin = admin_connection(&admin_url).await;
        drop_stale_databases(&mut admin, created).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        let mut url = url::Url::parse(&admin_url).expect("DOCFETCH_TEST_POSTGRES_URL is a URL");
        url.set_path(&format!("/{name}"));
        Some(TestDb {
            admin_url,
            name,
            url,
        })
    }

    /// The URL of this database.
    pub fn url(&self) -> String {
        self.url.to_string()
    }

    /// The URL with an `application_name`, which shows up in
    /// `pg_stat_activity` and `current_setting('application_name')`.
    pub fn url_as(&self, application: &str) -> String {
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("application_name", application);
        url.to_string()
    }

    /// [`TestDb::url_as`] without TLS, unless the URL asks for an
    /// `sslmode` itself: on loopback, TLS in a debug build costs more CPU
    /// than the queue being tested.
    pub fn plain_url_as(&self, application: &str) -> String {
        let mut url = url::Url::parse(&self.url_as(application)).expect("a URL");
        if !url.query_pairs().any(|(key, _)| key == "sslmode") {
            url.query_pairs_mut().append_pair("sslmode", "disable");
        }
        url.to_string()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs outside async code (and during panics): a thread with a
        // runtime of its own does the async work and is waited for.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut admin = admin_connection(&admin_url).await;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) {
            eprintln!(
                "could not drop test database {}; the next run drops it",
                self.name
            );
        }
    }
}

async fn admin_connection(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .expect("connect to DOCFETCH_TEST_POSTGRES_URL")
}

async fn drop_stale_databases(admin: &mut sqlx::PgConnection, now_secs: u64) {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'docfetch\\_test\\_%'")
            .fetch_all(&mut *admin)
            .await
            .expect("list databases");
    for (name,) in names {
        let created = name
            .strip_prefix(DB_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| now_secs.saturating_sub(created) > STALE_AFTER_SECS)
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            // Another run may be dropping it too; either way it goes.
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut *admin)
            .await;
        }
    }
}

/// An empty store of either kind, and what keeps it alive. Fields drop in
/// order: the store's connections close before its database goes.
pub struct Fixture {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    _db: Option<TestDb>,
}

impl Fixture {
    pub async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/store.db", dir.path().display());
        Fixture {
            store: Store::open(&url).await.expect("sqlite store opens"),
            url,
            _dir: Some(dir),
            _db: None,
        }
    }

    pub async fn postgres() -> Option<Fixture> {
        let db = TestDb::create().await?;
        let url = db.url();
        Some(Fixture {
            store: Store::open(&url).await.expect("postgres store opens"),
            url,
            _dir: None,
            _db: Some(db),
        })
    }

    /// Another handle on the same store, as a second process would open it.
    pub async fn another_handle(&self) -> Store {
        Store::open(&self.url).await.expect("store opens again")
    }
}

/// Generates, for each contract `f(Fixture)`, a module `f` with the tests
/// `f::sqlite` and `f::postgres`.
macro_rules! contracts {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(super::Fixture::sqlite().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if let Some(fixture) = super::Fixture::postgres().await {
                    super::$name(fixture).await;
                }
            }
        }
    )*};
}

contracts!(
    a_new_job_reads_back_exactly_as_written,
    a_second_job_with_the_same_name_is_refused_and_the_first_is_returned,
    due_jobs_are_claimed_oldest_due_first_up_to_the_limit,
    a_transition_under_someone_elses_lease_is_refused_and_changes_nothing,
    a_finished_step_saves_its_outcome_and_history_and_frees_the_lease,
    a_checkpoint_saves_the_cursor_keeps_the_lease_and_clears_attempts,
    a_settled_outcome_keeps_the_lease_and_the_final_state_keeps_its_end_time,
    a_postponed_job_gives_its_step_back_and_waits,
    leases_are_released_by_owner_or_for_all_and_only_expired_ones_are_taken_back,
    cancel_and_retry_follow_the_state_machine,
    jobs_are_listed_newest_first_then_by_name_byte_order_with_filters_and_paging,
    counts_and_the_metrics_snapshot_agree_with_the_jobs,
    the_dashboards_hours_and_account_counts_follow_every_change,
    counts_are_exact_whether_or_not_their_changes_are_folded,
    completion_hooks_are_claimed_held_and_finished,
    old_finished_jobs_are_pruned_with_their_history_unless_hooks_are_pending,
    a_schedules_last_firing_only_moves_forward,
    concurrent_claimers_on_separate_handles_never_share_a_job,
    another_handles_commit_changes_the_change_counter,
    a_copy_from_sqlite_brings_everything_and_a_second_copy_adds_nothing,
);

// ---------------------------------------------------------------------------
// Helpers

fn new_job(name: &str, created_at: Millis) -> NewJob {
    NewJob {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_string(),
        account: "acct".into(),
        provider: "1c-fresh".into(),
        operation: "balance_sheet".into(),
        params: json!({"period": "2026-Q1"}),
        source: "test".into(),
        request_sha256: "ab".repeat(32),
        created_at,
        deadline_at: created_at + 3_600_000,
        hooks: None,
    }
}

async fn insert(store: &Store, name: &str, created_at: Millis) -> Job {
    store
        .insert(&new_job(name, created_at))
        .await
        .expect("insert")
}

/// Claims the one job due at `now`, failing unless exactly one is.
async fn claim_one(store: &Store, owner: &str, now: Millis, lease: Millis) -> Job {
    let mut claimed = store
        .claim_due(owner, now, now + lease, 1)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "one job is due");
    claimed.remove(0)
}

fn waiting(next_run_at: Millis) -> Transition {
    Transition {
        state: JobState::Waiting,
        cursor: json!({"job_id": "remote-1"}),
        next_run_at,
        attempts: 0,
        polls: 1,
        last_error: None,
        result: None,
        event: (EventKind::Poll, "still waiting".into()),
        detail: None,
        hooks_pending: false,
    }
}

fn finished(state: JobState, hooks_pending: bool) -> Transition {
    Transition {
        state,
        cursor: json!({"file_id": "f-1"}),
        next_run_at: now_ms(),
        attempts: 0,
        polls: 2,
        last_error: (state == JobState::Failed).then(|| "it broke".to_string()),
        result: (state == JobState::Done).then(|| JobResult {
            files: vec![SavedFile {
                name: "report.pdf".into(),
                size: 42,
                sha256: "cd".repeat(32),
            }],
            warnings: vec!["Период не закрыт".into()],
        }),
        event: (
            if state == JobState::Done {
                EventKind::Done
            } else {
                EventKind::Failed
            },
            format!("{state}: the end"),
        ),
        detail: None,
        hooks_pending,
    }
}

async fn job(store: &Store, key: &str) -> Job {
    store.find(key).await.expect("find").expect("job exists")
}

fn assert_conflict(result: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    match result {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("{what}: expected a conflict, got {other:?}"),
    }
}

async fn notified(notify: std::sync::Arc<tokio::sync::Notify>) -> bool {
    tokio::time::timeout(Duration::from_secs(10), notify.notified())
        .await
        .is_ok()
}

// ---------------------------------------------------------------------------
// Contracts

async fn a_new_job_reads_back_exactly_as_written(f: Fixture) {
    let t = now_ms();
    let mut new = new_job("round-trip", t);
    // Shapes that a lossy JSON column would change: big and negative
    // integers, floats, escapes, NUL, non-ASCII, nesting, empty containers.
    new.params = json!({
        "zeta": 1, "alpha": [u64::MAX, i64::MIN, 0.1, 1e300, -2.5e-8],
        "text": "кириллица \"quoted\" \\ tab\t nul\u{0} emoji 🧾",
        "nested": {"empty_object": {}, "empty_array": [], "null": null, "yes": true},
    });
    new.hooks = Some(Hooks {
        on_done: Some(HookRef::Command(vec![
            "/usr/local/bin/import".into(),
            "--quiet".into(),
        ])),
        on_failed: None,
        on_done_url: Some("https://example.test/hook".into()),
    });
    let inserted = f.store.insert(&new).await.unwrap();
    assert_eq!(inserted.id, new.id);
    assert_eq!(inserted.name, "round-trip");
    assert_eq!(inserted.params, new.params);
    assert_eq!(inserted.hooks, new.hooks);
    assert_eq!(inserted.state, JobState::Queued);
    assert_eq!(inserted.cursor, json!({}));
    assert_eq!(
        (inserted.attempts, inserted.polls, inserted.steps),
        (0, 0, 0)
    );
    assert_eq!(inserted.next_run_at, t);
    assert_eq!((inserted.created_at, inserted.updated_at), (t, t));
    assert_eq!(inserted.deadline_at, t + 3_600_000);
    assert_eq!(inserted.finished_at, None);
    assert_eq!(inserted.lease_owner, None);
    assert_eq!(inserted.result, None);
    assert_eq!(inserted.hooks_state, None);
    assert_eq!(inserted.request_sha256, "ab".repeat(32));
    assert_eq!(job(&f.store, &new.id).await, inserted, "found by id");
    assert_eq!(job(&f.store, "round-trip").await, inserted, "found by name");
    assert!(f.store.find("no-such-job").await.unwrap().is_none());
    assert_eq!(
        f.store.events(&new.id).await.unwrap(),
        vec![JobEvent {
            at: t,
            kind: "accepted".into(),
            message: "accepted from test".into(),
            detail: Some(docfetch::job::NextRun::now(t)),
        }]
    );

    // Cursor and result survive a transition just as exactly.
    let claimed = claim_one(&f.store, "o", now_ms(), 60_000).await;
    let mut done = finished(JobState::Done, false);
    done.cursor = new.params.clone();
    let saved = f.store.finish_step(&claimed.id, "o", &done).await.unwrap();
    assert_eq!(saved.cursor, new.params);
    assert_eq!(saved.result, done.result);
    assert_eq!(job(&f.store, &new.id).await, saved);
}

async fn a_second_job_with_the_same_name_is_refused_and_the_first_is_returned(f: Fixture) {
    let first = insert(&f.store, "twice", now_ms()).await;
    let err = f
        .store
        .insert(&new_job("twice", now_ms()))
        .await
        .unwrap_err();
    match err {
        StoreError::Duplicate { name, existing } => {
            assert_eq!(name, "twice");
            assert_eq!(*existing, first);
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let all = f.store.list(&JobFilter::default()).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        f.store.events(&first.id).await.unwrap().len(),
        1,
        "the refused insert left no history"
    );
}

async fn due_jobs_are_claimed_oldest_due_first_up_to_the_limit(f: Fixture) {
    let t = now_ms();
    // A job's first run is due when it was created.
    for (name, due) in [
        ("d50", t - 50),
        ("d10", t - 10),
        ("d40", t - 40),
        ("d30", t - 30),
        ("later", t + 60_000),
    ] {
        insert(&f.store, name, due).await;
    }
    assert_eq!(f.store.next_due_at().await.unwrap(), Some(t - 50));
    let first = f.store.claim_due("o", t, t + 5_000, 2).await.unwrap();
    let names: Vec<&str> = first.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["d50", "d40"]);
    for j in &first {
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.lease_owner.as_deref(), Some("o"));
        assert_eq!(j.lease_until, Some(t + 5_000));
        assert_eq!(j.updated_at, t);
        assert_eq!(j.steps, 1);
    }
    let rest = f.store.claim_due("p", t, t + 5_000, 10).await.unwrap();
    let names: Vec<&str> = rest.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["d30", "d10"], "not yet due jobs stay");
    assert!(
        f.store
            .claim_due("p", t, t + 5_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(f.store.next_due_at().await.unwrap(), Some(t + 60_000));
    let later = f
        .store
        .claim_due("p", t + 60_000, t + 65_000, 10)
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(f.store.next_due_at().await.unwrap(), None);
}

async fn a_transition_under_someone_elses_lease_is_refused_and_changes_nothing(f: Fixture) {
    let inserted = insert(&f.store, "cas", now_ms()).await;
    let claimed = claim_one(&f.store, "owner-a", now_ms(), 60_000).await;
    let id = inserted.id.as_str();
    assert_conflict(
        f.store.finish_step(id, "owner-b", &waiting(now_ms())).await,
        "finish",
    );
    assert_conflict(f.store.renew_lease(id, "owner-b", now_ms()).await, "renew");
    assert_conflict(
        f.store.checkpoint(id, "owner-b", &json!({"x": 1})).await,
        "checkpoint",
    );
    assert_conflict(f.store.postpone(id, "owner-b", now_ms()).await, "postpone");
    assert_eq!(job(&f.store, id).await, claimed, "nothing changed");

    let saved = f
        .store
        .finish_step(id, "owner-a", &waiting(now_ms()))
        .await
        .unwrap();
    assert_eq!(saved.state, JobState::Waiting);
    // The same transition cannot be applied twice: the job is no longer running.
    assert_conflict(
        f.store.finish_step(id, "owner-a", &waiting(now_ms())).await,
        "finish twice",
    );
    assert_conflict(
        f.store.renew_lease(id, "owner-a", now_ms()).await,
        "renew after finish",
    );
    assert_conflict(
        f.store
            .finish_step("no-such-id", "owner-a", &waiting(0))
            .await,
        "unknown job",
    );
}

async fn a_finished_step_saves_its_outcome_and_history_and_frees_the_lease(f: Fixture) {
    let j = insert(&f.store, "steps", now_ms()).await;
    claim_one(&f.store, "o", now_ms(), 60_000).await;
    let next = now_ms() + 30_000;
    let mut t = waiting(next);
    t.attempts = 2;
    t.polls = 3;
    t.last_error = Some("HTTP 503".into());
    t.event = (EventKind::Error, "HTTP 503 (attempt 2)".into());
    let saved = f.store.finish_step(&j.id, "o", &t).await.unwrap();
    assert_eq!(saved.state, JobState::Waiting);
    assert_eq!(saved.cursor, json!({"job_id": "remote-1"}));
    assert_eq!(saved.next_run_at, next);
    assert_eq!((saved.attempts, saved.polls, saved.steps), (2, 3, 1));
    assert_eq!(saved.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!((saved.lease_owner, saved.lease_until), (None, None));
    assert_eq!(saved.finished_at, None);
    assert_eq!(saved.hooks_state, None);

    claim_one(&f.store, "o", next, 60_000).await;
    let hooks = f.store.hooks_wakeup();
    let done = finished(JobState::Done, true);
    let saved = f.store.finish_step(&j.id, "o", &done).await.unwrap();
    assert_eq!(saved.state, JobState::Done);
    assert_eq!(saved.steps, 2);
    assert_eq!(saved.result, done.result);
    assert_eq!(saved.last_error, None);
    assert!(saved.finished_at.is_some());
    assert_eq!(saved.finished_at, Some(saved.updated_at));
    assert_eq!(saved.hooks_state.as_deref(), Some("pending"));
    assert_eq!(saved.hooks_attempts, 0);
    assert!(notified(hooks).await, "the hook runner is woken");
    assert_eq!(
        f.store.next_hooks_at().await.unwrap(),
        saved.finished_at,
        "hooks are due at once"
    );
    let kinds: Vec<(String, String)> = f
        .store
        .events(&j.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.message))
        .collect();
    assert_eq!(
        kinds,
        [
            ("accepted".into(), "accepted from test".into()),
            ("error".into(), "HTTP 503 (attempt 2)".into()),
            ("done".into(), "done: the end".into()),
        ]
    );
    assert_eq!(job(&f.store, &j.id).await, saved);
}

async fn a_checkpoint_saves_the_cursor_keeps_the_lease_and_clears_attempts(f: Fixture) {
    let j = insert(&f.store, "cp", now_ms()).await;
    claim_one(&f.store, "o", now_ms(), 60_000).await;
    let mut t = waiting(now_ms());
    t.attempts = 3;
    f.store.finish_step(&j.id, "o", &t).await.unwrap();
    let claimed = claim_one(&f.store, "o", now_ms(), 60_000).await;
    assert_eq!(claimed.attempts, 3);
    let before = now_ms();
    f.store
        .checkpoint(&j.id, "o", &json!({"job_id": "remote-1", "file_id": "f"}))
        .await
        .unwrap();
    let after = job(&f.store, &j.id).await;
    assert_eq!(after.state, JobState::Running);
    assert_eq!(after.lease_owner.as_deref(), Some("o"));
    assert_eq!(after.lease_until, claimed.lease_until);
    assert_eq!(after.cursor, json!({"job_id": "remote-1", "file_id": "f"}));
    assert_eq!(after.attempts, 0);
    assert!(after.updated_at >= before);
    f.store
        .renew_lease(&j.id, "o", before + 90_000)
        .await
        .unwrap();
    assert_eq!(
        job(&f.store, &j.id).await.lease_until,
        Some(before + 90_000)
    );
}

async fn a_settled_outcome_keeps_the_lease_and_the_final_state_keeps_its_end_time(f: Fixture) {
    let t = now_ms();
    let j = insert(&f.store, "settled", t - 1000).await;
    claim_one(&f.store, "o", t, 60_000).await;
    let done = finished(JobState::Done, true);
    let settlement = Settlement {
        cursor: done.cursor.clone(),
        result: done.result.clone(),
        last_error: None,
        attempts: 0,
        finished_at: t - 5,
    };
    assert_conflict(
        f.store.settle(&j.id, "someone-else", &settlement).await,
        "settle",
    );
    f.store.settle(&j.id, "o", &settlement).await.unwrap();
    let settled = job(&f.store, &j.id).await;
    assert_eq!(
        settled.state,
        JobState::Running,
        "still running under the lease"
    );
    assert_eq!(settled.lease_owner.as_deref(), Some("o"));
    assert_eq!(settled.result, done.result);
    assert_eq!(settled.finished_at, Some(t - 5));
    assert_eq!(settled.settled(), Some(JobState::Done));
    assert_eq!(settled.summary_json()["result"], serde_json::Value::Null);
    assert!(
        f.store
            .events(&j.id)
            .await
            .unwrap()
            .iter()
            .all(|e| e.kind != "done")
    );
    // A crash here: the lease is taken back, the job is claimed again and
    // still settled.
    f.store.release_leases(None, t).await.unwrap();
    let again = claim_one(&f.store, "p", t, 60_000).await;
    assert_eq!(again.settled(), Some(JobState::Done));
    let finished = f.store.finish_step(&j.id, "p", &done).await.unwrap();
    assert_eq!(finished.state, JobState::Done);
    assert_eq!(
        finished.finished_at,
        Some(t - 5),
        "the end time it was settled with"
    );
    assert_eq!(finished.settled(), None);
    assert_eq!(finished.hooks_state.as_deref(), Some("pending"));
    // A failure settles the same way, without a result.
    let k = insert(&f.store, "settled-failed", t - 1000).await;
    claim_one(&f.store, "o", t, 60_000).await;
    let failure = Settlement {
        cursor: json!({}),
        result: None,
        last_error: Some("it broke".into()),
        attempts: 3,
        finished_at: t,
    };
    f.store.settle(&k.id, "o", &failure).await.unwrap();
    let k = job(&f.store, &k.id).await;
    assert_eq!(k.settled(), Some(JobState::Failed));
    assert_eq!((k.attempts, k.last_error.as_deref()), (3, Some("it broke")));
}

async fn a_postponed_job_gives_its_step_back_and_waits(f: Fixture) {
    let j = insert(&f.store, "later", now_ms()).await;
    let claimed = claim_one(&f.store, "o", now_ms(), 60_000).await;
    assert_eq!(claimed.steps, 1);
    let at = now_ms() + 5_000;
    f.store.postpone(&j.id, "o", at).await.unwrap();
    let after = job(&f.store, &j.id).await;
    assert_eq!(after.state, JobState::Waiting);
    assert_eq!(after.steps, 0, "the step that did not run is not counted");
    assert_eq!(after.next_run_at, at);
    assert_eq!((after.lease_owner, after.lease_until), (None, None));
    assert_eq!(after.updated_at, claimed.updated_at, "as SQLite: untouched");
    assert!(
        f.store
            .claim_due("o", at - 1, at + 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(claim_one(&f.store, "o", at, 60_000).await.id, j.id);
    assert_conflict(
        f.store.postpone(&j.id, "someone-else", at).await,
        "postpone",
    );
}

async fn leases_are_released_by_owner_or_for_all_and_only_expired_ones_are_taken_back(f: Fixture) {
    let t = now_ms();
    for name in ["a1", "a2", "b1", "q"] {
        insert(&f.store, name, t - 1000).await;
    }
    let a = f.store.claim_due("a", t, t + 60_000, 2).await.unwrap();
    let b = f.store.claim_due("b", t, t - 1, 1).await.unwrap();
    assert_eq!((a.len(), b.len()), (2, 1));

    // An expired lease of a job its daemon is still working on (the store
    // refused its renewals) is left alone.
    let in_flight = [b[0].id.clone()];
    assert_eq!(f.store.reclaim_expired(t, &in_flight).await.unwrap(), 0);
    assert_eq!(job(&f.store, &b[0].id).await.state, JobState::Running);
    assert_eq!(f.store.reclaim_expired(t, &[]).await.unwrap(), 1);
    let taken_back = job(&f.store, &b[0].id).await;
    assert_eq!(taken_back.state, JobState::Waiting);
    assert_eq!(taken_back.next_run_at, t);
    assert_eq!(taken_back.updated_at, t);
    assert_eq!(taken_back.lease_owner, None);
    assert_eq!(
        f.store.reclaim_expired(t, &[]).await.unwrap(),
        0,
        "live leases stay"
    );

    let wakeup = f.store.wakeup();
    assert_eq!(f.store.release_leases(Some("nobody"), t).await.unwrap(), 0);
    assert_eq!(f.store.release_leases(Some("a"), t + 1).await.unwrap(), 2);
    assert!(notified(wakeup).await, "released work wakes the scheduler");
    for j in &a {
        let j = job(&f.store, &j.id).await;
        assert_eq!(
            (j.state, j.next_run_at, j.lease_owner),
            (JobState::Waiting, t + 1, None)
        );
    }
    let c = f.store.claim_due("c", t + 2, t + 60_000, 2).await.unwrap();
    let d = f.store.claim_due("d", t + 2, t + 60_000, 1).await.unwrap();
    assert_eq!((c.len(), d.len()), (2, 1));
    assert_eq!(f.store.release_leases(None, t + 3).await.unwrap(), 3);
    let counts: HashMap<JobState, u64> = f.store.counts().await.unwrap().into_iter().collect();
    // Oldest due first: c took q and b1, d took one of a's.
    assert_eq!(counts.get(&JobState::Waiting), Some(&4));
    assert_eq!(counts.get(&JobState::Queued), None);
    assert_eq!(counts.get(&JobState::Running), None);
}

async fn cancel_and_retry_follow_the_state_machine(f: Fixture) {
    let q = insert(&f.store, "queued-one", now_ms()).await;
    let t = now_ms();
    let cancelled = f.store.cancel("queued-one", t).await.unwrap();
    assert_eq!(cancelled.id, q.id);
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.finished_at, Some(t));
    assert_eq!(cancelled.last_error.as_deref(), Some("cancelled by a user"));
    let err = f.store.cancel(&q.id, t).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { id, .. } if *id == q.id),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("cannot cancel a job that is cancelled; expected queued, waiting or running"),
        "{err}"
    );
    assert!(matches!(
        f.store.cancel("nope", t).await,
        Err(StoreError::NotFound(key)) if key == "nope"
    ));

    let retried = f.store.retry(&q.id, t + 5, t + 100_000).await.unwrap();
    assert_eq!(retried.state, JobState::Queued);
    assert_eq!(retried.cursor, json!({}));
    assert_eq!(retried.attempts, 0);
    assert_eq!(retried.next_run_at, t + 5);
    assert_eq!(retried.deadline_at, t + 100_000);
    assert_eq!(
        (retried.last_error, retried.result, retried.finished_at),
        (None, None, None)
    );
    let err = f.store.retry("queued-one", t, t).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot retry a job that is queued; expected failed or cancelled"),
        "{err}"
    );
    assert!(matches!(
        f.store.retry("nope", t, t).await,
        Err(StoreError::NotFound(_))
    ));

    // Running, the same job is cancelled too; its worker's next write is refused.
    let running = claim_one(&f.store, "w", now_ms().max(t + 5), 60_000).await;
    assert_eq!(running.id, q.id);
    let cancelled = f.store.cancel(&running.id, now_ms()).await.unwrap();
    assert_eq!((cancelled.lease_owner, cancelled.lease_until), (None, None));
    assert_conflict(
        f.store
            .finish_step(&running.id, "w", &finished(JobState::Done, false))
            .await,
        "finish after cancel",
    );
    // A failed job can be retried, and keeps its step count.
    f.store
        .retry(&running.id, now_ms(), now_ms())
        .await
        .unwrap();
    claim_one(&f.store, "w", now_ms(), 60_000).await;
    f.store
        .finish_step(&running.id, "w", &finished(JobState::Failed, false))
        .await
        .unwrap();
    let again = f
        .store
        .retry(&running.id, now_ms(), now_ms())
        .await
        .unwrap();
    assert_eq!(again.steps, 2);
    let kinds: Vec<String> = f
        .store
        .events(&q.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "accepted",
            "cancelled",
            "retried",
            "cancelled",
            "retried",
            "failed",
            "retried"
        ]
    );
}

async fn jobs_are_listed_newest_first_then_by_name_byte_order_with_filters_and_paging(f: Fixture) {
    let t = now_ms();
    // Same creation time: ties go by name, byte by byte ('-' < '.' < 'A' <
    // '_' < 'a'), whatever the database's collation thinks of punctuation.
    for name in ["b", "B", "a_1", "a.1", "a-1", "A"] {
        insert(&f.store, name, t).await;
    }
    insert(&f.store, "newest", t + 10).await;
    let mut other = new_job("elsewhere", t + 5);
    other.account = "other".into();
    f.store.insert(&other).await.unwrap();
    let names = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.name).collect::<Vec<_>>();

    let all = f.store.list(&JobFilter::default()).await.unwrap();
    assert_eq!(
        names(all),
        ["newest", "elsewhere", "A", "B", "a-1", "a.1", "a_1", "b"]
    );
    let page = f
        .store
        .list(&JobFilter {
            limit: 3,
            offset: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(names(page), ["A", "B", "a-1"]);
    let other_account = f
        .store
        .list(&JobFilter {
            account: Some("other".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(names(other_account), ["elsewhere"]);

    f.store.cancel("a.1", t).await.unwrap();
    let cancelled = f
        .store
        .list(&JobFilter {
            state: Some(JobState::Cancelled),
            account: Some("acct".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(names(cancelled), ["a.1"]);
    let none = f
        .store
        .list(&JobFilter {
            state: Some(JobState::Cancelled),
            account: Some("other".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

async fn counts_and_the_metrics_snapshot_agree_with_the_jobs(f: Fixture) {
    let empty = f.store.snapshot().await.unwrap();
    assert!(empty.by_state.is_empty());
    assert_eq!((empty.oldest_waiting_created, empty.next_due), (None, None));

    let t = now_ms();
    insert(&f.store, "q1", t - 300).await;
    let mut atol = new_job("q2", t - 100);
    atol.provider = "atol-kkt".into();
    f.store.insert(&atol).await.unwrap();
    insert(&f.store, "w1", t - 500).await;
    insert(&f.store, "r1", t - 400).await;
    // Oldest due first: w1, then r1.
    let w = claim_one(&f.store, "o", t, 60_000).await;
    assert_eq!(w.name, "w1");
    f.store
        .finish_step(&w.id, "o", &waiting(t + 1_000))
        .await
        .unwrap();
    let r = claim_one(&f.store, "o", t, 60_000).await;
    assert_eq!(r.name, "r1");

    let mut counts = f.store.counts().await.unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        counts,
        [
            (JobState::Queued, 2),
            (JobState::Running, 1),
            (JobState::Waiting, 1)
        ]
    );
    let snapshot = f.store.snapshot().await.unwrap();
    let mut by_state = snapshot.by_state.clone();
    by_state.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
    assert_eq!(
        by_state,
        [
            (JobState::Queued, "1c-fresh".to_string(), 1),
            (JobState::Queued, "atol-kkt".to_string(), 1),
            (JobState::Running, "1c-fresh".to_string(), 1),
            (JobState::Waiting, "1c-fresh".to_string(), 1),
        ]
    );
    assert_eq!(
        snapshot.oldest_waiting_created,
        Some(t - 500),
        "queued or waiting"
    );
    assert_eq!(snapshot.next_due, Some(t - 300));
    f.store.ping().await.unwrap();

    // Through every other kind of change, the counts stay those of the rows.
    let truth = |store: Store| async move {
        let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
        for job in store
            .list(&JobFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
        {
            *by_state.entry(job.state.as_str()).or_default() += 1;
        }
        let mut counts: Vec<(&'static str, u64)> = store
            .counts()
            .await
            .unwrap()
            .into_iter()
            .map(|(s, n)| (s.as_str(), n))
            .collect();
        counts.sort();
        assert_eq!(counts, by_state.into_iter().collect::<Vec<_>>());
    };
    f.store
        .finish_step(&r.id, "o", &finished(JobState::Done, false))
        .await
        .unwrap();
    f.store.cancel("q1", now_ms()).await.unwrap();
    truth(f.store.clone()).await;
    f.store
        .retry("q1", now_ms(), now_ms() + 60_000)
        .await
        .unwrap();
    f.store.cancel("q2", now_ms()).await.unwrap();
    truth(f.store.clone()).await;
    let pruned = f
        .store
        .prune(now_ms() + 1, now_ms() + 1, 100)
        .await
        .unwrap();
    assert_eq!(pruned.len(), 2, "{pruned:?}");
    truth(f.store.clone()).await;
    let snapshot = f.store.snapshot().await.unwrap();
    assert!(
        snapshot.by_state.iter().all(|(_, _, n)| *n > 0),
        "{snapshot:?}"
    );
}

/// The counts by state, provider and account, as counting every job gives them.
async fn counted(store: &Store) -> Vec<(String, String, String, u64)> {
    let all = store
        .list(&JobFilter {
            limit: 10_000,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    let mut groups = std::collections::BTreeMap::new();
    for j in all {
        *groups
            .entry((j.state.as_str().to_string(), j.provider, j.account))
            .or_insert(0) += 1;
    }
    groups
        .into_iter()
        .map(|((s, p, a), n)| (s, p, a, n))
        .collect()
}

/// The store's own counts in the same shape, from the metrics snapshot and
/// the dashboard's account counts, which must agree with each other.
async fn kept(store: &Store) -> Vec<(String, String, String, u64)> {
    let by_provider = store.snapshot().await.unwrap().by_state;
    let by_account = store.account_counts().await.unwrap();
    let by_state = store.counts().await.unwrap();
    let mut rows = Vec::new();
    for (state, provider, n) in &by_provider {
        // Every job of these tests is on one account per provider.
        let account = if provider == "atol-kkt" {
            "second"
        } else {
            "acct"
        };
        rows.push((
            state.as_str().to_string(),
            provider.clone(),
            account.to_string(),
            *n,
        ));
    }
    rows.sort();
    let accounts: u64 = by_account.iter().map(|c| c.count).sum();
    let states: u64 = by_state.iter().map(|(_, n)| n).sum();
    let providers: u64 = by_provider.iter().map(|(_, _, n)| n).sum();
    assert_eq!((accounts, states), (providers, providers));
    for c in &by_account {
        let from_rows: u64 = rows
            .iter()
            .filter(|r| r.0 == c.state.as_str() && r.2 == c.account)
            .map(|r| r.3)
            .sum();
        assert_eq!(c.count, from_rows, "{c:?}");
    }
    rows
}

async fn counts_are_exact_whether_or_not_their_changes_are_folded(f: Fixture) {
    let t = now_ms();
    let mut step = 0;
    // After each change the counts match counting the jobs; on PostgreSQL
    // every other change is folded first, so both the folded counts and the
    // pending changes are read.
    let mut check = async |store: &Store, what: &str| {
        step += 1;
        if step % 2 == 0 {
            store.fold_counts().await.unwrap();
        }
        assert_eq!(kept(store).await, counted(store).await, "after {what}");
    };
    for i in 0..6 {
        insert(&f.store, &format!("a{i}"), t - 1_000 + i).await;
    }
    let mut atol = new_job("b0", t - 2_000);
    atol.provider = "atol-kkt".into();
    atol.account = "second".into();
    f.store.insert(&atol).await.unwrap();
    check(&f.store, "inserts").await;
    let claimed = f.store.claim_due("o", t, t + 60_000, 4).await.unwrap();
    assert_eq!(claimed.len(), 4);
    check(&f.store, "a claim of four").await;
    f.store
        .checkpoint(&claimed[0].id, "o", &json!({"at": 1}))
        .await
        .unwrap();
    check(&f.store, "a checkpoint (no move)").await;
    f.store
        .finish_step(&claimed[0].id, "o", &finished(JobState::Done, false))
        .await
        .unwrap();
    f.store
        .finish_step(&claimed[1].id, "o", &finished(JobState::Failed, false))
        .await
        .unwrap();
    f.store
        .finish_step(&claimed[2].id, "o", &waiting(t + 60_000))
        .await
        .unwrap();
    check(&f.store, "outcomes").await;
    f.store
        .postpone(&claimed[3].id, "o", t + 60_000)
        .await
        .unwrap();
    check(&f.store, "a postponement").await;
    f.store.cancel("a5", now_ms()).await.unwrap();
    f.store
        .retry(&claimed[1].id, now_ms(), now_ms() + 60_000)
        .await
        .unwrap();
    check(&f.store, "cancel and retry").await;
    f.store
        .prune(now_ms() + 1, now_ms() + 1, 100)
        .await
        .unwrap();
    check(&f.store, "pruning").await;
    f.store.fold_counts().await.unwrap();
    assert_eq!(
        f.store.fold_counts().await.unwrap(),
        0,
        "nothing left to fold"
    );
    assert_eq!(kept(&f.store).await, counted(&f.store).await);
}

async fn the_dashboards_hours_and_account_counts_follow_every_change(f: Fixture) {
    let hour = |at: Millis| at / 3_600_000 * 3_600_000;
    let ids = finish_jobs(
        &f.store,
        &[
            ("d1", JobState::Done, false),
            ("d2", JobState::Done, false),
            ("f1", JobState::Failed, false),
            ("w1", JobState::Waiting, false),
        ],
    )
    .await;
    let now = now_ms();
    let hours = f
        .store
        .finished_per_hour(now - 24 * 3_600_000)
        .await
        .unwrap();
    let total = |hours: &[docfetch::store::views::HourCount]| {
        hours
            .iter()
            .fold((0, 0), |(d, x), h| (d + h.done, x + h.failed))
    };
    assert_eq!(total(&hours), (2, 1), "{hours:?}");
    assert!(hours.iter().all(|h| h.hour == hour(h.hour)));
    assert!(
        hours
            .iter()
            .any(|h| h.hour == hour(now) || h.hour == hour(now - 60_000))
    );
    // A failed job retried and then done moves from one count to the other.
    f.store
        .retry(&ids["f1"], now_ms(), now_ms() + 60_000)
        .await
        .unwrap();
    let hours = f
        .store
        .finished_per_hour(now - 24 * 3_600_000)
        .await
        .unwrap();
    assert_eq!(total(&hours), (2, 0), "{hours:?}");
    claim_one(&f.store, "o", now_ms(), 60_000).await;
    f.store
        .finish_step(&ids["f1"], "o", &finished(JobState::Done, false))
        .await
        .unwrap();
    let hours = f
        .store
        .finished_per_hour(now - 24 * 3_600_000)
        .await
        .unwrap();
    assert_eq!(total(&hours), (3, 0), "{hours:?}");
    let mut other = new_job("other-account", now_ms());
    other.account = "second".into();
    f.store.insert(&other).await.unwrap();
    // Nothing from before the window.
    let later = f
        .store
        .finished_per_hour(now + 2 * 3_600_000)
        .await
        .unwrap();
    assert_eq!(total(&later), (0, 0));

    let n = |account: &str, state: JobState, counts: &[docfetch::store::views::AccountCount]| {
        counts
            .iter()
            .filter(|c| c.account == account && c.state == state)
            .map(|c| c.count)
            .sum::<u64>()
    };
    let accounts = f.store.account_counts().await.unwrap();
    assert_eq!(
        (
            n("acct", JobState::Done, &accounts),
            n("acct", JobState::Waiting, &accounts),
            n("acct", JobState::Failed, &accounts),
            n("second", JobState::Queued, &accounts),
        ),
        (3, 1, 0, 1),
        "{accounts:?}"
    );
    assert!(accounts.iter().all(|c| c.count > 0), "{accounts:?}");
    // Pruning takes the done jobs out of both.
    f.store
        .prune(now_ms() + 1, now_ms() + 1, 100)
        .await
        .unwrap();
    let accounts = f.store.account_counts().await.unwrap();
    assert_eq!(n("acct", JobState::Done, &accounts), 0, "{accounts:?}");
    assert_eq!(n("acct", JobState::Waiting, &accounts), 1);
    let hours = f
        .store
        .finished_per_hour(now - 24 * 3_600_000)
        .await
        .unwrap();
    assert_eq!(total(&hours), (0, 0), "{hours:?}");
}

async fn completion_hooks_are_claimed_held_and_finished(f: Fixture) {
    let mut ids = Vec::new();
    for name in ["h1", "h2", "h3"] {
        let j = insert(&f.store, name, now_ms()).await;
        claim_one(&f.store, "o", now_ms(), 60_000).await;
        // h3 has no hooks.
        let t = finished(JobState::Done, name != "h3");
        f.store.finish_step(&j.id, "o", &t).await.unwrap();
        ids.push(j.id);
    }
    let now = now_ms();
    assert!(f.store.next_hooks_at().await.unwrap().unwrap() <= now);
    let claimed = f.store.claim_hooks(now, now + 10_000, 10).await.unwrap();
    let mut names: Vec<String> = claimed.iter().map(|j| j.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["h1", "h2"]);
    assert!(
        f.store
            .claim_hooks(now, now + 10_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "held hooks are not handed out twice"
    );
    assert_eq!(f.store.next_hooks_at().await.unwrap(), Some(now + 10_000));

    f.store.finish_hooks(&ids[0], "done", 1, 0).await.unwrap();
    f.store
        .finish_hooks(&ids[1], "pending", 2, now + 20_000)
        .await
        .unwrap();
    let h1 = job(&f.store, &ids[0]).await;
    assert_eq!(
        (h1.hooks_state.as_deref(), h1.hooks_attempts),
        (Some("done"), 1)
    );
    // Only pending hooks can be finished.
    f.store.finish_hooks(&ids[0], "failed", 9, 0).await.unwrap();
    assert_eq!(
        job(&f.store, &ids[0]).await.hooks_state.as_deref(),
        Some("done")
    );
    assert_eq!(f.store.next_hooks_at().await.unwrap(), Some(now + 20_000));
    assert!(
        f.store
            .claim_hooks(now + 19_999, now + 30_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = f
        .store
        .claim_hooks(now + 20_000, now + 30_000, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].name.as_str(), again[0].hooks_attempts), ("h2", 2));
    f.store.finish_hooks(&ids[1], "failed", 3, 0).await.unwrap();
    assert_eq!(f.store.next_hooks_at().await.unwrap(), None);
    assert_eq!(job(&f.store, &ids[2]).await.hooks_state, None);
}

async fn old_finished_jobs_are_pruned_with_their_history_unless_hooks_are_pending(f: Fixture) {
    let ids = finish_jobs(
        &f.store,
        &[
            ("done-old", JobState::Done, false),
            ("done-hooks", JobState::Done, true),
            ("failed-old", JobState::Failed, false),
            ("cancel-old", JobState::Cancelled, false),
        ],
    )
    .await;
    let mut cut = 0;
    for id in ids.values() {
        cut = cut.max(job(&f.store, id).await.finished_at.unwrap() + 1);
    }
    wait_until(
        Duration::from_secs(5),
        "the clock to pass the cut-off",
        || async { (now_ms() >= cut).then_some(()) },
    )
    .await;
    let newer = finish_jobs(
        &f.store,
        &[
            ("done-new", JobState::Done, false),
            ("failed-new", JobState::Failed, false),
            ("live", JobState::Waiting, false),
        ],
    )
    .await;

    // Each state has its own cut-off.
    assert_eq!(f.store.prune(cut, 0, 100).await.unwrap(), ["done-old"]);
    let first = f.store.prune(cut, cut, 1).await.unwrap();
    assert_eq!(first.len(), 1, "at most `limit` at a time: {first:?}");
    let rest = f.store.prune(cut, cut, 100).await.unwrap();
    let mut pruned: Vec<String> = first.into_iter().chain(rest).collect();
    pruned.sort();
    assert_eq!(pruned, ["cancel-old", "failed-old"]);
    for name in ["cancel-old", "done-old", "failed-old"] {
        assert!(f.store.find(name).await.unwrap().is_none());
        assert!(
            f.store.events(&ids[name]).await.unwrap().is_empty(),
            "{name}'s history went with it"
        );
    }
    for name in newer.keys().chain(["done-hooks"].iter()) {
        assert!(f.store.find(name).await.unwrap().is_some(), "{name} stays");
    }
    // Once its hooks have run, the job goes too.
    f.store
        .finish_hooks(&ids["done-hooks"], "done", 1, 0)
        .await
        .unwrap();
    assert_eq!(f.store.prune(cut, cut, 100).await.unwrap(), ["done-hooks"]);
}

/// Inserts and ends each job as given; returns their ids by name.
async fn finish_jobs(
    store: &Store,
    jobs: &[(&'static str, JobState, bool)],
) -> BTreeMap<&'static str, String> {
    let mut ids = BTreeMap::new();
    for &(name, state, hooks) in jobs {
        let j = insert(store, name, now_ms()).await;
        if state == JobState::Cancelled {
            store.cancel(&j.id, now_ms()).await.unwrap();
        } else {
            claim_one(store, "o", now_ms(), 60_000).await;
            let t = if state == JobState::Waiting {
                waiting(now_ms() + 60_000)
            } else {
                finished(state, hooks)
            };
            store.finish_step(&j.id, "o", &t).await.unwrap();
        }
        ids.insert(name, j.id);
    }
    ids
}

async fn a_schedules_last_firing_only_moves_forward(f: Fixture) {
    assert_eq!(f.store.last_fire("daily").await.unwrap(), None);
    f.store.set_last_fire("daily", 1_000).await.unwrap();
    f.store.set_last_fire("daily", 500).await.unwrap();
    assert_eq!(f.store.last_fire("daily").await.unwrap(), Some(1_000));
    f.store.set_last_fire("daily", 2_000).await.unwrap();
    f.store.set_last_fire("hourly", 7).await.unwrap();
    assert_eq!(f.store.last_fire("daily").await.unwrap(), Some(2_000));
    assert_eq!(
        f.store.schedule_runs().await.unwrap(),
        [("daily".to_string(), 2_000), ("hourly".to_string(), 7)]
    );
    // The job of the latest occurrence: an older one noted late does not
    // replace it, and noting does not move the considered-up-to mark.
    f.store
        .note_schedule_job("daily", "daily-b", 1_500)
        .await
        .unwrap();
    f.store
        .note_schedule_job("daily", "daily-a", 1_200)
        .await
        .unwrap();
    assert_eq!(f.store.last_fire("daily").await.unwrap(), Some(2_000));
    // A schedule fired before the loop first looked at it starts there.
    f.store
        .note_schedule_job("weekly", "weekly-a", 900)
        .await
        .unwrap();
    assert_eq!(f.store.last_fire("weekly").await.unwrap(), Some(900));
    let last: Vec<(String, String, i64)> = f
        .store
        .schedule_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.schedule, l.job, l.at))
        .collect();
    assert_eq!(
        last,
        [
            ("daily".to_string(), "daily-b".to_string(), 1_500),
            ("weekly".to_string(), "weekly-a".to_string(), 900),
        ]
    );
}

async fn concurrent_claimers_on_separate_handles_never_share_a_job(f: Fixture) {
    const JOBS: usize = 300;
    let t = now_ms();
    for i in 0..JOBS {
        insert(&f.store, &format!("j{i:03}"), t - i as i64).await;
    }
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(f.another_handle().await);
    }
    // The claimers claim in rounds, all starting each round together, so
    // their claims really overlap (left to run freely, one SQLite handle can
    // take every job before the others get the write lock).
    const BATCH: usize = 7;
    let rounds = JOBS.div_ceil(BATCH * handles.len()) + 1;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(handles.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for (worker, store) in handles.into_iter().enumerate() {
        let start = start.clone();
        tasks.spawn(async move {
            let owner = format!("w{worker}");
            let mut mine = Vec::new();
            for _ in 0..rounds {
                start.wait().await;
                let claimed = store
                    .claim_due(&owner, now_ms(), now_ms() + 60_000, BATCH as u32)
                    .await
                    .expect("claim");
                mine.extend(claimed.into_iter().map(|j| j.id));
            }
            (owner, mine)
        });
    }
    let mut seen = HashSet::new();
    let mut claimers = 0;
    while let Some(joined) = tasks.join_next().await {
        let (owner, mine) = joined.unwrap();
        claimers += usize::from(!mine.is_empty());
        for id in mine {
            assert_eq!(
                job(&f.store, &id).await.lease_owner.as_deref(),
                Some(owner.as_str()),
                "the lease is the claimer's"
            );
            assert!(seen.insert(id), "a job was claimed twice");
        }
    }
    assert_eq!(seen.len(), JOBS, "every job was claimed");
    assert!(claimers >= 2, "the claimers actually overlapped");
    let running = f
        .store
        .list(&JobFilter {
            state: Some(JobState::Running),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.len(), JOBS);
    assert!(running.iter().all(|j| j.steps == 1));
}

async fn another_handles_commit_changes_the_change_counter(f: Fixture) {
    let other = f.another_handle().await;
    let before = f.store.change_counter().await.unwrap();
    other
        .insert(&new_job("from-elsewhere", now_ms()))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the change counter to move",
        || async { (f.store.change_counter().await.unwrap() != before).then_some(()) },
    )
    .await;
}

async fn a_copy_from_sqlite_brings_everything_and_a_second_copy_adds_nothing(to: Fixture) {
    let from = Fixture::sqlite().await;
    let s = &from.store;
    let t = now_ms();
    let mut fancy = new_job("fancy", t - 10);
    fancy.params = json!({"b": [1.5, -0.0, 1e300, "nul\u{0}"], "a": {"ключ": "значение"}});
    fancy.hooks = Some(Hooks {
        on_done: Some(HookRef::Named("import".into())),
        on_failed: Some(HookRef::Command(vec!["/bin/true".into()])),
        ..Default::default()
    });
    s.insert(&fancy).await.unwrap();
    for name in ["running", "waiting", "failed", "cancelled"] {
        insert(s, name, t).await;
    }
    // fancy (the oldest) is done with hooks pending, held by a hook runner.
    let j = claim_one(s, "o", t - 10, 60_000).await;
    s.finish_step(&j.id, "o", &finished(JobState::Done, true))
        .await
        .unwrap();
    s.claim_hooks(now_ms(), t + 77_000, 10).await.unwrap();
    for claimed in s.claim_due("o", t, t + 60_000, 10).await.unwrap() {
        match claimed.name.as_str() {
            "waiting" => {
                s.finish_step(&claimed.id, "o", &waiting(t + 5_000))
                    .await
                    .unwrap();
            }
            "failed" => {
                s.finish_step(&claimed.id, "o", &finished(JobState::Failed, false))
                    .await
                    .unwrap();
            }
            "cancelled" => {
                s.cancel(&claimed.id, t).await.unwrap();
            }
            _ => {} // "running" keeps its lease
        }
    }
    insert(s, "queued", t + 1).await;
    insert(s, "taken", t + 1).await;
    s.add_event(&j.id, "hook", "on_done ran (exit 0)")
        .await
        .unwrap();
    s.set_last_fire("daily", t - 86_400_000).await.unwrap();
    s.set_last_fire("hourly", t - 3_600_000).await.unwrap();
    // The target already has a different job named "taken".
    insert(&to.store, "taken", t).await;

    let report = docfetch::store::copy::copy(s, &to.store).await.unwrap();
    assert_eq!(report.jobs_copied, 6);
    assert_eq!(report.jobs_skipped, 0);
    assert_eq!(report.name_conflicts, ["taken"]);
    assert_eq!(report.schedules_copied, 2);
    let source_events = total_events(s).await;
    let taken_events = s.events(&job(s, "taken").await.id).await.unwrap().len() as u64;
    assert_eq!(report.events_copied, source_events - taken_events);

    let exported = |store: Store| async move {
        let mut all: BTreeMap<String, (StoredJob, Vec<JobEvent>)> = BTreeMap::new();
        for stored in store.export_jobs(None, 1_000).await.unwrap() {
            let events = store.events(&stored.job.id).await.unwrap();
            all.insert(stored.job.id.clone(), (stored, events));
        }
        all
    };
    let source = exported(s.clone()).await;
    let target = exported(to.store.clone()).await;
    for (id, (stored, events)) in &source {
        if stored.job.name == "taken" {
            assert!(!target.contains_key(id), "a name conflict is not copied");
            continue;
        }
        let (copied, copied_events) = &target[id];
        assert_eq!(
            copied, stored,
            "{} is copied column for column",
            stored.job.name
        );
        assert_eq!(copied_events, events, "{}'s history", stored.job.name);
    }
    let fancy_copied = &target[&fancy.id].0;
    assert_eq!(fancy_copied.job.params, fancy.params);
    assert_eq!(fancy_copied.hooks_next_at, Some(t + 77_000));
    assert_eq!(fancy_copied.job.hooks_state.as_deref(), Some("pending"));
    assert_eq!(
        to.store.schedule_runs().await.unwrap(),
        s.schedule_runs().await.unwrap()
    );
    assert_eq!(
        job(&to.store, "running").await.lease_owner.as_deref(),
        Some("o")
    );

    let again = docfetch::store::copy::copy(s, &to.store).await.unwrap();
    assert_eq!(again.jobs_copied, 0);
    assert_eq!(again.jobs_skipped, 6);
    assert_eq!(again.events_copied, 0);
    assert_eq!(again.name_conflicts, ["taken"]);
    assert_eq!(exported(to.store.clone()).await.len(), target.len());
}

async fn total_events(store: &Store) -> u64 {
    let mut n = 0;
    for j in store.list(&JobFilter::default()).await.unwrap() {
        n += store.events(&j.id).await.unwrap().len() as u64;
    }
    n
}

// ---------------------------------------------------------------------------
// PostgreSQL only

async fn pg_fixture() -> Option<(TestDb, Store)> {
    let db = TestDb::create().await?;
    let store = Store::open(&db.url()).await.expect("postgres store opens");
    Some((db, store))
}

fn pg_pool(store: &Store) -> sqlx::PgPool {
    match store {
        Store::Postgres(pg) => pg.pool().clone(),
        Store::Sqlite(_) => panic!("a PostgreSQL store was expected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_daemons_starting_together_on_a_fresh_database_migrate_it_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let url = db.url();
    let opens = (0..4).map(|_| Store::open(&url));
    let stores: Vec<Store> = futures_util::future::join_all(opens)
        .await
        .into_iter()
        .map(|opened| opened.expect("every daemon starts"))
        .collect();
    for store in &stores {
        store.ping().await.unwrap();
    }
    let applied: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&pg_pool(&stores[0]))
            .await
            .unwrap();
    assert_eq!(
        applied,
        crate::store::migration_versions("postgres"),
        "each migration applied once"
    );
    // Nobody kept the migration lock.
    let locks: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM pg_locks
         WHERE locktype = 'advisory'
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&pg_pool(&stores[0]))
    .await
    .unwrap();
    assert_eq!(locks.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_claims_walk_the_due_index_without_sorting() {
    let Some((_db, store)) = pg_fixture().await else {
        return;
    };
    let pool = pg_pool(&store);
    // Many finished jobs and a few thousand live ones, as a busy store holds.
    sqlx::query(
        "INSERT INTO jobs (id, name, account, provider, operation, params, state, next_run_at,
                           created_at, updated_at, deadline_at, source, request_sha256, finished_at)
         SELECT 'id' || i, 'job' || i, 'acct', '1c-fresh', 'op', '{}',
                CASE WHEN i % 20 = 0 THEN 'waiting' ELSE 'done' END,
                i * 1000, i, i, i + 1000000, 'test', '', i
         FROM generate_series(1, 60000) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE jobs").execute(&pool).await.unwrap();
    let explain = format!(
        "EXPLAIN {}",
        docfetch::store::postgres::DUE_JOBS
            .replace("$3", "30000000")
            .replace("$4", "16")
    );
    let plan: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(explain))
        .fetch_all(&pool)
        .await
        .unwrap();
    let plan: Vec<String> = plan.into_iter().map(|r| r.0).collect();
    assert!(plan.iter().any(|p| p.contains("jobs_due")), "{plan:#?}");
    assert!(!plan.iter().any(|p| p.contains("Sort")), "{plan:#?}");
    let claimed = store
        .claim_due("o", 30_000_000, 30_060_000, 16)
        .await
        .unwrap();
    let due: Vec<Millis> = claimed.iter().map(|j| j.next_run_at).collect();
    assert_eq!(due, (1..=16).map(|k| k * 20_000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_work_announced_by_another_daemon_wakes_an_idle_one() {
    use futures_util::FutureExt;
    let Some((db, a)) = pg_fixture().await else {
        return;
    };
    let b = Store::open(&db.url()).await.unwrap();
    let counter = || async { a.change_counter().await.unwrap() };
    let before = counter().await;
    let j = b.insert(&new_job("news", now_ms())).await.unwrap();
    assert!(notified(a.wakeup()).await, "an insert wakes the scheduler");
    assert!(counter().await > before);

    // A poll due later moves the change counter, which an idle scheduler
    // reads once a second, but wakes nobody.
    claim_one(&b, "b", now_ms(), 60_000).await;
    let before = counter().await;
    b.finish_step(&j.id, "b", &waiting(now_ms() + 60_000))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the counter to move", || async {
        (counter().await > before).then_some(())
    })
    .await;
    assert!(
        a.wakeup().notified().now_or_never().is_none(),
        "work due later wakes nobody"
    );
    // Work due now wakes the scheduler.
    claim_one(&b, "b", now_ms() + 60_000, 60_000).await;
    b.finish_step(&j.id, "b", &waiting(now_ms())).await.unwrap();
    assert!(
        notified(a.wakeup()).await,
        "work due now wakes the scheduler"
    );

    claim_one(&b, "b", now_ms(), 60_000).await;
    b.finish_step(&j.id, "b", &finished(JobState::Done, true))
        .await
        .unwrap();
    assert!(
        notified(a.hooks_wakeup()).await,
        "pending hooks wake the hook runner"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_the_listener_comes_back_after_its_connection_is_killed() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a = Store::open(&db.url_as("listener-a")).await.unwrap();
    let b = Store::open(&db.url_as("writer-b")).await.unwrap();
    let pool = pg_pool(&b);
    let listener_pid = || {
        let pool = pool.clone();
        async move {
            let pid: Option<(i32,)> = sqlx::query_as(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'listener-a'
                   AND query LIKE 'LISTEN%'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap();
            pid.map(|p| p.0)
        }
    };
    let old = wait_until(Duration::from_secs(10), "a's LISTEN connection", || {
        listener_pid()
    })
    .await;
    let before = a.change_counter().await.unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(old)
        .execute(&pool)
        .await
        .unwrap();
    let new = wait_until(Duration::from_secs(20), "a to listen again", || async {
        listener_pid().await.filter(|pid| *pid != old)
    })
    .await;
    assert_ne!(new, old);
    let restored = a.change_counter().await.unwrap();
    assert!(restored > before, "a lost connection counts as a change");
    b.insert(&new_job("after-the-cut", now_ms())).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the announcement on the new connection",
        || async { (a.change_counter().await.unwrap() > restored).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn pg_the_password_never_appears_in_errors() {
    let Ok(admin) = std::env::var(PG_ENV) else {
        crate::support::evidence::skip(&format!("{PG_ENV} is not set"));
        return;
    };
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path("/docfetch_test_does_not_exist");
    let _ = url.set_password(Some("s3cret-pw"));
    let err = Store::open(url.as_str())
        .await
        .err()
        .expect("no such database");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(text.contains("***"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_serialization_failures_count_as_transient_and_unique_violations_do_not() {
    let Some((_db, store)) = pg_fixture().await else {
        return;
    };
    let pool = pg_pool(&store);
    sqlx::query("CREATE TABLE t (id INT PRIMARY KEY, v INT)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1, 0)")
        .execute(&pool)
        .await
        .unwrap();
    let mut first = pool.begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *first)
        .await
        .unwrap();
    sqlx::query("SELECT v FROM t")
        .execute(&mut *first)
        .await
        .unwrap();
    sqlx::query("UPDATE t SET v = 1")
        .execute(&pool)
        .await
        .unwrap();
    let err = sqlx::query("UPDATE t SET v = 2")
        .execute(&mut *first)
        .await
        .unwrap_err();
    let err = StoreError::from(err);
    assert!(err.is_transient(), "40001 is worth retrying: {err}");
    drop(first);

    let dup = sqlx::query("INSERT INTO t VALUES (1, 0)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(!StoreError::from(dup).is_transient(), "23505 is not");
    let sqlstate = docfetch::store::is_transient_sqlstate;
    assert!(sqlstate("40P01") && sqlstate("57P01") && sqlstate("08006"));
    assert!(!sqlstate("23505") && !sqlstate("42P01") && !sqlstate("53100"));
}

/// Account-wide limits across daemons: slots are counted for the whole
/// fleet, a dead daemon's slots lapse with its leases, and a pause one daemon
/// records holds for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_account_slots_and_pauses_hold_across_daemons() {
    use docfetch::store::SlotGrant;
    let Some((db, a)) = pg_fixture().await else {
        return;
    };
    let b = Store::open(&db.url()).await.unwrap();
    let now = now_ms();
    for name in ["s1", "s2", "s3"] {
        insert(&a, name, now).await;
    }
    // Two jobs run on daemon a, one on daemon b; the account allows two.
    let j1 = claim_one(&a, "a", now, 60_000).await;
    let j2 = claim_one(&a, "a", now, 1_000).await;
    let j3 = claim_one(&b, "b", now, 60_000).await;
    let take = |store: &Store, job: &Job, owner: &'static str, at: Millis| {
        let (store, id) = (store.clone(), job.id.clone());
        async move {
            store
                .take_account_slot("acct", &id, owner, 2, at)
                .await
                .unwrap()
        }
    };
    assert_eq!(take(&a, &j1, "a", now).await, SlotGrant::Granted);
    assert_eq!(take(&a, &j2, "a", now).await, SlotGrant::Granted);
    assert_eq!(
        take(&b, &j3, "b", now).await,
        SlotGrant::Busy,
        "two are held"
    );
    // Taking again for a job that holds a slot keeps it (a retried call).
    assert_eq!(take(&a, &j1, "a", now).await, SlotGrant::Granted);
    // A released slot is free for the other daemon.
    a.release_account_slot("acct", &j1.id, "a").await.unwrap();
    assert_eq!(take(&b, &j3, "b", now).await, SlotGrant::Granted);
    b.release_account_slot("acct", &j3.id, "b").await.unwrap();
    // j2's lease (1 s) runs out without a release, as when daemon a dies:
    // its slot stops counting then, and not before.
    insert(&a, "s4", now).await;
    let j4 = claim_one(&b, "b", now, 60_000).await;
    assert_eq!(take(&b, &j4, "b", now).await, SlotGrant::Granted);
    assert_eq!(take(&b, &j3, "b", now + 500).await, SlotGrant::Busy);
    assert_eq!(take(&b, &j3, "b", now + 2_000).await, SlotGrant::Granted);
    // Other accounts are not affected.
    assert_eq!(
        b.take_account_slot("other", &j1.id, "b", 1, now)
            .await
            .unwrap(),
        SlotGrant::Granted
    );

    // A pause recorded by one daemon is seen by the other, a shorter one
    // does not shorten it, and it ends when it says.
    a.cool_down_account("acct", now + 30_000).await.unwrap();
    a.cool_down_account("acct", now + 10_000).await.unwrap();
    assert_eq!(
        take(&b, &j4, "b", now + 1_000).await,
        SlotGrant::Cooling(now + 30_000)
    );
    assert_eq!(take(&b, &j4, "b", now + 30_001).await, SlotGrant::Granted);
}
