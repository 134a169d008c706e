//! An in-process daemon for fault tests: the simulator behind the fault
//! proxy, the real store, scheduler driver (`Scheduler::run`, so a stuck job
//! cannot hold up the others) and downloads, wired from a
//! [`DaemonConfig`] exactly as `docfetch run` wires them.

use std::sync::Arc;
use std::time::Duration;

use docfetch::config::{Environment, Settings};
use docfetch::job::Job;
use docfetch::job::request::RequestFormat;
use docfetch::providers::Providers;
use docfetch::scheduler::Scheduler;
use docfetch::sim::{Sim, SimConfig};
use docfetch::store::Store;
use tokio_util::sync::CancellationToken;

use crate::helpers::wait_until;
use crate::support::daemon::DaemonConfig;
use crate::support::proxy::Proxy;

pub struct Rig {
    pub sim: Sim,
    pub proxy: Proxy,
    pub config: DaemonConfig,
    pub settings: Arc<Settings>,
    pub store: Store,
    stop: CancellationToken,
    driver: Option<tokio::task::JoinHandle<()>>,
    // Last: the folder outlives everything that writes into it.
    _dir: tempfile::TempDir,
}

impl Rig {
    /// Starts the simulator behind a proxy, then the scheduler driver on a
    /// config `tune` may adjust (extra accounts, limits, output folder).
    pub async fn start(sim: SimConfig, tune: impl FnOnce(&mut DaemonConfig, &Sim)) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let sim = Sim::start_local(sim).await.unwrap();
        let proxy = Proxy::serve(listener, sim.addr);
        crate::crash::point_at(&sim, &origin);
        let mut config = DaemonConfig::new(dir.path(), sim.accounts_toml());
        tune(&mut config, &sim);
        config.write();
        let settings =
            Arc::new(Settings::from_toml(&config.render(), &Environment::default()).unwrap());
        let store = Store::open(&settings.store.url).await.unwrap();
        let http = docfetch::http::client(&settings.http).unwrap();
        let scheduler = Arc::new(Scheduler::new(
            store.clone(),
            Providers::from_settings(&settings),
            http,
            settings.clone(),
            docfetch::app::instance_id(),
        ));
        let stop = CancellationToken::new();
        let driver = tokio::spawn(scheduler.run(stop.clone(), None));
        Rig {
            sim,
            proxy,
            config,
            settings,
            store,
            stop,
            driver: Some(driver),
            _dir: dir,
        }
    }

    /// Submits a request (JSON) the way `docfetch submit` does.
    pub async fn submit(&self, request: serde_json::Value) -> Job {
        docfetch::inbox::accept(
            &self.store,
            &self.settings,
            &serde_json::to_vec(&request).unwrap(),
            RequestFormat::Json,
            None,
            "test",
        )
        .await
        .expect("request accepted")
    }

    pub async fn job(&self, name: &str) -> Job {
        self.store.find(name).await.unwrap().expect("job exists")
    }

    /// Waits (up to `limit`) for the job to finish.
    pub async fn finished(&self, name: &str, limit: Duration) -> Job {
        wait_until(limit, &format!("job {name} to finish"), || async {
            let job = self.store.find(name).await.ok().flatten()?;
            job.state.is_finished().then_some(job)
        })
        .await
    }

    /// The job's history as `kind: message` lines.
    pub async fn history(&self, name: &str) -> Vec<String> {
        let job = self.job(name).await;
        self.store
            .events(&job.id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| format!("{}: {}", e.kind, e.message))
            .collect()
    }

    /// Stops the driver, letting running steps end.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(driver) = self.driver.take() {
            let _ = driver.await;
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }
}
