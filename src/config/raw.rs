//! The settings as deserialized from TOML, before validation.

use super::*;

// ---------------------------------------------------------------------------
// Raw, as deserialized. `deny_unknown_fields` turns typos into errors.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    #[serde(default)]
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) paths: RawPaths,
    #[serde(default)]
    pub(super) scheduler: RawScheduler,
    #[serde(default)]
    pub(super) inbox: RawInbox,
    #[serde(default)]
    pub(super) http: RawHttp,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) api: RawApi,
    /// `timeout`, `max_attempts`, … and one `[hooks.NAME]` table per
    /// named hook, read key by key.
    #[serde(default)]
    pub(super) hooks: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub(super) retention: RawRetention,
    #[serde(default)]
    pub(super) accounts: BTreeMap<String, BTreeMap<String, toml::Value>>,
    #[serde(default)]
    pub(super) schedules: Vec<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPaths {
    pub(super) requests: Option<PathBuf>,
    pub(super) output: Option<PathBuf>,
    pub(super) attachments: Option<PathBuf>,
    pub(super) schedules: Option<PathBuf>,
}

/// A list of names, written as a TOML list or (from an environment
/// variable) as one string separated by commas.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Names {
    List(Vec<String>),
    Text(String),
}

impl Names {
    pub(super) fn into_vec(self) -> Vec<String> {
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
pub(super) enum Quantity {
    Number(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScheduler {
    pub(super) workers: Option<u64>,
    pub(super) poll_initial: Option<Quantity>,
    pub(super) poll_max: Option<Quantity>,
    pub(super) max_attempts: Option<u64>,
    pub(super) deadline: Option<Quantity>,
    pub(super) max_file_size: Option<Quantity>,
    pub(super) lease: Option<Quantity>,
    pub(super) retry_initial: Option<Quantity>,
    pub(super) shutdown_grace: Option<Quantity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInbox {
    pub(super) scan_interval: Option<Quantity>,
    pub(super) settle: Option<Quantity>,
    pub(super) max_request_size: Option<Quantity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) connect_timeout: Option<Quantity>,
    pub(super) timeout: Option<Quantity>,
    pub(super) user_agent: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) level: Option<String>,
    pub(super) format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) done: Option<Quantity>,
    pub(super) failed: Option<Quantity>,
    pub(super) delete_files: Option<bool>,
    pub(super) requests: Option<Quantity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) listen: Option<String>,
    pub(super) auth: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) metrics_public: Option<bool>,
    pub(super) allowed_hosts: Option<Names>,
    pub(super) header_timeout: Option<Quantity>,
    pub(super) body_timeout: Option<Quantity>,
    pub(super) send_timeout: Option<Quantity>,
}

pub(super) fn duration(
    key: &str,
    value: Option<Quantity>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let parsed = match value {
        None => parse_duration(default),
        Some(Quantity::Number(secs)) => Ok(Duration::from_secs(secs)),
        Some(Quantity::Text(text)) => parse_duration(&text),
    };
    parsed.map_err(|message| ConfigError::invalid(key, message))
}

pub(super) fn size(key: &str, value: Option<Quantity>, default: &str) -> Result<u64, ConfigError> {
    let parsed = match value {
        None => parse_size(default),
        Some(Quantity::Number(bytes)) => Ok(bytes),
        Some(Quantity::Text(text)) => parse_size(&text),
    };
    parsed.map_err(|message| ConfigError::invalid(key, message))
}
