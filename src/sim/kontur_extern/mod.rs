//! A fake Kontur.Extern DraftsBuilder (seed `002_7cb98a187ae5719e.txt`),
//! with the content service it needs:
//!
//! - `POST /v1/{accountId}/contents` with the first part and
//!   `Content-Range: bytes A-B/TOTAL` → `{"id": …}`; `PUT …/contents/{id}`
//!   with the next parts → `{"content": {"id": …}, "is-completed": …}`. Parts
//!   are assembled by range (a part sent twice is harmless) and the SHA-256
//!   of each complete content is recorded, so tests can check the upload was
//!   byte-exact. Parts above 64 MiB are refused.
//! - `POST …/drafts/builders`, `POST …/builders/{id}/documents`,
//!   `POST …/documents/{id}/files` (the content must be complete, the
//!   signature valid base64);
//! - `PUT …/drafts/builders/{id}`, `PUT …/builders/{id}/documents/{id}`,
//!   `PUT …/documents/{id}/files/{id}` with the same bodies: the seed's
//!   "if no builder / document / file with the given id is found, the method
//!   creates it" — 201 when created under the caller's id (a UUID), 200 when
//!   updated. [`KonturExternSimConfig::refuse_put_create`] makes the service
//!   answer 404 to a `PUT` of an unknown id instead, as a server without
//!   that feature would;
//! - `GET …/builders/{id}/documents` and `GET …/documents/{id}/files`: bare
//!   JSON arrays, as the SDKs read them (`DraftsBuilderDocument[]`: `id`,
//!   `drafts-builder-id`, `meta` with `builder-type` and `builder-data`;
//!   `DraftsBuilderDocumentFile[]`: `id`, `drafts-builder-id`,
//!   `drafts-builder-document-id`, `content-id`, `content-link`,
//!   `signature-content-link`, `meta`), in creation order;
//! - `POST …/builders/{id}/build?deferred=true` → 202 and a running task;
//!   `deferred` other than `true` → 400 (the seed's quirk); a build while one
//!   runs → 409 `urn:error:externapi:concurrentApiTaskActive` naming the
//!   running task in `context.concurrent-task.id`; a build of a finished
//!   builder → 409 with another error id;
//! - `GET …/builders/{id}/tasks/{taskId}` → `running` for a few polls, then
//!   `succeed` with `task-result` (`draft-ids`, one per `label-for-grouping`,
//!   and `error-drafts-builder-documents`) or `failed` with an error.
//!
//! Every request needs a bearer token the identity simulator issued (else
//! 401 with an error document) and the configured account id (else 403).
//! Behaviour per job is steered by a `_sim` object inside `builder-data`
//! (see [`BuilderKnobs`] and [`DocumentKnobs`]); the service ignores it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::identity::IdentitySim;

/// Where the fake service is mounted on the simulator's port.
pub const PREFIX: &str = "/extern";

/// The largest part the fake content service takes.
pub const MAX_PART: u64 = 64 * 1024 * 1024;

/// The account id the fake service knows by default.
pub const ACCOUNT_ID: &str = "3f6a9b1e-7c2d-4e58-9a41-0b5d6c7e8f90";

/// Settings of the fake service (and of the account it writes into the
/// test config).
#[derive(Debug, Clone)]
pub struct KonturExternSimConfig {
    /// The one account id the service knows.
    pub account_id: String,
    /// `running` answers before a task ends (per builder: `_sim.polls`).
    pub build_polls: u32,
    /// The Nth task poll overall answers 500 (an HTML page).
    pub fail_poll: Option<u32>,
    /// The first N API requests answer 429 with `Retry-After`.
    pub rate_limited_requests: u32,
    pub retry_after_secs: u32,
    /// The first N API requests answer 401 even with a valid token (a
    /// token revoked behind the client's back).
    pub unauthorized_requests: u32,
    /// Time every answer takes.
    pub latency: Duration,
    /// Written into the account: `upload_part_size` (hidden key).
    pub upload_part_size: Option<u64>,
    /// Written into the account: `concurrency`.
    pub concurrency: Option<usize>,
    /// Written into the account: `grant` (with the identity simulator's
    /// login and password or refresh token).
    pub grant: Option<String>,
    /// A `PUT` of an unknown builder, document or file id answers 404
    /// instead of creating it.
    pub refuse_put_create: bool,
}

impl Default for KonturExternSimConfig {
    fn default() -> Self {
        KonturExternSimConfig {
            account_id: ACCOUNT_ID.into(),
            build_polls: 2,
            fail_poll: None,
            rate_limited_requests: 0,
            retry_after_secs: 1,
            unauthorized_requests: 0,
            latency: Duration::ZERO,
            upload_part_size: None,
            concurrency: None,
            grant: None,
            refuse_put_create: false,
        }
    }
}

/// Per-job behaviour, from `params.builder-data._sim` (all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "snake_case")]
pub struct BuilderKnobs {
    /// `running` answers before the task ends.
    pub polls: Option<u32>,
    /// The task ends `failed` with this error.
    pub fail: Option<ErrorKnob>,
    /// Creating the builder answers this error (every time, or `times`).
    pub create_error: Option<ErrorKnob>,
    /// Someone else's build of this builder is already running: the first
    /// build request answers 409 naming that task.
    pub busy: bool,
    /// Like `busy`, but the 409 names no task.
    pub busy_without_task: bool,
}

/// An error to answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ErrorKnob {
    /// HTTP status (default 500).
    pub status: Option<u16>,
    /// The error document's `id` (default `urn:error:sim`).
    pub id: Option<String>,
    pub message: Option<String>,
    /// Send this text instead of an error document.
    pub raw: Option<String>,
    /// Answer the error this many times, then succeed (default: always).
    pub times: Option<u32>,
}

/// Per-document behaviour, from `documents[i].builder-data._sim`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DocumentKnobs {
    /// The build lists the document in `error-drafts-builder-documents`.
    pub error: Option<String>,
    /// Further messages for the document, each listed as an entry of its
    /// own (as Extern does for a document with several faults).
    pub more_errors: Vec<String>,
}

/// Counters a test can read.
#[derive(Debug, Default)]
pub struct KonturExternCounters {
    /// Every API request received.
    pub requests: AtomicU64,
    /// Builds started (tasks created).
    pub builds: AtomicU64,
    /// Contents completely uploaded.
    pub contents: AtomicU64,
    /// Upload parts accepted.
    pub parts: AtomicU64,
    /// Task polls answered.
    pub polls: AtomicU64,
    /// 409 `concurrentApiTaskActive` answers.
    pub conflicts: AtomicU64,
    /// Requests refused with 401.
    pub unauthorized: AtomicU64,
    /// Requests answered 429.
    pub rate_limited: AtomicU64,
    /// Builders, documents and files created, whichever way.
    pub builders: AtomicU64,
    pub documents: AtomicU64,
    pub files: AtomicU64,
    /// Of those, the ones a `PUT` created under the caller's id.
    pub put_created: AtomicU64,
    /// `PUT`s that found their builder, document or file and updated it.
    pub put_updated: AtomicU64,
    /// `PUT`s of an unknown id refused (see `refuse_put_create`).
    pub put_refused: AtomicU64,
    /// Answers held back after a creation (see `stall_after_creating`).
    pub stalled: AtomicU64,
    /// `GET …/documents` and `GET …/files` requests answered.
    pub document_lists: AtomicU64,
    pub file_lists: AtomicU64,
    /// Requests being answered right now, and the most seen at once.
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
}

/// What a `PUT` creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Builder,
    Document,
    File,
}

/// A file attached to a document, as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimFile {
    pub id: String,
    pub builder_id: String,
    pub document_id: String,
    pub content_id: String,
    pub file_name: String,
    /// `meta` as sent.
    pub meta: Value,
    /// SHA-256 (hex) of the attached content.
    pub content_sha256: String,
    /// The decoded signature, if one was sent.
    pub signature: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Content {
    total: u64,
    parts: BTreeMap<u64, Bytes>,
    /// Hex SHA-256 once every byte arrived.
    sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BuilderState {
    New,
    Building,
    Finished,
}

#[derive(Debug)]
struct Builder {
    builder_type: String,
    knobs: BuilderKnobs,
    state: BuilderState,
    documents: Vec<String>,
    task: Option<String>,
}

#[derive(Debug)]
struct Document {
    builder_id: String,
    builder_data: Value,
    knobs: DocumentKnobs,
}

#[derive(Debug)]
struct Task {
    builder_id: String,
    polls: u32,
    answer: Option<Value>,
}

#[derive(Default)]
struct Inner {
    contents: HashMap<String, Content>,
    builders: HashMap<String, Builder>,
    documents: HashMap<String, Document>,
    files: Vec<SimFile>,
    tasks: HashMap<String, Task>,
    /// Errors answered so far per `create_error` knob (by request body).
    create_errors: HashMap<String, u32>,
}

/// The fake service's state.
pub struct KonturExternSim {
    pub config: KonturExternSimConfig,
    pub identity: Arc<IdentitySim>,
    pub counters: KonturExternCounters,
    inner: std::sync::Mutex<Inner>,
    origin: std::sync::Mutex<String>,
    seq: AtomicU64,
    poll_seq: AtomicU64,
    /// See [`KonturExternSim::stall_after_creating`].
    stall_after: std::sync::Mutex<Option<Created>>,
    rate_limit_left: AtomicU32,
    unauthorized_left: AtomicU32,
}

impl KonturExternSim {
    pub fn new(config: KonturExternSimConfig, identity: Arc<IdentitySim>) -> Arc<Self> {
        Arc::new(KonturExternSim {
            rate_limit_left: AtomicU32::new(config.rate_limited_requests),
            unauthorized_left: AtomicU32::new(config.unauthorized_requests),
            stall_after: std::sync::Mutex::new(None),
            config,
            identity,
            counters: KonturExternCounters::default(),
            inner: std::sync::Mutex::new(Inner::default()),
            origin: std::sync::Mutex::new(String::new()),
            seq: AtomicU64::new(1),
            poll_seq: AtomicU64::new(0),
        })
    }

    pub fn set_origin(&self, origin: &str) {
        *self.origin.lock().unwrap_or_else(|e| e.into_inner()) = origin.to_string();
    }

    /// The account `base_url` for this service.
    pub fn base_url(&self) -> String {
        self.origin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The `[accounts.NAME]` tables a config needs for this service.
    pub fn accounts_toml(&self) -> String {
        let id = &self.identity.config;
        let mut out = format!(
            "[accounts.kontur-extern-sim]\nprovider = \"kontur-extern\"\nbase_url = \"{}\"\nidentity_url = \"{}\"\naccount_id = \"{}\"\nclient_id = \"{}\"\napi_key = \"{}\"\n",
            self.base_url(),
            self.identity.url(),
            self.config.account_id,
            id.client_id,
            id.api_key
        );
        match self.config.grant.as_deref() {
            Some("password") => out.push_str(&format!(
                "grant = \"password\"\nlogin = \"{}\"\npassword = \"{}\"\n",
                id.login, id.password
            )),
            Some("refresh_token") => out.push_str(&format!(
                "grant = \"refresh_token\"\nrefresh_token = \"{}\"\n",
                id.refresh_token
            )),
            Some(other) => out.push_str(&format!("grant = \"{other}\"\n")),
            None => {}
        }
        if let Some(size) = self.config.upload_part_size {
            out.push_str(&format!("upload_part_size = {size}\n"));
        }
        if let Some(n) = self.config.concurrency {
            out.push_str(&format!("concurrency = {n}\n"));
        }
        out.push('\n');
        out
    }

    pub fn builds(&self) -> u64 {
        self.counters.builds.load(Ordering::SeqCst)
    }

    /// SHA-256 (hex) of every completely uploaded content.
    pub fn content_hashes(&self) -> Vec<String> {
        self.lock()
            .contents
            .values()
            .filter_map(|c| c.sha256.clone())
            .collect()
    }

    /// Every file attached to a document, in order.
    pub fn files(&self) -> Vec<SimFile> {
        self.lock().files.clone()
    }

    /// Every builder created, in no particular order.
    pub fn builder_ids(&self) -> Vec<String> {
        self.lock().builders.keys().cloned().collect()
    }

    /// The documents created in a builder, in order (empty for an unknown
    /// builder). With [`Self::files`], tests count what each builder got.
    pub fn documents_of(&self, builder_id: &str) -> Vec<String> {
        self.lock()
            .builders
            .get(builder_id)
            .map(|b| b.documents.clone())
            .unwrap_or_default()
    }

    /// The next `PUT` that creates a `what` creates it and then never
    /// answers: the caller's request is in flight with the work done, the
    /// moment a crash or a timeout loses the answer. Fires once.
    pub fn stall_after_creating(&self, what: Created) {
        *self.stall_after.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
    }

    async fn after_creation(&self, what: Created) {
        let stall = {
            let mut armed = self.stall_after.lock().unwrap_or_else(|e| e.into_inner());
            if *armed == Some(what) {
                armed.take();
                true
            } else {
                false
            }
        };
        if stall {
            self.counters.stalled.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let mut h = Sha256::new();
        h.update(n.to_le_bytes());
        h.update(
            self.origin
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_bytes(),
        );
        let hex = crate::job::digest::hex(&h.finalize());
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// Builds the router, mounted at [`PREFIX`].
    pub fn router(self: &Arc<Self>) -> Router {
        let v1 = "/v1/{account}";
        Router::new()
            .route(&format!("{v1}/contents"), post(upload_first))
            .route(&format!("{v1}/contents/{{content}}"), put(upload_next))
            .route(&format!("{v1}/drafts/builders"), post(create_builder))
            .route(
                &format!("{v1}/drafts/builders/{{builder}}"),
                get(get_builder).put(put_builder),
            )
            .route(
                &format!("{v1}/drafts/builders/{{builder}}/documents/{{document}}"),
                put(put_document),
            )
            .route(
                &format!("{v1}/drafts/builders/{{builder}}/documents/{{document}}/files/{{file}}"),
                put(put_file),
            )
            .route(
                &format!("{v1}/drafts/builders/{{builder}}/documents"),
                post(create_document).get(list_documents),
            )
            .route(
                &format!("{v1}/drafts/builders/{{builder}}/documents/{{document}}/files"),
                post(create_file).get(list_files),
            )
            .route(
                &format!("{v1}/drafts/builders/{{builder}}/build"),
                post(build),
            )
            .route(
                &format!("{v1}/drafts/builders/{{builder}}/tasks/{{task}}"),
                get(task),
            )
            // A part may be up to 64 MiB; a little more is let through so
            // an oversized part gets Extern's error document, not axum's.
            .layer(DefaultBodyLimit::max(MAX_PART as usize + 1024 * 1024))
            .layer(axum::middleware::from_fn_with_state(self.clone(), guard))
            .with_state(self.clone())
    }
}

/// An Extern error document.
fn error_doc(status: StatusCode, id: &str, message: &str, context: Option<Value>) -> Response {
    let trace = format!("[T-{:08x}(-)] ", fastrand::u32(..));
    let mut body = json!({
        "id": id,
        "status-code": status.as_u16(),
        "message": message,
        "track-id": format!("{:016x}", fastrand::u64(..)),
        "trace-id": trace,
    });
    if let Some(context) = context {
        body["context"] = context;
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn json_answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    error_doc(
        StatusCode::BAD_REQUEST,
        "urn:error:externapi:badRequest",
        message,
        None,
    )
}

fn not_found(what: &str) -> Response {
    error_doc(
        StatusCode::NOT_FOUND,
        "urn:error:externapi:notFound",
        &format!("{what} not found"),
        None,
    )
}

/// Takes one from a countdown; true while it was above zero.
fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

struct InFlight<'a>(&'a KonturExternCounters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts, delays, authenticates and rate-limits every request.
async fn guard(State(sim): State<Arc<KonturExternSim>>, request: Request, next: Next) -> Response {
    let c = &sim.counters;
    c.requests.fetch_add(1, Ordering::SeqCst);
    let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    c.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _in_flight = InFlight(c);
    if !sim.config.latency.is_zero() {
        tokio::time::sleep(sim.config.latency).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !sim.identity.check_bearer(bearer) || take(&sim.unauthorized_left) {
        c.unauthorized.fetch_add(1, Ordering::SeqCst);
        return error_doc(
            StatusCode::UNAUTHORIZED,
            "urn:error:externapi:unauthorized",
            "The access token is missing, expired or revoked",
            None,
        );
    }
    let account = request
        .uri()
        .path()
        .split('/')
        .skip_while(|s| *s != "v1")
        .nth(1)
        .unwrap_or("")
        .to_string();
    if !account.eq_ignore_ascii_case(&sim.config.account_id) {
        return error_doc(
            StatusCode::FORBIDDEN,
            "urn:error:externapi:accessDenied",
            &format!("No access to account {account}"),
            None,
        );
    }
    if take(&sim.rate_limit_left) {
        c.rate_limited.fetch_add(1, Ordering::SeqCst);
        let mut response = error_doc(
            StatusCode::TOO_MANY_REQUESTS,
            "urn:error:externapi:tooManyRequests",
            "Too many requests",
            None,
        );
        if let Ok(value) = sim.config.retry_after_secs.to_string().parse() {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    next.run(request).await
}

/// `bytes A-B/TOTAL` or `bytes A-B/*`.
fn content_range(headers: &HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (a <= b && total.is_none_or(|t| b < t)).then_some((a, b, total))
}

/// Checks a part against its `Content-Range`.
fn check_part(headers: &HeaderMap, body: &Bytes) -> Result<(u64, Option<u64>), Box<Response>> {
    let Some((a, b, total)) = content_range(headers) else {
        return Err(Box::new(bad_request(
            "Content-Range is missing or malformed; expected \"bytes FROM-TO/TOTAL\"",
        )));
    };
    if body.len() as u64 != b - a + 1 {
        return Err(Box::new(bad_request(&format!(
            "Content-Range says {} bytes, the body has {}",
            b - a + 1,
            body.len()
        ))));
    }
    if body.len() as u64 > MAX_PART {
        return Err(Box::new(error_doc(
            StatusCode::PAYLOAD_TOO_LARGE,
            "urn:error:externapi:contentPartTooLarge",
            "A content part may be at most 64 MB",
            None,
        )));
    }
    Ok((a, total))
}

impl Content {
    /// Adds a part; computes the hash once the content is whole.
    fn add(&mut self, start: u64, bytes: Bytes) -> bool {
        self.parts.insert(start, bytes);
        if self.sha256.is_some() {
            return true;
        }
        let mut covered = 0u64;
        for (start, part) in &self.parts {
            if *start > covered {
                return false;
            }
            covered = covered.max(start + part.len() as u64);
        }
        if covered != self.total {
            return false;
        }
        let mut hasher = Sha256::new();
        let mut pos = 0u64;
        for (start, part) in &self.parts {
            let end = start + part.len() as u64;
            if end > pos {
                let skip = (pos - start) as usize;
                hasher.update(&part[skip..]);
                pos = end;
            }
        }
        self.sha256 = Some(crate::job::digest::hex(&hasher.finalize()));
        // Only the hash is kept; tests compare hashes.
        self.parts.clear();
        true
    }
}

async fn upload_first(
    State(sim): State<Arc<KonturExternSim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (start, total) = match check_part(&headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(total) = total else {
        return bad_request("the first part must give the content's total size");
    };
    let id = sim.next_id();
    let mut content = Content {
        total,
        ..Default::default()
    };
    sim.counters.parts.fetch_add(1, Ordering::SeqCst);
    if content.add(start, body) {
        sim.counters.contents.fetch_add(1, Ordering::SeqCst);
    }
    sim.lock().contents.insert(id.clone(), content);
    json_answer(StatusCode::CREATED, json!({ "id": id }))
}

async fn upload_next(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, content_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (start, total) = match check_part(&headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut inner = sim.lock();
    let Some(content) = inner.contents.get_mut(&content_id) else {
        return not_found("content");
    };
    if total.is_some_and(|t| t != content.total) {
        return bad_request("Content-Range total differs from the first part's");
    }
    if start + body.len() as u64 > content.total {
        return bad_request("the part ends beyond the content's size");
    }
    let was_complete = content.sha256.is_some();
    sim.counters.parts.fetch_add(1, Ordering::SeqCst);
    let complete = content.add(start, body);
    if complete && !was_complete {
        sim.counters.contents.fetch_add(1, Ordering::SeqCst);
    }
    json_answer(
        StatusCode::OK,
        json!({ "content": { "id": content_id }, "is-completed": complete }),
    )
}

fn parse_body(body: &Bytes) -> Result<Value, Box<Response>> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| Box::new(bad_request("the body is not a JSON object")))
}

fn knobs<T: for<'de> Deserialize<'de> + Default>(builder_data: &Value) -> T {
    builder_data
        .get("_sim")
        .and_then(|k| serde_json::from_value(k.clone()).ok())
        .unwrap_or_default()
}

/// Answers an [`ErrorKnob`].
fn knob_error(knob: &ErrorKnob) -> Response {
    let status = StatusCode::from_u16(knob.status.unwrap_or(500))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(raw) = &knob.raw {
        return (status, [(header::CONTENT_TYPE, "text/html")], raw.clone()).into_response();
    }
    error_doc(
        status,
        knob.id.as_deref().unwrap_or("urn:error:sim"),
        knob.message.as_deref().unwrap_or("simulated error"),
        None,
    )
}

/// A builder as a create or update request describes it.
struct BuilderRequest {
    builder_type: String,
    builder_data: Value,
    knobs: BuilderKnobs,
    request: Value,
}

/// Reads and checks a builder request (the `create_error` knob included).
fn builder_request(sim: &KonturExternSim, body: &Bytes) -> Result<BuilderRequest, Box<Response>> {
    let request = parse_body(body)?;
    let builder_data = request.get("builder-data").cloned().unwrap_or(Value::Null);
    let knobs: BuilderKnobs = knobs(&builder_data);
    if let Some(knob) = &knobs.create_error {
        let mut inner = sim.lock();
        let answered = inner
            .create_errors
            .entry(String::from_utf8_lossy(body).into_owned())
            .or_default();
        if knob.times.is_none_or(|times| *answered < times) {
            *answered += 1;
            return Err(Box::new(knob_error(knob)));
        }
    }
    match request.get("builder-type").and_then(Value::as_str) {
        Some(t) if t.starts_with("urn:drafts-builder-type:") => {}
        _ => {
            return Err(Box::new(bad_request(
                "builder-type must be a urn:drafts-builder-type:… value",
            )));
        }
    }
    for key in ["sender", "payer", "recipient"] {
        if !request.get(key).is_some_and(Value::is_object) {
            return Err(Box::new(bad_request(&format!("{key} is required"))));
        }
    }
    let builder_type = request
        .get("builder-type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok(BuilderRequest {
        builder_type,
        builder_data,
        knobs,
        request,
    })
}

/// The answer for a builder: `DraftsBuilder`.
fn builder_answer(status: StatusCode, id: &str, request: BuilderRequest) -> Response {
    let mut meta = request.request;
    if let Some(map) = meta.as_object_mut() {
        map.remove("builder-data");
    }
    json_answer(
        status,
        json!({ "id": id, "status": "new", "meta": meta, "builder-data": request.builder_data }),
    )
}

async fn create_builder(State(sim): State<Arc<KonturExternSim>>, body: Bytes) -> Response {
    let request = match builder_request(&sim, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let id = sim.next_id();
    sim.lock().builders.insert(
        id.clone(),
        Builder {
            builder_type: request.builder_type.clone(),
            knobs: request.knobs.clone(),
            state: BuilderState::New,
            documents: Vec::new(),
            task: None,
        },
    );
    sim.counters.builders.fetch_add(1, Ordering::SeqCst);
    builder_answer(StatusCode::CREATED, &id, request)
}

/// An id chosen by the caller must be a UUID.
fn caller_id(id: &str, what: &str) -> Result<(), Box<Response>> {
    match uuid::Uuid::parse_str(id) {
        Ok(_) => Ok(()),
        Err(_) => Err(Box::new(bad_request(&format!("{what} id must be a UUID")))),
    }
}

/// `PUT …/builders/{id}`: updates the builder, or creates it under `id`.
async fn put_builder(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Err(r) = caller_id(&builder_id, "drafts builder") {
        return *r;
    }
    let request = match builder_request(&sim, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    // The lock is let go before any await.
    let updated = {
        let mut inner = sim.lock();
        match inner.builders.get_mut(&builder_id) {
            Some(builder) => {
                if let Some(refusal) = locked(builder) {
                    return refusal;
                }
                builder.builder_type = request.builder_type.clone();
                builder.knobs = request.knobs.clone();
                true
            }
            None if sim.config.refuse_put_create => {
                sim.counters.put_refused.fetch_add(1, Ordering::SeqCst);
                return not_found("drafts builder");
            }
            None => {
                inner.builders.insert(
                    builder_id.clone(),
                    Builder {
                        builder_type: request.builder_type.clone(),
                        knobs: request.knobs.clone(),
                        state: BuilderState::New,
                        documents: Vec::new(),
                        task: None,
                    },
                );
                false
            }
        }
    };
    if updated {
        sim.counters.put_updated.fetch_add(1, Ordering::SeqCst);
        return builder_answer(StatusCode::OK, &builder_id, request);
    }
    sim.counters.builders.fetch_add(1, Ordering::SeqCst);
    sim.counters.put_created.fetch_add(1, Ordering::SeqCst);
    sim.after_creation(Created::Builder).await;
    builder_answer(StatusCode::CREATED, &builder_id, request)
}

fn builder_state_name(state: BuilderState) -> &'static str {
    match state {
        BuilderState::New => "new",
        BuilderState::Building => "building",
        BuilderState::Finished => "finished",
    }
}

async fn get_builder(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id)): Path<(String, String)>,
) -> Response {
    let inner = sim.lock();
    match inner.builders.get(&builder_id) {
        Some(b) => json_answer(
            StatusCode::OK,
            json!({ "id": builder_id, "status": builder_state_name(b.state) }),
        ),
        None => not_found("drafts builder"),
    }
}

/// A builder that is no longer `new` refuses changes.
fn locked(builder: &Builder) -> Option<Response> {
    match builder.state {
        BuilderState::New => None,
        BuilderState::Building => Some(concurrent(builder.task.as_deref())),
        BuilderState::Finished => Some(error_doc(
            StatusCode::CONFLICT,
            "urn:error:externapi:draftsBuilderIsBuilt",
            "The drafts builder has been built and can no longer change",
            None,
        )),
    }
}

fn concurrent(task: Option<&str>) -> Response {
    let context = task.map(
        |id| json!({ "concurrent-task": { "id": id, "task-type": "urn:task-type:build-drafts" } }),
    );
    error_doc(
        StatusCode::CONFLICT,
        "urn:error:externapi:concurrentApiTaskActive",
        "There is an active concurrent operation",
        context,
    )
}

async fn create_document(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let id = sim.next_id();
    match upsert_document(&sim, &builder_id, &id, &body, false) {
        Upsert::Created(r) | Upsert::Answered(r) => r,
    }
}

/// `PUT …/documents/{id}`: updates the document, or creates it under `id`.
async fn put_document(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id, document_id)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if let Err(r) = caller_id(&document_id, "document") {
        return *r;
    }
    match upsert_document(&sim, &builder_id, &document_id, &body, true) {
        Upsert::Created(r) => {
            sim.after_creation(Created::Document).await;
            r
        }
        Upsert::Answered(r) => r,
    }
}

/// What a create-or-update did: created something (a `PUT` that did may
/// be held back, see `stall_after_creating`), or answered otherwise.
enum Upsert {
    Created(Response),
    Answered(Response),
}

/// Creates document `id` in the builder, or (`put`) updates it when it
/// exists.
fn upsert_document(
    sim: &KonturExternSim,
    builder_id: &str,
    id: &str,
    body: &Bytes,
    put: bool,
) -> Upsert {
    let request = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return Upsert::Answered(*r),
    };
    let builder_data = request.get("builder-data").cloned().unwrap_or(json!({}));
    let mut inner = sim.lock();
    let Some(builder) = inner.builders.get(builder_id) else {
        return Upsert::Answered(not_found("drafts builder"));
    };
    if let Some(refusal) = locked(builder) {
        return Upsert::Answered(refusal);
    }
    let builder_type = builder.builder_type.clone();
    if let Some(document) = inner.documents.get_mut(id) {
        if !put || document.builder_id != builder_id {
            return Upsert::Answered(bad_request("the document id is taken by another document"));
        }
        document.knobs = knobs(&builder_data);
        document.builder_data = builder_data.clone();
        sim.counters.put_updated.fetch_add(1, Ordering::SeqCst);
        return Upsert::Answered(json_answer(
            StatusCode::OK,
            document_item(id, builder_id, &builder_type, &builder_data),
        ));
    }
    if put && sim.config.refuse_put_create {
        sim.counters.put_refused.fetch_add(1, Ordering::SeqCst);
        return Upsert::Answered(not_found("document"));
    }
    if let Some(builder) = inner.builders.get_mut(builder_id) {
        builder.documents.push(id.to_string());
    }
    inner.documents.insert(
        id.to_string(),
        Document {
            builder_id: builder_id.to_string(),
            knobs: knobs(&builder_data),
            builder_data: builder_data.clone(),
        },
    );
    sim.counters.documents.fetch_add(1, Ordering::SeqCst);
    if put {
        sim.counters.put_created.fetch_add(1, Ordering::SeqCst);
    }
    Upsert::Created(json_answer(
        StatusCode::CREATED,
        document_item(id, builder_id, &builder_type, &builder_data),
    ))
}

/// A document as `DraftsBuilderDocument` shows it.
fn document_item(id: &str, builder_id: &str, builder_type: &str, builder_data: &Value) -> Value {
    json!({
        "id": id,
        "drafts-builder-id": builder_id,
        "meta": { "builder-type": builder_type, "builder-data": builder_data },
    })
}

/// A file as `DraftsBuilderDocumentFile` shows it. The links point at the
/// (deprecated) content and signature of the file itself.
fn file_item(base: &str, account: &str, file: &SimFile) -> Value {
    let href = format!(
        "{base}/v1/{account}/drafts/builders/{}/documents/{}/files/{}",
        file.builder_id, file.document_id, file.id
    );
    json!({
        "id": file.id,
        "drafts-builder-id": file.builder_id,
        "drafts-builder-document-id": file.document_id,
        "content-id": file.content_id,
        "content-link": { "href": format!("{href}/content"), "rel": "content" },
        "signature-content-link": file.signature.as_ref().map(|_| json!({ "href": format!("{href}/signature"), "rel": "signature" })),
        "meta": file.meta,
    })
}

async fn list_documents(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id)): Path<(String, String)>,
) -> Response {
    sim.counters.document_lists.fetch_add(1, Ordering::SeqCst);
    let inner = sim.lock();
    let Some(builder) = inner.builders.get(&builder_id) else {
        return not_found("drafts builder");
    };
    let items: Vec<Value> = builder
        .documents
        .iter()
        .filter_map(|id| {
            let document = inner.documents.get(id)?;
            Some(document_item(
                id,
                &builder_id,
                &builder.builder_type,
                &document.builder_data,
            ))
        })
        .collect();
    json_answer(StatusCode::OK, Value::Array(items))
}

async fn list_files(
    State(sim): State<Arc<KonturExternSim>>,
    Path((account, builder_id, document_id)): Path<(String, String, String)>,
) -> Response {
    sim.counters.file_lists.fetch_add(1, Ordering::SeqCst);
    let base = sim.base_url();
    let inner = sim.lock();
    if !inner.builders.contains_key(&builder_id) {
        return not_found("drafts builder");
    }
    if inner
        .documents
        .get(&document_id)
        .is_none_or(|d| d.builder_id != builder_id)
    {
        return not_found("document");
    }
    let items: Vec<Value> = inner
        .files
        .iter()
        .filter(|f| f.document_id == document_id)
        .map(|f| file_item(&base, &account, f))
        .collect();
    json_answer(StatusCode::OK, Value::Array(items))
}

async fn create_file(
    State(sim): State<Arc<KonturExternSim>>,
    Path((account, builder_id, document_id)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let id = sim.next_id();
    match upsert_file(&sim, &account, &builder_id, &document_id, &id, &body, false) {
        Upsert::Created(r) | Upsert::Answered(r) => r,
    }
}

/// `PUT …/files/{id}`: replaces the file, or creates it under `id`.
async fn put_file(
    State(sim): State<Arc<KonturExternSim>>,
    Path((account, builder_id, document_id, file_id)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    if let Err(r) = caller_id(&file_id, "file") {
        return *r;
    }
    match upsert_file(
        &sim,
        &account,
        &builder_id,
        &document_id,
        &file_id,
        &body,
        true,
    ) {
        Upsert::Created(r) => {
            sim.after_creation(Created::File).await;
            r
        }
        Upsert::Answered(r) => r,
    }
}

/// Creates file `id` in the document, or (`put`) replaces it when it
/// exists.
fn upsert_file(
    sim: &KonturExternSim,
    account: &str,
    builder_id: &str,
    document_id: &str,
    id: &str,
    body: &Bytes,
    put: bool,
) -> Upsert {
    let request = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return Upsert::Answered(*r),
    };
    let Some(content_id) = request.get("content-id").and_then(Value::as_str) else {
        return Upsert::Answered(bad_request("content-id is required"));
    };
    let Some(file_name) = request
        .pointer("/meta/file-name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return Upsert::Answered(bad_request("meta.file-name is required"));
    };
    let signature = match request.get("base64-signature-content") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match base64::engine::general_purpose::STANDARD.decode(s) {
            Ok(bytes) => Some(bytes),
            Err(_) => {
                return Upsert::Answered(bad_request("base64-signature-content is not base64"));
            }
        },
        Some(_) => {
            return Upsert::Answered(bad_request("base64-signature-content must be a string"));
        }
    };
    let base = sim.base_url();
    let mut inner = sim.lock();
    match inner.builders.get(builder_id) {
        None => return Upsert::Answered(not_found("drafts builder")),
        Some(builder) => {
            if let Some(refusal) = locked(builder) {
                return Upsert::Answered(refusal);
            }
        }
    }
    if inner
        .documents
        .get(document_id)
        .is_none_or(|d| d.builder_id != builder_id)
    {
        return Upsert::Answered(not_found("document"));
    }
    let Some(sha256) = inner.contents.get(content_id).map(|c| c.sha256.clone()) else {
        return Upsert::Answered(bad_request(&format!("content {content_id} not found")));
    };
    let Some(sha256) = sha256 else {
        return Upsert::Answered(bad_request(&format!(
            "content {content_id} is not completely uploaded"
        )));
    };
    let file = SimFile {
        id: id.to_string(),
        builder_id: builder_id.to_string(),
        document_id: document_id.to_string(),
        content_id: content_id.to_string(),
        file_name: file_name.to_string(),
        meta: request.get("meta").cloned().unwrap_or(Value::Null),
        content_sha256: sha256,
        signature,
    };
    let answer = file_item(&base, account, &file);
    if let Some(existing) = inner.files.iter_mut().find(|f| f.id == id) {
        if !put || existing.document_id != document_id {
            return Upsert::Answered(bad_request("the file id is taken by another file"));
        }
        *existing = file;
        sim.counters.put_updated.fetch_add(1, Ordering::SeqCst);
        return Upsert::Answered(json_answer(StatusCode::OK, answer));
    }
    if put && sim.config.refuse_put_create {
        sim.counters.put_refused.fetch_add(1, Ordering::SeqCst);
        return Upsert::Answered(not_found("file"));
    }
    inner.files.push(file);
    sim.counters.files.fetch_add(1, Ordering::SeqCst);
    if put {
        sim.counters.put_created.fetch_add(1, Ordering::SeqCst);
    }
    Upsert::Created(json_answer(StatusCode::CREATED, answer))
}

async fn build(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if query.get("deferred").map(String::as_str) != Some("true") {
        // The seed: synchronous builds are gone; deferred=false is a 400.
        return bad_request("deferred must be true; synchronous builds are no longer supported");
    }
    let task_id = sim.next_id();
    let mut inner = sim.lock();
    let Some(builder) = inner.builders.get_mut(&builder_id) else {
        return not_found("drafts builder");
    };
    if builder.state == BuilderState::Building {
        sim.counters.conflicts.fetch_add(1, Ordering::SeqCst);
        return concurrent(builder.task.as_deref());
    }
    if let Some(refusal) = locked(builder) {
        return refusal;
    }
    builder.state = BuilderState::Building;
    builder.task = Some(task_id.clone());
    let busy = builder.knobs.busy || builder.knobs.busy_without_task;
    let named = !builder.knobs.busy_without_task;
    inner.tasks.insert(
        task_id.clone(),
        Task {
            builder_id: builder_id.clone(),
            polls: 0,
            answer: None,
        },
    );
    sim.counters.builds.fetch_add(1, Ordering::SeqCst);
    if busy {
        // Someone else started this build a moment ago.
        sim.counters.conflicts.fetch_add(1, Ordering::SeqCst);
        return concurrent(named.then_some(task_id.as_str()));
    }
    json_answer(
        StatusCode::ACCEPTED,
        json!({ "id": task_id, "task-state": "running", "task-type": "urn:task-type:build-drafts" }),
    )
}

async fn task(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id, task_id)): Path<(String, String, String)>,
) -> Response {
    let n = sim.poll_seq.fetch_add(1, Ordering::SeqCst) + 1;
    sim.counters.polls.fetch_add(1, Ordering::SeqCst);
    if sim.config.fail_poll == Some(n as u32) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/html")],
            Body::from("<html><body>500 Internal Server Error</body></html>"),
        )
            .into_response();
    }
    let mut inner = sim.lock();
    let Some(task) = inner.tasks.get_mut(&task_id) else {
        return not_found("task");
    };
    if task.builder_id != builder_id {
        return not_found("task");
    }
    if let Some(answer) = &task.answer {
        return json_answer(StatusCode::OK, answer.clone());
    }
    task.polls += 1;
    let polls = task.polls;
    let Some(builder) = inner.builders.get(&builder_id) else {
        return not_found("drafts builder");
    };
    if polls <= builder.knobs.polls.unwrap_or(sim.config.build_polls) {
        return json_answer(
            StatusCode::OK,
            json!({ "id": task_id, "task-state": "running", "task-type": "urn:task-type:build-drafts" }),
        );
    }
    let answer = match &builder.knobs.fail {
        Some(fail) => json!({
            "id": task_id,
            "task-state": "failed",
            "task-type": "urn:task-type:build-drafts",
            "error": {
                "id": fail.id.as_deref().unwrap_or("urn:error:externapi:buildFailed"),
                "status-code": fail.status.unwrap_or(500),
                "message": fail.message.as_deref().unwrap_or("The build failed"),
                "trace-id": format!("[T-{:08x}(-)] ", fastrand::u32(..)),
            },
        }),
        None => {
            let mut errors = Vec::new();
            let mut groups: Vec<String> = Vec::new();
            for document_id in &builder.documents {
                let Some(document) = inner.documents.get(document_id) else {
                    continue;
                };
                if let Some(message) = &document.knobs.error {
                    errors.push(json!({ "document-id": document_id, "error-message": message }));
                    for message in &document.knobs.more_errors {
                        errors
                            .push(json!({ "document-id": document_id, "error-message": message }));
                    }
                    continue;
                }
                // One draft per `label-for-grouping` (null is a label too).
                let label = document
                    .builder_data
                    .get("label-for-grouping")
                    .cloned()
                    .unwrap_or(Value::Null)
                    .to_string();
                if !groups.contains(&label) {
                    groups.push(label);
                }
            }
            let drafts: Vec<String> = groups.iter().map(|_| sim.next_id()).collect();
            json!({
                "id": task_id,
                "task-state": "succeed",
                "task-type": "urn:task-type:build-drafts",
                "task-result": {
                    "draft-ids": drafts,
                    "error-drafts-builder-documents": errors,
                },
            })
        }
    };
    if let Some(builder) = inner.builders.get_mut(&builder_id) {
        builder.state = BuilderState::Finished;
    }
    if let Some(task) = inner.tasks.get_mut(&task_id) {
        task.answer = Some(answer.clone());
    }
    json_answer(StatusCode::OK, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_are_read_strictly() {
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_RANGE, v.parse().unwrap());
            h
        };
        assert_eq!(
            content_range(&headers("bytes 0-9/10")),
            Some((0, 9, Some(10)))
        );
        assert_eq!(
            content_range(&headers("bytes 10-19/*")),
            Some((10, 19, None))
        );
        assert_eq!(content_range(&headers("bytes 0-10/10")), None);
        assert_eq!(content_range(&headers("bytes 5-4/10")), None);
        assert_eq!(content_range(&headers("0-4/10")), None);
    }

    #[test]
    fn parts_are_assembled_in_any_order_and_twice_is_harmless() {
        let whole: Vec<u8> = (0..100u8).collect();
        let mut c = Content {
            total: 100,
            ..Default::default()
        };
        assert!(!c.add(50, Bytes::copy_from_slice(&whole[50..])));
        assert!(!c.add(50, Bytes::copy_from_slice(&whole[50..])));
        assert!(c.add(0, Bytes::copy_from_slice(&whole[..60])));
        assert_eq!(
            c.sha256.as_deref(),
            Some(crate::job::digest::hex(&Sha256::digest(&whole)).as_str())
        );
    }
}
