//! The `[api]` section: where the local HTTP API listens, how clients
//! authenticate, and its timeouts.

use super::*;

/// Where the local HTTP API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiListen {
    /// `api.listen = ""`: no API.
    Disabled,
    Tcp(std::net::SocketAddr),
    /// `api.listen = "/run/docfetch/api.sock"` (or `unix:/…`).
    Unix(PathBuf),
}

impl fmt::Display for ApiListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiListen::Disabled => f.write_str("off"),
            ApiListen::Tcp(addr) => write!(f, "{addr}"),
            ApiListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ApiListen {
    /// Whether only this machine can reach the listener: a loopback
    /// address or a unix socket (`/metrics` is open there).
    pub fn is_local(&self) -> bool {
        match self {
            ApiListen::Disabled | ApiListen::Unix(_) => true,
            ApiListen::Tcp(addr) => addr.ip().is_loopback(),
        }
    }
}

/// The credential the API asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAuth {
    /// `api.auth = "none"`: no credential. Allowed on a unix socket only,
    /// whose file mode (0660) decides who may connect.
    None,
    /// `api.token_file`: a token the operator made, read at start-up.
    Token { path: PathBuf, token: Secret },
    /// No `api.token_file`: docfetch makes a random token in this file at
    /// first start (mode 0600) and reuses it afterwards.
    Generated(PathBuf),
}

impl ApiAuth {
    /// Where the token is kept (none for `api.auth = "none"`).
    pub fn token_path(&self) -> Option<&Path> {
        match self {
            ApiAuth::None => None,
            ApiAuth::Token { path, .. } | ApiAuth::Generated(path) => Some(path),
        }
    }
}

/// The generated token's file name, in the state folder.
pub const API_TOKEN_FILE: &str = "api-token";

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: ApiListen,
    /// Every `/api/*` call needs `Authorization: Bearer TOKEN` unless this
    /// is [`ApiAuth::None`].
    pub auth: ApiAuth,
    /// `/metrics` without the token on a listener other machines can reach.
    pub metrics_public: bool,
    /// Host names (besides loopback names and the listener's address) that
    /// the `Host` header may carry: `NAME` (any port) or `NAME:PORT`.
    pub allowed_hosts: Vec<String>,
    /// A request head must be complete this long after the connection
    /// opened or the previous answer was sent (also closes idle kept-alive
    /// connections).
    pub header_timeout: Duration,
    /// A request body must be complete this long after its head.
    pub body_timeout: Duration,
    /// A client that takes no bytes of an answer for this long is cut off.
    pub send_timeout: Duration,
}

pub(super) fn api_settings(
    raw: RawApi,
    store_url: &str,
    env: &Environment,
) -> Result<ApiSettings, ConfigError> {
    let text = raw.listen.unwrap_or_else(|| "127.0.0.1:8750".into());
    let text = text.trim();
    let listen = if text.is_empty() {
        ApiListen::Disabled
    } else if let Some(path) = text.strip_prefix("unix:") {
        ApiListen::Unix(PathBuf::from(path))
    } else if text.starts_with('/') || text.starts_with('.') {
        ApiListen::Unix(PathBuf::from(text))
    } else {
        ApiListen::Tcp(text.parse().map_err(|_| {
            ConfigError::invalid(
                "api.listen",
                format!("expected HOST:PORT (such as \"127.0.0.1:8750\"), a unix socket path, or \"\" to disable; found {text:?}"),
            )
        })?)
    };
    let auth = match raw.auth.as_deref().map(str::trim) {
        None | Some("token") => match raw.token_file {
            None => ApiAuth::Generated(state_dir(store_url).join(API_TOKEN_FILE)),
            Some(file) => {
                let mut path = file.clone();
                if path.is_relative()
                    && let Some(dir) = env.get("CREDENTIALS_DIRECTORY")
                {
                    path = Path::new(dir).join(path);
                }
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::invalid(
                        "api.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let token = text.trim().to_string();
                if token.len() < 16 {
                    return Err(ConfigError::invalid(
                        "api.token_file",
                        "the token must be at least 16 characters (use a long random string, such as `openssl rand -hex 32`)",
                    ));
                }
                ApiAuth::Token {
                    path,
                    token: Secret::new(token),
                }
            }
        },
        Some("none") => {
            if !matches!(listen, ApiListen::Unix(_) | ApiListen::Disabled) {
                return Err(ConfigError::invalid(
                    "api.auth",
                    "\"none\" is allowed only when api.listen is a unix socket (whose mode 0660 decides who may connect); over TCP any local user and any web page in a browser could reach the API",
                ));
            }
            if raw.token_file.is_some() {
                return Err(ConfigError::invalid(
                    "api.auth",
                    "\"none\" asks for no token, but api.token_file names one; remove one of the two",
                ));
            }
            ApiAuth::None
        }
        Some(other) => {
            return Err(ConfigError::invalid(
                "api.auth",
                format!("expected \"token\" (the default) or \"none\", found {other:?}"),
            ));
        }
    };
    let mut allowed_hosts = Vec::new();
    for host in raw.allowed_hosts.map(Names::into_vec).unwrap_or_default() {
        let host = host.trim().to_ascii_lowercase();
        let valid = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !valid {
            return Err(ConfigError::invalid(
                "api.allowed_hosts",
                format!(
                    "expected host names such as \"docfetch.internal\" or \"docfetch.internal:8443\", found {host:?}"
                ),
            ));
        }
        allowed_hosts.push(host);
    }
    let timeout = |key: &str, value, default| {
        let d = duration(&format!("api.{key}"), value, default)?;
        if d.is_zero() {
            return Err(ConfigError::invalid(
                format!("api.{key}"),
                "must be above zero (a slow client would otherwise hold a connection forever)",
            ));
        }
        Ok(d)
    };
    Ok(ApiSettings {
        listen,
        auth,
        metrics_public: raw.metrics_public.unwrap_or(false),
        allowed_hosts,
        header_timeout: timeout("header_timeout", raw.header_timeout, "10s")?,
        body_timeout: timeout("body_timeout", raw.body_timeout, "30s")?,
        send_timeout: timeout("send_timeout", raw.send_timeout, "60s")?,
    })
}
