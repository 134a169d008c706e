//! The drop directory: request files become jobs.
//!
//! [`Inbox::scan_once`] looks at every file once and never aborts on a bad
//! one. Dot-files, `*.tmp`, `*.part` and folders are ignored, so writers can
//! write-then-rename; a file changed within `inbox.settle` is left for the
//! next scan (it may be half-written). A request file is moved to
//! `accepted/` only after its job is committed to the store; a bad one goes
//! to `rejected/` with `STEM.error.txt` saying exactly what is wrong.
//! Nothing is ever deleted.
//!
//! If the daemon dies between the commit and the move, the next scan sees
//! the same file again; it recognises it (same name, same source, same
//! SHA-256) and only finishes the move.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::download::{ensure_dir, write_atomic};
use crate::job::request::{self, RequestError, RequestFormat};
use crate::job::{Job, now_ms, rfc3339};
use crate::store::{Store, StoreError};

pub const ACCEPTED: &str = "accepted";
pub const REJECTED: &str = "rejected";

/// Why a request was not turned into a job.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The request itself is wrong; the user must fix it.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The store could not take it right now; try again later.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a scan did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ScanReport {
    /// Job names accepted (including ones found already accepted).
    pub accepted: Vec<String>,
    /// File names rejected, with the reason.
    pub rejected: Vec<(String, String)>,
    /// Files left for a later scan (still being written, or the store was busy).
    pub deferred: usize,
}

/// Turns request bytes into a stored job: the one path shared by the drop
/// directory, `docfetch submit` and the API. A duplicate of an identical
/// request from the same source is returned as the existing job.
pub async fn accept(
    store: &Store,
    settings: &Settings,
    bytes: &[u8],
    format: RequestFormat,
    default_name: Option<&str>,
    source: &str,
) -> Result<Job, AcceptError> {
    let sha = request::fingerprint(bytes);
    let parsed = request::parse(bytes, format)?;
    let new = request::prepare(
        parsed,
        default_name,
        settings,
        source,
        sha.clone(),
        now_ms(),
    )?;
    match store.insert(&new).await {
        Ok(job) => Ok(job),
        Err(StoreError::Duplicate { name, existing }) => {
            if existing.request_sha256 == sha && existing.source == source {
                Ok(*existing)
            } else {
                Err(RequestError::Duplicate {
                    name,
                    state: existing.state.to_string(),
                }
                .into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The drop-directory scanner.
pub struct Inbox {
    store: Store,
    settings: Arc<Settings>,
}

impl Inbox {
    pub fn new(store: Store, settings: Arc<Settings>) -> Self {
        Inbox { store, settings }
    }

    fn dir(&self) -> &Path {
        &self.settings.paths.requests
    }

    /// Creates the drop directory and its `accepted/` and `rejected/` folders.
    pub fn prepare_dirs(&self) -> std::io::Result<()> {
        ensure_dir(&self.dir().join(ACCEPTED))?;
        ensure_dir(&self.dir().join(REJECTED))
    }

    /// Looks at every file in the drop directory once.
    pub async fn scan_once(&self) -> std::io::Result<ScanReport> {
        let mut report = ScanReport::default();
        let mut entries = tokio::fs::read_dir(self.dir()).await?;
        let mut names = Vec::new();
        while let Some(entry) = entries.next_entry().await? {
            names.push(entry.file_name());
        }
        // Oldest names first is not knowable cheaply; sorted names make scans
        // repeatable and logs readable.
        names.sort();
        for os_name in names {
            let Some(name) = os_name.to_str().map(str::to_string) else {
                let shown = os_name.to_string_lossy().into_owned();
                if !shown.starts_with('.') {
                    self.reject_raw(
                        &os_name,
                        &shown,
                        "the file name is not valid UTF-8; rename the file",
                        &mut report,
                    )
                    .await;
                }
                continue;
            };
            if is_ignored(&name) {
                continue;
            }
            self.consider(&name, &mut report).await;
        }
        Ok(report)
    }

    async fn consider(&self, name: &str, report: &mut ScanReport) {
        let path = self.dir().join(name);
        let meta = match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) => meta,
            Err(_) => return, // gone since the listing: someone else took it
        };
        if meta.is_dir() {
            return;
        }
        if meta.file_type().is_symlink() {
            return self
                .reject(
                    name,
                    "the request is a symbolic link; links are not followed, drop the file itself",
                    report,
                )
                .await;
        }
        if !meta.is_file() {
            return self
                .reject(
                    name,
                    "the request is not a regular file (a FIFO, socket or device?)",
                    report,
                )
                .await;
        }
        let changed = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let age = SystemTime::now()
            .duration_since(changed)
            .unwrap_or(Duration::ZERO);
        if age < self.settings.inbox.settle {
            report.deferred += 1;
            return;
        }
        let format = match RequestFormat::from_path(Path::new(name)) {
            Ok(format) => format,
            Err(e) => return self.reject(name, &e.to_string(), report).await,
        };
        let limit = self.settings.inbox.max_request_size;
        if meta.len() > limit {
            let e = RequestError::TooLarge {
                size: meta.len(),
                limit,
            };
            return self.reject(name, &e.to_string(), report).await;
        }
        let bytes = match read_limited(&path, limit).await {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(file = %name, error = %e, "cannot read a request file; will try again");
                report.deferred += 1;
                return;
            }
        };
        let stem = Path::new(name)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(name);
        match accept(
            &self.store,
            &self.settings,
            &bytes,
            format,
            Some(stem),
            name,
        )
        .await
        {
            Ok(job) => {
                if let Err(e) = move_aside(self.dir(), name, ACCEPTED).await {
                    // The job is durable; a later scan recognises the file and retries the move.
                    error!(file = %name, error = %e, "job accepted but the request file could not be moved");
                    return;
                }
                info!(file = %name, job = %job.name, job_id = %job.id, "request accepted");
                crate::metrics::request("inbox", true);
                report.accepted.push(job.name);
            }
            Err(AcceptError::Request(e)) => self.reject(name, &e.to_string(), report).await,
            Err(AcceptError::Store(e)) => {
                error!(file = %name, error = %e, "the store refused a request; it stays for the next scan");
                report.deferred += 1;
            }
        }
    }

    async fn reject(&self, name: &str, reason: &str, report: &mut ScanReport) {
        self.reject_raw(std::ffi::OsStr::new(name), name, reason, report)
            .await;
    }

    async fn reject_raw(
        &self,
        os_name: &std::ffi::OsStr,
        shown: &str,
        reason: &str,
        report: &mut ScanReport,
    ) {
        warn!(file = %shown, reason, "request rejected");
        let rejected = self.dir().join(REJECTED);
        let (target, stem) = free_name(&rejected, shown);
        let note = format!(
            "docfetch rejected this request.\n\nfile:   {shown}\nreason: {reason}\ntime:   {}\n\nNothing was run. Fix the file and drop it into the requests directory again.\n",
            rfc3339(now_ms())
        );
        if let Err(e) = write_atomic(&rejected, &format!("{stem}.error.txt"), note.as_bytes()).await
        {
            error!(file = %shown, error = %e, "cannot write the rejection note; the file stays in place");
            report.deferred += 1;
            return;
        }
        match tokio::fs::rename(self.dir().join(os_name), &target).await {
            Ok(()) => {
                crate::metrics::request("inbox", false);
                report
                    .rejected
                    .push((shown.to_string(), reason.to_string()));
            }
            Err(e) => {
                error!(file = %shown, error = %e, "cannot move a rejected request aside");
                report.deferred += 1;
            }
        }
    }

    /// The driver: scans every `inbox.scan_interval` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.scan_once().await {
                error!(dir = %self.dir().display(), error = %e, "cannot scan the requests directory");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.inbox.scan_interval) => {}
            }
        }
    }
}

/// Files writers use while writing, and hidden files, are not requests.
pub fn is_ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

/// Reads at most `limit + 1` bytes (the size was checked, but a file can grow).
async fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

/// A name in `dir` not yet taken: `name` itself, or with a time stamp added
/// before the extension. Returns the target path and the stem used for notes.
fn free_name(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = Path::new(name);
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name)
        .to_string();
    let ext = path
        .extension()
        .and_then(|s| s.to_str())
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    let candidate = dir.join(name);
    if !candidate.exists() && !dir.join(format!("{stem}.error.txt")).exists() {
        return (candidate, stem);
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    for n in 0.. {
        let stem = if n == 0 {
            format!("{stem}.{stamp}")
        } else {
            format!("{stem}.{stamp}-{n}")
        };
        let candidate = dir.join(format!("{stem}{ext}"));
        if !candidate.exists() {
            return (candidate, stem);
        }
    }
    unreachable!("an unbounded range always yields a free name")
}

/// Moves `dir/name` into `dir/folder/`, never overwriting an earlier file.
async fn move_aside(dir: &Path, name: &str, folder: &str) -> std::io::Result<()> {
    let (target, _) = free_name(&dir.join(folder), name);
    tokio::fs::rename(dir.join(name), target).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_temporary_files_are_ignored() {
        for name in [".hidden.json", "x.json.tmp", "x.json.part", ".x.json.swp"] {
            assert!(is_ignored(name), "{name}");
        }
        assert!(!is_ignored("usn-2018q3.json"));
    }

    #[test]
    fn names_already_taken_get_a_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let (first, stem) = free_name(dir.path(), "a.json");
        assert_eq!(first, dir.path().join("a.json"));
        assert_eq!(stem, "a");
        std::fs::write(&first, b"x").unwrap();
        let (second, stem) = free_name(dir.path(), "a.json");
        assert_ne!(second, first);
        assert!(stem.starts_with("a.2"), "{stem}");
        assert!(second.to_str().unwrap().ends_with(".json"));
    }
}
