//! Stream reconciliation against the current nats-server: declared
//! streams and consumers made real (or only listed), the publish matcher
//! refreshed from what nats-server really has, their metadata synced to
//! disk, and the outcome kept for status and health.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::nats::Lost;
use super::App;
use crate::jetstream as js_sync;
use crate::routing::StreamMatcher;

/// What the last stream sync found.
#[derive(Debug, Clone, Default)]
pub struct SyncState {
    /// Child generation the last successful sync ran against.
    pub generation: u64,
    pub at: Option<SystemTime>,
    pub report: js_sync::Report,
    pub error: Option<String>,
    /// Reconciliations in a row that could not place a declared stream
    /// (10005 "no suitable peers for placement"): paces the retries.
    pub no_peers_failures: u32,
    /// When that last happened: the self-heal's evidence that a short
    /// meta group matters (see `cluster::MetaHeal`).
    pub no_peers_at: Option<Instant>,
}

impl App {
    /// Reconciles declared streams (when enabled) and refreshes the subject
    /// matcher from the streams nats-server really has.
    pub async fn sync_streams(&self) -> Result<(), String> {
        let generation = self.child.borrow().generation;
        let nats = self.nats().ok_or("not connected to NATS")?;
        let c = self.config();
        let work = async {
            if !c.nats.jetstream_enabled {
                Ok(js_sync::Report::default())
            } else if c.auto_create_streams {
                js_sync::reconcile(&nats.js, &c.streams()).await
            } else {
                js_sync::list(&nats.js).await.map(|infos| js_sync::Report {
                    streams: infos
                        .into_iter()
                        .map(|i| (i.config.name, i.config.subjects))
                        .collect(),
                    ..Default::default()
                })
            }
        };
        // A request in flight when the child dies would wait out its whole
        // timeout and hold up the reconciliation the new child needs.
        let result = match self.while_connected(Duration::from_secs(60), work).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(Lost::Disconnected) => Err(
                "the connection to nats-server dropped during stream reconciliation".to_string(),
            ),
            Err(Lost::TimedOut) => Err("stream reconciliation took longer than 60 s".to_string()),
        };
        if result.is_ok() && self.supervised && c.nats.jetstream_enabled {
            // What reconciliation created must survive a power cut.
            match tokio::task::spawn_blocking(self.durability.metadata_sync()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot sync the streams' metadata: {e}"),
                Err(e) => tracing::warn!(error = %e, "cannot sync the streams' metadata: {e}"),
            }
        }
        let mut st = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(report) => {
                let matcher = StreamMatcher::new(
                    report
                        .streams
                        .iter()
                        .map(|(n, s)| (n.as_str(), s.as_slice())),
                )
                .with_mappings(c.nats.mappings.iter().map(|(src, m)| {
                    (
                        src.as_str(),
                        m.0.iter().map(|d| d.subject.clone()).collect(),
                    )
                }));
                *self.matcher.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(matcher);
                note_no_peers(&mut st, &report);
                st.generation = generation;
                st.at = Some(SystemTime::now());
                st.report = report;
                st.error = None;
                self.syncs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                st.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Whether streams were synced against the current child.
    pub fn streams_synced(&self) -> bool {
        let st = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        st.at.is_some() && (!self.supervised || st.generation == self.child.borrow().generation)
    }
}

/// Counts reconciliations in a row that could not place a stream and logs
/// the first of them with nats-server's reasons, then a summary now and
/// then ([`js_sync::no_peers_logged`]), and when it is over.
fn note_no_peers(st: &mut SyncState, report: &js_sync::Report) {
    if report.no_peers.is_empty() {
        if st.no_peers_failures > 0 {
            tracing::info!(
                attempts = st.no_peers_failures,
                "replicated streams can be placed again (after {} failed attempts)",
                st.no_peers_failures
            );
        }
        st.no_peers_failures = 0;
        return;
    }
    st.no_peers_failures += 1;
    st.no_peers_at = Some(Instant::now());
    let n = st.no_peers_failures;
    if !js_sync::no_peers_logged(n) {
        return;
    }
    let streams = report.no_peers.join(", ");
    if n == 1 {
        let why: Vec<String> = report
            .errors
            .iter()
            .filter(|e| report.no_peers.contains(&e.stream) && e.consumer.is_none())
            .map(ToString::to_string)
            .collect();
        tracing::warn!(streams = %streams, "cannot place the replicas of stream(s) {streams}: {}; retrying with pauses growing to {} s (repeats are summarised)", why.join("; "), js_sync::no_peers_pause(u32::MAX).as_secs());
    } else {
        tracing::warn!(streams = %streams, attempts = n, "stream(s) {streams} still cannot be placed after {n} attempts (no suitable peers for placement); retrying every {} s", js_sync::no_peers_pause(n).as_secs());
    }
}
