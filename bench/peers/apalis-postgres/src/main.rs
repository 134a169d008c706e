//! `docfetch-bench` peer: apalis 1.0 with its PostgreSQL backend, on the
//! server's default durability (`fsync` and `synchronous_commit` on, which
//! the peer reads back and reports).
//!
//! Enqueues `--jobs` no-op jobs in one statement, then starts `--workers`
//! apalis workers (each its own `WorkerBuilder` over a clone of the backend,
//! fetching `--batch` tasks at a time) and times them until the store shows
//! every job `Done`. Prints one JSON line (see `peer-common`).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, TaskBuilder, WorkerBuilder};
use apalis_postgres::{Config, PostgresStorage};
use peer_common::{Args, Outcome, fail};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

const PEER: &str = "apalis-postgres";
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
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(connections).unwrap_or(u32::MAX))
        .connect(&args.store)
        .await?;
    PostgresStorage::setup(&pool).await?;
    let durability = server_durability(&pool).await?;

    let config = Config::default().queue(QUEUE).batch_size(batch);
    let tasks: Vec<_> = (0..args.jobs as u64)
        .map(|n| TaskBuilder::new(serde_json::to_vec(&n).unwrap_or_default()).build())
        .collect();
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    apalis_postgres::queries::push_tasks(&mut *conn, QUEUE, tasks).await?;
    drop(conn);
    let enqueue = started.elapsed();

    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..args.workers {
        let backend = PostgresStorage::<u64>::new(&pool).with_config(config.clone());
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
        queue: "apalis 1.0.0 + apalis-postgres 1.0.0",
        jobs: args.jobs,
        enqueue,
        process,
        settings: json!({"workers": args.workers, "batch": batch, "connections": connections}),
        durability,
    })
}

/// `fsync` and `synchronous_commit` as the server has them; anything but
/// `on` for both would measure a less durable queue, so it is refused.
async fn server_durability(pool: &sqlx::PgPool) -> Result<serde_json::Value, Error> {
    let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(pool).await?;
    let commit: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(pool)
        .await?;
    if fsync != "on" || commit != "on" {
        return Err(format!(
            "the server is not at its default durability (fsync={fsync}, synchronous_commit={commit})"
        )
        .into());
    }
    Ok(json!({"fsync": fsync, "synchronous_commit": commit}))
}

/// Polls the store until `n` jobs are `Done`; a worker that stops early is an error.
async fn wait_all_done(
    pool: &sqlx::PgPool,
    n: usize,
    workers: &mut tokio::task::JoinSet<Result<(), apalis::prelude::WorkerError>>,
) -> Result<(), Error> {
    let deadline = Instant::now()
        + Duration::from_secs(60)
        + Duration::from_millis(10) * u32::try_from(n).unwrap_or(u32::MAX);
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM apalis.jobs WHERE status = 'Done'")
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
