//! The command line: `docfetch run | submit | jobs | show | cancel | retry |
//! accounts [check] | check-config | api-token | sim | demo`. Parsing is clap's; each command is a function
//! that returns how it ended, and `main` turns that into an exit code
//! (0 success, 1 failure, 2 usage or config error).
//!
//! The clap definitions and the dispatch are here; each group of commands
//! has its file: [`jobs`], [`schedules`], [`accounts`], [`setup`], [`demo`].

mod accounts;
mod demo;
mod jobs;
mod schedules;
mod setup;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Environment, Settings};
use crate::job::JobState;
use crate::store::{JobFilter, Store, StoreError};

#[derive(Debug, Parser)]
#[command(
    name = "docfetch",
    version,
    about = "Orders slow documents from accounting and fiscal services, waits for them, and saves the files."
)]
pub struct Cli {
    /// Config file (TOML). Without it, every key has its default.
    #[arg(long, global = true, env = "DOCFETCH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: watch the requests directory and work the queue until SIGTERM/SIGINT.
    Run,
    /// Submit request files (JSON or TOML) to the queue.
    Submit {
        /// Request files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Wait until every submitted job is finished; exit 1 if one failed.
        #[arg(long)]
        wait: bool,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only jobs in this state (queued, running, waiting, done, failed, cancelled).
        #[arg(long, value_name = "STATE")]
        state: Option<JobState>,
        /// Only jobs of this account.
        #[arg(long, value_name = "ACCOUNT")]
        account: Option<String>,
        /// At most this many jobs (0 for all).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// Redraw the list until Ctrl-C: in place on a terminal; when stdout
        /// is not a terminal, each refresh is printed after the last, headed
        /// by `# TIME`.
        #[arg(long)]
        watch: bool,
        /// How often `--watch` refreshes.
        #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_interval)]
        interval: Duration,
    },
    /// Show one job with its event history.
    Show {
        /// Job name or id.
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued, waiting or running job.
    Cancel {
        /// Job name or id.
        job: String,
    },
    /// Queue a failed or cancelled job again, from the start.
    Retry {
        /// Job name or id.
        job: String,
    },
    /// List the schedules with their next firing, or fire one now.
    Schedules {
        #[command(subcommand)]
        action: Option<SchedulesAction>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the configured accounts: provider, base URL, and where each
    /// secret is read from (never the secret).
    Accounts {
        #[command(subcommand)]
        action: Option<AccountsAction>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create the store if needed and apply its migrations, then exit.
    Migrate,
    /// Move jobs between stores: `docfetch store copy --from sqlite://… --to postgres://…`.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Load and validate the config, then print what it means and what will
    /// surely fail: a schedule file naming a missing account is an error
    /// (exit 1); plain http:// off loopback and folders this user cannot
    /// write are warnings.
    CheckConfig {
        /// Print nothing and answer for systemd's `ExecCondition=`: exit 0
        /// when the config is valid and names an account, 1 when it names
        /// none (the service is skipped, not failed), 255 when it is invalid
        /// (the start fails, loudly).
        #[arg(long)]
        require_account: bool,
    },
    /// Print shell completions to stdout (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to stdout: `docfetch man > docfetch.1`.
    Man,
    /// Print the API's bearer token (made by `docfetch run` at first start),
    /// for `curl -H "Authorization: Bearer $(docfetch api-token)" …`.
    ApiToken {
        /// Print where the token is kept instead of the token.
        #[arg(long)]
        path: bool,
    },
    /// Ask the running daemon's API whether it is alive (for Docker's HEALTHCHECK).
    Health {
        /// Also require readiness (store reachable, requests directory writable).
        #[arg(long)]
        ready: bool,
    },
    /// Serve the built-in fake providers on loopback until Ctrl-C.
    Sim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8790")]
        listen: std::net::SocketAddr,
        /// "Not ready" answers before each 1C job is ready.
        #[arg(long, default_value_t = 2)]
        pending: u32,
    },
    /// Run the simulator and the daemon together on a temporary setup, submit
    /// a few jobs, show their progress, and print where the files are.
    Demo {
        /// Folder for the demo's store, requests and output (default: a new temporary folder).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Keep the daemon and the simulated services running after the demo
        /// jobs finish, with the dashboard on `--listen`, until Ctrl-C.
        #[arg(long)]
        serve: bool,
        /// Where `--serve` puts the dashboard and the API.
        #[arg(
            long,
            value_name = "ADDR",
            default_value = "127.0.0.1:8750",
            requires = "serve"
        )]
        listen: std::net::SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Copy every job (with its history and hooks state) and the schedules'
    /// last firings from one store to another. Jobs already in the target
    /// are skipped, so it can be run again. Stop the daemons first.
    Copy {
        /// Source store URL (default: the config's store.url).
        #[arg(long)]
        from: Option<String>,
        /// Target store URL.
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountsAction {
    /// Log in to each account's service the cheapest way it allows, ordering
    /// nothing, and say per account OK or the service's reason with what to
    /// fix. Exit 0 when all logged in, 1 when one failed, 2 for an unknown name.
    Check {
        /// Accounts to check (default: all).
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Print one JSON object per account instead of text.
        #[arg(long)]
        json: bool,
        /// Seconds each account may take.
        #[arg(long, default_value_t = 15, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchedulesAction {
    /// Fire a schedule now (its job is named after the current local time).
    Run {
        /// Schedule name.
        name: String,
    },
}

/// How a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or configuration: exit code 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    /// Anything else: exit code 1.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => CliError::Usage(e.to_string()),
            other => CliError::Failed(other.to_string()),
        }
    }
}

impl From<crate::app::AppError> for CliError {
    fn from(e: crate::app::AppError) -> Self {
        CliError::Failed(e.to_string())
    }
}

/// `--interval`: a duration as the config writes them (`500ms`, `2s`, `1m`).
fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = crate::units::parse_duration(text)?;
    if d < Duration::from_millis(100) {
        return Err("at least 100ms".into());
    }
    Ok(d)
}

/// A table for the listings: no borders, one space between columns, each
/// column as wide as its widest cell (the terminal's width is not asked:
/// a line too long wraps rather than breaking the columns).
pub(crate) fn table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header);
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// The table's text, lines without trailing blanks, ending in a newline.
pub(crate) fn render(table: &comfy_table::Table) -> String {
    table
        .lines()
        .map(|line| format!("{}\n", line.trim_end()))
        .collect()
}

/// Loads settings for a command.
pub fn load_settings(cli: &Cli, env: &Environment) -> Result<Arc<Settings>, CliError> {
    Ok(Arc::new(Settings::load(cli.config.as_deref(), env)?))
}

/// Runs a parsed command. Returns the exit code on success paths that are
/// not plain success (`submit --wait` with a failed job).
pub async fn execute(cli: Cli, env: Environment) -> Result<u8, CliError> {
    match &cli.command {
        Command::Sim { listen, pending } => return demo::sim(*listen, *pending).await.map(|()| 0),
        Command::Demo { dir, serve, listen } => {
            let serve = serve.then_some(*listen);
            return demo::demo(dir.clone(), serve, &env).await;
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            // Into a buffer first: writing straight to a closed pipe would panic.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "docfetch", &mut script);
            return match std::io::stdout().write_all(&script) {
                Ok(()) => Ok(0),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
                Err(e) => Err(CliError::Failed(format!(
                    "cannot write the completions: {e}"
                ))),
            };
        }
        Command::CheckConfig {
            require_account: true,
        } => return Ok(setup::require_account(&cli, &env)),
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .map_err(|e| CliError::Failed(format!("cannot render the man page: {e}")))?;
            return match std::io::stdout().write_all(&page) {
                Ok(()) => Ok(0),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
                Err(e) => Err(CliError::Failed(format!("cannot write the man page: {e}"))),
            };
        }
        _ => {}
    }
    let settings = load_settings(&cli, &env)?;
    crate::telemetry::init(&settings.log, &env);
    match cli.command {
        Command::Run => {
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            let stop_asked = crate::app::shutdown_signal();
            tokio::spawn(async move {
                stop_asked.await;
                signal.cancel();
            });
            crate::app::run_until_stopped(settings, shutdown, None).await?;
            Ok(0)
        }
        Command::Submit { files, wait } => jobs::submit(&settings, &files, wait).await,
        Command::Jobs {
            state,
            account,
            limit,
            json,
            watch,
            interval,
        } => {
            let store = Store::open(&settings.store.url).await?;
            let filter = JobFilter {
                state,
                account,
                limit,
                offset: 0,
            };
            if watch {
                return jobs::watch(&store, &filter, json, interval).await;
            }
            let jobs = store.list(&filter).await?;
            jobs::print_jobs(&jobs, json);
            Ok(0)
        }
        Command::Show { job, json } => jobs::show(&settings, &job, json).await.map(|()| 0),
        Command::Cancel { job } => {
            let store = Store::open(&settings.store.url).await?;
            let providers = crate::providers::Providers::from_settings(&settings);
            let http = crate::http::client(&settings.http)
                .map_err(|e| CliError::Failed(crate::http::describe(&e)))?;
            let done = crate::commands::cancel(&store, &settings, &providers, &http, &job)
                .await
                .map_err(transition_error)?;
            for w in &done.warnings {
                eprintln!("warning: {w}");
            }
            println!("cancelled {}", done.job.name);
            Ok(0)
        }
        Command::Retry { job } => {
            let store = Store::open(&settings.store.url).await?;
            let done = crate::commands::retry(&store, &settings, &job)
                .await
                .map_err(transition_error)?;
            for w in &done.warnings {
                eprintln!("warning: {w}");
            }
            println!("queued {} again", done.job.name);
            Ok(0)
        }
        Command::CheckConfig { .. } => Ok(setup::check_config(&settings)),
        Command::Accounts { action: None, json } => accounts::accounts(&settings, json),
        Command::Accounts {
            action:
                Some(AccountsAction::Check {
                    names,
                    json: json_here,
                    timeout,
                }),
            json,
        } => {
            accounts::check(
                &settings,
                &names,
                json || json_here,
                Duration::from_secs(timeout),
            )
            .await
        }
        Command::Health { ready } => setup::health(&settings, ready).await,
        Command::ApiToken { path } => setup::api_token(&settings, path),
        Command::Migrate => {
            Store::open(&settings.store.url).await?;
            println!(
                "store {} is up to date",
                crate::store::redact_store_url(&settings.store.url)
            );
            Ok(0)
        }
        Command::Store {
            action: StoreAction::Copy { from, to },
        } => {
            let from = from.unwrap_or_else(|| settings.store.url.clone());
            let source = Store::open(&from).await?;
            let target = Store::open(&to).await?;
            let report = crate::store::copy::copy(&source, &target).await?;
            println!(
                "copied {} jobs ({} history lines) and {} schedules from {} to {}; {} were there already",
                report.jobs_copied,
                report.events_copied,
                report.schedules_copied,
                crate::store::redact_store_url(&from),
                crate::store::redact_store_url(&to),
                report.jobs_skipped
            );
            if !report.name_conflicts.is_empty() {
                eprintln!(
                    "not copied: the target has other jobs with these names: {}",
                    report.name_conflicts.join(", ")
                );
                return Ok(1);
            }
            Ok(0)
        }
        Command::Schedules { action, json } => schedules::schedules(&settings, action, json).await,
        Command::Sim { .. } | Command::Demo { .. } | Command::Completions { .. } | Command::Man => {
            Ok(0)
        }
    }
}

fn transition_error(e: StoreError) -> CliError {
    match e {
        StoreError::Conflict { detail, .. } => CliError::Failed(detail),
        other => other.into(),
    }
}
