//! What a NATS user may do, as rendered into nats-server.conf (pure).
//!
//! nats-server's own rule is permissive: a user whose permissions name
//! only `publish` may subscribe to anything. The seed's example plainly
//! means a producer that publishes and a consumer that subscribes, so here
//! a direction a user's permissions leave out is denied. On top, each user
//! gets exactly what the JetStream client protocol needs for the subjects
//! they were given, scoped to the streams that capture those subjects:
//!
//! - publishing into a stream needs the reply inbox the ack comes back on;
//! - consuming a stream needs that inbox too (deliveries and API replies),
//!   plus, for those streams only: account info, the stream lookup
//!   (STREAM.NAMES) and STREAM.INFO, creating and reading consumers, pull
//!   requests (MSG.NEXT), acks ($JS.ACK) and flow-control replies ($JS.FC).
//!
//! Nothing else: no deleting, purging or editing streams, no other stream's
//! API. A user without `permissions` keeps nats-server's meaning: all.

use std::collections::BTreeMap;

use crate::config::{MappingConfig, PermissionList, Permissions, StreamConfig};
use crate::subject;

/// Where client libraries receive replies (nats-py, nats.js and async-nats
/// all default to it).
pub const INBOX: &str = "_INBOX.>";

/// One direction as rendered: allow and deny lists. Both empty renders as
/// `deny: [">"]` (nothing allowed); an empty allow with a deny list means
/// everything but the denied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Direction {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl Direction {
    fn push(&mut self, s: String) {
        if !self.allow.contains(&s) {
            self.allow.push(s);
        }
    }
    /// Nothing is allowed in this direction.
    pub fn denies_all(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effective {
    pub publish: Direction,
    pub subscribe: Direction,
}

/// Streams (by name) with a subject that some of `subjects` can match.
fn capturing<'a>(subjects: &[String], streams: &'a BTreeMap<String, StreamConfig>) -> Vec<&'a str> {
    streams
        .iter()
        .filter(|(_, s)| {
            s.subjects
                .iter()
                .any(|ss| subjects.iter().any(|u| subject::overlaps(u, ss)))
        })
        .map(|(name, _)| name.as_str())
        .collect()
}

/// The JetStream API a consumer of `stream` needs.
fn consumer_grants(stream: &str) -> [String; 8] {
    [
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.ACK.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

fn given(l: &Option<PermissionList>) -> Direction {
    l.as_ref()
        .map(|l| Direction {
            allow: l.allow.clone(),
            deny: l.deny.clone(),
        })
        .unwrap_or_default()
}

/// The subjects the destinations of mappings produce, for every mapping
/// whose source some of `subjects` can match.
fn mapped(subjects: &[String], mappings: &BTreeMap<String, MappingConfig>) -> Vec<String> {
    let mut out = Vec::new();
    for (source, m) in mappings {
        if subjects.iter().any(|s| subject::overlaps(s, source)) {
            out.extend(
                m.0.iter()
                    .filter_map(|d| crate::mapping::pattern(&d.subject)),
            );
        }
    }
    out
}

/// A configured user's permissions with the JetStream grants added.
pub fn expand(
    p: &Permissions,
    streams: &BTreeMap<String, StreamConfig>,
    mappings: &BTreeMap<String, MappingConfig>,
) -> Effective {
    let mut out = Effective {
        publish: given(&p.publish),
        subscribe: given(&p.subscribe),
    };
    // An allow list limits; grants only matter where there is one, or
    // where the direction was left out (and so is denied).
    let pub_limited = !out.publish.allow.is_empty() || p.publish.is_none();
    let sub_limited = !out.subscribe.allow.is_empty() || p.subscribe.is_none();

    // nats-server maps a publish before it checks permissions: a user
    // allowed a mapping's source must also be allowed its destinations,
    // or the mapping refuses every message the user sends.
    if !out.publish.allow.is_empty() {
        for d in mapped(&out.publish.allow, mappings) {
            out.publish.push(d);
        }
    }
    let pub_streams = capturing(&out.publish.allow, streams);
    let sub_streams = capturing(&out.subscribe.allow, streams);
    if sub_limited && (!pub_streams.is_empty() || !sub_streams.is_empty()) {
        out.subscribe.push(INBOX.into());
    }
    if pub_limited && !sub_streams.is_empty() {
        out.publish.push("$JS.API.INFO".into());
        // Finding a subject's stream; answers with stream names only.
        out.publish.push("$JS.API.STREAM.NAMES".into());
        for s in &sub_streams {
            for g in consumer_grants(s) {
                out.publish.push(g);
            }
        }
    }
    out
}

/// The daemon's own user: the JetStream API it uses (create, update and
/// read streams and consumers, fetch, ack, delete the ephemeral consumers
/// a replay made), its inbox, and the subjects it publishes and follows
/// for HTTP callers (any not starting with `$`, which the HTTP API refuses
/// anyway). Not: deleting or purging streams, deleting a consumer the
/// config declares (`streams`), snapshots, leader step-downs, server or
/// account administration, or reading other clients' JetStream API
/// traffic.
///
/// Deleting consumers is allowed only because a replay must remove its
/// ephemeral consumer before it answers; nats-server's deny wins over the
/// allow, so the declared consumers stay out of reach by name.
pub fn internal(streams: &BTreeMap<String, StreamConfig>) -> Effective {
    let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut deny = v(&[
        "$JS.API.STREAM.DELETE.>",
        "$JS.API.STREAM.PURGE.>",
        "$JS.API.STREAM.MSG.DELETE.>",
        "$JS.API.STREAM.SNAPSHOT.>",
        "$JS.API.STREAM.RESTORE.>",
        "$JS.API.STREAM.PEER.>",
        "$JS.API.STREAM.LEADER.>",
        "$JS.API.CONSUMER.LEADER.>",
        "$JS.API.META.>",
        "$JS.API.SERVER.>",
        "$JS.API.ACCOUNT.>",
        "$SYS.>",
        "$KV.>",
        "$O.>",
    ]);
    for (stream, s) in streams {
        for name in s.consumers.keys() {
            deny.push(format!("$JS.API.CONSUMER.DELETE.{stream}.{name}"));
        }
    }
    Effective {
        publish: Direction {
            allow: v(&[">"]),
            deny,
        },
        subscribe: Direction {
            allow: v(&[">"]),
            deny: v(&["$JS.>", "$SYS.>", "$KV.>", "$O.>"]),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_str, Format};

    fn perms(yaml: &str) -> Permissions {
        let c = parse_str(
            &format!(
                "nats:\n  users:\n    - user: u\n      password: p\n      permissions: {yaml}\n"
            ),
            Format::Yaml,
        )
        .unwrap()
        .0;
        c.nats.users[0].permissions.clone().unwrap()
    }

    fn seed_streams() -> BTreeMap<String, StreamConfig> {
        crate::config::Config::default().streams()
    }

    #[test]
    fn the_seed_producer_publishes_and_gets_only_its_ack_inbox() {
        let e = expand(
            &perms("{publish: [\"market.>\"]}"),
            &seed_streams(),
            &BTreeMap::new(),
        );
        assert_eq!(e.publish.allow, ["market.>"]);
        assert!(e.publish.deny.is_empty());
        assert_eq!(e.subscribe.allow, [INBOX]);
        assert!(e.subscribe.deny.is_empty());
    }

    #[test]
    fn the_seed_consumer_subscribes_and_gets_the_consumer_api_of_market_data_only() {
        let e = expand(
            &perms("{subscribe: [\"market.>\"]}"),
            &seed_streams(),
            &BTreeMap::new(),
        );
        assert_eq!(e.subscribe.allow, ["market.>", INBOX]);
        let p = &e.publish.allow;
        for want in [
            "$JS.API.INFO",
            "$JS.API.STREAM.NAMES",
            "$JS.API.STREAM.INFO.MARKET_DATA",
            "$JS.API.CONSUMER.CREATE.MARKET_DATA.>",
            "$JS.API.CONSUMER.DURABLE.CREATE.MARKET_DATA.>",
            "$JS.API.CONSUMER.INFO.MARKET_DATA.>",
            "$JS.API.CONSUMER.MSG.NEXT.MARKET_DATA.>",
            "$JS.ACK.MARKET_DATA.>",
            "$JS.FC.MARKET_DATA.>",
        ] {
            assert!(p.iter().any(|s| s == want), "{want} missing from {p:?}");
        }
        // Nothing to publish into, no other stream, nothing destructive.
        assert!(!p.iter().any(|s| s.starts_with("market")), "{p:?}");
        assert!(
            !p.iter().any(|s| s.contains("SYSTEM_EVENTS")
                || s.contains("DELETE")
                || s.contains("PURGE")),
            "{p:?}"
        );
        assert_eq!(p.iter().filter(|s| *s == "$JS.API.STREAM.NAMES").count(), 1);
    }

    #[test]
    fn a_wildcard_subscriber_gets_every_stream_it_can_see() {
        let e = expand(
            &perms("{subscribe: [\">\"]}"),
            &seed_streams(),
            &BTreeMap::new(),
        );
        for s in seed_streams().keys() {
            let want = format!("$JS.ACK.{s}.>");
            assert!(e.publish.allow.contains(&want), "{want}: {e:?}");
        }
        assert_eq!(
            e.publish
                .allow
                .iter()
                .filter(|s| *s == "$JS.API.STREAM.NAMES")
                .count(),
            1
        );
    }

    #[test]
    fn core_only_subjects_get_no_grants_and_the_left_out_direction_denies_all() {
        let e = expand(
            &perms("{publish: [\"chat.>\"]}"),
            &seed_streams(),
            &BTreeMap::new(),
        );
        assert_eq!(e.publish.allow, ["chat.>"]);
        assert!(e.subscribe.denies_all(), "{e:?}");
    }

    #[test]
    fn deny_only_lists_keep_meaning_everything_else() {
        let e = expand(
            &perms("{publish: {deny: [\"secret.>\"]}, subscribe: [\"market.>\"]}"),
            &seed_streams(),
            &BTreeMap::new(),
        );
        // Publishing is open except secret.>: no grants needed there.
        assert!(e.publish.allow.is_empty());
        assert_eq!(e.publish.deny, ["secret.>"]);
        assert!(!e.publish.denies_all());
        assert_eq!(e.subscribe.allow, ["market.>", INBOX]);
    }

    #[test]
    fn a_publisher_to_a_mapped_subject_gets_its_destinations_and_their_ack_inbox() {
        let c = parse_str(
            "nats:\n  mappings:\n    \"legacy.*.*\": \"market.$2.$1\"\n",
            Format::Yaml,
        )
        .unwrap()
        .0;
        let p = perms("{publish: [\"legacy.>\"]}");
        let e = expand(&p, &seed_streams(), &c.nats.mappings);
        assert_eq!(e.publish.allow, ["legacy.>", "market.*.*"]);
        assert_eq!(e.subscribe.allow, [INBOX]);
        // Without the mapping, legacy.> lands in no stream: no inbox.
        let e = expand(&p, &seed_streams(), &BTreeMap::new());
        assert!(e.subscribe.denies_all(), "{e:?}");
    }

    #[test]
    fn the_internal_user_cannot_destroy_or_administer() {
        let mut streams = seed_streams();
        streams
            .get_mut("MARKET_DATA")
            .unwrap()
            .consumers
            .insert("c".into(), crate::config::ConsumerConfig::default());
        let i = internal(&streams);
        for s in [
            "$JS.API.STREAM.DELETE.MARKET_DATA",
            "$JS.API.STREAM.PURGE.MARKET_DATA",
            "$JS.API.CONSUMER.DELETE.MARKET_DATA.c",
            "$JS.API.SERVER.REMOVE",
        ] {
            assert!(i.publish.deny.iter().any(|d| subject::matches(d, s)), "{s}");
        }
        for s in [
            "$JS.API.STREAM.CREATE.X",
            "$JS.API.STREAM.UPDATE.X",
            "$JS.API.CONSUMER.MSG.NEXT.X.c",
            // A replay's own ephemeral consumer, by the name nats-server gave it.
            "$JS.API.CONSUMER.DELETE.MARKET_DATA.aBE2ki5N",
            "$JS.ACK.X.c.1.1.1.1.0",
            "market.binance.BTCUSDT.trade",
        ] {
            assert!(
                !i.publish.deny.iter().any(|d| subject::matches(d, s)),
                "{s}"
            );
        }
        assert!(i
            .subscribe
            .deny
            .iter()
            .any(|d| subject::matches(d, "$JS.API.STREAM.INFO.X")));
    }
}
