//! Sizes ("1GB", "512KB", 1048576) and durations ("2s", "2m", "100ms", or
//! plain seconds) in the forms the seed's config uses.
//!
//! Both parse from a string or a number so that YAML and TOML users can write
//! either; both render back into the forms nats-server's config accepts.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A byte count. Units are binary (1KB = 1024 bytes), as in nats-server's own
/// configuration parser, so "1GB" here means what it means there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses "1GB", "1 GB", "1G", "1GiB", "512kb", "100" (bytes).
    pub fn parse(text: &str) -> Result<Size, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        if num.is_empty() {
            return Err(format!(
                "invalid size {text:?}: expected a number of bytes or a number with a unit (B, KB, MB, GB, TB), e.g. \"1GB\""
            ));
        }
        let mult: u64 = match unit.to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            "T" | "TB" | "TIB" => 1 << 40,
            _ => {
                return Err(format!(
                    "invalid size {text:?}: unknown unit {unit:?} (use B, KB, MB, GB or TB)"
                ))
            }
        };
        let bytes = if num.contains('.') {
            let f: f64 = num
                .parse()
                .map_err(|_| format!("invalid size {text:?}: {num:?} is not a number"))?;
            let b = f * mult as f64;
            if !b.is_finite() || b >= u64::MAX as f64 {
                return Err(format!("invalid size {text:?}: too large"));
            }
            b.round() as u64
        } else {
            let n: u64 = num
                .parse()
                .map_err(|_| format!("invalid size {text:?}: {num:?} is not a whole number"))?;
            n.checked_mul(mult)
                .ok_or_else(|| format!("invalid size {text:?}: too large"))?
        };
        Ok(Size(bytes))
    }
}

impl fmt::Display for Size {
    /// The largest unit that divides the value exactly: 1073741824 -> "1GB".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TB", 1 << 40),
            ("GB", 1 << 30),
            ("MB", 1 << 20),
            ("KB", 1 << 10),
        ];
        for (name, m) in UNITS {
            if self.0 >= m && self.0 % m == 0 {
                return write!(f, "{}{}", self.0 / m, name);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"1GB\", \"512MB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration. Strings take units ("100ms", "2s", "2m", "1h", "7d", "1h30m");
/// a bare number means seconds, as the seed's stream `max_age` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }
    pub const fn get(self) -> Duration {
        self.0
    }

    /// Longest duration accepted: what Go's time.Duration (nanoseconds in
    /// an int64) holds, about 292 years. nats-server refuses a longer
    /// `ping_interval` or `write_deadline` ("invalid duration"), and
    /// JetStream carries `max_age`, `ack_wait` and the like as int64
    /// nanoseconds too.
    pub const MAX: Duration = Duration::from_nanos(i64::MAX as u64);

    /// `d`, unless it is longer than [`Dur::MAX`]; `what` names it in the error.
    pub fn checked(d: Duration, what: &dyn fmt::Display) -> Result<Dur, String> {
        if d > Self::MAX {
            Err(format!(
                "invalid duration {what}: longer than nats-server accepts (at most {}h, about 292 years)",
                Self::MAX.as_secs() / 3600
            ))
        } else {
            Ok(Dur(d))
        }
    }

    pub fn parse(text: &str) -> Result<Dur, String> {
        let t = text.trim();
        let what = format!("{text:?}");
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            let secs = t
                .parse::<u64>()
                .map_err(|_| format!("invalid duration {text:?}: too large"))?;
            return Dur::checked(Duration::from_secs(secs), &what);
        }
        let d = humantime::parse_duration(t).map_err(|e| {
            format!("invalid duration {text:?}: {e} (use e.g. \"100ms\", \"2s\", \"2m\", \"1h\", or a number of seconds)")
        })?;
        Dur::checked(d, &what)
    }

    /// Go's time.ParseDuration syntax, which nats-server uses: "2s", "2m",
    /// "1500ms".
    pub fn to_go(self) -> String {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            let s = d.as_secs();
            if s != 0 && s % 3600 == 0 {
                format!("{}h", s / 3600)
            } else if s != 0 && s % 60 == 0 {
                format!("{}m", s / 60)
            } else {
                format!("{s}s")
            }
        } else if d.subsec_nanos() % 1_000_000 == 0 {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}ns", d.as_nanos())
        }
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_go())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"2s\", \"2m\", \"100ms\" or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Dur::checked(Duration::from_secs(v), &v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                let secs = u64::try_from(v).map_err(|_| {
                    E::custom(format!("invalid duration {v}: must not be negative"))
                })?;
                self.visit_u64(secs)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                let d = Duration::try_from_secs_f64(v).map_err(|_| {
                    E::custom(format!(
                        "invalid duration {v}: must be a non-negative number of seconds"
                    ))
                })?;
                Dur::checked(d, &v).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_the_seed_forms() {
        assert_eq!(Size::parse("1GB").unwrap().bytes(), 1 << 30);
        assert_eq!(Size::parse("10GB").unwrap().bytes(), 10 << 30);
        assert_eq!(Size::parse("1MB").unwrap().bytes(), 1 << 20);
        assert_eq!(Size::parse("1 mb").unwrap().bytes(), 1 << 20);
        assert_eq!(Size::parse("512K").unwrap().bytes(), 512 << 10);
        assert_eq!(Size::parse("1.5GB").unwrap().bytes(), 3 << 29);
        assert_eq!(Size::parse("1024").unwrap().bytes(), 1024);
        assert_eq!(Size::parse("2GiB").unwrap().bytes(), 2 << 30);
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(Size::parse("1XB")
            .unwrap_err()
            .contains("unknown unit \"XB\""));
        assert!(Size::parse("GB").unwrap_err().contains("expected a number"));
        assert!(Size::parse("").is_err());
        assert!(Size::parse("99999999999TB")
            .unwrap_err()
            .contains("too large"));
        assert!(Size::parse("1.2.3MB").is_err());
    }

    #[test]
    fn sizes_display_in_the_largest_exact_unit() {
        assert_eq!(Size(1 << 30).to_string(), "1GB");
        assert_eq!(Size(3 << 29).to_string(), "1536MB");
        assert_eq!(Size(1000).to_string(), "1000B");
    }

    #[test]
    fn durations_past_what_go_and_jetstream_hold_are_refused() {
        // Found by tests/fuzz.rs: nats-server -t refused ping_interval
        // "8589934592m" ("time: invalid duration"), which validated.
        for text in [
            "8589934592m",
            "300years",
            "9223372037s",
            "18446744073709551615",
        ] {
            let e = Dur::parse(text).unwrap_err();
            assert!(e.contains("292 years"), "{text}: {e}");
        }
        assert_eq!(Dur::parse("2562047h").unwrap(), Dur::secs(2_562_047 * 3600));
        let e = toml::from_str::<std::collections::BTreeMap<String, Dur>>("d = 9223372037")
            .unwrap_err();
        assert!(e.to_string().contains("292 years"), "{e}");
    }

    #[test]
    fn durations_in_the_seed_forms() {
        assert_eq!(Dur::parse("2s").unwrap(), Dur::secs(2));
        assert_eq!(Dur::parse("2m").unwrap(), Dur::secs(120));
        assert_eq!(Dur::parse("100ms").unwrap(), Dur::millis(100));
        assert_eq!(Dur::parse("1h30m").unwrap(), Dur::secs(5400));
        assert_eq!(Dur::parse("7d").unwrap(), Dur::secs(7 * 86400));
        assert_eq!(Dur::parse("3600").unwrap(), Dur::secs(3600));
        assert!(Dur::parse("2 parsecs")
            .unwrap_err()
            .contains("invalid duration"));
        assert!(Dur::parse("").is_err());
    }

    #[test]
    fn durations_render_for_go() {
        assert_eq!(Dur::secs(2).to_go(), "2s");
        assert_eq!(Dur::secs(120).to_go(), "2m");
        assert_eq!(Dur::secs(7200).to_go(), "2h");
        assert_eq!(Dur::secs(90).to_go(), "90s");
        assert_eq!(Dur::millis(1500).to_go(), "1500ms");
        assert_eq!(Dur::secs(0).to_go(), "0s");
    }
}
