//! Group commit for files: finished downloads and receipts are made durable
//! together, in batches, the way the store groups its commits.
//!
//! A writer stages a file (its contents written to `.NAME.part` in its
//! folder, the file still open) and hands it to the committer with
//! [`commit`] (or [`commit_blocking`] from a blocking thread). The
//! committer, one thread of its own, takes whatever has queued up while it
//! was busy with the previous batch (no timer: a lone file is not held
//! back, a crowd shares one round) and for that batch:
//!
//! 1. `fdatasync`s every staged file, all issued at once from a small pool
//!    of sync threads;
//! 2. renames each file whose data is on the disk into place (`renameat`);
//! 3. `fsync`s each distinct folder a file was renamed into, and the parent
//!    of each folder made for a file of the batch (its entry must survive a
//!    power cut too), again all at once;
//! 4. wakes every waiter with its own result.
//!
//! The order per file is the one the rest of docfetch relies on (data,
//! rename, folder; `tests/durability.rs` proves it from the system calls):
//! nothing is reported done, committed to the store or announced before its
//! batch returned. An error concerns only the files it touches: a failed
//! data sync or rename fails that file (its part file is removed, nothing
//! appears under its final name); a failed folder sync fails every file
//! renamed into that folder in the batch (they stay under their final
//! names, as a retry overwrites them), and a failed sync of a new folder's
//! parent fails the files in that new folder.
//!
//! # Why parallel `fdatasync`s, not `syncfs` or one after the other
//!
//! Measured with `measure_sync_modes` below (a batch of 64 files of 4 KiB
//! in 8 folders; BENCHMARKS.md has the figures) on this machine's disk:
//! ext4 without a journal on a virtual disk with a write-back cache, so
//! each sync is mostly the disk's cache flush. Issued at once, the
//! `fdatasync`s of a batch wait together and the block layer serves
//! flushes that are waiting at the same time with one; one after the
//! other, every file pays a flush of its own. `syncfs` needs one call, but
//! it writes back and waits for everything dirty on the file system — the
//! store's pages, files still arriving, any other program's data — so its
//! cost is not the batch's but the machine's: on this shared disk it swung
//! more than 3 × between rounds of the same measurement, and the output
//! folder is not a file system of its own here. Parallel `fdatasync`s cost
//! what the batch needs and nothing else, and never touch another
//! program's data.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use crate::beneath::{Folder, one_name, part_name};

/// A file written under its temporary name and ready to be made durable.
#[derive(Debug)]
pub struct Staged {
    /// The folder holding the part file and, after the rename, the file.
    folder: Folder,
    /// The part file, open, its contents written.
    file: File,
    /// `.NAME.part`.
    part: String,
    /// The final name.
    name: String,
    /// The folder that holds `folder`, when `folder` was made for this
    /// file and its entry is not yet durable.
    made_in: Option<Folder>,
}

impl Staged {
    /// A part file `part_name(name)` in `folder`, already written through
    /// `file`. `made_in` is the parent of `folder` when `folder` was just
    /// made (see [`crate::beneath::Subfolder::open_staging`]).
    pub fn new(folder: Folder, file: File, name: &str, made_in: Option<Folder>) -> Staged {
        Staged {
            folder,
            file,
            part: part_name(name),
            name: name.to_string(),
            made_in,
        }
    }

    /// Writes `contents` to `.NAME.part` in `folder` (mode 0640, never
    /// through a link planted under that name). A failure removes the part.
    pub fn write(
        folder: Folder,
        name: &str,
        contents: &[u8],
        made_in: Option<Folder>,
    ) -> io::Result<Staged> {
        let part = part_name(one_name(name)?);
        let written = folder.create_file(&part, 0o640).and_then(|mut file| {
            file.write_all(contents)?;
            Ok(file)
        });
        match written {
            Ok(file) => Ok(Staged::new(folder, file, name, made_in)),
            Err(e) => {
                let _ = folder.remove_file(std::ffi::OsStr::new(&part));
                Err(e)
            }
        }
    }
}

/// The step of a batch at which a file failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The `fdatasync` of its part file.
    Data,
    /// Its rename into place.
    Rename,
    /// The `fsync` of the folder it was renamed into.
    Folder,
    /// The `fsync` of the folder that holds its new folder.
    NewFolder,
}

/// Why a staged file is not durable under its final name.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct Failed {
    pub step: Step,
    /// The file or folder whose sync or rename failed (for messages).
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl From<Failed> for io::Error {
    /// The underlying error as it was, so its kind (a full disk, a refused
    /// link) still tells the caller what to do.
    fn from(failed: Failed) -> io::Error {
        failed.source
    }
}

/// Writes `contents` durably and atomically as `name` in `folder`:
/// `.NAME.part`, then `fdatasync`, rename and `fsync` of `folder` in the
/// next batch, which this waits for. A failure removes the part.
/// Blocking: call it from a blocking thread.
pub fn write_atomic(folder: &Folder, name: &str, contents: &[u8]) -> io::Result<()> {
    let staged = Staged::write(folder.try_clone()?, name, contents, None)?;
    commit_blocking(staged)?;
    Ok(())
}

/// Makes `staged` durable under its final name in the next batch.
pub async fn commit(staged: Staged) -> Result<(), Failed> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    global().submit(staged, reply);
    answer.await.unwrap_or_else(|_| Err(lost()))
}

/// [`commit`] for a blocking thread (never from async code: it blocks).
pub fn commit_blocking(staged: Staged) -> Result<(), Failed> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    global().submit(staged, reply);
    answer.blocking_recv().unwrap_or_else(|_| Err(lost()))
}

fn lost() -> Failed {
    Failed {
        step: Step::Data,
        path: PathBuf::new(),
        source: io::Error::other("the file committer stopped"),
    }
}

/// What the committer has done so far, for the benchmark and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub batches: u64,
    pub files: u64,
    pub data_syncs: u64,
    pub folder_syncs: u64,
}

/// The process's committer's [`Stats`].
pub fn stats() -> Stats {
    global().stats()
}

fn global() -> &'static Committer {
    static GLOBAL: OnceLock<Committer> = OnceLock::new();
    GLOBAL.get_or_init(Committer::start)
}

type Reply = tokio::sync::oneshot::Sender<Result<(), Failed>>;

/// Decides, in tests, that a step fails for a path.
type Fault = dyn Fn(Step, &std::path::Path) -> Option<io::Error> + Send + Sync;

/// The committer: a queue and the thread that empties it in batches.
struct Committer {
    queue: Mutex<Option<mpsc::Sender<(Staged, Reply)>>>,
    shared: Arc<Shared>,
}

/// What the committer's thread and its callers share.
#[derive(Default)]
struct Shared {
    batches: AtomicU64,
    files: AtomicU64,
    data_syncs: AtomicU64,
    folder_syncs: AtomicU64,
    /// Files handed in and not yet taken into a batch.
    queued: AtomicUsize,
    /// Tests: the committer waits for this gate before its first batch.
    gate: Option<(Mutex<bool>, std::sync::Condvar)>,
    fault: Option<Box<Fault>>,
}

/// At most this many files in one batch, so one batch's waiters are not
/// held up without bound by a steady stream of new arrivals.
const MAX_BATCH: usize = 1024;

impl Committer {
    fn start() -> Committer {
        Committer::with(Shared::default())
    }

    fn with(shared: Shared) -> Committer {
        let shared = Arc::new(shared);
        let (queue, arrivals) = mpsc::channel();
        let worker = Arc::clone(&shared);
        let started = std::thread::Builder::new()
            .name("docfetch-durable".into())
            .spawn(move || run(&worker, &arrivals));
        Committer {
            // No thread to spare: each file is then committed on its own,
            // on the caller's thread (see `submit`).
            queue: Mutex::new(started.ok().map(|_| queue)),
            shared,
        }
    }

    fn submit(&self, staged: Staged, reply: Reply) {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        let unsent = match queue {
            Some(queue) => match queue.send((staged, reply)) {
                Ok(()) => return,
                Err(mpsc::SendError(unsent)) => unsent,
            },
            None => (staged, reply),
        };
        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        let mut pool = Pool::inline();
        commit_batch(&self.shared, &mut pool, vec![unsent]);
    }

    fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            batches: s.batches.load(Ordering::SeqCst),
            files: s.files.load(Ordering::SeqCst),
            data_syncs: s.data_syncs.load(Ordering::SeqCst),
            folder_syncs: s.folder_syncs.load(Ordering::SeqCst),
        }
    }
}

/// The committer's thread: waits for a first file, takes everything else
/// that queued up meanwhile, commits the batch, and again.
fn run(shared: &Shared, arrivals: &mpsc::Receiver<(Staged, Reply)>) {
    if let Some((open, opened)) = &shared.gate {
        let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
        while !*open {
            open = opened.wait(open).unwrap_or_else(|p| p.into_inner());
        }
    }
    let mut pool = Pool::default();
    while let Ok(first) = arrivals.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match arrivals.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        shared.queued.fetch_sub(batch.len(), Ordering::SeqCst);
        commit_batch(shared, &mut pool, batch);
    }
}

/// One file of a batch on its way.
struct Entry {
    folder: Arc<Folder>,
    part: String,
    name: String,
    made_in: Option<Arc<Folder>>,
    outcome: Result<(), Failed>,
    reply: Reply,
}

/// A folder's identity on its file system, so that two descriptors of the
/// same folder are synced once.
fn identity(folder: &Folder) -> Option<(u64, u64)> {
    folder.identity().ok()
}

fn commit_batch(shared: &Shared, pool: &mut Pool, batch: Vec<(Staged, Reply)>) {
    let fault = |step: Step, path: &std::path::Path| -> Option<io::Error> {
        shared.fault.as_ref().and_then(|f| f(step, path))
    };
    let count = |counter: &AtomicU64, n: usize| {
        counter.fetch_add(n as u64, Ordering::SeqCst);
    };
    count(&shared.batches, 1);
    count(&shared.files, batch.len());

    // 1. Every file's data, all syncs issued at once.
    let mut files = Vec::with_capacity(batch.len());
    let mut entries: Vec<Entry> = Vec::with_capacity(batch.len());
    for (staged, reply) in batch {
        let part_path = staged.folder.path().join(&staged.part);
        let injected = fault(Step::Data, &part_path);
        files.push((staged.file, part_path, injected));
        entries.push(Entry {
            folder: Arc::new(staged.folder),
            part: staged.part,
            name: staged.name,
            made_in: staged.made_in.map(Arc::new),
            outcome: Ok(()),
            reply,
        });
    }
    count(&shared.data_syncs, files.len());
    let synced = pool.run_all(
        files
            .into_iter()
            .map(|(file, path, injected)| {
                move || {
                    let synced = match injected {
                        Some(e) => Err(e),
                        None => file.sync_data(),
                    };
                    // Closed here, before the rename, like a file written alone.
                    drop(file);
                    synced.map_err(|source| Failed {
                        step: Step::Data,
                        path,
                        source,
                    })
                }
            })
            .collect(),
    );
    for (entry, synced) in entries.iter_mut().zip(synced) {
        entry.outcome = synced;
    }

    // 2. The renames, in the order the files arrived (the later of two
    // files with one name wins, as it would one after the other).
    for entry in &mut entries {
        if entry.outcome.is_ok() {
            let renamed = match fault(Step::Rename, &entry.folder.path().join(&entry.name)) {
                Some(e) => Err(e),
                None => entry.folder.rename(
                    std::ffi::OsStr::new(&entry.part),
                    &entry.folder,
                    &entry.name,
                ),
            };
            entry.outcome = renamed.map_err(|source| Failed {
                step: Step::Rename,
                path: entry.folder.path().join(&entry.name),
                source,
            });
        }
        if entry.outcome.is_err() {
            // Never leave a half-made file behind; a missing one is fine.
            let _ = entry.folder.remove_file(std::ffi::OsStr::new(&entry.part));
        }
    }

    // 3. One sync per folder renamed into and per parent of a new folder,
    // all at once. Folders are told apart by device and inode; one whose
    // identity cannot be read is synced on its own.
    let mut folders: Vec<(Step, Arc<Folder>)> = Vec::new();
    let mut seen: HashMap<(u64, u64), usize> = HashMap::new();
    // Per entry: the index in `folders` of its folder's sync and of its new
    // folder's parent's.
    let mut needs: Vec<Vec<(Step, usize)>> = Vec::with_capacity(entries.len());
    let mut place = |step: Step, folder: &Arc<Folder>| -> usize {
        let key = identity(folder);
        if let Some(at) = key.and_then(|k| seen.get(&k)) {
            return *at;
        }
        folders.push((step, Arc::clone(folder)));
        if let Some(key) = key {
            seen.insert(key, folders.len() - 1);
        }
        folders.len() - 1
    };
    for entry in &entries {
        let mut need = Vec::new();
        if entry.outcome.is_ok() {
            need.push((Step::Folder, place(Step::Folder, &entry.folder)));
            if let Some(parent) = &entry.made_in {
                need.push((Step::NewFolder, place(Step::NewFolder, parent)));
            }
        }
        needs.push(need);
    }
    count(&shared.folder_syncs, folders.len());
    let synced = pool.run_all(
        folders
            .iter()
            .map(|(step, folder)| {
                let (step, folder) = (*step, Arc::clone(folder));
                let injected = fault(step, folder.path());
                move || match injected {
                    Some(e) => Err(e),
                    None => folder.sync(),
                }
            })
            .collect(),
    );
    let synced: Vec<Option<io::Error>> = synced.into_iter().map(Result::err).collect();

    // 4. Every waiter gets its own answer.
    for (entry, need) in entries.into_iter().zip(needs) {
        let mut outcome = entry.outcome;
        for (step, at) in need {
            if let (Ok(()), Some(e)) = (&outcome, &synced[at]) {
                outcome = Err(Failed {
                    step,
                    path: folders[at].1.path().to_path_buf(),
                    source: io::Error::new(e.kind(), e.to_string()),
                });
            }
        }
        // A waiter that gave up is no one's concern.
        let _ = entry.reply.send(outcome);
    }
}

/// Work for a sync thread.
type Task = Box<dyn FnOnce() + Send>;

/// The queue the sync threads take their work from, one at a time.
type Tasks = Arc<Mutex<mpsc::Receiver<Task>>>;

/// The committer's sync threads, made as a batch first needs them (an idle
/// daemon has none) and kept: a thread per sync in flight, so that every
/// sync of a batch is issued at once, up to [`MAX_SYNC_THREADS`].
#[derive(Default)]
struct Pool {
    tasks: Option<(mpsc::Sender<Task>, Tasks)>,
    threads: usize,
    /// No more threads could be made.
    full: bool,
}

/// Syncs in flight at most; more files in a batch queue for a thread.
const MAX_SYNC_THREADS: usize = 64;

impl Pool {
    /// A pool that runs everything on the caller's thread, one at a time.
    fn inline() -> Pool {
        Pool {
            full: true,
            ..Pool::default()
        }
    }

    /// Runs every piece of `work` on the pool, all at once as far as there
    /// are threads, and returns their results in order.
    fn run_all<T, F>(&mut self, work: Vec<F>) -> Vec<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let wanted = work.len().min(MAX_SYNC_THREADS);
        while self.threads < wanted && !self.full {
            self.full = !self.add_thread();
        }
        if self.threads == 0 || work.len() == 1 {
            // Alone or with no thread to spare: here, one after the other.
            return work.into_iter().map(|w| w()).collect();
        }
        let Some((tasks, _)) = &self.tasks else {
            return work.into_iter().map(|w| w()).collect();
        };
        let n = work.len();
        let (done, results) = mpsc::channel();
        let mut answers: Vec<Option<T>> = (0..n).map(|_| None).collect();
        let mut here = Vec::new();
        for (i, w) in work.into_iter().enumerate() {
            let done = done.clone();
            let task: Task = Box::new(move || {
                let _ = done.send((i, w()));
            });
            if let Err(mpsc::SendError(task)) = tasks.send(task) {
                here.push(task);
            }
        }
        drop(done);
        for task in here {
            task();
        }
        for (i, answer) in results.iter() {
            answers[i] = Some(answer);
        }
        // A task whose thread died (it cannot: syncs do not panic) would
        // leave a hole; the caller's zip then stops short and that waiter
        // hears "the committer stopped".
        answers.into_iter().flatten().collect()
    }

    fn add_thread(&mut self) -> bool {
        let (_, tasks) = self.tasks.get_or_insert_with(|| {
            let (send, receive) = mpsc::channel::<Task>();
            (send, Arc::new(Mutex::new(receive)))
        });
        let tasks = Arc::clone(tasks);
        let made = std::thread::Builder::new()
            .name("docfetch-sync".into())
            // A sync needs next to no stack.
            .stack_size(64 * 1024)
            .spawn(move || {
                loop {
                    let next = tasks.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    match next {
                        Ok(task) => task(),
                        Err(_) => return,
                    }
                }
            });
        if made.is_ok() {
            self.threads += 1;
        }
        made.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use crate::beneath::Subfolder;

    /// A committer that holds its first batch until [`open`] is called.
    fn gated(fault: Option<Box<Fault>>) -> Committer {
        Committer::with(Shared {
            gate: Some((Mutex::new(false), std::sync::Condvar::new())),
            fault,
            ..Shared::default()
        })
    }

    fn open(committer: &Committer) {
        if let Some((open, opened)) = &committer.shared.gate {
            *open.lock().unwrap() = true;
            opened.notify_all();
        }
    }

    /// Hands in `contents` as `root/folder/name` and returns the answer to wait on.
    fn hand_in(
        committer: &Committer,
        root: &Path,
        folder: &str,
        name: &str,
        contents: &[u8],
    ) -> tokio::sync::oneshot::Receiver<Result<(), Failed>> {
        let (dir, made_in) = Subfolder::new(root, folder).open_staging().unwrap();
        let staged = Staged::write(dir, name, contents, made_in).unwrap();
        let (reply, answer) = tokio::sync::oneshot::channel();
        committer.submit(staged, reply);
        answer
    }

    fn wait_queued(committer: &Committer, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while committer.shared.queued.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "the files never queued up");
            std::thread::yield_now();
        }
    }

    #[test]
    fn files_that_finish_while_a_batch_syncs_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let committer = gated(None);
        // 48 files in 6 new folders, handed in from 48 threads at once.
        let answers: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..48)
                .map(|i| {
                    let (committer, root) = (&committer, dir.path());
                    s.spawn(move || {
                        let folder = format!("job-{}", i % 6);
                        hand_in(committer, root, &folder, &format!("f{i}.bin"), b"data")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        wait_queued(&committer, 48);
        open(&committer);
        for answer in answers {
            answer.blocking_recv().unwrap().unwrap();
        }
        let stats = committer.stats();
        assert_eq!(stats.batches, 1, "{stats:?}");
        assert_eq!(stats.files, 48);
        assert_eq!(stats.data_syncs, 48);
        // Six job folders and their one parent, each once.
        assert_eq!(stats.folder_syncs, 7, "{stats:?}");
        for i in 0..48 {
            let path = dir.path().join(format!("job-{}/f{i}.bin", i % 6));
            assert_eq!(std::fs::read(&path).unwrap(), b"data");
            let part = dir.path().join(format!("job-{}/.f{i}.bin.part", i % 6));
            assert!(!part.exists());
        }
    }

    #[test]
    fn a_lone_file_is_committed_at_once_in_a_batch_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let committer = Committer::start();
        let answer = hand_in(&committer, dir.path(), "job", "a.bin", b"a");
        answer.blocking_recv().unwrap().unwrap();
        let answer = hand_in(&committer, dir.path(), "job", "b.bin", b"b");
        answer.blocking_recv().unwrap().unwrap();
        let stats = committer.stats();
        assert_eq!((stats.batches, stats.files), (2, 2), "{stats:?}");
        // The first made the folder (its parent synced too), the second did not.
        assert_eq!(stats.folder_syncs, 3, "{stats:?}");
    }

    #[test]
    fn a_failed_data_sync_or_rename_fails_only_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let fault: Box<Fault> = Box::new(|step, path| {
            let name = path.file_name()?.to_str()?;
            (step == Step::Data && name == ".bad-data.bin.part")
                .then(|| io::Error::other("injected EIO"))
        });
        let committer = gated(Some(fault));
        // A folder where the file's name belongs: its rename fails.
        std::fs::create_dir_all(dir.path().join("job/bad-rename.bin/inside")).unwrap();
        let names = [
            "good.bin",
            "bad-data.bin",
            "bad-rename.bin",
            "also-good.bin",
        ];
        let answers: Vec<_> = names
            .iter()
            .map(|n| hand_in(&committer, dir.path(), "job", n, n.as_bytes()))
            .collect();
        wait_queued(&committer, names.len());
        open(&committer);
        let outcomes: Vec<_> = answers
            .into_iter()
            .map(|a| a.blocking_recv().unwrap())
            .collect();
        assert!(outcomes[0].is_ok() && outcomes[3].is_ok(), "{outcomes:?}");
        assert_eq!(outcomes[1].as_ref().unwrap_err().step, Step::Data);
        assert_eq!(outcomes[2].as_ref().unwrap_err().step, Step::Rename);
        let job = dir.path().join("job");
        assert_eq!(std::fs::read(job.join("good.bin")).unwrap(), b"good.bin");
        assert!(!job.join("bad-data.bin").exists());
        assert!(job.join("bad-rename.bin/inside").is_dir());
        let mut left: Vec<_> = std::fs::read_dir(&job)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["also-good.bin", "bad-rename.bin", "good.bin"]);
        assert_eq!(committer.stats().batches, 1);
    }

    #[test]
    fn a_failed_folder_sync_fails_every_file_in_that_folder_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let sick = root.join("sick");
        let fault: Box<Fault> = Box::new(move |step, path| {
            (step == Step::Folder && path == sick).then(|| io::Error::other("injected EIO"))
        });
        let committer = gated(Some(fault));
        let answers = [
            hand_in(&committer, &root, "sick", "a.bin", b"a"),
            hand_in(&committer, &root, "well", "b.bin", b"b"),
            hand_in(&committer, &root, "sick", "c.bin", b"c"),
        ];
        wait_queued(&committer, 3);
        open(&committer);
        let outcomes: Vec<_> = answers
            .into_iter()
            .map(|a| a.blocking_recv().unwrap())
            .collect();
        assert_eq!(outcomes[0].as_ref().unwrap_err().step, Step::Folder);
        assert!(outcomes[1].is_ok(), "{outcomes:?}");
        assert_eq!(outcomes[2].as_ref().unwrap_err().step, Step::Folder);
        assert!(root.join("well/b.bin").exists());
    }

    #[test]
    fn a_failed_sync_of_a_new_folders_parent_fails_the_files_in_that_new_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        std::fs::create_dir_all(root.join("old")).unwrap();
        let sick = root.clone();
        let fault: Box<Fault> = Box::new(move |step, path| {
            (step == Step::NewFolder && path == sick).then(|| io::Error::other("injected EIO"))
        });
        let committer = gated(Some(fault));
        let answers = [
            hand_in(&committer, &root, "new", "a.bin", b"a"),
            hand_in(&committer, &root, "old", "b.bin", b"b"),
        ];
        wait_queued(&committer, 2);
        open(&committer);
        let outcomes: Vec<_> = answers
            .into_iter()
            .map(|a| a.blocking_recv().unwrap())
            .collect();
        assert_eq!(outcomes[0].as_ref().unwrap_err().step, Step::NewFolder);
        assert!(outcomes[1].is_ok(), "{outcomes:?}");
    }

    /// The measurement behind the choice of parallel `fdatasync`s (see the
    /// module's header): a batch of 64 files of 4 KiB in 8 folders made
    /// durable with their data synced one after the other, all at once,
    /// or by one `syncfs`, then renamed and their folders synced. Run it on
    /// the disk in question:
    /// `DOCFETCH_SYNC_BENCH_DIR=/var/lib/docfetch cargo test --release --lib
    /// durable::tests::measure_sync_modes -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement of the disk, not a test; run by hand"]
    fn measure_sync_modes() {
        use std::os::unix::fs::FileExt as _;
        let base = std::env::var_os("DOCFETCH_SYNC_BENCH_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::env::current_dir().unwrap());
        let rounds: usize = std::env::var("DOCFETCH_SYNC_BENCH_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(20);
        let dir = tempfile::tempdir_in(&base).unwrap();
        let block = vec![0x5au8; 4096];
        // The disk's own rate, as the benchmark takes it.
        let one = std::fs::File::create(dir.path().join("disk.bin")).unwrap();
        one.write_all_at(&vec![0u8; 1 << 20], 0).unwrap();
        one.sync_all().unwrap();
        let started = Instant::now();
        for i in 0..500u64 {
            one.write_all_at(&block, (i % 256) * 4096).unwrap();
            one.sync_data().unwrap();
        }
        let disk = 500.0 / started.elapsed().as_secs_f64();
        println!("disk: {disk:.0} fdatasync/s (4 KiB write + fdatasync, one after the other)");
        let mut round = 0;
        for mode in [
            "serial", "parallel", "syncfs", "serial", "parallel", "syncfs",
        ] {
            let mut took = Duration::ZERO;
            for _ in 0..rounds {
                round += 1;
                let root = Folder::open_root(&dir.path().join(format!("r{round}")), true).unwrap();
                let folders: Vec<Folder> = (0..8)
                    .map(|f| root.child(&format!("job-{f}"), true).unwrap())
                    .collect();
                let started = Instant::now();
                let files: Vec<(usize, String, File)> = (0..64)
                    .map(|i| {
                        let part = format!(".f{i}.part");
                        let mut file = folders[i % 8].create_file(&part, 0o640).unwrap();
                        file.write_all(&block).unwrap();
                        (i % 8, part, file)
                    })
                    .collect();
                match mode {
                    "serial" => files.iter().for_each(|(_, _, f)| f.sync_data().unwrap()),
                    "parallel" => std::thread::scope(|s| {
                        for (_, _, f) in &files {
                            s.spawn(|| f.sync_data().unwrap());
                        }
                    }),
                    _ => rustix::fs::syncfs(&files[0].2).unwrap(),
                }
                for (f, part, _) in &files {
                    let name = part.trim_start_matches('.').trim_end_matches(".part");
                    folders[*f]
                        .rename(std::ffi::OsStr::new(part), &folders[*f], name)
                        .unwrap();
                }
                std::thread::scope(|s| {
                    for folder in &folders {
                        s.spawn(|| folder.sync().unwrap());
                    }
                });
                took += started.elapsed();
            }
            let rate = (rounds * 64) as f64 / took.as_secs_f64();
            println!(
                "{mode:>8}: {rate:.0} files/s ({:.2} files per fdatasync/s of the disk), {rounds} batches of 64",
                rate / disk
            );
        }
    }
}
