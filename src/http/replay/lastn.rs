//! `last=N` (pure): the stream sequence from which exactly the last N
//! matching messages follow.
//!
//! JetStream has no "last N" delivery. What it tells is `num_pending` of a
//! consumer created at a start sequence: how many matching messages lie at
//! or after it. With gaps (a filter, deleted or expired messages) the
//! answer is not `last_seq - N + 1`, so the search probes: it tries that
//! sequence first (right at once for an unfiltered stream without gaps),
//! widens the window by the density it saw until it has a start with at
//! least N after it, then bisects. Any start with exactly N pending is an
//! answer: every such start hands out the same N messages.

/// Enough to bisect any u64 range twice over; a stream that grows during
/// the search could otherwise keep it going.
const MAX_PROBES: u32 = 130;

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Create a consumer starting here and report its `num_pending`.
    Probe(u64),
    /// Read from here.
    Start(u64),
}

#[derive(Debug, Clone)]
pub struct LastN {
    n: u64,
    first: u64,
    /// One past the stream's last sequence when the search began.
    end: u64,
    /// A start known to have more than N after it.
    lo: Option<u64>,
    /// A start known to have fewer than N after it.
    hi: u64,
    probes: u32,
}

impl LastN {
    /// The search over a stream holding `first_seq..=last_seq`, and its
    /// first step.
    pub fn new(n: u64, first_seq: u64, last_seq: u64) -> (LastN, Step) {
        let first = first_seq.max(1);
        let end = last_seq.saturating_add(1).max(first);
        let s = LastN {
            n,
            first,
            end,
            lo: None,
            hi: end,
            probes: 0,
        };
        // No more sequences than N: all of them (at most N messages).
        let step = if end - first <= n {
            Step::Start(first)
        } else {
            Step::Probe(end - n)
        };
        (s, step)
    }

    /// `pending` matching messages lie at or after `at`.
    pub fn observe(&mut self, at: u64, pending: u64) -> Step {
        self.probes += 1;
        if pending == self.n {
            return Step::Start(at);
        }
        if pending > self.n {
            self.lo = Some(self.lo.map_or(at, |lo| lo.max(at)));
        } else {
            if at <= self.first {
                // Fewer than N in the whole stream: all of them.
                return Step::Start(self.first);
            }
            self.hi = self.hi.min(at);
        }
        if self.probes >= MAX_PROBES {
            return Step::Start(self.lo.unwrap_or(self.first));
        }
        match self.lo {
            Some(lo) if self.hi <= lo + 1 => Step::Start(lo),
            Some(lo) => Step::Probe(lo + (self.hi - lo) / 2),
            None => {
                // Widen: the window [hi, end) held `pending` (< N) matching
                // messages; guess the width that holds N at that density,
                // with a margin, and at least twice as wide.
                let width = self.end - self.hi;
                let guess = if pending == 0 {
                    width.saturating_mul(4)
                } else {
                    (width as u128 * self.n as u128 * 5 / (pending as u128 * 4)) as u64
                };
                let wider = guess.max(width.saturating_mul(2)).max(self.n);
                Step::Probe(self.end.saturating_sub(wider).max(self.first))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search over a stream holding `seqs` (the matching
    /// messages' sequences) within first..=last; returns the start and the
    /// number of probes.
    fn run(seqs: &[u64], first: u64, last: u64, n: u64) -> (u64, u32) {
        let pending = |at: u64| seqs.iter().filter(|s| **s >= at).count() as u64;
        let (mut search, mut step) = LastN::new(n, first, last);
        let mut probes = 0;
        loop {
            match step {
                Step::Start(s) => return (s, probes),
                Step::Probe(at) => {
                    assert!(
                        (first..=last + 1).contains(&at),
                        "probe {at} outside {first}..={last}"
                    );
                    probes += 1;
                    step = search.observe(at, pending(at));
                }
            }
        }
    }

    /// What reading from `start` hands out must be exactly the last N.
    fn check(seqs: &[u64], first: u64, last: u64, n: u64) -> u32 {
        let (start, probes) = run(seqs, first, last, n);
        let got: Vec<u64> = seqs.iter().copied().filter(|s| *s >= start).collect();
        let want: Vec<u64> = seqs[seqs.len().saturating_sub(n as usize)..].to_vec();
        assert_eq!(got, want, "n={n} start={start}");
        probes
    }

    #[test]
    fn an_unfiltered_stream_without_gaps_needs_one_probe() {
        let seqs: Vec<u64> = (1..=1000).collect();
        assert_eq!(check(&seqs, 1, 1000, 10), 1);
        assert_eq!(check(&seqs, 1, 1000, 999), 1);
        // N at least the whole stream: everything, no probe.
        assert_eq!(check(&seqs, 1, 1000, 1000), 0);
        assert_eq!(check(&seqs, 1, 1000, 5000), 0);
    }

    #[test]
    fn a_sparse_filter_is_found_exactly_in_few_probes() {
        // One message in 97 matches, over a million sequences.
        let seqs: Vec<u64> = (1..=1_000_000).filter(|s| s % 97 == 5).collect();
        for n in [1, 2, 10, 500, 10_000, seqs.len() as u64 - 1] {
            let probes = check(&seqs, 1, 1_000_000, n);
            assert!(probes <= 50, "n={n}: {probes} probes");
        }
        // More asked than match: all of them.
        check(&seqs, 1, 1_000_000, seqs.len() as u64 + 3);
    }

    #[test]
    fn gaps_and_a_late_first_sequence() {
        // Expired head (first = 500), a deleted run, matches only at the
        // start and the very end.
        let mut seqs: Vec<u64> = (500..600).collect();
        seqs.extend(900..=905);
        for n in [1, 3, 6, 7, 50, 106, 200] {
            check(&seqs, 500, 905, n);
        }
        // Nothing matches at all.
        assert_eq!(run(&[], 1, 10_000, 5).0, 1);
        // An empty stream.
        assert_eq!(LastN::new(5, 0, 0).1, Step::Start(1));
    }

    #[test]
    fn a_stream_that_grows_during_the_search_still_ends() {
        // Every probe sees more pending than the last: the search must
        // stop (with at least N) rather than run forever.
        let (mut s, mut step) = LastN::new(10, 1, 1_000_000);
        let mut extra = 0;
        for _ in 0..1000 {
            match step {
                Step::Start(at) => {
                    assert!(at <= 1_000_000);
                    return;
                }
                Step::Probe(at) => {
                    extra += 3;
                    step = s.observe(at, (1_000_001 - at) / 3 + extra);
                }
            }
        }
        panic!("no end");
    }
}
