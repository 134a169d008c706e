//! What a viewer can make docfetch do from a page: cancel, retry, fire a
//! schedule now, submit a request; and download a job's files. Each form
//! carries the session's CSRF token (checked here) and passed the guard's
//! `Origin` check; each action reuses the API's own code path.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::jobs::urlencode;
use super::register::{CsrfForm, csrf_ok, csrf_refused};
use super::{
    Dashboard, Viewer, error_page, page, require, require_headers, see_other, store_error,
};
use crate::inbox::{self, AcceptError};
use crate::job::request::RequestFormat;
use crate::schedule::Fired;

/// The viewer, when the form's CSRF token is theirs.
fn checked(d: &Dashboard, headers: &HeaderMap, csrf: &str) -> Result<Viewer, Box<Response>> {
    let viewer = require_headers(d, headers)?;
    if !csrf_ok(&viewer, csrf) {
        return Err(Box::new(csrf_refused(&viewer)));
    }
    Ok(viewer)
}

pub async fn cancel(
    State(d): State<Arc<Dashboard>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let viewer = match checked(&d, &headers, &form.csrf) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match crate::api::shared::cancel(&d.api, &name).await {
        Ok(job) => {
            tracing::info!(job = %job.name, "cancelled from the dashboard");
            see_other(&format!("/jobs/{}", urlencode(&job.name)))
        }
        Err(e) => store_error(&viewer, e),
    }
}

pub async fn retry(
    State(d): State<Arc<Dashboard>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let viewer = match checked(&d, &headers, &form.csrf) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match crate::api::shared::retry(&d.api, &name).await {
        Ok(job) => {
            tracing::info!(job = %job.name, "retried from the dashboard");
            see_other(&format!("/jobs/{}", urlencode(&job.name)))
        }
        Err(e) => store_error(&viewer, e),
    }
}

pub async fn file(
    State(d): State<Arc<Dashboard>>,
    Path((name, file)): Path<(String, String)>,
    request: Request,
) -> Response {
    if let Err(login) = require(&d, &request) {
        return *login;
    }
    crate::api::shared::file_response(&d.api, name, file).await
}

pub async fn fire(
    State(d): State<Arc<Dashboard>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let viewer = match checked(&d, &headers, &form.csrf) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(schedule) = d
        .schedules
        .list()
        .await
        .into_iter()
        .find(|s| s.name == name)
    else {
        return error_page(&viewer, StatusCode::NOT_FOUND, "no such schedule");
    };
    let at = chrono::Utc::now().with_timezone(&schedule.timezone);
    match d.schedules.fire(&schedule, at).await {
        Ok(Fired::Created(job)) => {
            tracing::info!(schedule = %schedule.name, job = %job.name, "fired from the dashboard");
            d.api.store.wakeup().notify_one();
            see_other(&format!("/jobs/{}", urlencode(&job.name)))
        }
        Ok(Fired::AlreadyThere(job)) if !job.is_empty() => {
            see_other(&format!("/jobs/{}", urlencode(&job)))
        }
        Ok(Fired::AlreadyThere(_)) => error_page(
            &viewer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "the schedule's request is not valid any more (see the log)",
        ),
        Err(e) => store_error(&viewer, e),
    }
}

#[derive(Deserialize)]
pub struct SubmitForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    format: String,
    #[serde(default)]
    request: String,
}

fn submit_form(viewer: &Viewer, text: &str, format: &str, error: Option<&str>) -> Response {
    let lang = viewer.lang;
    let body = html! {
        h1 { (lang.t("submit")) }
        @if let Some(error) = error { p class="error" id="submit-error" { (error) } }
        form method="post" action="/submit" id="submit" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            label for="request" { (lang.t("paste")) }
            textarea name="request" id="request" rows="14" spellcheck="false" { (text) }
            label { (lang.t("upload")) " " input type="file" id="request-file" accept=".json,.toml,application/json,application/toml,text/plain"; }
            label { (lang.t("format")) " "
                select name="format" id="format" {
                    option value="json" selected[format != "toml"] { "JSON" }
                    option value="toml" selected[format == "toml"] { "TOML" }
                }
            }
            button type="submit" { (lang.t("send")) }
        }
    };
    let mut response = page(viewer, "submit", false, body);
    if error.is_some() {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    response
}

pub async fn submit_page(State(d): State<Arc<Dashboard>>, request: Request) -> Response {
    match require(&d, &request) {
        Ok(viewer) => submit_form(&viewer, "", "json", None),
        Err(login) => *login,
    }
}

pub async fn submit(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Form(form): Form<SubmitForm>,
) -> Response {
    let viewer = match checked(&d, &headers, &form.csrf) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let format = if form.format == "toml" {
        RequestFormat::Toml
    } else {
        RequestFormat::Json
    };
    // Each submission is a new request, as through the API.
    let source = format!("dashboard:{}", uuid::Uuid::new_v4().simple());
    match inbox::accept(
        &d.api.store,
        &d.api.settings,
        form.request.as_bytes(),
        format,
        None,
        &source,
    )
    .await
    {
        Ok(job) => {
            crate::metrics::request("dashboard", true);
            see_other(&format!("/jobs/{}", urlencode(&job.name)))
        }
        Err(AcceptError::Request(e)) => {
            crate::metrics::request("dashboard", false);
            submit_form(&viewer, &form.request, &form.format, Some(&e.to_string()))
        }
        Err(AcceptError::Store(e)) => store_error(&viewer, e),
    }
}
