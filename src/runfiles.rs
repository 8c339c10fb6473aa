//! The files the daemon writes while it runs and other processes read:
//! every one written atomically; the pid and reload-state files, whose
//! writer (the daemon) and reader (`marketprism-broker reload`) live
//! here together so their format is defined once.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The daemon's pid, for `marketprism-broker reload` without --pid.
pub const PID_FILE: &str = "marketprism-broker.pid";
/// `<count>\t<ok|failed>\t<message>`: the outcome of the last reload,
/// which `marketprism-broker reload` waits for.
pub const RELOAD_STATE_FILE: &str = "reload-state";

/// Writes `contents` to `path` atomically with `mode`: a reader (nats-server
/// on SIGHUP, a person) sees the old file or the new one, never half.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Records this process as the daemon in `dir`.
pub fn write_pid(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_atomic(
        &dir.join(PID_FILE),
        format!("{}\n", std::process::id()).as_bytes(),
        0o644,
    )
}

/// The daemon's pid recorded in `dir`, if any.
pub fn read_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn remove_pid(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(PID_FILE));
}

/// The outcome of the daemon's latest reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadState {
    /// Reloads so far (0: none yet, the daemon just started).
    pub count: u64,
    pub ok: bool,
    pub message: String,
}

/// Records a reload's outcome (a failure to do so is logged, not fatal:
/// the reload itself happened).
pub fn write_reload_state(dir: &Path, s: &ReloadState) {
    let line = format!(
        "{}\t{}\t{}\n",
        s.count,
        if s.ok { "ok" } else { "failed" },
        s.message.replace('\n', " ")
    );
    if let Err(e) = write_atomic(&dir.join(RELOAD_STATE_FILE), line.as_bytes(), 0o644) {
        tracing::warn!(error = %e, "cannot record the reload outcome: {e}");
    }
}

pub fn read_reload_state(dir: &Path) -> Option<ReloadState> {
    let text = std::fs::read_to_string(dir.join(RELOAD_STATE_FILE)).ok()?;
    let mut parts = text.trim_end().splitn(3, '\t');
    let count = parts.next()?.parse().ok()?;
    let ok = parts.next()? == "ok";
    Some(ReloadState {
        count,
        ok,
        message: parts.next().unwrap_or("").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_have_the_mode_and_leave_no_temp_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nats-server.conf");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_reload_state_reads_back_as_written_even_with_a_newline_in_the_message() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_reload_state(d.path()), None);
        let s = ReloadState {
            count: 3,
            ok: false,
            message: "bad key\nat line 4".into(),
        };
        write_reload_state(d.path(), &s);
        assert_eq!(
            read_reload_state(d.path()),
            Some(ReloadState {
                message: "bad key at line 4".into(),
                ..s
            })
        );
    }

    #[test]
    fn the_pid_file_names_this_process() {
        let d = tempfile::tempdir().unwrap();
        write_pid(d.path()).unwrap();
        assert_eq!(read_pid(d.path()), Some(std::process::id()));
        remove_pid(d.path());
        assert_eq!(read_pid(d.path()), None);
    }
}
