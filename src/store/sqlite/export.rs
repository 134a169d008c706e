//! Export and import of whole jobs with their events, for moving a queue
//! between stores (`docfetch store copy`).

use super::*;

impl SqliteStore {
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
}
