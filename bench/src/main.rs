//! `docfetch-bench`: the benchmark of docfetch, a crate of its own so that
//! the shipped daemon does not carry it. It runs the real daemon code paths
//! — store, scheduler, HTTP, downloads with fsync — against the built-in
//! simulator over loopback, in nine phases, and prints one table (or
//! JSON); progress goes to stderr.
//!
//! | phase | module | what runs | what is measured |
//! |---|---|---|---|
//! | `store` | [`store`] | the store alone, and raw sqlx/SQLite and `fdatasync` baselines | insert, claim and complete rates |
//! | `throughput` | [`throughput`] | the scheduler's driver in this process, 1C plain flow | jobs/s from submit to done, latency; ÷ the disk's `fdatasync`/s (the headline) |
//! | `polling` | [`polling`] | the driver, OFD and Diadoc behind a recording [`proxy`] | requests per job against the minimum, lateness |
//! | `idle` | [`idle`] | `docfetch run` as a child ([`daemon`]), 100k jobs due in an hour | CPU time, store queries, wake-ups |
//! | `scale` | [`scale`] | `docfetch run` as a child on a 1M-job store (and a small one) | start-up to `READY=1`, RSS |
//! | `dashboard` | [`dashboard`] | `docfetch run` as a child: its pages on a 1M-job store; the throughput workload with and without a live viewer | page p50/p99, jobs/s lost to a viewer, RSS |
//! | `large` | [`large`] | `docfetch run` as a child, a streamed 1 GiB file | throughput against `curl -o`, peak RSS |
//! | `pg` | [`pg`] | 1, 2 and 3 schedulers sharing one PostgreSQL database ([`pgdb`]) | jobs/s, claims per job, latency |
//! | `peers` | [`peers`] | apalis (SQLite, PostgreSQL) and underway as child processes | their no-op rate, docfetch's real work against it |
//!
//! Every phase runs `--runs` times; the table ([`report`]) shows the
//! median with the minimum and maximum, and every ratio is taken within
//! one run against a baseline measured in that same run — above all the
//! disk's own rate ([`disk`]), because this is a shared VM whose disk
//! speed swings 2 × from day to day. This is a measuring tool whose errors
//! are only ever printed, so it uses `anyhow` with context throughout
//! instead of a typed error.
#![forbid(unsafe_code)]

mod daemon;
mod dashboard;
mod disk;
mod idle;
mod large;
mod options;
mod peers;
mod pg;
mod pgdb;
mod polling;
mod proxy;
mod report;
mod run;
mod scale;
mod store;
mod throughput;
mod util;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use docfetch::config::Environment;

use crate::options::{Options, PeerSource, Phase};

/// Measures docfetch end to end on this machine: store, throughput,
/// polling efficiency, idle cost, scale, a large download, several
/// daemons sharing PostgreSQL, and the peer queues apalis and underway.
#[derive(Debug, Parser)]
#[command(name = "docfetch-bench", version)]
struct Cli {
    /// Tiny sizes and durations (well under a minute), for CI.
    #[arg(long)]
    smoke: bool,
    /// Runs of each phase; the table shows the median, min and max.
    #[arg(long)]
    runs: Option<usize>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Phases to run (default: all), comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Phase>,
    /// Folder for the temporary stores and files (the disk being measured).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The `docfetch` binary for the child-process phases (default: next to this one).
    #[arg(long)]
    daemon: Option<PathBuf>,

    /// Throughput: jobs (default 10000; smoke 200).
    #[arg(long)]
    jobs: Option<usize>,
    /// scheduler.workers of the in-process phases.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Throughput: concurrency of the 1C account (the provider's default is 8).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Throughput: tasks submitting at once.
    #[arg(long, default_value_t = 4)]
    submitters: usize,
    /// Throughput: scheduler.poll_initial.
    #[arg(long, default_value = "10ms", value_parser = duration)]
    poll_initial: Duration,
    /// Throughput: scheduler.poll_max.
    #[arg(long, default_value = "50ms", value_parser = duration)]
    poll_max: Duration,
    /// Throughput: size of each job's file.
    #[arg(long, default_value = "4KiB", value_parser = size)]
    file_size: u64,
    /// "Not ready" answers per job (1C throughput jobs, Diadoc polling jobs).
    #[arg(long, default_value_t = 2)]
    pending: u32,

    /// Polling: jobs, half OFD, half Diadoc (default 200; smoke 20).
    #[arg(long)]
    poll_jobs: Option<usize>,
    /// Polling: Diadoc's Retry-After, seconds.
    #[arg(long, default_value_t = 1)]
    retry_after: u32,
    /// Polling: OFD reports are ready this many ms after the order.
    #[arg(long, default_value_t = 1500)]
    eta_ms: u64,

    /// Idle: waiting jobs (default 100000; smoke 200).
    #[arg(long)]
    idle_jobs: Option<u64>,
    /// Idle: seconds measured (default 60; smoke 2).
    #[arg(long)]
    idle_seconds: Option<f64>,

    /// Scale: jobs in the store (default 1000000; smoke 2000).
    #[arg(long)]
    scale_jobs: Option<u64>,
    /// Scale: of which waiting (default 100000; smoke 200).
    #[arg(long)]
    scale_waiting: Option<u64>,
    /// Scale: the small store compared against (default 1000; smoke 200).
    #[arg(long)]
    scale_small: Option<u64>,
    /// Scale: seconds after READY before RSS is read again (default 5; smoke 0.5).
    #[arg(long)]
    scale_settle: Option<f64>,

    /// Large: file size (default 1GiB; smoke 8MiB).
    #[arg(long, value_parser = size)]
    large_size: Option<u64>,

    /// Store: operations of each kind (default 5000; smoke 200).
    #[arg(long)]
    store_ops: Option<usize>,

    /// PostgreSQL: a server URL whose role may CREATE DATABASE (default:
    /// $DOCFETCH_BENCH_POSTGRES_URL, then $DOCFETCH_TEST_POSTGRES_URL; none:
    /// the phase is skipped).
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// PostgreSQL: jobs for each number of instances (default 3000; smoke 100).
    #[arg(long)]
    pg_jobs: Option<usize>,

    /// Peers: no-op jobs each peer queue processes (default 10000; smoke 200).
    #[arg(long)]
    peer_jobs: Option<usize>,
    /// Peers: a peer's program instead of building it, as NAME=PATH
    /// (apalis-sqlite, apalis-postgres, underway); repeatable.
    #[arg(long = "peer", value_name = "NAME=PATH", value_parser = peer_path)]
    peer: Vec<(String, PathBuf)>,
    /// Peers: the peers' cargo projects (default: bench/peers of the source
    /// tree this program was built from).
    #[arg(long, value_name = "DIR")]
    peers_dir: Option<PathBuf>,
    /// Peers: never build them; run only those already built or given.
    /// (--smoke never builds them either.)
    #[arg(long)]
    no_peer_build: bool,
}

/// Where `--postgres` comes from when it is not given, in this order.
const POSTGRES_URL_VARIABLES: [&str; 2] =
    ["DOCFETCH_BENCH_POSTGRES_URL", "DOCFETCH_TEST_POSTGRES_URL"];

fn duration(text: &str) -> Result<Duration, String> {
    docfetch::units::parse_duration(text)
}

fn size(text: &str) -> Result<u64, String> {
    docfetch::units::parse_size(text)
}

fn peer_path(text: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, not {text:?}"))?;
    if !peers::PEERS.iter().any(|p| p.name == name) {
        let names: Vec<&str> = peers::PEERS.iter().map(|p| p.name).collect();
        return Err(format!(
            "no peer is called {name:?}; the peers are {}",
            names.join(", ")
        ));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

/// Where the peers' projects and their build live: beside this crate in
/// the source tree it was built from (`bench/peers/`, `target/peers/`).
fn peer_source(
    cli_dir: Option<PathBuf>,
    smoke: bool,
    no_build: bool,
    given: Vec<(String, PathBuf)>,
) -> PeerSource {
    let bench = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let projects = cli_dir.unwrap_or_else(|| bench.join("peers"));
    let target = bench
        .parent()
        .map_or_else(|| bench.join("target"), |root| root.join("target"))
        .join("peers");
    PeerSource {
        projects,
        target,
        // CI's smoke run must not spend minutes compiling the peers.
        build: !smoke && !no_build,
        given,
    }
}

impl Cli {
    fn options(self, env: &Environment) -> Result<Options, String> {
        let smoke = self.smoke;
        let pick = |full: u64, small: u64| if smoke { small } else { full };
        let daemon = match self.daemon {
            Some(path) => path,
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find this program's path: {e}"))?
                .with_file_name("docfetch"),
        };
        let seconds = |value: Option<f64>, full: f64, small: f64| -> Result<Duration, String> {
            let s = value.unwrap_or(if smoke { small } else { full });
            Duration::try_from_secs_f64(s).map_err(|e| format!("bad number of seconds {s}: {e}"))
        };
        let runs = self.runs.unwrap_or(if smoke { 1 } else { 3 });
        if runs == 0 {
            return Err("--runs must be at least 1".into());
        }
        let scale_jobs = self.scale_jobs.unwrap_or(pick(1_000_000, 2_000));
        let scale_waiting = self.scale_waiting.unwrap_or(pick(100_000, 200));
        if scale_waiting > scale_jobs {
            return Err("--scale-waiting cannot exceed --scale-jobs".into());
        }
        Ok(Options {
            runs,
            smoke,
            phases: if self.only.is_empty() {
                Phase::ALL.to_vec()
            } else {
                Phase::ALL
                    .into_iter()
                    .filter(|p| self.only.contains(p))
                    .collect()
            },
            dir: self.dir.unwrap_or_else(std::env::temp_dir),
            daemon,
            jobs: self.jobs.unwrap_or(if smoke { 200 } else { 10_000 }).max(1),
            workers: self.workers.max(1),
            concurrency: self.concurrency.max(1),
            submitters: self.submitters.max(1),
            poll_initial: self.poll_initial,
            poll_max: self.poll_max.max(self.poll_initial),
            file_size: usize::try_from(self.file_size).map_err(|e| e.to_string())?,
            pending: self.pending,
            poll_jobs: self
                .poll_jobs
                .unwrap_or(if smoke { 20 } else { 200 })
                .max(2),
            retry_after_secs: self.retry_after.max(1),
            eta_ms: self.eta_ms,
            idle_jobs: self.idle_jobs.unwrap_or(pick(100_000, 200)).max(1),
            idle_time: seconds(self.idle_seconds, 60.0, 2.0)?,
            scale_jobs: scale_jobs.max(1),
            scale_waiting,
            scale_small: self.scale_small.unwrap_or(pick(1_000, 200)).max(1),
            scale_settle: seconds(self.scale_settle, 5.0, 0.5)?,
            large_size: self.large_size.unwrap_or(pick(1 << 30, 8 << 20)).max(1),
            store_ops: self
                .store_ops
                .unwrap_or(if smoke { 200 } else { 5_000 })
                .max(1),
            postgres: self
                .postgres
                .or_else(|| {
                    POSTGRES_URL_VARIABLES
                        .iter()
                        .find_map(|name| env.get(name).filter(|v| !v.trim().is_empty()))
                        .map(str::to_string)
                })
                .filter(|url| !url.trim().is_empty()),
            pg_jobs: self
                .pg_jobs
                .unwrap_or(if smoke { 100 } else { 3_000 })
                .max(1),
            peer_jobs: self
                .peer_jobs
                .unwrap_or(if smoke { 200 } else { 10_000 })
                .max(1),
            peers: peer_source(self.peers_dir, smoke, self.no_peer_build, self.peer),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let json_out = cli.json_out.clone();
    let env = Environment::from_process();
    let options = match cli.options(&env) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("docfetch-bench: {e}");
            return ExitCode::from(2);
        }
    };
    // Daemon warnings and errors show only when asked for.
    if env.get("RUST_LOG").is_some() {
        let log = docfetch::config::LogSettings {
            level: "warn".into(),
            format: docfetch::config::LogFormat::Text,
        };
        docfetch::telemetry::init(&log, &env);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("docfetch-bench: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run::run(&options)) {
        Ok(report) => {
            let encoded = match serde_json::to_string_pretty(&report) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("docfetch-bench: cannot encode the report: {e}");
                    return ExitCode::from(1);
                }
            };
            if let Some(path) = json_out
                && let Err(e) = std::fs::write(&path, format!("{encoded}\n"))
            {
                eprintln!("docfetch-bench: cannot write {}: {e}", path.display());
                return ExitCode::from(1);
            }
            if json {
                println!("{encoded}");
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("docfetch-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
