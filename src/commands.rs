//! What the operator can do to one job, written once for every interface
//! that offers it (`docfetch cancel|retry` and `POST /api/jobs/NAME/cancel|retry`).
//!
//! Each command is the store's compare-and-set transition first, and only
//! then its effects on disk and at the service: a receipt says "finished",
//! so it is written after the cancellation is committed, never before; a
//! retried job's old receipt is removed after it is queued again. The
//! effects that come after the commit cannot undo it, so their failures
//! come back as [`Warning`]s for the caller to show or log, not as errors.
//!
//! This module sits above `store`, `receipt` and `providers` (it uses all
//! three), which is why it is not inside `job`, which they all use.

use crate::config::Settings;
use crate::job::{Job, now_ms};
use crate::providers::Providers;
use crate::store::{Store, StoreError};

/// Something that went wrong after the transition was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// The cancelled job's receipt could not be written.
    ReceiptNotWritten(String),
    /// The service was not told about the cancellation (OFD's `CancelUrl`).
    ServiceNotTold(String),
    /// The retried job's old receipt could not be removed.
    OldReceiptKept(String),
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::ReceiptNotWritten(e) => write!(f, "cannot write the receipt: {e}"),
            Warning::ServiceNotTold(e) => write!(
                f,
                "the job is cancelled here, but the service was not told: {e}"
            ),
            Warning::OldReceiptKept(e) => write!(f, "cannot remove the old receipt: {e}"),
        }
    }
}

/// A command's result: the job as the store now has it, and what failed after.
#[derive(Debug)]
pub struct Outcome {
    pub job: Job,
    pub warnings: Vec<Warning>,
}

/// queued/waiting/running → cancelled; then the receipt, then the service
/// where it can hear a cancellation. `key` is a job name or id.
pub async fn cancel(
    store: &Store,
    settings: &Settings,
    providers: &Providers,
    http: &reqwest::Client,
    key: &str,
) -> Result<Outcome, StoreError> {
    let job = store.cancel(key, now_ms()).await?;
    let mut warnings = Vec::new();
    if let Err(e) = crate::receipt::write(&settings.paths.output, &job).await {
        warnings.push(Warning::ReceiptNotWritten(e.to_string()));
    }
    if let Some(account) = providers.get(&job.account)
        && let Err(e) = account.provider.cancel_remote(http, &job).await
    {
        warnings.push(Warning::ServiceNotTold(e.to_string()));
    }
    Ok(Outcome { job, warnings })
}

/// failed/cancelled → queued, from the start with a fresh deadline
/// (`scheduler.deadline` from now); then the old receipt goes, so the
/// folder no longer says "finished".
pub async fn retry(store: &Store, settings: &Settings, key: &str) -> Result<Outcome, StoreError> {
    let now = now_ms();
    let deadline = now.saturating_add(
        i64::try_from(settings.scheduler.deadline.as_millis()).unwrap_or(i64::MAX / 2),
    );
    let job = store.retry(key, now, deadline).await?;
    let mut warnings = Vec::new();
    if let Err(e) = crate::receipt::remove(&settings.paths.output, &job) {
        warnings.push(Warning::OldReceiptKept(e.to_string()));
    }
    Ok(Outcome { job, warnings })
}
