//! `docfetch accounts`: the configured accounts — provider, base URL and
//! where each secret is read from (a variable's name, a file's path, or
//! "inline in the config"). The secrets themselves are never printed.
//!
//! `docfetch accounts check` logs in to each account's service the cheapest
//! way it allows, ordering nothing, and says per account OK or the
//! service's reason with what to fix, so a wrong secret shows before the
//! first job instead of failing it.

use std::io::Write;
use std::time::{Duration, Instant};

use super::CliError;
use crate::config::{Account, SecretFrom, Settings};
use crate::providers::AnyProvider;
use crate::providers::check::{CheckFailure, CheckKind};

/// One account as `accounts --json` prints it (one object per line).
fn account_json(account: &Account) -> serde_json::Value {
    let secrets: Vec<serde_json::Value> = account
        .secret_origins
        .iter()
        .map(|origin| {
            let (from, at) = match &origin.from {
                SecretFrom::Inline => ("inline", None),
                SecretFrom::File(path) => ("file", Some(path.display().to_string())),
                SecretFrom::Env(var) => ("env", Some(var.clone())),
            };
            serde_json::json!({"key": origin.key, "from": from, "at": at})
        })
        .collect();
    serde_json::json!({
        "name": account.name,
        "provider": account.config.provider_name(),
        "base_url": account.config.base_url().as_str(),
        "secrets": secrets,
    })
}

/// The listing, as a table or JSON lines.
pub(super) fn accounts_text(settings: &Settings, json: bool) -> String {
    if json {
        return settings
            .accounts
            .values()
            .map(|a| format!("{}\n", account_json(a)))
            .collect();
    }
    let mut table = super::table(["NAME", "PROVIDER", "BASE URL", "SECRETS FROM"]);
    for account in settings.accounts.values() {
        let secrets: Vec<String> = account
            .secret_origins
            .iter()
            .map(|o| format!("{}: {}", o.key, o.from))
            .collect();
        table.add_row([
            account.name.clone(),
            account.config.provider_name().to_string(),
            account.config.base_url().to_string(),
            if secrets.is_empty() {
                "-".to_string()
            } else {
                secrets.join(", ")
            },
        ]);
    }
    super::render(&table)
}

/// `docfetch accounts [--json]`.
pub(super) fn accounts(settings: &Settings, json: bool) -> Result<u8, CliError> {
    if settings.accounts.is_empty() && !json {
        eprintln!(
            "no accounts configured (add [accounts.NAME] sections; see config/docfetch.example.toml)"
        );
        return Ok(0);
    }
    let text = accounts_text(settings, json);
    match std::io::stdout().write_all(text.as_bytes()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(CliError::Failed(format!("cannot write: {e}"))),
    }
}

/// One account's check, as printed.
#[derive(Debug)]
pub(super) struct Checked {
    name: String,
    provider: &'static str,
    elapsed: Duration,
    outcome: Result<(), CheckFailure>,
    fix: Option<String>,
}

/// `docfetch accounts check [NAME…] [--json] [--timeout SECS]`: 0 when every
/// account logged in, 1 when one did not, 2 for a name no account has.
pub(super) async fn check(
    settings: &Settings,
    names: &[String],
    json: bool,
    timeout: Duration,
) -> Result<u8, CliError> {
    let unknown: Vec<&str> = names
        .iter()
        .filter(|n| !settings.accounts.contains_key(n.as_str()))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = settings.accounts.keys().map(String::as_str).collect();
        return Err(CliError::Usage(format!(
            "no account named {}; configured accounts: {}",
            unknown.join(", "),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    let chosen: Vec<&Account> = settings
        .accounts
        .values()
        .filter(|a| names.is_empty() || names.contains(&a.name))
        .collect();
    if chosen.is_empty() {
        if !json {
            eprintln!(
                "no accounts configured (add [accounts.NAME] sections; see config/docfetch.example.toml)"
            );
        }
        return Ok(0);
    }
    let http = crate::http::client(&settings.http)
        .map_err(|e| CliError::Failed(crate::http::describe(&e)))?;
    // All at once: one slow service should not hold up the verdict on the
    // others, and each has its own time limit.
    let results =
        futures_util::future::join_all(chosen.iter().map(|a| check_one(a, &http, timeout))).await;
    let text = checks_text(&results, json);
    match std::io::stdout().write_all(text.as_bytes()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(CliError::Failed(format!("cannot write: {e}"))),
    }
    Ok(if results.iter().all(|c| c.outcome.is_ok()) {
        0
    } else {
        1
    })
}

async fn check_one(account: &Account, http: &reqwest::Client, timeout: Duration) -> Checked {
    let provider = AnyProvider::new(&account.name, &account.config);
    let started = Instant::now();
    let outcome =
        match tokio::time::timeout(timeout, provider.check(&account.name, http, timeout)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(CheckFailure::new(
                CheckKind::Timeout,
                format!(
                    "{} did not answer within {}",
                    account.config.base_url(),
                    crate::units::format_duration(timeout)
                ),
            )),
        };
    let fix = outcome
        .as_ref()
        .err()
        .map(|failure| fix_for(account, failure.kind, timeout));
    Checked {
        name: account.name.clone(),
        provider: account.config.provider_name(),
        elapsed: started.elapsed(),
        outcome,
        fix,
    }
}

/// What to do about a failure of `kind`, naming the account's keys and
/// where its secrets come from (never the secrets).
fn fix_for(account: &Account, kind: CheckKind, timeout: Duration) -> String {
    let key = |k: &str| format!("accounts.{}.{k}", account.name);
    match kind {
        CheckKind::Auth => {
            let secrets: Vec<String> = account
                .secret_origins
                .iter()
                .filter(|o| o.key != "webhook_secret")
                .map(|o| match &o.from {
                    SecretFrom::Inline => format!("{} in the config", key(&o.key)),
                    SecretFrom::File(path) => {
                        format!("{}_file ({})", key(&o.key), path.display())
                    }
                    SecretFrom::Env(var) => format!("{}_env (${var})", key(&o.key)),
                })
                .collect();
            if secrets.is_empty() {
                "check the account's credentials in the config".to_string()
            } else {
                format!(
                    "check {} and the login or client id that goes with it",
                    secrets.join(", ")
                )
            }
        }
        CheckKind::Access => format!(
            "the login works, but not for this account's cabinet, box or account: check the ids in [accounts.{}] and the user's rights in the service",
            account.name
        ),
        CheckKind::Network => format!(
            "check {} ({}): the host name (DNS), the network or firewall, and the server's TLS certificate",
            key("base_url"),
            account.config.base_url()
        ),
        CheckKind::Timeout => format!(
            "check {} and the network, or allow longer with --timeout (now {} s)",
            key("base_url"),
            timeout.as_secs()
        ),
        CheckKind::Service => format!(
            "check {} ({}); if it is right, the service is in trouble: try again later",
            key("base_url"),
            account.config.base_url()
        ),
    }
}

/// The report, as lines of text or JSON lines (one object per account).
pub(super) fn checks_text(results: &[Checked], json: bool) -> String {
    if json {
        return results
            .iter()
            .map(|c| {
                let (kind, message) = match &c.outcome {
                    Ok(()) => (None, None),
                    Err(f) => (Some(f.kind.as_str()), Some(f.message.as_str())),
                };
                let line = serde_json::json!({
                    "name": c.name,
                    "provider": c.provider,
                    "ok": c.outcome.is_ok(),
                    "kind": kind,
                    "message": message,
                    "fix": c.fix,
                    "elapsed_ms": u64::try_from(c.elapsed.as_millis()).unwrap_or(u64::MAX),
                });
                format!("{line}\n")
            })
            .collect();
    }
    let mut out = String::new();
    for c in results {
        match &c.outcome {
            Ok(()) => out.push_str(&format!("OK      {} ({})\n", c.name, c.provider)),
            Err(f) => {
                out.push_str(&format!(
                    "FAILED  {} ({}): {}: {}\n",
                    c.name,
                    c.provider,
                    f.kind.as_str(),
                    f.message
                ));
                if let Some(fix) = &c.fix {
                    out.push_str(&format!("        fix: {fix}\n"));
                }
            }
        }
    }
    let failed = results.iter().filter(|c| c.outcome.is_err()).count();
    if failed == 0 {
        out.push_str(&format!("all {} accounts logged in\n", results.len()));
    } else {
        out.push_str(&format!("{failed} of {} accounts failed\n", results.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Environment;

    #[test]
    fn accounts_say_where_each_secret_comes_from_and_never_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("atol-password");
        std::fs::write(&secret_file, "file-secret-42\n").unwrap();
        let toml = format!(
            "[accounts.fresh]\nprovider = \"1c-fresh\"\nbase_url = \"https://1cfresh.com/a/sbm/123/\"\nusername = \"u\"\npassword = \"inline-secret-17\"\n\
             [accounts.atol]\nprovider = \"atol-kkt\"\nbase_url = \"https://online.atol.ru\"\nlogin = \"l\"\npassword_file = \"{}\"\n",
            secret_file.display()
        );
        let settings = match crate::config::Settings::from_toml(&toml, &Environment::default()) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let text = accounts_text(&settings, false);
        let json = accounts_text(&settings, true);
        for out in [&text, &json] {
            assert!(!out.contains("inline-secret-17"), "{out}");
            assert!(!out.contains("file-secret-42"), "{out}");
        }
        assert!(text.contains("password: inline in the config"), "{text}");
        assert!(
            text.contains(&format!("password: file {}", secret_file.display())),
            "{text}"
        );
        let lines: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["name"], "atol");
        assert_eq!(lines[0]["secrets"][0]["from"], "file");
        assert_eq!(lines[1]["provider"], "1c-fresh");
        assert_eq!(lines[1]["secrets"][0]["from"], "inline");
        assert_eq!(lines[1]["secrets"][0]["at"], serde_json::Value::Null);
    }
}
