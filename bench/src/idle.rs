//! Phase `idle`: what `docfetch run` costs while its jobs wait (CPU, store
//! queries, wake-ups, RSS), as a child process.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use docfetch::sim::{Sim, SimConfig};

use crate::daemon::Daemon;
use crate::disk::temp_dir;
use crate::options::{Options, Phase};
use crate::report::{Rows, TARGET_IDLE};
use crate::scale::populate;
use crate::util::{context_switches, cpu_seconds, daemon_toml};

pub(crate) async fn idle_phase(
    opts: &Options,
    rows: &mut Rows,
    notes: &mut Vec<String>,
) -> Result<()> {
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
pub(crate) fn count_queries(
    log: &Path,
    from: u64,
    to: u64,
) -> Result<(usize, BTreeMap<String, usize>)> {
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
