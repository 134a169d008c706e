//! The SQLite store: one file in WAL mode with `synchronous=FULL`, so a
//! commit that acknowledges work to the outside (a request file moved to
//! `accepted/`, a job marked done) survives a power cut.
//!
//! Writes go through a single connection (SQLite has one writer anyway; a
//! pool of writers only adds lock waits); reads use a small separate pool.
//! Each state transition is one `UPDATE … WHERE state = ? AND lease_owner = ?
//! RETURNING *` statement. The CLI opens the same file from another process;
//! `busy_timeout` absorbs the short write locks they take from each other.

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
pub fn path_from_url(url: &str) -> Result<PathBuf, StoreError> {
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

/// An exclusive lock on `STORE.open.lock`, held while a process opens the
/// store and applies migrations.
struct OpenLock {
    _file: std::fs::File,
}

impl OpenLock {
    async fn acquire(db: &Path) -> Result<OpenLock, StoreError> {
        let mut name = db.as_os_str().to_owned();
        name.push(".open.lock");
        let path = PathBuf::from(name);
        let db = db.to_path_buf();
        let locked = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            // Blocks only while another process opens the store, which
            // takes milliseconds.
            file.lock()
                .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
            Ok::<_, String>(file)
        })
        .await
        .map_err(|e| open_error(&db, e))?
        .map_err(|e| open_error(&db, e))?;
        Ok(OpenLock { _file: locked })
    }
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
        let params =
            serde_json::to_string(&job.params).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let hooks = job
            .hooks
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
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
        let result = s
            .result
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
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
        let result = t
            .result
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
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
    pub async fn postpone_because(
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
        let keep = serde_json::to_string(keep).map_err(|e| StoreError::Corrupt(e.to_string()))?;
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

    pub async fn cancel(&self, key: &str, now: Millis) -> Result<Job, StoreError> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        let row = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_until = NULL,
                             finished_at = ?2, updated_at = ?2, last_error = 'cancelled by a user'
             WHERE (id = ?1 OR name = ?1) AND state IN ('queued', 'waiting', 'running')
             RETURNING *",
        )
        .bind(key)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some(row) => {
                let job = job_from_row(&row)?;
                insert_event(
                    &mut tx,
                    &job.id,
                    now,
                    "cancelled",
                    "cancelled by a user",
                    None,
                )
                .await?;
                tx.commit().await?;
                Ok(job)
            }
            None => {
                tx.rollback().await;
                Err(self
                    .not_in_state(key, "cancel", "queued, waiting or running")
                    .await)
            }
        }
    }

    pub async fn retry(
        &self,
        key: &str,
        now: Millis,
        deadline_at: Millis,
    ) -> Result<Job, StoreError> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        let row = sqlx::query(
            "UPDATE jobs SET state = 'queued', cursor = '{}', attempts = 0, next_run_at = ?2,
                             last_error = NULL, result = NULL, finished_at = NULL,
                             updated_at = ?2, deadline_at = ?3
             WHERE (id = ?1 OR name = ?1) AND state IN ('failed', 'cancelled')
             RETURNING *",
        )
        .bind(key)
        .bind(now)
        .bind(deadline_at)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some(row) => {
                let job = job_from_row(&row)?;
                insert_event(
                    &mut tx,
                    &job.id,
                    now,
                    EventKind::Retried.as_str(),
                    "queued again by a user",
                    Some(&NextRun::now(now)),
                )
                .await?;
                tx.commit().await?;
                self.wakeup.notify_one();
                Ok(job)
            }
            None => {
                tx.rollback().await;
                Err(self.not_in_state(key, "retry", "failed or cancelled").await)
            }
        }
    }

    async fn not_in_state(&self, key: &str, action: &str, expected: &str) -> StoreError {
        match self.find(key).await {
            Ok(Some(job)) => StoreError::Conflict {
                id: job.id,
                detail: format!(
                    "cannot {action} a job that is {}; expected {expected}",
                    job.state
                ),
            },
            Ok(None) => StoreError::NotFound(key.to_string()),
            Err(e) => e,
        }
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

    pub fn hooks_wakeup(&self) -> Arc<Notify> {
        self.hooks_wakeup.clone()
    }

    pub async fn claim_hooks(
        &self,
        now: Millis,
        hold_until: Millis,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(
            "UPDATE jobs SET hooks_next_at = ?2
             WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_hooks_due
                          WHERE hooks_state = 'pending' AND hooks_next_at <= ?1
                          ORDER BY hooks_next_at LIMIT ?3)
             RETURNING *",
        )
        .bind(now)
        .bind(hold_until)
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    pub async fn finish_hooks(
        &self,
        id: &str,
        state: &str,
        attempts: u32,
        next_at: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET hooks_state = ?2, hooks_attempts = ?3, hooks_next_at = ?4
             WHERE id = ?1 AND hooks_state = 'pending'",
        )
        .bind(id)
        .bind(state)
        .bind(i64::from(attempts))
        .bind(next_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn next_hooks_at(&self) -> Result<Option<Millis>, StoreError> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(hooks_next_at) FROM jobs INDEXED BY jobs_hooks_due WHERE hooks_state = 'pending'",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(row.0)
    }

    pub async fn prune(
        &self,
        done_before: Millis,
        failed_before: Millis,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        // Jobs whose hooks have not run yet are kept until they have.
        let rows: Vec<(String,)> = sqlx::query_as(
            "DELETE FROM jobs WHERE id IN (
                 SELECT id FROM jobs WHERE state = 'done' AND finished_at < ?1
                     AND (hooks_state IS NULL OR hooks_state != 'pending')
                 UNION ALL
                 SELECT id FROM jobs WHERE state IN ('failed', 'cancelled') AND finished_at < ?2
                     AND (hooks_state IS NULL OR hooks_state != 'pending')
                 LIMIT ?3)
             RETURNING name",
        )
        .bind(done_before)
        .bind(failed_before)
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    pub async fn last_fire(&self, schedule: &str) -> Result<Option<Millis>, StoreError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT last_fire_at FROM schedule_runs WHERE schedule = ?1")
                .bind(schedule)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.map(|r| r.0))
    }

    pub async fn set_last_fire(&self, schedule: &str, at: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO schedule_runs (schedule, last_fire_at) VALUES (?1, ?2)
             ON CONFLICT (schedule) DO UPDATE SET last_fire_at = MAX(last_fire_at, excluded.last_fire_at)",
        )
        .bind(schedule)
        .bind(at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Closes every connection and waits for it: the last one to close
    /// checkpoints the WAL, so a clean stop leaves just the database file.
    pub async fn close(&self) -> Result<(), StoreError> {
        if let Some(conn) = self.watcher.lock().await.take() {
            conn.close().await?;
        }
        self.reader.close().await;
        self.writer.close().await;
        Ok(())
    }

    pub async fn change_counter(&self) -> Result<i64, StoreError> {
        let mut guard = self.watcher.lock().await;
        if guard.is_none() {
            *guard = Some(SqliteConnection::connect_with(&self.options).await?);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(StoreError::Corrupt("watcher connection missing".into()));
        };
        let version: (i64,) = match sqlx::query_as("PRAGMA data_version")
            .fetch_one(&mut *conn)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                // Reconnect on the next call rather than keep a broken handle.
                *guard = None;
                return Err(e.into());
            }
        };
        Ok(version.0)
    }

    pub async fn export_jobs(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredJob>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM jobs WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2")
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredJob {
                    job: job_from_row(row)?,
                    hooks_next_at: row.try_get("hooks_next_at")?,
                })
            })
            .collect()
    }

    pub async fn import_job(
        &self,
        stored: &StoredJob,
        events: &[JobEvent],
    ) -> Result<bool, StoreError> {
        let job = &stored.job;
        let result = job
            .result
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let hooks = job
            .hooks
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = WriteTx::begin(&self.writer).await?;
        // No conflict target: an existing id or name both mean "already there".
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, name, account, provider, operation, params, state, cursor,
                               attempts, polls, steps, next_run_at, lease_owner, lease_until,
                               last_error, result, created_at, updated_at, finished_at,
                               deadline_at, source, request_sha256, hooks, hooks_state,
                               hooks_attempts, hooks_next_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)
             ON CONFLICT DO NOTHING",
        )
        .bind(&job.id)
        .bind(&job.name)
        .bind(&job.account)
        .bind(&job.provider)
        .bind(&job.operation)
        .bind(job.params.to_string())
        .bind(job.state.as_str())
        .bind(job.cursor.to_string())
        .bind(i64::from(job.attempts))
        .bind(i64::from(job.polls))
        .bind(i64::from(job.steps))
        .bind(job.next_run_at)
        .bind(job.lease_owner.as_deref())
        .bind(job.lease_until)
        .bind(job.last_error.as_deref())
        .bind(result)
        .bind(job.created_at)
        .bind(job.updated_at)
        .bind(job.finished_at)
        .bind(job.deadline_at)
        .bind(&job.source)
        .bind(&job.request_sha256)
        .bind(hooks)
        .bind(job.hooks_state.as_deref())
        .bind(i64::from(job.hooks_attempts))
        .bind(stored.hooks_next_at)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            tx.rollback().await;
            return Ok(false);
        }
        for event in events {
            insert_event(
                &mut tx,
                &job.id,
                event.at,
                &event.kind,
                &event.message,
                event.detail.as_ref(),
            )
            .await?;
        }
        tx.commit().await?;
        if matches!(job.state, JobState::Queued | JobState::Waiting) {
            self.wakeup.notify_one();
        }
        if job.hooks_state.as_deref() == Some("pending") {
            self.hooks_wakeup.notify_one();
        }
        Ok(true)
    }

    pub async fn schedule_runs(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT schedule, last_fire_at FROM schedule_runs ORDER BY schedule")
                .fetch_all(&self.reader)
                .await?;
        Ok(rows)
    }
}

/// Writes queued at most (callers wait beyond that: back-pressure).
const WRITE_QUEUE: usize = 1024;
/// Writes per group commit at most.
const MAX_BATCH: usize = 256;

/// A hot write, with what it needs already serialised.
enum WriteOp {
    Insert {
        job: Box<NewJob>,
        params: String,
        hooks: Option<String>,
    },
    Checkpoint {
        id: String,
        owner: String,
        cursor: String,
    },
    Finish {
        id: String,
        owner: String,
        transition: Box<Transition>,
        result: Option<String>,
    },
    Settle {
        id: String,
        owner: String,
        settlement: Box<Settlement>,
        result: Option<String>,
    },
    Claim {
        owner: String,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    },
}

/// What a write did: the row it wrote, or nothing (the name was taken, or
/// the compare-and-set found the job moved).
enum Written {
    Job(Box<Job>),
    /// The jobs a claim took.
    Jobs(Vec<Job>),
    /// Written; the caller needs no row back.
    Row,
    Nothing,
}

struct PendingWrite {
    op: WriteOp,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// Group commit. The hot writes (new jobs, checkpoints, step outcomes) of
/// every task go through this one loop: it takes whatever is queued, applies
/// it in one transaction and commits once, so a burst of N transitions costs
/// one WAL fsync instead of N. No write is answered before its commit is
/// durable (`synchronous=FULL`), so the promises hold exactly as with one
/// transaction each. Nothing waits on purpose: the batch is what queued up
/// while the previous commit was being synced.
async fn write_loop(pool: SqlitePool, mut queue: mpsc::Receiver<PendingWrite>, trouble: Trouble) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let applied = apply_batch(&pool, &batch).await;
        crate::metrics::store_commit(batch.len(), started.elapsed());
        note_commit(
            &trouble,
            applied.as_ref().map(|results| results.iter().any(wrote)),
        );
        match applied {
            Ok(results) => {
                for (pending, result) in batch.drain(..).zip(results) {
                    let _ = pending.reply.send(Ok(result));
                }
            }
            // The database is busy (another process holds the write lock
            // past the busy timeout): every write fails alike, and each
            // caller retries as it would after a busy error of its own.
            Err(e) if e.is_transient() => {
                let message = e.to_string();
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(StoreError::Busy(message.clone())));
                }
            }
            // The whole batch was rolled back: apply each write alone, so
            // that only the write at fault fails, with its own error.
            Err(_) => {
                for pending in batch.drain(..) {
                    let result = apply_alone(&pool, &pending.op).await;
                    note_commit(&trouble, result.as_ref().map(wrote));
                    let _ = pending.reply.send(result);
                }
            }
        }
    }
}

/// A write transaction on the writer connection, begun and ended by hand.
///
/// sqlx's own transactions are not used for writes: when SQLite fails a
/// `COMMIT` for want of space or with an I/O error it rolls the
/// transaction back itself, and sqlx 0.9 can be left believing one is
/// still open; its next `begin()` is then a `SAVEPOINT` inside nothing,
/// and every later "commit" returns success without writing a byte (seen
/// in `store_full`: jobs reported done with no write to the WAL). Here a
/// transaction is `BEGIN IMMEDIATE` … `COMMIT`, and a connection whose
/// transaction did not end cleanly is closed rather than reused.
struct WriteTx {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    open: bool,
}

impl WriteTx {
    async fn begin(pool: &SqlitePool) -> Result<WriteTx, StoreError> {
        let mut conn = pool.acquire().await?;
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(WriteTx { conn, open: true })
    }

    async fn commit(mut self) -> Result<(), StoreError> {
        let committed = sqlx::query("COMMIT").execute(&mut *self.conn).await;
        self.open = false;
        if committed.is_err() {
            // SQLite may have rolled back already; if not, closing does.
            let _ = sqlx::query("ROLLBACK").execute(&mut *self.conn).await;
            self.conn.close_on_drop();
        }
        committed.map(|_| ()).map_err(StoreError::from)
    }

    /// Ends the transaction without keeping anything.
    async fn rollback(mut self) {
        if sqlx::query("ROLLBACK")
            .execute(&mut *self.conn)
            .await
            .is_ok()
        {
            self.open = false;
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open {
            // Ended by an error before its commit: closing the connection
            // rolls the transaction back, and the pool opens a fresh one.
            self.conn.close_on_drop();
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

async fn apply_batch(
    pool: &SqlitePool,
    batch: &[PendingWrite],
) -> Result<Vec<Written>, StoreError> {
    let ops: Vec<&WriteOp> = batch.iter().map(|pending| &pending.op).collect();
    let mut tx = WriteTx::begin(pool).await?;
    let results = apply(&mut tx, &ops).await?;
    tx.commit().await?;
    Ok(results)
}

async fn apply_alone(pool: &SqlitePool, op: &WriteOp) -> Result<Written, StoreError> {
    let mut tx = WriteTx::begin(pool).await?;
    let mut written = apply(&mut tx, &[op]).await?;
    tx.commit().await?;
    written
        .pop()
        .ok_or_else(|| StoreError::Corrupt("a write gave no answer".into()))
}

/// The writes of one batch inside its transaction, in a handful of
/// statements whatever the batch's size: every statement is a round trip
/// to SQLite's worker thread, so the new jobs of a batch go in as one
/// `INSERT … SELECT FROM json_each(?)`, its checkpoints and step outcomes as
/// one `UPDATE … FROM json_each(?)` each (a primary-key lookup per row; see
/// the plan test), and all their events as one more insert. The
/// compare-and-set per job is the same as one statement each: a row whose
/// state or lease moved is simply not updated, and its caller gets
/// [`Written::Nothing`]. Answers come back in the order of `ops`.
async fn apply(conn: &mut SqliteConnection, ops: &[&WriteOp]) -> Result<Vec<Written>, StoreError> {
    let mut results: Vec<Option<Written>> = ops.iter().map(|_| None).collect();
    let mut group = Group::default();
    for (i, op) in ops.iter().enumerate() {
        let id = match op {
            WriteOp::Claim { .. } => None,
            WriteOp::Insert { job, .. } => Some(job.id.as_str()),
            WriteOp::Checkpoint { id, .. }
            | WriteOp::Finish { id, .. }
            | WriteOp::Settle { id, .. } => Some(id.as_str()),
        };
        // Writes take effect in the order they were queued where it can
        // matter: a claim sees every write queued before it, and a job
        // written twice in one batch gets its writes one after the other.
        if id.is_none_or(|id| group.ids.contains(id)) {
            group.flush(conn, &mut results).await?;
        }
        match op {
            WriteOp::Claim {
                owner,
                now,
                lease_until,
                limit,
            } => results[i] = Some(claim(conn, owner, *now, *lease_until, *limit).await?),
            WriteOp::Insert { job, params, hooks } => group.inserts.push((i, job, params, hooks)),
            WriteOp::Checkpoint { id, owner, cursor } => {
                group.checkpoints.push((i, id, owner, cursor));
            }
            WriteOp::Finish {
                id,
                owner,
                transition,
                result,
            } => group.finishes.push((i, id, owner, transition, result)),
            WriteOp::Settle {
                id,
                owner,
                settlement,
                result,
            } => group.settles.push((i, id, owner, settlement, result)),
        }
        if let Some(id) = id {
            group.ids.insert(id);
        }
    }
    group.flush(conn, &mut results).await?;
    results
        .into_iter()
        .map(|written| written.ok_or_else(|| StoreError::Corrupt("a write gave no answer".into())))
        .collect()
}

/// Writes of a batch gathered to go in as one statement per kind.
#[derive(Default)]
struct Group<'a> {
    inserts: Vec<(usize, &'a NewJob, &'a String, &'a Option<String>)>,
    checkpoints: Vec<(usize, &'a String, &'a String, &'a String)>,
    finishes: Vec<(
        usize,
        &'a String,
        &'a String,
        &'a Transition,
        &'a Option<String>,
    )>,
    settles: Vec<(
        usize,
        &'a String,
        &'a String,
        &'a Settlement,
        &'a Option<String>,
    )>,
    /// The jobs written in this group.
    ids: HashSet<&'a str>,
}

impl Group<'_> {
    /// Applies the gathered writes and answers them in `results`.
    async fn flush(
        &mut self,
        conn: &mut SqliteConnection,
        results: &mut [Option<Written>],
    ) -> Result<(), StoreError> {
        let inserts = std::mem::take(&mut self.inserts);
        let checkpoints = std::mem::take(&mut self.checkpoints);
        let finishes = std::mem::take(&mut self.finishes);
        let settles = std::mem::take(&mut self.settles);
        self.ids.clear();
        let mut events = Vec::new();
        if !inserts.is_empty() {
            let rows: Vec<serde_json::Value> = inserts
                .iter()
                .map(|(_, job, params, hooks)| {
                    serde_json::json!({
                        "id": job.id, "name": job.name, "account": job.account,
                        "provider": job.provider, "operation": job.operation,
                        "params": params, "created_at": job.created_at,
                        "deadline_at": job.deadline_at, "source": job.source,
                        "sha256": job.request_sha256, "hooks": hooks,
                    })
                })
                .collect();
            // `WHERE true` tells SQLite's parser that ON CONFLICT belongs to the
            // INSERT, not to a join.
            let inserted = sqlx::query(
                "INSERT INTO jobs (id, name, account, provider, operation, params, state, cursor,
                                   next_run_at, created_at, updated_at, deadline_at, source, request_sha256, hooks)
                 SELECT j.value ->> 'id', j.value ->> 'name', j.value ->> 'account', j.value ->> 'provider',
                        j.value ->> 'operation', j.value ->> 'params', 'queued', '{}',
                        j.value ->> 'created_at', j.value ->> 'created_at', j.value ->> 'created_at',
                        j.value ->> 'deadline_at', j.value ->> 'source', j.value ->> 'sha256', j.value ->> 'hooks'
                 FROM json_each(?1) AS j WHERE true
                 ON CONFLICT (name) DO NOTHING
                 RETURNING *",
            )
            .bind(serde_json::Value::Array(rows).to_string())
            .fetch_all(&mut *conn)
            .await?;
            let mut by_id = rows_by_id(&inserted)?;
            for (i, job, _, _) in &inserts {
                results[*i] = Some(match by_id.remove(job.id.as_str()) {
                    Some(row) => {
                        events.push(serde_json::json!([
                            job.id,
                            job.created_at,
                            EventKind::Accepted.as_str(),
                            format!("accepted from {}", job.source),
                            NextRun::now(job.created_at).to_json_string()
                        ]));
                        Written::Job(Box::new(row))
                    }
                    None => Written::Nothing,
                });
            }
        }
        if !checkpoints.is_empty() {
            let rows: Vec<serde_json::Value> = checkpoints
                .iter()
                .map(|(_, id, owner, cursor)| serde_json::json!([id, owner, cursor]))
                .collect();
            let updated: Vec<String> = sqlx::query_scalar(CHECKPOINT_JOBS)
                .bind(serde_json::Value::Array(rows).to_string())
                .bind(crate::job::now_ms())
                .fetch_all(&mut *conn)
                .await?;
            let updated: HashSet<&str> = updated.iter().map(String::as_str).collect();
            for (i, id, _, _) in &checkpoints {
                // The caller needs no row back, only whether the lease held.
                results[*i] = Some(if updated.contains(id.as_str()) {
                    Written::Row
                } else {
                    Written::Nothing
                });
            }
        }
        if !settles.is_empty() {
            let rows: Vec<serde_json::Value> = settles
                .iter()
                .map(|(_, id, owner, s, result)| {
                    serde_json::json!({
                        "id": id, "owner": owner, "cursor": s.cursor.to_string(),
                        "result": result, "last_error": s.last_error,
                        "attempts": s.attempts, "finished_at": s.finished_at,
                    })
                })
                .collect();
            let updated: Vec<String> = sqlx::query_scalar(SETTLE_JOBS)
                .bind(serde_json::Value::Array(rows).to_string())
                .bind(crate::job::now_ms())
                .fetch_all(&mut *conn)
                .await?;
            let updated: HashSet<&str> = updated.iter().map(String::as_str).collect();
            for (i, id, _, _, _) in &settles {
                results[*i] = Some(if updated.contains(id.as_str()) {
                    Written::Row
                } else {
                    Written::Nothing
                });
            }
        }
        if !finishes.is_empty() {
            let now = crate::job::now_ms();
            let rows: Vec<serde_json::Value> = finishes
                .iter()
                .map(|(_, id, owner, t, result)| {
                    serde_json::json!({
                        "id": id, "owner": owner, "state": t.state.as_str(),
                        "cursor": t.cursor.to_string(), "next_run_at": t.next_run_at,
                        "attempts": t.attempts, "polls": t.polls, "last_error": t.last_error,
                        "result": result,
                        "finished_at": t.state.is_finished().then_some(now),
                        "hooks": i64::from(t.hooks_pending),
                    })
                })
                .collect();
            let updated = sqlx::query(FINISH_JOBS)
                .bind(serde_json::Value::Array(rows).to_string())
                .bind(now)
                .fetch_all(&mut *conn)
                .await?;
            let mut by_id = rows_by_id(&updated)?;
            for (i, id, _, t, _) in &finishes {
                results[*i] = Some(match by_id.remove(id.as_str()) {
                    Some(row) => {
                        events.push(serde_json::json!([
                            id,
                            now,
                            t.event.0.as_str(),
                            t.event.1,
                            t.detail.as_ref().map(NextRun::to_json_string)
                        ]));
                        Written::Job(Box::new(row))
                    }
                    None => Written::Nothing,
                });
            }
        }
        if !events.is_empty() {
            sqlx::query(
                "INSERT INTO job_events (job_id, at, kind, message, detail)
                 SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4
                 FROM json_each(?1) AS j ORDER BY j.key",
            )
            .bind(serde_json::Value::Array(events).to_string())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// The jobs of `rows` by id.
fn rows_by_id(rows: &[sqlx::sqlite::SqliteRow]) -> Result<HashMap<String, Job>, StoreError> {
    rows.iter()
        .map(|row| job_from_row(row).map(|job| (job.id.clone(), job)))
        .collect()
}

/// Claims up to `limit` due jobs under a lease for `owner`.
async fn claim(
    conn: &mut SqliteConnection,
    owner: &str,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Written, StoreError> {
    // The sub-select walks `jobs_due` in order and stops after `limit`
    // rows; the outer UPDATE touches only those.
    let rows = sqlx::query(concat!(
        "UPDATE jobs
         SET state = 'running', lease_owner = ?1, lease_until = ?2, updated_at = ?3, steps = steps + 1
         WHERE id IN (",
        due_jobs!(),
        ") RETURNING *"
    ))
    .bind(owner)
    .bind(lease_until)
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let jobs = rows
        .iter()
        .map(job_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Written::Jobs(jobs))
}

async fn insert_event(
    conn: &mut SqliteConnection,
    job_id: &str,
    at: Millis,
    kind: &str,
    message: &str,
    detail: Option<&NextRun>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO job_events (job_id, at, kind, message, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(job_id)
    .bind(at)
    .bind(kind)
    .bind(message)
    .bind(detail.map(NextRun::to_json_string))
    .execute(conn)
    .await?;
    Ok(())
}

/// An exclusive lock next to the database file, held by the running daemon,
/// so two daemons never share one SQLite store (each would take the other's
/// leases back at start-up). The CLI does not take it.
pub struct DaemonLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl DaemonLock {
    pub fn acquire(db: &Path) -> Result<DaemonLock, StoreError> {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| {
                open_error(db, format!("cannot open lock file {}: {e}", path.display()))
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DaemonLock { _file: file, path }),
            Err(std::fs::TryLockError::WouldBlock) => Err(open_error(
                db,
                format!(
                    "another docfetch daemon is running on this store (lock {} is held)",
                    path.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(open_error(
                db,
                format!("cannot lock {}: {e}", path.display()),
            )),
        }
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

#[cfg(test)]
mod tests {
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
}
