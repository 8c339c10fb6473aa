//! One client's byte budget and its losses: whether the next event goes
//! to it or is dropped, and when it is told how many it lost. Pure: the
//! fan-out (`topic`) holds one per client and says how many bytes wait in
//! the client's queue.
//!
//! A client never has more than `api.sse_buffer` bytes queued, except one
//! event bigger than that, which goes when nothing else waits. What it
//! loses is announced by a `dropped` event before the next message it gets
//! (room for the notice is kept beside that message), or at a heartbeat.

use super::event::DROPPED_MAX;

#[derive(Debug, Clone)]
pub struct Ledger {
    budget: usize,
    /// Messages lost since the client was last told.
    unannounced: u64,
}

/// What becomes of one event for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// It goes, after a `dropped` notice of this many when not 0.
    Send { notice: u64 },
    /// It is dropped (and counted for the next notice).
    Drop,
}

impl Ledger {
    pub fn new(budget: usize) -> Self {
        Ledger {
            budget,
            unannounced: 0,
        }
    }

    /// Whether `len` more bytes fit beside `queued`: one event always fits
    /// an empty queue, however big.
    fn fits(&self, queued: usize, len: usize) -> bool {
        queued == 0 || queued.saturating_add(len) <= self.budget
    }

    /// Whether an event of at least `min_len` bytes would be dropped now:
    /// then the fan-out need not encode it to know (call `lose`).
    pub fn refuses(&self, queued: usize, min_len: usize) -> bool {
        let room = if self.unannounced > 0 { DROPPED_MAX } else { 0 };
        !self.fits(queued, min_len.saturating_add(room))
    }

    /// Whether `n` events of `total` bytes would all go, one by one, with
    /// no notice due: then they go at once. The same answer as `n` offers.
    pub fn takes_all(&self, queued: usize, total: usize, n: usize) -> bool {
        match n {
            0 => true,
            _ if self.unannounced > 0 => false,
            1 => self.fits(queued, total),
            _ => queued.saturating_add(total) <= self.budget,
        }
    }

    /// One event of `len` bytes for a client with `queued` bytes waiting.
    pub fn offer(&mut self, queued: usize, len: usize) -> Offer {
        let room = if self.unannounced > 0 { DROPPED_MAX } else { 0 };
        if self.fits(queued, len.saturating_add(room)) {
            Offer::Send {
                notice: std::mem::take(&mut self.unannounced),
            }
        } else {
            self.unannounced += 1;
            Offer::Drop
        }
    }

    /// `n` messages this client will not get (it was full, or the fan-out
    /// skipped them for every client): told with the next notice.
    pub fn lose(&mut self, n: u64) {
        self.unannounced += n;
    }

    /// At a heartbeat: the notice to send instead of the heartbeat
    /// comment, if one is due and fits.
    pub fn at_heartbeat(&mut self, queued: usize) -> Option<u64> {
        (self.unannounced > 0 && self.fits(queued, DROPPED_MAX))
            .then(|| std::mem::take(&mut self.unannounced))
    }

    /// Lost and not told yet.
    #[cfg(test)]
    pub fn unannounced(&self) -> u64 {
        self.unannounced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_go_while_they_fit_the_budget_and_one_always_fits_an_empty_queue() {
        let mut l = Ledger::new(100);
        assert_eq!(
            l.offer(0, 500),
            Offer::Send { notice: 0 },
            "bigger than the budget, but nothing waits"
        );
        assert_eq!(l.offer(60, 40), Offer::Send { notice: 0 });
        assert_eq!(l.offer(60, 41), Offer::Drop);
        assert_eq!(l.offer(100, 1), Offer::Drop);
        assert_eq!(l.unannounced(), 2);
    }

    #[test]
    fn the_next_event_that_goes_carries_the_count_of_those_that_did_not() {
        let mut l = Ledger::new(1000);
        for _ in 0..3 {
            assert_eq!(l.offer(990, 50), Offer::Drop);
        }
        // It fits on its own, but not with room for the notice.
        assert_eq!(l.offer(1000 - 50 - DROPPED_MAX + 1, 50), Offer::Drop);
        assert_eq!(
            l.offer(1000 - 50 - DROPPED_MAX, 50),
            Offer::Send { notice: 4 }
        );
        assert_eq!(l.offer(0, 50), Offer::Send { notice: 0 }, "told once");
    }

    #[test]
    fn what_is_refused_by_its_least_size_is_dropped_whatever_its_size() {
        for lost in [0, 1] {
            let mut l = Ledger::new(1000);
            l.lose(lost);
            for q in [0, 1, 500, 999, 1000, 5000] {
                for min in [1, 50, 900, 10_000] {
                    if !l.refuses(q, min) {
                        continue;
                    }
                    for len in [min, min + 1, min * 3] {
                        assert_eq!(
                            l.clone().offer(q, len),
                            Offer::Drop,
                            "q {q} min {min} len {len}"
                        );
                    }
                }
            }
            assert!(
                !l.refuses(0, 1 << 30),
                "an empty queue takes one event of any size"
            );
            assert!(l.refuses(1000, 1));
            assert_eq!(l.refuses(500, 400), lost > 0, "the notice needs room too");
        }
    }

    #[test]
    fn taking_all_at_once_is_the_same_as_offering_one_by_one() {
        for budget in [1, 100, 250] {
            for queued in [0, 1, 50, 99, 100, 200] {
                for lens in [
                    vec![],
                    vec![10],
                    vec![300],
                    vec![40, 60],
                    vec![50, 50, 1],
                    vec![120, 1],
                ] {
                    for lost in [0, 2] {
                        let mut l = Ledger::new(budget);
                        l.lose(lost);
                        let total: usize = lens.iter().sum();
                        let all = l.takes_all(queued, total, lens.len());
                        let mut one = l.clone();
                        let mut q = queued;
                        let each = lens.iter().all(|&len| {
                            let o = one.offer(q, len);
                            q += len;
                            o == Offer::Send { notice: 0 }
                        });
                        assert_eq!(
                            all, each,
                            "budget {budget} queued {queued} lens {lens:?} lost {lost}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn losses_are_told_at_a_heartbeat_when_the_notice_fits() {
        let mut l = Ledger::new(1000);
        assert_eq!(l.at_heartbeat(0), None, "nothing lost: a plain heartbeat");
        l.lose(7);
        assert_eq!(l.at_heartbeat(1000), None, "no room");
        assert_eq!(l.unannounced(), 7);
        assert_eq!(l.at_heartbeat(0), Some(7));
        assert_eq!(l.at_heartbeat(0), None);
        assert_eq!(l.offer(0, 10), Offer::Send { notice: 0 });
    }
}
