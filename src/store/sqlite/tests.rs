//! Group commit answers each write as if it ran alone, and a failed batch
//! leaves nothing behind.

use super::write::apply;
use super::*;
use crate::job::now_ms;

fn new_job(name: &str) -> NewJob {
    let now = now_ms();
    NewJob {
        id: format!("id-{name}"),
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
    let mut job = new_job(name);
    job.id = id.into();
    WriteOp::Insert {
        job: Box::new(job),
        params: "{}".into(),
        hooks: None,
    }
}

fn claim() -> WriteOp {
    let now = now_ms();
    WriteOp::Claim {
        owner: "o".into(),
        now,
        lease_until: now + 60_000,
        limit: 10,
    }
}

fn checkpoint(name: &str, cursor: &str) -> WriteOp {
    WriteOp::Checkpoint {
        id: format!("id-{name}"),
        owner: "o".into(),
        cursor: cursor.into(),
    }
}

fn finish(name: &str, state: JobState) -> WriteOp {
    WriteOp::Finish {
        id: format!("id-{name}"),
        owner: "o".into(),
        transition: Box::new(Transition {
            state,
            cursor: serde_json::json!({"n": 1}),
            next_run_at: now_ms(),
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

/// A new store in a temporary folder (kept as long as the guard lives).
async fn fresh_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    (dir, store)
}

/// Applies `ops` as one batch and names what each got back.
async fn batch(store: &SqliteStore, ops: &[WriteOp]) -> Vec<String> {
    let mut tx = store.pool().begin().await.unwrap();
    let refs: Vec<&WriteOp> = ops.iter().collect();
    let written = apply(&mut tx, &refs).await.unwrap();
    tx.commit().await.unwrap();
    written
        .iter()
        .map(|w| match w {
            Written::Job(job) => format!("job {} {}", job.name, job.state),
            Written::Jobs(jobs) => {
                let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
                format!("claimed {}", names.join(","))
            }
            Written::Row => "row".into(),
            Written::Nothing => "nothing".into(),
        })
        .collect()
}

/// Grouping a batch's writes into a few statements keeps the order in
/// which they were queued wherever it can change an answer.
#[tokio::test]
async fn a_batch_answers_as_if_its_writes_ran_one_by_one() {
    let (_dir, store) = fresh_store().await;
    // A claim sees the jobs inserted before it in the same batch, and
    // not those inserted after it.
    let got = batch(&store, &[insert("a"), claim(), insert("b")]).await;
    assert_eq!(got, ["job a queued", "claimed a", "job b queued"]);
    // Two checkpoints of one job: both hold, the later cursor stays.
    let got = batch(
        &store,
        &[checkpoint("a", "{\"c\":1}"), checkpoint("a", "{\"c\":2}")],
    )
    .await;
    assert_eq!(got, ["row", "row"]);
    let cursor: String = sqlx::query_scalar("SELECT cursor FROM jobs WHERE id = 'id-a'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(cursor, "{\"c\":2}");
    // Two outcomes for one lease: the first ends it, the second finds
    // the job no longer running, exactly as one at a time.
    let got = batch(
        &store,
        &[
            finish("a", JobState::Waiting),
            finish("a", JobState::Failed),
        ],
    )
    .await;
    assert_eq!(got, ["job a waiting", "nothing"]);
    let events: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM job_events WHERE job_id = 'id-a' AND kind = 'poll'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(events, 1, "only the outcome that held is in the history");
    // The same name twice: the second insert is a duplicate.
    let got = batch(&store, &[insert("c"), insert_as("c", "id-c2")]).await;
    assert_eq!(got, ["job c queued", "nothing"]);
}

/// A batch that fails part-way (here a new job whose id is taken)
/// keeps none of its writes, and the next batch commits as usual.
#[tokio::test]
async fn a_failed_batch_keeps_nothing_and_the_next_batch_commits() {
    let (_dir, store) = fresh_store().await;
    assert_eq!(batch(&store, &[insert("a")]).await, ["job a queued"]);
    let clash = insert_as("b", "id-a");
    let ops = [finish("a", JobState::Done), insert("c"), clash, claim()];
    let refs: Vec<&WriteOp> = ops.iter().collect();
    let mut tx = store.pool().begin().await.unwrap();
    assert!(apply(&mut tx, &refs).await.is_err());
    drop(tx);
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM jobs ORDER BY name")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(names, ["a"], "nothing of the failed batch is kept");
    let got = batch(&store, &[insert("c"), claim()]).await;
    assert_eq!(got, ["job c queued", "claimed a,c"]);
}
