//! `docfetch run` as a child process, the way systemd starts it: ready on
//! `READY=1`, stopped with SIGTERM, its memory read from `/proc`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// `docfetch run` started on a config, ready once it sent `READY=1` to the
/// notification socket (as under systemd). Killed if dropped while running.
pub(crate) struct Daemon {
    pub(crate) child: tokio::process::Child,
    pub(crate) pid: u32,
    pub(crate) log: PathBuf,
}

/// Memory of a process from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoryUse {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
}

impl Daemon {
    /// Starts the daemon and waits for `READY=1`; returns it with the time
    /// from spawning to readiness.
    pub(crate) async fn start(
        bin: &Path,
        dir: &Path,
        config: &Path,
        env: &[(&str, &str)],
        limit: Duration,
    ) -> Result<(Daemon, Duration)> {
        let socket_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket_path);
        let socket = tokio::net::UnixDatagram::bind(&socket_path)?;
        let log = dir.join(format!("daemon-{}.log", uuid::Uuid::new_v4().simple()));
        let log_file = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(bin);
        command
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("NOTIFY_SOCKET", &socket_path)
            .env_remove("RUST_LOG")
            .env_remove("DOCFETCH_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        for (key, _) in std::env::vars() {
            if key.starts_with("DOCFETCH__") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().copied());
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("the daemon has no pid")?;
        let mut buf = [0u8; 512];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            tokio::select! {
                received = socket.recv(&mut buf) => {
                    let n = received?;
                    if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l.trim() == "READY=1") {
                        break;
                    }
                }
                status = child.wait() => {
                    bail!("the daemon exited ({}) before it was ready; see {}", status?, log.display());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    bail!("the daemon was not ready within {limit:?}; see {}", log.display());
                }
            }
        }
        let ready = started.elapsed();
        Ok((Daemon { child, pid, log }, ready))
    }

    pub(crate) fn memory(&self) -> Result<MemoryUse> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(MemoryUse {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        })
    }

    /// SIGTERM, then waits for a clean exit; returns how long it took.
    pub(crate) async fn stop(mut self) -> Result<Duration> {
        let started = Instant::now();
        let status = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await?;
        ensure!(status.success(), "kill -TERM {} failed", self.pid);
        let exited = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("the daemon did not stop within 60 s of SIGTERM")??;
        ensure!(
            exited.success(),
            "the daemon exited with {exited}; see {}",
            self.log.display()
        );
        Ok(started.elapsed())
    }
}
