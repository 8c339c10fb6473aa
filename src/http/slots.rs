//! Open HTTP connections under `api.max_connections`: a slot per
//! connection, whether it is in a request, and eviction of the one idle
//! the longest, so that at the cap a new client (a load balancer's /health
//! probe, say) is served at once rather than after idle or half-sent
//! connections time out. nginx does the same when it runs short of
//! connections: it closes its "reusable" ones, idle keep-alive connections
//! and those still waiting for a request.
//!
//! A connection counts as idle from its accept, or from the end of its last
//! request, until a complete request head has arrived. One idle for less
//! than `GRACE` is left alone: a new client's request is usually on its way
//! already, and without the grace a flood of new connections would evict
//! each other (and the probe among them) before any was read.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

/// How long a connection may be idle before it can be evicted.
pub const GRACE: Duration = Duration::from_millis(20);

/// A connection's request count while it may be evicted, or `EVICTED`.
const EVICTED: usize = usize::MAX;

/// Every open connection, and a wake-up for the accept loop when one
/// closes or goes idle.
pub struct Slots {
    base: Instant,
    open: AtomicUsize,
    next_id: AtomicUsize,
    conns: Mutex<BTreeMap<usize, Arc<Conn>>>,
    freed: Arc<Notify>,
}

impl Default for Slots {
    fn default() -> Self {
        Slots {
            base: Instant::now(),
            open: AtomicUsize::new(0),
            next_id: AtomicUsize::new(0),
            conns: Mutex::new(BTreeMap::new()),
            freed: Arc::new(Notify::new()),
        }
    }
}

/// One connection as the slots see it.
pub struct Conn {
    base: Instant,
    /// Requests in progress (from a complete request head until the
    /// response body is sent), or `EVICTED`.
    requests: AtomicUsize,
    /// Since when it has had no request in progress (µs after `base`).
    idle_since: AtomicU64,
    /// Told when the connection is evicted; its task then drops it.
    pub evicted: Notify,
    /// The slots' `freed`: told when this connection's requests are over,
    /// so a client waiting at the cap can take its place.
    idle: Arc<Notify>,
}

impl Conn {
    fn mark_idle(&self) {
        let us = self.base.elapsed().as_micros() as u64;
        self.idle_since.store(us, Ordering::Release);
    }
}

/// What `Slots::evict` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// A connection was told to close.
    Evicted,
    /// None is idle for `GRACE` yet; one will be at this instant.
    NotBefore(Instant),
    /// Every connection is in a request.
    Nobody,
}

/// Of `(id, idle since)` of the connections not in a request, the one to
/// evict at `now` (idle the longest, for at least `GRACE`), or when one
/// will be due.
fn choose(
    idle: impl Iterator<Item = (usize, Instant)>,
    now: Instant,
) -> Result<usize, Option<Instant>> {
    let Some((id, since)) = idle.min_by_key(|c| c.1) else {
        return Err(None);
    };
    if now.saturating_duration_since(since) >= GRACE {
        Ok(id)
    } else {
        Err(Some(since + GRACE))
    }
}

impl Slots {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves when a connection closes or finishes its requests (or did
    /// since the last call).
    pub async fn freed(&self) {
        self.freed.notified().await
    }

    /// Evicts the connection idle the longest, if for at least `GRACE`.
    pub fn evict(&self, now: Instant) -> Eviction {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // One pass, no allocation: this runs once per new client at
            // the cap, over up to api.max_connections connections.
            let idle = conns
                .iter()
                .filter(|(_, c)| c.requests.load(Ordering::Acquire) == 0)
                .map(|(&id, c)| {
                    let us = c.idle_since.load(Ordering::Acquire);
                    (id, self.base + Duration::from_micros(us))
                });
            let id = match choose(idle, now) {
                Ok(id) => id,
                Err(Some(at)) => return Eviction::NotBefore(at),
                Err(None) => return Eviction::Nobody,
            };
            let c = &conns[&id];
            // A request may have begun since: then look again.
            if c.requests
                .compare_exchange(0, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if let Some(c) = conns.remove(&id) {
                    c.evicted.notify_one();
                }
                return Eviction::Evicted;
            }
        }
    }
}

/// One open connection's share of `Slots`; dropping it frees the slot.
pub struct Slot {
    slots: Arc<Slots>,
    id: usize,
    pub conn: Arc<Conn>,
}

impl Slot {
    pub fn take(slots: &Arc<Slots>) -> Slot {
        slots.open.fetch_add(1, Ordering::AcqRel);
        let id = slots.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            base: slots.base,
            requests: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            evicted: Notify::new(),
            idle: slots.freed.clone(),
        });
        conn.mark_idle();
        slots
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, conn.clone());
        Slot {
            slots: slots.clone(),
            id,
            conn,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
        // Only the accept loop waits; with nobody waiting the permit is
        // stored, so a slot freed between its check and its wait is not lost.
        self.slots.freed.notify_one();
    }
}

/// A request in progress on a connection: while one lives, the connection
/// is not evicted. None when the connection was evicted first.
pub struct InRequest(Arc<Conn>);

impl InRequest {
    pub fn begin(conn: &Arc<Conn>) -> Option<InRequest> {
        conn.requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n != EVICTED).then(|| n + 1)
            })
            .ok()
            .map(|_| InRequest(conn.clone()))
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        if self.0.requests.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.mark_idle();
            self.0.idle.notify_one();
        }
    }
}

/// A response body that keeps its request in progress until hyper has
/// sent (or dropped) it: an event stream is a request for its whole life.
pub struct Tracked<B> {
    body: B,
    _request: Option<InRequest>,
}

impl<B> Tracked<B> {
    pub fn new(body: B, request: Option<InRequest>) -> Self {
        Tracked {
            body,
            _request: request,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_idle_longest_goes_once_idle_for_the_grace() {
        let t0 = Instant::now();
        let idle = [(7, t0 + GRACE), (3, t0), (9, t0 + GRACE * 3)];
        assert_eq!(choose(idle.into_iter(), t0 + GRACE), Ok(3));
        assert_eq!(
            choose(idle.into_iter(), t0 + GRACE / 2),
            Err(Some(t0 + GRACE))
        );
        assert_eq!(choose(std::iter::empty(), t0), Err(None));
    }

    #[test]
    fn a_connection_in_a_request_is_never_evicted() {
        let slots = Arc::new(Slots::default());
        let a = Slot::take(&slots);
        let b = Slot::take(&slots);
        let later = Instant::now() + GRACE;
        // Both new: none is due before the grace.
        assert!(matches!(
            slots.evict(Instant::now()),
            Eviction::NotBefore(_)
        ));
        let busy = InRequest::begin(&a.conn).unwrap();
        assert_eq!(slots.evict(later), Eviction::Evicted);
        assert!(InRequest::begin(&b.conn).is_none(), "b was evicted");
        assert_eq!(slots.evict(later), Eviction::Nobody, "a is in a request");
        drop(busy);
        // a just finished its request: idle again from now.
        assert!(matches!(
            slots.evict(Instant::now()),
            Eviction::NotBefore(_)
        ));
        assert_eq!(slots.evict(Instant::now() + GRACE), Eviction::Evicted);
        drop((a, b));
        assert_eq!(slots.open(), 0);
    }

    #[test]
    fn a_request_that_began_first_keeps_its_connection() {
        let slots = Arc::new(Slots::default());
        let a = Slot::take(&slots);
        let later = Instant::now() + GRACE;
        let r1 = InRequest::begin(&a.conn).unwrap();
        let r2 = InRequest::begin(&a.conn).unwrap();
        drop(r1);
        assert_eq!(
            slots.evict(later),
            Eviction::Nobody,
            "one request is still on"
        );
        drop(r2);
        assert_eq!(slots.evict(Instant::now() + GRACE), Eviction::Evicted);
    }
}
