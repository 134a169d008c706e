//! The durability proof read from system calls: parses what
//! `strace -f -y -xx -s 8192` recorded of the real daemon and checks, for
//! every file that ended up in `output/`, that nothing was acknowledged
//! before the disk had it.
//!
//! # What is checked, per file `F` (any job, in any interleaving)
//!
//! 1. `F` got its final name by a rename (`rename`, `renameat`,
//!    `renameat2`) from a temporary name `S`: it never appeared half-written.
//! 2. **Data before name**: an `fsync`/`fdatasync` of `S` (or a `syncfs`
//!    / `sync` of everything) *started after the last write* to `S` and
//!    *returned before the rename started*.
//! 3. **Name before commit**: an `fsync`/`fdatasync` of `F`'s folder
//!    started after the rename returned and returned before the store
//!    commit that covers `F` started writing its commit frame; and every
//!    folder on the way to `F` that the run created (`mkdir`, `mkdirat`)
//!    had its own parent synced after it was made, before that same commit.
//! 4. **Receipt after outcome**: the first rename into `job.json` of a job
//!    with files started after the commit that first recorded those files
//!    was synced (the receipt never says done before the outcome is in the
//!    store).
//!
//! # Which commit covers a file (our reading of "the commit that records the job done")
//!
//! The store is SQLite in WAL mode. A transaction is a run of frames
//! appended to `STORE-wal`: each frame is a 24-byte header then one page,
//! written by `pwrite64`; the last frame of a transaction (its *commit
//! frame*) carries the database size in header bytes 4–7. SQLite's
//! recovery replays every frame up to the last valid commit frame it finds
//! in the file, so a commit can survive a power cut as soon as its commit
//! frame is *written* — the kernel may write the page back to the disk
//! before the `fsync` that follows. So the moment that matters is the
//! start of the `pwrite64` of the commit frame, not the WAL's `fsync`:
//! whatever a commit depends on must be synced before it.
//!
//! A job's `done` is recorded by the commit that inserts its `done` event
//! (the `job_events` row holds the job id, a timestamp, `done`, then
//! `done: …`): that commit also moves the job to `done`, and from it on
//! the API, the CLI and the hooks say done. `job.json` is covered by that
//! commit. A data file is covered by the earlier of that commit and the
//! first commit whose pages hold the file's SHA-256 in hex: the commit
//! that settles the job's result (or a step's checkpoint that remembers
//! the file) — after it, no step would download the file again, so it
//! must already be durable. A commit's bytes are searched as written, so
//! a SHA-256 shared by two files is only looked up for the first job (the
//! done event still covers the others).
//!
//! # How the order of events is read
//!
//! strace stops each thread at a system call's entry and exit and prints in
//! the order it handles the stops. A call printed on one line had nothing
//! else traced between its entry and exit; an interrupted one is printed
//! as `<unfinished ...>` at its entry and `<... resumed>` at its exit. Each
//! call gets the line number of its entry and of its exit; "A returned
//! before B started" is `A.exit < B.entry`. Because a traced thread is
//! stopped until strace has printed its stop, this order is exact for calls
//! that depend on each other.
//!
//! `sync_file_range` is parsed and never counts as a sync: it writes data
//! back without the file's metadata and without flushing the disk's cache.
//! A call strace marks `(INJECTED)` was not run, and a call that failed or
//! never returned (its thread was killed) counts for nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

/// The system calls the proof needs, for `strace -e trace=`.
pub const TRACED: &str = "openat,open,creat,openat2,rename,renameat,renameat2,mkdir,mkdirat,\
fsync,fdatasync,sync_file_range,syncfs,sync,write,pwrite64,writev,pwritev,pwritev2,\
ftruncate,fallocate,copy_file_range,sendfile";

/// One system call, put together from its line (or its unfinished and
/// resumed halves).
#[derive(Debug, Clone)]
pub struct Call {
    pub name: String,
    /// The arguments as printed, split at top-level commas.
    pub args: Vec<String>,
    /// The return value (`None` for `?`: the call never returned).
    pub ret: Option<i64>,
    /// What follows the return value (`</path>` of a returned descriptor).
    pub ret_text: String,
    pub injected: bool,
    /// Line numbers (0-based) of the call's entry and exit.
    pub entry: usize,
    pub exit: usize,
}

impl Call {
    /// Whether the call ran and succeeded.
    pub fn ok(&self) -> bool {
        !self.injected && self.ret.is_some_and(|r| r >= 0)
    }
}

/// Parses a whole trace. Lines that are not system calls (signals, exits)
/// are skipped; a call whose thread died before it returned is kept with
/// `ret: None`.
pub fn parse(text: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: HashMap<u32, (String, String, usize)> = HashMap::new();
    for (line_no, raw) in text.lines().enumerate() {
        let Some((pid, rest)) = split_pid(raw) else {
            continue;
        };
        if let Some(resumed) = rest.strip_prefix("<... ") {
            // `<... NAME resumed>REST) = RET`
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            let Some((first, head, entry)) = pending.remove(&pid) else {
                continue;
            };
            if first != name {
                continue;
            }
            let whole = format!("{head}{tail}");
            if let Some(call) = finish(&first, &whole, entry, line_no) {
                calls.push(call);
            }
            continue;
        }
        if rest.starts_with("---") || rest.starts_with("+++") {
            continue;
        }
        let Some(open) = rest.find('(') else {
            continue;
        };
        let name = rest[..open].to_string();
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.is_empty() {
            continue;
        }
        let body = &rest[open + 1..];
        if let Some(head) = body.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, (name, head.to_string(), line_no));
            continue;
        }
        if let Some(call) = finish(&name, body, line_no, line_no) {
            calls.push(call);
        }
    }
    // Calls cut by the death of their thread: entered, never returned.
    for (name, head, entry) in pending.into_values() {
        calls.push(Call {
            name,
            args: split_args(&head),
            ret: None,
            ret_text: String::new(),
            injected: false,
            entry,
            exit: usize::MAX,
        });
    }
    calls.sort_by_key(|c| (c.entry, c.exit));
    calls
}

/// `PID rest` or `[pid PID] rest`.
fn split_pid(line: &str) -> Option<(u32, &str)> {
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("[pid ") {
        let (pid, rest) = rest.split_once(']')?;
        return Some((pid.trim().parse().ok()?, rest.trim_start()));
    }
    let (pid, rest) = line.split_once(' ')?;
    Some((pid.parse().ok()?, rest.trim_start()))
}

/// Builds a call from `ARGS) = RET…`.
fn finish(name: &str, body: &str, entry: usize, exit: usize) -> Option<Call> {
    let close = matching_paren(body)?;
    let args = split_args(&body[..close]);
    let after = body[close + 1..].trim_start();
    let after = after.strip_prefix('=')?.trim_start();
    let injected = after.contains("(INJECTED)");
    let (value, ret_text) = match after
        .find(|c: char| !(c.is_ascii_digit() || c == '-' || c == 'x' || c.is_ascii_hexdigit()))
    {
        Some(end) => (&after[..end], after[end..].to_string()),
        None => (after, String::new()),
    };
    let ret = if value.is_empty() || after.starts_with('?') {
        None
    } else if let Some(hex) = value.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()
    } else {
        value.parse().ok()
    };
    Some(Call {
        name: name.to_string(),
        args,
        ret,
        ret_text,
        injected,
        entry,
        exit,
    })
}

/// The index of the `)` that closes the argument list (quotes and nesting
/// respected).
fn matching_paren(body: &str) -> Option<usize> {
    let mut depth = 0i32;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '(' | '[' | '{' => depth += 1,
            ')' if depth == 0 => return Some(i),
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Splits arguments at commas outside quotes, brackets and `<…>` paths.
fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0i32;
    let mut quoted = false;
    let mut escaped = false;
    for c in args.chars() {
        if quoted {
            current.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                current.push(c);
            }
            '(' | '[' | '{' | '<' => {
                depth += 1;
                current.push(c);
            }
            ')' | ']' | '}' | '>' => {
                depth -= 1;
                current.push(c);
            }
            ',' if depth == 0 => {
                out.push(current.trim().to_string());
                current.clear();
            }
            _ => current.push(c),
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// Decodes strace's C-style escapes (`\xNN` with `-xx`, and the usual
/// `\n`, `\t`, `\\`, `\"`, octal) into bytes.
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 >= b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = b[i + 1];
        match c {
            b'x' if i + 3 < b.len() + 1 => {
                let hex = std::str::from_utf8(&b[i + 2..(i + 4).min(b.len())]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 4;
                    }
                    Err(_) => {
                        out.push(c);
                        i += 2;
                    }
                }
            }
            b'0'..=b'7' => {
                let mut v: u32 = 0;
                let mut j = i + 1;
                while j < b.len() && j < i + 4 && (b'0'..=b'7').contains(&b[j]) {
                    v = v * 8 + u32::from(b[j] - b'0');
                    j += 1;
                }
                out.push(v as u8);
                i = j;
            }
            b'n' => {
                out.push(b'\n');
                i += 2;
            }
            b't' => {
                out.push(b'\t');
                i += 2;
            }
            b'r' => {
                out.push(b'\r');
                i += 2;
            }
            b'v' => {
                out.push(0x0b);
                i += 2;
            }
            b'f' => {
                out.push(0x0c);
                i += 2;
            }
            _ => {
                out.push(c);
                i += 2;
            }
        }
    }
    out
}

/// The bytes of a `"…"` argument (a trailing `...` marks a cut string).
fn string_arg(arg: &str) -> Option<Vec<u8>> {
    let arg = arg.strip_suffix("...").unwrap_or(arg);
    let inner = arg.strip_prefix('"')?.strip_suffix('"')?;
    Some(unescape(inner))
}

/// The path strace annotated a descriptor with (`N</path>`, `AT_FDCWD</cwd>`).
fn fd_path(arg: &str) -> Option<PathBuf> {
    let start = arg.find('<')?;
    let inner = arg[start + 1..].strip_suffix('>')?;
    Some(PathBuf::from(
        String::from_utf8_lossy(&unescape(inner)).into_owned(),
    ))
}

/// A path argument resolved against a directory descriptor (or the working
/// folder), lexically normalised.
fn resolve(dirfd: Option<&str>, path_arg: &str, cwd: &Path) -> Option<PathBuf> {
    let path = PathBuf::from(String::from_utf8_lossy(&string_arg(path_arg)?).into_owned());
    let base = match dirfd {
        Some(fd) => fd_path(fd).unwrap_or_else(|| cwd.to_path_buf()),
        None => cwd.to_path_buf(),
    };
    Some(normalise(&base.join(path)))
}

/// `a/./b/../c` → `a/c`, without touching the file system.
pub fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// What the calls did to files, in a form the rules read.
#[derive(Debug, Default, Clone)]
struct Effects {
    /// Path → (entry, exit) of each call that changed its data.
    writes: HashMap<PathBuf, Vec<(usize, usize)>>,
    /// (path or `None` for a whole file system, entry, exit) of each sync.
    syncs: Vec<(Option<PathBuf>, usize, usize)>,
    /// (from, to, entry, exit) of each successful rename.
    renames: Vec<(PathBuf, PathBuf, usize, usize)>,
    /// Folder → (entry, exit) of each successful creation.
    mkdirs: HashMap<PathBuf, Vec<(usize, usize)>>,
    /// (offset, bytes, entry, exit) of each write to the store's WAL.
    wal_writes: Vec<(u64, Vec<u8>, usize, usize)>,
    /// (entry, exit) of each sync of the WAL.
    wal_syncs: Vec<(usize, usize)>,
}

fn effects(calls: &[Call], wal: &Path, cwd: &Path) -> Effects {
    let mut e = Effects::default();
    for c in calls.iter().filter(|c| c.ok()) {
        let a = &c.args;
        let fd = |i: usize| a.get(i).and_then(|x| fd_path(x)).map(|p| normalise(&p));
        match c.name.as_str() {
            "write" | "writev" | "ftruncate" | "fallocate" => {
                if let Some(p) = fd(0) {
                    e.writes.entry(p).or_default().push((c.entry, c.exit));
                }
            }
            "pwrite64" | "pwritev" | "pwritev2" => {
                if let Some(p) = fd(0) {
                    if p == wal && c.name == "pwrite64" {
                        let data = a.get(1).and_then(|s| string_arg(s)).unwrap_or_default();
                        let offset = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
                        e.wal_writes.push((offset, data, c.entry, c.exit));
                    }
                    e.writes.entry(p).or_default().push((c.entry, c.exit));
                }
            }
            "copy_file_range" => {
                if let Some(p) = fd(2) {
                    e.writes.entry(p).or_default().push((c.entry, c.exit));
                }
            }
            "sendfile" => {
                if let Some(p) = fd(0) {
                    e.writes.entry(p).or_default().push((c.entry, c.exit));
                }
            }
            "open" | "creat" | "openat" | "openat2" => {
                // A file created or truncated has changed.
                let flags = a
                    .iter()
                    .any(|x| x.contains("O_CREAT") || x.contains("O_TRUNC"))
                    || c.name == "creat";
                if let (true, Some(p)) = (flags, fd_path(&c.ret_text)) {
                    e.writes
                        .entry(normalise(&p))
                        .or_default()
                        .push((c.entry, c.exit));
                }
            }
            "fsync" | "fdatasync" => {
                if let Some(p) = fd(0) {
                    if p == wal {
                        e.wal_syncs.push((c.entry, c.exit));
                    }
                    e.syncs.push((Some(p), c.entry, c.exit));
                }
            }
            "syncfs" | "sync" => {
                e.wal_syncs.push((c.entry, c.exit));
                e.syncs.push((None, c.entry, c.exit));
            }
            "rename" => {
                if let (Some(from), Some(to)) = (
                    a.first().and_then(|x| resolve(None, x, cwd)),
                    a.get(1).and_then(|x| resolve(None, x, cwd)),
                ) {
                    e.renames.push((from, to, c.entry, c.exit));
                }
            }
            "renameat" | "renameat2" => {
                if let (Some(from), Some(to)) = (
                    a.get(1)
                        .and_then(|x| resolve(a.first().map(String::as_str), x, cwd)),
                    a.get(3)
                        .and_then(|x| resolve(a.get(2).map(String::as_str), x, cwd)),
                ) {
                    e.renames.push((from, to, c.entry, c.exit));
                }
            }
            "mkdir" => {
                if let Some(p) = a.first().and_then(|x| resolve(None, x, cwd)) {
                    e.mkdirs.entry(p).or_default().push((c.entry, c.exit));
                }
            }
            "mkdirat" => {
                if let Some(p) = a
                    .get(1)
                    .and_then(|x| resolve(a.first().map(String::as_str), x, cwd))
                {
                    e.mkdirs.entry(p).or_default().push((c.entry, c.exit));
                }
            }
            _ => {}
        }
    }
    e
}

/// One transaction of the store, as its frames were written to the WAL.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Entry of the write of its commit frame's header: from here on a
    /// crash may keep it.
    pub frame_entry: usize,
    /// Exit of its last write (the commit frame's page).
    pub last_write: usize,
    /// Every byte written for it, in order.
    pub bytes: Vec<u8>,
}

impl Commit {
    /// Exit of the first WAL sync that started after its last write
    /// returned (`usize::MAX` when none did): from then on it is durable.
    fn synced(&self, wal_syncs: &[(usize, usize)]) -> usize {
        wal_syncs
            .iter()
            .find(|(entry, _)| *entry > self.last_write)
            .map_or(usize::MAX, |(_, exit)| *exit)
    }
}

/// Cuts the WAL writes into transactions at their commit frames.
fn commits(e: &Effects) -> Vec<Commit> {
    let mut out = Vec::new();
    let mut page: u64 = 4096;
    let mut bytes = Vec::new();
    // The entry of a commit frame's header write whose page is still due.
    let mut open: Option<usize> = None;
    for (offset, data, entry, exit) in &e.wal_writes {
        if *offset == 0 && data.len() >= 32 {
            // A new WAL header: the log starts over (after a checkpoint).
            open = None;
            bytes.clear();
            let size = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
            if size >= 512 {
                page = u64::from(size);
            }
            continue;
        }
        bytes.extend_from_slice(data);
        // The commit frame's page follows its header; the transaction ends
        // with that page's write.
        if let Some(frame_entry) = open.take() {
            out.push(Commit {
                frame_entry,
                last_write: *exit,
                bytes: std::mem::take(&mut bytes),
            });
            continue;
        }
        let frame_len = page + 24;
        let end = offset + data.len() as u64;
        // The frame headers this write holds: at 32 + k * (page + 24).
        let mut at = 32 + offset.saturating_sub(32).div_ceil(frame_len) * frame_len;
        while at + 24 <= end {
            let start = (at - offset) as usize;
            let header = &data[start..start + 24];
            let db_size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            if db_size != 0 {
                if at + frame_len <= end {
                    // Header and page in one write.
                    out.push(Commit {
                        frame_entry: *entry,
                        last_write: *exit,
                        bytes: std::mem::take(&mut bytes),
                    });
                } else {
                    open = Some(*entry);
                }
                break;
            }
            at += frame_len;
        }
    }
    out
}

/// Whether `haystack` holds `needle`.
fn find(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether `bytes` hold the history row of `job_id` of kind `kind`: the job
/// id, a timestamp of at most 8 bytes, then `kind` (and for `done`, the
/// message `done: …` right after it).
fn holds_event(bytes: &[u8], job_id: &str, kind: &str) -> bool {
    let id = job_id.as_bytes();
    let mut wanted = kind.as_bytes().to_vec();
    if kind == "done" {
        wanted.extend_from_slice(b"done: ");
    }
    let mut from = 0;
    while let Some(pos) = bytes[from..].windows(id.len()).position(|w| w == id) {
        let after = from + pos + id.len();
        if (0..=8)
            .any(|gap| bytes.get(after + gap..after + gap + wanted.len()) == Some(&wanted[..]))
        {
            return true;
        }
        from += pos + 1;
    }
    false
}

/// A job as the test knows it from the store after the run.
#[derive(Debug, Clone)]
pub struct TracedJob {
    pub name: String,
    pub id: String,
    /// `done` or `failed`: the kind of its final history row.
    pub state: String,
}

/// What the checker looked at.
#[derive(Debug, Default, Clone)]
pub struct Checked {
    pub calls: usize,
    pub files: usize,
    pub renames: usize,
    pub syncs: usize,
    pub commits: usize,
    /// How each file's durability was found, one per file that passed.
    pub proofs: Vec<FileProof>,
    /// Every broken rule, one line each, starting with the file's path
    /// under `output/`. Empty when the order is right.
    pub broken: Vec<String>,
}

/// The calls one file's durability rests on, as (entry, exit) line
/// numbers: removing any of them must break the proof.
#[derive(Debug, Clone)]
pub struct FileProof {
    /// The path under `output/`.
    pub file: String,
    pub data_sync: (usize, usize),
    pub rename: (usize, usize),
    pub dir_sync: (usize, usize),
    /// The syncs of the parents of the folders the run made for it.
    pub folder_syncs: Vec<(usize, usize)>,
    /// Where the commit that covers it wrote its commit frame.
    pub commit_frame: usize,
}

impl FileProof {
    /// One line for the test's report.
    pub fn describe(&self) -> String {
        format!(
            "{}: data synced (line {}) < renamed (line {}) < folder synced (line {}){} < commit frame (line {})",
            self.file,
            self.data_sync.1 + 1,
            self.rename.0 + 1,
            self.dir_sync.1 + 1,
            if self.folder_syncs.is_empty() {
                String::new()
            } else {
                format!(", {} new folder(s) synced", self.folder_syncs.len())
            },
            self.commit_frame + 1
        )
    }
}

/// A file of `output/` and the commits that matter for it.
#[derive(Debug, Clone)]
struct OutputFile {
    path: PathBuf,
    /// The path under `output/`, as reports show it.
    shown: String,
    /// The commit that covers it, or why none does.
    cover: Result<usize, String>,
    /// For a receipt: the first commit that recorded one of its job's
    /// files (the job's settled result).
    result_commit: Option<usize>,
}

/// A recorded run, read once, ready to be checked (and checked again with
/// calls taken away).
#[derive(Debug, Clone)]
pub struct Proof {
    calls: usize,
    output: PathBuf,
    effects: Effects,
    commits: Vec<Commit>,
    files: Vec<OutputFile>,
}

impl Proof {
    /// Reads the calls of a run whose store's WAL is `wal`, whose working
    /// folder was `cwd`, which ended with `jobs`, and whose files are now
    /// under `output`.
    pub fn new(calls: &[Call], output: &Path, wal: &Path, cwd: &Path, jobs: &[TracedJob]) -> Proof {
        let output = normalise(output);
        let effects = effects(calls, &normalise(wal), cwd);
        let commits = commits(&effects);
        let by_name: HashMap<&str, &TracedJob> =
            jobs.iter().map(|j| (j.name.as_str(), j)).collect();
        let paths: Vec<PathBuf> = crate::support::fs::files_under(&output)
            .iter()
            .map(|f| normalise(f))
            .collect();
        // The SHA-256 of every file, and how many files share it.
        let shas: BTreeMap<&PathBuf, String> = paths
            .iter()
            .map(|f| (f, crate::support::fs::sha256_file(f)))
            .collect();
        let mut sha_count: HashMap<&str, usize> = HashMap::new();
        for sha in shas.values() {
            *sha_count.entry(sha).or_default() += 1;
        }
        let first_holding =
            |found: &dyn Fn(&[u8]) -> bool| commits.iter().position(|c| found(&c.bytes));
        let recorded = |sha: &str| {
            (sha_count[sha] == 1)
                .then(|| first_holding(&|b| find(b, sha.as_bytes())))
                .flatten()
        };
        let mut files = Vec::new();
        for f in &paths {
            let shown = f.strip_prefix(&output).unwrap_or(f).display().to_string();
            let job = f
                .strip_prefix(&output)
                .ok()
                .and_then(|rel| rel.components().next())
                .and_then(|c| c.as_os_str().to_str())
                .and_then(|name| by_name.get(name));
            let receipt = f.file_name().is_some_and(|n| n == "job.json");
            let (cover, result_commit) = match job {
                None => (Err("no job of that name in the store".to_string()), None),
                Some(job) => {
                    // The commit that records the job's end, and (for a
                    // data file) the one that first recorded the file.
                    let ended = first_holding(&|b| holds_event(b, &job.id, &job.state));
                    let own = if receipt { None } else { recorded(&shas[f]) };
                    let cover = ended.into_iter().chain(own).min().ok_or_else(|| {
                        format!(
                            "no commit of the store records job {} {} (its {} event)",
                            job.name, job.state, job.state
                        )
                    });
                    let dir = f.parent();
                    let result_commit = receipt
                        .then(|| {
                            shas.iter()
                                .filter(|(p, _)| p.parent() == dir && *p != &f)
                                .filter_map(|(_, sha)| recorded(sha))
                                .min()
                        })
                        .flatten();
                    (cover, result_commit)
                }
            };
            files.push(OutputFile {
                path: f.clone(),
                shown,
                cover,
                result_commit,
            });
        }
        Proof {
            calls: calls.len(),
            output,
            effects,
            commits,
            files,
        }
    }

    /// The same run as if the syncs at `lines` ((entry, exit) line numbers)
    /// had never been made.
    pub fn without_syncs(&self, lines: &[(usize, usize)]) -> Proof {
        let mut cut = self.clone();
        cut.effects
            .syncs
            .retain(|(_, entry, exit)| !lines.contains(&(*entry, *exit)));
        cut.effects.wal_syncs.retain(|call| !lines.contains(call));
        cut
    }

    /// Checks every file: what was looked at, how each file's order was
    /// proven, and every broken rule.
    pub fn check(&self) -> Checked {
        let e = &self.effects;
        let mut broken = Vec::new();
        let mut checked = Checked {
            calls: self.calls,
            files: self.files.len(),
            renames: e.renames.len(),
            syncs: e.syncs.len(),
            commits: self.commits.len(),
            ..Checked::default()
        };
        for file in &self.files {
            let mut fail = |why: String| broken.push(format!("{}: {why}", file.shown));
            match self.check_file(file) {
                Ok(proof) => checked.proofs.push(proof),
                Err(whys) => whys.into_iter().for_each(&mut fail),
            }
        }
        checked.broken = broken;
        checked
    }

    fn check_file(&self, file: &OutputFile) -> Result<FileProof, Vec<String>> {
        let e = &self.effects;
        let f = &file.path;
        let cover = file.cover.clone().map_err(|why| vec![why])?;
        let commit_at = self.commits[cover].frame_entry;
        let mut broken = Vec::new();
        // 1. Renamed into place.
        let Some((from, _, r_entry, r_exit)) = e.renames.iter().rev().find(|r| r.1 == *f).cloned()
        else {
            return Err(vec![
                "never renamed into place (written under its final name)".into(),
            ]);
        };
        // 2. Data synced before the rename.
        let last_write = e
            .writes
            .get(&from)
            .into_iter()
            .flatten()
            .filter(|(entry, _)| *entry < r_entry)
            .map(|(_, exit)| *exit)
            .max()
            .unwrap_or(0);
        let data_sync = e.syncs.iter().find(|(p, entry, exit)| {
            p.as_ref().is_none_or(|p| *p == from) && *entry > last_write && *exit < r_entry
        });
        if data_sync.is_none() {
            broken.push(format!(
                "its data ({}) was not fsynced between its last write (line {}) and the rename (line {})",
                from.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                last_write + 1,
                r_entry + 1
            ));
        }
        // 3. Folder synced after the rename, before the covering commit.
        let dir = f.parent().map(Path::to_path_buf).unwrap_or_default();
        let synced_between = |path: &Path, after: usize| {
            e.syncs.iter().find(|(p, entry, exit)| {
                p.as_ref().is_none_or(|p| p == path) && *entry > after && *exit < commit_at
            })
        };
        let dir_sync = synced_between(&dir, r_exit);
        if dir_sync.is_none() {
            broken.push(format!(
                "its folder was not fsynced between the rename (line {}) and the commit that records it (line {})",
                r_exit + 1,
                commit_at + 1
            ));
        }
        // Every folder the run made on the way to the file: its parent
        // synced after it was made, before the same commit.
        let mut folder_syncs = Vec::new();
        for d in dir.ancestors().take_while(|d| d.starts_with(&self.output)) {
            let Some(created) = e.mkdirs.get(d).and_then(|m| m.iter().map(|x| x.1).max()) else {
                continue;
            };
            let parent = d.parent().map(Path::to_path_buf).unwrap_or_default();
            match synced_between(&parent, created) {
                Some(sync) => folder_syncs.push((sync.1, sync.2)),
                None => broken.push(format!(
                    "the folder {} was made (line {}) but {} was not fsynced after it and before the commit that records the file (line {})",
                    d.display(),
                    created + 1,
                    parent.display(),
                    commit_at + 1
                )),
            }
        }
        // 4. A receipt only once the job's result is durable in the store.
        if let Some(c) = file.result_commit {
            let first_rename = e
                .renames
                .iter()
                .filter(|r| r.1 == *f)
                .map(|r| r.2)
                .min()
                .unwrap_or(r_entry);
            let synced = self.commits[c].synced(&e.wal_syncs);
            if synced >= first_rename {
                broken.push(format!(
                    "job.json was renamed into place (line {}) before the commit that records the job's result was synced (line {})",
                    first_rename + 1,
                    synced.saturating_add(1)
                ));
            }
        }
        match (data_sync, dir_sync) {
            (Some(data), Some(dir)) if broken.is_empty() => Ok(FileProof {
                file: file.shown.clone(),
                data_sync: (data.1, data.2),
                rename: (r_entry, r_exit),
                dir_sync: (dir.1, dir.2),
                folder_syncs,
                commit_frame: commit_at,
            }),
            _ => Err(broken),
        }
    }
}
