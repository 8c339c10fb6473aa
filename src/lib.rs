//! marketprism-broker: runs nats-server + JetStream as a supervised Linux
//! system service with an HTTP API.

pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod exit;
pub mod http;
pub mod jetstream;
pub mod logging;
pub mod natsconf;
pub mod stats;
pub mod subject;
pub mod supervisor;
pub mod systemd;

/// Resolves once `rx` holds `true` (or its sender is gone). The guard
/// `wait_for` returns is dropped here, so callers' futures stay `Send`.
pub async fn flag_set(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
