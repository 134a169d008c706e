//! Export and import of whole jobs with their events, for moving a queue
//! between stores (`docfetch store copy`).

use super::*;

impl PgStore {
    pub async fn export_jobs(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredJob>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            ", hooks_next_at FROM jobs
             WHERE $1::text IS NULL OR id > $1
             ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
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
        let json = |v: &serde_json::Value| v.to_string();
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
        let mut tx = self.inner.pool.begin().await?;
        // No conflict target: an existing id or name both mean "already there".
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, name, account, provider, operation, params, state, cursor,
                               attempts, polls, steps, next_run_at, lease_owner, lease_until,
                               last_error, result, created_at, updated_at, finished_at,
                               deadline_at, source, request_sha256, hooks, hooks_state,
                               hooks_attempts, hooks_next_at)
             VALUES ($1, $2, $3, $4, $5, $6::json, $7, $8::json, $9, $10, $11, $12, $13, $14,
                     $15, $16::json, $17, $18, $19, $20, $21, $22, $23::json, $24, $25, $26)
             ON CONFLICT DO NOTHING",
        )
        .bind(&job.id)
        .bind(&job.name)
        .bind(&job.account)
        .bind(&job.provider)
        .bind(&job.operation)
        .bind(json(&job.params))
        .bind(job.state.as_str())
        .bind(json(&job.cursor))
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
        if matches!(job.state, JobState::Queued | JobState::Waiting) {
            self.announce(&mut tx, &[JOBS_CHANNEL], DUE_NOW).await?;
        }
        if job.hooks_state.as_deref() == Some("pending") {
            self.announce(&mut tx, &[HOOKS_CHANNEL], DUE_NOW).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
