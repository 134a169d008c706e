//! The commands an admin runs while setting docfetch up: `check-config`
//! (and its systemd condition), `health` and `api-token`.

use std::time::Duration;

use super::{Cli, CliError, load_settings};
use crate::config::{Environment, Settings};
use crate::units::format_duration;

/// `docfetch health`: GET /healthz (or /readyz) of the configured listener.
pub(super) async fn health(settings: &Settings, ready: bool) -> Result<u8, CliError> {
    let path = if ready { "/readyz" } else { "/healthz" };
    let addr = match &settings.api.listen {
        crate::config::ApiListen::Tcp(addr) => *addr,
        crate::config::ApiListen::Disabled => {
            return Err(CliError::Usage(
                "the API is disabled (api.listen = \"\"); nothing to ask".into(),
            ));
        }
        crate::config::ApiListen::Unix(path) => {
            return Err(CliError::Usage(format!(
                "the API listens on the unix socket {}; ask it with: curl --unix-socket {} http://localhost{}",
                path.display(),
                path.display(),
                if ready { "/readyz" } else { "/healthz" }
            )));
        }
    };
    // A wildcard listen address is reached through loopback.
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| CliError::Failed(crate::http::describe(&e)))?;
    match client.get(format!("http://{host}{path}")).send().await {
        Ok(r) if r.status().is_success() => {
            println!("ok");
            Ok(0)
        }
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            println!("unhealthy: HTTP {status}: {}", body.trim());
            Ok(1)
        }
        Err(e) => Err(CliError::Failed(format!(
            "cannot reach docfetch at {host}: {}",
            crate::http::describe(&e)
        ))),
    }
}

/// `docfetch api-token [--path]`: the token from the same config the daemon
/// reads, so nothing has to be copied by hand. It is read, never made: made
/// by another user, the daemon could not read it.
pub(super) fn api_token(settings: &Settings, path: bool) -> Result<u8, CliError> {
    let Some(at) = settings.api.auth.token_path() else {
        return Err(CliError::Usage(
            "api.auth = \"none\": the API takes no token (on its unix socket, the socket's mode decides who may connect)".into(),
        ));
    };
    if path {
        println!("{}", at.display());
        return Ok(0);
    }
    match crate::api::token::read(&settings.api.auth) {
        Ok(Some(token)) => {
            println!("{}", token.expose());
            Ok(0)
        }
        Ok(None) => Ok(0),
        Err(e) => Err(CliError::Failed(e.to_string())),
    }
}

/// Exit codes for systemd's `ExecCondition=`, which skips a unit on 1-254
/// and fails it on 255: a fresh install's config names no account, and a
/// daemon with nothing to fetch should stay down without a failed unit; a
/// config that does not load should fail the start where the admin sees it.
pub(super) const CONDITION_MET: u8 = 0;
pub(super) const CONDITION_NO_ACCOUNT: u8 = 1;
pub(super) const CONDITION_BROKEN: u8 = 255;

/// `check-config --require-account`: does the config name an account?
pub(super) fn require_account(cli: &Cli, env: &Environment) -> u8 {
    let shown = cli.config.as_deref().map_or_else(
        || "the config".to_string(),
        |path| path.display().to_string(),
    );
    match load_settings(cli, env) {
        Err(e) => {
            eprintln!("docfetch: {e}");
            CONDITION_BROKEN
        }
        Ok(settings) if settings.accounts.is_empty() => {
            eprintln!(
                "docfetch: {shown} names no account, so there is nothing to fetch yet: \
                 add an [accounts.NAME] table, then start the service again"
            );
            CONDITION_NO_ACCOUNT
        }
        Ok(_) => CONDITION_MET,
    }
}

/// What `check-config` finds that will surely fail once the daemon runs,
/// beyond what loading the config already refused.
#[derive(Debug, Default)]
pub(super) struct Findings {
    /// Will fail: a schedule file naming a missing account (or otherwise
    /// unusable). `check-config` exits 1.
    pub errors: Vec<String>,
    /// Will fail or expose something, but the daemon still starts.
    pub warnings: Vec<String>,
}

/// Looks at the schedule files, the accounts' URLs and the folders.
pub(super) fn findings(settings: &Settings) -> Findings {
    let mut found = Findings::default();
    // The config's own [[schedules]] were checked while loading (an unknown
    // account there refuses the config); the schedule files are read only by
    // the daemon, which skips a bad one: here it is an error.
    let (_, errors) = crate::schedule::load_dir(&settings.paths.schedules, settings);
    for e in errors {
        found
            .errors
            .push(format!("schedule {}: {}", e.source_name, e.message));
    }
    for (name, account) in &settings.accounts {
        let url = account.config.base_url();
        if url.scheme() == "http" && !crate::config::keys::is_loopback(url) {
            found.warnings.push(format!(
                "accounts.{name}.base_url {url} is plain http:// to a host that is not loopback: \
                 the credentials and the documents cross the network unencrypted"
            ));
        }
    }
    for (key, path) in [
        ("paths.requests", &settings.paths.requests),
        ("paths.output", &settings.paths.output),
    ] {
        if let Some(problem) = unwritable(path) {
            found.warnings.push(format!(
                "{key} {} exists but {problem}; run this check as the user the daemon runs as",
                path.display()
            ));
        }
    }
    found
}

/// Why an existing folder cannot be written by the user running the check,
/// or `None` when it can (or does not exist yet: the daemon makes it).
fn unwritable(path: &std::path::Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return Some("is not a folder".to_string());
    }
    // access(2) answers for the real user, read-only mounts included, and
    // leaves nothing behind (check-config makes nothing).
    let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
    match rustix::fs::access(path, access) {
        Ok(()) => None,
        Err(e) => Some(format!(
            "is not writable by this user ({})",
            std::io::Error::from(e)
        )),
    }
}

/// `docfetch check-config`: 0 when the config is valid and nothing will
/// surely fail, 1 when something will.
pub(super) fn check_config(settings: &Settings) -> u8 {
    let s = &settings.scheduler;
    let found = findings(settings);
    if found.errors.is_empty() {
        println!("config is valid");
    } else {
        println!(
            "config loads, but {} thing(s) will fail (error: lines below)",
            found.errors.len()
        );
    }
    println!(
        "store:     {}",
        crate::store::redact_store_url(&settings.store.url)
    );
    if let Some(warning) = crate::config::store_transport_warning(&settings.store.url) {
        println!("warning:   {warning}");
    }
    println!("requests:  {}", settings.paths.requests.display());
    println!("output:    {}", settings.paths.output.display());
    println!(
        "scheduler: {} workers, polls {}..{}, {} attempts, deadline {}, files up to {} bytes",
        s.workers,
        format_duration(s.poll_initial),
        format_duration(s.poll_max),
        s.max_attempts,
        format_duration(s.deadline),
        s.max_file_size
    );
    match (&settings.api.listen, &settings.api.auth) {
        (crate::config::ApiListen::Disabled, _) => println!("api:       off"),
        (listen, crate::config::ApiAuth::None) => {
            println!("api:       {listen}, no token (api.auth = \"none\", socket mode 0660)")
        }
        (listen, crate::config::ApiAuth::Token { path, .. }) => {
            println!("api:       {listen}, token from {}", path.display())
        }
        (listen, crate::config::ApiAuth::Generated(path)) => println!(
            "api:       {listen}, token in {}{}",
            path.display(),
            if path.exists() {
                ""
            } else {
                " (made when the daemon first starts)"
            }
        ),
    }
    if !settings.hooks.named.is_empty() {
        let names: Vec<&str> = settings.hooks.named.keys().map(String::as_str).collect();
        println!("hooks:     {}", names.join(", "));
    }
    if settings.hooks.allow_request_commands {
        println!(
            "warning:   hooks.allow_request_commands = true: anyone who can submit a request can run commands as docfetch"
        );
    }
    if settings.accounts.is_empty() {
        println!(
            "accounts:  none (add [accounts.NAME] sections; see config/docfetch.example.toml)"
        );
    }
    for (name, account) in &settings.accounts {
        println!("account:   {name} ({})", account.config.provider_name());
    }
    for warning in &found.warnings {
        println!("warning:   {warning}");
    }
    for error in &found.errors {
        println!("error:     {error}");
    }
    if found.errors.is_empty() { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Environment;

    fn settings(dir: &std::path::Path, accounts: &str) -> Settings {
        let toml = format!(
            "[paths]\nrequests = \"{d}/requests\"\noutput = \"{d}/output\"\nschedules = \"{d}/schedules.d\"\n\n{accounts}",
            d = dir.display()
        );
        match Settings::from_toml(&toml, &Environment::default()) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    const ATOL: &str = "[accounts.atol]\nprovider = \"atol-kkt\"\nbase_url = \"http://127.0.0.1:9\"\nlogin = \"l\"\npassword = \"p\"\n";

    #[test]
    fn a_schedule_file_naming_a_missing_account_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let schedules = dir.path().join("schedules.d");
        std::fs::create_dir_all(&schedules).unwrap();
        let schedule = |account: &str| {
            format!(
                "name = \"daily\"\ncron = \"0 6 * * *\"\n[request]\naccount = \"{account}\"\noperation = \"cash-registers\"\nname = \"kkt-{{{{now | %Y%m%d}}}}\"\n"
            )
        };
        std::fs::write(schedules.join("daily.toml"), schedule("atol")).unwrap();
        let found = findings(&settings(dir.path(), ATOL));
        assert!(found.errors.is_empty(), "{found:?}");

        std::fs::write(schedules.join("daily.toml"), schedule("gone")).unwrap();
        let found = findings(&settings(dir.path(), ATOL));
        assert_eq!(found.errors.len(), 1, "{found:?}");
        assert!(found.errors[0].contains("daily.toml"), "{found:?}");
        assert!(found.errors[0].contains("gone"), "{found:?}");
        assert_eq!(check_config(&settings(dir.path(), ATOL)), 1);
    }

    #[test]
    fn plain_http_is_a_warning_only_off_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let found = findings(&settings(dir.path(), ATOL));
        assert!(found.warnings.is_empty(), "{found:?}");
        let remote = "[accounts.atol]\nprovider = \"atol-kkt\"\nbase_url = \"http://atol.example.com\"\nallow_plain_http = true\nlogin = \"l\"\npassword = \"p\"\n";
        let found = findings(&settings(dir.path(), remote));
        assert_eq!(found.warnings.len(), 1, "{found:?}");
        assert!(
            found.warnings[0].contains("accounts.atol.base_url http://atol.example.com"),
            "{found:?}"
        );
        assert!(found.errors.is_empty());
    }

    #[test]
    fn a_requests_path_that_is_a_file_is_a_warning_and_a_missing_folder_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let found = findings(&settings(dir.path(), ""));
        assert!(found.warnings.is_empty(), "{found:?}");
        std::fs::write(dir.path().join("requests"), b"not a folder").unwrap();
        let found = findings(&settings(dir.path(), ""));
        assert_eq!(found.warnings.len(), 1, "{found:?}");
        assert!(
            found.warnings[0].starts_with("paths.requests ")
                && found.warnings[0].contains("is not a folder"),
            "{found:?}"
        );
    }
}
