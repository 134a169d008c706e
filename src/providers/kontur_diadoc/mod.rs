//! Kontur.Diadoc: transfer protocols, print forms and document archives.
//!
//! The contract is seed `004_698fb3473f9306f8.txt` (`GenerateDocumentProtocol`);
//! the other calls follow Diadoc's public API documentation
//! (`GeneratePrintForm`, `GenerateDocumentZip`, `ShelfDownload`,
//! `V3/Authenticate`, the `DocumentProtocol` and `DocumentZipGenerationResult`
//! messages). Where they disagree, the seed wins.
//!
//! # Operations
//!
//! Every operation takes `params = { boxId, messageId, documentId }` (plus
//! `fullDocflow` for archives) and is *generated on demand*: the same GET is
//! repeated until the answer is ready. Diadoc queues the work on the first
//! call, so no id needs to be remembered between calls.
//!
//! | operation | call | ready answer | saved as |
//! |---|---|---|---|
//! | `document-protocol` | `GET /GenerateDocumentProtocol` | protobuf `DocumentProtocol { PrintForm = 1; Signature = 2 }` | `DOCUMENTID.protocol.pdf`, `DOCUMENTID.protocol.sig` |
//! | `print-form` | `GET /GeneratePrintForm` | the PDF | the `Content-Disposition` name, else `DOCUMENTID.pdf` |
//! | `document-zip` | `GET /GenerateDocumentZip` then `GET /ShelfDownload` | `ZipFileNameOnShelf`, then the archive | the `Content-Disposition` name, else `DOCUMENTID.zip` |
//!
//! "Not ready yet" is a 2xx answer carrying `Retry-After` (the seed: an empty
//! body and a 200-family code), or a 202/204. Such an answer is a poll,
//! never a file; the next poll follows `Retry-After` (the scheduler clamps
//! it), and the job's deadline ends a protocol that never comes.
//!
//! # Authorization
//!
//! `auth = "diadoc"` (the default) is Diadoc's own scheme:
//! `POST /V3/Authenticate?type=password` with
//! `Authorization: DiadocAuth ddauth_api_client_id=KEY` and a JSON
//! `{"login","password"}` body answers the token as plain text; calls then
//! send `Authorization: DiadocAuth ddauth_api_client_id=KEY,ddauth_token=TOKEN`.
//! The token lives about 24 hours without saying so; it is cached for 23.
//! `auth = "oidc"` gets a bearer token from Kontur's identity server
//! ([`super::oidc`]), scope `Diadoc.PublicAPI` unless `scope` says otherwise.
//! Either token is shared by the account's jobs; a 401 drops it and logs in
//! again once, and a second 401 fails the job. Tokens and keys never reach
//! an error text, the cursor or a file.
//!
//! # Readings chosen where the documents are ambiguous
//!
//! - A 2xx with `Retry-After` is pending even when it has a body; a 202 or
//!   204 is pending even without `Retry-After` (polled with backoff then).
//! - A 200 protocol answer with an empty body and no `Retry-After` is read as
//!   pending too, not as an empty protocol.
//! - `GenerateDocumentZip` is asked for JSON (`Accept: application/json`);
//!   a protobuf answer is understood as well. A set `ZipFileNameOnShelf`
//!   means ready, whatever the status code.
//! - Both the protocol's `PrintForm` and a print form must start with `%PDF`
//!   (both are documented as PDF); otherwise the job fails and nothing stays.
//! - A shelf file that is gone (404, it expired after a long pause) is
//!   generated again once.

use std::time::Duration;

use prost::Message as _;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_DISPOSITION, CONTENT_TYPE, HeaderMap, HeaderValue,
};
use reqwest::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use url::Url;

use super::oidc::{Oidc, OidcConfig};
use super::token::TokenCache;
use super::{Provider, ProviderError, Step, StepContext, excerpt, one_line, read_body_limited};
use crate::config::keys::{AccountKeys, ConfigError, Secret};
use crate::job::JobResult;
use crate::job::request::RequestError;

/// The provider name used in `[accounts.*] provider = "…"`.
pub const PROVIDER: &str = "kontur-diadoc";

/// Diadoc's production API.
pub const DEFAULT_BASE_URL: &str = "https://diadoc-api.kontur.ru";

/// The OIDC scope of Diadoc's production API (`Diadoc.PublicAPI.Staging`
/// is the test one); the account's `scope` key overrides it.
pub const DEFAULT_SCOPE: &str = "Diadoc.PublicAPI";

/// The operations a request may name.
pub const OPERATIONS: &[&str] = &[OP_PROTOCOL, OP_PRINT_FORM, OP_ZIP];
const OP_PROTOCOL: &str = "document-protocol";
const OP_PRINT_FORM: &str = "print-form";
const OP_ZIP: &str = "document-zip";

/// The classic token lives about 24 hours and the service does not say
/// when it ends: keep it a little less, and renew on a 401 anyway.
const CLASSIC_TOKEN_LIFETIME: Duration = Duration::from_secs(23 * 3600);
const CLASSIC_TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// Largest small answer read (tokens, archive status, error texts).
const MAX_ANSWER: usize = 1 << 20;

/// Largest protocol answer held in memory: a PDF page or two and a
/// signature, so far below this.
const MAX_PROTOCOL: u64 = 64 << 20;

/// Longest id accepted in params (Diadoc's ids are 36-character GUIDs).
const MAX_ID_LEN: usize = 100;

/// Keys that belong to `auth = "oidc"`; given to a classic account they are
/// a mistake worth naming.
const OIDC_ONLY_KEYS: &[&str] = &["identity_url", "api_key", "grant", "refresh_token", "scope"];

/// How the account authorizes.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Diadoc's own scheme (`auth = "diadoc"`): the developer key
    /// (`ddauth_api_client_id`) and the user's login and password.
    Diadoc {
        client_id: Secret,
        login: String,
        password: Secret,
    },
    /// Kontur's identity server (`auth = "oidc"`).
    Oidc(OidcConfig),
}

/// `[accounts.NAME]` for `provider = "kontur-diadoc"`.
#[derive(Debug, Clone)]
pub struct KonturDiadocAccount {
    pub base_url: url::Url,
    pub auth: Auth,
    /// Steps of this account's jobs run at once (default 4).
    pub concurrency: usize,
}

impl KonturDiadocAccount {
    /// Reads `base_url`, `auth` and the chosen scheme's keys:
    /// `client_id`, `login`, `password` for `auth = "diadoc"` (each secret
    /// may be given as `KEY_file`/`KEY_env` too); the [`OidcConfig`] keys for
    /// `auth = "oidc"`.
    pub fn from_keys(keys: &mut AccountKeys<'_>) -> Result<Self, ConfigError> {
        let base_url = keys.url("base_url", Some(DEFAULT_BASE_URL))?;
        let auth = match keys.string("auth")?.as_deref() {
            None | Some("diadoc") => {
                for key in OIDC_ONLY_KEYS {
                    if keys.string(key)?.is_some() {
                        return Err(ConfigError::invalid(
                            format!("accounts.{}.{key}", keys.account),
                            "belongs to auth = \"oidc\"; this account uses Diadoc's own login \
                             (auth = \"diadoc\", the default): set auth = \"oidc\" or remove the key",
                        ));
                    }
                }
                let client_id = keys.required_secret("client_id")?;
                if !is_header_token(client_id.expose()) {
                    // Never echo the value: it is a secret.
                    return Err(ConfigError::invalid(
                        format!("accounts.{}.client_id", keys.account),
                        "the developer key (sent as ddauth_api_client_id) may hold only visible \
                         ASCII characters, without spaces or commas",
                    ));
                }
                let login = keys.required("login")?;
                let password = keys.required_secret("password")?;
                Auth::Diadoc {
                    client_id,
                    login,
                    password,
                }
            }
            Some("oidc") => Auth::Oidc(OidcConfig::from_keys(keys, DEFAULT_SCOPE)?),
            Some(other) => {
                return Err(ConfigError::invalid(
                    format!("accounts.{}.auth", keys.account),
                    format!("expected \"diadoc\" or \"oidc\", found {other:?}"),
                ));
            }
        };
        let concurrency = super::concurrency_key(keys, 4)?;
        Ok(KonturDiadocAccount {
            base_url,
            auth,
            concurrency,
        })
    }
}

/// Visible ASCII without `,` (it separates the `DiadocAuth` parameters).
fn is_header_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Protocol,
    PrintForm,
    Zip,
}

impl Operation {
    fn parse(operation: &str) -> Result<Operation, RequestError> {
        match operation {
            OP_PROTOCOL => Ok(Operation::Protocol),
            OP_PRINT_FORM => Ok(Operation::PrintForm),
            OP_ZIP => Ok(Operation::Zip),
            other => Err(RequestError::field(
                "operation",
                format!(
                    "unknown Diadoc operation {other:?}; expected one of: {}",
                    OPERATIONS.join(", ")
                ),
            )),
        }
    }
}

/// The document a request names.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    box_id: String,
    message_id: String,
    document_id: String,
    /// `document-zip` only.
    full_docflow: bool,
}

impl Target {
    fn from_params(
        operation: Operation,
        params: &serde_json::Value,
    ) -> Result<Target, RequestError> {
        let Some(map) = params.as_object() else {
            return Err(RequestError::field(
                "params",
                "expected an object with boxId, messageId and documentId",
            ));
        };
        let allowed: &[&str] = match operation {
            Operation::Zip => &["boxId", "messageId", "documentId", "fullDocflow"],
            _ => &["boxId", "messageId", "documentId"],
        };
        // A misspelt optional key (`fulldocflow`) would otherwise be ignored
        // silently and fetch something else than asked.
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(RequestError::field(
                format!("params.{unknown}"),
                format!("unknown parameter; expected {}", allowed.join(", ")),
            ));
        }
        let id = |key: &str| -> Result<String, RequestError> {
            let field = format!("params.{key}");
            match map.get(key) {
                None => Err(RequestError::field(field, "is required")),
                Some(serde_json::Value::String(s)) => {
                    let s = s.trim();
                    if s.is_empty() {
                        Err(RequestError::field(field, "must not be empty"))
                    } else if s.chars().count() > MAX_ID_LEN {
                        Err(RequestError::field(
                            field,
                            format!("is longer than {MAX_ID_LEN} characters; Diadoc ids are GUIDs"),
                        ))
                    } else if s.chars().any(char::is_control) {
                        Err(RequestError::field(field, "contains control characters"))
                    } else {
                        Ok(s.to_string())
                    }
                }
                Some(other) => Err(RequestError::field(
                    field,
                    format!("expected a string, found {other}"),
                )),
            }
        };
        let full_docflow = match map.get("fullDocflow") {
            None => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
            Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
            Some(other) => {
                return Err(RequestError::field(
                    "params.fullDocflow",
                    format!("expected true or false, found {other}"),
                ));
            }
        };
        Ok(Target {
            box_id: id("boxId")?,
            message_id: id("messageId")?,
            document_id: id("documentId")?,
            full_docflow,
        })
    }

    /// `DOCUMENTID` made fit for a file name: the id is the user's, and a
    /// `/` in it must not become a folder.
    fn file_stem(&self) -> String {
        self.document_id.replace(['/', '\\'], "_")
    }
}

/// Checks a request before it is accepted: a known operation and its params.
pub fn validate_request(operation: &str, params: &serde_json::Value) -> Result<(), RequestError> {
    let operation = Operation::parse(operation)?;
    Target::from_params(operation, params).map(|_| ())
}

/// `DocumentProtocol` from Diadoc's proto files (`required` in proto2; the
/// fields are read as plain bytes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DocumentProtocol {
    /// The protocol's PDF.
    #[prost(bytes = "vec", tag = "1")]
    pub print_form: Vec<u8>,
    /// The signature of the PDF (detached CMS).
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

/// `DocumentZipGenerationResult`: the archive's name on the shelf, empty
/// while it is being made.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DocumentZipGenerationResult {
    #[prost(string, optional, tag = "1")]
    pub zip_file_name_on_shelf: Option<String>,
}

/// The JSON form of [`DocumentZipGenerationResult`].
#[derive(Debug, Deserialize)]
struct ZipResultJson {
    #[serde(rename = "ZipFileNameOnShelf", alias = "zipFileNameOnShelf", default)]
    zip_file_name_on_shelf: Option<String>,
}

/// Reads a `GenerateDocumentZip` answer: JSON (asked for) or protobuf (the
/// service's default). `Ok(None)`: not ready yet.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn zip_name_on_shelf(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Option<String>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let declared = content_type.map(str::to_ascii_lowercase);
    let json = match declared.as_deref() {
        Some(t) if t.contains("json") => true,
        // Said to be protobuf: not sniffed. Its first byte, field 1's tag
        // 0x0a, is a line feed, and a length of 9, 10, 12, 13 or 32 is
        // ASCII whitespace too, so a name starting with `{` would look
        // like JSON behind them.
        Some(t) if t.contains("protobuf") => false,
        // A protobuf of this message never starts with `{` (field 15, a
        // group); behind whitespace it may, as above, but without a
        // content type the sniffing is all there is.
        _ => body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
    };
    let name = if json {
        serde_json::from_slice::<ZipResultJson>(body)
            // serde quotes a string it did not expect in full (`invalid
            // type: string "…"`), and the text goes into the job's error.
            .map_err(|e| format!("not the expected JSON: {}", one_line(&e.to_string(), 200)))?
            .zip_file_name_on_shelf
    } else {
        DocumentZipGenerationResult::decode(body)
            .map_err(|e| format!("not a DocumentZipGenerationResult: {e}"))?
            .zip_file_name_on_shelf
    };
    Ok(name.filter(|n| !n.trim().is_empty()))
}

/// Whether a 2xx answer means "not ready yet": it carries `Retry-After`
/// (the seed), or it is a 202 or 204 (the print form and archive docs).
fn not_ready(status: StatusCode, retry_after: Option<Duration>) -> bool {
    retry_after.is_some() || status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT
}

/// Turns an error status into the decision, with a message that says what
/// to do. 401 is handled before (one new login); here it means the fresh
/// token was refused too.
fn classify(
    status: StatusCode,
    detail: &str,
    retry_after: Option<Duration>,
    what: &str,
    box_id: &str,
) -> ProviderError {
    let detail = detail.trim();
    let said = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    match status.as_u16() {
        400 => ProviderError::permanent(format!(
            "{what}: Diadoc refused the request as malformed (HTTP 400){said}; check boxId, messageId and documentId"
        )),
        401 => ProviderError::permanent(format!(
            "{what}: Diadoc refused the authorization (HTTP 401) even right after a new login{said}"
        )),
        402 => ProviderError::permanent(format!(
            "{what}: the Diadoc API subscription of box {box_id} has expired (HTTP 402 Payment Required){said}; \
             renew the box's API subscription with Kontur (the organization's Diadoc administrator can), \
             then run the job again with `docfetch retry`"
        )),
        403 => ProviderError::permanent(format!(
            "{what}: Diadoc denied access (HTTP 403 Forbidden){said}; the user of this account has no access \
             to box {box_id} or to this document: check boxId, or have a Diadoc administrator grant the user \
             access to the box and its documents, then run the job again with `docfetch retry`"
        )),
        404 => ProviderError::permanent(format!(
            "{what}: Diadoc has no such document (HTTP 404){said}; check boxId, messageId and documentId"
        )),
        405 => ProviderError::permanent(format!(
            "{what}: Diadoc does not allow this call here (HTTP 405){said}; check the account's base_url"
        )),
        409 => ProviderError::permanent(format!(
            "{what}: Diadoc cannot generate it for this document (HTTP 409): {}",
            if detail.is_empty() {
                "no reason given"
            } else {
                detail
            }
        )),
        429 => ProviderError::rate_limited(what, retry_after),
        _ => ProviderError::from_status(what, status, detail).with_retry_after(retry_after),
    }
}

/// Where an archive job is, stored as the job's cursor. Protocols and print
/// forms need nothing: Diadoc keys the queued work by the document itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Cursor {
    /// The archive's name on the shelf, once `GenerateDocumentZip` gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name_on_shelf: Option<String>,
    /// Times the shelf said the archive was gone.
    #[serde(default, skip_serializing_if = "is_zero")]
    shelf_misses: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn to_value(cursor: &Cursor) -> serde_json::Value {
    serde_json::to_value(cursor).unwrap_or_default()
}

/// An account's credentials at run time, with its cached token.
enum Credentials {
    Diadoc {
        client_id: Secret,
        login: String,
        password: Secret,
        cache: TokenCache,
    },
    /// Boxed: the OIDC client is much larger than the classic variant.
    Oidc(Box<Oidc>),
}

/// Whether a call's answer is small (read whole, bounded in time) or a
/// file (streamed; only silence is bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Answer,
    File,
}

/// A Kontur.Diadoc account's provider.
pub struct KonturDiadoc {
    name: String,
    base_url: Url,
    credentials: Credentials,
}

impl KonturDiadoc {
    pub fn new(name: &str, account: KonturDiadocAccount) -> Self {
        let credentials = match account.auth {
            Auth::Diadoc {
                client_id,
                login,
                password,
            } => Credentials::Diadoc {
                client_id,
                login,
                password,
                cache: TokenCache::new(CLASSIC_TOKEN_MARGIN),
            },
            Auth::Oidc(config) => Credentials::Oidc(Box::new(Oidc::new(name, config))),
        };
        KonturDiadoc {
            name: name.to_string(),
            base_url: account.base_url,
            credentials,
        }
    }

    /// `GET /GenerateDocumentProtocol`: pending answers until the protobuf
    /// comes, then its two files.
    async fn protocol(
        &self,
        ctx: &StepContext<'_>,
        target: &Target,
        cursor: Cursor,
    ) -> Result<Step, ProviderError> {
        let what = format!(
            "Diadoc GenerateDocumentProtocol for document {}",
            target.document_id
        );
        let url = self.generate_url("GenerateDocumentProtocol", target, false);
        let response = self.get(ctx, url, &what, Body::Answer, None).await?;
        let response = self.success(response, &what, target).await?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        if not_ready(status, retry_after) {
            drain(response).await;
            return Ok(pending(&cursor, retry_after, status, "the protocol"));
        }
        let limit = ctx.max_file_size.saturating_mul(2).min(MAX_PROTOCOL);
        let body = read_bounded(response, limit, &what).await?;
        if body.is_empty() {
            return Ok(pending(&cursor, None, status, "the protocol"));
        }
        let protocol = DocumentProtocol::decode(body.as_slice()).map_err(|e| {
            ProviderError::transient(format!(
                "{what}: the answer is not a DocumentProtocol ({e}): {}",
                excerpt(&body)
            ))
        })?;
        if !protocol.print_form.starts_with(b"%PDF") {
            return Err(ProviderError::permanent(format!(
                "{what}: the protocol's PrintForm is not a PDF (it starts with {:?}); nothing was saved",
                excerpt(&protocol.print_form[..protocol.print_form.len().min(16)])
            )));
        }
        for part in [&protocol.print_form, &protocol.signature] {
            if part.len() as u64 > ctx.max_file_size {
                return Err(ProviderError::permanent(format!(
                    "{what}: the protocol is larger than the {}-byte limit (scheduler.max_file_size)",
                    ctx.max_file_size
                )));
            }
        }
        let stem = target.file_stem();
        let pdf = crate::filename::sanitize(&format!("{stem}.protocol.pdf"), "protocol.pdf");
        let sig = crate::filename::sanitize(&format!("{stem}.protocol.sig"), "protocol.sig");
        let files = vec![
            ctx.save_bytes(&pdf, &protocol.print_form).await?,
            ctx.save_bytes(&sig, &protocol.signature).await?,
        ];
        let mut warnings = Vec::new();
        if protocol.signature.is_empty() {
            warnings.push("Diadoc sent the protocol without a signature".to_string());
        }
        Ok(Step::Done {
            cursor: to_value(&cursor),
            result: JobResult { files, warnings },
        })
    }

    /// `GET /GeneratePrintForm`: 204 + `Retry-After` until the PDF comes.
    async fn print_form(
        &self,
        ctx: &StepContext<'_>,
        target: &Target,
        cursor: Cursor,
    ) -> Result<Step, ProviderError> {
        let what = format!(
            "Diadoc GeneratePrintForm for document {}",
            target.document_id
        );
        let url = self.generate_url("GeneratePrintForm", target, false);
        let response = self.get(ctx, url, &what, Body::File, None).await?;
        let response = self.success(response, &what, target).await?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        if not_ready(status, retry_after) || response.content_length() == Some(0) {
            drain(response).await;
            return Ok(pending(&cursor, retry_after, status, "the print form"));
        }
        let name = disposition_name(response.headers())
            .unwrap_or_else(|| format!("{}.pdf", target.file_stem()));
        let saved = ctx.save(response, Some(&name)).await?;
        if !starts_with_pdf(&ctx.output_dir, &saved.name).await {
            // Never leave a file the job did not deliver.
            let (folder, name) = (ctx.output_dir.clone(), saved.name.clone());
            let _ = crate::download::blocking(move || {
                folder.open(false)?.remove_file(std::ffi::OsStr::new(&name))
            })
            .await;
            return Err(ProviderError::permanent(format!(
                "{what}: the print form Diadoc sent is not a PDF; nothing was saved"
            )));
        }
        Ok(Step::Done {
            cursor: to_value(&cursor),
            result: JobResult {
                files: vec![saved],
                warnings: Vec::new(),
            },
        })
    }

    /// `GET /GenerateDocumentZip` until it names the archive on the shelf,
    /// then `GET /ShelfDownload`.
    async fn zip(
        &self,
        ctx: &StepContext<'_>,
        target: &Target,
        mut cursor: Cursor,
    ) -> Result<Step, ProviderError> {
        if let Some(name_on_shelf) = cursor.name_on_shelf.clone() {
            return self
                .shelf_download(ctx, target, cursor, &name_on_shelf)
                .await;
        }
        let what = format!(
            "Diadoc GenerateDocumentZip for document {}",
            target.document_id
        );
        let url = self.generate_url("GenerateDocumentZip", target, true);
        let response = self
            .get(ctx, url, &what, Body::Answer, Some("application/json"))
            .await?;
        let response = self.success(response, &what, target).await?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_body_limited(response, MAX_ANSWER, &what).await?;
        let name = zip_name_on_shelf(content_type.as_deref(), &body).map_err(|e| {
            ProviderError::transient(format!("{what}: the answer is {e}: {}", excerpt(&body)))
        })?;
        match name {
            // A name on the shelf is the archive itself: ready, whatever
            // the status and headers say.
            Some(name) => {
                cursor.name_on_shelf = Some(name);
                Ok(Step::Continue(to_value(&cursor)))
            }
            None if not_ready(status, retry_after) => {
                Ok(pending(&cursor, retry_after, status, "the archive"))
            }
            None => Ok(pending(&cursor, None, status, "the archive")),
        }
    }

    async fn shelf_download(
        &self,
        ctx: &StepContext<'_>,
        target: &Target,
        mut cursor: Cursor,
        name_on_shelf: &str,
    ) -> Result<Step, ProviderError> {
        let what = format!(
            "Diadoc ShelfDownload of the archive of document {}",
            target.document_id
        );
        let mut url = self.endpoint(&["ShelfDownload"]);
        url.query_pairs_mut()
            .append_pair("nameOnShelf", name_on_shelf);
        let response = self.get(ctx, url, &what, Body::File, None).await?;
        if response.status() == StatusCode::NOT_FOUND {
            drain(response).await;
            if cursor.shelf_misses > 0 {
                return Err(ProviderError::permanent(format!(
                    "{what}: the archive Diadoc named is not on the shelf (HTTP 404), \
                     even after it was generated again"
                )));
            }
            // Shelf files do not live forever (a long pause, a restart):
            // have the archive made again, once.
            tracing::info!("{what}: the archive is gone from the shelf; generating it again");
            cursor.name_on_shelf = None;
            cursor.shelf_misses += 1;
            return Ok(Step::Continue(to_value(&cursor)));
        }
        let response = self.success(response, &what, target).await?;
        let name = disposition_name(response.headers())
            .unwrap_or_else(|| format!("{}.zip", target.file_stem()));
        let saved = ctx.save(response, Some(&name)).await?;
        Ok(Step::Done {
            cursor: to_value(&cursor),
            result: JobResult {
                files: vec![saved],
                warnings: Vec::new(),
            },
        })
    }

    /// `{base}/a/b` (the base may carry a path of its own).
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn generate_url(&self, method: &str, target: &Target, zip: bool) -> Url {
        let mut url = self.endpoint(&[method]);
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("boxId", &target.box_id)
                .append_pair("messageId", &target.message_id)
                .append_pair("documentId", &target.document_id);
            if zip {
                query.append_pair(
                    "fullDocflow",
                    if target.full_docflow { "true" } else { "false" },
                );
            }
        }
        url
    }

    /// An authorized GET. A 401 drops the token and logs in again once; a
    /// second 401 is returned as the answer, and [`Self::success`] fails it.
    async fn get(
        &self,
        ctx: &StepContext<'_>,
        url: Url,
        what: &str,
        body: Body,
        accept: Option<&str>,
    ) -> Result<Response, ProviderError> {
        let mut renewed = false;
        loop {
            let token = self.token(ctx.http, ctx.timeout).await?;
            let mut request = ctx
                .http
                .get(url.clone())
                .header(AUTHORIZATION, self.authorization(&token)?);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if body == Body::Answer {
                // Files stream under the client's read timeout instead: a
                // large one may take long, but never sits silent.
                request = request.timeout(ctx.timeout);
            }
            let response = request
                .send()
                .await
                .map_err(|e| ProviderError::from_reqwest(what, &e))?;
            if response.status() != StatusCode::UNAUTHORIZED || renewed {
                return Ok(response);
            }
            drain(response).await;
            self.invalidate(&token).await;
            tracing::info!("{what}: Diadoc refused the token (HTTP 401); logging in again once");
            renewed = true;
        }
    }

    /// Passes a 2xx answer through; turns anything else into the error
    /// its status calls for.
    async fn success(
        &self,
        response: Response,
        what: &str,
        target: &Target,
    ) -> Result<Response, ProviderError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = read_body_limited(response, MAX_ANSWER, what)
            .await
            .unwrap_or_default();
        let mut error = classify(status, &excerpt(&body), retry_after, what, &target.box_id);
        if status == StatusCode::UNAUTHORIZED {
            error
                .message
                .push_str(&format!("; {}", self.refused_hint()));
        }
        Err(error)
    }

    fn refused_hint(&self) -> &'static str {
        match &self.credentials {
            Credentials::Diadoc { .. } => {
                "check that the account's client_id (the developer key) is registered in Diadoc for this login"
            }
            Credentials::Oidc(_) => {
                "check the account's scope (Diadoc.PublicAPI for production, Diadoc.PublicAPI.Staging for the test Diadoc) and that the API key may use Diadoc"
            }
        }
    }

    /// A valid token, logging in when there is none.
    async fn token(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<Secret, ProviderError> {
        match &self.credentials {
            Credentials::Diadoc { cache, .. } => {
                cache.get(|| self.authenticate(http, timeout)).await
            }
            Credentials::Oidc(oidc) => oidc.token(http).await,
        }
    }

    async fn invalidate(&self, token: &Secret) {
        match &self.credentials {
            Credentials::Diadoc { cache, .. } => cache.invalidate(token).await,
            Credentials::Oidc(oidc) => oidc.invalidate(token).await,
        }
    }

    /// The `Authorization` value for `token`, marked sensitive so that no
    /// debug output of a request shows it.
    fn authorization(&self, token: &Secret) -> Result<HeaderValue, ProviderError> {
        let text = match &self.credentials {
            Credentials::Diadoc { client_id, .. } => diadoc_auth(client_id, Some(token)),
            Credentials::Oidc(_) => format!("Bearer {}", token.expose()),
        };
        sensitive(&text)
    }

    /// `POST /V3/Authenticate?type=password`: the token is the whole body.
    async fn authenticate(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(Secret, Duration), ProviderError> {
        let Credentials::Diadoc {
            client_id,
            login,
            password,
            ..
        } = &self.credentials
        else {
            return Err(ProviderError::permanent(
                "internal error: a Diadoc login for an OIDC account",
            ));
        };
        let what = format!("logging in to Diadoc for account {}", self.name);
        let mut url = self.endpoint(&["V3", "Authenticate"]);
        url.query_pairs_mut().append_pair("type", "password");
        let body = serde_json::json!({"login": login, "password": password.expose()}).to_string();
        let response = http
            .post(url)
            .header(AUTHORIZATION, sensitive(&diadoc_auth(client_id, None))?)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(&what, &e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let bytes = read_body_limited(response, MAX_ANSWER, &what).await?;
        if status.is_success() {
            // The body is the token: never quote it, not even when garbled.
            let token = std::str::from_utf8(&bytes)
                .ok()
                .map(str::trim)
                .filter(|t| is_header_token(t));
            return match token {
                Some(token) => Ok((Secret::new(token), CLASSIC_TOKEN_LIFETIME)),
                None => Err(ProviderError::transient(format!(
                    "{what}: the answer ({} bytes) is not a token",
                    bytes.len()
                ))),
            };
        }
        // An error text is quoted, but never with the credentials in it,
        // should the service echo them.
        let detail = excerpt(&bytes)
            .replace(password.expose(), "***")
            .replace(client_id.expose(), "***");
        match status {
            StatusCode::TOO_MANY_REQUESTS => Err(ProviderError::rate_limited(&what, retry_after)),
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let said = if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                Err(ProviderError::permanent(format!(
                    "{what}: Diadoc refused the login (HTTP {status}{said}); check the account's client_id \
                     (the developer key, sent as ddauth_api_client_id), login and password"
                )))
            }
            _ => {
                Err(ProviderError::from_status(&what, status, &detail)
                    .with_retry_after(retry_after))
            }
        }
    }
}

impl Provider for KonturDiadoc {
    const NAME: &'static str = PROVIDER;
    type Account = KonturDiadocAccount;

    fn read_account(keys: &mut AccountKeys<'_>) -> Result<Self::Account, ConfigError> {
        KonturDiadocAccount::from_keys(keys)
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
        KonturDiadoc::new(account_name, account)
    }

    /// Logins performed so far (classic or OIDC).
    fn logins(&self) -> u64 {
        match &self.credentials {
            Credentials::Diadoc { cache, .. } => cache.logins(),
            Credentials::Oidc(oidc) => oidc.logins(),
        }
    }

    async fn step(&self, ctx: &StepContext<'_>) -> Result<Step, ProviderError> {
        let operation = Operation::parse(&ctx.job.operation)
            .map_err(|e| ProviderError::permanent(e.to_string()))?;
        let target = Target::from_params(operation, &ctx.job.params)
            .map_err(|e| ProviderError::permanent(e.to_string()))?;
        let cursor: Cursor = match &ctx.job.cursor {
            serde_json::Value::Null => Cursor::default(),
            value => serde_json::from_value(value.clone()).map_err(|e| {
                ProviderError::permanent(format!("the job's saved progress is unreadable: {e}"))
            })?,
        };
        match operation {
            Operation::Protocol => self.protocol(ctx, &target, cursor).await,
            Operation::PrintForm => self.print_form(ctx, &target, cursor).await,
            Operation::Zip => self.zip(ctx, &target, cursor).await,
        }
    }
}

/// `DiadocAuth ddauth_api_client_id=KEY[,ddauth_token=TOKEN]`: one line,
/// parameters separated by `,` as Diadoc's example shows.
fn diadoc_auth(client_id: &Secret, token: Option<&Secret>) -> String {
    match token {
        Some(token) => format!(
            "DiadocAuth ddauth_api_client_id={},ddauth_token={}",
            client_id.expose(),
            token.expose()
        ),
        None => format!("DiadocAuth ddauth_api_client_id={}", client_id.expose()),
    }
}

fn sensitive(text: &str) -> Result<HeaderValue, ProviderError> {
    let mut value = HeaderValue::from_str(text).map_err(|_| {
        ProviderError::permanent(
            "the account's credentials hold characters that an HTTP header cannot carry",
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    crate::http::retry_after(headers, std::time::SystemTime::now())
}

/// The wait after a "not ready yet" answer: a poll, spaced by `Retry-After`.
fn pending(cursor: &Cursor, retry_after: Option<Duration>, status: StatusCode, what: &str) -> Step {
    let note = match retry_after {
        Some(d) => format!(
            "{what} is not ready yet (HTTP {}, Retry-After {})",
            status.as_u16(),
            crate::units::format_duration(d)
        ),
        None => format!("{what} is not ready yet (HTTP {})", status.as_u16()),
    };
    Step::Wait {
        cursor: to_value(cursor),
        hint: retry_after,
        poll: true,
        note,
    }
}

/// Reads and drops a small body, so the connection can be reused.
async fn drain(response: Response) {
    let _ = read_body_limited(response, MAX_ANSWER, "").await;
}

/// Reads a body of at most `limit` bytes; more is a permanent failure (the
/// same protocol will be as large next time).
async fn read_bounded(
    mut response: Response,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, ProviderError> {
    let too_large = || {
        ProviderError::permanent(format!(
            "{what}: the answer is larger than {limit} bytes (scheduler.max_file_size)"
        ))
    };
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(ProviderError::from_reqwest(what, &e)),
        }
    }
}

/// The raw `Content-Disposition` file name (sanitized by `ctx.save`).
fn disposition_name(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CONTENT_DISPOSITION)
        .and_then(|v| crate::filename::from_content_disposition(v.as_bytes()))
}

/// Whether a saved file starts with `%PDF`.
async fn starts_with_pdf(folder: &crate::beneath::Subfolder, name: &str) -> bool {
    use std::io::Read as _;
    let (folder, name) = (folder.clone(), name.to_string());
    crate::download::blocking(move || {
        let mut head = [0u8; 4];
        let mut file = folder.open(false)?.open_file(&name)?;
        Ok(file.read_exact(&mut head).is_ok() && &head == b"%PDF")
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::Environment;
    use crate::providers::{DEFAULT_COOLDOWN, ErrorClass};

    fn keys<'a>(toml_text: &str, env: &'a Environment) -> AccountKeys<'a> {
        let table: std::collections::BTreeMap<String, toml::Value> =
            toml::from_str(toml_text).unwrap();
        AccountKeys::new("dd", table, env)
    }

    fn account(toml_text: &str) -> Result<KonturDiadocAccount, ConfigError> {
        let env = Environment::default();
        let mut keys = keys(toml_text, &env);
        let account = KonturDiadocAccount::from_keys(&mut keys)?;
        keys.finish()?;
        Ok(account)
    }

    #[test]
    fn a_hand_encoded_document_protocol_decodes_with_fields_one_and_two() {
        // Field 1 (PrintForm), wire type 2: tag 0x0a; field 2 (Signature): 0x12.
        let mut wire = vec![0x0a, 8];
        wire.extend_from_slice(b"%PDF-1.4");
        wire.extend_from_slice(&[0x12, 4, 0x30, 0x82, 0x01, 0x02]);
        let protocol = DocumentProtocol::decode(wire.as_slice()).unwrap();
        assert_eq!(protocol.print_form, b"%PDF-1.4");
        assert_eq!(protocol.signature, [0x30, 0x82, 0x01, 0x02]);
        // And the encoder writes the same bytes, so the simulator speaks the
        // same wire format as Diadoc.
        assert_eq!(protocol.encode_to_vec(), wire);
    }

    #[test]
    fn a_real_shaped_protocol_round_trips_and_unknown_fields_are_skipped() {
        let pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n".repeat(40);
        let sig: Vec<u8> = (0..=255u8).cycle().take(1500).collect();
        let mut wire = DocumentProtocol {
            print_form: pdf.clone(),
            signature: sig.clone(),
        }
        .encode_to_vec();
        // Lengths above 127 take two varint bytes.
        assert_eq!(
            &wire[..3],
            &[
                0x0a,
                (pdf.len() & 0x7f) as u8 | 0x80,
                (pdf.len() >> 7) as u8
            ]
        );
        // A field a newer Diadoc might add (3, varint) does not break decoding.
        wire.extend_from_slice(&[0x18, 0x01]);
        let back = DocumentProtocol::decode(wire.as_slice()).unwrap();
        assert_eq!(back.print_form, pdf);
        assert_eq!(back.signature, sig);
        assert!(DocumentProtocol::decode(&b"<html>oops</html>"[..]).is_err());
    }

    #[test]
    fn archive_answers_are_read_as_json_or_protobuf() {
        let json = br#"{"ZipFileNameOnShelf":"DocumentZip/1/d.zip"}"#;
        assert_eq!(
            zip_name_on_shelf(Some("application/json; charset=utf-8"), json).unwrap(),
            Some("DocumentZip/1/d.zip".into())
        );
        assert_eq!(
            zip_name_on_shelf(None, br#"{"ZipFileNameOnShelf":""}"#).unwrap(),
            None
        );
        assert_eq!(
            zip_name_on_shelf(None, br#"{"ZipFileNameOnShelf":null}"#).unwrap(),
            None
        );
        assert_eq!(zip_name_on_shelf(None, b"").unwrap(), None);
        let proto = DocumentZipGenerationResult {
            zip_file_name_on_shelf: Some("x/y.zip".into()),
        }
        .encode_to_vec();
        assert_eq!(proto[0], 0x0a, "field 1, length-delimited");
        assert_eq!(
            zip_name_on_shelf(Some("application/x-protobuf"), &proto).unwrap(),
            Some("x/y.zip".into())
        );
        assert!(zip_name_on_shelf(Some("application/json"), b"<html>").is_err());
    }

    #[test]
    fn two_hundred_family_answers_with_retry_after_are_not_ready() {
        let ra = Some(Duration::from_secs(1));
        assert!(not_ready(StatusCode::OK, ra));
        assert!(not_ready(StatusCode::ACCEPTED, None));
        assert!(not_ready(StatusCode::NO_CONTENT, None));
        assert!(not_ready(StatusCode::NO_CONTENT, ra));
        assert!(!not_ready(StatusCode::OK, None));
        match pending(&Cursor::default(), ra, StatusCode::OK, "the protocol") {
            Step::Wait {
                hint, poll, note, ..
            } => {
                assert_eq!(hint, ra);
                assert!(poll);
                assert!(
                    note.contains("HTTP 200") && note.contains("Retry-After"),
                    "{note}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_error_status_is_classified_with_what_to_do() {
        let c = |code: u16, body: &str| {
            classify(
                StatusCode::from_u16(code).unwrap(),
                body,
                Some(Duration::from_secs(3)),
                "x",
                "box-1",
            )
        };
        for code in [400, 401, 402, 403, 404, 405, 409] {
            assert_eq!(c(code, "").class, ErrorClass::Permanent, "{code}");
        }
        let unpaid = c(402, "").message;
        assert!(
            unpaid.contains("subscription") && unpaid.contains("renew"),
            "{unpaid}"
        );
        assert!(unpaid.contains("box-1"), "{unpaid}");
        let denied = c(403, "").message;
        assert!(
            denied.contains("access") && denied.contains("grant"),
            "{denied}"
        );
        let conflict = c(
            409,
            "Generating print form for this type of document is not supported",
        )
        .message;
        assert!(conflict.contains("is not supported"), "{conflict}");
        let limited = c(429, "");
        assert_eq!(limited.class, ErrorClass::Transient);
        assert_eq!(limited.account_cooldown, Some(Duration::from_secs(3)));
        let limited = classify(StatusCode::TOO_MANY_REQUESTS, "", None, "x", "b");
        assert_eq!(limited.account_cooldown, Some(DEFAULT_COOLDOWN));
        for code in [500, 502, 503] {
            let e = c(code, "boom");
            assert_eq!(e.class, ErrorClass::Transient, "{code}");
            assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        }
    }

    #[test]
    fn the_classic_header_is_one_line_with_comma_separated_parameters() {
        let key = Secret::new("testClient-8ee1638deae84c86b8e2069955c2825a");
        let token = Secret::new("3IU0iPhu/Ui5WSq6+lrPw==");
        assert_eq!(
            diadoc_auth(&key, Some(&token)),
            "DiadocAuth ddauth_api_client_id=testClient-8ee1638deae84c86b8e2069955c2825a,ddauth_token=3IU0iPhu/Ui5WSq6+lrPw=="
        );
        assert_eq!(
            diadoc_auth(&key, None),
            "DiadocAuth ddauth_api_client_id=testClient-8ee1638deae84c86b8e2069955c2825a"
        );
        let value = sensitive(&diadoc_auth(&key, Some(&token))).unwrap();
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("3IU0iPhu"));
    }

    #[test]
    fn requests_need_the_three_ids_and_a_known_operation() {
        let ok = serde_json::json!({"boxId": "b", "messageId": "m", "documentId": "d"});
        for op in OPERATIONS {
            assert!(validate_request(op, &ok).is_ok(), "{op}");
        }
        let zip = serde_json::json!({"boxId": "b", "messageId": "m", "documentId": "d", "fullDocflow": true});
        assert!(validate_request("document-zip", &zip).is_ok());
        let err = validate_request("document-protocol", &zip).unwrap_err();
        assert!(err.to_string().contains("params.fullDocflow"), "{err}");
        let err = validate_request("protocol", &ok).unwrap_err();
        assert!(err.to_string().contains("document-protocol"), "{err}");
        for (params, field) in [
            (
                serde_json::json!({"messageId": "m", "documentId": "d"}),
                "params.boxId",
            ),
            (
                serde_json::json!({"boxId": "b", "messageId": 7, "documentId": "d"}),
                "params.messageId",
            ),
            (
                serde_json::json!({"boxId": "b", "messageId": "m", "documentId": "  "}),
                "params.documentId",
            ),
            (
                serde_json::json!({"boxId": "b", "messageId": "m", "documentId": "d\n"}),
                "",
            ),
            (
                serde_json::json!({"boxId": "b", "messageId": "m", "documentId": "x".repeat(101)}),
                "params.documentId",
            ),
            (serde_json::json!("text"), "params"),
        ] {
            let result = validate_request("print-form", &params);
            if field.is_empty() {
                // Surrounding whitespace (a trailing newline) is trimmed.
                assert!(result.is_ok(), "{params}");
            } else {
                let err = result.unwrap_err();
                assert!(err.to_string().contains(field), "{params}: {err}");
            }
        }
        let bad_flag = serde_json::json!({"boxId": "b", "messageId": "m", "documentId": "d", "fullDocflow": "yes"});
        assert!(validate_request("document-zip", &bad_flag).is_err());
        let target = Target::from_params(
            Operation::Zip,
            &serde_json::json!({"boxId": " b ", "messageId": "m", "documentId": "../d", "fullDocflow": "True"}),
        )
        .unwrap();
        assert_eq!(target.box_id, "b");
        assert!(target.full_docflow);
        assert_eq!(target.file_stem(), ".._d");
    }

    #[test]
    fn both_auth_schemes_are_configured_with_their_own_keys() {
        let classic =
            account("client_id = \"key-1\"\nlogin = \"buh@example.ru\"\npassword = \"pw\"\n")
                .unwrap();
        assert_eq!(classic.base_url.as_str(), "https://diadoc-api.kontur.ru/");
        assert_eq!(classic.concurrency, 4);
        assert!(
            matches!(classic.auth, Auth::Diadoc { ref login, .. } if login == "buh@example.ru")
        );
        assert!(!format!("{classic:?}").contains("pw\""), "{classic:?}");

        let oidc = account(
            "auth = \"oidc\"\nclient_id = \"svc\"\napi_key = \"k\"\ngrant = \"refresh_token\"\nrefresh_token = \"r\"\n",
        )
        .unwrap();
        match oidc.auth {
            Auth::Oidc(config) => {
                assert_eq!(config.scope, DEFAULT_SCOPE);
                assert_eq!(config.identity_url.as_str(), "https://identity.kontur.ru/");
            }
            other => panic!("{other:?}"),
        }
        let staging = account(
            "auth = \"oidc\"\nclient_id = \"svc\"\napi_key = \"k\"\nscope = \"Diadoc.PublicAPI.Staging\"\nconcurrency = 2\n",
        )
        .unwrap();
        assert_eq!(staging.concurrency, 2);
        assert!(matches!(staging.auth, Auth::Oidc(ref c) if c.scope == "Diadoc.PublicAPI.Staging"));

        let err = account("client_id = \"k\"\nlogin = \"l\"\n").unwrap_err();
        assert!(err.to_string().contains("accounts.dd.password"), "{err}");
        let err = account("client_id = \"k\"\nlogin = \"l\"\npassword = \"p\"\napi_key = \"x\"\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("accounts.dd.api_key")
                && err.to_string().contains("belongs to auth = \"oidc\""),
            "{err}"
        );
        let err = account("client_id = \"a,b\"\nlogin = \"l\"\npassword = \"p\"\n").unwrap_err();
        assert!(
            err.to_string().contains("client_id") && !err.to_string().contains("a,b"),
            "{err}"
        );
        let err = account("auth = \"basic\"\n").unwrap_err();
        assert!(err.to_string().contains("accounts.dd.auth"), "{err}");
        let err = account("auth = \"oidc\"\napi_key = \"k\"\n").unwrap_err();
        assert!(err.to_string().contains("accounts.dd.client_id"), "{err}");
    }

    #[test]
    fn endpoints_keep_the_base_path_and_encode_the_ids() {
        let provider = KonturDiadoc::new(
            "dd",
            account("base_url = \"http://127.0.0.1:9/diadoc/\"\nclient_id = \"k\"\nlogin = \"l\"\npassword = \"p\"\n")
                .unwrap(),
        );
        let target = Target {
            box_id: "b&x".into(),
            message_id: "m".into(),
            document_id: "d d".into(),
            full_docflow: true,
        };
        assert_eq!(
            provider
                .generate_url("GenerateDocumentZip", &target, true)
                .as_str(),
            "http://127.0.0.1:9/diadoc/GenerateDocumentZip?boxId=b%26x&messageId=m&documentId=d+d&fullDocflow=true"
        );
        assert_eq!(
            provider.endpoint(&["V3", "Authenticate"]).as_str(),
            "http://127.0.0.1:9/diadoc/V3/Authenticate"
        );
        assert_eq!(provider.logins(), 0);
    }
}
