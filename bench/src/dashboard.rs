//! Phase `dashboard`: the web pages of `docfetch run` on a large store (the
//! overview, the first jobs page, a filtered page, a job page and the
//! accounts page, each timed over loopback with the API token), and the
//! daemon under the throughput workload with and without one live viewer
//! (a session following `/events` and fetching the jobs page again on
//! every change, as the page's script does): the rate it loses and its
//! peak RSS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use docfetch::sim::{Sim, SimConfig};
use docfetch::store::Store;

use crate::daemon::Daemon;
use crate::disk::temp_dir;
use crate::options::{Options, Phase};
use crate::report::{Rows, TARGET_RSS, human_count, percentile};
use crate::scale::populate;
use crate::util::{close_store, daemon_toml, toml_str};
use crate::workload::wait_finished;

/// A page at the median, on the large store.
const TARGET_PAGE_MS: &str = "< 50 ms";
/// Throughput lost with one live viewer.
const TARGET_VIEWER_LOSS: &str = "< 5 %";

pub(crate) async fn dashboard_phase(
    opts: &Options,
    rows: &mut Rows,
    notes: &mut Vec<String>,
) -> Result<()> {
    pages(opts, rows, notes).await?;
    for run in 1..=opts.runs {
        live_viewer(opts, rows, run).await?;
    }
    Ok(())
}

fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| anyhow!("HTTP client: {}", docfetch::http::describe(&e)))
}

fn free_api_address() -> Result<String> {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

/// Each page timed `samples` times with the Bearer token on the large store.
async fn pages(opts: &Options, rows: &mut Rows, notes: &mut Vec<String>) -> Result<()> {
    let p = Phase::Dashboard;
    let sim = Sim::start_local(SimConfig::default()).await?;
    let dir = temp_dir(opts, "dashboard")?;
    let db = dir.path().join("docfetch.db");
    let took = populate(&db, opts.scale_jobs, opts.scale_waiting).await?;
    notes.push(format!(
        "dashboard: the {}-job store was generated in {:.1} s",
        opts.scale_jobs,
        took.as_secs_f64()
    ));
    let api = free_api_address()?;
    let config = dir.path().join("docfetch.toml");
    std::fs::write(
        &config,
        daemon_toml(dir.path(), "", "", &sim.accounts_toml(), &api),
    )?;
    let (daemon, _) = Daemon::start(
        &opts.daemon,
        dir.path(),
        &config,
        &[],
        Duration::from_secs(300),
    )
    .await?;
    let token =
        std::fs::read_to_string(dir.path().join("api-token")).context("the daemon's API token")?;
    let token = token.trim();
    let http = client()?;
    let jobs = human_count(opts.scale_jobs);
    let middle = format!("gen-{:09}", opts.scale_jobs / 2);
    let samples = if opts.smoke { 3 } else { 40 };
    let pages = [
        ("overview /".to_string(), "/".to_string()),
        ("jobs, first page".to_string(), "/jobs".to_string()),
        (
            "jobs, filtered (state, provider, account)".to_string(),
            "/jobs?state=done&provider=1c-fresh&account=fresh-sim-plain".to_string(),
        ),
        // A piece of the name matches anywhere in it, so no index helps:
        // the page walks rows newest first until it has 50 matches.
        (
            "jobs, name search (a piece of the name)".to_string(),
            "/jobs?q=gen-0004".to_string(),
        ),
        ("one job's page".to_string(), format!("/jobs/{middle}")),
        ("accounts".to_string(), "/accounts".to_string()),
    ];
    for (label, path) in pages {
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let started = Instant::now();
            let response = http
                .get(format!("http://{api}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| anyhow!("GET {path}: {}", docfetch::http::describe(&e)))?;
            let status = response.status();
            let body = response.text().await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            ensure!(status.is_success(), "GET {path}: {status}");
            ensure!(
                !body.contains("id=\"login\""),
                "GET {path} answered the login form"
            );
        }
        times.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&times, 50.0), percentile(&times, 99.0));
        rows.add(
            p,
            &format!("{label}, {jobs} jobs, p50"),
            "ms",
            Some(TARGET_PAGE_MS),
            p50,
        );
        rows.add(p, &format!("{label}, {jobs} jobs, p99"), "ms", None, p99);
        eprintln!("   {label}: p50 {p50:.1} ms, p99 {p99:.1} ms");
    }
    let memory = daemon.memory()?;
    rows.add(
        p,
        &format!("peak RSS (VmHWM) after the pages, {jobs} jobs"),
        "MiB",
        None,
        memory.hwm_kib as f64 / 1024.0,
    );
    daemon.stop().await?;
    sim.stop().await;
    Ok(())
}

/// Logs in through the form; returns the session cookie.
async fn login(http: &reqwest::Client, api: &str, token: &str) -> Result<String> {
    let response = http
        .post(format!("http://{api}/login"))
        .header("origin", format!("http://{api}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("token", token)
                .finish(),
        )
        .send()
        .await?;
    ensure!(
        response.status().as_u16() == 303,
        "login: {}",
        response.status()
    );
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("login set no cookie")?;
    Ok(cookie.to_string())
}

/// A viewer on the jobs page: follows `/events` and, on each change,
/// fetches the page again (one fetch at a time, as the page's script
/// does). Returns the number of pages fetched when `stop` fires.
async fn viewer(
    http: reqwest::Client,
    api: String,
    cookie: String,
    fetched: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let mut events = http
        .get(format!("http://{api}/events"))
        .header("cookie", &cookie)
        .timeout(Duration::from_secs(3600))
        .send()
        .await?;
    ensure!(events.status().is_success(), "/events: {}", events.status());
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            chunk = events.chunk() => chunk?,
        };
        let Some(chunk) = chunk else { return Ok(()) };
        if !String::from_utf8_lossy(&chunk).contains("change") {
            continue;
        }
        let page = http
            .get(format!("http://{api}/jobs"))
            .header("cookie", &cookie)
            .send()
            .await?;
        page.text().await?;
        fetched.fetch_add(1, Ordering::Relaxed);
    }
}

/// The throughput workload through a real daemon, once without and once
/// with a live viewer.
async fn live_viewer(opts: &Options, rows: &mut Rows, run: usize) -> Result<()> {
    let p = Phase::Dashboard;
    let n = if opts.smoke {
        100
    } else {
        (opts.jobs / 5).max(500)
    };
    let mut rates = Vec::new();
    for with_viewer in [false, true] {
        let sim = Sim::start_local(SimConfig::default()).await?;
        let dir = temp_dir(opts, "dashboard-live")?;
        let fresh = &sim.config.fresh;
        let accounts = format!(
            "[accounts.bench-fresh]\nprovider = \"1c-fresh\"\nflow = \"plain\"\nbase_url = {}\nusername = {}\npassword = {}\nconcurrency = {}\n",
            toml_str(&sim.fresh.base_url()),
            toml_str(&fresh.username),
            toml_str(&fresh.password),
            opts.concurrency
        );
        let scheduler = format!(
            "workers = {}\npoll_initial = {}\npoll_max = {}\nretry_initial = \"50ms\"",
            opts.workers,
            toml_str(&docfetch::units::format_duration(opts.poll_initial)),
            toml_str(&docfetch::units::format_duration(opts.poll_max)),
        );
        let api = free_api_address()?;
        let config = dir.path().join("docfetch.toml");
        std::fs::write(
            &config,
            daemon_toml(dir.path(), &scheduler, "", &accounts, &api),
        )?;
        let (daemon, _) = Daemon::start(
            &opts.daemon,
            dir.path(),
            &config,
            &[],
            Duration::from_secs(120),
        )
        .await?;
        let token = std::fs::read_to_string(dir.path().join("api-token"))?;
        let token = token.trim().to_string();
        let http = client()?;
        let fetched = Arc::new(AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let watcher = if with_viewer {
            let cookie = login(&http, &api, &token).await?;
            Some(tokio::spawn(viewer(
                http.clone(),
                api.clone(),
                cookie,
                fetched.clone(),
                stop.clone(),
            )))
        } else {
            None
        };
        let store = Store::open(&crate::util::sqlite_url(&dir.path().join("docfetch.db"))).await?;
        let started = Instant::now();
        submit(&http, &api, &token, n, opts).await?;
        wait_finished(&store, n, crate::workload::fresh_workload_limit(n)).await?;
        let wall = started.elapsed().as_secs_f64();
        stop.cancel();
        if let Some(w) = watcher {
            w.await??;
        }
        let memory = daemon.memory()?;
        close_store(&store).await;
        daemon.stop().await?;
        sim.stop().await;
        let rate = n as f64 / wall;
        rates.push(rate);
        let who = if with_viewer {
            "one live viewer"
        } else {
            "no viewer"
        };
        rows.add(
            p,
            &format!("daemon end to end, {who}"),
            "jobs/s",
            None,
            rate,
        );
        rows.add(
            p,
            &format!("daemon peak RSS (VmHWM), {who}"),
            "MiB",
            if with_viewer { Some(TARGET_RSS) } else { None },
            memory.hwm_kib as f64 / 1024.0,
        );
        if with_viewer {
            rows.add(
                p,
                "jobs pages the viewer fetched on changes",
                "pages",
                None,
                fetched.load(Ordering::Relaxed) as f64,
            );
        }
        eprintln!(
            "   run {run}, {who}: {n} jobs in {wall:.2} s = {rate:.0} jobs/s; peak RSS {:.1} MiB; {} pages fetched",
            memory.hwm_kib as f64 / 1024.0,
            fetched.load(Ordering::Relaxed)
        );
        crate::disk::keep_until_the_end(dir);
    }
    if let [without, with] = rates.as_slice() {
        rows.add(
            p,
            "throughput lost to one live viewer",
            "%",
            Some(TARGET_VIEWER_LOSS),
            100.0 * (without - with) / without,
        );
    }
    Ok(())
}

/// Submits `n` throughput jobs through `POST /api/jobs`, 8 at a time.
async fn submit(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    n: usize,
    opts: &Options,
) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, api, token, next) = (
            http.clone(),
            api.to_string(),
            token.to_string(),
            next.clone(),
        );
        let (pending, size) = (opts.pending, opts.file_size);
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n as u64 {
                    return Ok::<(), anyhow::Error>(());
                }
                let request = serde_json::json!({
                    "account": "bench-fresh",
                    "operation": "balance_sheet",
                    "name": format!("live-{i:06}"),
                    "params": {
                        "organization": {"inn": "783900281039", "kpp": ""},
                        "_sim": {"pending": pending, "size": size}
                    }
                });
                let response = http
                    .post(format!("http://{api}/api/jobs"))
                    .bearer_auth(&token)
                    .json(&request)
                    .send()
                    .await?;
                ensure!(
                    response.status().is_success(),
                    "POST /api/jobs: {}",
                    response.status()
                );
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}
