//! Providers: one module per service, behind one small interface.
//!
//! A provider turns a job into HTTP calls one *step* at a time. Each step
//! reads the job's cursor (what has been done so far) and returns a [`Step`]:
//! continue at once, wait (with the service's hint when it gives one), or
//! done with the saved files. Failures are [`ProviderError`]s that already
//! carry the decision the scheduler acts on — retry later, or fail now — so
//! that decision is made in one place per provider and tested there.

pub mod atol;
pub mod check;
pub mod fresh;
pub mod kontur_diadoc;
pub mod kontur_extern;
pub mod ofd;
pub mod oidc;
pub mod params;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::beneath::Subfolder;
use crate::config::keys::{AccountKeys, ConfigError};
use crate::download::{self, DownloadError};
use crate::job::request::RequestError;
use crate::job::{Job, JobResult, SavedFile};
use sha2::{Digest, Sha256};

/// What a finished step asks the scheduler to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Progress was made; save the cursor and run the next step at once.
    Continue(serde_json::Value),
    /// Progress was made that one more cheap, harmless request would find
    /// again (a read, such as a status look that found the file ready):
    /// run the next step at once without waiting for a commit. The cursor
    /// is saved with whatever that step leads to, an error included, so a
    /// retry starts from it; only a crash in between costs the request.
    Next(serde_json::Value),
    /// Nothing to do until later: the service is still working (`poll` is
    /// true: it counts as a poll) or the job was just ordered.
    Wait {
        cursor: serde_json::Value,
        /// The service's own estimate (`Retry-After`, an ETA field).
        hint: Option<Duration>,
        poll: bool,
        /// What the service said, for the job's history.
        note: String,
    },
    /// Every file is saved; the job is done.
    Done {
        cursor: serde_json::Value,
        result: JobResult,
    },
}

/// Whether an error is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network trouble, 5xx, 408/429, a garbled body, a full disk: retried
    /// with backoff, counting toward `max_attempts`.
    Transient,
    /// The service refused the request for good (bad data, not found,
    /// wrong credentials): the job fails at once with this message.
    Permanent,
}

/// A classified provider failure. Its message is shown to users, so it
/// never contains a secret or a URL with a token in it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    pub message: String,
    /// The service's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// The service asked the whole account to slow down (429): no job of
    /// the account runs again before this much time has passed.
    pub account_cooldown: Option<Duration>,
    /// How the request failed below HTTP, when it did (for `accounts check`,
    /// which tells a timeout and a DNS or TLS failure from a refusal).
    pub transport: Option<Transport>,
    /// The HTTP status the error was classified from, when it was.
    pub status: Option<u16>,
}

/// A failure below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// No answer in time.
    Timeout,
    /// No connection: DNS, refused, TLS.
    Connect,
    /// The connection broke or the body could not be read.
    Other,
}

impl ProviderError {
    pub fn transient(message: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Transient,
            message: message.into(),
            retry_after: None,
            account_cooldown: None,
            transport: None,
            status: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Permanent,
            message: message.into(),
            retry_after: None,
            account_cooldown: None,
            transport: None,
            status: None,
        }
    }

    /// A file could not be written or read: a full or failing disk may
    /// pass (transient), a path refused as unsafe will not (permanent).
    pub fn disk(message: impl Into<String>, error: &std::io::Error) -> Self {
        if crate::beneath::is_refused(error) {
            ProviderError::permanent(message)
        } else {
            ProviderError::transient(message)
        }
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        if retry_after.is_some() {
            self.retry_after = retry_after;
            if self.account_cooldown.is_some() {
                self.account_cooldown = retry_after;
            }
        }
        self
    }

    /// A 429: transient, and the whole account pauses for `Retry-After`
    /// (or [`DEFAULT_COOLDOWN`] without one).
    pub fn rate_limited(context: &str, retry_after: Option<Duration>) -> Self {
        let pause = retry_after.unwrap_or(DEFAULT_COOLDOWN);
        ProviderError {
            class: ErrorClass::Transient,
            message: format!(
                "{context}: the service asked to slow down (HTTP 429); the account pauses for {}",
                crate::units::format_duration(pause)
            ),
            retry_after: Some(pause),
            account_cooldown: Some(pause),
            transport: None,
            status: Some(429),
        }
    }

    /// A transport-level failure: connection refused or reset, timeout, a
    /// body cut short. Always transient; the URL is never included.
    pub fn from_reqwest(context: &str, error: &reqwest::Error) -> Self {
        let mut e =
            ProviderError::transient(format!("{context}: {}", crate::http::describe(error)));
        e.transport = Some(if error.is_timeout() {
            Transport::Timeout
        } else if error.is_connect() {
            Transport::Connect
        } else {
            Transport::Other
        });
        e
    }

    /// Classifies an HTTP status that the provider did not handle itself:
    /// 408, 429 and 5xx are transient, other 4xx permanent.
    pub fn from_status(context: &str, status: reqwest::StatusCode, detail: &str) -> Self {
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return ProviderError::rate_limited(context, None);
        }
        let detail = detail.trim();
        let message = if detail.is_empty() {
            format!("{context}: HTTP {status}")
        } else {
            format!("{context}: HTTP {status}: {detail}")
        };
        let mut e = if is_transient_status(status) {
            ProviderError::transient(message)
        } else {
            ProviderError::permanent(message)
        };
        e.status = Some(status.as_u16());
        e
    }
}

/// How long an account pauses after a 429 that came without `Retry-After`.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);

/// 408, 429 and every 5xx are worth retrying; other 4xx are not.
pub fn is_transient_status(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

impl From<DownloadError> for ProviderError {
    fn from(error: DownloadError) -> Self {
        match error {
            // The same file will be just as large next time.
            DownloadError::TooLarge { .. } => ProviderError::permanent(error.to_string()),
            // A symbolic link where the job's folder or file belongs stays
            // there until a person removes it.
            DownloadError::Disk { ref source, .. } if crate::beneath::is_refused(source) => {
                ProviderError::permanent(error.to_string())
            }
            // Network trouble and a full or failing disk may pass: the job
            // waits and retries, and nothing half-written stays behind.
            DownloadError::Truncated { .. }
            | DownloadError::Stalled(_)
            | DownloadError::Network(_)
            | DownloadError::Disk { .. } => ProviderError::transient(error.to_string()),
        }
    }
}

/// Everything a step may use.
pub struct StepContext<'a> {
    pub job: &'a Job,
    pub http: &'a reqwest::Client,
    /// `output/NAME/`: the only place a step may write, reached through
    /// `paths.output` and never through a symbolic link.
    pub output_dir: Subfolder,
    /// `paths.attachments`: the only place a step may read files to upload.
    pub attachments_dir: PathBuf,
    pub max_file_size: u64,
    /// Bound on a whole non-download request and on silence in a download.
    pub timeout: Duration,
}

impl StepContext<'_> {
    /// Saves a response body under a sanitized version of `suggested`
    /// (falling back to `OPERATION.bin`).
    pub async fn save(
        &self,
        response: reqwest::Response,
        suggested: Option<&str>,
    ) -> Result<SavedFile, ProviderError> {
        let fallback = format!("{}.bin", self.job.operation);
        let name = crate::filename::sanitize(suggested.unwrap_or(""), &fallback);
        let started = std::time::Instant::now();
        let saved = download::save_response(
            response,
            &self.output_dir,
            &name,
            self.max_file_size,
            self.timeout,
        )
        .await?;
        crate::metrics::download(&self.job.provider, saved.size, started.elapsed());
        Ok(saved)
    }
    /// Writes a file held in memory (a generated document, a body already
    /// read) atomically into the job's folder and describes it for the
    /// receipt. Over `max_file_size` it is refused for good: the same
    /// contents will be just as large next time.
    pub async fn save_bytes(&self, name: &str, bytes: &[u8]) -> Result<SavedFile, ProviderError> {
        let size = bytes.len() as u64;
        if size > self.max_file_size {
            return Err(ProviderError::permanent(format!(
                "{name} would be {size} bytes, over the {}-byte limit (scheduler.max_file_size)",
                self.max_file_size
            )));
        }
        download::write_atomic(&self.output_dir, name, bytes)
            .await
            .map_err(|e| {
                // A full or failing disk may pass (transient); a path
                // refused as unsafe will not (permanent).
                ProviderError::disk(
                    format!(
                        "cannot write {}: {e}",
                        self.output_dir.path().join(name).display()
                    ),
                    &e,
                )
            })?;
        Ok(SavedFile {
            name: name.to_string(),
            size,
            sha256: crate::job::digest::hex(&Sha256::digest(bytes)),
        })
    }
}

/// Reads a (small) response body, refusing more than `limit` bytes so a
/// hostile endless body cannot exhaust memory.
pub async fn read_body_limited(
    mut response: reqwest::Response,
    limit: usize,
    context: &str,
) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(ProviderError::transient(format!(
                        "{context}: the answer is larger than {limit} bytes, which is not what this service sends"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(ProviderError::from_reqwest(context, &e)),
        }
    }
}

/// A short, printable excerpt of a body for error messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut cut = flat.len().min(200);
    while !flat.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut < flat.len() {
        format!("{}…", &flat[..cut])
    } else {
        flat
    }
}

/// A text from a service, for a one-line error message: whitespace runs
/// (line breaks included) become one space, and more than `max_chars`
/// characters are cut, ending in `…`.
pub fn one_line(text: &str, max_chars: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

/// The contract every provider keeps: how its account settings are read
/// from the config keys, how a request is checked before it is accepted,
/// one step of a job, and (optionally) telling the service a job was
/// cancelled. The [`providers!`] registry below only dispatches to it, so a
/// sixth provider is one folder and one line there.
pub trait Provider: Sized + Send + Sync + 'static {
    /// The name jobs, metrics and `[accounts.*] provider = "…"` use.
    const NAME: &'static str;
    /// The account's typed settings.
    type Account: std::fmt::Debug + Clone + Send + Sync;

    /// Takes this provider's keys from an `[accounts.NAME]` table; the
    /// caller rejects whatever keys are left over.
    fn read_account(keys: &mut AccountKeys<'_>) -> Result<Self::Account, ConfigError>;

    /// Jobs of the account that may run a step at once.
    fn concurrency(account: &Self::Account) -> usize;

    /// The service's base URL, as the account's `base_url` gives it.
    fn base_url(account: &Self::Account) -> &url::Url;

    /// Checks a request's operation and parameters before it is accepted.
    fn validate_request(operation: &str, params: &serde_json::Value) -> Result<(), RequestError>;

    /// The provider bound to one account, with whatever state it shares
    /// between that account's jobs (sessions, tokens).
    fn for_account(account_name: &str, account: Self::Account) -> Self;

    /// Runs one step of `ctx.job`.
    fn step(
        &self,
        ctx: &StepContext<'_>,
    ) -> impl std::future::Future<Output = Result<Step, ProviderError>> + Send;

    /// Logins to the service so far (new tokens); a provider that sends its
    /// credentials with every call never logs in.
    fn logins(&self) -> u64 {
        0
    }

    /// Logs in to the service the cheapest way its document allows, ordering
    /// nothing, so that wrong credentials show before the first job
    /// (`docfetch accounts check`). `account` names the account in messages.
    fn check(
        &self,
        account: &str,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<(), check::CheckFailure>> + Send;

    /// How old the account's login token is, for providers that keep one.
    fn token_age(&self) -> Option<Duration> {
        None
    }

    /// Tells the service a job was cancelled, where it has a way to hear it.
    /// Best effort: the job is cancelled either way.
    fn cancel_remote(
        &self,
        _http: &reqwest::Client,
        _job: &Job,
    ) -> impl std::future::Future<Output = Result<(), ProviderError>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Declares the providers: one line each, `Variant => module::Type`. From it
/// come the account settings enum ([`AccountConfig`]), the runtime enum
/// ([`AnyProvider`]), the list of names ([`PROVIDERS`]) and the dispatch,
/// all of which only forward to [`Provider`].
macro_rules! providers {
    ($($variant:ident => $module:ident :: $ty:ident),+ $(,)?) => {
        /// One configured account, by provider.
        #[derive(Debug, Clone)]
        pub enum AccountConfig {
            $($variant(<$module::$ty as Provider>::Account),)+
        }

        /// The provider names `[accounts.*] provider = "…"` accepts.
        pub const PROVIDERS: &[&str] = &[$(<$module::$ty as Provider>::NAME,)+];

        impl AccountConfig {
            /// Reads the keys of the provider named `provider`, or `None`
            /// when no provider has that name.
            fn read(
                provider: &str,
                keys: &mut AccountKeys<'_>,
            ) -> Option<Result<Self, ConfigError>> {
                $(
                    if provider == <$module::$ty as Provider>::NAME {
                        return Some(
                            <$module::$ty as Provider>::read_account(keys)
                                .map(AccountConfig::$variant),
                        );
                    }
                )+
                None
            }

            pub fn provider_name(&self) -> &'static str {
                match self {
                    $(AccountConfig::$variant(_) => <$module::$ty as Provider>::NAME,)+
                }
            }

            /// The service's base URL, as the account's `base_url` gives it.
            pub fn base_url(&self) -> &url::Url {
                match self {
                    $(AccountConfig::$variant(a) => <$module::$ty as Provider>::base_url(a),)+
                }
            }

            /// Jobs of this account that may run a step at once.
            pub fn concurrency(&self) -> usize {
                match self {
                    $(AccountConfig::$variant(a) => <$module::$ty as Provider>::concurrency(a),)+
                }
            }

            /// Checks a request's operation and parameters before it is accepted.
            pub fn validate_request(
                &self,
                operation: &str,
                params: &serde_json::Value,
            ) -> Result<(), RequestError> {
                match self {
                    $(AccountConfig::$variant(_) => {
                        <$module::$ty as Provider>::validate_request(operation, params)
                    })+
                }
            }
        }

        /// A provider bound to one account. Boxed: one per account, sizes vary.
        pub enum AnyProvider {
            $($variant(Box<$module::$ty>),)+
        }

        impl AnyProvider {
            /// The provider's name, as jobs and metrics label it (`1c-fresh`, …).
            pub fn name(&self) -> &'static str {
                match self {
                    $(AnyProvider::$variant(_) => <$module::$ty as Provider>::NAME,)+
                }
            }

            /// Logins to the service so far (new tokens).
            pub fn logins(&self) -> u64 {
                match self {
                    $(AnyProvider::$variant(p) => p.logins(),)+
                }
            }

            /// How old the account's login token is (never the token).
            pub fn token_age(&self) -> Option<Duration> {
                match self {
                    $(AnyProvider::$variant(p) => p.token_age(),)+
                }
            }

            pub fn new(name: &str, config: &AccountConfig) -> AnyProvider {
                match config {
                    $(AccountConfig::$variant(account) => AnyProvider::$variant(Box::new(
                        <$module::$ty as Provider>::for_account(name, account.clone()),
                    )),)+
                }
            }

            /// Runs one step of `ctx.job`.
            pub async fn step(&self, ctx: &StepContext<'_>) -> Result<Step, ProviderError> {
                match self {
                    $(AnyProvider::$variant(p) => p.step(ctx).await,)+
                }
            }

            /// Logs in the cheapest way the service allows, ordering nothing.
            pub async fn check(
                &self,
                account: &str,
                http: &reqwest::Client,
                timeout: Duration,
            ) -> Result<(), check::CheckFailure> {
                match self {
                    $(AnyProvider::$variant(p) => p.check(account, http, timeout).await,)+
                }
            }

            /// Tells the service a job was cancelled (OFD's `CancelUrl`).
            /// Best effort: the job is cancelled either way.
            pub async fn cancel_remote(
                &self,
                http: &reqwest::Client,
                job: &Job,
            ) -> Result<(), ProviderError> {
                match self {
                    $(AnyProvider::$variant(p) => p.cancel_remote(http, job).await,)+
                }
            }
        }
    };
}

providers! {
    Fresh => fresh::Fresh,
    Ofd => ofd::Ofd,
    Atol => atol::Atol,
    KonturExtern => kontur_extern::KonturExtern,
    KonturDiadoc => kontur_diadoc::KonturDiadoc,
}

impl AccountConfig {
    /// Reads an `[accounts.NAME]` table; `provider` selects the module.
    pub fn from_keys(mut keys: AccountKeys<'_>) -> Result<Self, ConfigError> {
        let account = keys.account.clone();
        let provider = keys.required("provider")?;
        let Some(config) = AccountConfig::read(&provider, &mut keys) else {
            return Err(ConfigError::invalid(
                format!("accounts.{account}.provider"),
                format!(
                    "unknown provider {provider:?}; known providers: {}",
                    PROVIDERS.join(", ")
                ),
            ));
        };
        let config = config?;
        keys.finish()?;
        Ok(config)
    }
}

/// Reads the optional `concurrency` key shared by every provider.
pub fn concurrency_key(keys: &mut AccountKeys<'_>, default: usize) -> Result<usize, ConfigError> {
    match keys.integer("concurrency")? {
        None => Ok(default),
        Some(n) if (1..=256).contains(&n) => Ok(n as usize),
        Some(n) => Err(ConfigError::invalid(
            format!("accounts.{}.concurrency", keys.account),
            format!("expected 1 to 256, found {n}"),
        )),
    }
}

/// One account at run time: its provider, the limit on its concurrent
/// steps, and the pause a 429 imposed on it.
pub struct Account {
    pub name: String,
    pub provider: AnyProvider,
    pub limit: Arc<tokio::sync::Semaphore>,
    /// The limit `limit` enforces, for the store's account-wide slots.
    pub concurrency: usize,
    cooldown_until: std::sync::Mutex<Option<std::time::Instant>>,
    /// The last error a step of this account met, and when (for the
    /// dashboard; provider messages carry no secrets).
    last_error: std::sync::Mutex<Option<(crate::job::Millis, String)>>,
}

impl Account {
    /// When the account may run again, if it is pausing after a 429.
    pub fn cooling_until(&self) -> Option<std::time::Instant> {
        let guard = self
            .cooldown_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        guard.filter(|until| *until > std::time::Instant::now())
    }

    /// Remembers the error a step of this account just met.
    pub fn note_error(&self, at: crate::job::Millis, message: &str) {
        let mut guard = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        *guard = Some((at, one_line(message, 300)));
    }

    /// The last error a step of this account met since the daemon started.
    pub fn last_error(&self) -> Option<(crate::job::Millis, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Pauses the whole account for `pause` (never shortens a longer pause).
    pub fn cool_down(&self, pause: Duration) {
        let until = std::time::Instant::now() + pause;
        let mut guard = self
            .cooldown_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if guard.is_none_or(|current| current < until) {
            *guard = Some(until);
            crate::metrics::account_paused(&self.name, pause);
        }
    }
}

/// The providers of every configured account, by account name.
#[derive(Clone, Default)]
pub struct Providers {
    by_account: std::collections::BTreeMap<String, Arc<Account>>,
}

impl Providers {
    /// The providers of the given accounts (`(name, settings)` pairs).
    pub fn from_accounts<'a>(
        accounts: impl IntoIterator<Item = (&'a str, &'a AccountConfig)>,
    ) -> Providers {
        Providers {
            by_account: accounts
                .into_iter()
                .map(|(name, config)| {
                    let runtime = Account {
                        name: name.to_string(),
                        provider: AnyProvider::new(name, config),
                        limit: Arc::new(tokio::sync::Semaphore::new(config.concurrency())),
                        concurrency: config.concurrency(),
                        cooldown_until: std::sync::Mutex::new(None),
                        last_error: std::sync::Mutex::new(None),
                    };
                    (name.to_string(), Arc::new(runtime))
                })
                .collect(),
        }
    }

    pub fn get(&self, account: &str) -> Option<Arc<Account>> {
        self.by_account.get(account).cloned()
    }

    /// Every account, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.by_account.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn status_codes_are_classified_in_one_place() {
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(is_transient_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 405, 409, 410, 422] {
            assert!(
                !is_transient_status(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }

    #[test]
    fn download_failures_map_to_retry_or_fail() {
        let too_large: ProviderError = DownloadError::TooLarge { limit: 1 }.into();
        assert_eq!(too_large.class, ErrorClass::Permanent);
        let cut: ProviderError = DownloadError::Truncated {
            got: 1,
            expected: 2,
        }
        .into();
        assert_eq!(cut.class, ErrorClass::Transient);
        let disk: ProviderError = DownloadError::Disk {
            path: "x".into(),
            source: std::io::Error::from_raw_os_error(28),
        }
        .into();
        assert_eq!(disk.class, ErrorClass::Transient);
    }

    #[test]
    fn a_429_slows_the_whole_account() {
        let e = ProviderError::from_status("x", StatusCode::TOO_MANY_REQUESTS, "");
        assert_eq!(e.class, ErrorClass::Transient);
        assert_eq!(e.account_cooldown, Some(DEFAULT_COOLDOWN));
        let e = ProviderError::rate_limited("x", Some(Duration::from_secs(7)));
        assert_eq!(e.account_cooldown, Some(Duration::from_secs(7)));
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn excerpts_are_short_and_flat() {
        assert_eq!(
            excerpt(b"<html>\n  <b>oops</b>\n</html>"),
            "<html> <b>oops</b> </html>"
        );
        assert!(excerpt("я".repeat(500).as_bytes()).chars().count() <= 201);
        assert_eq!(one_line(" a\n\r\tb  c ", 10), "a b c");
        assert_eq!(one_line(&"я".repeat(500), 300).chars().count(), 301);
    }
}
