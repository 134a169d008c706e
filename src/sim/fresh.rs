//! A fake 1C:Fresh data transfer service that follows seed
//! `000_eb637a5ecde06dbd.txt` to the letter, both flows:
//!
//! - ibsession: `POST storage/async/{id}` + `IBSession: start` → 200 with an
//!   absolute `Location` (explicit port) and `Set-Cookie: ibsession=…;Path=…;Version=1`;
//!   `PUT upload/{token}/` + cookie + `IBSession: finish` → 201 with the jobs id;
//!   `GET storage/jobs/{id}` + `IBSession: start` → 302, then
//!   `GET download/{token}/` with the cookie → the `general.response` JSON as
//!   an attachment; `GET storage/files/{id}` + `IBSession: start` → 302, then
//!   `GET download/{token}/` with the cookie and `IBSession: finish` → the file.
//! - plain: `POST storage/async/{id}` → jobs id; `GET storage/jobs/{id}`;
//!   `GET storage/files/{id}`.
//!
//! Requests without Basic credentials, hand-offs without their cookie, and a
//! file hand-off without `IBSession: finish` are refused, so a client that
//! strays from the seed fails here too. Behaviour per job can be steered by
//! a `_sim` object in the settings (see [`Knobs`]); the service ignores it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Mutex, Origin};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The path prefix of the seed's example: `https://stage.1cfresh.com/a/bs/10098/hs/dt`.
pub const PREFIX: &str = "/a/bs/10098/hs/dt";

/// The file the seed's example returns for `tax_usn_calculator` (abridged
/// only in whitespace), served as-is.
pub const TAX_USN_CALCULATOR: &str = include_str!("fresh_tax_usn_calculator.json");

/// Data ids this service knows; anything else answers `10404`.
pub const KNOWN_DATA: &[&str] = &[
    "tax_usn_calculator",
    "tax_payment_details",
    "balance_sheet",
    "sales_book",
];

/// Per-job behaviour, from `params._sim` (all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Knobs {
    /// `10202` answers before the job is ready (default: the simulator's setting).
    pub pending: Option<u32>,
    /// File size in bytes (generated content), instead of the catalog file.
    pub size: Option<usize>,
    /// `Content-Disposition` file name.
    pub filename: Option<String>,
    /// Send the name only in `x-file-name` on the hand-off, not in `Content-Disposition`.
    pub name_in_handoff_only: bool,
    /// The order answers this return code (10400, 10404, 10500) instead of a job.
    pub order_code: Option<u32>,
    /// Message with `order_code` or the warning of a `10240` completion.
    pub message: Option<String>,
    /// Complete with `10240` and this warning.
    pub warning: Option<String>,
    /// The first N polls answer HTTP 500.
    pub fail_polls: u32,
    /// The first N file downloads are cut short.
    pub truncate: u32,
}

/// Settings of the whole fake service.
#[derive(Debug, Clone)]
pub struct FreshSimConfig {
    pub username: String,
    pub password: String,
    /// Default `10202` answers before a job is ready.
    pub pending_polls: u32,
    /// Answer 400 to every request carrying `IBSession` (an installation
    /// without hand-offs; 1C's client then retries without the header).
    pub reject_ibsession: bool,
    /// The first N `IBSession: start` requests answer 406 (no session available).
    pub busy_starts: u32,
    /// Time every answer takes (simulated service latency).
    pub latency: std::time::Duration,
    /// The first N requests answer 429 with `Retry-After: retry_after_secs`.
    pub rate_limited_requests: u32,
    pub retry_after_secs: u32,
}

impl Default for FreshSimConfig {
    fn default() -> Self {
        FreshSimConfig {
            username: "api".into(),
            password: "sim-password".into(),
            pending_polls: 2,
            reject_ibsession: false,
            busy_starts: 0,
            latency: std::time::Duration::ZERO,
            rate_limited_requests: 0,
            retry_after_secs: 2,
        }
    }
}

#[derive(Debug, Clone)]
enum Handoff {
    Upload { data_id: String },
    Wait { job_id: String },
    File { file_id: String },
}

#[derive(Debug, Clone)]
struct SimJob {
    data_id: String,
    knobs: Knobs,
    polls: u32,
    file_id: Option<String>,
}

#[derive(Debug, Clone)]
struct SimFile {
    name: String,
    bytes: Bytes,
    knobs: Knobs,
    downloads: u32,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, SimJob>,
    files: HashMap<String, SimFile>,
    handoffs: HashMap<String, (Handoff, String)>,
}

/// Counters a test can read.
#[derive(Debug, Default)]
pub struct FreshCounters {
    /// Jobs created (orders that reached a job id).
    pub orders: AtomicU64,
    /// Status answers given (10202 and final).
    pub polls: AtomicU64,
    /// Complete file bodies served.
    pub downloads: AtomicU64,
    /// Requests refused for missing or wrong credentials.
    pub unauthorized: AtomicU64,
    /// Every request received.
    pub requests: AtomicU64,
    /// Requests being answered right now, and the most seen at once.
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    /// Requests answered 429.
    pub rate_limited: AtomicU64,
}

/// The fake service's state.
pub struct FreshSim {
    config: FreshSimConfig,
    inner: Mutex<Inner>,
    pub counters: FreshCounters,
    /// `http://127.0.0.1:PORT`, set when the server is bound.
    origin: Origin,
    seq: AtomicU64,
    starts: AtomicU64,
}

impl FreshSim {
    pub fn new(config: FreshSimConfig) -> Arc<Self> {
        Arc::new(FreshSim {
            config,
            inner: Mutex::new(Inner::default()),
            counters: FreshCounters::default(),
            origin: Origin::default(),
            seq: AtomicU64::new(1),
            starts: AtomicU64::new(0),
        })
    }

    pub fn set_origin(&self, origin: &str) {
        self.origin.set(origin);
    }

    /// The account `base_url` for this service (the seed's `{{baseURL}}`).
    pub fn base_url(&self) -> String {
        format!("{}{PREFIX}/storage", self.origin.get())
    }

    /// SHA-256 (hex) of every file body generated, by file name.
    pub fn served_files(&self) -> Vec<(String, String)> {
        self.inner
            .lock()
            .files
            .values()
            .map(|f| {
                (
                    f.name.clone(),
                    crate::job::digest::hex(&Sha256::digest(&f.bytes)),
                )
            })
            .collect()
    }

    pub fn orders(&self) -> u64 {
        self.counters.orders.load(Ordering::SeqCst)
    }

    fn next_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let mut h = Sha256::new();
        h.update(n.to_le_bytes());
        h.update(self.origin.get().as_bytes());
        let hex = crate::job::digest::hex(&h.finalize());
        // UUID-shaped, like the seed's ids.
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    fn token(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.seq.fetch_add(1, Ordering::SeqCst).to_le_bytes());
        h.update(b"handoff");
        crate::job::digest::hex(&h.finalize())
    }

    /// Builds the router, mounted at the root.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(&format!("{PREFIX}/storage/async/{{id}}"), post(order))
            .route(&format!("{PREFIX}/upload/{{token}}"), put(upload))
            .route(&format!("{PREFIX}/upload/{{token}}/"), put(upload))
            .route(&format!("{PREFIX}/storage/jobs/{{id}}"), get(job_status))
            .route(&format!("{PREFIX}/storage/files/{{id}}"), get(file))
            .route(&format!("{PREFIX}/download/{{token}}"), get(download))
            .route(&format!("{PREFIX}/download/{{token}}/"), get(download))
            .layer(axum::middleware::from_fn_with_state(self.clone(), track))
            .with_state(self.clone())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.config.username, self.config.password))
        );
        headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == expected.as_bytes())
    }

    /// Opens a hand-off: the seed's `Location` (absolute, explicit port) and cookie.
    fn handoff(&self, kind: Handoff, status: StatusCode, file_name: Option<&str>) -> Response {
        let token = self.token();
        let session = self.next_id();
        let cookie = format!("ibsession={session};Path=/a/bs/10098/;Version=1");
        let location = format!(
            "{}{PREFIX}/{}/{token}",
            self.origin.get(),
            match kind {
                Handoff::Upload { .. } => "upload",
                _ => "download",
            }
        );
        self.inner.lock().handoffs.insert(token, (kind, session));
        let mut response = Response::builder()
            .status(status)
            .header(header::CONTENT_LENGTH, "0")
            .header("Accept-Ranges", "bytes")
            .header(header::LOCATION, location)
            .header(header::SET_COOKIE, cookie);
        if let Some(name) = file_name {
            response = response.header(
                "x-file-name",
                percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                    .to_string(),
            );
        }
        response.body(Body::empty()).unwrap_or_default()
    }

    /// Checks the cookie of a hand-off request and returns what it hands off.
    fn take_handoff(&self, token: &str, headers: &HeaderMap) -> Result<Handoff, Box<Response>> {
        let inner = self.inner.lock();
        let Some((kind, session)) = inner.handoffs.get(token) else {
            return Err(Box::new(plain(
                StatusCode::NOT_FOUND,
                "unknown or expired session",
            )));
        };
        let cookie = headers
            .get(header::COOKIE)
            .and_then(|c| c.to_str().ok())
            .unwrap_or("");
        let sent = cookie
            .split(';')
            .find_map(|part| part.trim().strip_prefix("ibsession="))
            .unwrap_or("");
        if sent != session {
            return Err(Box::new(plain(
                StatusCode::FORBIDDEN,
                "ibsession cookie missing or wrong",
            )));
        }
        Ok(kind.clone())
    }

    fn create_job(&self, data_id: &str, settings: &[u8]) -> Response {
        let settings: serde_json::Value = match serde_json::from_slice(settings) {
            Ok(v) => v,
            Err(e) => {
                return general(
                    StatusCode::OK,
                    10400,
                    &format!("Настройки не являются JSON: {e}"),
                    None,
                );
            }
        };
        if !KNOWN_DATA.contains(&data_id) {
            return general(StatusCode::OK, 10404, "", None);
        }
        let knobs: Knobs = settings
            .get("_sim")
            .and_then(|k| serde_json::from_value(k.clone()).ok())
            .unwrap_or_default();
        if let Some(code) = knobs.order_code {
            let status = if code == 10500 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            return general(status, code, knobs.message.as_deref().unwrap_or(""), None);
        }
        let id = self.next_id();
        self.inner.lock().jobs.insert(
            id.clone(),
            SimJob {
                data_id: data_id.to_string(),
                knobs,
                polls: 0,
                file_id: None,
            },
        );
        self.counters.orders.fetch_add(1, Ordering::SeqCst);
        general(StatusCode::CREATED, 10200, "", Some(("jobs", &id)))
    }

    /// The status answer of a job: `10202` until its pending polls are used.
    fn status(&self, job_id: &str, as_attachment: bool) -> Response {
        let mut inner = self.inner.lock();
        let Some(job) = inner.jobs.get_mut(job_id) else {
            return general(StatusCode::OK, 10404, "", None);
        };
        job.polls += 1;
        self.counters.polls.fetch_add(1, Ordering::SeqCst);
        if job.polls <= job.knobs.fail_polls {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<html><body>500 Internal Server Error</body></html>",
            );
        }
        let pending = job.knobs.pending.unwrap_or(self.config.pending_polls);
        let mut response = if job.polls - job.knobs.fail_polls <= pending {
            general(StatusCode::OK, 10202, "", None)
        } else {
            let file_id = match &job.file_id {
                Some(id) => id.clone(),
                None => {
                    let id = self.next_id();
                    job.file_id = Some(id.clone());
                    let job = job.clone();
                    let file = make_file(&job);
                    inner.files.insert(id.clone(), file);
                    id
                }
            };
            let (code, message) = match &inner.jobs[job_id].knobs.warning {
                Some(w) => (10240, w.clone()),
                None => (10200, String::new()),
            };
            general(StatusCode::OK, code, &message, Some(("files", &file_id)))
        };
        if as_attachment {
            // The seed's "waiting for the result" answer is an attachment.
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{job_id}.json\""))
            {
                headers.insert(header::CONTENT_DISPOSITION, v);
            }
        }
        response
    }

    fn file_response(&self, file_id: &str) -> Response {
        let mut inner = self.inner.lock();
        let Some(file) = inner.files.get_mut(file_id) else {
            return general(StatusCode::OK, 10404, "", None);
        };
        file.downloads += 1;
        let truncate = file.downloads <= file.knobs.truncate;
        let disposition = if file.knobs.name_in_handoff_only {
            None
        } else {
            Some(content_disposition(&file.name))
        };
        let bytes = file.bytes.clone();
        drop(inner);
        let mut builder = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, bytes.len().to_string());
        if let Some(d) = disposition {
            builder = builder.header(header::CONTENT_DISPOSITION, d);
        }
        let body = if truncate {
            // Content-Length promises more than arrives: half the body, then
            // the connection breaks.
            let half = bytes.slice(..bytes.len() / 2);
            let stream = futures_util::stream::iter(vec![
                Ok::<Bytes, std::io::Error>(half),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated cut",
                )),
            ]);
            Body::from_stream(stream)
        } else {
            self.counters.downloads.fetch_add(1, Ordering::SeqCst);
            Body::from(bytes)
        };
        builder.body(body).unwrap_or_default()
    }

    fn file_name_of(&self, file_id: &str) -> Option<(String, bool)> {
        self.inner
            .lock()
            .files
            .get(file_id)
            .map(|f| (f.name.clone(), f.knobs.name_in_handoff_only))
    }
}

fn make_file(job: &SimJob) -> SimFile {
    let name = job
        .knobs
        .filename
        .clone()
        .unwrap_or_else(|| format!("{}.json", job.data_id));
    let bytes = match job.knobs.size {
        Some(size) => generated(size, &job.data_id),
        None if job.data_id == "tax_usn_calculator" => {
            Bytes::from_static(TAX_USN_CALCULATOR.as_bytes())
        }
        None => Bytes::from(format!("{{\"data\":\"{}\",\"rows\":[]}}\n", job.data_id)),
    };
    SimFile {
        name,
        bytes,
        knobs: job.knobs.clone(),
        downloads: 0,
    }
}

/// Deterministic content of any size.
fn generated(size: usize, seed: &str) -> Bytes {
    let mut out = Vec::with_capacity(size);
    let mut block = Sha256::digest(seed.as_bytes());
    while out.len() < size {
        let take = (size - out.len()).min(block.len());
        out.extend_from_slice(&block[..take]);
        block = Sha256::digest(block);
    }
    Bytes::from(out)
}

fn content_disposition(name: &str) -> String {
    if name.is_ascii() {
        format!("attachment; filename=\"{name}\"")
    } else {
        // RFC 6266: an ASCII fallback plus the UTF-8 name.
        let encoded =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        format!("attachment; filename=\"download\"; filename*=UTF-8''{encoded}")
    }
}

/// A `general`/`result` answer as the seed prints it.
fn general(status: StatusCode, code: u32, message: &str, result: Option<(&str, &str)>) -> Response {
    let error = matches!(code, 10400 | 10500);
    let mut body = serde_json::json!({
        "general": {"response": code, "error": error, "message": message}
    });
    if let Some((storage, id)) = result {
        body["result"] = serde_json::json!({"storage": storage, "id": id});
    }
    let text = serde_json::to_string_pretty(&body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=UTF-8")
        .body(Body::from(text))
        .unwrap_or_default()
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

fn ibsession(headers: &HeaderMap) -> Option<String> {
    headers
        .get("IBSession")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
}

type Sim = State<Arc<FreshSim>>;

/// Counts concurrent requests, adds the configured latency, and answers the
/// first `rate_limited_requests` with 429.
async fn track(
    State(sim): Sim,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let now = sim.counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    sim.counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
    if !sim.config.latency.is_zero() {
        tokio::time::sleep(sim.config.latency).await;
    }
    let limited = sim.counters.rate_limited.fetch_add(1, Ordering::SeqCst)
        < u64::from(sim.config.rate_limited_requests);
    let response = if limited {
        Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header(header::RETRY_AFTER, sim.config.retry_after_secs.to_string())
            .body(Body::from("Too Many Requests"))
            .unwrap_or_default()
    } else {
        sim.counters.rate_limited.fetch_sub(1, Ordering::SeqCst);
        next.run(request).await
    };
    sim.counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

fn check(sim: &FreshSim, headers: &HeaderMap) -> Result<(), Box<Response>> {
    sim.counters.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(value) = ibsession(headers) {
        if sim.config.reject_ibsession {
            return Err(Box::new(plain(
                StatusCode::BAD_REQUEST,
                "IBSession is not supported here",
            )));
        }
        if value == "start"
            && sim.starts.fetch_add(1, Ordering::SeqCst) < u64::from(sim.config.busy_starts)
        {
            return Err(Box::new(plain(
                StatusCode::NOT_ACCEPTABLE,
                "no session available",
            )));
        }
    }
    if sim.authorized(headers) {
        Ok(())
    } else {
        sim.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
        Err(Box::new(
            Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(header::WWW_AUTHENTICATE, "Basic realm=\"1C\"")
                .body(Body::empty())
                .unwrap_or_default(),
        ))
    }
}

async fn order(
    State(sim): Sim,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = check(&sim, &headers) {
        return *r;
    }
    match ibsession(&headers).as_deref() {
        Some("start") => sim.handoff(Handoff::Upload { data_id: id }, StatusCode::OK, None),
        Some(_) => plain(StatusCode::BAD_REQUEST, "IBSession must be start here"),
        None => sim.create_job(&id, &body),
    }
}

async fn upload(
    State(sim): Sim,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = check(&sim, &headers) {
        return *r;
    }
    if ibsession(&headers).as_deref() != Some("finish") {
        return plain(StatusCode::BAD_REQUEST, "IBSession: finish expected");
    }
    let handoff = match sim.take_handoff(&token, &headers) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let Handoff::Upload { data_id } = handoff else {
        return plain(StatusCode::NOT_FOUND, "not an upload session");
    };
    sim.inner.lock().handoffs.remove(&token);
    sim.create_job(&data_id, &body)
}

async fn job_status(State(sim): Sim, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = check(&sim, &headers) {
        return *r;
    }
    match ibsession(&headers).as_deref() {
        Some("start") => {
            if !sim.inner.lock().jobs.contains_key(&id) {
                return general(StatusCode::OK, 10404, "", None);
            }
            sim.handoff(Handoff::Wait { job_id: id }, StatusCode::FOUND, None)
        }
        Some(_) => plain(StatusCode::BAD_REQUEST, "IBSession must be start here"),
        None => sim.status(&id, false),
    }
}

async fn file(State(sim): Sim, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = check(&sim, &headers) {
        return *r;
    }
    match ibsession(&headers).as_deref() {
        Some("start") => match sim.file_name_of(&id) {
            None => general(StatusCode::OK, 10404, "", None),
            Some((name, hint)) => sim.handoff(
                Handoff::File { file_id: id },
                StatusCode::FOUND,
                hint.then_some(name.as_str()),
            ),
        },
        Some(_) => plain(StatusCode::BAD_REQUEST, "IBSession must be start here"),
        None => sim.file_response(&id),
    }
}

async fn download(State(sim): Sim, Path(token): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = check(&sim, &headers) {
        return *r;
    }
    let handoff = match sim.take_handoff(&token, &headers) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    match handoff {
        Handoff::Wait { job_id } => {
            // The seed's "waiting for the result" request carries no IBSession header.
            if ibsession(&headers).is_some() {
                return plain(StatusCode::BAD_REQUEST, "no IBSession header expected here");
            }
            sim.inner.lock().handoffs.remove(&token);
            sim.status(&job_id, true)
        }
        Handoff::File { file_id } => {
            if ibsession(&headers).as_deref() != Some("finish") {
                return plain(StatusCode::BAD_REQUEST, "IBSession: finish expected");
            }
            sim.inner.lock().handoffs.remove(&token);
            sim.file_response(&file_id)
        }
        Handoff::Upload { .. } => plain(StatusCode::METHOD_NOT_ALLOWED, "upload sessions take PUT"),
    }
}
