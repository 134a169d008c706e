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
//! Whoever can write to the drop directory can swap what a name points to
//! at any moment, so nothing is trusted from the listing: a claimed file is
//! opened with `O_NOFOLLOW | O_NONBLOCK` and the *opened* descriptor is
//! checked (`fstat`: a regular file, not over `inbox.max_request_size`). A
//! symbolic link, FIFO or device swapped in after the scan is rejected
//! unread, and a FIFO never blocks the scan. `accepted/` and `rejected/` are
//! reached through the drop directory's descriptor, never through a link
//! planted under their names ([`crate::beneath`]).
//!
//! Several daemons may watch one directory (a PostgreSQL fleet): a file is
//! claimed by renaming it to `.NAME.claimed-TAG` before it is read, so
//! exactly one daemon handles it (the others find it gone). A claim lives
//! for milliseconds; one older than [`CLAIM_STALE`] belongs to a daemon that
//! died mid-way and is put back under its name for the next scan. A daemon
//! with a SQLite store (one daemon per store) puts back every claim it finds
//! when it starts.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::beneath::Folder;
use crate::config::Settings;
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
    let new = crate::intake::prepare(
        parsed,
        default_name,
        settings,
        crate::intake::Trust::Submitted,
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

/// A test's stand-in for another writer of the drop directory: runs
/// between the claim (rename) and the open, with the claimed file's path.
#[cfg(test)]
type AfterClaim = Box<dyn Fn(&Path) + Send + Sync>;

/// The drop-directory scanner.
pub struct Inbox {
    store: Store,
    settings: Arc<Settings>,
    /// Tells this scanner's claims from other daemons'.
    tag: String,
    #[cfg(test)]
    after_claim: Option<AfterClaim>,
}

/// What opening a claimed request found.
enum Opened {
    /// The request's bytes, read from a regular file within the limit.
    Bytes(Vec<u8>),
    /// Not a request to read: why, for the rejection note.
    Refused(String),
}

impl Inbox {
    pub fn new(store: Store, settings: Arc<Settings>) -> Self {
        let tag = format!("{}-{:08x}", std::process::id(), fastrand::u32(..));
        Inbox {
            store,
            settings,
            tag,
            #[cfg(test)]
            after_claim: None,
        }
    }

    fn dir(&self) -> &Path {
        &self.settings.paths.requests
    }

    /// Creates the drop directory and its `accepted/` and `rejected/`
    /// folders; a symbolic link under either name is an error.
    pub fn prepare_dirs(&self) -> std::io::Result<()> {
        let requests = Folder::open_root(self.dir(), true)?;
        requests.child(ACCEPTED, true)?;
        requests.child(REJECTED, true)?;
        Ok(())
    }

    /// Looks at every file in the drop directory once.
    #[tracing::instrument(name = "inbox_scan", skip_all)]
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
            // `accepted/` and `rejected/` are docfetch's own, whatever they
            // turned into (a link there is refused when it is used).
            if is_ignored(&name) || name == ACCEPTED || name == REJECTED {
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
            return self.reject(name, SYMLINK, report).await;
        }
        if !meta.is_file() {
            return self.reject(name, NOT_REGULAR, report).await;
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
        #[cfg(test)]
        if let Some(hook) = &self.after_claim {
            hook(&self.dir().join(&claimed));
        }
        self.handle_claimed(name, &claimed, report).await;
    }

    /// Handles a file claimed as `claimed`; it leaves the claim by moving to
    /// `accepted/` or `rejected/`, or back to `name` to be tried again.
    async fn handle_claimed(&self, name: &str, claimed: &str, report: &mut ScanReport) {
        let format = match RequestFormat::from_path(Path::new(name)) {
            Ok(format) => format,
            Err(e) => {
                return self
                    .reject_claimed(name, claimed, &e.to_string(), report)
                    .await;
            }
        };
        let path = self.dir().join(claimed);
        let limit = self.settings.inbox.max_request_size;
        let opened = crate::download::blocking(move || Ok(open_request(&path, limit))).await;
        let bytes = match opened {
            Ok(Ok(Opened::Bytes(bytes))) => bytes,
            Ok(Ok(Opened::Refused(reason))) => {
                return self.reject_claimed(name, claimed, &reason, report).await;
            }
            // Removed since the claim (by whoever can write here): nothing to do.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return,
            Ok(Err(e)) | Err(e) => {
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
                if let Err(e) = self.file_away(claimed, name, ACCEPTED, None).await {
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
        if !self
            .reject_raw(std::ffi::OsStr::new(claimed), name, reason, report)
            .await
        {
            // Back under its name, for the next scan or for a person.
            self.unclaim(name, claimed).await;
        }
    }

    /// Gives a claimed file its name back, for a later scan.
    async fn unclaim(&self, name: &str, claimed: &str) {
        if let Err(e) = tokio::fs::rename(self.dir().join(claimed), self.dir().join(name)).await {
            // It stays claimed; the stale-claim check puts it back later.
            error!(file = %name, error = %e, "cannot give a claimed request file its name back");
        }
    }

    /// Moves `os_name` into `rejected/` with a note; whether it did.
    async fn reject_raw(
        &self,
        os_name: &std::ffi::OsStr,
        shown: &str,
        reason: &str,
        report: &mut ScanReport,
    ) -> bool {
        warn!(file = %shown, reason, "request rejected");
        let note = format!(
            "docfetch rejected this request.\n\nfile:   {shown}\nreason: {reason}\ntime:   {}\n\nNothing was run. Fix the file and drop it into the requests directory again.\n",
            rfc3339(now_ms())
        );
        match self
            .file_away(os_name, shown, REJECTED, Some(note.into_bytes()))
            .await
        {
            Ok(()) => {
                crate::metrics::request("inbox", false);
                report
                    .rejected
                    .push((shown.to_string(), reason.to_string()));
                true
            }
            Err(e) => {
                error!(file = %shown, reason, error = %e, "cannot move a rejected request aside (with its note); the file stays in place");
                report.deferred += 1;
                false
            }
        }
    }

    /// Moves `from` (a name in the drop directory) into `folder`
    /// (`accepted/` or `rejected/`) as `shown`, never overwriting an earlier
    /// file; with a `note`, writes `STEM.error.txt` beside it first. All of
    /// it through the drop directory's descriptor: a link planted at
    /// `rejected` or `accepted` is refused, not followed.
    async fn file_away(
        &self,
        from: impl AsRef<std::ffi::OsStr>,
        shown: &str,
        folder: &'static str,
        note: Option<Vec<u8>>,
    ) -> std::io::Result<()> {
        let from = from.as_ref().to_os_string();
        let (dir, shown) = (self.dir().to_path_buf(), shown.to_string());
        crate::download::blocking(move || {
            let requests = Folder::open_root(&dir, false)?;
            let target = requests.child(folder, true)?;
            let (name, stem) = free_name(&target, &shown);
            if let Some(note) = note {
                crate::durable::write_atomic(&target, &format!("{stem}.error.txt"), &note)?;
            }
            requests.rename(&from, &target, &name)
        })
        .await
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

/// Opens a claimed request without following a link and without
/// blocking on a FIFO, and reads it only when the opened descriptor is a
/// regular file within `limit` bytes. Refusals are answers, not errors: a
/// swapped-in link, FIFO, socket or device is rejected, never read.
fn open_request(path: &Path, limit: u64) -> std::io::Result<Opened> {
    use rustix::fs::OFlags;
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) => {
            // What is under the name now says whether the failure is the
            // file's nature (rejected) or a passing trouble (tried again).
            return match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => Ok(Opened::Refused(SYMLINK.into())),
                Ok(meta) if !meta.is_file() => Ok(Opened::Refused(NOT_REGULAR.into())),
                _ => Err(e),
            };
        }
    };
    // `fstat` of what was opened, not of what the name showed at the scan.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Opened::Refused(NOT_REGULAR.into()));
    }
    let too_large = |size| Opened::Refused(RequestError::TooLarge { size, limit }.to_string());
    if meta.len() > limit {
        return Ok(too_large(meta.len()));
    }
    // At most `limit + 1` bytes: the size was checked, but a file can grow.
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Ok(too_large(bytes.len() as u64));
    }
    Ok(Opened::Bytes(bytes))
}

const SYMLINK: &str =
    "the request is a symbolic link; links are not followed, drop the file itself";
const NOT_REGULAR: &str = "the request is not a regular file (a FIFO, socket or device?)";

/// A name in `folder` not yet taken: `name` itself, or with a time stamp
/// added before the extension. Returns the name and the stem used for notes.
fn free_name(folder: &Folder, name: &str) -> (String, String) {
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
    let taken = |candidate: &str| folder.contains(std::ffi::OsStr::new(candidate));
    if !taken(name) && !taken(&format!("{stem}.error.txt")) {
        return (name.to_string(), stem);
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    for n in 0.. {
        let stem = if n == 0 {
            format!("{stem}.{stamp}")
        } else {
            format!("{stem}.{stamp}-{n}")
        };
        let candidate = format!("{stem}{ext}");
        if !taken(&candidate) && !taken(&format!("{stem}.error.txt")) {
            return (candidate, stem);
        }
    }
    unreachable!("an unbounded range always yields a free name")
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
        let folder = Folder::open_root(dir.path(), false).unwrap();
        let (first, stem) = free_name(&folder, "a.json");
        assert_eq!(first, "a.json");
        assert_eq!(stem, "a");
        std::fs::write(dir.path().join(&first), b"x").unwrap();
        let (second, stem) = free_name(&folder, "a.json");
        assert_ne!(second, first);
        assert!(stem.starts_with("a.2"), "{stem}");
        assert!(second.ends_with(".json"));
    }

    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;

    const REQUEST: &str =
        r#"{"account": "fresh", "operation": "tax_usn_calculator", "params": {}}"#;

    /// A drop directory with no settle time, on its own SQLite store.
    async fn inbox(dir: &Path) -> Inbox {
        let toml = format!(
            r#"
[store]
url = "sqlite://{d}/docfetch.db"
[paths]
requests = "{d}/requests"
output = "{d}/output"
[inbox]
settle = "0s"
[accounts.fresh]
provider = "1c-fresh"
base_url = "https://fresh.example/a/hs/dt/storage"
username = "api"
password = "p"
"#,
            d = dir.display()
        );
        let settings = Settings::from_toml(&toml, &Default::default()).unwrap();
        let store = Store::open(&settings.store.url).await.unwrap();
        let inbox = Inbox::new(store, Arc::new(settings));
        inbox.prepare_dirs().unwrap();
        inbox
    }

    /// A scan bounded by a deadline: a scan blocked on a FIFO fails the
    /// test instead of hanging it.
    async fn scan(inbox: &Inbox) -> ScanReport {
        tokio::time::timeout(Duration::from_secs(60), inbox.scan_once())
            .await
            .expect("the scan returned (it did not block)")
            .unwrap()
    }

    fn mkfifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_plain_request_file_becomes_a_job() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = inbox(dir.path()).await;
        std::fs::write(dir.path().join("requests/plain.json"), REQUEST).unwrap();
        let report = scan(&inbox).await;
        assert_eq!(report.accepted, vec!["plain".to_string()], "{report:?}");
        assert!(inbox.store.find("plain").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_fifo_swapped_in_after_the_claim_is_rejected_unread_and_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox = inbox(dir.path()).await;
        std::fs::write(dir.path().join("requests/x.json"), REQUEST).unwrap();
        // Between the claim and the open, another writer replaces the file
        // by a FIFO holding a valid request, and keeps its write end open:
        // a reader would get the request and then wait for the end forever.
        let writer = Arc::new(std::sync::Mutex::new(None));
        let held = writer.clone();
        inbox.after_claim = Some(Box::new(move |claimed: &Path| {
            std::fs::remove_file(claimed).unwrap();
            mkfifo(claimed);
            let mut pipe = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(claimed)
                .unwrap();
            pipe.write_all(REQUEST.as_bytes()).unwrap();
            *held.lock().unwrap() = Some(pipe);
        }));
        let report = scan(&inbox).await;
        assert_eq!(report.rejected.len(), 1, "{report:?}");
        assert_eq!(report.rejected[0].0, "x.json");
        assert!(
            report.rejected[0].1.contains("not a regular file"),
            "{report:?}"
        );
        assert!(inbox.store.find("x").await.unwrap().is_none());
        let rejected = dir.path().join("requests/rejected");
        let moved = std::fs::symlink_metadata(rejected.join("x.json")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&moved.file_type()));
        let note = std::fs::read_to_string(rejected.join("x.error.txt")).unwrap();
        assert!(note.contains("not a regular file"), "{note}");
        // Every byte is still in the pipe: the daemon never read from it.
        let mut unread = Vec::new();
        let mut pipe = writer.lock().unwrap().take().unwrap();
        let _ = pipe.read_to_end(&mut unread); // ends with EAGAIN once empty
        assert_eq!(unread, REQUEST.as_bytes());
    }

    #[tokio::test]
    async fn a_symlink_swapped_in_after_the_claim_is_rejected_and_its_target_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox = inbox(dir.path()).await;
        // A request the writer may not read themselves, but the daemon could.
        let secret = dir.path().join("elsewhere.json");
        std::fs::write(
            &secret,
            r#"{"account": "fresh", "operation": "tax_usn_calculator", "name": "stolen"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("requests/y.json"), REQUEST).unwrap();
        let target = secret.clone();
        inbox.after_claim = Some(Box::new(move |claimed: &Path| {
            std::fs::remove_file(claimed).unwrap();
            std::os::unix::fs::symlink(&target, claimed).unwrap();
        }));
        let report = scan(&inbox).await;
        assert_eq!(report.rejected.len(), 1, "{report:?}");
        assert!(report.rejected[0].1.contains("symbolic link"), "{report:?}");
        assert!(inbox.store.find("stolen").await.unwrap().is_none());
        assert!(inbox.store.find("y").await.unwrap().is_none());
        let moved = dir.path().join("requests/rejected/y.json");
        assert!(
            std::fs::symlink_metadata(&moved)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(secret.exists(), "the link's target stays where it was");
    }

    #[tokio::test]
    async fn a_file_grown_past_the_limit_after_the_scan_is_rejected_by_its_opened_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox = inbox(dir.path()).await;
        std::fs::write(dir.path().join("requests/z.json"), REQUEST).unwrap();
        let limit = inbox.settings.inbox.max_request_size;
        inbox.after_claim = Some(Box::new(move |claimed: &Path| {
            let big = vec![b' '; usize::try_from(limit).unwrap() + 1];
            std::fs::OpenOptions::new()
                .append(true)
                .open(claimed)
                .unwrap()
                .write_all(&big)
                .unwrap();
        }));
        let report = scan(&inbox).await;
        assert_eq!(report.rejected.len(), 1, "{report:?}");
        assert!(report.rejected[0].1.contains("limited"), "{report:?}");
        assert!(inbox.store.find("z").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_link_put_in_place_of_the_rejected_folder_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = inbox(dir.path()).await;
        // A writer of the drop directory swaps `rejected/` for a link to a
        // folder the daemon can write (here: a stand-in for schedules.d).
        let elsewhere = dir.path().join("schedules.d");
        std::fs::create_dir(&elsewhere).unwrap();
        let rejected = dir.path().join("requests/rejected");
        std::fs::remove_dir(&rejected).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &rejected).unwrap();
        std::fs::write(dir.path().join("requests/evil.toml"), "name = 1\n").unwrap();
        let report = scan(&inbox).await;
        assert!(report.rejected.is_empty(), "{report:?}");
        assert_eq!(report.deferred, 1, "{report:?}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        let e = inbox.prepare_dirs().unwrap_err();
        assert!(crate::beneath::is_refused(&e), "{e}");
        // Nothing lost: the request is back under its name for a person.
        assert!(dir.path().join("requests/evil.toml").exists());
    }
}
