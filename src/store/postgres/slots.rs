//! Per-account concurrency slots and cool-downs on the PostgreSQL store,
//! decided in the database so that every daemon of a fleet honours them.

use super::*;

impl PgStore {
    /// See [`Store::take_account_slot`]: one call of the function of
    /// migration 0003, which decides under a per-account advisory lock.
    pub async fn take_account_slot(
        &self,
        account: &str,
        job_id: &str,
        owner: &str,
        limit: usize,
        now: Millis,
    ) -> Result<SlotGrant, StoreError> {
        let (answer,): (i64,) =
            sqlx::query_as("SELECT docfetch_take_account_slot($1, $2, $3, $4, $5)")
                .bind(account)
                .bind(job_id)
                .bind(owner)
                .bind(i32::try_from(limit).unwrap_or(i32::MAX))
                .bind(now)
                .fetch_one(&self.inner.pool)
                .await?;
        Ok(match answer {
            0 => SlotGrant::Granted,
            until if until > 0 => SlotGrant::Cooling(until),
            _ => SlotGrant::Busy,
        })
    }

    pub async fn release_account_slot(
        &self,
        account: &str,
        job_id: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM account_slots WHERE account = $1 AND job_id = $2 AND owner = $3")
            .bind(account)
            .bind(job_id)
            .bind(owner)
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    pub async fn cool_down_account(&self, account: &str, until: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO account_cooldowns (account, until_ms) VALUES ($1, $2)
             ON CONFLICT (account) DO UPDATE
                 SET until_ms = GREATEST(account_cooldowns.until_ms, EXCLUDED.until_ms)",
        )
        .bind(account)
        .bind(until)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }
}
