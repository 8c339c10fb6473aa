//! The meta group self-heal: every few seconds the meta leader compares
//! its JetStream meta group with the servers it is routed to
//! ([`crate::cluster::meta_shortfall`]), and a follower checks that the
//! group's peer set includes it ([`crate::cluster::left_out_of_meta`]).
//! When the group has missed a routed peer (or this node) for the grace
//! period while a declared stream could not be placed, the node that sees
//! it restarts its own nats-server once ([`crate::cluster::MetaHeal`]
//! decides, and bounds it to once per ten minutes). nats-server 2.10.27
//! was seen stuck that way for minutes: a follower's replies to the
//! leader never arrived (lost route interest), so the leader never added
//! it to the group and no R3 stream could be placed; and, with three
//! servers started at once under load, a leader ran a group of two that
//! the third followed without ever being added, under the next leader
//! too. A new meta leader rebuilds the peer set from fresh replies, and a
//! restarted nats-server opens all its routes anew and joins afresh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::app::App;
use crate::cluster::{heal_grace, HealStep, MetaHeal, META_HEAL_EVERY};
use crate::supervisor::Command;

/// How often the meta leader looks.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Runs the check until `stop`; `commands` reaches the supervisor (None:
/// an external nats-server, which is only reported).
pub(super) async fn heal_meta(
    app: Arc<App>,
    commands: Option<mpsc::Sender<Command>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heal = MetaHeal::default();
    let mut was_short = false;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = crate::flag_set(&mut stop) => break,
        }
        let shortfall = app.meta_shortfall().await;
        match (&shortfall, was_short) {
            (Some(s), false) if s.left_out => tracing::info!(
                known = s.known,
                "{s}; watching it (the leader adds a server that just joined within moments)"
            ),
            (Some(s), false) => tracing::info!(
                known = s.known,
                routed = s.routed,
                "{s}; this node leads the JetStream meta group: watching it (a server that just joined is added within moments)"
            ),
            (None, true) => {
                tracing::info!("the JetStream meta group lists this node and every routed peer again")
            }
            _ => {}
        }
        was_short = shortfall.is_some();
        app.set_meta_shortfall(shortfall.clone());
        let no_peers_at = app
            .sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .no_peers_at;
        let HealStep::Restart(s) = heal.step(Instant::now(), shortfall, no_peers_at) else {
            continue;
        };
        let version = app
            .nats()
            .map(|n| n.client.server_info().version)
            .unwrap_or_else(|| "(version unknown)".into());
        let Some(tx) = &commands else {
            tracing::warn!(
                known = s.known,
                routed = s.routed,
                version = %version,
                "{s} for over {} s while declared streams could not be placed; nats-server {version} is not the daemon's child: restart it to rebuild the meta group (later nats-server releases, 2.12.10 and up, fix route interest bugs of this kind)",
                heal_grace(&s).as_secs()
            );
            continue;
        };
        if s.left_out {
            tracing::warn!(
                known = s.known,
                version = %version,
                "restarting nats-server (self-heal): {s}, for over {} s while declared streams could not be placed (\"no suitable peers for placement\"). nats-server {version} was seen leaving a server out of the meta group when servers started at once, and a new leader among the others leaves it out too; a restart makes this server join anew. At most once every {} minutes",
                heal_grace(&s).as_secs(),
                META_HEAL_EVERY.as_secs() / 60
            );
        } else {
            tracing::warn!(
                known = s.known,
                routed = s.routed,
                version = %version,
                "restarting nats-server (self-heal): {s} for over {} s while declared streams could not be placed (\"no suitable peers for placement\"). This node leads the JetStream meta group, which adds a peer only when that peer's replies arrive; nats-server {version} can lose route subscription interest so that they never do (later releases, 2.12.10 and up, fix route interest bugs of this kind). A restart hands the leadership over and opens every route anew; at most once every {} minutes",
                heal_grace(&s).as_secs(),
                META_HEAL_EVERY.as_secs() / 60
            );
        }
        if tx.send(Command::Restart).await.is_ok() {
            app.note_meta_heal_restart();
        }
    }
}
