//! Phase `scale`: start-up to `READY=1` and RSS of `docfetch run` on a
//! large generated store against a small one.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use docfetch::job::now_ms;
use docfetch::sim::{Sim, SimConfig};
use docfetch::store::Store;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};

use crate::daemon::Daemon;
use crate::disk::temp_dir;
use crate::options::{Options, Phase};
use crate::report::{Rows, TARGET_RSS, human_count};
use crate::util::{close_store, daemon_toml, sqlite_url};

pub(crate) async fn scale_phase(
    opts: &Options,
    rows: &mut Rows,
    notes: &mut Vec<String>,
) -> Result<()> {
    let p = Phase::Scale;
    let sim = Sim::start_local(SimConfig::default()).await?;
    let sizes = [
        (opts.scale_small, (opts.scale_small / 10).max(1), "small"),
        (opts.scale_jobs, opts.scale_waiting, "large"),
    ];
    let mut dirs = Vec::new();
    for (total, waiting, label) in sizes {
        let dir = temp_dir(opts, "scale")?;
        let db = dir.path().join("docfetch.db");
        let took = populate(&db, total, waiting).await?;
        let size = std::fs::metadata(&db)?.len();
        eprintln!(
            "   {label}: {total} jobs ({waiting} waiting) written in {:.1} s, {:.0} MiB",
            took.as_secs_f64(),
            size as f64 / 1_048_576.0
        );
        notes.push(format!(
            "scale: the {total}-job store was generated in {:.1} s ({:.0} MiB on disk, page cache warm when the daemon starts)",
            took.as_secs_f64(),
            size as f64 / 1_048_576.0
        ));
        dirs.push((dir, total));
    }
    for run in 1..=opts.runs {
        let mut rss = Vec::new();
        for (dir, total) in &dirs {
            // The API is on, so that a Prometheus scrape can be timed.
            let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
                .local_addr()?
                .port();
            let api = format!("127.0.0.1:{port}");
            let config = dir.path().join("docfetch.toml");
            std::fs::write(
                &config,
                daemon_toml(dir.path(), "", "", &sim.accounts_toml(), &api),
            )?;
            let (daemon, ready) = Daemon::start(
                &opts.daemon,
                dir.path(),
                &config,
                &[],
                Duration::from_secs(300),
            )
            .await?;
            let at_ready = daemon.memory()?;
            tokio::time::sleep(opts.scale_settle).await;
            let settled = daemon.memory()?;
            let scraped = Instant::now();
            let metrics = scrape(&format!("http://{api}/metrics")).await?;
            let scrape_ms = scraped.elapsed().as_secs_f64() * 1000.0;
            ensure!(
                metrics.contains("docfetch_jobs{state=\"done\""),
                "/metrics shows no done jobs"
            );
            let after_scrape = daemon.memory()?;
            let stopped = daemon.stop().await?;
            let jobs = human_count(*total);
            rows.add(
                p,
                &format!("start-up to READY=1, {jobs} jobs"),
                "ms",
                None,
                ready.as_secs_f64() * 1000.0,
            );
            rows.add(
                p,
                &format!("RSS at READY, {jobs} jobs"),
                "MiB",
                None,
                at_ready.rss_kib as f64 / 1024.0,
            );
            rows.add(
                p,
                &format!("RSS after settling, {jobs} jobs"),
                "MiB",
                None,
                settled.rss_kib as f64 / 1024.0,
            );
            rows.add(
                p,
                &format!("peak RSS (VmHWM), {jobs} jobs"),
                "MiB",
                None,
                settled.hwm_kib as f64 / 1024.0,
            );
            rows.add(
                p,
                &format!("GET /metrics (counts jobs by state and provider), {jobs} jobs"),
                "ms",
                None,
                scrape_ms,
            );
            rows.add(
                p,
                &format!("peak RSS (VmHWM) after GET /metrics, {jobs} jobs"),
                "MiB",
                Some(TARGET_RSS),
                after_scrape.hwm_kib as f64 / 1024.0,
            );
            rows.add(
                p,
                &format!("SIGTERM to exit, {jobs} jobs"),
                "ms",
                None,
                stopped.as_secs_f64() * 1000.0,
            );
            rss.push(after_scrape.hwm_kib as f64);
            eprintln!(
                "   run {run}, {jobs} jobs: READY after {:.0} ms, RSS {:.1} MiB, peak {:.1} MiB; /metrics {scrape_ms:.0} ms, then peak {:.1} MiB",
                ready.as_secs_f64() * 1000.0,
                settled.rss_kib as f64 / 1024.0,
                settled.hwm_kib as f64 / 1024.0,
                after_scrape.hwm_kib as f64 / 1024.0
            );
        }
        if let [small, large] = rss.as_slice() {
            rows.add(
                p,
                &format!(
                    "peak RSS, {} / {} jobs",
                    human_count(opts.scale_jobs),
                    human_count(opts.scale_small)
                ),
                "×",
                None,
                large / small,
            );
        }
    }
    sim.stop().await;
    Ok(())
}

/// `GET url` on loopback; the body as text.
pub(crate) async fn scrape(url: &str) -> Result<String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| anyhow!("HTTP client: {}", docfetch::http::describe(&e)))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow!("GET {url}: {}", docfetch::http::describe(&e)))?;
    ensure!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response
        .text()
        .await
        .map_err(|e| anyhow!("GET {url}: {}", docfetch::http::describe(&e)))
}

/// Writes `total` jobs into a new store at `db` — `waiting` of them due in
/// an hour, the rest done — with one or two events each, in one transaction
/// of two `INSERT … SELECT` statements. The schema comes from the daemon's
/// own migrations.
pub(crate) async fn populate(db: &Path, total: u64, waiting: u64) -> Result<Duration> {
    let url = sqlite_url(db);
    let store = Store::open(&url).await?;
    close_store(&store).await;
    let started = Instant::now();
    let options = SqliteConnectOptions::new()
        .filename(db)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Off)
        .pragma("cache_size", "-262144");
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let now = now_ms();
    let mut tx = conn.begin().await?;
    sqlx::query(
        "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < ?1)
         INSERT INTO jobs (id, name, account, provider, operation, params, state, cursor,
                           attempts, polls, steps, next_run_at, result, created_at, updated_at,
                           finished_at, deadline_at, source, request_sha256)
         SELECT lower(hex(randomblob(16))),
                printf('gen-%09d', n),
                'fresh-sim-plain', '1c-fresh', 'balance_sheet',
                '{\"organization\":{\"inn\":\"783900281039\",\"kpp\":\"\"},\"date\":\"2018-09-30T23:59:59\"}',
                CASE WHEN n < ?2 THEN 'waiting' ELSE 'done' END,
                CASE WHEN n < ?2 THEN '{\"job_id\":\"' || lower(hex(randomblob(16))) || '\",\"warnings\":[]}'
                     ELSE '{\"job_id\":\"' || lower(hex(randomblob(16))) || '\",\"file_id\":\"'
                          || lower(hex(randomblob(16))) || '\",\"warnings\":[]}' END,
                0, 2, CASE WHEN n < ?2 THEN 3 ELSE 4 END,
                CASE WHEN n < ?2 THEN ?3 + 3600000 + (n * 7919) % 600000 ELSE ?3 - (n % 86400000) END,
                CASE WHEN n < ?2 THEN NULL
                     ELSE '{\"files\":[{\"name\":\"balance_sheet.json\",\"size\":4096,\"sha256\":\"'
                          || lower(hex(randomblob(32))) || '\"}]}' END,
                ?3 - 86400000 - (n % 86400000),
                ?3 - (n % 86400000),
                CASE WHEN n < ?2 THEN NULL ELSE ?3 - (n % 86400000) END,
                ?3 + 172800000,
                'bench-gen',
                lower(hex(randomblob(32)))
         FROM seq",
    )
    .bind(i64::try_from(total).unwrap_or(i64::MAX))
    .bind(i64::try_from(waiting).unwrap_or(i64::MAX))
    .bind(now)
    .execute(&mut *tx)
    .await
    .context("generating jobs")?;
    sqlx::query(
        "INSERT INTO job_events (job_id, at, kind, message)
         SELECT id, created_at, 'accepted', 'accepted from api' FROM jobs WHERE source = 'bench-gen'
         UNION ALL
         SELECT id, finished_at, 'done', 'done: balance_sheet.json (4096 bytes)'
           FROM jobs WHERE source = 'bench-gen' AND state = 'done'",
    )
    .execute(&mut *tx)
    .await
    .context("generating events")?;
    tx.commit().await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await?;
    sqlx::query("ANALYZE").execute(&mut conn).await?;
    conn.close().await?;
    Ok(started.elapsed())
}
