//! The local HTTP API: health for Docker and load balancers, Prometheus
//! metrics, and the jobs (list, show, submit, cancel, retry, download).
//!
//! One listener (`api.listen`: TCP or a unix socket), served by
//! [`server`] with timeouts against slow clients. Every request passes
//! [`guard`] first: the `Host` must name the listener, a web page's
//! `Origin` is refused, `/api/*` needs `Authorization: Bearer TOKEN` (the
//! operator's `api.token_file`, or one [`token`] makes at first start),
//! and a call that changes something must be JSON. Bodies over 1 MiB are
//! refused, and every error is an RFC 7807 problem document.

pub mod guard;
pub mod metrics;
pub mod server;
pub mod shared;
pub mod token;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

pub use self::guard::Served;
pub use self::server::{Bound, ListenError, bind, serve};
pub use self::shared::ApiState;
use self::shared::{MAX_BODY, file_response, json, problem, store_problem};
use crate::inbox::{self, AcceptError};
use crate::job::JobState;
use crate::job::request::{RequestError, RequestFormat};
use crate::store::{JobFilter, StoreError};

/// Builds the router for requests that arrive through `served`.
pub fn router(state: Arc<ApiState>, served: Served) -> Router {
    let guard = Arc::new(guard::Guard::new(
        &state.settings.api,
        state.token.clone(),
        served,
    ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/jobs", get(list_jobs).post(create_job))
        .route("/api/jobs/{name}", get(show_job))
        .route("/api/jobs/{name}/cancel", post(cancel_job))
        .route("/api/jobs/{name}/retry", post(retry_job))
        .route("/api/jobs/{name}/files/{file}", get(job_file))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "Not found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state.clone())
        .merge(crate::dashboard::router(state))
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
}

async fn healthz() -> Response {
    json(StatusCode::OK, serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    let store = match state.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let probe = state.settings.paths.requests.join(".docfetch-ready-probe");
    let requests = match std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe)) {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("not writable: {e}"),
    };
    let ready = store == "ok" && requests == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({"ready": ready, "store": store, "requests_dir": requests}),
    )
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let Some(handle) = &state.metrics else {
        return problem(
            StatusCode::NOT_FOUND,
            "Metrics unavailable",
            "no metrics recorder is installed",
        );
    };
    let mut response = self::metrics::render(handle, &state.store, &state.providers)
        .await
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    account: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

#[tracing::instrument(name = "api_list_jobs", skip_all)]
async fn list_jobs(State(state): State<Arc<ApiState>>, Query(q): Query<ListQuery>) -> Response {
    let job_state = match q.state.as_deref().map(str::parse::<JobState>).transpose() {
        Ok(s) => s,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "Bad filter", e),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let offset = q.offset.unwrap_or(0);
    let filter = JobFilter {
        state: job_state,
        account: q.account,
        limit,
        offset,
    };
    match state.store.list(&filter).await {
        Ok(jobs) => json(
            StatusCode::OK,
            serde_json::json!({
                "jobs": jobs.iter().map(|j| j.summary_json()).collect::<Vec<_>>(),
                "limit": limit,
                "offset": offset,
            }),
        ),
        Err(e) => store_problem(e),
    }
}

#[tracing::instrument(name = "api_show_job", skip_all, fields(job = %name))]
async fn show_job(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Response {
    let job = match state.store.find(&name).await {
        Ok(Some(job)) => job,
        Ok(None) => return store_problem(StoreError::NotFound(name)),
        Err(e) => return store_problem(e),
    };
    let events = match state.store.events(&job.id).await {
        Ok(events) => events,
        Err(e) => return store_problem(e),
    };
    let mut value = job.summary_json();
    value["events"] =
        serde_json::Value::Array(events.iter().map(crate::job::JobEvent::to_json).collect());
    json(StatusCode::OK, value)
}

#[tracing::instrument(name = "api_create_job", skip_all)]
async fn create_job(State(state): State<Arc<ApiState>>, body: Bytes) -> Response {
    // Each API call is a new request: the source is unique so an identical
    // second submission is a duplicate, never silently the same job.
    let source = format!("api:{}", uuid::Uuid::new_v4().simple());
    match inbox::accept(
        &state.store,
        &state.settings,
        &body,
        RequestFormat::Json,
        None,
        &source,
    )
    .await
    {
        Ok(job) => {
            crate::metrics::request("api", true);
            let mut response = json(StatusCode::CREATED, job.summary_json());
            if let Ok(location) = HeaderValue::from_str(&format!("/api/jobs/{}", job.name)) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(AcceptError::Request(e @ RequestError::Duplicate { .. })) => {
            crate::metrics::request("api", false);
            problem(StatusCode::CONFLICT, "Duplicate job name", e)
        }
        Err(AcceptError::Request(e)) => {
            crate::metrics::request("api", false);
            problem(StatusCode::BAD_REQUEST, "Invalid request", e)
        }
        Err(AcceptError::Store(e)) => store_problem(e),
    }
}

#[tracing::instrument(name = "api_cancel_job", skip_all, fields(job = %name))]
async fn cancel_job(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Response {
    let done = match crate::commands::cancel(
        &state.store,
        &state.settings,
        &state.providers,
        &state.http,
        &name,
    )
    .await
    {
        Ok(done) => done,
        Err(e) => return store_problem(e),
    };
    for w in &done.warnings {
        tracing::warn!(job = %done.job.name, "{w}");
    }
    json(StatusCode::OK, done.job.summary_json())
}

#[tracing::instrument(name = "api_retry_job", skip_all, fields(job = %name))]
async fn retry_job(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Response {
    match crate::commands::retry(&state.store, &state.settings, &name).await {
        Ok(done) => {
            for w in &done.warnings {
                tracing::warn!(job = %done.job.name, "{w}");
            }
            json(StatusCode::OK, done.job.summary_json())
        }
        Err(e) => store_problem(e),
    }
}

#[tracing::instrument(name = "api_job_file", skip_all, fields(job = %name, file = %file))]
async fn job_file(
    State(state): State<Arc<ApiState>>,
    Path((name, file)): Path<(String, String)>,
) -> Response {
    file_response(&state, name, file).await
}
