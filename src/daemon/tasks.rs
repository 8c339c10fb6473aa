//! What runs beside the serving loop: systemd's STATUS= line and the
//! silence and backlog alarms it reports, the watchdog in external mode,
//! the 1-minute rate samples, and keeping the streams reconciled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::app::App;
use crate::systemd;

/// One line a person understands, for systemd's STATUS= (decided by
/// [`crate::health::status_line`]).
pub(super) fn status_line(app: &App) -> String {
    crate::health::status_line(&app.facts())
}

/// Keeps systemd's STATUS= current: on every child change, every few
/// seconds for the connection count, and after every alarm check. This is
/// the daemon's one periodic monitor: it also checks the alarms, every
/// [`crate::alarms::check_interval`] (and at once after a reload).
pub(super) async fn report_status(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut child = app.child.clone();
    let mut every = tokio::time::interval(Duration::from_secs(5));
    let mut next_alarm_check = tokio::time::Instant::now();
    let mut last = String::new();
    let mut connections = None;
    let mut cluster_note: Option<String> = None;
    let mut catch_up = crate::health::Facts::default();
    loop {
        tokio::select! {
            changed = child.changed(), if app.supervised => if changed.is_err() { break },
            _ = every.tick() => {
                connections = app.varz().await.and_then(|v| v["connections"].as_u64());
                // A cluster that lost its quorum is worth a word in STATUS=.
                cluster_note = app.meta_problem().await;
                // Catching up is worth a word too (READY=1 does not wait
                // for it; `wait-ready` does).
                catch_up = app.catch_up_facts().await;
            }
            _ = tokio::time::sleep_until(next_alarm_check) => {
                app.check_alarms().await;
                next_alarm_check = tokio::time::Instant::now() + alarm_interval(&app);
            }
            _ = app.check_alarms_now.notified() => {
                app.check_alarms().await;
                next_alarm_check = tokio::time::Instant::now() + alarm_interval(&app);
            }
            _ = crate::flag_set(&mut stop) => break,
        }
        let line = crate::health::status_line(&crate::health::Facts {
            connections,
            meta_problem: cluster_note.clone(),
            local_health: catch_up.local_health.clone(),
            stream_groups: catch_up.stream_groups.clone(),
            server_name: catch_up.server_name.clone(),
            ..app.facts()
        });
        if line != last {
            systemd::status(&line);
            last = line;
        }
    }
}

fn alarm_interval(app: &App) -> Duration {
    crate::alarms::check_interval(&crate::alarms::Rules::of(&app.config()))
}

/// Samples the message totals every second for the status' 1-minute
/// rates (the publish path only bumps counters).
pub(super) async fn sample_rates(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => app.stats.sample_rates(Instant::now()),
            _ = crate::flag_set(&mut stop) => break,
        }
    }
}

/// External mode's watchdog feeder (supervised mode feeds it from the
/// supervisor loop): runs on the runtime, so a wedged runtime stops it.
pub(super) async fn feed_watchdog(mut stop: watch::Receiver<bool>) {
    let mut timer = systemd::WatchdogTimer::new();
    loop {
        tokio::select! {
            _ = timer.due() => systemd::watchdog(),
            _ = crate::flag_set(&mut stop) => break,
        }
    }
}

/// Keeps streams and the publish matcher current: after every new healthy
/// child (memory streams died with the old one), after every reconnect, and
/// periodically to repair drift.
pub(super) async fn maintain(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut child = app.child.clone();
    let mut seen_generation = child.borrow().generation;
    let mut resync = tokio::time::interval(app.config().supervisor.stream_resync_interval.get());
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    // After a failed or incomplete sync (a cluster without a meta leader,
    // a peer still starting): try again soon, not a whole interval later.
    // A cluster node that started without a meta leader has not synced
    // yet; one whose start-up sync could not create a stream is not done.
    let mut retry_at: Option<tokio::time::Instant> = if !app.clustered_jetstream() {
        None
    } else if !app.streams_synced() {
        Some(tokio::time::Instant::now())
    } else if !missing(&app).is_empty() {
        Some(tokio::time::Instant::now() + retry_pause(&app))
    } else {
        None
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {}
            changed = child.changed(), if app.supervised => {
                if changed.is_err() { break; }
                let generation = child.borrow().generation;
                if generation == seen_generation { continue; }
                seen_generation = generation;
                // New child: the client retries every 100 ms (see
                // App::connect), so it is back within moments.
                if !app.wait_connected(Duration::from_secs(5)).await {
                    tracing::warn!("not reconnected to the new nats-server within 5 s");
                    continue;
                }
            }
            _ = app.reconnected.notified() => {}
            _ = resync.tick() => {}
            _ = crate::flag_set(&mut stop) => break,
        }
        if !app.is_connected() {
            continue;
        }
        retry_at = None;
        let ok = match app.sync_streams().await {
            Ok(()) => missing(&app).is_empty(),
            Err(e) => {
                tracing::warn!(error = %e, "stream reconciliation failed ({e}); will retry");
                false
            }
        };
        if !ok && app.clustered_jetstream() {
            retry_at = Some(tokio::time::Instant::now() + retry_pause(&app));
        }
    }
}

/// Declared streams the last reconciliation left missing.
fn missing(app: &App) -> Vec<String> {
    let st = app.sync.lock().unwrap_or_else(|e| e.into_inner());
    st.report.missing.clone()
}

/// The pause before retrying an incomplete reconciliation: 2 s, growing
/// to 10 s while streams cannot be placed (10005) one attempt after
/// another.
fn retry_pause(app: &App) -> Duration {
    let n = app
        .sync
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .no_peers_failures;
    if n == 0 {
        Duration::from_secs(2)
    } else {
        crate::jetstream::no_peers_pause(n)
    }
}
