//! nats-server's own output: each line re-logged under its own target
//! with its level (so `journalctl -u` shows both programs, clearly apart),
//! and a tail of the last lines kept for error messages.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;

/// Lines of nats-server output kept for error messages.
const TAIL_LINES: usize = 30;

/// nats-server's log level, from the `[INF]`-style tag in its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Splits a nats-server log line into level and message, dropping the
/// `[pid] date time` prefix that journald already records.
/// `[1234] 2026/11/25 16:54:51.467980 [INF] Starting nats-server`
pub fn parse_child_line(line: &str) -> (ChildLevel, &str) {
    for (tag, level) in [
        ("[INF] ", ChildLevel::Info),
        ("[WRN] ", ChildLevel::Warn),
        ("[ERR] ", ChildLevel::Error),
        ("[FTL] ", ChildLevel::Error),
        ("[DBG] ", ChildLevel::Debug),
        ("[TRC] ", ChildLevel::Trace),
    ] {
        if let Some(i) = line.find(tag) {
            return (level, &line[i + tag.len()..]);
        }
    }
    (ChildLevel::Info, line)
}

/// Whether a nats-server line says it failed to write its JetStream store
/// for want of room ("JetStream failed to store a msg on stream ...: write
/// .../msgs/2.blk: no space left on device", and the same error from its
/// other writes: index, meta and raft files).
pub fn is_store_write_failure(msg: &str) -> bool {
    msg.contains("no space left on device")
}

/// The last lines nats-server printed, how many it printed in all, and how
/// many of them were failed store writes.
#[derive(Debug, Default)]
pub struct Tail {
    lines: VecDeque<String>,
    seen: u64,
    store_write_failures: u64,
}

impl Tail {
    pub(super) fn push(&mut self, line: String) {
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
        self.seen += 1;
    }

    /// How many lines were printed in all.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// How many lines said a store write failed (see
    /// [`is_store_write_failure`]).
    pub fn store_write_failures(&self) -> u64 {
        self.store_write_failures
    }

    /// The last `n` lines (those still kept).
    pub fn last(&self, n: usize) -> Vec<String> {
        self.lines
            .iter()
            .skip(self.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The lines printed after the first `seen` (those still kept).
    pub(super) fn since(&self, seen: u64) -> Vec<String> {
        let newer = (self.seen - seen.min(self.seen)) as usize;
        self.lines
            .iter()
            .skip(self.lines.len().saturating_sub(newer))
            .cloned()
            .collect()
    }
}

/// Re-logs the child's output line by line under the target `nats-server`
/// and keeps a tail for error messages.
/// Lines starting with one of `benign` are logged at debug level.
/// A failed store write is counted and `store_failed` notified at once.
pub(super) async fn relay<R: tokio::io::AsyncRead + Unpin>(
    stream: R,
    pid: u32,
    tail: Arc<Mutex<Tail>>,
    benign: &'static [&'static str],
    store_failed: Arc<Notify>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (mut level, msg) = parse_child_line(&line);
        if benign.iter().any(|b| msg.starts_with(b)) {
            level = ChildLevel::Debug;
        }
        match level {
            ChildLevel::Trace => tracing::trace!(target: "nats-server", nats_pid = pid, "{msg}"),
            ChildLevel::Debug => tracing::debug!(target: "nats-server", nats_pid = pid, "{msg}"),
            ChildLevel::Info => tracing::info!(target: "nats-server", nats_pid = pid, "{msg}"),
            ChildLevel::Warn => tracing::warn!(target: "nats-server", nats_pid = pid, "{msg}"),
            ChildLevel::Error => tracing::error!(target: "nats-server", nats_pid = pid, "{msg}"),
        }
        let failed = is_store_write_failure(msg);
        {
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            t.push(msg.to_string());
            t.store_write_failures += u64::from(failed);
        }
        if failed {
            store_failed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_lines_are_split_into_level_and_message() {
        assert_eq!(
            parse_child_line("[2589] 2026/11/25 16:54:51.467980 [FTL] Can't start JetStream: x"),
            (ChildLevel::Error, "Can't start JetStream: x")
        );
        assert_eq!(
            parse_child_line("[1] 2026/11/25 16:54:51.4 [WRN] slow"),
            (ChildLevel::Warn, "slow")
        );
        assert_eq!(
            parse_child_line("[1] [INF] no time"),
            (ChildLevel::Info, "no time")
        );
        assert_eq!(
            parse_child_line("panic: oops"),
            (ChildLevel::Info, "panic: oops")
        );
    }

    #[test]
    fn failed_store_writes_are_told_from_other_errors() {
        let (_, msg) = parse_child_line(
            "[7] 2026/12/02 12:55:02.544575 [ERR] JetStream failed to store a msg on stream 'MARKETPRISM > MARKET_DATA': write /s/jetstream/MARKETPRISM/streams/MARKET_DATA/msgs/2.blk: no space left on device",
        );
        assert!(is_store_write_failure(msg));
        assert!(!is_store_write_failure(
            "JetStream failed to store a msg on stream 'A > B': maximum messages exceeded"
        ));
        assert!(!is_store_write_failure("Starting nats-server"));
    }

    #[tokio::test]
    async fn the_relay_counts_failed_store_writes_and_says_so_at_once() {
        let out: &[u8] = b"[1] [INF] Server is ready\n[1] [ERR] JetStream failed to store a msg on stream 'A > S': write x.blk: no space left on device\n";
        let tail = Arc::new(Mutex::new(Tail::default()));
        let notify = Arc::new(Notify::new());
        relay(out, 1, tail.clone(), &[], notify.clone()).await;
        assert_eq!(tail.lock().unwrap().store_write_failures(), 1);
        assert_eq!(tail.lock().unwrap().seen(), 2);
        // The permit is stored: a waiter that comes later wakes at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), notify.notified())
            .await
            .expect("notified");
    }

    #[test]
    fn the_tail_keeps_the_last_lines_and_knows_what_is_new() {
        let mut t = Tail::default();
        for i in 0..TAIL_LINES + 5 {
            t.push(format!("line {i}"));
        }
        assert_eq!(t.lines.len(), TAIL_LINES);
        let seen = t.seen;
        assert!(t.since(seen).is_empty());
        t.push("new".into());
        assert_eq!(t.since(seen), ["new"]);
        assert_eq!(t.since(0).len(), TAIL_LINES);
    }
}
