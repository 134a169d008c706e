//! The workload of the `throughput` and `pg` phases (a simulator and a 1C
//! plain-flow account), how its jobs are submitted, and what the finished
//! jobs show.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail, ensure};
use docfetch::config::{Environment, Settings};
use docfetch::job::JobState;
use docfetch::job::request::RequestFormat;
use docfetch::providers::Providers;
use docfetch::scheduler::Scheduler;
use docfetch::sim::{Sim, SimConfig};
use docfetch::store::{JobFilter, Store};

use crate::options::Options;
use crate::util::{daemon_toml, toml_str};

/// The histogram of store operations, and the label of its claims.
pub(crate) const STORE_OP_HISTOGRAM: &str = "docfetch_store_operation_duration_seconds";
pub(crate) const CLAIM_LABEL: &str = "op=\"claim\"";

/// The workload of the `throughput` and `pg` phases: a simulator, and a
/// daemon config rooted in `dir` with one 1C account (plain flow) of
/// `concurrency` against it.
pub(crate) async fn fresh_workload(
    opts: &Options,
    dir: &Path,
    concurrency: usize,
) -> Result<(Sim, Arc<Settings>)> {
    let sim = Sim::start_local(SimConfig::default()).await?;
    let fresh = &sim.config.fresh;
    let accounts = format!(
        "[accounts.bench-fresh]\nprovider = \"1c-fresh\"\nflow = \"plain\"\nbase_url = {}\nusername = {}\npassword = {}\nconcurrency = {}\n",
        toml_str(&sim.fresh.base_url()),
        toml_str(&fresh.username),
        toml_str(&fresh.password),
        concurrency
    );
    let scheduler = format!(
        "workers = {}\npoll_initial = {}\npoll_max = {}\nretry_initial = \"50ms\"",
        opts.workers,
        toml_str(&docfetch::units::format_duration(opts.poll_initial)),
        toml_str(&docfetch::units::format_duration(opts.poll_max)),
    );
    let settings = Settings::from_toml(
        &daemon_toml(dir, &scheduler, "", &accounts, ""),
        &Environment::default(),
    )?;
    Ok((sim, Arc::new(settings)))
}

/// How long `n` jobs of [`fresh_workload`] may take before the run counts as stuck.
pub(crate) fn fresh_workload_limit(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20) * u32::try_from(n).unwrap_or(u32::MAX)
}

/// Submits `n` jobs of [`fresh_workload`] through the same path as the API
/// and the drop directory, from `opts.submitters` tasks at once.
pub(crate) async fn submit_fresh_jobs(
    opts: &Options,
    store: &Store,
    settings: &Arc<Settings>,
    n: usize,
) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..opts.submitters.max(1) {
        let (store, settings, next) = (store.clone(), settings.clone(), next.clone());
        let (pending, size) = (opts.pending, opts.file_size);
        submitters.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let request = serde_json::json!({
                    "account": "bench-fresh",
                    "operation": "balance_sheet",
                    "name": format!("tp-{i:06}"),
                    "params": {
                        "organization": {"inn": "783900281039", "kpp": ""},
                        "_sim": {"pending": pending, "size": size}
                    }
                });
                let bytes = serde_json::to_vec(&request)?;
                docfetch::inbox::accept(
                    &store,
                    &settings,
                    &bytes,
                    RequestFormat::Json,
                    None,
                    "api",
                )
                .await?;
            }
        });
    }
    while let Some(joined) = submitters.join_next().await {
        joined??;
    }
    Ok(())
}

/// A scheduler on `store` as the daemon builds one, leasing as `owner`.
pub(crate) fn bench_scheduler(
    store: &Store,
    settings: &Arc<Settings>,
    owner: String,
) -> Result<Arc<Scheduler>> {
    let http = docfetch::http::client(&settings.http)
        .map_err(|e| anyhow!("HTTP client: {}", docfetch::http::describe(&e)))?;
    Ok(Arc::new(Scheduler::new(
        store.clone(),
        Providers::from_settings(settings),
        http,
        settings.clone(),
        owner,
    )))
}

/// What the jobs of a finished run show.
pub(crate) struct DoneJobs {
    pub(crate) jobs: usize,
    /// From the first job's submission to the last one's end.
    pub(crate) span_s: f64,
    /// Submit → done of each job, sorted.
    pub(crate) latencies_ms: Vec<f64>,
    pub(crate) polls_per_job: f64,
}

impl DoneJobs {
    pub(crate) fn jobs_per_s(&self) -> f64 {
        self.jobs as f64 / self.span_s
    }
}

/// Reads back the `n` jobs of a run, all of which must have ended done.
pub(crate) async fn all_done(store: &Store, n: usize) -> Result<DoneJobs> {
    let jobs = store
        .list(&JobFilter {
            limit: 0,
            ..JobFilter::default()
        })
        .await?;
    let done: Vec<_> = jobs.iter().filter(|j| j.state == JobState::Done).collect();
    ensure!(
        done.len() == n,
        "{} of {n} jobs ended done; the others: {:?}",
        done.len(),
        jobs.iter()
            .filter(|j| j.state != JobState::Done)
            .take(3)
            .map(|j| (&j.name, j.state, &j.last_error))
            .collect::<Vec<_>>()
    );
    let first = done.iter().map(|j| j.created_at).min().unwrap_or(0);
    let last = done.iter().filter_map(|j| j.finished_at).max().unwrap_or(0);
    let mut latencies_ms: Vec<f64> = done
        .iter()
        .filter_map(|j| j.finished_at.map(|f| (f - j.created_at) as f64))
        .collect();
    latencies_ms.sort_by(f64::total_cmp);
    Ok(DoneJobs {
        jobs: n,
        span_s: ((last - first) as f64 / 1000.0).max(1e-3),
        latencies_ms,
        polls_per_job: done.iter().map(|j| f64::from(j.polls)).sum::<f64>() / n.max(1) as f64,
    })
}

/// Waits until `n` jobs are finished (done, failed or cancelled).
pub(crate) async fn wait_finished(store: &Store, n: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let counts = store.counts().await?;
        let finished: u64 = counts
            .iter()
            .filter(|(s, _)| s.is_finished())
            .map(|(_, c)| c)
            .sum();
        if finished >= n as u64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {finished} of {n} jobs finished within {limit:?}: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
