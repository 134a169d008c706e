//! 1C:Fresh calls: ordering, polling and fetching over HTTP, the `IBSession`
//! hand-offs, and the one place that reads return codes and classifies
//! errors.

use super::*;

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
pub(super) fn has_return_code(body: &[u8]) -> bool {
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
pub(super) enum Opened {
    /// The seed's case: a `Location` to continue at and the session cookie.
    Handoff {
        location: Url,
        cookie: Option<String>,
        file_name: Option<String>,
    },
    /// The service answered directly (no hand-off).
    Direct(Response),
}

impl Fresh {
    pub fn new(account: FreshAccount) -> Self {
        Fresh { account }
    }

    /// `{base}/{storage}/{id}` with the id as one encoded path segment.
    pub(super) fn endpoint(&self, storage: &str, id: &str) -> Url {
        let mut url = self.account.base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(storage).push(id);
        }
        url
    }

    pub(super) fn request(
        &self,
        ctx: &StepContext<'_>,
        method: Method,
        url: Url,
    ) -> reqwest::RequestBuilder {
        ctx.http
            .request(method, url)
            .basic_auth(&self.account.username, Some(self.account.password.expose()))
    }

    pub(super) async fn send(
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
    pub(super) async fn order(
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
    pub(super) async fn poll(
        &self,
        ctx: &StepContext<'_>,
        job_id: &str,
    ) -> Result<Answer, ProviderError> {
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
    pub(super) async fn fetch(
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
    pub(super) async fn open(
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
    pub(super) fn handoff_url(
        &self,
        base: &Url,
        location: &str,
        what: &str,
    ) -> Result<Url, ProviderError> {
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
    pub(super) async fn follow_plain_redirect(
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
    pub(super) async fn answer(
        &self,
        response: Response,
        what: &str,
    ) -> Result<Answer, ProviderError> {
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
    pub(super) async fn failure(&self, response: Response, what: &str) -> ProviderError {
        match self.answer(response, what).await {
            Err(e) => e,
            Ok(_) => ProviderError::transient(format!("{what}: unexpected answer")),
        }
    }

    pub(super) fn credentials_refused(&self, status: StatusCode, what: &str) -> ProviderError {
        ProviderError::permanent(format!(
            "{what}: 1C:Fresh refused the credentials (HTTP {status}); check username and password of this account"
        ))
    }
}

/// The session cookie to send back. The seed's example echoes the whole
/// `Set-Cookie` value (`ibsession=…;Path=/a/bs/10098/;Version=1`) as the
/// `Cookie` header, and docfetch does exactly that.
pub(super) fn session_cookie(headers: &HeaderMap) -> Option<String> {
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
pub(super) fn header_file_name(headers: &HeaderMap) -> Option<String> {
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
    pub(super) async fn check_login(
        &self,
        account: &str,
        http: &reqwest::Client,
        timeout: std::time::Duration,
    ) -> Result<(), crate::providers::check::CheckFailure> {
        use crate::providers::check::CheckFailure;
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
