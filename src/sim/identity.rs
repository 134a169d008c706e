//! A fake Kontur identity server (OpenID Connect token endpoint,
//! `POST /connect/token`, form-encoded), shared by the Extern and Diadoc
//! simulators, which ask it whether a bearer token is valid.

use super::{Mutex, Origin};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// Where the identity server is mounted on the simulator's port.
pub const PREFIX: &str = "/identity";

/// Settings of the fake identity server.
#[derive(Debug, Clone)]
pub struct IdentitySimConfig {
    pub client_id: String,
    pub api_key: String,
    /// For the `password` grant.
    pub login: String,
    pub password: String,
    /// For the `refresh_token` grant (rotated on every use).
    pub refresh_token: String,
    /// `expires_in` of issued tokens.
    pub token_lifetime: Duration,
}

impl Default for IdentitySimConfig {
    fn default() -> Self {
        IdentitySimConfig {
            client_id: "docfetch-sim".into(),
            api_key: "sim-kontur-api-key".into(),
            login: "accountant@example.ru".into(),
            password: "sim-kontur-password".into(),
            refresh_token: "sim-refresh-0".into(),
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

/// The identity server's state.
pub struct IdentitySim {
    pub config: IdentitySimConfig,
    tokens: Mutex<HashMap<String, Instant>>,
    refresh: Mutex<String>,
    seq: AtomicU64,
    /// Tokens issued.
    pub issued: AtomicU64,
    /// Requests refused (bad client, bad grant).
    pub refused: AtomicU64,
    origin: Origin,
}

impl IdentitySim {
    pub fn new(config: IdentitySimConfig) -> Arc<Self> {
        Arc::new(IdentitySim {
            refresh: Mutex::new(config.refresh_token.clone()),
            config,
            tokens: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            origin: Origin::default(),
        })
    }

    pub fn set_origin(&self, origin: &str) {
        self.origin.set(origin);
    }

    /// The account's `identity_url`.
    pub fn url(&self) -> String {
        self.origin.get()
    }

    /// Whether `token` was issued here and has not expired.
    pub fn is_valid(&self, token: &str) -> bool {
        let tokens = self.tokens.lock();
        tokens
            .get(token)
            .is_some_and(|expires| *expires > Instant::now())
    }

    /// Checks an `Authorization: Bearer …` header value.
    pub fn check_bearer(&self, header: Option<&str>) -> bool {
        header
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|t| self.is_valid(t.trim()))
    }

    /// Makes every issued token expire now (to test re-authentication).
    pub fn expire_all(&self) {
        let mut tokens = self.tokens.lock();
        for expires in tokens.values_mut() {
            *expires = Instant::now();
        }
    }

    /// Every token issued so far (for tests that look for leaks).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.tokens.lock().keys().cloned().collect()
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/connect/token", post(token))
            .with_state(self.clone())
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({"error": error, "error_description": description});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn token(State(sim): State<Arc<IdentitySim>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let refuse = |status, error, description| {
        sim.refused.fetch_add(1, Ordering::SeqCst);
        oauth_error(status, error, description)
    };
    if get("client_id") != sim.config.client_id || get("client_secret") != sim.config.api_key {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "unknown client or wrong secret",
        );
    }
    let mut new_refresh = None;
    match get("grant_type") {
        "client_credentials" => {}
        "password" => {
            if get("username") != sim.config.login || get("password") != sim.config.password {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "invalid username or password",
                );
            }
        }
        "refresh_token" => {
            let mut current = sim.refresh.lock();
            if get("refresh_token") != *current {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "invalid refresh token",
                );
            }
            let rotated = format!("sim-refresh-{}", sim.seq.fetch_add(1, Ordering::SeqCst));
            *current = rotated.clone();
            new_refresh = Some(rotated);
        }
        other => {
            let other = other.to_string();
            sim.refused.fetch_add(1, Ordering::SeqCst);
            return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", &other);
        }
    }
    let n = sim.seq.fetch_add(1, Ordering::SeqCst);
    let access = format!("sim-access-{n:08}-{:016x}", fastrand::u64(..));
    sim.tokens
        .lock()
        .insert(access.clone(), Instant::now() + sim.config.token_lifetime);
    sim.issued.fetch_add(1, Ordering::SeqCst);
    let mut body = serde_json::json!({
        "access_token": access,
        "expires_in": sim.config.token_lifetime.as_secs(),
        "token_type": "Bearer",
        "scope": get("scope"),
    });
    if let Some(refresh) = new_refresh {
        body["refresh_token"] = serde_json::Value::String(refresh);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
