//! The SQLite store: one file in WAL mode with `synchronous=FULL`, so a
//! commit that acknowledges work to the outside (a request file moved to
//! `accepted/`, a job marked done) survives a power cut.
//!
//! Writes go through a single connection (SQLite has one writer anyway; a
//! pool of writers only adds lock waits); reads use a small separate pool.
//! Each state transition is one `UPDATE … WHERE state = ? AND lease_owner = ?
//! RETURNING *` statement. The CLI opens the same file from another process;
//! `busy_timeout` absorbs the short write locks they take from each other.

mod commands;
mod export;
mod hooks;
mod lock;
pub use lock::DaemonLock;
use lock::OpenLock;
use write::{PendingWrite, WRITE_QUEUE, WriteOp, WriteTx, Written, insert_event, write_loop};
#[cfg(test)]
mod tests;
mod upkeep;
mod write;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

use super::shape::{json_text, json_text_opt};
use super::{
    JobFilter, Settlement, Snapshot, StoreError, StoredJob, Transition, expect_one, job_from_row,
};
use crate::job::{EventKind, Job, JobEvent, JobState, Millis, NewJob, NextRun};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Due jobs, oldest due first, at most `?4`, as of `?3`. `INDEXED BY` pins
/// the partial index: without statistics SQLite may prefer another index
/// and sort every pending row, which costs tens of milliseconds at 100k jobs.
macro_rules! due_jobs {
    () => {
        "SELECT id FROM jobs INDEXED BY jobs_due
         WHERE state IN ('queued', 'waiting') AND next_run_at <= ?3
         ORDER BY next_run_at LIMIT ?4"
    };
}
// By path, for the claim in `write`.
use due_jobs;
pub const DUE_JOBS: &str = due_jobs!();

/// The checkpoints of a batch, `?1` a JSON array of `[id, owner, cursor]`:
/// a primary-key lookup per element (a test checks the plan). The unary `+`
/// keeps the planner off `jobs_state`, which it prefers on a young store
/// and which would scan every running job for each element.
pub const CHECKPOINT_JOBS: &str = "UPDATE jobs SET cursor = j.value ->> 2, attempts = 0, updated_at = ?2
             FROM json_each(?1) AS j
             WHERE jobs.id = j.value ->> 0 AND +jobs.state = 'running' AND jobs.lease_owner = j.value ->> 1
             RETURNING id";

/// The step outcomes of a batch, `?1` a JSON array of objects: a
/// primary-key lookup per element, as [`CHECKPOINT_JOBS`].
pub const FINISH_JOBS: &str = "UPDATE jobs
             SET state = j.value ->> 'state', cursor = j.value ->> 'cursor',
                 next_run_at = j.value ->> 'next_run_at', attempts = j.value ->> 'attempts',
                 polls = j.value ->> 'polls', last_error = j.value ->> 'last_error',
                 result = j.value ->> 'result',
                 finished_at = CASE WHEN j.value ->> 'finished_at' IS NULL THEN NULL
                                    ELSE COALESCE(jobs.finished_at, j.value ->> 'finished_at') END,
                 updated_at = ?2, lease_owner = NULL, lease_until = NULL,
                 hooks_state = CASE WHEN j.value ->> 'hooks' THEN 'pending' ELSE hooks_state END,
                 hooks_next_at = CASE WHEN j.value ->> 'hooks' THEN ?2 ELSE hooks_next_at END,
                 hooks_attempts = CASE WHEN j.value ->> 'hooks' THEN 0 ELSE hooks_attempts END
             FROM json_each(?1) AS j
             WHERE jobs.id = j.value ->> 'id' AND +jobs.state = 'running' AND jobs.lease_owner = j.value ->> 'owner'
             RETURNING *";

/// The outcomes settled in a batch (see [`crate::job::Job::settled`]), `?1`
/// a JSON array of objects: the job stays running under its lease. A
/// primary-key lookup per element, as [`CHECKPOINT_JOBS`].
pub const SETTLE_JOBS: &str = "UPDATE jobs
             SET cursor = j.value ->> 'cursor', result = j.value ->> 'result',
                 last_error = j.value ->> 'last_error', attempts = j.value ->> 'attempts',
                 finished_at = j.value ->> 'finished_at', updated_at = ?2
             FROM json_each(?1) AS j
             WHERE jobs.id = j.value ->> 'id' AND +jobs.state = 'running' AND jobs.lease_owner = j.value ->> 'owner'
             RETURNING id";

/// SQLite-backed job store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The group-commit queue of the hot writes (see [`write_loop`]).
    writes: mpsc::Sender<PendingWrite>,
    /// A dedicated connection for `PRAGMA data_version`, which only means
    /// something when asked on the same connection each time.
    watcher: Arc<Mutex<Option<SqliteConnection>>>,
    /// Boxed: the options are large and only used to open the watcher.
    options: Box<SqliteConnectOptions>,
    path: PathBuf,
    wakeup: Arc<Notify>,
    hooks_wakeup: Arc<Notify>,
    /// Why the last group commit failed, while the store cannot commit (a
    /// full disk, an I/O error); `None` once a commit succeeds again.
    trouble: Trouble,
}

/// The reason the store's commits fail, shared by the write loop (which
/// sets and clears it) and [`SqliteStore::ping`] (which reports it).
type Trouble = Arc<std::sync::Mutex<Option<String>>>;

/// Records how a commit went: a failure for want of space or an I/O error
/// is kept as the store's trouble; a commit that wrote something clears it
/// (one that changed nothing, such as a claim that found no due job, needs
/// no space and proves nothing).
fn note_commit(trouble: &Trouble, result: Result<bool, &StoreError>) {
    let mut kept = trouble
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match result {
        Ok(true) => {
            if kept.take().is_some() {
                tracing::info!("the job store commits again");
            }
        }
        Ok(false) => {}
        Err(e) if e.is_unavailable() => {
            if kept.is_none() {
                tracing::error!(error = %e, "the job store cannot commit; work that needs it waits and tries again");
            }
            *kept = Some(e.to_string());
        }
        Err(_) => {}
    }
}

/// Whether a write changed a row.
fn wrote(written: &Written) -> bool {
    match written {
        Written::Job(_) | Written::Row => true,
        Written::Jobs(jobs) => !jobs.is_empty(),
        Written::Nothing => false,
    }
}

/// The file path inside a `sqlite://path` or `sqlite:path` URL.
pub(crate) fn path_from_url(url: &str) -> Result<PathBuf, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::Open {
            url: url.to_string(),
            message: "expected sqlite://PATH".into(),
        })?;
    let rest = rest.split('?').next().unwrap_or(rest);
    if rest.is_empty() || rest == ":memory:" {
        return Err(StoreError::Open {
            url: url.to_string(),
            message: "a file path is required (an in-memory store would lose every job)".into(),
        });
    }
    Ok(PathBuf::from(rest))
}

/// Whether the store lacks any of this binary's migrations (a new or an
/// older store).
async fn pending_migrations(pool: &SqlitePool) -> Result<bool, StoreError> {
    let table: Option<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
    .await?;
    if table.is_none() {
        return Ok(true);
    }
    let applied: Vec<(i64,)> = sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await?;
    Ok(MIGRATOR
        .iter()
        .any(|m| !applied.iter().any(|(v,)| *v == m.version)))
}

fn open_error(path: &Path, message: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        url: format!("sqlite://{}", path.display()),
        message: message.to_string(),
    }
}

impl SqliteStore {
    /// Opens the database file named by `url`, creating it (mode 0600) and its
    /// folder if missing, and applies pending migrations.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let path = path_from_url(url)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_error(&path, e))?;
        }
        // Two processes opening a new store at once (a daemon starting while
        // `docfetch submit` runs) would race: both switching the new file to
        // WAL (one gets SQLITE_BUSY without waiting), both seeing a migration
        // as pending (the second fails on `duplicate column`). A lock on a
        // file next to the store, held for the milliseconds of opening,
        // serialises them; the second finds everything done. (Not the
        // database file itself: closing another descriptor of it would drop
        // SQLite's own locks.)
        let opening = OpenLock::acquire(&path).await?;
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            // The store holds request parameters: readable by its owner only.
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| open_error(&path, e))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| open_error(&path, e))?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        // No ping before each use (sqlx's default): an embedded database's
        // connection does not go stale, and the ping is one more round trip
        // to SQLite's thread in front of every group commit.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(60))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .map_err(|e| open_error(&path, e))?;
        if pending_migrations(&writer).await? {
            MIGRATOR.run(&writer).await?;
        }
        drop(opening);
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(|e| open_error(&path, e))?;
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let trouble = Trouble::default();
        tokio::spawn(write_loop(writer.clone(), queue, trouble.clone()));
        Ok(SqliteStore {
            trouble,
            writes,
            writer,
            reader,
            watcher: Arc::new(Mutex::new(None)),
            options: Box::new(options),
            path,
            wakeup: Arc::new(Notify::new()),
            hooks_wakeup: Arc::new(Notify::new()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn wakeup(&self) -> Arc<Notify> {
        self.wakeup.clone()
    }

    /// The write pool, for tests and the benchmark that inspect the file directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.writer
    }

    pub async fn insert(&self, job: &NewJob) -> Result<Job, StoreError> {
        let params = json_text(&job.params)?;
        let hooks = json_text_opt(job.hooks.as_ref())?;
        let op = WriteOp::Insert {
            job: Box::new(job.clone()),
            params,
            hooks,
        };
        match self.write(op).await? {
            Written::Job(job) => {
                self.wakeup.notify_one();
                Ok(*job)
            }
            Written::Nothing | Written::Row | Written::Jobs(_) => {
                let existing = self
                    .find(&job.name)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(job.name.clone()))?;
                Err(StoreError::Duplicate {
                    name: job.name.clone(),
                    existing: Box::new(existing),
                })
            }
        }
    }

    /// Queues a write for the next group commit and waits until it is
    /// durable (or failed).
    async fn write(&self, op: WriteOp) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(PendingWrite { op, reply })
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?
    }

    pub async fn find(&self, key: &str) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = ?1 OR name = ?1 LIMIT 1")
            .bind(key)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let limit = if filter.limit == 0 {
            i64::MAX
        } else {
            i64::from(filter.limit)
        };
        let rows = sqlx::query(
            "SELECT * FROM jobs
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR account = ?2)
             ORDER BY created_at DESC, name
             LIMIT ?3 OFFSET ?4",
        )
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.account.as_deref())
        .bind(limit)
        .bind(i64::from(filter.offset))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    pub async fn events(&self, job_id: &str) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, kind, message, detail FROM job_events WHERE job_id = ?1 ORDER BY seq",
        )
        .bind(job_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JobEvent {
                    at: r.try_get("at")?,
                    kind: r.try_get("kind")?,
                    message: r.try_get("message")?,
                    detail: r
                        .try_get::<Option<String>, _>("detail")?
                        .as_deref()
                        .and_then(NextRun::from_json_str),
                })
            })
            .collect()
    }

    pub async fn add_event(
        &self,
        job_id: &str,
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.writer.acquire().await?;
        insert_event(&mut conn, job_id, crate::job::now_ms(), kind, message, None).await
    }

    pub async fn claim_due(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        // Through the group commit too: a claim shares its fsync with the
        // step outcomes that freed the workers.
        let op = WriteOp::Claim {
            owner: owner.to_string(),
            now,
            lease_until,
            limit,
        };
        let mut jobs = match self.write(op).await? {
            Written::Jobs(jobs) => jobs,
            Written::Job(_) | Written::Row | Written::Nothing => Vec::new(),
        };
        jobs.sort_by_key(|j| j.next_run_at);
        Ok(jobs)
    }

    pub async fn next_due_at(&self) -> Result<Option<Millis>, StoreError> {
        let row: Option<(Option<i64>,)> = sqlx::query_as(
            "SELECT MIN(next_run_at) FROM jobs INDEXED BY jobs_due WHERE state IN ('queued', 'waiting')",
        )
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.and_then(|r| r.0))
    }

    pub async fn renew_lease(
        &self,
        id: &str,
        owner: &str,
        until: Millis,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_until = ?3 WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
        )
        .bind(id)
        .bind(owner)
        .bind(until)
        .execute(&self.writer)
        .await?;
        expect_one(done.rows_affected(), id, "lease renewal")
    }

    pub async fn checkpoint(
        &self,
        id: &str,
        owner: &str,
        cursor: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let op = WriteOp::Checkpoint {
            id: id.to_string(),
            owner: owner.to_string(),
            cursor: cursor.to_string(),
        };
        match self.write(op).await? {
            Written::Nothing => expect_one(0, id, "checkpoint"),
            Written::Job(_) | Written::Row | Written::Jobs(_) => Ok(()),
        }
    }

    pub async fn settle(&self, id: &str, owner: &str, s: &Settlement) -> Result<(), StoreError> {
        let result = json_text_opt(s.result.as_ref())?;
        let op = WriteOp::Settle {
            id: id.to_string(),
            owner: owner.to_string(),
            settlement: Box::new(s.clone()),
            result,
        };
        match self.write(op).await? {
            Written::Nothing => expect_one(0, id, "settling the outcome"),
            Written::Job(_) | Written::Row | Written::Jobs(_) => Ok(()),
        }
    }

    pub async fn finish_step(
        &self,
        id: &str,
        owner: &str,
        t: &Transition,
    ) -> Result<Job, StoreError> {
        let result = json_text_opt(t.result.as_ref())?;
        let op = WriteOp::Finish {
            id: id.to_string(),
            owner: owner.to_string(),
            transition: Box::new(t.clone()),
            result,
        };
        match self.write(op).await? {
            Written::Job(job) => {
                if t.hooks_pending {
                    self.hooks_wakeup.notify_one();
                }
                Ok(*job)
            }
            Written::Nothing | Written::Row | Written::Jobs(_) => Err(StoreError::Conflict {
                id: id.to_string(),
                detail: "the job is no longer running under this lease".into(),
            }),
        }
    }

    pub async fn postpone(
        &self,
        id: &str,
        owner: &str,
        next_run_at: Millis,
    ) -> Result<(), StoreError> {
        // The claim counted a step that did not run; take it back.
        let done = sqlx::query(
            "UPDATE jobs SET state = 'waiting', lease_owner = NULL, lease_until = NULL,
                             next_run_at = ?3, steps = MAX(steps - 1, 0)
             WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
        )
        .bind(id)
        .bind(owner)
        .bind(next_run_at)
        .execute(&self.writer)
        .await?;
        expect_one(done.rows_affected(), id, "postpone")
    }

    /// [`postpone`](Self::postpone), and a `postponed` event that says why.
    pub(crate) async fn postpone_because(
        &self,
        id: &str,
        owner: &str,
        next: &NextRun,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        let done = sqlx::query(
            "UPDATE jobs SET state = 'waiting', lease_owner = NULL, lease_until = NULL,
                             next_run_at = ?3, steps = MAX(steps - 1, 0)
             WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
        )
        .bind(id)
        .bind(owner)
        .bind(next.next_run_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await;
            return expect_one(done.rows_affected(), id, "postpone");
        }
        let now = crate::job::now_ms();
        insert_event(
            &mut tx,
            id,
            now,
            EventKind::Postponed.as_str(),
            message,
            Some(next),
        )
        .await?;
        tx.commit().await
    }

    pub async fn release_leases(
        &self,
        owner: Option<&str>,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET state = 'waiting', lease_owner = NULL, lease_until = NULL,
                             next_run_at = ?2, updated_at = ?2
             WHERE state = 'running' AND (?1 IS NULL OR lease_owner = ?1)",
        )
        .bind(owner)
        .bind(now)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() > 0 {
            self.wakeup.notify_one();
        }
        Ok(done.rows_affected())
    }

    pub async fn reclaim_expired(&self, now: Millis, keep: &[String]) -> Result<u64, StoreError> {
        let keep = json_text(keep)?;
        let done = sqlx::query(
            "UPDATE jobs SET state = 'waiting', lease_owner = NULL, lease_until = NULL,
                             next_run_at = ?1, updated_at = ?1
             WHERE state = 'running' AND lease_until < ?1
               AND id NOT IN (SELECT value FROM json_each(?2))",
        )
        .bind(now)
        .bind(keep)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() > 0 {
            self.wakeup.notify_one();
        }
        Ok(done.rows_affected())
    }

    pub async fn counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        // Kept by triggers (migrations 0003, 0007): a few rows, whatever the size.
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, SUM(n) FROM job_counts GROUP BY state HAVING SUM(n) > 0")
                .fetch_all(&self.reader)
                .await?;
        rows.into_iter()
            .map(|(state, n)| {
                let state = state.parse().map_err(StoreError::Corrupt)?;
                Ok((state, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT state, provider, SUM(n) FROM job_counts GROUP BY state, provider
              HAVING SUM(n) > 0 ORDER BY state, provider",
        )
        .fetch_all(&self.reader)
        .await?;
        let mut by_state = Vec::with_capacity(rows.len());
        for (state, provider, n) in rows {
            by_state.push((
                state.parse().map_err(StoreError::Corrupt)?,
                provider,
                u64::try_from(n).unwrap_or(0),
            ));
        }
        // One MIN per state, so each is a single seek in `jobs_state`.
        let oldest: (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(m) FROM (SELECT MIN(created_at) AS m FROM jobs WHERE state = 'queued'
                                 UNION ALL
                                 SELECT MIN(created_at) FROM jobs WHERE state = 'waiting')",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(Snapshot {
            by_state,
            oldest_waiting_created: oldest.0,
            next_due: self.next_due_at().await?,
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let trouble = self
            .trouble
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(reason) = trouble {
            // Whether space came back is only known by committing: a small
            // write of its own, which clears the trouble when it lands.
            let probe = sqlx::query(
                "INSERT INTO store_probe (id, at) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            )
            .bind(crate::job::now_ms())
            .execute(&self.writer)
            .await
            .map_err(StoreError::from);
            note_commit(&self.trouble, probe.as_ref().map(|_| true));
            if probe.is_err() {
                return Err(StoreError::Unavailable(reason));
            }
        }
        let applied: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.reader)
            .await?;
        let expected = MIGRATOR.iter().count() as i64;
        if applied.0 < expected {
            return Err(StoreError::Corrupt(format!(
                "{} of {expected} migrations applied",
                applied.0
            )));
        }
        Ok(())
    }
}

impl SqliteStore {
    /// The read-only pool, for the dashboard's queries ([`super::views`]).
    pub(crate) fn read_pool(&self) -> &SqlitePool {
        &self.reader
    }
    /// The database file, whose size the dashboard shows.
    pub(crate) fn file_path(&self) -> &std::path::Path {
        &self.path
    }
}
