//! The command line: `docfetch run | submit | jobs | show | cancel | retry |
//! check-config | api-token | sim | demo`. Parsing is clap's; each command is a function
//! that returns how it ended, and `main` turns that into an exit code
//! (0 success, 1 failure, 2 usage or config error).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Environment, Settings};
use crate::inbox::{self, AcceptError};
use crate::job::request::RequestFormat;
use crate::job::{Job, JobState, now_ms, rfc3339};
use crate::store::{JobFilter, Store, StoreError};
use crate::units::format_duration;

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
    /// Create the store if needed and apply its migrations, then exit.
    Migrate,
    /// Move jobs between stores: `docfetch store copy --from sqlite://… --to postgres://…`.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Load and validate the config, then print what it means.
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

/// Loads settings for a command.
pub fn load_settings(cli: &Cli, env: &Environment) -> Result<Arc<Settings>, CliError> {
    Ok(Arc::new(Settings::load(cli.config.as_deref(), env)?))
}

/// Runs a parsed command. Returns the exit code on success paths that are
/// not plain success (`submit --wait` with a failed job).
pub async fn execute(cli: Cli, env: Environment) -> Result<u8, CliError> {
    match &cli.command {
        Command::Sim { listen, pending } => return sim(*listen, *pending).await.map(|()| 0),
        Command::Demo { dir } => return crate::cli::demo(dir.clone(), &env).await,
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
        } => return Ok(require_account(&cli, &env)),
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
        Command::Submit { files, wait } => submit(&settings, &files, wait).await,
        Command::Jobs {
            state,
            account,
            limit,
            json,
        } => {
            let store = Store::open(&settings.store.url).await?;
            let jobs = store
                .list(&JobFilter {
                    state,
                    account,
                    limit,
                    offset: 0,
                })
                .await?;
            print_jobs(&jobs, json);
            Ok(0)
        }
        Command::Show { job, json } => show(&settings, &job, json).await.map(|()| 0),
        Command::Cancel { job } => {
            let store = Store::open(&settings.store.url).await?;
            let cancelled = store
                .cancel(&job, now_ms())
                .await
                .map_err(transition_error)?;
            if let Err(e) = crate::receipt::write(&settings.paths.output, &cancelled).await {
                eprintln!("warning: cannot write the receipt: {e}");
            }
            // Tell the service too, where it can hear it (OFD's CancelUrl).
            if let Some(account) =
                crate::providers::Providers::from_settings(&settings).get(&cancelled.account)
            {
                let http = crate::http::client(&settings.http)
                    .map_err(|e| CliError::Failed(crate::http::describe(&e)))?;
                if let Err(e) = account.provider.cancel_remote(&http, &cancelled).await {
                    eprintln!(
                        "warning: the job is cancelled here, but the service was not told: {e}"
                    );
                }
            }
            println!("cancelled {}", cancelled.name);
            Ok(0)
        }
        Command::Retry { job } => {
            let store = Store::open(&settings.store.url).await?;
            let deadline = now_ms()
                + i64::try_from(settings.scheduler.deadline.as_millis()).unwrap_or(i64::MAX / 2);
            let queued = store
                .retry(&job, now_ms(), deadline)
                .await
                .map_err(transition_error)?;
            if let Err(e) = crate::receipt::remove(&settings.paths.output, &queued) {
                eprintln!("warning: cannot remove the old receipt: {e}");
            }
            println!("queued {} again", queued.name);
            Ok(0)
        }
        Command::CheckConfig { .. } => {
            check_config(&settings);
            Ok(0)
        }
        Command::Health { ready } => health(&settings, ready).await,
        Command::ApiToken { path } => api_token(&settings, path),
        Command::Migrate => {
            Store::open(&settings.store.url).await?;
            println!(
                "store {} is up to date",
                crate::config::redact_store_url(&settings.store.url)
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
                crate::config::redact_store_url(&from),
                crate::config::redact_store_url(&to),
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
        Command::Schedules { action, json } => schedules(&settings, action, json).await,
        Command::Sim { .. } | Command::Demo { .. } | Command::Completions { .. } | Command::Man => {
            Ok(0)
        }
    }
}

/// `docfetch schedules [run NAME]`.
async fn schedules(
    settings: &Arc<Settings>,
    action: Option<SchedulesAction>,
    json: bool,
) -> Result<u8, CliError> {
    let store = Store::open(&settings.store.url).await?;
    let schedules = crate::schedule::Schedules::load(store.clone(), settings.clone());
    let (_, errors) = crate::schedule::load_dir(&settings.paths.schedules, settings);
    for e in &errors {
        eprintln!("not loaded: {e}");
    }
    let all = schedules.list().await;
    match action {
        Some(SchedulesAction::Run { name }) => {
            let Some(schedule) = all.iter().find(|s| s.name == name) else {
                let known: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
                return Err(CliError::Usage(format!(
                    "no schedule named {name:?}; schedules: {}",
                    known.join(", ")
                )));
            };
            let now = chrono::Utc::now().with_timezone(&schedule.timezone);
            match schedules.fire(schedule, now).await? {
                crate::schedule::Fired::Created(job) => {
                    println!("fired {}: job {}", schedule.name, job.name)
                }
                crate::schedule::Fired::AlreadyThere(job) => {
                    println!("{} already fired this second: job {job}", schedule.name)
                }
            }
            Ok(0)
        }
        None => {
            let now = chrono::Utc::now();
            let mut out = std::io::stdout().lock();
            if !json {
                let _ = writeln!(
                    out,
                    "{:<24} {:<8} {:<18} {:<16} {:<26} SOURCE",
                    "NAME", "ENABLED", "CRON", "TIMEZONE", "NEXT (LOCAL)"
                );
            }
            for s in &all {
                let next = s.next_after(now);
                let last = store.last_fire(&s.name).await?;
                if json {
                    let _ = writeln!(
                        out,
                        "{}",
                        serde_json::json!({
                            "name": s.name, "enabled": s.enabled, "cron": s.cron_text,
                            "timezone": s.timezone.name(), "next": next.map(|t| t.to_rfc3339()),
                            "last_fired": last.map(rfc3339), "source": s.source,
                        })
                    );
                } else {
                    let next = if s.enabled {
                        next.map(|t| t.format("%Y-%m-%d %H:%M:%S %Z").to_string())
                            .unwrap_or_else(|| "never".into())
                    } else {
                        "-".into()
                    };
                    let _ = writeln!(
                        out,
                        "{:<24} {:<8} {:<18} {:<16} {:<26} {}",
                        s.name,
                        if s.enabled { "yes" } else { "no" },
                        s.cron_text,
                        s.timezone.name(),
                        next,
                        s.source
                    );
                }
            }
            Ok(if errors.is_empty() { 0 } else { 1 })
        }
    }
}

/// `docfetch health`: GET /healthz (or /readyz) of the configured listener.
async fn health(settings: &Settings, ready: bool) -> Result<u8, CliError> {
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
fn api_token(settings: &Settings, path: bool) -> Result<u8, CliError> {
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

fn transition_error(e: StoreError) -> CliError {
    match e {
        StoreError::Conflict { detail, .. } => CliError::Failed(detail),
        other => other.into(),
    }
}

/// Exit codes for systemd's `ExecCondition=`, which skips a unit on 1-254
/// and fails it on 255: a fresh install's config names no account, and a
/// daemon with nothing to fetch should stay down without a failed unit; a
/// config that does not load should fail the start where the admin sees it.
const CONDITION_MET: u8 = 0;
const CONDITION_NO_ACCOUNT: u8 = 1;
const CONDITION_BROKEN: u8 = 255;

/// `check-config --require-account`: does the config name an account?
fn require_account(cli: &Cli, env: &Environment) -> u8 {
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

fn check_config(settings: &Settings) {
    let s = &settings.scheduler;
    println!("config is valid");
    println!(
        "store:     {}",
        crate::config::redact_store_url(&settings.store.url)
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

async fn submit(settings: &Arc<Settings>, files: &[PathBuf], wait: bool) -> Result<u8, CliError> {
    let store = Store::open(&settings.store.url).await?;
    let mut submitted = Vec::new();
    let mut rejected = 0;
    for path in files {
        match submit_one(&store, settings, path).await {
            Ok(job) => {
                println!("submitted {} ({})", job.name, job.id);
                submitted.push(job);
            }
            Err(SubmitError::Rejected(reason)) => {
                eprintln!("{}: rejected: {reason}", path.display());
                rejected += 1;
            }
            Err(SubmitError::Failed(e)) => return Err(e),
        }
    }
    if rejected > 0 && submitted.is_empty() {
        return Err(CliError::Usage(format!(
            "{rejected} request(s) rejected; nothing submitted"
        )));
    }
    if !wait {
        return Ok(if rejected > 0 { 1 } else { 0 });
    }
    if let Store::Sqlite(s) = &store
        && let Ok(lock) = crate::store::sqlite::DaemonLock::acquire(s.path())
    {
        drop(lock);
        eprintln!(
            "note: no daemon is running on this store; the jobs run once `docfetch run` starts"
        );
    }
    let failed = wait_for(&store, &submitted, &settings.paths.output).await?;
    Ok(if failed > 0 || rejected > 0 { 1 } else { 0 })
}

enum SubmitError {
    Rejected(String),
    Failed(CliError),
}

async fn submit_one(store: &Store, settings: &Settings, path: &Path) -> Result<Job, SubmitError> {
    let format =
        RequestFormat::from_path(path).map_err(|e| SubmitError::Rejected(e.to_string()))?;
    let meta = std::fs::metadata(path).map_err(|e| {
        SubmitError::Failed(CliError::Usage(format!(
            "cannot read {}: {e}",
            path.display()
        )))
    })?;
    if meta.len() > settings.inbox.max_request_size {
        return Err(SubmitError::Rejected(format!(
            "the request is {} bytes; requests are limited to {} bytes",
            meta.len(),
            settings.inbox.max_request_size
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        SubmitError::Failed(CliError::Usage(format!(
            "cannot read {}: {e}",
            path.display()
        )))
    })?;
    let stem = path.file_stem().and_then(|s| s.to_str());
    // Each submit is a new request: a duplicate name is refused even when
    // the content is identical (only the drop directory recognises a file
    // it has already accepted).
    let source = format!("cli:{}:{}", path.display(), uuid::Uuid::new_v4().simple());
    match inbox::accept(store, settings, &bytes, format, stem, &source).await {
        Ok(job) => Ok(job),
        Err(AcceptError::Request(e)) => Err(SubmitError::Rejected(e.to_string())),
        Err(AcceptError::Store(e)) => Err(SubmitError::Failed(e.into())),
    }
}

/// Waits until every job is finished and returns how many failed. On a
/// terminal it shows a live line per job (a spinner while waiting, bytes and
/// rate while a file is being written); otherwise it prints a line per change.
async fn wait_for(store: &Store, jobs: &[Job], output: &Path) -> Result<usize, CliError> {
    let live = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:.bold} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let lines: Vec<indicatif::ProgressBar> = jobs
        .iter()
        .map(|job| {
            let bar = bars.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(job.name.clone());
            if live {
                bar.enable_steady_tick(Duration::from_millis(120));
            }
            bar
        })
        .collect();
    let mut last: Vec<Option<(JobState, u32)>> = vec![None; jobs.len()];
    let mut written: Vec<(u64, std::time::Instant)> =
        vec![(0, std::time::Instant::now()); jobs.len()];
    loop {
        let mut finished = 0;
        let mut failed = 0;
        for (i, job) in jobs.iter().enumerate() {
            let Some(current) = store.find(&job.id).await? else {
                return Err(CliError::Failed(format!(
                    "job {} disappeared from the store",
                    job.name
                )));
            };
            let seen = Some((current.state, current.polls));
            let done = current.state.is_finished();
            if live {
                let message = match (current.state, part_bytes(&output.join(&current.name))) {
                    (JobState::Running, Some(bytes)) => {
                        let (before, at) = written[i];
                        let rate = (bytes.saturating_sub(before)) as f64
                            / at.elapsed().as_secs_f64().max(0.001);
                        written[i] = (bytes, std::time::Instant::now());
                        format!(
                            "downloading {} ({}/s)",
                            indicatif::HumanBytes(bytes),
                            indicatif::HumanBytes(rate as u64)
                        )
                    }
                    _ => describe_progress(&current),
                };
                if done && last[i] != seen {
                    lines[i].finish_with_message(message);
                } else if !done {
                    lines[i].set_message(message);
                }
            } else if last[i] != seen {
                println!("{}: {}", current.name, describe_progress(&current));
            }
            last[i] = seen;
            if done {
                finished += 1;
                if current.state != JobState::Done {
                    failed += 1;
                }
            }
        }
        if finished == jobs.len() {
            return Ok(failed);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Bytes written so far to a download in progress (`.NAME.part`) in `dir`.
fn part_bytes(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with('.') && name.ends_with(".part")
        })
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .max()
}

fn describe_progress(job: &Job) -> String {
    match job.state {
        JobState::Done => {
            let files: Vec<String> = job
                .result
                .iter()
                .flat_map(|r| r.files.iter())
                .map(|f| format!("{} ({} bytes)", f.name, f.size))
                .collect();
            format!("done: {}", files.join(", "))
        }
        JobState::Failed => format!(
            "failed: {}",
            job.last_error.as_deref().unwrap_or("unknown error")
        ),
        JobState::Waiting => {
            let next =
                Duration::from_millis(u64::try_from(job.next_run_at - now_ms()).unwrap_or(0));
            match &job.last_error {
                Some(e) => format!(
                    "waiting after an error (next try in {}): {e}",
                    format_duration(next)
                ),
                None => format!(
                    "waiting ({} polls so far, next in {})",
                    job.polls,
                    format_duration(next)
                ),
            }
        }
        other => other.to_string(),
    }
}

fn print_jobs(jobs: &[Job], json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        for job in jobs {
            let _ = writeln!(out, "{}", job.summary_json());
        }
        return;
    }
    let _ = writeln!(
        out,
        "{:<28} {:<10} {:<10} {:>6} {:>6}  {:<20}  LAST ERROR",
        "NAME", "PROVIDER", "STATE", "AGE", "POLLS", "NEXT"
    );
    for job in jobs {
        let age = Duration::from_millis(u64::try_from(now_ms() - job.created_at).unwrap_or(0));
        let next = if job.state.is_finished() {
            "-".to_string()
        } else {
            rfc3339(job.next_run_at)
        };
        let _ = writeln!(
            out,
            "{:<28} {:<10} {:<10} {:>6} {:>6}  {:<20}  {}",
            job.name,
            job.provider,
            job.state.as_str(),
            format_duration(age),
            job.polls,
            next,
            job.last_error.as_deref().unwrap_or("")
        );
    }
}

async fn show(settings: &Settings, key: &str, json: bool) -> Result<(), CliError> {
    let store = Store::open(&settings.store.url).await?;
    let job = store
        .find(key)
        .await?
        .ok_or_else(|| CliError::Usage(format!("no job named or with id {key:?}")))?;
    let events = store.events(&job.id).await?;
    if json {
        let mut value = job.summary_json();
        value["events"] = serde_json::to_value(
            events
                .iter()
                .map(crate::job::JobEvent::to_json)
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        println!("{value:#}");
        return Ok(());
    }
    println!("name:       {}", job.name);
    println!("id:         {}", job.id);
    println!("account:    {} ({})", job.account, job.provider);
    println!("operation:  {}", job.operation);
    println!("state:      {}", describe_progress(&job));
    println!(
        "attempts:   {} in a row, {} polls, {} steps",
        job.attempts, job.polls, job.steps
    );
    println!("created:    {}", rfc3339(job.created_at));
    if let Some(at) = job.finished_at {
        println!("finished:   {}", rfc3339(at));
    }
    println!("source:     {}", job.source);
    println!(
        "output:     {}",
        crate::receipt::job_dir(&settings.paths.output, &job).display()
    );
    if let Some(next) = crate::job::next_run_line(&job, &events) {
        println!("next:       {next}");
    }
    println!("history:");
    for e in events {
        println!("  {}  {:<9} {}", rfc3339(e.at), e.kind, e.message);
    }
    Ok(())
}

async fn sim(listen: std::net::SocketAddr, pending: u32) -> Result<(), CliError> {
    let config = crate::sim::SimConfig {
        fresh: crate::sim::fresh::FreshSimConfig {
            pending_polls: pending,
            ..Default::default()
        },
        ..Default::default()
    };
    let sim = crate::sim::Sim::start(listen, config)
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on {listen}: {e}")))?;
    println!("docfetch simulator listening on http://{}", sim.addr);
    println!("# accounts for your config file:\n{}", sim.accounts_toml());
    crate::app::shutdown_signal().await;
    sim.stop().await;
    Ok(())
}

/// The demo's requests: (file dropped, job name, content), one or more per provider.
const DEMO_REQUESTS: &[(&str, &str, &str)] = &[
    (
        "usn-2018q3.json",
        "usn-2018q3",
        r#"{ "account": "fresh-sim", "operation": "tax_usn_calculator",
  "params": {"organization": {"inn": "783900281039", "kpp": ""}, "date": "2018-09-30T23:59:59"},
  "name": "usn-2018q3" }"#,
    ),
    (
        "sales-book.toml",
        "sales-book",
        "account = \"fresh-sim-plain\"\noperation = \"sales_book\"\n[params]\norganization = { inn = \"783900281039\", kpp = \"\" }\n_sim = { pending = 3, size = 65536, filename = \"Книга продаж 3 кв.xlsx\" }\n",
    ),
    (
        "ofd-shifts.json",
        "ofd-shifts",
        r#"{ "account": "ofd-sim", "operation": "report",
  "params": {"ReportType": "CloseShiftReport", "DateFrom": "2026-11-01T00:00:00", "DateTo": "2026-11-22T23:59:59",
             "SelectAllKkts": true, "UseXlsxFile": true} }"#,
    ),
    (
        "inventory.json",
        "inventory",
        r#"{ "account": "kontur-extern-sim", "operation": "drafts-build",
  "params": {
    "builder-type": "urn:drafts-builder-type:fns534-inventory",
    "sender": {"inn": "7810000000", "kpp": "781001001", "certificate": {"content": "MIIBdemo"}},
    "payer": {"inn": "7810000000", "organization": {"kpp": "781001001"}},
    "recipient": {"ifns-code": "7810"},
    "builder-data": {"related-document": {"related-docflow-id": "d6b0c7a2-5f0e-4f37-9a5b-0c1e2d3f4a5b",
                                          "related-document-id": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"}},
    "documents": [{"builder-data": {"claim-item-number": "1.01", "scanned-document-name": "Опись.pdf", "type": "scanned"},
                   "files": [{"path": "inventory/scan.pdf"}]}]
  } }"#,
    ),
    (
        "registers.json",
        "registers",
        r#"{ "account": "atol-sim", "operation": "cash-registers", "params": {"limit": 5} }"#,
    ),
    (
        "protocol.json",
        "protocol",
        r#"{ "account": "kontur-diadoc-sim", "operation": "document-protocol",
  "params": {"boxId": "0f4bb5a6-6c1d-4c2c-9a57-7a6f7d1f0b31", "messageId": "b1e9c0d2-2f4a-4f5e-8d43-6f3c1a9e7b20",
             "documentId": "5d6a4c8e-3b7f-4e0a-9c1d-8f2e6b4a7c90"} }"#,
    ),
];

/// `docfetch demo`: everything in one process, on a temporary setup.
pub async fn demo(dir: Option<PathBuf>, env: &Environment) -> Result<u8, CliError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| CliError::Failed(format!("{what}: {e}"));
    let root = match dir {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("docfetch-demo-")
            .tempdir()
            .map_err(|e| fail("cannot create a temporary folder", &e))?
            .keep(),
    };
    std::fs::create_dir_all(&root).map_err(|e| fail("cannot create the demo folder", &e))?;
    let sim = crate::sim::Sim::start_local(crate::sim::SimConfig::default())
        .await
        .map_err(|e| fail("cannot start the simulator", &e))?;
    let config = format!(
        "[store]\nurl = \"sqlite://{root}/docfetch.db\"\n[paths]\nrequests = \"{root}/requests\"\noutput = \"{root}/output\"\nattachments = \"{root}/attachments\"\nschedules = \"{root}/schedules.d\"\n[scheduler]\npoll_initial = \"300ms\"\npoll_max = \"2s\"\nretry_initial = \"300ms\"\n[inbox]\nscan_interval = \"200ms\"\nsettle = \"0s\"\n[log]\nlevel = \"warn\"\n[api]\nlisten = \"\"\n\n{}",
        sim.accounts_toml(),
        root = root.display()
    );
    let config_path = root.join("docfetch.toml");
    std::fs::write(&config_path, &config).map_err(|e| fail("cannot write the demo config", &e))?;
    let settings = Arc::new(Settings::from_toml(&config, env)?);
    crate::telemetry::init(&settings.log, env);
    println!("docfetch demo in {}", root.display());
    println!("simulated services at http://{}", sim.addr);

    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(crate::app::run_until_stopped(
        settings.clone(),
        shutdown.clone(),
        Some(Box::new(move || {
            let _ = ready_tx.send(());
        })),
    ));
    if ready_rx.await.is_err() {
        return match daemon.await {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(CliError::Failed("the daemon did not start".into())),
        };
    }
    // The Extern build uploads a scanned document from the attachments folder.
    let scan = settings.paths.attachments.join("inventory/scan.pdf");
    std::fs::create_dir_all(settings.paths.attachments.join("inventory"))
        .and_then(|()| std::fs::write(&scan, b"%PDF-1.4\n% demo scan of an inventory\n"))
        .map_err(|e| fail("cannot write the demo attachment", &e))?;
    for (file, _, body) in DEMO_REQUESTS {
        // Write-then-rename, the way any writer should drop a request.
        let tmp = settings.paths.requests.join(format!("{file}.tmp"));
        std::fs::write(&tmp, body).map_err(|e| fail("cannot write a request", &e))?;
        std::fs::rename(&tmp, settings.paths.requests.join(file))
            .map_err(|e| fail("cannot drop a request", &e))?;
        println!("dropped requests/{file}");
    }
    let store = Store::open(&settings.store.url).await?;
    let names: Vec<&str> = DEMO_REQUESTS.iter().map(|(_, name, _)| *name).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut shown: Vec<Option<(JobState, u32)>> = vec![None; names.len()];
    let mut failed = 0;
    loop {
        let mut finished = 0;
        for (i, name) in names.iter().enumerate() {
            if let Some(job) = store.find(name).await? {
                let seen = Some((job.state, job.polls));
                if shown[i] != seen {
                    shown[i] = seen;
                    println!("  {name:<12} {}", describe_progress(&job));
                }
                if job.state.is_finished() {
                    finished += 1;
                    failed += usize::from(job.state != JobState::Done);
                }
            }
        }
        if finished == names.len() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            shutdown.cancel();
            return Err(CliError::Failed(
                "the demo jobs did not finish within two minutes".into(),
            ));
        }
        failed = 0;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    match daemon.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(CliError::Failed(e.to_string())),
    }
    sim.stop().await;
    println!("\nfiles are in {}:", settings.paths.output.display());
    for name in names {
        let dir = settings.paths.output.join(name);
        let mut entries: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        entries.sort();
        println!("  {name}/  {}", entries.join("  "));
    }
    println!("\nconfig used: {}", config_path.display());
    println!(
        "look closer:  docfetch --config {} show usn-2018q3",
        config_path.display()
    );
    Ok(if failed > 0 { 1 } else { 0 })
}
