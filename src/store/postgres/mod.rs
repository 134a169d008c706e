//! The PostgreSQL store, for fleets of daemons sharing one queue.
//!
//! Every query has the semantics of its twin in [`super::sqlite`]; what
//! differs is how several writers are kept apart:
//!
//! - Claims lock the due rows with `FOR UPDATE SKIP LOCKED`, so two daemons
//!   claiming at once take disjoint jobs without waiting for each other.
//! - Transitions stay compare-and-set (`WHERE id = $1 AND state = 'running'
//!   AND lease_owner = $2`): a daemon whose lease was taken back can never
//!   overwrite what the new holder wrote.
//! - The hot writes (new jobs, claims, checkpoints, step outcomes, slot
//!   releases) go through one writer task per store handle ([`write`]),
//!   which applies whatever is queued in one transaction of a handful of
//!   statements over arrays and commits once: a step's outcome, its line of
//!   history and its announcement commit together or not at all, and a
//!   burst of N writes costs one commit instead of N.
//! - Work added or made due by one daemon is announced with `pg_notify`
//!   (delivered only if it commits); every store runs a `LISTEN` task that
//!   turns announcements from other processes into the in-process wake-ups
//!   the scheduler and hook runner already wait on. Polling stays the
//!   fallback: [`PgStore::change_counter`] counts the announcements, and a
//!   lost listener connection counts as a change.
//! - Migrations run under sqlx's `pg_advisory_lock`, on a connection of
//!   their own that is closed afterwards, so a failed migration cannot leave
//!   the lock held by a pooled connection.
//!
//! The URL's password never leaves this module: errors carry the URL with
//! the password replaced by [`crate::store::redact_store_url`].

mod commands;
mod export;
mod hooks;
mod listen;
mod slots;
#[cfg(test)]
mod tests;
mod upkeep;
mod write;

use listen::{Signals, connect_listener, listen};
use write::{PendingWrite, WRITE_QUEUE, WriteOp, Writer, Written, write_loop};

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgListener, PgNotification, PgPool, PgPoolOptions,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::shape::{json_text, json_text_opt};
use super::{
    JobFilter, Settlement, SlotGrant, Snapshot, StoreError, StoredJob, Transition, expect_one,
    job_from_row,
};
use crate::job::{Job, JobEvent, JobState, Millis, NewJob, NextRun};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Announces that jobs were added or became due at another time.
pub(crate) const JOBS_CHANNEL: &str = "docfetch_jobs";
/// Announces that a finished job has completion hooks to run.
pub(crate) const HOOKS_CHANNEL: &str = "docfetch_hooks";

/// Announcement payloads are `"<sender> <when>"`: work due now wakes the
/// other daemons at once; work due later (a job waiting for its next poll)
/// only moves their change counter, which an idle scheduler reads once a
/// second. Waking every daemon for every poll scheduled by another would
/// make each of them claim in vain; the daemon that scheduled the poll
/// claims it on time itself, and the others learn of it within a second in
/// case it cannot. A payload without a `<when>` (a hand-made `NOTIFY
/// docfetch_jobs`) counts as due now.
const DUE_NOW: &str = "now";
const DUE_LATER: &str = "later";

fn due_at(next_run_at: Millis, now: Millis) -> &'static str {
    if next_run_at <= now {
        DUE_NOW
    } else {
        DUE_LATER
    }
}

/// Connections per store handle: the writer's, the listener's, and a few
/// for reads, lease renewals and account slots. The hot writes of every
/// worker share the writer's one connection, so more would only queue
/// inside PostgreSQL.
const MAX_CONNECTIONS: u32 = 6;

/// The longest pause between attempts to restore the listener connection.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The columns of a job, in the shape [`job_from_row`] reads. JSON columns
/// are read as text, so they come back exactly as written.
macro_rules! job_columns {
    () => {
        "id, name, account, provider, operation, params::text AS params, state,
         cursor::text AS cursor, attempts, polls, steps, next_run_at, lease_owner,
         lease_until, last_error, result::text AS result, created_at, updated_at,
         finished_at, deadline_at, source, request_sha256, hooks::text AS hooks,
         hooks_state, hooks_attempts"
    };
}
use job_columns;

/// The job counts (migration 0007) as a table of (account, provider, state,
/// n) rows: the folded counts and the changes not folded yet, to be summed.
macro_rules! job_counts {
    () => {
        "(SELECT account, provider, state, n FROM job_counts
          UNION ALL
          SELECT account, provider, state, n FROM job_count_deltas) AS counted"
    };
}
pub(crate) use job_counts;

/// Due jobs, oldest due first, at most `$4`, as of `$3`, locked for this
/// transaction. Rows another daemon is claiming right now are skipped, not
/// waited for; rows that stopped being due meanwhile are re-checked and
/// dropped by PostgreSQL before they are locked. `jobs_due` serves the
/// order, so no sort happens.
macro_rules! due_jobs {
    () => {
        "SELECT id FROM jobs
         WHERE state IN ('queued', 'waiting') AND next_run_at <= $3
         ORDER BY next_run_at LIMIT $4
         FOR UPDATE SKIP LOCKED"
    };
}
use due_jobs;
/// The claim's row selection, for tests that check its plan.
pub const DUE_JOBS: &str = due_jobs!();

// Each transition is one statement: the UPDATE, its line of history and its
// announcement are sub-statements of one `WITH`, so they commit together (a
// statement is its own transaction) in a single round trip. The history
// INSERT reads the updated rows, so a transition that matched nothing
// writes nothing and announces nothing.

/// A select-list item for a statement over the CTE `$from`: `pg_notify` on
/// each channel of the text array `$channels` with payload `$payload`, once
/// per row of `$from`. The reference to `$from` makes PostgreSQL evaluate
/// it per row, so it never runs when nothing matched.
macro_rules! announce {
    ($from:ident, $payload:literal, $channels:literal) => {
        concat!(
            "(SELECT COUNT(pg_notify(channel, ",
            $payload,
            ")) FROM unnest(",
            $channels,
            "::text[]) AS channel WHERE ",
            stringify!($from),
            ".id IS NOT NULL) AS announced"
        )
    };
}
use announce;

/// Runs `$update` (an `UPDATE … RETURNING id`) and returns how many rows it
/// moved, announcing them on the channels `$channels` with `$payload`
/// unless there were none.
macro_rules! count_and_announce {
    ($update:literal, $payload:literal, $channels:literal) => {
        concat!(
            "WITH moved AS (",
            $update,
            ") SELECT n, (SELECT COUNT(pg_notify(channel, ",
            $payload,
            ")) FROM unnest(",
            $channels,
            "::text[]) AS channel WHERE n > 0) AS announced
             FROM (SELECT COUNT(*) AS n FROM moved) AS counted"
        )
    };
}

/// PostgreSQL-backed job store. Cheap to clone; the listener task stops
/// when the last clone is dropped.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// Identifies this handle in notification payloads, so its listener can
    /// ignore its own announcements (the local wake-ups already happened).
    instance: String,
    wakeup: Arc<Notify>,
    hooks_wakeup: Arc<Notify>,
    /// Announcements received from other processes (and lost connections).
    changes: Arc<AtomicI64>,
    stop_listener: CancellationToken,
    /// The group-commit queue of the hot writes (see [`write_loop`]).
    writes: mpsc::Sender<PendingWrite>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_listener.cancel();
    }
}

fn open_error(url: &str, message: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        url: crate::store::redact_store_url(url),
        message: message.to_string(),
    }
}

impl PgStore {
    /// Connects to the database named by `url`, applies pending migrations
    /// (serialised across daemons by an advisory lock) and starts listening
    /// for other daemons' announcements.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| open_error(url, e))?;
        // Migrations get a one-connection pool that is closed afterwards,
        // whatever happened: sqlx leaves its session-level advisory lock held
        // when a migration fails, and closing the session is what frees it.
        let migrations = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|e| open_error(url, e))?;
        let migrated = MIGRATOR.run(&migrations).await;
        migrations.close().await;
        migrated?;

        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(30))
            // sqlx already pings every connection as it goes back to the
            // pool; pinging again on the way out would double the round
            // trips of every statement. A connection that dies while idle
            // fails one statement with an I/O error, which callers treat as
            // transient, and is then replaced.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| open_error(url, e))?;
        let signals = Signals {
            instance: uuid::Uuid::new_v4().simple().to_string(),
            wakeup: Arc::new(Notify::new()),
            hooks_wakeup: Arc::new(Notify::new()),
            changes: Arc::new(AtomicI64::new(0)),
        };
        // Listening before `open` returns: nothing announced after that is missed.
        let listener = connect_listener(&pool)
            .await
            .map_err(|e| open_error(url, e))?;
        let stop_listener = CancellationToken::new();
        tokio::spawn(listen(
            pool.clone(),
            listener,
            signals.clone(),
            stop_listener.clone(),
        ));
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let writer = Writer {
            pool: pool.clone(),
            instance: signals.instance.clone(),
        };
        // The writer ends when the last handle (the queue's last sender) goes.
        tokio::spawn(write_loop(writer, queue));
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                instance: signals.instance,
                wakeup: signals.wakeup,
                hooks_wakeup: signals.hooks_wakeup,
                changes: signals.changes,
                stop_listener,
                writes,
            }),
        })
    }

    /// The connection pool, for tests that inspect the database directly.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn wakeup(&self) -> Arc<Notify> {
        self.inner.wakeup.clone()
    }

    pub fn hooks_wakeup(&self) -> Arc<Notify> {
        self.inner.hooks_wakeup.clone()
    }

    /// The payload of this handle's announcements of work due at `due`.
    fn payload(&self, due: &str) -> String {
        format!("{} {due}", self.inner.instance)
    }

    /// Queues `pg_notify` on `channels` in `conn`'s transaction: delivered
    /// when (and only if) it commits.
    async fn announce(
        &self,
        conn: &mut PgConnection,
        channels: &[&str],
        due: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify(channel, $2) FROM unnest($1::text[]) AS channel")
            .bind(channels)
            .bind(self.payload(due))
            .execute(conn)
            .await?;
        trip();
        Ok(())
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
                self.inner.wakeup.notify_one();
                Ok(*job)
            }
            Written::Nothing | Written::Row | Written::Jobs(_) | Written::Grant(_) => {
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
    /// committed (or failed).
    async fn write(&self, op: WriteOp) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writes
            .send(PendingWrite { op, reply })
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?
    }

    pub async fn find(&self, key: &str) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1 OR name = $1 LIMIT 1"
        ))
        .bind(key)
        .fetch_optional(&self.inner.pool)
        .await?;
        trip();
        row.as_ref().map(job_from_row).transpose()
    }

    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let limit = if filter.limit == 0 {
            i64::MAX
        } else {
            i64::from(filter.limit)
        };
        // `COLLATE "C"` orders names byte by byte, as SQLite does; the
        // database's default collation may ignore case and punctuation.
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs
             WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR account = $2)
             ORDER BY created_at DESC, name COLLATE \"C\"
             LIMIT $3 OFFSET $4"
        ))
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.account.as_deref())
        .bind(limit)
        .bind(i64::from(filter.offset))
        .fetch_all(&self.inner.pool)
        .await?;
        trip();
        rows.iter().map(job_from_row).collect()
    }

    pub async fn events(&self, job_id: &str) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, kind, message, detail FROM job_events WHERE job_id = $1 ORDER BY seq",
        )
        .bind(job_id)
        .fetch_all(&self.inner.pool)
        .await?;
        trip();
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
        let mut conn = self.inner.pool.acquire().await?;
        insert_event(&mut conn, job_id, crate::job::now_ms(), kind, message, None).await
    }

    pub async fn claim_due(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let op = WriteOp::Claim {
            owner: owner.to_string(),
            now,
            lease_until,
            limit,
        };
        Ok(match self.write(op).await? {
            Written::Jobs(jobs) => jobs,
            Written::Job(_) | Written::Row | Written::Nothing | Written::Grant(_) => Vec::new(),
        })
    }

    pub async fn next_due_at(&self) -> Result<Option<Millis>, StoreError> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(next_run_at) FROM jobs WHERE state IN ('queued', 'waiting')",
        )
        .fetch_one(&self.inner.pool)
        .await?;
        trip();
        Ok(row.0)
    }

    pub async fn renew_lease(
        &self,
        id: &str,
        owner: &str,
        until: Millis,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_until = $3
             WHERE id = $1 AND state = 'running' AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(until)
        .execute(&self.inner.pool)
        .await?;
        autocommit();
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
            Written::Job(_) | Written::Row | Written::Jobs(_) | Written::Grant(_) => Ok(()),
        }
    }

    pub async fn settle(&self, id: &str, owner: &str, s: &Settlement) -> Result<(), StoreError> {
        let op = WriteOp::Settle {
            id: id.to_string(),
            owner: owner.to_string(),
            result: json_text_opt(s.result.as_ref())?,
            settlement: Box::new(s.clone()),
        };
        match self.write(op).await? {
            Written::Nothing => expect_one(0, id, "settling the outcome"),
            Written::Job(_) | Written::Row | Written::Jobs(_) | Written::Grant(_) => Ok(()),
        }
    }

    pub async fn finish_step(
        &self,
        id: &str,
        owner: &str,
        t: &Transition,
    ) -> Result<Job, StoreError> {
        let op = WriteOp::Finish {
            id: id.to_string(),
            owner: owner.to_string(),
            result: json_text_opt(t.result.as_ref())?,
            transition: Box::new(t.clone()),
        };
        match self.write(op).await? {
            Written::Job(job) => {
                if t.hooks_pending {
                    self.inner.hooks_wakeup.notify_one();
                }
                Ok(*job)
            }
            Written::Nothing | Written::Row | Written::Jobs(_) | Written::Grant(_) => {
                Err(StoreError::Conflict {
                    id: id.to_string(),
                    detail: "the job is no longer running under this lease".into(),
                })
            }
        }
    }

    pub async fn postpone(
        &self,
        id: &str,
        owner: &str,
        next_run_at: Millis,
    ) -> Result<(), StoreError> {
        // The claim counted a step that did not run; take it back. Another
        // daemon may have room for this account once it is due.
        let (moved, _): (i64, i64) = sqlx::query_as(count_and_announce!(
            "UPDATE jobs SET state = 'waiting', lease_owner = NULL, lease_until = NULL,
                             next_run_at = $3, steps = GREATEST(steps - 1, 0)
             WHERE id = $1 AND state = 'running' AND lease_owner = $2
             RETURNING id",
            "$4",
            "$5"
        ))
        .bind(id)
        .bind(owner)
        .bind(next_run_at)
        .bind(self.payload(due_at(next_run_at, crate::job::now_ms())))
        .bind(&[JOBS_CHANNEL][..])
        .fetch_one(&self.inner.pool)
        .await?;
        autocommit();
        expect_one(u64::try_from(moved).unwrap_or(0), id, "postpone")
    }

    /// [`postpone`](Self::postpone), and a `postponed` event that says why.
    pub(crate) async fn postpone_because(
        &self,
        id: &str,
        owner: &str,
        next: &NextRun,
        message: &str,
    ) -> Result<(), StoreError> {
        let now = crate::job::now_ms();
        // `count_and_announce!` with a history insert beside the update
        // (data-modifying statements must sit at the top level of WITH).
        let (moved, _): (i64, i64) = sqlx::query_as(
            "WITH moved AS (
                 UPDATE jobs SET state = 'waiting', lease_owner = NULL, lease_until = NULL,
                                 next_run_at = $3, steps = GREATEST(steps - 1, 0)
                 WHERE id = $1 AND state = 'running' AND lease_owner = $2
                 RETURNING id),
             history AS (
                 INSERT INTO job_events (job_id, at, kind, message, detail)
                 SELECT id, $6, 'postponed', $7, $8 FROM moved)
             SELECT n, (SELECT COUNT(pg_notify(channel, $4)) FROM unnest($5::text[]) AS channel
                        WHERE n > 0) AS announced
             FROM (SELECT COUNT(*) AS n FROM moved) AS counted",
        )
        .bind(id)
        .bind(owner)
        .bind(next.next_run_at)
        .bind(self.payload(due_at(next.next_run_at, now)))
        .bind(&[JOBS_CHANNEL][..])
        .bind(now)
        .bind(message)
        .bind(next.to_json_string())
        .fetch_one(&self.inner.pool)
        .await?;
        autocommit();
        expect_one(u64::try_from(moved).unwrap_or(0), id, "postpone")
    }

    pub async fn release_leases(
        &self,
        owner: Option<&str>,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let (released, _): (i64, i64) = sqlx::query_as(count_and_announce!(
            "UPDATE jobs SET state = 'waiting', lease_owner = NULL, lease_until = NULL,
                             next_run_at = $2, updated_at = $2
             WHERE state = 'running' AND ($1::text IS NULL OR lease_owner = $1)
             RETURNING id",
            "$3",
            "$4"
        ))
        .bind(owner)
        .bind(now)
        .bind(self.payload(DUE_NOW))
        .bind(&[JOBS_CHANNEL][..])
        .fetch_one(&self.inner.pool)
        .await?;
        autocommit();
        if released > 0 {
            self.inner.wakeup.notify_one();
        }
        Ok(u64::try_from(released).unwrap_or(0))
    }

    pub async fn reclaim_expired(&self, now: Millis, keep: &[String]) -> Result<u64, StoreError> {
        // A lease renewed meanwhile is re-checked under the row lock and kept.
        let (reclaimed, _): (i64, i64) = sqlx::query_as(count_and_announce!(
            "UPDATE jobs SET state = 'waiting', lease_owner = NULL, lease_until = NULL,
                             next_run_at = $1, updated_at = $1
             WHERE state = 'running' AND lease_until < $1 AND NOT (id = ANY($4))
             RETURNING id",
            "$2",
            "$3"
        ))
        .bind(now)
        .bind(self.payload(DUE_NOW))
        .bind(&[JOBS_CHANNEL][..])
        .bind(keep)
        .fetch_one(&self.inner.pool)
        .await?;
        autocommit();
        if reclaimed > 0 {
            self.inner.wakeup.notify_one();
        }
        Ok(u64::try_from(reclaimed).unwrap_or(0))
    }

    pub async fn counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
            "SELECT state, SUM(n)::bigint FROM ",
            job_counts!(),
            " GROUP BY state HAVING SUM(n) <> 0"
        ))
        .fetch_all(&self.inner.pool)
        .await?;
        trip();
        rows.into_iter()
            .map(|(state, n)| {
                let state = state.parse().map_err(StoreError::Corrupt)?;
                Ok((state, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(concat!(
            "SELECT state, provider, SUM(n)::bigint FROM ",
            job_counts!(),
            " GROUP BY state, provider HAVING SUM(n) <> 0"
        ))
        .fetch_all(&self.inner.pool)
        .await?;
        trip();
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
                                 SELECT MIN(created_at) FROM jobs WHERE state = 'waiting') AS t",
        )
        .fetch_one(&self.inner.pool)
        .await?;
        trip();
        Ok(Snapshot {
            by_state,
            oldest_waiting_created: oldest.0,
            next_due: self.next_due_at().await?,
        })
    }

    /// Moves the counts' pending changes into `job_counts` (migration 0007);
    /// returns how many delta rows it folded. Concurrent folds are safe: a
    /// delta row is deleted, and so counted, by one of them only.
    pub async fn fold_counts(&self) -> Result<u64, StoreError> {
        let (folded,): (i64,) = sqlx::query_as(
            "WITH moved AS (DELETE FROM job_count_deltas RETURNING account, provider, state, n),
             summed AS (
                 INSERT INTO job_counts (account, provider, state, n)
                 SELECT account, provider, state, SUM(n)::bigint FROM moved
                  GROUP BY account, provider, state
                  ORDER BY account, provider, state
                 ON CONFLICT (account, provider, state)
                 DO UPDATE SET n = job_counts.n + EXCLUDED.n)
             SELECT COUNT(*) FROM moved",
        )
        .fetch_one(&self.inner.pool)
        .await?;
        autocommit();
        Ok(u64::try_from(folded).unwrap_or(0))
    }

    /// Stops the listener and closes the pool, waiting for its connections.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner.stop_listener.cancel();
        self.inner.pool.close().await;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let applied: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.inner.pool)
            .await?;
        trip();
        let expected = i64::try_from(MIGRATOR.iter().count()).unwrap_or(i64::MAX);
        if applied.0 < expected {
            return Err(StoreError::Corrupt(format!(
                "{} of {expected} migrations applied",
                applied.0
            )));
        }
        Ok(())
    }
}

/// One statement sent and answered (a read, or one inside a transaction).
fn trip() {
    crate::metrics::store_round_trips(1);
}

/// One statement that wrote outside a transaction: a round trip and a commit.
fn autocommit() {
    crate::metrics::store_round_trips(1);
    crate::metrics::store_autocommit();
}

async fn insert_event(
    conn: &mut PgConnection,
    job_id: &str,
    at: Millis,
    kind: &str,
    message: &str,
    detail: Option<&NextRun>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO job_events (job_id, at, kind, message, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(job_id)
    .bind(at)
    .bind(kind)
    .bind(message)
    .bind(detail.map(NextRun::to_json_string))
    .execute(conn)
    .await?;
    autocommit();
    Ok(())
}

impl PgStore {
    /// The pool, for the dashboard's queries ([`super::views`]).
    pub(crate) fn read_pool(&self) -> &PgPool {
        &self.inner.pool
    }
}
