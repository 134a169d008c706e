//! Request files: parsing (`*.json` or `*.toml`), validation against the
//! configured accounts and providers, and the exact reason when either fails.
//!
//! The same code serves the drop directory and `docfetch submit`, so a
//! request is accepted or rejected identically whichever way it arrives.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::digest::sha256_hex;
use super::{HookRef, Millis, NewJob, is_valid_name};
use crate::config::Settings;

/// A request as written by a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The `[accounts.NAME]` to use.
    pub account: String,
    /// What to fetch; its meaning belongs to the provider (for 1C:Fresh the data id).
    pub operation: String,
    /// Provider-specific parameters (for 1C:Fresh the settings JSON, sent as-is).
    #[serde(default = "empty_object")]
    pub params: serde_json::Value,
    /// The job's unique name; defaults to the request file's stem.
    #[serde(default)]
    pub name: Option<String>,
    /// The configured hook (`[hooks.NAME]`) to run when the job is done. A
    /// command (argv list) is refused unless `hooks.allow_request_commands`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_done: Option<HookRef>,
    /// The configured hook to run when the job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failed: Option<HookRef>,
    /// A URL that receives `job.json` by POST when the job is done; refused
    /// unless `hooks.allow_request_commands` (name a configured hook instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_done_url: Option<String>,
}

/// Who wrote a request, which decides whether it may carry its own
/// commands and URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Whoever can submit (drop directory, CLI, API): may only name
    /// configured hooks, unless `hooks.allow_request_commands`.
    Submitted,
    /// The operator (a schedule in the config or the schedules folder): may
    /// carry commands and URLs, like the config itself.
    Operator,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// Why a request was refused. The text is written next to a rejected file,
/// so it says what is wrong, where, and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("the request is {size} bytes; requests are limited to {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("the request is not valid UTF-8 text (first bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("the request is not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("unsupported request file extension {0:?}: use .json or .toml")]
    Extension(String),
    #[error("field `{field}`: {message}")]
    Field { field: String, message: String },
    #[error(
        "a job named {name:?} already exists (state {state}); names are unique and a request never runs twice"
    )]
    Duplicate { name: String, state: String },
}

impl RequestError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError::Field {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The format of a request file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFormat {
    Json,
    Toml,
}

impl RequestFormat {
    pub fn from_path(path: &Path) -> Result<Self, RequestError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Ok(RequestFormat::Json),
            Some(e) if e.eq_ignore_ascii_case("toml") => Ok(RequestFormat::Toml),
            other => Err(RequestError::Extension(other.unwrap_or("").to_string())),
        }
    }
}

/// Parses a request from raw bytes.
pub fn parse(bytes: &[u8], format: RequestFormat) -> Result<JobRequest, RequestError> {
    let text = std::str::from_utf8(bytes).map_err(|e| RequestError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match format {
        RequestFormat::Json => {
            // serde_json bounds nesting (128 levels) itself, so a hostile
            // deeply nested file is an error, not a stack overflow.
            serde_json::from_str(text).map_err(|e| RequestError::Syntax {
                format: "JSON",
                message: e.to_string(),
            })
        }
        RequestFormat::Toml => {
            let request: Result<JobRequest, _> = toml::from_str(text);
            request.map_err(|e| RequestError::Syntax {
                format: "TOML",
                message: toml_error_message(text, &e),
            })
        }
    }
}

/// TOML errors carry a byte span; turn it into a line and column.
fn toml_error_message(text: &str, e: &toml::de::Error) -> String {
    let detail = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("{detail} at line {line} column {column}")
        }
        None => detail,
    }
}

/// SHA-256 of the request bytes, lower-case hex.
pub fn fingerprint(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

/// Refuses a submitted request that carries a command or a URL, saying how
/// the operator configures the hook instead.
fn refuse_carried_commands(hooks: &crate::job::Hooks) -> Result<(), RequestError> {
    let how =
        "a request may only name a hook the operator configured, never carry a command or a URL";
    let allow = "(hooks.allow_request_commands = true would let anyone who can submit a request run commands as docfetch)";
    for (field, hook) in [("on_done", &hooks.on_done), ("on_failed", &hooks.on_failed)] {
        if let Some(HookRef::Command(argv)) = hook {
            // Suggest a name from the program, as a starting point.
            let suggested = argv
                .first()
                .and_then(|p| Path::new(p).file_name())
                .and_then(|n| n.to_str())
                .filter(|n| is_valid_name(n))
                .unwrap_or("my-hook");
            let command = serde_json::to_string(argv).unwrap_or_default();
            return Err(RequestError::field(
                field,
                format!(
                    "{how}: add to the config [hooks.{suggested}] with command = {command}, then write {field} = \"{suggested}\" in the request {allow}"
                ),
            ));
        }
    }
    if hooks.on_done_url.is_some() {
        return Err(RequestError::field(
            "on_done_url",
            format!(
                "{how}: add to the config [hooks.notify] with url = \"https://…\" and secret_file = \"…\" (or on_done_url on the account), then write on_done = \"notify\" in the request {allow}"
            ),
        ));
    }
    Ok(())
}

/// Validates a parsed request against the settings and turns it into a job.
/// `default_name` is the request file's stem when there is one; `trust`
/// says who wrote it.
pub fn prepare(
    request: JobRequest,
    default_name: Option<&str>,
    settings: &Settings,
    trust: Trust,
    source: &str,
    request_sha256: String,
    now: Millis,
) -> Result<NewJob, RequestError> {
    let name = match (&request.name, default_name) {
        (Some(name), _) => name.clone(),
        (None, Some(stem)) => stem.to_string(),
        (None, None) => return Err(RequestError::field("name", "is required here")),
    };
    if !is_valid_name(&name) {
        return Err(RequestError::field(
            "name",
            format!(
                "{name:?} is not a valid job name: expected 1 to 100 of A-Z a-z 0-9 . _ - (and not \".\" or \"..\")"
            ),
        ));
    }
    let account = settings.accounts.get(&request.account).ok_or_else(|| {
        let known: Vec<&str> = settings.accounts.keys().map(String::as_str).collect();
        RequestError::field(
            "account",
            if known.is_empty() {
                format!(
                    "unknown account {:?}: no accounts are configured",
                    request.account
                )
            } else {
                format!(
                    "unknown account {:?}; configured accounts: {}",
                    request.account,
                    known.join(", ")
                )
            },
        )
    })?;
    if request.operation.trim().is_empty() {
        return Err(RequestError::field("operation", "must not be empty"));
    }
    account
        .config
        .validate_request(&request.operation, &request.params)?;
    let hooks = crate::job::Hooks {
        on_done: request.on_done.clone(),
        on_failed: request.on_failed.clone(),
        on_done_url: request.on_done_url.clone(),
    };
    if trust == Trust::Submitted && !settings.hooks.allow_request_commands {
        refuse_carried_commands(&hooks)?;
    }
    if let Err(message) = hooks
        .validate("")
        .and_then(|()| hooks.check_names("", &settings.hooks.named))
    {
        let (field, message) = message
            .split_once(": ")
            .unwrap_or(("hooks", message.as_str()));
        return Err(RequestError::field(field, message));
    }
    let deadline = i64::try_from(settings.scheduler.deadline.as_millis()).unwrap_or(i64::MAX);
    Ok(NewJob {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        account: request.account.clone(),
        provider: account.config.provider_name().to_string(),
        operation: request.operation,
        params: request.params,
        source: source.to_string(),
        request_sha256,
        created_at: now,
        deadline_at: now.saturating_add(deadline),
        hooks: (!hooks.is_empty()).then_some(hooks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Environment;

    fn settings() -> Settings {
        Settings::from_toml(
            "[accounts.fresh-main]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/a/bs/1/hs/dt/storage\"\nusername = \"api\"\npassword = \"pw\"\n",
            &Environment::default(),
        )
        .unwrap()
    }

    const GOOD: &str = r#"{ "account": "fresh-main",
      "operation": "tax_usn_calculator",
      "params": {"organization": {"inn": "783900281039", "kpp": ""}, "date": "2018-09-30T23:59:59"},
      "name": "usn-2018q3" }"#;

    #[test]
    fn the_documented_request_is_accepted() {
        let request = parse(GOOD.as_bytes(), RequestFormat::Json).unwrap();
        let job = prepare(
            request,
            Some("ignored"),
            &settings(),
            Trust::Submitted,
            "usn.json",
            fingerprint(GOOD.as_bytes()),
            1000,
        )
        .unwrap();
        assert_eq!(job.name, "usn-2018q3");
        assert_eq!(job.provider, "1c-fresh");
        assert_eq!(job.deadline_at, 1000 + 48 * 3600 * 1000);
    }

    #[test]
    fn toml_requests_use_the_same_keys_and_the_stem_as_default_name() {
        let text = "account = \"fresh-main\"\noperation = \"tax_usn_calculator\"\n[params]\ndate = \"2018-09-30T23:59:59\"\n";
        let request = parse(text.as_bytes(), RequestFormat::Toml).unwrap();
        let job = prepare(
            request,
            Some("from-stem"),
            &settings(),
            Trust::Submitted,
            "x.toml",
            String::new(),
            0,
        )
        .unwrap();
        assert_eq!(job.name, "from-stem");
        assert_eq!(job.params["date"], "2018-09-30T23:59:59");
    }

    #[test]
    fn syntax_errors_say_where() {
        let err = parse(
            b"{\"account\": \"a\",\n \"operation\": }",
            RequestFormat::Json,
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 2 column"), "{err}");
        let err = parse(b"account = \"a\"\noperation = \n", RequestFormat::Toml).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = parse(
            b"{\"account\": \"a\", \"operation\": \"b\", \"nmae\": \"c\"}",
            RequestFormat::Json,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `nmae`"), "{err}");
        let err = parse(b"\xff\xfe", RequestFormat::Json).unwrap_err();
        assert_eq!(err, RequestError::NotUtf8 { offset: 0 });
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!("{{\"account\":\"fresh-main\",\"operation\":\"x\",\"params\":{deep}}}");
        let err = parse(text.as_bytes(), RequestFormat::Json).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }

    #[test]
    fn bad_names_and_accounts_are_refused_with_the_field() {
        let s = settings();
        for name in ["../etc", "a/b", "x\u{0}y", "😀", ""] {
            let request = JobRequest {
                account: "fresh-main".into(),
                operation: "op".into(),
                params: empty_object(),
                name: Some(name.into()),
                on_done: None,
                on_failed: None,
                on_done_url: None,
            };
            let err =
                prepare(request, None, &s, Trust::Submitted, "cli", String::new(), 0).unwrap_err();
            assert!(err.to_string().starts_with("field `name`"), "{err}");
        }
        let request = JobRequest {
            account: "nope".into(),
            operation: "op".into(),
            params: empty_object(),
            name: Some("n".into()),
            on_done: None,
            on_failed: None,
            on_done_url: None,
        };
        let err =
            prepare(request, None, &s, Trust::Submitted, "cli", String::new(), 0).unwrap_err();
        assert!(
            err.to_string().contains("configured accounts: fresh-main"),
            "{err}"
        );
    }
}
