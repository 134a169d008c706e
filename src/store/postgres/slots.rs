//! Per-account concurrency slots and cool-downs on the PostgreSQL store,
//! decided in the database so that every daemon of a fleet honours them.

use super::*;

impl PgStore {
    /// See [`Store::take_account_slot`]: one call of the function of
    /// migration 0003, which decides under a per-account advisory lock, in
    /// the next group commit (see `write.rs`).
    pub async fn take_account_slot(
        &self,
        account: &str,
        job_id: &str,
        owner: &str,
        limit: usize,
        now: Millis,
    ) -> Result<SlotGrant, StoreError> {
        let op = WriteOp::TakeSlot {
            account: account.to_string(),
            job_id: job_id.to_string(),
            owner: owner.to_string(),
            limit: i32::try_from(limit).unwrap_or(i32::MAX),
            now,
        };
        let Written::Grant(answer) = self.write(op).await? else {
            return Err(StoreError::Corrupt("a slot take gave no answer".into()));
        };
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
        // With the step outcomes of the same group commit: no commit of its own.
        let op = WriteOp::ReleaseSlot {
            account: account.to_string(),
            job_id: job_id.to_string(),
            owner: owner.to_string(),
        };
        self.write(op).await.map(|_| ())
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
        autocommit();
        Ok(())
    }
}
