//! Phase `throughput`: the [`Scheduler`](docfetch::scheduler::Scheduler)
//! driver in this process on the 1C plain flow against the simulator, from
//! the first submission to the last job done; its rate divided by the
//! disk's `fdatasync` rate of the same run is the benchmark's headline.

use std::time::Instant;

use anyhow::Result;
use docfetch::store::Store;
use tokio_util::sync::CancellationToken;

use crate::disk::{disk_rate, keep_until_the_end, settle_disk, temp_dir};
use crate::options::{Options, Phase};
use crate::report::{Rows, TARGET_HEADLINE, metric, percentile};
use crate::util::{close_store, cpu_seconds, histogram_delta, parse_prometheus, prometheus_value};
use crate::workload::{
    CLAIM_LABEL, STORE_OP_HISTOGRAM, all_done, bench_scheduler, fresh_workload,
    fresh_workload_limit, submit_fresh_jobs, wait_finished,
};

pub(crate) async fn throughput_phase(
    opts: &Options,
    rows: &mut Rows,
    notes: &mut Vec<String>,
    prometheus: Option<&metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<()> {
    let p = Phase::Throughput;
    let n = opts.jobs;
    if !opts.smoke {
        settle_disk(notes, p).await;
    }
    for run in 1..=opts.runs {
        let fsyncs = disk_rate(opts).await?;
        let dir = temp_dir(opts, "throughput")?;
        let (sim, settings) = fresh_workload(opts, dir.path(), opts.concurrency).await?;
        let store = Store::open(&settings.store.url).await?;
        let scheduler = bench_scheduler(&store, &settings, docfetch::app::instance_id())?;
        let before = prometheus.map(|h| parse_prometheus(&h.render()));
        let cpu_before = cpu_seconds("self")?;
        let shutdown = CancellationToken::new();
        let driver = tokio::spawn(scheduler.clone().run(shutdown.clone(), None));

        let started = Instant::now();
        let submitted = submit_fresh_jobs(opts, &store, &settings, n).await;
        let submit_s = started.elapsed().as_secs_f64();
        let finished = match submitted {
            Ok(()) => wait_finished(&store, n, fresh_workload_limit(n)).await,
            Err(e) => Err(e),
        };
        let wall_s = started.elapsed().as_secs_f64();
        shutdown.cancel();
        let _ = driver.await;
        let cpu_s = cpu_seconds("self")? - cpu_before;
        let after = prometheus.map(|h| parse_prometheus(&h.render()));
        finished?;

        let done = all_done(&store, n).await;
        close_store(&store).await;
        sim.stop().await;
        keep_until_the_end(dir);
        let done = done?;
        let nf = n as f64;
        rows.add(p, metric::END_TO_END, "jobs/s", None, done.jobs_per_s());
        rows.add(p, metric::DISK_RATE, "fsyncs/s", None, fsyncs);
        rows.add(
            p,
            metric::PER_FDATASYNC,
            "jobs per fdatasync/s",
            Some(TARGET_HEADLINE),
            done.jobs_per_s() / fsyncs,
        );
        rows.add(
            p,
            metric::P50,
            "ms",
            None,
            percentile(&done.latencies_ms, 50.0),
        );
        rows.add(
            p,
            "submit → done latency p99",
            "ms",
            None,
            percentile(&done.latencies_ms, 99.0),
        );
        rows.add(
            p,
            "submissions accepted while the driver ran",
            "jobs/s",
            None,
            nf / submit_s,
        );
        rows.add(
            p,
            "\"not ready\" answers per job",
            "polls",
            None,
            done.polls_per_job,
        );
        rows.add(
            p,
            "CPU of this process (daemon + simulator) per job",
            "ms",
            None,
            cpu_s * 1000.0 / nf,
        );
        rows.add(p, "CPU use during the run", "cores", None, cpu_s / wall_s);
        if let (Some(before), Some(after)) = (before, after) {
            let delta = |name: &str, label: &str| histogram_delta(&before, &after, name, label);
            let (claim_sum, claims) = delta(STORE_OP_HISTOGRAM, CLAIM_LABEL);
            let (finish_sum, finishes) = delta(STORE_OP_HISTOGRAM, "op=\"finish\"");
            let (step_sum, steps) = delta(
                "docfetch_provider_step_duration_seconds",
                "provider=\"1c-fresh\"",
            );
            let (download_sum, downloads) = delta(
                "docfetch_download_duration_seconds",
                "provider=\"1c-fresh\"",
            );
            rows.add(p, "claims per job (batched)", "claims", None, claims / nf);
            let (commit_sum, commits) = delta("docfetch_store_commit_duration_seconds", "");
            let writes = prometheus_value(&after, "docfetch_store_writes_total", "", "")
                - prometheus_value(&before, "docfetch_store_writes_total", "", "");
            rows.add(p, "group commits per job", "commits", None, commits / nf);
            rows.add(
                p,
                "writes per group commit",
                "writes",
                None,
                writes / commits.max(1.0),
            );
            rows.add(
                p,
                "group commit time, mean (statements + WAL fsync)",
                "ms",
                None,
                1000.0 * commit_sum / commits.max(1.0),
            );
            rows.add(
                p,
                "claim_due latency, mean (incl. waiting for the writer)",
                "ms",
                None,
                1000.0 * claim_sum / claims.max(1.0),
            );
            rows.add(p, "finish_step per job", "commits", None, finishes / nf);
            rows.add(
                p,
                "finish_step latency, mean (incl. waiting for the writer)",
                "ms",
                None,
                1000.0 * finish_sum / finishes.max(1.0),
            );
            rows.add(
                p,
                "provider step time per job (HTTP, download, fsync)",
                "ms",
                None,
                1000.0 * step_sum / nf,
            );
            rows.add(p, "provider steps per job", "steps", None, steps / nf);
            rows.add(
                p,
                "download (stream + fsync + rename + fsync dir), mean",
                "ms",
                None,
                1000.0 * download_sum / downloads.max(1.0),
            );
        }
        eprintln!(
            "   run {run}: {n} jobs in {:.2} s = {:.0} jobs/s ({:.3} per fdatasync/s of the disk's {fsyncs:.0}); p50 {:.0} ms, p99 {:.0} ms; submit {:.0}/s; CPU {cpu_s:.1} s",
            done.span_s,
            done.jobs_per_s(),
            done.jobs_per_s() / fsyncs,
            percentile(&done.latencies_ms, 50.0),
            percentile(&done.latencies_ms, 99.0),
            nf / submit_s
        );
    }
    Ok(())
}
