//! The dashboard's queries on SQLite, on the read-only pool.

use sqlx::Row;

use super::{AccountCount, Bind, HourCount, JobsQuery, account_rows, fold_hours, page_sql};
use crate::job::{Job, Millis};
use crate::store::sqlite::SqliteStore;
use crate::store::{StoreError, job_from_row};

pub(super) async fn jobs_page(s: &SqliteStore, q: &JobsQuery) -> Result<Vec<Job>, StoreError> {
    let (sql, binds) = page_sql(q, |n| format!("?{n}"), |p| format!("instr(name, {p}) > 0"));
    // The SQL is made of fixed fragments only; every value is bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for bind in binds {
        query = match bind {
            Bind::Text(t) => query.bind(t),
            Bind::Int(i) => query.bind(i),
        };
    }
    let rows = query.fetch_all(s.read_pool()).await?;
    rows.iter().map(job_from_row).collect()
}

pub(super) async fn finished_per_hour(
    s: &SqliteStore,
    since: Millis,
) -> Result<Vec<HourCount>, StoreError> {
    // Kept by triggers (migration 0007): at most 2 × 48 rows.
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT state, hour, n FROM job_finished_hours WHERE hour >= ?1 / 3600000 AND n > 0",
    )
    .bind(since)
    .fetch_all(s.read_pool())
    .await?;
    Ok(fold_hours(rows))
}

pub(super) async fn account_counts(s: &SqliteStore) -> Result<Vec<AccountCount>, StoreError> {
    // Kept by triggers (migration 0007): a few rows, whatever the size.
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT account, state, SUM(n) FROM job_counts GROUP BY account, state
          HAVING SUM(n) > 0 ORDER BY account",
    )
    .fetch_all(s.read_pool())
    .await?;
    account_rows(rows)
}

pub(super) async fn size_bytes(s: &SqliteStore) -> Result<u64, StoreError> {
    let row = sqlx::query(
        "SELECT page_count * page_size AS n FROM pragma_page_count(), pragma_page_size()",
    )
    .fetch_one(s.read_pool())
    .await?;
    let main: i64 = row.try_get("n")?;
    let wal = std::fs::metadata(s.file_path().with_extension("db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(u64::try_from(main).unwrap_or(0) + wal)
}
