//! A fake Kontur.Diadoc API that follows seed `004_698fb3473f9306f8.txt`
//! (`GenerateDocumentProtocol`) to the letter, and Diadoc's public docs for
//! the rest:
//!
//! - `POST /V3/Authenticate?type=password` with
//!   `Authorization: DiadocAuth ddauth_api_client_id=KEY` and a JSON
//!   `{"login","password"}` body → the token as a plain-text body; a wrong
//!   key, login or password → 401. Tokens are base64 (with `/`, `+`, `=`),
//!   like Diadoc's.
//! - `GET /GenerateDocumentProtocol`, `/GeneratePrintForm`,
//!   `/GenerateDocumentZip` (`boxId`, `messageId`, `documentId`, and
//!   `fullDocflow` for the archive): pending answers first — the configured
//!   2xx status with `Retry-After` and an empty body (the archive's 200/202
//!   carry an empty `DocumentZipGenerationResult`) — then the protobuf
//!   `DocumentProtocol` (a small real PDF and a DER-looking signature), the
//!   PDF with a Cyrillic `Content-Disposition` name, or the archive's
//!   `ZipFileNameOnShelf` (JSON when `Accept` asks for it, else protobuf).
//! - `GET /ShelfDownload?nameOnShelf=…` → the archive (a real stored ZIP),
//!   without `Content-Disposition`.
//!
//! Every API call needs `Authorization`: either `DiadocAuth` with a token
//! issued here, or `Bearer` with a token of the fake identity server.
//!
//! Per-document behaviour comes from [`KonturDiadocSimConfig::documents`]
//! (pending answers, their status, `Retry-After`), and these document ids
//! answer an error instead:
//!
//! | documentId | answer |
//! |---|---|
//! | `missing` | 404 |
//! | `forbidden` | 403 |
//! | `unpaid` | 402 (box subscription expired) |
//! | `conflict` | 409 with a text body |
//! | `badrequest` | 400 |
//! | `notallowed` | 405 |
//! | `busy` | 429 with `Retry-After` once, then normal |
//! | `broken` | 500 once, then normal |
//! | `notpdf` | a protocol (and print form) whose PDF is not a PDF |
//! | `expired` | the archive's first `ShelfDownload` is 404 (gone from the shelf) |

use super::{Mutex, Origin};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use prost::Message as _;
use sha2::{Digest, Sha256};

use super::identity::IdentitySim;
use crate::providers::kontur_diadoc::{DocumentProtocol, DocumentZipGenerationResult};

/// Where the fake service is mounted on the simulator's port.
pub const PREFIX: &str = "/diadoc";

/// Document ids that answer an error (see the module table).
pub const MISSING: &str = "missing";
pub const FORBIDDEN: &str = "forbidden";
pub const UNPAID: &str = "unpaid";
pub const CONFLICT: &str = "conflict";
pub const BAD_REQUEST: &str = "badrequest";
pub const NOT_ALLOWED: &str = "notallowed";
pub const BUSY: &str = "busy";
pub const BROKEN: &str = "broken";
pub const NOT_PDF: &str = "notpdf";
pub const EXPIRED: &str = "expired";

/// The 409 text of `GeneratePrintForm` in Diadoc's docs.
pub const CONFLICT_TEXT: &str = "Generating print form for this type of document is not supported";

/// Behaviour of one document (by `documentId`); unset fields take the
/// service-wide setting.
#[derive(Debug, Clone, Default)]
pub struct DocumentKnobs {
    /// Pending answers before it is ready (`u32::MAX`: never).
    pub pending: Option<u32>,
    /// Status of its pending answers (200, 202 or 204).
    pub pending_status: Option<u16>,
    pub retry_after_secs: Option<u32>,
}

/// Settings of the fake service.
#[derive(Debug, Clone)]
pub struct KonturDiadocSimConfig {
    /// The developer key (`ddauth_api_client_id`).
    pub client_id: String,
    pub login: String,
    pub password: String,
    /// Pending answers before a document's protocol, print form or archive is ready.
    pub pending: u32,
    /// Status of a pending answer: 200 (the seed), 202 or 204 (the print
    /// form and archive docs).
    pub pending_status: u16,
    /// `Retry-After` of pending and 429 answers.
    pub retry_after_secs: u32,
    /// Time every answer takes.
    pub latency: Duration,
    /// Per-document behaviour, by `documentId`.
    pub documents: HashMap<String, DocumentKnobs>,
}

impl Default for KonturDiadocSimConfig {
    fn default() -> Self {
        KonturDiadocSimConfig {
            client_id: "sim-ddauth-client-5c1e0f7a2b".into(),
            login: "buh@romashka.example".into(),
            password: "sim-diadoc-password-9f3d".into(),
            pending: 2,
            pending_status: 200,
            retry_after_secs: 1,
            latency: Duration::ZERO,
            documents: HashMap::new(),
        }
    }
}

/// Counters a test can read.
#[derive(Debug, Default)]
pub struct KonturDiadocCounters {
    /// Tokens issued by `V3/Authenticate`.
    pub auths: AtomicU64,
    /// Logins refused (wrong key, login or password).
    pub auth_refused: AtomicU64,
    /// API calls refused for a missing, unknown or expired token.
    pub unauthorized: AtomicU64,
    pub protocol_requests: AtomicU64,
    pub print_form_requests: AtomicU64,
    pub zip_requests: AtomicU64,
    pub shelf_downloads: AtomicU64,
    /// "Not ready yet" answers given.
    pub pending_answers: AtomicU64,
    /// 429 answers given.
    pub rate_limited: AtomicU64,
    /// Every request received.
    pub requests: AtomicU64,
    /// Requests being answered right now, and the most seen at once.
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
}

/// The three generate calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Protocol,
    PrintForm,
    Zip,
}

#[derive(Debug, Default)]
struct DocState {
    polls: u32,
    limited: bool,
    failed: bool,
    shelf_name: Option<String>,
    expired_once: bool,
}

struct ShelfFile {
    bytes: Bytes,
    /// Answer 404 once and forget the name (the `expired` document).
    expire: bool,
    key: (Kind, String),
}

#[derive(Default)]
struct Inner {
    tokens: HashSet<String>,
    issued: Vec<String>,
    documents: HashMap<(Kind, String), DocState>,
    shelf: HashMap<String, ShelfFile>,
}

/// The fake service's state.
pub struct KonturDiadocSim {
    pub config: KonturDiadocSimConfig,
    pub identity: Arc<IdentitySim>,
    pub counters: KonturDiadocCounters,
    inner: Mutex<Inner>,
    origin: Origin,
    seq: AtomicU64,
}

impl KonturDiadocSim {
    pub fn new(config: KonturDiadocSimConfig, identity: Arc<IdentitySim>) -> Arc<Self> {
        Arc::new(KonturDiadocSim {
            config,
            identity,
            counters: KonturDiadocCounters::default(),
            inner: Mutex::new(Inner::default()),
            origin: Origin::default(),
            seq: AtomicU64::new(1),
        })
    }

    pub fn set_origin(&self, origin: &str) {
        self.origin.set(origin);
    }

    /// The account `base_url` for this service.
    pub fn base_url(&self) -> String {
        self.origin.get()
    }

    /// The `[accounts.NAME]` tables a config needs for this service: one
    /// with Diadoc's own login, one with OIDC through the fake identity server.
    pub fn accounts_toml(&self) -> String {
        let c = &self.config;
        let id = &self.identity.config;
        format!(
            "[accounts.kontur-diadoc-sim]\nprovider = \"kontur-diadoc\"\nbase_url = \"{base}\"\nauth = \"diadoc\"\nclient_id = \"{}\"\nlogin = \"{}\"\npassword = \"{}\"\n\n\
             [accounts.kontur-diadoc-oidc-sim]\nprovider = \"kontur-diadoc\"\nbase_url = \"{base}\"\nauth = \"oidc\"\nidentity_url = \"{}\"\nclient_id = \"{}\"\napi_key = \"{}\"\n\n",
            c.client_id,
            c.login,
            c.password,
            self.identity.url(),
            id.client_id,
            id.api_key,
            base = self.base_url(),
        )
    }

    /// Makes every `DiadocAuth` token issued so far invalid (bearer tokens:
    /// [`IdentitySim::expire_all`]).
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Every `DiadocAuth` token issued so far (for tests that look for leaks).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.lock().issued.clone()
    }

    /// The PDF and signature this service serves for `document_id`.
    pub fn protocol_of(document_id: &str) -> DocumentProtocol {
        let print_form = if document_id == NOT_PDF {
            b"<html><body>Print form unavailable</body></html>".to_vec()
        } else {
            pdf(&format!("Transfer protocol of document {document_id}"))
        };
        let signature = signature(&print_form);
        DocumentProtocol {
            print_form,
            signature,
        }
    }

    /// The print form's PDF for `document_id`.
    pub fn print_form_of(document_id: &str) -> Vec<u8> {
        if document_id == NOT_PDF {
            return b"<html><body>Print form unavailable</body></html>".to_vec();
        }
        pdf(&format!("Print form of document {document_id}"))
    }

    /// The archive for `document_id`.
    pub fn archive_of(document_id: &str, full_docflow: bool) -> Vec<u8> {
        let content = format!(
            "<?xml version=\"1.0\" encoding=\"windows-1251\"?><Файл ИдФайл=\"{document_id}\"/>"
        );
        let sig = signature(content.as_bytes());
        let mut entries: Vec<(String, Vec<u8>)> = vec![
            ("1_document.xml".into(), content.into_bytes()),
            ("1_document.xml.sgn".into(), sig),
        ];
        if full_docflow {
            entries.push((
                "2_receipt.xml".into(),
                b"<?xml version=\"1.0\"?><Receipt/>".to_vec(),
            ));
        }
        zip_archive(&entries)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Builds the router, mounted at [`PREFIX`].
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/V3/Authenticate", post(authenticate))
            .route("/GenerateDocumentProtocol", get(generate_protocol))
            .route("/GeneratePrintForm", get(generate_print_form))
            .route("/GenerateDocumentZip", get(generate_zip))
            .route("/ShelfDownload", get(shelf_download))
            .layer(axum::middleware::from_fn_with_state(self.clone(), track))
            .with_state(self.clone())
    }

    fn knobs(&self, document_id: &str) -> (u32, StatusCode, u32) {
        let k = self.config.documents.get(document_id);
        let pending = k.and_then(|k| k.pending).unwrap_or(self.config.pending);
        let status = k
            .and_then(|k| k.pending_status)
            .unwrap_or(self.config.pending_status);
        let status = StatusCode::from_u16(status)
            .ok()
            .filter(StatusCode::is_success)
            .unwrap_or(StatusCode::OK);
        let retry = k
            .and_then(|k| k.retry_after_secs)
            .unwrap_or(self.config.retry_after_secs);
        (pending, status, retry)
    }

    /// Whether `Authorization` carries a token issued here (`DiadocAuth`)
    /// or by the identity server (`Bearer`).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        if value.starts_with("Bearer ") {
            return self.identity.check_bearer(Some(value));
        }
        let Some(params) = diadoc_auth_params(value) else {
            return false;
        };
        params.get("ddauth_api_client_id") == Some(&self.config.client_id)
            && params
                .get("ddauth_token")
                .is_some_and(|t| self.lock().tokens.contains(t))
    }

    fn issue_token(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.seq.fetch_add(1, Ordering::SeqCst).to_le_bytes());
        h.update(fastrand::u64(..).to_le_bytes());
        let mut raw = h.finalize().to_vec();
        raw.extend_from_slice(&Sha256::digest(&raw));
        // 49 bytes: the base64 ends in `==`, as Diadoc's tokens may.
        raw.truncate(49);
        let token = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut inner = self.lock();
        inner.tokens.insert(token.clone());
        inner.issued.push(token.clone());
        token
    }

    /// The common part of the generate calls: params, authorization, the
    /// error documents, and the pending answers. `Ok(document id)`: ready.
    fn generate(
        &self,
        kind: Kind,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
        counter: &AtomicU64,
    ) -> Result<String, Box<Response>> {
        counter.fetch_add(1, Ordering::SeqCst);
        if !self.authorized(headers) {
            self.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
            return Err(refusal(StatusCode::UNAUTHORIZED, "Unauthorized"));
        }
        let param = |k: &str| query.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let (Some(box_id), Some(message_id), Some(document_id)) =
            (param("boxId"), param("messageId"), param("documentId"))
        else {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "boxId, messageId and documentId are required",
            ));
        };
        if kind == Kind::Zip
            && !query
                .get("fullDocflow")
                .is_some_and(|v| v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false"))
        {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "fullDocflow must be true or false",
            ));
        }
        match document_id {
            MISSING => return Err(refusal(StatusCode::NOT_FOUND, "Document not found")),
            FORBIDDEN => {
                return Err(refusal(
                    StatusCode::FORBIDDEN,
                    "Access to the box is denied",
                ));
            }
            UNPAID => {
                return Err(refusal(
                    StatusCode::PAYMENT_REQUIRED,
                    "API subscription of the box has expired",
                ));
            }
            CONFLICT => return Err(refusal(StatusCode::CONFLICT, CONFLICT_TEXT)),
            BAD_REQUEST => return Err(refusal(StatusCode::BAD_REQUEST, "Invalid documentId")),
            NOT_ALLOWED => {
                return Err(refusal(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Method not allowed",
                ));
            }
            _ => {}
        }
        let (pending, pending_status, retry) = self.knobs(document_id);
        let key = (kind, format!("{box_id}\n{message_id}\n{document_id}"));
        let mut inner = self.lock();
        let state = inner.documents.entry(key).or_default();
        if document_id == BUSY && !state.limited {
            state.limited = true;
            self.counters.rate_limited.fetch_add(1, Ordering::SeqCst);
            return Err(Box::new(
                Response::builder()
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .header(header::RETRY_AFTER, retry.to_string())
                    .body(Body::from("Too many requests"))
                    .unwrap_or_default(),
            ));
        }
        if document_id == BROKEN && !state.failed {
            state.failed = true;
            return Err(refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error",
            ));
        }
        if state.polls < pending {
            state.polls += 1;
            self.counters.pending_answers.fetch_add(1, Ordering::SeqCst);
            drop(inner);
            let mut response = Response::builder()
                .status(pending_status)
                .header(header::RETRY_AFTER, retry.to_string());
            // The seed's pending answer has no body; the archive's 200/202
            // carry an empty result, as the SDK reads one from every answer.
            let body = if kind == Kind::Zip && pending_status != StatusCode::NO_CONTENT {
                let (content_type, body) = zip_result(headers, None);
                response = response.header(header::CONTENT_TYPE, content_type);
                body
            } else {
                Vec::new()
            };
            return Err(Box::new(
                response.body(Body::from(body)).unwrap_or_default(),
            ));
        }
        Ok(document_id.to_string())
    }
}

/// Splits `DiadocAuth a=1,b=2` into its parameters (values may hold `=`).
fn diadoc_auth_params(value: &str) -> Option<HashMap<String, String>> {
    let rest = value.strip_prefix("DiadocAuth")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    rest.split(',')
        .map(|part| {
            let (k, v) = part.trim().split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A refusal, boxed: `Response` is large for an error variant.
fn refusal(status: StatusCode, body: &'static str) -> Box<Response> {
    Box::new(text(status, body))
}

/// A `DocumentZipGenerationResult` in the format `Accept` asks for.
fn zip_result(headers: &HeaderMap, name: Option<&str>) -> (&'static str, Vec<u8>) {
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if json {
        let body = serde_json::json!({"ZipFileNameOnShelf": name.unwrap_or("")});
        (
            "application/json; charset=utf-8",
            body.to_string().into_bytes(),
        )
    } else {
        let message = DocumentZipGenerationResult {
            zip_file_name_on_shelf: name.map(str::to_string),
        };
        ("application/x-protobuf", message.encode_to_vec())
    }
}

type Sim = State<Arc<KonturDiadocSim>>;

/// Counts requests and concurrent requests, and adds the configured latency.
async fn track(
    State(sim): Sim,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    sim.counters.requests.fetch_add(1, Ordering::SeqCst);
    let now = sim.counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    sim.counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
    if !sim.config.latency.is_zero() {
        tokio::time::sleep(sim.config.latency).await;
    }
    let response = next.run(request).await;
    sim.counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

#[derive(serde::Deserialize)]
struct LoginPassword {
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
}

async fn authenticate(
    State(sim): Sim,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if query.get("type").map(String::as_str) != Some("password") {
        return text(
            StatusCode::BAD_REQUEST,
            "type must be one of password, sid, certificate, trust",
        );
    }
    let client = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(diadoc_auth_params)
        .and_then(|p| p.get("ddauth_api_client_id").cloned());
    if client.as_deref() != Some(sim.config.client_id.as_str()) {
        sim.counters.auth_refused.fetch_add(1, Ordering::SeqCst);
        return text(
            StatusCode::UNAUTHORIZED,
            "ddauth_api_client_id is missing or not registered",
        );
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let Some(credentials) = json
        .then(|| serde_json::from_slice::<LoginPassword>(&body).ok())
        .flatten()
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected a JSON {\"login\",\"password\"} body",
        );
    };
    if credentials.login != sim.config.login || credentials.password != sim.config.password {
        sim.counters.auth_refused.fetch_add(1, Ordering::SeqCst);
        return text(StatusCode::UNAUTHORIZED, "Invalid login or password");
    }
    let token = sim.issue_token();
    sim.counters.auths.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        token,
    )
        .into_response()
}

async fn generate_protocol(
    State(sim): Sim,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let document_id = match sim.generate(
        Kind::Protocol,
        &headers,
        &query,
        &sim.counters.protocol_requests,
    ) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let body = KonturDiadocSim::protocol_of(&document_id).encode_to_vec();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        body,
    )
        .into_response()
}

async fn generate_print_form(
    State(sim): Sim,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let document_id = match sim.generate(
        Kind::PrintForm,
        &headers,
        &query,
        &sim.counters.print_form_requests,
    ) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let body = KonturDiadocSim::print_form_of(&document_id);
    let name = format!("Печатная форма {document_id}.pdf");
    let encoded = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/pdf")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"print-form.pdf\"; filename*=UTF-8''{encoded}"),
        )
        .body(Body::from(body))
        .unwrap_or_default()
}

async fn generate_zip(
    State(sim): Sim,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let document_id = match sim.generate(Kind::Zip, &headers, &query, &sim.counters.zip_requests) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let full = query
        .get("fullDocflow")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let key = (
        Kind::Zip,
        format!(
            "{}\n{}\n{document_id}",
            query.get("boxId").map(|v| v.trim()).unwrap_or(""),
            query.get("messageId").map(|v| v.trim()).unwrap_or("")
        ),
    );
    let n = sim.seq.fetch_add(1, Ordering::SeqCst);
    let mut inner = sim.lock();
    let state = inner.documents.entry(key.clone()).or_default();
    let name = match &state.shelf_name {
        Some(name) => name.clone(),
        None => {
            let name = format!("DocumentZip/{n:08}/{document_id}.zip");
            state.shelf_name = Some(name.clone());
            let expire = document_id == EXPIRED && !state.expired_once;
            state.expired_once |= expire;
            inner.shelf.insert(
                name.clone(),
                ShelfFile {
                    bytes: Bytes::from(KonturDiadocSim::archive_of(&document_id, full)),
                    expire,
                    key,
                },
            );
            name
        }
    };
    drop(inner);
    let (content_type, body) = zip_result(&headers, Some(&name));
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn shelf_download(
    State(sim): Sim,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    sim.counters.shelf_downloads.fetch_add(1, Ordering::SeqCst);
    if !sim.authorized(&headers) {
        sim.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let Some(name) = query.get("nameOnShelf").filter(|n| !n.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "nameOnShelf is required");
    };
    let mut inner = sim.lock();
    let expire = inner.shelf.get(name).map(|f| f.expire);
    match expire {
        None => text(StatusCode::NOT_FOUND, "File not found on the shelf"),
        Some(true) => {
            if let Some(file) = inner.shelf.remove(name)
                && let Some(state) = inner.documents.get_mut(&file.key)
            {
                state.shelf_name = None;
            }
            text(StatusCode::NOT_FOUND, "File not found on the shelf")
        }
        Some(false) => {
            let bytes = inner
                .shelf
                .get(name)
                .map(|f| f.bytes.clone())
                .unwrap_or_default();
            drop(inner);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/octet-stream")],
                bytes,
            )
                .into_response()
        }
    }
}

/// A small but well-formed one-page PDF (with a correct xref table).
fn pdf(line: &str) -> Vec<u8> {
    // Keep the page text to characters that need no PDF escaping.
    let line: String = line
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stream = format!("BT /F1 12 Tf 72 770 Td ({line}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_string(),
        format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

/// DER-looking detached signature bytes (a SEQUENCE header and a digest).
fn signature(content: &[u8]) -> Vec<u8> {
    let digest = Sha256::digest(content);
    let mut body = vec![
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
    ];
    body.extend_from_slice(&[0x04, 0x20]);
    body.extend_from_slice(&digest);
    body.extend_from_slice(b"sim-signature");
    let mut out = vec![0x30, 0x82];
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// CRC-32 (IEEE), bit by bit: the archives here are tiny.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid ZIP of stored (uncompressed) entries.
fn zip_archive(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    // 1980-01-01 00:00, the DOS epoch.
    const DATE: u16 = 0x0021;
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let size = data.len() as u32;
        let name_len = name.len() as u16;
        // Bit 11: names are UTF-8.
        let flags: u16 = 0x0800;
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&DATE.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);

        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&flags.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&DATE.to_le_bytes());
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&name_len.to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let central_offset = out.len() as u32;
    let central_size = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&central_size.to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diadoc_auth_headers_are_split_into_parameters() {
        let p = diadoc_auth_params("DiadocAuth ddauth_api_client_id=key-1, ddauth_token=ab/c+d==")
            .unwrap();
        assert_eq!(p["ddauth_api_client_id"], "key-1");
        assert_eq!(p["ddauth_token"], "ab/c+d==");
        assert!(diadoc_auth_params("DiadocAuthddauth_api_client_id=x").is_none());
        assert!(diadoc_auth_params("Bearer x").is_none());
        assert!(diadoc_auth_params("DiadocAuth garbage").is_none());
    }

    #[test]
    fn generated_files_are_well_formed() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        let zip = KonturDiadocSim::archive_of("d", true);
        assert!(zip.starts_with(b"PK\x03\x04"));
        assert_eq!(&zip[zip.len() - 22..zip.len() - 18], b"PK\x05\x06");
        let protocol = KonturDiadocSim::protocol_of("d");
        assert!(protocol.print_form.starts_with(b"%PDF-1.4"));
        assert!(protocol.print_form.ends_with(b"%%EOF\n"));
        assert_eq!(&protocol.signature[..2], &[0x30, 0x82]);
        assert!(
            !KonturDiadocSim::protocol_of(NOT_PDF)
                .print_form
                .starts_with(b"%PDF")
        );
    }
}
