//! Self-tests of the power-cut filesystem (tests/powercut/lazyfs.rs): what a
//! cut keeps and drops, fault injection, and that the mount behaves like a
//! filesystem for the programs put on it. Each test skips when FUSE cannot be
//! mounted here.

#[path = "powercut/lazyfs.rs"]
mod lazyfs;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use lazyfs::LazyFs;
use tempfile::TempDir;

/// A LazyFS over a fresh backing directory. Field order matters: the mount
/// goes before its directories.
struct Rig {
    fs: LazyFs,
    backing: PathBuf,
    _dir: TempDir,
}

impl Rig {
    /// The rig, or None (after printing why) where FUSE is unavailable.
    fn new(test: &str) -> Option<Rig> {
        if let Some(why) = LazyFs::unavailable() {
            println!("SKIPPED {test}: {why}");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("backing");
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&backing).expect("mkdir backing");
        fs::create_dir(&mountpoint).expect("mkdir mnt");
        let fs = LazyFs::mount(&backing, &mountpoint).expect("mount");
        Some(Rig {
            fs,
            backing,
            _dir: dir,
        })
    }

    /// `name` through the mount.
    fn path(&self, name: &str) -> PathBuf {
        self.fs.mountpoint().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        fs::read(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    fn cut(&mut self) -> lazyfs::CutReport {
        self.fs.power_cut().expect("power cut")
    }
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append")
}

#[test]
fn an_unsynced_write_is_gone_after_a_cut() {
    let Some(mut rig) = Rig::new("an_unsynced_write_is_gone_after_a_cut") else {
        return;
    };
    fs::write(rig.path("new"), b"hello").unwrap();
    assert_eq!(rig.read("new"), b"hello", "written through");
    assert_eq!(fs::read(rig.backing.join("new")).unwrap(), b"hello");

    // An existing file keeps its length from before the write.
    let mut old = File::create(rig.path("old")).unwrap();
    old.write_all(b"synced").unwrap();
    old.sync_all().unwrap();
    old.write_all(b" and not").unwrap();
    drop(old);
    assert_eq!(rig.fs.counters().unsynced_bytes, 5 + 8);

    let report = rig.cut();
    assert_eq!(report.files, 2);
    assert_eq!(report.bytes_dropped, 13);
    assert_eq!(rig.fs.counters().unsynced_bytes, 0);
    assert_eq!(rig.read("new"), b"", "a new file keeps its length 0");
    assert_eq!(rig.read("old"), b"synced");
}

#[test]
fn fsync_makes_a_write_durable() {
    let Some(mut rig) = Rig::new("fsync_makes_a_write_durable") else {
        return;
    };
    let before = rig.fs.counters().fsyncs;
    let mut file = File::create(rig.path("f")).unwrap();
    file.write_all(b"durable").unwrap();
    file.sync_all().unwrap();
    drop(file);
    assert_eq!(rig.fs.counters().fsyncs, before + 1);
    assert_eq!(rig.fs.counters().unsynced_bytes, 0);
    assert_eq!(rig.cut().files, 0);
    assert_eq!(rig.read("f"), b"durable");
}

#[test]
fn fdatasync_makes_a_write_durable() {
    let Some(mut rig) = Rig::new("fdatasync_makes_a_write_durable") else {
        return;
    };
    let mut file = File::create(rig.path("f")).unwrap();
    file.write_all(b"durable").unwrap();
    file.sync_data().unwrap();
    drop(file);
    let counters = rig.fs.counters();
    assert_eq!((counters.fdatasyncs, counters.fsyncs), (1, 0));
    rig.cut();
    assert_eq!(rig.read("f"), b"durable");
}

#[test]
fn a_write_after_the_sync_is_dropped_and_the_synced_prefix_stays() {
    let Some(mut rig) = Rig::new("a_write_after_the_sync_is_dropped_and_the_synced_prefix_stays")
    else {
        return;
    };
    File::create(rig.path("log")).unwrap();
    // O_APPEND: the kernel picks each write's offset from the file size.
    let mut log = append(&rig.path("log"));
    log.write_all(b"A").unwrap();
    log.sync_data().unwrap();
    log.write_all(b"B").unwrap();
    drop(log);
    assert_eq!(rig.read("log"), b"AB");
    rig.cut();
    assert_eq!(rig.read("log"), b"A");

    // And appending goes on at the rolled-back end.
    let mut log = append(&rig.path("log"));
    log.write_all(b"C").unwrap();
    log.sync_data().unwrap();
    drop(log);
    rig.cut();
    assert_eq!(rig.read("log"), b"AC");
}

#[test]
fn an_overwrite_in_a_synced_file_is_rolled_back() {
    let Some(mut rig) = Rig::new("an_overwrite_in_a_synced_file_is_rolled_back") else {
        return;
    };
    let file = File::create(rig.path("f")).unwrap();
    file.write_all_at(b"0123456789", 0).unwrap();
    file.sync_all().unwrap();
    file.write_all_at(b"XY", 4).unwrap();
    file.write_all_at(b"xyz", 8).unwrap(); // overwrites 2 bytes, appends 1
    file.write_all_at(b"Q", 5).unwrap(); // overwrites an unsynced write
    drop(file);
    assert_eq!(rig.read("f"), b"0123XQ67xyz");
    rig.cut();
    assert_eq!(rig.read("f"), b"0123456789");
}

#[test]
fn an_unsynced_truncate_is_undone_and_a_synced_one_stays() {
    let Some(mut rig) = Rig::new("an_unsynced_truncate_is_undone_and_a_synced_one_stays") else {
        return;
    };
    let file = File::create(rig.path("f")).unwrap();
    file.write_all_at(b"0123456789", 0).unwrap();
    file.sync_all().unwrap();

    // ftruncate(2) (with a file handle), shrinking then growing.
    file.set_len(3).unwrap();
    file.set_len(20).unwrap();
    file.write_all_at(b"tail", 16).unwrap();
    drop(file);
    assert_eq!(rig.fs.counters().unsynced_bytes, 7 + 17 + 4);
    rig.cut();
    assert_eq!(rig.read("f"), b"0123456789");

    // truncate(2) (by path, no file handle).
    let path = CString::new(rig.path("f").as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::truncate(path.as_ptr(), 4) }, 0);
    rig.cut();
    assert_eq!(rig.read("f"), b"0123456789");

    let file = OpenOptions::new().write(true).open(rig.path("f")).unwrap();
    file.set_len(4).unwrap();
    file.sync_all().unwrap();
    drop(file);
    rig.cut();
    assert_eq!(rig.read("f"), b"0123");

    // O_TRUNC is a truncate too.
    File::create(rig.path("f")).unwrap();
    assert_eq!(rig.read("f"), b"");
    rig.cut();
    assert_eq!(rig.read("f"), b"0123");
}

#[test]
fn a_rename_is_durable_and_the_undo_log_follows_the_file() {
    let Some(mut rig) = Rig::new("a_rename_is_durable_and_the_undo_log_follows_the_file") else {
        return;
    };
    // A never-synced file renamed into place.
    fs::write(rig.path("tmp"), b"data").unwrap();
    fs::rename(rig.path("tmp"), rig.path("final")).unwrap();

    // A synced file, renamed, then written.
    let mut file = File::create(rig.path("x")).unwrap();
    file.write_all(b"abc").unwrap();
    file.sync_all().unwrap();
    fs::rename(rig.path("x"), rig.path("y")).unwrap();
    file.write_all(b"def").unwrap();
    drop(file);

    // A file whose directory is renamed.
    fs::create_dir(rig.path("d")).unwrap();
    let mut file = File::create(rig.path("d/f")).unwrap();
    file.write_all(b"abc").unwrap();
    file.sync_all().unwrap();
    file.write_all(b"def").unwrap();
    drop(file);
    fs::rename(rig.path("d"), rig.path("e")).unwrap();

    // A file renamed over another one, whose unsynced data goes with it.
    fs::write(rig.path("victim"), b"unsynced").unwrap();
    fs::write(rig.path("winner"), b"").unwrap();
    fs::rename(rig.path("winner"), rig.path("victim")).unwrap();

    let report = rig.cut();
    assert_eq!(report.files, 3, "final, y, e/f");
    assert!(!rig.path("tmp").exists());
    assert_eq!(rig.read("final"), b"");
    assert!(!rig.path("x").exists());
    assert_eq!(rig.read("y"), b"abc");
    assert!(!rig.path("d").exists());
    assert_eq!(rig.read("e/f"), b"abc");
    assert_eq!(rig.read("victim"), b"");
}

#[test]
fn namespace_operations_are_durable_and_errors_pass_through() {
    let Some(mut rig) = Rig::new("namespace_operations_are_durable_and_errors_pass_through") else {
        return;
    };
    fs::create_dir_all(rig.path("a/b")).unwrap();
    fs::write(rig.path("a/b/f"), b"").unwrap();
    fs::write(rig.path("gone"), b"x").unwrap();
    fs::remove_file(rig.path("gone")).unwrap();
    fs::create_dir(rig.path("empty")).unwrap();
    fs::remove_dir(rig.path("empty")).unwrap();
    std::os::unix::fs::symlink("a/b/f", rig.path("link")).unwrap();
    fs::hard_link(rig.path("a/b/f"), rig.path("hard")).unwrap();
    let fifo = CString::new(rig.path("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    assert_eq!(
        rig.fs.counters().unsynced_bytes,
        0,
        "unlink dropped its log"
    );
    // chmod and utimes pass through and are durable at once.
    fs::set_permissions(rig.path("a/b/f"), fs::Permissions::from_mode(0o604)).unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    File::open(rig.path("a/b/f"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    // Errors come back as the backing filesystem gives them.
    let code = |err: std::io::Error| err.raw_os_error();
    let exists = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(rig.path("a/b/f"));
    assert_eq!(exists.map_err(code).err(), Some(Some(libc::EEXIST)));
    let missing = File::open(rig.path("missing"));
    assert_eq!(missing.map_err(code).err(), Some(Some(libc::ENOENT)));
    let not_empty = fs::remove_dir(rig.path("a"));
    assert_eq!(not_empty.map_err(code).err(), Some(Some(libc::ENOTEMPTY)));
    let rename2 = |from: &str, to: &str, flags: libc::c_uint| {
        let from = CString::new(rig.path(from).as_os_str().as_bytes()).unwrap();
        let to = CString::new(rig.path(to).as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated paths.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                flags,
            )
        };
        if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or_default()
        }
    };
    assert_eq!(
        rename2("link", "hard", libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(rename2("link", "hard", libc::RENAME_EXCHANGE), libc::EINVAL);
    assert_eq!(rename2("link", "link2", libc::RENAME_NOREPLACE), 0);

    rig.cut();
    let mut names: Vec<_> = fs::read_dir(rig.fs.mountpoint())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "fifo", "hard", "link2"]);
    assert_eq!(
        fs::read_link(rig.path("link2")).unwrap(),
        Path::new("a/b/f")
    );
    assert!(fs::metadata(rig.path("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let f = fs::metadata(rig.path("a/b/f")).unwrap();
    assert!(f.is_file());
    assert_eq!(f.permissions().mode() & 0o7777, 0o604);
    assert_eq!(f.modified().unwrap(), mtime);
    assert_eq!(f.nlink(), 2);
    assert_eq!(fs::metadata(rig.path("hard")).unwrap().len(), 0);
}

#[test]
fn a_stalled_sync_takes_its_time_and_then_makes_the_write_durable() {
    let Some(mut rig) = Rig::new("a_stalled_sync_takes_its_time_and_then_makes_the_write_durable")
    else {
        return;
    };
    let mut file = File::create(rig.path("f")).unwrap();
    file.write_all(b"slow").unwrap();
    rig.fs.stall_syncs(Some(Duration::from_millis(300)));
    let t = Instant::now();
    file.sync_data().unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    rig.fs.stall_syncs(None);
    let t = Instant::now();
    file.sync_data().unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    drop(file);
    rig.cut();
    assert_eq!(rig.read("f"), b"slow");
}

#[test]
fn failing_syncs_answer_the_errno_and_make_nothing_durable() {
    let Some(mut rig) = Rig::new("failing_syncs_answer_the_errno_and_make_nothing_durable") else {
        return;
    };
    for errno in [libc::EIO, libc::ENOSPC] {
        rig.fs.fail_syncs(Some(errno));
        let mut file = File::create(rig.path("f")).unwrap();
        file.write_all(b"lost").unwrap();
        assert_eq!(file.sync_all().unwrap_err().raw_os_error(), Some(errno));
        assert_eq!(file.sync_data().unwrap_err().raw_os_error(), Some(errno));
        let dir = File::open(rig.fs.mountpoint()).unwrap();
        assert_eq!(dir.sync_all().unwrap_err().raw_os_error(), Some(errno));
        drop((file, dir));
        assert_eq!(rig.fs.counters().unsynced_bytes, 4);
        rig.fs.fail_syncs(None);
        rig.cut();
        assert_eq!(rig.read("f"), b"", "errno {errno}");
    }
    let counters = rig.fs.counters();
    assert_eq!(
        (counters.fsyncs, counters.fdatasyncs, counters.fsyncdirs),
        (2, 2, 2)
    );

    // And back to normal.
    let mut file = OpenOptions::new().write(true).open(rig.path("f")).unwrap();
    file.write_all(b"kept").unwrap();
    file.sync_all().unwrap();
    File::open(rig.fs.mountpoint()).unwrap().sync_all().unwrap();
    drop(file);
    rig.cut();
    assert_eq!(rig.read("f"), b"kept");
    assert_eq!(rig.fs.counters().fsyncdirs, 3);
}

#[test]
fn an_o_dsync_write_is_durable() {
    let Some(mut rig) = Rig::new("an_o_dsync_write_is_durable") else {
        return;
    };
    // The kernel follows each such write with an fdatasync of its own.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DSYNC)
        .open(rig.path("f"))
        .unwrap();
    file.write_all(b"durable").unwrap();
    drop(file);
    assert!(rig.fs.counters().fdatasyncs >= 1);
    rig.cut();
    assert_eq!(rig.read("f"), b"durable");
}

#[test]
fn statfs_reports_the_backing_filesystem() {
    let Some(rig) = Rig::new("statfs_reports_the_backing_filesystem") else {
        return;
    };
    let statvfs = |path: &Path| {
        let path = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain data; filled in by statvfs.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a valid out pointer.
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
        st
    };
    let (through, backing) = (statvfs(rig.fs.mountpoint()), statvfs(&rig.backing));
    assert_eq!(through.f_blocks, backing.f_blocks);
    assert_eq!(through.f_frsize, backing.f_frsize);
    assert_eq!(through.f_files, backing.f_files);
    assert!(through.f_blocks > 0);
}

#[test]
fn the_page_cache_does_not_hide_a_cut() {
    let Some(mut rig) = Rig::new("the_page_cache_does_not_hide_a_cut") else {
        return;
    };
    let file = File::create(rig.path("f")).unwrap();
    file.write_all_at(b"AAAA", 0).unwrap();
    file.sync_all().unwrap();
    file.write_all_at(b"BBBBBBBB", 0).unwrap();
    // Read and stat through the mount, so the kernel caches the new pages
    // and size.
    let mut cached = Vec::new();
    File::open(rig.path("f"))
        .unwrap()
        .read_to_end(&mut cached)
        .unwrap();
    assert_eq!(cached, b"BBBBBBBB");
    assert_eq!(fs::metadata(rig.path("f")).unwrap().len(), 8);
    drop(file);
    rig.cut();
    assert_eq!(fs::metadata(rig.path("f")).unwrap().len(), 4);
    assert_eq!(rig.read("f"), b"AAAA");
    assert_eq!(fs::read(rig.backing.join("f")).unwrap(), b"AAAA");
}

/// nats-server keeps a JetStream store on the mount and lets go of it when killed.
#[test]
fn nats_server_runs_on_the_mount() {
    let server = std::env::var_os("MPB_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
    if !server.exists() {
        println!(
            "SKIPPED nats_server_runs_on_the_mount: no {}",
            server.display()
        );
        return;
    }
    let Some(mut rig) = Rig::new("nats_server_runs_on_the_mount") else {
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = rig.path("store");
    // Named, so that a server already on the port is not taken for this one.
    let name = format!("lazyfs-selftest-{}", std::process::id());
    let mut child = Command::new(&server)
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-n",
            &name,
            "-p",
            &port.to_string(),
            "-sd",
        ])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    let up = loop {
        if let Ok(conn) = TcpStream::connect(("127.0.0.1", port)) {
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut info = String::new();
            BufReader::new(conn)
                .read_line(&mut info)
                .unwrap_or_default();
            if info.contains(&format!("\"server_name\":\"{name}\"")) {
                break true;
            }
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(up, "nats-server did not start on the mount");
    assert!(store.join("jetstream").is_dir());
    // Killed, it holds nothing on the mount: the cut can unmount.
    rig.cut();
    assert!(store.join("jetstream").is_dir());
}

/// A process killed with files open on the mount lets go of them a moment
/// after kill(2) returns: the cut waits for that.
#[test]
fn a_cut_right_after_a_kill_succeeds() {
    let Some(mut rig) = Rig::new("a_cut_right_after_a_kill_succeeds") else {
        return;
    };
    fs::create_dir(rig.path("d")).unwrap();
    fs::write(rig.path("d/f"), b"unsynced").unwrap();
    let mut child = Command::new("sleep")
        .arg("30")
        .current_dir(rig.path("d"))
        .stdin(File::open(rig.path("d/f")).unwrap())
        .spawn()
        .expect("start sleep");
    child.kill().unwrap();
    let report = rig.cut();
    child.wait().unwrap();
    assert_eq!(report.files, 1);
    assert_eq!(rig.read("d/f"), b"");
}
