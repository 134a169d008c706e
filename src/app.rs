//! Wiring: the store, the providers, the scheduler, the drop directory and
//! housekeeping, run together until the shutdown token fires.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::inbox::Inbox;
use crate::job::now_ms;
use crate::providers::Providers;
use crate::scheduler::Scheduler;
use crate::store::redact_store_url;
use crate::store::sqlite::DaemonLock;
use crate::store::{Store, StoreError};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot prepare directory {path}: {source}")]
    Directory {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("cannot start housekeeping: {0}")]
    Housekeeping(String),
    #[error(transparent)]
    Listen(#[from] crate::api::ListenError),
    #[error("{0} (api.token_file)")]
    ApiToken(#[from] crate::api::token::TokenError),
}

/// A unique id for this daemon process, used as its lease owner.
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &nonce[..8])
}

/// Called once the daemon is ready: migrations applied and the first scan
/// of the drop directory done (systemd's `READY=1` hooks in here).
pub type ReadyHook = Box<dyn FnOnce() + Send>;

/// Runs the daemon until `shutdown` is cancelled, then drains and returns.
pub async fn run_until_stopped(
    settings: Arc<Settings>,
    shutdown: CancellationToken,
    ready: Option<ReadyHook>,
) -> Result<(), AppError> {
    if let Some(warning) = crate::config::store_transport_warning(&settings.store.url) {
        warn!("{warning}");
    }
    let store = Store::open(&settings.store.url).await?;
    // One daemon per SQLite store: with the lock held, every lease left in
    // the store belongs to a daemon that is gone, and is taken back at once.
    // PostgreSQL is shared by a fleet: only expired leases are taken back.
    let _lock = match &store {
        Store::Sqlite(s) => {
            let lock = DaemonLock::acquire(s.path())?;
            let released = store.release_leases(None, now_ms()).await?;
            if released > 0 {
                info!(
                    jobs = released,
                    "took back jobs left running by a previous instance"
                );
            }
            Some(lock)
        }
        Store::Postgres(_) => {
            let reclaimed = store.reclaim_expired(now_ms(), &[]).await?;
            if reclaimed > 0 {
                info!(jobs = reclaimed, "took back jobs whose lease expired");
            }
            None
        }
    };
    let http = crate::http::client(&settings.http)
        .map_err(|e| AppError::Http(crate::http::describe(&e)))?;
    let providers = Providers::from_settings(&settings);
    let owner = instance_id();
    let metrics = crate::metrics::install();
    crate::metrics::register(
        settings.scheduler.deadline,
        settings
            .accounts
            .iter()
            .map(|(name, account)| (name.as_str(), account.config.provider_name())),
    );
    let scheduler = Arc::new(Scheduler::new(
        store.clone(),
        providers.clone(),
        http.clone(),
        settings.clone(),
        owner.clone(),
    ));
    // Bind the API before announcing readiness: a taken port is a start-up
    // error. Its token is made (or read) first, so no call is ever served
    // without one.
    let api_token = if settings.api.listen == crate::config::ApiListen::Disabled {
        None
    } else {
        crate::api::token::resolve(&settings.api.auth)?
    };
    let api = crate::api::bind(&settings.api.listen).await?;

    let inbox = Inbox::new(store.clone(), settings.clone());
    inbox.prepare_dirs().map_err(|source| AppError::Directory {
        path: settings.paths.requests.clone(),
        source,
    })?;
    crate::beneath::ensure_dir(&settings.paths.schedules).map_err(|source| {
        AppError::Directory {
            path: settings.paths.schedules.clone(),
            source,
        }
    })?;
    // Durably: the folders of finished jobs hang from it.
    crate::beneath::ensure_dir_durable(&settings.paths.output).map_err(|source| {
        AppError::Directory {
            path: settings.paths.output.clone(),
            source,
        }
    })?;
    if matches!(store, Store::Sqlite(_)) {
        // The only daemon on this store: claims left in the drop directory
        // are a previous run's, interrupted mid-way.
        match inbox.put_back_all_claims().await {
            Ok(0) => {}
            Ok(n) => info!(
                files = n,
                "put back request files a previous run had claimed"
            ),
            Err(e) => {
                warn!(error = %e, "cannot look for left-over claims in the requests directory")
            }
        }
    }
    match inbox.scan_once().await {
        Ok(report) if !report.accepted.is_empty() || !report.rejected.is_empty() => {
            info!(
                accepted = report.accepted.len(),
                rejected = report.rejected.len(),
                "first scan of the requests directory"
            );
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot scan the requests directory"),
    }
    let housekeeping =
        start_housekeeping(store.clone(), settings.clone(), scheduler.in_flight()).await?;
    let hooks = crate::hooks::HookRunner::new(store.clone(), settings.clone(), http.clone());
    let schedules = crate::schedule::Schedules::load(store.clone(), settings.clone());
    let api_task = api.map(|bound| {
        info!(listen = %bound.describe(), "API listening");
        let state = Arc::new(crate::api::ApiState {
            store: store.clone(),
            settings: settings.clone(),
            providers,
            http,
            metrics,
            token: api_token,
        });
        tokio::spawn(crate::api::serve(bound, state, shutdown.clone()))
    });

    info!(
        store = %redact_store_url(&settings.store.url),
        requests = %settings.paths.requests.display(),
        output = %settings.paths.output.display(),
        accounts = settings.accounts.len(),
        workers = settings.scheduler.workers,
        instance = %owner,
        "docfetch is running"
    );
    if let Some(ready) = ready {
        ready();
    }
    systemd::notify_ready();
    let inbox_task = tokio::spawn(inbox.run(shutdown.clone()));
    let hooks_task = tokio::spawn(hooks.run(shutdown.clone()));
    let schedules_task = tokio::spawn(schedules.run(shutdown.clone()));
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        systemd::notify_stopping();
    });
    scheduler.run(shutdown.clone(), systemd::watchdog()).await;
    for (name, task) in [
        ("inbox", inbox_task),
        ("hooks", hooks_task),
        ("schedules", schedules_task),
    ] {
        if let Err(e) = task.await {
            error!(error = %e, "the {name} task failed");
        }
    }
    if let Some(task) = api_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "the API stopped with an error"),
            Err(e) => error!(error = %e, "the API task failed"),
        }
    }
    let mut housekeeping = housekeeping;
    if let Err(e) = housekeeping.shutdown().await {
        warn!(error = %e, "housekeeping did not stop cleanly");
    }
    if let Err(e) = store.close().await {
        warn!(error = %e, "the store did not close cleanly");
    }
    info!("docfetch stopped");
    Ok(())
}

/// systemd's notification protocol (`Type=notify`): `READY=1` once the store
/// is migrated and the first drop-directory scan is done, `STOPPING=1` on
/// shutdown, `WATCHDOG=1` from the scheduler loop when `WatchdogSec=` is set.
/// Without `NOTIFY_SOCKET` (not under systemd) every call does nothing.
mod systemd {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use sd_notify::NotifyState;

    pub fn notify_ready() {
        if let Err(e) = sd_notify::notify(&[NotifyState::Ready]) {
            tracing::warn!(error = %e, "cannot tell systemd that docfetch is ready");
        }
    }

    pub fn notify_stopping() {
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
    }

    /// A heartbeat for the scheduler loop when systemd's watchdog is on: it
    /// pings at most every half watchdog period.
    pub fn watchdog() -> Option<Arc<dyn Fn() + Send + Sync>> {
        let period = sd_notify::watchdog_enabled()?;
        let every = i64::try_from((period / 2).as_millis()).unwrap_or(i64::MAX);
        let last = AtomicI64::new(0);
        tracing::info!(period = ?period, "systemd watchdog enabled");
        Some(Arc::new(move || {
            let now = crate::job::now_ms();
            if now - last.load(Ordering::Relaxed) >= every {
                last.store(now, Ordering::Relaxed);
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
        }))
    }
}

/// Periodic chores through tokio-cron-scheduler: take back leases that
/// expired (a hung or dead holder; never those of the jobs this process is
/// still working on, see [`crate::scheduler::InFlight`]) and fold the job
/// counts, and prune old jobs hourly.
async fn start_housekeeping(
    store: Store,
    settings: Arc<Settings>,
    in_flight: crate::scheduler::InFlight,
) -> Result<tokio_cron_scheduler::JobScheduler, AppError> {
    use tokio_cron_scheduler::{Job, JobScheduler};
    let err = |e: tokio_cron_scheduler::JobSchedulerError| AppError::Housekeeping(e.to_string());
    let scheduler = JobScheduler::new().await.map_err(err)?;
    let period = (settings.scheduler.lease / 2).max(Duration::from_secs(1));
    let leases = store.clone();
    let job = Job::new_repeated_async(period, move |_id, _sched| {
        let store = leases.clone();
        let keep = in_flight.ids();
        Box::pin(async move {
            match store.reclaim_expired(now_ms(), &keep).await {
                Ok(0) => {}
                Ok(n) => warn!(jobs = n, "took back jobs whose lease expired"),
                Err(e) => warn!(error = %e, "housekeeping: cannot check leases"),
            }
            // Keeps the PostgreSQL counts' pending changes few, so reading
            // the counts stays cheap (nothing to do on SQLite).
            if let Err(e) = store.fold_counts().await {
                warn!(error = %e, "housekeeping: cannot fold the job counts");
            }
        })
    })
    .map_err(err)?;
    scheduler.add(job).await.map_err(err)?;
    // Minute 17 of every hour: not on the hour, when schedules fire.
    let retention = Job::new_async("0 17 * * * *", move |_id, _sched| {
        let store = store.clone();
        let settings = settings.clone();
        Box::pin(async move {
            if let Err(e) = crate::retention::prune_now(&store, &settings).await {
                warn!(error = %e, "retention: cannot prune old jobs");
            }
        })
    })
    .map_err(err)?;
    scheduler.add(retention).await.map_err(err)?;
    scheduler.start().await.map_err(err)?;
    Ok(scheduler)
}

/// Resolves when SIGTERM or SIGINT arrives. The handlers are installed when
/// this is called, not when the future is first polled, so a signal that
/// arrives while the daemon is still starting stops it cleanly instead of
/// killing it. Call it inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            },
            (Ok(mut term), Err(e)) => {
                error!(error = %e, "cannot listen for SIGINT; only SIGTERM stops docfetch");
                term.recv().await;
                info!("SIGTERM received");
            }
            (Err(e), Ok(mut int)) => {
                error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops docfetch");
                int.recv().await;
                info!("SIGINT received");
            }
            (Err(e), Err(_)) => {
                // Never resolve: resolving would stop the daemon at once.
                error!(error = %e, "cannot listen for SIGTERM or SIGINT; docfetch can only be killed");
                std::future::pending::<()>().await;
            }
        }
    }
}
