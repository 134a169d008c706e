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

mod api;
mod format;
mod request;
#[cfg(test)]
mod tests;

pub use format::{DocumentProtocol, DocumentZipGenerationResult, zip_name_on_shelf};
pub use request::validate_request;

use api::*;
use request::*;

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
    async fn check(
        &self,
        account: &str,
        http: &reqwest::Client,
        timeout: std::time::Duration,
    ) -> Result<(), super::check::CheckFailure> {
        self.check_login(account, http, timeout).await
    }

    fn token_age(&self) -> Option<std::time::Duration> {
        match &self.credentials {
            Credentials::Diadoc { cache, .. } => cache.age(),
            Credentials::Oidc(oidc) => oidc.token_age(),
        }
    }

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

// ---------------------------------------------------------------------------
// `accounts check`
// ---------------------------------------------------------------------------

impl KonturDiadoc {
    /// `POST /V3/Authenticate` (or the OpenID token, for an account that
    /// signs in that way): a token is all a check needs, and asking for one
    /// reads no box and orders nothing.
    async fn check_login(
        &self,
        _account: &str,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(), super::check::CheckFailure> {
        self.token(http, timeout)
            .await
            .map_err(super::check::CheckFailure::login)?;
        Ok(())
    }
}
