//! What the API's handlers and the dashboard's pages share: the state they
//! are served with, the body limit, RFC 7807 problem documents, and the
//! job actions both offer (cancel, retry, a job's files). The dashboard
//! imports this, and the API mounts the dashboard's router, so neither
//! reaches back into the other.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

use crate::config::{Secret, Settings};
use crate::providers::Providers;
use crate::store::{Store, StoreError};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// What the handlers share.
pub struct ApiState {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub providers: Providers,
    pub http: reqwest::Client,
    pub metrics: Option<PrometheusHandle>,
    /// The token `/api/*` calls must carry ([`super::token::resolve`]); `None`
    /// only with `api.auth = "none"`.
    pub token: Option<Secret>,
}

/// An RFC 7807 problem document.
pub(crate) fn problem(status: StatusCode, title: &str, detail: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail.to_string(),
    });
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

pub(crate) fn json(status: StatusCode, value: serde_json::Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn store_problem(e: StoreError) -> Response {
    match e {
        StoreError::NotFound(key) => problem(
            StatusCode::NOT_FOUND,
            "No such job",
            format!("no job named or with id {key:?}"),
        ),
        StoreError::Conflict { detail, .. } => problem(
            StatusCode::CONFLICT,
            "Not possible in the job's state",
            detail,
        ),
        other => {
            tracing::error!(error = %other, "API: store error");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                "the job store did not answer; try again",
            )
        }
    }
}

/// Cancels a job through [`crate::commands::cancel`], logging what could
/// not be done after the commit (shared by the API and the dashboard).
pub(crate) async fn cancel(state: &ApiState, name: &str) -> Result<crate::job::Job, StoreError> {
    let done = crate::commands::cancel(
        &state.store,
        &state.settings,
        &state.providers,
        &state.http,
        name,
    )
    .await?;
    for w in &done.warnings {
        tracing::warn!(job = %done.job.name, "{w}");
    }
    Ok(done.job)
}

/// Queues a failed or cancelled job again through
/// [`crate::commands::retry`] (shared by the API and the dashboard).
pub(crate) async fn retry(state: &ApiState, name: &str) -> Result<crate::job::Job, StoreError> {
    let done = crate::commands::retry(&state.store, &state.settings, name).await?;
    for w in &done.warnings {
        tracing::warn!(job = %done.job.name, "{w}");
    }
    Ok(done.job)
}

/// Streams one of a job's recorded files (or its receipt) as an attachment
/// (shared by the API and the dashboard).
pub(crate) async fn file_response(state: &ApiState, name: String, file: String) -> Response {
    let job = match state.store.find(&name).await {
        Ok(Some(job)) => job,
        Ok(None) => return store_problem(StoreError::NotFound(name)),
        Err(e) => return store_problem(e),
    };
    // Only files the job recorded (and its receipt) are served: the name is
    // never used to build a path unless it matches one of them exactly.
    let known = job
        .result
        .iter()
        .flat_map(|r| r.files.iter())
        .any(|f| f.name == file)
        || (file == crate::filename::RECEIPT_NAME && job.state.is_finished());
    if !known {
        return problem(
            StatusCode::NOT_FOUND,
            "No such file",
            format!("job {} has no file {file:?}", job.name),
        );
    }
    let path = crate::receipt::job_dir(&state.settings.paths.output, &job).join(&file);
    let handle = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return problem(StatusCode::NOT_FOUND, "File missing on disk", e),
    };
    let length = handle.metadata().await.map(|m| m.len()).ok();
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(handle)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(length) = length
        && let Ok(v) = HeaderValue::from_str(&length.to_string())
    {
        headers.insert(header::CONTENT_LENGTH, v);
    }
    let encoded = percent_encoding::utf8_percent_encode(&file, percent_encoding::NON_ALPHANUMERIC);
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename*=UTF-8''{encoded}")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}
