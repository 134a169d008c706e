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

mod drafts;
mod tasks;
mod uploads;
use self::drafts::*;
use self::tasks::*;
use self::uploads::*;

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

#[cfg(test)]
mod tests;
