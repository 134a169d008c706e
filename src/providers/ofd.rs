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
// Request validation
// ---------------------------------------------------------------------------

/// Checks a request before it is accepted: `operation = "report"` and
/// `params` the body of the order (table 3 of the seed), as far as the seed
/// says what is valid.
pub fn validate_request(operation: &str, params: &Value) -> Result<(), RequestError> {
    if operation != "report" {
        return Err(RequestError::field(
            "operation",
            format!("{operation:?} is not an OFD.ru operation: expected \"report\""),
        ));
    }
    let Some(object) = params.as_object() else {
        return Err(RequestError::field(
            "params",
            "expected a JSON object: the body of the OFD.ru report order (ReportType, DateFrom, DateTo, KktList, …)",
        ));
    };
    let get = |key: &str| field(params, key).filter(|v| !v.is_null());

    // CustomReportId and ReportType: one of them (3.1, table 3).
    let custom = match get("CustomReportId") {
        None => false,
        Some(Value::String(s)) if uuid::Uuid::parse_str(s.trim()).is_ok() => true,
        Some(other) => {
            return Err(RequestError::field(
                "params.CustomReportId",
                format!("expected the UUID of a custom report template, found {other}"),
            ));
        }
    };
    // With a custom template the seed leaves ReportType to the template.
    if !custom {
        match get("ReportType") {
            None => {
                return Err(RequestError::field(
                    "params.ReportType",
                    format!(
                        "required unless params.CustomReportId names a custom template; expected one of {}",
                        REPORT_TYPES.join(", ")
                    ),
                ));
            }
            Some(Value::String(t)) if REPORT_TYPES.contains(&t.as_str()) => {}
            Some(Value::String(t)) => {
                let hint = REPORT_TYPES
                    .iter()
                    .find(|known| known.eq_ignore_ascii_case(t.trim()))
                    .map(|known| format!(" (did you mean {known:?}?)"))
                    .unwrap_or_default();
                return Err(RequestError::field(
                    "params.ReportType",
                    format!(
                        "{t:?} is not an OFD.ru report type{hint}; expected one of {}",
                        REPORT_TYPES.join(", ")
                    ),
                ));
            }
            Some(other) => {
                return Err(RequestError::field(
                    "params.ReportType",
                    format!("expected a string such as \"ReceiptReport\", found {other}"),
                ));
            }
        }
    }

    let from = required_date(params, "DateFrom")?;
    let to = required_date(params, "DateTo")?;
    if from.is_after(&to) {
        return Err(RequestError::field(
            "params.DateFrom",
            format!(
                "DateFrom ({}) is after DateTo ({}); OFD.ru would refuse the order with DateFromGreaterThanDateTo",
                text_of(get("DateFrom")),
                text_of(get("DateTo"))
            ),
        ));
    }

    for key in ["KktList", "GroupsList"] {
        if let Some(value) = get(key)
            && !value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string))
        {
            return Err(RequestError::field(
                format!("params.{key}"),
                format!("expected an array of id strings, found {value}"),
            ));
        }
    }
    for key in ["SelectAllKkts", "UseXlsxFile"] {
        if let Some(value) = get(key)
            && !value.is_boolean()
        {
            return Err(RequestError::field(
                format!("params.{key}"),
                format!("expected true or false, found {value}"),
            ));
        }
    }
    if let Some(value) = get("Name")
        && !value.is_string()
    {
        return Err(RequestError::field(
            "params.Name",
            format!("expected a string, found {value}"),
        ));
    }
    // The seed's table says "a string, addresses separated by ;" while its
    // answers show an array; both are accepted and sent as given.
    if let Some(value) = get("EmailsToNotify")
        && !(value.is_string()
            || value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)))
    {
        return Err(RequestError::field(
            "params.EmailsToNotify",
            format!("expected addresses separated by \";\", found {value}"),
        ));
    }

    // The seed spells it `ofdAgreementId` in table 3 and `OfdAgreementId`
    // in its example; either is accepted, but not two different values.
    let spellings: Vec<&Value> = object
        .iter()
        .filter(|(k, v)| k.trim().eq_ignore_ascii_case("OfdAgreementId") && !v.is_null())
        .map(|(_, v)| v)
        .collect();
    for value in &spellings {
        if value
            .as_str()
            .is_none_or(|s| uuid::Uuid::parse_str(s.trim()).is_err())
        {
            return Err(RequestError::field(
                "params.OfdAgreementId",
                format!("expected the UUID of an OFD.ru agreement, found {value}"),
            ));
        }
    }
    if spellings.windows(2).any(|pair| pair[0] != pair[1]) {
        return Err(RequestError::field(
            "params.OfdAgreementId",
            "given twice (OfdAgreementId and ofdAgreementId) with different values",
        ));
    }
    Ok(())
}

fn text_of(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn required_date(params: &Value, key: &str) -> Result<When, RequestError> {
    match field(params, key).filter(|v| !v.is_null()) {
        None => Err(RequestError::field(
            format!("params.{key}"),
            "required: an ISO 8601 date and time such as \"2021-11-01T00:00:00.000+03:00\"",
        )),
        Some(Value::String(s)) => When::parse(s).ok_or_else(|| {
            RequestError::field(
                format!("params.{key}"),
                format!(
                    "{s:?} is not an ISO 8601 date and time; expected e.g. \"2021-11-01T00:00:00.000+03:00\" or \"2021-11-01T00:00:00\""
                ),
            )
        }),
        Some(other) => Err(RequestError::field(
            format!("params.{key}"),
            format!("expected an ISO 8601 date and time string, found {other}"),
        )),
    }
}

/// A date of a request: with an offset (the seed's order example) or
/// without (its answers).
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum When {
    Zoned(DateTime<FixedOffset>),
    Local(NaiveDateTime),
}

impl When {
    // Public (hidden) for the property tests in tests/fuzz.rs.
    #[doc(hidden)]
    pub fn parse(text: &str) -> Option<When> {
        let text = text.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            return Some(When::Zoned(t));
        }
        if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z") {
            return Some(When::Zoned(t));
        }
        for format in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M:%S%.f",
        ] {
            if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
                return Some(When::Local(t));
            }
        }
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(When::Local)
    }

    /// The date as written, without its offset: the seed's order answer
    /// turns `2021-11-01T00:00:00.000+03:00` into `2021-11-01T00:00:00`.
    fn wall_clock(&self) -> NaiveDateTime {
        match self {
            When::Zoned(t) => t.naive_local(),
            When::Local(t) => *t,
        }
    }

    /// Two dates with offsets compare as instants; otherwise as written
    /// (OFD.ru reads a date without an offset in the cabinet's time zone,
    /// which docfetch does not know).
    fn is_after(&self, other: &When) -> bool {
        match (self, other) {
            (When::Zoned(a), When::Zoned(b)) => a > b,
            _ => self.wall_clock() > other.wall_clock(),
        }
    }
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// A field of an OFD answer, found by name case-insensitively and with
/// surrounding spaces ignored: the seed's list prints `" TotalCount "`, and
/// ASP.NET services often answer in camelCase.
fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    object.get(key).or_else(|| {
        object
            .iter()
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// A non-empty text field (numbers are taken as their text).
fn text(value: &Value, key: &str) -> Option<String> {
    match field(value, key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The seed's dates: `YYYY-MM-DDTHH:MM:SS`, UTC where the name says so.
fn utc_time(value: &Value, key: &str) -> Option<NaiveDateTime> {
    let raw = text(value, key)?;
    match When::parse(&raw)? {
        When::Zoned(t) => Some(t.naive_utc()),
        When::Local(t) => Some(t),
    }
}

fn format_utc(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Parses JSON, forgiving bare words as values: the seed's list example
/// prints `"AccountEmail": ofdtester1@ofd.ru`, and a service that follows
/// its own document may well send that.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn parse_lenient(body: &[u8]) -> Option<Value> {
    if let Ok(value) = serde_json::from_slice(body) {
        return Some(value);
    }
    let text = std::str::from_utf8(body).ok()?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str(&quote_bare_values(text)).ok()
}

/// Wraps bare words in value positions (after `:` or inside arrays) in
/// quotes; everything else, strings included, is copied unchanged.
fn quote_bare_values(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 16);
    let mut containers: Vec<char> = Vec::new();
    let mut expect_value = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' => {
                out.push(c);
                i += 1;
                while i < chars.len() {
                    let s = chars[i];
                    out.push(s);
                    i += 1;
                    if s == '\\' {
                        if let Some(&escaped) = chars.get(i) {
                            out.push(escaped);
                            i += 1;
                        }
                    } else if s == '"' {
                        break;
                    }
                }
                expect_value = false;
                continue;
            }
            '{' => {
                containers.push('{');
                expect_value = false;
            }
            '[' => {
                containers.push('[');
                expect_value = true;
            }
            '}' | ']' => {
                containers.pop();
                expect_value = false;
            }
            ':' => expect_value = true,
            ',' => expect_value = containers.last() == Some(&'['),
            c if c.is_whitespace() => {}
            _ if expect_value => {
                let start = i;
                while i < chars.len() && !matches!(chars[i], ',' | '}' | ']' | '\n' | '\r') {
                    i += 1;
                }
                let raw: String = chars[start..i].iter().collect();
                let token = raw.trim_end();
                if is_json_scalar(token) {
                    out.push_str(token);
                } else {
                    out.push_str(&Value::String(token.to_string()).to_string());
                }
                out.push_str(&raw[token.len()..]);
                expect_value = false;
                continue;
            }
            _ => expect_value = false,
        }
        out.push(c);
        i += 1;
    }
    out
}

fn is_json_scalar(token: &str) -> bool {
    matches!(token, "true" | "false" | "null")
        || serde_json::from_str::<serde_json::Number>(token).is_ok()
}

/// A report as the order answer or the list describes it.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub id: String,
    name: Option<String>,
    status: Option<String>,
    report_type: Option<String>,
    date_from: Option<NaiveDateTime>,
    date_to: Option<NaiveDateTime>,
    created: Option<NaiveDateTime>,
    /// `AssumptiveCompleteTime` (UTC).
    eta: Option<NaiveDateTime>,
    download_url: Option<String>,
    delete_url: Option<String>,
    cancel_url: Option<String>,
    file_format: Option<String>,
}

impl Report {
    fn from_value(value: &Value) -> Option<Report> {
        let wall = |key: &str| {
            text(value, key)
                .and_then(|t| When::parse(&t))
                .map(|w| w.wall_clock())
        };
        Some(Report {
            id: text(value, "Id")?,
            name: text(value, "Name"),
            status: text(value, "Status"),
            report_type: text(value, "ReportType"),
            date_from: wall("DateFrom"),
            date_to: wall("DateTo"),
            created: utc_time(value, "CDateUtc"),
            eta: utc_time(value, "AssumptiveCompleteTime"),
            download_url: text(value, "DownloadUrl"),
            delete_url: text(value, "DeleteUrl"),
            cancel_url: text(value, "CancelUrl"),
            file_format: text(value, "FileFormat"),
        })
    }
}

/// A report list, in either shape the seed prints.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReportList {
    pub agreement_id: Option<String>,
    pub reports: Vec<Report>,
}

/// Reads a list answer: wrapped (`{"Status":"Success","Data":{"List":…}}`,
/// sections 1.2 and 2) or bare (`{"OfdAgreementLimit":…,"List":…}`, 3.2).
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn parse_list(body: &[u8]) -> Result<ReportList, String> {
    let value =
        parse_lenient(body).ok_or_else(|| format!("the answer is not JSON: {}", excerpt(body)))?;
    let data = field(&value, "Data")
        .filter(|d| d.is_object())
        .unwrap_or(&value);
    let items = match (data, field(data, "List")) {
        (_, Some(Value::Array(items))) => items,
        (Value::Array(items), None) => items,
        _ => return Err(format!("the answer has no report List: {}", excerpt(body))),
    };
    Ok(ReportList {
        agreement_id: text(data, "OfdAgreementId"),
        reports: items.iter().filter_map(Report::from_value).collect(),
    })
}

/// The errors of an answer: `{"Errors":["…"],"Status":"Failed",…}`.
fn error_texts(body: &[u8]) -> Vec<String> {
    let Some(value) = parse_lenient(body) else {
        return Vec::new();
    };
    match field(&value, "Errors") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|e| match e {
                Value::String(s) => s.trim().to_string(),
                other => other.to_string(),
            })
            .filter(|e| !e.is_empty())
            .collect(),
        Some(Value::String(s)) if !s.trim().is_empty() => vec![s.trim().to_string()],
        _ => Vec::new(),
    }
}

/// The error names the seed lists (3.1.2, 3.2.2, 4.1, 5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorName {
    DateFromGreaterThanDateTo,
    OfdAgreementNotFound,
    AccessDenied,
    ReportSizeError,
    LimitExhausted,
    InternalError,
    ReportNotFound,
    ReportNotDone,
}

impl ErrorName {
    const ALL: [(ErrorName, &'static str); 8] = [
        (
            ErrorName::DateFromGreaterThanDateTo,
            "DateFromGreaterThanDateTo",
        ),
        (ErrorName::OfdAgreementNotFound, "OfdAgreementNotFound"),
        (ErrorName::AccessDenied, "AccessDenied"),
        (ErrorName::ReportSizeError, "ReportSizeError"),
        (ErrorName::LimitExhausted, "LimitExhausted"),
        (ErrorName::InternalError, "InternalError"),
        (ErrorName::ReportNotFound, "ReportNotFound"),
        (ErrorName::ReportNotDone, "ReportNotDone"),
    ];

    /// The first known name in the errors. The seed gives names, not
    /// messages, so a text is matched when it contains a name.
    fn find(errors: &[String]) -> Option<ErrorName> {
        errors.iter().find_map(|e| {
            ErrorName::ALL
                .iter()
                .find(|(_, name)| e.contains(name))
                .map(|(kind, _)| *kind)
        })
    }
}

/// What an OFD error answer means for the job.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// `ReportNotDone`: keep waiting.
    NotReady(String),
    Fail(ProviderError),
}

/// Who is asking: names for messages.
#[derive(Debug, Clone, Copy)]
struct Who<'a> {
    account: &'a str,
    job: &'a str,
}

/// The one place where OFD errors are classified: a known name decides,
/// otherwise the HTTP status does (5xx transient, other 4xx permanent).
fn judge(who: Who<'_>, what: &str, status: StatusCode, body: &[u8]) -> Verdict {
    let errors = error_texts(body);
    let said = if errors.is_empty() {
        excerpt(body)
    } else {
        errors.join("; ")
    };
    let account = who.account;
    let job = who.job;
    let permanent =
        |text: String| Verdict::Fail(ProviderError::permanent(format!("{what}: {text}")));
    match ErrorName::find(&errors) {
        Some(ErrorName::ReportNotDone) => Verdict::NotReady(format!(
            "{what}: OFD.ru says the report is not generated yet (ReportNotDone)"
        )),
        Some(ErrorName::InternalError) => Verdict::Fail(ProviderError::transient(format!(
            "{what}: OFD.ru internal error (InternalError); will try again"
        ))),
        Some(ErrorName::LimitExhausted) => permanent(format!(
            "OFD.ru refused the order: the space for reports of this cabinet is used up (LimitExhausted). \
             Free it in the OFD.ru cabinet by deleting old reports, or set delete_after_download = true \
             for account {account} so docfetch deletes each report once it is saved, then run `docfetch retry {job}`"
        )),
        Some(ErrorName::AccessDenied) => permanent(format!(
            "OFD.ru denied access (AccessDenied): the user of account {account} has no rights for this cabinet or these cash registers"
        )),
        Some(ErrorName::OfdAgreementNotFound) => permanent(format!(
            "OFD.ru found no such cabinet (OfdAgreementNotFound): check OfdAgreementId in the request, or agreement_id / inn / kpp of account {account}"
        )),
        Some(ErrorName::DateFromGreaterThanDateTo) => permanent(
            "OFD.ru refused the period (DateFromGreaterThanDateTo): DateFrom must not be after DateTo".to_string(),
        ),
        Some(ErrorName::ReportSizeError) => permanent(
            "OFD.ru refused the order because the report would have too many records (ReportSizeError): order a shorter period or fewer cash registers".to_string(),
        ),
        Some(ErrorName::ReportNotFound) => permanent(format!(
            "OFD.ru has no such report (ReportNotFound): {said}"
        )),
        None if status.is_success() => Verdict::Fail(ProviderError::permanent(format!(
            "{what}: OFD.ru answered Failed: {said}"
        ))),
        None => Verdict::Fail(ProviderError::from_status(what, status, &said)),
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

    /// The agreement of a job: the request's, the account's, or the one
    /// found by `inn`/`kpp` (cached for the account). None of them: the
    /// order goes without one, which the seed says is fine when only one
    /// legal entity is attached to the cabinet.
    async fn agreement_for(
        &self,
        call: Call<'_>,
        params: &Value,
    ) -> Result<Option<String>, ProviderError> {
        if let Some(id) = text(params, "OfdAgreementId") {
            return Ok(Some(id));
        }
        if let Some(id) = &self.account.agreement_id {
            return Ok(Some(id.clone()));
        }
        let Some(inn) = &self.account.inn else {
            return Ok(None);
        };
        let mut cached = self.agreement.lock().await;
        if let Some(id) = &*cached {
            return Ok(Some(id.clone()));
        }
        let kpp = self.account.kpp.as_deref().unwrap_or("");
        let what = format!("looking up the OFD.ru agreement of INN {inn} KPP {kpp}");
        // The seed's request reads `?&Inn=…&Kpp=…&SkipPageFilter=…`; the
        // stray `&` is dropped. Kpp is sent even when empty (the seed marks
        // it required; sole proprietors have none).
        let url = self.endpoint(
            "api/customer/reports",
            &[("Inn", inn), ("Kpp", kpp), ("SkipPageFilter", "true")],
        );
        let response = self.send(call, Method::GET, url, None, &what).await?;
        let body = self.success_body(call, response, &what).await?;
        let list =
            parse_list(&body).map_err(|e| ProviderError::transient(format!("{what}: {e}")))?;
        let id = list.agreement_id.ok_or_else(|| {
            ProviderError::permanent(format!(
                "{what}: OFD.ru answered without an OfdAgreementId; set agreement_id of account {} or OfdAgreementId in the request",
                call.who.account
            ))
        })?;
        tracing::info!(agreement = %id, "found the OFD.ru agreement");
        *cached = Some(id.clone());
        Ok(Some(id))
    }

    /// The report list (3.2), unpaged so our report cannot hide on page two.
    async fn list(
        &self,
        call: Call<'_>,
        agreement: Option<&str>,
        what: &str,
    ) -> Result<ReportList, ProviderError> {
        let mut query = vec![("SkipPageFilter", "true")];
        if let Some(id) = agreement {
            query.push(("OfdAgreementId", id));
        }
        let url = self.endpoint("api/customer/reports", &query);
        let response = self.send(call, Method::GET, url, None, what).await?;
        let body = self.success_body(call, response, what).await?;
        parse_list(&body).map_err(|e| ProviderError::transient(format!("{what}: {e}")))
    }

    /// Sends a request with a valid token; a 401/403 drops the token and the
    /// request is sent once more with a new one.
    async fn send(
        &self,
        call: Call<'_>,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        what: &str,
    ) -> Result<Response, ProviderError> {
        let mut retried = false;
        loop {
            let token = self.token(call).await?;
            let mut request = call.http.request(method.clone(), with_token(&url, &token));
            if let Some(timeout) = call.timeout {
                request = request.timeout(timeout);
            }
            if let Some(body) = &body {
                request = request
                    .header(CONTENT_TYPE, "application/json; charset=utf-8")
                    .body(body.clone());
            }
            let response = request
                .send()
                .await
                .map_err(|e| ProviderError::from_reqwest(what, &e))?;
            let status = response.status();
            if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
                return Ok(response);
            }
            self.tokens.invalidate(&token).await;
            if !retried {
                retried = true;
                tracing::info!(%status, "{what}: OFD.ru refused the AuthToken; logging in again");
                continue;
            }
            let body = read_body_limited(response, 64 << 10, what)
                .await
                .unwrap_or_default();
            let errors = error_texts(&body);
            let detail = if errors.is_empty() {
                String::new()
            } else {
                format!(": {}", errors.join("; "))
            };
            return Err(ProviderError::permanent(format!(
                "{what}: OFD.ru refused the request even with a new AuthToken (HTTP {status}){detail}; check that the user of account {} has access to these reports",
                call.who.account
            )));
        }
    }

    /// Reads a JSON answer; anything but a success becomes the error its
    /// status and `Errors` call for.
    async fn success_body(
        &self,
        call: Call<'_>,
        response: Response,
        what: &str,
    ) -> Result<Vec<u8>, ProviderError> {
        let status = response.status();
        let retry_after = crate::http::retry_after(response.headers(), SystemTime::now());
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(ProviderError::rate_limited(what, retry_after));
        }
        let body = read_body_limited(response, MAX_ANSWER, what).await?;
        if status.is_success() {
            return Ok(body);
        }
        Err(match judge(call.who, what, status, &body) {
            Verdict::Fail(e) => e,
            Verdict::NotReady(m) => ProviderError::transient(m),
        }
        .with_retry_after(retry_after))
    }

    async fn token(&self, call: Call<'_>) -> Result<Secret, ProviderError> {
        self.tokens.get(|| self.login(call)).await
    }

    /// `POST /api/Authorization/CreateAuthToken`. Returns the token and how
    /// long to use it: until shortly before `ExpirationDateUtc`.
    async fn login(&self, call: Call<'_>) -> Result<(Secret, Duration), ProviderError> {
        let what = "logging in to OFD.ru";
        let account = call.who.account;
        let body = serde_json::json!({
            "Login": self.account.login,
            "Password": self.account.password.expose(),
        });
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let mut request = call
            .http
            .post(self.endpoint("api/Authorization/CreateAuthToken", &[]))
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body);
        if let Some(timeout) = call.timeout {
            request = request.timeout(timeout);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(what, &e))?;
        let status = response.status();
        let retry_after = crate::http::retry_after(response.headers(), SystemTime::now());
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // The seed: "403 … the JSON structure will be empty ({})".
            return Err(ProviderError::permanent(format!(
                "OFD.ru refused the login (HTTP {status}); check login and password of account {account}"
            )));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(ProviderError::rate_limited(what, retry_after));
        }
        let body = read_body_limited(response, 1 << 20, what).await?;
        if !status.is_success() {
            return Err(ProviderError::from_status(what, status, &excerpt(&body))
                .with_retry_after(retry_after));
        }
        let value = parse_lenient(&body).ok_or_else(|| {
            ProviderError::transient(format!(
                "{what}: the answer is not JSON: {}",
                excerpt(&body)
            ))
        })?;
        let token = text(&value, "AuthToken")
            .filter(|t| t.chars().all(|c| c.is_ascii_graphic()))
            .ok_or_else(|| {
                ProviderError::transient(format!("{what}: the answer has no AuthToken"))
            })?;
        let now = Utc::now().naive_utc();
        let remaining = match utc_time(&value, "ExpirationDateUtc") {
            Some(expires) => (expires - now).to_std().unwrap_or(Duration::ZERO),
            None => {
                tracing::warn!(
                    "OFD.ru sent no readable ExpirationDateUtc; assuming {DEFAULT_TOKEN_LIFETIME:?}"
                );
                DEFAULT_TOKEN_LIFETIME
            }
        };
        let lifetime = remaining
            .saturating_sub(REFRESH_MARGIN.min(remaining / 5))
            // A token that seems expired already (clock skew) is still tried
            // once; a 401 then brings a new one.
            .max(Duration::from_secs(1));
        tracing::debug!(lifetime = ?lifetime, "logged in to OFD.ru");
        Ok((Secret::new(token), lifetime))
    }

    /// `{base_url}/{path}?{query}`, keeping a path prefix of `base_url`.
    fn endpoint(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.account.base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(path.split('/'));
        }
        url.set_query(None);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// `/api/customer/reports/{id}[/{action}]` with the agreement, for a
    /// report whose answer carried no URL.
    fn report_url(
        &self,
        id: &str,
        action: Option<&str>,
        agreement_key: &str,
        agreement: Option<&str>,
    ) -> Url {
        let mut url = self.endpoint("api/customer/reports", &[]);
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(id);
            if let Some(action) = action {
                segments.push(action);
            }
        }
        if let Some(agreement) = agreement {
            url.query_pairs_mut().append_pair(agreement_key, agreement);
        }
        url
    }

    /// A `DownloadUrl`/`DeleteUrl`/`CancelUrl` of an answer. The seed's are
    /// relative to the service (`/api/customer/reports/…`), so they are
    /// appended to `base_url`, path prefix included. An absolute URL must
    /// stay on `base_url`'s origin: the token is sent with it.
    fn resolve(&self, relative: &str, what: &str) -> Result<Url, ProviderError> {
        let relative = relative.trim();
        let base = &self.account.base_url;
        if let Ok(absolute) = Url::parse(relative) {
            if absolute.origin() != base.origin() {
                return Err(ProviderError::permanent(format!(
                    "{what}: OFD.ru pointed to another host ({}); the AuthToken is never sent there",
                    absolute.host_str().unwrap_or("?")
                )));
            }
            return Ok(absolute);
        }
        let prefix = base.path().trim_end_matches('/');
        let path = format!("{prefix}/{}", relative.trim_start_matches('/'));
        base.join(&path)
            .map_err(|_| ProviderError::transient(format!("{what}: OFD.ru sent an unusable URL")))
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
    fn logins(&self) -> u64 {
        self.tokens.logins()
    }

    async fn check(
        &self,
        account: &str,
        http: &reqwest::Client,
        timeout: std::time::Duration,
    ) -> Result<(), super::check::CheckFailure> {
        self.check_login(account, http, timeout).await
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

/// Adds the token to a URL, replacing one that may already be there.
fn with_token(url: &Url, token: &Secret) -> Url {
    let mut url = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("AuthToken"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.set_query(None);
    url.query_pairs_mut()
        .extend_pairs(pairs)
        .append_pair("AuthToken", token.expose());
    url
}

fn unreadable() -> ProviderError {
    ProviderError::permanent(
        "the job's saved progress is incomplete; run `docfetch retry` to start it over",
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ErrorClass;
    use serde_json::json;

    fn who() -> Who<'static> {
        Who {
            account: "ofd-main",
            job: "nov-2021",
        }
    }

    fn valid() -> Value {
        json!({
            "ReportType": "ReceiptReport",
            "DateFrom": "2021-11-01T00:00:00.000+03:00",
            "DateTo": "2021-11-02T23:59:59.000+03:00",
            "KktList": ["7961d10e-f36a-4cce-a8db-add93309bb9e"],
            "SelectAllKkts": false,
            "UseXlsxFile": true,
        })
    }

    fn field_error(params: Value) -> String {
        match validate_request("report", &params) {
            Err(RequestError::Field { field, message }) => format!("{field}: {message}"),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn the_seeds_order_example_is_a_valid_request() {
        let seed = json!({
            "OfdAgreementId": "d64249c5-61b8-4ed9-b729-9bd7cde127db",
            "CustomReportId": null,
            "Name": "Сверка",
            "DateFrom": "2021-11-01T00:00:00.000+03:00",
            "DateTo": "2021-11-02T23:59:59.000+03:00",
            "EmailsToNotify": "",
            "FfdType": 0,
            "GroupsList": [],
            "KktList": ["7961d10e-f36a-4cce-a8db-add93309bb9e"],
            "ReportType": "ReceiptReport",
            "SelectAllKkts": false,
            "UseXlsxFile": true
        });
        assert_eq!(validate_request("report", &seed), Ok(()));
        assert_eq!(validate_request("report", &valid()), Ok(()));
        let custom = json!({"CustomReportId": "00000000-0000-0000-0000-000000000001", "DateFrom": "2021-11-01", "DateTo": "2021-11-01"});
        assert_eq!(validate_request("report", &custom), Ok(()));
    }

    #[test]
    fn invalid_requests_say_which_field_is_wrong() {
        assert!(validate_request("list", &valid()).is_err());
        assert!(field_error(json!([1])).starts_with("params:"));
        let e = field_error(json!({"DateFrom": "2021-11-01", "DateTo": "2021-11-02"}));
        assert!(e.starts_with("params.ReportType: required"), "{e}");
        let mut p = valid();
        p["ReportType"] = json!("receiptreport");
        let e = field_error(p);
        assert!(e.contains("did you mean \"ReceiptReport\""), "{e}");
        let mut p = valid();
        p["ReportType"] = json!("SalesBook");
        assert!(field_error(p).contains("not an OFD.ru report type"));
        let mut p = valid();
        p["DateFrom"] = json!("2021-11-03T00:00:00");
        let e = field_error(p);
        assert!(e.contains("DateFromGreaterThanDateTo"), "{e}");
        let mut p = valid();
        p.as_object_mut().unwrap().remove("DateTo");
        assert!(field_error(p).starts_with("params.DateTo: required"));
        let mut p = valid();
        p["DateTo"] = json!("2nd of November");
        assert!(field_error(p).contains("not an ISO 8601"));
        let mut p = valid();
        p["KktList"] = json!("7961d10e");
        assert!(field_error(p).starts_with("params.KktList"));
        let mut p = valid();
        p["SelectAllKkts"] = json!("yes");
        assert!(field_error(p).starts_with("params.SelectAllKkts"));
        let mut p = valid();
        p["ofdAgreementId"] = json!("not-a-uuid");
        assert!(field_error(p).starts_with("params.OfdAgreementId"));
        let mut p = valid();
        p["CustomReportId"] = json!(5);
        assert!(field_error(p).starts_with("params.CustomReportId"));
    }

    #[test]
    fn dates_with_offsets_compare_as_instants_and_others_as_written() {
        let w = |s: &str| When::parse(s).unwrap();
        // 23:00 in Moscow is 20:00 UTC: before 21:00 UTC.
        assert!(!w("2021-11-01T23:00:00+03:00").is_after(&w("2021-11-01T21:00:00Z")));
        assert!(w("2021-11-02T00:00:00").is_after(&w("2021-11-01T23:59:59.000+03:00")));
        assert!(!w("2021-11-01").is_after(&w("2021-11-01T00:00:00")));
        assert_eq!(
            w("2021-11-01T00:00:00.000+03:00").wall_clock(),
            w("2021-11-01T00:00:00").wall_clock()
        );
    }

    /// Section 3.2's example, character for character (the list element
    /// shown once; the seed's `...` stands for more of them).
    const SEED_BARE_LIST: &str = r#"{
  "OfdAgreementLimit": 500000,
  "ConsumedLimit": 0,
  "List": [
    {
      "Id": "1577b8bc-a384-4f1d-ad00-b0c2440601ef",
      "CDateUtc": "2018-07-12T12:28:06",
      "ReportType": "CloseShiftReport",
      "DateFrom": "2018-07-12T00:00:00",
      "DateTo": "2018-08-12T23:59:59",
      "ExpiredDate": "2018-07-19T12:28:06",
      "KktCount": 8,
      "ReportSize": 8,
      "Status": "Done",
      "AccountEmail": ofdtester1@ofd.ru
    }
    ],
    " TotalCount ": 9
}"#;

    #[test]
    fn the_seeds_bare_list_with_an_unquoted_email_is_read() {
        assert!(serde_json::from_str::<Value>(SEED_BARE_LIST).is_err());
        let list = parse_list(SEED_BARE_LIST.as_bytes()).unwrap();
        assert_eq!(list.reports.len(), 1);
        let r = &list.reports[0];
        assert_eq!(r.id, "1577b8bc-a384-4f1d-ad00-b0c2440601ef");
        assert_eq!(status_of(r), Status::Done);
        assert_eq!(r.name, None);
        let value = parse_lenient(SEED_BARE_LIST.as_bytes()).unwrap();
        assert_eq!(value["List"][0]["AccountEmail"], "ofdtester1@ofd.ru");
        assert_eq!(field(&value, "TotalCount"), Some(&json!(9)));
    }

    #[test]
    fn bare_words_are_quoted_only_where_values_go() {
        let fixed = quote_bare_values(
            r#"{"a": x@y.z, "b": [one, 2, true, "s: t"], "c": -1.5e3, "d": 2021-10-25 }"#,
        );
        let v: Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(
            v,
            json!({"a": "x@y.z", "b": ["one", 2, true, "s: t"], "c": -1.5e3, "d": "2021-10-25"})
        );
        let escaped = quote_bare_values(r#"{"q": "say \"hi\": now", "w": ok}"#);
        assert_eq!(serde_json::from_str::<Value>(&escaped).unwrap()["w"], "ok");
    }

    #[test]
    fn the_seeds_wrapped_list_is_read_with_its_agreement() {
        let seed = r#"{"Status":"Success","Data":{"OfdAgreementId":"56ddf007-76d7-4157-8e85-2d9fe0704cb4","OfdAgreementLimit":500000,"ConsumedLimit":0,
          "List":[{"Id":"a0e5354a-709c-41de-ba48-63e7b7e05ee7","CDateUtc":"2021-10-25T08:13:41","ReportType":"CloseShiftReport",
          "DateFrom":"2021-10-25T00:00:00","DateTo":"2021-10-25T11:12:34","Status":"Processing","Name":"Отчёт по сменам",
          "FileFormat":"Xlsx","AssumptiveCompleteTime":"2021-10-25T08:14:41",
          "DownloadUrl":"/api/customer/reports/a0e5354a-709c-41de-ba48-63e7b7e05ee7?OfdAgreementId=56ddf007-76d7-4157-8e85-2d9fe0704cb4",
          "DeleteUrl":"/api/customer/reports/a0e5354a-709c-41de-ba48-63e7b7e05ee7?ofdAgreementId=56ddf007-76d7-4157-8e85-2d9fe0704cb4",
          "CancelUrl":"/api/customer/reports/a0e5354a-709c-41de-ba48-63e7b7e05ee7/cancel?ofdAgreementId=56ddf007-76d7-4157-8e85-2d9fe0704cb4"}],
          "TotalCount":1},"Elapsed":"00:00:25.3858651"}"#;
        let list = parse_list(seed.as_bytes()).unwrap();
        assert_eq!(
            list.agreement_id.as_deref(),
            Some("56ddf007-76d7-4157-8e85-2d9fe0704cb4")
        );
        let r = &list.reports[0];
        assert_eq!(status_of(r), Status::Pending("Processing".into()));
        assert_eq!(r.name.as_deref(), Some("Отчёт по сменам"));
        assert_eq!(
            r.eta.map(format_utc).as_deref(),
            Some("2021-10-25T08:14:41")
        );
        assert!(
            r.cancel_url
                .as_deref()
                .unwrap()
                .ends_with("/cancel?ofdAgreementId=56ddf007-76d7-4157-8e85-2d9fe0704cb4")
        );
        assert!(parse_list(b"<html>502</html>").is_err());
        assert!(parse_list(br#"{"Status":"Success"}"#).is_err());
    }

    fn verdict(status: u16, errors: &[&str]) -> Verdict {
        let body = json!({"Errors": errors, "Status": "Failed", "Elapsed": "00:00:00.0100000"});
        judge(
            who(),
            "ordering",
            StatusCode::from_u16(status).unwrap(),
            body.to_string().as_bytes(),
        )
    }

    fn class(v: Verdict) -> ErrorClass {
        match v {
            Verdict::Fail(e) => e.class,
            Verdict::NotReady(m) => panic!("not an error: {m}"),
        }
    }

    #[test]
    fn each_error_name_of_the_seed_is_classified() {
        for name in [
            "DateFromGreaterThanDateTo",
            "OfdAgreementNotFound",
            "AccessDenied",
            "ReportSizeError",
            "ReportNotFound",
            "LimitExhausted",
        ] {
            assert_eq!(
                class(verdict(400, &[name])),
                ErrorClass::Permanent,
                "{name}"
            );
        }
        assert_eq!(
            class(verdict(500, &["InternalError"])),
            ErrorClass::Transient
        );
        // A name decides over the status.
        assert_eq!(
            class(verdict(400, &["InternalError"])),
            ErrorClass::Transient
        );
        assert!(matches!(
            verdict(400, &["ReportNotDone"]),
            Verdict::NotReady(_)
        ));
        let Verdict::Fail(limit) = verdict(400, &["LimitExhausted"]) else {
            panic!()
        };
        for needed in [
            "deleting old reports",
            "delete_after_download = true",
            "ofd-main",
            "docfetch retry nov-2021",
        ] {
            assert!(
                limit.message.contains(needed),
                "{needed}: {}",
                limit.message
            );
        }
        // Unknown names fall back to the status.
        assert_eq!(
            class(verdict(400, &["Что-то новое"])),
            ErrorClass::Permanent
        );
        assert_eq!(
            class(verdict(503, &["Что-то новое"])),
            ErrorClass::Transient
        );
        let html = judge(
            who(),
            "x",
            StatusCode::BAD_GATEWAY,
            b"<html><body>502 Bad Gateway</body></html>",
        );
        assert_eq!(class(html), ErrorClass::Transient);
    }

    fn ofd(base: &str) -> Ofd {
        Ofd::new(OfdAccount {
            base_url: Url::parse(base).unwrap(),
            login: "l".into(),
            password: Secret::new("p"),
            inn: None,
            kpp: None,
            agreement_id: None,
            delete_after_download: false,
            concurrency: 4,
        })
    }

    #[test]
    fn relative_urls_keep_the_base_path_and_never_leave_the_host() {
        let p = ofd("http://127.0.0.1:9/ofd");
        let url = p
            .resolve("/api/customer/reports/a0e5?OfdAgreementId=56dd", "x")
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/ofd/api/customer/reports/a0e5?OfdAgreementId=56dd"
        );
        let p = ofd("https://ofd.ru");
        assert_eq!(
            p.resolve("/api/customer/reports/a/cancel?ofdAgreementId=b", "x")
                .unwrap()
                .as_str(),
            "https://ofd.ru/api/customer/reports/a/cancel?ofdAgreementId=b"
        );
        assert_eq!(
            p.resolve("https://ofd.ru/api/customer/reports/a", "x")
                .unwrap()
                .as_str(),
            "https://ofd.ru/api/customer/reports/a"
        );
        let e = p.resolve("https://evil.example/steal", "x").unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent);
        // Same host, but plain http: the token would cross the network in clear.
        let e = p
            .resolve("http://ofd.ru/api/customer/reports/a", "x")
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent);
        assert_eq!(
            p.endpoint(
                "api/customer/reports",
                &[("Inn", "7841465198"), ("SkipPageFilter", "true")]
            )
            .as_str(),
            "https://ofd.ru/api/customer/reports?Inn=7841465198&SkipPageFilter=true"
        );
        assert_eq!(
            p.report_url("a b", Some("cancel"), "ofdAgreementId", Some("c"))
                .as_str(),
            "https://ofd.ru/api/customer/reports/a%20b/cancel?ofdAgreementId=c"
        );
    }

    #[test]
    fn the_token_is_added_only_to_the_sent_url_and_redacted_in_logs() {
        let url =
            Url::parse("https://ofd.ru/api/customer/reports/a?OfdAgreementId=b&AuthToken=old")
                .unwrap();
        let sent = with_token(&url, &Secret::new("ed38f9e155ce4a7ab3b784606fcd40a1"));
        assert_eq!(
            sent.as_str(),
            "https://ofd.ru/api/customer/reports/a?OfdAgreementId=b&AuthToken=ed38f9e155ce4a7ab3b784606fcd40a1"
        );
        assert!(!crate::http::redact_url(&sent).contains("ed38f9e1"));
    }

    #[test]
    fn the_order_carries_our_name_and_the_agreement_unless_given() {
        let name = report_name("nov-2021", Some("Сверка"));
        assert!(
            name.starts_with("Сверка [docfetch:nov-2021:") && name.ends_with(']'),
            "{name}"
        );
        assert_ne!(
            name,
            report_name("nov-2021", Some("Сверка")),
            "each attempt has its own tag"
        );
        assert!(report_name("j", None).starts_with("docfetch:j:"));
        let body = order_body(
            &json!({"name": "x", "ReportType": "KKTReport"}),
            "N",
            Some("A"),
        );
        assert_eq!(
            body,
            json!({"Name": "N", "ReportType": "KKTReport", "OfdAgreementId": "A"})
        );
        let body = order_body(&json!({"ofdAgreementId": "mine"}), "N", Some("A"));
        assert_eq!(body, json!({"Name": "N", "ofdAgreementId": "mine"}));
    }

    #[test]
    fn cursors_hold_ids_and_urls_but_nothing_secret() {
        let cursor = Cursor {
            phase: Phase::Waiting,
            name: Some("docfetch:j:1".into()),
            report: Some(ReportRef {
                id: "r".into(),
                download_url: Some("/api/customer/reports/r?OfdAgreementId=a".into()),
                delete_url: None,
                cancel_url: None,
                file_format: Some("Xlsx".into()),
            }),
            ..Cursor::default()
        };
        let value = to_value(&cursor);
        assert_eq!(value["phase"], "waiting");
        assert_eq!(serde_json::from_value::<Cursor>(value).unwrap(), cursor);
        assert_eq!(
            serde_json::from_value::<Cursor>(json!({})).unwrap().phase,
            Phase::New
        );
    }

    #[test]
    fn waits_follow_the_assumptive_complete_time_within_bounds() {
        let now =
            NaiveDateTime::parse_from_str("2021-11-15T10:14:44", "%Y-%m-%dT%H:%M:%S").unwrap();
        let at = |s: &str| Some(NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap());
        assert_eq!(
            wait_until(at("2021-11-15T10:15:44"), now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(wait_until(at("2021-11-15T10:14:44"), now), None);
        assert_eq!(wait_until(at("2021-11-15T10:00:00"), now), None);
        assert_eq!(wait_until(at("2021-11-16T10:00:00"), now), Some(MAX_HINT));
        assert_eq!(wait_until(None, now), None);
    }

    #[test]
    fn a_name_less_list_is_searched_by_type_and_period_taking_only_a_single_match() {
        let report = |id: &str, created: &str| {
            Report::from_value(&json!({
                "Id": id, "CDateUtc": created, "ReportType": "ReceiptReport",
                "DateFrom": "2021-11-01T00:00:00", "DateTo": "2021-11-02T23:59:59", "Status": "Todo"
            }))
            .unwrap()
        };
        let since = When::parse("2021-11-15T10:14:40").map(|w| w.wall_clock());
        let mut list = ReportList {
            agreement_id: None,
            reports: vec![
                report("old", "2021-11-10T10:00:00"),
                report("ours", "2021-11-15T10:14:44"),
            ],
        };
        assert_eq!(
            find_ordered(&list, "docfetch:j:1", &valid(), since).map(|r| r.id.as_str()),
            Some("ours")
        );
        list.reports.push(report("twin", "2021-11-15T10:14:45"));
        assert_eq!(
            find_ordered(&list, "docfetch:j:1", &valid(), since),
            None,
            "two candidates: no guess"
        );
        let mut named = report("named", "2021-11-15T10:14:44");
        named.name = Some("docfetch:j:1".into());
        list.reports.push(named);
        assert_eq!(
            find_ordered(&list, "docfetch:j:1", &valid(), since).map(|r| r.id.as_str()),
            Some("named")
        );
    }

    #[test]
    fn fallback_file_names_use_the_report_name_and_format() {
        let r = ReportRef {
            id: "r".into(),
            download_url: None,
            delete_url: None,
            cancel_url: None,
            file_format: Some("Xlsx".into()),
        };
        assert_eq!(
            fallback_file_name(&json!({"ReportType": "ReceiptReport"}), &r),
            "ReceiptReport.xlsx"
        );
        assert_eq!(
            fallback_file_name(
                &json!({"Name": "Сверка", "ReportType": "ReceiptReport"}),
                &r
            ),
            "Сверка.xlsx"
        );
        let bare = ReportRef {
            file_format: None,
            ..r
        };
        assert_eq!(fallback_file_name(&json!({}), &bare), "report.bin");
        assert_eq!(
            fallback_file_name(&json!({"UseXlsxFile": true}), &bare),
            "report.xlsx"
        );
    }
}
