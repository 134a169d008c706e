//! 1C:Fresh data transfer service (`hs/dt`), seed `000_eb637a5ecde06dbd.txt`.
//!
//! Three phases, each one step, with the 1C job id and file id kept in the
//! cursor so a restart resumes where it stopped:
//!
//! 1. **order**: `POST {base}/async/{id}` → a `jobs` id;
//! 2. **poll**: `GET {base}/jobs/{jobs id}` → `10202` (keep waiting) or a
//!    `files` id;
//! 3. **fetch**: `GET {base}/files/{files id}` → the file.
//!
//! With `flow = "ibsession"` (the default, the seed's worked example) each
//! request opens a session with `IBSession: start`, is handed off by a
//! `Location` URL and an `ibsession` cookie, and the hand-off is completed
//! with a second request to that URL. Hand-off URLs live about ten minutes,
//! so they are never stored: a resumed job starts a new hand-off.
//! With `flow = "plain"` the seed's first part is followed: the same three
//! calls answered directly.
//!
//! Where the seed is ambiguous, the reading chosen is noted next to the code.

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{Provider, ProviderError, Step, StepContext, excerpt, one_line, read_body_limited};
use crate::config::keys::{AccountKeys, ConfigError, Secret};
use crate::job::JobResult;
use crate::job::request::RequestError;

mod api;
pub use self::api::{Answer, interpret};

/// The provider name used in `[accounts.*] provider = "…"`.
pub const PROVIDER: &str = "1c-fresh";

/// Largest JSON answer accepted from the service (its answers are ~200 bytes).
const MAX_ANSWER: usize = 1 << 20;

/// How requests are exchanged with the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// `IBSession: start` / `finish` with `Location` hand-offs (the seed's example).
    IbSession,
    /// Direct answers (the seed's first part).
    Plain,
}

/// `[accounts.NAME]` for `provider = "1c-fresh"`.
#[derive(Debug, Clone)]
pub struct FreshAccount {
    /// `…/hs/dt/storage`: the seed's `{{baseURL}}`.
    pub base_url: Url,
    pub username: String,
    pub password: Secret,
    pub flow: Flow,
    /// Steps of this account's jobs run at once (default 8).
    pub concurrency: usize,
}

impl FreshAccount {
    pub fn from_keys(keys: &mut AccountKeys<'_>) -> Result<Self, ConfigError> {
        let base_url = keys.url("base_url", None)?;
        let username = keys.required("username")?;
        let password = keys.required_secret("password")?;
        let flow = match keys.string("flow")?.as_deref() {
            None | Some("ibsession") => Flow::IbSession,
            Some("plain") => Flow::Plain,
            Some(other) => {
                return Err(ConfigError::invalid(
                    format!("accounts.{}.flow", keys.account),
                    format!("expected \"ibsession\" or \"plain\", found {other:?}"),
                ));
            }
        };
        let concurrency = super::concurrency_key(keys, 8)?;
        Ok(FreshAccount {
            base_url,
            username,
            password,
            flow,
            concurrency,
        })
    }
}

/// For 1C:Fresh the operation is the data id (`tax_usn_calculator`), a
/// single URL path segment, and `params` is the settings JSON sent as-is.
pub fn validate_request(operation: &str, params: &serde_json::Value) -> Result<(), RequestError> {
    if operation.len() > 200
        || !operation
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(RequestError::field(
            "operation",
            format!(
                "{operation:?} is not a 1C:Fresh data id: expected letters, digits, '_', '-' or '.' (such as \"tax_usn_calculator\")"
            ),
        ));
    }
    if !(params.is_object() || params.is_array()) {
        return Err(RequestError::field(
            "params",
            "expected a JSON object: the data settings sent to 1C:Fresh as-is",
        ));
    }
    Ok(())
}

/// Where a 1C job is, stored as the job's cursor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Cursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_id: Option<String>,
    /// `10240` messages, kept for the receipt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// A 1C:Fresh account's provider.
pub struct Fresh {
    account: FreshAccount,
}

impl Provider for Fresh {
    const NAME: &'static str = PROVIDER;
    type Account = FreshAccount;

    fn read_account(keys: &mut AccountKeys<'_>) -> Result<Self::Account, ConfigError> {
        FreshAccount::from_keys(keys)
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

    fn for_account(_account_name: &str, account: Self::Account) -> Self {
        Fresh::new(account)
    }

    async fn check(
        &self,
        account: &str,
        http: &reqwest::Client,
        timeout: std::time::Duration,
    ) -> Result<(), super::check::CheckFailure> {
        self.check_login(account, http, timeout).await
    }

    async fn step(&self, ctx: &StepContext<'_>) -> Result<Step, ProviderError> {
        let mut cursor: Cursor = serde_json::from_value(ctx.job.cursor.clone()).map_err(|e| {
            ProviderError::permanent(format!("the job's saved progress is unreadable: {e}"))
        })?;
        if let Some(file_id) = cursor.file_id.clone() {
            let saved = self.fetch(ctx, &file_id).await?;
            let result = JobResult {
                files: vec![saved],
                warnings: cursor.warnings.clone(),
            };
            return Ok(Step::Done {
                cursor: to_value(&cursor),
                result,
            });
        }
        if let Some(job_id) = cursor.job_id.clone() {
            return match self.poll(ctx, &job_id).await? {
                Answer::Pending => Ok(Step::Wait {
                    cursor: to_value(&cursor),
                    hint: None,
                    poll: true,
                    note: format!("1C job {job_id} is still being prepared (10202)"),
                }),
                Answer::Ready { id, warning } => {
                    cursor.file_id = Some(id);
                    cursor.warnings.extend(warning);
                    // Another status look finds the file again: no commit
                    // is needed before fetching it.
                    Ok(Step::Next(to_value(&cursor)))
                }
            };
        }
        let (job_id, warning) = self.order(ctx).await?;
        cursor.job_id = Some(job_id.clone());
        cursor.warnings.extend(warning);
        Ok(Step::Wait {
            cursor: to_value(&cursor),
            hint: None,
            poll: false,
            note: format!("ordered; 1C job {job_id}"),
        })
    }
}

fn to_value(cursor: &Cursor) -> serde_json::Value {
    serde_json::to_value(cursor).unwrap_or_default()
}

#[cfg(test)]
mod tests;
