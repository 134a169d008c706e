//! OFD.ru over HTTP: the AuthToken (in the query string, added only at
//! the moment of sending), the calls, and the one place that decides what
//! an answer means ([`judge`]: the seed's error names, statuses, 429).

use super::*;

/// The errors of an answer: `{"Errors":["…"],"Status":"Failed",…}`.
pub(super) fn error_texts(body: &[u8]) -> Vec<String> {
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
pub(super) enum ErrorName {
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
    pub(super) const ALL: [(ErrorName, &'static str); 8] = [
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
    pub(super) fn find(errors: &[String]) -> Option<ErrorName> {
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
pub(super) enum Verdict {
    /// `ReportNotDone`: keep waiting.
    NotReady(String),
    Fail(ProviderError),
}

/// Who is asking: names for messages.
#[derive(Debug, Clone, Copy)]
pub(super) struct Who<'a> {
    pub(super) account: &'a str,
    pub(super) job: &'a str,
}

/// The one place where OFD errors are classified: a known name decides,
/// otherwise the HTTP status does (5xx transient, other 4xx permanent).
pub(super) fn judge(who: Who<'_>, what: &str, status: StatusCode, body: &[u8]) -> Verdict {
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

impl Ofd {
    /// The agreement of a job: the request's, the account's, or the one
    /// found by `inn`/`kpp` (cached for the account). None of them: the
    /// order goes without one, which the seed says is fine when only one
    /// legal entity is attached to the cabinet.
    pub(super) async fn agreement_for(
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
    pub(super) async fn list(
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
    pub(super) async fn send(
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
    pub(super) async fn success_body(
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

    pub(super) async fn token(&self, call: Call<'_>) -> Result<Secret, ProviderError> {
        self.tokens.get(|| self.login(call)).await
    }

    /// `POST /api/Authorization/CreateAuthToken`. Returns the token and how
    /// long to use it: until shortly before `ExpirationDateUtc`.
    pub(super) async fn login(&self, call: Call<'_>) -> Result<(Secret, Duration), ProviderError> {
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
    pub(super) fn endpoint(&self, path: &str, query: &[(&str, &str)]) -> Url {
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
    pub(super) fn report_url(
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
    pub(super) fn resolve(&self, relative: &str, what: &str) -> Result<Url, ProviderError> {
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

/// Adds the token to a URL, replacing one that may already be there.
pub(super) fn with_token(url: &Url, token: &Secret) -> Url {
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

pub(super) fn unreadable() -> ProviderError {
    ProviderError::permanent(
        "the job's saved progress is incomplete; run `docfetch retry` to start it over",
    )
}
