//! Message counters, latency histograms and publish rates, plus the
//! Prometheus text writer /metrics renders them with.
//!
//! Everything the publish path touches is a plain atomic in a fixed array:
//! no lock, no allocation per request. Reading (status, /metrics) sums
//! and copies; only the per-second rate samples sit behind a mutex, and
//! only the 1 s sampler and readers take it.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which HTTP endpoint a publish came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Single = 0,
    Batch = 1,
    /// POST /api/v1/publish/stream, per line.
    Stream = 2,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::Single, Endpoint::Batch, Endpoint::Stream];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Single => "single",
            Endpoint::Batch => "batch",
            Endpoint::Stream => "stream",
        }
    }
}

/// How a publish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A stream acknowledged it.
    Persisted = 0,
    /// Handed to nats-server as a core publish (no stream captures it).
    Core = 1,
    /// Refused because the request was wrong (4xx).
    Rejected = 2,
    /// Failed on the NATS side (5xx).
    Failed = 3,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Persisted,
        Outcome::Core,
        Outcome::Rejected,
        Outcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Persisted => "persisted",
            Outcome::Core => "core",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

/// Upper bounds of the latency buckets, in nanoseconds: 100 µs to 5 s.
/// A local JetStream ack takes a few hundred µs; a publish that waits for
/// a restarting nats-server ends at `api.publish_timeout` (5 s).
pub const LATENCY_BOUNDS_NS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// Upper bounds of the batch size buckets (entries); api.batch_max_entries
/// defaults to 10000.
pub const BATCH_BOUNDS: &[u64] = &[1, 10, 50, 100, 500, 1000, 5000, 10000];

/// A histogram's bucket bounds, chosen by type so that [`Stats`] (and a
/// histogram) is `Default`.
pub trait Bounds {
    /// Inclusive upper bounds, ascending; the last bucket (+Inf) is implied.
    const BOUNDS: &'static [u64];
}

/// Durations in nanoseconds: [`LATENCY_BOUNDS_NS`].
#[derive(Debug)]
pub struct Latency;

impl Bounds for Latency {
    const BOUNDS: &'static [u64] = LATENCY_BOUNDS_NS;
}

/// Entries per batch: [`BATCH_BOUNDS`].
#[derive(Debug)]
pub struct BatchSize;

impl Bounds for BatchSize {
    const BOUNDS: &'static [u64] = BATCH_BOUNDS;
}

/// A fixed-bucket histogram of u64 observations (nanoseconds, entries):
/// one atomic add for the bucket and one for the sum.
#[derive(Debug)]
pub struct Histogram<B> {
    /// Per-bucket counts, not cumulative; `B::BOUNDS.len() + 1` of them.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    bounds: PhantomData<B>,
}

impl<B: Bounds> Default for Histogram<B> {
    fn default() -> Self {
        debug_assert!(B::BOUNDS.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            buckets: (0..=B::BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            bounds: PhantomData,
        }
    }
}

impl<B: Bounds> Histogram<B> {
    pub fn observe(&self, v: u64) {
        // `le` semantics: the first bucket whose bound is >= v.
        let i = B::BOUNDS.partition_point(|&b| b < v);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn snapshot(&self) -> HistSnapshot {
        HistSnapshot {
            bounds: B::BOUNDS,
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum: self.sum.load(Relaxed),
        }
    }
}

/// A histogram's figures at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistSnapshot {
    pub bounds: &'static [u64],
    /// Per bucket, not cumulative; the last one is +Inf.
    pub counts: Vec<u64>,
    pub sum: u64,
}

impl HistSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The q-quantile (0..=1) estimated as Prometheus' histogram_quantile
    /// does: linear within the bucket the rank falls in (from 0 for the
    /// first); the highest finite bound when it falls in +Inf. None
    /// without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else {
                    return self.bounds.last().map(|&b| b as f64);
                };
                let lower = if i == 0 { 0 } else { self.bounds[i - 1] };
                let within = (rank - below as f64).max(0.0) / c as f64;
                return Some(lower as f64 + (upper - lower) as f64 * within);
            }
            below += c;
        }
        self.bounds.last().map(|&b| b as f64)
    }
}

/// Per-second samples of the published and consumed totals over the last
/// minute, for the 1-minute rates. Filled by a 1 s ticker, never by the
/// publish path.
#[derive(Debug)]
struct Rates {
    samples: VecDeque<RateSample>,
}

#[derive(Debug, Clone, Copy)]
struct RateSample {
    at: Instant,
    published: u64,
    consumed: u64,
}

/// The window the status' throughput figures cover.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

impl Default for Rates {
    fn default() -> Self {
        Rates::new(Instant::now())
    }
}

impl Rates {
    fn new(start: Instant) -> Rates {
        Rates {
            samples: VecDeque::from([RateSample {
                at: start,
                published: 0,
                consumed: 0,
            }]),
        }
    }

    fn record(&mut self, s: RateSample) {
        self.samples.push_back(s);
        // Keep the newest sample at least a window old: the base.
        while self.samples.len() > 1 && s.at.duration_since(self.samples[1].at) >= RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    /// (published, consumed) per second since the oldest sample of the
    /// window; `now` holds the live totals, so a publish counts at once.
    fn per_second(&self, now: RateSample) -> (f64, f64) {
        let base = self
            .samples
            .iter()
            .find(|s| now.at.saturating_duration_since(s.at) <= RATE_WINDOW)
            .or(self.samples.back())
            .copied()
            .unwrap_or(now);
        // At least a second: right after start a handful of messages are
        // not thousands per second.
        let secs = now
            .at
            .saturating_duration_since(base.at)
            .as_secs_f64()
            .max(1.0);
        (
            now.published.saturating_sub(base.published) as f64 / secs,
            now.consumed.saturating_sub(base.consumed) as f64 / secs,
        )
    }
}

/// The daemon's counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Publishes by endpoint and outcome.
    publishes: [[AtomicU64; 4]; 3],
    /// Messages delivered to clients through the daemon: HTTP fetches and
    /// event streams.
    pub consumed: AtomicU64,
    /// Messages not sent to an event-stream client because it read too
    /// slowly (or because its subject's fan-out was so far behind that it
    /// skipped them for every client); each announced to the client in a
    /// `dropped` event.
    pub sse_dropped: AtomicU64,
    /// Messages async-nats dropped from an event-stream subscription
    /// before the fan-out took them: no client was told. Reported through
    /// async-nats' bounded event channel, so a lower bound.
    pub sse_lost: AtomicU64,
    /// HTTP connections closed at `api.max_connections` to make room for a
    /// new client (the oldest not in a request).
    pub http_evicted: AtomicU64,
    /// POST /api/v1/publish, request in to answer out, successful ones.
    pub publish_latency: Histogram<Latency>,
    /// JetStream publishes (single, batch and stream), from the hand-over to the
    /// connection until the ack.
    pub ack_latency: Histogram<Latency>,
    /// Entries per POST /api/v1/publish/batch that got past the size checks.
    pub batch_entries: Histogram<BatchSize>,
    /// Config reloads: [ok, failed].
    reloads: [AtomicU64; 2],
    /// HTTP requests refused for want of a (good enough) token, indexed by
    /// `http::auth::Refusal` (missing, unknown, read_only).
    pub auth_refused: [AtomicU64; 3],
    rates: Mutex<Rates>,
}

/// The seed's message_stats, counted honestly: `published` only after
/// nats-server took the message (JetStream ack, or a core publish handed to
/// a connected client); `errors` for every publish answered with an error.
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
    pub fn published(&self, ep: Endpoint, persisted: bool) {
        let o = if persisted {
            Outcome::Persisted
        } else {
            Outcome::Core
        };
        self.publishes[ep as usize][o as usize].fetch_add(1, Relaxed);
    }

    /// Records a failed publish by HTTP status class.
    pub fn error(&self, ep: Endpoint, status: u16) {
        let o = if status < 500 {
            Outcome::Rejected
        } else {
            Outcome::Failed
        };
        self.publishes[ep as usize][o as usize].fetch_add(1, Relaxed);
    }

    pub fn publishes(&self, ep: Endpoint, o: Outcome) -> u64 {
        self.publishes[ep as usize][o as usize].load(Relaxed)
    }

    fn total(&self, o: Outcome) -> u64 {
        Endpoint::ALL.iter().map(|&e| self.publishes(e, o)).sum()
    }

    pub fn reloaded(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    /// (ok, failed) reloads.
    pub fn reloads(&self) -> (u64, u64) {
        (self.reloads[0].load(Relaxed), self.reloads[1].load(Relaxed))
    }

    pub fn snapshot(&self) -> Snapshot {
        let persisted = self.total(Outcome::Persisted);
        let rejected = self.total(Outcome::Rejected);
        let failed = self.total(Outcome::Failed);
        Snapshot {
            published: persisted + self.total(Outcome::Core),
            consumed: self.consumed.load(Relaxed),
            errors: rejected + failed,
            persisted,
            rejected,
            failed,
        }
    }

    fn rate_sample(&self, at: Instant) -> RateSample {
        let s = self.snapshot();
        RateSample {
            at,
            published: s.published,
            consumed: s.consumed,
        }
    }

    /// Takes a rate sample; the daemon calls it every second.
    pub fn sample_rates(&self, at: Instant) {
        let s = self.rate_sample(at);
        self.rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(s);
    }

    /// (publish, consume) messages per second over the last minute.
    pub fn rates(&self, at: Instant) -> (f64, f64) {
        let now = self.rate_sample(at);
        self.rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .per_second(now)
    }
}

// ------------------------------------------------- Prometheus text ----

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Writes the Prometheus text exposition format (version 0.0.4): a family
/// is its `# HELP` and `# TYPE` lines followed by all of its samples.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

/// The Content-Type of [`Text`].
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// A sample value as Prometheus parses it (Go's ParseFloat).
fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// Starts a family. Help text: backslash and line feed are escaped.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(valid_name(name), "bad metric name {name}");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            debug_assert!(valid_name(k) && !k.starts_with("__"), "bad label {k}");
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// One sample of the current family (`name` may carry a suffix such as
    /// `_bucket`).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        self.labels(labels);
        self.out.push(' ');
        write_float(&mut self.out, v);
        self.out.push('\n');
    }

    /// A counter or gauge with integer value.
    pub fn int(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.out.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.out, " {v}");
    }

    /// A whole family of one sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }

    /// A histogram family: cumulative `_bucket`s with `le`, `_sum`,
    /// `_count`; observations are divided by `per_unit` (1e9 turns
    /// nanoseconds into seconds; dividing keeps 0.00025 free of float
    /// noise where multiplying by 1e-9 would not).
    pub fn histogram(&mut self, name: &str, help: &str, h: &HistSnapshot, per_unit: f64) {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, c) in h.counts.iter().enumerate() {
            cumulative += c;
            let mut le = String::new();
            match h.bounds.get(i) {
                Some(&b) => write_float(&mut le, b as f64 / per_unit),
                None => le.push_str("+Inf"),
            }
            self.int(&bucket, &[("le", &le)], cumulative);
        }
        self.sample(&format!("{name}_sum"), &[], h.sum as f64 / per_unit);
        self.int(&format!("{name}_count"), &[], cumulative);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_the_sum_of_rejections_and_failures() {
        let s = Stats::default();
        s.published(Endpoint::Single, true);
        s.published(Endpoint::Batch, false);
        s.error(Endpoint::Single, 400);
        s.error(Endpoint::Batch, 413);
        s.error(Endpoint::Single, 503);
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
        assert_eq!(s.publishes(Endpoint::Batch, Outcome::Core), 1);
        assert_eq!(s.publishes(Endpoint::Batch, Outcome::Rejected), 1);
        assert_eq!(s.publishes(Endpoint::Single, Outcome::Failed), 1);
    }

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        struct B;
        impl Bounds for B {
            const BOUNDS: &'static [u64] = &[10, 20, 30];
        }
        let h = Histogram::<B>::default();
        for v in [0, 10, 11, 20, 30, 31, 1000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, [2, 2, 1, 2]);
        assert_eq!(s.count(), 7);
        assert_eq!(s.sum, 1102);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        struct B;
        impl Bounds for B {
            const BOUNDS: &'static [u64] = &[100, 200, 400];
        }
        struct One;
        impl Bounds for One {
            const BOUNDS: &'static [u64] = &[100];
        }
        let h = Histogram::<B>::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        for _ in 0..10 {
            h.observe(150);
        }
        let s = h.snapshot();
        // All ten in (100, 200]: the median is halfway through it.
        assert_eq!(s.quantile(0.5), Some(150.0));
        assert_eq!(s.quantile(1.0), Some(200.0));
        h.observe(10_000);
        // In +Inf: the highest finite bound, as Prometheus answers.
        assert_eq!(h.snapshot().quantile(1.0), Some(400.0));
        let one = Histogram::<One>::default();
        one.observe(50);
        assert_eq!(one.snapshot().quantile(0.5), Some(50.0));
    }

    #[test]
    fn rates_cover_the_last_minute_and_count_live_totals() {
        let t0 = Instant::now();
        let mut r = Rates::new(t0);
        let at = |s: u64, p: u64| RateSample {
            at: t0 + Duration::from_secs(s),
            published: p,
            consumed: p / 2,
        };
        // 10 messages in the first 2 s, read before any sample.
        assert_eq!(r.per_second(at(2, 10)), (5.0, 2.5));
        // Not yet a second: counted over one second.
        assert_eq!(r.per_second(at(0, 3)), (3.0, 1.0));
        for s in 1..=120 {
            r.record(at(s, s * 100));
        }
        // 100/s steadily: the base is a minute back.
        assert_eq!(r.per_second(at(120, 12_000)), (100.0, 50.0));
        assert!(r.samples.len() <= 62, "{}", r.samples.len());
        // Idle for a minute after that: nothing.
        for s in 121..=181 {
            r.record(at(s, 12_000));
        }
        assert_eq!(r.per_second(at(181, 12_000)), (0.0, 0.0));
    }

    #[test]
    fn the_text_format_escapes_and_accumulates() {
        let mut t = Text::new();
        t.family("x_total", Kind::Counter, "a \\ b\nc");
        t.int("x_total", &[("l", "q\"\\\n")], 3);
        struct B;
        impl Bounds for B {
            const BOUNDS: &'static [u64] = &[1_000_000, 5_000_000_000];
        }
        let h = Histogram::<B>::default();
        h.observe(500_000);
        h.observe(2_000_000);
        h.observe(9_000_000_000);
        t.histogram("lat_seconds", "latency", &h.snapshot(), 1e9);
        t.single("g", Kind::Gauge, "gauge", 0.5);
        assert_eq!(
            t.finish(),
            "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\n\
             x_total{l=\"q\\\"\\\\\\n\"} 3\n\
             # HELP lat_seconds latency\n# TYPE lat_seconds histogram\n\
             lat_seconds_bucket{le=\"0.001\"} 1\n\
             lat_seconds_bucket{le=\"5\"} 2\n\
             lat_seconds_bucket{le=\"+Inf\"} 3\n\
             lat_seconds_sum 9.0025\n\
             lat_seconds_count 3\n\
             # HELP g gauge\n# TYPE g gauge\ng 0.5\n"
        );
    }
}
