//! Group commit: an HTTP publish is answered only after its JetStream ack
//! AND a sync of the stream's files that began after that ack.
//!
//! Why this is correct. For a one-replica file stream nats-server writes
//! the message into the stream's last block file
//! (`<store>/jetstream/<account>/streams/<stream>/msgs/<N>.blk`) with
//! write(2) before it sends the PubAck (2.9.10 and later: the store
//! "flushes in place" unless the stream is replicated). So when the ack
//! is here, the bytes are in the kernel's page cache, and an fdatasync(2)
//! of that file started after the ack puts them on the disk. Which file:
//! blocks are numbered upwards and a message only ever goes into the
//! newest one, so every message acknowledged since a stream's previous
//! sync is in a block numbered at least as high as the newest block that
//! sync saw. Each sync therefore syncs, per stream, every block from that
//! floor up (usually one file) and, when its entries changed, the `msgs`
//! directory (a new block's name, or a block nats-server rewrote and
//! renamed, is then durable too). On start-up nats-
//! server rebuilds a block's index from the block itself when the index
//! is older than the block, so the block's bytes are what must survive.
//!
//! Group commit. Requests register their stream and wait for the group
//! they joined; one thread takes the whole group, syncs it, answers it, and
//! at once takes the next group, which holds every ack that arrived
//! while it synced. A lone publish waits for no timer: the thread wakes as
//! soon as it registers.
//!
//! Why fdatasync of the block files and not syncfs(2): syncfs writes out
//! every dirty page of the filesystem, so on a store that shares its
//! filesystem with busy writers (logs, a database) each sync waits for
//! their data too; fdatasync writes only our files' pages. (Not nothing:
//! on ext4 in its default data=ordered mode the journal commit that an
//! append's size change needs also writes the data blocks other writers
//! allocated in the same transaction.) Measured on this project's ext4
//! test machines, a 150-byte append and its sync: fdatasync p50 ~180 µs,
//! p99 0.3-0.6 ms, with or without another process writing 150 MB/s
//! unsynced to the same filesystem; syncfs p50 ~150 µs, but p99 1-6 ms
//! with that writer. And syncfs does not reach FUSE filesystems at all
//! (Linux forwards it only to virtiofs), so the power-cut test's
//! filesystem could not even see it, while fsync/fdatasync reach every
//! filesystem.
//!
//! A failed sync (EIO, ENOSPC) answers every request of its group with
//! the error; after a failed fsync Linux may have dropped the dirty pages,
//! so nothing of that group is promised.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::stats::{BatchSize, Histogram, Latency};

/// What a sync failure means for the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// ENOSPC or EDQUOT: the store's disk (or quota) is full.
    NoSpace,
    /// EIO and the rest: the disk failed.
    Io,
}

impl FailureKind {
    pub const ALL: [FailureKind; 2] = [FailureKind::NoSpace, FailureKind::Io];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NoSpace => "no_space",
            FailureKind::Io => "io",
        }
    }

    fn of(e: &io::Error) -> FailureKind {
        match e.raw_os_error() {
            Some(ENOSPC | EDQUOT) => FailureKind::NoSpace,
            _ => FailureKind::Io,
        }
    }
}

// Linux errno values (asm-generic), so this module needs no libc crate.
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

/// A sync that failed, naming the file and the error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} {path}: {error}")]
pub struct SyncError {
    pub kind: FailureKind,
    /// "fdatasync" or "fsync (directory)" or "list".
    pub what: &'static str,
    pub path: String,
    pub error: String,
}

impl SyncError {
    fn new(what: &'static str, path: &Path, e: &io::Error) -> SyncError {
        SyncError {
            kind: FailureKind::of(e),
            what,
            path: path.display().to_string(),
            error: e.to_string(),
        }
    }
}

/// What a sync did for one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// The stream's files on this machine were synced, and it has one
    /// replica: the acknowledged message is on this disk.
    Durable,
    /// The stream keeps several replicas: this machine's copy (if it holds
    /// one) was synced, but the acknowledgement came from a quorum whose
    /// other members flush on their own schedule.
    Replicated,
    /// No files of the stream on this machine (an external nats-server, a
    /// one-replica stream placed on another node, or a memory stream).
    NotLocal,
}

/// One group's outcome, shared by all its requests.
#[derive(Debug)]
struct GroupResult {
    streams: BTreeMap<String, Coverage>,
    error: Option<SyncError>,
}

type GroupDone = watch::Sender<Option<Arc<GroupResult>>>;

/// What a successful sync did, shared by every request of its group (no
/// copy per request).
#[derive(Debug, Clone)]
pub struct Covered(Arc<GroupResult>);

impl Covered {
    /// What the sync did for `stream`.
    pub fn of(&self, stream: &str) -> Coverage {
        self.0
            .streams
            .get(stream)
            .copied()
            .unwrap_or(Coverage::NotLocal)
    }
}

/// Requests that arrived since the last sync started.
struct Pending {
    streams: BTreeSet<String>,
    acks: u64,
    done: Arc<GroupDone>,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            streams: BTreeSet::new(),
            acks: 0,
            done: Arc::new(watch::channel(None).0),
        }
    }
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// One sync (every stream of a group), start to end.
    pub seconds: Histogram<Latency>,
    /// Acks each sync covered.
    pub acks: Histogram<BatchSize>,
    pub syncs: AtomicU64,
    /// Failed syncs by [`FailureKind`].
    pub failures: [AtomicU64; 2],
}

/// The last failed sync, for /health.
#[derive(Debug, Clone)]
pub struct LastFailure {
    pub at: SystemTime,
    pub error: SyncError,
}

/// How long /health lists a failed sync after it happened.
pub const FAILURE_SHOWN_FOR: Duration = Duration::from_secs(60);

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the sync thread: requests are pending, or it should end.
    wake: Condvar,
    /// Set when the [`GroupCommit`] is dropped.
    closed: AtomicBool,
    files: Mutex<StoreFiles>,
    meta_synced: Mutex<MetaSynced>,
    last_failure: Mutex<Option<LastFailure>>,
    stats: SyncStats,
}

/// Metadata files and directories synced, with the (inode, mtime) they had.
type MetaSynced = HashMap<PathBuf, (u64, i64, i64)>;

/// The group committer of one store; its thread ends when this is dropped.
pub struct GroupCommit {
    shared: Arc<Shared>,
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.closed.store(true, Relaxed);
        let _guard = lock(&self.shared.pending);
        self.shared.wake.notify_one();
    }
}

impl GroupCommit {
    /// Starts the sync thread for the streams under `streams_dir`
    /// (`<store>/jetstream/<account>/streams`).
    ///
    /// A thread of its own, not a task: under load the runtime's workers
    /// are busy with requests, and a sync that waits its turn there (then
    /// hands off to the blocking pool, then wakes a task again) keeps every
    /// publish of its group waiting too. Measured with wrk at 16
    /// connections: about 15% more publishes per second this way.
    pub fn start(streams_dir: PathBuf) -> GroupCommit {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::new()),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            files: Mutex::new(StoreFiles::new(streams_dir)),
            meta_synced: Mutex::new(HashMap::new()),
            last_failure: Mutex::new(None),
            stats: SyncStats::default(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || run(&s))
            .expect("cannot start the group-commit thread");
        GroupCommit { shared }
    }

    /// Points at a new store (a reload moved data_dir).
    pub fn set_streams_dir(&self, dir: PathBuf) {
        let mut f = lock(&self.shared.files);
        if f.root != dir {
            *f = StoreFiles::new(dir);
        }
    }

    /// Waits for a sync that started after this call and covers `streams`
    /// (each acknowledged before the call); answers what it did for each.
    pub async fn commit<'a>(
        &self,
        streams: impl IntoIterator<Item = &'a str>,
        acks: u64,
    ) -> Result<Covered, SyncError> {
        let mut rx = {
            let mut p = lock(&self.shared.pending);
            for s in streams {
                if !p.streams.contains(s) {
                    p.streams.insert(s.to_string());
                }
            }
            p.acks += acks;
            self.shared.wake.notify_one();
            p.done.subscribe()
        };
        let result = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone().expect("waited for Some"),
            Err(_) => {
                return Err(SyncError {
                    kind: FailureKind::Io,
                    what: "sync",
                    path: String::new(),
                    error: "the sync thread ended".into(),
                })
            }
        };
        match &result.error {
            Some(e) => Err(e.clone()),
            None => Ok(Covered(result)),
        }
    }

    /// [`Self::commit`] for one stream.
    pub async fn commit_one(&self, stream: &str) -> Result<Coverage, SyncError> {
        Ok(self.commit([stream], 1).await?.of(stream))
    }

    /// Syncs the store's stream and consumer metadata (see
    /// `sync_metadata`); blocking, so it is handed out to run off the
    /// runtime's workers.
    pub fn metadata_sync(&self) -> impl FnOnce() -> Result<usize, SyncError> + Send + 'static {
        let s = self.shared.clone();
        move || {
            let root = lock(&s.files).root.clone();
            sync_metadata(&root, &mut lock(&s.meta_synced))
        }
    }

    pub fn stats(&self) -> &SyncStats {
        &self.shared.stats
    }

    /// The last failed sync, while it is recent enough to show.
    pub fn recent_failure(&self) -> Option<LastFailure> {
        let f = lock(&self.shared.last_failure).clone()?;
        let age = SystemTime::now().duration_since(f.at).unwrap_or_default();
        (age < FAILURE_SHOWN_FOR).then_some(f)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(s: &Shared) {
    loop {
        let group = {
            let mut p = lock(&s.pending);
            loop {
                if s.closed.load(Relaxed) {
                    return;
                }
                if p.acks > 0 || !p.streams.is_empty() {
                    break std::mem::replace(&mut *p, Pending::new());
                }
                p = s.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
        };
        let started = Instant::now();
        let streams: Vec<String> = group.streams.into_iter().collect();
        let outcome = lock(&s.files).sync(&streams);
        s.stats.seconds.observe_duration(started.elapsed());
        s.stats.acks.observe(group.acks);
        s.stats.syncs.fetch_add(1, Relaxed);
        let result = match outcome {
            Ok(streams) => GroupResult {
                streams,
                error: None,
            },
            Err(e) => {
                s.stats.failures[e.kind as usize].fetch_add(1, Relaxed);
                tracing::error!(error = %e, "syncing the JetStream store failed: {e}; the publishes waiting for it are answered with an error");
                *lock(&s.last_failure) = Some(LastFailure {
                    at: SystemTime::now(),
                    error: e.clone(),
                });
                GroupResult {
                    streams: BTreeMap::new(),
                    error: Some(e),
                }
            }
        };
        let _ = group.done.send(Some(Arc::new(result)));
    }
}

/// What the store looks like to the syncer, per stream.
struct StoreFiles {
    root: PathBuf,
    streams: BTreeMap<String, StreamFiles>,
}

#[derive(Default)]
struct StreamFiles {
    /// The newest block the previous sync saw: later acks are in it or
    /// in newer ones. None before the first sync (every block is synced).
    floor: Option<u64>,
    /// meta.inf's modification time and the replicas it declares.
    meta: Option<(SystemTime, u32)>,
    /// (block number, inode) of the blocks the previous sync synced.
    inodes: Vec<(u64, u64)>,
}

impl StoreFiles {
    fn new(root: PathBuf) -> StoreFiles {
        StoreFiles {
            root,
            streams: BTreeMap::new(),
        }
    }

    /// Syncs each stream's newest blocks and its `msgs` directory.
    fn sync(&mut self, streams: &[String]) -> Result<BTreeMap<String, Coverage>, SyncError> {
        let mut out = BTreeMap::new();
        for name in streams {
            let cov = self.sync_stream(name)?;
            out.insert(name.clone(), cov);
        }
        Ok(out)
    }

    fn sync_stream(&mut self, name: &str) -> Result<Coverage, SyncError> {
        // A name that is not one path component cannot be a stream's
        // directory (nats-server refuses such names).
        if name.is_empty() || name.contains(['/', '\0']) || name == "." || name == ".." {
            return Ok(Coverage::NotLocal);
        }
        let dir = self.root.join(name);
        let msgs = dir.join("msgs");
        let state = self.streams.entry(name.to_string()).or_default();
        let blocks = match block_numbers(&msgs) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                state.floor = None;
                return Ok(Coverage::NotLocal);
            }
            Err(e) => return Err(SyncError::new("list", &msgs, &e)),
        };
        let floor = state.floor.unwrap_or(0);
        // The directory needs a sync only when its entries changed: a new
        // block, or a block replaced by a rename (nats-server compacts a
        // block into a new file and renames it over the old one). Saves a
        // journal round trip per sync.
        let mut dir_changed = state.floor.is_none() || blocks.last() != state.floor.as_ref();
        let mut inodes = Vec::new();
        for &n in blocks.iter().filter(|&&n| n >= floor) {
            let path = msgs.join(format!("{n}.blk"));
            // Opened anew each time, for the same reason.
            match File::open(&path) {
                Ok(f) => {
                    f.sync_data()
                        .map_err(|e| SyncError::new("fdatasync", &path, &e))?;
                    let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
                    dir_changed |= !state.inodes.contains(&(n, ino));
                    inodes.push((n, ino));
                }
                // Removed by the stream's limits since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => dir_changed = true,
                Err(e) => return Err(SyncError::new("open", &path, &e)),
            }
        }
        if dir_changed {
            sync_dir(&msgs)?;
        }
        state.inodes = inodes;
        if state.floor.is_none() {
            // The first time: the directories above, in case the stream
            // was created since the last time anything synced them.
            for d in [&dir, &self.root] {
                sync_dir(d)?;
            }
        }
        state.floor = blocks.last().copied().or(state.floor);
        let (replicas, changed) = replicas(&dir, &mut state.meta);
        if changed {
            // The stream's config: nats-server writes it at creation and
            // update without syncing it (unless sync_interval is always;
            // 2.11 and later write a temporary file and rename it, hence
            // the directory), and a stream whose meta.inf a power cut
            // emptied is skipped at start, with all its messages.
            sync_dir(&dir)?;
            for f in ["meta.inf", "meta.sum"] {
                let path = dir.join(f);
                match File::open(&path) {
                    Ok(f) => f
                        .sync_all()
                        .map_err(|e| SyncError::new("fsync", &path, &e))?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SyncError::new("open", &path, &e)),
                }
            }
        }
        Ok(match replicas {
            1 => Coverage::Durable,
            _ => Coverage::Replicated,
        })
    }
}

/// Syncs what makes the streams under `streams_dir` loadable after a
/// power cut: each stream's and each consumer's `meta.inf` and `meta.sum`
/// and their directories, up to the store's top. nats-server writes these
/// when a stream or consumer is created or changed and does not sync them
/// (unless `sync_interval` is `always`); one a power cut emptied makes
/// nats-server skip the stream with all its messages (2.9) or report it
/// unrecoverable in every health check (2.10 and later). The daemon runs
/// this after each reconciliation, so a declared stream is on disk before
/// READY=1. A file or directory synced before and unchanged since (same
/// inode and modification time, kept in `synced`) is skipped: the periodic
/// reconciliation would otherwise sync every stream's and consumer's
/// metadata each time. Returns how many files and directories it synced.
fn sync_metadata(streams_dir: &Path, synced: &mut MetaSynced) -> Result<usize, SyncError> {
    let mut n = 0;
    let entries = match std::fs::read_dir(streams_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(SyncError::new("list", streams_dir, &e)),
    };
    let mut sync_file = |path: &Path| -> Result<(), SyncError> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SyncError::new("open", path, &e)),
        };
        // Taken before the sync: a change after it shows as a new one.
        let version = f
            .metadata()
            .map(|m| (m.ino(), m.mtime(), m.mtime_nsec()))
            .ok();
        if version.is_some() && synced.get(path) == version.as_ref() {
            return Ok(());
        }
        f.sync_all()
            .map_err(|e| SyncError::new("fsync", path, &e))?;
        n += 1;
        if let Some(v) = version {
            synced.insert(path.to_path_buf(), v);
        }
        Ok(())
    };
    for stream in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        if !stream.is_dir() {
            continue;
        }
        let consumers = std::fs::read_dir(stream.join("obs"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_else(|_| Vec::new());
        for dir in consumers.iter().chain([&stream]) {
            sync_file(&dir.join("meta.inf"))?;
            sync_file(&dir.join("meta.sum"))?;
            sync_file(dir)?;
        }
        sync_file(&stream.join("obs"))?;
        sync_file(&stream.join("msgs"))?;
    }
    // The streams directory and those above it, up to the store
    // (`<store>/jetstream/<account>/streams`).
    let mut dir = Some(streams_dir);
    for _ in 0..4 {
        let Some(d) = dir else { break };
        sync_file(d)?;
        dir = d.parent().filter(|p| !p.as_os_str().is_empty());
    }
    Ok(n)
}

fn sync_dir(d: &Path) -> Result<(), SyncError> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| SyncError::new("fsync (directory)", d, &e))
}

/// The numbers of the `<N>.blk` files in `msgs`, ascending.
fn block_numbers(msgs: &Path) -> io::Result<Vec<u64>> {
    let mut out: Vec<u64> = std::fs::read_dir(msgs)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_suffix(".blk")?.parse().ok()?;
            Some(n)
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// The stream's replica count from its `meta.inf` (nats-server's JSON
/// stream config), re-read when the file changes, and whether it changed;
/// 0 when unreadable (counted as replicated: nothing is promised that was
/// not checked).
fn replicas(dir: &Path, cache: &mut Option<(SystemTime, u32)>) -> (u32, bool) {
    let path = dir.join("meta.inf");
    let Ok(mtime) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
        return (0, false);
    };
    if let Some((at, r)) = *cache {
        if at == mtime {
            return (r, false);
        }
    }
    let r = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("num_replicas").and_then(|n| n.as_u64()))
        // nats-server writes 0 for "the default", which is one.
        .map(|n| n.max(1) as u32)
        .unwrap_or(0);
    *cache = Some((mtime, r));
    (r, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(root: &Path, name: &str, replicas: u32, blocks: &[u64]) -> PathBuf {
        let msgs = root.join(name).join("msgs");
        std::fs::create_dir_all(&msgs).unwrap();
        std::fs::write(
            root.join(name).join("meta.inf"),
            format!("{{\"name\":\"{name}\",\"num_replicas\":{replicas}}}"),
        )
        .unwrap();
        for b in blocks {
            std::fs::write(msgs.join(format!("{b}.blk")), b"x").unwrap();
        }
        msgs
    }

    #[test]
    fn block_numbers_are_the_blk_files_in_order() {
        let t = tempfile::tempdir().unwrap();
        let msgs = stream(t.path(), "S", 1, &[10, 2, 9]);
        std::fs::write(msgs.join("2.idx"), b"").unwrap();
        std::fs::write(msgs.join("index.db"), b"").unwrap();
        assert_eq!(block_numbers(&msgs).unwrap(), vec![2, 9, 10]);
    }

    #[test]
    fn a_one_replica_stream_is_durable_and_a_replicated_one_is_not() {
        let t = tempfile::tempdir().unwrap();
        stream(t.path(), "ONE", 1, &[1]);
        stream(t.path(), "THREE", 3, &[1]);
        let mut f = StoreFiles::new(t.path().into());
        let got = f
            .sync(&["ONE".into(), "THREE".into(), "GONE".into()])
            .unwrap();
        assert_eq!(got["ONE"], Coverage::Durable);
        assert_eq!(got["THREE"], Coverage::Replicated);
        assert_eq!(got["GONE"], Coverage::NotLocal);
    }

    #[test]
    fn the_floor_follows_the_newest_block() {
        let t = tempfile::tempdir().unwrap();
        let msgs = stream(t.path(), "S", 1, &[1, 2]);
        let mut f = StoreFiles::new(t.path().into());
        f.sync(&["S".into()]).unwrap();
        assert_eq!(f.streams["S"].floor, Some(2));
        // Block 1 goes (limits), 3 comes: the next sync starts at 2.
        std::fs::remove_file(msgs.join("1.blk")).unwrap();
        std::fs::write(msgs.join("3.blk"), b"y").unwrap();
        f.sync(&["S".into()]).unwrap();
        assert_eq!(f.streams["S"].floor, Some(3));
    }

    /// Gives `path` an mtime 5 s ahead, as a rewrite would.
    fn touch_later(path: &Path) {
        let later = SystemTime::now() + Duration::from_secs(5);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(later)
            .unwrap();
    }

    #[test]
    fn a_changed_meta_file_is_read_again() {
        let t = tempfile::tempdir().unwrap();
        stream(t.path(), "S", 1, &[1]);
        let mut f = StoreFiles::new(t.path().into());
        assert_eq!(f.sync(&["S".into()]).unwrap()["S"], Coverage::Durable);
        std::thread::sleep(Duration::from_millis(20));
        stream(t.path(), "S", 3, &[]);
        let meta = t.path().join("S/meta.inf");
        touch_later(&meta);
        assert_eq!(f.sync(&["S".into()]).unwrap()["S"], Coverage::Replicated);
    }

    #[test]
    fn metadata_of_every_stream_and_consumer_is_synced() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("jetstream/ACC/streams");
        stream(&root, "A", 1, &[1]);
        stream(&root, "B", 1, &[]);
        let obs = root.join("A/obs/C1");
        std::fs::create_dir_all(&obs).unwrap();
        std::fs::write(obs.join("meta.inf"), b"{}").unwrap();
        // A: meta.inf, its dir, obs, C1's meta.inf and dir, msgs (6);
        // B: meta.inf, dir, msgs (3); streams, ACC, jetstream, store (4).
        let mut synced = MetaSynced::new();
        assert_eq!(sync_metadata(&root, &mut synced).unwrap(), 13);
        // Unchanged: nothing to do; a changed meta.inf alone is synced.
        assert_eq!(sync_metadata(&root, &mut synced).unwrap(), 0);
        let meta = root.join("B/meta.inf");
        touch_later(&meta);
        assert_eq!(sync_metadata(&root, &mut synced).unwrap(), 1);
        let missing = t.path().join("missing");
        assert_eq!(sync_metadata(&missing, &mut synced).unwrap(), 0);
    }

    #[test]
    fn names_that_are_not_one_path_component_are_not_local() {
        let t = tempfile::tempdir().unwrap();
        let mut f = StoreFiles::new(t.path().join("streams"));
        for bad in ["..", "a/b", ""] {
            assert_eq!(f.sync_stream(bad).unwrap(), Coverage::NotLocal, "{bad}");
        }
    }

    #[test]
    fn failures_are_classified_by_errno() {
        let e = io::Error::from_raw_os_error(ENOSPC);
        assert_eq!(FailureKind::of(&e), FailureKind::NoSpace);
        let e = io::Error::from_raw_os_error(EDQUOT);
        assert_eq!(FailureKind::of(&e), FailureKind::NoSpace);
        let e = io::Error::from_raw_os_error(5);
        assert_eq!(FailureKind::of(&e), FailureKind::Io);
    }

    #[tokio::test]
    async fn concurrent_commits_share_syncs_and_each_gets_its_stream() {
        let t = tempfile::tempdir().unwrap();
        stream(t.path(), "A", 1, &[1]);
        stream(t.path(), "B", 3, &[1]);
        let g = Arc::new(GroupCommit::start(t.path().into()));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let g = g.clone();
            tasks.push(tokio::spawn(async move {
                let s = if i % 2 == 0 { "A" } else { "B" };
                (s, g.commit_one(s).await.unwrap())
            }));
        }
        for t in tasks {
            let (s, cov) = t.await.unwrap();
            let want = if s == "A" {
                Coverage::Durable
            } else {
                Coverage::Replicated
            };
            assert_eq!(cov, want);
        }
        let syncs = g.stats().syncs.load(Relaxed);
        assert!((1..200).contains(&syncs), "{syncs} syncs for 200 commits");
        assert_eq!(g.stats().acks.snapshot().sum, 200);
    }

    #[tokio::test]
    async fn a_failed_sync_answers_its_group_with_the_error() {
        let t = tempfile::tempdir().unwrap();
        let msgs = stream(t.path(), "S", 1, &[1]);
        // A directory where the listing expects entries it can read: make
        // `msgs` unreadable by replacing it with a file.
        std::fs::remove_dir_all(&msgs).unwrap();
        std::fs::write(&msgs, b"not a directory").unwrap();
        let g = GroupCommit::start(t.path().into());
        let e = g.commit_one("S").await.unwrap_err();
        assert_eq!(e.what, "list");
        assert!(g.recent_failure().is_some());
        assert_eq!(
            g.stats().failures[FailureKind::Io as usize].load(Relaxed),
            1
        );
    }
}
