//! Cancel and retry on the PostgreSQL store: user commands that move a
//! job out of the state it is in, or say why they cannot.

use super::*;

impl PgStore {
    pub async fn cancel(&self, key: &str, now: Millis) -> Result<Job, StoreError> {
        let row = sqlx::query(concat!(
            "WITH moved AS (
                 UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_until = NULL,
                                 finished_at = $2, updated_at = $2,
                                 last_error = 'cancelled by a user'
                 WHERE (id = $1 OR name = $1) AND state IN ('queued', 'waiting', 'running')
                 RETURNING ",
            job_columns!(),
            "),
             history AS (
                 INSERT INTO job_events (job_id, at, kind, message)
                 SELECT id, $2, 'cancelled', 'cancelled by a user' FROM moved)
             SELECT * FROM moved"
        ))
        .bind(key)
        .bind(now)
        .fetch_optional(&self.inner.pool)
        .await?;
        match row {
            Some(row) => job_from_row(&row),
            None => Err(self
                .not_in_state(key, "cancel", "queued, waiting or running")
                .await),
        }
    }

    pub async fn retry(
        &self,
        key: &str,
        now: Millis,
        deadline_at: Millis,
    ) -> Result<Job, StoreError> {
        let row = sqlx::query(concat!(
            "WITH moved AS (
                 UPDATE jobs SET state = 'queued', cursor = '{}', attempts = 0, next_run_at = $2,
                                 last_error = NULL, result = NULL, finished_at = NULL,
                                 updated_at = $2, deadline_at = $3
                 WHERE (id = $1 OR name = $1) AND state IN ('failed', 'cancelled')
                 RETURNING ",
            job_columns!(),
            "),
             history AS (
                 INSERT INTO job_events (job_id, at, kind, message, detail)
                 SELECT id, $2, 'retried', 'queued again by a user', $6 FROM moved)
             SELECT moved.*, ",
            announce!(moved, "$4", "$5"),
            " FROM moved"
        ))
        .bind(key)
        .bind(now)
        .bind(deadline_at)
        .bind(self.payload(DUE_NOW))
        .bind(&[JOBS_CHANNEL][..])
        .bind(NextRun::now(now).to_json_string())
        .fetch_optional(&self.inner.pool)
        .await?;
        match row {
            Some(row) => {
                self.inner.wakeup.notify_one();
                job_from_row(&row)
            }
            None => Err(self.not_in_state(key, "retry", "failed or cancelled").await),
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
