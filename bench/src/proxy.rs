//! A recording reverse proxy for the `polling` phase: every request between
//! the daemon and the simulator, with when it went out and came back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use tokio_util::sync::CancellationToken;

use crate::util::lock;
use crate::util::wall_ms;

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    /// Wall-clock ms when the request arrived and when the answer's head
    /// (for captured bodies: the whole answer) came back.
    pub(crate) start_ms: f64,
    pub(crate) end_ms: f64,
    pub(crate) method: String,
    /// Path and query.
    pub(crate) path: String,
    pub(crate) retry_after: Option<f64>,
    /// The answer's body, kept for POSTs (logins and orders are small).
    pub(crate) body: Option<Bytes>,
}

impl Hit {
    pub(crate) fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or(&self.path)
    }

    pub(crate) fn query_param(&self, key: &str) -> Option<String> {
        let query = self.path.split_once('?')?.1;
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }
}

/// A reverse proxy between the daemon and the simulator that records every
/// request with its timing: the only place that sees when each poll really
/// went out, without changing the daemon or the simulator.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<ProxyState>,
    pub(crate) stop: CancellationToken,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

pub(crate) struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    hits: Mutex<Vec<Hit>>,
}

impl Proxy {
    pub(crate) async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| anyhow!("proxy HTTP client: {}", docfetch::http::describe(&e)))?;
        let state = Arc::new(ProxyState {
            upstream: format!("http://{upstream}"),
            client,
            hits: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(forward).with_state(state.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        Ok(Proxy {
            addr,
            state,
            stop,
            task,
        })
    }

    pub(crate) async fn stop(self) -> Vec<Hit> {
        self.stop.cancel();
        let _ = self.task.await;
        std::mem::take(&mut *lock(&self.state.hits))
    }
}

pub(crate) async fn forward(
    State(proxy): State<Arc<ProxyState>>,
    request: axum::extract::Request,
) -> Response {
    let start_ms = wall_ms();
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return status_only(StatusCode::BAD_REQUEST);
    };
    let mut upstream = proxy
        .client
        .request(parts.method.clone(), format!("{}{path}", proxy.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            upstream = upstream.header(name.clone(), value.clone());
        }
    }
    let Ok(answer) = upstream.send().await else {
        return status_only(StatusCode::BAD_GATEWAY);
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let retry_after = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok());
    let mut hit = Hit {
        start_ms,
        end_ms: 0.0,
        method: parts.method.to_string(),
        path,
        retry_after,
        body: None,
    };
    let body = if parts.method == Method::POST {
        let Ok(bytes) = answer.bytes().await else {
            return status_only(StatusCode::BAD_GATEWAY);
        };
        hit.body = Some(bytes.clone());
        Body::from(bytes)
    } else {
        Body::from_stream(answer.bytes_stream())
    };
    hit.end_ms = wall_ms();
    lock(&proxy.hits).push(hit);
    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        if name != header::TRANSFER_ENCODING && name != header::CONNECTION {
            response = response.header(name.clone(), value.clone());
        }
    }
    response
        .body(body)
        .unwrap_or_else(|_| status_only(StatusCode::INTERNAL_SERVER_ERROR))
}

pub(crate) fn status_only(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}
