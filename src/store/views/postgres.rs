//! The dashboard's queries on PostgreSQL.

use super::{AccountCount, Bind, HourCount, JobsQuery, account_rows, fold_hours, page_sql};
use crate::job::{Job, Millis};
use crate::store::postgres::PgStore;
use crate::store::{StoreError, job_from_row};

pub(super) async fn jobs_page(s: &PgStore, q: &JobsQuery) -> Result<Vec<Job>, StoreError> {
    let (sql, binds) = page_sql(q, |n| format!("${n}"), |p| format!("strpos(name, {p}) > 0"));
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
    s: &PgStore,
    since: Millis,
) -> Result<Vec<HourCount>, StoreError> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT state, finished_at / 3600000 AS h, COUNT(*) FROM jobs
          WHERE state IN ('done', 'failed') AND finished_at >= $1
          GROUP BY state, h",
    )
    .bind(since)
    .fetch_all(s.read_pool())
    .await?;
    Ok(fold_hours(rows))
}

pub(super) async fn account_counts(s: &PgStore) -> Result<Vec<AccountCount>, StoreError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(concat!(
        "SELECT account, state, SUM(n)::bigint FROM ",
        crate::store::postgres::job_counts!(),
        " GROUP BY account, state HAVING SUM(n) <> 0 ORDER BY account"
    ))
    .fetch_all(s.read_pool())
    .await?;
    account_rows(rows)
}

pub(super) async fn size_bytes(s: &PgStore) -> Result<u64, StoreError> {
    let (n,): (i64,) = sqlx::query_as("SELECT pg_database_size(current_database())")
        .fetch_one(s.read_pool())
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(super) async fn account_pauses(
    s: &PgStore,
    now: Millis,
) -> Result<Vec<(String, Millis)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT account, until_ms FROM account_cooldowns WHERE until_ms > $1 ORDER BY account",
    )
    .bind(now)
    .fetch_all(s.read_pool())
    .await?)
}

pub(super) async fn account_slots_held(s: &PgStore) -> Result<Vec<(String, u64)>, StoreError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT account, COUNT(*) FROM account_slots GROUP BY account")
            .fetch_all(s.read_pool())
            .await?;
    Ok(rows
        .into_iter()
        .map(|(a, n)| (a, u64::try_from(n).unwrap_or(0)))
        .collect())
}
