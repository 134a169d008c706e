//! Test harness: each test gets its own temporary folder, SQLite file and
//! simulator on a free loopback port, wired exactly as `docfetch run` wires
//! them, with short poll times so jobs finish in milliseconds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use docfetch::config::{Environment, Settings};
use docfetch::inbox::{self, Inbox};
use docfetch::job::Job;
use docfetch::job::request::RequestFormat;
use docfetch::providers::Providers;
use docfetch::scheduler::Scheduler;
use docfetch::sim::{Sim, SimConfig};
use docfetch::store::Store;

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub sim: Sim,
    pub settings: Arc<Settings>,
    pub store: Store,
    pub scheduler: Arc<Scheduler>,
    pub inbox: Inbox,
}

/// Polls `check` until it returns `Some`, failing the test after `limit`.
pub async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(SimConfig::default(), "", &[]).await
    }

    /// `extra` is TOML added to the config (new tables such as another
    /// account; `{dir}` is the test's folder); `overrides` are
    /// `DOCFETCH__…` variables, applied on top.
    pub async fn spawn_with(sim: SimConfig, extra: &str, overrides: &[(&str, &str)]) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let sim = Sim::start_local(sim).await.expect("simulator");
        let toml = config_toml(dir.path(), &sim, extra);
        let env = Environment {
            vars: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let settings = Arc::new(Settings::from_toml(&toml, &env).expect("settings"));
        let (store, scheduler, inbox) = wire(&settings).await;
        TestApp {
            dir,
            sim,
            settings,
            store,
            scheduler,
            inbox,
        }
    }

    /// The config this app runs with, for starting the real binary on it.
    pub fn config_toml(&self) -> String {
        config_toml(self.dir.path(), &self.sim, "")
    }

    /// Simulates a restart: a new store handle, scheduler and instance id;
    /// jobs left running by the previous instance are taken back.
    pub async fn restart(&mut self) {
        let (store, scheduler, inbox) = wire(&self.settings).await;
        store
            .release_leases(None, docfetch::job::now_ms())
            .await
            .expect("release leases");
        self.store = store;
        self.scheduler = scheduler;
        self.inbox = inbox;
    }

    pub fn requests(&self) -> PathBuf {
        self.settings.paths.requests.clone()
    }

    pub fn output(&self, name: &str) -> PathBuf {
        self.settings.paths.output.join(name)
    }

    pub fn receipt(&self, name: &str) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.output(name).join("job.json")).expect("job.json exists");
        serde_json::from_str(&text).expect("job.json is JSON")
    }

    /// Submits a request (JSON) the way `docfetch submit` does.
    pub async fn submit(&self, request: serde_json::Value) -> Job {
        let bytes = serde_json::to_vec(&request).expect("json");
        inbox::accept(
            &self.store,
            &self.settings,
            &bytes,
            RequestFormat::Json,
            None,
            "test",
        )
        .await
        .expect("request accepted")
    }

    pub async fn job(&self, name: &str) -> Job {
        self.store
            .find(name)
            .await
            .expect("store")
            .expect("job exists")
    }

    /// Runs scheduler steps until the job is finished (done, failed or
    /// cancelled), waiting for due times in between.
    pub async fn run_until_finished(&self, name: &str) -> Job {
        wait_until(
            Duration::from_secs(30),
            &format!("job {name} to finish"),
            || async {
                self.scheduler.step().await.expect("scheduler step");
                let job = self.job(name).await;
                job.state.is_finished().then_some(job)
            },
        )
        .await
    }

    /// Runs exactly one scheduler pass once the job is due, returning it after.
    pub async fn step_once(&self, name: &str) -> Job {
        wait_until(
            Duration::from_secs(10),
            &format!("job {name} to be due"),
            || async {
                let job = self.job(name).await;
                (job.next_run_at <= docfetch::job::now_ms()).then_some(())
            },
        )
        .await;
        self.scheduler.step().await.expect("scheduler step");
        self.job(name).await
    }
}

async fn wire(settings: &Arc<Settings>) -> (Store, Arc<Scheduler>, Inbox) {
    let store = Store::open(&settings.store.url).await.expect("store opens");
    let http = docfetch::http::client(&settings.http).expect("http client");
    let scheduler = Arc::new(Scheduler::new(
        store.clone(),
        Providers::from_settings(settings),
        http,
        settings.clone(),
        docfetch::app::instance_id(),
    ));
    let inbox = Inbox::new(store.clone(), settings.clone());
    inbox.prepare_dirs().expect("request dirs");
    (store, scheduler, inbox)
}

fn config_toml(dir: &std::path::Path, sim: &Sim, extra: &str) -> String {
    format!(
        r#"[store]
url = "sqlite://{dir}/docfetch.db"
[paths]
requests = "{dir}/requests"
output = "{dir}/output"
attachments = "{dir}/attachments"
schedules = "{dir}/schedules.d"
[scheduler]
workers = 8
poll_initial = "20ms"
poll_max = "200ms"
retry_initial = "20ms"
max_attempts = 4
lease = "3s"
shutdown_grace = "5s"
[inbox]
scan_interval = "50ms"
settle = "0s"
[http]
timeout = "5s"
[api]
listen = "127.0.0.1:0"

{accounts}
{extra}"#,
        dir = dir.display(),
        accounts = sim.accounts_toml(),
        extra = extra
            .replace("{dir}", &dir.display().to_string())
            .replace("{fresh_base}", &sim.fresh.base_url())
            .replace("{atol_base}", &sim.atol.base_url())
            .replace("{ofd_base}", &sim.ofd.base_url())
    )
}
