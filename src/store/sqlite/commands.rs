//! Cancel and retry on the SQLite store: user commands that move a job
//! out of the state it is in, or say why they cannot.

use super::*;

impl SqliteStore {
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
}
