//! Recurring jobs: "yesterday's shift report at 06:00 Moscow time, every
//! day". Schedules come from `[[schedules]]` in the config and from one file
//! per schedule in `paths.schedules` (`*.toml`, re-read when they change).
//!
//! Each firing creates an ordinary job named `SCHEDULE-YYYYMMDD-HHMMSS`
//! (the scheduled local time), so a firing is never doubled: a restart or a
//! second daemon that fires the same occurrence hits the unique job name.
//! Templates in `params` and `name` are evaluated in the schedule's time
//! zone at the scheduled time. The last firing time is kept in the store;
//! occurrences missed while the daemon was down are handled by the
//! schedule's `catch_up` policy.
//!
//! Firing times are computed here with `croner` (the cron engine inside
//! tokio-cron-scheduler) rather than by registering cron jobs, because
//! catch-up and exactly-once need the store's record of the last firing,
//! and tests need to fire at chosen instants without a clock.

pub mod spec;
pub mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::spec::bad;
pub use self::spec::{CatchUp, GRACE, Schedule, ScheduleError};
use crate::config::Settings;
use crate::intake::{Trust, prepare};
use crate::job::Job;
use crate::store::{Store, StoreError};

/// Reads every `*.toml` in `dir` (sorted), one schedule per file.
pub fn load_dir(dir: &Path, settings: &Settings) -> (Vec<Schedule>, Vec<ScheduleError>) {
    let mut schedules = Vec::new();
    let mut errors = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (schedules, errors);
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    paths.sort();
    for path in paths {
        let source = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                errors.push(bad(&source, format!("cannot read: {e}")));
                continue;
            }
        };
        let table: toml::Table = match toml::from_str(&text) {
            Ok(table) => table,
            Err(e) => {
                errors.push(bad(&source, e.to_string().trim().to_string()));
                continue;
            }
        };
        match Schedule::from_table(table, &source, Some(&text), settings) {
            Ok(s) => schedules.push(s),
            Err(e) => errors.push(e),
        }
    }
    (schedules, errors)
}

/// A cheap fingerprint of the schedule files (names, sizes, times).
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    Some((e.path(), meta.len(), meta.modified().ok()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// What one firing did.
#[derive(Debug, Clone, PartialEq)]
pub enum Fired {
    Created(Box<Job>),
    /// This occurrence already has its job (fired before a restart, or by
    /// another daemon).
    AlreadyThere(String),
}

/// Keeps the schedules and fires them.
pub struct Schedules {
    store: Store,
    settings: Arc<Settings>,
    current: RwLock<Vec<Schedule>>,
}

impl Schedules {
    /// Loads the config's schedules and the schedule files. Errors in the
    /// config's own schedules were already refused by [`Settings`]; a bad
    /// file is logged and skipped.
    pub fn load(store: Store, settings: Arc<Settings>) -> Schedules {
        let schedules = Schedules {
            store,
            settings,
            current: RwLock::new(Vec::new()),
        };
        let loaded = schedules.read_all();
        schedules.current.try_write().map(|mut c| *c = loaded).ok();
        schedules
    }

    fn read_all(&self) -> Vec<Schedule> {
        let mut all: Vec<Schedule> = self.settings.schedules.clone();
        let (from_files, errors) = load_dir(&self.settings.paths.schedules, &self.settings);
        for e in errors {
            error!(error = %e, "schedule file not loaded");
        }
        for s in from_files {
            if all.iter().any(|existing| existing.name == s.name) {
                error!(schedule = %s.name, source = %s.source, "a schedule with this name exists already; this one is ignored");
            } else {
                all.push(s);
            }
        }
        all
    }

    /// The schedules as loaded now.
    pub async fn list(&self) -> Vec<Schedule> {
        self.current.read().await.clone()
    }

    /// Creates the job of one occurrence (idempotent: a second call finds it).
    pub async fn fire(&self, schedule: &Schedule, at: DateTime<Tz>) -> Result<Fired, StoreError> {
        let request = schedule.request_at(at);
        let source = format!("schedule:{}", schedule.name);
        let new = match prepare(
            request,
            None,
            self.settings.as_ref(),
            Trust::Operator,
            &source,
            String::new(),
            crate::job::now_ms(),
        ) {
            Ok(new) => new,
            Err(e) => {
                // The schedule validated at load; the account may have gone since.
                error!(schedule = %schedule.name, error = %e, "a firing produced an invalid request; skipped");
                return Ok(Fired::AlreadyThere(String::new()));
            }
        };
        let fired = match self.store.insert(&new).await {
            Ok(job) => {
                info!(schedule = %schedule.name, job = %job.name, at = %at, "schedule fired");
                Fired::Created(Box::new(job))
            }
            Err(StoreError::Duplicate { name, .. }) => Fired::AlreadyThere(name),
            Err(e) => return Err(e),
        };
        let job = match &fired {
            Fired::Created(job) => job.name.as_str(),
            Fired::AlreadyThere(name) => name.as_str(),
        };
        // Only shown on the dashboard: the firing stands without it.
        if let Err(e) = self
            .store
            .note_schedule_job(&schedule.name, job, at.timestamp_millis())
            .await
        {
            warn!(schedule = %schedule.name, error = %e, "cannot record the job of the schedule's firing");
        }
        Ok(fired)
    }

    /// Fires every occurrence due at `now` (the testable step).
    pub async fn fire_due(&self, now: DateTime<Utc>) -> Result<Vec<Fired>, StoreError> {
        let mut fired = Vec::new();
        for schedule in self.list().await.iter().filter(|s| s.enabled) {
            let now_ms = now.timestamp_millis();
            let Some(last) = self.store.last_fire(&schedule.name).await? else {
                // A new schedule starts from now: it has missed nothing yet.
                self.store.set_last_fire(&schedule.name, now_ms).await?;
                continue;
            };
            let last = Utc.timestamp_millis_opt(last).single().unwrap_or(now);
            for at in schedule.due(last, now) {
                fired.push(self.fire(schedule, at).await?);
            }
            // Everything up to now has been considered, fired or skipped.
            self.store.set_last_fire(&schedule.name, now_ms).await?;
        }
        Ok(fired)
    }

    /// The next firing of each enabled schedule after `now`.
    pub async fn next_firings(&self, now: DateTime<Utc>) -> BTreeMap<String, DateTime<Tz>> {
        self.list()
            .await
            .iter()
            .filter(|s| s.enabled)
            .filter_map(|s| s.next_after(now).map(|t| (s.name.clone(), t)))
            .collect()
    }

    /// The driver: fires due occurrences, sleeps until the next one, and
    /// re-reads the schedule files when they change.
    pub async fn run(self, shutdown: CancellationToken) {
        let dir = self.settings.paths.schedules.clone();
        let mut seen = fingerprint(&dir);
        loop {
            if let Err(e) = self.fire_due(Utc::now()).await {
                warn!(error = %e, "cannot fire schedules; will try again");
            }
            let now = Utc::now();
            let next = self
                .next_firings(now)
                .await
                .values()
                .map(|t| t.with_timezone(&Utc))
                .min();
            // Wake for the next firing, or every few seconds to notice edits.
            let sleep = next
                .and_then(|t| (t - now).to_std().ok())
                .unwrap_or(Duration::from_secs(5))
                .min(Duration::from_secs(5));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(sleep) => {}
            }
            let current = fingerprint(&dir);
            if current != seen {
                seen = current;
                let loaded = self.read_all();
                info!(schedules = loaded.len(), "schedule files changed; reloaded");
                *self.current.write().await = loaded;
            }
        }
    }
}
