//! `docfetch-bench` peer: underway 0.2 on PostgreSQL, on the server's
//! default durability (`fsync` and `synchronous_commit` on, which the peer
//! reads back and reports).
//!
//! Uses underway's task layer (a `Task`, its `Queue` and a `Worker`): the
//! cheapest way through underway, and the one with a bulk enqueue
//! (`enqueue_multi`, one transaction). `--workers` is the worker's
//! concurrency limit, and `--poll-ms` its polling period: underway starts
//! one more processing loop per poll (or per insert notification), so the
//! period sets how fast it reaches `--workers` loops on a backlog.
//! Times the worker until the store shows every task `succeeded`, and
//! prints one JSON line (see `peer-common`).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use jiff::ToSpan;
use peer_common::{Args, Outcome, fail};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Postgres, Transaction};
use underway::{Queue, Task, Worker};

const PEER: &str = "underway";
const QUEUE: &str = "noop";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The job: nothing at all, so the figure is the queue's own cost.
struct Noop;

impl Task for Noop {
    type Input = u64;
    type Output = ();

    async fn execute(
        &self,
        _tx: Transaction<'_, Postgres>,
        _input: u64,
    ) -> underway::task::Result<()> {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let args = match Args::from_env(&["poll-ms", "connections"]) {
        Ok(args) => args,
        Err(e) => fail(PEER, &e),
    };
    match run(&args).await {
        Ok(outcome) => println!("{}", outcome.json_line()),
        Err(e) => fail(PEER, e.as_ref()),
    }
}

async fn run(args: &Args) -> Result<Outcome, Error> {
    let poll_ms = args.number("poll-ms", 10)?;
    // Each running task holds a connection for its transaction and another
    // for its dequeue, plus the worker's two listeners.
    let connections = args.number("connections", 2 * args.workers + 4)?;
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(connections).unwrap_or(u32::MAX))
        .connect(&args.store)
        .await?;
    underway::run_migrations(&pool).await?;
    let durability = server_durability(&pool).await?;

    let queue = Queue::<Noop>::builder()
        .name(QUEUE)
        .pool(pool.clone())
        .build()
        .await?;
    let inputs: Vec<u64> = (0..args.jobs as u64).collect();
    let started = Instant::now();
    queue.enqueue_multi(&pool, &Noop, &inputs).await?;
    let enqueue = started.elapsed();

    let started = Instant::now();
    let mut worker = Worker::new(queue.into(), Noop);
    worker.set_concurrency_limit(args.workers);
    let period = i64::try_from(poll_ms).unwrap_or(i64::MAX).milliseconds();
    let running = tokio::spawn(async move { worker.run_every(period).await });
    let waited = wait_all_done(&pool, args.jobs, &running).await;
    let process = started.elapsed();
    running.abort();
    waited?;

    Ok(Outcome {
        peer: PEER,
        queue: "underway 0.2.0 (Task + Queue + Worker)",
        jobs: args.jobs,
        enqueue,
        process,
        settings: json!({"workers": args.workers, "poll_ms": poll_ms, "connections": connections}),
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

/// Polls the store until `n` tasks succeeded; a worker that stops early is an error.
async fn wait_all_done(
    pool: &sqlx::PgPool,
    n: usize,
    running: &tokio::task::JoinHandle<Result<(), underway::worker::Error>>,
) -> Result<(), Error> {
    let deadline = Instant::now()
        + Duration::from_secs(60)
        + Duration::from_millis(10) * u32::try_from(n).unwrap_or(u32::MAX);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM underway.task WHERE task_queue_name = $1 AND state = 'succeeded'",
        )
        .bind(QUEUE)
        .fetch_one(pool)
        .await?;
        if usize::try_from(done).unwrap_or(0) >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("only {done} of {n} tasks succeeded in time").into());
        }
        if running.is_finished() {
            return Err("the worker stopped early".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
