//! The API's bearer token when the operator gave none: 32 bytes from the
//! operating system's random source, hex-encoded, made at first start in the
//! state folder (`api-token` beside the SQLite store; `var/api-token` with
//! PostgreSQL) and reused afterwards.
//!
//! The file is never readable by anyone else, not even for an instant: it is
//! written under a temporary name created with mode 0600, `fsync`ed, and
//! linked into place without replacing anything (two daemons starting at
//! once agree on one token), then its folder is `fsync`ed. An existing file
//! is used only if it is a regular file that no one else may read or write.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::config::{ApiAuth, Secret};

/// Random bytes in a generated token (64 hex characters).
pub const TOKEN_BYTES: usize = 32;

/// A token file written by hand must be at least this long.
const MIN_LEN: usize = 32;

/// Why the token could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create the API token {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error(
        "the API token {path} may be read or changed by other users (mode {mode:04o}); run `chmod 600 {path}`, or delete it and restart docfetch to get a new one"
    )]
    TooOpen { path: String, mode: u32 },
    #[error("the API token {path} is not a regular file; remove it and restart docfetch")]
    NotAFile { path: String },
    #[error(
        "the API token {path} holds no usable token ({len} characters, at least {MIN_LEN} needed); delete it and restart docfetch to get a new one"
    )]
    TooShort { path: String, len: usize },
    #[error(
        "no API token yet at {path}: docfetch makes it the first time `docfetch run` starts with the API on"
    )]
    Missing { path: String },
}

/// The token the API requires, making it first if it is docfetch's to make.
/// `None` when `api.auth = "none"`.
pub fn resolve(auth: &ApiAuth) -> Result<Option<Secret>, TokenError> {
    match auth {
        ApiAuth::None => Ok(None),
        ApiAuth::Token { token, .. } => Ok(Some(token.clone())),
        ApiAuth::Generated(path) => load_or_create(path).map(Some),
    }
}

/// The token for a client on this machine (the CLI): read, never made, so a
/// command run as another user cannot leave a file the daemon cannot read.
pub fn read(auth: &ApiAuth) -> Result<Option<Secret>, TokenError> {
    match auth {
        ApiAuth::None => Ok(None),
        ApiAuth::Token { token, .. } => Ok(Some(token.clone())),
        ApiAuth::Generated(path) => {
            read_existing(path)?
                .map(Some)
                .ok_or_else(|| TokenError::Missing {
                    path: path.display().to_string(),
                })
        }
    }
}

/// Reads the token at `path`, or makes one there if there is none.
pub fn load_or_create(path: &Path) -> Result<Secret, TokenError> {
    if let Some(token) = read_existing(path)? {
        return Ok(token);
    }
    let shown = path.display().to_string();
    let create = |source| TokenError::Create {
        path: shown.clone(),
        source,
    };
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    crate::beneath::ensure_dir(dir).map_err(create)?;
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    let token = crate::job::digest::hex(&bytes);
    // tempfile opens with O_EXCL and the mode given here; the umask can
    // only take bits away.
    let mut file = tempfile::Builder::new()
        .prefix(".api-token.")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(create)?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.as_file().sync_all())
        .map_err(create)?;
    match file.persist_noclobber(path) {
        Ok(_) => {}
        // Another process made it first: use theirs.
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            return read_existing(path)?.ok_or(TokenError::Missing { path: shown });
        }
        Err(e) => return Err(create(e.error)),
    }
    crate::beneath::Folder::open_root(dir, false)
        .and_then(|folder| folder.sync())
        .map_err(create)?;
    tracing::info!(path = %shown, "made a new API token (mode 0600); clients send it as Authorization: Bearer TOKEN");
    Ok(Secret::new(token))
}

/// The token in an existing file; `None` when there is no file.
fn read_existing(path: &Path) -> Result<Option<Secret>, TokenError> {
    let shown = || path.display().to_string();
    let read = |source| TokenError::Read {
        path: shown(),
        source,
    };
    // A symbolic link is not followed: the token is ours, in our folder.
    let link = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read(e)),
    };
    if !link.file_type().is_file() {
        return Err(TokenError::NotAFile { path: shown() });
    }
    let mut file = std::fs::File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    // The file opened must be the one looked at.
    if meta.ino() != link.ino() || meta.dev() != link.dev() || !meta.is_file() {
        return Err(TokenError::NotAFile { path: shown() });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::TooOpen {
            path: shown(),
            mode,
        });
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(&mut file, 4096), &mut text)
        .map_err(read)?;
    let token = text.trim();
    if token.len() < MIN_LEN {
        return Err(TokenError::TooShort {
            path: shown(),
            len: token.len(),
        });
    }
    Ok(Some(Secret::new(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/api-token");
        let first = load_or_create(&path).unwrap();
        assert_eq!(first.expose().len(), 2 * TOKEN_BYTES);
        assert!(first.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_create(&path).unwrap();
        assert_eq!(first, again, "the token is reused");
        let other = load_or_create(&dir.path().join("other/api-token")).unwrap();
        assert_ne!(first, other, "each token is random");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["api-token"]);
    }

    #[test]
    fn a_token_others_can_read_is_refused_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("0644"), "{err}");
    }

    #[test]
    fn a_short_token_or_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        std::fs::write(&path, "short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("5 characters"), "{err}");
        let target = dir.path().join("elsewhere");
        load_or_create(&target).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = load_or_create(&link).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_client_reads_the_token_but_never_makes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        let auth = ApiAuth::Generated(path.clone());
        let err = read(&auth).unwrap_err().to_string();
        assert!(err.contains("no API token yet"), "{err}");
        assert!(!path.exists());
        let made = resolve(&auth).unwrap().unwrap();
        assert_eq!(read(&auth).unwrap().unwrap(), made);
        assert_eq!(read(&ApiAuth::None).unwrap(), None);
    }
}
