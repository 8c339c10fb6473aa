//! One subject's fan-out: the task that reads the subject's one
//! subscription (on the event streams' own connection) and gives every
//! client of that subject each message, encoded once, within the client's
//! byte budget (`ledger`); the heartbeats; the last event when it ends.
//!
//! Per message and client it does next to nothing: a look at the bytes the
//! client has queued, then one queue push of the shared event (or a count
//! of a drop). Messages are taken in batches, whatever waits, and handed
//! out `CHUNK` at a time; a chunk no client has room for is never encoded.
//!
//! Ids: one sequence per topic, counting every message its subscription
//! delivers. Clients of one subject see the same id for the same message;
//! a client's ids only go up; between two of its messages the gap in ids
//! is exactly what the `dropped` events between them count. A client that
//! joins a running topic starts at the topic's next id, not at 1.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

use super::body::Member;
use super::event;
use super::ledger::{Ledger, Offer};
use crate::app::{App, Joins, Lane, Resumed, Ticket, EVENTS_CAPACITY};

/// Messages the fan-out lets wait: when more are waiting in its
/// subscription it has fallen behind (the daemon is short of CPU), and
/// instead of letting async-nats drop at EVENTS_CAPACITY without a word it
/// skips the oldest itself, each counted for every client of the subject
/// (`sse_dropped`) and announced to it in a `dropped` event, and goes on
/// with the newest this many. Taking and skipping a message costs next to
/// nothing, so it catches up at once. 8 times less than EVENTS_CAPACITY:
/// async-nats only drops if the task does not run at all while that many
/// messages arrive.
pub const SHED_AFTER: usize = EVENTS_CAPACITY / 8;

/// Messages encoded and handed out together, fewer when their payloads
/// pass CHUNK_BYTES: bounds the encoded events held at once beyond what
/// the clients' budgets hold.
const CHUNK: usize = 64;
const CHUNK_BYTES: usize = 256 * 1024;

/// Puts `lane` on the topic of `subject`: the running one, or a new one
/// reading a new subscription on `events` (the event streams' connection
/// of client generation `gen`, which says on `resumed` when it came back
/// after being down).
pub async fn join(
    app: &Arc<App>,
    events: &async_nats::Client,
    resumed: tokio::sync::watch::Receiver<Resumed>,
    gen: u64,
    subject: &str,
    lane: Lane,
) -> Result<Member, async_nats::SubscribeError> {
    let lane = match app.sse_topics.join(subject, gen, lane) {
        Ok(t) => return Ok(Member(app.clone(), t)),
        Err(lane) => lane,
    };
    let sub = events.subscribe(subject.to_string()).await?;
    let (ticket, joins) = app.sse_topics.start(subject, gen, lane);
    match joins {
        Some(joins) => {
            tokio::spawn(run(app.clone(), ticket.clone(), sub, joins, resumed));
        }
        // Another client started it meanwhile: this subscription is not
        // needed (dropping it unsubscribes).
        None => drop(sub),
    }
    Ok(Member(app.clone(), ticket))
}

/// One client as the fan-out sees it.
struct Client {
    lane: Lane,
    ledger: Ledger,
}

/// Messages sent and dropped, summed over the clients, added to the
/// daemon's counters once per batch.
#[derive(Default)]
struct Tally {
    sent: u64,
    dropped: u64,
}

impl Client {
    fn new(lane: Lane) -> Self {
        let ledger = Ledger::new(lane.budget);
        Client { lane, ledger }
    }

    /// Queues `b`; false once the client is gone.
    fn send(&self, b: Bytes) -> bool {
        self.lane.queued.fetch_add(b.len(), Relaxed);
        self.lane.tx.send(b).is_ok()
    }

    /// Offers `events` (`total` bytes) to the client, which has `queued`
    /// bytes waiting; false once it is gone.
    fn hand(&mut self, events: &[Bytes], total: usize, queued: usize, tally: &mut Tally) -> bool {
        if self.ledger.takes_all(queued, total, events.len()) {
            // Added before they are sent: the body subtracts as it takes.
            self.lane.queued.fetch_add(total, Relaxed);
            for e in events {
                if self.lane.tx.send(e.clone()).is_err() {
                    return false;
                }
            }
            tally.sent += events.len() as u64;
            return true;
        }
        if self.lane.tx.is_closed() {
            return false;
        }
        let mut q = queued;
        for e in events {
            match self.ledger.offer(q, e.len()) {
                Offer::Drop => tally.dropped += 1,
                Offer::Send { notice } => {
                    if notice > 0 {
                        let n = event::dropped(notice);
                        q += n.len();
                        if !self.send(n) {
                            return false;
                        }
                    }
                    q += e.len();
                    if !self.send(e.clone()) {
                        return false;
                    }
                    tally.sent += 1;
                }
            }
        }
        true
    }
}

/// How a topic ended: what its clients are told last.
enum End {
    Shutdown,
    /// The subscription ended, or the topic was retired because the
    /// daemon's NATS client was replaced (when it ended because its last
    /// client left, nobody is there to read this).
    Ended,
}

/// The fan-out of topic `t` until the daemon stops, its subscription ends
/// or its joins end (its last client left, or it was retired).
async fn run(
    app: Arc<App>,
    t: Ticket,
    mut sub: async_nats::Subscriber,
    mut joins: Joins<Lane>,
    mut resumed: tokio::sync::watch::Receiver<Resumed>,
) {
    let mut resumes = true;
    // Only outages from now on concern this topic's clients.
    resumed.borrow_and_update();
    let mut clients: Vec<Client> = Vec::new();
    let mut seq = 0u64;
    let mut waiting: VecDeque<async_nats::Message> = VecDeque::new();
    let mut period = app.config().api.sse_heartbeat.get();
    let mut tick = heartbeats(period);
    let mut closing = app.closing.subscribe();
    let end = loop {
        tokio::select! {
            // Joins before messages: a client that joined before a message
            // was published is handed that message.
            biased;
            _ = crate::flag_set(&mut closing) => break End::Shutdown,
            j = joins.recv() => match j {
                Some(lane) => clients.push(Client::new(lane)),
                None => break End::Ended,
            },
            // Before the messages that follow the outage, when it can.
            r = resumed.changed(), if resumes => match r {
                Ok(()) => {
                    let down_for = resumed.borrow_and_update().down_for;
                    let notice = event::interrupted(down_for);
                    clients.retain(|c| c.send(notice.clone()));
                }
                // The client was replaced: the topic is retired.
                Err(_) => resumes = false,
            },
            // Before messages: a busy subject must not starve heartbeats
            // (they also carry the notices of clients that get nothing).
            _ = tick.tick() => {
                beat(&mut clients);
                // A reload may have changed the period.
                let now = app.config().api.sse_heartbeat.get();
                if now != period {
                    period = now;
                    tick = heartbeats(period);
                }
            }
            // Unconstrained: tokio's budget would stop the take after 128
            // messages, leaving the rest to look like a backlog.
            taken = tokio::task::unconstrained(std::future::poll_fn(|cx| take(&mut sub, &mut waiting, cx))) => {
                let (skipped, ended) = taken;
                // Whoever joined until now gets these messages: the ones
                // published after it got `subscribed` are among them.
                while let Ok(lane) = joins.try_recv() {
                    clients.push(Client::new(lane));
                }
                let tally = fan_out(&mut clients, &mut seq, skipped, &mut waiting);
                app.stats.consumed.fetch_add(tally.sent, Relaxed);
                app.stats.sse_dropped.fetch_add(tally.dropped, Relaxed);
                if ended {
                    break End::Ended;
                }
            }
        }
    };
    // No client joins from here on; those already on their way are told
    // too.
    app.sse_topics.end(&t.subject, t.id);
    joins.close();
    while let Ok(lane) = joins.try_recv() {
        clients.push(Client::new(lane));
    }
    let last = match end {
        End::Shutdown => event::event(
            "shutdown",
            None,
            &json!({"message": "the broker is stopping"}),
        ),
        End::Ended => event::event(
            "error",
            None,
            &json!({"message": "the subscription ended (the daemon's connection to nats-server was replaced or closed); reconnect"}),
        ),
    };
    for c in &clients {
        c.send(last.clone());
    }
    // Dropping the subscriber unsubscribes; dropping the lanes ends the
    // streams once their bodies took what is queued.
}

fn heartbeats(period: std::time::Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// A heartbeat to every client, or the notice of what it lost when that is
/// due and fits; forgets the clients that are gone.
fn beat(clients: &mut Vec<Client>) {
    clients.retain_mut(|c| {
        let b = match c.ledger.at_heartbeat(c.lane.queued.load(Relaxed)) {
            Some(n) => event::dropped(n),
            None => event::HEARTBEAT,
        };
        c.send(b)
    });
}

/// Takes every message waiting in `sub` into `waiting`, keeping the newest
/// SHED_AFTER: how many older ones it skipped, and whether the
/// subscription ended. Pending while nothing waits.
fn take(
    sub: &mut async_nats::Subscriber,
    waiting: &mut VecDeque<async_nats::Message>,
    cx: &mut Context<'_>,
) -> Poll<(u64, bool)> {
    let mut skipped = 0;
    let mut ended = false;
    // At most twice what the subscription holds: messages that keep
    // arriving while it takes cannot keep it here.
    for _ in 0..2 * EVENTS_CAPACITY {
        match sub.poll_next_unpin(cx) {
            Poll::Ready(Some(m)) => skipped += keep_newest(waiting, m, SHED_AFTER),
            Poll::Ready(None) => {
                ended = true;
                break;
            }
            Poll::Pending => break,
        }
    }
    if waiting.is_empty() && skipped == 0 && !ended {
        Poll::Pending
    } else {
        Poll::Ready((skipped, ended))
    }
}

/// Appends `item`, dropping the oldest when `q` holds `cap`: 1 when it did.
fn keep_newest<T>(q: &mut VecDeque<T>, item: T, cap: usize) -> u64 {
    let full = q.len() >= cap;
    if full {
        q.pop_front();
    }
    q.push_back(item);
    u64::from(full)
}

/// Hands the `waiting` messages (after `skipped` older ones) to every
/// client, CHUNK at a time; forgets the clients that are gone.
fn fan_out(
    clients: &mut Vec<Client>,
    seq: &mut u64,
    skipped: u64,
    waiting: &mut VecDeque<async_nats::Message>,
) -> Tally {
    let mut tally = Tally::default();
    if skipped > 0 {
        *seq += skipped;
        for c in clients.iter_mut() {
            c.ledger.lose(skipped);
        }
        tally.dropped += skipped * clients.len() as u64;
    }
    let mut events: Vec<Bytes> = Vec::with_capacity(CHUNK);
    while !waiting.is_empty() {
        // The chunk: up to CHUNK messages, or fewer whose payloads pass
        // CHUNK_BYTES (at least one).
        let mut n = 0;
        let mut bytes = 0;
        let mut min_len = usize::MAX;
        for m in waiting.iter().take(CHUNK) {
            if n > 0 && bytes + m.payload.len() > CHUNK_BYTES {
                break;
            }
            n += 1;
            bytes += m.payload.len();
            min_len = min_len.min(event::min_len(m));
        }
        let first_id = *seq + 1;
        *seq += n as u64;
        events.clear();
        let mut total = 0;
        clients.retain_mut(|c| {
            let queued = c.lane.queued.load(Relaxed);
            if c.ledger.refuses(queued, min_len) {
                // No room for the least of them: all dropped, unencoded.
                if c.lane.tx.is_closed() {
                    return false;
                }
                c.ledger.lose(n as u64);
                tally.dropped += n as u64;
                return true;
            }
            if events.is_empty() {
                events.extend(
                    waiting
                        .iter()
                        .take(n)
                        .zip(first_id..)
                        .map(|(m, id)| event::message(id, m)),
                );
                total = events.iter().map(Bytes::len).sum();
            }
            c.hand(&events, total, queued, &mut tally)
        });
        waiting.drain(..n);
    }
    // What a burst grew it to is not kept for the topic's life.
    if waiting.capacity() > 16 * CHUNK {
        waiting.shrink_to(CHUNK);
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::mpsc;

    fn message(subject: &str, payload: &'static [u8]) -> async_nats::Message {
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: Bytes::from_static(payload),
            headers: None,
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    fn client(budget: usize) -> (Client, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let lane = Lane {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            budget,
        };
        (Client::new(lane), rx)
    }

    /// (name, id, data) of each event queued.
    fn events(
        rx: &mut mpsc::UnboundedReceiver<Bytes>,
    ) -> Vec<(String, Option<u64>, serde_json::Value)> {
        let mut out = Vec::new();
        while let Ok(b) = rx.try_recv() {
            let text = String::from_utf8(b.to_vec()).unwrap();
            let (mut name, mut id, mut data) =
                ("message".to_string(), None, serde_json::Value::Null);
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.into();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).unwrap();
                }
            }
            out.push((name, id, data));
        }
        out
    }

    #[test]
    fn keeping_the_newest_counts_what_it_skips() {
        let mut q = VecDeque::new();
        let skipped: u64 = (1..=10).map(|i| keep_newest(&mut q, i, 4)).sum();
        assert_eq!(skipped, 6);
        assert_eq!(q, [7, 8, 9, 10]);
    }

    #[test]
    fn every_client_gets_every_message_with_the_topics_ids() {
        let (a, mut ra) = client(1 << 20);
        let (b, mut rb) = client(1 << 20);
        let mut clients = vec![a, b];
        let mut seq = 5;
        let mut waiting: VecDeque<_> = (0..150).map(|_| message("s", b"{\"p\":1}")).collect();
        let tally = fan_out(&mut clients, &mut seq, 0, &mut waiting);
        assert_eq!((tally.sent, tally.dropped), (300, 0));
        assert_eq!(seq, 155);
        for rx in [&mut ra, &mut rb] {
            let ids: Vec<_> = events(rx).into_iter().map(|e| e.1.unwrap()).collect();
            assert_eq!(ids, (6..=155).collect::<Vec<_>>());
        }
        assert!(waiting.is_empty());
    }

    #[test]
    fn a_full_client_loses_messages_a_fast_one_gets_and_is_told_how_many() {
        let (fast, mut rf) = client(1 << 20);
        let (slow, mut rs) = client(1000);
        slow.lane.queued.store(990, Relaxed);
        let mut clients = vec![fast, slow];
        let mut seq = 0;
        let mut waiting: VecDeque<_> = (0..100).map(|_| message("s", b"\"xxxxxxxxxx\"")).collect();
        let tally = fan_out(&mut clients, &mut seq, 0, &mut waiting);
        assert_eq!((tally.sent, tally.dropped), (100, 100));
        assert_eq!(events(&mut rf).len(), 100);
        assert!(events(&mut rs).is_empty());
        assert_eq!(clients[1].ledger.unannounced(), 100);

        // The slow client read it all: the notice, then the next message.
        clients[1].lane.queued.store(0, Relaxed);
        waiting.push_back(message("s", b"1"));
        let tally = fan_out(&mut clients, &mut seq, 0, &mut waiting);
        assert_eq!((tally.sent, tally.dropped), (2, 0));
        let got = events(&mut rs);
        assert_eq!(got[0].0, "dropped");
        assert_eq!(got[0].2["dropped"], 100);
        assert_eq!(
            (got[1].0.as_str(), got[1].1),
            ("message", Some(101)),
            "the gap is what was announced"
        );
    }

    #[test]
    fn skipped_messages_are_counted_for_every_client_and_announced_first() {
        let (a, mut ra) = client(1 << 20);
        let (b, mut rb) = client(1 << 20);
        let mut clients = vec![a, b];
        let mut seq = 0;
        let mut waiting: VecDeque<_> = [message("s", b"1")].into();
        let tally = fan_out(&mut clients, &mut seq, 3, &mut waiting);
        assert_eq!((tally.sent, tally.dropped), (2, 6));
        for rx in [&mut ra, &mut rb] {
            let got = events(rx);
            assert_eq!(
                (got[0].0.as_str(), &got[0].2["dropped"]),
                ("dropped", &json!(3))
            );
            assert_eq!(got[1].1, Some(4));
        }
    }

    #[test]
    fn a_client_that_left_is_forgotten_and_not_counted() {
        let (a, ra) = client(1 << 20);
        let (b, rb) = client(100);
        b.lane.queued.store(100, Relaxed);
        drop((ra, rb));
        let mut clients = vec![a, b];
        let mut waiting: VecDeque<_> = [message("s", b"1")].into();
        let tally = fan_out(&mut clients, &mut 0, 0, &mut waiting);
        assert_eq!((tally.sent, tally.dropped), (0, 0));
        assert!(clients.is_empty());
    }

    #[test]
    fn heartbeats_carry_due_notices_when_they_fit() {
        let (a, mut ra) = client(1 << 20);
        let (b, mut rb) = client(1 << 20);
        let mut clients = vec![a, b];
        clients[1].ledger.lose(2);
        beat(&mut clients);
        assert_eq!(ra.try_recv().ok(), Some(event::HEARTBEAT));
        let got = events(&mut rb);
        assert_eq!(
            (got[0].0.as_str(), &got[0].2["dropped"]),
            ("dropped", &json!(2))
        );
    }
}
