//! Calls to Kontur.Extern: the endpoint, the bearer token, the per-client
//! request limit, and the one place that classifies its answers.

use super::*;

/// An Extern error document: `{"id": "urn:error:…", "status-code": …,
/// "message": …, "trace-id": …, "context": {…}}`.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiError {
    pub(super) id: String,
    pub(super) message: String,
    pub(super) trace_id: String,
    pub(super) context: Value,
}

impl ApiError {
    /// Reads an error document; `None` when the body is not one.
    // Public (hidden) for the property tests in tests/fuzz.rs.
    #[doc(hidden)]
    pub fn parse(body: &[u8]) -> Option<ApiError> {
        let value: Value = serde_json::from_slice(body).ok()?;
        ApiError::from_value(&value)
    }

    pub(super) fn from_value(value: &Value) -> Option<ApiError> {
        let object = value.as_object()?;
        let text = |key: &str| {
            object
                .get(key)
                .and_then(Value::as_str)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let error = ApiError {
            id: text("id"),
            message: text("message"),
            // Older answers call it `track-id`.
            trace_id: Some(text("trace-id"))
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| text("track-id")),
            context: object.get("context").cloned().unwrap_or(Value::Null),
        };
        (!error.id.is_empty() || !error.message.is_empty()).then_some(error)
    }

    /// `urn:error:…: message (trace-id …)`, one line: each piece is
    /// flattened and cut, since it goes into the job's error as it is and
    /// a service may send a multi-line or huge message.
    // Public (hidden) for the property tests in tests/fuzz.rs.
    #[doc(hidden)]
    pub fn describe(&self) -> String {
        let id = one_line(&self.id, 300);
        let message = one_line(&self.message, 300);
        let mut text = match (id.is_empty(), message.is_empty()) {
            (false, false) => format!("{id}: {message}"),
            (false, true) => id,
            _ => message,
        };
        if !self.trace_id.is_empty() {
            text.push_str(&format!(" (trace-id {})", one_line(&self.trace_id, 300)));
        }
        text
    }

    /// The running task a `concurrentApiTaskActive` conflict names.
    pub(super) fn concurrent_task(&self) -> Option<String> {
        self.context
            .pointer("/concurrent-task/id")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
    }
}

/// A finished HTTP exchange: status, `Retry-After`, body.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) retry_after: Option<Duration>,
    pub(super) body: Vec<u8>,
}

/// Decides what a failed answer means; the one place that does so.
/// 429 pauses the account; 408 and 5xx are retried; any other status
/// (400, 403, 404, 409 …) fails the job with Extern's own message.
pub(super) fn failure(
    what: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ProviderError {
    let detail = ApiError::parse(body)
        .map(|e| e.describe())
        .unwrap_or_else(|| excerpt(body));
    if status == StatusCode::TOO_MANY_REQUESTS {
        let context = if detail.is_empty() {
            what.to_string()
        } else {
            format!("{what} ({detail})")
        };
        return ProviderError::rate_limited(&context, retry_after);
    }
    let message = if detail.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status}: {detail}")
    };
    if is_transient_status(status) {
        ProviderError::transient(message).with_retry_after(retry_after)
    } else {
        ProviderError::permanent(message)
    }
}

/// Whether the answer to a `PUT` of an id Extern does not know yet says
/// that this server does not create things that way (the seed documents it
/// does; an older or a different deployment may not): 404 (no such object
/// and none made), 405 (no `PUT` here) or 501 (not implemented). Nothing
/// was created, so the caller may fall back to `POST`.
pub(super) fn refuses_put_create(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
    )
}

/// A success answer's JSON; anything else is garbage, worth a retry.
pub(super) fn json_of(body: &[u8], what: &str) -> Result<Value, ProviderError> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            ProviderError::transient(format!(
                "{what}: the answer is not the expected JSON: {}",
                excerpt(body)
            ))
        })
}

/// A non-empty string at `pointer`.
pub(super) fn id_at(value: &Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

pub(super) fn required_id(value: &Value, what: &str) -> Result<String, ProviderError> {
    id_at(value, "/id").ok_or_else(|| {
        ProviderError::transient(format!(
            "{what}: the answer carries no id: {}",
            excerpt(value.to_string().as_bytes())
        ))
    })
}

/// An API task (`ApiTaskResult`): `id`, `task-state`, `task-result`, `error`.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: Option<String>,
    pub state: String,
    pub result: Value,
    pub error: Option<ApiError>,
}

impl Task {
    // Public (hidden) for the property tests in tests/fuzz.rs.
    #[doc(hidden)]
    pub fn parse(value: &Value) -> Task {
        Task {
            id: id_at(value, "/id"),
            state: value
                .get("task-state")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase(),
            result: value.get("task-result").cloned().unwrap_or(Value::Null),
            error: value.get("error").and_then(ApiError::from_value),
        }
    }
}

/// One document Extern could not build, as in `error-drafts-builder-documents`.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentError {
    pub document_id: String,
    pub message: String,
}

/// Reads `draft-ids` and `error-drafts-builder-documents`. The latter is an
/// array of `{document-id, error-message}` in the current API; the older
/// SDK read it as a map of document id to message, so both are accepted.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn read_build_result(result: &Value) -> (Vec<String>, Vec<DocumentError>) {
    let drafts = result
        .get("draft-ids")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let errors = match result.get("error-drafts-builder-documents") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| DocumentError {
                document_id: id_at(item, "/document-id").unwrap_or_default(),
                message: item
                    .get("error-message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            })
            .collect(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(id, message)| DocumentError {
                document_id: id.clone(),
                message: message.as_str().unwrap_or("").to_string(),
            })
            .collect(),
        _ => Vec::new(),
    };
    (drafts, errors)
}

/// The items of a list answer. The SDKs read `GET …/documents` and
/// `GET …/files` as a bare JSON array; an object wrapping the array (under
/// `key`, `items`, or as its only array member) is accepted too, so a
/// paged or enveloped answer is not mistaken for an empty list. `None` when
/// the answer holds no list at all.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn list_items<'a>(value: &'a Value, key: &str) -> Option<&'a [Value]> {
    match value {
        Value::Array(items) => Some(items),
        Value::Object(map) => {
            for name in [key, "items"] {
                if let Some(Value::Array(items)) = map.get(name) {
                    return Some(items);
                }
            }
            let mut arrays = map.values().filter_map(Value::as_array);
            match (arrays.next(), arrays.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The limit of concurrent requests shared by every account using the
/// same API client (identity server + `client_id`): Extern counts them per
/// client, and two accounts may share one.
pub(super) fn client_limit(key: &str) -> Arc<Semaphore> {
    static LIMITS: OnceLock<Mutex<HashMap<String, Arc<Semaphore>>>> = OnceLock::new();
    let mut limits = LIMITS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    limits
        .entry(key.to_string())
        .or_insert_with(|| Arc::new(Semaphore::new(CLIENT_REQUEST_LIMIT)))
        .clone()
}

impl KonturExtern {
    /// `{base}/v1/{accountId}/…segments`.
    pub(super) fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.account.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .push("v1")
                .push(&self.account.account_id);
            for segment in segments {
                path.push(segment);
            }
        }
        url
    }

    /// Sends one API request built by `make` with a bearer token, at most
    /// [`CLIENT_REQUEST_LIMIT`] at once per client. A 401 drops the token
    /// and the request is sent once more with a new one; a second 401 fails
    /// the job. `make` is called again for the retry because a streamed body
    /// cannot be sent twice.
    pub(super) async fn call<F>(
        &self,
        ctx: &StepContext<'_>,
        what: &str,
        make: F,
    ) -> Result<Answer, ProviderError>
    where
        F: Fn(&Secret) -> Result<reqwest::RequestBuilder, ProviderError>,
    {
        let _permit = self.client_limit.acquire().await.map_err(|_| {
            ProviderError::transient(format!("{what}: the request limit was closed"))
        })?;
        let mut refused_once = false;
        loop {
            let token = self.oidc.token(ctx.http).await?;
            let response = make(&token)?
                .send()
                .await
                .map_err(|e| ProviderError::from_reqwest(what, &e))?;
            let status = response.status();
            let retry_after =
                crate::http::retry_after(response.headers(), std::time::SystemTime::now());
            if status == StatusCode::UNAUTHORIZED {
                if !refused_once {
                    // Expired or revoked before our cache thought so.
                    tracing::info!(
                        "{what}: the access token was refused (HTTP 401); logging in again"
                    );
                    refused_once = true;
                    self.oidc.invalidate(&token).await;
                    continue;
                }
                let body = read_body_limited(response, MAX_ANSWER, what)
                    .await
                    .unwrap_or_default();
                let detail = ApiError::parse(&body)
                    .map(|e| format!(": {}", e.describe()))
                    .unwrap_or_default();
                return Err(ProviderError::permanent(format!(
                    "{what}: Kontur.Extern refused a freshly issued access token (HTTP 401{detail}); check that this API client may use account {}",
                    self.account.account_id
                )));
            }
            let body = read_body_limited(response, MAX_ANSWER, what).await?;
            return Ok(Answer {
                status,
                retry_after,
                body,
            });
        }
    }

    /// Sends a JSON request and returns the JSON object a 2xx answers.
    pub(super) async fn call_json(
        &self,
        ctx: &StepContext<'_>,
        what: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        let answer = self.call_ok(ctx, what, method, url, body).await?;
        json_of(&answer, what)
    }

    /// `GET`s a list (`key` names the array should the answer wrap it).
    pub(super) async fn list(
        &self,
        ctx: &StepContext<'_>,
        what: &str,
        url: Url,
        key: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let answer = self.call_ok(ctx, what, Method::GET, url, None).await?;
        serde_json::from_slice::<Value>(&answer)
            .ok()
            .as_ref()
            .and_then(|value| list_items(value, key))
            .map(<[Value]>::to_vec)
            .ok_or_else(|| {
                // Garbage is worth a retry; never read as "nothing there",
                // which would create a duplicate.
                ProviderError::transient(format!(
                    "{what}: the answer is not a list: {}",
                    excerpt(&answer)
                ))
            })
    }

    /// Sends a JSON request and returns whatever status it answered.
    pub(super) async fn send_json(
        &self,
        ctx: &StepContext<'_>,
        what: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Answer, ProviderError> {
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| {
                ProviderError::permanent(format!("{what}: the request cannot be encoded: {e}"))
            })?),
            None => None,
        };
        self.call(ctx, what, |token| {
            let mut request = ctx
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.expose())
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(ctx.timeout);
            request = match &body {
                Some(b) => request
                    .header(CONTENT_TYPE, "application/json")
                    .body(b.clone()),
                // A POST without a body still says so, or some proxies
                // answer 411.
                None => request.header(CONTENT_LENGTH, 0),
            };
            Ok(request)
        })
        .await
    }

    /// Sends a JSON request and returns the body of a 2xx answer.
    pub(super) async fn call_ok(
        &self,
        ctx: &StepContext<'_>,
        what: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, ProviderError> {
        let answer = self.send_json(ctx, what, method, url, body).await?;
        if !answer.status.is_success() {
            return Err(failure(
                what,
                answer.status,
                answer.retry_after,
                &answer.body,
            ));
        }
        Ok(answer.body)
    }
}

pub(super) fn answer_text(value: &Value) -> Vec<u8> {
    value.to_string().into_bytes()
}
