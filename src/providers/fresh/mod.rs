//! 1C:Fresh data transfer service (`hs/dt`), seed `000_eb637a5ecde06dbd.txt`.
//!
//! Three phases, each one step, with the 1C job id and file id kept in the
//! cursor so a restart resumes where it stopped:
//!
//! 1. **order**: `POST {base}/async/{id}` → a `jobs` id;
//! 2. **poll**: `GET {base}/jobs/{jobs id}` → `10202` (keep waiting) or a
//!    `files` id;
//! 3. **fetch**: `GET {base}/files/{files id}` → the file.
//!
//! With `flow = "ibsession"` (the default, the seed's worked example) each
//! request opens a session with `IBSession: start`, is handed off by a
//! `Location` URL and an `ibsession` cookie, and the hand-off is completed
//! with a second request to that URL. Hand-off URLs live about ten minutes,
//! so they are never stored: a resumed job starts a new hand-off.
//! With `flow = "plain"` the seed's first part is followed: the same three
//! calls answered directly.
//!
//! Where the seed is ambiguous, the reading chosen is noted next to the code.

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{Provider, ProviderError, Step, StepContext, excerpt, one_line, read_body_limited};
use crate::config::keys::{AccountKeys, ConfigError, Secret};
use crate::job::JobResult;
use crate::job::request::RequestError;

/// The provider name used in `[accounts.*] provider = "…"`.
pub const PROVIDER: &str = "1c-fresh";

/// Largest JSON answer accepted from the service (its answers are ~200 bytes).
const MAX_ANSWER: usize = 1 << 20;

/// How requests are exchanged with the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// `IBSession: start` / `finish` with `Location` hand-offs (the seed's example).
    IbSession,
    /// Direct answers (the seed's first part).
    Plain,
}

/// `[accounts.NAME]` for `provider = "1c-fresh"`.
#[derive(Debug, Clone)]
pub struct FreshAccount {
    /// `…/hs/dt/storage`: the seed's `{{baseURL}}`.
    pub base_url: Url,
    pub username: String,
    pub password: Secret,
    pub flow: Flow,
    /// Steps of this account's jobs run at once (default 8).
    pub concurrency: usize,
}

impl FreshAccount {
    pub fn from_keys(keys: &mut AccountKeys<'_>) -> Result<Self, ConfigError> {
        let base_url = keys.url("base_url", None)?;
        let username = keys.required("username")?;
        let password = keys.required_secret("password")?;
        let flow = match keys.string("flow")?.as_deref() {
            None | Some("ibsession") => Flow::IbSession,
            Some("plain") => Flow::Plain,
            Some(other) => {
                return Err(ConfigError::invalid(
                    format!("accounts.{}.flow", keys.account),
                    format!("expected \"ibsession\" or \"plain\", found {other:?}"),
                ));
            }
        };
        let concurrency = super::concurrency_key(keys, 8)?;
        Ok(FreshAccount {
            base_url,
            username,
            password,
            flow,
            concurrency,
        })
    }
}

/// For 1C:Fresh the operation is the data id (`tax_usn_calculator`), a
/// single URL path segment, and `params` is the settings JSON sent as-is.
pub fn validate_request(operation: &str, params: &serde_json::Value) -> Result<(), RequestError> {
    if operation.len() > 200
        || !operation
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(RequestError::field(
            "operation",
            format!(
                "{operation:?} is not a 1C:Fresh data id: expected letters, digits, '_', '-' or '.' (such as \"tax_usn_calculator\")"
            ),
        ));
    }
    if !(params.is_object() || params.is_array()) {
        return Err(RequestError::field(
            "params",
            "expected a JSON object: the data settings sent to 1C:Fresh as-is",
        ));
    }
    Ok(())
}

/// Where a 1C job is, stored as the job's cursor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Cursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_id: Option<String>,
    /// `10240` messages, kept for the receipt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// The `general` envelope every answer carries.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `10200`/`10240` with `result.id` (and the `10240` warning).
    Ready { id: String, warning: Option<String> },
    /// `10202`: still being prepared.
    Pending,
}

/// Whether a body carries a `general.response` code at all.
fn has_return_code(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/general/response").cloned())
        .is_some()
}

/// Interprets a `general.response` answer. The return codes come from the
/// seed's table: 10200 done, 10240 done with warnings, 10202 (in the text)
/// still preparing, 10400 data error, 10404 not found, 10500 internal error.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn interpret(body: &[u8], what: &str) -> Result<Answer, ProviderError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        ProviderError::transient(format!(
            "{what}: the answer is not the expected JSON: {}",
            excerpt(body)
        ))
    })?;
    let code = value
        .pointer("/general/response")
        .and_then(|c| {
            c.as_i64()
                .or_else(|| c.as_str().and_then(|s| s.trim().parse().ok()))
        })
        .ok_or_else(|| {
            ProviderError::transient(format!(
                "{what}: the answer has no general.response code: {}",
                excerpt(body)
            ))
        })?;
    let message = match value.pointer("/general/message") {
        Some(serde_json::Value::String(s)) => s.trim().to_string(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let with_message = |text: &str| {
        if message.is_empty() {
            format!("{what}: {text} ({code})")
        } else {
            // The service's words go into the job's one-line error: a
            // multi-line or huge message must not break it or flood the
            // store and the logs.
            format!("{what}: {text} ({code}): {}", one_line(&message, 300))
        }
    };
    match code {
        10200 | 10240 => {
            let id = value
                .pointer("/result/id")
                .and_then(|v| v.as_str())
                .filter(|id| !id.trim().is_empty())
                .ok_or_else(|| {
                    ProviderError::transient(format!(
                        "{what}: answer {code} carries no result.id: {}",
                        excerpt(body)
                    ))
                })?;
            let warning = (code == 10240).then(|| {
                if message.is_empty() {
                    "completed with warnings (10240)".to_string()
                } else {
                    message.clone()
                }
            });
            Ok(Answer::Ready {
                id: id.to_string(),
                warning,
            })
        }
        10202 => Ok(Answer::Pending),
        10400 => Err(ProviderError::permanent(with_message(
            "1C:Fresh rejected the request data",
        ))),
        10404 => Err(ProviderError::permanent(with_message(
            "1C:Fresh has no such data",
        ))),
        10500 => Err(ProviderError::transient(with_message(
            "1C:Fresh internal error",
        ))),
        other => Err(ProviderError::transient(format!(
            "{what}: unexpected return code {other}: {}",
            excerpt(body)
        ))),
    }
}

/// The result of opening a session with `IBSession: start`.
enum Opened {
    /// The seed's case: a `Location` to continue at and the session cookie.
    Handoff {
        location: Url,
        cookie: Option<String>,
        file_name: Option<String>,
    },
    /// The service answered directly (no hand-off).
    Direct(Response),
}

/// A 1C:Fresh account's provider.
pub struct Fresh {
    account: FreshAccount,
}

impl Fresh {
    pub fn new(account: FreshAccount) -> Self {
        Fresh { account }
    }

    /// `{base}/{storage}/{id}` with the id as one encoded path segment.
    fn endpoint(&self, storage: &str, id: &str) -> Url {
        let mut url = self.account.base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(storage).push(id);
        }
        url
    }

    fn request(&self, ctx: &StepContext<'_>, method: Method, url: Url) -> reqwest::RequestBuilder {
        ctx.http
            .request(method, url)
            .basic_auth(&self.account.username, Some(self.account.password.expose()))
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Response, ProviderError> {
        request
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(what, &e))
    }

    /// Phase 1: order the data. Returns the 1C job id.
    async fn order(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<(String, Option<String>), ProviderError> {
        let what = format!("ordering {:?}", ctx.job.operation);
        let url = self.endpoint("async", &ctx.job.operation);
        let settings = serde_json::to_vec(&ctx.job.params).map_err(|e| {
            ProviderError::permanent(format!("{what}: params cannot be encoded: {e}"))
        })?;
        let answer = if self.account.flow == Flow::IbSession {
            // Step 1 of the example: open the session; no body yet.
            match self.open(ctx, Method::POST, url.clone(), &what).await? {
                Some(Opened::Handoff {
                    location, cookie, ..
                }) => {
                    // Step 2: PUT the settings to the hand-off URL, finishing the session.
                    let mut put = self
                        .request(ctx, Method::PUT, location)
                        .header("IBSession", "finish")
                        .body(settings)
                        .timeout(ctx.timeout);
                    if let Some(cookie) = cookie {
                        put = put.header(reqwest::header::COOKIE, cookie);
                    }
                    let response = self.send(put, &what).await?;
                    self.answer(response, &what).await?
                }
                Some(Opened::Direct(response)) => self.answer(response, &what).await?,
                None => {
                    let post = self
                        .request(ctx, Method::POST, url)
                        .body(settings)
                        .timeout(ctx.timeout);
                    self.answer(self.send(post, &what).await?, &what).await?
                }
            }
        } else {
            let post = self
                .request(ctx, Method::POST, url)
                .body(settings)
                .timeout(ctx.timeout);
            self.answer(self.send(post, &what).await?, &what).await?
        };
        match answer {
            Answer::Ready { id, warning } => Ok((id, warning)),
            // The seed does not list 10202 for the order itself; reading it as
            // "no job yet" would lose track of the order, so it is retried.
            Answer::Pending => Err(ProviderError::transient(format!(
                "{what}: answered 10202 without a job id"
            ))),
        }
    }

    /// Phase 2: ask whether the 1C job is finished.
    async fn poll(&self, ctx: &StepContext<'_>, job_id: &str) -> Result<Answer, ProviderError> {
        let what = format!("polling 1C job {job_id}");
        let url = self.endpoint("jobs", job_id);
        if self.account.flow == Flow::IbSession {
            match self.open(ctx, Method::GET, url.clone(), &what).await? {
                Some(Opened::Handoff {
                    location, cookie, ..
                }) => {
                    // Step 4 of the example ("waiting for the result") carries
                    // the cookie but no IBSession header.
                    let mut get = self
                        .request(ctx, Method::GET, location)
                        .timeout(ctx.timeout);
                    if let Some(cookie) = cookie {
                        get = get.header(reqwest::header::COOKIE, cookie);
                    }
                    let response = self.send(get, &what).await?;
                    return self.answer(response, &what).await;
                }
                Some(Opened::Direct(response)) => return self.answer(response, &what).await,
                None => {}
            }
        }
        let get = self.request(ctx, Method::GET, url).timeout(ctx.timeout);
        let response = self.send(get, &what).await?;
        let response = self.follow_plain_redirect(ctx, response, &what).await?;
        self.answer(response, &what).await
    }

    /// Phase 3: download the file.
    async fn fetch(
        &self,
        ctx: &StepContext<'_>,
        file_id: &str,
    ) -> Result<crate::job::SavedFile, ProviderError> {
        let what = format!("downloading 1C file {file_id}");
        let url = self.endpoint("files", file_id);
        let mut hinted_name = None;
        let mut response = None;
        if self.account.flow == Flow::IbSession {
            match self.open(ctx, Method::GET, url.clone(), &what).await? {
                Some(Opened::Handoff {
                    location,
                    cookie,
                    file_name,
                }) => {
                    hinted_name = file_name;
                    // Step 6 of the example: the hand-off URL with the cookie
                    // and `IBSession: finish`.
                    let mut get = self
                        .request(ctx, Method::GET, location)
                        .header("IBSession", "finish");
                    if let Some(cookie) = cookie {
                        get = get.header(reqwest::header::COOKIE, cookie);
                    }
                    response = Some(self.send(get, &what).await?);
                }
                Some(Opened::Direct(direct)) => response = Some(direct),
                None => {}
            }
        }
        let response = match response {
            Some(r) => r,
            None => {
                let first = self
                    .send(self.request(ctx, Method::GET, url), &what)
                    .await?;
                hinted_name = header_file_name(first.headers());
                self.follow_plain_redirect(ctx, first, &what).await?
            }
        };
        if response.status() != StatusCode::OK {
            return Err(self.failure(response, &what).await);
        }
        // RFC 6266 name first, then the hand-off's `x-file-name`, then OPERATION.bin.
        let name = response
            .headers()
            .get(reqwest::header::CONTENT_DISPOSITION)
            .and_then(|v| crate::filename::from_content_disposition(v.as_bytes()))
            .or(hinted_name);
        ctx.save(response, name.as_deref()).await
    }

    /// Sends the `IBSession: start` request. `Ok(None)` means the service
    /// answered 400 to the header: 1C's client library retries such a
    /// request once without it, and so does docfetch (the plain variant).
    async fn open(
        &self,
        ctx: &StepContext<'_>,
        method: Method,
        url: Url,
        what: &str,
    ) -> Result<Option<Opened>, ProviderError> {
        let request = self
            .request(ctx, method, url.clone())
            .header("IBSession", "start")
            .timeout(ctx.timeout);
        let response = self.send(request, what).await?;
        let status = response.status();
        if status == StatusCode::BAD_REQUEST {
            tracing::info!(%status, "{what}: IBSession refused, retrying once without it");
            return Ok(None);
        }
        if status == StatusCode::NOT_ACCEPTABLE {
            // 406: no session could be created right now.
            return Err(ProviderError::transient(format!(
                "{what}: 1C:Fresh could not open a session (HTTP 406)"
            )));
        }
        if let Some(location) = response.headers().get(LOCATION) {
            // The seed's POST answers 200 with a Location, its GETs 302:
            // any Location on a success or redirect status is a hand-off.
            if status.is_success() || status.is_redirection() {
                let location = location.to_str().map_err(|_| {
                    ProviderError::transient(format!(
                        "{what}: the hand-off Location is not readable text"
                    ))
                })?;
                let location = self.handoff_url(&url, location, what)?;
                return Ok(Some(Opened::Handoff {
                    location,
                    cookie: session_cookie(response.headers()),
                    file_name: header_file_name(response.headers()),
                }));
            }
        }
        if status.is_redirection() {
            return Err(ProviderError::transient(format!(
                "{what}: HTTP {status} without a Location"
            )));
        }
        if !status.is_success() {
            return Err(self.failure(response, what).await);
        }
        Ok(Some(Opened::Direct(response)))
    }

    /// Resolves a hand-off `Location`. The seed's URLs are absolute with an
    /// explicit `:443`; they must stay on the account's host, because the
    /// next request carries the credentials. The follow-up request in the
    /// seed adds a trailing `/` to the Location path, and so does docfetch.
    fn handoff_url(&self, base: &Url, location: &str, what: &str) -> Result<Url, ProviderError> {
        let mut target = base.join(location.trim()).map_err(|_| {
            ProviderError::transient(format!("{what}: the hand-off Location is not a URL"))
        })?;
        let home = &self.account.base_url;
        if target.scheme() != home.scheme()
            || target.host_str() != home.host_str()
            || target.port_or_known_default() != home.port_or_known_default()
        {
            return Err(ProviderError::permanent(format!(
                "{what}: the service handed off to another host ({}); credentials are never sent there",
                target.host_str().unwrap_or("?")
            )));
        }
        if !target.path().ends_with('/') {
            let path = format!("{}/", target.path());
            target.set_path(&path);
        }
        Ok(target)
    }

    /// In the plain flow a 302 is still followed once (same host only), in
    /// case the service hands off anyway.
    async fn follow_plain_redirect(
        &self,
        ctx: &StepContext<'_>,
        response: Response,
        what: &str,
    ) -> Result<Response, ProviderError> {
        if !response.status().is_redirection() {
            return Ok(response);
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| {
                ProviderError::transient(format!(
                    "{what}: HTTP {} without a Location",
                    response.status()
                ))
            })?
            .to_string();
        let target = self.handoff_url(response.url(), &location, what)?;
        let mut get = self.request(ctx, Method::GET, target);
        if let Some(cookie) = session_cookie(response.headers()) {
            get = get.header(reqwest::header::COOKIE, cookie);
        }
        self.send(get, what).await
    }

    /// Reads a `general.response` answer, whatever the HTTP status.
    async fn answer(&self, response: Response, what: &str) -> Result<Answer, ProviderError> {
        let status = response.status();
        let retry_after =
            crate::http::retry_after(response.headers(), std::time::SystemTime::now());
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.credentials_refused(status, what));
        }
        let body = read_body_limited(response, MAX_ANSWER, what).await?;
        // A 1C return code in the body says more than the HTTP status; a
        // body without one (an HTML error page, say) leaves the status to speak.
        if status.is_success() || has_return_code(&body) {
            let answer = interpret(&body, what).map_err(|e| e.with_retry_after(retry_after))?;
            if status.is_success() {
                return Ok(answer);
            }
        }
        Err(ProviderError::from_status(what, status, &excerpt(&body)).with_retry_after(retry_after))
    }

    /// Turns a non-success response into an error, using the 1C code in
    /// its body when there is one.
    async fn failure(&self, response: Response, what: &str) -> ProviderError {
        match self.answer(response, what).await {
            Err(e) => e,
            Ok(_) => ProviderError::transient(format!("{what}: unexpected answer")),
        }
    }

    fn credentials_refused(&self, status: StatusCode, what: &str) -> ProviderError {
        ProviderError::permanent(format!(
            "{what}: 1C:Fresh refused the credentials (HTTP {status}); check username and password of this account"
        ))
    }
}

impl Provider for Fresh {
    const NAME: &'static str = PROVIDER;
    type Account = FreshAccount;

    fn read_account(keys: &mut AccountKeys<'_>) -> Result<Self::Account, ConfigError> {
        FreshAccount::from_keys(keys)
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
        Fresh::new(account)
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
        if let Some(file_id) = cursor.file_id.clone() {
            let saved = self.fetch(ctx, &file_id).await?;
            let result = JobResult {
                files: vec![saved],
                warnings: cursor.warnings.clone(),
            };
            return Ok(Step::Done {
                cursor: to_value(&cursor),
                result,
            });
        }
        if let Some(job_id) = cursor.job_id.clone() {
            return match self.poll(ctx, &job_id).await? {
                Answer::Pending => Ok(Step::Wait {
                    cursor: to_value(&cursor),
                    hint: None,
                    poll: true,
                    note: format!("1C job {job_id} is still being prepared (10202)"),
                }),
                Answer::Ready { id, warning } => {
                    cursor.file_id = Some(id);
                    cursor.warnings.extend(warning);
                    // Another status look finds the file again: no commit
                    // is needed before fetching it.
                    Ok(Step::Next(to_value(&cursor)))
                }
            };
        }
        let (job_id, warning) = self.order(ctx).await?;
        cursor.job_id = Some(job_id.clone());
        cursor.warnings.extend(warning);
        Ok(Step::Wait {
            cursor: to_value(&cursor),
            hint: None,
            poll: false,
            note: format!("ordered; 1C job {job_id}"),
        })
    }
}

fn to_value(cursor: &Cursor) -> serde_json::Value {
    serde_json::to_value(cursor).unwrap_or_default()
}

/// The session cookie to send back. The seed's example echoes the whole
/// `Set-Cookie` value (`ibsession=…;Path=/a/bs/10098/;Version=1`) as the
/// `Cookie` header, and docfetch does exactly that.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    let cookies: Vec<&str> = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    cookies
        .iter()
        .find(|c| {
            c.trim_start()
                .to_ascii_lowercase()
                .starts_with("ibsession=")
        })
        .or(cookies.first())
        .map(|c| c.trim().to_string())
}

/// 1C's client library names the file in `x-file-name` on the hand-off.
fn header_file_name(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-file-name")
        .and_then(|v| crate::filename::decode_header_name(v.as_bytes()))
}

// ---------------------------------------------------------------------------
// `accounts check`
// ---------------------------------------------------------------------------

impl Fresh {
    /// Asks for the status of a 1C job that cannot exist: the call needs the
    /// credentials and orders nothing. The seed answers an unknown id with
    /// return code 10404, so any answer carrying a return code (or a 2xx)
    /// means the credentials were taken. It is sent without `IBSession`,
    /// which the seed's first part answers directly, so no session is left
    /// open whatever the account's flow.
    async fn check_login(
        &self,
        account: &str,
        http: &reqwest::Client,
        timeout: std::time::Duration,
    ) -> Result<(), super::check::CheckFailure> {
        use super::check::CheckFailure;
        let what = format!("asking 1C:Fresh about a job as account {account}");
        let url = self.endpoint("jobs", "00000000-0000-0000-0000-000000000000");
        let response = http
            .get(url)
            .basic_auth(&self.account.username, Some(self.account.password.expose()))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| CheckFailure::login(ProviderError::from_reqwest(&what, &e)))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(CheckFailure::login(self.credentials_refused(status, &what)));
        }
        let body = read_body_limited(response, MAX_ANSWER, &what)
            .await
            .map_err(CheckFailure::login)?;
        if status.is_success() || has_return_code(&body) {
            return Ok(());
        }
        Err(CheckFailure::login(ProviderError::from_status(
            &what,
            status,
            &excerpt(&body),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ErrorClass;

    #[test]
    fn the_seed_answers_are_read_exactly() {
        let ordered = br#"{"general":{"response":10200,"error":false,"message":""},"result":{"storage":"jobs","id":"47e7efd6-ddb6-11e7-819b-0050568925e0"}}"#;
        assert_eq!(
            interpret(ordered, "x"),
            Ok(Answer::Ready {
                id: "47e7efd6-ddb6-11e7-819b-0050568925e0".into(),
                warning: None
            })
        );
        let pending =
            b"{\n\"general\": {\n\"response\": 10202,\n\"error\": false,\n\"message\": \"\"\n}\n}";
        assert_eq!(interpret(pending, "x"), Ok(Answer::Pending));
        let warned = br#"{"general":{"response":10240,"error":false,"message":"period not closed"},"result":{"storage":"files","id":"f"}}"#;
        assert_eq!(
            interpret(warned, "x"),
            Ok(Answer::Ready {
                id: "f".into(),
                warning: Some("period not closed".into())
            })
        );
    }

    #[test]
    fn each_return_code_is_classified() {
        let code = |c: i64, msg: &str| {
            interpret(
                format!(r#"{{"general":{{"response":{c},"error":true,"message":"{msg}"}}}}"#)
                    .as_bytes(),
                "ordering",
            )
        };
        let not_found = code(10404, "").unwrap_err();
        assert_eq!(not_found.class, ErrorClass::Permanent);
        assert!(not_found.message.contains("10404"));
        let bad = code(10400, "ИНН указан неверно").unwrap_err();
        assert_eq!(bad.class, ErrorClass::Permanent);
        assert!(
            bad.message.contains("ИНН указан неверно"),
            "{}",
            bad.message
        );
        assert_eq!(
            code(10500, "boom").unwrap_err().class,
            ErrorClass::Transient
        );
        assert_eq!(code(12345, "").unwrap_err().class, ErrorClass::Transient);
        let no_id = interpret(br#"{"general":{"response":10200}}"#, "x").unwrap_err();
        assert_eq!(no_id.class, ErrorClass::Transient);
        let html = interpret(b"<html>502 Bad Gateway</html>", "x").unwrap_err();
        assert_eq!(html.class, ErrorClass::Transient);
        assert!(html.message.contains("502 Bad Gateway"));
    }

    #[test]
    fn the_whole_set_cookie_value_is_echoed() {
        let mut headers = HeaderMap::new();
        headers.append(SET_COOKIE, "other=1".parse().unwrap());
        headers.append(
            SET_COOKIE,
            "ibsession=b94d4f36-606e-4543-bc38-bade7918926a;Path=/a/bs/10098/;Version=1"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            session_cookie(&headers).as_deref(),
            Some("ibsession=b94d4f36-606e-4543-bc38-bade7918926a;Path=/a/bs/10098/;Version=1")
        );
    }

    fn fresh(base: &str) -> Fresh {
        Fresh::new(FreshAccount {
            base_url: Url::parse(base).unwrap(),
            username: "api".into(),
            password: Secret::new("pw"),
            flow: Flow::IbSession,
            concurrency: 8,
        })
    }

    #[test]
    fn handoffs_with_an_explicit_default_port_stay_on_the_host() {
        let p = fresh("https://stage.1cfresh.com/a/bs/10098/hs/dt/storage");
        let base =
            Url::parse("https://stage.1cfresh.com/a/bs/10098/hs/dt/storage/async/x").unwrap();
        let url = p
            .handoff_url(
                &base,
                "https://stage.1cfresh.com:443/a/bs/10098/hs/dt/upload/01d3e0",
                "x",
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://stage.1cfresh.com/a/bs/10098/hs/dt/upload/01d3e0/"
        );
        let err = p
            .handoff_url(
                &base,
                "https://evil.example:443/a/bs/10098/hs/dt/upload/01d3e0",
                "x",
            )
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            p.handoff_url(&base, "https://stage.1cfresh.com:8443/x", "x")
                .is_err()
        );
        assert!(
            p.handoff_url(&base, "http://stage.1cfresh.com/x", "x")
                .is_err()
        );
    }

    #[test]
    fn endpoints_encode_the_data_id_as_one_segment() {
        let p = fresh("https://h/a/bs/1/hs/dt/storage/");
        assert_eq!(
            p.endpoint("async", "tax_usn_calculator").as_str(),
            "https://h/a/bs/1/hs/dt/storage/async/tax_usn_calculator"
        );
        assert_eq!(
            p.endpoint("jobs", "a/b").as_str(),
            "https://h/a/bs/1/hs/dt/storage/jobs/a%2Fb"
        );
    }

    #[test]
    fn operations_must_be_data_ids() {
        assert!(validate_request("tax_usn_calculator", &serde_json::json!({})).is_ok());
        assert!(validate_request("../x", &serde_json::json!({})).is_err());
        assert!(validate_request("a b", &serde_json::json!({})).is_err());
        assert!(validate_request("ok", &serde_json::json!("text")).is_err());
    }
}
