//! The `[hooks]` section: how completion hooks run, and the named hooks
//! (`[hooks.NAME]`) that requests and accounts refer to.

use super::*;

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

/// Keys of `[hooks]` that are settings, not hook names.
pub(super) const HOOKS_KEYS: [&str; 4] = [
    "timeout",
    "max_attempts",
    "retry_initial",
    "allow_request_commands",
];

pub(super) fn hooks_settings(
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

/// A completion hook: the name of a `[hooks.NAME]` (a string) or a
/// command (an argv list).
pub(super) fn hook_ref(
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
