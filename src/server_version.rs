//! Which nats-server the daemon runs, and what that means for durability:
//! `jetstream { sync_interval }` exists from 2.10 on (2.9.x refuses the
//! key and syncs its store every 2 minutes, fixed).

use std::fmt;
use std::path::Path;

use crate::config::{Config, SyncInterval, DEFAULT_SYNC_INTERVAL};

/// How long `nats-server --version` may take (it answers in about 10 ms).
pub const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A nats-server release, e.g. 2.9.10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl ServerVersion {
    /// `nats-server --version` prints `nats-server: v2.9.10`.
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
        let mut parts = v.split(['.', '-', '+']);
        let mut next = || parts.next()?.parse().ok();
        Some(ServerVersion {
            major: next()?,
            minor: next()?,
            patch: next().unwrap_or(0),
        })
    }

    /// Asks the binary; None when it does not answer in the usual form
    /// within [`QUERY_TIMEOUT`] (the wrong program, or one that hangs,
    /// must not hold up a start or a check).
    pub fn query(bin: &Path) -> Option<ServerVersion> {
        use std::io::Read;
        let mut child = std::process::Command::new(bin)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = std::time::Instant::now() + QUERY_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
        // A version line fits the pipe: a program that wrote more blocked
        // and was killed above.
        let mut out = String::new();
        child.stdout.take()?.read_to_string(&mut out).ok()?;
        ServerVersion::parse(&out)
    }

    /// `jetstream { sync_interval }` (a duration or `always`).
    pub fn has_sync_interval(self) -> bool {
        (self.major, self.minor) >= (2, 10)
    }
}

/// The `sync_interval` to render into nats-server's config: the
/// configured one, else the default where the server has the key. With
/// the version unknown, only a configured value is rendered (nats-server
/// refuses what it does not know; `-t` and the start say so).
pub fn sync_interval(c: &Config, v: Option<ServerVersion>) -> Option<SyncInterval> {
    match (c.nats.sync_interval, v) {
        (Some(s), _) => Some(s),
        (None, Some(v)) if v.has_sync_interval() => {
            Some(SyncInterval::Every(DEFAULT_SYNC_INTERVAL))
        }
        (None, _) => None,
    }
}

/// A config key the nats-server cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Unsupported {
    /// Dotted, as in config errors: `nats.sync_interval`.
    pub key: &'static str,
    pub message: String,
}

impl Unsupported {
    /// As a config error with the file and line of the key in `source`.
    pub fn at(self, source: &crate::config::Source) -> crate::config::ConfigError {
        crate::config::error_at(source, self.key, self.message)
    }
}

/// What the daemon says about durability at start and in check-config:
/// an error when the config asks the server for what it lacks, and
/// warnings, each said once, about guarantees weaker than the user may
/// assume.
pub fn durability_notes(c: &Config, v: Option<ServerVersion>) -> Result<Vec<String>, Unsupported> {
    let mut notes = Vec::new();
    let n = &c.nats;
    if !n.jetstream_enabled {
        return Ok(notes);
    }
    if !c.auto_start_nats {
        if n.durability == crate::config::Durability::Sync {
            notes.push(format!(
                "nats.durability is sync, but the store of the external nats-server at {} is not on this daemon's disk to sync: HTTP publishes are answered with \"durable\": false, as durable as that server's own sync_interval makes them",
                n.nats_url
            ));
        }
        return Ok(notes);
    }
    match v {
        Some(v) if !v.has_sync_interval() => {
            if n.sync_interval.is_some() {
                return Err(Unsupported {
                    key: "nats.sync_interval",
                    message: format!("nats-server {v} has no sync_interval (2.10 and later have it); remove the key, or set nats.server_bin to nats-server 2.10 or later"),
                });
            }
            if c.cluster_enabled() && c.streams().values().any(|s| s.replicas > 1) {
                notes.push(format!(
                    "nats-server {v} in a cluster: a replicated stream's leader that a network partition cuts off can keep a message that the new leader replaced; after the partition heals, its copy of the stream stays short, with other messages at the same sequences, and `wait-ready` and /health report it \"messages behind the leader\" for good (neither waiting nor restarting nats-server repairs a copy below its last sequence). Seen with 2.9.10; 2.10.27 passes the same test. Use nats-server 2.10 or later (nats.server_bin)"
                ));
            }
            notes.push(format!(
                "nats-server {v} syncs its store to disk only every 2 minutes and has no sync_interval: acknowledgments it gives native clients (nats-py, async-nats, nats.js on port {}) can be lost by a power cut or kernel crash within that window. HTTP publishes are synced before they are answered (nats.durability: sync). For native clients, use nats-server 2.10 or later (nats.server_bin; nats.sync_interval then bounds the window, {} by default)",
                n.nats_port, DEFAULT_SYNC_INTERVAL
            ));
        }
        Some(_) => {}
        None => notes.push(
            "the nats-server version is unknown (`nats-server --version` gave no version): nats.sync_interval is rendered only when configured".into(),
        ),
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn v(s: &str) -> Option<ServerVersion> {
        ServerVersion::parse(s)
    }

    #[test]
    fn versions_are_read_from_the_version_line() {
        assert_eq!(
            v("nats-server: v2.9.10\n"),
            Some(ServerVersion {
                major: 2,
                minor: 9,
                patch: 10
            })
        );
        assert_eq!(
            v("nats-server: v2.15.1-beta.2").unwrap().to_string(),
            "2.15.1"
        );
        assert_eq!(v("nonsense"), None);
    }

    #[test]
    fn a_program_that_hangs_on_version_is_given_up_on() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("hangs");
        std::fs::write(&bin, "#!/bin/sh\nexec sleep 60\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(ServerVersion::query(&bin), None);
        assert!(started.elapsed() < QUERY_TIMEOUT + std::time::Duration::from_secs(1));
        assert_eq!(ServerVersion::query(&t.path().join("missing")), None);
    }

    #[test]
    fn sync_interval_exists_from_2_10_on() {
        assert!(!v("v2.9.25").unwrap().has_sync_interval());
        assert!(v("v2.10.27").unwrap().has_sync_interval());
        assert!(v("v3.0.0").unwrap().has_sync_interval());
    }

    #[test]
    fn the_default_interval_is_rendered_only_where_the_server_has_it() {
        let mut c = Config::default();
        assert_eq!(sync_interval(&c, v("v2.9.10")), None);
        assert_eq!(sync_interval(&c, None), None);
        assert_eq!(
            sync_interval(&c, v("v2.10.27")),
            Some(SyncInterval::Every(DEFAULT_SYNC_INTERVAL))
        );
        c.nats.sync_interval = Some(SyncInterval::Always);
        assert_eq!(sync_interval(&c, None), Some(SyncInterval::Always));
        c.nats.sync_interval = Some(SyncInterval::Every(Dur::millis(200)));
        assert_eq!(
            sync_interval(&c, v("v2.15.1")),
            Some(SyncInterval::Every(Dur::millis(200)))
        );
    }

    #[test]
    fn a_2_9_server_is_named_once_with_what_improves_it() {
        let c = Config::default();
        let notes = durability_notes(&c, v("v2.9.10")).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("nats-server 2.9.10"), "{}", notes[0]);
        assert!(notes[0].contains("native clients"), "{}", notes[0]);
        assert!(notes[0].contains("2.10 or later"), "{}", notes[0]);
        assert!(durability_notes(&c, v("v2.10.27")).unwrap().is_empty());
    }

    #[test]
    fn a_2_9_cluster_with_replicated_streams_is_told_about_partitioned_leaders() {
        let text = include_str!("../config/examples/cluster.yaml");
        let (c, _) = crate::config::parse_str(text, crate::config::Format::Yaml).unwrap();
        let notes = durability_notes(&c, v("v2.9.10")).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].starts_with("nats-server 2.9.10 in a cluster"),
            "{}",
            notes[0]
        );
        assert!(notes[0].contains("network partition"), "{}", notes[0]);
        assert!(notes[0].contains("2.10 or later"), "{}", notes[0]);
        assert!(durability_notes(&c, v("v2.10.27")).unwrap().is_empty());
        // One copy per stream: nothing to diverge.
        let one = text.replace("replicas: 3", "replicas: 1");
        let (c, _) = crate::config::parse_str(&one, crate::config::Format::Yaml).unwrap();
        let notes = durability_notes(&c, v("v2.9.10")).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(!notes[0].contains("partition"), "{}", notes[0]);
    }

    #[test]
    fn a_sync_interval_for_a_2_9_server_is_an_error() {
        let mut c = Config::default();
        c.nats.sync_interval = Some(SyncInterval::Always);
        let e = durability_notes(&c, v("v2.9.10")).unwrap_err();
        assert_eq!(e.key, "nats.sync_interval");
        assert!(e.message.starts_with("nats-server 2.9.10 has no"), "{e}");
    }

    #[test]
    fn an_external_server_cannot_be_synced_by_the_daemon() {
        let mut c = Config {
            auto_start_nats: false,
            ..Config::default()
        };
        let notes = durability_notes(&c, None).unwrap();
        assert!(notes[0].contains("\"durable\": false"), "{notes:?}");
        c.nats.durability = crate::config::Durability::Lazy;
        assert!(durability_notes(&c, None).unwrap().is_empty());
    }
}
