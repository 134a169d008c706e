//! The receipt, `output/NAME/job.json`: written last, atomically, when a job
//! finishes (done, failed or cancelled). Its appearance is the signal that a
//! job is over; scripts can wait for it. It never contains a secret.
//!
//! A job's receipt is written between its two final commits (see
//! [`Job::settled`](crate::job::Job::settled)): after the commit that
//! stores its outcome, so it never says done for an outcome the store
//! could lose, and before the commit that moves the job to `done` or
//! `failed`, so nothing reads the job as finished before its receipt is on
//! disk. It is made durable the same way as a downloaded file (`.part`,
//! `fdatasync`, rename, `fsync` of the folder), in the file committer's
//! batches ([`crate::durable`]) with the receipts and files of other jobs
//! finishing at the same time.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::beneath::Subfolder;
use crate::download;
use crate::durable;
use crate::filename::RECEIPT_NAME;
use crate::job::{Job, JobState, SavedFile, rfc3339};

/// What `job.json` holds.
#[derive(Debug, Serialize)]
pub struct Receipt<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub account: &'a str,
    pub provider: &'a str,
    pub operation: &'a str,
    pub state: JobState,
    pub files: &'a [SavedFile],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub warnings: &'a [String],
    /// Transient errors in a row at the end (0 when the last step succeeded).
    pub attempts: u32,
    /// "Not ready yet" answers received.
    pub polls: u32,
    /// Times a daemon ran one of the job's steps.
    pub steps: u32,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub last_error: Option<&'a str>,
    pub source: &'a str,
}

impl<'a> Receipt<'a> {
    pub fn of(job: &'a Job) -> Receipt<'a> {
        let (files, warnings) = match &job.result {
            Some(result) => (result.files.as_slice(), result.warnings.as_slice()),
            None => (&[][..], &[][..]),
        };
        Receipt {
            id: &job.id,
            name: &job.name,
            account: &job.account,
            provider: &job.provider,
            operation: &job.operation,
            state: job.state,
            files,
            warnings,
            attempts: job.attempts,
            polls: job.polls,
            steps: job.steps,
            created_at: rfc3339(job.created_at),
            finished_at: job.finished_at.map(rfc3339),
            last_error: job.last_error.as_deref(),
            source: &job.source,
        }
    }
}

/// `output/NAME/`, as a path (for messages, hooks and listings).
pub fn job_dir(output_root: &Path, job: &Job) -> PathBuf {
    output_root.join(&job.name)
}

/// `output/NAME/`, as the folder files are written to: reached through the
/// output root, never through a symbolic link at `NAME`.
pub fn job_folder(output_root: &Path, job: &Job) -> Subfolder {
    Subfolder::new(output_root, job.name.clone())
}

/// Writes the receipt of `job` (which should be in a finished state) and
/// sweeps leftovers of interrupted downloads from its folder.
pub async fn write(output_root: &Path, job: &Job) -> std::io::Result<PathBuf> {
    let folder = job_folder(output_root, job);
    let mut text = serde_json::to_vec_pretty(&Receipt::of(job)).map_err(std::io::Error::other)?;
    text.push(b'\n');
    let path = folder.path().join(RECEIPT_NAME);
    // One hand-off to a blocking thread to write the receipt; its syncs and
    // rename are the committer's.
    let staged = download::blocking(move || {
        let (dir, made_in) = folder.open_staging()?;
        download::remove_stale_parts(&dir);
        durable::Staged::write(dir, RECEIPT_NAME, &text, made_in)
    })
    .await?;
    durable::commit(staged).await?;
    Ok(path)
}

/// Removes a receipt when a job is queued again (its appearance would
/// otherwise claim the job is finished).
pub fn remove(output_root: &Path, job: &Job) -> std::io::Result<()> {
    let removed = job_folder(output_root, job)
        .open(false)
        .and_then(|dir| dir.remove_file(std::ffi::OsStr::new(RECEIPT_NAME)));
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
