//! Saving a provider's response body as a file, atomically.
//!
//! The body streams into `.FILENAME.part` in the target folder while it is
//! hashed (SHA-256) and counted; the size limit is enforced while streaming,
//! the total is checked against `Content-Length`, and the whole file is
//! handed to the file committer ([`crate::durable`]), which syncs its data,
//! renames it into place and `fsync`s the folder so the rename itself is
//! durable, in a batch with every other file finished meanwhile. A file
//! therefore never appears half-written under its final name, and
//! `save_response` returns only once the file is durable.
//!
//! The target folder (`output/NAME`) is opened through its root's
//! descriptor and every file in it through the folder's ([`crate::beneath`]):
//! a symbolic link planted at `output/NAME` or at a `.part` name is refused,
//! never written through.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::beneath::{Folder, Subfolder, part_name};
use crate::durable::{self, Staged};
use crate::job::SavedFile;
use crate::job::digest::hex;

/// Why a download did not produce a file. The caller decides retry or fail
/// through [`crate::providers::ProviderError::from`].
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("the file is larger than the {limit}-byte limit (scheduler.max_file_size)")]
    TooLarge { limit: u64 },
    #[error("the download was cut short: got {got} of {expected} bytes")]
    Truncated { got: u64, expected: u64 },
    #[error("the download stalled: no data for {0:?}")]
    Stalled(Duration),
    #[error("the connection failed during the download: {0}")]
    Network(String),
    #[error("cannot write {path}: {source}")]
    Disk {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs blocking file work on tokio's blocking pool: one hand-off per
/// durable write, however many system calls it takes.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
}

/// Chunks received but not yet written, at most.
const WRITE_AHEAD: usize = 16;

/// Streams `response` into `folder/name` (already sanitized), enforcing
/// `max_size` and failing when no bytes arrive for `idle`.
pub async fn save_response(
    mut response: reqwest::Response,
    folder: &Subfolder,
    name: &str,
    max_size: u64,
    idle: Duration,
) -> Result<SavedFile, DownloadError> {
    let expected = response.content_length();
    if let Some(len) = expected
        && len > max_size
    {
        return Err(DownloadError::TooLarge { limit: max_size });
    }
    let part = folder.path().join(part_name(name));
    // Receiving and writing overlap: this task reads the network and hashes
    // while one blocking thread makes the folder and writes, joined by
    // a bounded channel (at most WRITE_AHEAD chunks in flight, so memory
    // stays flat whatever the size of the file). One hand-off to the
    // blocking pool per file, not one per system call. The hash is taken
    // here, not by the writer: on one thread hashing and copying into the
    // page cache were the slowest part of a large download; split, they run
    // side by side (a chunk's hash is tens of microseconds, short enough
    // for a runtime thread).
    let (pieces, pending) = tokio::sync::mpsc::channel::<Piece>(WRITE_AHEAD);
    let writer = {
        let (folder, name) = (folder.clone(), name.to_string());
        tokio::task::spawn_blocking(move || write_pieces(&folder, &name, pending))
    };
    let mut hasher = Sha256::new();
    let received = async {
        let mut total: u64 = 0;
        loop {
            let chunk = match tokio::time::timeout(idle, response.chunk()).await {
                Err(_) => return Err(DownloadError::Stalled(idle)),
                Ok(Err(e)) => return Err(DownloadError::Network(crate::http::describe(&e))),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            total += chunk.len() as u64;
            if total > max_size {
                return Err(DownloadError::TooLarge { limit: max_size });
            }
            hasher.update(&chunk);
            if pieces.send(Piece::Data(chunk)).await.is_err() {
                // The writer stopped on a disk error; it is reported below.
                break;
            }
        }
        if let Some(expected) = expected
            && total != expected
        {
            return Err(DownloadError::Truncated {
                got: total,
                expected,
            });
        }
        Ok(total)
    }
    .await;
    // Only a whole stream is committed; anything else leaves no file.
    if received.is_ok() {
        let _ = pieces.send(Piece::Commit).await;
    }
    drop(pieces);
    let written = writer.await.unwrap_or_else(|e| {
        Err(DownloadError::Disk {
            path: part.clone(),
            source: std::io::Error::other(e),
        })
    });
    // The writer removes its part file whenever it does not commit, and
    // the committer whenever the file cannot be made durable: a
    // half-written file is never left behind.
    match (received, written) {
        // A disk error explains a short stream better than the count does.
        (_, Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
        (Ok(total), Ok(Some(staged))) => {
            durable::commit(staged)
                .await
                .map_err(|failed| DownloadError::Disk {
                    path: failed.path,
                    source: failed.source,
                })?;
            Ok(SavedFile {
                name: name.to_string(),
                size: total,
                sha256: hex(&hasher.finalize()),
            })
        }
        (Ok(_), Ok(None)) => Err(DownloadError::Disk {
            path: part.clone(),
            source: std::io::Error::other("the file writer stopped before the end"),
        }),
    }
}

/// What the network side hands the file writer.
enum Piece {
    Data(bytes::Bytes),
    /// The stream was whole: hand the file over to be made durable under
    /// its final name.
    Commit,
}

/// The blocking half of [`save_response`]: returns the whole part file,
/// ready for the committer; `None` when the stream ended without
/// [`Piece::Commit`]. Whenever it does not return a file, the part file is
/// removed.
fn write_pieces(
    folder: &Subfolder,
    name: &str,
    mut pending: tokio::sync::mpsc::Receiver<Piece>,
) -> Result<Option<Staged>, DownloadError> {
    let dir = folder.path();
    let dir = dir.as_path();
    let disk = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Disk { path, source }
    };
    let part_file = part_name(name);
    let part = dir.join(&part_file);
    let (folder, made_in) = folder.open_staging().map_err(disk(dir))?;
    let file = folder.create_file(&part_file, 0o640).map_err(disk(&part))?;
    match write_part(file, &mut pending) {
        Ok(Some(file)) => Ok(Some(Staged::new(folder, file, name, made_in))),
        written => {
            // Never leave a half-written file behind; a missing one is fine.
            let _ = folder.remove_file(std::ffi::OsStr::new(&part_file));
            written.map(|_| None).map_err(disk(&part))
        }
    }
}

/// Writes the pieces into `file` (the open part file) and, on
/// [`Piece::Commit`], gives it back whole (its data not yet synced: the
/// committer does that for the whole batch at once).
fn write_part(
    file: std::fs::File,
    pending: &mut tokio::sync::mpsc::Receiver<Piece>,
) -> std::io::Result<Option<std::fs::File>> {
    use std::io::Write as _;
    let flush_handle = file.try_clone()?;
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut commit = false;
    // A large file is flushed to the disk while it is still arriving (see
    // `flush_behind`), so the final `fsync` has little left to write.
    let flushed = std::thread::scope(|scope| -> std::io::Result<()> {
        let mut flusher = None;
        let mut no_flusher = false;
        let mut unflushed: u64 = 0;
        while let Some(piece) = pending.blocking_recv() {
            match piece {
                Piece::Data(chunk) => {
                    out.write_all(&chunk)?;
                    unflushed += chunk.len() as u64;
                    if unflushed >= FLUSH_BEHIND {
                        unflushed = 0;
                        if flusher.is_none() && !no_flusher {
                            let (tick, ticks) = std::sync::mpsc::sync_channel::<()>(1);
                            let file = &flush_handle;
                            match std::thread::Builder::new()
                                .name("docfetch-flush".into())
                                .spawn_scoped(scope, move || flush_behind(file, &ticks))
                            {
                                Ok(flushing) => flusher = Some((tick, flushing)),
                                // No thread to spare: the final `fsync` does
                                // all the work, as it does for a small file.
                                Err(_) => no_flusher = true,
                            }
                        }
                        if let Some((tick, _)) = &flusher {
                            // Full means a flush is already waiting to run.
                            let _ = tick.try_send(());
                        }
                    }
                }
                Piece::Commit => {
                    commit = true;
                    break;
                }
            }
        }
        if let Some((tick, flushing)) = flusher {
            drop(tick);
            // The flusher's error must be reported here: once one `fsync`
            // has returned a write-back error, the next may not see it.
            flushing
                .join()
                .map_err(|_| std::io::Error::other("the flush-behind thread panicked"))
                .and_then(|flushed| flushed)?;
        }
        Ok(())
    });
    flushed?;
    if !commit {
        return Ok(None);
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    Ok(Some(file))
}

/// Bytes written between two flush-behind `fdatasync`s of a large file.
const FLUSH_BEHIND: u64 = 32 * 1024 * 1024;

/// `fdatasync`s the file each time the writer says another
/// [`FLUSH_BEHIND`] bytes went into it, until the writer hangs up: the disk
/// works while the network still delivers, instead of all at the end.
fn flush_behind(
    file: &std::fs::File,
    ticks: &std::sync::mpsc::Receiver<()>,
) -> std::io::Result<()> {
    while ticks.recv().is_ok() {
        file.sync_data()?;
    }
    Ok(())
}

/// Writes small contents durably and atomically (`.part`, `fdatasync`,
/// rename, `fsync` folder, in the committer's next batch) as
/// `folder/name`, making the folder when missing.
pub async fn write_atomic(folder: &Subfolder, name: &str, contents: &[u8]) -> std::io::Result<()> {
    let (folder, name, contents) = (folder.clone(), name.to_string(), contents.to_vec());
    let staged = blocking(move || {
        let (dir, made_in) = folder.open_staging()?;
        Staged::write(dir, &name, &contents, made_in)
    })
    .await?;
    durable::commit(staged).await?;
    Ok(())
}

/// Removes `.*.part` leftovers of an interrupted download from `folder`.
pub fn remove_stale_parts(folder: &Folder) {
    let Ok(entries) = folder.entries() else {
        return;
    };
    for (name, _) in entries {
        let text = name.to_string_lossy();
        if text.starts_with('.') && text.ends_with(".part") {
            let _ = folder.remove_file(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_atomic_leaves_only_the_final_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/b");
        let folder = Subfolder::new(dir.path().join("a"), "b");
        write_atomic(&folder, "job.json", b"{}").await.unwrap();
        write_atomic(&folder, "job.json", b"{\"x\":1}")
            .await
            .unwrap();
        assert_eq!(std::fs::read(out.join("job.json")).unwrap(), b"{\"x\":1}");
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("job.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    /// Feeds `chunks` of `len` bytes to the file writer, then `commit`s or
    /// hangs up.
    fn write_chunks(dir: &Path, chunks: usize, len: usize, commit: bool) -> bool {
        let (pieces, pending) = tokio::sync::mpsc::channel(WRITE_AHEAD);
        let feeder = std::thread::spawn(move || {
            for i in 0..chunks {
                let chunk = bytes::Bytes::from(vec![i as u8; len]);
                pieces.blocking_send(Piece::Data(chunk)).unwrap();
            }
            if commit {
                pieces.blocking_send(Piece::Commit).unwrap();
            }
        });
        let folder = Subfolder::new(dir, "job");
        let written = write_pieces(&folder, "big.bin", pending).unwrap();
        feeder.join().unwrap();
        match written {
            Some(staged) => {
                durable::commit_blocking(staged).unwrap();
                true
            }
            None => false,
        }
    }

    #[test]
    fn a_file_larger_than_the_flush_behind_step_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        // 2.5 flush-behind steps, so the flusher runs and is joined.
        let len = (FLUSH_BEHIND / 4) as usize;
        assert!(write_chunks(dir.path(), 10, len, true));
        let file = std::fs::read(dir.path().join("job/big.bin")).unwrap();
        assert_eq!(file.len(), 10 * len);
        assert!(file[9 * len..].iter().all(|b| *b == 9));
        assert!(!dir.path().join("job").join(part_name("big.bin")).exists());
    }

    #[test]
    fn a_large_stream_that_ends_without_commit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let len = (FLUSH_BEHIND / 4) as usize;
        assert!(!write_chunks(dir.path(), 6, len, false));
        assert_eq!(
            std::fs::read_dir(dir.path().join("job")).unwrap().count(),
            0
        );
    }

    #[test]
    fn stale_parts_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".x.json.part"), b"half").unwrap();
        std::fs::write(dir.path().join("x.json"), b"whole").unwrap();
        remove_stale_parts(&Folder::open_root(dir.path(), false).unwrap());
        assert!(!dir.path().join(".x.json.part").exists());
        assert!(dir.path().join("x.json").exists());
    }
}
