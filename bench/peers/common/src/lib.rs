//! What every peer queue of `docfetch-bench` shares: one small command line
//! (`--store URL --jobs N --workers W` plus the peer's own tuning flags) and
//! the one JSON line a peer prints when it is done.
//!
//! A peer is a separate program with its own `Cargo.lock` because the
//! queues it measures cannot link beside docfetch's SQLite. The benchmark
//! starts it as a child process and reads the last line of its stdout.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

/// The command line of a peer, checked against the flags it accepts.
#[derive(Debug, Clone)]
pub struct Args {
    /// `sqlite://PATH` or `postgres://…/DATABASE`: a fresh store of this run.
    pub store: String,
    /// No-op jobs enqueued, then processed.
    pub jobs: usize,
    /// Workers (or the worker's concurrency, for a queue with one worker).
    pub workers: usize,
    tuning: BTreeMap<String, String>,
}

/// A bad command line, said in one sentence.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

impl Args {
    /// Reads `--store`, `--jobs`, `--workers` and the `tuning` flags (each
    /// `--NAME VALUE`) from the process's arguments.
    pub fn from_env(tuning: &[&str]) -> Result<Args, UsageError> {
        Args::parse(std::env::args().skip(1), tuning)
    }

    /// Reads the arguments `args` (without the program's name).
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        tuning: &[&str],
    ) -> Result<Args, UsageError> {
        let mut store = None;
        let mut jobs = 10_000;
        let mut workers = 32;
        let mut extra = BTreeMap::new();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| UsageError(format!("unexpected argument {flag:?}")))?;
            let value = args
                .next()
                .ok_or_else(|| UsageError(format!("{flag} needs a value")))?;
            match name {
                "store" => store = Some(value),
                "jobs" => jobs = positive(name, &value)?,
                "workers" => workers = positive(name, &value)?,
                other if tuning.contains(&other) => {
                    extra.insert(other.to_string(), value);
                }
                other => {
                    return Err(UsageError(format!(
                        "unknown flag --{other}; this peer takes --store URL --jobs N --workers W{}",
                        tuning
                            .iter()
                            .map(|t| format!(" --{t} N"))
                            .collect::<String>()
                    )));
                }
            }
        }
        let store = store.ok_or_else(|| UsageError("--store URL is required".into()))?;
        Ok(Args {
            store,
            jobs,
            workers,
            tuning: extra,
        })
    }

    /// A tuning flag's value, or `default` when it was not given.
    pub fn number(&self, name: &str, default: usize) -> Result<usize, UsageError> {
        match self.tuning.get(name) {
            Some(value) => positive(name, value),
            None => Ok(default),
        }
    }
}

fn positive(name: &str, value: &str) -> Result<usize, UsageError> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(UsageError(format!(
            "--{name} must be a whole number above 0, not {value:?}"
        ))),
    }
}

/// What a peer measured: printed as one JSON line on stdout.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The peer's name, e.g. `apalis-sqlite`.
    pub peer: &'static str,
    /// The queue and its version, e.g. `apalis 1.0.0 + apalis-sqlite 1.0.0`.
    pub queue: &'static str,
    pub jobs: usize,
    /// Enqueueing all jobs (one transaction where the queue offers it).
    pub enqueue: Duration,
    /// From starting the workers to the store showing every job done.
    pub process: Duration,
    /// The settings this run used, including `workers`.
    pub settings: Value,
    /// The store's durability as the store itself reports it.
    pub durability: Value,
}

impl Outcome {
    /// The line the benchmark reads.
    pub fn json_line(&self) -> String {
        let process_s = self.process.as_secs_f64().max(1e-9);
        json!({
            "peer": self.peer,
            "queue": self.queue,
            "jobs": self.jobs,
            "enqueue_s": self.enqueue.as_secs_f64(),
            "process_s": process_s,
            "jobs_per_s": self.jobs as f64 / process_s,
            "settings": self.settings,
            "durability": self.durability,
        })
        .to_string()
    }
}

/// Prints `error` and exits with 1 (2 for a bad command line).
pub fn fail(peer: &str, error: &(dyn std::error::Error + 'static)) -> ! {
    eprintln!("{peer}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
    std::process::exit(if error.is::<UsageError>() { 2 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_common_flags_and_a_known_tuning_flag_are_read() {
        let a = Args::parse(
            args(&["--store", "sqlite:///x", "--jobs", "5", "--batch", "7"]),
            &["batch"],
        )
        .unwrap();
        assert_eq!(a.store, "sqlite:///x");
        assert_eq!(a.jobs, 5);
        assert_eq!(a.workers, 32);
        assert_eq!(a.number("batch", 10).unwrap(), 7);
        assert_eq!(a.number("connections", 10).unwrap(), 10);
    }

    #[test]
    fn an_unknown_flag_a_zero_and_a_missing_store_are_refused() {
        assert!(Args::parse(args(&["--store", "s", "--poll-ms", "1"]), &["batch"]).is_err());
        assert!(Args::parse(args(&["--store", "s", "--jobs", "0"]), &[]).is_err());
        assert!(Args::parse(args(&["--jobs", "3"]), &[]).is_err());
    }
}
