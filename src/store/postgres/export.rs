//! Export and import of whole jobs with their events, for moving a queue
//! between stores (`docfetch store copy`).

use super::*;
use crate::store::shape::{bind_stored_job, stored_job_columns};

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

    pub(crate) async fn import_job(
        &self,
        stored: &StoredJob,
        events: &[JobEvent],
    ) -> Result<bool, StoreError> {
        let job = &stored.job;
        let mut tx = self.inner.pool.begin().await?;
        // No conflict target: an existing id or name both mean "already there".
        let insert = sqlx::query(concat!(
            "INSERT INTO jobs (",
            stored_job_columns!(),
            ")
             VALUES ($1, $2, $3, $4, $5, $6::json, $7, $8::json, $9, $10, $11, $12, $13, $14,
                     $15, $16::json, $17, $18, $19, $20, $21, $22, $23::json, $24, $25, $26)
             ON CONFLICT DO NOTHING"
        ));
        let inserted = bind_stored_job(insert, stored)?.execute(&mut *tx).await?;
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
