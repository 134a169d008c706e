//! The web dashboard, served by `docfetch run` on the API's listener at
//! `/`: overview, jobs (live), a job's timeline with cancel and retry,
//! accounts, schedules with "fire now", and a submit form. Pages are HTML
//! rendered on the server ([`maud`]), with a little plain JavaScript and CSS
//! built into the binary: nothing is fetched from elsewhere.
//!
//! Every page needs the API's token: a session made by the login form
//! ([`session`]), or `Authorization: Bearer TOKEN`. Without one, every page
//! answers with the login form and nothing else. A form that changes
//! something carries the session's CSRF token, and the guard
//! ([`crate::api::guard`]) has already refused it unless its `Origin` is the
//! listener's own.

mod actions;
mod chart;
mod i18n;
mod jobs;
mod live;
mod overview;
pub mod present;
mod register;
pub mod session;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use self::i18n::Lang;
use self::session::Sessions;
use crate::api::guard::constant_time_eq;
use crate::api::shared::ApiState;
use crate::schedule::Schedules;

/// What the pages share.
pub struct Dashboard {
    pub api: Arc<ApiState>,
    pub sessions: Sessions,
    pub started: Instant,
    pub schedules: Schedules,
    /// The CSRF token of requests without a session (a bearer token, or
    /// `api.auth = "none"`).
    pub process_csrf: String,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub lang: Lang,
    /// The CSRF token forms must carry.
    pub csrf: String,
    /// The session id, when the viewer came with one (for logout).
    pub session: Option<String>,
}

/// The dashboard's routes (the guard is applied by the API's router).
pub fn router(api: Arc<ApiState>) -> Router {
    let schedules = Schedules::load(api.store.clone(), api.settings.clone());
    let dashboard = Arc::new(Dashboard {
        api,
        sessions: Sessions::default(),
        started: Instant::now(),
        schedules,
        process_csrf: session::random_hex(),
    });
    Router::new()
        .route("/", get(overview::page))
        .route("/login", get(register::login_page).post(register::login))
        .route("/logout", post(register::logout))
        .route("/jobs", get(jobs::list))
        .route("/jobs/{name}", get(jobs::show))
        .route("/jobs/{name}/cancel", post(actions::cancel))
        .route("/jobs/{name}/retry", post(actions::retry))
        .route("/jobs/{name}/files/{file}", get(actions::file))
        .route("/accounts", get(overview::accounts))
        .route("/schedules", get(overview::schedules))
        .route("/schedules/{name}/fire", post(actions::fire))
        .route("/submit", get(actions::submit_page).post(actions::submit))
        .route("/events", get(live::events))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .with_state(dashboard)
}

impl Dashboard {
    /// The viewer, when the request carries a live session or the token.
    pub fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        let lang = lang(headers);
        let Some(token) = &self.api.token else {
            return Some(Viewer {
                lang,
                csrf: self.process_csrf.clone(),
                session: None,
            });
        };
        if let Some(id) = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::cookie_value)
            && let Some(s) = self.sessions.get(id, Instant::now())
        {
            return Some(Viewer {
                lang,
                csrf: s.csrf,
                session: Some(id.to_string()),
            });
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)?;
        constant_time_eq(bearer.as_bytes(), token.expose().as_bytes()).then(|| Viewer {
            lang,
            csrf: self.process_csrf.clone(),
            session: None,
        })
    }
}

/// The page language of a request.
pub fn lang(headers: &HeaderMap) -> Lang {
    Lang::from_accept_language(
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    )
}

/// An HTML answer that no cache keeps and no other site may frame.
pub fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it a browser sends `Origin: null` with the
    // page's own form posts, which the guard rightly refuses as cross-site.
    // `same-origin` keeps the address from other sites and lets the page's
    // own posts name their origin.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A 303 to `to`.
pub fn see_other(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// The login form alone: what a request without a credential gets.
pub fn login_only(lang: Lang, message: Option<&str>, status: StatusCode) -> Response {
    html_response(
        status,
        html! {
            (DOCTYPE)
            html lang=(lang.code()) {
                head { (head(lang)) }
                body class="login" {
                    main {
                        h1 { "docfetch" }
                        @if let Some(message) = message { p class="error" { (message) } }
                        form method="post" action="/login" id="login" {
                            label for="token" { (lang.t("token")) }
                            input type="password" name="token" id="token" autocomplete="current-password" required autofocus;
                            button type="submit" { (lang.t("login")) }
                        }
                        p class="hint" { (lang.t("login_hint")) }
                    }
                }
            }
        },
    )
}

fn head(lang: Lang) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (lang.t("title")) }
        link rel="stylesheet" href="/assets/app.css";
        script src="/assets/app.js" defer {}
    }
}

/// A page for a signed-in viewer: the menu, then `body` in a live region
/// (`data-live`: the script reloads it when the store changes).
pub fn page(viewer: &Viewer, current: &str, live: bool, body: Markup) -> Response {
    let lang = viewer.lang;
    let nav = [
        ("/", "overview"),
        ("/jobs", "jobs"),
        ("/accounts", "accounts"),
        ("/schedules", "schedules"),
        ("/submit", "submit"),
    ];
    html_response(
        StatusCode::OK,
        html! {
            (DOCTYPE)
            html lang=(lang.code()) {
                head { (head(lang)) meta name="csrf" content=(viewer.csrf); }
                body {
                    header {
                        span class="brand" { "docfetch" }
                        nav {
                            @for (href, key) in nav {
                                a href=(href) class=[(key == current).then_some("current")] { (lang.t(key)) }
                            }
                        }
                        @if viewer.session.is_some() {
                            form method="post" action="/logout" class="logout" {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button type="submit" { (lang.t("logout")) }
                            }
                        }
                    }
                    main id="main" data-live=[live.then_some("1")] { (body) }
                }
            }
        },
    )
}

/// An error page for a signed-in viewer.
pub fn error_page(viewer: &Viewer, status: StatusCode, message: &str) -> Response {
    let mut response = page(viewer, "", false, html! { p class="error" { (message) } });
    *response.status_mut() = status;
    response
}

/// A store error on a page: logged, and a plain message shown.
pub fn store_error(viewer: &Viewer, e: crate::store::StoreError) -> Response {
    match e {
        crate::store::StoreError::NotFound(_) => {
            error_page(viewer, StatusCode::NOT_FOUND, viewer.lang.t("not_found"))
        }
        crate::store::StoreError::Conflict { detail, .. } => {
            error_page(viewer, StatusCode::CONFLICT, &detail)
        }
        other => {
            tracing::error!(error = %other, "dashboard: store error");
            error_page(
                viewer,
                StatusCode::SERVICE_UNAVAILABLE,
                viewer.lang.t("store_error"),
            )
        }
    }
}

/// Runs `f` for a signed-in viewer; everyone else gets the login form.
pub fn require(d: &Dashboard, request: &Request) -> Result<Viewer, Box<Response>> {
    require_headers(d, request.headers())
}

pub fn require_headers(d: &Dashboard, headers: &HeaderMap) -> Result<Viewer, Box<Response>> {
    d.viewer(headers)
        .ok_or_else(|| Box::new(login_only(lang(headers), None, StatusCode::UNAUTHORIZED)))
}

async fn css(State(_): State<Arc<Dashboard>>) -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

async fn js(State(_): State<Arc<Dashboard>>) -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    response
}
