//! Export and import of whole jobs with their events, for moving a queue
//! between stores (`docfetch store copy`).

use super::*;
use crate::store::shape::{bind_stored_job, stored_job_columns};

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

    pub(crate) async fn import_job(
        &self,
        stored: &StoredJob,
        events: &[JobEvent],
    ) -> Result<bool, StoreError> {
        let job = &stored.job;
        let mut tx = WriteTx::begin(&self.writer).await?;
        // No conflict target: an existing id or name both mean "already there".
        let insert = sqlx::query(concat!(
            "INSERT INTO jobs (",
            stored_job_columns!(),
            ")
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)
             ON CONFLICT DO NOTHING"
        ));
        let inserted = bind_stored_job(insert, stored)?.execute(&mut *tx).await?;
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
