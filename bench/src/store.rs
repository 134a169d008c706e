//! Phase `store`: the [`Store`] alone (insert, claim, complete, one at a
//! time and as the driver batches them) against raw sqlx/SQLite and the
//! disk's `fdatasync` rate in the same run.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, ensure};
use docfetch::job::{JobResult, JobState, NewJob, SavedFile, now_ms};
use docfetch::store::{Store, Transition};
use futures_util::{StreamExt as _, TryStreamExt as _};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};

use crate::disk::{baseline_fdatasync, temp_dir};
use crate::options::{Options, Phase};
use crate::report::{Rows, TARGET_STORE};
use crate::util::{close_store, sqlite_url};

pub(crate) async fn store_phase(opts: &Options, rows: &mut Rows) -> Result<()> {
    let p = Phase::Store;
    let n = opts.store_ops;
    for run in 1..=opts.runs {
        let dir = temp_dir(opts, "store")?;
        let store = Store::open(&sqlite_url(&dir.path().join("store.db"))).await?;
        if let Store::Sqlite(s) = &store {
            warm_wal(&mut *s.pool().acquire().await?).await?;
        }
        let now = now_ms();
        let started = Instant::now();
        for i in 0..n {
            store.insert(&bench_new_job(i, now)).await?;
        }
        let insert_s = started.elapsed().as_secs_f64();
        // Claims in batches of `workers`, as the driver does.
        let owner = "docfetch-bench";
        let batch = u32::try_from(opts.workers).unwrap_or(16);
        let started = Instant::now();
        let mut claimed = Vec::with_capacity(n);
        let mut claims = 0usize;
        loop {
            let t = now_ms();
            let jobs = store.claim_due(owner, t, t + 600_000, batch).await?;
            if jobs.is_empty() {
                break;
            }
            claims += 1;
            claimed.extend(jobs);
        }
        let claim_s = started.elapsed().as_secs_f64();
        ensure!(claimed.len() == n, "claimed {} of {n} jobs", claimed.len());
        let done = done_transition();
        let started = Instant::now();
        for job in &claimed {
            store.finish_step(&job.id, owner, &done).await?;
        }
        let complete_s = started.elapsed().as_secs_f64();

        // The same work as the daemon does it: `workers` tasks at once,
        // whose writes the store commits in groups.
        let workers = opts.workers.max(1);
        let started = Instant::now();
        futures_util::stream::iter((n..2 * n).map(|i| {
            let store = store.clone();
            async move { store.insert(&bench_new_job(i, now)).await }
        }))
        .buffer_unordered(workers)
        .try_collect::<Vec<_>>()
        .await?;
        let insert_par_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut cycled = 0usize;
        loop {
            let t = now_ms();
            let jobs = store.claim_due(owner, t, t + 600_000, batch).await?;
            if jobs.is_empty() {
                break;
            }
            cycled += jobs.len();
            futures_util::future::try_join_all(jobs.iter().map(|job| {
                let store = store.clone();
                let done = done.clone();
                async move { store.finish_step(&job.id, owner, &done).await }
            }))
            .await?;
        }
        let cycle_par_s = started.elapsed().as_secs_f64();
        ensure!(cycled == n, "cycled {cycled} of {n} jobs");
        close_store(&store).await;

        let base = baseline_sqlite(&dir.path().join("baseline.db"), n).await?;
        let fsyncs = baseline_fdatasync(&dir.path().join("fsync.bin"), n).await?;

        let nf = n as f64;
        let insert_rate = nf / insert_s;
        let claim_rate = nf / claim_s;
        let complete_rate = nf / complete_s;
        let cycle_rate = nf / (claim_s + complete_s);
        rows.add(
            p,
            "insert, one at a time (each waits for its commit)",
            "jobs/s",
            None,
            insert_rate,
        );
        rows.add(
            p,
            &format!("claim_due, batches of {batch}"),
            "jobs/s",
            None,
            claim_rate,
        );
        rows.add(
            p,
            "finish_step → done, one at a time",
            "jobs/s",
            None,
            complete_rate,
        );
        rows.add(
            p,
            "claim + complete, one at a time",
            "jobs/s",
            None,
            cycle_rate,
        );
        rows.add(
            p,
            &format!("insert, {workers} at once (group commit)"),
            "jobs/s",
            None,
            nf / insert_par_s,
        );
        rows.add(
            p,
            &format!("claim {batch} + complete them at once (as the driver does)"),
            "jobs/s",
            Some(TARGET_STORE),
            nf / cycle_par_s,
        );
        rows.add(
            p,
            "baseline: sqlx single-row INSERT, WAL, synchronous=FULL",
            "commits/s",
            None,
            base.insert_rate,
        );
        rows.add(
            p,
            "baseline: sqlx single-row UPDATE, WAL, synchronous=FULL",
            "commits/s",
            None,
            base.update_rate,
        );
        rows.add(
            p,
            "baseline: 1000 INSERTs per transaction",
            "rows/s",
            None,
            base.batch_rate,
        );
        rows.add(
            p,
            "baseline: 4 KiB write + fdatasync",
            "fsyncs/s",
            None,
            fsyncs,
        );
        rows.add(
            p,
            "ratio insert / baseline INSERT",
            "×",
            None,
            insert_rate / base.insert_rate,
        );
        rows.add(
            p,
            "ratio finish_step / baseline UPDATE",
            "×",
            None,
            complete_rate / base.update_rate,
        );
        rows.add(
            p,
            &format!("ratio claim {batch} + complete at once / 4 KiB write + fdatasync"),
            "jobs per fdatasync/s",
            None,
            (nf / cycle_par_s) / fsyncs,
        );
        eprintln!(
            "   run {run}: insert {insert_rate:.0}/s, claim {claim_rate:.0}/s ({claims} claims), complete {complete_rate:.0}/s; baseline {:.0} commits/s, fdatasync {fsyncs:.0}/s",
            base.insert_rate
        );
    }
    Ok(())
}

pub(crate) fn bench_new_job(i: usize, now: i64) -> NewJob {
    NewJob {
        id: uuid::Uuid::new_v4().to_string(),
        name: format!("store-{i:07}"),
        account: "bench".into(),
        provider: "1c-fresh".into(),
        operation: "balance_sheet".into(),
        params: serde_json::json!({"organization": {"inn": "783900281039", "kpp": ""}}),
        source: "api".into(),
        request_sha256: "0".repeat(64),
        created_at: now,
        deadline_at: now + 48 * 3_600_000,
        hooks: None,
    }
}

pub(crate) fn done_transition() -> Transition {
    Transition {
        state: JobState::Done,
        cursor: serde_json::json!({"job_id": "47e7efd6-ddb6-11e7-819b-0050568925e0", "file_id": "f"}),
        next_run_at: now_ms(),
        attempts: 0,
        polls: 2,
        last_error: None,
        result: Some(JobResult {
            files: vec![SavedFile {
                name: "balance_sheet.json".into(),
                size: 4096,
                sha256: "a".repeat(64),
            }],
            warnings: Vec::new(),
        }),
        event: (
            docfetch::job::EventKind::Done,
            "done: balance_sheet.json (4096 bytes)".into(),
        ),
        detail: None,
        hooks_pending: false,
    }
}

pub(crate) struct SqliteBaseline {
    insert_rate: f64,
    update_rate: f64,
    batch_rate: f64,
}

/// The least a durable single-row transaction costs through sqlx: one
/// connection, WAL, `synchronous=FULL`, autocommit statements.
pub(crate) async fn baseline_sqlite(path: &Path, n: usize) -> Result<SqliteBaseline> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL)")
        .execute(&mut conn)
        .await?;
    warm_wal(&mut conn).await?;
    let started = Instant::now();
    for i in 0..n {
        sqlx::query("INSERT INTO t (k, v) VALUES (?1, ?2)")
            .bind(format!("key-{i}"))
            .bind("value")
            .execute(&mut conn)
            .await?;
    }
    let insert_rate = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..n {
        sqlx::query("UPDATE t SET v = ?2 WHERE id = ?1")
            .bind(i64::try_from(i + 1).unwrap_or(1))
            .bind("done")
            .execute(&mut conn)
            .await?;
    }
    let update_rate = n as f64 / started.elapsed().as_secs_f64();
    let rows = n.max(1000);
    let started = Instant::now();
    let mut written = 0;
    while written < rows {
        let mut tx = conn.begin().await?;
        for i in written..(written + 1000).min(rows) {
            sqlx::query("INSERT INTO t (k, v) VALUES (?1, ?2)")
                .bind(format!("batch-{i}"))
                .bind("value")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        written = (written + 1000).min(rows);
    }
    let batch_rate = rows as f64 / started.elapsed().as_secs_f64();
    conn.close().await?;
    Ok(SqliteBaseline {
        insert_rate,
        update_rate,
        batch_rate,
    })
}

/// Grows the WAL to its working size and checkpoints it, so that timed
/// commits overwrite WAL space the way a running daemon's do, instead of
/// extending the file (on ext4 each fsync of a growing file also commits the
/// metadata journal, which a steady-state WAL never pays).
pub(crate) async fn warm_wal(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_warm (x BLOB)")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < 1500)
         INSERT INTO bench_warm SELECT randomblob(3000) FROM seq",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM bench_warm")
        .execute(&mut *conn)
        .await?;
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .execute(&mut *conn)
        .await?;
    Ok(())
}
