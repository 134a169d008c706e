//! The typed reader of a named config table (`[accounts.NAME]`,
//! `[hooks.NAME]`): strings, numbers, URLs and secrets taken key by key,
//! each error naming its key; leftover keys are rejected as typos. It knows
//! no provider: each provider reads its own settings through it, and the
//! settings themselves are built on top of it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why the settings could not be loaded. Always names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A secret value (password, API key, token). Its `Debug` and `Display` print
/// `***`, so it cannot leak through a log line or an error by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself; call only where it is sent to its service.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What the process environment contributes to the settings. Passed in (not
/// read from `std::env` deep inside) so tests control it.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `DOCFETCH__…` overrides and the variables that `*_env` keys name.
    pub vars: BTreeMap<String, String>,
}

impl Environment {
    /// Captures the real process environment (the one place that reads it).
    pub fn from_process() -> Self {
        Environment {
            vars: std::env::vars().collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// The account key that lets its URLs be plain `http://` beyond loopback.
pub const PLAIN_HTTP: &str = "allow_plain_http";

/// Whether a URL's host is this machine: `127.0.0.0/8`, `::1`, or
/// `localhost` (RFC 6761 names resolve to loopback).
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => is_loopback_name(name),
        None => false,
    }
}

/// [`is_loopback`] for a host name or address as written (`[::1]` too).
pub(crate) fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// The keys of one `[accounts.NAME]` table, taken one by one by the provider
/// that owns them; [`AccountKeys::finish`] rejects whatever is left over.
pub struct AccountKeys<'a> {
    pub account: String,
    /// What errors call the table: `accounts.NAME` (or `hooks.NAME`).
    prefix: String,
    table: BTreeMap<String, toml::Value>,
    env: &'a Environment,
    /// `allow_plain_http`, once read.
    plain_http: Option<bool>,
    /// Where each secret read so far came from; shared, because the
    /// provider that reads the keys consumes them.
    pub origins: std::rc::Rc<std::cell::RefCell<Vec<SecretOrigin>>>,
}

impl<'a> AccountKeys<'a> {
    pub fn new(account: &str, table: BTreeMap<String, toml::Value>, env: &'a Environment) -> Self {
        AccountKeys::section(&format!("accounts.{account}"), account, table, env)
    }

    /// The keys of another named table (`[hooks.NAME]`), read the same way.
    pub fn section(
        prefix: &str,
        name: &str,
        table: BTreeMap<String, toml::Value>,
        env: &'a Environment,
    ) -> Self {
        AccountKeys {
            account: name.to_string(),
            prefix: prefix.to_string(),
            table,
            env,
            plain_http: None,
            origins: Default::default(),
        }
    }

    /// The key's full name in errors (`accounts.NAME.KEY`).
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.prefix)
    }

    /// The raw value of a key, left in place (to choose how to read it).
    pub fn peek(&self, key: &str) -> Option<&toml::Value> {
        self.table.get(key)
    }

    /// An optional string key.
    pub fn string(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ConfigError::invalid(
                self.key(key),
                format!("expected a string, found {}", other.type_str()),
            )),
        }
    }

    /// A required string key.
    pub(crate) fn required(&mut self, key: &str) -> Result<String, ConfigError> {
        self.string(key)?
            .ok_or_else(|| ConfigError::invalid(self.key(key), "is required"))
    }

    /// An optional list of strings (an argv).
    pub(crate) fn string_list(&mut self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(toml::Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s),
                    other => Err(ConfigError::invalid(
                        self.key(key),
                        format!("expected a list of strings, found a {}", other.type_str()),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(ConfigError::invalid(
                self.key(key),
                format!(
                    "expected a list of strings such as [\"/usr/local/bin/import\", \"--quiet\"], found {}",
                    other.type_str()
                ),
            )),
        }
    }

    /// An optional positive integer key.
    pub fn integer(&mut self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if i >= 0 => Ok(Some(i as u64)),
            Some(toml::Value::String(s)) => s.trim().parse().map(Some).map_err(|_| {
                ConfigError::invalid(self.key(key), format!("expected a number, found {s:?}"))
            }),
            Some(other) => Err(ConfigError::invalid(
                self.key(key),
                format!("expected a positive number, found {}", other.type_str()),
            )),
        }
    }

    /// An optional boolean key.
    pub(crate) fn boolean(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(b)),
            Some(toml::Value::String(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
            Some(other) => Err(ConfigError::invalid(
                self.key(key),
                format!("expected true or false, found {other}"),
            )),
        }
    }

    /// A URL key (`http` or `https`), with a default.
    pub fn url(&mut self, key: &str, default: Option<&str>) -> Result<url::Url, ConfigError> {
        let text = match (self.string(key)?, default) {
            (Some(text), _) => text,
            (None, Some(default)) => default.to_string(),
            (None, None) => return Err(ConfigError::invalid(self.key(key), "is required")),
        };
        let url = url::Url::parse(&text).map_err(|e| {
            ConfigError::invalid(self.key(key), format!("expected an http(s) URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ConfigError::invalid(
                self.key(key),
                format!("expected an http:// or https:// URL, found {text:?}"),
            ));
        }
        if url.password().is_some() || !url.username().is_empty() {
            return Err(ConfigError::invalid(
                self.key(key),
                "must not carry credentials; use the account's credential keys",
            ));
        }
        // The one place every provider's URLs pass: passwords, API keys and
        // tokens travel to these hosts, so plain HTTP is for loopback (the
        // simulator, a local TLS-terminating proxy) unless the operator says
        // otherwise for this account.
        if url.scheme() == "http" && !is_loopback(&url) && !self.plain_http_allowed()? {
            return Err(ConfigError::invalid(
                self.key(key),
                format!(
                    "{text:?} is plain http:// to another machine: the account's credentials would cross the network unencrypted; use https://, or set {} = true if this network is trusted",
                    self.key(PLAIN_HTTP)
                ),
            ));
        }
        Ok(url)
    }

    /// `allow_plain_http` (default false): whether this account's URLs may
    /// be `http://` to a host other than loopback. Read once.
    pub(crate) fn plain_http_allowed(&mut self) -> Result<bool, ConfigError> {
        if let Some(allowed) = self.plain_http {
            return Ok(allowed);
        }
        let allowed = self.boolean(PLAIN_HTTP)?.unwrap_or(false);
        self.plain_http = Some(allowed);
        Ok(allowed)
    }

    /// A secret given as `KEY = "value"`, `KEY_file = "path"` or
    /// `KEY_env = "VARIABLE"` (exactly one of them). A relative `_file` path is
    /// looked up in `$CREDENTIALS_DIRECTORY` when systemd provides one.
    pub fn secret(&mut self, key: &str) -> Result<Option<Secret>, ConfigError> {
        let inline = self.string(key)?;
        let file_key = format!("{key}_file");
        let env_key = format!("{key}_env");
        let file = self.string(&file_key)?;
        let var = self.string(&env_key)?;
        let given = [inline.is_some(), file.is_some(), var.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if given > 1 {
            return Err(ConfigError::invalid(
                self.key(key),
                format!("give only one of `{key}`, `{file_key}` and `{env_key}`"),
            ));
        }
        let origin = |from| SecretOrigin {
            key: key.to_string(),
            from,
        };
        if let Some(value) = inline {
            self.origins.borrow_mut().push(origin(SecretFrom::Inline));
            return Ok(Some(Secret(value)));
        }
        if let Some(file) = file {
            let mut path = PathBuf::from(&file);
            if path.is_relative()
                && let Some(dir) = self.env.get("CREDENTIALS_DIRECTORY")
            {
                path = Path::new(dir).join(path);
            }
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::invalid(
                    self.key(&file_key),
                    format!("cannot read secret file {}: {e}", path.display()),
                )
            })?;
            // Files written by editors and `echo` end with a newline that is
            // not part of the secret.
            let value = text.trim_end_matches(['\r', '\n']).to_string();
            if value.is_empty() {
                return Err(ConfigError::invalid(
                    self.key(&file_key),
                    format!("secret file {} is empty", path.display()),
                ));
            }
            self.origins
                .borrow_mut()
                .push(origin(SecretFrom::File(path)));
            return Ok(Some(Secret(value)));
        }
        if let Some(var) = var {
            self.origins
                .borrow_mut()
                .push(origin(SecretFrom::Env(var.clone())));
            return match self.env.get(&var) {
                Some(value) if !value.is_empty() => Ok(Some(Secret(value.to_string()))),
                _ => Err(ConfigError::invalid(
                    self.key(&env_key),
                    format!("environment variable {var} is not set or empty"),
                )),
            };
        }
        Ok(None)
    }

    /// A required secret.
    pub(crate) fn required_secret(&mut self, key: &str) -> Result<Secret, ConfigError> {
        self.secret(key)?.ok_or_else(|| {
            ConfigError::invalid(
                self.key(key),
                format!("is required (as `{key}`, `{key}_file` or `{key}_env`)"),
            )
        })
    }

    /// Fails when keys are left that no one took: they are typos.
    pub fn finish(mut self) -> Result<(), ConfigError> {
        // Every account may say it, even one whose URLs are all https.
        self.plain_http_allowed()?;
        match self.table.keys().next() {
            None => Ok(()),
            Some(key) => Err(ConfigError::invalid(self.key(key), "unknown key")),
        }
    }
}

/// Where one secret of an account came from: `KEY`, `KEY_file` or `KEY_env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretOrigin {
    /// The secret's key (`password`, `client_secret`, …).
    pub key: String,
    pub from: SecretFrom,
}

/// The three ways a secret can be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFrom {
    /// Written into the config file itself.
    Inline,
    /// Read from this file (after `$CREDENTIALS_DIRECTORY` was applied).
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
}

impl fmt::Display for SecretFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretFrom::Inline => write!(f, "inline in the config"),
            SecretFrom::File(path) => write!(f, "file {}", path.display()),
            SecretFrom::Env(var) => write!(f, "env ${var}"),
        }
    }
}
