//! Kontur.Diadoc over HTTP: the endpoints, both auth schemes (the classic
//! `DiadocAuth` token and OIDC), bounded reads, and the one place that
//! decides what an answer means ([`classify`]).

use super::*;

/// Whether a 2xx answer means "not ready yet": it carries `Retry-After`
/// (the seed), or it is a 202 or 204 (the print form and archive docs).
pub(super) fn not_ready(status: StatusCode, retry_after: Option<Duration>) -> bool {
    retry_after.is_some() || status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT
}

/// Turns an error status into the decision, with a message that says what
/// to do. 401 is handled before (one new login); here it means the fresh
/// token was refused too.
pub(super) fn classify(
    status: StatusCode,
    detail: &str,
    retry_after: Option<Duration>,
    what: &str,
    box_id: &str,
) -> ProviderError {
    let detail = detail.trim();
    let said = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    match status.as_u16() {
        400 => ProviderError::permanent(format!(
            "{what}: Diadoc refused the request as malformed (HTTP 400){said}; check boxId, messageId and documentId"
        )),
        401 => ProviderError::permanent(format!(
            "{what}: Diadoc refused the authorization (HTTP 401) even right after a new login{said}"
        )),
        402 => ProviderError::permanent(format!(
            "{what}: the Diadoc API subscription of box {box_id} has expired (HTTP 402 Payment Required){said}; \
             renew the box's API subscription with Kontur (the organization's Diadoc administrator can), \
             then run the job again with `docfetch retry`"
        )),
        403 => ProviderError::permanent(format!(
            "{what}: Diadoc denied access (HTTP 403 Forbidden){said}; the user of this account has no access \
             to box {box_id} or to this document: check boxId, or have a Diadoc administrator grant the user \
             access to the box and its documents, then run the job again with `docfetch retry`"
        )),
        404 => ProviderError::permanent(format!(
            "{what}: Diadoc has no such document (HTTP 404){said}; check boxId, messageId and documentId"
        )),
        405 => ProviderError::permanent(format!(
            "{what}: Diadoc does not allow this call here (HTTP 405){said}; check the account's base_url"
        )),
        409 => ProviderError::permanent(format!(
            "{what}: Diadoc cannot generate it for this document (HTTP 409): {}",
            if detail.is_empty() {
                "no reason given"
            } else {
                detail
            }
        )),
        429 => ProviderError::rate_limited(what, retry_after),
        _ => ProviderError::from_status(what, status, detail).with_retry_after(retry_after),
    }
}
/// An account's credentials at run time, with its cached token.
pub(super) enum Credentials {
    Diadoc {
        client_id: Secret,
        login: String,
        password: Secret,
        cache: TokenCache,
    },
    /// Boxed: the OIDC client is much larger than the classic variant.
    Oidc(Box<Oidc>),
}

/// Whether a call's answer is small (read whole, bounded in time) or a
/// file (streamed; only silence is bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Body {
    Answer,
    File,
}
impl KonturDiadoc {
    /// `{base}/a/b` (the base may carry a path of its own).
    pub(super) fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    pub(super) fn generate_url(&self, method: &str, target: &Target, zip: bool) -> Url {
        let mut url = self.endpoint(&[method]);
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("boxId", &target.box_id)
                .append_pair("messageId", &target.message_id)
                .append_pair("documentId", &target.document_id);
            if zip {
                query.append_pair(
                    "fullDocflow",
                    if target.full_docflow { "true" } else { "false" },
                );
            }
        }
        url
    }

    /// An authorized GET. A 401 drops the token and logs in again once; a
    /// second 401 is returned as the answer, and [`Self::success`] fails it.
    pub(super) async fn get(
        &self,
        ctx: &StepContext<'_>,
        url: Url,
        what: &str,
        body: Body,
        accept: Option<&str>,
    ) -> Result<Response, ProviderError> {
        let mut renewed = false;
        loop {
            let token = self.token(ctx.http, ctx.timeout).await?;
            let mut request = ctx
                .http
                .get(url.clone())
                .header(AUTHORIZATION, self.authorization(&token)?);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if body == Body::Answer {
                // Files stream under the client's read timeout instead: a
                // large one may take long, but never sits silent.
                request = request.timeout(ctx.timeout);
            }
            let response = request
                .send()
                .await
                .map_err(|e| ProviderError::from_reqwest(what, &e))?;
            if response.status() != StatusCode::UNAUTHORIZED || renewed {
                return Ok(response);
            }
            drain(response).await;
            self.invalidate(&token).await;
            tracing::info!("{what}: Diadoc refused the token (HTTP 401); logging in again once");
            renewed = true;
        }
    }

    /// Passes a 2xx answer through; turns anything else into the error
    /// its status calls for.
    pub(super) async fn success(
        &self,
        response: Response,
        what: &str,
        target: &Target,
    ) -> Result<Response, ProviderError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = read_body_limited(response, MAX_ANSWER, what)
            .await
            .unwrap_or_default();
        let mut error = classify(status, &excerpt(&body), retry_after, what, &target.box_id);
        if status == StatusCode::UNAUTHORIZED {
            error
                .message
                .push_str(&format!("; {}", self.refused_hint()));
        }
        Err(error)
    }

    pub(super) fn refused_hint(&self) -> &'static str {
        match &self.credentials {
            Credentials::Diadoc { .. } => {
                "check that the account's client_id (the developer key) is registered in Diadoc for this login"
            }
            Credentials::Oidc(_) => {
                "check the account's scope (Diadoc.PublicAPI for production, Diadoc.PublicAPI.Staging for the test Diadoc) and that the API key may use Diadoc"
            }
        }
    }

    /// A valid token, logging in when there is none.
    pub(super) async fn token(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<Secret, ProviderError> {
        match &self.credentials {
            Credentials::Diadoc { cache, .. } => {
                cache.get(|| self.authenticate(http, timeout)).await
            }
            Credentials::Oidc(oidc) => oidc.token(http).await,
        }
    }

    pub(super) async fn invalidate(&self, token: &Secret) {
        match &self.credentials {
            Credentials::Diadoc { cache, .. } => cache.invalidate(token).await,
            Credentials::Oidc(oidc) => oidc.invalidate(token).await,
        }
    }

    /// The `Authorization` value for `token`, marked sensitive so that no
    /// debug output of a request shows it.
    pub(super) fn authorization(&self, token: &Secret) -> Result<HeaderValue, ProviderError> {
        let text = match &self.credentials {
            Credentials::Diadoc { client_id, .. } => diadoc_auth(client_id, Some(token)),
            Credentials::Oidc(_) => format!("Bearer {}", token.expose()),
        };
        sensitive(&text)
    }

    /// `POST /V3/Authenticate?type=password`: the token is the whole body.
    pub(super) async fn authenticate(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(Secret, Duration), ProviderError> {
        let Credentials::Diadoc {
            client_id,
            login,
            password,
            ..
        } = &self.credentials
        else {
            return Err(ProviderError::permanent(
                "internal error: a Diadoc login for an OIDC account",
            ));
        };
        let what = format!("logging in to Diadoc for account {}", self.name);
        let mut url = self.endpoint(&["V3", "Authenticate"]);
        url.query_pairs_mut().append_pair("type", "password");
        let body = serde_json::json!({"login": login, "password": password.expose()}).to_string();
        let response = http
            .post(url)
            .header(AUTHORIZATION, sensitive(&diadoc_auth(client_id, None))?)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(&what, &e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let bytes = read_body_limited(response, MAX_ANSWER, &what).await?;
        if status.is_success() {
            // The body is the token: never quote it, not even when garbled.
            let token = std::str::from_utf8(&bytes)
                .ok()
                .map(str::trim)
                .filter(|t| is_header_token(t));
            return match token {
                Some(token) => Ok((Secret::new(token), CLASSIC_TOKEN_LIFETIME)),
                None => Err(ProviderError::transient(format!(
                    "{what}: the answer ({} bytes) is not a token",
                    bytes.len()
                ))),
            };
        }
        // An error text is quoted, but never with the credentials in it,
        // should the service echo them.
        let detail = excerpt(&bytes)
            .replace(password.expose(), "***")
            .replace(client_id.expose(), "***");
        match status {
            StatusCode::TOO_MANY_REQUESTS => Err(ProviderError::rate_limited(&what, retry_after)),
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let said = if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                Err(ProviderError::permanent(format!(
                    "{what}: Diadoc refused the login (HTTP {status}{said}); check the account's client_id \
                     (the developer key, sent as ddauth_api_client_id), login and password"
                )))
            }
            _ => {
                Err(ProviderError::from_status(&what, status, &detail)
                    .with_retry_after(retry_after))
            }
        }
    }
}

/// `DiadocAuth ddauth_api_client_id=KEY[,ddauth_token=TOKEN]`: one line,
/// parameters separated by `,` as Diadoc's example shows.
pub(super) fn diadoc_auth(client_id: &Secret, token: Option<&Secret>) -> String {
    match token {
        Some(token) => format!(
            "DiadocAuth ddauth_api_client_id={},ddauth_token={}",
            client_id.expose(),
            token.expose()
        ),
        None => format!("DiadocAuth ddauth_api_client_id={}", client_id.expose()),
    }
}

pub(super) fn sensitive(text: &str) -> Result<HeaderValue, ProviderError> {
    let mut value = HeaderValue::from_str(text).map_err(|_| {
        ProviderError::permanent(
            "the account's credentials hold characters that an HTTP header cannot carry",
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    crate::http::retry_after(headers, std::time::SystemTime::now())
}
/// Reads and drops a small body, so the connection can be reused.
pub(super) async fn drain(response: Response) {
    let _ = read_body_limited(response, MAX_ANSWER, "").await;
}

/// Reads a body of at most `limit` bytes; more is a permanent failure (the
/// same protocol will be as large next time).
pub(super) async fn read_bounded(
    mut response: Response,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, ProviderError> {
    let too_large = || {
        ProviderError::permanent(format!(
            "{what}: the answer is larger than {limit} bytes (scheduler.max_file_size)"
        ))
    };
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(ProviderError::from_reqwest(what, &e)),
        }
    }
}

/// The raw `Content-Disposition` file name (sanitized by `ctx.save`).
pub(super) fn disposition_name(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CONTENT_DISPOSITION)
        .and_then(|v| crate::filename::from_content_disposition(v.as_bytes()))
}
