//! Upkeep of the SQLite store: pruning old jobs, the schedules' last
//! fires, closing, and the change counter that tells watchers to reload.

use super::*;
use crate::store::ScheduleJob;

impl SqliteStore {
    pub async fn prune(
        &self,
        done_before: Millis,
        failed_before: Millis,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        // Jobs whose hooks have not run yet are kept until they have.
        let rows: Vec<(String,)> = sqlx::query_as(
            "DELETE FROM jobs WHERE id IN (
                 SELECT id FROM jobs WHERE state = 'done' AND finished_at < ?1
                     AND (hooks_state IS NULL OR hooks_state != 'pending')
                 UNION ALL
                 SELECT id FROM jobs WHERE state IN ('failed', 'cancelled') AND finished_at < ?2
                     AND (hooks_state IS NULL OR hooks_state != 'pending')
                 LIMIT ?3)
             RETURNING name",
        )
        .bind(done_before)
        .bind(failed_before)
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    pub async fn last_fire(&self, schedule: &str) -> Result<Option<Millis>, StoreError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT last_fire_at FROM schedule_runs WHERE schedule = ?1")
                .bind(schedule)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.map(|r| r.0))
    }

    pub async fn set_last_fire(&self, schedule: &str, at: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO schedule_runs (schedule, last_fire_at) VALUES (?1, ?2)
             ON CONFLICT (schedule) DO UPDATE SET last_fire_at = MAX(last_fire_at, excluded.last_fire_at)",
        )
        .bind(schedule)
        .bind(at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Closes every connection and waits for it: the last one to close
    /// checkpoints the WAL, so a clean stop leaves just the database file.
    pub async fn close(&self) -> Result<(), StoreError> {
        if let Some(conn) = self.watcher.lock().await.take() {
            conn.close().await?;
        }
        self.reader.close().await;
        self.writer.close().await;
        Ok(())
    }

    pub async fn change_counter(&self) -> Result<i64, StoreError> {
        let mut guard = self.watcher.lock().await;
        if guard.is_none() {
            *guard = Some(SqliteConnection::connect_with(&self.options).await?);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(StoreError::Corrupt("watcher connection missing".into()));
        };
        let version: (i64,) = match sqlx::query_as("PRAGMA data_version")
            .fetch_one(&mut *conn)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                // Reconnect on the next call rather than keep a broken handle.
                *guard = None;
                return Err(e.into());
            }
        };
        Ok(version.0)
    }

    pub async fn schedule_runs(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT schedule, last_fire_at FROM schedule_runs ORDER BY schedule")
                .fetch_all(&self.reader)
                .await?;
        Ok(rows)
    }
    pub async fn note_schedule_job(
        &self,
        schedule: &str,
        job: &str,
        at: Millis,
    ) -> Result<(), StoreError> {
        // A schedule fired before the loop first saw it (from the dashboard)
        // starts its considered-up-to mark at that occurrence, as the loop
        // would have started it at its first look.
        sqlx::query(
            "INSERT INTO schedule_runs (schedule, last_fire_at, last_job, last_job_at)
             VALUES (?1, ?3, ?2, ?3)
             ON CONFLICT (schedule) DO UPDATE
             SET last_job = CASE WHEN schedule_runs.last_job_at IS NULL
                                   OR schedule_runs.last_job_at <= excluded.last_job_at
                                 THEN excluded.last_job ELSE schedule_runs.last_job END,
                 last_job_at = MAX(COALESCE(schedule_runs.last_job_at, excluded.last_job_at),
                                   excluded.last_job_at)",
        )
        .bind(schedule)
        .bind(job)
        .bind(at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn schedule_jobs(&self) -> Result<Vec<ScheduleJob>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT schedule, last_job, last_job_at FROM schedule_runs
              WHERE last_job IS NOT NULL AND last_job_at IS NOT NULL ORDER BY schedule",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(schedule, job, at)| ScheduleJob { schedule, job, at })
            .collect())
    }
}
