//! `docfetch-bench` peer: apalis 1.0 with its SQLite backend, on a store as
//! durable as docfetch's (WAL, `synchronous=FULL` on every connection).
//!
//! Enqueues `--jobs` no-op jobs in one transaction, then starts `--workers`
//! apalis workers (each its own `WorkerBuilder` over a clone of the backend,
//! fetching `--batch` tasks at a time) and times them until the store shows
//! every job `Done`. Prints one JSON line (see `peer-common`).
#![forbid(unsafe_code)]

use std::str::FromStr;
use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, TaskBuilder, WorkerBuilder};
use apalis_sqlite::{Config, SqliteStorage};
use peer_common::{Args, Outcome, fail};
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

const PEER: &str = "apalis-sqlite";
const QUEUE: &str = "noop";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The job: nothing at all, so the figure is the queue's own cost.
async fn noop(_n: u64) -> Result<(), BoxDynError> {
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = match Args::from_env(&["batch", "connections"]) {
        Ok(args) => args,
        Err(e) => fail(PEER, &e),
    };
    match run(&args).await {
        Ok(outcome) => println!("{}", outcome.json_line()),
        Err(e) => fail(PEER, e.as_ref()),
    }
}

async fn run(args: &Args) -> Result<Outcome, Error> {
    let batch = args.number("batch", 10)?;
    let connections = args.number("connections", 10)?;
    let options = SqliteConnectOptions::from_str(&args.store)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30));

    // apalis's `setup` switches the connection it runs on to
    // `synchronous=OFF`; it runs on a connection of its own that is closed
    // before the measured pool opens, so every measured commit is FULL.
    let setup = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    SqliteStorage::setup(&setup).await?;
    setup.close().await;

    let pool = SqlitePoolOptions::new()
        .max_connections(u32::try_from(connections).unwrap_or(u32::MAX))
        .connect_with(options)
        .await?;
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&pool)
        .await?;
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await?;
    if synchronous != 2 || !journal.eq_ignore_ascii_case("wal") {
        return Err(format!(
            "the store is not WAL with synchronous=FULL (journal_mode={journal}, synchronous={synchronous})"
        )
        .into());
    }

    let config = Config::default().queue(QUEUE).batch_size(batch);
    let tasks: Vec<_> = (0..args.jobs as u64)
        .map(|n| TaskBuilder::new(serde_json::to_vec(&n).unwrap_or_default()).build())
        .collect();
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    apalis_sqlite::queries::push_tasks(&mut *tx, QUEUE, &tasks).await?;
    tx.commit().await?;
    let enqueue = started.elapsed();

    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..args.workers {
        let backend = SqliteStorage::<u64>::new(&pool).with_config(config.clone());
        let worker = WorkerBuilder::new(format!("peer-{i}"))
            .backend(backend)
            .build(noop);
        workers.spawn(async move { worker.run().await });
    }
    wait_all_done(&pool, args.jobs, &mut workers).await?;
    let process = started.elapsed();
    workers.abort_all();

    Ok(Outcome {
        peer: PEER,
        queue: "apalis 1.0.0 + apalis-sqlite 1.0.0",
        jobs: args.jobs,
        enqueue,
        process,
        settings: json!({"workers": args.workers, "batch": batch, "connections": connections}),
        durability: json!({"journal_mode": journal, "synchronous": "FULL"}),
    })
}

/// Polls the store until `n` jobs are `Done`; a worker that stops early is an error.
async fn wait_all_done(
    pool: &sqlx::SqlitePool,
    n: usize,
    workers: &mut tokio::task::JoinSet<Result<(), apalis::prelude::WorkerError>>,
) -> Result<(), Error> {
    let deadline = Instant::now()
        + Duration::from_secs(60)
        + Duration::from_millis(10) * u32::try_from(n).unwrap_or(u32::MAX);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM Jobs WHERE status = 'Done'")
            .fetch_one(pool)
            .await?;
        if usize::try_from(done).unwrap_or(0) >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("only {done} of {n} jobs were done in time").into());
        }
        if let Some(ended) = workers.try_join_next() {
            return Err(format!("a worker stopped early: {ended:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
