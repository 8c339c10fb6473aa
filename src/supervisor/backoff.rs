//! Restart pacing (pure): exponential backoff with jitter, and the failure
//! window that decides when restarting is hopeless.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Exponential backoff: `initial * 2^n`, capped, with +-20% jitter so that
/// several brokers restarted together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Consecutive failures since the last stable run.
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next restart; `unit` in [0, 1) picks the jitter.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let factor = 0.8 + 0.4 * unit.clamp(0.0, 1.0);
        base.mul_f64(factor).min(self.max)
    }

    /// Called when the child ran stably: the next failure starts over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// Counts failures inside a sliding window.
#[derive(Debug, Clone)]
pub struct FailureWindow {
    pub max: u32,
    pub window: Duration,
    times: VecDeque<Instant>,
}

impl FailureWindow {
    pub fn new(max: u32, window: Duration) -> Self {
        FailureWindow {
            max,
            window,
            times: VecDeque::new(),
        }
    }

    /// Records a failure at `now`; true when there are now more than `max`
    /// failures within the window (time to give up).
    pub fn record(&mut self, now: Instant) -> bool {
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.times.len() as u32 > self.max
    }

    pub fn count(&self) -> usize {
        self.times.len()
    }
}

/// A small, dependency-free PRNG for jitter (xorshift64*). Quality is
/// irrelevant here; only de-synchronisation matters.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn from_time() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            ^ u64::from(std::process::id()) << 32;
        Jitter(seed | 1)
    }

    /// A number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_about_100ms_and_caps_at_30s() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(30));
        let mid: Vec<Duration> = (0..12).map(|_| b.next_delay(0.5)).collect();
        assert_eq!(mid[0], 100 * MS);
        assert_eq!(mid[1], 200 * MS);
        assert_eq!(mid[2], 400 * MS);
        assert_eq!(mid[8], Duration::from_millis(25_600));
        assert_eq!(mid[9], Duration::from_secs(30));
        assert_eq!(mid[11], Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_20_percent_and_never_exceeds_the_cap() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(30));
        assert_eq!(b.next_delay(0.0), 80 * MS);
        let mut b = Backoff::new(100 * MS, Duration::from_secs(30));
        assert_eq!(b.next_delay(0.999_999), Duration::from_nanos(119_999_960));
        let mut b = Backoff::new(100 * MS, Duration::from_secs(30));
        for _ in 0..40 {
            assert!(b.next_delay(0.99) <= Duration::from_secs(30));
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(30));
        b.next_delay(0.5);
        b.next_delay(0.5);
        b.reset();
        assert_eq!(b.next_delay(0.5), 100 * MS);
    }

    #[test]
    fn failure_window_gives_up_past_max_within_the_window() {
        let t0 = Instant::now();
        let mut w = FailureWindow::new(3, Duration::from_secs(60));
        assert!(!w.record(t0));
        assert!(!w.record(t0 + Duration::from_secs(10)));
        assert!(!w.record(t0 + Duration::from_secs(20)));
        assert!(w.record(t0 + Duration::from_secs(30)));
        // Old failures age out of the window.
        let mut w = FailureWindow::new(3, Duration::from_secs(60));
        for i in 0..10 {
            assert!(!w.record(t0 + Duration::from_secs(i * 40)), "failure {i}");
        }
        assert!(w.count() <= 2);
    }

    #[test]
    fn jitter_is_in_unit_range_and_varies() {
        let mut j = Jitter::from_time();
        let xs: Vec<f64> = (0..1000).map(|_| j.unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|x| *x < 0.3) && xs.iter().any(|x| *x > 0.7));
    }
}
