//! What the benchmark runs: the phases, and every size and duration
//! resolved from the command line (see `main.rs`).

use std::path::PathBuf;
use std::time::Duration;

/// The nine phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Phase {
    Store,
    Throughput,
    Polling,
    Idle,
    Scale,
    Dashboard,
    Large,
    Pg,
    Peers,
}

impl Phase {
    pub(crate) const ALL: [Phase; 9] = [
        Phase::Store,
        Phase::Throughput,
        Phase::Polling,
        Phase::Idle,
        Phase::Scale,
        Phase::Dashboard,
        Phase::Large,
        Phase::Pg,
        Phase::Peers,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Store => "store",
            Phase::Throughput => "throughput",
            Phase::Polling => "polling",
            Phase::Idle => "idle",
            Phase::Scale => "scale",
            Phase::Dashboard => "dashboard",
            Phase::Large => "large",
            Phase::Pg => "pg",
            Phase::Peers => "peers",
        }
    }

    /// Phases that start `docfetch run` as a child process.
    pub(crate) fn needs_daemon_binary(self) -> bool {
        matches!(
            self,
            Phase::Idle | Phase::Scale | Phase::Dashboard | Phase::Large
        )
    }
}

/// What to run, with every size and duration resolved.
#[derive(Debug, Clone)]
pub(crate) struct Options {
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
    /// Peers: no-op jobs each peer queue enqueues and then processes.
    pub peer_jobs: usize,
    /// Peers: where each peer program comes from.
    pub peers: PeerSource,
}

/// Where the peer queues' programs come from.
#[derive(Debug, Clone)]
pub(crate) struct PeerSource {
    /// The peers' cargo projects (`bench/peers/` of the source tree).
    pub projects: PathBuf,
    /// Their shared target folder (`target/peers/` of the source tree).
    pub target: PathBuf,
    /// Build the missing or outdated ones with `cargo build --release`
    /// (otherwise only peers already built, or given as paths, run).
    pub build: bool,
    /// Programs given on the command line, by peer name.
    pub given: Vec<(String, PathBuf)>,
}
