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
    pub fn retry_policy(&self) -> RetryPolicy {
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

/// How completion hooks run, and the hooks the operator defined.
#[derive(Debug, Clone)]
pub struct HooksSettings {
    /// A hook still running after this is killed (and counts as failed).
    pub timeout: Duration,
    /// Runs of a failing hook before it is given up (the job's outcome never changes).
    pub max_attempts: u32,
    /// First wait before running a failed hook again; doubles each time.
    pub retry_initial: Duration,
    /// `hooks.allow_request_commands`: requests may carry their own argv and
    /// webhook URL. Off by default: it hands command execution to whoever
    /// can submit a request.
    pub allow_request_commands: bool,
    /// `[hooks.NAME]` tables: the only commands and URLs a request can ask for, by name.
    pub named: BTreeMap<String, NamedHook>,
}

/// One `[hooks.NAME]`: a command, a webhook, or both, run in that order.
#[derive(Debug, Clone)]
pub struct NamedHook {
    /// An argv list run without a shell (the receipt's path is appended).
    pub command: Option<Vec<String>>,
    /// A URL that receives `job.json` by POST, signed with `secret`.
    pub url: Option<String>,
    /// The webhook's HMAC key (required with `url`).
    pub secret: Option<Secret>,
    /// Overrides `hooks.timeout` for this hook.
    pub timeout: Option<Duration>,
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

/// Where the local HTTP API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiListen {
    /// `api.listen = ""`: no API.
    Disabled,
    Tcp(std::net::SocketAddr),
    /// `api.listen = "/run/docfetch/api.sock"` (or `unix:/…`).
    Unix(PathBuf),
}

impl fmt::Display for ApiListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiListen::Disabled => f.write_str("off"),
            ApiListen::Tcp(addr) => write!(f, "{addr}"),
            ApiListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ApiListen {
    /// Whether only this machine can reach the listener: a loopback
    /// address or a unix socket (`/metrics` is open there).
    pub fn is_local(&self) -> bool {
        match self {
            ApiListen::Disabled | ApiListen::Unix(_) => true,
            ApiListen::Tcp(addr) => addr.ip().is_loopback(),
        }
    }
}

/// The credential the API asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAuth {
    /// `api.auth = "none"`: no credential. Allowed on a unix socket only,
    /// whose file mode (0660) decides who may connect.
    None,
    /// `api.token_file`: a token the operator made, read at start-up.
    Token { path: PathBuf, token: Secret },
    /// No `api.token_file`: docfetch makes a random token in this file at
    /// first start (mode 0600) and reuses it afterwards.
    Generated(PathBuf),
}

impl ApiAuth {
    /// Where the token is kept (none for `api.auth = "none"`).
    pub fn token_path(&self) -> Option<&Path> {
        match self {
            ApiAuth::None => None,
            ApiAuth::Token { path, .. } | ApiAuth::Generated(path) => Some(path),
        }
    }
}

/// The generated token's file name, in the state folder.
pub const API_TOKEN_FILE: &str = "api-token";

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: ApiListen,
    /// Every `/api/*` call needs `Authorization: Bearer TOKEN` unless this
    /// is [`ApiAuth::None`].
    pub auth: ApiAuth,
    /// `/metrics` without the token on a listener other machines can reach.
    pub metrics_public: bool,
    /// Host names (besides loopback names and the listener's address) that
    /// the `Host` header may carry: `NAME` (any port) or `NAME:PORT`.
    pub allowed_hosts: Vec<String>,
    /// A request head must be complete this long after the connection
    /// opened or the previous answer was sent (also closes idle kept-alive
    /// connections).
    pub header_timeout: Duration,
    /// A request body must be complete this long after its head.
    pub body_timeout: Duration,
    /// A client that takes no bytes of an answer for this long is cut off.
    pub send_timeout: Duration,
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

// ---------------------------------------------------------------------------
// Raw, as deserialized. `deny_unknown_fields` turns typos into errors.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    scheduler: RawScheduler,
    #[serde(default)]
    inbox: RawInbox,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    api: RawApi,
    /// `timeout`, `max_attempts`, … and one `[hooks.NAME]` table per
    /// named hook, read key by key.
    #[serde(default)]
    hooks: BTreeMap<String, toml::Value>,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    accounts: BTreeMap<String, BTreeMap<String, toml::Value>>,
    #[serde(default)]
    schedules: Vec<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    requests: Option<PathBuf>,
    output: Option<PathBuf>,
    attachments: Option<PathBuf>,
    schedules: Option<PathBuf>,
}

/// A list of names, written as a TOML list or (from an environment
/// variable) as one string separated by commas.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Names {
    List(Vec<String>),
    Text(String),
}

impl Names {
    fn into_vec(self) -> Vec<String> {
        match self {
            Names::List(names) => names,
            Names::Text(text) => text
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

/// A duration or size written either as text (`"2s"`) or as a bare number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Number(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduler {
    workers: Option<u64>,
    poll_initial: Option<Quantity>,
    poll_max: Option<Quantity>,
    max_attempts: Option<u64>,
    deadline: Option<Quantity>,
    max_file_size: Option<Quantity>,
    lease: Option<Quantity>,
    retry_initial: Option<Quantity>,
    shutdown_grace: Option<Quantity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbox {
    scan_interval: Option<Quantity>,
    settle: Option<Quantity>,
    max_request_size: Option<Quantity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    connect_timeout: Option<Quantity>,
    timeout: Option<Quantity>,
    user_agent: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    done: Option<Quantity>,
    failed: Option<Quantity>,
    delete_files: Option<bool>,
    requests: Option<Quantity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<String>,
    auth: Option<String>,
    token_file: Option<PathBuf>,
    metrics_public: Option<bool>,
    allowed_hosts: Option<Names>,
    header_timeout: Option<Quantity>,
    body_timeout: Option<Quantity>,
    send_timeout: Option<Quantity>,
}

fn duration(key: &str, value: Option<Quantity>, default: &str) -> Result<Duration, ConfigError> {
    let parsed = match value {
        None => parse_duration(default),
        Some(Quantity::Number(secs)) => Ok(Duration::from_secs(secs)),
        Some(Quantity::Text(text)) => parse_duration(&text),
    };
    parsed.map_err(|message| ConfigError::invalid(key, message))
}

fn size(key: &str, value: Option<Quantity>, default: &str) -> Result<u64, ConfigError> {
    let parsed = match value {
        None => parse_size(default),
        Some(Quantity::Number(bytes)) => Ok(bytes),
        Some(Quantity::Text(text)) => parse_size(&text),
    };
    parsed.map_err(|message| ConfigError::invalid(key, message))
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

fn api_settings(
    raw: RawApi,
    store_url: &str,
    env: &Environment,
) -> Result<ApiSettings, ConfigError> {
    let text = raw.listen.unwrap_or_else(|| "127.0.0.1:8750".into());
    let text = text.trim();
    let listen = if text.is_empty() {
        ApiListen::Disabled
    } else if let Some(path) = text.strip_prefix("unix:") {
        ApiListen::Unix(PathBuf::from(path))
    } else if text.starts_with('/') || text.starts_with('.') {
        ApiListen::Unix(PathBuf::from(text))
    } else {
        ApiListen::Tcp(text.parse().map_err(|_| {
            ConfigError::invalid(
                "api.listen",
                format!("expected HOST:PORT (such as \"127.0.0.1:8750\"), a unix socket path, or \"\" to disable; found {text:?}"),
            )
        })?)
    };
    let auth = match raw.auth.as_deref().map(str::trim) {
        None | Some("token") => match raw.token_file {
            None => ApiAuth::Generated(state_dir(store_url).join(API_TOKEN_FILE)),
            Some(file) => {
                let mut path = file.clone();
                if path.is_relative()
                    && let Some(dir) = env.get("CREDENTIALS_DIRECTORY")
                {
                    path = Path::new(dir).join(path);
                }
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::invalid(
                        "api.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let token = text.trim().to_string();
                if token.len() < 16 {
                    return Err(ConfigError::invalid(
                        "api.token_file",
                        "the token must be at least 16 characters (use a long random string, such as `openssl rand -hex 32`)",
                    ));
                }
                ApiAuth::Token {
                    path,
                    token: Secret::new(token),
                }
            }
        },
        Some("none") => {
            if !matches!(listen, ApiListen::Unix(_) | ApiListen::Disabled) {
                return Err(ConfigError::invalid(
                    "api.auth",
                    "\"none\" is allowed only when api.listen is a unix socket (whose mode 0660 decides who may connect); over TCP any local user and any web page in a browser could reach the API",
                ));
            }
            if raw.token_file.is_some() {
                return Err(ConfigError::invalid(
                    "api.auth",
                    "\"none\" asks for no token, but api.token_file names one; remove one of the two",
                ));
            }
            ApiAuth::None
        }
        Some(other) => {
            return Err(ConfigError::invalid(
                "api.auth",
                format!("expected \"token\" (the default) or \"none\", found {other:?}"),
            ));
        }
    };
    let mut allowed_hosts = Vec::new();
    for host in raw.allowed_hosts.map(Names::into_vec).unwrap_or_default() {
        let host = host.trim().to_ascii_lowercase();
        let valid = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !valid {
            return Err(ConfigError::invalid(
                "api.allowed_hosts",
                format!(
                    "expected host names such as \"docfetch.internal\" or \"docfetch.internal:8443\", found {host:?}"
                ),
            ));
        }
        allowed_hosts.push(host);
    }
    let timeout = |key: &str, value, default| {
        let d = duration(&format!("api.{key}"), value, default)?;
        if d.is_zero() {
            return Err(ConfigError::invalid(
                format!("api.{key}"),
                "must be above zero (a slow client would otherwise hold a connection forever)",
            ));
        }
        Ok(d)
    };
    Ok(ApiSettings {
        listen,
        auth,
        metrics_public: raw.metrics_public.unwrap_or(false),
        allowed_hosts,
        header_timeout: timeout("header_timeout", raw.header_timeout, "10s")?,
        body_timeout: timeout("body_timeout", raw.body_timeout, "30s")?,
        send_timeout: timeout("send_timeout", raw.send_timeout, "60s")?,
    })
}

/// Keys of `[hooks]` that are settings, not hook names.
const HOOKS_KEYS: [&str; 4] = [
    "timeout",
    "max_attempts",
    "retry_initial",
    "allow_request_commands",
];

fn hooks_settings(
    mut raw: BTreeMap<String, toml::Value>,
    env: &Environment,
) -> Result<HooksSettings, ConfigError> {
    // Environment overrides arrive as strings; numbers may be written either way.
    let quantity =
        |key: &str, value: Option<toml::Value>| -> Result<Option<Quantity>, ConfigError> {
            match value {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(Quantity::Text(s))),
                Some(toml::Value::Integer(i)) if i >= 0 => Ok(Some(Quantity::Number(i as u64))),
                Some(other) => Err(ConfigError::invalid(
                    format!("hooks.{key}"),
                    format!("expected a duration such as \"60s\", found {other}"),
                )),
            }
        };
    let timeout = duration(
        "hooks.timeout",
        quantity("timeout", raw.remove("timeout"))?,
        "60s",
    )?;
    let retry_initial = duration(
        "hooks.retry_initial",
        quantity("retry_initial", raw.remove("retry_initial"))?,
        "10s",
    )?;
    let max_attempts = match raw.remove("max_attempts") {
        None => 5,
        Some(toml::Value::Integer(n)) if (1..=100).contains(&n) => n as u32,
        Some(toml::Value::String(s))
            if s.trim()
                .parse::<u32>()
                .is_ok_and(|n| (1..=100).contains(&n)) =>
        {
            s.trim().parse().unwrap_or(5)
        }
        Some(other) => {
            return Err(ConfigError::invalid(
                "hooks.max_attempts",
                format!("expected 1 to 100, found {other}"),
            ));
        }
    };
    let allow_request_commands = match raw.remove("allow_request_commands") {
        None => false,
        Some(toml::Value::Boolean(b)) => b,
        Some(toml::Value::String(s)) if s == "true" || s == "false" => s == "true",
        Some(other) => {
            return Err(ConfigError::invalid(
                "hooks.allow_request_commands",
                format!("expected true or false, found {other}"),
            ));
        }
    };
    let mut named = BTreeMap::new();
    for (name, value) in raw {
        let toml::Value::Table(table) = value else {
            return Err(ConfigError::invalid(
                format!("hooks.{name}"),
                format!(
                    "unknown key; [hooks] takes {} and one [hooks.NAME] table per hook",
                    HOOKS_KEYS.join(", ")
                ),
            ));
        };
        if !crate::job::is_valid_name(&name) {
            return Err(ConfigError::invalid(
                format!("hooks.{name}"),
                "hook names use letters, digits, '.', '_' and '-' (at most 100)",
            ));
        }
        let mut keys = AccountKeys::section(
            &format!("hooks.{name}"),
            &name,
            table.into_iter().collect(),
            env,
        );
        let command = keys.string_list("command")?;
        let url = keys.string("url")?;
        let secret = keys.secret("secret")?;
        let hook_timeout = match keys.string("timeout")? {
            None => None,
            Some(text) => Some(parse_duration(&text).map_err(|message| {
                ConfigError::invalid(format!("hooks.{name}.timeout"), message)
            })?),
        };
        keys.finish()?;
        if command.is_none() && url.is_none() {
            return Err(ConfigError::invalid(
                format!("hooks.{name}"),
                "give `command` (an argv list such as [\"/usr/local/bin/import-usn\"]), `url` (a webhook), or both",
            ));
        }
        if url.is_some() && secret.is_none() {
            return Err(ConfigError::invalid(
                format!("hooks.{name}.secret"),
                "a webhook needs a secret (`secret`, `secret_file` or `secret_env`) so its receiver can tell docfetch's calls from anyone else's",
            ));
        }
        if url.is_none() && secret.is_some() {
            return Err(ConfigError::invalid(
                format!("hooks.{name}.secret"),
                "signs a webhook, but the hook has no `url`",
            ));
        }
        let check = crate::job::Hooks {
            on_done: command.clone().map(crate::job::HookRef::Command),
            on_failed: None,
            on_done_url: url.clone(),
        };
        check.validate("").map_err(|message| {
            let (key, why) = message.split_once(": ").unwrap_or(("", message.as_str()));
            let key = match key {
                "on_done" => "command",
                "on_done_url" => "url",
                other => other,
            };
            ConfigError::invalid(format!("hooks.{name}.{key}"), why)
        })?;
        named.insert(
            name,
            NamedHook {
                command,
                url,
                secret,
                timeout: hook_timeout,
            },
        );
    }
    Ok(HooksSettings {
        timeout,
        max_attempts,
        retry_initial,
        allow_request_commands,
        named,
    })
}

/// A warning for a PostgreSQL store reached over the network without
/// certificate checks: with any `sslmode` short of `verify-ca` or
/// `verify-full` (the default is `prefer`), whoever sits between the daemon
/// and the database can read and change the jobs, cursors included. `None`
/// for SQLite, a unix socket, loopback, or a verifying `sslmode`.
pub fn store_transport_warning(url: &str) -> Option<String> {
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

/// A completion hook: the name of a `[hooks.NAME]` (a string) or a
/// command (an argv list).
fn hook_ref(
    keys: &mut AccountKeys<'_>,
    key: &str,
) -> Result<Option<crate::job::HookRef>, ConfigError> {
    match keys.peek(key) {
        Some(toml::Value::String(_)) => Ok(keys.string(key)?.map(crate::job::HookRef::Named)),
        Some(toml::Value::Array(_)) => Ok(keys.string_list(key)?.map(crate::job::HookRef::Command)),
        None => Ok(None),
        Some(other) => Err(ConfigError::invalid(
            keys.key(key),
            format!(
                "expected the name of a [hooks.NAME] table or a command such as [\"/usr/local/bin/import\"], found {}",
                other.type_str()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Environment {
        Environment {
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn docfetch_runs_with_no_config_file_at_all() {
        let s = Settings::from_toml("", &Environment::default()).unwrap();
        assert_eq!(s.store.url, "sqlite://var/docfetch.db");
        assert_eq!(s.paths.requests, PathBuf::from("var/requests"));
        assert_eq!(s.scheduler.workers, 32);
        assert_eq!(s.scheduler.poll_initial, Duration::from_secs(2));
        assert_eq!(s.scheduler.poll_max, Duration::from_secs(600));
        assert_eq!(s.scheduler.max_attempts, 8);
        assert_eq!(s.scheduler.deadline, Duration::from_secs(48 * 3600));
        assert_eq!(s.scheduler.max_file_size, 4 << 30);
        assert!(s.accounts.is_empty());
    }

    #[test]
    fn environment_overrides_the_file() {
        let s = Settings::from_toml(
            "[scheduler]\nworkers = 4\n",
            &env(&[
                ("DOCFETCH__SCHEDULER__WORKERS", "7"),
                ("DOCFETCH__PATHS__OUTPUT", "/srv/out"),
                ("DOCFETCH_CONFIG", "/etc/docfetch.toml"),
            ]),
        )
        .unwrap();
        assert_eq!(s.scheduler.workers, 7);
        assert_eq!(s.paths.output, PathBuf::from("/srv/out"));
    }

    #[test]
    fn a_typo_is_an_error_that_names_the_key() {
        let err = Settings::from_toml("[scheduler]\nworkrs = 4\n", &Environment::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("workrs"), "{err}");
        let err = Settings::from_toml("[scheduler]\npoll_max = \"ten\"\n", &Environment::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheduler.poll_max"), "{err}");
    }

    #[test]
    fn secrets_come_from_the_file_a_secret_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fresh"), "s3cret-from-file\n").unwrap();
        let base = "[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/a/hs/dt/storage\"\nusername = \"api\"\n";
        let from_file = format!("{base}password_file = \"fresh\"\n");
        let s = Settings::from_toml(
            &from_file,
            &env(&[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]),
        )
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cret"), "Debug leaks the secret: {debug}");
        let crate::providers::AccountConfig::Fresh(fresh) = &s.accounts["a"].config else {
            panic!("a 1c-fresh account")
        };
        assert_eq!(fresh.password.expose(), "s3cret-from-file");

        let from_env = format!("{base}password_env = \"FRESH_PW\"\n");
        let s = Settings::from_toml(&from_env, &env(&[("FRESH_PW", "pw-from-env")])).unwrap();
        let crate::providers::AccountConfig::Fresh(fresh) = &s.accounts["a"].config else {
            panic!("a 1c-fresh account")
        };
        assert_eq!(fresh.password.expose(), "pw-from-env");

        let err = Settings::from_toml(&from_env, &Environment::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("FRESH_PW"), "{err}");

        let both = format!("{base}password = \"x\"\npassword_env = \"FRESH_PW\"\n");
        assert!(Settings::from_toml(&both, &Environment::default()).is_err());
    }

    #[test]
    fn unknown_provider_and_unknown_account_keys_are_rejected() {
        let err = Settings::from_toml(
            "[accounts.a]\nprovider = \"nope\"\n",
            &Environment::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("accounts.a.provider"), "{err}");
        let err = Settings::from_toml(
            "[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/x\"\nusername = \"u\"\npassword = \"p\"\ncolour = \"red\"\n",
            &Environment::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("accounts.a.colour"), "{err}");
    }

    #[test]
    fn the_api_listens_on_loopback_by_default_with_a_token_made_beside_the_store() {
        let s = Settings::from_toml("", &Environment::default()).unwrap();
        assert_eq!(
            s.api.listen,
            ApiListen::Tcp("127.0.0.1:8750".parse().unwrap())
        );
        assert_eq!(s.api.auth, ApiAuth::Generated("var/api-token".into()));
        assert!(!s.api.metrics_public);
        assert_eq!(s.api.header_timeout, Duration::from_secs(10));
        let s = Settings::from_toml(
            "[store]\nurl = \"sqlite:///srv/docfetch/jobs.db?mode=rwc\"\n",
            &Environment::default(),
        )
        .unwrap();
        assert_eq!(
            s.api.auth,
            ApiAuth::Generated("/srv/docfetch/api-token".into())
        );
        let s = Settings::from_toml(
            "[store]\nurl = \"postgres://u:pw@db/docfetch\"\n",
            &Environment::default(),
        )
        .unwrap();
        assert_eq!(s.api.auth, ApiAuth::Generated("var/api-token".into()));
        let s = Settings::from_toml("[api]\nlisten = \"\"\n", &Environment::default()).unwrap();
        assert_eq!(s.api.listen, ApiListen::Disabled);
        let s = Settings::from_toml(
            "[api]\nlisten = \"0.0.0.0:8750\"\n",
            &Environment::default(),
        )
        .unwrap();
        assert!(
            matches!(s.api.auth, ApiAuth::Generated(_)),
            "the network gets the token too"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api-token"), "0123456789abcdef0123\n").unwrap();
        let text = format!(
            "[api]\nlisten = \"0.0.0.0:8750\"\ntoken_file = \"{}\"\n",
            dir.path().join("api-token").display()
        );
        let s = Settings::from_toml(&text, &Environment::default()).unwrap();
        let ApiAuth::Token { token, .. } = s.api.auth else {
            panic!("the configured token is used")
        };
        assert_eq!(token.expose(), "0123456789abcdef0123");
        assert!(
            Settings::from_toml("[api]\nlisten = \"nonsense\"\n", &Environment::default()).is_err()
        );
        let s = Settings::from_toml(
            "",
            &env(&[(
                "DOCFETCH__API__ALLOWED_HOSTS",
                "docfetch.internal, Proxy.example:443",
            )]),
        )
        .unwrap();
        assert_eq!(
            s.api.allowed_hosts,
            ["docfetch.internal", "proxy.example:443"]
        );
        let err = Settings::from_toml(
            "[api]\nallowed_hosts = [\"evil.example/\"]\n",
            &Environment::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("api.allowed_hosts"), "{err}");
    }

    #[test]
    fn no_credential_is_allowed_only_on_a_unix_socket() {
        let s = Settings::from_toml(
            "[api]\nlisten = \"/run/docfetch/api.sock\"\nauth = \"none\"\n",
            &Environment::default(),
        )
        .unwrap();
        assert_eq!(
            s.api.listen,
            ApiListen::Unix("/run/docfetch/api.sock".into())
        );
        assert_eq!(s.api.auth, ApiAuth::None);
        for listen in ["127.0.0.1:8750", "0.0.0.0:8750"] {
            let err = Settings::from_toml(
                &format!("[api]\nlisten = \"{listen}\"\nauth = \"none\"\n"),
                &Environment::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("api.auth") && err.contains("unix socket"),
                "{err}"
            );
        }
        let err = Settings::from_toml("[api]\nauth = \"basic\"\n", &Environment::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.auth"), "{err}");
        let err = Settings::from_toml("[api]\nheader_timeout = \"0s\"\n", &Environment::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.header_timeout"), "{err}");
    }

    #[test]
    fn named_hooks_are_read_and_checked_with_their_keys_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("whsec"), "whsec-0123456789\n").unwrap();
        let text = format!(
            "[hooks]\ntimeout = \"30s\"\n[hooks.import-usn]\ncommand = [\"/usr/local/bin/import-usn\", \"--quiet\"]\ntimeout = \"2m\"\n[hooks.notify]\nurl = \"https://intranet.example/hook\"\nsecret_file = \"{}\"\n",
            dir.path().join("whsec").display()
        );
        let s = Settings::from_toml(&text, &Environment::default()).unwrap();
        assert_eq!(s.hooks.timeout, Duration::from_secs(30));
        assert!(!s.hooks.allow_request_commands);
        let import = &s.hooks.named["import-usn"];
        assert_eq!(
            import.command.as_deref(),
            Some(&["/usr/local/bin/import-usn".to_string(), "--quiet".into()][..])
        );
        assert_eq!(import.timeout, Some(Duration::from_secs(120)));
        let notify = &s.hooks.named["notify"];
        assert_eq!(notify.secret.as_ref().unwrap().expose(), "whsec-0123456789");
        assert!(!format!("{s:?}").contains("whsec-0123456789"));

        let cases = [
            (
                "[hooks.plain]\nurl = \"http://intranet.example/hook\"\nsecret = \"0123456789abcdef\"\n",
                "hooks.plain.url",
                "https://",
            ),
            (
                "[hooks.unsigned]\nurl = \"https://intranet.example/hook\"\n",
                "hooks.unsigned.secret",
                "needs a secret",
            ),
            ("[hooks.empty]\n", "hooks.empty", "give `command`"),
            (
                "[hooks.typo]\ncommand = [\"/bin/true\"]\ncomand = 1\n",
                "hooks.typo.comand",
                "unknown key",
            ),
            (
                "[hooks]\nallow_request_command = true\n",
                "hooks.allow_request_command",
                "unknown key",
            ),
            (
                "[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/x\"\nusername = \"u\"\npassword = \"p\"\non_done = \"missing\"\n",
                "accounts.a.on_done",
                "no hook named \"missing\"",
            ),
            (
                "[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/x\"\nusername = \"u\"\npassword = \"p\"\non_done_url = \"http://10.0.0.5/hook\"\n",
                "accounts.a.on_done_url",
                "plain http://",
            ),
        ];
        for (text, key, why) in cases {
            let err = Settings::from_toml(text, &Environment::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(why), "{text}: {err}");
        }
        // Loopback receivers may use plain http; accounts may name hooks.
        let s = Settings::from_toml(
            "[hooks.local]\nurl = \"http://127.0.0.1:9000/hook\"\nsecret = \"0123456789abcdef\"\n[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/x\"\nusername = \"u\"\npassword = \"p\"\non_done = \"local\"\non_failed = [\"/usr/local/bin/alert\"]\non_done_url = \"http://localhost:9000/x\"\n",
            &Environment::default(),
        )
        .unwrap();
        assert_eq!(
            s.accounts["a"].hooks.on_done,
            Some(crate::job::HookRef::Named("local".into()))
        );
        let s = Settings::from_toml(
            "[hooks]\nallow_request_commands = true\n",
            &env(&[("DOCFETCH__HOOKS__MAX_ATTEMPTS", "3")]),
        )
        .unwrap();
        assert!(s.hooks.allow_request_commands);
        assert_eq!(s.hooks.max_attempts, 3);
    }

    #[test]
    fn the_example_config_is_valid_and_shows_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("fresh");
        std::fs::write(&secret, "pw\n").unwrap();
        let text = include_str!("../config/docfetch.example.toml")
            .replace("/run/credentials/docfetch/fresh", secret.to_str().unwrap());
        let example = Settings::from_toml(&text, &Environment::default()).unwrap();
        let defaults = Settings::from_toml("", &Environment::default()).unwrap();
        assert_eq!(
            format!("{:?}", example.scheduler),
            format!("{:?}", defaults.scheduler)
        );
        assert_eq!(
            format!("{:?}", example.inbox),
            format!("{:?}", defaults.inbox)
        );
        assert_eq!(
            format!("{:?}", example.paths),
            format!("{:?}", defaults.paths)
        );
        assert_eq!(format!("{:?}", example.api), format!("{:?}", defaults.api));
        assert_eq!(
            format!("{:?}", example.hooks),
            format!("{:?}", defaults.hooks)
        );
        assert_eq!(example.store.url, defaults.store.url);
        assert_eq!(example.accounts.len(), 1);
    }

    /// One account of every provider, with `{base}` and `{identity}` as its
    /// URLs and `{extra}` added.
    fn every_provider(base: &str, identity: &str, extra: &str) -> Vec<(&'static str, String)> {
        let fill = |text: &str| {
            text.replace("{base}", base)
                .replace("{identity}", identity)
                .replace("{extra}", extra)
        };
        vec![
            (
                "base_url",
                fill(
                    "[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"{base}/a/hs/dt/storage\"\nusername = \"u\"\npassword = \"p\"\n{extra}",
                ),
            ),
            (
                "base_url",
                fill(
                    "[accounts.a]\nprovider = \"ofd-ru\"\nbase_url = \"{base}\"\nlogin = \"l\"\npassword = \"p\"\n{extra}",
                ),
            ),
            (
                "base_url",
                fill(
                    "[accounts.a]\nprovider = \"atol-kkt\"\nbase_url = \"{base}\"\nlogin = \"l\"\npassword = \"p\"\n{extra}",
                ),
            ),
            (
                "base_url",
                fill(
                    "[accounts.a]\nprovider = \"kontur-extern\"\nbase_url = \"{base}\"\nidentity_url = \"https://identity.kontur.ru\"\naccount_id = \"1d0e5c2a-0000-0000-0000-000000000000\"\nclient_id = \"c\"\napi_key = \"k\"\n{extra}",
                ),
            ),
            (
                "identity_url",
                fill(
                    "[accounts.a]\nprovider = \"kontur-extern\"\nbase_url = \"https://extern-api.kontur.ru\"\nidentity_url = \"{identity}\"\naccount_id = \"1d0e5c2a-0000-0000-0000-000000000000\"\nclient_id = \"c\"\napi_key = \"k\"\n{extra}",
                ),
            ),
            (
                "base_url",
                fill(
                    "[accounts.a]\nprovider = \"kontur-diadoc\"\nbase_url = \"{base}\"\nauth = \"diadoc\"\nclient_id = \"c\"\nlogin = \"l\"\npassword = \"p\"\n{extra}",
                ),
            ),
            (
                "identity_url",
                fill(
                    "[accounts.a]\nprovider = \"kontur-diadoc\"\nbase_url = \"https://diadoc-api.kontur.ru\"\nauth = \"oidc\"\nidentity_url = \"{identity}\"\nclient_id = \"c\"\napi_key = \"k\"\n{extra}",
                ),
            ),
        ]
    }

    #[test]
    fn plain_http_to_another_machine_is_refused_for_every_provider_naming_the_key() {
        for (key, toml) in every_provider("http://api.example", "http://id.example", "") {
            let err = Settings::from_toml(&toml, &env(&[]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("accounts.a.{key}")) && err.contains("allow_plain_http"),
                "{toml}\n{err}"
            );
        }
    }

    #[test]
    fn plain_http_is_fine_on_loopback_or_when_the_account_allows_it() {
        for base in [
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://localhost:8080",
        ] {
            for (_, toml) in every_provider(base, &format!("{base}/id"), "") {
                Settings::from_toml(&toml, &env(&[])).unwrap_or_else(|e| panic!("{toml}\n{e}"));
            }
        }
        for (_, toml) in every_provider(
            "http://api.example",
            "http://id.example",
            "allow_plain_http = true\n",
        ) {
            Settings::from_toml(&toml, &env(&[])).unwrap_or_else(|e| panic!("{toml}\n{e}"));
        }
        // Said on an https account, it is no typo; a wrong value names the key.
        for (_, toml) in every_provider(
            "https://api.example",
            "https://id.example",
            "allow_plain_http = false\n",
        ) {
            Settings::from_toml(&toml, &env(&[])).unwrap_or_else(|e| panic!("{toml}\n{e}"));
        }
        let (_, bad) = every_provider("https://h", "https://i", "allow_plain_http = 3\n").remove(0);
        let err = Settings::from_toml(&bad, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("accounts.a.allow_plain_http"), "{err}");
    }

    #[test]
    fn a_postgres_store_beyond_loopback_without_certificate_checks_is_warned_about_without_its_password()
     {
        let warned =
            store_transport_warning("postgres://docfetch:s3cret@db.internal:5432/docfetch")
                .expect("a warning");
        assert!(
            warned.contains("sslmode=prefer") && warned.contains("verify-full"),
            "{warned}"
        );
        assert!(!warned.contains("s3cret"), "{warned}");
        assert!(
            store_transport_warning("postgres://u@db.internal/d?sslmode=require")
                .is_some_and(|w| w.contains("sslmode=require"))
        );
        for quiet in [
            "sqlite://var/docfetch.db",
            "postgres://u@db.internal/d?sslmode=verify-full",
            "postgresql://u@db.internal/d?sslmode=verify-ca&sslrootcert=/etc/ca.pem",
            "postgres://postgres@127.0.0.1:5432/test",
            "postgres://u@localhost/d",
            "postgres://u@[::1]/d",
            "postgres:///d?host=/run/postgresql",
        ] {
            assert_eq!(store_transport_warning(quiet), None, "{quiet}");
        }
        assert!(store_transport_warning("postgres://u@localhost/d?host=db.internal").is_some());
    }
}
