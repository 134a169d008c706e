//! The benchmark of issue 8 (`docfetch-bench`): the real daemon code paths —
//! store, scheduler, HTTP, downloads with fsync — against the built-in
//! simulator over loopback, measured in seven phases and printed as one table
//! (or JSON).
//!
//! | phase | what runs | what is measured |
//! |---|---|---|
//! | `store` | [`Store`] alone, and raw sqlx/SQLite and `fdatasync` baselines | insert, claim and complete rates |
//! | `throughput` | the [`Scheduler`] driver in this process, 1C plain flow | jobs/s from submit to done, latency |
//! | `polling` | the driver, OFD (`AssumptiveCompleteTime`) and Diadoc (`Retry-After`) behind a recording proxy | requests per job against the minimum, lateness |
//! | `idle` | `docfetch run` as a child, 100k jobs due in an hour | CPU time, store queries, wake-ups |
//! | `scale` | `docfetch run` as a child on a 1M-job store (and a small one) | start-up to `READY=1`, RSS |
//! | `large` | `docfetch run` as a child, a streamed 1 GiB file | throughput against `curl -o`, peak RSS |
//! | `pg` | 1, 2 and 3 [`Scheduler`]s in this process sharing one PostgreSQL database, the `throughput` workload | jobs/s from submit to done, claims per job, latency |
//!
//! Every phase runs `runs` times; the table shows the median with the
//! minimum and maximum, and ratios are computed within one run against the
//! baseline measured in that same run. The machine (CPUs, memory, disk,
//! kernel) and the load averages are part of the report, because this is a
//! shared 2-core VM and the figures move with its load.
//!
//! This is a measuring tool whose errors are only ever printed, so it uses
//! `anyhow` with context throughout instead of a typed error.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use tokio_util::sync::CancellationToken;

use crate::config::{Environment, Settings};
use crate::job::request::RequestFormat;
use crate::job::{JobResult, JobState, NewJob, SavedFile, now_ms};
use crate::providers::Providers;
use crate::scheduler::Scheduler;
use crate::sim::kontur_diadoc::KonturDiadocSimConfig;
use crate::sim::ofd::OfdSimConfig;
use crate::sim::{Sim, SimConfig};
use crate::store::{JobFilter, Store, Transition};

/// The seven phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Store,
    Throughput,
    Polling,
    Idle,
    Scale,
    Large,
    Pg,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Store,
        Phase::Throughput,
        Phase::Polling,
        Phase::Idle,
        Phase::Scale,
        Phase::Large,
        Phase::Pg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Store => "store",
            Phase::Throughput => "throughput",
            Phase::Polling => "polling",
            Phase::Idle => "idle",
            Phase::Scale => "scale",
            Phase::Large => "large",
            Phase::Pg => "pg",
        }
    }

    /// Phases that start `docfetch run` as a child process.
    fn needs_daemon_binary(self) -> bool {
        matches!(self, Phase::Idle | Phase::Scale | Phase::Large)
    }
}

/// What to run, with every size and duration resolved.
#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub smoke: bool,
    pub phases: Vec<Phase>,
    /// Temporary folders are made here (the disk being measured).
    pub dir: PathBuf,
    /// The `docfetch` binary started as a child process.
    pub daemon: PathBuf,
    /// Throughput: jobs submitted.
    pub jobs: usize,
    /// `scheduler.workers` for the in-process phases.
    pub workers: usize,
    /// `concurrency` of the 1C account in the throughput phase.
    pub concurrency: usize,
    /// Tasks submitting jobs at once in the throughput phase.
    pub submitters: usize,
    pub poll_initial: Duration,
    pub poll_max: Duration,
    /// Size of each throughput job's file.
    pub file_size: usize,
    /// "Not ready" answers per job (1C throughput jobs and Diadoc jobs).
    pub pending: u32,
    /// Polling: jobs, half OFD and half Diadoc.
    pub poll_jobs: usize,
    /// Diadoc's `Retry-After`.
    pub retry_after_secs: u32,
    /// OFD: the report is ready this long after the order, and its
    /// `AssumptiveCompleteTime` says so (rounded up to a whole second).
    pub eta_ms: u64,
    /// Idle: jobs waiting, due in an hour.
    pub idle_jobs: u64,
    pub idle_time: Duration,
    /// Scale: jobs in the store, of which `scale_waiting` wait.
    pub scale_jobs: u64,
    pub scale_waiting: u64,
    /// Scale: the small store started for comparison.
    pub scale_small: u64,
    /// Scale: time after `READY=1` before RSS is read again.
    pub scale_settle: Duration,
    /// Large: file size in bytes.
    pub large_size: u64,
    /// Store: operations of each kind.
    pub store_ops: usize,
    /// PostgreSQL: the server the `pg` phase creates its databases on (a
    /// role that may `CREATE DATABASE`); `None` skips the phase.
    pub postgres: Option<String>,
    /// PostgreSQL: jobs submitted for each number of instances.
    pub pg_jobs: usize,
}

/// One measured quantity, one value per run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub phase: String,
    pub metric: String,
    pub unit: String,
    pub values: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The issue's target, when this row has one.
    pub target: Option<String>,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub kernel: String,
    /// Device, file system and whether it is rotational, for `--dir`.
    pub disk: String,
    pub build: String,
}

/// Everything the benchmark found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub runs: usize,
    pub smoke: bool,
    /// Settings used, as `(name, value)`.
    pub settings: Vec<(String, String)>,
    pub rows: Vec<Row>,
    /// `/proc/loadavg` when each phase started and at the end.
    pub load: Vec<(String, String)>,
    pub notes: Vec<String>,
}

/// Rows being filled in, run by run.
#[derive(Debug, Default)]
struct Rows(Vec<Row>);

impl Rows {
    fn add(&mut self, phase: Phase, metric: &str, unit: &str, target: Option<&str>, value: f64) {
        let phase = phase.name();
        if let Some(row) = self
            .0
            .iter_mut()
            .find(|r| r.phase == phase && r.metric == metric)
        {
            row.values.push(value);
            return;
        }
        self.0.push(Row {
            phase: phase.into(),
            metric: metric.into(),
            unit: unit.into(),
            values: vec![value],
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            target: target.map(str::to_string),
        });
    }

    fn finish(mut self) -> Vec<Row> {
        for row in &mut self.0 {
            let mut sorted: Vec<f64> = row
                .values
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            sorted.sort_by(f64::total_cmp);
            row.median = median(&sorted);
            row.min = sorted.first().copied().unwrap_or(f64::NAN);
            row.max = sorted.last().copied().unwrap_or(f64::NAN);
        }
        self.0
    }
}

const TARGET_THROUGHPUT: &str = "≥ 1000 jobs/s";
const TARGET_STORE: &str = "≥ 5000/s";
const TARGET_IDLE: &str = "well under 1 %";
const TARGET_RSS: &str = "< 64 MiB, flat";
const TARGET_LARGE: &str = "≥ 0.8";

/// Runs the selected phases and returns the report.
pub async fn run(opts: &Options) -> Result<Report> {
    if opts.phases.iter().any(|p| p.needs_daemon_binary()) && !opts.daemon.is_file() {
        bail!(
            "the daemon binary {} is missing; build it first (cargo build --release --bins) or pass --daemon PATH",
            opts.daemon.display()
        );
    }
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let machine = Machine::describe(&opts.dir);
    let mut rows = Rows::default();
    let mut notes = Vec::new();
    let mut load = Vec::new();
    if cfg!(debug_assertions) {
        notes.push(
            "DEBUG BUILD: these figures say nothing about performance; use cargo build --release"
                .into(),
        );
    }
    // The daemon installs the Prometheus recorder; the in-process phases
    // read its histograms for a per-operation breakdown.
    let prometheus = crate::metrics::install();
    // Ctrl-C or SIGTERM drops the phase in progress (its folders, stores
    // and child daemons with it), so an interrupted benchmark leaves
    // nothing behind either.
    let measured = tokio::select! {
        measured = run_phases(opts, &mut rows, &mut notes, &mut load, prometheus.as_ref()) => measured,
        signal = interrupted() => Err(anyhow!("interrupted by {signal}; nothing measured is kept")),
    };
    // Whatever happened, the kept folders go now.
    let spent = std::mem::take(&mut *lock(&SPENT));
    drop(spent);
    measured?;
    load.push(("end".into(), loadavg()));
    Ok(Report {
        machine,
        runs: opts.runs,
        smoke: opts.smoke,
        settings: settings_of(opts),
        rows: rows.finish(),
        load,
        notes,
    })
}

async fn run_phases(
    opts: &Options,
    rows: &mut Rows,
    notes: &mut Vec<String>,
    load: &mut Vec<(String, String)>,
    prometheus: Option<&metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<()> {
    for &phase in &opts.phases {
        load.push((phase.name().to_string(), loadavg()));
        eprintln!("== {} (load {})", phase.name(), loadavg());
        match phase {
            Phase::Store => store_phase(opts, rows).await,
            Phase::Throughput => throughput_phase(opts, rows, notes, prometheus).await,
            Phase::Polling => polling_phase(opts, rows, notes).await,
            Phase::Idle => idle_phase(opts, rows, notes).await,
            Phase::Scale => scale_phase(opts, rows, notes).await,
            Phase::Large => large_phase(opts, rows, notes).await,
            Phase::Pg => pg_phase(opts, rows, notes, prometheus).await,
        }
        .with_context(|| format!("phase {}", phase.name()))?;
    }
    Ok(())
}

fn settings_of(opts: &Options) -> Vec<(String, String)> {
    let phases: Vec<&str> = opts.phases.iter().map(|p| p.name()).collect();
    let mut out = vec![
        ("phases".to_string(), phases.join(",")),
        ("runs".into(), opts.runs.to_string()),
        ("dir".into(), opts.dir.display().to_string()),
    ];
    let has = |p: Phase| opts.phases.contains(&p);
    if has(Phase::Store) {
        out.push(("store ops per kind".into(), opts.store_ops.to_string()));
    }
    if has(Phase::Throughput) {
        out.push((
            "throughput".into(),
            format!(
                "{} jobs, 1C plain flow, {} pending answers each, {} B files; scheduler.workers={}, account concurrency={}, poll_initial={}, poll_max={}, {} submitters",
                opts.jobs,
                opts.pending,
                opts.file_size,
                opts.workers,
                opts.concurrency,
                crate::units::format_duration(opts.poll_initial),
                crate::units::format_duration(opts.poll_max),
                opts.submitters
            ),
        ));
    }
    if has(Phase::Polling) {
        out.push((
            "polling".into(),
            format!(
                "{} jobs (half OFD: ready {} ms after the order, AssumptiveCompleteTime the same, rounded up to a second; half Diadoc protocols: {} pending answers with Retry-After {} s); scheduler defaults (poll_initial 2s, poll_max 10m), workers={}",
                opts.poll_jobs, opts.eta_ms, opts.pending, opts.retry_after_secs, opts.workers
            ),
        ));
    }
    if has(Phase::Idle) {
        out.push((
            "idle".into(),
            format!(
                "{} jobs waiting, due in 1 h; measured for {}",
                opts.idle_jobs,
                crate::units::format_duration(opts.idle_time)
            ),
        ));
    }
    if has(Phase::Scale) {
        out.push((
            "scale".into(),
            format!(
                "{} jobs ({} waiting, the rest done, 1-2 events each) against {} jobs; RSS read at READY, {} later, and after one GET /metrics",
                opts.scale_jobs,
                opts.scale_waiting,
                opts.scale_small,
                crate::units::format_duration(opts.scale_settle)
            ),
        ));
    }
    if has(Phase::Large) {
        out.push(("large file".into(), format!("{} bytes", opts.large_size)));
    }
    if has(Phase::Pg) {
        let pg = match &opts.postgres {
            None => "skipped, no PostgreSQL server given".into(),
            Some(url) => format!(
                "{} jobs for each of 1 to {PG_MAX_INSTANCES} instances, the throughput workload (1C plain flow, {} pending answers each, {} B files, {} submitters), a fresh database each time on {}; scheduler.workers={} per instance, poll_initial={}, poll_max={}; account concurrency={} for the whole fleet (kept in the store; {PG_MAX_INSTANCES} × the larger of --concurrency and --workers, so that the account's limit never holds {PG_MAX_INSTANCES} instances back and the figures show the queue)",
                opts.pg_jobs,
                opts.pending,
                opts.file_size,
                opts.submitters,
                crate::config::redact_store_url(url),
                opts.workers,
                crate::units::format_duration(opts.poll_initial),
                crate::units::format_duration(opts.poll_max),
                pg_account_concurrency(opts),
            ),
        };
        out.push(("pg".into(), pg));
    }
    out
}

// ---------------------------------------------------------------------------
// Phase 6: the store alone, against raw SQLite and fdatasync.

async fn store_phase(opts: &Options, rows: &mut Rows) -> Result<()> {
    let p = Phase::Store;
    let n = opts.store_ops;
    for run in 1..=opts.runs {
        let dir = temp_dir(opts, "store")?;
        let store = Store::open(&sqlite_url(&dir.path().join("store.db"))).await?;
        if let Store::Sqlite(s) = &store {
            warm_wal(&mut *s.pool().acquire().await?).await?;
        }
        let now = now_ms();
        let started = Instant::now();
        for i in 0..n {
            store.insert(&bench_new_job(i, now)).await?;
        }
        let insert_s = started.elapsed().as_secs_f64();
        // Claims in batches of `workers`, as the driver does.
        let owner = "docfetch-bench";
        let batch = u32::try_from(opts.workers).unwrap_or(16);
        let started = Instant::now();
        let mut claimed = Vec::with_capacity(n);
        let mut claims = 0usize;
        loop {
            let t = now_ms();
            let jobs = store.claim_due(owner, t, t + 600_000, batch).await?;
            if jobs.is_empty() {
                break;
            }
            claims += 1;
            claimed.extend(jobs);
        }
        let claim_s = started.elapsed().as_secs_f64();
        ensure!(claimed.len() == n, "claimed {} of {n} jobs", claimed.len());
        let done = done_transition();
        let started = Instant::now();
        for job in &claimed {
            store.finish_step(&job.id, owner, &done).await?;
        }
        let complete_s = started.elapsed().as_secs_f64();

        // The same work as the daemon does it: `workers` tasks at once,
        // whose writes the store commits in groups.
        let workers = opts.workers.max(1);
        let started = Instant::now();
        futures_util::stream::iter((n..2 * n).map(|i| {
            let store = store.clone();
            async move { store.insert(&bench_new_job(i, now)).await }
        }))
        .buffer_unordered(workers)
        .try_collect::<Vec<_>>()
        .await?;
        let insert_par_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut cycled = 0usize;
        loop {
            let t = now_ms();
            let jobs = store.claim_due(owner, t, t + 600_000, batch).await?;
            if jobs.is_empty() {
                break;
            }
            cycled += jobs.len();
            futures_util::future::try_join_all(jobs.iter().map(|job| {
                let store = store.clone();
                let done = done.clone();
                async move { store.finish_step(&job.id, owner, &done).await }
            }))
            .await?;
        }
        let cycle_par_s = started.elapsed().as_secs_f64();
        ensure!(cycled == n, "cycled {cycled} of {n} jobs");
        close_store(&store).await;

        let base = baseline_sqlite(&dir.path().join("baseline.db"), n).await?;
        let fsyncs = baseline_fdatasync(&dir.path().join("fsync.bin"), n).await?;

        let nf = n as f64;
        let insert_rate = nf / insert_s;
        let claim_rate = nf / claim_s;
        let complete_rate = nf / complete_s;
        let cycle_rate = nf / (claim_s + complete_s);
        rows.add(
            p,
            "insert, one at a time (each waits for its commit)",
            "jobs/s",
            None,
            insert_rate,
        );
        rows.add(
            p,
            &format!("claim_due, batches of {batch}"),
            "jobs/s",
            None,
            claim_rate,
        );
        rows.add(
            p,
            "finish_step → done, one at a time",
            "jobs/s",
            None,
            complete_rate,
        );
        rows.add(
            p,
            "claim + complete, one at a time",
            "jobs/s",
            None,
            cycle_rate,
        );
        rows.add(
            p,
            &format!("insert, {workers} at once (group commit)"),
            "jobs/s",
            None,
            nf / insert_par_s,
        );
        rows.add(
            p,
            &format!("claim {batch} + complete them at once (as the driver does)"),
            "jobs/s",
            Some(TARGET_STORE),
            nf / cycle_par_s,
        );
        rows.add(
            p,
            "baseline: sqlx single-row INSERT, WAL, synchronous=FULL",
            "commits/s",
            None,
            base.insert_rate,
        );
        rows.add(
            p,
            "baseline: sqlx single-row UPDATE, WAL, synchronous=FULL",
            "commits/s",
            None,
            base.update_rate,
        );
        rows.add(
            p,
            "baseline: 1000 INSERTs per transaction",
            "rows/s",
            None,
            base.batch_rate,
        );
        rows.add(
            p,
            "baseline: 4 KiB write + fdatasync",
            "fsyncs/s",
            None,
            fsyncs,
        );
        rows.add(
            p,
            "ratio insert / baseline INSERT",
            "×",
            None,
            insert_rate / base.insert_rate,
        );
        rows.add(
            p,
            "ratio finish_step / baseline UPDATE",
            "×",
            None,
            complete_rate / base.update_rate,
        );
        eprintln!(
            "   run {run}: insert {insert_rate:.0}/s, claim {claim_rate:.0}/s ({claims} claims), complete {complete_rate:.0}/s; baseline {:.0} commits/s, fdatasync {fsyncs:.0}/s",
            base.insert_rate
        );
    }
    Ok(())
}

fn bench_new_job(i: usize, now: i64) -> NewJob {
    NewJob {
        id: uuid::Uuid::new_v4().to_string(),
        name: format!("store-{i:07}"),
        account: "bench".into(),
        provider: "1c-fresh".into(),
        operation: "balance_sheet".into(),
        params: serde_json::json!({"organization": {"inn": "783900281039", "kpp": ""}}),
        source: "api".into(),
        request_sha256: "0".repeat(64),
        created_at: now,
        deadline_at: now + 48 * 3_600_000,
        hooks: None,
    }
}

fn done_transition() -> Transition {
    Transition {
        state: JobState::Done,
        cursor: serde_json::json!({"job_id": "47e7efd6-ddb6-11e7-819b-0050568925e0", "file_id": "f"}),
        next_run_at: now_ms(),
        attempts: 0,
        polls: 2,
        last_error: None,
        result: Some(JobResult {
            files: vec![SavedFile {
                name: "balance_sheet.json".into(),
                size: 4096,
                sha256: "a".repeat(64),
            }],
            warnings: Vec::new(),
        }),
        event: (
            "done".into(),
            "done: balance_sheet.json (4096 bytes)".into(),
        ),
        hooks_pending: false,
    }
}

struct SqliteBaseline {
    insert_rate: f64,
    update_rate: f64,
    batch_rate: f64,
}

/// The least a durable single-row transaction costs through sqlx: one
/// connection, WAL, `synchronous=FULL`, autocommit statements.
async fn baseline_sqlite(path: &Path, n: usize) -> Result<SqliteBaseline> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL)")
        .execute(&mut conn)
        .await?;
    warm_wal(&mut conn).await?;
    let started = Instant::now();
    for i in 0..n {
        sqlx::query("INSERT INTO t (k, v) VALUES (?1, ?2)")
            .bind(format!("key-{i}"))
            .bind("value")
            .execute(&mut conn)
            .await?;
    }
    let insert_rate = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..n {
        sqlx::query("UPDATE t SET v = ?2 WHERE id = ?1")
            .bind(i64::try_from(i + 1).unwrap_or(1))
            .bind("done")
            .execute(&mut conn)
            .await?;
    }
    let update_rate = n as f64 / started.elapsed().as_secs_f64();
    let rows = n.max(1000);
    let started = Instant::now();
    let mut written = 0;
    while written < rows {
        let mut tx = conn.begin().await?;
        for i in written..(written + 1000).min(rows) {
            sqlx::query("INSERT INTO t (k, v) VALUES (?1, ?2)")
                .bind(format!("batch-{i}"))
                .bind("value")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        written = (written + 1000).min(rows);
    }
    let batch_rate = rows as f64 / started.elapsed().as_secs_f64();
    conn.close().await?;
    Ok(SqliteBaseline {
        insert_rate,
        update_rate,
        batch_rate,
    })
}

/// Grows the WAL to its working size and checkpoints it, so that timed
/// commits overwrite WAL space the way a running daemon's do, instead of
/// extending the file (on ext4 each fsync of a growing file also commits the
/// metadata journal, which a steady-state WAL never pays).
async fn warm_wal(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_warm (x BLOB)")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < 1500)
         INSERT INTO bench_warm SELECT randomblob(3000) FROM seq",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM bench_warm")
        .execute(&mut *conn)
        .await?;
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The disk's own limit: a 4 KiB write followed by `fdatasync`, `n` times,
/// over 1 MiB written (and synced) beforehand, so no write extends the file.
async fn baseline_fdatasync(path: &Path, n: usize) -> Result<f64> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<f64> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(&path)?;
        let block = vec![0x5au8; 4096];
        for i in 0..256 {
            file.write_all_at(&block, i * 4096)?;
        }
        file.sync_all()?;
        let started = Instant::now();
        for i in 0..n {
            file.write_all_at(&block, (i as u64 % 256) * 4096)?;
            file.sync_data()?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    })
    .await?
}

// ---------------------------------------------------------------------------
// Phase 1: throughput, in this process.

async fn throughput_phase(
    opts: &Options,
    rows: &mut Rows,
    notes: &mut Vec<String>,
    prometheus: Option<&metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<()> {
    let p = Phase::Throughput;
    let n = opts.jobs;
    if !opts.smoke {
        settle_disk(notes, p).await;
    }
    for run in 1..=opts.runs {
        let dir = temp_dir(opts, "throughput")?;
        let (sim, settings) = fresh_workload(opts, dir.path(), opts.concurrency).await?;
        let store = Store::open(&settings.store.url).await?;
        let scheduler = bench_scheduler(&store, &settings, crate::app::instance_id())?;
        let before = prometheus.map(|h| parse_prometheus(&h.render()));
        let cpu_before = cpu_seconds("self")?;
        let shutdown = CancellationToken::new();
        let driver = tokio::spawn(scheduler.clone().run(shutdown.clone(), None));

        let started = Instant::now();
        let submitted = submit_fresh_jobs(opts, &store, &settings, n).await;
        let submit_s = started.elapsed().as_secs_f64();
        let finished = match submitted {
            Ok(()) => wait_finished(&store, n, fresh_workload_limit(n)).await,
            Err(e) => Err(e),
        };
        let wall_s = started.elapsed().as_secs_f64();
        shutdown.cancel();
        let _ = driver.await;
        let cpu_s = cpu_seconds("self")? - cpu_before;
        let after = prometheus.map(|h| parse_prometheus(&h.render()));
        finished?;

        let done = all_done(&store, n).await;
        close_store(&store).await;
        sim.stop().await;
        keep_until_the_end(dir);
        let done = done?;
        let nf = n as f64;
        rows.add(
            p,
            "end to end (first submit → last job done)",
            "jobs/s",
            Some(TARGET_THROUGHPUT),
            done.jobs_per_s(),
        );
        rows.add(
            p,
            "submit → done latency p50",
            "ms",
            None,
            percentile(&done.latencies_ms, 50.0),
        );
        rows.add(
            p,
            "submit → done latency p99",
            "ms",
            None,
            percentile(&done.latencies_ms, 99.0),
        );
        rows.add(
            p,
            "submissions accepted while the driver ran",
            "jobs/s",
            None,
            nf / submit_s,
        );
        rows.add(
            p,
            "\"not ready\" answers per job",
            "polls",
            None,
            done.polls_per_job,
        );
        rows.add(
            p,
            "CPU of this process (daemon + simulator) per job",
            "ms",
            None,
            cpu_s * 1000.0 / nf,
        );
        rows.add(p, "CPU use during the run", "cores", None, cpu_s / wall_s);
        if let (Some(before), Some(after)) = (before, after) {
            let delta = |name: &str, label: &str| histogram_delta(&before, &after, name, label);
            let (claim_sum, claims) = delta(STORE_OP_HISTOGRAM, CLAIM_LABEL);
            let (finish_sum, finishes) = delta(STORE_OP_HISTOGRAM, "op=\"finish\"");
            let (step_sum, steps) = delta(
                "docfetch_provider_step_duration_seconds",
                "provider=\"1c-fresh\"",
            );
            let (download_sum, downloads) = delta(
                "docfetch_download_duration_seconds",
                "provider=\"1c-fresh\"",
            );
            rows.add(p, "claims per job (batched)", "claims", None, claims / nf);
            let (commit_sum, commits) = delta("docfetch_store_commit_duration_seconds", "");
            let writes = prometheus_value(&after, "docfetch_store_writes_total", "", "")
                - prometheus_value(&before, "docfetch_store_writes_total", "", "");
            rows.add(p, "group commits per job", "commits", None, commits / nf);
            rows.add(
                p,
                "writes per group commit",
                "writes",
                None,
                writes / commits.max(1.0),
            );
            rows.add(
                p,
                "group commit time, mean (statements + WAL fsync)",
                "ms",
                None,
                1000.0 * commit_sum / commits.max(1.0),
            );
            rows.add(
                p,
                "claim_due latency, mean (incl. waiting for the writer)",
                "ms",
                None,
                1000.0 * claim_sum / claims.max(1.0),
            );
            rows.add(p, "finish_step per job", "commits", None, finishes / nf);
            rows.add(
                p,
                "finish_step latency, mean (incl. waiting for the writer)",
                "ms",
                None,
                1000.0 * finish_sum / finishes.max(1.0),
            );
            rows.add(
                p,
                "provider step time per job (HTTP, download, fsync)",
                "ms",
                None,
                1000.0 * step_sum / nf,
            );
            rows.add(p, "provider steps per job", "steps", None, steps / nf);
            rows.add(
                p,
                "download (stream + fsync + rename + fsync dir), mean",
                "ms",
                None,
                1000.0 * download_sum / downloads.max(1.0),
            );
        }
        eprintln!(
            "   run {run}: {n} jobs in {:.2} s = {:.0} jobs/s; p50 {:.0} ms, p99 {:.0} ms; submit {:.0}/s; CPU {cpu_s:.1} s",
            done.span_s,
            done.jobs_per_s(),
            percentile(&done.latencies_ms, 50.0),
            percentile(&done.latencies_ms, 99.0),
            nf / submit_s
        );
    }
    Ok(())
}

/// The histogram of store operations, and the label of its claims.
const STORE_OP_HISTOGRAM: &str = "docfetch_store_operation_duration_seconds";
const CLAIM_LABEL: &str = "op=\"claim\"";

/// The workload of the `throughput` and `pg` phases: a simulator, and a
/// daemon config rooted in `dir` with one 1C account (plain flow) of
/// `concurrency` against it.
async fn fresh_workload(
    opts: &Options,
    dir: &Path,
    concurrency: usize,
) -> Result<(Sim, Arc<Settings>)> {
    let sim = Sim::start_local(SimConfig::default()).await?;
    let fresh = &sim.config.fresh;
    let accounts = format!(
        "[accounts.bench-fresh]\nprovider = \"1c-fresh\"\nflow = \"plain\"\nbase_url = {}\nusername = {}\npassword = {}\nconcurrency = {}\n",
        toml_str(&sim.fresh.base_url()),
        toml_str(&fresh.username),
        toml_str(&fresh.password),
        concurrency
    );
    let scheduler = format!(
        "workers = {}\npoll_initial = {}\npoll_max = {}\nretry_initial = \"50ms\"",
        opts.workers,
        toml_str(&crate::units::format_duration(opts.poll_initial)),
        toml_str(&crate::units::format_duration(opts.poll_max)),
    );
    let settings = Settings::from_toml(
        &daemon_toml(dir, &scheduler, "", &accounts, ""),
        &Environment::default(),
    )?;
    Ok((sim, Arc::new(settings)))
}

/// How long `n` jobs of [`fresh_workload`] may take before the run counts as stuck.
fn fresh_workload_limit(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20) * u32::try_from(n).unwrap_or(u32::MAX)
}

/// Submits `n` jobs of [`fresh_workload`] through the same path as the API
/// and the drop directory, from `opts.submitters` tasks at once.
async fn submit_fresh_jobs(
    opts: &Options,
    store: &Store,
    settings: &Arc<Settings>,
    n: usize,
) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..opts.submitters.max(1) {
        let (store, settings, next) = (store.clone(), settings.clone(), next.clone());
        let (pending, size) = (opts.pending, opts.file_size);
        submitters.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let request = serde_json::json!({
                    "account": "bench-fresh",
                    "operation": "balance_sheet",
                    "name": format!("tp-{i:06}"),
                    "params": {
                        "organization": {"inn": "783900281039", "kpp": ""},
                        "_sim": {"pending": pending, "size": size}
                    }
                });
                let bytes = serde_json::to_vec(&request)?;
                crate::inbox::accept(&store, &settings, &bytes, RequestFormat::Json, None, "api")
                    .await?;
            }
        });
    }
    while let Some(joined) = submitters.join_next().await {
        joined??;
    }
    Ok(())
}

/// A scheduler on `store` as the daemon builds one, leasing as `owner`.
fn bench_scheduler(
    store: &Store,
    settings: &Arc<Settings>,
    owner: String,
) -> Result<Arc<Scheduler>> {
    let http = crate::http::client(&settings.http)
        .map_err(|e| anyhow!("HTTP client: {}", crate::http::describe(&e)))?;
    Ok(Arc::new(Scheduler::new(
        store.clone(),
        Providers::from_settings(settings),
        http,
        settings.clone(),
        owner,
    )))
}

/// What the jobs of a finished run show.
struct DoneJobs {
    jobs: usize,
    /// From the first job's submission to the last one's end.
    span_s: f64,
    /// Submit → done of each job, sorted.
    latencies_ms: Vec<f64>,
    polls_per_job: f64,
}

impl DoneJobs {
    fn jobs_per_s(&self) -> f64 {
        self.jobs as f64 / self.span_s
    }
}

/// Reads back the `n` jobs of a run, all of which must have ended done.
async fn all_done(store: &Store, n: usize) -> Result<DoneJobs> {
    let jobs = store
        .list(&JobFilter {
            limit: 0,
            ..JobFilter::default()
        })
        .await?;
    let done: Vec<_> = jobs.iter().filter(|j| j.state == JobState::Done).collect();
    ensure!(
        done.len() == n,
        "{} of {n} jobs ended done; the others: {:?}",
        done.len(),
        jobs.iter()
            .filter(|j| j.state != JobState::Done)
            .take(3)
            .map(|j| (&j.name, j.state, &j.last_error))
            .collect::<Vec<_>>()
    );
    let first = done.iter().map(|j| j.created_at).min().unwrap_or(0);
    let last = done.iter().filter_map(|j| j.finished_at).max().unwrap_or(0);
    let mut latencies_ms: Vec<f64> = done
        .iter()
        .filter_map(|j| j.finished_at.map(|f| (f - j.created_at) as f64))
        .collect();
    latencies_ms.sort_by(f64::total_cmp);
    Ok(DoneJobs {
        jobs: n,
        span_s: ((last - first) as f64 / 1000.0).max(1e-3),
        latencies_ms,
        polls_per_job: done.iter().map(|j| f64::from(j.polls)).sum::<f64>() / n.max(1) as f64,
    })
}

/// Waits until `n` jobs are finished (done, failed or cancelled).
async fn wait_finished(store: &Store, n: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let counts = store.counts().await?;
        let finished: u64 = counts
            .iter()
            .filter(|(s, _)| s.is_finished())
            .map(|(_, c)| c)
            .sum();
        if finished >= n as u64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {finished} of {n} jobs finished within {limit:?}: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Phase 2: polling efficiency, behind a recording proxy.

async fn polling_phase(opts: &Options, rows: &mut Rows, notes: &mut Vec<String>) -> Result<()> {
    let p = Phase::Polling;
    let ofd_jobs = opts.poll_jobs / 2;
    let diadoc_jobs = opts.poll_jobs - ofd_jobs;
    for run in 1..=opts.runs {
        let dir = temp_dir(opts, "polling")?;
        let config = SimConfig {
            ofd: OfdSimConfig {
                // Ready exactly when the knobs say, not after a number of looks.
                pending_lists: 0,
                ..OfdSimConfig::default()
            },
            kontur_diadoc: KonturDiadocSimConfig {
                pending: opts.pending,
                retry_after_secs: opts.retry_after_secs,
                ..KonturDiadocSimConfig::default()
            },
            ..SimConfig::default()
        };
        let sim = Sim::start_local(config).await?;
        let proxy = Proxy::start(sim.addr).await?;
        let accounts = sim.accounts_toml().replace(
            &format!("http://{}", sim.addr),
            &format!("http://{}", proxy.addr),
        );
        let scheduler = format!("workers = {}", opts.workers);
        let settings = Arc::new(Settings::from_toml(
            &daemon_toml(dir.path(), &scheduler, "", &accounts, ""),
            &Environment::default(),
        )?);
        let store = Store::open(&settings.store.url).await?;
        let scheduler = bench_scheduler(&store, &settings, crate::app::instance_id())?;
        let shutdown = CancellationToken::new();
        let driver = tokio::spawn(scheduler.clone().run(shutdown.clone(), None));
        for i in 0..opts.poll_jobs {
            let request = if i % 2 == 0 && i / 2 < ofd_jobs {
                serde_json::json!({
                    "account": "ofd-sim", "operation": "report", "name": format!("ofd-{i:05}"),
                    "params": {"ReportType": "CloseShiftReport",
                               "DateFrom": "2026-11-01T00:00:00", "DateTo": "2026-11-22T23:59:59",
                               "SelectAllKkts": true, "UseXlsxFile": true,
                               "_sim": {"ready_after_ms": opts.eta_ms, "eta_ms": opts.eta_ms}}
                })
            } else {
                serde_json::json!({
                    "account": "kontur-diadoc-sim", "operation": "document-protocol",
                    "name": format!("diadoc-{i:05}"),
                    "params": {"boxId": uuid::Uuid::new_v4().to_string(),
                               "messageId": uuid::Uuid::new_v4().to_string(),
                               "documentId": uuid::Uuid::new_v4().to_string()}
                })
            };
            let bytes = serde_json::to_vec(&request)?;
            crate::inbox::accept(&store, &settings, &bytes, RequestFormat::Json, None, "api")
                .await?;
        }
        let finished = wait_finished(&store, opts.poll_jobs, Duration::from_secs(180)).await;
        shutdown.cancel();
        let _ = driver.await;
        finished?;
        let jobs = store
            .list(&JobFilter {
                limit: 0,
                ..JobFilter::default()
            })
            .await?;
        close_store(&store).await;
        let failed: Vec<_> = jobs.iter().filter(|j| j.state != JobState::Done).collect();
        ensure!(
            failed.is_empty(),
            "{} polling jobs did not end done: {:?}",
            failed.len(),
            failed
                .iter()
                .take(3)
                .map(|j| (&j.name, j.state, &j.last_error))
                .collect::<Vec<_>>()
        );
        let hits = proxy.stop().await;
        sim.stop().await;

        let ofd = analyse_ofd(&hits, opts.eta_ms as f64)?;
        ensure!(
            ofd.reports == ofd_jobs,
            "the proxy saw {} OFD orders for {ofd_jobs} jobs",
            ofd.reports
        );
        let ofd_min = (3 * ofd_jobs + 1) as f64;
        rows.add(
            p,
            "OFD: requests per job",
            "requests",
            None,
            ofd.requests as f64 / ofd_jobs as f64,
        );
        rows.add(
            p,
            "OFD: minimum (order, one status look, download; one login)",
            "requests",
            None,
            ofd_min / ofd_jobs as f64,
        );
        rows.add(
            p,
            "OFD: requests / minimum",
            "×",
            None,
            ofd.requests as f64 / ofd_min,
        );
        rows.add(
            p,
            "OFD: lateness after AssumptiveCompleteTime p50",
            "ms",
            None,
            percentile(&ofd.after_eta, 50.0),
        );
        rows.add(
            p,
            "OFD: lateness after AssumptiveCompleteTime p99",
            "ms",
            None,
            percentile(&ofd.after_eta, 99.0),
        );
        rows.add(
            p,
            "OFD: lateness after ready p50 (incl. the ETA's whole-second rounding)",
            "ms",
            None,
            percentile(&ofd.after_ready, 50.0),
        );
        rows.add(
            p,
            "OFD: lateness after ready p99",
            "ms",
            None,
            percentile(&ofd.after_ready, 99.0),
        );

        let diadoc = analyse_diadoc(&hits)?;
        ensure!(
            diadoc.documents == diadoc_jobs,
            "the proxy saw {} Diadoc documents for {diadoc_jobs} jobs",
            diadoc.documents
        );
        let diadoc_min = (diadoc_jobs * (opts.pending as usize + 1) + 1) as f64;
        rows.add(
            p,
            "Diadoc: requests per job",
            "requests",
            None,
            diadoc.requests as f64 / diadoc_jobs as f64,
        );
        rows.add(
            p,
            &format!(
                "Diadoc: minimum ({} Retry-After answers + the protocol; one login)",
                opts.pending
            ),
            "requests",
            None,
            diadoc_min / diadoc_jobs as f64,
        );
        rows.add(
            p,
            "Diadoc: requests / minimum",
            "×",
            None,
            diadoc.requests as f64 / diadoc_min,
        );
        rows.add(
            p,
            "Diadoc: polls sent before Retry-After expired",
            "polls",
            None,
            diadoc.early as f64,
        );
        rows.add(
            p,
            "Diadoc: lateness after the last Retry-After p50",
            "ms",
            None,
            percentile(&diadoc.late, 50.0),
        );
        rows.add(
            p,
            "Diadoc: lateness after the last Retry-After p99",
            "ms",
            None,
            percentile(&diadoc.late, 99.0),
        );
        if run == 1 {
            notes.push(format!(
                "polling: OFD requests by kind in run 1: {:?}; Diadoc: {:?}",
                ofd.kinds, diadoc.kinds
            ));
        }
        eprintln!(
            "   run {run}: OFD {:.2} req/job, late p50 {:.0} ms after ETA; Diadoc {:.2} req/job, late p50 {:.0} ms",
            ofd.requests as f64 / ofd_jobs.max(1) as f64,
            percentile(&ofd.after_eta, 50.0),
            diadoc.requests as f64 / diadoc_jobs.max(1) as f64,
            percentile(&diadoc.late, 50.0)
        );
    }
    Ok(())
}

struct OfdAnalysis {
    requests: usize,
    reports: usize,
    kinds: BTreeMap<&'static str, usize>,
    after_eta: Vec<f64>,
    after_ready: Vec<f64>,
}

/// Per OFD report: the order's answer (id, `AssumptiveCompleteTime`, when it
/// came back) and the download request.
fn analyse_ofd(hits: &[Hit], ready_after_ms: f64) -> Result<OfdAnalysis> {
    let mut kinds = BTreeMap::new();
    let mut orders: HashMap<String, (f64, f64)> = HashMap::new();
    let mut downloads: HashMap<String, f64> = HashMap::new();
    let mut requests = 0;
    for hit in hits {
        let Some(path) = hit.path_only().strip_prefix(crate::sim::ofd::PREFIX) else {
            continue;
        };
        requests += 1;
        let kind = match (hit.method.as_str(), path) {
            ("POST", "/api/Authorization/CreateAuthToken") => "login",
            ("POST", "/api/customer/reports") => {
                let body: serde_json::Value =
                    serde_json::from_slice(hit.body.as_deref().unwrap_or(b""))
                        .context("the OFD order answer is not JSON")?;
                let data = &body["Data"];
                let id = data["Id"]
                    .as_str()
                    .context("no report Id in the order answer")?;
                let eta = data["AssumptiveCompleteTime"]
                    .as_str()
                    .and_then(|t| {
                        chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S").ok()
                    })
                    .context("no AssumptiveCompleteTime in the order answer")?;
                orders.insert(
                    id.to_string(),
                    (hit.end_ms, eta.and_utc().timestamp_millis() as f64),
                );
                "order"
            }
            ("GET", "/api/customer/reports") => "list",
            ("GET", p) if p.starts_with("/api/customer/reports/") && !p.ends_with("/cancel") => {
                let id = &p["/api/customer/reports/".len()..];
                downloads.entry(id.to_string()).or_insert(hit.start_ms);
                "download"
            }
            _ => "other",
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    let mut after_eta = Vec::new();
    let mut after_ready = Vec::new();
    for (id, (ordered, eta)) in &orders {
        let download = downloads
            .get(id)
            .with_context(|| format!("OFD report {id} was never downloaded"))?;
        after_eta.push(download - eta);
        after_ready.push(download - (ordered + ready_after_ms));
    }
    after_eta.sort_by(f64::total_cmp);
    after_ready.sort_by(f64::total_cmp);
    Ok(OfdAnalysis {
        requests,
        reports: orders.len(),
        kinds,
        after_eta,
        after_ready,
    })
}

struct DiadocAnalysis {
    requests: usize,
    documents: usize,
    kinds: BTreeMap<&'static str, usize>,
    /// Polls sent before the previous answer's `Retry-After` ran out.
    early: usize,
    late: Vec<f64>,
}

/// Per document: the `Retry-After` answers, then the request that got the
/// protocol; lateness is how long after the last `Retry-After` ran out it came.
fn analyse_diadoc(hits: &[Hit]) -> Result<DiadocAnalysis> {
    let mut kinds = BTreeMap::new();
    let mut by_document: HashMap<String, Vec<&Hit>> = HashMap::new();
    let mut requests = 0;
    for hit in hits {
        let Some(path) = hit
            .path_only()
            .strip_prefix(crate::sim::kontur_diadoc::PREFIX)
        else {
            continue;
        };
        requests += 1;
        let kind = match path {
            "/V3/Authenticate" => "login",
            "/GenerateDocumentProtocol" => {
                let document = hit
                    .query_param("documentId")
                    .context("a protocol request without documentId")?;
                by_document.entry(document).or_default().push(hit);
                "protocol"
            }
            _ => "other",
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    let mut early = 0;
    let mut late = Vec::new();
    for polls in by_document.values_mut() {
        polls.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        for pair in polls.windows(2) {
            if let Some(after) = pair[0].retry_after
                && pair[1].start_ms < pair[0].end_ms + after * 1000.0
            {
                early += 1;
            }
        }
        if let [.., last_pending, done] = polls.as_slice()
            && let Some(after) = last_pending.retry_after
            && done.retry_after.is_none()
        {
            late.push(done.start_ms - (last_pending.end_ms + after * 1000.0));
        }
    }
    late.sort_by(f64::total_cmp);
    Ok(DiadocAnalysis {
        requests,
        documents: by_document.len(),
        kinds,
        early,
        late,
    })
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
struct Hit {
    /// Wall-clock ms when the request arrived and when the answer's head
    /// (for captured bodies: the whole answer) came back.
    start_ms: f64,
    end_ms: f64,
    method: String,
    /// Path and query.
    path: String,
    retry_after: Option<f64>,
    /// The answer's body, kept for POSTs (logins and orders are small).
    body: Option<Bytes>,
}

impl Hit {
    fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or(&self.path)
    }

    fn query_param(&self, key: &str) -> Option<String> {
        let query = self.path.split_once('?')?.1;
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }
}

/// A reverse proxy between the daemon and the simulator that records every
/// request with its timing: the only place that sees when each poll really
/// went out, without changing the daemon or the simulator.
struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    hits: Mutex<Vec<Hit>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| anyhow!("proxy HTTP client: {}", crate::http::describe(&e)))?;
        let state = Arc::new(ProxyState {
            upstream: format!("http://{upstream}"),
            client,
            hits: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(forward).with_state(state.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        Ok(Proxy {
            addr,
            state,
            stop,
            task,
        })
    }

    async fn stop(self) -> Vec<Hit> {
        self.stop.cancel();
        let _ = self.task.await;
        std::mem::take(&mut *lock(&self.state.hits))
    }
}

async fn forward(
    State(proxy): State<Arc<ProxyState>>,
    request: axum::extract::Request,
) -> Response {
    let start_ms = wall_ms();
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return status_only(StatusCode::BAD_REQUEST);
    };
    let mut upstream = proxy
        .client
        .request(parts.method.clone(), format!("{}{path}", proxy.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            upstream = upstream.header(name.clone(), value.clone());
        }
    }
    let Ok(answer) = upstream.send().await else {
        return status_only(StatusCode::BAD_GATEWAY);
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let retry_after = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok());
    let mut hit = Hit {
        start_ms,
        end_ms: 0.0,
        method: parts.method.to_string(),
        path,
        retry_after,
        body: None,
    };
    let body = if parts.method == Method::POST {
        let Ok(bytes) = answer.bytes().await else {
            return status_only(StatusCode::BAD_GATEWAY);
        };
        hit.body = Some(bytes.clone());
        Body::from(bytes)
    } else {
        Body::from_stream(answer.bytes_stream())
    };
    hit.end_ms = wall_ms();
    lock(&proxy.hits).push(hit);
    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        if name != header::TRANSFER_ENCODING && name != header::CONNECTION {
            response = response.header(name.clone(), value.clone());
        }
    }
    response
        .body(body)
        .unwrap_or_else(|_| status_only(StatusCode::INTERNAL_SERVER_ERROR))
}

fn status_only(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

// ---------------------------------------------------------------------------
// Phase 3: idle cost of `docfetch run` as a child process.

async fn idle_phase(opts: &Options, rows: &mut Rows, notes: &mut Vec<String>) -> Result<()> {
    let p = Phase::Idle;
    let dir = temp_dir(opts, "idle")?;
    let sim = Sim::start_local(SimConfig::default()).await?;
    let db = dir.path().join("docfetch.db");
    let generated = populate(&db, opts.idle_jobs, opts.idle_jobs).await?;
    eprintln!(
        "   {} waiting jobs written in {:.1} s",
        opts.idle_jobs,
        generated.as_secs_f64()
    );
    let config = dir.path().join("docfetch.toml");
    std::fs::write(
        &config,
        daemon_toml(
            dir.path(),
            "",
            "[log]\nlevel = \"warn\"\nformat = \"json\"\n",
            &sim.accounts_toml(),
            "",
        ),
    )?;
    for run in 1..=opts.runs {
        // Every statement sqlx runs is logged at DEBUG under `sqlx::query`:
        // counting those lines counts the store queries exactly.
        let (daemon, _) = Daemon::start(
            &opts.daemon,
            dir.path(),
            &config,
            &[("RUST_LOG", "warn,sqlx::query=debug")],
            Duration::from_secs(120),
        )
        .await?;
        // Let start-up work (first claim, housekeeping's first tick) pass.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log_start = std::fs::metadata(&daemon.log)?.len();
        let cpu_start = cpu_seconds(&daemon.pid.to_string())?;
        let switches_start = context_switches(daemon.pid);
        let started = Instant::now();
        tokio::time::sleep(opts.idle_time).await;
        let cpu = cpu_seconds(&daemon.pid.to_string())? - cpu_start;
        let elapsed = started.elapsed().as_secs_f64();
        let switches = context_switches(daemon.pid).saturating_sub(switches_start);
        let log_end = std::fs::metadata(&daemon.log)?.len();
        let memory = daemon.memory()?;
        let log = daemon.log.clone();
        daemon.stop().await?;
        let (queries, kinds) = count_queries(&log, log_start, log_end)?;
        rows.add(
            p,
            "CPU of the idle daemon",
            "% of a core",
            Some(TARGET_IDLE),
            100.0 * cpu / elapsed,
        );
        rows.add(
            p,
            "store queries",
            "per minute",
            None,
            queries as f64 * 60.0 / elapsed,
        );
        rows.add(
            p,
            "context switches (all threads)",
            "per second",
            None,
            switches as f64 / elapsed,
        );
        rows.add(
            p,
            "RSS while idle",
            "MiB",
            None,
            memory.rss_kib as f64 / 1024.0,
        );
        if run == 1 {
            notes.push(format!(
                "idle: store queries in {elapsed:.0} s of run 1, by statement (sqlx::query DEBUG lines of the daemon's JSON log): {kinds:?}"
            ));
        }
        eprintln!(
            "   run {run}: CPU {:.3} % of a core, {queries} queries in {elapsed:.0} s, {:.1} switches/s",
            100.0 * cpu / elapsed,
            switches as f64 / elapsed
        );
    }
    sim.stop().await;
    Ok(())
}

/// Counts the `sqlx::query` events between two offsets of a JSON log.
fn count_queries(log: &Path, from: u64, to: u64) -> Result<(usize, BTreeMap<String, usize>)> {
    let bytes = std::fs::read(log)?;
    let from = usize::try_from(from).unwrap_or(0).min(bytes.len());
    let to = usize::try_from(to).unwrap_or(0).clamp(from, bytes.len());
    let mut kinds = BTreeMap::new();
    let mut total = 0;
    for line in bytes[from..to].split(|b| *b == b'\n') {
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(summary) = event.get("summary").and_then(|s| s.as_str()) {
            total += 1;
            *kinds.entry(summary.to_string()).or_insert(0) += 1;
        }
    }
    Ok((total, kinds))
}

// ---------------------------------------------------------------------------
// Phase 4: scale — start-up and RSS with a large store.

async fn scale_phase(opts: &Options, rows: &mut Rows, notes: &mut Vec<String>) -> Result<()> {
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
async fn scrape(url: &str) -> Result<String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| anyhow!("HTTP client: {}", crate::http::describe(&e)))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow!("GET {url}: {}", crate::http::describe(&e)))?;
    ensure!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response
        .text()
        .await
        .map_err(|e| anyhow!("GET {url}: {}", crate::http::describe(&e)))
}

/// Writes `total` jobs into a new store at `db` — `waiting` of them due in
/// an hour, the rest done — with one or two events each, in one transaction
/// of two `INSERT … SELECT` statements. The schema comes from the daemon's
/// own migrations.
async fn populate(db: &Path, total: u64, waiting: u64) -> Result<Duration> {
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

// ---------------------------------------------------------------------------
// Phase 5: one large download against curl.

async fn large_phase(opts: &Options, rows: &mut Rows, notes: &mut Vec<String>) -> Result<()> {
    let p = Phase::Large;
    notes.push(
        "large: the 1C simulator builds each file in memory (and keeps it), so this phase serves the file from a small streaming 1C plain-flow endpoint inside the bench (a 256 KiB block repeated); the daemon talks to it through its real 1C provider".into(),
    );
    let size = opts.large_size;
    let mib = size as f64 / 1_048_576.0;
    for run in 1..=opts.runs {
        let dir = temp_dir(opts, "large")?;
        let server = LargeServer::start(size).await?;
        let accounts = format!(
            "[accounts.bench-large]\nprovider = \"1c-fresh\"\nflow = \"plain\"\nbase_url = {}\nusername = \"api\"\npassword = \"bench\"\n",
            toml_str(&server.base_url())
        );
        let config = dir.path().join("docfetch.toml");
        std::fs::write(
            &config,
            daemon_toml(
                dir.path(),
                "poll_initial = \"10ms\"\npoll_max = \"100ms\"",
                // The request is dropped as a file: pick it up at once.
                "[inbox]\nscan_interval = \"50ms\"\nsettle = \"0s\"\n",
                &accounts,
                "",
            ),
        )?;
        let (daemon, _) = Daemon::start(
            &opts.daemon,
            dir.path(),
            &config,
            &[],
            Duration::from_secs(60),
        )
        .await?;
        let before = daemon.memory()?;
        let requests = dir.path().join("requests");
        let request = serde_json::json!({"account": "bench-large", "operation": "balance_sheet", "name": "large"});
        std::fs::write(
            requests.join("large.json.tmp"),
            serde_json::to_vec(&request)?,
        )?;
        std::fs::rename(requests.join("large.json.tmp"), requests.join("large.json"))?;
        let receipt = dir.path().join("output/large/job.json");
        let limit = Duration::from_secs(60) + Duration::from_secs_f64(size as f64 / 5e6);
        let deadline = Instant::now() + limit;
        let mut peak_sampled = before.rss_kib;
        while !receipt.exists() {
            if Instant::now() > deadline {
                bail!(
                    "the large download did not finish within {limit:?}; see {}",
                    daemon.log.display()
                );
            }
            peak_sampled = peak_sampled.max(daemon.memory()?.rss_kib);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = daemon.memory()?;
        daemon.stop().await?;
        let requested = server
            .requested()
            .context("the daemon never asked for the file")?;
        let finished = mtime_ms(&receipt)?;
        let file = dir.path().join("output/large/large.bin");
        let saved = std::fs::metadata(&file)?.len();
        ensure!(saved == size, "the daemon saved {saved} of {size} bytes");
        std::fs::remove_file(&file)?;
        let daemon_s = (finished - requested) / 1000.0;

        let curl_file = dir.path().join("curl.bin");
        let output = tokio::process::Command::new("curl")
            .args(["-sS", "--fail", "-o"])
            .arg(&curl_file)
            .args(["-w", "%{time_total} %{size_download}"])
            .arg(server.file_url())
            .output()
            .await
            .context("cannot run curl")?;
        ensure!(
            output.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout);
        let mut fields = text.split_whitespace();
        let curl_s: f64 = fields
            .next()
            .and_then(|t| t.parse().ok())
            .context("curl printed no time")?;
        let curl_bytes: f64 = fields.next().and_then(|t| t.parse().ok()).unwrap_or(0.0);
        ensure!(
            curl_bytes as u64 == size,
            "curl got {curl_bytes} of {size} bytes"
        );
        let synced = Instant::now();
        let status = tokio::process::Command::new("sync")
            .arg(&curl_file)
            .status()
            .await?;
        ensure!(status.success(), "sync {} failed", curl_file.display());
        let sync_s = synced.elapsed().as_secs_f64();
        std::fs::remove_file(&curl_file)?;
        server.stop().await;

        rows.add(
            p,
            "daemon: request → file durable (hash, fsync, rename, receipt)",
            "MiB/s",
            None,
            mib / daemon_s,
        );
        rows.add(
            p,
            "baseline: curl -o (no fsync)",
            "MiB/s",
            None,
            mib / curl_s,
        );
        rows.add(
            p,
            "baseline: curl -o, then sync FILE",
            "MiB/s",
            None,
            mib / (curl_s + sync_s),
        );
        rows.add(
            p,
            "ratio daemon / curl -o",
            "×",
            Some(TARGET_LARGE),
            curl_s / daemon_s,
        );
        rows.add(
            p,
            "ratio daemon / (curl -o + sync)",
            "×",
            None,
            (curl_s + sync_s) / daemon_s,
        );
        rows.add(
            p,
            "daemon peak RSS (VmHWM) before the download",
            "MiB",
            None,
            before.hwm_kib as f64 / 1024.0,
        );
        rows.add(
            p,
            "daemon peak RSS (VmHWM) after the download",
            "MiB",
            Some(TARGET_RSS),
            after.hwm_kib.max(peak_sampled) as f64 / 1024.0,
        );
        eprintln!(
            "   run {run}: daemon {:.0} MiB/s ({daemon_s:.2} s), curl {:.0} MiB/s, curl+sync {:.0} MiB/s; peak RSS {:.1} MiB",
            mib / daemon_s,
            mib / curl_s,
            mib / (curl_s + sync_s),
            after.hwm_kib as f64 / 1024.0
        );
    }
    Ok(())
}

/// A fake 1C:Fresh service (plain flow) whose one file is streamed, never
/// held in memory: the order and the status answer at once, and
/// `files/{id}` sends `size` bytes made of one repeated block.
struct LargeServer {
    addr: SocketAddr,
    state: Arc<LargeState>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct LargeState {
    size: u64,
    block: Bytes,
    /// When the last file request arrived (wall-clock ms).
    requested: Mutex<Option<f64>>,
}

impl LargeServer {
    async fn start(size: u64) -> Result<LargeServer> {
        let mut block = vec![0u8; 256 * 1024];
        fastrand::fill(&mut block);
        let state = Arc::new(LargeState {
            size,
            block: Bytes::from(block),
            requested: Mutex::new(None),
        });
        let base = format!("{}/storage", crate::sim::fresh::PREFIX);
        let app = Router::new()
            .route(&format!("{base}/async/{{id}}"), post(large_order))
            .route(&format!("{base}/jobs/{{id}}"), get(large_status))
            .route(&format!("{base}/files/{{id}}"), get(large_file))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        Ok(LargeServer {
            addr,
            state,
            stop,
            task,
        })
    }

    fn base_url(&self) -> String {
        format!("http://{}{}/storage", self.addr, crate::sim::fresh::PREFIX)
    }

    fn file_url(&self) -> String {
        format!("{}/files/large-file", self.base_url())
    }

    fn requested(&self) -> Option<f64> {
        *lock(&self.state.requested)
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn fresh_answer(status: StatusCode, storage: &str, id: &str) -> Response {
    let body = serde_json::json!({
        "general": {"response": 10200, "error": false, "message": ""},
        "result": {"storage": storage, "id": id}
    });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=UTF-8")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| status_only(StatusCode::INTERNAL_SERVER_ERROR))
}

async fn large_order() -> Response {
    fresh_answer(StatusCode::CREATED, "jobs", "large-job")
}

async fn large_status() -> Response {
    fresh_answer(StatusCode::OK, "files", "large-file")
}

async fn large_file(State(state): State<Arc<LargeState>>) -> Response {
    *lock(&state.requested) = Some(wall_ms());
    let size = state.size;
    let block = state.block.clone();
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let block = block.clone();
        async move {
            if sent >= size {
                return None;
            }
            let n = (size - sent).min(block.len() as u64);
            let chunk = block.slice(..usize::try_from(n).unwrap_or(block.len()));
            Some((Ok::<Bytes, std::io::Error>(chunk), sent + n))
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size.to_string())
        .header(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"large.bin\"",
        )
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status_only(StatusCode::INTERNAL_SERVER_ERROR))
}

// ---------------------------------------------------------------------------
// Phase 7: 1, 2 and 3 daemons sharing one PostgreSQL database.

/// The `pg` phase measures 1 up to this many instances.
const PG_MAX_INSTANCES: usize = 3;

/// The `pg` phase's databases are named `{PG_DB_PREFIX}{unix seconds}_{random}`.
const PG_DB_PREFIX: &str = "docfetch_bench_";

/// A bench database older than this was left by a run that was killed
/// before it could drop it; the next run drops it.
const PG_STALE_AFTER_SECS: u64 = 6 * 3600;

async fn pg_phase(
    opts: &Options,
    rows: &mut Rows,
    notes: &mut Vec<String>,
    prometheus: Option<&metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<()> {
    let p = Phase::Pg;
    let Some(server) = opts.postgres.as_deref() else {
        let why = "pg: skipped, no PostgreSQL server given (--postgres URL, or DOCFETCH_BENCH_POSTGRES_URL or DOCFETCH_TEST_POSTGRES_URL in the environment)";
        eprintln!("   {why}");
        notes.push(why.into());
        return Ok(());
    };
    let nf = opts.pg_jobs as f64;
    if !opts.smoke {
        settle_disk(notes, p).await;
    }
    for run in 1..=opts.runs {
        let mut rates = Vec::with_capacity(PG_MAX_INSTANCES);
        for instances in 1..=PG_MAX_INSTANCES {
            let started = Instant::now();
            let fleet = pg_fleet_run(opts, server, instances, prometheus)
                .await
                .with_context(|| format!("{instances} instance(s)"))?;
            let label = format!(
                "PostgreSQL, {instances} instance{}",
                if instances == 1 { "" } else { "s" }
            );
            let rate = fleet.done.jobs_per_s();
            let p50 = percentile(&fleet.done.latencies_ms, 50.0);
            rows.add(p, &format!("{label}: end to end"), "jobs/s", None, rate);
            if let Some(claims) = fleet.claims {
                rows.add(
                    p,
                    &format!("{label}: claims per job"),
                    "claims",
                    None,
                    claims / nf,
                );
            }
            rows.add(
                p,
                &format!("{label}: submit → done latency p50"),
                "ms",
                None,
                p50,
            );
            eprintln!(
                "   run {run}, {instances} instance(s): {} jobs in {:.2} s = {rate:.0} jobs/s; p50 {p50:.0} ms; {} claims per job; {:.1} s with the database's set-up",
                opts.pg_jobs,
                fleet.done.span_s,
                fleet
                    .claims
                    .map_or_else(|| "?".into(), |c| format!("{:.2}", c / nf)),
                started.elapsed().as_secs_f64()
            );
            rates.push(rate);
        }
        if let (Some(one), Some(most)) = (rates.first(), rates.last()) {
            rows.add(
                p,
                &format!("ratio {PG_MAX_INSTANCES} / 1 instances"),
                "×",
                None,
                most / one,
            );
        }
    }
    notes.push(format!(
        "pg: the instances, the simulator, the submitters and PostgreSQL itself all share this machine's CPUs, so the {PG_MAX_INSTANCES} / 1 ratio shows what more instances give here, not what more machines would"
    ));
    Ok(())
}

/// The account's concurrency in the `pg` phase. It is one limit for the
/// whole fleet, kept in the store; a step that finds every slot taken by
/// other instances is handed back for 2 to 4 s, so a limit below what the
/// largest fleet runs at once (`workers` each) would measure that wait
/// instead of the queue.
fn pg_account_concurrency(opts: &Options) -> usize {
    PG_MAX_INSTANCES * opts.concurrency.max(opts.workers)
}

/// What one fleet did with its jobs.
struct FleetRun {
    done: DoneJobs,
    /// `claim_due` calls of all instances together (`None` without metrics).
    claims: Option<f64>,
}

/// One measurement on a database of its own, which is dropped afterwards
/// whatever happened.
async fn pg_fleet_run(
    opts: &Options,
    server: &str,
    instances: usize,
    prometheus: Option<&metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<FleetRun> {
    let db = BenchDb::create(server).await?;
    let measured = pg_fleet_measure(opts, &db, instances, prometheus).await;
    let dropped = db.drop_database().await;
    if let (Err(_), Err(e)) = (&measured, &dropped) {
        // The measurement's error is the one returned; this one is still worth seeing.
        eprintln!("   {e:#}");
    }
    let measured = measured?;
    dropped?;
    Ok(measured)
}

/// `instances` daemons on `db` work off `opts.pg_jobs` jobs of the
/// throughput workload while they are submitted.
async fn pg_fleet_measure(
    opts: &Options,
    db: &BenchDb,
    instances: usize,
    prometheus: Option<&metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<FleetRun> {
    let n = opts.pg_jobs;
    let dir = temp_dir(opts, "pg")?;
    let (sim, settings) = fresh_workload(opts, dir.path(), pg_account_concurrency(opts)).await?;
    // The submitters' own handle. Opening it applies the migrations, before
    // any instance starts.
    let store = Store::open(&db.url_as("docfetch-bench"))
        .await
        .with_context(|| format!("cannot open the store in database {}", db.name))?;
    let mut fleet = Vec::with_capacity(instances);
    for index in 0..instances {
        let owner = crate::app::instance_id();
        let mut instance_settings = (*settings).clone();
        // Each instance connects as its owner id, which shows in pg_stat_activity.
        instance_settings.store.url = db.url_as(&owner);
        fleet.push(Instance::start(index, owner, Arc::new(instance_settings)).await?);
    }

    let before = prometheus.map(|h| parse_prometheus(&h.render()));
    let submitted = submit_fresh_jobs(opts, &store, &settings, n).await;
    let finished = match submitted {
        Ok(()) => wait_finished(&store, n, fresh_workload_limit(n)).await,
        Err(e) => Err(e),
    };
    // Every instance is stopped, whatever happened, before the database goes.
    let mut stopped = Ok(());
    for instance in fleet {
        let result = instance.stop().await;
        if stopped.is_ok() {
            stopped = result;
        }
    }
    let after = prometheus.map(|h| parse_prometheus(&h.render()));
    finished?;
    stopped?;

    let done = all_done(&store, n).await;
    let closed = store.close().await;
    sim.stop().await;
    keep_until_the_end(dir);
    let done = done?;
    closed.context("cannot close the submitters' store")?;
    let claims = before
        .zip(after)
        .map(|(before, after)| histogram_delta(&before, &after, STORE_OP_HISTOGRAM, CLAIM_LABEL).1);
    Ok(FleetRun { done, claims })
}

/// One daemon of the `pg` phase: a [`Scheduler`] with its own store handle
/// and owner id, running [`Scheduler::run`] on a tokio runtime of its own.
///
/// A runtime each is closer to separate processes than tasks on one shared
/// runtime: each instance has its own worker threads (as many as a daemon
/// gets, one per CPU), timers and I/O driver, so one instance's threads
/// never run another's steps, and its store's pool and listener live and
/// die with it. What the instances still share is this process: the
/// allocator, and the metrics recorder (which is how claims are counted
/// across the fleet).
struct Instance {
    /// `None` once stopped. An instance dropped without [`Instance::stop`]
    /// (on an error path) has its runtime shut down in the background:
    /// a runtime cannot be dropped, blocking, from async code.
    runtime: Option<tokio::runtime::Runtime>,
    store: Store,
    shutdown: CancellationToken,
    driver: tokio::task::JoinHandle<()>,
    owner: String,
}

impl Instance {
    async fn start(index: usize, owner: String, settings: Arc<Settings>) -> Result<Instance> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(format!("pg-instance-{index}"))
            .enable_all()
            .build()
            .context("cannot start an instance's async runtime")?;
        let shutdown = CancellationToken::new();
        // The store is opened and the driver started on the instance's own
        // runtime, where the pool's connections and the listener task live.
        let launch = {
            let (owner, shutdown) = (owner.clone(), shutdown.clone());
            async move {
                let store = Store::open(&settings.store.url)
                    .await
                    .context("cannot open the instance's store")?;
                let scheduler = bench_scheduler(&store, &settings, owner)?;
                let driver = tokio::spawn(scheduler.run(shutdown, None));
                Ok::<_, anyhow::Error>((store, driver))
            }
        };
        let launched = match runtime.spawn(launch).await {
            Ok(result) => result,
            Err(e) => Err(anyhow!("starting the instance failed: {e}")),
        };
        match launched {
            Ok((store, driver)) => Ok(Instance {
                runtime: Some(runtime),
                store,
                shutdown,
                driver,
                owner,
            }),
            Err(e) => {
                runtime.shutdown_background();
                Err(e.context(format!("instance {index} ({owner})")))
            }
        }
    }

    /// A clean stop, as on SIGTERM: no new claims, running steps finish,
    /// the store closes; then the runtime goes.
    async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        let limit = Duration::from_secs(30);
        let ended = tokio::time::timeout(limit, &mut self.driver).await;
        let closed = match &self.runtime {
            Some(runtime) => {
                let store = self.store.clone();
                runtime.spawn(async move { store.close().await }).await
            }
            None => Ok(Ok(())),
        };
        if let Some(runtime) = self.runtime.take() {
            tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(5)))
                .await
                .context("cannot shut an instance's runtime down")?;
        }
        let owner = &self.owner;
        ended
            .with_context(|| format!("instance {owner} did not stop within {limit:?}"))?
            .with_context(|| format!("instance {owner} failed"))?;
        closed
            .with_context(|| format!("closing the store of instance {owner} failed"))?
            .with_context(|| format!("cannot close the store of instance {owner}"))?;
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A database of the `pg` phase's own, created on the server named by
/// `--postgres` and dropped by [`BenchDb::drop_database`]. The name carries
/// its creation time, so that one left by a killed run is dropped by a
/// later one.
struct BenchDb {
    server: String,
    name: String,
    /// This database on the server, without TLS unless the server's URL
    /// asks for an `sslmode` itself: on loopback, TLS costs CPU that the
    /// instances would otherwise have.
    url: url::Url,
}

impl BenchDb {
    async fn create(server: &str) -> Result<BenchDb> {
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
                    crate::config::redact_store_url(server)
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
    fn url_as(&self, application: &str) -> String {
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("application_name", application);
        url.to_string()
    }

    /// Drops the database, and with it any connection still open to it.
    async fn drop_database(self) -> Result<()> {
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
async fn pg_admin(server: &str) -> Result<sqlx::PgConnection> {
    sqlx::PgConnection::connect(server).await.with_context(|| {
        format!(
            "cannot connect to PostgreSQL at {}",
            crate::config::redact_store_url(server)
        )
    })
}

/// Drops the bench databases that killed runs left behind. Best effort:
/// another run may be dropping them too.
async fn drop_stale_bench_databases(admin: &mut sqlx::PgConnection, now_secs: u64) {
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

// ---------------------------------------------------------------------------
// The daemon as a child process.

/// `docfetch run` started on a config, ready once it sent `READY=1` to the
/// notification socket (as under systemd). Killed if dropped while running.
struct Daemon {
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
}

/// Memory of a process from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
struct MemoryUse {
    rss_kib: u64,
    hwm_kib: u64,
}

impl Daemon {
    /// Starts the daemon and waits for `READY=1`; returns it with the time
    /// from spawning to readiness.
    async fn start(
        bin: &Path,
        dir: &Path,
        config: &Path,
        env: &[(&str, &str)],
        limit: Duration,
    ) -> Result<(Daemon, Duration)> {
        let socket_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket_path);
        let socket = tokio::net::UnixDatagram::bind(&socket_path)?;
        let log = dir.join(format!("daemon-{}.log", uuid::Uuid::new_v4().simple()));
        let log_file = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(bin);
        command
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("NOTIFY_SOCKET", &socket_path)
            .env_remove("RUST_LOG")
            .env_remove("DOCFETCH_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        for (key, _) in std::env::vars() {
            if key.starts_with("DOCFETCH__") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().copied());
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("the daemon has no pid")?;
        let mut buf = [0u8; 512];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            tokio::select! {
                received = socket.recv(&mut buf) => {
                    let n = received?;
                    if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l.trim() == "READY=1") {
                        break;
                    }
                }
                status = child.wait() => {
                    bail!("the daemon exited ({}) before it was ready; see {}", status?, log.display());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    bail!("the daemon was not ready within {limit:?}; see {}", log.display());
                }
            }
        }
        let ready = started.elapsed();
        Ok((Daemon { child, pid, log }, ready))
    }

    fn memory(&self) -> Result<MemoryUse> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(MemoryUse {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        })
    }

    /// SIGTERM, then waits for a clean exit; returns how long it took.
    async fn stop(mut self) -> Result<Duration> {
        let started = Instant::now();
        let status = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await?;
        ensure!(status.success(), "kill -TERM {} failed", self.pid);
        let exited = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("the daemon did not stop within 60 s of SIGTERM")??;
        ensure!(
            exited.success(),
            "the daemon exited with {exited}; see {}",
            self.log.display()
        );
        Ok(started.elapsed())
    }
}

// ---------------------------------------------------------------------------
// Helpers.

/// Waits for Ctrl-C or SIGTERM and names it. A signal that cannot be
/// listened for is never reported (the benchmark then runs to its end).
async fn interrupted() -> &'static str {
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = int => "SIGINT",
        () = term => "SIGTERM",
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Folders of many small files, deleted only when the whole benchmark ends.
///
/// On ext4 without a journal (this machine's disk), creating a file scans
/// past every inode of its block group deleted in the last 60 seconds (the
/// kernel's `recently_deleted`; 360 while the inode table is not yet
/// written back). Deleting one run's tens of thousands of files just before
/// the next run made that scan 40 % of the next run's CPU (perf), a cost of
/// the benchmark's own clean-up rather than of the daemon.
static SPENT: Mutex<Vec<tempfile::TempDir>> = Mutex::new(Vec::new());

/// Keeps `dir` until [`run`] ends.
fn keep_until_the_end(dir: tempfile::TempDir) {
    lock(&SPENT).push(dir);
}

/// How long ext4 without a journal avoids reusing a deleted inode once its
/// inode table is written back (`RECENTCY_MIN` in the kernel's
/// `fs/ext4/ialloc.c`: 60 s in kernels since 2020, 5 s before), plus a
/// second.
const RECENTLY_DELETED: Duration = Duration::from_secs(61);

/// Lets ext4's recently-deleted window of earlier deletions (the previous
/// phases', an earlier benchmark's clean-up, or the machine's) pass before
/// a measured run creates files: `sync` writes the inode tables back, after
/// which the window is [`RECENTLY_DELETED`]. Only partly: once the run's
/// new files dirty an inode table block again, the kernel stretches the
/// window of that block's deleted inodes to six minutes, so BENCHMARKS.md
/// asks for six quiet minutes before a run. A run started right after an
/// earlier benchmark ended measured 675-745 jobs/s, 940 after this pause,
/// and 1,100 after a quiet quarter of an hour.
async fn settle_disk(notes: &mut Vec<String>, phase: Phase) {
    let synced = tokio::process::Command::new("sync").status().await;
    if !synced.is_ok_and(|s| s.success()) {
        notes.push(format!("{}: `sync` failed before the run", phase.name()));
    }
    tokio::time::sleep(RECENTLY_DELETED).await;
}

fn temp_dir(opts: &Options, what: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("docfetch-bench-{what}-"))
        .tempdir_in(&opts.dir)
        .with_context(|| format!("cannot create a folder in {}", opts.dir.display()))
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Closes the store's writer so the file is free for another process.
async fn close_store(store: &Store) {
    if let Store::Sqlite(s) = store {
        s.pool().close().await;
    }
}

/// A TOML basic string.
fn toml_str(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// A daemon config rooted in `dir`, its API on `api` (`""`: none), warnings only; the
/// drop directory keeps its defaults unless `extra` sets `[inbox]`.
fn daemon_toml(dir: &Path, scheduler: &str, extra: &str, accounts: &str, api: &str) -> String {
    let at = |name: &str| toml_str(&dir.join(name).display().to_string());
    let log = if extra.contains("[log]") {
        ""
    } else {
        "[log]\nlevel = \"warn\"\n"
    };
    format!(
        "[store]\nurl = {}\n[paths]\nrequests = {}\noutput = {}\nattachments = {}\nschedules = {}\n[scheduler]\n{scheduler}\n{log}[api]\nlisten = {}\n{extra}\n{accounts}",
        toml_str(&sqlite_url(&dir.join("docfetch.db"))),
        at("requests"),
        at("output"),
        at("attachments"),
        at("schedules.d"),
        toml_str(api),
    )
}

/// Wall-clock milliseconds since the Unix epoch, with sub-millisecond precision.
fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn mtime_ms(path: &Path) -> Result<f64> {
    let modified = std::fs::metadata(path)?.modified()?;
    Ok(modified.duration_since(UNIX_EPOCH)?.as_secs_f64() * 1000.0)
}

/// User + system CPU seconds of `/proc/{pid}` (`self` or a pid), all threads.
fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unreadable /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .context("unreadable /proc stat")
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name;
    // USER_HZ is 100 on every Linux architecture docfetch runs on.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Voluntary and involuntary context switches summed over a process's threads.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `key → value` of every sample line of a Prometheus text rendering.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sample `{name}{suffix}{…label…}`, or 0.
fn prometheus_value(samples: &HashMap<String, f64>, name: &str, suffix: &str, label: &str) -> f64 {
    let prefix = format!("{name}{suffix}");
    samples
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(&prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
                && k.contains(label)
        })
        .map(|(_, v)| v)
        .sum()
}

/// The growth of histogram `name` (samples matching `label`) from `before`
/// to `after`: `(sum, count)`.
fn histogram_delta(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    name: &str,
    label: &str,
) -> (f64, f64) {
    let grown = |suffix: &str| {
        prometheus_value(after, name, suffix, label) - prometheus_value(before, name, suffix, label)
    };
    (grown("_sum"), grown("_count"))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn human_count(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// A number as a table shows it: three significant digits, no exponent.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

impl Machine {
    fn describe(dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "?".into());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| format!("Linux {}", k.trim()))
            .unwrap_or_else(|_| "?".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_mib,
            kernel,
            disk: describe_disk(dir),
            build: if cfg!(debug_assertions) {
                "debug".into()
            } else {
                "release".into()
            },
        }
    }
}

/// `SOURCE FSTYPE (rotational|non-rotational)` of the file system holding `dir`.
fn describe_disk(dir: &Path) -> String {
    let Ok(output) = std::process::Command::new("findmnt")
        .args(["-n", "-o", "SOURCE,FSTYPE", "-T"])
        .arg(dir)
        .output()
    else {
        return "?".into();
    };
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let device = text
        .split_whitespace()
        .next()
        .and_then(|s| s.strip_prefix("/dev/"))
        .unwrap_or("");
    let rotational = std::fs::read_to_string(format!("/sys/block/{device}/queue/rotational"))
        .map(|r| {
            if r.trim() == "1" {
                ", rotational"
            } else {
                ", non-rotational"
            }
        })
        .unwrap_or("");
    format!("{text}{rotational}")
}

impl Report {
    /// The report as Markdown: the machine, one table, the settings, the
    /// load averages and notes.
    pub fn table(&self) -> String {
        let m = &self.machine;
        let mut out = format!(
            "docfetch-bench ({} build, {} run{}{}; median [min – max])\n\nmachine: {} × {}, {} MiB RAM, {}; disk {}\n\n",
            m.build,
            self.runs,
            if self.runs == 1 { "" } else { "s" },
            if self.smoke { ", SMOKE sizes" } else { "" },
            m.cpus,
            m.cpu_model,
            m.memory_mib,
            m.kernel,
            m.disk
        );
        out.push_str(
            "| phase | measurement | median | min | max | target |\n|---|---|---:|---:|---:|---|\n",
        );
        for row in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} {} | {} | {} | {} |\n",
                row.phase,
                row.metric,
                fmt_num(row.median),
                row.unit,
                fmt_num(row.min),
                fmt_num(row.max),
                row.target.as_deref().unwrap_or("")
            ));
        }
        out.push_str("\nsettings:\n");
        for (name, value) in &self.settings {
            out.push_str(&format!("- {name}: {value}\n"));
        }
        out.push_str("\nload averages (1, 5, 15 min) when each phase started:");
        for (phase, load) in &self.load {
            out.push_str(&format!(" {phase} {load};"));
        }
        out.push('\n');
        if !self.notes.is_empty() {
            out.push_str("\nnotes:\n");
            for note in &self.notes {
                out.push_str(&format!("- {note}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
        assert_eq!(median(&[1.0, 2.0, 10.0]), 2.0);
        assert_eq!(median(&[1.0, 3.0]), 2.0);
    }

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        // The bench reads its own /proc entry; the fields must parse.
        assert!(cpu_seconds("self").is_ok());
    }

    #[test]
    fn prometheus_samples_are_matched_by_name_suffix_and_label() {
        let text = "# TYPE x histogram\nx_sum{op=\"claim\"} 1.5\nx_count{op=\"claim\"} 3\nx_sum{op=\"finish\"} 9\nxy_sum{op=\"claim\"} 100\n";
        let samples = parse_prometheus(text);
        assert_eq!(prometheus_value(&samples, "x", "_sum", "op=\"claim\""), 1.5);
        assert_eq!(
            prometheus_value(&samples, "x", "_count", "op=\"claim\""),
            3.0
        );
        assert_eq!(prometheus_value(&samples, "x", "_sum", "op=\"nope\""), 0.0);
    }

    #[test]
    fn diadoc_lateness_is_measured_from_the_last_retry_after() {
        let hit = |start: f64, end: f64, retry: Option<f64>| Hit {
            start_ms: start,
            end_ms: end,
            method: "GET".into(),
            path: "/diadoc/GenerateDocumentProtocol?boxId=b&messageId=m&documentId=d".into(),
            retry_after: retry,
            body: None,
        };
        let hits = vec![
            hit(0.0, 1.0, Some(1.0)),
            hit(1005.0, 1006.0, Some(1.0)),
            hit(2026.0, 2027.0, None),
        ];
        let a = analyse_diadoc(&hits).unwrap();
        assert_eq!(a.documents, 1);
        assert_eq!(a.requests, 3);
        assert_eq!(a.early, 0);
        assert_eq!(a.late, vec![20.0]);
    }
}
