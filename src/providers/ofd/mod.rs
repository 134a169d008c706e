//! OFD.ru "ИС Отчеты" API v1.3, seed `001_36c055defb9d4596.txt`: reports
//! ordered with an AuthToken, polled in the report list until `Done`, then
//! downloaded.
//!
//! One job is one report, in four phases kept in the cursor:
//!
//! 1. **new**: pick the report's `Name` (it carries the job name and a
//!    random tag) and checkpoint it *before* anything is sent;
//! 2. **ordering**: if an earlier attempt may have sent the order (a crash,
//!    a timeout), look for a report with that `Name` in the list and adopt
//!    it; otherwise `POST /api/customer/reports`. OFD counts orders against
//!    `OfdAgreementLimit`, so an order is never sent twice;
//! 3. **waiting**: `GET /api/customer/reports` until the report is `Done`
//!    (the first look is due at its `AssumptiveCompleteTime`), then download
//!    its `DownloadUrl`;
//! 4. **downloaded** (only with `delete_after_download`): `DELETE` the
//!    report; a failed delete is a warning, never a failure.
//!
//! The AuthToken (`POST /api/Authorization/CreateAuthToken`) is shared by
//! all jobs of the account through a [`TokenCache`]. It travels in the query
//! string, so it is added to a URL only at the moment of sending: it never
//! reaches the cursor, an error text or a log line.
//!
//! Where the seed is ambiguous, the reading chosen is noted next to the code.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, Timelike as _, Utc};
use reqwest::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use super::token::TokenCache;
use super::{Provider, ProviderError, Step, StepContext, excerpt, read_body_limited};
use crate::config::keys::{AccountKeys, ConfigError, Secret};
use crate::job::request::RequestError;
use crate::job::{Job, JobResult, SavedFile};

mod api;
mod format;
mod request;
#[cfg(test)]
mod tests;

pub use format::{Report, ReportList, parse_lenient, parse_list};
pub use request::{When, validate_request};

use api::*;
use format::*;

/// The provider name used in `[accounts.*] provider = "…"`.
pub const PROVIDER: &str = "ofd-ru";

/// The report types of section 3.1.1.
pub const REPORT_TYPES: &[&str] = &[
    "KKTReport",
    "CloseShiftReport",
    "ReceiptReport",
    "FiscalDocumentReport",
    "RentReport",
    "EReceiptReport",
    "OpenShift24Report",
    "ManagerKktReport",
    "MyKktReport",
    "FnScheduleReport",
];

/// Largest JSON answer accepted. Report lists are read without paging
/// (reports expire after about a week, so they stay modest), which is why
/// this is larger than other providers' limit.
const MAX_ANSWER: usize = 16 << 20;

/// Refresh the token when this much (or a fifth of its life, if less) is left.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Assumed token lifetime when the answer has no readable `ExpirationDateUtc`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// Bounds on a wait computed from `AssumptiveCompleteTime`.
const MIN_HINT: Duration = Duration::from_secs(1);
const MAX_HINT: Duration = Duration::from_secs(3600);

/// How far back a name-less report may have been created to be taken for
/// ours (clock skew between us and OFD.ru).
const ADOPT_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// `[accounts.NAME]` for `provider = "ofd-ru"`.
#[derive(Debug, Clone)]
pub struct OfdAccount {
    /// `https://ofd.ru` by default.
    pub base_url: url::Url,
    pub login: String,
    pub password: Secret,
    /// Used to discover the `OfdAgreementId` when a request has none.
    pub inn: Option<String>,
    pub kpp: Option<String>,
    /// Used when a request has no `OfdAgreementId`.
    pub agreement_id: Option<String>,
    /// `DELETE` each report after it is downloaded.
    pub delete_after_download: bool,
    /// Steps of this account's jobs run at once (default 4).
    pub concurrency: usize,
}

impl OfdAccount {
    pub fn from_keys(keys: &mut AccountKeys<'_>) -> Result<Self, ConfigError> {
        let base_url = keys.url("base_url", Some("https://ofd.ru"))?;
        let login = keys.required("login")?;
        let password = keys.required_secret("password")?;
        let inn = keys.string("inn")?;
        let kpp = keys.string("kpp")?;
        let agreement_id = keys.string("agreement_id")?;
        let delete_after_download = keys.boolean("delete_after_download")?.unwrap_or(false);
        let concurrency = super::concurrency_key(keys, 4)?;
        Ok(OfdAccount {
            base_url,
            login,
            password,
            inn,
            kpp,
            agreement_id,
            delete_after_download,
            concurrency,
        })
    }
}

// ---------------------------------------------------------------------------
// The cursor
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    #[default]
    New,
    Ordering,
    Waiting,
    Downloaded,
}

/// What the cursor keeps of a report: its id and URLs. The URLs carry the
/// agreement id, never the token, which is added only when sending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ReportRef {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    download_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delete_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cancel_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_format: Option<String>,
}

impl ReportRef {
    fn from_report(report: &Report) -> ReportRef {
        ReportRef {
            id: report.id.clone(),
            download_url: report.download_url.clone(),
            delete_url: report.delete_url.clone(),
            cancel_url: report.cancel_url.clone(),
            file_format: report.file_format.clone(),
        }
    }

    /// Fills URLs the list knows and the cursor does not (the bare list
    /// carries none; the wrapped one all).
    fn update(&mut self, report: &Report) {
        let fill = |slot: &mut Option<String>, value: &Option<String>| {
            if slot.is_none() {
                slot.clone_from(value);
            }
        };
        fill(&mut self.download_url, &report.download_url);
        fill(&mut self.delete_url, &report.delete_url);
        fill(&mut self.cancel_url, &report.cancel_url);
        fill(&mut self.file_format, &report.file_format);
    }
}

/// Where an OFD job is, stored as the job's cursor. No token, ever.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Cursor {
    #[serde(default)]
    phase: Phase,
    /// The report's `Name`, chosen before the order is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// When ordering began (UTC), to recognise a name-less report as ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agreement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    report: Option<ReportRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    saved: Option<SavedFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

fn to_value(cursor: &Cursor) -> Value {
    serde_json::to_value(cursor).unwrap_or_default()
}

/// The report `Name`: the user's name (if any) with a tag naming the job and
/// this attempt, so the report can be found again after a crash. The random
/// part keeps a `docfetch retry` from adopting the report of a failed try.
fn report_name(job: &str, user_name: Option<&str>) -> String {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let tag = format!("docfetch:{job}:{}", &nonce[..8]);
    match user_name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(user) => format!("{user} [{tag}]"),
        None => tag,
    }
}

/// The body of the order: `params` as given, with our `Name` and, when
/// known and not given, the `OfdAgreementId`.
fn order_body(params: &Value, name: &str, agreement: Option<&str>) -> Value {
    let mut body = params.as_object().cloned().unwrap_or_default();
    body.retain(|k, _| !k.trim().eq_ignore_ascii_case("Name"));
    body.insert("Name".into(), Value::String(name.to_string()));
    let has_agreement = body
        .iter()
        .any(|(k, v)| k.trim().eq_ignore_ascii_case("OfdAgreementId") && !v.is_null());
    if let (Some(id), false) = (agreement, has_agreement) {
        body.insert("OfdAgreementId".into(), Value::String(id.to_string()));
    }
    Value::Object(body)
}

/// How long until `eta`, within sensible bounds; `None` once it has passed.
fn wait_until(eta: Option<NaiveDateTime>, now: NaiveDateTime) -> Option<Duration> {
    let left = (eta? - now).to_std().ok()?;
    (!left.is_zero()).then(|| left.clamp(MIN_HINT, MAX_HINT))
}

/// The report's status (3.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Pending(String),
    Done,
    Error,
    Deleted,
    Unknown(String),
}

fn status_of(report: &Report) -> Status {
    let raw = report.status.clone().unwrap_or_default();
    match raw.to_ascii_lowercase().as_str() {
        "todo" | "processing" => Status::Pending(raw),
        "done" => Status::Done,
        "error" => Status::Error,
        "deleted" => Status::Deleted,
        _ => Status::Unknown(raw),
    }
}

/// A file name when the download has no `Content-Disposition`: the user's
/// report name or the report type, with the extension of `FileFormat`.
fn fallback_file_name(params: &Value, report: &ReportRef) -> String {
    let stem = text(params, "Name")
        .or_else(|| text(params, "ReportType"))
        .unwrap_or_else(|| "report".into());
    let ext = report
        .file_format
        .as_deref()
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty() && f.len() <= 8 && f.chars().all(|c| c.is_ascii_alphanumeric()))
        .or_else(|| {
            (field(params, "UseXlsxFile") == Some(&Value::Bool(true))).then(|| "xlsx".to_string())
        })
        .unwrap_or_else(|| "bin".into());
    format!("{stem}.{ext}")
}

// ---------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------

/// How requests are sent: the client, the names for messages, and the
/// whole-request timeout (none for downloads and outside a step).
#[derive(Clone, Copy)]
struct Call<'a> {
    http: &'a reqwest::Client,
    who: Who<'a>,
    timeout: Option<Duration>,
}

impl<'a> Call<'a> {
    fn of(ctx: &'a StepContext<'_>) -> Call<'a> {
        Call {
            http: ctx.http,
            who: Who {
                account: &ctx.job.account,
                job: &ctx.job.name,
            },
            timeout: Some(ctx.timeout),
        }
    }
}

/// An OFD.ru account's provider, with the token and the discovered agreement
/// shared by all its jobs.
pub struct Ofd {
    account: OfdAccount,
    tokens: TokenCache,
    /// The `OfdAgreementId` found by `inn`/`kpp`; the lock is held across the
    /// lookup so concurrent jobs look it up once.
    agreement: tokio::sync::Mutex<Option<String>>,
    /// Report names chosen by this process that were never sent in an order:
    /// for these the ordering step may skip the look in the list. After a
    /// crash or a failed send the name is not here, and the list is read.
    unsent: std::sync::Mutex<HashSet<String>>,
}

impl Ofd {
    pub fn new(account: OfdAccount) -> Self {
        Ofd {
            account,
            // The refresh margin depends on each token's lifetime, so it is
            // subtracted in `login` and the cache itself uses none.
            tokens: TokenCache::new(Duration::ZERO),
            agreement: tokio::sync::Mutex::new(None),
            unsent: std::sync::Mutex::new(HashSet::new()),
        }
    }

    fn unsent_names(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.unsent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Phase 2: find an earlier order or send one.
    async fn order(
        &self,
        ctx: &StepContext<'_>,
        call: Call<'_>,
        mut cursor: Cursor,
    ) -> Result<Step, ProviderError> {
        let name = cursor.name.clone().ok_or_else(unreadable)?;
        let agreement = self.agreement_for(call, &ctx.job.params).await?;
        cursor.agreement.clone_from(&agreement);
        // Taken out before sending: if the send fails halfway, the next try
        // must look in the list.
        let unsent = self.unsent_names().remove(&name);
        if !unsent {
            let since = cursor
                .since
                .as_deref()
                .and_then(|s| When::parse(s).map(|w| w.wall_clock()));
            let list = self
                .list(call, agreement.as_deref(), "looking for an earlier order")
                .await?;
            if let Some(found) = find_ordered(&list, &name, &ctx.job.params, since) {
                tracing::info!(report = %found.id, "the report was ordered before a restart; using it instead of ordering again");
                cursor.report = Some(ReportRef::from_report(found));
                cursor.phase = Phase::Waiting;
                // The next step reads its status at once.
                return Ok(Step::Continue(to_value(&cursor)));
            }
        }
        let what = "ordering the OFD.ru report";
        let body = order_body(&ctx.job.params, &name, agreement.as_deref());
        let body = serde_json::to_vec(&body).map_err(|e| {
            ProviderError::permanent(format!("{what}: params cannot be encoded: {e}"))
        })?;
        let url = self.endpoint("api/customer/reports", &[]);
        let response = self.send(call, Method::POST, url, Some(body), what).await?;
        let answer = self.success_body(call, response, what).await?;
        let value = parse_lenient(&answer).ok_or_else(|| {
            ProviderError::transient(format!(
                "{what}: the answer is not JSON: {}",
                excerpt(&answer)
            ))
        })?;
        if text(&value, "Status").is_some_and(|s| s.eq_ignore_ascii_case("Failed")) {
            return Err(match judge(call.who, what, StatusCode::OK, &answer) {
                Verdict::Fail(e) => e,
                Verdict::NotReady(m) => ProviderError::transient(m),
            });
        }
        let data = field(&value, "Data")
            .filter(|d| d.is_object())
            .unwrap_or(&value);
        // Without an id the order may still exist: the retry finds it by name.
        let report = Report::from_value(data).ok_or_else(|| {
            ProviderError::transient(format!(
                "{what}: the answer has no report Id: {}",
                excerpt(&answer)
            ))
        })?;
        let now = Utc::now().naive_utc();
        let hint = wait_until(report.eta, now);
        let note = match report.eta {
            Some(eta) => format!(
                "ordered OFD.ru report {} ({name}); expected at {} UTC",
                report.id,
                format_utc(eta)
            ),
            None => format!("ordered OFD.ru report {} ({name})", report.id),
        };
        cursor.report = Some(ReportRef::from_report(&report));
        cursor.phase = Phase::Waiting;
        Ok(Step::Wait {
            cursor: to_value(&cursor),
            hint,
            poll: false,
            note,
        })
    }

    /// Phase 3: read the report's status; download it once it is `Done`.
    async fn poll(
        &self,
        ctx: &StepContext<'_>,
        call: Call<'_>,
        mut cursor: Cursor,
    ) -> Result<Step, ProviderError> {
        let mut reference = cursor.report.clone().ok_or_else(unreadable)?;
        let what = format!("checking OFD.ru report {}", reference.id);
        let list = self.list(call, cursor.agreement.as_deref(), &what).await?;
        let Some(report) = list
            .reports
            .iter()
            .find(|r| r.id.eq_ignore_ascii_case(&reference.id))
        else {
            // It may not be listed yet; if it never shows up, the attempts run out.
            return Err(ProviderError::transient(format!(
                "{what}: the report is not in the report list"
            )));
        };
        reference.update(report);
        cursor.report = Some(reference.clone());
        let id = &reference.id;
        let job = &ctx.job.name;
        match status_of(report) {
            Status::Done => self.download(ctx, call, cursor, reference).await,
            Status::Pending(status) => {
                let now = Utc::now().naive_utc();
                let hint = wait_until(report.eta, now);
                let note = match (hint, report.eta) {
                    (Some(_), Some(eta)) => format!(
                        "report {id} is {status}; expected at {} UTC",
                        format_utc(eta)
                    ),
                    _ => format!("report {id} is {status}"),
                };
                Ok(Step::Wait {
                    cursor: to_value(&cursor),
                    hint,
                    poll: true,
                    note,
                })
            }
            Status::Error => Err(ProviderError::permanent(format!(
                "OFD.ru could not generate report {id} (status Error); run `docfetch retry {job}` to order it again, perhaps for a shorter period"
            ))),
            Status::Deleted => Err(ProviderError::permanent(format!(
                "OFD.ru report {id} was deleted before docfetch downloaded it (status Deleted: deleted or cancelled in the cabinet, or expired); run `docfetch retry {job}` to order it again"
            ))),
            // A status the seed does not list: keep looking; the deadline bounds it.
            Status::Unknown(status) => Ok(Step::Wait {
                cursor: to_value(&cursor),
                hint: None,
                poll: true,
                note: format!(
                    "report {id} has a status docfetch does not know ({status:?}); waiting"
                ),
            }),
        }
    }

    async fn download(
        &self,
        ctx: &StepContext<'_>,
        call: Call<'_>,
        mut cursor: Cursor,
        report: ReportRef,
    ) -> Result<Step, ProviderError> {
        let what = format!("downloading OFD.ru report {}", report.id);
        let url = match &report.download_url {
            Some(relative) => self.resolve(relative, &what)?,
            None => self.report_url(
                &report.id,
                None,
                "OfdAgreementId",
                cursor.agreement.as_deref(),
            ),
        };
        // A report can be large: only the per-read timeout applies.
        let download = Call {
            timeout: None,
            ..call
        };
        let response = self.send(download, Method::GET, url, None, &what).await?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = crate::http::retry_after(response.headers(), SystemTime::now());
            if status == StatusCode::TOO_MANY_REQUESTS {
                return Err(ProviderError::rate_limited(&what, retry_after));
            }
            let body = read_body_limited(response, MAX_ANSWER, &what).await?;
            return match judge(call.who, &what, status, &body) {
                Verdict::NotReady(note) => Ok(Step::Wait {
                    cursor: to_value(&cursor),
                    hint: None,
                    poll: true,
                    note,
                }),
                Verdict::Fail(e) => Err(e.with_retry_after(retry_after)),
            };
        }
        let name = response
            .headers()
            .get(CONTENT_DISPOSITION)
            .and_then(|v| crate::filename::from_content_disposition(v.as_bytes()))
            .unwrap_or_else(|| fallback_file_name(&ctx.job.params, &report));
        let saved = ctx.save(response, Some(&name)).await?;
        if self.account.delete_after_download {
            // Saved first, deleted in the next step: a crash in between
            // downloads again rather than finding the report gone.
            cursor.saved = Some(saved);
            cursor.phase = Phase::Downloaded;
            return Ok(Step::Continue(to_value(&cursor)));
        }
        Ok(Step::Done {
            result: JobResult {
                files: vec![saved],
                warnings: cursor.warnings.clone(),
            },
            cursor: to_value(&cursor),
        })
    }

    /// Phase 4: deletes the report. Returns a warning when that failed;
    /// the job is done either way.
    async fn delete(
        &self,
        call: Call<'_>,
        report: &ReportRef,
        agreement: Option<&str>,
    ) -> Option<String> {
        let what = format!("deleting OFD.ru report {} after the download", report.id);
        let result = async {
            let url = match &report.delete_url {
                Some(relative) => self.resolve(relative, &what)?,
                None => self.report_url(&report.id, None, "ofdAgreementId", agreement),
            };
            let response = self.send(call, Method::DELETE, url, None, &what).await?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let body = read_body_limited(response, MAX_ANSWER, &what).await?;
            // Already gone (a crash after the delete, before the commit): fine.
            if ErrorName::find(&error_texts(&body)) == Some(ErrorName::ReportNotFound) {
                tracing::info!(report = %report.id, "the report was already deleted");
                return Ok(());
            }
            Err(match judge(call.who, &what, status, &body) {
                Verdict::Fail(e) => e,
                Verdict::NotReady(m) => ProviderError::transient(m),
            })
        }
        .await;
        match result {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(error = %e.message, "the report stays at OFD.ru");
                Some(format!(
                    "{}; the report stays in the OFD.ru cabinet",
                    e.message
                ))
            }
        }
    }
}

impl Provider for Ofd {
    const NAME: &'static str = PROVIDER;
    type Account = OfdAccount;

    fn read_account(keys: &mut AccountKeys<'_>) -> Result<Self::Account, ConfigError> {
        OfdAccount::from_keys(keys)
    }

    fn base_url(account: &Self::Account) -> &url::Url {
        &account.base_url
    }

    fn concurrency(account: &Self::Account) -> usize {
        account.concurrency
    }

    fn validate_request(operation: &str, params: &serde_json::Value) -> Result<(), RequestError> {
        validate_request(operation, params)
    }

    fn for_account(_account_name: &str, account: Self::Account) -> Self {
        Ofd::new(account)
    }

    /// Logins performed so far (for tests and metrics).
    async fn check(
        &self,
        account: &str,
        http: &reqwest::Client,
        timeout: std::time::Duration,
    ) -> Result<(), super::check::CheckFailure> {
        self.check_login(account, http, timeout).await
    }

    fn token_age(&self) -> Option<std::time::Duration> {
        self.tokens.age()
    }

    fn logins(&self) -> u64 {
        self.tokens.logins()
    }

    async fn step(&self, ctx: &StepContext<'_>) -> Result<Step, ProviderError> {
        let mut cursor: Cursor = serde_json::from_value(ctx.job.cursor.clone()).map_err(|e| {
            ProviderError::permanent(format!("the job's saved progress is unreadable: {e}"))
        })?;
        let call = Call::of(ctx);
        match cursor.phase {
            Phase::New => {
                // Nothing is sent in this step: the name is saved first, so
                // that whatever happens to the order, it can be found again.
                let name = report_name(&ctx.job.name, text(&ctx.job.params, "Name").as_deref());
                self.unsent_names().insert(name.clone());
                cursor.name = Some(name);
                cursor.since = Some(format_utc(Utc::now().naive_utc()));
                cursor.phase = Phase::Ordering;
                Ok(Step::Continue(to_value(&cursor)))
            }
            Phase::Ordering => self.order(ctx, call, cursor).await,
            Phase::Waiting => self.poll(ctx, call, cursor).await,
            Phase::Downloaded => {
                let saved = cursor.saved.clone().ok_or_else(unreadable)?;
                let report = cursor.report.clone().ok_or_else(unreadable)?;
                if let Some(warning) = self
                    .delete(call, &report, cursor.agreement.as_deref())
                    .await
                {
                    cursor.warnings.push(warning);
                }
                let result = JobResult {
                    files: vec![saved],
                    warnings: cursor.warnings.clone(),
                };
                Ok(Step::Done {
                    cursor: to_value(&cursor),
                    result,
                })
            }
        }
    }

    /// Calls the report's `CancelUrl` when the job is cancelled while waiting
    /// ("if the report is not generated yet, it can be cancelled by GET").
    /// A job cancelled while ordering has its report looked up by name.
    async fn cancel_remote(&self, http: &reqwest::Client, job: &Job) -> Result<(), ProviderError> {
        let Ok(cursor) = serde_json::from_value::<Cursor>(job.cursor.clone()) else {
            return Ok(());
        };
        let call = Call {
            http,
            who: Who {
                account: &job.account,
                job: &job.name,
            },
            timeout: None,
        };
        let report = match (cursor.phase, cursor.report, cursor.name) {
            (Phase::Waiting, Some(report), _) => report,
            (Phase::Ordering, None, Some(name)) => {
                let list = self
                    .list(
                        call,
                        cursor.agreement.as_deref(),
                        "looking for the report to cancel",
                    )
                    .await?;
                match list
                    .reports
                    .iter()
                    .find(|r| r.name.as_deref() == Some(name.as_str()))
                {
                    Some(found) if matches!(status_of(found), Status::Pending(_)) => {
                        ReportRef::from_report(found)
                    }
                    _ => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        let what = format!("cancelling OFD.ru report {}", report.id);
        let url = match &report.cancel_url {
            Some(relative) => self.resolve(relative, &what)?,
            None => self.report_url(
                &report.id,
                Some("cancel"),
                "ofdAgreementId",
                cursor.agreement.as_deref(),
            ),
        };
        let response = self.send(call, Method::GET, url, None, &what).await?;
        self.success_body(call, response, &what).await.map(|_| ())
    }
}

/// Our report in a list: by `Name`. A list whose reports carry no `Name`
/// at all (the seed's 3.2 example) is searched by type and period among
/// reports created since ordering began; only a single match is taken.
fn find_ordered<'a>(
    list: &'a ReportList,
    name: &str,
    params: &Value,
    since: Option<NaiveDateTime>,
) -> Option<&'a Report> {
    if let Some(found) = list
        .reports
        .iter()
        .find(|r| r.name.as_deref() == Some(name))
    {
        return Some(found);
    }
    if list.reports.iter().any(|r| r.name.is_some()) {
        return None;
    }
    let since = since? - ADOPT_SKEW;
    let wall = |key: &str| {
        text(params, key)
            .and_then(|t| When::parse(&t))
            .map(|w| w.wall_clock())
    };
    let (from, to) = (wall("DateFrom")?, wall("DateTo")?);
    let report_type = text(params, "ReportType");
    let mut candidates = list.reports.iter().filter(|r| {
        r.created.is_some_and(|c| c >= since)
            && r.report_type == report_type
            && r.date_from.map(truncate_seconds) == Some(truncate_seconds(from))
            && r.date_to.map(truncate_seconds) == Some(truncate_seconds(to))
    });
    let first = candidates.next()?;
    candidates.next().is_none().then_some(first)
}

/// The seed's answers drop fractions of seconds (`23:59:59.000` → `23:59:59`).
fn truncate_seconds(t: NaiveDateTime) -> NaiveDateTime {
    t.with_nanosecond(0).unwrap_or(t)
}

// ---------------------------------------------------------------------------
// `accounts check`
// ---------------------------------------------------------------------------

impl Ofd {
    /// `CreateAuthToken`, then the agreement look-up a job would make: the
    /// account's `agreement_id` in the report list, the one found by
    /// `inn`/`kpp`, or the plain list when the account names neither. Reads
    /// only; orders nothing.
    async fn check_login(
        &self,
        account: &str,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(), super::check::CheckFailure> {
        use super::check::CheckFailure;
        let call = Call {
            http,
            who: Who { account, job: "" },
            timeout: Some(timeout),
        };
        self.token(call).await.map_err(CheckFailure::login)?;
        let what = format!("looking at the OFD.ru reports of account {account}");
        if let Some(id) = self.account.agreement_id.clone() {
            self.list(call, Some(&id), &what)
                .await
                .map_err(CheckFailure::access)?;
        } else if self.account.inn.is_some() {
            self.agreement_for(call, &Value::Null)
                .await
                .map_err(CheckFailure::access)?;
        } else {
            self.list(call, None, &what)
                .await
                .map_err(CheckFailure::access)?;
        }
        Ok(())
    }
}
