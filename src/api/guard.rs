//! The API's doors, checked in one middleware before any handler runs, in
//! this order:
//!
//! 1. **Host** (421): the `Host` header must name this listener — a loopback
//!    name or address, or the listener's own address, with its port, or a
//!    name from `api.allowed_hosts`. A DNS-rebinding page makes the browser
//!    send the attacker's own host name, which is refused. On a unix socket
//!    any `Host` is accepted (a browser cannot reach one).
//! 2. **Origin** (403): a request carrying an `Origin` other than the API's
//!    own (`http://` + its `Host`), or `Sec-Fetch-Site: cross-site` /
//!    `same-site`, came from a web page and is refused.
//! 3. **Credential** (401): every `/api/*` call needs `Authorization:
//!    Bearer TOKEN`, compared in constant time; `/metrics` too on a listener
//!    other machines can reach, unless `api.metrics_public`. `/healthz` and
//!    `/readyz` are open.
//! 4. **Content type** (415): a state-changing call (POST, PUT, PATCH,
//!    DELETE) must be `Content-Type: application/json`, which a page cannot
//!    send cross-site without a preflight that this API never answers. The
//!    one exception is the dashboard's own forms (paths outside `/api/`):
//!    `application/x-www-form-urlencoded` is let through when the request
//!    carries an `Origin`, which step 2 has already found to be the
//!    listener's own; the dashboard then checks the session and its CSRF
//!    token ([`crate::dashboard`]).
//! 5. **Body** (408, 413): read whole within `api.body_timeout` and at most
//!    [`MAX_BODY`] bytes, before the handler sees it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;

use super::shared::{MAX_BODY, problem};
use crate::config::{ApiSettings, Secret};

/// What kind of listener the requests came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// TCP, with the address really bound (the real port when 0 was asked).
    Tcp(SocketAddr),
    Unix,
}

/// The rules of one listener.
#[derive(Debug, Clone)]
pub struct Guard {
    served: Served,
    allowed_hosts: Vec<String>,
    /// `None`: `api.auth = "none"`.
    token: Option<Secret>,
    metrics_need_token: bool,
    body_timeout: Duration,
}

/// Which rules a path falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    /// `/healthz`, `/readyz`, and paths that answer 404 anyway.
    Open,
    Metrics,
    Api,
}

fn door(path: &str) -> Door {
    if path == "/api" || path.starts_with("/api/") {
        Door::Api
    } else if path == "/metrics" {
        Door::Metrics
    } else {
        Door::Open
    }
}

impl Guard {
    pub fn new(settings: &ApiSettings, token: Option<Secret>, served: Served) -> Guard {
        let local = match served {
            Served::Unix => true,
            Served::Tcp(addr) => addr.ip().is_loopback(),
        };
        Guard {
            served,
            allowed_hosts: settings.allowed_hosts.clone(),
            token,
            metrics_need_token: !local && !settings.metrics_public,
            body_timeout: settings.body_timeout,
        }
    }

    /// Whether a `Host` value names this listener.
    pub fn host_allowed(&self, host: &str) -> bool {
        let Served::Tcp(bound) = self.served else {
            return true;
        };
        let host = host.trim().to_ascii_lowercase();
        let Some((name, port)) = split_host(&host) else {
            return false;
        };
        let named = self
            .allowed_hosts
            .iter()
            .any(|allowed| match allowed.rsplit_once(':') {
                Some((n, p)) if !allowed.ends_with(']') => {
                    n.trim_matches(['[', ']']) == name && p.parse::<u16>().ok() == port
                }
                _ => allowed.trim_matches(['[', ']']) == name,
            });
        if named {
            return true;
        }
        let port_ok = port == Some(bound.port()) || (port.is_none() && bound.port() == 80);
        if !port_ok {
            return false;
        }
        if name == "localhost" {
            return true;
        }
        // An address is never a rebinding attacker's name; but only this
        // machine's: loopback, the bound address, or any when bound to all.
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == bound.ip() || bound.ip().is_unspecified(),
            Err(_) => false,
        }
    }

    /// Whether an `Origin` value is the API's own, given the (accepted) Host.
    fn origin_allowed(origin: &str, host: Option<&str>) -> bool {
        match host {
            Some(host) => origin.eq_ignore_ascii_case(&format!("http://{}", host.trim())),
            None => false,
        }
    }

    fn token_ok(&self, request: &Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or("");
        constant_time_eq(given.as_bytes(), token.expose().as_bytes())
    }
}

/// `NAME[:PORT]` or `[V6][:PORT]` → (name without brackets, port).
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        return match after {
            "" => Some((v6, None)),
            _ => Some((v6, Some(after.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) => Some((name, Some(port.parse().ok()?))),
        None => Some((host, None)),
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

fn is_json(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

fn is_form(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The middleware: every request passes here first.
pub async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    // An absolute request target (`GET http://name/ HTTP/1.1`) names a host too.
    let target = request.uri().authority().map(|a| a.as_str());
    let misdirected = match (host, target) {
        (Some(h), Some(t)) => !guard.host_allowed(h) || !guard.host_allowed(t),
        (Some(h), None) | (None, Some(h)) => !guard.host_allowed(h),
        (None, None) => guard.served != Served::Unix,
    };
    if misdirected {
        return problem(
            StatusCode::MISDIRECTED_REQUEST,
            "Wrong host",
            format!(
                "this API answers only to the address it listens on (and api.allowed_hosts), not to Host {:?}",
                host.unwrap_or("")
            ),
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !Guard::origin_allowed(origin, host) {
            return problem(
                StatusCode::FORBIDDEN,
                "Cross-origin request refused",
                format!(
                    "requests from web pages (Origin {origin:?}) are refused; use curl or the docfetch command"
                ),
            );
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && matches!(site.trim(), "cross-site" | "same-site")
    {
        return problem(
            StatusCode::FORBIDDEN,
            "Cross-origin request refused",
            "requests from other web sites are refused; use curl or the docfetch command",
        );
    }
    let door = door(request.uri().path());
    let needs_token = match door {
        Door::Api => true,
        Door::Metrics => guard.metrics_need_token,
        Door::Open => false,
    };
    if needs_token && !guard.token_ok(&request) {
        let mut response = problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "this call needs Authorization: Bearer TOKEN; `docfetch api-token` prints the token",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let changes_state = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let dashboard_form = door == Door::Open
        && headers.contains_key(header::ORIGIN)
        && is_form(headers.get(header::CONTENT_TYPE));
    if changes_state && !is_json(headers.get(header::CONTENT_TYPE)) && !dashboard_form {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "JSON required",
            "a call that changes something must be sent with Content-Type: application/json (also when it has no body)",
        );
    }
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let bytes = match tokio::time::timeout(guard.body_timeout, read_body(body)).await {
        Err(_) => {
            return problem(
                StatusCode::REQUEST_TIMEOUT,
                "Body too slow",
                format!(
                    "the request body did not arrive within {} (api.body_timeout)",
                    crate::units::format_duration(guard.body_timeout)
                ),
            );
        }
        Ok(Err(BodyError::TooLarge)) => return too_large(),
        Ok(Err(BodyError::Broken(e))) => {
            return problem(StatusCode::BAD_REQUEST, "Body unreadable", e);
        }
        Ok(Ok(bytes)) => bytes,
    };
    let mut response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if door == Door::Api {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn too_large() -> Response {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Body too large",
        format!("request bodies are limited to {MAX_BODY} bytes"),
    )
}

enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads a whole body, stopping as soon as it passes [`MAX_BODY`].
async fn read_body(body: Body) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        if buf.len() + chunk.len() > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(listen: &str, allowed: &[&str]) -> Guard {
        let settings = crate::config::Settings::from_toml("", &Default::default()).unwrap();
        let mut api = settings.api;
        api.allowed_hosts = allowed.iter().map(|s| s.to_string()).collect();
        Guard::new(
            &api,
            Some(Secret::new("t".repeat(64))),
            Served::Tcp(listen.parse().unwrap()),
        )
    }

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef0", b"0123456789abcdef"));
    }

    #[test]
    fn a_loopback_listener_answers_to_loopback_names_on_its_port_only() {
        let g = guard("127.0.0.1:8750", &[]);
        for ok in [
            "127.0.0.1:8750",
            "localhost:8750",
            "LOCALHOST:8750",
            "[::1]:8750",
            "127.0.0.2:8750",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:8750",
            "localhost:8751",
            "localhost",
            "127.0.0.1",
            "10.0.0.5:8750",
            "localhost.evil.example:8750",
            "127.0.0.1:8750:1",
            "[::1",
            "",
        ] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn other_listeners_answer_to_their_address_and_the_allowed_names() {
        let g = guard("0.0.0.0:8750", &["docfetch.internal", "proxy.example:443"]);
        assert!(
            g.host_allowed("10.1.2.3:8750"),
            "any address of this machine"
        );
        assert!(g.host_allowed("docfetch.internal:8750"));
        assert!(g.host_allowed("docfetch.internal"));
        assert!(g.host_allowed("proxy.example:443"));
        assert!(!g.host_allowed("proxy.example:8750"));
        assert!(!g.host_allowed("rebind.attacker.example:8750"));
        let g = guard("10.1.2.3:8750", &[]);
        assert!(g.host_allowed("10.1.2.3:8750"));
        assert!(!g.host_allowed("10.1.2.4:8750"));
        let g = guard("127.0.0.1:80", &[]);
        assert!(g.host_allowed("localhost"), "port 80 may be left out");
    }

    #[test]
    fn only_the_apis_own_origin_is_accepted() {
        assert!(Guard::origin_allowed(
            "http://127.0.0.1:8750",
            Some("127.0.0.1:8750")
        ));
        assert!(!Guard::origin_allowed(
            "https://evil.example",
            Some("127.0.0.1:8750")
        ));
        assert!(!Guard::origin_allowed("null", Some("127.0.0.1:8750")));
        assert!(!Guard::origin_allowed(
            "http://localhost:3000",
            Some("localhost:8750")
        ));
        assert!(!Guard::origin_allowed("http://x", None));
    }

    #[test]
    fn json_means_application_json_with_or_without_parameters() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
        ] {
            assert!(is_json(Some(&HeaderValue::from_static(ok))), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "text/plain; application/json",
        ] {
            assert!(!is_json(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!is_json(None));
    }
}
