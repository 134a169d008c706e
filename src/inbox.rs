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
//!
//! Several daemons may watch one directory (a PostgreSQL fleet): a file is
//! claimed by renaming it to `.NAME.claimed-TAG` before it is read, so
//! exactly one daemon handles it (the others find it gone). A claim lives
//! for milliseconds; one older than [`CLAIM_STALE`] belongs to a daemon that
//! died mid-way and is put back under its name for the next scan. A daemon
//! with a SQLite store (one daemon per store) puts back every claim it finds
//! when it starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::download::{ensure_dir, write_atomic};
use crate::job::request::{self, RequestError, RequestFormat};
use crate::job::{Job, now_ms, rfc3339};
use crate::store::{Store, StoreError};

pub const ACCEPTED: &str = "accepted";
pub const REJECTED: &str = "rejected";
/// Marks a claimed request file: `.NAME.claimed-TAG`.
const CLAIMED: &str = ".claimed-";
/// Age past which a claim is taken to be a dead daemon's.
pub const CLAIM_STALE: Duration = Duration::from_secs(120);

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
    /// Tells this scanner's claims from other daemons'.
    tag: String,
}

impl Inbox {
    pub fn new(store: Store, settings: Arc<Settings>) -> Self {
        let tag = format!("{}-{:08x}", std::process::id(), fastrand::u32(..));
        Inbox {
            store,
            settings,
            tag,
        }
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
        self.put_back_claims(&names, CLAIM_STALE).await;
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
        crate::metrics::inbox_scanned();
        Ok(report)
    }

    /// Puts back every claim in the directory, whatever its age: for a
    /// daemon that knows it is the only one (SQLite), at start-up.
    pub async fn put_back_all_claims(&self) -> std::io::Result<usize> {
        let mut entries = tokio::fs::read_dir(self.dir()).await?;
        let mut names = Vec::new();
        while let Some(entry) = entries.next_entry().await? {
            names.push(entry.file_name());
        }
        Ok(self.put_back_claims(&names, Duration::ZERO).await)
    }

    /// Renames claims older than `older_than` back to their request names.
    async fn put_back_claims(&self, names: &[std::ffi::OsString], older_than: Duration) -> usize {
        use std::os::unix::fs::MetadataExt as _;
        let mut put_back = 0;
        for os_name in names {
            let Some((name, original)) = os_name.to_str().and_then(|n| Some((n, claimed_name(n)?)))
            else {
                continue;
            };
            let claimed = self.dir().join(name);
            let Ok(meta) = tokio::fs::symlink_metadata(&claimed).await else {
                continue;
            };
            // A rename sets the change time, so ctime is when it was claimed.
            let claimed_at =
                UNIX_EPOCH + Duration::from_secs(u64::try_from(meta.ctime()).unwrap_or(0));
            let age = SystemTime::now()
                .duration_since(claimed_at)
                .unwrap_or(Duration::ZERO);
            if age < older_than {
                continue;
            }
            let target = self.dir().join(original);
            if tokio::fs::symlink_metadata(&target).await.is_ok() {
                warn!(file = %original, claim = %name, "a left-over claim has the name of a newer request; leaving it for a person to sort out");
                continue;
            }
            match tokio::fs::rename(&claimed, &target).await {
                Ok(()) => {
                    warn!(file = %original, "a request claimed by a daemon that stopped mid-way is back for the next scan");
                    put_back += 1;
                }
                // Another daemon put it back first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => error!(file = %original, error = %e, "cannot put back a left-over claim"),
            }
        }
        put_back
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
        // Claim the file before reading it: of several daemons watching this
        // directory, only the one whose rename succeeds goes on.
        let claimed = format!(".{name}{CLAIMED}{}", self.tag);
        match tokio::fs::rename(&path, self.dir().join(&claimed)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                warn!(file = %name, error = %e, "cannot claim a request file; will try again");
                report.deferred += 1;
                return;
            }
        }
        self.handle_claimed(name, &claimed, &meta, report).await;
    }

    /// Handles a file claimed as `claimed`; it leaves the claim by moving to
    /// `accepted/` or `rejected/`, or back to `name` to be tried again.
    async fn handle_claimed(
        &self,
        name: &str,
        claimed: &str,
        meta: &std::fs::Metadata,
        report: &mut ScanReport,
    ) {
        let path = self.dir().join(claimed);
        let format = match RequestFormat::from_path(Path::new(name)) {
            Ok(format) => format,
            Err(e) => {
                return self
                    .reject_claimed(name, claimed, &e.to_string(), report)
                    .await;
            }
        };
        let limit = self.settings.inbox.max_request_size;
        if meta.len() > limit {
            let e = RequestError::TooLarge {
                size: meta.len(),
                limit,
            };
            return self
                .reject_claimed(name, claimed, &e.to_string(), report)
                .await;
        }
        let bytes = match read_limited(&path, limit).await {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(file = %name, error = %e, "cannot read a request file; will try again");
                self.unclaim(name, claimed).await;
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
                if let Err(e) = move_claimed(self.dir(), claimed, name, ACCEPTED).await {
                    // The job is durable; a later scan recognises the file and retries the move.
                    error!(file = %name, error = %e, "job accepted but the request file could not be moved");
                    self.unclaim(name, claimed).await;
                    return;
                }
                info!(file = %name, job = %job.name, job_id = %job.id, "request accepted");
                crate::metrics::request("inbox", true);
                report.accepted.push(job.name);
            }
            Err(AcceptError::Request(e)) => {
                self.reject_claimed(name, claimed, &e.to_string(), report)
                    .await;
            }
            Err(AcceptError::Store(e)) => {
                error!(file = %name, error = %e, "the store refused a request; it stays for the next scan");
                self.unclaim(name, claimed).await;
                report.deferred += 1;
            }
        }
    }

    async fn reject(&self, name: &str, reason: &str, report: &mut ScanReport) {
        self.reject_raw(std::ffi::OsStr::new(name), name, reason, report)
            .await;
    }

    /// Rejects a claimed file under its request name.
    async fn reject_claimed(
        &self,
        name: &str,
        claimed: &str,
        reason: &str,
        report: &mut ScanReport,
    ) {
        self.reject_raw(std::ffi::OsStr::new(claimed), name, reason, report)
            .await;
    }

    /// Gives a claimed file its name back, for a later scan.
    async fn unclaim(&self, name: &str, claimed: &str) {
        if let Err(e) = tokio::fs::rename(self.dir().join(claimed), self.dir().join(name)).await {
            // It stays claimed; the stale-claim check puts it back later.
            error!(file = %name, error = %e, "cannot give a claimed request file its name back");
        }
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

/// Moves the claimed `dir/claimed` into `dir/folder/` under `name`, never
/// overwriting an earlier file.
async fn move_claimed(dir: &Path, claimed: &str, name: &str, folder: &str) -> std::io::Result<()> {
    let (target, _) = free_name(&dir.join(folder), name);
    tokio::fs::rename(dir.join(claimed), target).await
}

/// The request name inside a claim's name (`.NAME.claimed-TAG`).
fn claimed_name(file: &str) -> Option<&str> {
    let inner = file.strip_prefix('.')?;
    let at = inner.rfind(CLAIMED)?;
    let name = &inner[..at];
    (!name.is_empty() && !is_ignored(name)).then_some(name)
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
