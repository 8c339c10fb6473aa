//! The meta group check as the app sees it: whether this node leads a
//! JetStream meta group that misses a routed peer (read from its own
//! monitor), and what the self-heal did about it, for /api/v1/status,
//! /health and systemd's STATUS= line. The decision is
//! [`crate::cluster::meta_shortfall`] and [`crate::cluster::MetaHeal`];
//! the restart is the daemon's (`daemon::heal`).

use std::time::SystemTime;

use serde::Serialize;

use super::App;
use crate::cluster::MetaShortfall;

/// What the self-heal knows now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetaHealView {
    /// The shortfall the last check found; None when this node does not
    /// lead the meta group or its group lists every routed peer.
    pub shortfall: Option<MetaShortfall>,
    /// Restarts of nats-server the self-heal asked for since the daemon
    /// started.
    pub restarts: u64,
    /// When it last asked for one.
    #[serde(serialize_with = "rfc3339")]
    pub last_restart: Option<SystemTime>,
}

fn rfc3339<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(&humantime::format_rfc3339_seconds(*t)),
        None => s.serialize_none(),
    }
}

impl App {
    pub fn meta_heal(&self) -> MetaHealView {
        self.meta_heal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps what the last check found.
    pub fn set_meta_shortfall(&self, shortfall: Option<MetaShortfall>) {
        self.meta_heal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shortfall = shortfall;
    }

    /// Counts a restart the self-heal asked for.
    pub fn note_meta_heal_restart(&self) {
        let mut h = self.meta_heal.lock().unwrap_or_else(|e| e.into_inner());
        h.restarts += 1;
        h.last_restart = Some(SystemTime::now());
    }

    /// This node's meta group against its routes, now: Some when it leads
    /// the group and the group misses routed JetStream peers, or when it
    /// follows a leader whose peer set leaves it out. /routez with
    /// subscriptions is asked for only when that is in question.
    pub async fn meta_shortfall(&self) -> Option<MetaShortfall> {
        if !self.clustered_jetstream() {
            return None;
        }
        let me = self.config().nats.server_name.clone()?;
        let jsz = self.monitor_json("/jsz").await?;
        let leader = crate::cluster::meta_from_jsz(&jsz)?.leader;
        if leader.as_deref() != Some(me.as_str()) {
            // /raftz: 2.10.21 and later (404 before, which ends it here).
            let raftz = self.monitor_json("/raftz?group=_meta_").await?;
            let others = crate::cluster::meta_peers_without_me(&raftz)?;
            let routez = self.monitor_json("/routez?subs=1").await?;
            return crate::cluster::left_out_of_meta(&me, others, &routez);
        }
        let routez = self.monitor_json("/routez?subs=1").await?;
        crate::cluster::meta_shortfall(Some(&me), &jsz, &routez)
    }
}
