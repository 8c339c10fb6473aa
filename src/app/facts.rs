//! The facts about the daemon that cost no round trip (the child, the
//! connection, the last reconciliation, the note), for the pure decider in
//! [`crate::health`]: /api/v1/status, /health and systemd's STATUS= line
//! all start from these.

use super::App;
use crate::health::{Child, Facts};

impl App {
    /// The facts that cost no round trip: the child, the connection, the
    /// streams of the last reconciliation, the note, the alarms the
    /// monitor's last check found, the meta group check's last finding. Enough for
    /// /api/v1/status and (with the connection count and the meta problem)
    /// the STATUS= line.
    pub fn facts(&self) -> Facts {
        let child = self.child.borrow().clone();
        let streams = self
            .sync
            .lock()
            .map(|s| s.report.streams.len())
            .unwrap_or(0);
        Facts {
            supervised: self.supervised,
            child: Child {
                phase: child.phase,
                pid: child.pid,
                healthy: child.healthy,
                probe_error: child.probe_error,
                restarts: child.restarts,
                restart_in: child.restart_in,
                last_failure: child.last_failure,
            },
            connected: self.is_connected(),
            nats_urls: self.nats_urls(),
            streams,
            note: self.note(),
            alarms: self.alarm_board().alarms,
            meta_shortfall: self.meta_heal().shortfall.map(|s| s.to_string()),
            ..Facts::default()
        }
    }
}
