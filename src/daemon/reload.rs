//! A reload (SIGHUP): RELOADING -> read and validate the file (a bad one
//! changes nothing) -> reload::plan -> bind a new HTTP address first ->
//! hot-reload or restart nats-server -> put the config in force ->
//! reconnect / reconcile as the plan says -> READY; the outcome goes to
//! the reload-state file for `marketprism-broker reload`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{bind_http, keep_in_fd_store, Ctx, Http};
use crate::natsconf;
use crate::reload::{self, NatsAction};
use crate::runfiles::{self, ReloadState};
use crate::server_version::ServerVersion;
use crate::supervisor::{self, Applied, Command};
use crate::systemd;

/// SIGHUP: re-read the config, apply what changed, tell systemd.
/// RELOADING=1 first, READY=1 when done, whether the reload worked or not:
/// a failed reload leaves the old config running, which is a ready state.
pub(super) async fn reload(ctx: &mut Ctx) {
    systemd::reloading();
    let started = Instant::now();
    let outcome = apply_reload(ctx).await;
    ctx.reloads += 1;
    let app = &ctx.app;
    app.stats.reloaded(outcome.is_ok());
    match &outcome {
        Ok(summary) => {
            app.set_note(None);
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "reload done: {summary}"
            );
        }
        Err(e) => {
            app.set_note(Some(format!("reload failed: {e}")));
            tracing::error!("reload failed: {e}");
        }
    }
    runfiles::write_reload_state(
        &ctx.runtime_dir,
        &ReloadState {
            count: ctx.reloads,
            ok: outcome.is_ok(),
            message: match outcome {
                Ok(summary) => summary,
                Err(e) => e,
            },
        },
    );
    systemd::ready(&super::tasks::status_line(&ctx.app));
}

async fn apply_reload(ctx: &mut Ctx) -> Result<String, String> {
    let explicit = ctx.explicit.clone();
    // The tokens file and the API certificate are re-read on every reload,
    // changed config or not (rotating them is what a SIGHUP is for); a bad
    // one keeps the old ones, and the old config with them.
    let loaded = tokio::task::spawn_blocking(move || {
        crate::config::load_for_reload(explicit.as_deref(), Duration::from_millis(20))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("cannot read the config: {e}"))?
    .map_err(|e| format!("{e}; still running on the previous config"))?;
    for w in &loaded.warnings {
        tracing::warn!("config: {w}");
    }
    let security = loaded.security.clone();
    let old = ctx.app.config();
    let new = Arc::new(loaded.config);
    let plan = reload::plan(&old, &new);
    if let Some(why) = plan.refused {
        return Err(format!("{why}; still running on the previous config"));
    }
    if new.auto_start_nats {
        let bin = supervisor::resolve_server_bin(&new).ok();
        let v = tokio::task::spawn_blocking(move || bin.and_then(|b| ServerVersion::query(&b)))
            .await
            .unwrap_or(None);
        crate::server_version::durability_notes(&new, v).map_err(|e| {
            format!(
                "{}; still running on the previous config",
                e.at(&loaded.source)
            )
        })?;
    }
    let secured = security.describe();
    if plan.is_noop() && plan.nats == NatsAction::Nothing {
        ctx.app.set_security(security);
        return Ok(match secured {
            Some(what) => format!("the configuration is unchanged; re-read the HTTP API's {what}"),
            None => "the configuration is unchanged".into(),
        });
    }
    for c in &plan.changes {
        tracing::info!("reload: {c}");
    }
    // The new HTTP address first: if it cannot be had, nothing changes.
    // Only the same port on another host (127.0.0.1 -> 0.0.0.0) overlaps
    // the old socket: then the old one must go first, and comes back if
    // the new bind fails.
    // systemd's fd store keeps a copy of the old socket: it goes too (and
    // the new one is stored in its place), or the old address stays bound
    // and comes back at the next restart.
    let listener = if !plan.rebind_http {
        None
    } else if new.port == old.port {
        if let Some(h) = ctx.http.take() {
            h.stop().await;
        }
        systemd::remove_stored_fd(systemd::HTTP_FD_NAME);
        systemd::flush(Duration::from_secs(2));
        // systemd closes its copy once it has read the message.
        let mut bound = bind_http(&new.host, new.port).await;
        for _ in 0..20 {
            if bound.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            bound = bind_http(&new.host, new.port).await;
        }
        match bound {
            Ok(l) => Some(l),
            Err(e) => {
                if let Ok(l) = bind_http(&old.host, old.port).await {
                    keep_in_fd_store(&l);
                    ctx.http = Some(Http::start(l, ctx.app.clone()));
                }
                return Err(format!("{e}; still running on the previous config"));
            }
        }
    } else {
        let l = bind_http(&new.host, new.port)
            .await
            .map_err(|e| format!("{e}; still running on the previous config"))?;
        systemd::remove_stored_fd(systemd::HTTP_FD_NAME);
        // Sent before the new one is stored (the removal drops every fd
        // of that name).
        systemd::flush(Duration::from_secs(2));
        Some(l)
    };
    if let Some(l) = &listener {
        keep_in_fd_store(l);
    }
    let mut summary = Vec::new();
    let mut failing = None;
    if let Some(commands) = &ctx.commands {
        let (tx, rx) = oneshot::channel();
        commands
            .send(Command::Apply {
                config: new.clone(),
                action: plan.nats,
                reply: tx,
            })
            .await
            .map_err(|_| "the supervisor is gone".to_string())?;
        let s = &new.supervisor;
        let wait = s.stop_timeout.get() + s.start_timeout.get() + Duration::from_secs(5);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Applied::Done(what))) => summary.push(what),
            Ok(Ok(Applied::Refused(why))) => {
                return Err(format!("{why}; still running on the previous config"))
            }
            Ok(Ok(Applied::Failing(why))) => failing = Some(why),
            Ok(Err(_)) => return Err("the supervisor ended during the reload".into()),
            Err(_) => failing = Some(format!("nats-server did not come back within {wait:?}")),
        }
    }
    ctx.app.set_config(new.clone());
    // Thresholds apply live: the monitor looks again with the new ones.
    ctx.app.check_alarms_now.notify_one();
    ctx.app.durability.set_streams_dir(new.streams_dir());
    ctx.app.set_security(security);
    if let Some(what) = secured {
        summary.push(format!("re-read the HTTP API's {what}"));
    }
    if plan.reconnect_client {
        match ctx.app.repoint_client().await {
            Ok(()) => summary.push(format!(
                "client reconnecting to {}",
                ctx.app.nats_urls().join(", ")
            )),
            Err(e) => failing = failing.or(Some(e)),
        }
    }
    if let Some(listener) = listener {
        let old_http = ctx.http.replace(Http::start(listener, ctx.app.clone()));
        if let Some(h) = old_http {
            // In-flight requests on the old address finish in their own time.
            tokio::spawn(h.stop());
        }
        summary.push(format!(
            "HTTP API moved to {}",
            natsconf::host_port(&new.host, new.port)
        ));
    }
    if (plan.reconcile_streams || plan.reconnect_client)
        && ctx.app.wait_connected(Duration::from_secs(5)).await
    {
        match ctx.app.sync_streams().await {
            Ok(()) => summary.push("streams reconciled".into()),
            Err(e) => failing = failing.or(Some(format!("stream reconciliation failed: {e}"))),
        }
    }
    summary.push(format!("{} change(s)", plan.changes.len()));
    match failing {
        None => Ok(summary.join("; ")),
        Some(why) => Err(format!("the new configuration is in force, but: {why}")),
    }
}
