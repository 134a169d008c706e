//! Completion hooks: commands (argv lists run without a shell) and webhooks
//! (a POST of `job.json`, signed) when a job finishes.
//!
//! What runs comes from the operator: `[hooks.NAME]` tables and the
//! accounts' `on_done` / `on_failed` / `on_done_url` in the config, and
//! schedules. A request only names a configured hook (`on_done =
//! "import-usn"`); one that carries a command or URL is refused when it
//! arrives (see [`crate::job::request`]) unless
//! `hooks.allow_request_commands`. Jobs stored before that rule keep the
//! commands they were accepted with, and run them.
//!
//! Webhooks are signed Stripe-style: `X-Docfetch-Timestamp: UNIX_SECONDS`
//! and `X-Docfetch-Signature: sha256=HEX(HMAC-SHA256(secret,
//! "TIMESTAMP.BODY"))`, so a receiver that checks the timestamp is recent
//! cannot be fed a captured call again later.
//!
//! Hooks run *at least once*, and only once `job.json` is on disk: the store
//! marks them pending in the same commit that finishes the job, which comes
//! after the receipt is durable, and they are marked done only after they
//! succeeded, so a crash in between runs them again. A failing hook is logged
//! to the job's history and retried with backoff up to `hooks.max_attempts`,
//! and it never changes the job's outcome.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Secret, Settings};
use crate::job::{HookRef, Hooks, Job, JobState, now_ms};
use crate::store::Store;

/// Output kept from a hook for the job's history.
const KEEP_OUTPUT: usize = 2048;

/// The webhook signature header: `sha256=HEX` of `TIMESTAMP.BODY` under the
/// hook's `secret` (or the account's `webhook_secret`).
pub const SIGNATURE_HEADER: &str = "X-Docfetch-Signature";

/// The webhook timestamp header: when the call was signed, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Docfetch-Timestamp";

/// The signature of a webhook body sent at `timestamp` (Unix seconds):
/// `sha256=` and the hex HMAC-SHA256 of `TIMESTAMP.BODY`.
pub fn webhook_signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut message = Vec::with_capacity(body.len() + 24);
    message.extend_from_slice(timestamp.to_string().as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    format!(
        "sha256={}",
        crate::job::digest::hex(&hmac_sha256(secret, &message))
    )
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer.finalize());
    out
}

/// Runs pending hooks.
pub struct HookRunner {
    store: Store,
    settings: Arc<Settings>,
    http: reqwest::Client,
}

/// The result of one hook.
struct Ran {
    ok: bool,
    event: String,
}

impl HookRunner {
    pub fn new(store: Store, settings: Arc<Settings>, http: reqwest::Client) -> Self {
        HookRunner {
            store,
            settings,
            http,
        }
    }

    /// Runs the hooks of every job whose hooks are due now. Returns how many
    /// jobs were handled.
    #[tracing::instrument(name = "hooks_step", skip_all)]
    pub async fn step(&self) -> Result<usize, crate::store::StoreError> {
        let now = now_ms();
        // Held for twice the timeout: long enough for the hooks to finish.
        let hold = now
            + 2 * i64::try_from(self.settings.hooks.timeout.as_millis()).unwrap_or(60_000)
            + 10_000;
        let jobs = self.store.claim_hooks(now, hold, 8).await?;
        let count = jobs.len();
        let mut set = tokio::task::JoinSet::new();
        for job in jobs {
            let runner = HookRunner {
                store: self.store.clone(),
                settings: self.settings.clone(),
                http: self.http.clone(),
            };
            set.spawn(async move { runner.run_job_hooks(job).await });
        }
        while set.join_next().await.is_some() {}
        Ok(count)
    }

    fn hooks_for(&self, job: &Job) -> (Hooks, Option<Secret>) {
        let account = self.settings.accounts.get(&job.account);
        let fallback = account.map(|a| a.hooks.clone()).unwrap_or_default();
        let secret = account.and_then(|a| a.webhook_secret.clone());
        (job.hooks.clone().unwrap_or_default().or(&fallback), secret)
    }

    #[tracing::instrument(
        name = "hooks",
        skip_all,
        fields(job = %job.name, job_id = %job.id, provider = %job.provider, account = %job.account)
    )]
    async fn run_job_hooks(&self, job: Job) {
        let (hooks, account_secret) = self.hooks_for(&job);
        let mut results = Vec::new();
        let hook = match job.state {
            JobState::Done => hooks.on_done.clone(),
            JobState::Failed => hooks.on_failed.clone(),
            _ => None,
        };
        let default_timeout = self.settings.hooks.timeout;
        match hook {
            Some(HookRef::Command(argv)) => {
                let carried = job.hooks.as_ref().is_some_and(|h| {
                    matches!(
                        (job.state, &h.on_done, &h.on_failed),
                        (JobState::Done, Some(HookRef::Command(_)), _)
                            | (JobState::Failed, _, Some(HookRef::Command(_)))
                    )
                });
                if carried
                    && !job.source.starts_with("schedule:")
                    && !self.settings.hooks.allow_request_commands
                {
                    warn!(job = %job.name, source = %job.source, "running a command the request carried itself: the job was accepted before requests had to name configured hooks");
                }
                results.push(self.run_command(&job, &argv, default_timeout).await);
            }
            Some(HookRef::Named(name)) => match self.settings.hooks.named.get(&name) {
                None => results.push(Ran {
                    ok: false,
                    event: format!(
                        "hook {name:?} is not configured (any more); define [hooks.{name}] in the config"
                    ),
                }),
                Some(named) => {
                    let timeout = named.timeout.unwrap_or(default_timeout);
                    if let Some(argv) = &named.command {
                        results.push(self.run_command(&job, argv, timeout).await);
                    }
                    if let Some(url) = &named.url {
                        results.push(
                            self.post_webhook(&job, url, named.secret.as_ref(), timeout)
                                .await,
                        );
                    }
                }
            },
            None => {}
        }
        if job.state == JobState::Done
            && let Some(url) = &hooks.on_done_url
        {
            results.push(
                self.post_webhook(&job, url, account_secret.as_ref(), default_timeout)
                    .await,
            );
        }
        let ok = results.iter().all(|r| r.ok);
        for r in &results {
            if let Err(e) = self
                .store
                .add_event(&job.id, crate::job::EventKind::Hook.as_str(), &r.event)
                .await
            {
                warn!(job = %job.name, error = %e, "cannot record a hook's outcome");
            }
        }
        let attempts = job.hooks_attempts + 1;
        let (state, next_at) = if ok {
            ("done", now_ms())
        } else if attempts >= self.settings.hooks.max_attempts {
            warn!(job = %job.name, attempts, "giving up on the job's hooks; the job's outcome is unchanged");
            let _ = self
                .store
                .add_event(
                    &job.id,
                    crate::job::EventKind::Hook.as_str(),
                    &format!("gave up after {attempts} attempts"),
                )
                .await;
            ("failed", now_ms())
        } else {
            let delay = crate::job::retry::backoff(
                self.settings.hooks.retry_initial,
                Duration::from_secs(3600),
                attempts - 1,
                fastrand::f64(),
            );
            let next = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
            ("pending", next)
        };
        crate::metrics::hooks_ran(&job.account, state);
        if let Err(e) = self
            .store
            .finish_hooks(&job.id, state, attempts, next_at)
            .await
        {
            warn!(job = %job.name, error = %e, "cannot record the hooks' state; they will run again");
        }
    }

    fn receipt_path(&self, job: &Job) -> PathBuf {
        crate::receipt::job_dir(&self.settings.paths.output, job)
            .join(crate::filename::RECEIPT_NAME)
    }

    /// Runs `argv` + the receipt path, with the job in `DOCFETCH_*`
    /// variables and nothing else from the daemon's environment (which may
    /// hold secrets).
    async fn run_command(&self, job: &Job, argv: &[String], timeout: Duration) -> Ran {
        let Some((program, args)) = argv.split_first() else {
            return Ran {
                ok: false,
                event: "empty hook command".into(),
            };
        };
        let dir = absolute(&crate::receipt::job_dir(&self.settings.paths.output, job));
        let receipt = absolute(&self.receipt_path(job));
        let files: Vec<String> = job
            .result
            .iter()
            .flat_map(|r| r.files.iter())
            .map(|f| dir.join(&f.name).display().to_string())
            .collect();
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .arg(&receipt)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("DOCFETCH_JOB", &job.name)
            .env("DOCFETCH_JOB_ID", &job.id)
            .env("DOCFETCH_STATE", job.state.as_str())
            .env("DOCFETCH_ACCOUNT", &job.account)
            .env("DOCFETCH_PROVIDER", &job.provider)
            .env("DOCFETCH_OPERATION", &job.operation)
            .env("DOCFETCH_DIR", &dir)
            .env("DOCFETCH_RECEIPT", &receipt)
            .env("DOCFETCH_FILES", files.join("\n"))
            .env("DOCFETCH_ERROR", job.last_error.as_deref().unwrap_or(""))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return Ran {
                    ok: false,
                    event: format!("hook {program:?} could not start: {e}"),
                };
            }
        };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let run = async {
            let (out, err, status) =
                tokio::join!(read_capped(stdout), read_capped(stderr), child.wait());
            (out, err, status)
        };
        match tokio::time::timeout(timeout, run).await {
            Err(_) => Ran {
                ok: false,
                // Dropping the child (kill_on_drop) kills it.
                event: format!(
                    "hook {program:?} timed out after {}",
                    crate::units::format_duration(timeout)
                ),
            },
            Ok((_, _, Err(e))) => Ran {
                ok: false,
                event: format!("hook {program:?} failed: {e}"),
            },
            Ok((out, err, Ok(status))) => {
                let mut output = String::from_utf8_lossy(&out).trim().to_string();
                let err = String::from_utf8_lossy(&err).trim().to_string();
                if !err.is_empty() {
                    if !output.is_empty() {
                        output.push_str(" | ");
                    }
                    output.push_str(&err);
                }
                let ok = status.success();
                if ok {
                    info!(job = %job.name, program = %program, "hook ran");
                } else {
                    warn!(job = %job.name, program = %program, %status, "hook failed");
                }
                Ran {
                    ok,
                    event: format!(
                        "hook {program:?} exited with {}{}",
                        status
                            .code()
                            .map_or_else(|| status.to_string(), |c| c.to_string()),
                        if output.is_empty() {
                            String::new()
                        } else {
                            format!(": {output}")
                        }
                    ),
                }
            }
        }
    }

    async fn post_webhook(
        &self,
        job: &Job,
        url: &str,
        secret: Option<&Secret>,
        timeout: Duration,
    ) -> Ran {
        let shown = url::Url::parse(url)
            .map(|u| crate::http::redact_url(&u))
            .unwrap_or_else(|_| url.to_string());
        let body = match tokio::fs::read(self.receipt_path(job)).await {
            Ok(body) => body,
            Err(e) => {
                return Ran {
                    ok: false,
                    event: format!("webhook {shown}: cannot read job.json: {e}"),
                };
            }
        };
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Docfetch-Job", &job.name)
            .timeout(timeout);
        if let Some(secret) = secret {
            // Signed when sent (each retry afresh), so the receiver can
            // refuse anything older than a few minutes.
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            request = request
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(
                    SIGNATURE_HEADER,
                    webhook_signature(secret.expose().as_bytes(), timestamp, &body),
                );
        }
        match request.body(body).send().await {
            Ok(r) if r.status().is_success() => Ran {
                ok: true,
                event: format!("webhook {shown} answered {}", r.status()),
            },
            Ok(r) => Ran {
                ok: false,
                event: format!("webhook {shown} answered {}", r.status()),
            },
            Err(e) => Ran {
                ok: false,
                event: format!("webhook {shown}: {}", crate::http::describe(&e)),
            },
        }
    }

    /// The driver: runs due hooks until `shutdown`, sleeping until the next
    /// one is due or a job finishes with hooks.
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = self.store.hooks_wakeup();
        loop {
            match self.step().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot look for pending hooks"),
            }
            let until = match self.store.next_hooks_at().await {
                Ok(Some(at)) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
                _ => Duration::from_secs(60),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(until.clamp(Duration::from_millis(10), Duration::from_secs(60))) => {}
            }
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Reads a whole pipe (so the child never blocks on it) but keeps only the
/// first [`KEEP_OUTPUT`] bytes.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = KEEP_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_signature_covers_the_timestamp_a_dot_and_the_body() {
        // As `printf '%s.' 1700000000 | cat - body | openssl dgst -sha256 -hmac whsec` prints it.
        assert_eq!(
            webhook_signature(b"whsec", 1_700_000_000, b"{\"a\":1}\n"),
            "sha256=ecba364d3740fa9d54c29871bc21e9185d607e6899ed730d1bebf12f39be7ec5"
        );
        assert_ne!(
            webhook_signature(b"whsec", 1_700_000_001, b"{\"a\":1}\n"),
            webhook_signature(b"whsec", 1_700_000_000, b"{\"a\":1}\n")
        );
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            crate::job::digest::hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let long_key = [0xaau8; 131];
        let mac = hmac_sha256(
            &long_key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            crate::job::digest::hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
