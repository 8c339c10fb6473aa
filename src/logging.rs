//! Logs: to journald when the daemon's stderr is connected to the journal
//! (systemd sets JOURNAL_STREAM to its device:inode) or with `--log
//! journald`; human-readable on stderr otherwise. Filtered by RUST_LOG
//! (default: info, async-nats at warn).
//!
//! In the journal the daemon's lines carry SYSLOG_IDENTIFIER
//! `marketprism-broker` and nats-server's re-logged lines
//! `nats-server` (with the child's pid in NATS_PID), so
//! `journalctl -u marketprism-broker` shows both, told apart, and
//! `-t nats-server` shows the child alone.

use std::os::unix::fs::MetadataExt;

use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The target of nats-server's re-logged lines.
pub const CHILD_TARGET: &str = "nats-server";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Journald when stderr is the journal, else stderr.
    Auto,
    Journald,
    Stderr,
}

impl std::str::FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Output::Auto),
            "journald" => Ok(Output::Journald),
            "stderr" => Ok(Output::Stderr),
            other => Err(format!(
                "unknown log output {other:?} (auto, journald or stderr)"
            )),
        }
    }
}

/// Whether stderr is the journal stream systemd connected us to.
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"))
}

pub fn init(output: Output) {
    let journald = match output {
        Output::Journald => true,
        Output::Stderr => false,
        Output::Auto => stderr_is_journal(),
    };
    if journald {
        match (tracing_journald::layer(), tracing_journald::layer()) {
            (Ok(own), Ok(child)) => {
                let own = own
                    .with_syslog_identifier("marketprism-broker".into())
                    .with_field_prefix(None)
                    .with_filter(filter_fn(|m| m.target() != CHILD_TARGET));
                let child = child
                    .with_syslog_identifier(CHILD_TARGET.into())
                    .with_field_prefix(None)
                    .with_filter(filter_fn(|m| m.target() == CHILD_TARGET));
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(own)
                    .with(child)
                    .try_init();
                return;
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("marketprism-broker: cannot log to journald ({e}); logging to stderr");
            }
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(true)
        .try_init();
}
