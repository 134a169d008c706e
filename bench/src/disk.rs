//! The disk being measured: its own rate (a 4 KiB write + `fdatasync`,
//! measured in the same run as every figure divided by it), what it is, and
//! how the benchmark keeps out of the way of ext4's recently-deleted inodes.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::options::{Options, Phase};
use crate::util::lock;

/// Folders of many small files, deleted only when the whole benchmark ends.
///
/// On ext4 without a journal (this machine's disk), creating a file scans
/// past every inode of its block group deleted in the last 60 seconds (the
/// kernel's `recently_deleted`; 360 while the inode table is not yet
/// written back). Deleting one run's tens of thousands of files just before
/// the next run made that scan 40 % of the next run's CPU (perf), a cost of
/// the benchmark's own clean-up rather than of the daemon.
pub(crate) static SPENT: Mutex<Vec<tempfile::TempDir>> = Mutex::new(Vec::new());

/// Keeps `dir` until [`crate::run::run`] ends.
pub(crate) fn keep_until_the_end(dir: tempfile::TempDir) {
    lock(&SPENT).push(dir);
}

/// How long ext4 without a journal avoids reusing a deleted inode once its
/// inode table is written back (`RECENTCY_MIN` in the kernel's
/// `fs/ext4/ialloc.c`: 60 s in kernels since 2020, 5 s before), plus a
/// second.
pub(crate) const RECENTLY_DELETED: Duration = Duration::from_secs(61);

/// Lets ext4's recently-deleted window of earlier deletions (the previous
/// phases', an earlier benchmark's clean-up, or the machine's) pass before
/// a measured run creates files: `sync` writes the inode tables back, after
/// which the window is [`RECENTLY_DELETED`]. Only partly: once the run's
/// new files dirty an inode table block again, the kernel stretches the
/// window of that block's deleted inodes to six minutes, so BENCHMARKS.md
/// asks for six quiet minutes before a run. A run started right after an
/// earlier benchmark ended measured 675-745 jobs/s, 940 after this pause,
/// and 1,100 after a quiet quarter of an hour.
pub(crate) async fn settle_disk(notes: &mut Vec<String>, phase: Phase) {
    let synced = tokio::process::Command::new("sync").status().await;
    if !synced.is_ok_and(|s| s.success()) {
        notes.push(format!("{}: `sync` failed before the run", phase.name()));
    }
    tokio::time::sleep(RECENTLY_DELETED).await;
}

pub(crate) fn temp_dir(opts: &Options, what: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("docfetch-bench-{what}-"))
        .tempdir_in(&opts.dir)
        .with_context(|| format!("cannot create a folder in {}", opts.dir.display()))
}

/// The disk's rate right now: [`baseline_fdatasync`] in a folder of its
/// own under `--dir`, as many times as the store phase does each operation.
/// Phases whose figures are divided by the disk's rate call this just
/// before each run, so that the two share the disk's state of the moment.
pub(crate) async fn disk_rate(opts: &Options) -> Result<f64> {
    let dir = temp_dir(opts, "disk")?;
    let rate = baseline_fdatasync(&dir.path().join("fsync.bin"), opts.store_ops).await;
    // Deleted at the end like the runs' folders: nothing is deleted just
    // before a measured run (see SPENT).
    keep_until_the_end(dir);
    rate
}

/// The disk's own limit: a 4 KiB write followed by `fdatasync`, `n` times,
/// over 1 MiB written (and synced) beforehand, so no write extends the file.
pub(crate) async fn baseline_fdatasync(path: &Path, n: usize) -> Result<f64> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<f64> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(&path)?;
        let block = vec![0x5au8; 4096];
        for i in 0..256 {
            file.write_all_at(&block, i * 4096)?;
        }
        file.sync_all()?;
        let started = Instant::now();
        for i in 0..n {
            file.write_all_at(&block, (i as u64 % 256) * 4096)?;
            file.sync_data()?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    })
    .await?
}

/// `SOURCE FSTYPE (rotational|non-rotational)` of the file system holding `dir`.
pub(crate) fn describe_disk(dir: &Path) -> String {
    let Ok(output) = std::process::Command::new("findmnt")
        .args(["-n", "-o", "SOURCE,FSTYPE", "-T"])
        .arg(dir)
        .output()
    else {
        return "?".into();
    };
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let device = text
        .split_whitespace()
        .next()
        .and_then(|s| s.strip_prefix("/dev/"))
        .unwrap_or("");
    let rotational = std::fs::read_to_string(format!("/sys/block/{device}/queue/rotational"))
        .map(|r| {
            if r.trim() == "1" {
                ", rotational"
            } else {
                ", non-rotational"
            }
        })
        .unwrap_or("");
    format!("{text}{rotational}")
}
