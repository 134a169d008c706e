//! Read-only queries for the dashboard's pages, kept apart from the queue's
//! hot paths. The job list pages by keyset (`created_at`, `id`), newest
//! first, with only the filters given in its SQL, so each filter walks an
//! index in page order (`migrations/*/…_dashboard.sql`): no `OFFSET`, no
//! `COUNT(*)` per page.

mod postgres;
mod sqlite;

use super::{Store, StoreError};
use crate::job::{Job, JobState, Millis};

/// A page of the job list.
#[derive(Debug, Clone, Default)]
pub struct JobsQuery {
    pub state: Option<JobState>,
    pub provider: Option<String>,
    pub account: Option<String>,
    /// A piece of the job's name.
    pub name: Option<String>,
    /// Created at or after.
    pub created_from: Option<Millis>,
    /// Created before.
    pub created_to: Option<Millis>,
    /// The last row of the previous page: (created_at, id).
    pub after: Option<(Millis, String)>,
    pub limit: u32,
}

/// Jobs finished in one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourCount {
    /// The hour's start (Unix ms).
    pub hour: Millis,
    pub done: u64,
    pub failed: u64,
}

/// Jobs of one account in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountCount {
    pub account: String,
    pub state: JobState,
    pub count: u64,
}

/// One SQL value to bind; the queries are built from the filters given.
#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Int(i64),
}

/// The `WHERE` clause of a page and its values; `placeholder(n)` writes the
/// database's n-th parameter (1-based).
/// `contains(p)` tests whether the name holds parameter `p`.
fn page_sql(
    q: &JobsQuery,
    placeholder: fn(usize) -> String,
    contains: fn(&str) -> String,
) -> (String, Vec<Bind>) {
    let mut conditions = Vec::new();
    let mut binds = Vec::new();
    let mut push = |sql: &dyn Fn(&str) -> String, value: Bind, binds: &mut Vec<Bind>| {
        binds.push(value);
        conditions.push(sql(&placeholder(binds.len())));
    };
    if let Some(state) = q.state {
        push(
            &|p| format!("state = {p}"),
            Bind::Text(state.as_str().into()),
            &mut binds,
        );
    }
    if let Some(provider) = &q.provider {
        push(
            &|p| format!("provider = {p}"),
            Bind::Text(provider.clone()),
            &mut binds,
        );
    }
    if let Some(account) = &q.account {
        push(
            &|p| format!("account = {p}"),
            Bind::Text(account.clone()),
            &mut binds,
        );
    }
    if let Some(name) = &q.name {
        push(&|p| contains(p), Bind::Text(name.clone()), &mut binds);
    }
    if let Some(from) = q.created_from {
        push(
            &|p| format!("created_at >= {p}"),
            Bind::Int(from),
            &mut binds,
        );
    }
    if let Some(to) = q.created_to {
        push(&|p| format!("created_at < {p}"), Bind::Int(to), &mut binds);
    }
    if let Some((at, id)) = &q.after {
        binds.push(Bind::Int(*at));
        binds.push(Bind::Text(id.clone()));
        conditions.push(format!(
            "(created_at, id) < ({}, {})",
            placeholder(binds.len() - 1),
            placeholder(binds.len())
        ));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    binds.push(Bind::Int(i64::from(q.limit.clamp(1, 500))));
    let sql = format!(
        "SELECT * FROM jobs {filter} ORDER BY created_at DESC, id DESC LIMIT {}",
        placeholder(binds.len())
    );
    (sql, binds)
}

impl Store {
    /// One page of the job list, newest first.
    pub(crate) async fn jobs_page(&self, q: &JobsQuery) -> Result<Vec<Job>, StoreError> {
        match self {
            Store::Sqlite(s) => sqlite::jobs_page(s, q).await,
            Store::Postgres(s) => postgres::jobs_page(s, q).await,
        }
    }
    /// Jobs done and failed per hour since `since` (hours with none left out).
    pub async fn finished_per_hour(&self, since: Millis) -> Result<Vec<HourCount>, StoreError> {
        match self {
            Store::Sqlite(s) => sqlite::finished_per_hour(s, since).await,
            Store::Postgres(s) => postgres::finished_per_hour(s, since).await,
        }
    }
    /// Jobs by account and state.
    pub async fn account_counts(&self) -> Result<Vec<AccountCount>, StoreError> {
        match self {
            Store::Sqlite(s) => sqlite::account_counts(s).await,
            Store::Postgres(s) => postgres::account_counts(s).await,
        }
    }
    /// The store's size on disk, in bytes.
    pub(crate) async fn size_bytes(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => sqlite::size_bytes(s).await,
            Store::Postgres(s) => postgres::size_bytes(s).await,
        }
    }
    /// Accounts paused after a 429 for every daemon, with the pause's end
    /// (PostgreSQL only; a SQLite daemon keeps its pauses in memory).
    pub(crate) async fn account_pauses(
        &self,
        now: Millis,
    ) -> Result<Vec<(String, Millis)>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(Vec::new()),
            Store::Postgres(s) => postgres::account_pauses(s, now).await,
        }
    }
    /// Concurrent-step slots held per account, fleet-wide (PostgreSQL only).
    pub(crate) async fn account_slots_held(&self) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(Vec::new()),
            Store::Postgres(s) => postgres::account_slots_held(s).await,
        }
    }
}

/// Folds (state, hour, count) rows into hours.
fn fold_hours(rows: Vec<(String, i64, i64)>) -> Vec<HourCount> {
    let mut hours: Vec<HourCount> = Vec::new();
    for (state, hour, n) in rows {
        let hour = hour * 3_600_000;
        let n = u64::try_from(n).unwrap_or(0);
        let slot = match hours.iter_mut().find(|h| h.hour == hour) {
            Some(slot) => slot,
            None => {
                hours.push(HourCount {
                    hour,
                    ..HourCount::default()
                });
                let last = hours.len() - 1;
                &mut hours[last]
            }
        };
        if state == "done" {
            slot.done += n;
        } else {
            slot.failed += n;
        }
    }
    hours.sort_by_key(|h| h.hour);
    hours
}

fn account_rows(rows: Vec<(String, String, i64)>) -> Result<Vec<AccountCount>, StoreError> {
    rows.into_iter()
        .map(|(account, state, n)| {
            Ok(AccountCount {
                account,
                state: state.parse().map_err(StoreError::Corrupt)?,
                count: u64::try_from(n).unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_names_only_the_filters_given() {
        let q = JobsQuery {
            limit: 50,
            ..JobsQuery::default()
        };
        let (sql, binds) = page_sql(
            &q,
            |n| format!("${n}"),
            |p| format!("strpos(name, {p}) > 0"),
        );
        assert_eq!(
            sql,
            "SELECT * FROM jobs  ORDER BY created_at DESC, id DESC LIMIT $1"
        );
        assert_eq!(binds.len(), 1);
        let q = JobsQuery {
            state: Some(JobState::Waiting),
            account: Some("ofd".into()),
            after: Some((5, "x".into())),
            limit: 50,
            ..JobsQuery::default()
        };
        let (sql, binds) = page_sql(&q, |n| format!("?{n}"), |p| format!("instr(name, {p}) > 0"));
        assert!(sql.contains("state = ?1 AND account = ?2 AND (created_at, id) < (?3, ?4)"));
        assert!(sql.ends_with("LIMIT ?5"), "{sql}");
        assert_eq!(binds.len(), 5);
    }

    #[test]
    fn hours_fold_done_and_failed_together() {
        let hours = fold_hours(vec![
            ("done".into(), 2, 3),
            ("failed".into(), 1, 1),
            ("failed".into(), 2, 4),
        ]);
        assert_eq!(
            hours,
            vec![
                HourCount {
                    hour: 3_600_000,
                    done: 0,
                    failed: 1
                },
                HourCount {
                    hour: 7_200_000,
                    done: 3,
                    failed: 4
                }
            ]
        );
    }
}
