//! Message counters: plain atomics, so the publish path takes no lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The seed's message_stats, counted honestly: `published` only after
/// nats-server took the message (JetStream ack, or a core publish handed to
/// a connected client); `errors` for every publish answered with an error.
#[derive(Debug, Default)]
pub struct Stats {
    pub published: AtomicU64,
    /// Of `published`, how many a stream acknowledged.
    pub persisted: AtomicU64,
    /// Messages delivered to clients through the daemon (event streams).
    pub consumed: AtomicU64,
    /// Publishes refused because the request was wrong (4xx).
    pub rejected: AtomicU64,
    /// Publishes that failed on the NATS side (5xx).
    pub failed: AtomicU64,
    /// Messages not sent to an event-stream client that read too slowly.
    pub sse_dropped: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    pub published: u64,
    pub consumed: u64,
    pub errors: u64,
    pub persisted: u64,
    pub rejected: u64,
    pub failed: u64,
}

impl Stats {
    pub fn published(&self, persisted: bool) {
        self.published.fetch_add(1, Relaxed);
        if persisted {
            self.persisted.fetch_add(1, Relaxed);
        }
    }

    /// Records a failed publish by HTTP status class.
    pub fn error(&self, status: u16) {
        if status < 500 {
            self.rejected.fetch_add(1, Relaxed);
        } else {
            self.failed.fetch_add(1, Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let rejected = self.rejected.load(Relaxed);
        let failed = self.failed.load(Relaxed);
        Snapshot {
            published: self.published.load(Relaxed),
            consumed: self.consumed.load(Relaxed),
            errors: rejected + failed,
            persisted: self.persisted.load(Relaxed),
            rejected,
            failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_the_sum_of_rejections_and_failures() {
        let s = Stats::default();
        s.published(true);
        s.published(false);
        s.error(400);
        s.error(413);
        s.error(503);
        let snap = s.snapshot();
        assert_eq!(
            (
                snap.published,
                snap.persisted,
                snap.errors,
                snap.rejected,
                snap.failed
            ),
            (2, 1, 3, 2, 1)
        );
    }
}
