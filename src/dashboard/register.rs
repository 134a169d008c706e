//! Logging in and out of the dashboard.

use std::sync::Arc;
use std::time::Instant;

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;

use super::session::{self, LoginError};
use super::{Dashboard, lang, login_only, see_other};

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn login_page(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if d.viewer(&headers).is_some() {
        return see_other("/");
    }
    login_only(lang(&headers), None, StatusCode::OK)
}

pub async fn login(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let lang = lang(&headers);
    let Some(token) = &d.api.token else {
        return see_other("/");
    };
    match d
        .sessions
        .login(&form.token, token.expose(), Instant::now())
    {
        Ok(id) => {
            let mut response = see_other("/");
            if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id)) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            response
        }
        Err(LoginError::WrongToken) => {
            tracing::warn!("dashboard: a login with a wrong token");
            login_only(lang, Some(lang.t("wrong_token")), StatusCode::UNAUTHORIZED)
        }
        Err(LoginError::TooMany) => login_only(
            lang,
            Some(lang.t("too_many")),
            StatusCode::TOO_MANY_REQUESTS,
        ),
    }
}

pub async fn logout(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(viewer) = d.viewer(&headers) else {
        return see_other("/login");
    };
    if !csrf_ok(&viewer, &form.csrf) {
        return csrf_refused(&viewer);
    }
    if let Some(id) = &viewer.session {
        d.sessions.logout(id);
    }
    let mut response = see_other("/login");
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// Whether a form's CSRF token is the viewer's.
pub fn csrf_ok(viewer: &super::Viewer, given: &str) -> bool {
    crate::api::guard::constant_time_eq(given.as_bytes(), viewer.csrf.as_bytes())
}

pub fn csrf_refused(viewer: &super::Viewer) -> Response {
    super::error_page(
        viewer,
        StatusCode::FORBIDDEN,
        "CSRF token missing or wrong: reload the page and try again",
    )
}
