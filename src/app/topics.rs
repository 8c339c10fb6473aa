//! Which subjects the event streams (GET /api/v1/subscribe) follow now:
//! every client of one subject string shares one subscription and one
//! dispatcher task (`http::sse::topic`), started by the subject's first
//! client and ended when its last one leaves.
//!
//! Membership is counted here, under one lock, so a client that joins
//! while the last one leaves either finds the topic still counted (and the
//! dispatcher keeps running for it) or finds none and starts a new one;
//! it never joins a topic whose dispatcher is about to stop.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

/// What a dispatcher holds of one client: the queue its response body
/// reads, the bytes in that queue now, and how many it may hold
/// (`api.sse_buffer` when it joined).
pub struct Lane {
    pub tx: mpsc::UnboundedSender<Bytes>,
    pub queued: Arc<AtomicUsize>,
    pub budget: usize,
}

/// A client's place in one topic; give it back to [`Topics::leave`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub subject: String,
    /// Which topic of that subject: a later one of the same subject has
    /// another id, so a late leave cannot end it.
    pub id: u64,
}

/// The dispatcher's end of a new topic: the clients that join it.
pub type Joins<J> = mpsc::UnboundedReceiver<J>;

struct Entry<J> {
    id: u64,
    /// The NATS client generation whose subscription the topic reads.
    gen: u64,
    members: usize,
    /// The only sender: when the entry goes, the dispatcher's `Joins`
    /// end, and so does the dispatcher.
    joins: mpsc::UnboundedSender<J>,
}

struct Inner<J> {
    map: HashMap<String, Entry<J>>,
    next_id: u64,
}

/// The running topics by subject. `J` is what a joining client hands its
/// topic's dispatcher (a [`Lane`] in the daemon).
pub struct Topics<J> {
    inner: Mutex<Inner<J>>,
}

impl<J> Default for Topics<J> {
    fn default() -> Self {
        Topics {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                next_id: 1,
            }),
        }
    }
}

impl<J> Inner<J> {
    /// Hands `j` to the running topic of `subject` on client generation
    /// `gen`; gives it back when there is none.
    fn join(&mut self, subject: &str, gen: u64, j: J) -> Result<Ticket, J> {
        let Some(e) = self.map.get_mut(subject).filter(|e| e.gen == gen) else {
            return Err(j);
        };
        match e.joins.send(j) {
            Ok(()) => {
                e.members += 1;
                Ok(Ticket {
                    subject: subject.to_string(),
                    id: e.id,
                })
            }
            // The dispatcher is gone without saying so (it panicked):
            // forget it, a new one starts.
            Err(mpsc::error::SendError(j)) => {
                self.map.remove(subject);
                Err(j)
            }
        }
    }
}

impl<J> Topics<J> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<J>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the running topic of `subject` (reading client generation
    /// `gen`'s subscription); `Err(j)` when there is none: then subscribe
    /// and [`start`](Self::start) one.
    pub fn join(&self, subject: &str, gen: u64, j: J) -> Result<Ticket, J> {
        self.lock().join(subject, gen, j)
    }

    /// Starts the topic of `subject` with `j` as its first member, unless
    /// another client started one meanwhile: then `j` joins that, and the
    /// answer has no `Joins` (drop the subscription made for nothing).
    /// A topic of an older client generation is replaced: its dispatcher
    /// sees its joins end and stops.
    pub fn start(&self, subject: &str, gen: u64, j: J) -> (Ticket, Option<Joins<J>>) {
        let mut inner = self.lock();
        let j = match inner.join(subject, gen, j) {
            Ok(t) => return (t, None),
            Err(j) => j,
        };
        let id = inner.next_id;
        inner.next_id += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        // The receiver is right here: the send cannot fail.
        let _ = tx.send(j);
        inner.map.insert(
            subject.to_string(),
            Entry {
                id,
                gen,
                members: 1,
                joins: tx,
            },
        );
        (
            Ticket {
                subject: subject.to_string(),
                id,
            },
            Some(rx),
        )
    }

    /// A client is gone; the last one of a topic ends it.
    pub fn leave(&self, t: &Ticket) {
        let mut inner = self.lock();
        if let Some(e) = inner.map.get_mut(&t.subject).filter(|e| e.id == t.id) {
            e.members -= 1;
            if e.members == 0 {
                inner.map.remove(&t.subject);
            }
        }
    }

    /// The dispatcher of topic `id` stopped on its own (its subscription
    /// ended, the daemon stops): clients that come later start a new one.
    pub fn end(&self, subject: &str, id: u64) {
        let mut inner = self.lock();
        if inner.map.get(subject).is_some_and(|e| e.id == id) {
            inner.map.remove(subject);
        }
    }

    /// Ends every topic (the daemon's NATS client was replaced): each
    /// dispatcher sees its joins end and tells its clients to reconnect.
    pub fn retire_all(&self) {
        self.lock().map.clear();
    }

    /// Topics running now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_of_one_subject_share_a_topic_and_the_last_one_out_ends_it() {
        let t = Topics::default();
        assert_eq!(t.join("a.>", 1, 10), Err(10), "nothing runs yet");
        let (first, joins) = t.start("a.>", 1, 10);
        let mut joins = joins.expect("a new topic");
        let second = t.join("a.>", 1, 11).unwrap();
        assert_eq!(first, second);
        assert_eq!(joins.try_recv().ok(), Some(10));
        assert_eq!(joins.try_recv().ok(), Some(11));
        // Another subject string is another topic, even where they overlap.
        let (other, _j) = t.start("a.b", 1, 12);
        assert_ne!(other.id, first.id);
        assert_eq!(t.len(), 2);

        t.leave(&first);
        assert_eq!(t.len(), 2, "one client of a.> is left");
        assert!(joins.try_recv().is_err());
        t.leave(&second);
        assert_eq!(t.len(), 1);
        assert!(
            matches!(
                joins.try_recv(),
                Err(mpsc::error::TryRecvError::Disconnected)
            ),
            "the dispatcher sees its joins end"
        );
    }

    #[test]
    fn a_client_that_comes_after_the_last_one_left_starts_a_new_topic() {
        let t = Topics::default();
        let (a, _old) = t.start("s", 1, 1);
        t.leave(&a);
        assert_eq!(t.join("s", 1, 2), Err(2));
        let (b, new) = t.start("s", 1, 2);
        assert!(new.is_some());
        assert_ne!(a.id, b.id);
        // A second leave of the first topic's ticket cannot end the new one.
        t.leave(&a);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn of_two_clients_starting_the_same_subject_the_second_joins_the_first() {
        let t = Topics::default();
        let (a, first) = t.start("s", 1, 1);
        let (b, second) = t.start("s", 1, 2);
        assert!(first.is_some());
        assert!(second.is_none(), "its own subscription is not needed");
        assert_eq!(a, b);
        t.leave(&a);
        assert_eq!(t.len(), 1, "b still follows it");
        t.leave(&b);
        assert!(t.is_empty());
    }

    #[test]
    fn an_ended_topic_is_not_joined_and_late_leaves_do_not_touch_its_successor() {
        let t = Topics::default();
        let (a, _j) = t.start("s", 1, 1);
        t.end("s", a.id);
        assert_eq!(t.join("s", 1, 2), Err(2));
        let (b, _j2) = t.start("s", 1, 2);
        t.leave(&a);
        t.end("s", a.id);
        assert_eq!(t.len(), 1);
        t.leave(&b);
        assert!(t.is_empty());
    }

    #[test]
    fn a_topic_of_a_replaced_client_is_not_joined_but_replaced() {
        let t = Topics::default();
        let (a, old) = t.start("s", 1, 1);
        let mut old = old.unwrap();
        assert_eq!(old.try_recv().ok(), Some(1));
        assert_eq!(t.join("s", 2, 2), Err(2));
        let (b, new) = t.start("s", 2, 2);
        assert!(new.is_some());
        assert!(
            matches!(old.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)),
            "the old dispatcher stops"
        );
        t.leave(&a);
        assert_eq!(
            t.len(),
            1,
            "the old topic's clients leaving leave the new one be"
        );
        t.leave(&b);
        assert!(t.is_empty());
    }

    #[test]
    fn retiring_ends_every_topic() {
        let t = Topics::default();
        let (_, a) = t.start("a", 1, 1);
        let (_, b) = t.start("b", 1, 2);
        t.retire_all();
        assert!(t.is_empty());
        for mut j in [a.unwrap(), b.unwrap()] {
            assert!(j.try_recv().is_ok(), "its first client");
            assert!(matches!(
                j.try_recv(),
                Err(mpsc::error::TryRecvError::Disconnected)
            ));
        }
    }

    #[test]
    fn a_topic_whose_dispatcher_died_is_replaced() {
        let t = Topics::default();
        let (a, j) = t.start("s", 1, 1);
        drop(j);
        assert_eq!(t.join("s", 1, 2), Err(2));
        let (b, j) = t.start("s", 1, 2);
        assert!(j.is_some());
        assert_ne!(a.id, b.id);
    }
}
