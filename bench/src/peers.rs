//! Phase `peers`: the queues a Rust user would pick instead of docfetch,
//! measured by the same command in the same run, on the same disk and the
//! same PostgreSQL server.
//!
//! Each peer is a small cargo project under `bench/peers/` with its own
//! `Cargo.lock` (apalis-sqlite's SQLite cannot link beside docfetch's), so
//! it runs as a child process: `PROGRAM --store URL --jobs N --workers W
//! [its tuning flags]` enqueues N no-op jobs, processes them, and prints
//! one JSON line with its rate (`peer-common`). The stores are as durable
//! as docfetch's: SQLite in WAL mode with `synchronous=FULL`, PostgreSQL at
//! the server's defaults (`fsync`, `synchronous_commit` on); each peer
//! checks and reports that. A peer's figure is the rate at which its
//! workers drain a backlog enqueued beforehand (the enqueue is timed apart
//! and not counted), against docfetch's end to end rate with submissions,
//! HTTP, polls, files and `fsync`s: a comparison that favours the peer.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use crate::disk::{disk_rate, temp_dir};
use crate::options::{Options, Phase};
use crate::pgdb::BenchDb;
use crate::report::{Rows, TARGET_PEER, metric};

/// Which store a peer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerStore {
    Sqlite,
    Postgres,
}

/// One peer queue and the settings it runs with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    /// The folder under `bench/peers/`, and the name `--peer NAME=PATH` takes.
    pub name: &'static str,
    /// The cargo package (and so the program's file name).
    pub package: &'static str,
    pub store: PeerStore,
    /// How the table names it.
    pub label: &'static str,
    /// Its best settings found on this machine kind (BENCHMARKS.md says how):
    /// flags after `--store URL --jobs N`.
    pub settings: &'static [&'static str],
}

/// The peers, in the order they run, with the best settings of those tried
/// on this machine kind (BENCHMARKS.md, "Peers", lists what was tried):
/// apalis gains from many workers fetching 100–250 tasks at a time, and
/// underway from a short poll period that lets it reach its concurrency.
pub(crate) const PEERS: [Peer; 3] = [
    Peer {
        name: "apalis-sqlite",
        package: "peer-apalis-sqlite",
        store: PeerStore::Sqlite,
        label: "apalis 1.0, SQLite (WAL, synchronous=FULL)",
        settings: &["--workers", "64", "--batch", "100", "--connections", "10"],
    },
    Peer {
        name: "apalis-postgres",
        package: "peer-apalis-postgres",
        store: PeerStore::Postgres,
        label: "apalis 1.0, PostgreSQL",
        settings: &["--workers", "32", "--batch", "250", "--connections", "10"],
    },
    Peer {
        name: "underway",
        package: "peer-underway",
        store: PeerStore::Postgres,
        label: "underway 0.2, PostgreSQL",
        settings: &["--workers", "32", "--poll-ms", "1"],
    },
];

impl Peer {
    /// The row with its no-op rate.
    pub(crate) fn metric(&self) -> String {
        format!("{}: no-op jobs", self.label)
    }

    /// The settings as one string, for the report.
    pub(crate) fn settings_text(&self) -> String {
        self.settings.join(" ")
    }
}

/// What a peer prints, as far as the benchmark reads it.
#[derive(Debug, Deserialize)]
struct PeerLine {
    queue: String,
    jobs: usize,
    enqueue_s: f64,
    jobs_per_s: f64,
    settings: serde_json::Value,
    durability: serde_json::Value,
}

pub(crate) async fn peers_phase(
    opts: &Options,
    rows: &mut Rows,
    notes: &mut Vec<String>,
) -> Result<()> {
    let p = Phase::Peers;
    let mut ready = Vec::new();
    for peer in PEERS {
        if peer.store == PeerStore::Postgres && opts.postgres.is_none() {
            notes.push(format!(
                "peers: {} skipped, no PostgreSQL server given (--postgres URL, or DOCFETCH_BENCH_POSTGRES_URL or DOCFETCH_TEST_POSTGRES_URL)",
                peer.name
            ));
            continue;
        }
        match program(opts, &peer).await? {
            Some(path) => ready.push((peer, path)),
            None => {
                let why = format!(
                    "peers: {} skipped: not built, and this run builds no peers (--smoke or --no-peer-build; build it with cargo build --release --manifest-path bench/peers/{}/Cargo.toml --target-dir target/peers, or --peer {}=PATH)",
                    peer.name, peer.name, peer.name
                );
                eprintln!("   {why}");
                notes.push(why);
            }
        }
    }
    if ready.is_empty() {
        return Ok(());
    }
    for run in 1..=opts.runs {
        let fsyncs = disk_rate(opts).await?;
        rows.add(p, metric::DISK_RATE, "fsyncs/s", None, fsyncs);
        for (peer, path) in &ready {
            let line = run_peer(opts, peer, path)
                .await
                .with_context(|| format!("peer {}", peer.name))?;
            rows.add(p, &peer.metric(), "jobs/s", None, line.jobs_per_s);
            rows.add(
                p,
                &format!("{} ÷ disk rate", peer.label),
                "jobs per fdatasync/s",
                None,
                line.jobs_per_s / fsyncs,
            );
            eprintln!(
                "   run {run}, {}: {} jobs at {:.0} jobs/s ({:.3} per fdatasync/s of the disk's {fsyncs:.0}); enqueued in {:.2} s",
                peer.name,
                line.jobs,
                line.jobs_per_s,
                line.jobs_per_s / fsyncs,
                line.enqueue_s
            );
            if run == 1 {
                notes.push(format!(
                    "peers: {} = {}; settings {}; durability {}; {} jobs enqueued in {:.2} s before the workers start (not in its rate)",
                    peer.name, line.queue, line.settings, line.durability, line.jobs, line.enqueue_s
                ));
            }
        }
    }
    Ok(())
}

/// Adds, after all phases, docfetch's real work against each peer's no-op
/// rate, run by run: on the same store where the run measured docfetch on
/// it (SQLite: `throughput`; PostgreSQL: `pg` with one instance), and for
/// the PostgreSQL peers also against docfetch's default store, SQLite.
pub(crate) fn add_ratios(rows: &mut Rows, notes: &mut Vec<String>) {
    let mut missing_pg = false;
    for peer in PEERS {
        let peer_row = (Phase::Peers, peer.metric());
        if rows.values(Phase::Peers, &peer_row.1).is_none() {
            continue;
        }
        let sqlite = (Phase::Throughput, metric::END_TO_END);
        match peer.store {
            PeerStore::Sqlite => {
                rows.add_ratio(
                    Phase::Peers,
                    &format!(
                        "docfetch end to end on SQLite / {} (same store)",
                        peer.label
                    ),
                    Some(TARGET_PEER),
                    sqlite,
                    (peer_row.0, &peer_row.1),
                );
            }
            PeerStore::Postgres => {
                let same = rows.add_ratio(
                    Phase::Peers,
                    &format!(
                        "docfetch end to end on PostgreSQL, 1 instance / {} (same store)",
                        peer.label
                    ),
                    Some(TARGET_PEER),
                    (Phase::Pg, metric::PG_ONE),
                    (peer_row.0, &peer_row.1),
                );
                missing_pg |= !same;
                rows.add_ratio(
                    Phase::Peers,
                    &format!("docfetch end to end on SQLite / {}", peer.label),
                    None,
                    sqlite,
                    (peer_row.0, &peer_row.1),
                );
            }
        }
    }
    if rows.values(Phase::Throughput, metric::END_TO_END).is_none()
        && rows.values(Phase::Peers, metric::DISK_RATE).is_some()
    {
        notes.push(
            "peers: no throughput phase in this run, so no docfetch / peer ratio (add throughput to --only)".into(),
        );
    }
    if missing_pg {
        notes.push(
            "peers: no pg phase in this run, so the PostgreSQL peers are compared with docfetch on SQLite only (add pg to --only for docfetch on PostgreSQL)".into(),
        );
    }
}

/// The peer's program: given on the command line, or built (cargo keeps
/// it up to date and rebuilds nothing when nothing changed), or, when
/// building is off, the one already built; `None` when there is none.
async fn program(opts: &Options, peer: &Peer) -> Result<Option<PathBuf>> {
    if let Some((_, path)) = opts.peers.given.iter().find(|(name, _)| name == peer.name) {
        ensure!(
            path.is_file(),
            "--peer {}={}: no such program",
            peer.name,
            path.display()
        );
        return Ok(Some(path.clone()));
    }
    let built = opts.peers.target.join("release").join(peer.package);
    if !opts.peers.build {
        return Ok(built.is_file().then_some(built));
    }
    let manifest = opts.peers.projects.join(peer.name).join("Cargo.toml");
    ensure!(
        manifest.is_file(),
        "{} is missing: the peers are built from the source tree (or pass --peer {}=PATH)",
        manifest.display(),
        peer.name
    );
    eprintln!(
        "   building {} if it is not up to date (cargo build --release; the first build takes minutes)",
        peer.name
    );
    let status = tokio::process::Command::new(cargo())
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&opts.peers.target)
        .stdin(Stdio::null())
        .status()
        .await
        .context("cannot run cargo to build the peers (or pass --peer NAME=PATH)")?;
    ensure!(
        status.success(),
        "cargo build of {} failed ({status})",
        manifest.display()
    );
    ensure!(
        built.is_file(),
        "cargo built {} but {} is not there",
        peer.name,
        built.display()
    );
    Ok(Some(built))
}

/// The cargo that built this program when it runs under `cargo run`, else
/// the one on the PATH.
fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

/// One measurement of `peer` on a fresh store of its own.
async fn run_peer(opts: &Options, peer: &Peer, program: &Path) -> Result<PeerLine> {
    match peer.store {
        PeerStore::Sqlite => {
            let dir = temp_dir(opts, peer.name)?;
            let url = format!("sqlite://{}", dir.path().join("peer.db").display());
            run_child(opts, peer, program, &url).await
        }
        PeerStore::Postgres => {
            let Some(server) = opts.postgres.as_deref() else {
                bail!("no PostgreSQL server given");
            };
            let db = BenchDb::create(server).await?;
            let measured = run_child(opts, peer, program, &db.url_as(peer.package)).await;
            let dropped = db.drop_database().await;
            let line = measured?;
            dropped?;
            Ok(line)
        }
    }
}

/// Starts the peer, waits for it within a limit, and reads its JSON line.
async fn run_child(opts: &Options, peer: &Peer, program: &Path, store: &str) -> Result<PeerLine> {
    let mut command = tokio::process::Command::new(program);
    command
        .arg("--store")
        .arg(store)
        .arg("--jobs")
        .arg(opts.peer_jobs.to_string())
        .args(peer.settings)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let limit = Duration::from_secs(120)
        + Duration::from_millis(20) * u32::try_from(opts.peer_jobs).unwrap_or(u32::MAX);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .with_context(|| format!("did not finish within {limit:?}"))?
        .with_context(|| format!("cannot start {}", program.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "exited with {}: {}",
        output.status,
        stderr.trim()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("printed nothing")?;
    let line: PeerLine =
        serde_json::from_str(last).with_context(|| format!("printed {last:?}, not its result"))?;
    ensure!(
        line.jobs == opts.peer_jobs && line.jobs_per_s.is_finite() && line.jobs_per_s > 0.0,
        "reported {} jobs at {} jobs/s for {} asked",
        line.jobs,
        line.jobs_per_s,
        opts.peer_jobs
    );
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_has_a_project_folder_with_its_own_lock_file() {
        let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
        for peer in PEERS {
            let project = peers.join(peer.name);
            let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
            assert!(
                manifest.contains(&format!("name = \"{}\"", peer.package)),
                "{} is not package {}",
                peer.name,
                peer.package
            );
            assert!(
                project.join("Cargo.lock").is_file(),
                "{} has no Cargo.lock",
                peer.name
            );
        }
    }

    #[test]
    fn peer_ratios_are_taken_run_by_run_on_the_same_store() {
        let mut rows = Rows::default();
        for (docfetch, apalis) in [(800.0, 400.0), (600.0, 200.0)] {
            rows.add(
                Phase::Throughput,
                metric::END_TO_END,
                "jobs/s",
                None,
                docfetch,
            );
            rows.add(Phase::Peers, &PEERS[0].metric(), "jobs/s", None, apalis);
        }
        let mut notes = Vec::new();
        add_ratios(&mut rows, &mut notes);
        let ratio = format!(
            "docfetch end to end on SQLite / {} (same store)",
            PEERS[0].label
        );
        assert_eq!(rows.values(Phase::Peers, &ratio), Some(&[2.0, 3.0][..]));
        assert!(notes.is_empty(), "{notes:?}");
    }
}
