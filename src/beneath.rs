//! Files and folders reached through a folder the daemon already holds open,
//! never by a path that was checked first and opened again.
//!
//! The folders named in the config (`paths.output`, `paths.requests`,
//! `paths.attachments`) are the operator's choice and are opened as given,
//! symbolic links included. Everything *below* them is named by data that
//! arrives — a job name, a file name from `Content-Disposition`, an
//! attachment path in a request — and may sit in a folder other people can
//! write to (a shared drop directory, an output folder that consumers pick
//! files from). Below a root, therefore:
//!
//! - a folder or file docfetch writes is reached by `openat`/`mkdirat`/
//!   `renameat`/`unlinkat` relative to the descriptor of its parent, one
//!   name at a time and with `O_NOFOLLOW`: a symbolic link planted or swapped
//!   in at `output/NAME`, at `requests/rejected` or at a `.part` name is
//!   refused ([`is_refused`]) instead of followed, whenever it appears;
//! - a file docfetch reads from a tree ([`Folder::open_beneath`], Kontur.Extern
//!   attachments) is opened by `openat2` with `RESOLVE_BENEATH`: the kernel
//!   resolves the whole path, links included, and refuses any step that
//!   would leave the folder, atomically. Where `openat2` is missing (Linux
//!   before 5.6, or a seccomp filter that refuses it) the path is walked one
//!   name at a time with `O_NOFOLLOW` instead, which refuses every link.
//!
//! A durable write keeps the order the rest of docfetch relies on: the file
//! is written as `.NAME.part`, synced, renamed into place, and the folder
//! is `fsync`ed (`durable::write_atomic`, which does it in batches).
//! Every call is one system call on a descriptor already held, so the
//! sequence is the same as with paths: `openat` `.part`, `write`s,
//! `fdatasync` file, `renameat`, `fsync` folder.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// A path below a root that was refused because following it could lead
/// somewhere else: a symbolic link, something that is not a folder where a
/// folder belongs, or a path that climbs out of its root.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct Refused {
    /// The path as the user would write it (root joined with the name).
    pub path: PathBuf,
    pub kind: RefusedKind,
    pub why: String,
}

/// What was wrong with a refused path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedKind {
    /// A symbolic link where none is followed.
    Link,
    /// The path climbs out of its root (`..`, an absolute link, a link out).
    Escapes,
    /// Not a regular file (a folder, FIFO, socket or device) where a file
    /// is read, or not a folder where a folder belongs.
    WrongType,
}

impl Refused {
    fn io(path: PathBuf, kind: RefusedKind, why: impl Into<String>) -> io::Error {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            Refused {
                path,
                kind,
                why: why.into(),
            },
        )
    }
}

/// Whether `error` is a [`Refused`] path: a permanent problem that waiting
/// does not cure, unlike a full or failing disk.
pub fn is_refused(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<Refused>())
}

/// The refusal inside `error`, when it is one.
pub fn refused(error: &io::Error) -> Option<&Refused> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Refused>())
}

/// A folder held open by its descriptor.
#[derive(Debug)]
pub struct Folder {
    /// Held as a `File` so that its `fsync` goes through the C library like
    /// every other sync docfetch makes (rustix would call the kernel
    /// directly): the durability tests take single syncs away by
    /// interposing on the C library's `fsync`.
    fd: File,
    /// For messages only: what the folder was called when it was opened.
    path: PathBuf,
}

/// A folder given as a trusted root and one name below it (`output/NAME`,
/// `requests/rejected`): the root is opened as configured, the name never
/// through a link. Cheap to clone and to send to a blocking thread, which
/// opens it with [`Subfolder::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subfolder {
    root: PathBuf,
    name: String,
}

impl Subfolder {
    /// `root/name`; `name` must be one path component (checked on open).
    pub fn new(root: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Subfolder {
            root: root.into(),
            name: name.into(),
        }
    }

    /// `root/name` as a path, for messages, hooks and listings.
    pub fn path(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    /// Opens it (blocking); with `create`, makes the root and the folder
    /// when missing (see [`Folder::child`]).
    pub fn open(&self, create: bool) -> io::Result<Folder> {
        Folder::open_root(&self.root, create)?.child(&self.name, create)
    }

    /// Opens it for files that will be committed in a batch
    /// ([`crate::durable`]), making the root and the folder when missing.
    /// When the folder was made here, its root comes back too: the root's
    /// `fsync` (which makes the new entry durable) is then the batch's to
    /// do, once for every folder made meanwhile, instead of one here.
    pub fn open_staging(&self) -> io::Result<(Folder, Option<Folder>)> {
        let root = Folder::open_root(&self.root, true)?;
        let (folder, made) = root.child_made(&self.name)?;
        Ok((folder, made.then_some(root)))
    }
}

/// Refuses anything but one plain path component: the names docfetch puts
/// below a root (job names, sanitised file names) are never paths.
pub fn one_name(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(name)
}

impl Folder {
    /// Opens a folder named in the config. Links in its path are followed:
    /// the operator chose it. With `create`, it is made first (with its
    /// parents, mode 0750) when missing.
    pub fn open_root(path: &Path, create: bool) -> io::Result<Folder> {
        if create {
            ensure_dir(path)?;
        }
        let fd = rustix::fs::openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Folder {
            fd: File::from(fd),
            path: path.to_path_buf(),
        })
    }

    /// The path this folder had when it was opened (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// The folder `name` inside this one, never through a symbolic link.
    /// With `create`, it is made (mode 0750) when missing, and this folder
    /// is then `fsync`ed so the new entry survives a power cut (on a file
    /// system without a journal, an `fsync` of a file inside does not make
    /// its folder durable).
    pub fn child(&self, name: &str, create: bool) -> io::Result<Folder> {
        if !create {
            return self.child_opened(name, false).map(|(folder, _)| folder);
        }
        let (folder, made) = self.child_made(name)?;
        if made {
            // Made here: its entry in this folder must be durable.
            self.sync()?;
        }
        Ok(folder)
    }

    /// [`Folder::child`] with `create`, without the sync: says whether the
    /// folder was made here, so the caller syncs this folder before it
    /// relies on the new one.
    pub fn child_made(&self, name: &str) -> io::Result<(Folder, bool)> {
        self.child_opened(name, true)
    }

    fn child_opened(&self, name: &str, create: bool) -> io::Result<(Folder, bool)> {
        let name = one_name(name)?;
        let open = || {
            rustix::fs::openat(
                &self.fd,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let mut made = false;
        let fd = match open() {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o750)) {
                    Ok(()) => made = true,
                    // Made by someone else since (another daemon of a fleet).
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                open().map_err(|e| self.explain(name, e))?
            }
            Err(e) => return Err(self.explain(name, e)),
        };
        let folder = Folder {
            fd: File::from(fd),
            path: self.shown(name),
        };
        Ok((folder, made))
    }

    /// The folder's device and inode numbers: which folder it is, however
    /// it was reached.
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        let stat = rustix::fs::fstat(&self.fd)?;
        #[allow(clippy::useless_conversion)] // u64 on 64-bit targets, narrower elsewhere
        Ok((u64::from(stat.st_dev), u64::from(stat.st_ino)))
    }

    /// A second descriptor of the same folder.
    pub fn try_clone(&self) -> io::Result<Folder> {
        Ok(Folder {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// Turns the errors of an `O_NOFOLLOW | O_DIRECTORY` open into a
    /// [`Refused`] when the name is a link or not a folder.
    fn explain(&self, name: &str, e: Errno) -> io::Error {
        if !matches!(e, Errno::LOOP | Errno::NOTDIR) {
            return e.into();
        }
        let (kind, what) = match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => (
                RefusedKind::Link,
                "is a symbolic link; docfetch does not follow links here (replace it by a real folder)",
            ),
            _ => (RefusedKind::WrongType, "is not a folder"),
        };
        Refused::io(self.shown(name), kind, what)
    }

    /// `fsync`s the folder, so renames and new entries in it are durable.
    pub fn sync(&self) -> io::Result<()> {
        self.fd.sync_all()?;
        Ok(())
    }

    /// Creates (or truncates) the regular file `name` for writing, never
    /// through a symbolic link planted under that name.
    pub fn create_file(&self, name: &str, mode: u32) -> io::Result<File> {
        let name = one_name(name)?;
        rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map(File::from)
        .map_err(|e| match e {
            Errno::LOOP => Refused::io(
                self.shown(name),
                RefusedKind::Link,
                "is a symbolic link; docfetch does not write through links",
            ),
            e => e.into(),
        })
    }

    /// Opens the file `name` in this folder for reading: not through a link,
    /// without blocking on a FIFO, and only when it is a regular file.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let name = one_name(name)?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::LOOP => Refused::io(self.shown(name), RefusedKind::Link, "is a symbolic link"),
            e => e.into(),
        })?;
        regular(fd, || self.shown(name))
    }

    /// Renames `from` in this folder to `to_name` in `to` (which may be this
    /// folder). Like `rename(2)`, it replaces a file already named `to_name`
    /// and never follows a link on either side.
    pub fn rename(&self, from: &OsStr, to: &Folder, to_name: &str) -> io::Result<()> {
        let to_name = one_name(to_name)?;
        rustix::fs::renameat(&self.fd, from, &to.fd, to_name)?;
        Ok(())
    }

    /// Removes the file (or link) `name`; a missing one is an error of kind
    /// `NotFound`.
    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?;
        Ok(())
    }

    /// Whether anything (a link included) is named `name` here.
    pub fn contains(&self, name: &OsStr) -> bool {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// The names in this folder (without `.` and `..`), with what each is
    /// (as the directory listing says; `Unknown` on some file systems).
    pub fn entries(&self) -> io::Result<Vec<(OsString, FileType)>> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push((OsStr::from_bytes(name).to_os_string(), entry.file_type()));
            }
        }
        Ok(names)
    }

    /// The modification time of `name` (not following a link), in seconds
    /// since the epoch, and whether it is a regular file.
    pub fn modified(&self, name: &OsStr) -> io::Result<(i64, bool)> {
        let stat = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let is_file = FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile;
        #[allow(clippy::useless_conversion)] // i64 on 64-bit targets, narrower elsewhere
        Ok((i64::from(stat.st_mtime), is_file))
    }

    /// Opens `relative` (a path of one or more names) for reading, resolved
    /// by the kernel strictly beneath this folder: symbolic links inside the
    /// folder are followed, but an absolute link, a `..` or a link that
    /// climbs out is refused ([`is_refused`]) — atomically, so a link
    /// swapped in while docfetch looks cannot lead outside. A FIFO does not
    /// block the open; anything but a regular file is refused.
    pub fn open_beneath(&self, relative: &str) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        let shown = || self.shown(relative);
        // EAGAIN: a rename elsewhere raced the lookup; the kernel asks for a retry.
        let mut tries = 0;
        let opened = loop {
            match rustix::fs::openat2(&self.fd, relative, flags, Mode::empty(), resolve) {
                Err(Errno::AGAIN) if tries < 8 => tries += 1,
                Err(Errno::NOSYS | Errno::PERM) => return self.open_walking(relative),
                other => break other,
            }
        };
        let fd = opened.map_err(|e| match e {
            Errno::XDEV => Refused::io(
                shown(),
                RefusedKind::Escapes,
                "leads outside its folder (through \"..\", an absolute path or a symbolic link)",
            ),
            Errno::LOOP => Refused::io(
                shown(),
                RefusedKind::Escapes,
                "has too many or unsafe symbolic links",
            ),
            e => e.into(),
        })?;
        regular(fd, shown)
    }

    /// [`Folder::open_beneath`] without `openat2`: one name at a time, each
    /// opened with `O_NOFOLLOW`, so no symbolic link is followed at all.
    pub(crate) fn open_walking(&self, relative: &str) -> io::Result<File> {
        let names: Vec<&str> = relative
            .split('/')
            .filter(|n| !n.is_empty() && *n != ".")
            .collect();
        let Some((last, folders)) = names.split_last() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{relative:?} names no file"),
            ));
        };
        if names.contains(&"..") {
            return Err(Refused::io(
                self.shown(relative),
                RefusedKind::Escapes,
                "leads outside its folder (through \"..\")",
            ));
        }
        let link = |e: io::Error| match refused(&e).map(|r| r.kind) {
            Some(RefusedKind::Link) => Refused::io(
                self.shown(relative),
                RefusedKind::Link,
                "passes through a symbolic link, which this system cannot follow safely (no openat2)",
            ),
            _ => e,
        };
        let mut here: Option<Folder> = None;
        for name in folders {
            let next = here
                .as_ref()
                .unwrap_or(self)
                .child(name, false)
                .map_err(link)?;
            here = Some(next);
        }
        here.as_ref().unwrap_or(self).open_file(last).map_err(link)
    }
}

/// Keeps `fd` only when `fstat` says it is a regular file.
fn regular(fd: OwnedFd, shown: impl FnOnce() -> PathBuf) -> io::Result<File> {
    let stat = rustix::fs::fstat(fd.as_fd())?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(Refused::io(
            shown(),
            RefusedKind::WrongType,
            "is not a regular file (a folder, FIFO, socket or device)",
        ));
    }
    Ok(File::from(fd))
}

/// Creates `dir` (and parents) with mode 0750 if missing.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
}

/// [`ensure_dir`] for a folder that will hold durable files: each folder it
/// creates has its parent `fsync`ed too, so the folder's own entry
/// survives a power cut (on a file system without a journal, an `fsync` of
/// a file does not make the folder that holds it durable). For folders the
/// operator named in the config (links in their path are followed).
/// Blocking: call it from a blocking thread.
pub fn ensure_dir_durable(dir: &Path) -> std::io::Result<()> {
    let is_dir = |d: &Path| std::fs::metadata(d).is_ok_and(|m| m.is_dir());
    if is_dir(dir) {
        return Ok(());
    }
    // The folders missing on the way, innermost first.
    let mut missing = Vec::new();
    let mut next = Some(dir);
    while let Some(d) = next.filter(|d| !d.as_os_str().is_empty() && !is_dir(d)) {
        missing.push(d);
        next = d.parent();
    }
    ensure_dir(dir)?;
    for made in missing.iter().rev() {
        if let Some(parent) = made.parent().filter(|p| !p.as_os_str().is_empty()) {
            Folder::open_root(parent, false)?.sync()?;
        }
    }
    Ok(())
}

/// The temporary name a file has while it is being written: `.NAME.part`.
pub fn part_name(name: &str) -> String {
    format!(".{name}.part")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, Folder) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/inside.txt"), b"inside").unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"secret").unwrap();
        let folder = Folder::open_root(&root, false).unwrap();
        (dir, folder)
    }

    #[test]
    fn a_link_inside_the_tree_is_followed_and_one_leading_out_is_refused() {
        let (dir, root) = tree();
        let base = dir.path().join("root");
        symlink("sub/inside.txt", base.join("relative-in")).unwrap();
        symlink("../secret.txt", base.join("relative-out")).unwrap();
        symlink(dir.path().join("secret.txt"), base.join("absolute-out")).unwrap();
        symlink(base.join("sub/inside.txt"), base.join("absolute-in")).unwrap();
        symlink(dir.path(), base.join("sub/up")).unwrap();
        let mut text = String::new();
        use std::io::Read as _;
        root.open_beneath("relative-in")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "inside");
        for path in [
            "relative-out",
            "absolute-out",
            // An absolute link is refused even when it points inside: the
            // kernel cannot tell where "/" is for a root that moved.
            "absolute-in",
            "sub/up/secret.txt",
            "../secret.txt",
            "sub/../../secret.txt",
        ] {
            let e = root.open_beneath(path).unwrap_err();
            assert!(is_refused(&e), "{path}: {e}");
        }
        let missing = root.open_beneath("nope").unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let folder = root.open_beneath("sub").unwrap_err();
        assert!(
            folder.to_string().contains("not a regular file"),
            "{folder}"
        );
    }

    #[test]
    fn without_openat2_the_walk_refuses_every_link_and_still_opens_plain_files() {
        let (dir, root) = tree();
        let base = dir.path().join("root");
        symlink("sub/inside.txt", base.join("relative-in")).unwrap();
        symlink(dir.path(), base.join("sub/up")).unwrap();
        assert!(root.open_walking("sub/inside.txt").is_ok());
        assert!(root.open_walking("./sub//inside.txt").is_ok());
        for path in ["relative-in", "sub/up/secret.txt", "sub/../inside.txt"] {
            let e = root.open_walking(path).unwrap_err();
            assert!(is_refused(&e), "{path}: {e}");
        }
    }

    #[test]
    fn a_fifo_below_a_root_is_refused_without_blocking() {
        let (dir, root) = tree();
        rustix::fs::mknodat(
            CWD,
            dir.path().join("root/pipe"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // With no writer, a blocking open of a FIFO would never return.
        let e = root.open_beneath("pipe").unwrap_err();
        assert!(is_refused(&e), "{e}");
        let e = root.open_file("pipe").unwrap_err();
        assert!(is_refused(&e), "{e}");
    }

    #[test]
    fn a_link_at_a_subfolder_name_is_refused_and_nothing_is_written_outside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let root = dir.path().join("output");
        std::fs::create_dir(&root).unwrap();
        symlink(&outside, root.join("job")).unwrap();
        let e = Subfolder::new(&root, "job").open(true).unwrap_err();
        assert!(is_refused(&e), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_link_planted_at_the_part_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let folder = Subfolder::new(dir.path(), "job").open(true).unwrap();
        symlink(&victim, dir.path().join("job").join(part_name("x.json"))).unwrap();
        let e = crate::durable::write_atomic(&folder, "x.json", b"new").unwrap_err();
        assert!(is_refused(&e), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!dir.path().join("job/x.json").exists());
    }

    #[test]
    fn names_below_a_root_are_single_components() {
        let dir = tempfile::tempdir().unwrap();
        let root = Folder::open_root(dir.path(), false).unwrap();
        for name in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert_eq!(
                root.child(name, true).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_new_subfolder_is_made_with_mode_0750_and_written_atomically() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let folder = Subfolder::new(dir.path().join("out"), "job")
            .open(true)
            .unwrap();
        crate::durable::write_atomic(&folder, "job.json", b"{}").unwrap();
        crate::durable::write_atomic(&folder, "job.json", b"{\"x\":1}").unwrap();
        let path = dir.path().join("out/job");
        assert_eq!(std::fs::read(path.join("job.json")).unwrap(), b"{\"x\":1}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o750);
        let names: Vec<_> = folder.entries().unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(names, vec![OsString::from("job.json")]);
    }
}
