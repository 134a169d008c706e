//! The SQLite store's write path: one writer task applying the hot writes
//! of every caller in group commits, each batch in a handful of statements.

use super::*;

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
}

pub(super) struct PendingWrite {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// Group commit. The hot writes (new jobs, checkpoints, step outcomes) of
/// every task go through this one loop: it takes whatever is queued, applies
/// it in one transaction and commits once, so a burst of N transitions costs
/// one WAL fsync instead of N. No write is answered before its commit is
/// durable (`synchronous=FULL`), so the promises hold exactly as with one
/// transaction each. Nothing waits on purpose: the batch is what queued up
/// while the previous commit was being synced.
pub(super) async fn write_loop(
    pool: SqlitePool,
    mut queue: mpsc::Receiver<PendingWrite>,
    trouble: Trouble,
) {
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
pub(super) struct WriteTx {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    open: bool,
}

impl WriteTx {
    pub(super) async fn begin(pool: &SqlitePool) -> Result<WriteTx, StoreError> {
        let mut conn = pool.acquire().await?;
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(WriteTx { conn, open: true })
    }

    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
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
    pub(super) async fn rollback(mut self) {
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

pub(super) async fn apply_batch(
    pool: &SqlitePool,
    batch: &[PendingWrite],
) -> Result<Vec<Written>, StoreError> {
    let ops: Vec<&WriteOp> = batch.iter().map(|pending| &pending.op).collect();
    let mut tx = WriteTx::begin(pool).await?;
    let results = apply(&mut tx, &ops).await?;
    tx.commit().await?;
    Ok(results)
}

pub(super) async fn apply_alone(pool: &SqlitePool, op: &WriteOp) -> Result<Written, StoreError> {
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
pub(super) async fn apply(
    conn: &mut SqliteConnection,
    ops: &[&WriteOp],
) -> Result<Vec<Written>, StoreError> {
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
pub(super) struct Group<'a> {
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
pub(super) fn rows_by_id(
    rows: &[sqlx::sqlite::SqliteRow],
) -> Result<HashMap<String, Job>, StoreError> {
    rows.iter()
        .map(|row| job_from_row(row).map(|job| (job.id.clone(), job)))
        .collect()
}

/// Claims up to `limit` due jobs under a lease for `owner`.
pub(super) async fn claim(
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

pub(super) async fn insert_event(
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
