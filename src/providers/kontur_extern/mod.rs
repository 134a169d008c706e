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
//! 2. **builder**: `PUT /v1/{accountId}/drafts/builders/{builderId}` under an
//!    id chosen and committed first ([`create`]);
//! 3. **documents**: `PUT …/builders/{builderId}/documents/{documentId}` per
//!    document, then `PUT …/documents/{documentId}/files/{fileId}` per file
//!    (content id, base64 signature, meta), each under a chosen id. A server
//!    that refuses to create with `PUT` gets `POST` and a list look-up
//!    instead ([`lookup`]);
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
//! is repeated by the next attempt. With `PUT` under a committed id the
//! repeat finds what the lost attempt made ([`create`]). Where a server
//! refuses that, documents and files are looked for before they are
//! created with `POST` ([`lookup`]): a document of the builder with the
//! same `builder-data`, or a file of the document with the same
//! `content-id`, that the cursor does not already record. The look costs
//! one request, so it is skipped when the creation is known not to have
//! been sent (creations made possible by a step of this process and not
//! attempted since, kept in memory as OFD does with report names).
//!
//! Limits. Uploads are not looked up: a repeated first part makes a
//! second, unused content. On a server without `PUT`-create, a builder
//! whose creation was cut off leaves one orphaned, empty builder behind
//! (Extern lists no builders), and a request carried out only after the
//! client gave up *and* after the retry looked can still be doubled.
//!
//! # Layout
//!
//! `request` (the params), `api` (calls, auth, the one classification of
//! answers), `attachments` (files on disk and their upload), `create` and
//! `lookup` (phases 2–3), `drafts` (the build and its result); this file
//! holds the account, the cursor and the step state machine.
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
use crate::job::digest::hex;
use crate::job::request::RequestError;
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

mod api;
mod attachments;
mod create;
mod drafts;
mod lookup;
mod request;
#[cfg(test)]
mod tests;

use self::api::*;
pub use self::api::{ApiError, DocumentError, Task, list_items, read_build_result};
use self::attachments::*;
use self::create::*;
use self::lookup::*;
pub use self::lookup::{find_document, find_file};
pub use self::request::validate_request;
use self::request::*;

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
    /// The builder's id once it exists at Extern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    builder_id: Option<String>,
    /// The id chosen for the builder before it is created with `PUT`; it
    /// may exist at Extern already (see [`create`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chosen_builder_id: Option<String>,
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
    /// The id chosen for the document before it is created with `PUT`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "chosen-document-id"
    )]
    chosen_id: Option<String>,
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
    /// The id chosen for the file before it is created with `PUT`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "chosen-file-id"
    )]
    chosen_id: Option<String>,
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

    /// Where the id of the next thing to create is chosen: the builder's,
    /// else the first document's or file's that does not exist yet, in
    /// the order they are created. `None` once everything exists.
    fn next_choice(&mut self) -> Option<&mut Option<String>> {
        if self.builder_id.is_none() {
            return Some(&mut self.chosen_builder_id);
        }
        for document in &mut self.documents {
            if document.document_id.is_none() {
                return Some(&mut document.chosen_id);
            }
            for file in &mut document.files {
                if file.file_id.is_none() {
                    return Some(&mut file.chosen_id);
                }
            }
        }
        None
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
    /// Set once this account's server refused to create with `PUT` (see
    /// [`create`]): from then on no ids are chosen and things are created
    /// with `POST`.
    put_refused: std::sync::atomic::AtomicBool,
}

impl KonturExtern {
    pub fn new(name: &str, account: KonturExternAccount) -> Self {
        let key = format!("{}|{}", account.oidc.identity_url, account.oidc.client_id);
        KonturExtern {
            oidc: Oidc::new(name, account.oidc.clone()),
            client_limit: client_limit(&key),
            account,
            unsent: Mutex::new(HashSet::new()),
            put_refused: std::sync::atomic::AtomicBool::new(false),
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
    async fn check(
        &self,
        account: &str,
        http: &reqwest::Client,
        timeout: std::time::Duration,
    ) -> Result<(), super::check::CheckFailure> {
        self.check_login(account, http, timeout).await
    }

    fn token_age(&self) -> Option<std::time::Duration> {
        self.oidc.token_age()
    }

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
            // After the last part, the builder's id is chosen at once.
            self.choose_next(&mut cursor);
            return Ok(progress(cursor, note));
        }

        let builder_id = match cursor.builder_id.clone() {
            Some(id) => id,
            None => return self.builder_step(ctx, &plan, cursor).await,
        };

        for d in 0..plan.documents.len() {
            let Some(state) = cursor.documents.get(d) else {
                continue;
            };
            let Some(document_id) = state.document_id.clone() else {
                return self.document_step(ctx, &plan, cursor, &builder_id, d).await;
            };
            if let Some(f) = state.files.iter().position(|s| s.file_id.is_none()) {
                return self
                    .file_step(ctx, &plan, cursor, &builder_id, &document_id, d, f)
                    .await;
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

// ---------------------------------------------------------------------------
// `accounts check`
// ---------------------------------------------------------------------------

impl KonturExtern {
    /// The OpenID token, then the account: `GetDraftsBuilder` of a builder
    /// that cannot exist. The seed's API has no cheaper call under
    /// `{accountId}`; it reads only. Extern answers 404 for the builder when
    /// the account is reachable and 403 when the client may not use it.
    async fn check_login(
        &self,
        account: &str,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(), super::check::CheckFailure> {
        use super::check::{CheckFailure, CheckKind, probe_context, probe_job};
        self.oidc.token(http).await.map_err(CheckFailure::login)?;
        let job = probe_job(account, PROVIDER);
        let ctx = probe_context(&job, http, timeout);
        let what = format!(
            "looking into Kontur.Extern account {}",
            self.account.account_id
        );
        let url = self.endpoint(&["drafts", "builders", "00000000-0000-0000-0000-000000000000"]);
        let answer = self
            .call(&ctx, &what, |token| {
                Ok(ctx
                    .http
                    .get(url.clone())
                    .bearer_auth(token.expose())
                    .timeout(timeout))
            })
            .await
            .map_err(CheckFailure::access)?;
        match answer.status {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            StatusCode::FORBIDDEN => {
                let detail = ApiError::parse(&answer.body)
                    .map(|e| format!(": {}", e.describe()))
                    .unwrap_or_default();
                Err(CheckFailure::new(
                    CheckKind::Access,
                    format!(
                        "{what}: Kontur.Extern denied access to the account (HTTP 403{detail}); \
                         check account_id and that this API client's user may use that account"
                    ),
                ))
            }
            status => Err(CheckFailure::access(failure(
                &what,
                status,
                answer.retry_after,
                &answer.body,
            ))),
        }
    }
}
