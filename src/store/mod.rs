//! The durable job queue. [`Store`] is chosen by the URL scheme of
//! `store.url`: SQLite (`sqlite://…`), the embedded default for one daemon,
//! or PostgreSQL (`postgres://…`), which several daemons share.
//!
//! Every state change is a compare-and-set: the SQL names the state (and for
//! running jobs, the lease owner) it expects, and reports
//! [`StoreError::Conflict`] when the row moved — for instance when a user
//! cancelled a job while a worker was polling it.

pub mod copy;
pub mod postgres;
mod shape;
pub mod sqlite;
pub mod views;

pub(crate) use shape::job_from_row;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::job::{EventKind, Job, JobEvent, JobResult, JobState, Millis, NewJob, NextRun};

/// Store failures, classified for the caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A job with this name exists already.
    #[error("a job named {name:?} already exists")]
    Duplicate { name: String, existing: Box<Job> },
    /// The row was not in the expected state or lease: someone else moved it.
    #[error("job {id} was changed by someone else ({detail})")]
    Conflict { id: String, detail: String },
    #[error("no job named or with id {0:?}")]
    NotFound(String),
    #[error("the job store holds data it cannot read: {0}")]
    Corrupt(String),
    #[error("cannot open the job store at {url}: {message}")]
    Open { url: String, message: String },
    #[error("job store error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("job store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A transient failure shared by every write of one group commit.
    #[error("job store busy: {0}")]
    Busy(String),
    /// The store's last commit failed for want of space or an I/O error
    /// (see [`StoreError::is_unavailable`]); `/readyz` shows the reason.
    #[error("the job store cannot commit: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// The store cannot take writes for now, through no fault of the
    /// write: its disk is full, it reports an I/O error, or the database
    /// server is out of space or unreachable. Whoever holds an outcome
    /// keeps it and tries again (an outcome dropped here would repeat its
    /// step at the service: a second order).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Database(sqlx::Error::Database(db)) => {
                if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    // 53: insufficient resources (53100 disk full); 58: system
                    // error (58030 I/O error).
                    return pg.code().starts_with("53") || pg.code().starts_with("58");
                }
                // SQLITE_IOERR (10), SQLITE_FULL (13), SQLITE_CANTOPEN (14),
                // including extended codes.
                let code = db.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
                matches!(code & 0xff, 10 | 13 | 14)
            }
            StoreError::Database(sqlx::Error::Io(_)) => true,
            _ => false,
        }
    }

    /// Errors worth retrying (a busy or briefly unavailable database).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Busy(_) => true,
            StoreError::Database(sqlx::Error::Database(db)) => {
                if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    return is_transient_sqlstate(pg.code());
                }
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), including extended codes.
                let code = db.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
                matches!(code & 0xff, 5 | 6)
            }
            StoreError::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed,
            ) => true,
            _ => false,
        }
    }
}

/// PostgreSQL SQLSTATEs that a second attempt can get past: serialization
/// failures and deadlocks (the other transaction won), the server shutting
/// down or starting up (a fail-over), and lost connections (class 08).
pub fn is_transient_sqlstate(code: &str) -> bool {
    matches!(code, "40001" | "40P01" | "57P01" | "57P02" | "57P03") || code.starts_with("08")
}

/// A job with the columns [`Job`] leaves out, as [`Store::export_jobs`]
/// reads it and [`Store::import_job`] writes it back elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    pub job: Job,
    /// When pending completion hooks are next due (or held until).
    pub hooks_next_at: Option<Millis>,
}

/// How a running job's step ended, as the scheduler persists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// `Waiting`, `Done` or `Failed`.
    pub state: JobState,
    pub cursor: serde_json::Value,
    pub next_run_at: Millis,
    pub attempts: u32,
    pub polls: u32,
    pub last_error: Option<String>,
    pub result: Option<JobResult>,
    /// One line for the job's history: its kind and message.
    pub event: (EventKind, String),
    /// Why the next run is when it is, for a job that waits.
    pub detail: Option<NextRun>,
    /// Completion hooks are due (the job finished and has some).
    pub hooks_pending: bool,
}

impl Transition {
    /// `job` waits at `next` with `cursor`: the service is still working
    /// (`poll`: counted as a poll) or the step made progress.
    pub fn wait(
        job: &Job,
        cursor: serde_json::Value,
        poll: bool,
        next: NextRun,
        message: String,
    ) -> Self {
        Transition {
            state: JobState::Waiting,
            cursor,
            next_run_at: next.next_run_at,
            attempts: 0,
            polls: job.polls + u32::from(poll),
            last_error: None,
            result: None,
            event: (
                if poll {
                    EventKind::Poll
                } else {
                    EventKind::Progress
                },
                message,
            ),
            detail: Some(next),
            hooks_pending: false,
        }
    }

    /// `job` met a transient error (`error`, its `attempts`-th in a row)
    /// and is tried again at `next`; `message` is the history's line.
    pub fn retry(job: &Job, attempts: u32, error: String, next: NextRun, message: String) -> Self {
        Transition {
            state: JobState::Waiting,
            cursor: job.cursor.clone(),
            next_run_at: next.next_run_at,
            attempts,
            polls: job.polls,
            last_error: Some(error),
            result: None,
            event: (EventKind::Error, message),
            detail: Some(next),
            hooks_pending: false,
        }
    }

    /// The settled `job` becomes `state` (done or failed), with its hooks
    /// due when `hooks_pending`.
    pub fn finish(job: &Job, state: JobState, message: String, hooks_pending: bool) -> Self {
        let kind = if state == JobState::Done {
            EventKind::Done
        } else {
            EventKind::Failed
        };
        Transition {
            state,
            cursor: job.cursor.clone(),
            next_run_at: crate::job::now_ms(),
            attempts: job.attempts,
            polls: job.polls,
            last_error: job.last_error.clone(),
            result: job.result.clone(),
            event: (kind, message),
            detail: None,
            hooks_pending,
        }
    }
}

/// The outcome of a job, committed before its receipt is written (see
/// [`Job::settled`](crate::job::Job::settled)): the job stays `running`
/// under its lease, with its result or error and its end time stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub cursor: serde_json::Value,
    /// `Some` for a job that is done, `None` for one that failed.
    pub result: Option<JobResult>,
    /// Why the job failed (`None` when it is done).
    pub last_error: Option<String>,
    pub attempts: u32,
    pub finished_at: Millis,
}

/// What `/metrics` reports about the store, read in one go.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// (state, provider, count).
    pub by_state: Vec<(JobState, String, u64)>,
    /// Creation time of the oldest queued or waiting job.
    pub oldest_waiting_created: Option<Millis>,
    /// The earliest `next_run_at` of a queued or waiting job.
    pub next_due: Option<Millis>,
}

/// The job a schedule's latest fired occurrence became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleJob {
    pub schedule: String,
    /// The job's name (a job may since have been pruned).
    pub job: String,
    /// The occurrence's scheduled time (Unix ms).
    pub at: Millis,
}

/// The answer to a request for one of an account's concurrent-step slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotGrant {
    /// The step may run; the slot is released after it.
    Granted,
    /// All of the account's slots are held (by any daemon).
    Busy,
    /// The account pauses after a 429 until then (Unix ms).
    Cooling(Millis),
}

/// Filters for listing jobs.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub account: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// The job store. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens (creating if needed) the store named by `url` and applies migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(sqlite::SqliteStore::open(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(postgres::PgStore::open(url).await?))
        } else {
            Err(StoreError::Open {
                url: redact_store_url(url),
                message: "unsupported scheme; expected sqlite:// or postgres://".into(),
            })
        }
    }

    /// Signalled in this process whenever work is added or becomes due sooner.
    pub fn wakeup(&self) -> Arc<Notify> {
        match self {
            Store::Sqlite(s) => s.wakeup(),
            Store::Postgres(s) => s.wakeup(),
        }
    }

    pub async fn insert(&self, job: &NewJob) -> Result<Job, StoreError> {
        dispatch!(self.insert(job))
    }
    /// Finds a job by name or id.
    pub async fn find(&self, key: &str) -> Result<Option<Job>, StoreError> {
        dispatch!(self.find(key))
    }
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        dispatch!(self.list(filter))
    }
    pub async fn events(&self, job_id: &str) -> Result<Vec<JobEvent>, StoreError> {
        dispatch!(self.events(job_id))
    }
    pub async fn add_event(
        &self,
        job_id: &str,
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        dispatch!(self.add_event(job_id, kind, message))
    }
    /// Leases up to `limit` due jobs (queued or waiting, `next_run_at <= now`)
    /// to `owner` until `lease_until`, oldest due first.
    pub async fn claim_due(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        dispatch!(self.claim_due(owner, now, lease_until, limit))
    }
    /// The earliest `next_run_at` of any queued or waiting job.
    pub async fn next_due_at(&self) -> Result<Option<Millis>, StoreError> {
        dispatch!(self.next_due_at())
    }
    /// Extends a lease; `Conflict` when the job is no longer ours.
    pub async fn renew_lease(
        &self,
        id: &str,
        owner: &str,
        until: Millis,
    ) -> Result<(), StoreError> {
        dispatch!(self.renew_lease(id, owner, until))
    }
    /// Saves the provider's cursor mid-step (the job stays running and leased).
    pub async fn checkpoint(
        &self,
        id: &str,
        owner: &str,
        cursor: &serde_json::Value,
    ) -> Result<(), StoreError> {
        dispatch!(self.checkpoint(id, owner, cursor))
    }
    /// Commits a job's outcome while it stays running under `owner`'s
    /// lease (the first of a job's two final commits; see
    /// [`Job::settled`](crate::job::Job::settled)).
    pub async fn settle(&self, id: &str, owner: &str, s: &Settlement) -> Result<(), StoreError> {
        dispatch!(self.settle(id, owner, s))
    }
    /// Ends a step: running → waiting/done/failed, releasing the lease. A
    /// settled job keeps the end time it was settled with.
    pub async fn finish_step(
        &self,
        id: &str,
        owner: &str,
        t: &Transition,
    ) -> Result<Job, StoreError> {
        dispatch!(self.finish_step(id, owner, t))
    }
    /// Hands a claimed job back unrun (its account is busy or pausing):
    /// running → waiting until `next_run_at`, counters untouched.
    pub async fn postpone(
        &self,
        id: &str,
        owner: &str,
        next_run_at: Millis,
    ) -> Result<(), StoreError> {
        dispatch!(self.postpone(id, owner, next_run_at))
    }
    /// [`postpone`](Self::postpone) until `next.next_run_at`, recording a
    /// `postponed` event whose detail says why.
    pub(crate) async fn postpone_because(
        &self,
        id: &str,
        owner: &str,
        next: &NextRun,
        message: &str,
    ) -> Result<(), StoreError> {
        dispatch!(self.postpone_because(id, owner, next, message))
    }
    /// Puts the jobs leased by `owner` (or by anyone, with `None`) back to
    /// waiting, due now. Used at shutdown and at start-up.
    pub async fn release_leases(
        &self,
        owner: Option<&str>,
        now: Millis,
    ) -> Result<u64, StoreError> {
        dispatch!(self.release_leases(owner, now))
    }
    /// Takes back leases that expired (their holder died or hung), except
    /// those of the jobs in `keep`: the jobs this process is still working
    /// on, whose lease could only lapse because the store refused its
    /// renewals (a full disk), and whose outcome is waiting to be committed.
    pub async fn reclaim_expired(&self, now: Millis, keep: &[String]) -> Result<u64, StoreError> {
        dispatch!(self.reclaim_expired(now, keep))
    }
    /// queued/waiting/running → cancelled.
    pub async fn cancel(&self, key: &str, now: Millis) -> Result<Job, StoreError> {
        dispatch!(self.cancel(key, now))
    }
    /// failed/cancelled → queued, starting over with a fresh deadline.
    pub async fn retry(
        &self,
        key: &str,
        now: Millis,
        deadline_at: Millis,
    ) -> Result<Job, StoreError> {
        dispatch!(self.retry(key, now, deadline_at))
    }
    /// Number of jobs in each state.
    pub async fn counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        dispatch!(self.counts())
    }
    /// Counts and times for metrics.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        dispatch!(self.snapshot())
    }
    /// A cheap query that proves the store answers (for `/readyz`). While
    /// the store's last commit failed for want of space or an I/O error, it
    /// tries a small commit and fails with the reason until one succeeds.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self.ping())
    }
    /// Takes one of `account`'s `limit` concurrent-step slots for `job_id`.
    /// Only a shared (PostgreSQL) store keeps slots: a SQLite store has one
    /// daemon, whose in-memory limits are exact, and always grants.
    pub async fn take_account_slot(
        &self,
        account: &str,
        job_id: &str,
        owner: &str,
        limit: usize,
        now: Millis,
    ) -> Result<SlotGrant, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(SlotGrant::Granted),
            Store::Postgres(s) => {
                s.take_account_slot(account, job_id, owner, limit, now)
                    .await
            }
        }
    }
    /// Gives back a slot taken by [`Store::take_account_slot`].
    pub async fn release_account_slot(
        &self,
        account: &str,
        job_id: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.release_account_slot(account, job_id, owner).await,
        }
    }
    /// Pauses `account` for every daemon sharing the store until `until`
    /// (never shortening a longer pause). A no-op for SQLite (one daemon).
    pub async fn cool_down_account(&self, account: &str, until: Millis) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.cool_down_account(account, until).await,
        }
    }
    /// Closes the store's connections (every clone's: they share them).
    pub async fn close(&self) -> Result<(), StoreError> {
        dispatch!(self.close())
    }
    /// Signalled in this process when a finished job has hooks to run.
    pub fn hooks_wakeup(&self) -> Arc<Notify> {
        match self {
            Store::Sqlite(s) => s.hooks_wakeup(),
            Store::Postgres(s) => s.hooks_wakeup(),
        }
    }
    /// Takes up to `limit` finished jobs whose hooks are due, holding them
    /// until `hold_until` so no other runner takes them meanwhile.
    pub async fn claim_hooks(
        &self,
        now: Millis,
        hold_until: Millis,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        dispatch!(self.claim_hooks(now, hold_until, limit))
    }
    /// Records a hook run: `state` is `done`, `failed` or `pending` (again at `next_at`).
    pub async fn finish_hooks(
        &self,
        id: &str,
        state: &str,
        attempts: u32,
        next_at: Millis,
    ) -> Result<(), StoreError> {
        dispatch!(self.finish_hooks(id, state, attempts, next_at))
    }
    /// The earliest time a pending hook is due.
    pub async fn next_hooks_at(&self) -> Result<Option<Millis>, StoreError> {
        dispatch!(self.next_hooks_at())
    }
    /// Deletes finished jobs that ended before the cut-offs (done, and
    /// failed or cancelled), at most `limit` at a time; returns their names.
    pub async fn prune(
        &self,
        done_before: Millis,
        failed_before: Millis,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        dispatch!(self.prune(done_before, failed_before, limit))
    }
    /// When `schedule` last fired (its scheduled time).
    pub async fn last_fire(&self, schedule: &str) -> Result<Option<Millis>, StoreError> {
        dispatch!(self.last_fire(schedule))
    }
    /// Moves `schedule`'s last firing forward to `at` (never backwards).
    pub async fn set_last_fire(&self, schedule: &str, at: Millis) -> Result<(), StoreError> {
        dispatch!(self.set_last_fire(schedule, at))
    }
    /// A number that changes whenever another process commits to the store.
    pub async fn change_counter(&self) -> Result<i64, StoreError> {
        dispatch!(self.change_counter())
    }
    /// Up to `limit` jobs in id order, after the job `after` (from the
    /// start with `None`), every column included: for copying a store.
    pub async fn export_jobs(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredJob>, StoreError> {
        dispatch!(self.export_jobs(after, limit))
    }
    /// Writes a job exactly as another store holds it, with its history, in
    /// one transaction. `false`, with nothing written, when a job with its
    /// id or its name is already here.
    pub(crate) async fn import_job(
        &self,
        job: &StoredJob,
        events: &[JobEvent],
    ) -> Result<bool, StoreError> {
        dispatch!(self.import_job(job, events))
    }
    /// Folds the job counts' pending changes (PostgreSQL; SQLite's triggers
    /// keep them whole); returns how many changes were folded.
    pub async fn fold_counts(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(0),
            Store::Postgres(s) => s.fold_counts().await,
        }
    }
    /// Every schedule's last firing, by schedule name.
    pub async fn schedule_runs(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        dispatch!(self.schedule_runs())
    }
    /// Records that the occurrence of `schedule` at `at` is the job named
    /// `job` (kept only when no later occurrence is recorded already).
    pub async fn note_schedule_job(
        &self,
        schedule: &str,
        job: &str,
        at: Millis,
    ) -> Result<(), StoreError> {
        dispatch!(self.note_schedule_job(schedule, job, at))
    }
    /// The job each schedule's latest fired occurrence became, by schedule
    /// name (schedules that never made a job are absent).
    pub async fn schedule_jobs(&self) -> Result<Vec<ScheduleJob>, StoreError> {
        dispatch!(self.schedule_jobs())
    }
}

/// A compare-and-set that touched no row: the job moved under us.
fn expect_one(rows: u64, id: &str, what: &str) -> Result<(), StoreError> {
    if rows == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            id: id.to_string(),
            detail: format!("{what}: the job is no longer running under this lease"),
        })
    }
}

/// Hides the password of a database URL (`postgres://user:pw@host`).
pub fn redact_store_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}
