//! The completion hooks' queue on the PostgreSQL store: claiming due hooks
//! under a lease and recording how they went.

use super::*;

impl PgStore {
    pub async fn claim_hooks(
        &self,
        now: Millis,
        hold_until: Millis,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(concat!(
            "WITH due AS MATERIALIZED (
                 SELECT id FROM jobs
                 WHERE hooks_state = 'pending' AND hooks_next_at <= $1
                 ORDER BY hooks_next_at LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             UPDATE jobs SET hooks_next_at = $2
             WHERE id IN (SELECT id FROM due)
             RETURNING ",
            job_columns!()
        ))
        .bind(now)
        .bind(hold_until)
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await?;
        autocommit();
        rows.iter().map(job_from_row).collect()
    }

    pub async fn finish_hooks(
        &self,
        id: &str,
        state: &str,
        attempts: u32,
        next_at: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET hooks_state = $2, hooks_attempts = $3, hooks_next_at = $4
             WHERE id = $1 AND hooks_state = 'pending'",
        )
        .bind(id)
        .bind(state)
        .bind(i64::from(attempts))
        .bind(next_at)
        .execute(&self.inner.pool)
        .await?;
        autocommit();
        Ok(())
    }

    pub async fn next_hooks_at(&self) -> Result<Option<Millis>, StoreError> {
        let row: (Option<i64>,) =
            sqlx::query_as("SELECT MIN(hooks_next_at) FROM jobs WHERE hooks_state = 'pending'")
                .fetch_one(&self.inner.pool)
                .await?;
        trip();
        Ok(row.0)
    }
}
