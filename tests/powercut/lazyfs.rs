//! A power-cut filesystem for tests, in the model of LazyFS (the FUSE
//! filesystem of the Jepsen analysis of NATS): a FUSE filesystem that passes
//! everything through to a backing directory but keeps, for every regular
//! file, what it would take to forget the data written since that file was
//! last fsync'ed; [`LazyFs::power_cut`] forgets it.
//!
//! # The model
//!
//! * **Data is written through.** The backing directory always holds the
//!   *current* content, so everything read through the mount is what was
//!   written. Each regular file, keyed by its backing inode number (so the key
//!   survives a rename), has an undo log: for every write or size change since
//!   the file's last sync, the bytes of the range it overwrote as they were
//!   before (only those inside the file as it then was) and the file's length
//!   before it. The first entry's length is the file's length at its first
//!   unsynced change.
//! * **fsync(2) and fdatasync(2)** of a file (the FUSE `FSYNC` request, with
//!   either `datasync` flag) clear its undo log: from then on that data is
//!   durable. Nothing is forwarded to the backing filesystem, which is never
//!   really cut. A write through a descriptor opened with `O_SYNC`/`O_DSYNC`
//!   needs no case of its own: the kernel follows it with an `FSYNC` request.
//! * **A power cut** ([`LazyFs::power_cut`]) unmounts, undoes every log in
//!   reverse order (writes the old bytes back and truncates to the old length
//!   after each entry, which restores the file exactly as it was at its last
//!   sync), clears the logs and mounts again at the same mountpoint, so the old
//!   mount's page cache is gone and reads see the rolled-back content.
//!
//! # Metadata
//!
//! * Namespace operations are durable at once, as in LazyFS: create, mknod,
//!   mkdir, symlink, link, unlink, rmdir and rename. A file created and never
//!   synced survives a cut with its length at creation, 0. A renamed file keeps
//!   its new name across a cut, and its unsynced data is still dropped: the
//!   undo log follows the inode.
//! * Unlinking the last name of a file (or renaming another file over it) drops
//!   its undo log: the file is gone whatever a cut does.
//! * A change of size (truncate or extension through `SETATTR`, also what
//!   `O_TRUNC` turns into) is *data*: it is logged like a write and undone by a
//!   cut unless the file is synced after it.
//! * chmod, chown and utimes pass through and are durable at once.
//! * fsync of a directory (`FSYNCDIR`) passes and is counted; there is nothing
//!   to make durable since the namespace always is.
//! * syncfs(2) (and sync(2)) cannot be seen: Linux forwards them only to FUSE
//!   servers that set `fc->sync_fs`, which only virtiofs does, so they are
//!   no-ops here as on a real FUSE mount; programs relying on them lose data in
//!   a cut, as they would on LazyFS.
//!
//! # Faults and limits
//!
//! * [`LazyFs::fail_syncs`] makes every `FSYNC` and `FSYNCDIR` answer an errno
//!   (e.g. `EIO`, `ENOSPC`) without clearing any undo log.
//! * statfs passes through to the backing directory; fallocate answers
//!   `EOPNOTSUPP`; there are no extended attributes.
//! * The mount has no writeback cache (fuser does not ask for one), so every
//!   write(2) reaches this filesystem before it returns. With `O_APPEND` the
//!   kernel itself picks the offset (its cached file size; every change goes
//!   through this filesystem, so it is exact) and sends it with the write; the
//!   backing file is opened without `O_APPEND` so that offset is the one used.
//! * The mount is made as root through mount(2) (fuser's pure-Rust path; no
//!   fusermount), with `allow_other` and `default_permissions`; files are
//!   created by the daemon and then given to the caller's uid/gid.
//! * One fuser thread serves requests. FUSE inode numbers are allocated here,
//!   never reused, and mapped to paths relative to the backing directory
//!   (updated on rename and unlink); forget is ignored. The table and the undo
//!   logs outlive remounts.

// Each test target that includes this file uses its own part of the API
// (tests/lazyfs.rs uses all of it, and so checks that nothing is dead).
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{
    DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

/// How long the kernel may cache attributes and names. Every change goes
/// through this filesystem (which the kernel sees), and a cut remounts, so
/// caching never shows stale data.
const TTL: Duration = Duration::from_secs(1);

/// How long an unmount may take before the mount is declared still in use.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts of what the filesystem saw, and what a cut would drop now.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// `FSYNC` requests without the datasync flag (fsync(2)), failed ones too.
    pub fsyncs: u64,
    /// `FSYNC` requests with the datasync flag (fdatasync(2)), failed ones too.
    pub fdatasyncs: u64,
    /// `FSYNCDIR` requests, failed ones too.
    pub fsyncdirs: u64,
    /// Bytes written, truncated away or added by extension since the last
    /// sync of their file, summed over all files.
    pub unsynced_bytes: u64,
}

/// What a power cut threw away.
#[derive(Debug, Default, Clone)]
pub struct CutReport {
    /// Files rolled back.
    pub files: usize,
    /// Their unsynced bytes (as counted in [`Counters::unsynced_bytes`]).
    pub bytes_dropped: u64,
}

/// A mounted LazyFS; dropping it unmounts.
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl LazyFs {
    /// Mounts a LazyFS over `backing` (an existing directory) at `mountpoint` (an existing empty dir).
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<LazyFs> {
        let state = Arc::new(Mutex::new(State::new(backing.canonicalize()?)?));
        let mountpoint = mountpoint.canonicalize()?;
        let session = spawn(&state, &mountpoint)?;
        Ok(LazyFs {
            state,
            mountpoint,
            session: Some(session),
        })
    }

    /// Why FUSE can't be used here (no /dev/fuse, mount refused, ...), or None if it can: tests print one "SKIPPED <test>: <reason>" line and return when Some.
    pub fn unavailable() -> Option<String> {
        static PROBE: OnceLock<Option<String>> = OnceLock::new();
        PROBE.get_or_init(probe).clone()
    }

    /// Drops every unsynced write, then unmounts and mounts again.
    ///
    /// No process may have a file or directory of the mount open, or it as its
    /// working directory: the old mount must go away before the rollback.
    pub fn power_cut(&mut self) -> io::Result<CutReport> {
        // Unmount first: no request can then race with the rollback.
        self.unmount()?;
        let report = lock(&self.state).roll_back()?;
        self.session = Some(spawn(&self.state, &self.mountpoint)?);
        Ok(report)
    }

    /// Makes every fsync, fdatasync and directory fsync fail with `errno`
    /// (`Some(libc::EIO)`, ...) without making anything durable; `None` ends it.
    pub fn fail_syncs(&self, errno: Option<i32>) {
        lock(&self.state).fail_syncs = errno;
    }

    /// Makes every fsync and fdatasync take `stall` before it is answered,
    /// as a hung disk does: the filesystem serves one request at a time, so
    /// everything else on it waits too. `None` ends it (a sync already
    /// stalling still takes its time).
    pub fn stall_syncs(&self, stall: Option<std::time::Duration>) {
        lock(&self.state).stall_syncs = stall;
    }

    pub fn counters(&self) -> Counters {
        let state = lock(&self.state);
        Counters {
            unsynced_bytes: state.logs.values().map(|log| log.dirty_bytes).sum(),
            ..state.counters.clone()
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the session thread, which ends when the kernel
    /// closes the connection, i.e. once nothing uses the mount any more.
    fn unmount(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let path = c_path(&self.mountpoint)?;
        // SAFETY: `path` is a NUL-terminated string that outlives the calls.
        if unsafe { libc::umount2(path.as_ptr(), 0) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(err);
            }
            // A process killed a moment ago (and not waited for, such as a
            // grandchild) may still hold files: detach the mount now; it
            // ends with its last user, which the wait below bounds.
            // SAFETY: as above.
            if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let deadline = Instant::now() + UNMOUNT_TIMEOUT;
        while !session.guard.is_finished() {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{} is unmounted but still in use after {UNMOUNT_TIMEOUT:?}",
                    self.mountpoint.display()
                )));
            }
            thread::sleep(Duration::from_millis(5));
        }
        match session.join() {
            // Seen after a detach: the kernel ends the connection as aborted
            // rather than unmounted. Either way, it is over.
            Err(err) if err.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            ended => ended,
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Err(err) = self.unmount() {
            eprintln!("lazyfs: unmounting {}: {err}", self.mountpoint.display());
        }
    }
}

/// Mounts a LazyFS and initialises it with a kernel that already knows it: the
/// FUSE handshake is done when this returns.
fn spawn(state: &Arc<Mutex<State>>, mountpoint: &Path) -> io::Result<BackgroundSession> {
    {
        // Handles of an earlier mount died with it.
        let mut state = lock(state);
        state.files.clear();
        state.dirs.clear();
    }
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("lazyfs".into()),
        // The kernel checks permissions against the attributes given here.
        MountOption::DefaultPermissions,
    ];
    // allow_other: the programs under test may run as another user.
    config.acl = SessionACL::All;
    fuser::spawn_mount(
        Fs {
            state: Arc::clone(state),
        },
        mountpoint,
        &config,
    )
}

/// Mounts and unmounts a LazyFS in a temporary directory.
fn probe() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    let attempt = || -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (backing, mountpoint) = (dir.path().join("backing"), dir.path().join("mnt"));
        fs::create_dir(&backing)?;
        fs::create_dir(&mountpoint)?;
        fs::write(backing.join("probe"), b"probe")?;
        let mut lazy = LazyFs::mount(&backing, &mountpoint)?;
        let seen = fs::read(mountpoint.join("probe"));
        lazy.unmount()?;
        if seen? != b"probe" {
            return Err(io::Error::other("the mount shows other content"));
        }
        Ok(())
    };
    attempt()
        .err()
        .map(|err| format!("cannot mount a FUSE filesystem: {err}"))
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in a test thread holding the lock leaves the state usable.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One change to undo: write `old` back at `offset`, then set the length to `old_len`.
struct Undo {
    offset: u64,
    old: Vec<u8>,
    old_len: u64,
}

/// The changes to a file since its last sync, oldest first.
#[derive(Default)]
struct UndoLog {
    entries: Vec<Undo>,
    dirty_bytes: u64,
}

/// An open regular file.
struct OpenFile {
    file: File,
    ino: u64,
    backing_ino: u64,
}

/// A directory listing taken at opendir.
struct DirEntry {
    ino: u64,
    kind: FileType,
    name: OsString,
}

/// What setattr works on.
enum Target<'a> {
    Open(&'a OpenFile),
    Path(PathBuf),
}

/// The changes asked of setattr.
struct AttrChanges {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

type Res<T> = Result<T, Errno>;

/// Everything the filesystem keeps; shared with the [`LazyFs`] handle and kept across remounts.
struct State {
    backing: PathBuf,
    /// FUSE inode number -> path relative to the backing directory ("" for
    /// the root), None once unlinked.
    nodes: HashMap<u64, Option<PathBuf>>,
    /// Backing inode number -> FUSE inode number, for files that have a name.
    by_backing: HashMap<u64, u64>,
    next_ino: u64,
    /// Backing inode number -> undo log.
    logs: HashMap<u64, UndoLog>,
    files: HashMap<u64, OpenFile>,
    dirs: HashMap<u64, Vec<DirEntry>>,
    next_fh: u64,
    fail_syncs: Option<i32>,
    stall_syncs: Option<std::time::Duration>,
    /// The request counts; `unsynced_bytes` is summed from `logs` when asked.
    counters: Counters,
}

impl State {
    fn new(backing: PathBuf) -> io::Result<State> {
        let root = fs::metadata(&backing)?;
        if !root.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let root_ino = INodeNo::ROOT.0;
        Ok(State {
            backing,
            nodes: HashMap::from([(root_ino, Some(PathBuf::new()))]),
            by_backing: HashMap::from([(root.ino(), root_ino)]),
            next_ino: root_ino + 1,
            logs: HashMap::new(),
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            fail_syncs: None,
            stall_syncs: None,
            counters: Counters::default(),
        })
    }

    /// The path of `ino` relative to the backing directory.
    fn rel(&self, ino: u64) -> Res<&Path> {
        match self.nodes.get(&ino) {
            Some(Some(path)) => Ok(path),
            Some(_) => Err(Errno::ENOENT),
            // The kernel only uses numbers it was given.
            None => Err(Errno::ESTALE),
        }
    }

    fn abs(&self, ino: u64) -> Res<PathBuf> {
        Ok(self.backing.join(self.rel(ino)?))
    }

    /// The relative path of `name` in directory `parent`.
    fn child(&self, parent: u64, name: &OsStr) -> Res<PathBuf> {
        Ok(self.rel(parent)?.join(name))
    }

    /// The inode number for the file at `rel`, allocated at first sight.
    fn intern(&mut self, rel: PathBuf, backing_ino: u64) -> u64 {
        if let Some(&ino) = self.by_backing.get(&backing_ino) {
            if let Some(path) = self.nodes.get_mut(&ino) {
                // A hard link seen by another name, or a name lost by unlink.
                *path = Some(rel);
            }
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Some(rel));
        self.by_backing.insert(backing_ino, ino);
        ino
    }

    /// Attributes of the file at `rel`, interning it.
    fn entry(&mut self, rel: PathBuf) -> Res<FileAttr> {
        let md = fs::symlink_metadata(self.backing.join(&rel))?;
        let ino = self.intern(rel, md.ino());
        Ok(attr(ino, &md))
    }

    /// Records that the name `rel` of the file `md` is gone.
    fn unlinked(&mut self, rel: &Path, md: &fs::Metadata) {
        let last_name = md.is_dir() || md.nlink() <= 1;
        let ino = if last_name {
            // Its data is gone whatever a cut does.
            self.logs.remove(&md.ino());
            self.by_backing.remove(&md.ino())
        } else {
            self.by_backing.get(&md.ino()).copied()
        };
        if let Some(path) = ino.and_then(|ino| self.nodes.get_mut(&ino)) {
            if last_name || path.as_deref() == Some(rel) {
                *path = None;
            }
        }
    }

    fn getattr(&self, ino: u64, fh: Option<u64>) -> Res<FileAttr> {
        let open = match fh {
            Some(fh) => self.files.get(&fh),
            None => None,
        };
        let md = match (open, self.rel(ino)) {
            (Some(open), _) => open.file.metadata()?,
            (None, Ok(rel)) => fs::symlink_metadata(self.backing.join(rel))?,
            // An unlinked file still open: fstat(2) gives no file handle.
            (None, Err(err)) => match self.files.values().find(|open| open.ino == ino) {
                Some(open) => open.file.metadata()?,
                None => return Err(err),
            },
        };
        Ok(attr(ino, &md))
    }

    fn setattr(&mut self, ino: u64, fh: Option<u64>, changes: AttrChanges) -> Res<FileAttr> {
        // ftruncate(2), fchmod(2)... come with the file handle, which also
        // works for an unlinked file; truncate(2), chmod(2)... come without.
        let target = match fh.and_then(|fh| self.files.get(&fh)) {
            Some(open) => Target::Open(open),
            None => Target::Path(self.abs(ino)?),
        };
        if let Some(mode) = changes.mode {
            let perms = fs::Permissions::from_mode(mode & 0o7777);
            match &target {
                Target::Open(open) => open.file.set_permissions(perms)?,
                Target::Path(path) => fs::set_permissions(path, perms)?,
            }
        }
        if changes.uid.is_some() || changes.gid.is_some() {
            match &target {
                Target::Open(open) => {
                    std::os::unix::fs::fchown(&open.file, changes.uid, changes.gid)?
                }
                Target::Path(path) => std::os::unix::fs::lchown(path, changes.uid, changes.gid)?,
            }
        }
        if let Some(size) = changes.size {
            let opened;
            let (file, backing_ino) = match &target {
                Target::Open(open) => (&open.file, open.backing_ino),
                Target::Path(path) => {
                    opened = OpenOptions::new().read(true).write(true).open(path)?;
                    (&opened, opened.metadata()?.ino())
                }
            };
            let log = self.logs.entry(backing_ino).or_default();
            let dirty = log_truncate(log, file, size)?;
            file.set_len(size)?;
            log.dirty_bytes += dirty;
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            let times = [timespec(changes.atime), timespec(changes.mtime)];
            let rc = match &target {
                // SAFETY: a valid descriptor and a two-element array.
                Target::Open(open) => unsafe {
                    libc::futimens(open.file.as_raw_fd(), times.as_ptr())
                },
                Target::Path(path) => {
                    let path = c_path(path)?;
                    // SAFETY: a NUL-terminated path and a two-element array.
                    unsafe {
                        libc::utimensat(
                            libc::AT_FDCWD,
                            path.as_ptr(),
                            times.as_ptr(),
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    }
                }
            };
            if rc != 0 {
                return Err(io::Error::last_os_error().into());
            }
        }
        self.getattr(ino, fh)
    }

    fn open(&mut self, ino: u64, flags: i32) -> Res<u64> {
        let path = self.abs(ino)?;
        // Read-write whatever the caller asked (the kernel enforces that), as
        // logging a write reads what it overwrites. Without O_APPEND, so the
        // kernel's offset is used, and without O_TRUNC, which the kernel
        // turns into a SETATTR.
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            // E.g. a running executable (ETXTBSY): reading is all it needs.
            Err(_) if flags & libc::O_ACCMODE == libc::O_RDONLY => File::open(&path)?,
            Err(err) => return Err(err.into()),
        };
        let backing_ino = file.metadata()?.ino();
        Ok(self.add_file(OpenFile {
            file,
            ino,
            backing_ino,
        }))
    }

    fn add_file(&mut self, open: OpenFile) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(fh, open);
        fh
    }

    fn create(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Res<(FileAttr, u64)> {
        let rel = self.child(parent, name)?;
        // The kernel only asks for a name it found missing, so O_EXCL always.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(self.backing.join(&rel))?;
        // The exact mode (ours went through this process's umask).
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        give_away(&self.backing.join(&rel), req);
        let md = file.metadata()?;
        // A new file: a log under a reused inode number belonged to another.
        self.logs.remove(&md.ino());
        let ino = self.intern(rel, md.ino());
        let fh = self.add_file(OpenFile {
            file,
            ino,
            backing_ino: md.ino(),
        });
        Ok((attr(ino, &md), fh))
    }

    fn mknod(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Res<FileAttr> {
        let rel = self.child(parent, name)?;
        let path = self.backing.join(&rel);
        let c = c_path(&path)?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::mknod(c.as_ptr(), mode, libc::dev_t::from(rdev)) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        give_away(&path, req);
        let md = fs::symlink_metadata(&path)?;
        self.logs.remove(&md.ino());
        let ino = self.intern(rel, md.ino());
        Ok(attr(ino, &md))
    }

    fn mkdir(&mut self, req: &Request, parent: u64, name: &OsStr, mode: u32) -> Res<FileAttr> {
        let rel = self.child(parent, name)?;
        let path = self.backing.join(&rel);
        fs::DirBuilder::new().mode(mode & 0o7777).create(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        give_away(&path, req);
        self.entry(rel)
    }

    fn symlink(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> Res<FileAttr> {
        let rel = self.child(parent, name)?;
        let path = self.backing.join(&rel);
        std::os::unix::fs::symlink(target, &path)?;
        give_away(&path, req);
        self.entry(rel)
    }

    fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> Res<FileAttr> {
        let old = self.abs(ino)?;
        let rel = self.child(parent, name)?;
        fs::hard_link(old, self.backing.join(&rel))?;
        self.entry(rel)
    }

    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        let rel = self.child(parent, name)?;
        let path = self.backing.join(&rel);
        let md = fs::symlink_metadata(&path)?;
        if dir {
            fs::remove_dir(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
        self.unlinked(&rel, &md);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Res<()> {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return Err(Errno::EINVAL);
        }
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let (from_abs, to_abs) = (self.backing.join(&from), self.backing.join(&to));
        let moved = fs::symlink_metadata(&from_abs)?;
        let replaced = fs::symlink_metadata(&to_abs).ok();
        if flags.is_empty() {
            fs::rename(&from_abs, &to_abs)?;
        } else {
            let (from_c, to_c) = (c_path(&from_abs)?, c_path(&to_abs)?);
            // SAFETY: NUL-terminated paths.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    from_c.as_ptr(),
                    libc::AT_FDCWD,
                    to_c.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error().into());
            }
        }
        match replaced {
            // Two names of one file: rename(2) does nothing.
            Some(replaced) if replaced.ino() == moved.ino() => return Ok(()),
            Some(replaced) => self.unlinked(&to, &replaced),
            None => {}
        }
        // Move the file and, for a directory, everything known below it.
        for path in self.nodes.values_mut().flatten() {
            if let Ok(rest) = path.strip_prefix(&from) {
                *path = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
            }
        }
        Ok(())
    }

    fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> Res<u32> {
        let open = self.files.get(&fh).ok_or(Errno::EBADF)?;
        let log = self.logs.entry(open.backing_ino).or_default();
        log_write(log, &open.file, offset, data.len() as u64)?;
        open.file.write_all_at(data, offset)?;
        log.dirty_bytes += data.len() as u64;
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    fn read(&self, fh: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        let open = self.files.get(&fh).ok_or(Errno::EBADF)?;
        let mut buf = vec![0; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match open
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)?
            {
                0 => break,
                n => filled += n,
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn fsync(&mut self, fh: u64, datasync: bool) -> Res<()> {
        if datasync {
            self.counters.fdatasyncs += 1;
        } else {
            self.counters.fsyncs += 1;
        }
        if let Some(errno) = self.fail_syncs {
            return Err(Errno::from_i32(errno));
        }
        let open = self.files.get(&fh).ok_or(Errno::EBADF)?;
        self.logs.remove(&open.backing_ino);
        Ok(())
    }

    fn fsyncdir(&mut self) -> Res<()> {
        self.counters.fsyncdirs += 1;
        match self.fail_syncs {
            Some(errno) => Err(Errno::from_i32(errno)),
            None => Ok(()),
        }
    }

    fn opendir(&mut self, ino: u64) -> Res<u64> {
        let rel = self.rel(ino)?.to_path_buf();
        let path = self.backing.join(&rel);
        let parent_ino = match rel.parent() {
            Some(parent) => {
                let md = fs::symlink_metadata(self.backing.join(parent))?;
                self.intern(parent.to_path_buf(), md.ino())
            }
            None => ino,
        };
        let mut entries = vec![
            DirEntry {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: parent_ino,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for entry in fs::read_dir(&path)? {
            let entry = entry?;
            let kind = kind(entry.file_type()?);
            let ino = self.intern(rel.join(entry.file_name()), entry.ino());
            entries.push(DirEntry {
                ino,
                kind,
                name: entry.file_name(),
            });
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.dirs.insert(fh, entries);
        Ok(fh)
    }

    /// Undoes every log, newest change first, and forgets them all.
    fn roll_back(&mut self) -> io::Result<CutReport> {
        let mut report = CutReport::default();
        for (backing_ino, log) in std::mem::take(&mut self.logs) {
            let path = self
                .by_backing
                .get(&backing_ino)
                .and_then(|ino| self.nodes.get(ino))
                .and_then(Option::as_ref);
            // A file with no name left is gone whatever the cut does.
            let Some(path) = path else { continue };
            let file = OpenOptions::new()
                .write(true)
                .open(self.backing.join(path))?;
            if file.metadata()?.ino() != backing_ino {
                return Err(io::Error::other(format!(
                    "{} changed behind lazyfs's back",
                    path.display()
                )));
            }
            for undo in log.entries.iter().rev() {
                file.write_all_at(&undo.old, undo.offset)?;
                file.set_len(undo.old_len)?;
            }
            report.files += 1;
            report.bytes_dropped += log.dirty_bytes;
        }
        Ok(report)
    }
}

/// Logs what writing `len` bytes at `offset` of `file` will overwrite.
fn log_write(log: &mut UndoLog, file: &File, offset: u64, len: u64) -> io::Result<()> {
    let old_len = file.metadata()?.len();
    let end = offset.saturating_add(len).min(old_len);
    let mut old = vec![0; end.saturating_sub(offset) as usize];
    file.read_exact_at(&mut old, offset)?;
    log.entries.push(Undo {
        offset,
        old,
        old_len,
    });
    Ok(())
}

/// Logs what setting the length of `file` to `new_len` will change; returns
/// the bytes it cuts or adds.
fn log_truncate(log: &mut UndoLog, file: &File, new_len: u64) -> io::Result<u64> {
    let old_len = file.metadata()?.len();
    let mut old = vec![0; old_len.saturating_sub(new_len) as usize];
    file.read_exact_at(&mut old, new_len)?;
    log.entries.push(Undo {
        offset: new_len,
        old,
        old_len,
    });
    Ok(old_len.abs_diff(new_len))
}

/// Gives a new file to the user that created it. Best effort: only root may,
/// and otherwise the file stays the daemon's, as with any FUSE server not run
/// by root.
fn give_away(path: &Path, req: &Request) {
    let _ = std::os::unix::fs::lchown(path, Some(req.uid()), Some(req.gid()));
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn kind(file_type: fs::FileType) -> FileType {
    FileType::from_std(file_type).unwrap_or(FileType::RegularFile)
}

fn attr(ino: u64, md: &fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: system_time(md.atime(), md.atime_nsec()),
        mtime: system_time(md.mtime(), md.mtime_nsec()),
        ctime: system_time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind(md.file_type()),
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: md.blksize() as u32,
        flags: 0,
    }
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nsecs as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

fn timespec(time: Option<TimeOrNow>) -> libc::timespec {
    let (tv_sec, tv_nsec) = match time {
        None => (0, libc::UTIME_OMIT),
        Some(TimeOrNow::Now) => (0, libc::UTIME_NOW),
        Some(TimeOrNow::SpecificTime(time)) => match time.duration_since(UNIX_EPOCH) {
            Ok(after) => (after.as_secs() as i64, i64::from(after.subsec_nanos())),
            Err(before) => {
                let before = before.duration();
                let (secs, nanos) = (before.as_secs() as i64, i64::from(before.subsec_nanos()));
                if nanos == 0 {
                    (-secs, 0)
                } else {
                    (-secs - 1, 1_000_000_000 - nanos)
                }
            }
        },
    };
    libc::timespec { tv_sec, tv_nsec }
}

/// The FUSE side: each request locks the state, does its work and answers.
struct Fs {
    state: Arc<Mutex<State>>,
}

impl Fs {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn reply_empty(reply: ReplyEmpty, result: Res<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(errno) => reply.error(errno),
    }
}

fn reply_entry(reply: ReplyEntry, result: Res<FileAttr>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(errno) => reply.error(errno),
    }
}

fn reply_attr(reply: ReplyAttr, result: Res<FileAttr>) {
    match result {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(errno) => reply.error(errno),
    }
}

fn reply_open(reply: ReplyOpen, result: Res<u64>) {
    match result {
        Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
        Err(errno) => reply.error(errno),
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        let result = state.child(parent.0, name).and_then(|rel| state.entry(rel));
        reply_entry(reply, result);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.state().getattr(ino.0, fh.map(|fh| fh.0)));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        reply_attr(
            reply,
            self.state().setattr(ino.0, fh.map(|fh| fh.0), changes),
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self
            .state()
            .abs(ino.0)
            .and_then(|path| Ok(fs::read_link(path)?));
        match result {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(errno) => reply.error(errno),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.state().mknod(req, parent.0, name, mode, rdev));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.state().mkdir(req, parent.0, name, mode));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().remove(parent.0, name, true));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.state().symlink(req, parent.0, link_name, target),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self
            .state()
            .rename(parent.0, name, newparent.0, newname, flags);
        reply_empty(reply, result);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.state().link(ino.0, newparent.0, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        reply_open(reply, self.state().open(ino.0, flags.0));
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(errno) => reply.error(errno),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().write(fh.0, offset, data) {
            Ok(written) => reply.written(written),
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): nothing is buffered here, and it makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let stall = self.state().stall_syncs;
        if let Some(d) = stall {
            std::thread::sleep(d);
        }
        reply_empty(reply, self.state().fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply_open(reply, self.state().opendir(ino.0));
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let Some(entries) = state.dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        // An entry's offset is where the listing goes on after it.
        for (next, entry) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(entry.ino), next as u64 + 1, entry.kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.state().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.state().fsyncdir());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let result = (|| -> io::Result<libc::statvfs> {
            let path = c_path(&self.state().backing)?;
            // SAFETY: statvfs is plain data; zero is a valid value of it.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: a NUL-terminated path and a valid out pointer.
            if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(st)
        })();
        match result {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(err) => reply.error(err.into()),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let result = self.state().abs(ino.0).and_then(|path| {
            let path = c_path(&path)?;
            // SAFETY: a NUL-terminated path.
            match unsafe { libc::access(path.as_ptr(), mask.bits()) } {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error().into()),
            }
        });
        reply_empty(reply, result);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.state().create(req, parent.0, name, mode) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(errno) => reply.error(errno),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // Would need logging like a write; nothing under test needs it.
        reply.error(Errno::EOPNOTSUPP);
    }
}
