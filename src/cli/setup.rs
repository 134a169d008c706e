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

pub(super) fn check_config(settings: &Settings) {
    let s = &settings.scheduler;
    println!("config is valid");
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
}
