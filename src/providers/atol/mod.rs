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

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use super::token::TokenCache;
use super::{Provider, ProviderError, Step, StepContext, excerpt};
use crate::config::keys::{AccountKeys, ConfigError, Secret};
use crate::job::JobResult;
use crate::job::request::RequestError;

mod api;
mod format;
mod request;
#[cfg(test)]
mod tests;

pub use api::{Problem, read_token};
pub use format::{Dup, parse_json};
pub use request::validate_request;

use api::*;
use format::*;
use request::*;

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

// ---------------------------------------------------------------------------
// `accounts check`
// ---------------------------------------------------------------------------

impl Atol {
    /// `POST /api/auth/v1/gettoken`: the token is the whole login, and asking
    /// for one orders nothing.
    async fn check_login(
        &self,
        account: &str,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(), super::check::CheckFailure> {
        use super::check::{CheckFailure, probe_context, probe_job};
        let job = probe_job(account, PROVIDER);
        let ctx = probe_context(&job, http, timeout);
        self.login(&ctx).await.map_err(CheckFailure::login)?;
        Ok(())
    }
}
