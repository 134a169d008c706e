//! Databases of the benchmark's own on the PostgreSQL server named by
//! `--postgres`: one per measurement, dropped afterwards, and those of
//! killed runs dropped by a later one.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sqlx::Connection;

/// The benchmark's databases are named `{PG_DB_PREFIX}{unix seconds}_{random}`.
pub(crate) const PG_DB_PREFIX: &str = "docfetch_bench_";

/// A bench database older than this was left by a run that was killed
/// before it could drop it; the next run drops it.
pub(crate) const PG_STALE_AFTER_SECS: u64 = 6 * 3600;

/// A database of the benchmark's own (the `pg` and `peers` phases), created on the server named by
/// `--postgres` and dropped by [`BenchDb::drop_database`]. The name carries
/// its creation time, so that one left by a killed run is dropped by a
/// later one.
pub(crate) struct BenchDb {
    pub(crate) server: String,
    pub(crate) name: String,
    /// This database on the server, without TLS unless the server's URL
    /// asks for an `sslmode` itself: on loopback, TLS costs CPU that the
    /// instances would otherwise have.
    pub(crate) url: url::Url,
}

impl BenchDb {
    pub(crate) async fn create(server: &str) -> Result<BenchDb> {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs();
        let name = format!(
            "{PG_DB_PREFIX}{created}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut url =
            url::Url::parse(server).context("the PostgreSQL server's URL is not a URL")?;
        url.set_path(&format!("/{name}"));
        if !url.query_pairs().any(|(key, _)| key == "sslmode") {
            url.query_pairs_mut().append_pair("sslmode", "disable");
        }
        let mut admin = pg_admin(server).await?;
        drop_stale_bench_databases(&mut admin, created).await;
        let made = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .with_context(|| {
                format!(
                    "cannot create database {name} on {}",
                    docfetch::store::redact_store_url(server)
                )
            });
        let _ = admin.close().await;
        made?;
        Ok(BenchDb {
            server: server.to_string(),
            name,
            url,
        })
    }

    /// The database's URL, connecting as `application` (shown in `pg_stat_activity`).
    pub(crate) fn url_as(&self, application: &str) -> String {
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("application_name", application);
        url.to_string()
    }

    /// Drops the database, and with it any connection still open to it.
    pub(crate) async fn drop_database(self) -> Result<()> {
        let mut admin = pg_admin(&self.server).await?;
        let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await;
        let _ = admin.close().await;
        dropped.with_context(|| {
            format!(
                "cannot drop database {}; a run in {} hours or more drops it",
                self.name,
                PG_STALE_AFTER_SECS / 3600
            )
        })?;
        Ok(())
    }
}

/// A connection to the server named by `--postgres`, for creating and dropping databases.
pub(crate) async fn pg_admin(server: &str) -> Result<sqlx::PgConnection> {
    sqlx::PgConnection::connect(server).await.with_context(|| {
        format!(
            "cannot connect to PostgreSQL at {}",
            docfetch::store::redact_store_url(server)
        )
    })
}

/// Drops the bench databases that killed runs left behind. Best effort:
/// another run may be dropping them too.
pub(crate) async fn drop_stale_bench_databases(admin: &mut sqlx::PgConnection, now_secs: u64) {
    let pattern = format!("{}%", PG_DB_PREFIX.replace('_', "\\_"));
    let Ok(names) =
        sqlx::query_scalar::<_, String>("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(pattern)
            .fetch_all(&mut *admin)
            .await
    else {
        return;
    };
    for name in names {
        let created = name
            .strip_prefix(PG_DB_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        let stale = created.is_some_and(|c| now_secs.saturating_sub(c) > PG_STALE_AFTER_SECS);
        if stale && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut *admin)
            .await;
        }
    }
}
