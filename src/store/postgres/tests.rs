//! Group commit on PostgreSQL answers each write as if it ran alone: a
//! compare-and-set that fails gives its own caller a conflict and no one
//! else, a claim sees the outcomes queued before it, and a batch that fails
//! as a whole is retried write by write. Runs on the server named by
//! `DOCFETCH_TEST_POSTGRES_URL`, each test in a database of its own.

use super::write::{PendingWrite, WriteOp, Writer, Written, apply_batch, write_loop};
use super::*;
use crate::job::{EventKind, now_ms};

const PG_ENV: &str = "DOCFETCH_TEST_POSTGRES_URL";

/// A database of its own, dropped when this goes (even on a panic). Its
/// name has the prefix of the integration tests' databases, whose next run
/// drops it if this process was killed first.
struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    /// A fresh database, or `None` (after saying so) without a server;
    /// under `CI=true` a missing server fails the test instead.
    async fn create() -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(PG_ENV) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{PG_ENV} is not set; under CI=true that fails the test instead of skipping it"
            );
            println!("SKIPPED: {PG_ENV} is not set");
            return None;
        };
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let name = format!(
            "docfetch_test_{secs}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        admin(&admin_url, &format!("CREATE DATABASE {name}")).await;
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&format!("/{name}"));
        Some(TestDb {
            admin_url,
            name,
            url: url.to_string(),
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside async code: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(admin(
                &admin_url,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ));
        })
        .join();
    }
}

async fn admin(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .unwrap();
}

fn new_job(name: &str, id: &str) -> NewJob {
    let now = now_ms();
    NewJob {
        id: id.into(),
        name: name.into(),
        account: "a".into(),
        provider: "1c-fresh".into(),
        operation: "o".into(),
        params: serde_json::json!({}),
        source: "api".into(),
        request_sha256: "0".repeat(64),
        created_at: now,
        deadline_at: now + 3_600_000,
        hooks: None,
    }
}

fn insert(name: &str) -> WriteOp {
    insert_as(name, &format!("id-{name}"))
}

/// A new job named `name` whose id is `id` (to clash with another's).
fn insert_as(name: &str, id: &str) -> WriteOp {
    WriteOp::Insert {
        job: Box::new(new_job(name, id)),
        params: "{}".into(),
        hooks: None,
    }
}

fn claim(owner: &str) -> WriteOp {
    let now = now_ms();
    WriteOp::Claim {
        owner: owner.into(),
        now,
        lease_until: now + 60_000,
        limit: 10,
    }
}

fn checkpoint(name: &str, owner: &str, cursor: &str) -> WriteOp {
    WriteOp::Checkpoint {
        id: format!("id-{name}"),
        owner: owner.into(),
        cursor: cursor.into(),
    }
}

fn finish(name: &str, owner: &str, state: JobState) -> WriteOp {
    WriteOp::Finish {
        id: format!("id-{name}"),
        owner: owner.into(),
        transition: Box::new(Transition {
            state,
            cursor: serde_json::json!({"n": 1}),
            // Due at once when waiting, so a claim may take it again.
            next_run_at: now_ms() - 1,
            attempts: 0,
            polls: 0,
            last_error: None,
            result: None,
            event: (EventKind::Poll, "not ready".into()),
            detail: None,
            hooks_pending: false,
        }),
        result: None,
    }
}

fn settle(name: &str, owner: &str) -> WriteOp {
    WriteOp::Settle {
        id: format!("id-{name}"),
        owner: owner.into(),
        settlement: Box::new(Settlement {
            cursor: serde_json::json!({"settled": true}),
            result: None,
            last_error: Some("gave up".into()),
            attempts: 3,
            finished_at: now_ms(),
        }),
        result: None,
    }
}

fn writer(store: &PgStore) -> Writer {
    Writer {
        pool: store.pool().clone(),
        instance: "test".into(),
    }
}

/// What a write got back, in a word or two.
fn named(written: &Written) -> String {
    match written {
        Written::Job(job) => format!("job {} {}", job.name, job.state),
        Written::Jobs(jobs) => {
            let mut names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
            names.sort_unstable();
            format!("claimed {}", names.join(","))
        }
        Written::Row => "row".into(),
        Written::Nothing => "nothing".into(),
        Written::Grant(0) => "granted".into(),
        Written::Grant(answer) => format!("refused {answer}"),
    }
}

/// Applies `ops` as one committed batch and names what each got back.
async fn batch(store: &PgStore, ops: &[WriteOp]) -> Vec<String> {
    let refs: Vec<&WriteOp> = ops.iter().collect();
    let written = apply_batch(&writer(store), &refs).await.unwrap();
    written.iter().map(named).collect()
}

/// Queues `ops` before the writer starts, so that it takes them as one
/// batch, and returns each caller's answer.
async fn through_the_writer(
    store: &PgStore,
    ops: Vec<WriteOp>,
) -> Vec<Result<Written, StoreError>> {
    let (queue, receiver) = mpsc::channel(ops.len());
    let mut answers = Vec::new();
    for op in ops {
        let (reply, answer) = oneshot::channel();
        queue.try_send(PendingWrite { op, reply }).unwrap();
        answers.push(answer);
    }
    // The loop ends once the queue is empty and its sender gone.
    drop(queue);
    write_loop(writer(store), receiver).await;
    let mut results = Vec::new();
    for answer in answers {
        results.push(answer.await.unwrap());
    }
    results
}

async fn history(store: &PgStore, id: &str) -> Vec<String> {
    store
        .events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

#[tokio::test]
async fn a_finish_under_a_lost_lease_gets_its_conflict_and_the_rest_of_its_batch_commits() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::open(&db.url).await.unwrap();
    let got = batch(&store, &[insert("a"), insert("b"), insert("c"), claim("o")]).await;
    assert_eq!(
        got,
        [
            "job a queued",
            "job b queued",
            "job c queued",
            "claimed a,b,c"
        ]
    );

    // `b` is finished by a daemon whose lease it no longer holds.
    let answers = through_the_writer(
        &store,
        vec![
            finish("a", "o", JobState::Done),
            finish("b", "someone-else", JobState::Done),
            finish("c", "o", JobState::Waiting),
        ],
    )
    .await;
    let answers: Vec<String> = answers
        .iter()
        .map(|a| a.as_ref().map_or_else(|e| format!("error {e}"), named))
        .collect();
    assert_eq!(answers, ["job a done", "nothing", "job c waiting"]);
    // The public call turns "nothing" into the caller's conflict.
    let t = Transition::finish(
        &store.find("b").await.unwrap().unwrap(),
        JobState::Done,
        "done".into(),
        false,
    );
    let err = store
        .finish_step("id-b", "someone-else", &t)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");

    let b = store.find("b").await.unwrap().unwrap();
    assert_eq!(
        (b.state, b.lease_owner.as_deref()),
        (JobState::Running, Some("o"))
    );
    assert_eq!(history(&store, "id-a").await, ["accepted", "poll"]);
    assert_eq!(
        history(&store, "id-b").await,
        ["accepted"],
        "no history for the outcome that failed"
    );
    assert_eq!(history(&store, "id-c").await, ["accepted", "poll"]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_claim_in_a_batch_sees_the_outcomes_queued_before_it_and_not_those_after() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::open(&db.url).await.unwrap();
    let got = batch(&store, &[insert("a"), insert("b"), claim("o")]).await;
    assert_eq!(got, ["job a queued", "job b queued", "claimed a,b"]);

    // `a` checkpoints and goes back to waiting (due at once) before the
    // claim; `b` settles before it, and finishes after it. Two checkpoints
    // of one job in one batch apply one after the other.
    let got = batch(
        &store,
        &[
            checkpoint("a", "o", "{\"c\":1}"),
            checkpoint("a", "o", "{\"c\":2}"),
            finish("a", "o", JobState::Waiting),
            settle("b", "o"),
            claim("p"),
            finish("b", "o", JobState::Failed),
            finish("a", "o", JobState::Done),
        ],
    )
    .await;
    assert_eq!(
        got,
        [
            "row",
            "row",
            "job a waiting",
            "row",
            "claimed a",
            "job b failed",
            "nothing"
        ]
    );
    let a = store.find("a").await.unwrap().unwrap();
    assert_eq!(
        (a.state, a.lease_owner.as_deref(), a.steps),
        (JobState::Running, Some("p"), 2)
    );
    let b = store.find("b").await.unwrap().unwrap();
    // The outcome keeps the end time the settlement stored.
    assert_eq!(b.state, JobState::Failed);
    assert!(b.finished_at.is_some());
    // A new job and a duplicate of its name in the same batch.
    let got = batch(&store, &[insert("c"), insert_as("c", "id-c2")]).await;
    assert_eq!(got, ["job c queued", "nothing"]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_batch_that_fails_whole_is_applied_write_by_write_and_only_the_write_at_fault_fails() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::open(&db.url).await.unwrap();
    assert_eq!(
        batch(&store, &[insert("a"), claim("o")]).await,
        ["job a queued", "claimed a"]
    );
    // A new job whose id is taken fails the whole statement, so the batch.
    let answers = through_the_writer(
        &store,
        vec![
            finish("a", "o", JobState::Done),
            insert_as("b", "id-a"),
            insert("c"),
        ],
    )
    .await;
    assert!(matches!(&answers[0], Ok(Written::Job(job)) if job.state == JobState::Done));
    assert!(
        matches!(&answers[1], Err(StoreError::Database(_))),
        "{:?}",
        answers[1].as_ref().err()
    );
    assert!(matches!(&answers[2], Ok(Written::Job(job)) if job.name == "c"));
    assert!(store.find("b").await.unwrap().is_none());
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_slot_released_in_a_batch_is_free_for_the_next_take() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::open(&db.url).await.unwrap();
    assert_eq!(
        batch(&store, &[insert("a"), insert("b"), claim("o")]).await[2],
        "claimed a,b"
    );
    let now = now_ms();
    let take = |job: &'static str| store.take_account_slot("acct", job, "o", 1, now);
    assert_eq!(take("id-a").await.unwrap(), SlotGrant::Granted);
    assert_eq!(
        take("id-b").await.unwrap(),
        SlotGrant::Busy,
        "the limit is one"
    );
    // The release rides in a batch with other writes; `a` is still
    // running under its lease, so only the release frees its slot.
    let release = WriteOp::ReleaseSlot {
        account: "acct".into(),
        job_id: "id-a".into(),
        owner: "o".into(),
    };
    let got = batch(&store, &[checkpoint("a", "o", "{}"), release]).await;
    assert_eq!(got, ["row", "row"]);
    assert_eq!(take("id-b").await.unwrap(), SlotGrant::Granted);
    store.close().await.unwrap();
}

#[tokio::test]
async fn slots_taken_in_one_batch_honour_the_limit_among_themselves() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::open(&db.url).await.unwrap();
    let got = batch(&store, &[insert("a"), insert("b"), insert("c"), claim("o")]).await;
    assert_eq!(got[3], "claimed a,b,c");
    let take = |job: &str, account: &str| WriteOp::TakeSlot {
        account: account.into(),
        job_id: job.into(),
        owner: "o".into(),
        limit: 1,
        now: now_ms(),
    };
    // Accounts out of order in the queue; each answer goes to its caller.
    let got = batch(
        &store,
        &[take("id-a", "y"), take("id-b", "x"), take("id-c", "y")],
    )
    .await;
    assert_eq!(got, ["granted", "granted", "refused -1"]);
    // A release earlier in the same batch frees the slot for a take in it.
    let release = WriteOp::ReleaseSlot {
        account: "y".into(),
        job_id: "id-a".into(),
        owner: "o".into(),
    };
    let got = batch(&store, &[take("id-c", "y"), release]).await;
    assert_eq!(got, ["granted", "row"]);
    let held: Vec<String> =
        sqlx::query_scalar("SELECT job_id FROM account_slots ORDER BY account, job_id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(held, ["id-b", "id-c"]);
    store.close().await.unwrap();
}
