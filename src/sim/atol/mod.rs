//! A fake ATOL Online KKT/FN information API v1.0 that follows seed
//! `003_de3455f5d6dd2d74.txt` to the letter:
//!
//! - `POST /api/auth/v1/gettoken` with `Content-type: application/json` and
//!   `{"login","pass"}`, or `GET /api/auth/v1/gettoken?login=…&pass=…` →
//!   `{"token","issued","expiresIn"}`, `issued` in Moscow time with seven
//!   fractional digits like the seed's `2020-03-31T17:25:06.0289998+03:00`;
//! - `GET /api/kkt/v1/cash-registers?limit=…&offset=…` with `Token` and
//!   `Accept: application/hal+json` → a HAL page: `_links.next`/`prev` with
//!   absolute hrefs (`offset` first, as the seed prints them; `next` absent
//!   on the last page, `prev` on the first), `_embedded` an array of items
//!   with `_links.self`/`get-cash-register` and `data`, then `total`,
//!   `limit`, `offset`. `limit` defaults to 10; outside 1–100 it is a 400;
//! - `GET /api/kkt/v1/cash-registers/{serialNumber}` → one register whose
//!   `data` repeats the `serialNumber` key like the seed's sample (the
//!   second value another register's number); unknown → 404.
//!
//! Errors are table 6's RFC 7807 bodies as `application/problem+json`: a
//! request without a `Token`, or with one this service never issued, gets
//! `MissingToken`; a spent token `ExpiredToken` (or `MissingToken`, see
//! [`SpentToken`]). The seed's own samples are not valid JSON in two places
//! (a missing comma in the list, a trailing comma in the 403); this fake
//! serves valid JSON. Register data is deterministic: see [`register_data`].

use super::{Mutex, Origin};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use chrono::Timelike;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod data;
mod handlers;
use self::data::*;
pub use self::data::{register_data, register_value, serial_number};
use self::handlers::*;

/// Where the fake service is mounted on the simulator's port (the account's
/// `base_url` is the simulator origin plus this prefix).
pub const PREFIX: &str = "/atol";

/// What a spent token is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpentToken {
    /// `ExpiredToken`: "Переданный токен не активен".
    #[default]
    Expired,
    /// `MissingToken`: "Не распознан токен запроса" (a replica that never
    /// saw the token).
    Forgotten,
}

/// Settings of the fake service.
#[derive(Debug, Clone)]
pub struct AtolSimConfig {
    pub login: String,
    pub password: String,
    /// Cash registers in the group code.
    pub registers: usize,
    /// The `expiresIn` announced with each token, in minutes.
    pub expires_in: u32,
    /// A token is spent after this many API requests, whatever `expiresIn`
    /// said (short lifetimes for tests).
    pub token_uses: Option<u32>,
    /// A token is spent this long after it was issued, likewise.
    pub token_ttl: Option<Duration>,
    /// How a spent token is answered.
    pub spent_token: SpentToken,
    /// List pages at these offsets answer 500 the first time they are asked for.
    pub fail_pages: Vec<u64>,
    /// List pages at these offsets answer 200 with an HTML page the first time.
    pub garbage_pages: Vec<u64>,
    /// The first API request answers 429 with `Retry-After`.
    pub rate_limit_once: bool,
    /// `Retry-After` of that 429, in seconds.
    pub retry_after_secs: u64,
    /// Every list request answers the seed's 400 "Ошибка валидации" with
    /// these field errors (when not empty).
    pub list_validation_errors: Vec<(String, String)>,
    /// `_links` hrefs use this origin instead of the simulator's own
    /// (`https://online.atol.ru`, say, as behind a proxy).
    pub link_origin: Option<String>,
    /// `_embedded` as table 3 describes it, an object holding the array
    /// (`{"cashRegisters": […]}`), instead of the sample's bare array.
    pub embedded_as_object: bool,
    /// Repeat the `serialNumber` key in single-register answers, as the seed does.
    pub repeat_serial_key: bool,
    /// Registers whose answer is 403 (the token does not allow them).
    pub forbidden_serials: Vec<String>,
    /// After this many list pages are served, one register is added (the
    /// list changes while a client reads it).
    pub grow_after_pages: Option<u64>,
}

impl Default for AtolSimConfig {
    fn default() -> Self {
        AtolSimConfig {
            login: "docfetch".into(),
            password: "sim-atol-password".into(),
            registers: 7,
            expires_in: 1440,
            token_uses: None,
            token_ttl: None,
            spent_token: SpentToken::Expired,
            fail_pages: Vec::new(),
            garbage_pages: Vec::new(),
            rate_limit_once: false,
            retry_after_secs: 1,
            list_validation_errors: Vec::new(),
            link_origin: None,
            embedded_as_object: false,
            repeat_serial_key: true,
            forbidden_serials: Vec::new(),
            grow_after_pages: None,
        }
    }
}

/// Counters a test can read.
#[derive(Debug, Default)]
pub struct AtolCounters {
    /// Every `gettoken` request.
    pub login_attempts: AtomicU64,
    /// Tokens issued.
    pub logins: AtomicU64,
    /// `WrongLoginOrPassword` answers.
    pub refused_logins: AtomicU64,
    /// List pages served successfully.
    pub pages: AtomicU64,
    /// Single registers served successfully.
    pub register_fetches: AtomicU64,
    /// `ExpiredToken` answers.
    pub expired: AtomicU64,
    /// `MissingToken` answers.
    pub missing: AtomicU64,
    /// 500 and garbage answers given on purpose.
    pub faults: AtomicU64,
    /// Every API request (not logins).
    pub requests: AtomicU64,
}

struct TokenState {
    issued: Instant,
    uses: u32,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, TokenState>,
    /// Every token issued, in order.
    issued: Vec<String>,
    /// The number of registers now (it may grow, see `grow_after_pages`).
    registers: usize,
    grown: bool,
    failed: HashSet<u64>,
    garbled: HashSet<u64>,
    rate_limited_at: Option<Instant>,
    gap_after_rate_limit: Option<Duration>,
    /// Successful list pages by offset.
    pages_by_offset: BTreeMap<u64, u32>,
}

/// The fake service's state.
pub struct AtolSim {
    pub config: AtolSimConfig,
    pub counters: AtolCounters,
    origin: Origin,
    inner: Mutex<Inner>,
    seq: AtomicU64,
}

impl AtolSim {
    pub fn new(config: AtolSimConfig) -> Arc<Self> {
        let inner = Inner {
            registers: config.registers,
            ..Inner::default()
        };
        Arc::new(AtolSim {
            config,
            counters: AtolCounters::default(),
            origin: Origin::default(),
            inner: Mutex::new(inner),
            seq: AtomicU64::new(1),
        })
    }

    pub fn set_origin(&self, origin: &str) {
        self.origin.set(origin);
    }

    /// The account `base_url` for this service.
    pub fn base_url(&self) -> String {
        self.origin.get()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Shrugs off poisoning: the fake stays usable if a handler panicked.
        self.inner.lock()
    }

    /// Every token issued so far, in order.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner().issued.clone()
    }

    /// Tokens issued so far.
    pub fn logins(&self) -> u64 {
        self.counters.logins.load(Ordering::SeqCst)
    }

    /// How often the list page at `offset` was served successfully.
    pub fn pages_served_at(&self, offset: u64) -> u32 {
        self.inner()
            .pages_by_offset
            .get(&offset)
            .copied()
            .unwrap_or(0)
    }

    /// Successful list pages by offset.
    pub fn pages_by_offset(&self) -> BTreeMap<u64, u32> {
        self.inner().pages_by_offset.clone()
    }

    /// The number of registers now.
    pub fn register_count(&self) -> usize {
        self.inner().registers
    }

    /// The time between the 429 and the next API request, once there was one.
    pub fn gap_after_rate_limit(&self) -> Option<Duration> {
        self.inner().gap_after_rate_limit
    }

    /// Builds the router, mounted at the root (the simulator nests it under [`PREFIX`]).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/api/auth/v1/gettoken",
                get(gettoken_query).post(gettoken_json),
            )
            .route("/api/kkt/v1/cash-registers", get(list))
            .route("/api/kkt/v1/cash-registers/{serial}", get(one))
            .with_state(self.clone())
    }

    fn next_hex(&self, what: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(self.seq.fetch_add(1, Ordering::SeqCst).to_le_bytes());
        h.update(self.base_url().as_bytes());
        h.update(what);
        crate::job::digest::hex(&h.finalize())
    }

    /// A W3C-style trace id, as ASP.NET services print them.
    fn trace_id(&self) -> String {
        let hex = self.next_hex(b"trace");
        format!("00-{}-{}-00", &hex[..32], &hex[32..48])
    }

    fn login(&self, login: Option<&str>, pass: Option<&str>) -> Response {
        self.counters.login_attempts.fetch_add(1, Ordering::SeqCst);
        let instance = "/api/auth/v1/gettoken";
        let mut missing = Vec::new();
        if login.is_none_or(str::is_empty) {
            missing.push((
                "login".to_string(),
                "The login field is required.".to_string(),
            ));
        }
        if pass.is_none_or(str::is_empty) {
            missing.push((
                "pass".to_string(),
                "The pass field is required.".to_string(),
            ));
        }
        if !missing.is_empty() {
            return self.validation_error(&missing);
        }
        if login != Some(self.config.login.as_str()) || pass != Some(self.config.password.as_str())
        {
            self.counters.refused_logins.fetch_add(1, Ordering::SeqCst);
            return self.problem(
                StatusCode::UNAUTHORIZED,
                Problem {
                    kind: "https://tools.ietf.org/html/rfc7235#section-3.1",
                    title: "Неверный логин или пароль",
                    detail: Some("Неверный логин или пароль"),
                    instance: Some(instance),
                    error_code: Some("WrongLoginOrPassword"),
                },
            );
        }
        // Long enough that no client could guess it; like the real tokens, opaque.
        let token = self.next_hex(b"token");
        {
            let mut inner = self.inner();
            inner.tokens.insert(
                token.clone(),
                TokenState {
                    issued: Instant::now(),
                    uses: 0,
                },
            );
            inner.issued.push(token.clone());
        }
        self.counters.logins.fetch_add(1, Ordering::SeqCst);
        let body = object(&[
            ("token", string(&token)),
            ("issued", string(&issued_now())),
            ("expiresIn", self.config.expires_in.to_string()),
        ]);
        json_response(StatusCode::OK, "application/json; charset=utf-8", body)
    }

    /// Checks the `Token` header of an API request; counts its use.
    fn authorize(&self, headers: &HeaderMap, instance: &str) -> Result<(), Box<Response>> {
        let token = headers
            .get("Token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("");
        let verdict = {
            let mut inner = self.inner();
            match inner.tokens.get_mut(token) {
                None => Some(SpentToken::Forgotten),
                Some(state) => {
                    let spent = self.config.token_uses.is_some_and(|n| state.uses >= n)
                        || self
                            .config
                            .token_ttl
                            .is_some_and(|ttl| state.issued.elapsed() >= ttl);
                    if spent {
                        Some(self.config.spent_token)
                    } else {
                        state.uses += 1;
                        None
                    }
                }
            }
        };
        match verdict {
            None => Ok(()),
            Some(SpentToken::Forgotten) => {
                self.counters.missing.fetch_add(1, Ordering::SeqCst);
                Err(Box::new(self.problem(
                    StatusCode::UNAUTHORIZED,
                    Problem {
                        kind: "https://tools.ietf.org/html/rfc7235#section-3.1",
                        title: "Не распознан токен запроса",
                        detail: Some("Не распознан токен запроса"),
                        instance: Some(instance),
                        error_code: Some("MissingToken"),
                    },
                )))
            }
            Some(SpentToken::Expired) => {
                self.counters.expired.fetch_add(1, Ordering::SeqCst);
                Err(Box::new(self.problem(
                    StatusCode::UNAUTHORIZED,
                    Problem {
                        kind: "https://tools.ietf.org/html/rfc7235#section-3.1",
                        title: "Переданный токен не активен",
                        detail: Some("Переданный токен не активен"),
                        instance: Some(instance),
                        error_code: Some("ExpiredToken"),
                    },
                )))
            }
        }
    }

    /// What every API request goes through: counting, the one 429, the
    /// token and the `Accept` header the seed requires.
    fn admit(&self, headers: &HeaderMap, instance: &str) -> Result<(), Box<Response>> {
        self.counters.requests.fetch_add(1, Ordering::SeqCst);
        {
            let mut inner = self.inner();
            if let Some(at) = inner.rate_limited_at
                && inner.gap_after_rate_limit.is_none()
            {
                inner.gap_after_rate_limit = Some(at.elapsed());
            }
            if self.config.rate_limit_once && inner.rate_limited_at.is_none() {
                inner.rate_limited_at = Some(Instant::now());
                drop(inner);
                let mut response = self.problem(
                    StatusCode::TOO_MANY_REQUESTS,
                    Problem {
                        kind: "https://tools.ietf.org/html/rfc6585#section-4",
                        title: "Too Many Requests",
                        detail: None,
                        instance: Some(instance),
                        error_code: None,
                    },
                );
                if let Ok(value) = self.config.retry_after_secs.to_string().parse() {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return Err(Box::new(response));
            }
        }
        self.authorize(headers, instance)?;
        let accepts_hal = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("application/hal+json"));
        if !accepts_hal {
            // The seed: the request "must contain" `Accept: application/hal+json`.
            return Err(Box::new(self.problem(
                StatusCode::NOT_ACCEPTABLE,
                Problem {
                    kind: "https://tools.ietf.org/html/rfc7231#section-6.5.6",
                    title: "Not Acceptable",
                    detail: Some("Accept: application/hal+json expected"),
                    instance: Some(instance),
                    error_code: None,
                },
            )));
        }
        Ok(())
    }

    fn link_origin(&self) -> String {
        self.config
            .link_origin
            .clone()
            .unwrap_or_else(|| self.base_url())
    }

    fn page(&self, params: &HashMap<String, String>) -> Response {
        if !self.config.list_validation_errors.is_empty() {
            return self.validation_error(&self.config.list_validation_errors);
        }
        let number = |key: &str, default: i64| -> Result<i64, (String, String)> {
            match params.get(key) {
                None => Ok(default),
                Some(text) => text
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| (key.to_string(), format!("The value '{text}' is not valid."))),
            }
        };
        let (limit, offset) = match (number("limit", 10), number("offset", 0)) {
            (Ok(limit), Ok(offset)) => (limit, offset),
            (Err(e), _) | (_, Err(e)) => return self.validation_error(&[e]),
        };
        if !(1..=100).contains(&limit) {
            return self.validation_error(&[(
                "limit".into(),
                "The field limit must be between 1 and 100.".into(),
            )]);
        }
        if offset < 0 {
            return self.validation_error(&[(
                "offset".into(),
                "The field offset must be 0 or more.".into(),
            )]);
        }
        let (limit, offset) = (limit as u64, offset as u64);
        {
            let mut inner = self.inner();
            if self.config.fail_pages.contains(&offset) && inner.failed.insert(offset) {
                drop(inner);
                self.counters.faults.fetch_add(1, Ordering::SeqCst);
                return self.server_error("/api/kkt/v1/cash-registers");
            }
            if self.config.garbage_pages.contains(&offset) && inner.garbled.insert(offset) {
                drop(inner);
                self.counters.faults.fetch_add(1, Ordering::SeqCst);
                return Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                    .body(Body::from(
                        "<html><body><h1>Технические работы</h1></body></html>",
                    ))
                    .unwrap_or_default();
            }
        }
        let total = self.inner().registers as u64;
        let origin = self.link_origin();
        let list_href = |offset: u64| {
            format!("{origin}/api/kkt/v1/cash-registers?offset={offset}&limit={limit}")
        };
        let mut links = Vec::new();
        if offset + limit < total {
            links.push((
                "next",
                link(&list_href(offset + limit), "get-cash-registers"),
            ));
        }
        if offset > 0 {
            links.push((
                "prev",
                link(
                    &list_href(offset.saturating_sub(limit)),
                    "get-cash-registers",
                ),
            ));
        }
        let items: Vec<String> = (offset..total.min(offset + limit))
            .map(|i| {
                let i = i as usize;
                let href = format!("{origin}/api/kkt/v1/cash-registers/{}", serial_number(i));
                object(&[
                    (
                        "_links",
                        object(&[
                            ("self", link(&href, "get-cash-register")),
                            ("get-cash-register", link(&href, "get-cash-register")),
                        ]),
                    ),
                    ("data", data_text(i, None)),
                ])
            })
            .collect();
        let array = format!("[{}]", items.join(","));
        let embedded = if self.config.embedded_as_object {
            object(&[("cashRegisters", array)])
        } else {
            array
        };
        let body = object(&[
            ("_links", object(&links)),
            ("_embedded", embedded),
            ("total", total.to_string()),
            ("limit", limit.to_string()),
            ("offset", offset.to_string()),
        ]);
        {
            let mut inner = self.inner();
            *inner.pages_by_offset.entry(offset).or_default() += 1;
            let served = self.counters.pages.fetch_add(1, Ordering::SeqCst) + 1;
            if self.config.grow_after_pages == Some(served) && !inner.grown {
                inner.grown = true;
                inner.registers += 1;
            }
        }
        json_response(StatusCode::OK, "application/hal+json; charset=utf-8", body)
    }

    fn register(&self, serial: &str) -> Response {
        let instance = format!("/api/kkt/v1/cash-registers/{serial}");
        let count = self.inner().registers;
        let Some(index) = (0..count).find(|&i| serial_number(i) == serial) else {
            return self.problem(
                StatusCode::NOT_FOUND,
                Problem {
                    kind: "https://tools.ietf.org/html/rfc7231#section-6.5.4",
                    title: "Not Found",
                    detail: None,
                    instance: Some(&instance),
                    error_code: None,
                },
            );
        };
        if self.config.forbidden_serials.iter().any(|s| s == serial) {
            return self.problem(
                StatusCode::FORBIDDEN,
                Problem {
                    kind: "https://tools.ietf.org/html/rfc7231#section-6.5.3",
                    title: "Forbidden",
                    detail: None,
                    instance: Some(&instance),
                    error_code: None,
                },
            );
        }
        let href = format!("{}{instance}", self.link_origin());
        // The seed's sample repeats `serialNumber`, the second value being
        // another register's number.
        let repeated = self
            .config
            .repeat_serial_key
            .then(|| serial_number((index + 1) % count.max(1)));
        let body = object(&[
            (
                "_links",
                object(&[
                    ("self", link(&href, "get-cash-register")),
                    ("get-cash-register", link(&href, "get-cash-register")),
                ]),
            ),
            ("data", data_text(index, repeated.as_deref())),
        ]);
        self.counters
            .register_fetches
            .fetch_add(1, Ordering::SeqCst);
        json_response(StatusCode::OK, "application/hal+json; charset=utf-8", body)
    }

    fn problem(&self, status: StatusCode, p: Problem<'_>) -> Response {
        let mut pairs = vec![
            ("type", string(p.kind)),
            ("title", string(p.title)),
            ("status", status.as_u16().to_string()),
        ];
        if let Some(detail) = p.detail {
            pairs.push(("detail", string(detail)));
        }
        if let Some(instance) = p.instance {
            pairs.push(("instance", string(instance)));
        }
        pairs.push(("traceId", string(&self.trace_id())));
        if let Some(code) = p.error_code {
            pairs.push(("errorCode", string(code)));
        }
        json_response(
            status,
            "application/problem+json; charset=utf-8",
            object(&pairs),
        )
    }

    /// Table 6's 400: "Ошибка валидации" with field → [messages].
    fn validation_error(&self, errors: &[(String, String)]) -> Response {
        let mut fields: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (field, message) in errors {
            fields.entry(field).or_default().push(message);
        }
        let errors: Vec<(&str, String)> = fields
            .iter()
            .map(|(field, messages)| (*field, json!(messages).to_string()))
            .collect();
        let body = object(&[
            (
                "type",
                string("https://tools.ietf.org/html/rfc7231#section-6.5.1"),
            ),
            ("title", string("Ошибка валидации")),
            ("status", "400".into()),
            ("traceId", string(&self.trace_id())),
            ("errors", object(&errors)),
        ]);
        json_response(
            StatusCode::BAD_REQUEST,
            "application/problem+json; charset=utf-8",
            body,
        )
    }

    fn server_error(&self, instance: &str) -> Response {
        self.problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            Problem {
                kind: "https://tools.ietf.org/html/rfc7231#section-6.6.1",
                title: "Ошибка сервера",
                detail: None,
                instance: Some(instance),
                error_code: None,
            },
        )
    }
}

#[cfg(test)]
mod tests;
