//! Kontur.Extern DraftsBuilder (seed `002_7cb98a187ae5719e.txt`): uploads a
//! set of files, has Extern assemble them into drafts, and saves the build
//! result as `build-result.json`.
//!
//! One operation, `drafts-build`. Every call that creates something at
//! Extern is its own step, and what it created (content id, builder id,
//! document id, file id, task id) goes into the job's cursor at once, so a
//! restart never repeats a finished call:
//!
//! 1. **upload** each file to the content service: `POST /v1/{accountId}/contents`
//!    with the first part and `Content-Range: bytes 0-N/SIZE`, the following
//!    parts with `PUT …/contents/{contentId}` (parts of at most 64 MB, streamed
//!    from disk);
//! 2. **builder**: `POST /v1/{accountId}/drafts/builders` → builder id;
//! 3. **documents**: `POST …/builders/{builderId}/documents` per document, then
//!    `POST …/documents/{documentId}/files` per file (content id, base64
//!    signature, meta). When an earlier attempt of the same creation may
//!    have reached Extern (see *Creating things once* below), the builder's
//!    documents (`GET …/builders/{builderId}/documents`) or the document's
//!    files (`GET …/documents/{documentId}/files`) are listed first and a
//!    match is adopted instead of creating a second one;
//! 4. **build**: `POST …/builders/{builderId}/build?deferred=true` → a task.
//!    A 409 `urn:error:externapi:concurrentApiTaskActive` means a build of this
//!    builder is already running — ours, started just before a crash — and
//!    its task (the error's `context.concurrent-task.id`) is adopted instead
//!    of starting another;
//! 5. **poll** `GET …/builders/{builderId}/tasks/{taskId}` until `task-state`
//!    is `succeed` or `failed`. The service gives no hint: the first poll is
//!    5 s after the build, then the scheduler backs off.
//!
//! Authentication is an OpenID Connect bearer token ([`super::oidc`]), kept in
//! memory only and fetched again once when the API answers 401. Files to
//! upload must lie inside `paths.attachments`: request paths are checked
//! syntactically when the request is accepted, and every file is opened
//! through the folder's descriptor with the kernel resolving the path
//! strictly beneath it ([`crate::beneath::Folder::open_beneath`]), so a
//! symbolic link swapped in between a check and the open cannot lead
//! outside. Parts are read from that one open file, never by path again.
//!
//! # Creating things once
//!
//! A creation whose answer is lost — the process dies before the cursor is
//! committed, or the connection is reset or times out after Extern acted —
//! would be repeated by the next attempt. For documents and files this is
//! prevented by looking before creating: a document of the builder with the
//! same `builder-data` (compared as JSON, `null` members ignored), or a file
//! of the document with the same `content-id`, that the cursor does not
//! already record, is taken as the one the interrupted attempt created.
//!
//! The look costs one request, so it is skipped when the creation is known
//! not to have been sent: the provider keeps in memory the creations that
//! became possible through a step of this process and were not attempted
//! since (as OFD does with report names). The normal path therefore sends no
//! list request; a restart, a retried step or a lost answer does.
//!
//! Limits. A builder cannot be looked up (Extern lists no builders), so a
//! crash between creating the builder and committing its id leaves one
//! orphaned, empty builder behind; the job goes on with a new one. Uploads
//! are not looked up either: a repeated first part makes a second, unused
//! content. A request that Extern carries out only after the client gave up
//! *and* after the retry looked (a very slow server) can still be doubled.
//!
//! Where the seed is ambiguous, the reading chosen is noted next to the code.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt as _;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use url::Url;

use super::oidc::{Oidc, OidcConfig};
use super::{
    Provider, ProviderError, Step, StepContext, excerpt, is_transient_status, one_line,
    read_body_limited,
};
use crate::config::keys::{AccountKeys, ConfigError, Secret};
use crate::job::request::{RequestError, hex};
use crate::job::{JobResult, SavedFile};

/// The provider name used in `[accounts.*] provider = "…"`.
pub const PROVIDER: &str = "kontur-extern";

/// The one operation this provider runs.
pub const OPERATION: &str = "drafts-build";

/// The file a finished job saves.
pub const RESULT_FILE: &str = "build-result.json";

/// The largest upload part. The seed's content service takes parts of "at
/// most 64 MB"; read as decimal megabytes, the smaller reading, so a part
/// is never too large whichever unit the service means.
pub const MAX_PART_SIZE: u64 = 64 * 1000 * 1000;

/// Extern serves at most this many concurrent requests per API client.
pub const CLIENT_REQUEST_LIMIT: usize = 20;

/// The wait before the first poll of a build (the issue: "start at 5 s").
const FIRST_POLL: Duration = Duration::from_secs(5);

/// Steps in a row before a job lets the scheduler breathe (a short wait):
/// the scheduler allows at most 16 `Continue`s per claim, and a job with
/// many files or parts needs more.
const BURST: u32 = 8;

/// Largest JSON answer accepted (task results list draft ids; a few KB).
const MAX_ANSWER: usize = 4 << 20;

/// Largest signature file read (detached CMS signatures are a few KB).
const MAX_SIGNATURE: u64 = 16 << 20;

/// A part must move at least this fast, on top of `http.timeout`.
const MIN_UPLOAD_RATE: u64 = 100 * 1024;

/// The error id of a 409 that means "a build is already running".
pub const CONCURRENT_TASK_ERROR: &str = "urn:error:externapi:concurrentApiTaskActive";

/// Entries the set of unsent creations may hold before it is emptied. A
/// forgotten entry only costs a list request, never a duplicate, and one
/// stays behind only when a job stops half-way or a step's commit fails, so
/// the bound is rarely reached; it keeps a daemon that runs for months from
/// growing.
const UNSENT_LIMIT: usize = 10_000;

/// `[accounts.NAME]` for `provider = "kontur-extern"`.
#[derive(Debug, Clone)]
pub struct KonturExternAccount {
    pub base_url: Url,
    /// The Extern account (`accountId` in every path), a UUID.
    pub account_id: String,
    pub oidc: OidcConfig,
    /// Steps of this account's jobs run at once (default 8, at most 20:
    /// Extern's limit of concurrent requests per client).
    pub concurrency: usize,
    /// Upload part size (hidden key `upload_part_size`, for tests; default
    /// and maximum [`MAX_PART_SIZE`]).
    pub upload_part_size: u64,
}

impl KonturExternAccount {
    pub fn from_keys(keys: &mut AccountKeys<'_>) -> Result<Self, ConfigError> {
        let base_url = keys.url("base_url", Some("https://extern-api.kontur.ru"))?;
        let account_id = keys.required("account_id")?;
        let account_id = uuid::Uuid::parse_str(account_id.trim())
            .map_err(|_| {
                ConfigError::invalid(
                    format!("accounts.{}.account_id", keys.account),
                    format!(
                        "expected the Extern account id, a UUID such as \"4bfa1b0a-6f2c-4bd4-8a4e-5f1d5b3c9e10\", found {account_id:?}"
                    ),
                )
            })?
            .hyphenated()
            .to_string();
        let oidc = OidcConfig::from_keys(keys, "extern.api")?;
        let concurrency = super::concurrency_key(keys, 8)?;
        if concurrency > CLIENT_REQUEST_LIMIT {
            return Err(ConfigError::invalid(
                format!("accounts.{}.concurrency", keys.account),
                format!(
                    "expected 1 to {CLIENT_REQUEST_LIMIT} (Kontur.Extern serves at most {CLIENT_REQUEST_LIMIT} concurrent requests per client), found {concurrency}"
                ),
            ));
        }
        let upload_part_size = match keys.integer("upload_part_size")? {
            None => MAX_PART_SIZE,
            Some(n) if (1..=MAX_PART_SIZE).contains(&n) => n,
            Some(n) => {
                return Err(ConfigError::invalid(
                    format!("accounts.{}.upload_part_size", keys.account),
                    format!("expected 1 to {MAX_PART_SIZE} bytes, found {n}"),
                ));
            }
        };
        Ok(KonturExternAccount {
            base_url,
            account_id,
            oidc,
            concurrency,
            upload_part_size,
        })
    }
}

// ---------------------------------------------------------------------------
// The request
// ---------------------------------------------------------------------------

/// A `drafts-build` request, parsed from `params`.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    builder_type: String,
    sender: Value,
    payer: Value,
    recipient: Value,
    builder_data: Value,
    documents: Vec<DocumentPlan>,
}

#[derive(Debug, Clone, PartialEq)]
struct DocumentPlan {
    /// docfetch's own label for messages (never sent).
    name: Option<String>,
    builder_data: Value,
    files: Vec<FilePlan>,
}

#[derive(Debug, Clone, PartialEq)]
struct FilePlan {
    /// Relative to `paths.attachments`.
    path: String,
    signature_path: Option<String>,
    /// `meta.file-name`; the path's last component unless given.
    file_name: String,
    /// `meta.builder-data`.
    builder_data: Option<Value>,
}

impl DocumentPlan {
    /// How a document is named in warnings and `build-result.json`: its
    /// `name`, the builder's `scanned-document-name`, or its first file name.
    fn label(&self) -> String {
        self.name
            .clone()
            .or_else(|| {
                self.builder_data
                    .get("scanned-document-name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .or_else(|| self.files.first().map(|f| f.file_name.clone()))
            .unwrap_or_default()
    }
}

const TOP_KEYS: &[&str] = &[
    "builder-type",
    "sender",
    "payer",
    "recipient",
    "builder-data",
    "documents",
];
const DOCUMENT_KEYS: &[&str] = &["name", "builder-data", "files"];
const FILE_KEYS: &[&str] = &["path", "signature_path", "meta"];
const META_KEYS: &[&str] = &["file-name", "builder-data"];

/// Checks a request before it is accepted: the operation, every required
/// parameter with its type, and the attachment paths' syntax.
pub fn validate_request(operation: &str, params: &Value) -> Result<(), RequestError> {
    parse_plan(operation, params).map(|_| ())
}

fn parse_plan(operation: &str, params: &Value) -> Result<Plan, RequestError> {
    if operation != OPERATION {
        return Err(RequestError::field(
            "operation",
            format!("{operation:?} is not a Kontur.Extern operation; expected {OPERATION:?}"),
        ));
    }
    let top = object(params, "params")?;
    // Unknown keys are refused rather than dropped: a misspelt
    // `signature-path` would otherwise send a file without its signature.
    known_keys(top, TOP_KEYS, "params")?;
    let builder_type = match top.get("builder-type") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(RequestError::field(
                "params.builder-type",
                "must not be empty",
            ));
        }
        Some(_) => {
            return Err(RequestError::field(
                "params.builder-type",
                "expected a string such as \"urn:drafts-builder-type:fns534-inventory\"",
            ));
        }
        None => {
            return Err(RequestError::field(
                "params.builder-type",
                "is required (the DraftsBuilder type, such as \"urn:drafts-builder-type:fns534-inventory\")",
            ));
        }
    };
    let sender = required_object(top, "sender", "params")?;
    let payer = required_object(top, "payer", "params")?;
    let recipient = required_object(top, "recipient", "params")?;
    let builder_data = required_object(top, "builder-data", "params")?;
    let documents = match top.get("documents") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(RequestError::field(
                "params.documents",
                "needs at least one document",
            ));
        }
        Some(_) => {
            return Err(RequestError::field(
                "params.documents",
                "expected an array of documents",
            ));
        }
        None => {
            return Err(RequestError::field(
                "params.documents",
                "is required (an array of documents, each with builder-data and files)",
            ));
        }
    };
    let documents = documents
        .iter()
        .enumerate()
        .map(|(d, document)| parse_document(document, &format!("params.documents[{d}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        builder_type,
        sender,
        payer,
        recipient,
        builder_data,
        documents,
    })
}

fn parse_document(value: &Value, field: &str) -> Result<DocumentPlan, RequestError> {
    let document = object(value, field)?;
    known_keys(document, DOCUMENT_KEYS, field)?;
    let name = optional_string(document, "name", field)?;
    let builder_data = required_object(document, "builder-data", field)?;
    let files = match document.get("files") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(RequestError::field(
                format!("{field}.files"),
                "needs at least one file",
            ));
        }
        Some(_) => {
            return Err(RequestError::field(
                format!("{field}.files"),
                "expected an array of files",
            ));
        }
        None => {
            return Err(RequestError::field(
                format!("{field}.files"),
                "is required (an array of {\"path\": …} relative to paths.attachments)",
            ));
        }
    };
    let files = files
        .iter()
        .enumerate()
        .map(|(f, file)| parse_file(file, &format!("{field}.files[{f}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DocumentPlan {
        name,
        builder_data,
        files,
    })
}

fn parse_file(value: &Value, field: &str) -> Result<FilePlan, RequestError> {
    let file = object(value, field)?;
    known_keys(file, FILE_KEYS, field)?;
    let path = match file.get("path") {
        Some(Value::String(path)) => path.clone(),
        Some(_) => {
            return Err(RequestError::field(
                format!("{field}.path"),
                "expected a string: a file path relative to paths.attachments",
            ));
        }
        None => {
            return Err(RequestError::field(
                format!("{field}.path"),
                "is required (a file path relative to paths.attachments)",
            ));
        }
    };
    check_relative(&path).map_err(|m| RequestError::field(format!("{field}.path"), m))?;
    let signature_path = optional_string(file, "signature_path", field)?;
    if let Some(signature) = &signature_path {
        check_relative(signature)
            .map_err(|m| RequestError::field(format!("{field}.signature_path"), m))?;
    }
    let mut file_name = None;
    let mut builder_data = None;
    if let Some(meta) = file.get("meta") {
        let meta_field = format!("{field}.meta");
        let meta = object(meta, &meta_field)?;
        known_keys(meta, META_KEYS, &meta_field)?;
        file_name = optional_string(meta, "file-name", &meta_field)?;
        if file_name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(RequestError::field(
                format!("{meta_field}.file-name"),
                "must not be empty",
            ));
        }
        builder_data = match meta.get("builder-data") {
            None => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => {
                return Err(RequestError::field(
                    format!("{meta_field}.builder-data"),
                    "expected an object",
                ));
            }
        };
    }
    let file_name = file_name.unwrap_or_else(|| {
        Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.clone())
    });
    Ok(FilePlan {
        path,
        signature_path,
        file_name,
        builder_data,
    })
}

/// The syntactic rule for attachment paths: relative, without `..`, naming
/// something below `paths.attachments`.
fn check_relative(path: &str) -> Result<(), String> {
    if path.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if path.contains('\0') {
        return Err("must not contain a NUL character".into());
    }
    if path.len() > 4096 {
        return Err("is longer than 4096 bytes".into());
    }
    let p = Path::new(path);
    if p.is_absolute() || path.starts_with('/') || path.starts_with('\\') {
        return Err(format!(
            "{path:?} is absolute; expected a path relative to paths.attachments"
        ));
    }
    let mut named = false;
    for component in p.components() {
        match component {
            Component::ParentDir => {
                return Err(format!(
                    "{path:?} contains \"..\"; files must stay inside paths.attachments"
                ));
            }
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{path:?} is absolute; expected a path relative to paths.attachments"
                ));
            }
        }
    }
    if !named {
        return Err(format!("{path:?} names no file"));
    }
    Ok(())
}

fn object<'a>(value: &'a Value, field: &str) -> Result<&'a Map<String, Value>, RequestError> {
    value
        .as_object()
        .ok_or_else(|| RequestError::field(field, "expected a JSON object"))
}

fn known_keys(map: &Map<String, Value>, allowed: &[&str], field: &str) -> Result<(), RequestError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(RequestError::field(
            format!("{field}.{key}"),
            format!("unknown key; expected one of: {}", allowed.join(", ")),
        )),
    }
}

fn required_object(
    map: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Value, RequestError> {
    match map.get(key) {
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(RequestError::field(
            format!("{field}.{key}"),
            "expected an object",
        )),
        None => Err(RequestError::field(
            format!("{field}.{key}"),
            "is required (an object)",
        )),
    }
}

fn optional_string(
    map: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<String>, RequestError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(RequestError::field(
            format!("{field}.{key}"),
            "expected a string",
        )),
    }
}

// ---------------------------------------------------------------------------
// The cursor
// ---------------------------------------------------------------------------

/// What has been done, stored as the job's cursor. Ids only; never a token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cursor {
    /// One entry per requested document, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    documents: Vec<DocumentCursor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    builder_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
    /// Steps in a row without a wait (see [`BURST`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    burst: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct DocumentCursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    document_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    files: Vec<FileCursor>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileCursor {
    /// Known as soon as the first part is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_id: Option<String>,
    /// The file's size when its upload began; a file that changes size
    /// mid-upload is refused rather than uploaded half old, half new.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    size: u64,
    /// Bytes accepted so far.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    uploaded: u64,
    /// The DraftsBuilder file id once attached to its document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_id: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl FileCursor {
    fn uploaded_fully(&self) -> bool {
        self.content_id.is_some() && self.size > 0 && self.uploaded >= self.size
    }
}

impl Cursor {
    /// Reads the stored cursor and shapes it like the request (a new job's
    /// cursor is empty).
    fn load(value: &Value, plan: &Plan) -> Result<Cursor, ProviderError> {
        let mut cursor: Cursor = if value.is_null() {
            Cursor::default()
        } else {
            serde_json::from_value(value.clone()).map_err(|e| {
                ProviderError::permanent(format!("the job's saved progress is unreadable: {e}"))
            })?
        };
        let mismatch = || {
            ProviderError::permanent(
                "the job's saved progress does not match its request (more documents or files than requested)",
            )
        };
        if cursor.documents.len() > plan.documents.len() {
            return Err(mismatch());
        }
        cursor
            .documents
            .resize_with(plan.documents.len(), Default::default);
        for (state, document) in cursor.documents.iter_mut().zip(&plan.documents) {
            if state.files.len() > document.files.len() {
                return Err(mismatch());
            }
            state
                .files
                .resize_with(document.files.len(), Default::default);
        }
        Ok(cursor)
    }

    /// The first file not yet fully uploaded.
    fn next_upload(&self) -> Option<(usize, usize)> {
        self.documents.iter().enumerate().find_map(|(d, doc)| {
            doc.files
                .iter()
                .position(|f| !f.uploaded_fully())
                .map(|f| (d, f))
        })
    }

    /// Whether every file is attached to its document (nothing is read
    /// from disk any more).
    fn all_attached(&self) -> bool {
        self.documents
            .iter()
            .all(|d| d.files.iter().all(|f| f.file_id.is_some()))
    }

    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Progress was made: continue at once, or after [`BURST`] steps in a row
/// wait a moment so the scheduler's guard against endless continues is
/// never hit by a job with many files.
fn progress(mut cursor: Cursor, note: String) -> Step {
    cursor.burst += 1;
    if cursor.burst >= BURST {
        cursor.burst = 0;
        return Step::Wait {
            cursor: cursor.to_value(),
            hint: Some(Duration::from_millis(1)),
            poll: false,
            note,
        };
    }
    Step::Continue(cursor.to_value())
}

// ---------------------------------------------------------------------------
// Extern's answers
// ---------------------------------------------------------------------------

/// An Extern error document: `{"id": "urn:error:…", "status-code": …,
/// "message": …, "trace-id": …, "context": {…}}`.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiError {
    id: String,
    message: String,
    trace_id: String,
    context: Value,
}

impl ApiError {
    /// Reads an error document; `None` when the body is not one.
    // Public (hidden) for the property tests in tests/fuzz.rs.
    #[doc(hidden)]
    pub fn parse(body: &[u8]) -> Option<ApiError> {
        let value: Value = serde_json::from_slice(body).ok()?;
        ApiError::from_value(&value)
    }

    fn from_value(value: &Value) -> Option<ApiError> {
        let object = value.as_object()?;
        let text = |key: &str| {
            object
                .get(key)
                .and_then(Value::as_str)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let error = ApiError {
            id: text("id"),
            message: text("message"),
            // Older answers call it `track-id`.
            trace_id: Some(text("trace-id"))
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| text("track-id")),
            context: object.get("context").cloned().unwrap_or(Value::Null),
        };
        (!error.id.is_empty() || !error.message.is_empty()).then_some(error)
    }

    /// `urn:error:…: message (trace-id …)`, one line: each piece is
    /// flattened and cut, since it goes into the job's error as it is and
    /// a service may send a multi-line or huge message.
    // Public (hidden) for the property tests in tests/fuzz.rs.
    #[doc(hidden)]
    pub fn describe(&self) -> String {
        let id = one_line(&self.id, 300);
        let message = one_line(&self.message, 300);
        let mut text = match (id.is_empty(), message.is_empty()) {
            (false, false) => format!("{id}: {message}"),
            (false, true) => id,
            _ => message,
        };
        if !self.trace_id.is_empty() {
            text.push_str(&format!(" (trace-id {})", one_line(&self.trace_id, 300)));
        }
        text
    }

    /// The running task a `concurrentApiTaskActive` conflict names.
    fn concurrent_task(&self) -> Option<String> {
        self.context
            .pointer("/concurrent-task/id")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
    }
}

/// A finished HTTP exchange: status, `Retry-After`, body.
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

/// Decides what a failed answer means; the one place that does so.
/// 429 pauses the account; 408 and 5xx are retried; any other status
/// (400, 403, 404, 409 …) fails the job with Extern's own message.
fn failure(
    what: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ProviderError {
    let detail = ApiError::parse(body)
        .map(|e| e.describe())
        .unwrap_or_else(|| excerpt(body));
    if status == StatusCode::TOO_MANY_REQUESTS {
        let context = if detail.is_empty() {
            what.to_string()
        } else {
            format!("{what} ({detail})")
        };
        return ProviderError::rate_limited(&context, retry_after);
    }
    let message = if detail.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status}: {detail}")
    };
    if is_transient_status(status) {
        ProviderError::transient(message).with_retry_after(retry_after)
    } else {
        ProviderError::permanent(message)
    }
}

/// A success answer's JSON; anything else is garbage, worth a retry.
fn json_of(body: &[u8], what: &str) -> Result<Value, ProviderError> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            ProviderError::transient(format!(
                "{what}: the answer is not the expected JSON: {}",
                excerpt(body)
            ))
        })
}

/// A non-empty string at `pointer`.
fn id_at(value: &Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn required_id(value: &Value, what: &str) -> Result<String, ProviderError> {
    id_at(value, "/id").ok_or_else(|| {
        ProviderError::transient(format!(
            "{what}: the answer carries no id: {}",
            excerpt(value.to_string().as_bytes())
        ))
    })
}

/// An API task (`ApiTaskResult`): `id`, `task-state`, `task-result`, `error`.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: Option<String>,
    pub state: String,
    pub result: Value,
    pub error: Option<ApiError>,
}

impl Task {
    // Public (hidden) for the property tests in tests/fuzz.rs.
    #[doc(hidden)]
    pub fn parse(value: &Value) -> Task {
        Task {
            id: id_at(value, "/id"),
            state: value
                .get("task-state")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase(),
            result: value.get("task-result").cloned().unwrap_or(Value::Null),
            error: value.get("error").and_then(ApiError::from_value),
        }
    }
}

/// One document Extern could not build, as in `error-drafts-builder-documents`.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentError {
    pub document_id: String,
    pub message: String,
}

/// Reads `draft-ids` and `error-drafts-builder-documents`. The latter is an
/// array of `{document-id, error-message}` in the current API; the older
/// SDK read it as a map of document id to message, so both are accepted.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn read_build_result(result: &Value) -> (Vec<String>, Vec<DocumentError>) {
    let drafts = result
        .get("draft-ids")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let errors = match result.get("error-drafts-builder-documents") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| DocumentError {
                document_id: id_at(item, "/document-id").unwrap_or_default(),
                message: item
                    .get("error-message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            })
            .collect(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(id, message)| DocumentError {
                document_id: id.clone(),
                message: message.as_str().unwrap_or("").to_string(),
            })
            .collect(),
        _ => Vec::new(),
    };
    (drafts, errors)
}

/// The items of a list answer. The SDKs read `GET …/documents` and
/// `GET …/files` as a bare JSON array; an object wrapping the array (under
/// `key`, `items`, or as its only array member) is accepted too, so a
/// paged or enveloped answer is not mistaken for an empty list. `None` when
/// the answer holds no list at all.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn list_items<'a>(value: &'a Value, key: &str) -> Option<&'a [Value]> {
    match value {
        Value::Array(items) => Some(items),
        Value::Object(map) => {
            for name in [key, "items"] {
                if let Some(Value::Array(items)) = map.get(name) {
                    return Some(items);
                }
            }
            let mut arrays = map.values().filter_map(Value::as_array);
            match (arrays.next(), arrays.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `value` with every `null` object member removed, recursively: a service
/// that echoes an optional field as `null` (the SDK models do) still
/// describes the same request as one that leaves it out.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Ids are UUIDs; their case may differ between answers.
fn same_id(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// Among the builder's documents, one with the requested `builder-data`
/// that the cursor does not already hold (`recorded`): the document an
/// interrupted attempt created. Documents are created one at a time and the
/// next only after the previous one's id is committed, so an unrecorded
/// match is a document of ours that no file was attached to yet; if two
/// requested documents have the same `builder-data`, either is as good.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn find_document(
    items: &[Value],
    builder_id: &str,
    builder_data: &Value,
    recorded: &[&str],
) -> Option<String> {
    let wanted = without_nulls(builder_data);
    items.iter().find_map(|item| {
        let id = id_at(item, "/id")?;
        if recorded.iter().any(|r| same_id(r, &id)) {
            return None;
        }
        if let Some(owner) = id_at(item, "/drafts-builder-id")
            && !same_id(&owner, builder_id)
        {
            return None;
        }
        // `meta.builder-data` in the SDK's model; a flat `builder-data` is
        // read too.
        let data = item
            .pointer("/meta/builder-data")
            .or_else(|| item.get("builder-data"))?;
        (without_nulls(data) == wanted).then_some(id)
    })
}

/// Among the document's files, one of `content_id` that the cursor does not
/// already hold: the file an interrupted attempt attached. A content id
/// names one upload, so it cannot match another requested file.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn find_file(
    items: &[Value],
    document_id: &str,
    content_id: &str,
    recorded: &[&str],
) -> Option<String> {
    items.iter().find_map(|item| {
        let id = id_at(item, "/id")?;
        if recorded.iter().any(|r| same_id(r, &id)) {
            return None;
        }
        if let Some(owner) = id_at(item, "/drafts-builder-document-id")
            && !same_id(&owner, document_id)
        {
            return None;
        }
        // `content-id` in the Java SDK's model; the C# model shows only
        // `content-link`, so a link naming the content counts as well.
        let by_id = id_at(item, "/content-id").is_some_and(|c| same_id(&c, content_id));
        let by_link = item
            .pointer("/content-link/href")
            .and_then(Value::as_str)
            .is_some_and(|href| href.split(['/', '?']).any(|s| same_id(s, content_id)));
        (by_id || by_link).then_some(id)
    })
}

/// The key under which the creation of document `d` of a builder is
/// remembered as not sent yet.
fn document_key(builder_id: &str, d: usize) -> String {
    format!("{builder_id}/doc/{d}")
}

/// The key for attaching file `f` to a document.
fn file_key(document_id: &str, f: usize) -> String {
    format!("{document_id}/file/{f}")
}

// ---------------------------------------------------------------------------
// Attachments on disk
// ---------------------------------------------------------------------------

/// An attachment opened for reading beneath `paths.attachments`.
struct Attachment {
    file: Arc<std::fs::File>,
    /// From `fstat` of the opened file.
    size: u64,
}

/// Opens an attachment path strictly beneath `paths.attachments`: links
/// inside the folder are followed, anything leading outside is refused,
/// and only a regular file is accepted (a FIFO does not block the open).
async fn open_attachment(
    root: &Path,
    path: &str,
    field: &str,
) -> Result<Attachment, ProviderError> {
    check_relative(path).map_err(|m| ProviderError::permanent(format!("{field}: {m}")))?;
    /// Where opening went wrong: the configured folder, or the file.
    enum Failed {
        Root(std::io::Error),
        File(std::io::Error),
    }
    let (root, relative) = (root.to_path_buf(), path.to_string());
    let opened = tokio::task::spawn_blocking(move || {
        let folder = crate::beneath::Folder::open_root(&root, false).map_err(Failed::Root)?;
        let file = folder.open_beneath(&relative).map_err(Failed::File)?;
        let size = file.metadata().map_err(Failed::File)?.len();
        Ok(Attachment {
            file: Arc::new(file),
            size,
        })
    })
    .await
    .map_err(|e| ProviderError::transient(format!("{field}: cannot open {path:?}: {e}")))?;
    opened.map_err(|failed| match failed {
        Failed::Root(e) => ProviderError::permanent(format!(
            "{field}: paths.attachments cannot be opened ({e}); {path:?} cannot be read"
        )),
        Failed::File(e) if e.kind() == std::io::ErrorKind::NotFound => ProviderError::permanent(
            format!("{field}: {path:?} does not exist in paths.attachments"),
        ),
        Failed::File(e) => {
            use crate::beneath::RefusedKind;
            match crate::beneath::refused(&e).map(|r| r.kind) {
                Some(RefusedKind::Escapes) => ProviderError::permanent(format!(
                    "{field}: {path:?} leads outside paths.attachments (through a symbolic link); refused"
                )),
                Some(RefusedKind::Link) => ProviderError::permanent(format!(
                    "{field}: {path:?} passes through a symbolic link, which this system cannot follow safely; refused"
                )),
                Some(RefusedKind::WrongType) => ProviderError::permanent(format!(
                    "{field}: {path:?} is not a regular file"
                )),
                None => ProviderError::transient(format!(
                    "{field}: cannot open {path:?} in paths.attachments: {e}"
                )),
            }
        }
    })
}

/// Bytes read from an attachment at a time while a part is uploaded.
const UPLOAD_CHUNK: u64 = 256 * 1024;

/// A part of an opened file as a streamed request body (one part is never
/// held in memory whole). Reads are positional, so two bodies of the same
/// file (a retried request while the first is still being torn down) never
/// disturb each other.
fn part_body(file: &Arc<std::fs::File>, from: u64, len: u64) -> reqwest::Body {
    reqwest::Body::wrap_stream(part_chunks(file, from, len))
}

/// The bytes `from..from + len` of `file`, in chunks read on a blocking thread.
fn part_chunks(
    file: &Arc<std::fs::File>,
    from: u64,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    let state = (file.clone(), from, from + len);
    futures_util::stream::try_unfold(state, |(file, at, end)| async move {
        if at >= end {
            return Ok(None);
        }
        let want = (end - at).min(UPLOAD_CHUNK) as usize;
        let reader = file.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            let got = reader.read_at(&mut buf, at)?;
            buf.truncate(got);
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(std::io::Error::other)??;
        if chunk.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file became shorter while it was being uploaded",
            ));
        }
        let next = at + chunk.len() as u64;
        Ok(Some((bytes::Bytes::from(chunk), (file, next, end))))
    })
}

/// The limit of concurrent requests shared by every account using the
/// same API client (identity server + `client_id`): Extern counts them per
/// client, and two accounts may share one.
fn client_limit(key: &str) -> Arc<Semaphore> {
    static LIMITS: OnceLock<Mutex<HashMap<String, Arc<Semaphore>>>> = OnceLock::new();
    let mut limits = LIMITS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    limits
        .entry(key.to_string())
        .or_insert_with(|| Arc::new(Semaphore::new(CLIENT_REQUEST_LIMIT)))
        .clone()
}

// ---------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------

/// A Kontur.Extern account's provider.
pub struct KonturExtern {
    account: KonturExternAccount,
    oidc: Oidc,
    client_limit: Arc<Semaphore>,
    /// Creations known not to have been sent ([`document_key`],
    /// [`file_key`]): for these the list is not read first. A key goes in
    /// when a step of this process makes the creation possible (the builder
    /// for its first document, a document for its first file and for the
    /// next document, a file for the next file) and comes out just before
    /// the creation is sent, so a send that fails halfway, a retry and a
    /// restart all look in the list. Nothing is created under a builder or
    /// document, and no next document or file, before a committed cursor
    /// names it: so a key stays true if that step's commit fails, and holds
    /// after an adoption too.
    unsent: Mutex<HashSet<String>>,
}

impl KonturExtern {
    pub fn new(name: &str, account: KonturExternAccount) -> Self {
        let key = format!("{}|{}", account.oidc.identity_url, account.oidc.client_id);
        KonturExtern {
            oidc: Oidc::new(name, account.oidc.clone()),
            client_limit: client_limit(&key),
            account,
            unsent: Mutex::new(HashSet::new()),
        }
    }

    fn unsent(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.unsent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that the creation under `key` has not been sent.
    fn mark_unsent(&self, key: String) {
        let mut unsent = self.unsent();
        if unsent.len() >= UNSENT_LIMIT {
            unsent.clear();
        }
        unsent.insert(key);
    }

    /// Whether the creation under `key` is known not to have been sent; it
    /// no longer is once this returns, whatever happens to the send.
    fn take_unsent(&self, key: &str) -> bool {
        self.unsent().remove(key)
    }

    /// `{base}/v1/{accountId}/…segments`.
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.account.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .push("v1")
                .push(&self.account.account_id);
            for segment in segments {
                path.push(segment);
            }
        }
        url
    }

    /// Sends one API request built by `make` with a bearer token, at most
    /// [`CLIENT_REQUEST_LIMIT`] at once per client. A 401 drops the token
    /// and the request is sent once more with a new one; a second 401 fails
    /// the job. `make` is called again for the retry because a streamed body
    /// cannot be sent twice.
    async fn call<F>(
        &self,
        ctx: &StepContext<'_>,
        what: &str,
        make: F,
    ) -> Result<Answer, ProviderError>
    where
        F: Fn(&Secret) -> Result<reqwest::RequestBuilder, ProviderError>,
    {
        let _permit = self.client_limit.acquire().await.map_err(|_| {
            ProviderError::transient(format!("{what}: the request limit was closed"))
        })?;
        let mut refused_once = false;
        loop {
            let token = self.oidc.token(ctx.http).await?;
            let response = make(&token)?
                .send()
                .await
                .map_err(|e| ProviderError::from_reqwest(what, &e))?;
            let status = response.status();
            let retry_after =
                crate::http::retry_after(response.headers(), std::time::SystemTime::now());
            if status == StatusCode::UNAUTHORIZED {
                if !refused_once {
                    // Expired or revoked before our cache thought so.
                    tracing::info!(
                        "{what}: the access token was refused (HTTP 401); logging in again"
                    );
                    refused_once = true;
                    self.oidc.invalidate(&token).await;
                    continue;
                }
                let body = read_body_limited(response, MAX_ANSWER, what)
                    .await
                    .unwrap_or_default();
                let detail = ApiError::parse(&body)
                    .map(|e| format!(": {}", e.describe()))
                    .unwrap_or_default();
                return Err(ProviderError::permanent(format!(
                    "{what}: Kontur.Extern refused a freshly issued access token (HTTP 401{detail}); check that this API client may use account {}",
                    self.account.account_id
                )));
            }
            let body = read_body_limited(response, MAX_ANSWER, what).await?;
            return Ok(Answer {
                status,
                retry_after,
                body,
            });
        }
    }

    /// Sends a JSON request and returns the JSON object a 2xx answers.
    async fn call_json(
        &self,
        ctx: &StepContext<'_>,
        what: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        let answer = self.call_ok(ctx, what, method, url, body).await?;
        json_of(&answer, what)
    }

    /// `GET`s a list (`key` names the array should the answer wrap it).
    async fn list(
        &self,
        ctx: &StepContext<'_>,
        what: &str,
        url: Url,
        key: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let answer = self.call_ok(ctx, what, Method::GET, url, None).await?;
        serde_json::from_slice::<Value>(&answer)
            .ok()
            .as_ref()
            .and_then(|value| list_items(value, key))
            .map(<[Value]>::to_vec)
            .ok_or_else(|| {
                // Garbage is worth a retry; never read as "nothing there",
                // which would create a duplicate.
                ProviderError::transient(format!(
                    "{what}: the answer is not a list: {}",
                    excerpt(&answer)
                ))
            })
    }

    /// Sends a JSON request and returns the body of a 2xx answer.
    async fn call_ok(
        &self,
        ctx: &StepContext<'_>,
        what: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, ProviderError> {
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| {
                ProviderError::permanent(format!("{what}: the request cannot be encoded: {e}"))
            })?),
            None => None,
        };
        let answer = self
            .call(ctx, what, |token| {
                let mut request = ctx
                    .http
                    .request(method.clone(), url.clone())
                    .bearer_auth(token.expose())
                    .header(reqwest::header::ACCEPT, "application/json")
                    .timeout(ctx.timeout);
                request = match &body {
                    Some(b) => request
                        .header(CONTENT_TYPE, "application/json")
                        .body(b.clone()),
                    // A POST without a body still says so, or some proxies
                    // answer 411.
                    None => request.header(CONTENT_LENGTH, 0),
                };
                Ok(request)
            })
            .await?;
        if !answer.status.is_success() {
            return Err(failure(
                what,
                answer.status,
                answer.retry_after,
                &answer.body,
            ));
        }
        Ok(answer.body)
    }

    /// Phase 1: sends the next part of file `d`/`f`.
    async fn upload_part(
        &self,
        ctx: &StepContext<'_>,
        plan: &Plan,
        cursor: &mut Cursor,
        d: usize,
        f: usize,
    ) -> Result<String, ProviderError> {
        let spec = plan
            .documents
            .get(d)
            .and_then(|doc| doc.files.get(f))
            .ok_or_else(|| ProviderError::permanent("the job's saved progress is out of step"))?;
        let state = cursor
            .documents
            .get_mut(d)
            .and_then(|doc| doc.files.get_mut(f))
            .ok_or_else(|| ProviderError::permanent("the job's saved progress is out of step"))?;
        let field = format!("params.documents[{d}].files[{f}].path");
        let attachment = open_attachment(&ctx.attachments_dir, &spec.path, &field).await?;
        let size = attachment.size;
        if size == 0 {
            return Err(ProviderError::permanent(format!(
                "{field}: {:?} is empty; Kontur.Extern takes no empty files",
                spec.path
            )));
        }
        if state.content_id.is_some() && state.size != size {
            return Err(ProviderError::permanent(format!(
                "{field}: {:?} changed size while it was being uploaded ({} bytes, now {size}); submit the job again once the file is final",
                spec.path, state.size
            )));
        }
        let from = if state.content_id.is_some() {
            state.uploaded
        } else {
            0
        };
        let len = self.account.upload_part_size.min(size - from);
        let to = from + len - 1;
        let range = format!("bytes {from}-{to}/{size}");
        let what = format!("uploading {:?} (bytes {from}-{to} of {size})", spec.path);
        // The first part creates the content; the rest are added to it.
        let (method, url) = match &state.content_id {
            None => (Method::POST, self.endpoint(&["contents"])),
            Some(id) => (Method::PUT, self.endpoint(&["contents", id])),
        };
        let timeout = ctx.timeout + Duration::from_secs(len / MIN_UPLOAD_RATE);
        let answer = self
            .call(ctx, &what, |token| {
                let body = part_body(&attachment.file, from, len);
                Ok(ctx
                    .http
                    .request(method.clone(), url.clone())
                    .bearer_auth(token.expose())
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, range.as_str())
                    .header(CONTENT_LENGTH, len)
                    .body(body)
                    .timeout(timeout))
            })
            .await?;
        if !answer.status.is_success() {
            return Err(failure(
                &what,
                answer.status,
                answer.retry_after,
                &answer.body,
            ));
        }
        let value = json_of(&answer.body, &what)?;
        // `POST` answers the content (`{"id": …}`); `PUT` answers
        // `{"content": {"id": …}, "is-completed": …}`.
        let id = id_at(&value, "/id").or_else(|| id_at(&value, "/content/id"));
        let last = to + 1 == size;
        if last && value.get("is-completed") == Some(&Value::Bool(false)) {
            return Err(ProviderError::transient(format!(
                "{what}: the service did not confirm the upload complete after its last part"
            )));
        }
        if state.content_id.is_none() {
            let id = id.ok_or_else(|| {
                ProviderError::transient(format!(
                    "{what}: the answer carries no content id: {}",
                    excerpt(&answer.body)
                ))
            })?;
            state.content_id = Some(id);
            state.size = size;
        }
        state.uploaded = to + 1;
        Ok(if last {
            format!("{:?} uploaded ({size} bytes)", spec.path)
        } else {
            format!("{:?}: {} of {size} bytes uploaded", spec.path, to + 1)
        })
    }

    /// Phase 2: creates the DraftsBuilder.
    async fn create_builder(
        &self,
        ctx: &StepContext<'_>,
        plan: &Plan,
    ) -> Result<String, ProviderError> {
        let what = "creating the drafts builder";
        let body = json!({
            "sender": plan.sender,
            "payer": plan.payer,
            "recipient": plan.recipient,
            "builder-type": plan.builder_type,
            "builder-data": plan.builder_data,
        });
        let value = self
            .call_json(
                ctx,
                what,
                Method::POST,
                self.endpoint(&["drafts", "builders"]),
                Some(&body),
            )
            .await?;
        required_id(&value, what)
    }

    /// Phase 3a: document `d` of the builder, found again when an earlier
    /// attempt may have created it, else created. Returns its id and
    /// whether it was found.
    async fn document(
        &self,
        ctx: &StepContext<'_>,
        builder_id: &str,
        cursor: &Cursor,
        document: &DocumentPlan,
        d: usize,
    ) -> Result<(String, bool), ProviderError> {
        if !self.take_unsent(&document_key(builder_id, d)) {
            let what = format!("looking for document {d} in drafts builder {builder_id}");
            let url = self.endpoint(&["drafts", "builders", builder_id, "documents"]);
            let items = self.list(ctx, &what, url, "documents").await?;
            let recorded: Vec<&str> = cursor
                .documents
                .iter()
                .filter_map(|s| s.document_id.as_deref())
                .collect();
            if let Some(id) = find_document(&items, builder_id, &document.builder_data, &recorded) {
                tracing::info!(builder = builder_id, document = %id, "document {d} was created by an interrupted attempt; using it instead of creating it again");
                return Ok((id, true));
            }
        }
        let id = self.create_document(ctx, builder_id, document, d).await?;
        Ok((id, false))
    }

    /// Phase 3a: creates document `d` in the builder.
    async fn create_document(
        &self,
        ctx: &StepContext<'_>,
        builder_id: &str,
        document: &DocumentPlan,
        d: usize,
    ) -> Result<String, ProviderError> {
        let what = format!("creating document {d} in drafts builder {builder_id}");
        let url = self.endpoint(&["drafts", "builders", builder_id, "documents"]);
        let body = json!({ "builder-data": document.builder_data });
        let value = self
            .call_json(ctx, &what, Method::POST, url, Some(&body))
            .await?;
        required_id(&value, &what)
    }

    /// Phase 3b: file `f` of document `d`, found again when an earlier
    /// attempt may have attached it, else attached. `recorded` are the
    /// document's file ids the cursor holds. Returns the file id and
    /// whether it was found.
    #[allow(clippy::too_many_arguments)]
    async fn file(
        &self,
        ctx: &StepContext<'_>,
        builder_id: &str,
        document_id: &str,
        content_id: &str,
        recorded: &[&str],
        file: &FilePlan,
        d: usize,
        f: usize,
    ) -> Result<(String, bool), ProviderError> {
        if !self.take_unsent(&file_key(document_id, f)) {
            let what = format!("looking for {:?} in document {document_id}", file.path);
            let url = self.endpoint(&[
                "drafts",
                "builders",
                builder_id,
                "documents",
                document_id,
                "files",
            ]);
            let items = self.list(ctx, &what, url, "files").await?;
            if let Some(id) = find_file(&items, document_id, content_id, recorded) {
                tracing::info!(document = document_id, file = %id, "{:?} was attached by an interrupted attempt; using it instead of attaching it again", file.path);
                return Ok((id, true));
            }
        }
        let id = self
            .attach_file(ctx, builder_id, document_id, content_id, file, d, f)
            .await?;
        Ok((id, false))
    }

    /// Phase 3b: attaches an uploaded content, with its signature, to its document.
    #[allow(clippy::too_many_arguments)]
    async fn attach_file(
        &self,
        ctx: &StepContext<'_>,
        builder_id: &str,
        document_id: &str,
        content_id: &str,
        file: &FilePlan,
        d: usize,
        f: usize,
    ) -> Result<String, ProviderError> {
        let what = format!("attaching {:?} to document {document_id}", file.path);
        let mut body = json!({ "content-id": content_id });
        if let Some(signature_path) = &file.signature_path {
            let field = format!("params.documents[{d}].files[{f}].signature_path");
            let signature = read_signature(&ctx.attachments_dir, signature_path, &field).await?;
            body["base64-signature-content"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(signature));
        }
        let mut meta = json!({ "file-name": file.file_name });
        if let Some(builder_data) = &file.builder_data {
            meta["builder-data"] = builder_data.clone();
        }
        body["meta"] = meta;
        let url = self.endpoint(&[
            "drafts",
            "builders",
            builder_id,
            "documents",
            document_id,
            "files",
        ]);
        let value = self
            .call_json(ctx, &what, Method::POST, url, Some(&body))
            .await?;
        required_id(&value, &what)
    }

    /// Phase 4: starts the build, or adopts the one already running.
    /// Returns the task id, whether it was adopted, and whether it is over.
    async fn build(
        &self,
        ctx: &StepContext<'_>,
        builder_id: &str,
    ) -> Result<(String, bool, bool), ProviderError> {
        let what = format!("starting the build of drafts builder {builder_id}");
        let mut url = self.endpoint(&["drafts", "builders", builder_id, "build"]);
        url.query_pairs_mut().append_pair("deferred", "true");
        let answer = self
            .call(ctx, &what, |token| {
                Ok(ctx
                    .http
                    .post(url.clone())
                    .bearer_auth(token.expose())
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(CONTENT_LENGTH, 0)
                    .timeout(ctx.timeout))
            })
            .await?;
        if answer.status.is_success() {
            // The seed promises 202; any 2xx carrying a task will do.
            let value = json_of(&answer.body, &what)?;
            let task = Task::parse(&value);
            let id = task.id.clone().ok_or_else(|| {
                ProviderError::transient(format!(
                    "{what}: the answer carries no task id: {}",
                    excerpt(&answer.body)
                ))
            })?;
            tracing::info!(builder = builder_id, task = %id, "drafts build started");
            let finished = matches!(task.state.as_str(), "succeed" | "failed");
            return Ok((id, false, finished));
        }
        if answer.status == StatusCode::CONFLICT
            && let Some(error) = ApiError::parse(&answer.body)
            && error.id.eq_ignore_ascii_case(CONCURRENT_TASK_ERROR)
        {
            // A build is running already: ours, started before a crash or a
            // lost answer. Follow it rather than start a second one.
            return match error.concurrent_task() {
                Some(id) => {
                    tracing::info!(builder = builder_id, task = %id, "a build was already running; adopting its task");
                    Ok((id, true, false))
                }
                // The error "may" name the task (the docs' wording); without
                // it there is nothing to follow and no second build to start.
                None => Err(ProviderError::permanent(format!(
                    "{what}: a build is already running, but Kontur.Extern did not say which task ({}); its result cannot be followed",
                    error.describe()
                ))),
            };
        }
        Err(failure(
            &what,
            answer.status,
            answer.retry_after,
            &answer.body,
        ))
    }

    /// Phase 5: asks whether the build is over; saves its result when it is.
    async fn poll(
        &self,
        ctx: &StepContext<'_>,
        plan: &Plan,
        cursor: &Cursor,
        builder_id: &str,
        task_id: &str,
    ) -> Result<Step, ProviderError> {
        let what = format!("polling build task {task_id}");
        let url = self.endpoint(&["drafts", "builders", builder_id, "tasks", task_id]);
        let value = self.call_json(ctx, &what, Method::GET, url, None).await?;
        let task = Task::parse(&value);
        match task.state.as_str() {
            "running" => Ok(Step::Wait {
                cursor: cursor.to_value(),
                hint: None,
                poll: true,
                note: format!("build task {task_id} is still running"),
            }),
            "succeed" => {
                self.finish(ctx, plan, cursor, builder_id, task_id, &task.result)
                    .await
            }
            "failed" => {
                let detail = task
                    .error
                    .map(|e| e.describe())
                    .unwrap_or_else(|| "no error was given".into());
                Err(ProviderError::permanent(format!(
                    "the build of drafts builder {builder_id} failed (task {task_id}): {detail}"
                )))
            }
            other => Err(ProviderError::transient(format!(
                "{what}: unexpected task-state {other:?}: {}",
                excerpt(&answer_text(&value))
            ))),
        }
    }

    /// Writes `build-result.json` and decides done, done with warnings, or failed.
    async fn finish(
        &self,
        ctx: &StepContext<'_>,
        plan: &Plan,
        cursor: &Cursor,
        builder_id: &str,
        task_id: &str,
        result: &Value,
    ) -> Result<Step, ProviderError> {
        let (drafts, errors) = read_build_result(result);
        let mut warnings = Vec::new();
        let mut error_entries = Vec::new();
        for error in &errors {
            let index = cursor
                .documents
                .iter()
                .position(|d| d.document_id.as_deref() == Some(error.document_id.as_str()));
            let label = match index {
                Some(i) => {
                    let name = plan.documents.get(i).map(|d| d.label()).unwrap_or_default();
                    if name.is_empty() {
                        format!("documents[{i}]")
                    } else {
                        format!("documents[{i}] ({name})")
                    }
                }
                None => format!("document {}", error.document_id),
            };
            warnings.push(format!("{label}: {}", error.message));
            let mut entry = json!({
                "document-id": error.document_id,
                "error-message": error.message,
            });
            if let Some(i) = index {
                entry["document-index"] = json!(i);
                entry["document-name"] = json!(plan.documents.get(i).map(|d| d.label()));
            }
            error_entries.push(entry);
        }
        let report = json!({
            "builder-id": builder_id,
            "task-id": task_id,
            "task-state": "succeed",
            "draft-ids": drafts,
            "error-drafts-builder-documents": error_entries,
        });
        let saved = save_json(&ctx.output_dir, RESULT_FILE, &report).await?;
        if drafts.is_empty() {
            let reasons = if warnings.is_empty() {
                "Extern named no document in error".to_string()
            } else {
                warnings.join("; ")
            };
            return Err(ProviderError::permanent(format!(
                "the build of drafts builder {builder_id} produced no draft (task {task_id}): {reasons}; details in {RESULT_FILE}"
            )));
        }
        Ok(Step::Done {
            cursor: cursor.to_value(),
            result: JobResult {
                files: vec![saved],
                warnings,
            },
        })
    }
}

impl Provider for KonturExtern {
    const NAME: &'static str = PROVIDER;
    type Account = KonturExternAccount;

    fn read_account(keys: &mut AccountKeys<'_>) -> Result<Self::Account, ConfigError> {
        KonturExternAccount::from_keys(keys)
    }

    fn base_url(account: &Self::Account) -> &url::Url {
        &account.base_url
    }

    fn concurrency(account: &Self::Account) -> usize {
        account.concurrency
    }

    fn validate_request(operation: &str, params: &serde_json::Value) -> Result<(), RequestError> {
        validate_request(operation, params)
    }

    fn for_account(account_name: &str, account: Self::Account) -> Self {
        KonturExtern::new(account_name, account)
    }

    /// Logins performed so far (for tests).
    fn logins(&self) -> u64 {
        self.oidc.logins()
    }

    async fn step(&self, ctx: &StepContext<'_>) -> Result<Step, ProviderError> {
        let plan = parse_plan(&ctx.job.operation, &ctx.job.params)
            .map_err(|e| ProviderError::permanent(format!("the request is not valid: {e}")))?;
        let mut cursor = Cursor::load(&ctx.job.cursor, &plan)?;

        if let (Some(builder_id), Some(task_id)) =
            (cursor.builder_id.clone(), cursor.task_id.clone())
        {
            return self.poll(ctx, &plan, &cursor, &builder_id, &task_id).await;
        }

        // Nothing is uploaded until every attachment (and signature) is
        // known to lie inside paths.attachments.
        if !cursor.all_attached() {
            check_all_attachments(ctx, &plan, &cursor).await?;
        }

        if let Some((d, f)) = cursor.next_upload() {
            let note = self.upload_part(ctx, &plan, &mut cursor, d, f).await?;
            return Ok(progress(cursor, note));
        }

        let builder_id = match cursor.builder_id.clone() {
            Some(id) => id,
            None => {
                let id = self.create_builder(ctx, &plan).await?;
                let note = format!("files uploaded; drafts builder {id} created");
                self.mark_unsent(document_key(&id, 0));
                cursor.builder_id = Some(id);
                return Ok(progress(cursor, note));
            }
        };

        for (d, document) in plan.documents.iter().enumerate() {
            let Some(state) = cursor.documents.get(d) else {
                continue;
            };
            let document_id = match state.document_id.clone() {
                Some(id) => id,
                None => {
                    let (id, found) = self
                        .document(ctx, &builder_id, &cursor, document, d)
                        .await?;
                    let note = if found {
                        format!(
                            "document {d} found again as {id}; an interrupted attempt had created it"
                        )
                    } else {
                        format!("document {d} created as {id}")
                    };
                    if d + 1 < plan.documents.len() {
                        self.mark_unsent(document_key(&builder_id, d + 1));
                    }
                    self.mark_unsent(file_key(&id, 0));
                    if let Some(state) = cursor.documents.get_mut(d) {
                        state.document_id = Some(id);
                    }
                    return Ok(progress(cursor, note));
                }
            };
            for (f, file) in document.files.iter().enumerate() {
                let Some(file_state) = state.files.get(f) else {
                    continue;
                };
                if file_state.file_id.is_some() {
                    continue;
                }
                let Some(content_id) = file_state.content_id.clone() else {
                    return Err(ProviderError::permanent(
                        "the job's saved progress lost a content id",
                    ));
                };
                let recorded: Vec<&str> = state
                    .files
                    .iter()
                    .filter_map(|s| s.file_id.as_deref())
                    .collect();
                let (id, found) = self
                    .file(
                        ctx,
                        &builder_id,
                        &document_id,
                        &content_id,
                        &recorded,
                        file,
                        d,
                        f,
                    )
                    .await?;
                let note = if found {
                    format!(
                        "{:?} found attached to document {d} as file {id}; an interrupted attempt had attached it",
                        file.path
                    )
                } else {
                    format!("{:?} attached to document {d} as file {id}", file.path)
                };
                if f + 1 < document.files.len() {
                    self.mark_unsent(file_key(&document_id, f + 1));
                }
                if let Some(file_state) =
                    cursor.documents.get_mut(d).and_then(|s| s.files.get_mut(f))
                {
                    file_state.file_id = Some(id);
                }
                return Ok(progress(cursor, note));
            }
        }

        let (task_id, adopted, finished) = self.build(ctx, &builder_id).await?;
        cursor.task_id = Some(task_id.clone());
        cursor.burst = 0;
        if finished {
            // Already over: the next step reads the result at once.
            return Ok(Step::Continue(cursor.to_value()));
        }
        let note = if adopted {
            format!(
                "a build of drafts builder {builder_id} was already running; following its task {task_id}"
            )
        } else {
            format!("build of drafts builder {builder_id} started; task {task_id}")
        };
        Ok(Step::Wait {
            cursor: cursor.to_value(),
            hint: Some(FIRST_POLL),
            poll: false,
            note,
        })
    }
}

fn answer_text(value: &Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// Resolves every attachment and signature path still to be read, and
/// refuses the job at once when one leads outside `paths.attachments`: so
/// nothing at all is uploaded for a request with one bad path. Files
/// already uploaded (and signatures already sent) are not looked at again.
async fn check_all_attachments(
    ctx: &StepContext<'_>,
    plan: &Plan,
    cursor: &Cursor,
) -> Result<(), ProviderError> {
    for (d, document) in plan.documents.iter().enumerate() {
        for (f, file) in document.files.iter().enumerate() {
            let state = cursor.documents.get(d).and_then(|doc| doc.files.get(f));
            let field = format!("params.documents[{d}].files[{f}]");
            if !state.is_some_and(FileCursor::uploaded_fully) {
                open_attachment(&ctx.attachments_dir, &file.path, &format!("{field}.path")).await?;
            }
            if let Some(signature) = &file.signature_path
                && state.is_none_or(|s| s.file_id.is_none())
            {
                open_attachment(
                    &ctx.attachments_dir,
                    signature,
                    &format!("{field}.signature_path"),
                )
                .await?;
            }
        }
    }
    Ok(())
}

async fn read_signature(root: &Path, path: &str, field: &str) -> Result<Vec<u8>, ProviderError> {
    let attachment = open_attachment(root, path, field).await?;
    let bytes = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut bytes = Vec::new();
        // One byte more than allowed tells an oversized file from a full one.
        (&*attachment.file)
            .take(MAX_SIGNATURE + 1)
            .read_to_end(&mut bytes)
            .map(|_| bytes)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|read| read)
    .map_err(|e| ProviderError::transient(format!("{field}: cannot read {path:?}: {e}")))?;
    if bytes.len() as u64 > MAX_SIGNATURE {
        return Err(ProviderError::permanent(format!(
            "{field}: {path:?} is larger than {MAX_SIGNATURE} bytes, too large for a signature"
        )));
    }
    if bytes.is_empty() {
        return Err(ProviderError::permanent(format!(
            "{field}: {path:?} is empty"
        )));
    }
    Ok(bytes)
}

/// Saves a JSON document atomically and describes it for the receipt.
async fn save_json(
    dir: &crate::beneath::Subfolder,
    name: &str,
    value: &Value,
) -> Result<SavedFile, ProviderError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| ProviderError::permanent(format!("cannot encode {name}: {e}")))?;
    bytes.push(b'\n');
    crate::download::write_atomic(dir, name, &bytes)
        .await
        .map_err(|e| ProviderError::disk(format!("cannot write {name}: {e}"), &e))?;
    Ok(SavedFile {
        name: name.to_string(),
        size: bytes.len() as u64,
        sha256: hex(&Sha256::digest(&bytes)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::Environment;
    use crate::providers::ErrorClass;

    fn request() -> Value {
        json!({
            "builder-type": "urn:drafts-builder-type:fns534-inventory",
            "sender": {"inn": "7810000000"},
            "payer": {"inn": "7810000000"},
            "recipient": {"ifns-code": "0087"},
            "builder-data": {"id-file-osn": "NO_NDS_0007"},
            "documents": [
                {"builder-data": {"type": "scanned", "scanned-document-name": "Акт.pdf"},
                 "files": [{"path": "a/act.pdf", "signature_path": "a/act.pdf.sig",
                            "meta": {"builder-data": {"scanned-file-order": "1"}}}]},
                {"name": "Счёт", "builder-data": {"type": "scanned"},
                 "files": [{"path": "bill.pdf", "meta": {"file-name": "Счёт.pdf"}}]}
            ]
        })
    }

    fn field_of(result: Result<(), RequestError>) -> String {
        match result {
            Err(RequestError::Field { field, message }) => format!("{field}: {message}"),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_complete_request_is_accepted_and_read_in_full() {
        let plan = parse_plan(OPERATION, &request()).unwrap();
        assert_eq!(plan.documents.len(), 2);
        let first = &plan.documents[0].files[0];
        assert_eq!(
            first.file_name, "act.pdf",
            "defaults to the path's file name"
        );
        assert_eq!(first.signature_path.as_deref(), Some("a/act.pdf.sig"));
        assert_eq!(plan.documents[1].files[0].file_name, "Счёт.pdf");
        assert_eq!(plan.documents[0].label(), "Акт.pdf");
        assert_eq!(plan.documents[1].label(), "Счёт");
    }

    #[test]
    fn requests_are_refused_with_the_field_that_is_wrong() {
        assert!(field_of(validate_request("drafts", &request())).starts_with("operation"));
        let mut r = request();
        r.as_object_mut().unwrap().remove("payer");
        assert!(field_of(validate_request(OPERATION, &r)).starts_with("params.payer: is required"));
        let mut r = request();
        r["sender"] = json!("7810000000");
        assert!(
            field_of(validate_request(OPERATION, &r))
                .starts_with("params.sender: expected an object")
        );
        let mut r = request();
        r["documents"] = json!([]);
        assert!(field_of(validate_request(OPERATION, &r)).contains("at least one document"));
        let mut r = request();
        r["documents"][1]["files"][0]["signature-path"] = json!("x.sig");
        assert!(
            field_of(validate_request(OPERATION, &r))
                .starts_with("params.documents[1].files[0].signature-path: unknown key")
        );
        let mut r = request();
        r["documents"][0]["files"][0]["meta"]["builder-data"] = json!(3);
        assert!(
            field_of(validate_request(OPERATION, &r))
                .starts_with("params.documents[0].files[0].meta.builder-data")
        );
    }

    #[test]
    fn attachment_paths_must_stay_inside_the_attachments_folder() {
        for (path, why) in [
            ("../secret", ".."),
            ("a/../../secret", ".."),
            ("a/../b", ".."),
            ("/etc/passwd", "absolute"),
            ("", "empty"),
            ("./", "names no file"),
        ] {
            let mut r = request();
            r["documents"][1]["files"][0]["path"] = json!(path);
            let text = field_of(validate_request(OPERATION, &r));
            assert!(
                text.starts_with("params.documents[1].files[0].path: ") && text.contains(why),
                "{path:?}: {text}"
            );
        }
        let mut r = request();
        r["documents"][0]["files"][0]["signature_path"] = json!("../key.sig");
        assert!(
            field_of(validate_request(OPERATION, &r))
                .starts_with("params.documents[0].files[0].signature_path")
        );
        assert!(check_relative("./dir/file.pdf").is_ok());
        assert!(
            check_relative("файл..pdf").is_ok(),
            "dots inside a name are fine"
        );
    }

    #[tokio::test]
    async fn a_symlink_out_of_the_attachments_folder_is_refused_at_run_time() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("attachments");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::fs::write(root.join("sub/ok.pdf"), b"ok").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("sub/up")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("parent")).unwrap();
        std::os::unix::fs::symlink("sub/ok.pdf", root.join("in")).unwrap();
        for path in ["out", "sub/up", "parent/secret"] {
            let err = open_attachment(&root, path, "f").await.err().unwrap();
            assert_eq!(err.class, ErrorClass::Permanent, "{path}");
            assert!(err.message.contains("outside"), "{path}: {}", err.message);
        }
        let inside = open_attachment(&root, "in", "f").await.ok().unwrap();
        assert_eq!(inside.size, 2, "links inside are fine");
        assert!(open_attachment(&root, "sub/ok.pdf", "f").await.is_ok());
        let missing = open_attachment(&root, "nope.pdf", "f").await.err().unwrap();
        assert!(
            missing.message.contains("does not exist"),
            "{}",
            missing.message
        );
        let folder = open_attachment(&root, "sub", "f").await.err().unwrap();
        assert!(folder.message.contains("not a regular file"));
    }

    #[tokio::test]
    async fn an_upload_reads_the_file_it_opened_even_when_a_link_is_swapped_in_after() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("attachments");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(dir.path().join("secret"), b"SECRET-SECRET").unwrap();
        std::fs::write(root.join("scan.pdf"), b"%PDF-1.7 body").unwrap();
        let opened = open_attachment(&root, "scan.pdf", "f").await.ok().unwrap();
        // Between the check and the upload, the file is replaced by a link
        // to a secret outside: the parts still come from the opened file.
        std::fs::remove_file(root.join("scan.pdf")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("scan.pdf")).unwrap();
        let mut sent = Vec::new();
        let mut chunks = std::pin::pin!(part_chunks(&opened.file, 0, opened.size));
        while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
            sent.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(sent, b"%PDF-1.7 body");
        let mut tail = Vec::new();
        let mut chunks = std::pin::pin!(part_chunks(&opened.file, 9, 4));
        while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
            tail.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(tail, b"body", "a later part starts where it says");
        let again = open_attachment(&root, "scan.pdf", "f").await.err().unwrap();
        assert!(again.message.contains("outside"), "{}", again.message);
    }

    #[test]
    fn extern_error_documents_are_read_into_the_message() {
        let body = br#"{"id":"urn:error:externapi:concurrentApiTaskActive","status-code":409,
            "track-id":"m4n3","message":"There is an active concurrent operation",
            "trace-id":"[T-587660f5(-)] ",
            "context":{"concurrent-task":{"id":"5b35fae5-e429-43c5-befe-6a4aa3cfceda","task-type":"urn:task-type:send"}}}"#;
        let error = ApiError::parse(body).unwrap();
        assert_eq!(
            error.describe(),
            "urn:error:externapi:concurrentApiTaskActive: There is an active concurrent operation (trace-id [T-587660f5(-)])"
        );
        assert_eq!(
            error.concurrent_task().as_deref(),
            Some("5b35fae5-e429-43c5-befe-6a4aa3cfceda")
        );
        assert!(ApiError::parse(b"<html>502</html>").is_none());
        assert!(ApiError::parse(b"{}").is_none());
    }

    #[test]
    fn each_status_is_classified_in_one_place() {
        let doc = |status: u16| {
            format!(
                r#"{{"id":"urn:error:x","status-code":{status},"message":"Нет доступа","trace-id":"T-1"}}"#
            )
        };
        for status in [400u16, 403, 404, 409, 422] {
            let e = failure(
                "creating",
                StatusCode::from_u16(status).unwrap(),
                None,
                doc(status).as_bytes(),
            );
            assert_eq!(e.class, ErrorClass::Permanent, "{status}");
            assert!(
                e.message.contains("urn:error:x")
                    && e.message.contains("Нет доступа")
                    && e.message.contains("T-1"),
                "{}",
                e.message
            );
        }
        for status in [500u16, 502, 503, 408] {
            let e = failure(
                "creating",
                StatusCode::from_u16(status).unwrap(),
                None,
                b"<html>oops</html>",
            );
            assert_eq!(e.class, ErrorClass::Transient, "{status}");
            assert!(e.message.contains("oops"));
        }
        let e = failure(
            "creating",
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            b"",
        );
        assert_eq!(e.class, ErrorClass::Transient);
        assert_eq!(e.account_cooldown, Some(Duration::from_secs(3)));
        assert!(json_of(b"<html>", "x").is_err_and(|e| e.class == ErrorClass::Transient));
    }

    #[test]
    fn build_results_are_read_in_both_shapes() {
        let (drafts, errors) = read_build_result(&json!({
            "draft-ids": ["d1", "d2"],
            "error-drafts-builder-documents": [{"document-id": "doc1", "error-message": "bad"}]
        }));
        assert_eq!(drafts, vec!["d1", "d2"]);
        assert_eq!(
            errors,
            vec![DocumentError {
                document_id: "doc1".into(),
                message: "bad".into()
            }]
        );
        let (drafts, errors) = read_build_result(&json!({
            "draft-ids": [], "error-drafts-builder-documents": {"doc2": "worse"}
        }));
        assert!(drafts.is_empty());
        assert_eq!(errors[0].document_id, "doc2");
        assert_eq!(read_build_result(&Value::Null), (vec![], vec![]));
    }

    #[test]
    fn document_and_file_lists_are_read_bare_or_wrapped() {
        let documents = json!([
            {"id": " 6F9619FF-8B86-D011-B42D-00CF4FC964FF ", "drafts-builder-id": "b1",
             "meta": {"builder-type": "urn:drafts-builder-type:fns534-inventory",
                      "builder-data": {"type": "scanned", "claim-item-number": "1.01", "label-for-grouping": null}}},
            {"id": "d2", "drafts-builder-id": "b1",
             "meta": {"builder-data": {"type": "scanned", "claim-item-number": "1.01"}}},
            {"id": "d3", "drafts-builder-id": "B1", "builder-data": {"type": "formalized"}},
            {"id": "d4", "drafts-builder-id": "other", "meta": {"builder-data": {"type": "warrant"}}},
            {"meta": {"builder-data": {"type": "warrant"}}}
        ]);
        let wrapped = json!({"documents": documents.clone(), "total-count": 5});
        let enveloped = json!({"data": documents.clone(), "skip": 0});
        for (shape, answer) in [
            ("bare", &documents),
            ("wrapped", &wrapped),
            ("enveloped", &enveloped),
        ] {
            let items = list_items(answer, "documents").unwrap_or_else(|| panic!("{shape}"));
            assert_eq!(items.len(), 5, "{shape}");
            let scanned = json!({"claim-item-number": "1.01", "type": "scanned"});
            assert_eq!(
                find_document(items, "b1", &scanned, &[]).as_deref(),
                Some("6F9619FF-8B86-D011-B42D-00CF4FC964FF"),
                "{shape}: ids are trimmed, nulls are the same as absent"
            );
            assert_eq!(
                find_document(
                    items,
                    "b1",
                    &scanned,
                    &["6f9619ff-8b86-d011-b42d-00cf4fc964ff"]
                )
                .as_deref(),
                Some("d2"),
                "{shape}: a document the cursor holds is never taken again"
            );
            assert_eq!(
                find_document(
                    items,
                    "b1",
                    &scanned,
                    &["6F9619FF-8B86-D011-B42D-00CF4FC964FF", "d2"]
                ),
                None
            );
            assert_eq!(
                find_document(items, "b1", &json!({"type": "formalized"}), &[]).as_deref(),
                Some("d3"),
                "{shape}: a flat builder-data, builder ids in another case"
            );
            assert_eq!(
                find_document(items, "b1", &json!({"type": "warrant"}), &[]),
                None,
                "{shape}: another builder's document or one without an id is not ours"
            );
            assert_eq!(
                find_document(items, "b1", &json!({"type": "scanned"}), &[]),
                None,
                "{shape}: builder-data must be the same, not just overlap"
            );
        }

        let files = json!([
            {"id": "f1", "drafts-builder-id": "b1", "drafts-builder-document-id": "D1",
             "content-id": "C1", "meta": {"file-name": "a.pdf"}},
            {"id": "f2", "drafts-builder-document-id": "d1",
             "content-link": {"href": "https://extern/v1/acc/contents/c2", "rel": "content"}},
            {"id": "f3", "drafts-builder-document-id": "d9", "content-id": "c3"}
        ]);
        let wrapped = json!({"files": files.clone()});
        for (shape, answer) in [("bare", &files), ("wrapped", &wrapped)] {
            let items = list_items(answer, "files").unwrap_or_else(|| panic!("{shape}"));
            assert_eq!(
                find_file(items, "d1", "c1", &[]).as_deref(),
                Some("f1"),
                "{shape}"
            );
            assert_eq!(find_file(items, "d1", "c1", &["F1"]), None, "{shape}");
            assert_eq!(
                find_file(items, "d1", "c2", &[]).as_deref(),
                Some("f2"),
                "{shape}: a content link that names the content"
            );
            assert_eq!(
                find_file(items, "d1", "c3", &[]),
                None,
                "{shape}: another document's file"
            );
        }

        assert_eq!(list_items(&json!([]), "files").map(<[Value]>::len), Some(0));
        for garbage in [
            json!({}),
            json!({"a": [], "b": []}),
            json!("[]"),
            Value::Null,
        ] {
            assert!(list_items(&garbage, "files").is_none(), "{garbage}");
        }
    }

    #[test]
    fn the_set_of_unsent_creations_is_consumed_once_and_stays_bounded() {
        let account = keys(
            "client_id = \"c\"\napi_key = \"k\"\naccount_id = \"6f9619ff-8b86-d011-b42d-00cf4fc964ff\"\n",
        )
        .unwrap();
        let p = KonturExtern::new("ke", account);
        p.mark_unsent(document_key("b1", 0));
        assert!(p.take_unsent("b1/doc/0"));
        assert!(!p.take_unsent("b1/doc/0"), "a second send must look first");
        assert!(!p.take_unsent(&file_key("d1", 0)), "never marked");
        for n in 0..UNSENT_LIMIT {
            p.mark_unsent(file_key("d", n));
        }
        assert_eq!(p.unsent().len(), UNSENT_LIMIT);
        p.mark_unsent(file_key("d", UNSENT_LIMIT));
        assert_eq!(p.unsent().len(), 1, "emptied past the limit");
        assert!(!p.take_unsent(&file_key("d", 0)), "forgotten: costs a look");
        assert!(p.take_unsent(&file_key("d", UNSENT_LIMIT)));
    }

    #[test]
    fn the_cursor_is_shaped_like_the_request_and_survives_a_round_trip() {
        let plan = parse_plan(OPERATION, &request()).unwrap();
        let mut cursor = Cursor::load(&Value::Null, &plan).unwrap();
        assert_eq!(cursor.next_upload(), Some((0, 0)));
        cursor.documents[0].files[0] = FileCursor {
            content_id: Some("c1".into()),
            size: 10,
            uploaded: 10,
            file_id: None,
        };
        assert_eq!(cursor.next_upload(), Some((1, 0)));
        let stored = cursor.to_value();
        assert_eq!(stored["documents"][0]["files"][0]["content-id"], "c1");
        assert_eq!(Cursor::load(&stored, &plan).unwrap(), cursor);
        let mut bigger = stored.clone();
        bigger["documents"].as_array_mut().unwrap().push(json!({}));
        bigger["documents"].as_array_mut().unwrap().push(json!({}));
        assert!(Cursor::load(&bigger, &plan).is_err());
    }

    #[test]
    fn many_steps_in_a_row_pause_before_the_scheduler_guard() {
        let mut cursor = Cursor::default();
        for _ in 0..BURST - 1 {
            match progress(cursor.clone(), "x".into()) {
                Step::Continue(v) => cursor = serde_json::from_value(v).unwrap(),
                other => panic!("{other:?}"),
            }
        }
        match progress(cursor, "x".into()) {
            Step::Wait { cursor, poll, .. } => {
                assert!(!poll);
                assert!(cursor.get("burst").is_none(), "the count starts again");
            }
            other => panic!("{other:?}"),
        }
    }

    fn keys(table: &str) -> Result<KonturExternAccount, ConfigError> {
        let table: toml::Table = toml::from_str(table).unwrap();
        let env = Environment::default();
        let mut keys = AccountKeys::new("ke", table.into_iter().collect(), &env);
        let account = KonturExternAccount::from_keys(&mut keys)?;
        keys.finish()?;
        Ok(account)
    }

    #[test]
    fn accounts_need_a_uuid_and_respect_the_client_limit() {
        let base = "client_id = \"c\"\napi_key = \"k\"\n";
        let account = keys(&format!(
            "{base}account_id = \"6F9619FF-8B86-D011-B42D-00CF4FC964FF\"\n"
        ))
        .unwrap();
        assert_eq!(account.account_id, "6f9619ff-8b86-d011-b42d-00cf4fc964ff");
        assert_eq!(account.concurrency, 8);
        assert_eq!(account.upload_part_size, MAX_PART_SIZE);
        assert_eq!(account.base_url.as_str(), "https://extern-api.kontur.ru/");
        let err = keys(&format!("{base}account_id = \"my-account\"\n")).unwrap_err();
        assert!(err.to_string().contains("account_id"), "{err}");
        let err = keys(&format!(
            "{base}account_id = \"6f9619ff-8b86-d011-b42d-00cf4fc964ff\"\nconcurrency = 21\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("20"), "{err}");
        let err = keys("account_id = \"6f9619ff-8b86-d011-b42d-00cf4fc964ff\"\napi_key = \"k\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("client_id"), "{err}");
    }

    #[test]
    fn endpoints_put_the_account_first() {
        let account = keys(
            "client_id = \"c\"\napi_key = \"k\"\naccount_id = \"6f9619ff-8b86-d011-b42d-00cf4fc964ff\"\nbase_url = \"https://h/extern/\"\n",
        )
        .unwrap();
        let p = KonturExtern::new("ke", account);
        assert_eq!(
            p.endpoint(&["drafts", "builders", "b1", "tasks", "t/1"])
                .as_str(),
            "https://h/extern/v1/6f9619ff-8b86-d011-b42d-00cf4fc964ff/drafts/builders/b1/tasks/t%2F1"
        );
    }
}
