//! Phase `pg`: 1, 2 and 3 daemons (schedulers in this process, each on a
//! runtime of its own) sharing one PostgreSQL database, on the throughput
//! workload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use docfetch::config::Settings;
use docfetch::store::Store;
use tokio_util::sync::CancellationToken;

use crate::disk::{disk_rate, keep_until_the_end, settle_disk, temp_dir};
use crate::options::{Options, Phase};
use crate::pgdb::BenchDb;
use crate::report::{Rows, metric, percentile};
use crate::util::{histogram_delta, parse_prometheus, prometheus_value};
use crate::workload::{
    CLAIM_LABEL, DoneJobs, STORE_OP_HISTOGRAM, all_done, bench_scheduler, fresh_workload,
    fresh_workload_limit, submit_fresh_jobs, wait_finished,
};

/// The `pg` phase measures 1 up to this many instances.
pub(crate) const PG_MAX_INSTANCES: usize = 3;

pub(crate) async fn pg_phase(
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
        let fsyncs = disk_rate(opts).await?;
        rows.add(p, metric::DISK_RATE, "fsyncs/s", None, fsyncs);
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
            rows.add(
                p,
                &format!("{label}: end to end ÷ disk rate"),
                "jobs per fdatasync/s",
                None,
                rate / fsyncs,
            );
            if let Some(claims) = fleet.claims {
                rows.add(
                    p,
                    &format!("{label}: claims per job"),
                    "claims",
                    None,
                    claims / nf,
                );
            }
            if let Some(trips) = fleet.round_trips {
                rows.add(
                    p,
                    &format!("{label}: round trips per job"),
                    "statements",
                    None,
                    trips / nf,
                );
            }
            if let Some(commits) = fleet.commits {
                rows.add(
                    p,
                    &format!("{label}: commits per job"),
                    "commits",
                    None,
                    commits / nf,
                );
            }
            rows.add(
                p,
                &format!("{label}: submit → done latency p50"),
                "ms",
                None,
                p50,
            );
            let per_job =
                |v: Option<f64>| v.map_or_else(|| "?".into(), |v| format!("{:.2}", v / nf));
            eprintln!(
                "   run {run}, {instances} instance(s): {} jobs in {:.2} s = {rate:.0} jobs/s; p50 {p50:.0} ms; per job {} claims, {} round trips, {} commits; {:.1} s with the database's set-up",
                opts.pg_jobs,
                fleet.done.span_s,
                per_job(fleet.claims),
                per_job(fleet.round_trips),
                per_job(fleet.commits),
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
pub(crate) fn pg_account_concurrency(opts: &Options) -> usize {
    PG_MAX_INSTANCES * opts.concurrency.max(opts.workers)
}

/// What one fleet did with its jobs.
pub(crate) struct FleetRun {
    done: DoneJobs,
    /// `claim_due` calls of all instances together (`None` without metrics).
    claims: Option<f64>,
    /// Statements sent to PostgreSQL by every store handle of the run (the
    /// instances' and the submitters').
    round_trips: Option<f64>,
    /// Commits of every store handle of the run: group commits, and
    /// statements that wrote outside them.
    commits: Option<f64>,
}

/// One measurement on a database of its own, which is dropped afterwards
/// whatever happened.
pub(crate) async fn pg_fleet_run(
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
pub(crate) async fn pg_fleet_measure(
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
        let owner = docfetch::app::instance_id();
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
    let Some((before, after)) = before.zip(after) else {
        return Ok(FleetRun {
            done,
            claims: None,
            round_trips: None,
            commits: None,
        });
    };
    let grown = |name: &str| {
        prometheus_value(&after, name, "", "") - prometheus_value(&before, name, "", "")
    };
    Ok(FleetRun {
        done,
        claims: Some(histogram_delta(&before, &after, STORE_OP_HISTOGRAM, CLAIM_LABEL).1),
        round_trips: Some(grown("docfetch_store_round_trips_total")),
        commits: Some(grown("docfetch_store_commits_total")),
    })
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
pub(crate) struct Instance {
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
    pub(crate) async fn start(
        index: usize,
        owner: String,
        settings: Arc<Settings>,
    ) -> Result<Instance> {
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
    pub(crate) async fn stop(mut self) -> Result<()> {
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
