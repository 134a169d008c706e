//! The PostgreSQL store's write path: one writer task per store handle
//! applying the hot writes of every caller in group commits, each batch in a
//! handful of statements over `unnest` of arrays.
//!
//! The model is the SQLite store's `write.rs` and River's batched completer:
//! a step's outcome is one row of an array, not a round trip of its own.
//! A batch of N writes costs one transaction, one commit (one WAL flush on
//! the server) and about six statements, whatever N is.

use std::collections::{HashMap, HashSet};

use sqlx::postgres::PgRow;
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::job::EventKind;

/// Writes queued at most (callers wait beyond that: back-pressure).
pub(super) const WRITE_QUEUE: usize = 1024;
/// Writes per group commit at most.
pub(super) const MAX_BATCH: usize = 256;

/// A hot write, with what it needs already serialised.
pub(super) enum WriteOp {
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
    /// Takes an account slot (see `slots.rs`).
    TakeSlot {
        account: String,
        job_id: String,
        owner: String,
        limit: i32,
        now: Millis,
    },
    /// Gives back an account slot (see `slots.rs`).
    ReleaseSlot {
        account: String,
        job_id: String,
        owner: String,
    },
}

/// What a write did: the row it wrote, or nothing (the name was taken, or
/// the compare-and-set found the job moved).
pub(super) enum Written {
    Job(Box<Job>),
    /// The jobs a claim took.
    Jobs(Vec<Job>),
    /// Written; the caller needs no row back.
    Row,
    Nothing,
    /// The answer of `docfetch_take_account_slot` (migration 0003).
    Grant(i64),
}

pub(super) struct PendingWrite {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// What the writer needs besides its queue.
pub(super) struct Writer {
    pub(super) pool: PgPool,
    /// This handle's id in announcement payloads.
    pub(super) instance: String,
}

/// Group commit. The hot writes (new jobs, checkpoints, step outcomes,
/// claims, slot releases) of every task of this handle go through this one
/// loop: it takes whatever is queued, applies it in one transaction and
/// commits once, then answers every caller. No write is answered before its
/// commit, so each promise holds exactly as with a transaction of its own.
/// Nothing waits on purpose: the batch is what queued up while the previous
/// one was being committed.
pub(super) async fn write_loop(writer: Writer, mut queue: mpsc::Receiver<PendingWrite>) {
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
        let ops: Vec<&WriteOp> = batch.iter().map(|pending| &pending.op).collect();
        let applied = apply_batch(&writer, &ops).await;
        crate::metrics::store_commit(batch.len(), started.elapsed());
        match applied {
            Ok(results) => {
                for (pending, result) in batch.drain(..).zip(results) {
                    let _ = pending.reply.send(Ok(result));
                }
            }
            // The whole batch was rolled back (a lost connection, a
            // deadlock with another daemon, one write at fault): apply each
            // write alone, so that each caller gets its own answer and its
            // own error, classified as it would be without batching.
            Err(e) => {
                debug!(error = %e, writes = batch.len(), "a group commit failed; applying its writes one by one");
                for pending in batch.drain(..) {
                    let result = apply_batch(&writer, &[&pending.op])
                        .await
                        .and_then(|mut w| {
                            w.pop()
                                .ok_or_else(|| StoreError::Corrupt("a write gave no answer".into()))
                        });
                    let _ = pending.reply.send(result);
                }
            }
        }
    }
}

/// `ops` in one transaction, committed; their answers in order.
pub(super) async fn apply_batch(
    writer: &Writer,
    ops: &[&WriteOp],
) -> Result<Vec<Written>, StoreError> {
    let mut tx = writer.pool.begin().await?;
    trip();
    let results = apply(writer, &mut tx, ops).await?;
    tx.commit().await?;
    trip();
    Ok(results)
}

/// The writes of one batch inside its transaction, in a handful of
/// statements whatever the batch's size: the new jobs as one `INSERT …
/// SELECT FROM unnest(…)`, checkpoints, settlements and step outcomes as one
/// `UPDATE … FROM unnest(…)` each (a primary-key lookup per row), all their
/// history as one more insert, and the batch's announcements as one
/// `pg_notify` select. The compare-and-set per job is the same as one
/// statement each: a row whose state or lease moved is simply not updated,
/// and its caller gets [`Written::Nothing`]. Answers come back in the order
/// of `ops`.
pub(super) async fn apply(
    writer: &Writer,
    conn: &mut PgConnection,
    ops: &[&WriteOp],
) -> Result<Vec<Written>, StoreError> {
    let mut results: Vec<Option<Written>> = ops.iter().map(|_| None).collect();
    let mut group = Group::default();
    let mut notes = Announcements::default();
    // Slot releases go first: each is for a step that has ended, and a slot
    // freed early can only help a claim or take later in the batch.
    let releases: Vec<(usize, &str, &str, &str)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            WriteOp::ReleaseSlot {
                account,
                job_id,
                owner,
            } => Some((i, account.as_str(), job_id.as_str(), owner.as_str())),
            _ => None,
        })
        .collect();
    if !releases.is_empty() {
        release_slots(conn, &releases).await?;
        for (i, ..) in &releases {
            results[*i] = Some(Written::Row);
        }
    }
    for (i, op) in ops.iter().enumerate() {
        let id = match op {
            WriteOp::ReleaseSlot { .. } | WriteOp::TakeSlot { .. } => continue,
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
            group.flush(conn, &mut results, &mut notes).await?;
        }
        match op {
            WriteOp::ReleaseSlot { .. } | WriteOp::TakeSlot { .. } => {}
            WriteOp::Claim {
                owner,
                now,
                lease_until,
                limit,
            } => {
                results[i] = Some(claim(conn, owner, *now, *lease_until, *limit).await?);
            }
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
    group.flush(conn, &mut results, &mut notes).await?;
    // Slots are taken last, after every outcome and release of the batch
    // (they can only free slots): the per-account advisory lock that makes
    // the fleet-wide count exact is then held from here to the commit, no
    // longer than when each take was a transaction of its own.
    take_slots(conn, ops, &mut results).await?;
    notes.send(writer, conn).await?;
    results
        .into_iter()
        .map(|written| written.ok_or_else(|| StoreError::Corrupt("a write gave no answer".into())))
        .collect()
}

/// The `pg_notify` calls a batch owes, each (channel, payload) once: they
/// are queued in the transaction and delivered when (and only if) it
/// commits, as with one statement per write.
#[derive(Default)]
struct Announcements(Vec<(&'static str, &'static str)>);

impl Announcements {
    fn add(&mut self, channel: &'static str, due: &'static str) {
        if !self.0.contains(&(channel, due)) {
            self.0.push((channel, due));
        }
    }

    async fn send(self, writer: &Writer, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let channels: Vec<&str> = self.0.iter().map(|(channel, _)| *channel).collect();
        let payloads: Vec<String> = self
            .0
            .iter()
            .map(|(_, due)| format!("{} {due}", writer.instance))
            .collect();
        sqlx::query("SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS n(c, p)")
            .bind(&channels)
            .bind(&payloads)
            .execute(&mut *conn)
            .await?;
        trip();
        Ok(())
    }
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

/// History rows of a group, inserted in one statement.
#[derive(Default)]
struct Events {
    job_id: Vec<String>,
    at: Vec<Millis>,
    kind: Vec<String>,
    message: Vec<String>,
    detail: Vec<Option<String>>,
}

impl Events {
    fn push(
        &mut self,
        job_id: &str,
        at: Millis,
        kind: &str,
        message: String,
        detail: Option<String>,
    ) {
        self.job_id.push(job_id.to_string());
        self.at.push(at);
        self.kind.push(kind.to_string());
        self.message.push(message);
        self.detail.push(detail);
    }
}

impl Group<'_> {
    /// Applies the gathered writes and answers them in `results`.
    async fn flush(
        &mut self,
        conn: &mut PgConnection,
        results: &mut [Option<Written>],
        notes: &mut Announcements,
    ) -> Result<(), StoreError> {
        let inserts = std::mem::take(&mut self.inserts);
        let checkpoints = std::mem::take(&mut self.checkpoints);
        let finishes = std::mem::take(&mut self.finishes);
        let settles = std::mem::take(&mut self.settles);
        self.ids.clear();
        let mut events = Events::default();
        if !inserts.is_empty() {
            let column = |f: &dyn Fn(&NewJob) -> String| -> Vec<String> {
                inserts.iter().map(|(_, job, _, _)| f(job)).collect()
            };
            let created: Vec<Millis> = inserts.iter().map(|(_, j, _, _)| j.created_at).collect();
            let deadline: Vec<Millis> = inserts.iter().map(|(_, j, _, _)| j.deadline_at).collect();
            let params: Vec<&str> = inserts.iter().map(|(_, _, p, _)| p.as_str()).collect();
            let hooks: Vec<Option<&str>> =
                inserts.iter().map(|(_, _, _, h)| h.as_deref()).collect();
            let rows = sqlx::query(concat!(
                "INSERT INTO jobs (id, name, account, provider, operation, params, state, cursor,
                                   next_run_at, created_at, updated_at, deadline_at, source,
                                   request_sha256, hooks)
                 SELECT r_id, r_name, r_account, r_provider, r_operation, r_params::json, 'queued',
                        '{}', r_created, r_created, r_created, r_deadline, r_source, r_sha,
                        r_hooks::json
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::int8[], $8::int8[], $9::text[], $10::text[],
                             $11::text[])
                      WITH ORDINALITY AS r(r_id, r_name, r_account, r_provider, r_operation,
                                           r_params, r_created, r_deadline, r_source, r_sha,
                                           r_hooks, r_ord)
                 ORDER BY r_ord
                 ON CONFLICT (name) DO NOTHING
                 RETURNING ",
                job_columns!()
            ))
            .bind(column(&|j| j.id.clone()))
            .bind(column(&|j| j.name.clone()))
            .bind(column(&|j| j.account.clone()))
            .bind(column(&|j| j.provider.clone()))
            .bind(column(&|j| j.operation.clone()))
            .bind(&params)
            .bind(&created)
            .bind(&deadline)
            .bind(column(&|j| j.source.clone()))
            .bind(column(&|j| j.request_sha256.clone()))
            .bind(&hooks)
            .fetch_all(&mut *conn)
            .await?;
            trip();
            let mut by_id = rows_by_id(&rows)?;
            for (i, job, _, _) in &inserts {
                results[*i] = Some(match by_id.remove(job.id.as_str()) {
                    Some(row) => {
                        events.push(
                            &job.id,
                            job.created_at,
                            EventKind::Accepted.as_str(),
                            format!("accepted from {}", job.source),
                            Some(NextRun::now(job.created_at).to_json_string()),
                        );
                        notes.add(JOBS_CHANNEL, DUE_NOW);
                        Written::Job(Box::new(row))
                    }
                    None => Written::Nothing,
                });
            }
        }
        if !checkpoints.is_empty() {
            let ids: Vec<&str> = checkpoints.iter().map(|c| c.1.as_str()).collect();
            let owners: Vec<&str> = checkpoints.iter().map(|c| c.2.as_str()).collect();
            let cursors: Vec<&str> = checkpoints.iter().map(|c| c.3.as_str()).collect();
            let updated: Vec<String> = sqlx::query_scalar(
                "UPDATE jobs j SET cursor = r_cursor::json, attempts = 0, updated_at = $4
                 FROM unnest($1::text[], $2::text[], $3::text[]) AS r(r_id, r_owner, r_cursor)
                 WHERE j.id = r_id AND j.state = 'running' AND j.lease_owner = r_owner
                 RETURNING j.id",
            )
            .bind(&ids)
            .bind(&owners)
            .bind(&cursors)
            .bind(crate::job::now_ms())
            .fetch_all(&mut *conn)
            .await?;
            trip();
            let updated: HashSet<&str> = updated.iter().map(String::as_str).collect();
            for (i, id, _, _) in &checkpoints {
                results[*i] = Some(if updated.contains(id.as_str()) {
                    Written::Row
                } else {
                    Written::Nothing
                });
            }
        }
        if !settles.is_empty() {
            let ids: Vec<&str> = settles.iter().map(|s| s.1.as_str()).collect();
            let owners: Vec<&str> = settles.iter().map(|s| s.2.as_str()).collect();
            let cursors: Vec<String> = settles.iter().map(|s| s.3.cursor.to_string()).collect();
            let results_json: Vec<Option<&str>> = settles.iter().map(|s| s.4.as_deref()).collect();
            let errors: Vec<Option<&str>> =
                settles.iter().map(|s| s.3.last_error.as_deref()).collect();
            let attempts: Vec<i64> = settles.iter().map(|s| i64::from(s.3.attempts)).collect();
            let finished: Vec<Millis> = settles.iter().map(|s| s.3.finished_at).collect();
            let updated: Vec<String> = sqlx::query_scalar(
                "UPDATE jobs j SET cursor = r_cursor::json, result = r_result::json,
                                   last_error = r_error, attempts = r_attempts,
                                   finished_at = r_finished, updated_at = $8
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::int8[], $7::int8[])
                      AS r(r_id, r_owner, r_cursor, r_result, r_error, r_attempts, r_finished)
                 WHERE j.id = r_id AND j.state = 'running' AND j.lease_owner = r_owner
                 RETURNING j.id",
            )
            .bind(&ids)
            .bind(&owners)
            .bind(&cursors)
            .bind(&results_json)
            .bind(&errors)
            .bind(&attempts)
            .bind(&finished)
            .bind(crate::job::now_ms())
            .fetch_all(&mut *conn)
            .await?;
            trip();
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
            let ids: Vec<&str> = finishes.iter().map(|f| f.1.as_str()).collect();
            let owners: Vec<&str> = finishes.iter().map(|f| f.2.as_str()).collect();
            let states: Vec<&str> = finishes.iter().map(|f| f.3.state.as_str()).collect();
            let cursors: Vec<String> = finishes.iter().map(|f| f.3.cursor.to_string()).collect();
            let next: Vec<Millis> = finishes.iter().map(|f| f.3.next_run_at).collect();
            let attempts: Vec<i64> = finishes.iter().map(|f| i64::from(f.3.attempts)).collect();
            let polls: Vec<i64> = finishes.iter().map(|f| i64::from(f.3.polls)).collect();
            let errors: Vec<Option<&str>> =
                finishes.iter().map(|f| f.3.last_error.as_deref()).collect();
            let results_json: Vec<Option<&str>> = finishes.iter().map(|f| f.4.as_deref()).collect();
            let finished: Vec<Option<Millis>> = finishes
                .iter()
                .map(|f| f.3.state.is_finished().then_some(now))
                .collect();
            let hooks: Vec<bool> = finishes.iter().map(|f| f.3.hooks_pending).collect();
            let rows = sqlx::query(concat!(
                "UPDATE jobs j
                 SET state = r_state, cursor = r_cursor::json, next_run_at = r_next,
                     attempts = r_attempts, polls = r_polls, last_error = r_error,
                     result = r_result::json,
                     finished_at = CASE WHEN r_finished IS NULL THEN NULL
                                        ELSE COALESCE(j.finished_at, r_finished) END,
                     updated_at = $12,
                     lease_owner = NULL, lease_until = NULL,
                     hooks_state = CASE WHEN r_hooks THEN 'pending' ELSE j.hooks_state END,
                     hooks_next_at = CASE WHEN r_hooks THEN $12 ELSE j.hooks_next_at END,
                     hooks_attempts = CASE WHEN r_hooks THEN 0 ELSE j.hooks_attempts END
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
                             $6::int8[], $7::int8[], $8::text[], $9::text[], $10::int8[],
                             $11::bool[])
                      AS r(r_id, r_owner, r_state, r_cursor, r_next, r_attempts, r_polls,
                           r_error, r_result, r_finished, r_hooks)
                 WHERE j.id = r_id AND j.state = 'running' AND j.lease_owner = r_owner
                 RETURNING ",
                job_columns!()
            ))
            .bind(&ids)
            .bind(&owners)
            .bind(&states)
            .bind(&cursors)
            .bind(&next)
            .bind(&attempts)
            .bind(&polls)
            .bind(&errors)
            .bind(&results_json)
            .bind(&finished)
            .bind(&hooks)
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
            trip();
            let mut by_id = rows_by_id(&rows)?;
            for (i, id, _, t, _) in &finishes {
                results[*i] = Some(match by_id.remove(id.as_str()) {
                    Some(row) => {
                        events.push(
                            id,
                            now,
                            t.event.0.as_str(),
                            t.event.1.clone(),
                            t.detail.as_ref().map(NextRun::to_json_string),
                        );
                        // A waiting job is due again at a time the other
                        // daemons have not seen; pending hooks are due now.
                        if t.state == JobState::Waiting {
                            notes.add(JOBS_CHANNEL, due_at(t.next_run_at, now));
                        }
                        if t.hooks_pending {
                            notes.add(HOOKS_CHANNEL, DUE_NOW);
                        }
                        Written::Job(Box::new(row))
                    }
                    None => Written::Nothing,
                });
            }
        }
        if !events.job_id.is_empty() {
            // In the order of the batch, so `seq` orders a job's history.
            sqlx::query(
                "INSERT INTO job_events (job_id, at, kind, message, detail)
                 SELECT e_job, e_at, e_kind, e_message, e_detail
                 FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[])
                      WITH ORDINALITY AS e(e_job, e_at, e_kind, e_message, e_detail, e_ord)
                 ORDER BY e_ord",
            )
            .bind(&events.job_id)
            .bind(&events.at)
            .bind(&events.kind)
            .bind(&events.message)
            .bind(&events.detail)
            .execute(&mut *conn)
            .await?;
            trip();
        }
        Ok(())
    }
}

/// The jobs of `rows` by id.
fn rows_by_id(rows: &[PgRow]) -> Result<HashMap<String, Job>, StoreError> {
    rows.iter()
        .map(|row| job_from_row(row).map(|job| (job.id.clone(), job)))
        .collect()
}

/// Claims up to `limit` due jobs under a lease for `owner`.
async fn claim(
    conn: &mut PgConnection,
    owner: &str,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Written, StoreError> {
    // The CTE is materialised so the locking sub-select runs exactly
    // once; the outer UPDATE then touches only the rows it locked.
    let rows = sqlx::query(concat!(
        "WITH due AS MATERIALIZED (",
        due_jobs!(),
        ")
         UPDATE jobs
         SET state = 'running', lease_owner = $1, lease_until = $2, updated_at = $3,
             steps = steps + 1
         WHERE id IN (SELECT id FROM due) AND state IN ('queued', 'waiting')
         RETURNING ",
        job_columns!()
    ))
    .bind(owner)
    .bind(lease_until)
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    trip();
    let mut jobs = rows
        .iter()
        .map(job_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    jobs.sort_by_key(|j| j.next_run_at);
    Ok(Written::Jobs(jobs))
}

/// Takes the slots asked for in `ops`, in one statement: one call of the
/// function of migration 0003 per take, in the order of their accounts, so
/// that two daemons' batches take their advisory locks in the same order
/// and cannot deadlock on them. A later call sees the slots taken by the
/// earlier ones (the function is volatile), so the limit holds within a
/// batch as across daemons.
async fn take_slots(
    conn: &mut PgConnection,
    ops: &[&WriteOp],
    results: &mut [Option<Written>],
) -> Result<(), StoreError> {
    let mut takes: Vec<(usize, &str, &str, &str, i32, Millis)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            WriteOp::TakeSlot {
                account,
                job_id,
                owner,
                limit,
                now,
            } => Some((
                i,
                account.as_str(),
                job_id.as_str(),
                owner.as_str(),
                *limit,
                *now,
            )),
            _ => None,
        })
        .collect();
    if takes.is_empty() {
        return Ok(());
    }
    takes.sort_by_key(|t| (t.1, t.0));
    let accounts: Vec<&str> = takes.iter().map(|t| t.1).collect();
    let jobs: Vec<&str> = takes.iter().map(|t| t.2).collect();
    let owners: Vec<&str> = takes.iter().map(|t| t.3).collect();
    let limits: Vec<i32> = takes.iter().map(|t| t.4).collect();
    let nows: Vec<Millis> = takes.iter().map(|t| t.5).collect();
    let answers: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT r_ord, docfetch_take_account_slot(r_account, r_job, r_owner, r_limit, r_now)
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int8[])
              WITH ORDINALITY AS r(r_account, r_job, r_owner, r_limit, r_now, r_ord)",
    )
    .bind(&accounts)
    .bind(&jobs)
    .bind(&owners)
    .bind(&limits)
    .bind(&nows)
    .fetch_all(&mut *conn)
    .await?;
    trip();
    for (ord, answer) in answers {
        let slot = usize::try_from(ord - 1)
            .ok()
            .and_then(|k| takes.get(k))
            .ok_or_else(|| StoreError::Corrupt("a slot answer for no take".into()))?;
        results[slot.0] = Some(Written::Grant(answer));
    }
    Ok(())
}

/// Deletes the slots of `releases` (index, account, job, owner) in one statement.
async fn release_slots(
    conn: &mut PgConnection,
    releases: &[(usize, &str, &str, &str)],
) -> Result<(), StoreError> {
    let accounts: Vec<&str> = releases.iter().map(|r| r.1).collect();
    let jobs: Vec<&str> = releases.iter().map(|r| r.2).collect();
    let owners: Vec<&str> = releases.iter().map(|r| r.3).collect();
    sqlx::query(
        "DELETE FROM account_slots s
         USING unnest($1::text[], $2::text[], $3::text[]) AS r(r_account, r_job, r_owner)
         WHERE s.account = r_account AND s.job_id = r_job AND s.owner = r_owner",
    )
    .bind(&accounts)
    .bind(&jobs)
    .bind(&owners)
    .execute(&mut *conn)
    .await?;
    trip();
    Ok(())
}
