//! marketprism-broker: runs nats-server + JetStream as a supervised Linux
//! system service with an HTTP API.
//!
//! Module map, one line per module, in dependency order: each module uses
//! only modules listed above it (pure cores first, then the I/O shell,
//! then the process).
//!
//! Pure cores:
//! - [`subject`]: subject validation, matching, overlap.
//! - [`mapping`]: subject mappings: checks and where a subject goes.
//! - [`routing`]: which stream captures a subject, after the mappings (the publish hot path).
//! - [`security`]: the API's tokens and TLS identity, loaded once per config load.
//! - [`config`]: YAML/TOML -> validated [`config::Config`], errors with file, line, key.
//! - [`permissions`]: users' least-privilege permissions with their JetStream grants.
//! - [`server_version`]: the nats-server release and what it offers for durability.
//! - [`natsconf`]: Config -> nats-server.conf text.
//! - [`reload`]: old vs new config -> reload plan, field by field.
//! - [`cluster`]: routes, meta group and stream groups from /routez, /jsz and stream info; problems.
//! - [`alarms`]: silence and backlog thresholds vs what nats-server says -> the alarms in force.
//!
//! The I/O shell:
//! - [`jetstream`]: declared vs actual streams and consumers -> plan (pure), then apply.
//! - [`stats`]: message counters, latency histograms, rates, Prometheus text.
//! - [`durability`]: group commit: an HTTP publish is answered after its ack and a sync of the stream's files.
//! - [`coalesce`]: hands concurrent HTTP publishes to NATS together.
//! - [`probe`]: the one nats-server monitor client; NATS ping; port and disk checks.
//! - [`runfiles`]: atomic writes; the pid and reload-state files, writer and reader.
//! - [`systemd`]: sd_notify: READY, RELOADING, STOPPING, STATUS, the watchdog.
//! - [`supervisor`]: the nats-server child: spawn, probe, restart, stop (pure machine in `state`).
//! - [`health`]: facts -> /health's problems, nats-server's state, systemd's STATUS= line (pure, over the types above).
//! - [`app`]: shared state; beside it the NATS client, reconciliation, the monitor.
//! - [`http`]: the HTTP API on hyper 1.x, /metrics, the nats-server monitor passthrough.
//!
//! The process:
//! - [`exit`], [`logging`], [`cli`]: exit codes, logs, arguments.
//! - [`daemon`]: start-up and shutdown order, reloads, background tasks.
//! - [`commands`]: reload, check-config, render-nats-config: short-lived processes.

pub mod alarms;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod coalesce;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod durability;
pub mod exit;
pub mod health;
pub mod http;
pub mod jetstream;
pub mod logging;
pub mod mapping;
pub mod natsconf;
pub mod permissions;
pub mod probe;
pub mod reload;
pub mod routing;
pub mod runfiles;
pub mod security;
pub mod server_version;
pub mod stats;
pub mod subject;
pub mod supervisor;
pub mod systemd;

/// Resolves once `rx` holds `true` (or its sender is gone). The guard
/// `wait_for` returns is dropped here, so callers' futures stay `Send`.
pub async fn flag_set(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
