//! A fake OFD.ru "ИС Отчеты" API v1.3 that follows seed
//! `001_36c055defb9d4596.txt`, quirks included:
//!
//! - `POST /api/Authorization/CreateAuthToken` with `{"Login","Password"}` →
//!   `{"AuthToken": 32 hex digits, "ExpirationDateUtc": "YYYY-MM-DDTHH:MM:SS"}`;
//!   wrong credentials → 403 with `{}`. Every other call needs a valid,
//!   unexpired `AuthToken` in the query string, or it gets 401.
//! - `GET /api/customer/reports?Inn=…&Kpp=…` → the agreement lookup of 1.2
//!   (always the wrapped shape, with `OfdAgreementId`).
//! - `GET /api/customer/reports` → the report list (3.2), wrapped in `Data`
//!   (the generic envelope of section 2, default) or bare as 3.2 prints it,
//!   with its `" TotalCount "` key and, optionally, its unquoted e-mail.
//!   Without `SkipPageFilter=true` only the first page is shown.
//! - `POST /api/customer/reports` → a report in `Todo` with its
//!   `AssumptiveCompleteTime`; it turns `Processing`, then `Done` as the list
//!   is read (see [`OfdSimConfig::pending_lists`]).
//! - `GET /api/customer/reports/{id}` → the file once `Done`, else `ReportNotDone`.
//! - `DELETE /api/customer/reports/{id}` → the report, now `Deleted`.
//! - `GET /api/customer/reports/{id}/cancel` → a report not generated yet is
//!   cancelled. 3.2.1 has no "cancelled" status, so it shows as `Deleted`
//!   (the report is gone for the user, as after a delete).
//!
//! Errors are the seed's `{"Errors":[…],"Status":"Failed","Elapsed":…}` with
//! an HTTP status other than 200. Behaviour per report can be steered by a
//! `_sim` object in the order body (see [`Knobs`]); the service ignores it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Timelike, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod handlers;
use self::handlers::*;

/// Where the fake service is mounted on the simulator's port (the account's
/// `base_url` is the simulator origin plus this prefix).
pub const PREFIX: &str = "/ofd";

/// The agreement of the seed's 1.2 example, found by its INN and KPP.
pub const SEED_AGREEMENT_ID: &str = "56ddf007-76d7-4157-8e85-2d9fe0704cb4";
pub const SEED_INN: &str = "7841465198";
pub const SEED_KPP: &str = "772501001";

/// The e-mail of the seed's 3.2 example (printed there without quotes).
const ACCOUNT_EMAIL: &str = "ofdtester1@ofd.ru";

/// Report types of 3.1.1 with their display names (the seed's examples name
/// `CloseShiftReport` "Отчёт по сменам" and `ReceiptReport` "Сверка").
const REPORT_TYPES: &[(&str, &str)] = &[
    ("KKTReport", "Отчет по подключенным ККТ"),
    ("CloseShiftReport", "Отчёт по сменам"),
    ("ReceiptReport", "Сверка"),
    ("FiscalDocumentReport", "Список фискальных документов"),
    ("RentReport", "Отчет арендатора"),
    ("EReceiptReport", "Статистика отправки электронных чеков"),
    (
        "OpenShift24Report",
        "Список касс со сменами, открытыми более 24 часов",
    ),
    ("ManagerKktReport", "Список всех касс"),
    ("MyKktReport", "Отчёт-мониторинг"),
    ("FnScheduleReport", "График смены ФН"),
];

use super::{Mutex, Origin};

/// Per-report behaviour, from the order body's `_sim` (all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Knobs {
    /// List answers showing the report unfinished (default: the service's).
    pub pending_lists: Option<u32>,
    /// The report is not `Done` before this many milliseconds after the order.
    pub ready_after_ms: Option<u64>,
    /// `AssumptiveCompleteTime` this far after the order (default: the service's).
    pub eta_ms: Option<u64>,
    /// End in this status instead of `Done` (`Error`, `Deleted`).
    pub final_status: Option<String>,
    /// The order is refused with this error name.
    pub order_error: Option<String>,
    /// HTTP status of `order_error` (default: 500 for `InternalError`, else 400).
    pub order_status: Option<u16>,
    /// The report is created, but the answer is a 502 HTML page (the
    /// connection broke after the service accepted the order).
    pub fail_after_create: bool,
    /// List calls answer this error while `list_errors` last.
    pub list_error: Option<String>,
    pub list_errors: u32,
    /// Downloads answer this error (`download_errors` times, or always).
    pub download_error: Option<String>,
    pub download_errors: Option<u32>,
    /// The first N downloads of a `Done` report answer `ReportNotDone`.
    pub not_done_downloads: u32,
    /// The delete answers this error.
    pub delete_error: Option<String>,
    /// File size in bytes (default: the service's).
    pub size: Option<usize>,
    /// `Content-Disposition` file name.
    pub filename: Option<String>,
    /// Send no `Content-Disposition`.
    pub no_disposition: bool,
}

/// The shape of the report list (3.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListShape {
    /// `{"Status":"Success","Data":{"List":[…],"TotalCount":…},"Elapsed":…}`
    /// with the reports as the 1.2 example shows them.
    #[default]
    Wrapped,
    /// `{"OfdAgreementLimit":…,"ConsumedLimit":…,"List":[…]," TotalCount ":…}`
    /// with the reports as the 3.2 example shows them (no name, no URLs).
    Bare,
}

/// A legal entity attached to the cabinet.
#[derive(Debug, Clone)]
pub struct SimAgreement {
    pub id: String,
    pub inn: String,
    pub kpp: String,
}

/// Settings of the fake service.
#[derive(Debug, Clone)]
pub struct OfdSimConfig {
    pub login: String,
    pub password: String,
    /// How long a token lives (the expiry is printed in whole seconds,
    /// rounded up, and enforced as printed).
    pub token_lifetime: Duration,
    /// List answers that show a new report unfinished (`Todo` for the first
    /// half, then `Processing`); the next one shows it `Done`.
    pub pending_lists: u32,
    /// `AssumptiveCompleteTime` this long after the order (rounded up to a
    /// whole second). The seed's example says a minute; a short default
    /// keeps `docfetch demo` quick.
    pub assumptive_delay: Duration,
    pub list_shape: ListShape,
    /// In the bare list, print `"AccountEmail": ofdtester1@ofd.ru` unquoted,
    /// exactly as the seed does (invalid JSON).
    pub unquoted_email: bool,
    /// The legal entities; with more than one, orders need `OfdAgreementId`.
    pub agreements: Vec<SimAgreement>,
    /// `OfdAgreementLimit`: reports not deleted per agreement; an order
    /// beyond it is refused with `LimitExhausted`.
    pub agreement_limit: u64,
    /// Reports per page when `SkipPageFilter=true` is not given.
    pub page_size: usize,
    /// The first N report lists answer 500 with an HTML page.
    pub fail_lists: u32,
    /// The first call after logging in answers 429 with `Retry-After: 1`.
    pub rate_limit_once: bool,
    /// The next N calls answer 401 whatever token they carry.
    pub reject_tokens: u32,
    /// Default file size in bytes.
    pub file_size: usize,
}

impl Default for OfdSimConfig {
    fn default() -> Self {
        OfdSimConfig {
            login: "docfetch".into(),
            password: "sim-ofd-password".into(),
            token_lifetime: Duration::from_secs(3600),
            pending_lists: 1,
            assumptive_delay: Duration::from_secs(2),
            list_shape: ListShape::Wrapped,
            unquoted_email: false,
            agreements: vec![SimAgreement {
                id: SEED_AGREEMENT_ID.into(),
                inn: SEED_INN.into(),
                kpp: SEED_KPP.into(),
            }],
            agreement_limit: 500_000,
            page_size: 20,
            fail_lists: 0,
            rate_limit_once: false,
            reject_tokens: 0,
            file_size: 4096,
        }
    }
}

/// Counters a test can read.
#[derive(Debug, Default)]
pub struct OfdCounters {
    /// Login attempts (accepted or refused).
    pub logins: AtomicU64,
    /// Reports created.
    pub orders: AtomicU64,
    /// Report list answers (the agreement lookup not included).
    pub lists: AtomicU64,
    /// Agreement lookups by Inn/Kpp.
    pub agreement_lookups: AtomicU64,
    /// Complete files served.
    pub downloads: AtomicU64,
    /// DELETE requests.
    pub deletes: AtomicU64,
    /// Cancel requests.
    pub cancels: AtomicU64,
    /// Calls refused with 401.
    pub unauthorized: AtomicU64,
    /// Unfinished reports shown in a list before their AssumptiveCompleteTime.
    pub early_views: AtomicU64,
}

/// A report as the fake service keeps it; what a test can see of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportView {
    pub id: String,
    pub name: String,
    pub status: String,
    pub agreement: String,
}

#[derive(Debug, Clone)]
struct SimReport {
    id: String,
    agreement: String,
    name: String,
    report_type: String,
    type_name: String,
    date_from: NaiveDateTime,
    date_to: NaiveDateTime,
    created: NaiveDateTime,
    created_at: Instant,
    eta: NaiveDateTime,
    kkt_count: usize,
    emails: Vec<String>,
    status: String,
    views: u32,
    knobs: Knobs,
    list_errors: u32,
    download_errors: u32,
    not_done_downloads: u32,
    file: Option<(String, Bytes)>,
}

impl SimReport {
    fn pending(&self) -> bool {
        matches!(self.status.as_str(), "Todo" | "Processing")
    }

    fn url(&self, suffix: &str, key: &str) -> String {
        format!(
            "/api/customer/reports/{}{suffix}?{key}={}",
            self.id, self.agreement
        )
    }

    /// As the 1.2 and 3.1 examples show a report.
    fn full(&self) -> Value {
        let mut v = json!({
            "Id": self.id,
            "CDateUtc": utc(self.created),
            "ReportTypeName": self.type_name,
            "ReportType": self.report_type,
            "DateFrom": utc(self.date_from),
            "DateTo": utc(self.date_to),
            "ExpiredDate": utc(self.created + TimeDelta::days(7)),
            "KktCount": self.kkt_count,
            "Status": self.status,
            "AccountEmail": ACCOUNT_EMAIL,
            "AccountName": "Иван",
            "Name": self.name,
            "EmailsToNotify": self.emails,
            "FileFormat": "Xlsx",
            "IsAutoReport": false,
            "DownloadUrl": self.url("", "OfdAgreementId"),
            "DeleteUrl": self.url("", "ofdAgreementId"),
            "CancelUrl": self.url("/cancel", "ofdAgreementId"),
        });
        // "Предположительное время формирования отчета (если отчет ещё не сгенерирован)".
        if self.pending() {
            v["AssumptiveCompleteTime"] = json!(utc(self.eta));
        }
        v
    }

    /// As the 3.2 and 4 examples show a report.
    fn short(&self) -> Value {
        let size_kb = self
            .file
            .as_ref()
            .map_or(0, |(_, b)| b.len().div_ceil(1024));
        json!({
            "Id": self.id,
            "CDateUtc": utc(self.created),
            "ReportType": self.report_type,
            "DateFrom": utc(self.date_from),
            "DateTo": utc(self.date_to),
            "ExpiredDate": utc(self.created + TimeDelta::days(7)),
            "KktCount": self.kkt_count,
            "ReportSize": size_kb,
            "Status": self.status,
            "AccountEmail": ACCOUNT_EMAIL,
        })
    }
}

#[derive(Default)]
struct Inner {
    reports: Vec<SimReport>,
    tokens: HashMap<String, NaiveDateTime>,
    issued: Vec<String>,
    requests: Vec<String>,
    order_bodies: Vec<Value>,
    served: Vec<(String, String)>,
}

/// The fake service's state.
pub struct OfdSim {
    pub config: OfdSimConfig,
    pub counters: OfdCounters,
    inner: Mutex<Inner>,
    origin: Origin,
    seq: AtomicU64,
    fail_lists: AtomicU64,
    reject_tokens: AtomicU64,
    rate_limited: AtomicBool,
}

impl OfdSim {
    pub fn new(config: OfdSimConfig) -> Arc<Self> {
        Arc::new(OfdSim {
            fail_lists: AtomicU64::new(u64::from(config.fail_lists)),
            reject_tokens: AtomicU64::new(u64::from(config.reject_tokens)),
            config,
            counters: OfdCounters::default(),
            inner: Mutex::new(Inner::default()),
            origin: Origin::default(),
            seq: AtomicU64::new(1),
            rate_limited: AtomicBool::new(false),
        })
    }

    pub fn set_origin(&self, origin: &str) {
        self.origin.set(origin);
    }

    /// The account `base_url` for this service.
    pub fn base_url(&self) -> String {
        self.origin.get()
    }

    pub fn orders(&self) -> u64 {
        self.counters.orders.load(Ordering::SeqCst)
    }
    pub fn logins(&self) -> u64 {
        self.counters.logins.load(Ordering::SeqCst)
    }
    pub fn lists(&self) -> u64 {
        self.counters.lists.load(Ordering::SeqCst)
    }
    pub fn agreement_lookups(&self) -> u64 {
        self.counters.agreement_lookups.load(Ordering::SeqCst)
    }
    pub fn downloads(&self) -> u64 {
        self.counters.downloads.load(Ordering::SeqCst)
    }
    pub fn deletes(&self) -> u64 {
        self.counters.deletes.load(Ordering::SeqCst)
    }
    pub fn cancels(&self) -> u64 {
        self.counters.cancels.load(Ordering::SeqCst)
    }
    pub fn unauthorized(&self) -> u64 {
        self.counters.unauthorized.load(Ordering::SeqCst)
    }
    pub fn early_views(&self) -> u64 {
        self.counters.early_views.load(Ordering::SeqCst)
    }

    /// Every token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.lock().issued.clone()
    }

    /// Every request as `METHOD /path?query` (path inside [`PREFIX`]).
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().requests.clone()
    }

    /// The bodies of all orders received, as sent.
    pub fn order_bodies(&self) -> Vec<Value> {
        self.inner.lock().order_bodies.clone()
    }

    /// (file name, SHA-256 hex) of every file served.
    pub fn served_files(&self) -> Vec<(String, String)> {
        self.inner.lock().served.clone()
    }

    /// The reports, oldest first.
    pub fn reports(&self) -> Vec<ReportView> {
        self.inner
            .lock()
            .reports
            .iter()
            .map(|r| ReportView {
                id: r.id.clone(),
                name: r.name.clone(),
                status: r.status.clone(),
                agreement: r.agreement.clone(),
            })
            .collect()
    }

    /// Makes every token issued so far invalid (as if they had expired).
    pub fn revoke_tokens(&self) {
        self.inner.lock().tokens.clear();
    }

    /// Builds the router, mounted at the root.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/Authorization/CreateAuthToken", post(login))
            .route("/api/customer/reports", get(list).post(order))
            .route("/api/customer/reports/{id}", get(download).delete(delete))
            .route("/api/customer/reports/{id}/cancel", get(cancel))
            .with_state(self.clone())
    }

    fn digest(&self, label: &str) -> String {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let mut h = Sha256::new();
        h.update(n.to_le_bytes());
        h.update(label.as_bytes());
        h.update(self.origin.get().as_bytes());
        crate::job::digest::hex(&h.finalize())
    }

    fn next_id(&self) -> String {
        let hex = self.digest("report");
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    fn record(&self, method: &Method, uri: &Uri) {
        let line = match uri.query() {
            Some(q) => format!("{method} {}?{q}", uri.path()),
            None => format!("{method} {}", uri.path()),
        };
        self.inner.lock().requests.push(line);
    }

    /// The checks every call but the login goes through.
    fn authorize(&self, query: &Query) -> Result<(), Box<Response>> {
        let now = now_utc();
        let valid = query.get("AuthToken").is_some_and(|token| {
            self.inner
                .lock()
                .tokens
                .get(token)
                .is_some_and(|expires| now < *expires)
        });
        let rejected = valid
            && self
                .reject_tokens
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if !valid || rejected {
            self.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
            return Err(Box::new(
                Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .body(Body::empty())
                    .unwrap_or_default(),
            ));
        }
        if self.config.rate_limit_once && !self.rate_limited.swap(true, Ordering::SeqCst) {
            let mut response = failed(StatusCode::TOO_MANY_REQUESTS, &["TooManyRequests"]);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return Err(Box::new(response));
        }
        Ok(())
    }

    fn agreement_by_id(&self, id: &str) -> Option<&SimAgreement> {
        self.config
            .agreements
            .iter()
            .find(|a| a.id.eq_ignore_ascii_case(id.trim()))
    }

    /// Moves a report along as a list shows it.
    fn advance(&self, report: &mut SimReport, now: NaiveDateTime) {
        if !report.pending() {
            return;
        }
        if now < report.eta {
            self.counters.early_views.fetch_add(1, Ordering::SeqCst);
        }
        report.views += 1;
        let pending = report
            .knobs
            .pending_lists
            .unwrap_or(self.config.pending_lists);
        let ripe = report
            .knobs
            .ready_after_ms
            .is_none_or(|ms| report.created_at.elapsed() >= Duration::from_millis(ms));
        report.status = if report.views > pending && ripe {
            report
                .knobs
                .final_status
                .clone()
                .unwrap_or_else(|| "Done".into())
        } else if report.views * 2 <= pending {
            "Todo".into()
        } else {
            "Processing".into()
        };
    }

    fn make_file(&self, report: &SimReport) -> (String, Bytes) {
        let name = report.knobs.filename.clone().unwrap_or_else(|| {
            format!(
                "{} {} - {}.xlsx",
                report.type_name,
                report.date_from.format("%Y-%m-%d"),
                report.date_to.format("%Y-%m-%d")
            )
        });
        let size = report.knobs.size.unwrap_or(self.config.file_size);
        // Starts like a ZIP (an xlsx), then deterministic bytes.
        let mut bytes = b"PK\x03\x04".to_vec();
        let mut block = Sha256::digest(report.id.as_bytes());
        while bytes.len() < size {
            let take = (size - bytes.len()).min(block.len());
            bytes.extend_from_slice(&block[..take]);
            block = Sha256::digest(block);
        }
        bytes.truncate(size);
        (name, Bytes::from(bytes))
    }
}
