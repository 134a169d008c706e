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

mod files;
mod handlers;
use self::files::*;
use self::handlers::*;

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

#[cfg(test)]
mod tests;
