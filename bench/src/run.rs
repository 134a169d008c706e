//! Runs the selected phases in order, each `runs` times, and gathers the
//! report; Ctrl-C or SIGTERM drops the phase in progress and everything it
//! made.

use anyhow::{Context, Result, anyhow, bail};

use crate::disk::SPENT;
use crate::options::{Options, Phase};
use crate::pg::{PG_MAX_INSTANCES, pg_account_concurrency};
use crate::report::{Machine, Report, Rows, TARGET_PG_LATENCY, TARGET_PG_VS_SQLITE, metric};
use crate::util::{loadavg, lock};
use crate::{dashboard, idle, large, peers, pg, polling, scale, store, throughput};

/// Runs the selected phases and returns the report.
pub(crate) async fn run(opts: &Options) -> Result<Report> {
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
    let prometheus = docfetch::metrics::install();
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
    add_cross_phase_ratios(&mut rows, &mut notes);
    Ok(Report {
        machine,
        runs: opts.runs,
        smoke: opts.smoke,
        settings: settings_of(opts),
        headline: rows.headline(),
        rows: rows.finish(),
        load,
        notes,
    })
}

pub(crate) async fn run_phases(
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
            Phase::Store => store::store_phase(opts, rows).await,
            Phase::Throughput => throughput::throughput_phase(opts, rows, notes, prometheus).await,
            Phase::Polling => polling::polling_phase(opts, rows, notes).await,
            Phase::Idle => idle::idle_phase(opts, rows, notes).await,
            Phase::Scale => scale::scale_phase(opts, rows, notes).await,
            Phase::Dashboard => dashboard::dashboard_phase(opts, rows, notes).await,
            Phase::Large => large::large_phase(opts, rows, notes).await,
            Phase::Pg => pg::pg_phase(opts, rows, notes, prometheus).await,
            Phase::Peers => peers::peers_phase(opts, rows, notes).await,
        }
        .with_context(|| format!("phase {}", phase.name()))?;
    }
    Ok(())
}

/// The ratios between phases, each taken within one run (run *i* of one
/// phase against run *i* of the other): what issue 18 compares PostgreSQL
/// and the peer queues with.
fn add_cross_phase_ratios(rows: &mut Rows, notes: &mut Vec<String>) {
    rows.add_ratio(
        Phase::Pg,
        "PostgreSQL, 1 instance / SQLite end to end (throughput phase)",
        Some(TARGET_PG_VS_SQLITE),
        (Phase::Pg, metric::PG_ONE),
        (Phase::Throughput, metric::END_TO_END),
    );
    rows.add_ratio(
        Phase::Pg,
        "PostgreSQL, 1 instance / SQLite: submit → done latency p50",
        Some(TARGET_PG_LATENCY),
        (Phase::Pg, metric::PG_ONE_P50),
        (Phase::Throughput, metric::P50),
    );
    peers::add_ratios(rows, notes);
}

pub(crate) fn settings_of(opts: &Options) -> Vec<(String, String)> {
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
                docfetch::units::format_duration(opts.poll_initial),
                docfetch::units::format_duration(opts.poll_max),
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
                docfetch::units::format_duration(opts.idle_time)
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
                docfetch::units::format_duration(opts.scale_settle)
            ),
        ));
    }
    if has(Phase::Dashboard) {
        out.push((
            "dashboard".into(),
            format!(
                "pages timed on a store of {} jobs ({} waiting) with the API token; then the throughput workload through `docfetch run` (POST /api/jobs), without and with one session following /events and fetching /jobs on every change",
                opts.scale_jobs, opts.scale_waiting
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
                docfetch::store::redact_store_url(url),
                opts.workers,
                docfetch::units::format_duration(opts.poll_initial),
                docfetch::units::format_duration(opts.poll_max),
                pg_account_concurrency(opts),
            ),
        };
        out.push(("pg".into(), pg));
    }
    if has(Phase::Peers) {
        let peers: Vec<String> = peers::PEERS
            .iter()
            .map(|peer| format!("{} `{}`", peer.name, peer.settings_text()))
            .collect();
        out.push((
            "peers".into(),
            format!(
                "{} no-op jobs each, enqueued first, then drained by the workers (the rate); a fresh store each run (SQLite file under --dir; PostgreSQL database on the pg phase's server, dropped afterwards); best settings found on this machine kind: {}",
                opts.peer_jobs,
                peers.join("; ")
            ),
        ));
    }
    out
}

/// Waits for Ctrl-C or SIGTERM and names it. A signal that cannot be
/// listened for is never reported (the benchmark then runs to its end).
pub(crate) async fn interrupted() -> &'static str {
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
