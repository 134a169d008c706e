//! OpenID Connect access tokens for Kontur's APIs (Extern and Diadoc):
//! `POST {identity}/connect/token`, form-encoded, with the
//! `client_credentials`, `password` or `refresh_token` grant. `client_id` is
//! the service name and `client_secret` the API key.
//!
//! The token is cached per account in a [`TokenCache`] until shortly before
//! `expires_in`; a rotated refresh token is kept in memory (the config file is
//! never written).

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;

use super::token::TokenCache;
use super::{ProviderError, excerpt, read_body_limited};
use crate::config::keys::{AccountKeys, ConfigError, Secret};

/// Default identity server.
pub const DEFAULT_IDENTITY: &str = "https://identity.kontur.ru";

/// Refresh when less than this is left of a token's life.
const MARGIN: Duration = Duration::from_secs(60);

/// Which grant obtains the token.
#[derive(Debug, Clone)]
pub enum Grant {
    ClientCredentials,
    Password { username: String, password: Secret },
    RefreshToken { refresh_token: Secret },
}

/// OIDC settings of one account.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub identity_url: url::Url,
    pub client_id: String,
    /// The API key.
    pub client_secret: Secret,
    pub scope: String,
    pub grant: Grant,
}

impl OidcConfig {
    /// Reads `identity_url`, `client_id`, `api_key`, `grant` and the grant's
    /// secrets (`login` + `password`, or `refresh_token`).
    pub fn from_keys(keys: &mut AccountKeys<'_>, scope: &str) -> Result<Self, ConfigError> {
        let identity_url = keys.url("identity_url", Some(DEFAULT_IDENTITY))?;
        let client_id = keys.required("client_id")?;
        let client_secret = keys.required_secret("api_key")?;
        let grant = match keys.string("grant")?.as_deref() {
            None | Some("client_credentials") => Grant::ClientCredentials,
            Some("password") => Grant::Password {
                username: keys.required("login")?,
                password: keys.required_secret("password")?,
            },
            Some("refresh_token") => Grant::RefreshToken {
                refresh_token: keys.required_secret("refresh_token")?,
            },
            Some(other) => {
                return Err(ConfigError::invalid(
                    format!("accounts.{}.grant", keys.account),
                    format!(
                        "expected \"client_credentials\", \"password\" or \"refresh_token\", found {other:?}"
                    ),
                ));
            }
        };
        let scope = keys.string("scope")?.unwrap_or_else(|| scope.to_string());
        Ok(OidcConfig {
            identity_url,
            client_id,
            client_secret,
            scope,
            grant,
        })
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// An account's OIDC client: the config, the cached access token, and the
/// latest refresh token.
pub struct Oidc {
    config: OidcConfig,
    cache: TokenCache,
    refresh: Mutex<Option<Secret>>,
    account: String,
}

impl Oidc {
    pub fn new(account: &str, config: OidcConfig) -> Self {
        let refresh = match &config.grant {
            Grant::RefreshToken { refresh_token } => Some(refresh_token.clone()),
            _ => None,
        };
        Oidc {
            config,
            cache: TokenCache::new(MARGIN),
            refresh: Mutex::new(refresh),
            account: account.to_string(),
        }
    }

    /// Logins performed so far.
    pub fn logins(&self) -> u64 {
        self.cache.logins()
    }

    /// How old the token in use is (never the token).
    pub fn token_age(&self) -> Option<std::time::Duration> {
        self.cache.age()
    }

    /// A valid access token, fetched when needed.
    pub async fn token(&self, http: &reqwest::Client) -> Result<Secret, ProviderError> {
        self.cache.get(|| self.fetch(http)).await
    }

    /// Forgets a token the API rejected (401), so the next call logs in again.
    pub async fn invalidate(&self, token: &Secret) {
        self.cache.invalidate(token).await;
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<(Secret, Duration), ProviderError> {
        let what = format!("getting an access token for account {}", self.account);
        let mut url = self.config.identity_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push("connect").push("token");
        }
        let mut form: Vec<(&str, String)> = vec![
            ("client_id", self.config.client_id.clone()),
            (
                "client_secret",
                self.config.client_secret.expose().to_string(),
            ),
            ("scope", self.config.scope.clone()),
        ];
        match &self.config.grant {
            Grant::ClientCredentials => form.push(("grant_type", "client_credentials".into())),
            Grant::Password { username, password } => {
                form.push(("grant_type", "password".into()));
                form.push(("username", username.clone()));
                form.push(("password", password.expose().to_string()));
            }
            Grant::RefreshToken { .. } => {
                let refresh = self.refresh.lock().await.clone();
                let Some(refresh) = refresh else {
                    return Err(ProviderError::permanent(format!(
                        "{what}: no refresh token"
                    )));
                };
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", refresh.expose().to_string()));
            }
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let response = http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(&what, &e))?;
        let status = response.status();
        let retry_after =
            crate::http::retry_after(response.headers(), std::time::SystemTime::now());
        let bytes = read_body_limited(response, 1 << 20, &what).await?;
        if status.is_success() {
            let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|_| {
                ProviderError::transient(format!(
                    "{what}: the identity server's answer is not a token: {}",
                    excerpt(&bytes)
                ))
            })?;
            if let Some(new_refresh) = answer.refresh_token.filter(|r| !r.is_empty()) {
                *self.refresh.lock().await = Some(Secret::new(new_refresh));
            }
            // Without `expires_in`, assume a short life rather than a long one.
            let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(300));
            return Ok((Secret::new(answer.access_token), lifetime));
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(ProviderError::rate_limited(&what, retry_after));
        }
        if status.is_server_error() {
            return Err(ProviderError::from_status(&what, status, &excerpt(&bytes)));
        }
        // 400/401 with an OAuth error: the credentials or grant are wrong.
        let detail = serde_json::from_slice::<TokenError>(&bytes)
            .map(|e| match e.error_description {
                Some(d) if !d.is_empty() => format!("{} ({d})", e.error),
                _ => e.error,
            })
            .unwrap_or_else(|_| excerpt(&bytes));
        Err(ProviderError::permanent(format!(
            "{what}: the identity server refused (HTTP {status}: {detail}); check client_id, api_key and the grant's credentials"
        )))
    }
}
