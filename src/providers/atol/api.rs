//! ATOL Online over HTTP: the URLs, the token (`gettoken`, shared by the
//! account's jobs), the GET of a JSON answer, and the one place that
//! decides what an answer means (problem details of table 5, `ExpiredToken`,
//! refused credentials, 429, 5xx).

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};

use super::*;
use crate::providers::read_body_limited;

impl Atol {
    /// `{base}/a/b/c` with each segment encoded.
    pub(super) fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.account.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// A page of the list, in the seed's query order (`limit`, `offset`).
    pub(super) fn list_url(&self, offset: u64, limit: u32) -> Url {
        let mut url = self.endpoint(&["api", "kkt", "v1", "cash-registers"]);
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string())
            .append_pair("offset", &offset.to_string());
        url
    }

    /// The account's token, logging in when there is none.
    pub(super) async fn token(&self, ctx: &StepContext<'_>) -> Result<Secret, ProviderError> {
        self.tokens.get(|| self.login(ctx)).await
    }

    /// `POST /api/auth/v1/gettoken`. Returns the token and how long it may
    /// be used from now.
    pub(super) async fn login(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<(Secret, Duration), ProviderError> {
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

    pub(super) fn credentials_refused(
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
    pub(super) async fn get_json(
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
    pub(super) fn refusal(
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
    pub(super) fn scrub(&self, mut text: String, token: Option<&Secret>) -> String {
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

/// A successful answer, parsed.
pub(super) struct Parsed {
    pub(super) value: Value,
    /// Keys that appeared more than once (the first value was kept).
    pub(super) duplicates: Vec<Dup>,
}

/// How long a token from `gettoken` may be used, from `now`: `expiresIn`
/// minutes from `issued` (an RFC 3339 time with an offset and, in the seed,
/// seven fractional digits), never more than `expiresIn` from now (a clock
/// behind the service's must not stretch it), counted from now when
/// `issued` is unreadable, the seed's 24 hours when `expiresIn` is missing.
pub(super) fn token_lifetime(
    issued: Option<&str>,
    expires_in: Option<f64>,
    now: DateTime<Utc>,
) -> Duration {
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

    pub(super) fn from_value(value: &Value) -> Option<Problem> {
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
pub(super) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn clip(text: &str) -> String {
    clip_to(text, 300)
}

/// Characters of a problem's `errors` in its description.
pub(super) const FIELDS_LIMIT: usize = 600;

pub(super) fn clip_to(text: &str, limit: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(limit) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}
