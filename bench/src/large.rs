//! Phase `large`: one streamed 1 GiB download by `docfetch run` against
//! `curl -o` of the same URL, and the daemon's peak RSS.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::daemon::Daemon;
use crate::disk::temp_dir;
use crate::options::{Options, Phase};
use crate::proxy::status_only;
use crate::report::{Rows, TARGET_LARGE, TARGET_RSS};
use crate::util::lock;
use crate::util::{daemon_toml, mtime_ms, toml_str, wall_ms};

pub(crate) async fn large_phase(
    opts: &Options,
    rows: &mut Rows,
    notes: &mut Vec<String>,
) -> Result<()> {
    let p = Phase::Large;
    notes.push(
        "large: the 1C simulator builds each file in memory (and keeps it), so this phase serves the file from a small streaming 1C plain-flow endpoint inside the bench (a 256 KiB block repeated); the daemon talks to it through its real 1C provider".into(),
    );
    let size = opts.large_size;
    let mib = size as f64 / 1_048_576.0;
    for run in 1..=opts.runs {
        let dir = temp_dir(opts, "large")?;
        let server = LargeServer::start(size).await?;
        let accounts = format!(
            "[accounts.bench-large]\nprovider = \"1c-fresh\"\nflow = \"plain\"\nbase_url = {}\nusername = \"api\"\npassword = \"bench\"\n",
            toml_str(&server.base_url())
        );
        let config = dir.path().join("docfetch.toml");
        std::fs::write(
            &config,
            daemon_toml(
                dir.path(),
                "poll_initial = \"10ms\"\npoll_max = \"100ms\"",
                // The request is dropped as a file: pick it up at once.
                "[inbox]\nscan_interval = \"50ms\"\nsettle = \"0s\"\n",
                &accounts,
                "",
            ),
        )?;
        let (daemon, _) = Daemon::start(
            &opts.daemon,
            dir.path(),
            &config,
            &[],
            Duration::from_secs(60),
        )
        .await?;
        let before = daemon.memory()?;
        let requests = dir.path().join("requests");
        let request = serde_json::json!({"account": "bench-large", "operation": "balance_sheet", "name": "large"});
        std::fs::write(
            requests.join("large.json.tmp"),
            serde_json::to_vec(&request)?,
        )?;
        std::fs::rename(requests.join("large.json.tmp"), requests.join("large.json"))?;
        let receipt = dir.path().join("output/large/job.json");
        let limit = Duration::from_secs(60) + Duration::from_secs_f64(size as f64 / 5e6);
        let deadline = Instant::now() + limit;
        let mut peak_sampled = before.rss_kib;
        while !receipt.exists() {
            if Instant::now() > deadline {
                bail!(
                    "the large download did not finish within {limit:?}; see {}",
                    daemon.log.display()
                );
            }
            peak_sampled = peak_sampled.max(daemon.memory()?.rss_kib);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = daemon.memory()?;
        daemon.stop().await?;
        let requested = server
            .requested()
            .context("the daemon never asked for the file")?;
        let finished = mtime_ms(&receipt)?;
        let file = dir.path().join("output/large/large.bin");
        let saved = std::fs::metadata(&file)?.len();
        ensure!(saved == size, "the daemon saved {saved} of {size} bytes");
        std::fs::remove_file(&file)?;
        let daemon_s = (finished - requested) / 1000.0;

        let curl_file = dir.path().join("curl.bin");
        let output = tokio::process::Command::new("curl")
            .args(["-sS", "--fail", "-o"])
            .arg(&curl_file)
            .args(["-w", "%{time_total} %{size_download}"])
            .arg(server.file_url())
            .output()
            .await
            .context("cannot run curl")?;
        ensure!(
            output.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout);
        let mut fields = text.split_whitespace();
        let curl_s: f64 = fields
            .next()
            .and_then(|t| t.parse().ok())
            .context("curl printed no time")?;
        let curl_bytes: f64 = fields.next().and_then(|t| t.parse().ok()).unwrap_or(0.0);
        ensure!(
            curl_bytes as u64 == size,
            "curl got {curl_bytes} of {size} bytes"
        );
        let synced = Instant::now();
        let status = tokio::process::Command::new("sync")
            .arg(&curl_file)
            .status()
            .await?;
        ensure!(status.success(), "sync {} failed", curl_file.display());
        let sync_s = synced.elapsed().as_secs_f64();
        std::fs::remove_file(&curl_file)?;
        server.stop().await;

        rows.add(
            p,
            "daemon: request → file durable (hash, fsync, rename, receipt)",
            "MiB/s",
            None,
            mib / daemon_s,
        );
        rows.add(
            p,
            "baseline: curl -o (no fsync)",
            "MiB/s",
            None,
            mib / curl_s,
        );
        rows.add(
            p,
            "baseline: curl -o, then sync FILE",
            "MiB/s",
            None,
            mib / (curl_s + sync_s),
        );
        rows.add(
            p,
            "ratio daemon / curl -o",
            "×",
            Some(TARGET_LARGE),
            curl_s / daemon_s,
        );
        rows.add(
            p,
            "ratio daemon / (curl -o + sync)",
            "×",
            None,
            (curl_s + sync_s) / daemon_s,
        );
        rows.add(
            p,
            "daemon peak RSS (VmHWM) before the download",
            "MiB",
            None,
            before.hwm_kib as f64 / 1024.0,
        );
        rows.add(
            p,
            "daemon peak RSS (VmHWM) after the download",
            "MiB",
            Some(TARGET_RSS),
            after.hwm_kib.max(peak_sampled) as f64 / 1024.0,
        );
        eprintln!(
            "   run {run}: daemon {:.0} MiB/s ({daemon_s:.2} s), curl {:.0} MiB/s, curl+sync {:.0} MiB/s; peak RSS {:.1} MiB",
            mib / daemon_s,
            mib / curl_s,
            mib / (curl_s + sync_s),
            after.hwm_kib as f64 / 1024.0
        );
    }
    Ok(())
}

/// A fake 1C:Fresh service (plain flow) whose one file is streamed, never
/// held in memory: the order and the status answer at once, and
/// `files/{id}` sends `size` bytes made of one repeated block.
pub(crate) struct LargeServer {
    addr: SocketAddr,
    state: Arc<LargeState>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub(crate) struct LargeState {
    size: u64,
    block: Bytes,
    /// When the last file request arrived (wall-clock ms).
    requested: Mutex<Option<f64>>,
}

impl LargeServer {
    pub(crate) async fn start(size: u64) -> Result<LargeServer> {
        let mut block = vec![0u8; 256 * 1024];
        fastrand::fill(&mut block);
        let state = Arc::new(LargeState {
            size,
            block: Bytes::from(block),
            requested: Mutex::new(None),
        });
        let base = format!("{}/storage", docfetch::sim::fresh::PREFIX);
        let app = Router::new()
            .route(&format!("{base}/async/{{id}}"), post(large_order))
            .route(&format!("{base}/jobs/{{id}}"), get(large_status))
            .route(&format!("{base}/files/{{id}}"), get(large_file))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        Ok(LargeServer {
            addr,
            state,
            stop,
            task,
        })
    }

    pub(crate) fn base_url(&self) -> String {
        format!(
            "http://{}{}/storage",
            self.addr,
            docfetch::sim::fresh::PREFIX
        )
    }

    pub(crate) fn file_url(&self) -> String {
        format!("{}/files/large-file", self.base_url())
    }

    pub(crate) fn requested(&self) -> Option<f64> {
        *lock(&self.state.requested)
    }

    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

pub(crate) fn fresh_answer(status: StatusCode, storage: &str, id: &str) -> Response {
    let body = serde_json::json!({
        "general": {"response": 10200, "error": false, "message": ""},
        "result": {"storage": storage, "id": id}
    });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=UTF-8")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| status_only(StatusCode::INTERNAL_SERVER_ERROR))
}

pub(crate) async fn large_order() -> Response {
    fresh_answer(StatusCode::CREATED, "jobs", "large-job")
}

pub(crate) async fn large_status() -> Response {
    fresh_answer(StatusCode::OK, "files", "large-file")
}

pub(crate) async fn large_file(State(state): State<Arc<LargeState>>) -> Response {
    *lock(&state.requested) = Some(wall_ms());
    let size = state.size;
    let block = state.block.clone();
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let block = block.clone();
        async move {
            if sent >= size {
                return None;
            }
            let n = (size - sent).min(block.len() as u64);
            let chunk = block.slice(..usize::try_from(n).unwrap_or(block.len()));
            Some((Ok::<Bytes, std::io::Error>(chunk), sent + n))
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size.to_string())
        .header(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"large.bin\"",
        )
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status_only(StatusCode::INTERNAL_SERVER_ERROR))
}
