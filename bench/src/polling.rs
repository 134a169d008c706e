//! Phase `polling`: requests per job against the minimum and lateness
//! after the provider's own hint, for OFD (`AssumptiveCompleteTime`) and
//! Diadoc (`Retry-After`), seen by a recording proxy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use docfetch::config::{Environment, Settings};
use docfetch::job::JobState;
use docfetch::job::request::RequestFormat;
use docfetch::sim::kontur_diadoc::KonturDiadocSimConfig;
use docfetch::sim::ofd::OfdSimConfig;
use docfetch::sim::{Sim, SimConfig};
use docfetch::store::{JobFilter, Store};
use tokio_util::sync::CancellationToken;

use crate::disk::temp_dir;
use crate::options::{Options, Phase};
use crate::proxy::{Hit, Proxy};
use crate::report::{Rows, percentile};
use crate::util::{close_store, daemon_toml};
use crate::workload::{bench_scheduler, wait_finished};

pub(crate) async fn polling_phase(
    opts: &Options,
    rows: &mut Rows,
    notes: &mut Vec<String>,
) -> Result<()> {
    let p = Phase::Polling;
    let ofd_jobs = opts.poll_jobs / 2;
    let diadoc_jobs = opts.poll_jobs - ofd_jobs;
    for run in 1..=opts.runs {
        let dir = temp_dir(opts, "polling")?;
        let config = SimConfig {
            ofd: OfdSimConfig {
                // Ready exactly when the knobs say, not after a number of looks.
                pending_lists: 0,
                ..OfdSimConfig::default()
            },
            kontur_diadoc: KonturDiadocSimConfig {
                pending: opts.pending,
                retry_after_secs: opts.retry_after_secs,
                ..KonturDiadocSimConfig::default()
            },
            ..SimConfig::default()
        };
        let sim = Sim::start_local(config).await?;
        let proxy = Proxy::start(sim.addr).await?;
        let accounts = sim.accounts_toml().replace(
            &format!("http://{}", sim.addr),
            &format!("http://{}", proxy.addr),
        );
        let scheduler = format!("workers = {}", opts.workers);
        let settings = Arc::new(Settings::from_toml(
            &daemon_toml(dir.path(), &scheduler, "", &accounts, ""),
            &Environment::default(),
        )?);
        let store = Store::open(&settings.store.url).await?;
        let scheduler = bench_scheduler(&store, &settings, docfetch::app::instance_id())?;
        let shutdown = CancellationToken::new();
        let driver = tokio::spawn(scheduler.clone().run(shutdown.clone(), None));
        for i in 0..opts.poll_jobs {
            let request = if i % 2 == 0 && i / 2 < ofd_jobs {
                serde_json::json!({
                    "account": "ofd-sim", "operation": "report", "name": format!("ofd-{i:05}"),
                    "params": {"ReportType": "CloseShiftReport",
                               "DateFrom": "2026-11-01T00:00:00", "DateTo": "2026-11-22T23:59:59",
                               "SelectAllKkts": true, "UseXlsxFile": true,
                               "_sim": {"ready_after_ms": opts.eta_ms, "eta_ms": opts.eta_ms}}
                })
            } else {
                serde_json::json!({
                    "account": "kontur-diadoc-sim", "operation": "document-protocol",
                    "name": format!("diadoc-{i:05}"),
                    "params": {"boxId": uuid::Uuid::new_v4().to_string(),
                               "messageId": uuid::Uuid::new_v4().to_string(),
                               "documentId": uuid::Uuid::new_v4().to_string()}
                })
            };
            let bytes = serde_json::to_vec(&request)?;
            docfetch::inbox::accept(&store, &settings, &bytes, RequestFormat::Json, None, "api")
                .await?;
        }
        let finished = wait_finished(&store, opts.poll_jobs, Duration::from_secs(180)).await;
        shutdown.cancel();
        let _ = driver.await;
        finished?;
        let jobs = store
            .list(&JobFilter {
                limit: 0,
                ..JobFilter::default()
            })
            .await?;
        close_store(&store).await;
        let failed: Vec<_> = jobs.iter().filter(|j| j.state != JobState::Done).collect();
        ensure!(
            failed.is_empty(),
            "{} polling jobs did not end done: {:?}",
            failed.len(),
            failed
                .iter()
                .take(3)
                .map(|j| (&j.name, j.state, &j.last_error))
                .collect::<Vec<_>>()
        );
        let hits = proxy.stop().await;
        sim.stop().await;

        let ofd = analyse_ofd(&hits, opts.eta_ms as f64)?;
        ensure!(
            ofd.reports == ofd_jobs,
            "the proxy saw {} OFD orders for {ofd_jobs} jobs",
            ofd.reports
        );
        let ofd_min = (3 * ofd_jobs + 1) as f64;
        rows.add(
            p,
            "OFD: requests per job",
            "requests",
            None,
            ofd.requests as f64 / ofd_jobs as f64,
        );
        rows.add(
            p,
            "OFD: minimum (order, one status look, download; one login)",
            "requests",
            None,
            ofd_min / ofd_jobs as f64,
        );
        rows.add(
            p,
            "OFD: requests / minimum",
            "×",
            None,
            ofd.requests as f64 / ofd_min,
        );
        rows.add(
            p,
            "OFD: lateness after AssumptiveCompleteTime p50",
            "ms",
            None,
            percentile(&ofd.after_eta, 50.0),
        );
        rows.add(
            p,
            "OFD: lateness after AssumptiveCompleteTime p99",
            "ms",
            None,
            percentile(&ofd.after_eta, 99.0),
        );
        rows.add(
            p,
            "OFD: lateness after ready p50 (incl. the ETA's whole-second rounding)",
            "ms",
            None,
            percentile(&ofd.after_ready, 50.0),
        );
        rows.add(
            p,
            "OFD: lateness after ready p99",
            "ms",
            None,
            percentile(&ofd.after_ready, 99.0),
        );

        let diadoc = analyse_diadoc(&hits)?;
        ensure!(
            diadoc.documents == diadoc_jobs,
            "the proxy saw {} Diadoc documents for {diadoc_jobs} jobs",
            diadoc.documents
        );
        let diadoc_min = (diadoc_jobs * (opts.pending as usize + 1) + 1) as f64;
        rows.add(
            p,
            "Diadoc: requests per job",
            "requests",
            None,
            diadoc.requests as f64 / diadoc_jobs as f64,
        );
        rows.add(
            p,
            &format!(
                "Diadoc: minimum ({} Retry-After answers + the protocol; one login)",
                opts.pending
            ),
            "requests",
            None,
            diadoc_min / diadoc_jobs as f64,
        );
        rows.add(
            p,
            "Diadoc: requests / minimum",
            "×",
            None,
            diadoc.requests as f64 / diadoc_min,
        );
        rows.add(
            p,
            "Diadoc: polls sent before Retry-After expired",
            "polls",
            None,
            diadoc.early as f64,
        );
        rows.add(
            p,
            "Diadoc: lateness after the last Retry-After p50",
            "ms",
            None,
            percentile(&diadoc.late, 50.0),
        );
        rows.add(
            p,
            "Diadoc: lateness after the last Retry-After p99",
            "ms",
            None,
            percentile(&diadoc.late, 99.0),
        );
        if run == 1 {
            notes.push(format!(
                "polling: OFD requests by kind in run 1: {:?}; Diadoc: {:?}",
                ofd.kinds, diadoc.kinds
            ));
        }
        eprintln!(
            "   run {run}: OFD {:.2} req/job, late p50 {:.0} ms after ETA; Diadoc {:.2} req/job, late p50 {:.0} ms",
            ofd.requests as f64 / ofd_jobs.max(1) as f64,
            percentile(&ofd.after_eta, 50.0),
            diadoc.requests as f64 / diadoc_jobs.max(1) as f64,
            percentile(&diadoc.late, 50.0)
        );
    }
    Ok(())
}

pub(crate) struct OfdAnalysis {
    requests: usize,
    reports: usize,
    kinds: BTreeMap<&'static str, usize>,
    after_eta: Vec<f64>,
    after_ready: Vec<f64>,
}

/// Per OFD report: the order's answer (id, `AssumptiveCompleteTime`, when it
/// came back) and the download request.
pub(crate) fn analyse_ofd(hits: &[Hit], ready_after_ms: f64) -> Result<OfdAnalysis> {
    let mut kinds = BTreeMap::new();
    let mut orders: HashMap<String, (f64, f64)> = HashMap::new();
    let mut downloads: HashMap<String, f64> = HashMap::new();
    let mut requests = 0;
    for hit in hits {
        let Some(path) = hit.path_only().strip_prefix(docfetch::sim::ofd::PREFIX) else {
            continue;
        };
        requests += 1;
        let kind = match (hit.method.as_str(), path) {
            ("POST", "/api/Authorization/CreateAuthToken") => "login",
            ("POST", "/api/customer/reports") => {
                let body: serde_json::Value =
                    serde_json::from_slice(hit.body.as_deref().unwrap_or(b""))
                        .context("the OFD order answer is not JSON")?;
                let data = &body["Data"];
                let id = data["Id"]
                    .as_str()
                    .context("no report Id in the order answer")?;
                let eta = data["AssumptiveCompleteTime"]
                    .as_str()
                    .and_then(|t| {
                        chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S").ok()
                    })
                    .context("no AssumptiveCompleteTime in the order answer")?;
                orders.insert(
                    id.to_string(),
                    (hit.end_ms, eta.and_utc().timestamp_millis() as f64),
                );
                "order"
            }
            ("GET", "/api/customer/reports") => "list",
            ("GET", p) if p.starts_with("/api/customer/reports/") && !p.ends_with("/cancel") => {
                let id = &p["/api/customer/reports/".len()..];
                downloads.entry(id.to_string()).or_insert(hit.start_ms);
                "download"
            }
            _ => "other",
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    let mut after_eta = Vec::new();
    let mut after_ready = Vec::new();
    for (id, (ordered, eta)) in &orders {
        let download = downloads
            .get(id)
            .with_context(|| format!("OFD report {id} was never downloaded"))?;
        after_eta.push(download - eta);
        after_ready.push(download - (ordered + ready_after_ms));
    }
    after_eta.sort_by(f64::total_cmp);
    after_ready.sort_by(f64::total_cmp);
    Ok(OfdAnalysis {
        requests,
        reports: orders.len(),
        kinds,
        after_eta,
        after_ready,
    })
}

pub(crate) struct DiadocAnalysis {
    requests: usize,
    documents: usize,
    kinds: BTreeMap<&'static str, usize>,
    /// Polls sent before the previous answer's `Retry-After` ran out.
    early: usize,
    late: Vec<f64>,
}

/// Per document: the `Retry-After` answers, then the request that got the
/// protocol; lateness is how long after the last `Retry-After` ran out it came.
pub(crate) fn analyse_diadoc(hits: &[Hit]) -> Result<DiadocAnalysis> {
    let mut kinds = BTreeMap::new();
    let mut by_document: HashMap<String, Vec<&Hit>> = HashMap::new();
    let mut requests = 0;
    for hit in hits {
        let Some(path) = hit
            .path_only()
            .strip_prefix(docfetch::sim::kontur_diadoc::PREFIX)
        else {
            continue;
        };
        requests += 1;
        let kind = match path {
            "/V3/Authenticate" => "login",
            "/GenerateDocumentProtocol" => {
                let document = hit
                    .query_param("documentId")
                    .context("a protocol request without documentId")?;
                by_document.entry(document).or_default().push(hit);
                "protocol"
            }
            _ => "other",
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    let mut early = 0;
    let mut late = Vec::new();
    for polls in by_document.values_mut() {
        polls.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        for pair in polls.windows(2) {
            if let Some(after) = pair[0].retry_after
                && pair[1].start_ms < pair[0].end_ms + after * 1000.0
            {
                early += 1;
            }
        }
        if let [.., last_pending, done] = polls.as_slice()
            && let Some(after) = last_pending.retry_after
            && done.retry_after.is_none()
        {
            late.push(done.start_ms - (last_pending.end_ms + after * 1000.0));
        }
    }
    late.sort_by(f64::total_cmp);
    Ok(DiadocAnalysis {
        requests,
        documents: by_document.len(),
        kinds,
        early,
        late,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diadoc_lateness_is_measured_from_the_last_retry_after() {
        let hit = |start: f64, end: f64, retry: Option<f64>| Hit {
            start_ms: start,
            end_ms: end,
            method: "GET".into(),
            path: "/diadoc/GenerateDocumentProtocol?boxId=b&messageId=m&documentId=d".into(),
            retry_after: retry,
            body: None,
        };
        let hits = vec![
            hit(0.0, 1.0, Some(1.0)),
            hit(1005.0, 1006.0, Some(1.0)),
            hit(2026.0, 2027.0, None),
        ];
        let a = analyse_diadoc(&hits).unwrap();
        assert_eq!(a.documents, 1);
        assert_eq!(a.requests, 3);
        assert_eq!(a.early, 0);
        assert_eq!(a.late, vec![20.0]);
    }
}
