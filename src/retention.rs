//! Retention: finished jobs older than `retention.done` (done) or
//! `retention.failed` (failed, cancelled) are pruned from the store, with
//! their history; their output folders go too only with
//! `retention.delete_files = true`. Request files in `requests/accepted/`
//! and `requests/rejected/` older than `retention.requests` are deleted.
//! Runs hourly as a housekeeping task.

use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use crate::config::Settings;
use crate::job::now_ms;
use crate::store::{Store, StoreError};

/// What one pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: Vec<String>,
    pub output_dirs: usize,
    pub request_files: usize,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

/// One retention pass at `now` (milliseconds).
pub async fn prune(store: &Store, settings: &Settings, now: i64) -> Result<Pruned, StoreError> {
    let r = &settings.retention;
    let mut pruned = Pruned::default();
    // In batches, so the single writer is never held long.
    loop {
        let batch = store
            .prune(now - millis(r.done), now - millis(r.failed), 500)
            .await?;
        let more = batch.len() == 500;
        if r.delete_files {
            for name in &batch {
                // Names are validated job names: never `..` or a path.
                let dir = settings.paths.output.join(name);
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => pruned.output_dirs += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        warn!(dir = %dir.display(), error = %e, "cannot delete a pruned job's files")
                    }
                }
            }
        }
        pruned.jobs.extend(batch);
        if !more {
            break;
        }
    }
    let cutoff = SystemTime::now() - r.requests;
    let cutoff = cutoff
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    for folder in [crate::inbox::ACCEPTED, crate::inbox::REJECTED] {
        // Through the drop directory's descriptor: writers of the drop
        // directory could put a link under these names, and retention
        // must not delete old files wherever it points.
        let folder = crate::beneath::Subfolder::new(&settings.paths.requests, folder);
        let opened = match folder.open(false) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                warn!(dir = %folder.path().display(), error = %e, "cannot clean up old request files");
                continue;
            }
        };
        for (name, _) in opened.entries().unwrap_or_default() {
            let Ok((modified, is_file)) = opened.modified(&name) else {
                continue;
            };
            if is_file && modified < cutoff && opened.remove_file(&name).is_ok() {
                pruned.request_files += 1;
            }
        }
    }
    if !pruned.jobs.is_empty() || pruned.request_files > 0 {
        info!(
            jobs = pruned.jobs.len(),
            output_dirs = pruned.output_dirs,
            request_files = pruned.request_files,
            "retention pruned old jobs"
        );
    }
    Ok(pruned)
}

/// `prune` at the current time.
pub async fn prune_now(store: &Store, settings: &Settings) -> Result<Pruned, StoreError> {
    prune(store, settings, now_ms()).await
}
