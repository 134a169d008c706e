//! The job list (filters, keyset pages, live) and a job's own page (its
//! request, timeline with why each next step is when it is, files,
//! receipt, hooks, error, and the cancel and retry buttons).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::i18n::Lang;
use super::present::{self, redacted_json, size, span, state_badge, time};
use super::{Dashboard, page, require, store_error};
use crate::job::{Job, JobState, now_ms};
use crate::store::views::JobsQuery;

/// Rows on one page of the list.
pub const PAGE: u32 = 50;

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    state: Option<String>,
    provider: Option<String>,
    account: Option<String>,
    q: Option<String>,
    /// `YYYY-MM-DD` (UTC).
    from: Option<String>,
    to: Option<String>,
    /// `CREATED_AT.ID` of the previous page's last row.
    after: Option<String>,
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn day_start(text: &str) -> Option<i64> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

impl ListParams {
    fn query(&self) -> JobsQuery {
        JobsQuery {
            state: non_empty(&self.state).and_then(|s| s.parse::<JobState>().ok()),
            provider: non_empty(&self.provider),
            account: non_empty(&self.account),
            name: non_empty(&self.q),
            created_from: non_empty(&self.from).as_deref().and_then(day_start),
            // "to" is inclusive of its day.
            created_to: non_empty(&self.to)
                .as_deref()
                .and_then(day_start)
                .map(|t| t + 86_400_000),
            after: non_empty(&self.after).and_then(|a| {
                let (at, id) = a.split_once('.')?;
                Some((at.parse().ok()?, id.to_string()))
            }),
            limit: PAGE,
        }
    }

    /// The query string of this filter with `after` replaced.
    fn with_after(&self, after: Option<String>) -> String {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("state", &self.state),
            ("provider", &self.provider),
            ("account", &self.account),
            ("q", &self.q),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if let Some(v) = non_empty(v) {
                pairs.append_pair(k, &v);
            }
        }
        if let Some(after) = after {
            pairs.append_pair("after", &after);
        }
        pairs.finish()
    }
}

pub async fn list(
    State(d): State<Arc<Dashboard>>,
    Query(params): Query<ListParams>,
    request: Request,
) -> Response {
    let viewer = match require(&d, &request) {
        Ok(v) => v,
        Err(login) => return *login,
    };
    let lang = viewer.lang;
    let jobs = match d.api.store.jobs_page(&params.query()).await {
        Ok(jobs) => jobs,
        Err(e) => return store_error(&viewer, e),
    };
    let next = (jobs.len() == PAGE as usize)
        .then(|| jobs.last())
        .flatten()
        .map(|j| params.with_after(Some(format!("{}.{}", j.created_at, j.id))));
    let mut accounts: Vec<&String> = d.api.settings.accounts.keys().collect();
    accounts.sort();
    let providers: std::collections::BTreeSet<&str> =
        d.api.providers.iter().map(|a| a.provider.name()).collect();
    let sel = |v: &Option<String>, x: &str| non_empty(v).as_deref() == Some(x);
    let body = html! {
        h1 { (lang.t("jobs")) " " small class="live" { (lang.t("live")) } }
        form method="get" action="/jobs" class="filters" id="filters" {
            label { (lang.t("state")) " "
                select name="state" {
                    option value="" { (lang.t("any")) }
                    @for s in JobState::ALL {
                        option value=(s.as_str()) selected[sel(&params.state, s.as_str())] { (lang.t(s.as_str())) }
                    }
                }
            }
            label { (lang.t("provider")) " "
                select name="provider" {
                    option value="" { (lang.t("any")) }
                    @for p in &providers {
                        option value=(p) selected[sel(&params.provider, p)] { (p) }
                    }
                }
            }
            label { (lang.t("account")) " "
                select name="account" {
                    option value="" { (lang.t("any")) }
                    @for a in &accounts {
                        option value=(a) selected[sel(&params.account, a)] { (a) }
                    }
                }
            }
            label { (lang.t("name")) " " input type="search" name="q" value=[non_empty(&params.q)]; }
            label { (lang.t("created_from")) " " input type="date" name="from" value=[non_empty(&params.from)]; }
            label { (lang.t("created_to")) " " input type="date" name="to" value=[non_empty(&params.to)]; }
            button type="submit" { (lang.t("filter")) }
        }
        (table(&jobs, lang))
        p class="pager" {
            @if params.after.is_some() {
                a href={"/jobs?" (params.with_after(None))} { (lang.t("first_page")) } " "
            }
            @if let Some(next) = next {
                a href={"/jobs?" (next)} rel="next" { (lang.t("next_page")) }
            }
        }
    };
    // Only the first page follows changes live; later pages stay put.
    page(&viewer, "jobs", params.after.is_none(), body)
}

/// The jobs as a table.
pub fn table(jobs: &[Job], lang: Lang) -> Markup {
    let now = now_ms();
    html! {
        @if jobs.is_empty() {
            p class="empty" { (lang.t("no_jobs")) }
        } @else {
            table class="jobs" {
                thead { tr {
                    th { (lang.t("name")) } th { (lang.t("state")) } th { (lang.t("account")) }
                    th { (lang.t("operation")) } th { (lang.t("created")) } th { (lang.t("next_run")) }
                } }
                tbody {
                    @for j in jobs {
                        tr data-job=(j.name) {
                            td { a href={"/jobs/" (urlencode(&j.name))} { (j.name) } }
                            td { (state_badge(j.state, lang)) }
                            td { (j.account) }
                            td { (j.operation) }
                            td { (time(j.created_at)) }
                            td {
                                @if matches!(j.state, JobState::Queued | JobState::Waiting) {
                                    (span(j.next_run_at - now))
                                } @else if let Some(f) = j.finished_at {
                                    (time(f))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Everything but RFC 3986's unreserved characters, so that job names
/// such as `usn-2018q3` read the same in the address bar. The dot stays
/// encoded: a browser would resolve a bare `..` segment away.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

/// A job, file or schedule name as one path segment of a dashboard link.
pub fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, PATH_SEGMENT).to_string()
}

pub async fn show(
    State(d): State<Arc<Dashboard>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let viewer = match require(&d, &request) {
        Ok(v) => v,
        Err(login) => return *login,
    };
    let lang = viewer.lang;
    let job = match d.api.store.find(&name).await {
        Ok(Some(job)) => job,
        Ok(None) => return store_error(&viewer, crate::store::StoreError::NotFound(name)),
        Err(e) => return store_error(&viewer, e),
    };
    let events = match d.api.store.events(&job.id).await {
        Ok(events) => events,
        Err(e) => return store_error(&viewer, e),
    };
    let now = now_ms();
    let enc = urlencode(&job.name);
    let can_cancel = matches!(
        job.state,
        JobState::Queued | JobState::Waiting | JobState::Running
    );
    let can_retry = matches!(job.state, JobState::Failed | JobState::Cancelled);
    let body = html! {
        h1 { (job.name) " " (state_badge(job.state, lang)) " " small class="live" { (lang.t("live")) } }
        div class="actions" {
            @if can_cancel {
                form method="post" action={"/jobs/" (enc) "/cancel"} data-confirm=(lang.t("confirm_cancel")) {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    button type="submit" class="danger" id="cancel" { (lang.t("cancel")) }
                }
            }
            @if can_retry {
                form method="post" action={"/jobs/" (enc) "/retry"} data-confirm=(lang.t("confirm_retry")) {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    button type="submit" id="retry" { (lang.t("retry")) }
                }
            }
        }
        dl class="facts" {
            dt { (lang.t("account")) } dd { (job.account) " (" (job.provider) ")" }
            dt { (lang.t("operation")) } dd { (job.operation) }
            dt { (lang.t("source")) } dd { (job.source) }
            dt { (lang.t("created")) } dd { (time(job.created_at)) }
            @if matches!(job.state, JobState::Queued | JobState::Waiting) {
                dt { (lang.t("next_run")) } dd { (time(job.next_run_at)) " (" (span(job.next_run_at - now)) ")" }
            }
            @if job.state == JobState::Running {
                dt { (lang.t("next_run")) } dd { (lang.t("running_now")) }
            }
            @if let Some(f) = job.finished_at { dt { (lang.t("finished")) } dd { (time(f)) } }
            dt { (lang.t("deadline")) } dd { (time(job.deadline_at)) }
            dt { (lang.t("attempts")) } dd { (job.attempts) }
            dt { (lang.t("polls")) } dd { (job.polls) }
            dt { (lang.t("steps")) } dd { (job.steps) }
            @if let Some(hooks) = &job.hooks_state {
                dt { (lang.t("hooks")) } dd { (hooks) " (" (job.hooks_attempts) ")" }
            }
        }
        @if let Some(error) = &job.last_error {
            h2 { (lang.t("error")) }
            p class="error" id="job-error" { (error) }
        }
        @if let Some(result) = &job.result {
            h2 { (lang.t("files")) }
            table class="files" {
                thead { tr { th { (lang.t("name")) } th { (lang.t("size")) } th { "SHA-256" } } }
                tbody {
                    @for f in &result.files {
                        tr {
                            td { a class="download" href={"/jobs/" (enc) "/files/" (urlencode(&f.name))} download=(f.name) { (f.name) } }
                            td { (size(f.size)) }
                            td { code { (f.sha256) } }
                        }
                    }
                }
            }
            @if !result.warnings.is_empty() {
                h2 { (lang.t("warnings")) }
                ul { @for w in &result.warnings { li { (w) } } }
            }
        }
        @if job.state.is_finished() {
            p { (lang.t("receipt")) ": "
                a href={"/jobs/" (enc) "/files/" (crate::filename::RECEIPT_NAME)} { (crate::filename::RECEIPT_NAME) } }
        }
        h2 { (lang.t("timeline")) }
        table class="timeline" {
            thead { tr { th { (lang.t("at")) } th { (lang.t("kind")) } th { (lang.t("message")) } th { (lang.t("why_next")) } } }
            tbody {
                @for e in &events {
                    tr class={"ev-" (e.kind)} {
                        td { (time(e.at)) }
                        td { (e.kind) }
                        td { (e.message) }
                        td { (present::why(present::detail(e).as_ref(), &e.kind, lang).unwrap_or_default()) }
                    }
                }
            }
        }
        h2 { (lang.t("request")) }
        pre { (redacted_json(&serde_json::json!({
            "account": job.account, "operation": job.operation, "params": job.params,
        }))) }
        h2 { (lang.t("cursor")) }
        pre { (redacted_json(&job.cursor)) }
    };
    page(&viewer, "jobs", true, body)
}
