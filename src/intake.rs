//! Intake: a parsed request checked against what is configured (its
//! account exists, its provider accepts the operation and parameters, its
//! hooks are allowed) and turned into a new job.
//!
//! The same check serves the drop directory, `docfetch submit`, the API and
//! the schedules, so a request is accepted or refused identically whichever
//! way it arrives. It reads the configuration through [`Rules`], which the
//! settings implement: the settings check their own `[[schedules]]` with it
//! while they are being read, so this module cannot depend on them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::job::request::{JobRequest, RequestError};
use crate::job::{HookRef, Hooks, Millis, NewJob, is_valid_name};
use crate::providers::AccountConfig;

/// What a request is checked against: the configured accounts and hooks and
/// the job deadline. [`crate::config::Settings`] is the one implementation.
pub trait Rules {
    /// The operator's named hooks' settings (only their names matter here).
    type NamedHook;
    /// The account named `name`, if configured.
    fn account(&self, name: &str) -> Option<&AccountConfig>;
    /// The configured accounts' names, for the error that lists them.
    fn account_names(&self) -> Vec<&str>;
    /// `hooks.allow_request_commands`.
    fn allow_request_commands(&self) -> bool;
    /// The `[hooks.NAME]` tables.
    fn named_hooks(&self) -> &BTreeMap<String, Self::NamedHook>;
    /// `scheduler.deadline`.
    fn deadline(&self) -> Duration;
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

/// Refuses a submitted request that carries a command or a URL, saying how
/// the operator configures the hook instead.
fn refuse_carried_commands(hooks: &Hooks) -> Result<(), RequestError> {
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

/// Validates a parsed request against the configured [`Rules`] and turns
/// it into a job.
/// `default_name` is the request file's stem when there is one; `trust`
/// says who wrote it.
pub fn prepare<R: Rules + ?Sized>(
    request: JobRequest,
    default_name: Option<&str>,
    rules: &R,
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
    let account = rules.account(&request.account).ok_or_else(|| {
        let known = rules.account_names();
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
    account.validate_request(&request.operation, &request.params)?;
    let hooks = Hooks {
        on_done: request.on_done.clone(),
        on_failed: request.on_failed.clone(),
        on_done_url: request.on_done_url.clone(),
    };
    if trust == Trust::Submitted && !rules.allow_request_commands() {
        refuse_carried_commands(&hooks)?;
    }
    if let Err(message) = hooks
        .validate("")
        .and_then(|()| hooks.check_names("", rules.named_hooks()))
    {
        let (field, message) = message
            .split_once(": ")
            .unwrap_or(("hooks", message.as_str()));
        return Err(RequestError::field(field, message));
    }
    let deadline = i64::try_from(rules.deadline().as_millis()).unwrap_or(i64::MAX);
    Ok(NewJob {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        account: request.account.clone(),
        provider: account.provider_name().to_string(),
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
    use crate::config::{Environment, Settings};
    use crate::job::request::{RequestFormat, fingerprint, parse};

    fn empty_object() -> serde_json::Value {
        serde_json::json!({})
    }

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
