//! File locks beside the SQLite database: one while a process opens the
//! store and migrates it, one held by the running daemon for its lifetime.

use super::*;

/// An exclusive lock on `STORE.open.lock`, held while a process opens the
/// store and applies migrations.
pub(super) struct OpenLock {
    _file: std::fs::File,
}

impl OpenLock {
    pub(super) async fn acquire(db: &Path) -> Result<OpenLock, StoreError> {
        let mut name = db.as_os_str().to_owned();
        name.push(".open.lock");
        let path = PathBuf::from(name);
        let db = db.to_path_buf();
        let locked = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            // Blocks only while another process opens the store, which
            // takes milliseconds.
            file.lock()
                .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
            Ok::<_, String>(file)
        })
        .await
        .map_err(|e| open_error(&db, e))?
        .map_err(|e| open_error(&db, e))?;
        Ok(OpenLock { _file: locked })
    }
}

/// An exclusive lock next to the database file, held by the running daemon,
/// so two daemons never share one SQLite store (each would take the other's
/// leases back at start-up). The CLI does not take it.
pub struct DaemonLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl DaemonLock {
    pub fn acquire(db: &Path) -> Result<DaemonLock, StoreError> {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| {
                open_error(db, format!("cannot open lock file {}: {e}", path.display()))
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DaemonLock { _file: file, path }),
            Err(std::fs::TryLockError::WouldBlock) => Err(open_error(
                db,
                format!(
                    "another docfetch daemon is running on this store (lock {} is held)",
                    path.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(open_error(
                db,
                format!("cannot lock {}: {e}", path.display()),
            )),
        }
    }
}
