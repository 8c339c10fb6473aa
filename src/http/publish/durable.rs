//! `nats.durability: sync` for HTTP publishes: an acknowledged entry is
//! answered only once a sync that began after its ack covered it (see
//! [`crate::durability`]); a failed or late sync is the entry's error.

use std::time::Duration;

use hyper::StatusCode;

use super::entry::Outcome;
use crate::app::App;
use crate::config::{Config, Durability};
use crate::durability::{Coverage, Covered, FailureKind, SyncError};
use crate::http::error::ApiError;

/// Whether answers wait for a sync: `nats.durability: sync` and a store
/// on this machine (a supervised nats-server with JetStream).
pub(super) fn syncs(app: &App, cfg: &Config) -> bool {
    cfg.nats.durability == Durability::Sync && app.supervised && cfg.nats.jetstream_enabled
}

/// Waits for a sync that covers `acks` acknowledged publishes to `streams`
/// (see [`crate::durability`]); what each stream's messages got. A sync
/// that fails or does not end within `timeout` is an error: the messages
/// are stored but not promised to survive a power cut, so no 200.
pub(super) async fn sync_acked<'a>(
    app: &App,
    timeout: Duration,
    streams: impl IntoIterator<Item = &'a str>,
    acks: u64,
) -> Result<Covered, ApiError> {
    match tokio::time::timeout(timeout, app.durability.commit(streams, acks)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(sync_failed(&e)),
        Err(_) => Err(ApiError {
            code: "sync_timeout",
            ..ApiError::unavailable(
                "the stream acknowledged the message, but syncing it to disk did not finish within api.publish_timeout; it may be lost by a power cut: retry (with a msg_id, nats-server drops the duplicate)",
            )
        }),
    }
}

fn sync_failed(e: &SyncError) -> ApiError {
    let message = format!(
        "the stream acknowledged the message, but syncing it to disk failed ({e}); it may be lost by a power cut: retry (with a msg_id, nats-server drops the duplicate)"
    );
    match e.kind {
        FailureKind::NoSpace => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            message,
        ),
        FailureKind::Io => ApiError {
            code: "sync_failed",
            ..ApiError::unavailable(message)
        },
    }
}

/// One sync for every acknowledged entry of a batch: each then carries
/// what its stream got, or, when the sync failed, the error.
pub(super) async fn make_durable(
    app: &App,
    timeout: Duration,
    results: &mut [Option<Result<Outcome, ApiError>>],
) {
    let acked = || {
        results
            .iter()
            .filter_map(|r| r.as_ref()?.as_ref().ok()?.stream.as_deref())
    };
    let count = acked().count() as u64;
    if count == 0 {
        return;
    }
    let streams: std::collections::BTreeSet<&str> = acked().collect();
    let got = sync_acked(app, timeout, streams, count).await;
    for r in results.iter_mut() {
        let Some(Ok(o)) = r else { continue };
        let Some(stream) = &o.stream else { continue };
        match &got {
            Ok(c) => o.durable = c.of(stream) == Coverage::Durable,
            Err(e) => *r = Some(Err(e.clone())),
        }
    }
}
