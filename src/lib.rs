//! marketprism-broker: runs nats-server + JetStream as a supervised Linux
//! system service with an HTTP API.
//!
//! Module map (pure cores first, then the I/O shell around them):
//! - [`config`]: YAML/TOML -> validated [`config::Config`], errors with file, line, key.
//! - [`natsconf`]: Config -> nats-server.conf text (pure).
//! - [`subject`]: subject validation, matching, overlap (pure).
//! - [`mapping`]: subject mappings: checks and where a subject goes (pure).
//! - [`permissions`]: users' least-privilege permissions with their JetStream grants (pure).
//! - [`jetstream`]: declared vs actual streams and consumers -> plan (pure), then apply.
//! - [`reload`]: old vs new config -> reload plan (pure).
//! - [`cluster`]: routes, meta group and stream groups from /routez, /jsz and stream info; problems; retry kinds (pure).
//! - [`health`]: facts -> /health's problems, nats-server's state, systemd's STATUS= line (pure).
//! - [`supervisor`]: the nats-server child: spawn, probe, restart, stop.
//! - [`app`]: shared state: child status, NATS client, stream matcher, stats.
//! - [`http`]: the HTTP API on hyper 1.x, /metrics, the nats-server monitor passthrough.
//! - [`server_version`]: the nats-server release and what it offers for durability.
//! - [`durability`]: group commit: an HTTP publish is answered after its ack and a sync of the stream's files.
//! - [`coalesce`]: hands concurrent HTTP publishes to NATS together.
//! - [`stats`]: message counters, latency histograms, rates, Prometheus text.
//! - [`daemon`]: start-up and shutdown order; check-config, render-nats-config.
//! - [`cli`], [`exit`], [`logging`], [`systemd`]: the process edges.

pub mod app;
pub mod cli;
pub mod cluster;
pub mod coalesce;
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
pub mod reload;
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
