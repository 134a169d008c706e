//! `docfetch accounts`: the configured accounts — provider, base URL and
//! where each secret is read from (a variable's name, a file's path, or
//! "inline in the config"). The secrets themselves are never printed.

use std::io::Write;

use super::CliError;
use crate::config::{Account, SecretFrom, Settings};

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
