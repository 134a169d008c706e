//! A tiny axum server posing as a 1C:Fresh data transfer service, so a test
//! controls every byte of its answers: the order and status answers are the
//! seed's (unless a test scripts them), and the file answer is whatever the
//! test set for that data id — hostile headers, oversized or endless bodies,
//! redirects to another host. Every request is recorded with whether it
//! carried credentials.
//!
//! An account with `flow = "plain"` (or `"ibsession"`, to script hand-offs)
//! and `base_url = hostile.base_url()` points docfetch at it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::any;

/// The body of a scripted answer.
#[derive(Debug, Clone)]
pub enum Payload {
    Bytes(Vec<u8>),
    /// `chunk` bytes every `every`, for ever (chunked, no length).
    Endless {
        chunk: usize,
        every: Duration,
    },
}

/// A scripted answer: status, raw header values, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Payload,
}

impl Answer {
    /// A 200 file answer with `Content-Disposition: VALUE` (raw bytes).
    pub fn file(disposition: &[u8], body: &[u8]) -> Answer {
        Answer {
            status: 200,
            headers: vec![
                ("content-type".into(), b"application/octet-stream".to_vec()),
                ("content-disposition".into(), disposition.to_vec()),
            ],
            payload: Payload::Bytes(body.to_vec()),
        }
    }

    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            payload: Payload::Bytes(Vec::new()),
        }
    }

    pub fn header(mut self, name: &str, value: &[u8]) -> Answer {
        self.headers.push((name.to_string(), value.to_vec()));
        self
    }

    pub fn body(mut self, payload: Payload) -> Answer {
        self.payload = payload;
        self
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    /// Whether an `Authorization` header came with it.
    pub authorization: bool,
}

#[derive(Default)]
struct Script {
    orders: HashMap<String, Answer>,
    polls: HashMap<String, Answer>,
    files: HashMap<String, Answer>,
    seen: Vec<Seen>,
}

/// The running server.
pub struct Hostile {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

pub const PREFIX: &str = "/a/bs/1/hs/dt";

impl Hostile {
    pub async fn start() -> Hostile {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let app = Router::new()
            .route("/{*path}", any(handle))
            .with_state(script.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Hostile { addr, script, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The account `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}{PREFIX}/storage", self.addr)
    }

    /// An `[accounts.NAME]` table for this server.
    pub fn account(&self, name: &str, flow: &str) -> String {
        format!(
            "[accounts.{name}]\nprovider = \"1c-fresh\"\nflow = \"{flow}\"\nbase_url = \"{}\"\nusername = \"api\"\npassword = \"hostile-secret-pw\"\n",
            self.base_url()
        )
    }

    /// Scripts the answer to `POST …/async/{data_id}`.
    pub fn on_order(&self, data_id: &str, answer: Answer) {
        self.lock().orders.insert(data_id.into(), answer);
    }

    /// Scripts the answer to `GET …/jobs/{data_id}` (job ids are data ids).
    pub fn on_poll(&self, data_id: &str, answer: Answer) {
        self.lock().polls.insert(data_id.into(), answer);
    }

    /// Scripts the answer to `GET …/files/{data_id}` (file ids are data ids).
    pub fn on_file(&self, data_id: &str, answer: Answer) {
        self.lock().files.insert(data_id.into(), answer);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The seed's `general`/`result` answer.
pub fn general(code: u32, storage: &str, id: &str) -> Answer {
    let body = serde_json::json!({
        "general": {"response": code, "error": false, "message": ""},
        "result": {"storage": storage, "id": id},
    });
    Answer {
        status: 200,
        headers: vec![(
            "content-type".into(),
            b"application/json; charset=UTF-8".to_vec(),
        )],
        payload: Payload::Bytes(body.to_string().into_bytes()),
    }
}

async fn handle(
    State(script): State<Arc<Mutex<Script>>>,
    method: Method,
    uri: Uri,
    Path(path): Path<String>,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    let answer = {
        let mut s = script.lock().unwrap_or_else(|e| e.into_inner());
        s.seen.push(Seen {
            path: format!("{method} {}", uri.path()),
            authorization: headers.contains_key("authorization"),
        });
        let rest = path
            .strip_prefix(PREFIX.trim_start_matches('/'))
            .unwrap_or(&path);
        let mut parts = rest.trim_matches('/').split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("storage"), Some("async"), Some(id)) => s
                .orders
                .get(id)
                .cloned()
                .unwrap_or_else(|| general(10200, "jobs", id)),
            (Some("storage"), Some("jobs"), Some(id)) => s
                .polls
                .get(id)
                .cloned()
                .unwrap_or_else(|| general(10200, "files", id)),
            (Some("storage"), Some("files"), Some(id)) => s
                .files
                .get(id)
                .cloned()
                .unwrap_or_else(|| general(10404, "files", id)),
            _ => Answer::status(404),
        }
    };
    render(answer)
}

fn render(answer: Answer) -> Response {
    let mut response = Response::new(match answer.payload {
        Payload::Bytes(bytes) => Body::from(bytes),
        Payload::Endless { chunk, every } => {
            let stream = futures_util::stream::unfold((), move |()| async move {
                tokio::time::sleep(every).await;
                Some((Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; chunk])), ()))
            });
            Body::from_stream(stream)
        }
    });
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap();
    for (name, value) in answer.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        let value = HeaderValue::from_bytes(&value)
            .unwrap_or_else(|e| panic!("header {name} cannot be sent: {e}"));
        response.headers_mut().append(name, value);
    }
    response
}
