//! ATOL Online cash-register (KKT) and fiscal-storage (FN) information
//! API v1.0, seed `003_de3455f5d6dd2d74.txt`.
//!
//! The service answers at once; what takes time is the list, read page by
//! page. Two operations:
//!
//! - `cash-registers` (params: optional `limit`, 1–100, default 100) walks
//!   `GET {base}/api/kkt/v1/cash-registers?limit=…&offset=…` one page per
//!   step and saves `cash-registers.json` (every register's `data`) and
//!   `cash-registers.csv` (one row per register, for a person with Excel).
//! - `cash-register` (params: `serialNumber`) reads
//!   `GET {base}/api/kkt/v1/cash-registers/{serialNumber}` and saves
//!   `cash-register-SERIAL.json` (its `data`) and `cash-register-SERIAL.csv`.
//!
//! **The token.** `POST {base}/api/auth/v1/gettoken` with `{"login","pass"}`
//! gives a token valid `expiresIn` minutes from `issued`. The account's jobs
//! share it through a [`TokenCache`]; it is sent as `Token:` and renewed only
//! shortly before its end or when the service answers `ExpiredToken` or
//! `MissingToken` — the seed recommends asking for a new token only when the
//! service says the old one is no longer valid — after which the call is
//! repeated once. Refused credentials are remembered, so many jobs cause one
//! login attempt. The token lives only in memory: never in the cursor, a log
//! line, an error text or a file.
//!
//! **The walk.** The cursor holds the registers read so far and the next
//! offset, so a page that fails is retried on its own without reading the
//! earlier pages again. Each page is one step that checkpoints the cursor
//! (`Step::Continue`); every [`PAGES_BETWEEN_PAUSES`] pages the walk waits
//! briefly instead, which keeps it inside the scheduler's limit of 16
//! continues in a row and is gentler on the service. When the last page
//! (no `_links.next`) has been read, the number of registers must equal
//! `total`; when it does not, or `total` changes between pages, or a
//! register appears twice, the list changed while it was read (offset paging
//! then skips or repeats registers), so the walk starts again from the first
//! page, at most [`MAX_RESTARTS`] times.
//!
//! **The CSV** is for a person opening it in a Russian Excel: UTF-8 with a
//! BOM (so Cyrillic shows correctly), `;` between fields (Excel's list
//! separator in the Russian locale, where `,` is the decimal point), CRLF
//! line ends, fields quoted as RFC 4180 says when they hold `;`, `"` or a
//! line break, and `fiscalStoragePercentageUse` with a decimal comma. Digit
//! identifiers (serial numbers, the registration number, the INN) are
//! written as `="00107703864827"`, the usual way to keep Excel from turning
//! them into numbers that lose their leading zeros and, past 15 digits,
//! their last digits; other text starting with `=`, `+`, `-` or `@` gets a
//! leading `'` so that Excel never runs it as a formula. Programs should
//! read the JSON file, which keeps the service's values untouched.
//!
//! Readings of the seed where it is ambiguous or wrong:
//! - table 3 calls `_embedded` an object holding an array, the sample has
//!   the array itself: both are accepted;
//! - the single-register sample repeats `serialNumber` with two values; the
//!   first is the one in the URL and in `_links.self`, so the first value of
//!   a repeated key is kept (a warning in the receipt says so);
//! - `_links.next.href` is absolute: only its `offset` is used, and the next
//!   page is always requested from the account's `base_url` (see
//!   [`next_offset`]), so the token never goes to another host;
//! - table 3 spells the field `Timestamp`, the samples `timestamp`: both
//!   are read;
//! - `unsentDocs` "is given only when it is not 0": an absent value is
//!   written as 0 in the CSV;
//! - the list sample misses a comma between the `_links` members of its
//!   item: a typo in the document that no JSON parser accepts, so no repair
//!   is attempted (such an answer is retried as garbled, like an HTML page).

use std::cell::RefCell;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use super::token::TokenCache;
use super::{Provider, ProviderError, Step, StepContext, excerpt, read_body_limited};
use crate::config::keys::{AccountKeys, ConfigError, Secret};
use crate::job::JobResult;
use crate::job::request::RequestError;

/// The provider name used in `[accounts.*] provider = "…"`.
pub const PROVIDER: &str = "atol-kkt";

/// The operation that reads the whole list.
const LIST: &str = "cash-registers";
/// The operation that reads one register.
const ONE: &str = "cash-register";

/// Registers per page by default: the seed's maximum (its own default, 10,
/// would only mean more requests).
const DEFAULT_LIMIT: u32 = 100;
/// The seed's maximum `limit`.
const MAX_LIMIT: u32 = 100;

/// Largest answer accepted: a page of 100 registers is about 120 KiB.
const MAX_ANSWER: usize = 8 << 20;

/// A token is renewed when less than this is left of it.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// The seed's token lifetime, used when `expiresIn` is missing.
const SEED_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a token is used when its `issued` + `expiresIn` is already (or
/// almost) over by our clock: the clocks disagree, and the service's own
/// `ExpiredToken` answer is the authority, so the token is used for a while
/// rather than re-requested before every call.
const SKEWED_LIFETIME: Duration = Duration::from_secs(120);

/// Pages read in a row before a short pause. The scheduler fails a job that
/// asks to continue more than 16 times in one run; pages since the last
/// pause are never fewer than the continues of the current run (a run
/// starts after a pause, or after an error with the cursor of the last
/// checkpoint), so pausing at 15 always stays inside that limit.
const PAGES_BETWEEN_PAUSES: u32 = 15;

/// Times a changing list is read again from the start before giving up.
const MAX_RESTARTS: u32 = 3;
/// The pause before reading a changed list again: it is being edited now.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// A list that never ends (a service whose `next` links go on forever).
const MAX_PAGES: u32 = 100_000;

/// Warnings kept for the receipt, at most.
const MAX_WARNINGS: usize = 20;

/// `networkErrorCode` meanings, as table 3 gives them.
const NETWORK_ERRORS: [&str; 9] = [
    "Нет ошибок",
    "Отсутствует физический канал связи",
    "Ошибка сетевых настроек или нет соединения с сервером ОФД",
    "Разрыв соединения при передаче документа на сервер",
    "Некорректный заголовок сессионного пакета",
    "Превышен таймаут ожидания квитанции",
    "Разрыв соединения при приеме квитанции",
    "Превышен таймаут передачи документа на сервер",
    "ОФД-процесс не инициализирован",
];

/// The CSV columns: the `data` fields of table 3 in its order, with the
/// meaning of `networkErrorCode` right after it.
const CSV_COLUMNS: [&str; 19] = [
    "serialNumber",
    "registrationNumber",
    "deviceNumber",
    "fiscalizationDate",
    "fiscalStorageExpiration",
    "signedDocuments",
    "fiscalStoragePercentageUse",
    "fiscalStorageINN",
    "fiscalStorageSerialNumber",
    "fiscalStoragePaymentAddress",
    "groupCode",
    "timestamp",
    "isShiftOpened",
    "shiftNumber",
    "shiftReceipt",
    "unsentDocs",
    "firstUnsetDocTimestamp",
    "networkErrorCode",
    "networkErrorMeaning",
];

/// Columns whose digit-only values Excel would mangle as numbers.
const IDENTIFIER_COLUMNS: [&str; 5] = [
    "serialNumber",
    "registrationNumber",
    "deviceNumber",
    "fiscalStorageINN",
    "fiscalStorageSerialNumber",
];

/// `[accounts.NAME]` for `provider = "atol-kkt"`.
#[derive(Debug, Clone)]
pub struct AtolAccount {
    /// `https://online.atol.ru` by default.
    pub base_url: url::Url,
    pub login: String,
    pub password: Secret,
    /// Steps of this account's jobs run at once (default 4).
    pub concurrency: usize,
}

impl AtolAccount {
    pub fn from_keys(keys: &mut AccountKeys<'_>) -> Result<Self, ConfigError> {
        let base_url = keys.url("base_url", Some("https://online.atol.ru"))?;
        let login = keys.required("login")?;
        let password = keys.required_secret("password")?;
        let concurrency = super::concurrency_key(keys, 4)?;
        Ok(AtolAccount {
            base_url,
            login,
            password,
            concurrency,
        })
    }
}

/// What a request asks for, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Operation {
    /// The whole list, `limit` registers per page.
    List { limit: u32 },
    /// One register.
    One { serial: String },
}

/// Checks a request before it is accepted.
pub fn validate_request(operation: &str, params: &Value) -> Result<(), RequestError> {
    parse_request(operation, params).map(|_| ())
}

fn parse_request(operation: &str, params: &Value) -> Result<Operation, RequestError> {
    if operation != LIST && operation != ONE {
        return Err(RequestError::field(
            "operation",
            format!(
                "{operation:?} is not an ATOL operation: expected \"cash-registers\" or \"cash-register\""
            ),
        ));
    }
    let Some(params) = params.as_object() else {
        return Err(RequestError::field(
            "params",
            "expected a JSON object (such as {\"serialNumber\": \"00107703864827\"})",
        ));
    };
    // Strict about names: a misspelt `serialnumber` should be an error at
    // submit time, not a surprise in the output.
    let allowed = if operation == LIST {
        "limit"
    } else {
        "serialNumber"
    };
    if let Some(key) = params.keys().find(|k| k.as_str() != allowed) {
        return Err(RequestError::field(
            format!("params.{key}"),
            format!("unknown parameter: {operation:?} takes only `{allowed}`"),
        ));
    }
    if operation == LIST {
        let limit = match params.get("limit") {
            None => DEFAULT_LIMIT,
            Some(value) => value
                .as_u64()
                .filter(|n| (1..=u64::from(MAX_LIMIT)).contains(n))
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    RequestError::field(
                        "params.limit",
                        format!(
                            "expected a whole number from 1 to {MAX_LIMIT} (registers per page), found {value}"
                        ),
                    )
                })?,
        };
        return Ok(Operation::List { limit });
    }
    let serial = match params.get("serialNumber") {
        None => {
            return Err(RequestError::field(
                "params.serialNumber",
                "required: the cash register's serial number (заводской номер ККТ), such as \"00107703864827\"",
            ));
        }
        Some(Value::String(serial)) => serial,
        Some(Value::Number(n)) => {
            return Err(RequestError::field(
                "params.serialNumber",
                format!(
                    "expected a string: as a number ({n}) a serial number loses its leading zeros; write it in quotes"
                ),
            ));
        }
        Some(other) => {
            return Err(RequestError::field(
                "params.serialNumber",
                format!("expected a string of letters and digits, found {other}"),
            ));
        }
    };
    if serial.is_empty() || serial.len() > 64 || !serial.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(RequestError::field(
            "params.serialNumber",
            format!(
                "expected 1 to 64 latin letters and digits (such as \"00107703864827\"), found {serial:?}"
            ),
        ));
    }
    Ok(Operation::One {
        serial: serial.clone(),
    })
}

/// Where a walk of the list is, stored as the job's cursor. It never holds
/// the token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Cursor {
    /// The offset of the next page to read.
    #[serde(default)]
    offset: u64,
    /// `total` as the first page of this reading gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
    /// The `data` of every register read so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    registers: Vec<Value>,
    /// Pages read in this reading of the list.
    #[serde(default)]
    pages: u32,
    /// Pages read since the last pause (see [`PAGES_BETWEEN_PAUSES`]).
    #[serde(default)]
    since_pause: u32,
    /// Times the list changed under the walk and was read again.
    #[serde(default)]
    restarts: u32,
    /// Kept for the receipt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    /// Registers saved, once done (the registers themselves are then
    /// dropped, so the store does not keep a second copy of the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    saved: Option<usize>,
}

impl Cursor {
    fn warn(&mut self, warning: String) {
        if self.warnings.len() < MAX_WARNINGS && !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }
}

fn to_value(cursor: &Cursor) -> Value {
    serde_json::to_value(cursor).unwrap_or_default()
}

/// An ATOL Online account's provider.
pub struct Atol {
    account: AtolAccount,
    tokens: TokenCache,
}

impl Atol {
    pub fn new(account: AtolAccount) -> Self {
        Atol {
            account,
            tokens: TokenCache::new(TOKEN_MARGIN),
        }
    }

    /// Reads one page of the list and decides what comes next.
    async fn walk(
        &self,
        ctx: &StepContext<'_>,
        limit: u32,
        mut cursor: Cursor,
    ) -> Result<Step, ProviderError> {
        if cursor.pages >= MAX_PAGES {
            return Err(ProviderError::permanent(format!(
                "reading the cash-register list: still not at the end after {MAX_PAGES} pages; the service's next links do not end"
            )));
        }
        let what = match cursor.total {
            Some(total) => format!(
                "reading cash registers from number {} of {total}",
                cursor.offset + 1
            ),
            None => format!("reading the cash-register list at offset {}", cursor.offset),
        };
        let answer = self
            .get_json(
                ctx,
                self.list_url(cursor.offset, limit),
                &what,
                "the cash-register list was not found at this address; check base_url",
            )
            .await?;
        for dup in &answer.duplicates {
            cursor.warn(dup.describe());
        }
        let page = read_page(&answer.value).map_err(|reason| {
            ProviderError::transient(format!(
                "{what}: {reason}: {}",
                excerpt(answer.value.to_string().as_bytes())
            ))
        })?;
        if let (Some(known), Some(now)) = (cursor.total, page.total)
            && known != now
        {
            return restart(
                cursor,
                format!(
                    "the number of cash registers changed from {known} to {now} while the list was read"
                ),
            );
        }
        cursor.total = cursor.total.or(page.total);
        let got = page.items.len();
        let mut seen: HashSet<&str> = cursor.registers.iter().filter_map(serial_of).collect();
        let repeated = page
            .items
            .iter()
            .filter_map(serial_of)
            .find(|serial| !seen.insert(serial))
            .map(str::to_string);
        if let Some(serial) = repeated {
            return restart(
                cursor,
                format!("cash register {serial} was listed twice while the list was read"),
            );
        }
        cursor.registers.extend(page.items);
        cursor.pages += 1;
        cursor.since_pause += 1;
        let count = cursor.registers.len() as u64;
        tracing::debug!(offset = cursor.offset, got, count, total = ?cursor.total, "read a page of cash registers");
        if let Some(total) = cursor.total
            && count > total
        {
            return restart(
                cursor,
                format!(
                    "{count} cash registers were listed, more than the {total} the service counts"
                ),
            );
        }
        let Some(href) = page.next else {
            return self.finish_walk(ctx, cursor).await;
        };
        let next = next_offset(&href, &self.account.base_url, cursor.offset, got)
            .map_err(|reason| ProviderError::transient(format!("{what}: {reason}")))?;
        if let Some(origin) = next.foreign_origin {
            tracing::warn!(%origin, "the service's next link points elsewhere; reading the next page from base_url");
            cursor.warn(format!(
                "the service's next-page links point to {origin}, not to base_url; the pages were read from base_url, and the token was never sent to {origin}"
            ));
        }
        cursor.offset = next.offset;
        if cursor.since_pause >= PAGES_BETWEEN_PAUSES {
            cursor.since_pause = 0;
            let note = format!(
                "read {count}{} cash registers in {} pages; pausing briefly before the next page",
                cursor.total.map(|t| format!(" of {t}")).unwrap_or_default(),
                cursor.pages
            );
            return Ok(Step::Wait {
                cursor: to_value(&cursor),
                hint: Some(Duration::ZERO),
                poll: false,
                note,
            });
        }
        Ok(Step::Continue(to_value(&cursor)))
    }

    /// The last page was read: check the count and save both files.
    async fn finish_walk(
        &self,
        ctx: &StepContext<'_>,
        mut cursor: Cursor,
    ) -> Result<Step, ProviderError> {
        let count = cursor.registers.len();
        match cursor.total {
            Some(total) if count as u64 != total => {
                return restart(
                    cursor,
                    format!("the list ended after {count} of {total} cash registers"),
                );
            }
            Some(_) => {}
            None => cursor.warn(
                "the service did not say how many cash registers there are (`total`), so the list could not be checked for completeness".into(),
            ),
        }
        if cursor.restarts > 0 {
            cursor.warn(format!(
                "the list changed while it was read and was read again from the start ({} times)",
                cursor.restarts
            ));
        }
        let fetched_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let document = ListDocument {
            fetched_at: &fetched_at,
            total: count as u64,
            cash_registers: &cursor.registers,
        };
        let json = pretty(&document)?;
        let csv = csv_document(&cursor.registers);
        let files = vec![
            ctx.save_bytes("cash-registers.json", &json).await?,
            ctx.save_bytes("cash-registers.csv", &csv).await?,
        ];
        tracing::info!(count, pages = cursor.pages, "saved the cash-register list");
        cursor.registers = Vec::new();
        cursor.saved = Some(count);
        let result = JobResult {
            files,
            warnings: cursor.warnings.clone(),
        };
        Ok(Step::Done {
            cursor: to_value(&cursor),
            result,
        })
    }

    /// Reads and saves one register.
    async fn one(&self, ctx: &StepContext<'_>, serial: &str) -> Result<Step, ProviderError> {
        let what = format!("reading cash register {serial}");
        let url = self.endpoint(&["api", "kkt", "v1", "cash-registers", serial]);
        let not_found = format!("ATOL Online has no cash register with serial number {serial}");
        let answer = self.get_json(ctx, url, &what, &not_found).await?;
        let mut warnings: Vec<String> = answer.duplicates.iter().map(Dup::describe).collect();
        let data = item_data(&answer.value).map_err(|reason| {
            ProviderError::transient(format!(
                "{what}: {reason}: {}",
                excerpt(answer.value.to_string().as_bytes())
            ))
        })?;
        if let Some(found) = serial_of(&data)
            && found != serial
        {
            warnings.push(format!(
                "asked for cash register {serial}, the service answered with serialNumber {found}"
            ));
        }
        let json = pretty(&InTableOrder(&data))?;
        let csv = csv_document(std::slice::from_ref(&data));
        let stem = crate::filename::sanitize(&format!("cash-register-{serial}"), "cash-register");
        let files = vec![
            ctx.save_bytes(&format!("{stem}.json"), &json).await?,
            ctx.save_bytes(&format!("{stem}.csv"), &csv).await?,
        ];
        Ok(Step::Done {
            cursor: Value::Object(Default::default()),
            result: JobResult { files, warnings },
        })
    }

    /// `{base}/a/b/c` with each segment encoded.
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.account.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// A page of the list, in the seed's query order (`limit`, `offset`).
    fn list_url(&self, offset: u64, limit: u32) -> Url {
        let mut url = self.endpoint(&["api", "kkt", "v1", "cash-registers"]);
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string())
            .append_pair("offset", &offset.to_string());
        url
    }

    /// The account's token, logging in when there is none.
    async fn token(&self, ctx: &StepContext<'_>) -> Result<Secret, ProviderError> {
        self.tokens.get(|| self.login(ctx)).await
    }

    /// `POST /api/auth/v1/gettoken`. Returns the token and how long it may
    /// be used from now.
    async fn login(&self, ctx: &StepContext<'_>) -> Result<(Secret, Duration), ProviderError> {
        let what = format!(
            "logging in to ATOL Online as {:?} (account {})",
            self.account.login, ctx.job.account
        );
        let body = serde_json::json!({
            "login": self.account.login,
            "pass": self.account.password.expose(),
        })
        .to_string();
        let request = ctx
            .http
            .post(self.endpoint(&["api", "auth", "v1", "gettoken"]))
            // Exactly the header the seed asks for.
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .header(ACCEPT, "application/json")
            .body(body)
            .timeout(ctx.timeout);
        let response = request
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(&what, &e))?;
        let status = response.status();
        let retry_after = crate::http::retry_after(response.headers(), SystemTime::now());
        let body = read_body_limited(response, MAX_ANSWER, &what).await?;
        if status.is_success() {
            // Never quote this body in an error: it may hold a token.
            let parsed = parse_json(&body).ok().map(|(value, _)| value);
            if let Some(Ok(issued)) = parsed.as_ref().map(|v| read_token(v, Utc::now())) {
                tracing::info!(account = %ctx.job.account, "logged in to ATOL Online");
                return Ok(issued);
            }
            // "token … is returned only when there is no error": a 200
            // without one may still say why.
            let problem = parsed.as_ref().and_then(Problem::from_value);
            if let Some(problem) = &problem
                && problem.error_code.as_deref() == Some("WrongLoginOrPassword")
            {
                return Err(self.credentials_refused(&what, &ctx.job.account, Some(problem)));
            }
            let said = problem
                .map(|p| format!(": {}", self.scrub(p.describe(), None)))
                .unwrap_or_default();
            return Err(ProviderError::transient(format!(
                "{what}: the answer carries no usable token (a non-empty `token` string){said}"
            )));
        }
        if status == StatusCode::UNAUTHORIZED {
            let problem = Problem::parse(&body);
            return Err(self.credentials_refused(&what, &ctx.job.account, problem.as_ref()));
        }
        Err(self.refusal(
            status,
            retry_after,
            &body,
            &what,
            "the login address was not found; check base_url",
            None,
        ))
    }

    fn credentials_refused(
        &self,
        what: &str,
        account: &str,
        problem: Option<&Problem>,
    ) -> ProviderError {
        let said = problem
            .map(|p| format!(": {}", self.scrub(p.describe(), None)))
            .unwrap_or_default();
        ProviderError::permanent(format!(
            "{what}: wrong login or password (HTTP 401{said}); check accounts.{account}.login and accounts.{account}.password"
        ))
    }

    /// A `GET` with the token, read as JSON. A token the service calls
    /// expired or unknown is dropped and the call repeated once with a new one.
    async fn get_json(
        &self,
        ctx: &StepContext<'_>,
        url: Url,
        what: &str,
        not_found: &str,
    ) -> Result<Parsed, ProviderError> {
        let mut renewed = false;
        loop {
            let token = self.token(ctx).await?;
            let mut header = HeaderValue::from_str(token.expose()).map_err(|_| {
                ProviderError::transient(format!(
                    "{what}: the token ATOL Online issued cannot be sent in a header"
                ))
            })?;
            // Keeps it out of any debug output of the request.
            header.set_sensitive(true);
            let request = ctx
                .http
                .get(url.clone())
                .header("Token", header)
                .header(ACCEPT, "application/hal+json")
                .timeout(ctx.timeout);
            let response = request
                .send()
                .await
                .map_err(|e| ProviderError::from_reqwest(what, &e))?;
            let status = response.status();
            let retry_after = crate::http::retry_after(response.headers(), SystemTime::now());
            let body = read_body_limited(response, MAX_ANSWER, what).await?;
            if status.is_success() {
                return parse_json(&body)
                    .map(|(value, duplicates)| Parsed { value, duplicates })
                    .map_err(|_| {
                        ProviderError::transient(format!(
                            "{what}: the answer is not the expected JSON: {}",
                            self.scrub(excerpt(&body), Some(&token))
                        ))
                    });
            }
            if status == StatusCode::UNAUTHORIZED {
                let problem = Problem::parse(&body);
                let code = problem.as_ref().and_then(|p| p.error_code.clone());
                if code.as_deref() == Some("WrongLoginOrPassword") {
                    return Err(self.credentials_refused(what, &ctx.job.account, problem.as_ref()));
                }
                // ExpiredToken, MissingToken, or a 401 without a readable
                // code: the token is no good either way.
                self.tokens.invalidate(&token).await;
                let code = code.unwrap_or_else(|| "no errorCode".into());
                if !renewed {
                    renewed = true;
                    tracing::info!(%code, "ATOL Online rejected the token; requesting a new one");
                    continue;
                }
                let said = problem
                    .map(|p| self.scrub(p.describe(), Some(&token)))
                    .unwrap_or(code);
                return Err(ProviderError::transient(format!(
                    "{what}: ATOL Online rejected a newly issued token too (HTTP 401: {said})"
                )));
            }
            return Err(self.refusal(status, retry_after, &body, what, not_found, Some(&token)));
        }
    }

    /// Every unsuccessful status other than 401, decided in one place:
    /// 400, 403 and 404 are final, 429 pauses the account, 5xx and 408 are
    /// retried, other 4xx are final.
    fn refusal(
        &self,
        status: StatusCode,
        retry_after: Option<Duration>,
        body: &[u8],
        what: &str,
        not_found: &str,
        token: Option<&Secret>,
    ) -> ProviderError {
        let said = match Problem::parse(body) {
            Some(problem) => problem.describe(),
            None => excerpt(body),
        };
        let said = self.scrub(said, token);
        let with = |text: String| {
            if said.is_empty() {
                text
            } else {
                format!("{text}: {said}")
            }
        };
        match status {
            StatusCode::TOO_MANY_REQUESTS => ProviderError::rate_limited(what, retry_after),
            StatusCode::BAD_REQUEST => ProviderError::permanent(with(format!(
                "{what}: ATOL Online rejected the request (HTTP 400 Bad Request)"
            ))),
            StatusCode::FORBIDDEN => ProviderError::permanent(with(format!(
                "{what}: the token does not allow this (HTTP 403 Forbidden); ask ATOL Online to grant the account access"
            ))),
            StatusCode::NOT_FOUND => {
                ProviderError::permanent(with(format!("{what}: {not_found} (HTTP 404 Not Found)")))
            }
            _ => ProviderError::from_status(what, status, &said).with_retry_after(retry_after),
        }
    }

    /// Removes the password and the token from a text that came from the
    /// service, in case it echoed them.
    fn scrub(&self, mut text: String, token: Option<&Secret>) -> String {
        for secret in [
            Some(self.account.password.expose()),
            token.map(Secret::expose),
        ]
        .into_iter()
        .flatten()
        {
            if !secret.is_empty() && text.contains(secret) {
                text = text.replace(secret, "***");
            }
        }
        text
    }
}

impl Provider for Atol {
    const NAME: &'static str = PROVIDER;
    type Account = AtolAccount;

    fn read_account(keys: &mut AccountKeys<'_>) -> Result<Self::Account, ConfigError> {
        AtolAccount::from_keys(keys)
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
        Atol::new(account)
    }

    /// Logins performed so far (for tests and metrics).
    fn logins(&self) -> u64 {
        self.tokens.logins()
    }

    async fn step(&self, ctx: &StepContext<'_>) -> Result<Step, ProviderError> {
        let operation = parse_request(&ctx.job.operation, &ctx.job.params).map_err(|e| {
            ProviderError::permanent(format!("the request is not valid for ATOL Online: {e}"))
        })?;
        match operation {
            Operation::List { limit } => {
                let cursor: Cursor = if ctx.job.cursor.is_null() {
                    Cursor::default()
                } else {
                    serde_json::from_value(ctx.job.cursor.clone()).map_err(|e| {
                        ProviderError::permanent(format!(
                            "the job's saved progress is unreadable: {e}"
                        ))
                    })?
                };
                self.walk(ctx, limit, cursor).await
            }
            Operation::One { serial } => self.one(ctx, &serial).await,
        }
    }
}

/// `cash-registers.json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListDocument<'a> {
    fetched_at: &'a str,
    total: u64,
    #[serde(serialize_with = "ordered_registers")]
    cash_registers: &'a [Value],
}

fn ordered_registers<S: serde::Serializer>(
    registers: &&[Value],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(registers.iter().map(InTableOrder))
}

/// A register's `data` written with its members in table 3's order (then
/// any others alphabetically), so the JSON file reads like the document;
/// serde_json's own map would sort them all alphabetically.
struct InTableOrder<'a>(&'a Value);

impl Serialize for InTableOrder<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Value::Object(members) = self.0 else {
            return self.0.serialize(serializer);
        };
        let known = CSV_COLUMNS
            .iter()
            .filter_map(|key| members.get_key_value(*key));
        let others = members
            .iter()
            .filter(|(key, _)| !CSV_COLUMNS.contains(&key.as_str()));
        serializer.collect_map(known.chain(others))
    }
}

fn pretty<T: Serialize>(value: &T) -> Result<Vec<u8>, ProviderError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| ProviderError::permanent(format!("cannot encode the JSON file: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Starts the walk over after the list changed under it.
fn restart(cursor: Cursor, reason: String) -> Result<Step, ProviderError> {
    if cursor.restarts >= MAX_RESTARTS {
        return Err(ProviderError::permanent(format!(
            "reading the cash-register list: {reason}; the list changed each of the {} times it was read, submit the request again when it is stable",
            MAX_RESTARTS + 1
        )));
    }
    tracing::info!(%reason, "the cash-register list changed while it was read; reading it again");
    let fresh = Cursor {
        restarts: cursor.restarts + 1,
        warnings: cursor.warnings,
        ..Cursor::default()
    };
    Ok(Step::Wait {
        cursor: to_value(&fresh),
        hint: Some(RESTART_PAUSE),
        poll: false,
        note: format!("{reason}; reading the list again from the start"),
    })
}

/// A successful answer, parsed.
struct Parsed {
    value: Value,
    /// Keys that appeared more than once (the first value was kept).
    duplicates: Vec<Dup>,
}

/// One page of the list.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Each register's `data`.
    pub items: Vec<Value>,
    pub total: Option<u64>,
    /// `_links.next.href`, absent on the last page.
    pub next: Option<String>,
}

/// Its errors quote the service only through [`excerpt`]: they become the
/// job's error, which must stay one short line.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn read_page(value: &Value) -> Result<Page, String> {
    if !value.is_object() {
        return Err("the answer is not a JSON object".into());
    }
    let items = embedded(value)?
        .into_iter()
        .map(item_data)
        .collect::<Result<Vec<_>, _>>()?;
    let total = match value.get("total") {
        None | Some(Value::Null) => None,
        Some(v) => Some(count(v).ok_or_else(|| {
            format!(
                "`total` is not a count: {}",
                excerpt(v.to_string().as_bytes())
            )
        })?),
    };
    let next = match value.pointer("/_links/next") {
        None | Some(Value::Null) => None,
        Some(link) => Some(
            link.get("href")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|href| !href.is_empty())
                .ok_or("`_links.next` has no href")?
                .to_string(),
        ),
    };
    Ok(Page { items, total, next })
}

/// The items of `_embedded`: the sample's array, or table 3's "object
/// holding an array" (its one array member). A missing `_embedded` is an
/// empty page; the count check at the end catches a page that lost items.
fn embedded(value: &Value) -> Result<Vec<&Value>, String> {
    match value.get("_embedded") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items.iter().collect()),
        Some(Value::Object(members)) => {
            let arrays: Vec<&Vec<Value>> = members.values().filter_map(Value::as_array).collect();
            match arrays.as_slice() {
                [items] => Ok(items.iter().collect()),
                [] if members.is_empty() => Ok(Vec::new()),
                // A single item not wrapped in an array.
                [] if members.contains_key("data") => Ok(vec![&value["_embedded"]]),
                [] => Err("`_embedded` holds no array of cash registers".into()),
                _ => Err(format!(
                    "`_embedded` holds {} arrays; which one lists the cash registers is unclear",
                    arrays.len()
                )),
            }
        }
        Some(other) => Err(format!(
            "`_embedded` is neither an array nor an object: {}",
            excerpt(other.to_string().as_bytes())
        )),
    }
}

/// A register's `data` object; an item that is the data itself (it has a
/// `serialNumber` and no `data`) is taken as it is, without its links.
fn item_data(item: &Value) -> Result<Value, String> {
    match item.get("data") {
        Some(data @ Value::Object(_)) => Ok(data.clone()),
        Some(other) => Err(format!(
            "a cash register's `data` is not an object: {}",
            excerpt(other.to_string().as_bytes())
        )),
        None if item.get("serialNumber").is_some() => {
            let mut data = item.clone();
            if let Some(map) = data.as_object_mut() {
                map.remove("_links");
            }
            Ok(data)
        }
        None => Err("a cash register comes without `data`".into()),
    }
}

fn serial_of(data: &Value) -> Option<&str> {
    data.get("serialNumber").and_then(Value::as_str)
}

/// A non-negative whole number, also when the service sends it as text.
fn count(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Where the next page starts, from the service's `next` link.
#[derive(Debug, Clone, PartialEq)]
struct NextPage {
    offset: u64,
    /// The link's origin when it is not the account's (`scheme://host:port`).
    foreign_origin: Option<String>,
}

/// Only `offset` is taken from `_links.next.href`; the next request is
/// always built on the account's `base_url`, never sent to the link itself.
/// The seed's links are absolute (`https://online.atol.ru/api/…`): behind a
/// proxy, or from a misconfigured or hostile service, they may name another
/// host, and the request carries the token. For the seed's links both ways
/// give the same URL. Without an `offset` in the link, the next page starts
/// after the registers received; an offset that does not move forward
/// would loop and is an error.
fn next_offset(href: &str, base: &Url, current: u64, got: usize) -> Result<NextPage, String> {
    let target = base.join(href).map_err(|_| {
        format!(
            "the next-page link is not a URL: {}",
            excerpt(href.as_bytes())
        )
    })?;
    let same_origin = target.scheme() == base.scheme()
        && target.host_str() == base.host_str()
        && target.port_or_known_default() == base.port_or_known_default();
    let foreign_origin = (!same_origin).then(|| target.origin().ascii_serialization());
    let offset = target
        .query_pairs()
        .find(|(key, _)| key.eq_ignore_ascii_case("offset"))
        .and_then(|(_, value)| value.trim().parse::<u64>().ok())
        .unwrap_or(current + got as u64);
    if offset <= current {
        return Err(format!(
            "the next-page link does not move forward (offset {offset} after {current})"
        ));
    }
    Ok(NextPage {
        offset,
        foreign_origin,
    })
}

/// How long a token from `gettoken` may be used, from `now`: `expiresIn`
/// minutes from `issued` (an RFC 3339 time with an offset and, in the seed,
/// seven fractional digits), never more than `expiresIn` from now (a clock
/// behind the service's must not stretch it), counted from now when
/// `issued` is unreadable, the seed's 24 hours when `expiresIn` is missing.
fn token_lifetime(issued: Option<&str>, expires_in: Option<f64>, now: DateTime<Utc>) -> Duration {
    let announced = expires_in
        .filter(|minutes| minutes.is_finite() && *minutes >= 0.0)
        // Ten years: anything longer is nonsense, and overflow is not an option.
        .map(|minutes| Duration::from_secs_f64(minutes.min(5_256_000.0) * 60.0))
        .unwrap_or(SEED_LIFETIME);
    let remaining = issued
        .and_then(|text| DateTime::parse_from_rfc3339(text.trim()).ok())
        .and_then(|issued| {
            let ends = issued.with_timezone(&Utc) + chrono::TimeDelta::from_std(announced).ok()?;
            // A past end gives an error here, read as "nothing left".
            Some((ends - now).to_std().unwrap_or(Duration::ZERO))
        })
        .unwrap_or(announced)
        .min(announced);
    if remaining <= TOKEN_MARGIN {
        announced.min(SKEWED_LIFETIME)
    } else {
        remaining
    }
}

/// The token and its lifetime from a `gettoken` answer.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn read_token(value: &Value, now: DateTime<Utc>) -> Result<(Secret, Duration), String> {
    let token = value
        .get("token")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or("no token")?;
    let issued = value.get("issued").and_then(Value::as_str);
    let expires_in = value.get("expiresIn").and_then(|v| {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    });
    Ok((Secret::new(token), token_lifetime(issued, expires_in, now)))
}

/// An RFC 7807 error body (table 5).
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Problem {
    pub title: Option<String>,
    pub detail: Option<String>,
    pub error_code: Option<String>,
    pub trace_id: Option<String>,
    /// `errors`: field (or JSON path) → messages.
    pub errors: Vec<(String, Vec<String>)>,
}

impl Problem {
    // Public (hidden) for the property tests in tests/fuzz.rs.
    #[doc(hidden)]
    pub fn parse(body: &[u8]) -> Option<Problem> {
        let (value, _) = parse_json(body).ok()?;
        Problem::from_value(&value)
    }

    fn from_value(value: &Value) -> Option<Problem> {
        let object = value.as_object()?;
        // Table 5's mandatory members; one is enough to recognise the shape.
        if !["type", "title", "status", "traceId", "errorCode"]
            .iter()
            .any(|key| object.contains_key(*key))
        {
            return None;
        }
        let text = |key: &str| object.get(key).and_then(scalar_text);
        // Table 5 calls `errors` a string, table 6 shows an object of
        // field → [messages]: both, and an array, are read.
        let errors = match object.get("errors") {
            Some(Value::Object(fields)) => fields
                .iter()
                .map(|(field, messages)| {
                    let messages = match messages {
                        Value::Array(items) => items.iter().filter_map(scalar_text).collect(),
                        other => scalar_text(other).into_iter().collect(),
                    };
                    (field.clone(), messages)
                })
                .collect(),
            Some(Value::Array(items)) => vec![(
                String::new(),
                items.iter().filter_map(scalar_text).collect(),
            )],
            Some(other) => scalar_text(other)
                .map(|message| vec![(String::new(), vec![message])])
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Some(Problem {
            title: text("title"),
            detail: text("detail"),
            error_code: text("errorCode"),
            trace_id: text("traceId"),
            errors,
        })
    }

    /// `title: detail; field: message, message [errorCode X] (traceId T)`,
    /// each piece clipped so a verbose service cannot flood the error text.
    // Public (hidden) for the property tests in tests/fuzz.rs.
    #[doc(hidden)]
    pub fn describe(&self) -> String {
        let mut text = self.title.as_deref().map(clip).unwrap_or_default();
        if let Some(detail) = &self.detail
            && Some(detail) != self.title.as_ref()
        {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&clip(detail));
        }
        let fields: Vec<String> = self
            .errors
            .iter()
            .take(10)
            .map(|(field, messages)| {
                let messages: Vec<String> = messages.iter().map(|m| clip(m)).collect();
                if field.is_empty() {
                    messages.join(", ")
                } else {
                    format!("{}: {}", clip(field), messages.join(", "))
                }
            })
            .collect();
        if !fields.is_empty() {
            if !text.is_empty() {
                text.push_str("; ");
            }
            // Clipped as a whole too: a field may list any number of
            // messages, each clipped on its own.
            text.push_str(&clip_to(&fields.join("; "), FIELDS_LIMIT));
        }
        if let Some(code) = &self.error_code {
            text.push_str(&format!(" [errorCode {}]", clip(code)));
        }
        if let Some(trace) = &self.trace_id {
            text.push_str(&format!(" (traceId {})", clip(trace)));
        }
        text.trim().to_string()
    }
}

/// A string (trimmed, non-empty) or number as text.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn clip(text: &str) -> String {
    clip_to(text, 300)
}

/// Characters of a problem's `errors` in its description.
const FIELDS_LIMIT: usize = 600;

fn clip_to(text: &str, limit: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(limit) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

/// A key that appeared more than once in one JSON object.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub struct Dup {
    /// `data.serialNumber`, `_embedded[3].data.serialNumber`.
    pub path: String,
    pub kept: String,
    pub dropped: String,
}

impl Dup {
    fn describe(&self) -> String {
        format!(
            "the service's answer repeats the key {} ({}, then {}); the first value was kept",
            self.path, self.kept, self.dropped
        )
    }
}

/// Parses JSON keeping the *first* value of a repeated key (serde_json
/// alone keeps the last) and reporting every repetition. The seed's
/// single-register sample repeats `serialNumber`; its first value matches
/// the URL and `_links.self`, the second is copied from another sample.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn parse_json(bytes: &[u8]) -> Result<(Value, Vec<Dup>), serde_json::Error> {
    let duplicates = RefCell::new(Vec::new());
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = FirstWins {
        path: "",
        duplicates: &duplicates,
    }
    .deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok((value, duplicates.into_inner()))
}

/// The seed and visitor behind [`parse_json`].
#[derive(Clone, Copy)]
struct FirstWins<'a> {
    path: &'a str,
    duplicates: &'a RefCell<Vec<Dup>>,
}

impl<'de> DeserializeSeed<'de> for FirstWins<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FirstWins<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, items.len());
            let seed = FirstWins {
                path: &path,
                duplicates: self.duplicates,
            };
            match seq.next_element_seed(seed)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            let value = map.next_value_seed(FirstWins {
                path: &path,
                duplicates: self.duplicates,
            })?;
            match object.get(&key) {
                Some(kept) => self.duplicates.borrow_mut().push(Dup {
                    kept: clip(&kept.to_string()),
                    dropped: clip(&value.to_string()),
                    path,
                }),
                None => {
                    object.insert(key, value);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// The CSV file: a BOM, the header, one row per register, CRLF line ends.
fn csv_document(registers: &[Value]) -> Vec<u8> {
    let mut out = String::from("\u{feff}");
    let header: Vec<String> = CSV_COLUMNS.iter().map(|c| csv_quote(c)).collect();
    out.push_str(&header.join(";"));
    out.push_str("\r\n");
    for data in registers {
        let row: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|column| csv_quote(&csv_cell(column, data)))
            .collect();
        out.push_str(&row.join(";"));
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// One cell's text, before quoting.
fn csv_cell(column: &str, data: &Value) -> String {
    if column == "networkErrorMeaning" {
        return match data.get("networkErrorCode") {
            None | Some(Value::Null) => String::new(),
            Some(code) => match count(code) {
                Some(n) => usize::try_from(n)
                    .ok()
                    .and_then(|n| NETWORK_ERRORS.get(n))
                    .map(|meaning| meaning.to_string())
                    .unwrap_or_else(|| format!("неизвестный код {n}")),
                None => format!("неизвестный код {code}"),
            },
        };
    }
    let value = match column {
        // Table 3 writes `Timestamp`, the samples `timestamp`.
        "timestamp" => data.get("timestamp").or_else(|| data.get("Timestamp")),
        _ => data.get(column),
    };
    match value {
        // "Given only when it is not 0."
        None | Some(Value::Null) if column == "unsentDocs" => "0".into(),
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => {
            if IDENTIFIER_COLUMNS.contains(&column)
                && !text.is_empty()
                && text.bytes().all(|b| b.is_ascii_digit())
            {
                format!("=\"{text}\"")
            } else if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                format!("'{text}")
            } else {
                text.clone()
            }
        }
        Some(Value::Number(n)) if column == "fiscalStoragePercentageUse" => {
            n.to_string().replace('.', ",")
        }
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(other) => other.to_string(),
    }
}

/// RFC 4180 quoting with `;` as the separator.
fn csv_quote(field: &str) -> String {
    if field.contains([';', '"', '\r', '\n']) || field.starts_with(' ') || field.ends_with(' ') {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ErrorClass;
    use serde_json::json;

    fn atol(base: &str) -> Atol {
        Atol::new(AtolAccount {
            base_url: Url::parse(base).unwrap(),
            login: "neletest".into(),
            password: Secret::new("v2ApscRjr"),
            concurrency: 4,
        })
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_seeds_issued_time_with_seven_fractional_digits_is_read() {
        let issued = "2020-03-31T17:25:06.0289998+03:00";
        // Ten hours later, as in the seed's example: 14 hours are left.
        let now = at("2020-04-01T03:25:06.0289998+03:00");
        assert_eq!(
            token_lifetime(Some(issued), Some(1440.0), now),
            Duration::from_secs(14 * 3600)
        );
        let (token, lifetime) = read_token(
            &json!({"token": "abc", "issued": issued, "expiresIn": 1440}),
            at("2020-03-31T14:25:06.0289998Z"),
        )
        .unwrap();
        assert_eq!(token.expose(), "abc");
        assert_eq!(lifetime, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn token_lifetimes_survive_odd_clocks_and_odd_answers() {
        let now = at("2020-03-31T14:25:06Z");
        // Unreadable `issued`: counted from now.
        assert_eq!(
            token_lifetime(Some("yesterday"), Some(60.0), now),
            Duration::from_secs(3600)
        );
        assert_eq!(
            token_lifetime(None, Some(60.0), now),
            Duration::from_secs(3600)
        );
        // Our clock behind the service's: never more than announced.
        assert_eq!(
            token_lifetime(Some("2020-03-31T20:00:00+03:00"), Some(60.0), now),
            Duration::from_secs(3600)
        );
        // Already over by our clock: used briefly, not re-requested at once.
        assert_eq!(
            token_lifetime(Some("2020-03-01T00:00:00+03:00"), Some(1440.0), now),
            SKEWED_LIFETIME
        );
        // Missing or nonsense `expiresIn`: the seed's 24 hours.
        assert_eq!(token_lifetime(None, None, now), SEED_LIFETIME);
        assert_eq!(token_lifetime(None, Some(-5.0), now), SEED_LIFETIME);
        assert!(token_lifetime(None, Some(f64::MAX), now) > SEED_LIFETIME);
        // `expiresIn` as text.
        let (_, lifetime) = read_token(&json!({"token": "t", "expiresIn": "30"}), now).unwrap();
        assert_eq!(lifetime, Duration::from_secs(1800));
        assert!(read_token(&json!({"token": "", "expiresIn": 30}), now).is_err());
        assert!(read_token(&json!({"issued": "x"}), now).is_err());
    }

    #[test]
    fn the_seeds_repeated_serial_number_keeps_the_first_value() {
        // The seed's single-register sample, verbatim in its data part.
        let sample = r#"{
          "_links": {
            "self": {"href": "https://online.atol.ru/api/kkt/v1/cash-registers/00107702504819", "rel": "get-cash-register", "action": "GET"},
            "get-cash-register": {"href": "https://online.atol.ru/api/kkt/v1/cash-registers/00107702504819", "rel": "get-cash-register", "action": "GET"}
          },
          "data": {
            "serialNumber": "00107702504819",
            "serialNumber": "00107703864827",
            "registrationNumber": "000000003027865",
            "deviceNumber": "KKT024219",
            "fiscalizationDate": "2019-07-22T14:03:00+00:00",
            "fiscalStorageExpiration": "2020-11-02T21:00:00+00:00",
            "signedDocuments": 213350,
            "fiscalStoragePercentageUse": 85.34,
            "fiscalStorageINN": "3026455760",
            "fiscalStorageSerialNumber": "9999078902004339",
            "fiscalStoragePaymentAddress": "test.qa.ru",
            "groupCode": "test-qa-ru_14605",
            "timestamp": "2019-12-05T10:45:30+00:00",
            "isShiftOpened": true,
            "shiftNumber": 126,
            "shiftReceipt": 2278,
            "unsentDocs": 1510,
            "firstUnsetDocTimestamp": "2019-12-05T08:46:00+00:00",
            "networkErrorCode": 0
          }
        }"#;
        let (value, dups) = parse_json(sample.as_bytes()).unwrap();
        let data = item_data(&value).unwrap();
        assert_eq!(data["serialNumber"], "00107702504819");
        assert_eq!(data["fiscalStoragePercentageUse"], 85.34);
        assert_eq!(dups.len(), 1);
        assert_eq!(dups[0].path, "data.serialNumber");
        let warning = dups[0].describe();
        assert!(
            warning.contains("\"00107702504819\", then \"00107703864827\""),
            "{warning}"
        );
        // Repeats deeper down and in arrays are found too; plain JSON is unchanged.
        let (value, dups) = parse_json(br#"{"a":[{"b":1,"b":2}],"c":{"d":null}}"#).unwrap();
        assert_eq!(value, json!({"a": [{"b": 1}], "c": {"d": null}}));
        assert_eq!(dups[0].path, "a[0].b");
        assert!(parse_json(b"{\"a\":1} trailing").is_err());
        assert!(parse_json(b"<html>").is_err());
    }

    #[test]
    fn embedded_may_be_the_samples_array_or_table_3s_object() {
        let item = json!({"_links": {}, "data": {"serialNumber": "1"}});
        let as_array = json!({"_embedded": [item], "total": 1});
        let as_object = json!({"_embedded": {"cashRegisters": [item]}, "total": "1"});
        for page in [as_array, as_object] {
            let page = read_page(&page).unwrap();
            assert_eq!(page.items, vec![json!({"serialNumber": "1"})]);
            assert_eq!(page.total, Some(1));
            assert_eq!(page.next, None);
        }
        assert!(read_page(&json!({"total": 0})).unwrap().items.is_empty());
        assert!(
            read_page(&json!({"_embedded": {}}))
                .unwrap()
                .items
                .is_empty()
        );
        assert!(read_page(&json!({"_embedded": {"a": [], "b": []}})).is_err());
        assert!(read_page(&json!({"_embedded": "x"})).is_err());
        assert!(read_page(&json!({"_embedded": [{"_links": {}}]})).is_err());
        assert!(read_page(&json!({"_embedded": [], "total": -1})).is_err());
        assert!(read_page(&json!({"_links": {"next": {"rel": "x"}}})).is_err());
        // Items that are the data themselves lose their links.
        let bare = read_page(&json!({"_embedded": [{"serialNumber": "2", "_links": {}}]})).unwrap();
        assert_eq!(bare.items, vec![json!({"serialNumber": "2"})]);
    }

    #[test]
    fn next_links_give_only_their_offset_and_never_their_host() {
        let base = Url::parse("https://online.atol.ru").unwrap();
        let seed = "https://online.atol.ru/api/kkt/v1/cash-registers?offset=101&limit=1";
        assert_eq!(
            next_offset(seed, &base, 100, 1).unwrap(),
            NextPage {
                offset: 101,
                foreign_origin: None
            }
        );
        let proxied = Url::parse("http://127.0.0.1:8080/atol").unwrap();
        let elsewhere = next_offset(seed, &proxied, 100, 1).unwrap();
        assert_eq!(elsewhere.offset, 101);
        assert_eq!(
            elsewhere.foreign_origin.as_deref(),
            Some("https://online.atol.ru")
        );
        // An explicit default port is the same origin; another port is not.
        assert!(
            next_offset("https://online.atol.ru:443/x?offset=5", &base, 0, 5)
                .unwrap()
                .foreign_origin
                .is_none()
        );
        assert!(
            next_offset("https://online.atol.ru:8443/x?offset=5", &base, 0, 5)
                .unwrap()
                .foreign_origin
                .is_some()
        );
        // Relative links, links without an offset, links going backwards.
        assert_eq!(
            next_offset("/api/kkt/v1/cash-registers?limit=5&offset=10", &base, 5, 5)
                .unwrap()
                .offset,
            10
        );
        assert_eq!(next_offset("?limit=5", &base, 5, 5).unwrap().offset, 10);
        assert!(next_offset("?offset=5", &base, 5, 5).is_err());
        assert!(next_offset("?offset=0", &base, 5, 0).is_err());
    }

    #[test]
    fn urls_follow_the_seed() {
        let p = atol("http://127.0.0.1:9/atol/");
        assert_eq!(
            p.list_url(100, 1).as_str(),
            "http://127.0.0.1:9/atol/api/kkt/v1/cash-registers?limit=1&offset=100"
        );
        assert_eq!(
            p.endpoint(&["api", "kkt", "v1", "cash-registers", "00107702504819"])
                .as_str(),
            "http://127.0.0.1:9/atol/api/kkt/v1/cash-registers/00107702504819"
        );
        assert_eq!(
            atol("https://online.atol.ru")
                .endpoint(&["api", "auth", "v1", "gettoken"])
                .as_str(),
            "https://online.atol.ru/api/auth/v1/gettoken"
        );
    }

    #[test]
    fn problem_details_of_table_6_become_readable_errors() {
        let validation = r#"{"type":"https://tools.ietf.org/html/rfc7231#section-6.5.1","title":"Ошибка валидации","status":400,"traceId":"|a1b2.","errors":{"limit":["The field limit must be between 1 and 100."],"$.pass":["Required"]}}"#.as_bytes();
        let problem = Problem::parse(validation).unwrap();
        assert_eq!(
            problem.describe(),
            "Ошибка валидации; $.pass: Required; limit: The field limit must be between 1 and 100. (traceId |a1b2.)"
        );
        let wrong = r#"{"type":"https://tools.ietf.org/html/rfc7235#section-3.1","title":"Неверный логин или пароль","status":401,"detail":"Неверный логин или пароль","instance":"/api/auth/v1/gettoken","traceId":"t1","errorCode":"WrongLoginOrPassword"}"#.as_bytes();
        let problem = Problem::parse(wrong).unwrap();
        assert_eq!(problem.error_code.as_deref(), Some("WrongLoginOrPassword"));
        assert_eq!(
            problem.describe(),
            "Неверный логин или пароль [errorCode WrongLoginOrPassword] (traceId t1)"
        );
        // Table 5's `errors` as a string, a detail that differs from the title.
        let odd = br#"{"title":"T","detail":"D","errors":"bad","status":"400"}"#;
        assert_eq!(Problem::parse(odd).unwrap().describe(), "T: D; bad");
        // The seed's 403 sample has a trailing comma: not JSON, so the
        // status alone decides and the body is quoted as it is.
        let forbidden =
            b"{\"type\":\"x\",\"title\":\"Forbidden\",\"status\":403,\"traceId\":\"t\",}";
        assert_eq!(Problem::parse(forbidden), None);
        assert_eq!(Problem::parse(b"<html>oops</html>"), None);
        assert_eq!(Problem::parse(br#"{"token":"x"}"#), None);
        let long = format!(r#"{{"title":"{}"}}"#, "я".repeat(1000));
        assert!(
            Problem::parse(long.as_bytes())
                .unwrap()
                .describe()
                .chars()
                .count()
                < 310
        );
    }

    #[test]
    fn statuses_are_classified_in_one_place() {
        let p = atol("https://online.atol.ru");
        let class = |status: u16, body: &[u8]| {
            p.refusal(
                StatusCode::from_u16(status).unwrap(),
                Some(Duration::from_secs(3)),
                body,
                "reading",
                "no such register",
                None,
            )
        };
        let bad = class(
            400,
            r#"{"title":"Ошибка валидации","status":400,"traceId":"tr","errors":{"limit":["too big"]}}"#.as_bytes(),
        );
        assert_eq!(bad.class, ErrorClass::Permanent);
        assert!(bad.message.contains("limit: too big"), "{}", bad.message);
        assert!(bad.message.contains("traceId tr"), "{}", bad.message);
        let forbidden = class(403, b"{\"title\":\"Forbidden\",\"status\":403,}");
        assert_eq!(forbidden.class, ErrorClass::Permanent);
        assert!(
            forbidden.message.contains("does not allow"),
            "{}",
            forbidden.message
        );
        let missing = class(404, br#"{"title":"Not Found","status":404,"traceId":"x"}"#);
        assert_eq!(missing.class, ErrorClass::Permanent);
        assert!(
            missing
                .message
                .contains("no such register (HTTP 404 Not Found)"),
            "{}",
            missing.message
        );
        let slow = class(429, b"");
        assert_eq!(slow.class, ErrorClass::Transient);
        assert_eq!(slow.account_cooldown, Some(Duration::from_secs(3)));
        for status in [500, 502, 503, 408] {
            let e = class(
                status,
                r#"{"title":"Ошибка сервера","status":500,"traceId":"x"}"#.as_bytes(),
            );
            assert_eq!(e.class, ErrorClass::Transient, "{status}");
            assert!(e.message.contains("Ошибка сервера"), "{}", e.message);
        }
        let html = class(502, b"<html><body>Bad gateway</body></html>");
        assert_eq!(html.class, ErrorClass::Transient);
        assert!(html.message.contains("Bad gateway"), "{}", html.message);
        assert_eq!(class(409, b"").class, ErrorClass::Permanent);
    }

    #[test]
    fn secrets_echoed_by_the_service_are_scrubbed() {
        let p = atol("https://online.atol.ru");
        let token = Secret::new("tok-123");
        let e = p.refusal(
            StatusCode::BAD_REQUEST,
            None,
            br#"{"title":"bad pass v2ApscRjr","detail":"token tok-123","status":400}"#,
            "x",
            "",
            Some(&token),
        );
        assert!(!e.message.contains("v2ApscRjr"), "{}", e.message);
        assert!(!e.message.contains("tok-123"), "{}", e.message);
    }

    fn csv_rows(bytes: &[u8]) -> Vec<String> {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let text = text.strip_prefix('\u{feff}').expect("a BOM");
        assert!(text.ends_with("\r\n"));
        text.split_terminator("\r\n").map(str::to_string).collect()
    }

    #[test]
    fn the_csv_is_quoted_for_excel_and_explains_network_errors() {
        let data = json!({
            "serialNumber": "00107703864827",
            "registrationNumber": "000000003027865",
            "deviceNumber": "KKT024219",
            "fiscalStoragePercentageUse": 85.34,
            "fiscalStorageINN": "3026455760",
            "fiscalStorageSerialNumber": "9999078902004339",
            "fiscalStoragePaymentAddress": "г. Москва; касса \"Север\"",
            "groupCode": "=HYPERLINK(\"x\")",
            "Timestamp": "2019-12-05T10:45:30+00:00",
            "isShiftOpened": true,
            "shiftNumber": 126,
            "networkErrorCode": 2
        });
        let rows = csv_rows(&csv_document(&[data]));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], CSV_COLUMNS.join(";"));
        assert_eq!(
            rows[1],
            "\"=\"\"00107703864827\"\"\";\"=\"\"000000003027865\"\"\";KKT024219;;;;85,34;\
             \"=\"\"3026455760\"\"\";\"=\"\"9999078902004339\"\"\";\
             \"г. Москва; касса \"\"Север\"\"\";\"'=HYPERLINK(\"\"x\"\")\";\
             2019-12-05T10:45:30+00:00;true;126;;0;;2;\
             Ошибка сетевых настроек или нет соединения с сервером ОФД"
        );
    }

    #[test]
    fn json_files_list_a_registers_fields_in_table_3s_order() {
        let data = json!({"zeta": 1, "networkErrorCode": 0, "groupCode": "g", "serialNumber": "1"});
        let text = String::from_utf8(pretty(&InTableOrder(&data)).unwrap()).unwrap();
        let order: Vec<usize> = ["serialNumber", "groupCode", "networkErrorCode", "zeta"]
            .iter()
            .map(|key| text.find(&format!("\"{key}\"")).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, data, "nothing lost or changed");
    }

    #[test]
    fn every_network_error_code_has_its_meaning() {
        let meaning =
            |code: Value| csv_cell("networkErrorMeaning", &json!({"networkErrorCode": code}));
        assert_eq!(meaning(json!(0)), "Нет ошибок");
        assert_eq!(meaning(json!(8)), "ОФД-процесс не инициализирован");
        assert_eq!(meaning(json!("5")), "Превышен таймаут ожидания квитанции");
        assert_eq!(meaning(json!(9)), "неизвестный код 9");
        assert_eq!(meaning(json!(-1)), "неизвестный код -1");
        assert_eq!(csv_cell("networkErrorMeaning", &json!({})), "");
        assert_eq!(csv_quote(" padded"), "\" padded\"");
        assert_eq!(csv_quote("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_quote("plain"), "plain");
    }

    #[test]
    fn requests_are_checked_before_they_are_accepted() {
        let ok = |op: &str, params: Value| parse_request(op, &params);
        assert_eq!(
            ok("cash-registers", json!({})),
            Ok(Operation::List { limit: 100 })
        );
        assert_eq!(
            ok("cash-registers", json!({"limit": 5})),
            Ok(Operation::List { limit: 5 })
        );
        assert_eq!(
            ok("cash-register", json!({"serialNumber": "00107703864827"})),
            Ok(Operation::One {
                serial: "00107703864827".into()
            })
        );
        for (op, params) in [
            ("receipts", json!({})),
            ("cash-registers", json!([])),
            ("cash-registers", json!({"limit": 0})),
            ("cash-registers", json!({"limit": 101})),
            ("cash-registers", json!({"limit": "5"})),
            ("cash-registers", json!({"limit": 5.5})),
            ("cash-registers", json!({"offset": 5})),
            ("cash-register", json!({})),
            ("cash-register", json!({"serialNumber": ""})),
            ("cash-register", json!({"serialNumber": "../x"})),
            ("cash-register", json!({"serialNumber": "00 1"})),
            ("cash-register", json!({"serialNumber": 107703864827u64})),
            ("cash-register", json!({"serialNumber": "1", "limit": 5})),
            ("cash-register", json!({"serialnumber": "1"})),
        ] {
            assert!(
                validate_request(op, &params).is_err(),
                "{op} {params} should be refused"
            );
        }
        let numeric = validate_request("cash-register", &json!({"serialNumber": 1077}))
            .unwrap_err()
            .to_string();
        assert!(numeric.contains("leading zeros"), "{numeric}");
    }

    #[test]
    fn cursors_never_hold_more_than_the_walk_needs() {
        let cursor = Cursor {
            offset: 10,
            total: Some(23),
            registers: vec![json!({"serialNumber": "1"})],
            ..Cursor::default()
        };
        let value = to_value(&cursor);
        assert_eq!(
            serde_json::from_value::<Cursor>(value.clone()).unwrap(),
            cursor
        );
        assert_eq!(
            serde_json::from_value::<Cursor>(json!({})).unwrap(),
            Cursor::default()
        );
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert!(!keys.iter().any(|k| k.contains("token")), "{keys:?}");
    }
}
