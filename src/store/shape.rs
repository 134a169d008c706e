//! The query shapes both backends share: a `jobs` row read into a [`Job`],
//! JSON columns written as text, and the binds of a whole stored job (the
//! import of `docfetch store copy`). Both databases keep the same columns
//! with the same types (JSON as text, times as i64), so only the SQL text
//! (placeholders, casts) stays with each backend.

use sqlx::query::Query;
use sqlx::{Database, Encode, Type};

use super::{StoreError, StoredJob};
use crate::job::{Job, JobResult};

/// A value for a JSON column, as the text both backends store.
pub(super) fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// [`json_text`] for a nullable column.
pub(super) fn json_text_opt<T: serde::Serialize>(
    value: Option<&T>,
) -> Result<Option<String>, StoreError> {
    value.map(json_text).transpose()
}

/// Binds every column of a stored job, in the order of `stored_job_columns!`
/// (`$1`…`$26` / `?1`…`?26`), to a backend's `INSERT`.
pub(super) fn bind_stored_job<'q, DB>(
    query: Query<'q, DB, <DB as Database>::Arguments>,
    stored: &StoredJob,
) -> Result<Query<'q, DB, <DB as Database>::Arguments>, StoreError>
where
    DB: Database,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> String: Encode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
    // sqlx implements `Encode` for `Option` per database, not generically.
    for<'a> Option<&'a str>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<String>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB> + Type<DB>,
{
    let job = &stored.job;
    let result = json_text_opt(job.result.as_ref())?;
    let hooks = json_text_opt(job.hooks.as_ref())?;
    Ok(query
        .bind(job.id.as_str())
        .bind(job.name.as_str())
        .bind(job.account.as_str())
        .bind(job.provider.as_str())
        .bind(job.operation.as_str())
        .bind(job.params.to_string())
        .bind(job.state.as_str())
        .bind(job.cursor.to_string())
        .bind(i64::from(job.attempts))
        .bind(i64::from(job.polls))
        .bind(i64::from(job.steps))
        .bind(job.next_run_at)
        .bind(job.lease_owner.as_deref())
        .bind(job.lease_until)
        .bind(job.last_error.as_deref())
        .bind(result)
        .bind(job.created_at)
        .bind(job.updated_at)
        .bind(job.finished_at)
        .bind(job.deadline_at)
        .bind(job.source.as_str())
        .bind(job.request_sha256.as_str())
        .bind(hooks)
        .bind(job.hooks_state.as_deref())
        .bind(i64::from(job.hooks_attempts))
        .bind(stored.hooks_next_at))
}

/// The columns [`bind_stored_job`] binds, in its order.
macro_rules! stored_job_columns {
    () => {
        "id, name, account, provider, operation, params, state, cursor,
         attempts, polls, steps, next_run_at, lease_owner, lease_until,
         last_error, result, created_at, updated_at, finished_at,
         deadline_at, source, request_sha256, hooks, hooks_state,
         hooks_attempts, hooks_next_at"
    };
}
pub(super) use stored_job_columns;

/// Reads a `jobs` row into a [`Job`], for either database: both store the
/// same columns with the same types (JSON as text, times as i64).
pub(crate) fn job_from_row<'r, R>(row: &'r R) -> Result<Job, StoreError>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let json = |column: &str, text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| StoreError::Corrupt(format!("jobs.{column}: {e}")))
    };
    let counter = |column: &'static str| -> Result<u32, StoreError> {
        let n: i64 = row.try_get(column)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    };
    let state: String = row.try_get("state")?;
    let params: String = row.try_get("params")?;
    let cursor: String = row.try_get("cursor")?;
    let result: Option<String> = row.try_get("result")?;
    let result: Option<JobResult> = result
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("jobs.result: {e}")))?;
    let hooks: Option<String> = row.try_get("hooks")?;
    let hooks = hooks
        .map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("jobs.hooks: {e}")))?;
    Ok(Job {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        account: row.try_get("account")?,
        provider: row.try_get("provider")?,
        operation: row.try_get("operation")?,
        params: json("params", &params)?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        cursor: json("cursor", &cursor)?,
        attempts: counter("attempts")?,
        polls: counter("polls")?,
        steps: counter("steps")?,
        next_run_at: row.try_get("next_run_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until: row.try_get("lease_until")?,
        last_error: row.try_get("last_error")?,
        result,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        deadline_at: row.try_get("deadline_at")?,
        source: row.try_get("source")?,
        request_sha256: row.try_get("request_sha256")?,
        hooks,
        hooks_state: row.try_get("hooks_state")?,
        hooks_attempts: counter("hooks_attempts")?,
    })
}
