//! The real `docfetch run` binary as a child process: a config file in a
//! test's folder, started with its stderr captured, killed with SIGKILL or
//! stopped with SIGTERM, always reaped (a failing test leaves no daemon).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::helpers::wait_until;

pub const BIN: &str = env!("CARGO_BIN_EXE_docfetch");

/// The settings a test daemon runs with; `render` gives the TOML.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub dir: PathBuf,
    /// `[accounts.*]` tables.
    pub accounts: String,
    pub workers: usize,
    pub max_attempts: u32,
    pub deadline: String,
    pub max_file_size: String,
    pub http_timeout: String,
    pub lease: String,
    pub poll_initial: String,
    pub poll_max: String,
    pub retry_initial: String,
    pub output: Option<PathBuf>,
    /// Where the database file lives (`docfetch.db` in `dir` by default).
    pub store: Option<PathBuf>,
    /// `api.listen` (`""`: no API).
    pub api_listen: String,
}

impl DaemonConfig {
    pub fn new(dir: &Path, accounts: String) -> DaemonConfig {
        DaemonConfig {
            dir: dir.to_path_buf(),
            accounts,
            workers: 8,
            max_attempts: 6,
            deadline: "48h".into(),
            max_file_size: "64MiB".into(),
            http_timeout: "5s".into(),
            lease: "3s".into(),
            poll_initial: "20ms".into(),
            poll_max: "200ms".into(),
            retry_initial: "20ms".into(),
            output: None,
            store: None,
            api_listen: String::new(),
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.store
            .clone()
            .unwrap_or_else(|| self.dir.join("docfetch.db"))
    }

    pub fn store_url(&self) -> String {
        format!("sqlite://{}", self.store_path().display())
    }

    pub fn requests(&self) -> PathBuf {
        self.dir.join("requests")
    }

    pub fn output(&self) -> PathBuf {
        self.output
            .clone()
            .unwrap_or_else(|| self.dir.join("output"))
    }

    pub fn attachments(&self) -> PathBuf {
        self.dir.join("attachments")
    }

    pub fn render(&self) -> String {
        format!(
            r#"[store]
url = "{store}"
[paths]
requests = "{dir}/requests"
output = "{output}"
attachments = "{dir}/attachments"
schedules = "{dir}/schedules.d"
[scheduler]
workers = {workers}
poll_initial = "{poll_initial}"
poll_max = "{poll_max}"
retry_initial = "{retry_initial}"
max_attempts = {max_attempts}
lease = "{lease}"
shutdown_grace = "5s"
deadline = "{deadline}"
max_file_size = "{max_file_size}"
[inbox]
scan_interval = "50ms"
settle = "0s"
[http]
timeout = "{http_timeout}"
connect_timeout = "2s"
[api]
listen = "{api_listen}"

{accounts}
"#,
            store = self.store_url(),
            dir = self.dir.display(),
            output = self.output().display(),
            workers = self.workers,
            poll_initial = self.poll_initial,
            poll_max = self.poll_max,
            retry_initial = self.retry_initial,
            max_attempts = self.max_attempts,
            lease = self.lease,
            deadline = self.deadline,
            max_file_size = self.max_file_size,
            http_timeout = self.http_timeout,
            accounts = self.accounts,
            api_listen = self.api_listen,
        )
    }

    /// Writes the config as `docfetch.toml` in the folder and returns its path.
    pub fn write(&self) -> PathBuf {
        std::fs::create_dir_all(&self.dir).expect("test folder");
        std::fs::create_dir_all(self.attachments()).expect("attachments folder");
        let path = self.dir.join("docfetch.toml");
        std::fs::write(&path, self.render()).expect("config written");
        path
    }
}

/// A running `docfetch run`.
pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    /// Starts the daemon on `config`, appending its stderr to `log`.
    pub fn start(config: &Path, log: &Path, rust_log: &str) -> Daemon {
        Daemon::start_with_env(config, log, rust_log, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables for the
    /// child only.
    pub fn start_with_env(
        config: &Path,
        log: &Path,
        rust_log: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut command = Command::new(BIN);
        command.arg("--config").arg(config).arg("run");
        Daemon::spawn(command, log, rust_log, env)
    }

    /// Starts `command` (`docfetch … run`, or a tracer running it) with
    /// the daemon's environment, appending its stderr to `log`.
    pub fn spawn(
        mut command: Command,
        log: std::fs::File,
        rust_log: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let child = command
            .env("RUST_LOG", rust_log)
            .env_remove("DOCFETCH_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docfetch starts");
        Daemon { child: Some(child) }
    }

    /// Starts a prepared command (arguments, folder, environment chosen by
    /// the test); it is reaped like any other.
    pub fn spawn_prepared(mut command: Command) -> Daemon {
        let child = command
            .env_remove("DOCFETCH_CONFIG")
            .stdin(Stdio::null())
            .spawn()
            .expect("docfetch starts");
        Daemon { child: Some(child) }
    }

    /// Waits (with a deadline) for the process to end on its own.
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("a running process");
        wait_until(limit, "the process to exit", || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        })
        .await
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the process has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (with a deadline) for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid();
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM could not be sent to {pid}");
        let mut child = self.child.take().expect("a running daemon");
        wait_until(Duration::from_secs(30), "docfetch to exit", || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        })
        .await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
