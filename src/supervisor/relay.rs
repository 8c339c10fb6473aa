//! nats-server's own output: each line re-logged under its own target
//! with its level (so `journalctl -u` shows both programs, clearly apart),
//! and a tail of the last lines kept for error messages.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};

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

/// The last lines nats-server printed, and how many it printed in all.
#[derive(Debug, Default)]
pub struct Tail {
    lines: VecDeque<String>,
    seen: u64,
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
pub(super) async fn relay<R: tokio::io::AsyncRead + Unpin>(
    stream: R,
    pid: u32,
    tail: Arc<Mutex<Tail>>,
    benign: &'static [&'static str],
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
        tail.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg.to_string());
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
