//! Which stream captures a subject, after nats-server's subject mappings
//! (pure): what the publish hot path asks instead of a round trip.

use crate::subject::matches;

/// Maps a concrete subject to the stream that captures it. Built from the
/// streams' subjects at reconcile time so publishing needs no round trip.
#[derive(Debug, Clone, Default)]
pub struct StreamMatcher {
    entries: Vec<(String, String)>,
    /// Subject mappings nats-server applies before any stream sees the
    /// message: source pattern -> destinations.
    mappings: Vec<(String, Vec<String>)>,
}

impl StreamMatcher {
    pub fn new<'a>(streams: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Self {
        let mut entries = Vec::new();
        for (name, subjects) in streams {
            for s in subjects {
                entries.push((s.clone(), name.to_string()));
            }
        }
        StreamMatcher {
            entries,
            mappings: Vec::new(),
        }
    }

    /// Adds the mappings nats-server applies (checked by the config).
    pub fn with_mappings<'a>(
        mut self,
        mappings: impl IntoIterator<Item = (&'a str, Vec<String>)>,
    ) -> Self {
        self.mappings = mappings
            .into_iter()
            .map(|(s, d)| (s.to_string(), d))
            .collect();
        self
    }

    /// The stream that stores a message published to `subject`: after
    /// nats-server's mapping, when one applies. A mapping that splits
    /// messages counts only when every destination lands in a stream (which
    /// stream is then the ack's to say); otherwise some messages would be
    /// stored by no stream, and a JetStream publish would fail for them.
    pub fn stream_for(&self, subject: &str) -> Option<&str> {
        let Some((source, dests)) = self.mappings.iter().find(|(s, _)| matches(s, subject)) else {
            return self.captured(subject);
        };
        let mut found = None;
        for d in dests {
            let mapped = crate::mapping::apply(source, d, subject)?;
            let stream = self.captured(&mapped)?;
            found.get_or_insert(stream);
        }
        found
    }

    fn captured(&self, subject: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(pattern, _)| matches(pattern, subject))
            .map(|(_, name)| name.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_subject_is_captured_by_the_stream_of_its_destination() {
        let market = vec!["market.>".to_string()];
        let m = StreamMatcher::new([("MARKET_DATA", market.as_slice())]).with_mappings([
            ("legacy.*.*", vec!["market.$2.$1".to_string()]),
            (
                "split.>",
                vec!["market.split.>".to_string(), "nowhere.>".to_string()],
            ),
            ("market.raw.>", vec!["raw.>".to_string()]),
        ]);
        assert_eq!(m.stream_for("legacy.BTCUSDT.binance"), Some("MARKET_DATA"));
        // Half of these would land outside every stream.
        assert_eq!(m.stream_for("split.a"), None);
        // Mapped away from the stream its own name matches.
        assert_eq!(m.stream_for("market.raw.x"), None);
        assert_eq!(m.stream_for("market.binance.x"), Some("MARKET_DATA"));
    }

    #[test]
    fn matcher_finds_the_capturing_stream() {
        let a = vec!["market.>".to_string()];
        let b = vec!["system.>".to_string(), "alerts.*".to_string()];
        let m = StreamMatcher::new([
            ("MARKET_DATA", a.as_slice()),
            ("SYSTEM_EVENTS", b.as_slice()),
        ]);
        assert_eq!(
            m.stream_for("market.binance.BTCUSDT.trade"),
            Some("MARKET_DATA")
        );
        assert_eq!(m.stream_for("alerts.cpu"), Some("SYSTEM_EVENTS"));
        assert_eq!(m.stream_for("test.message"), None);
    }
}
