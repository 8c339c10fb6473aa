//! Pull consumers the daemon looked up a moment ago (pure): an HTTP fetch
//! from one of them sends its pull at once instead of first asking
//! JetStream's API whether the consumer exists and is a pull consumer, a
//! round trip per fetch that a busy consumer would pay hundreds of times a
//! second.
//!
//! A lookup counts for `ttl`. A consumer deleted meanwhile does not answer
//! the pull; the fetch then looks it up again, forgets it, and answers 404.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a lookup counts.
pub const KNOWN_FOR: Duration = Duration::from_secs(1);

/// Entries kept at most: past it, expired ones go, and if none had
/// expired, all of them (a fetch then looks its consumer up once more).
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub struct KnownPulls {
    seen: Mutex<HashMap<(String, String), Instant>>,
}

impl KnownPulls {
    /// Whether consumer `name` of `stream` was found to be a pull consumer
    /// less than `KNOWN_FOR` before `now`.
    pub fn known(&self, stream: &str, name: &str, now: Instant) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // A tuple of Strings cannot be looked up by a tuple of &strs
        // without building the key; it is small.
        seen.get(&(stream.to_string(), name.to_string()))
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_FOR)
    }

    /// A lookup at `now` found a pull consumer.
    pub fn saw(&self, stream: &str, name: &str, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_ENTRIES {
            seen.retain(|_, at| now.saturating_duration_since(*at) < KNOWN_FOR);
            if seen.len() >= MAX_ENTRIES {
                seen.clear();
            }
        }
        seen.insert((stream.to_string(), name.to_string()), now);
    }

    /// The consumer did not answer as it should: look it up next time.
    pub fn forget(&self, stream: &str, name: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.remove(&(stream.to_string(), name.to_string()));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_counts_for_a_second_then_is_made_again() {
        let k = KnownPulls::default();
        let t0 = Instant::now();
        assert!(!k.known("S", "c", t0), "never looked up");
        k.saw("S", "c", t0);
        assert!(k.known("S", "c", t0 + Duration::from_millis(999)));
        assert!(!k.known("S", "c", t0 + KNOWN_FOR), "expired");
        assert!(!k.known("S", "d", t0), "another consumer");
        assert!(!k.known("T", "c", t0), "another stream");
        k.saw("S", "c", t0 + KNOWN_FOR);
        assert!(k.known("S", "c", t0 + KNOWN_FOR));
    }

    #[test]
    fn a_consumer_that_did_not_answer_is_forgotten() {
        let k = KnownPulls::default();
        let t0 = Instant::now();
        k.saw("S", "c", t0);
        k.forget("S", "c");
        assert!(!k.known("S", "c", t0));
    }

    #[test]
    fn the_table_never_grows_past_its_bound() {
        let k = KnownPulls::default();
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES {
            k.saw("S", &format!("c{i}"), t0);
        }
        assert_eq!(k.len(), MAX_ENTRIES);
        // All still fresh: the table starts over rather than grow.
        k.saw("S", "one-more", t0);
        assert_eq!(k.len(), 1);
        assert!(k.known("S", "one-more", t0));
        // Expired ones make room first.
        for i in 0..MAX_ENTRIES - 1 {
            k.saw("S", &format!("c{i}"), t0);
        }
        let later = t0 + KNOWN_FOR;
        k.saw("S", "fresh", later);
        assert_eq!(k.len(), 1);
        assert!(k.known("S", "fresh", later));
    }
}
