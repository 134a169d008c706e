//! Settings: raw TOML and `DOCFETCH__SECTION__KEY` environment overrides,
//! turned once at start-up into a validated, typed [`Settings`].
//!
//! Every key has a default, so docfetch runs with no file at all. Errors name
//! the key and what was expected. Secrets (`password`, `password_file`,
//! `password_env`, …) are resolved here and wrapped in [`Secret`], whose
//! `Debug` and `Display` never show the value. Nothing else in the program
//! reads environment variables.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::http::HttpSettings;
use crate::job::RetryPolicy;
use crate::providers::AccountConfig;
use crate::schedule::spec::Schedule;
use crate::store::redact_store_url;

pub mod keys;
use crate::units::{parse_duration, parse_size};
use keys::is_loopback_name;
pub use keys::{
    AccountKeys, ConfigError, Environment, PLAIN_HTTP, Secret, SecretFrom, SecretOrigin,
    is_loopback,
};
mod api;
mod hooks;
mod raw;
#[cfg(test)]
mod tests;

use api::api_settings;
pub use api::{API_TOKEN_FILE, ApiAuth, ApiListen, ApiSettings};
pub use hooks::{HooksSettings, NamedHook};
use hooks::{hook_ref, hooks_settings};
use raw::*;

/// Where jobs are kept. `Debug` hides the database password.
#[derive(Clone)]
pub struct StoreSettings {
    /// `sqlite://path/to/file.db` (relative paths are relative to the working directory).
    pub url: String,
}

#[derive(Debug, Clone)]
pub struct PathSettings {
    /// The drop directory watched for request files.
    pub requests: PathBuf,
    /// Finished files go to `output/NAME/`.
    pub output: PathBuf,
    /// Files that requests may upload (Kontur.Extern) are read from here
    /// only; a request path that leaves it is refused.
    pub attachments: PathBuf,
    /// One schedule per `*.toml` file, re-read when the files change.
    pub schedules: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// Job steps run at once.
    pub workers: usize,
    /// First wait when a provider gives no hint.
    pub poll_initial: Duration,
    /// Longest wait between polls (and between retries after errors).
    pub poll_max: Duration,
    /// Consecutive transient errors before a job fails.
    pub max_attempts: u32,
    /// A job older than this fails as timed out.
    pub deadline: Duration,
    /// Largest file accepted from a provider.
    pub max_file_size: u64,
    /// How long a claimed job stays leased without renewal.
    pub lease: Duration,
    /// First wait after a transient error.
    pub retry_initial: Duration,
    /// How long running steps may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
}

impl SchedulerSettings {
    /// The backoff part of `[scheduler]`, for [`crate::job::retry`].
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            poll_initial: self.poll_initial,
            poll_max: self.poll_max,
            retry_initial: self.retry_initial,
            max_attempts: self.max_attempts,
        }
    }
}

#[derive(Debug, Clone)]
pub struct InboxSettings {
    /// How often the drop directory is scanned.
    pub scan_interval: Duration,
    /// A file changed more recently than this is left for the next scan.
    pub settle: Duration,
    /// Larger request files are rejected without being parsed.
    pub max_request_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    /// A tracing filter (`info`, `docfetch=debug,info`); `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

/// What retention prunes, by age since the job finished.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    pub done: Duration,
    /// Failed and cancelled jobs.
    pub failed: Duration,
    /// Also delete a pruned job's `output/NAME/` folder.
    pub delete_files: bool,
    /// Request files in `requests/accepted/` and `requests/rejected/` older than this are deleted.
    pub requests: Duration,
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &redact_store_url(&self.url))
            .finish()
    }
}

/// One configured provider account.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub config: AccountConfig,
    /// Completion hooks for every job of the account (a request's own win).
    pub hooks: crate::job::Hooks,
    /// Key for the `X-Docfetch-Signature` HMAC of webhook bodies.
    pub webhook_secret: Option<Secret>,
    /// Where each of the account's secrets was read from (never the value),
    /// for `docfetch accounts`.
    pub secret_origins: Vec<SecretOrigin>,
}

/// Requests are checked against the accounts, the hooks and the deadline
/// configured here ([`crate::intake::prepare`]).
impl crate::intake::Rules for Settings {
    type NamedHook = NamedHook;

    fn account(&self, name: &str) -> Option<&AccountConfig> {
        self.accounts.get(name).map(|account| &account.config)
    }

    fn account_names(&self) -> Vec<&str> {
        self.accounts.keys().map(String::as_str).collect()
    }

    fn allow_request_commands(&self) -> bool {
        self.hooks.allow_request_commands
    }

    fn named_hooks(&self) -> &BTreeMap<String, NamedHook> {
        &self.hooks.named
    }

    fn deadline(&self) -> Duration {
        self.scheduler.deadline
    }
}

impl crate::providers::Providers {
    /// The providers of every configured account. Written here, above both,
    /// so that `providers` needs only [`keys`] and never the settings.
    pub fn from_settings(settings: &Settings) -> crate::providers::Providers {
        crate::providers::Providers::from_accounts(
            settings
                .accounts
                .iter()
                .map(|(name, account)| (name.as_str(), &account.config)),
        )
    }
}

/// The validated settings, loaded once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreSettings,
    pub paths: PathSettings,
    pub scheduler: SchedulerSettings,
    pub inbox: InboxSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub api: ApiSettings,
    pub hooks: HooksSettings,
    pub retention: RetentionSettings,
    pub accounts: BTreeMap<String, Account>,
    /// `[[schedules]]` from the config file (the schedule files are read by
    /// [`crate::schedule::Schedules`]).
    pub schedules: Vec<Schedule>,
}

impl Settings {
    /// Loads the settings: defaults, then the TOML file (if any), then
    /// `DOCFETCH__SECTION__KEY` variables.
    pub fn load(path: Option<&Path>, env: &Environment) -> Result<Settings, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml(&text, env)
    }

    /// Parses settings from TOML text plus environment overrides.
    pub fn from_toml(text: &str, env: &Environment) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml));
        // Overrides: DOCFETCH__SCHEDULER__WORKERS=4 sets scheduler.workers.
        let overrides: std::collections::HashMap<String, String> = env
            .vars
            .iter()
            .filter(|(k, _)| k.starts_with("DOCFETCH__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("DOCFETCH")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let raw: RawSettings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        Self::validate(raw, env)
    }

    fn validate(raw: RawSettings, env: &Environment) -> Result<Settings, ConfigError> {
        let store_url = raw
            .store
            .url
            .unwrap_or_else(|| "sqlite://var/docfetch.db".into());
        if !(store_url.starts_with("sqlite:")
            || store_url.starts_with("postgres://")
            || store_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::invalid(
                "store.url",
                format!(
                    "expected a sqlite:// or postgres:// URL, found {:?}",
                    redact_store_url(&store_url)
                ),
            ));
        }
        let workers = raw.scheduler.workers.unwrap_or(32);
        if !(1..=1024).contains(&workers) {
            return Err(ConfigError::invalid(
                "scheduler.workers",
                format!("expected 1 to 1024, found {workers}"),
            ));
        }
        let max_attempts = raw.scheduler.max_attempts.unwrap_or(8);
        if !(1..=1000).contains(&max_attempts) {
            return Err(ConfigError::invalid(
                "scheduler.max_attempts",
                format!("expected 1 to 1000, found {max_attempts}"),
            ));
        }
        let scheduler = SchedulerSettings {
            workers: workers as usize,
            poll_initial: duration("scheduler.poll_initial", raw.scheduler.poll_initial, "2s")?,
            poll_max: duration("scheduler.poll_max", raw.scheduler.poll_max, "10m")?,
            max_attempts: max_attempts as u32,
            deadline: duration("scheduler.deadline", raw.scheduler.deadline, "48h")?,
            max_file_size: size(
                "scheduler.max_file_size",
                raw.scheduler.max_file_size,
                "4GiB",
            )?,
            lease: duration("scheduler.lease", raw.scheduler.lease, "60s")?,
            retry_initial: duration("scheduler.retry_initial", raw.scheduler.retry_initial, "5s")?,
            shutdown_grace: duration(
                "scheduler.shutdown_grace",
                raw.scheduler.shutdown_grace,
                "30s",
            )?,
        };
        if scheduler.poll_initial.is_zero() || scheduler.poll_initial > scheduler.poll_max {
            return Err(ConfigError::invalid(
                "scheduler.poll_initial",
                "must be above zero and not above scheduler.poll_max",
            ));
        }
        if scheduler.lease < Duration::from_secs(3) {
            return Err(ConfigError::invalid(
                "scheduler.lease",
                "must be at least 3s (it is renewed every third of its length)",
            ));
        }
        if scheduler.deadline.is_zero() {
            return Err(ConfigError::invalid(
                "scheduler.deadline",
                "must be above zero",
            ));
        }
        let inbox = InboxSettings {
            scan_interval: duration("inbox.scan_interval", raw.inbox.scan_interval, "1s")?,
            settle: duration("inbox.settle", raw.inbox.settle, "2s")?,
            max_request_size: size("inbox.max_request_size", raw.inbox.max_request_size, "1MiB")?,
        };
        if inbox.scan_interval < Duration::from_millis(10) {
            return Err(ConfigError::invalid(
                "inbox.scan_interval",
                "must be at least 10ms",
            ));
        }
        let http = HttpSettings {
            connect_timeout: duration("http.connect_timeout", raw.http.connect_timeout, "10s")?,
            timeout: duration("http.timeout", raw.http.timeout, "120s")?,
            user_agent: raw
                .http
                .user_agent
                .unwrap_or_else(|| format!("docfetch/{}", env!("CARGO_PKG_VERSION"))),
        };
        let format = match raw.log.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::invalid(
                    "log.format",
                    format!("expected \"text\" or \"json\", found {other:?}"),
                ));
            }
        };
        let log = LogSettings {
            level: raw.log.level.unwrap_or_else(|| "info".into()),
            format,
        };
        let api = api_settings(raw.api, &store_url, env)?;
        let hooks_settings = hooks_settings(raw.hooks, env)?;
        let retention = RetentionSettings {
            done: duration("retention.done", raw.retention.done, "30d")?,
            failed: duration("retention.failed", raw.retention.failed, "90d")?,
            delete_files: raw.retention.delete_files.unwrap_or(false),
            requests: duration("retention.requests", raw.retention.requests, "90d")?,
        };
        let mut accounts = BTreeMap::new();
        for (name, table) in raw.accounts {
            if !crate::job::is_valid_name(&name) {
                return Err(ConfigError::invalid(
                    format!("accounts.{name}"),
                    "account names use letters, digits, '.', '_' and '-' (at most 100)",
                ));
            }
            let mut keys = AccountKeys::new(&name, table, env);
            let hooks = crate::job::Hooks {
                on_done: hook_ref(&mut keys, "on_done")?,
                on_failed: hook_ref(&mut keys, "on_failed")?,
                on_done_url: keys.string("on_done_url")?,
            };
            hooks
                .validate(&format!("accounts.{name}."))
                .and_then(|()| {
                    hooks.check_names(&format!("accounts.{name}."), &hooks_settings.named)
                })
                .map_err(|message| match message.split_once(": ") {
                    Some((key, why)) => ConfigError::invalid(key, why),
                    None => ConfigError::invalid(format!("accounts.{name}"), message),
                })?;
            let webhook_secret = keys.secret("webhook_secret")?;
            let origins = keys.origins.clone();
            let config = AccountConfig::from_keys(keys)?;
            let secret_origins = origins.borrow().clone();
            accounts.insert(
                name.clone(),
                Account {
                    name,
                    config,
                    hooks,
                    webhook_secret,
                    secret_origins,
                },
            );
        }
        let mut settings = Settings {
            store: StoreSettings { url: store_url },
            paths: PathSettings {
                requests: raw.paths.requests.unwrap_or_else(|| "var/requests".into()),
                output: raw.paths.output.unwrap_or_else(|| "var/output".into()),
                attachments: raw
                    .paths
                    .attachments
                    .unwrap_or_else(|| "var/attachments".into()),
                schedules: raw
                    .paths
                    .schedules
                    .unwrap_or_else(|| "var/schedules.d".into()),
            },
            scheduler,
            inbox,
            http,
            log,
            api,
            hooks: hooks_settings,
            retention,
            accounts,
            schedules: Vec::new(),
        };
        let mut schedules: Vec<Schedule> = Vec::new();
        for (i, table) in raw.schedules.into_iter().enumerate() {
            let schedule =
                Schedule::from_table(table, &format!("[[schedules]] #{}", i + 1), None, &settings)
                    .map_err(|e| ConfigError::invalid("schedules", e.to_string()))?;
            if schedules.iter().any(|s| s.name == schedule.name) {
                return Err(ConfigError::invalid(
                    "schedules",
                    format!("two schedules are named {:?}", schedule.name),
                ));
            }
            schedules.push(schedule);
        }
        settings.schedules = schedules;
        Ok(settings)
    }
}

/// The state folder for files docfetch makes itself (the generated API
/// token): the SQLite store's folder, or `var` with PostgreSQL, which has
/// no folder of its own.
fn state_dir(store_url: &str) -> PathBuf {
    let sqlite_path = store_url
        .strip_prefix("sqlite://")
        .or_else(|| store_url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or(rest));
    match sqlite_path.map(Path::new).and_then(Path::parent) {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        Some(_) => PathBuf::from("."),
        None => PathBuf::from("var"),
    }
}

/// A warning for a PostgreSQL store reached over the network without
/// certificate checks: with any `sslmode` short of `verify-ca` or
/// `verify-full` (the default is `prefer`), whoever sits between the daemon
/// and the database can read and change the jobs, cursors included. `None`
/// for SQLite, a unix socket, loopback, or a verifying `sslmode`.
pub(crate) fn store_transport_warning(url: &str) -> Option<String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return None;
    }
    let parsed = url::Url::parse(url).ok()?;
    let query = |key: &str| {
        parsed
            .query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    // `?host=/run/postgresql` (or no host at all) is a unix socket.
    let host = query("host").or_else(|| parsed.host_str().map(str::to_string));
    let local = match host.as_deref() {
        None | Some("") => true,
        Some(path) if path.starts_with('/') => true,
        Some(name) => is_loopback_name(name),
    };
    let mode = query("sslmode").unwrap_or_else(|| "prefer".into());
    if local || matches!(mode.as_str(), "verify-full" | "verify-ca") {
        return None;
    }
    Some(format!(
        "store.url {} reaches PostgreSQL over the network with sslmode={mode}: the server's certificate is not checked, so anyone on the path can read and change the job store; add ?sslmode=verify-full (with sslrootcert=…) to the URL",
        redact_store_url(url)
    ))
}
