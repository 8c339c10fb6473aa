//! Config -> nats-server.conf text (pure).
//!
//! What is rendered, and why it differs from what the Python original did:
//! - Users and JetStream limits live in one account, `MARKETPRISM`: account
//!   limits are the only place nats-server enforces max_streams and
//!   max_consumers. Without configured users, `no_auth_user` maps anonymous
//!   clients into that account, so the seed's clients connect unchanged.
//!   The daemon itself always logs in as its own internal user.
//!   (The original put `users` at the top level, which nats-server refuses.)
//! - The cluster block is rendered only with routes: nats-server 2.9 and
//!   later die at start with "JetStream cluster requires configured routes"
//!   otherwise, and the seed's services.yaml sets cluster_port without any.
//! - Sizes are rendered as byte counts and durations in Go syntax, so there
//!   is no unit ambiguity between our parser and nats-server's.

use std::fmt::Write;

use crate::config::Config;

/// The account every client (and the daemon itself) lives in.
pub use crate::config::ACCOUNT;
/// The user anonymous clients become when no users are configured.
pub const ANONYMOUS_USER: &str = "_marketprism_anonymous";
/// The daemon's own user.
pub const INTERNAL_USER: &str = "_marketprism_broker";

/// A user name and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// Inputs to rendering besides the config.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// The daemon's own login (supervised mode).
    pub internal: Option<Credentials>,
    /// Replace every password with `********` (for display).
    pub mask_secrets: bool,
    /// Where the config came from, for the header comment.
    pub source: String,
    /// The nats-server that will read the config: `sync_interval` is
    /// rendered only where it exists (see [`crate::server_version`]).
    pub server_version: Option<crate::server_version::ServerVersion>,
}

/// A double-quoted nats-conf string. Validation keeps control characters
/// out, so escaping `\` and `"` is all that is needed.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// A map key for nats-server.conf, or None when it cannot be written.
/// Quoted keys are taken verbatim up to the closing quote: no escapes (a
/// `\"` ends the key, and `\\` stays two backslashes), so a key is
/// written raw between `"`, or between `'` when it holds a `"`.
pub fn key(s: &str) -> Option<String> {
    if !s.contains('"') {
        Some(format!("\"{s}\""))
    } else if !s.contains('\'') {
        Some(format!("'{s}'"))
    } else {
        None
    }
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// One entry of the account's `users` list; with permissions, one line
/// per direction so render-nats-config shows the expansion readably.
fn user_entry(
    w: &mut String,
    user: &str,
    password: Option<&str>,
    perms: Option<&crate::permissions::Effective>,
) {
    let dir = |d: &crate::permissions::Direction| {
        if d.denies_all() {
            return "{ deny: [\">\"] }".to_string();
        }
        let mut parts = Vec::new();
        if !d.allow.is_empty() {
            parts.push(format!("allow: {}", list(&d.allow)));
        }
        if !d.deny.is_empty() {
            parts.push(format!("deny: {}", list(&d.deny)));
        }
        format!("{{ {} }}", parts.join(", "))
    };
    let _ = write!(w, "      {{ user: {}", q(user));
    if let Some(p) = password {
        let _ = write!(w, ", password: {p}");
    }
    match perms {
        None => {
            let _ = writeln!(w, " }}");
        }
        Some(e) => {
            let _ = writeln!(w, ", permissions: {{");
            let _ = writeln!(w, "          publish: {}", dir(&e.publish));
            let _ = writeln!(w, "          subscribe: {}", dir(&e.subscribe));
            let _ = writeln!(w, "        }}");
            let _ = writeln!(w, "      }}");
        }
    }
}

/// A `tls { ... }` block at `indent`.
fn tls_block(w: &mut String, indent: &str, tls: &crate::config::TlsConfig) {
    let _ = writeln!(w, "{indent}tls {{");
    let _ = writeln!(
        w,
        "{indent}  cert_file: {}",
        q(&tls.cert_file.to_string_lossy())
    );
    let _ = writeln!(
        w,
        "{indent}  key_file: {}",
        q(&tls.key_file.to_string_lossy())
    );
    if let Some(ca) = &tls.ca_file {
        let _ = writeln!(w, "{indent}  ca_file: {}", q(&ca.to_string_lossy()));
    }
    let _ = writeln!(w, "{indent}  verify: {}", tls.verify);
    let _ = writeln!(w, "{indent}}}");
}

/// Renders the nats-server configuration for `c`.
pub fn render(c: &Config, opts: &RenderOptions) -> String {
    let n = &c.nats;
    let mut out = String::new();
    let w = &mut out;
    let secret = |p: &str| {
        if opts.mask_secrets {
            q("********")
        } else {
            q(p)
        }
    };

    let _ = writeln!(
        w,
        "# nats-server configuration generated by marketprism-broker."
    );
    let _ = writeln!(w, "# Source: {}", opts.source.replace('\n', " "));
    let _ = writeln!(
        w,
        "# Rewritten at every start of nats-server: edit the broker config instead."
    );
    let _ = writeln!(w);
    if let Some(name) = &n.server_name {
        let _ = writeln!(w, "server_name: {}", q(name));
    }
    let _ = writeln!(w, "host: {}", q(&n.host));
    let _ = writeln!(w, "port: {}", n.nats_port);
    let _ = writeln!(w, "http: {}", q(&host_port(&n.host, n.http_port)));
    let _ = writeln!(w, "max_connections: {}", n.max_connections);
    let _ = writeln!(w, "max_subscriptions: {}", n.max_subscriptions);
    let _ = writeln!(w, "max_payload: {}", n.max_payload.bytes());
    let _ = writeln!(w, "write_deadline: {}", q(&n.write_deadline.to_go()));
    let _ = writeln!(w, "ping_interval: {}", q(&n.ping_interval.to_go()));
    let _ = writeln!(w, "ping_max: {}", n.max_pings_out);

    if n.jetstream_enabled {
        let _ = writeln!(w);
        let _ = writeln!(w, "jetstream {{");
        let _ = writeln!(w, "  store_dir: {}", q(&c.data_dir().to_string_lossy()));
        let _ = writeln!(w, "  max_memory_store: {}", n.jetstream_max_memory.bytes());
        let _ = writeln!(w, "  max_file_store: {}", n.jetstream_max_storage.bytes());
        if let Some(si) = crate::server_version::sync_interval(c, opts.server_version) {
            let _ = writeln!(w, "  sync_interval: {}", q(&si.render()));
        }
        let _ = writeln!(w, "}}");
    }

    let _ = writeln!(w);
    let _ = writeln!(w, "accounts {{");
    let _ = writeln!(w, "  {ACCOUNT} {{");
    if n.jetstream_enabled {
        let _ = writeln!(w, "    jetstream {{");
        let _ = writeln!(w, "      max_mem: {}", n.jetstream_max_memory.bytes());
        let _ = writeln!(w, "      max_file: {}", n.jetstream_max_storage.bytes());
        let _ = writeln!(w, "      max_streams: {}", n.jetstream_max_streams);
        let _ = writeln!(w, "      max_consumers: {}", n.jetstream_max_consumers);
        let _ = writeln!(w, "    }}");
    }
    let _ = writeln!(w, "    users: [");
    // The daemon's own login: always present, so adding or removing users
    // by reload never changes how the daemon itself connects.
    if let Some(cr) = &opts.internal {
        let internal = crate::permissions::internal(&c.streams());
        user_entry(w, &cr.user, Some(&secret(&cr.password)), Some(&internal));
    }
    if n.users.is_empty() {
        user_entry(w, ANONYMOUS_USER, None, None);
    } else {
        let streams = c.streams();
        for u in &n.users {
            let e = u
                .permissions
                .as_ref()
                .map(|p| crate::permissions::expand(p, &streams, &n.mappings));
            let password = secret(u.password.as_deref().unwrap_or_default());
            user_entry(w, &u.user, Some(&password), e.as_ref());
        }
    }
    let _ = writeln!(w, "    ]");
    if !n.mappings.is_empty() {
        let _ = writeln!(w, "    mappings {{");
        for (source, m) in &n.mappings {
            // Validation refuses sources that have no key form.
            let source = key(source).unwrap_or_default();
            match m.0.as_slice() {
                [d] if d.weight == 100 => {
                    let _ = writeln!(w, "      {source}: {}", q(&d.subject));
                }
                dests => {
                    let _ = writeln!(w, "      {source}: [");
                    for d in dests {
                        let _ = writeln!(
                            w,
                            "        {{ destination: {}, weight: {} }}",
                            q(&d.subject),
                            d.weight
                        );
                    }
                    let _ = writeln!(w, "      ]");
                }
            }
        }
        let _ = writeln!(w, "    }}");
    }
    let _ = writeln!(w, "  }}");
    let _ = writeln!(w, "}}");
    if n.users.is_empty() {
        let _ = writeln!(w, "no_auth_user: {}", q(ANONYMOUS_USER));
    }

    if let Some((host, port)) = c.cluster_listen() {
        let _ = writeln!(w);
        let _ = writeln!(w, "cluster {{");
        if let Some(name) = &n.cluster_name {
            let _ = writeln!(w, "  name: {}", q(name));
        }
        let _ = writeln!(w, "  listen: {}", q(&host_port(&host, port)));
        let _ = writeln!(w, "  routes: {}", list(&n.cluster_routes));
        if let Some(tls) = &n.cluster_tls {
            tls_block(w, "  ", tls);
        }
        let _ = writeln!(w, "}}");
        // Only a clustered node is stopped in lame-duck mode (its clients
        // have somewhere to go; see supervisor::policy), so only it needs
        // the timings; nats-server's defaults (10 s / 2 min) never apply.
        let _ = writeln!(
            w,
            "lame_duck_grace_period: {}",
            q(&n.lame_duck_grace_period.to_go())
        );
        let _ = writeln!(
            w,
            "lame_duck_duration: {}",
            q(&n.lame_duck_duration.to_go())
        );
    }

    if let Some(tls) = &n.tls {
        let _ = writeln!(w);
        tls_block(w, "", tls);
    }
    out
}

/// `host:port`, bracketing IPv6 literals.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_str, Format};

    fn cfg(yaml: &str) -> Config {
        let mut c = parse_str(yaml, Format::Yaml).unwrap().0;
        c.nats.data_dir = Some("/var/lib/marketprism-broker".into());
        c.nats.server_name = Some("node1".into());
        c
    }

    fn opts() -> RenderOptions {
        RenderOptions {
            source: "test".into(),
            internal: Some(Credentials {
                user: INTERNAL_USER.into(),
                password: "generated".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn seed_config_renders_exactly() {
        let c = cfg(include_str!("../config/examples/seed-services.yaml"));
        let expected = r#"# nats-server configuration generated by marketprism-broker.
# Source: test
# Rewritten at every start of nats-server: edit the broker config instead.

server_name: "node1"
host: "127.0.0.1"
port: 4222
http: "127.0.0.1:8222"
max_connections: 1000
max_subscriptions: 1000
max_payload: 1048576
write_deadline: "2s"
ping_interval: "2m"
ping_max: 2

jetstream {
  store_dir: "/var/lib/marketprism-broker"
  max_memory_store: 1073741824
  max_file_store: 10737418240
}

accounts {
  MARKETPRISM {
    jetstream {
      max_mem: 1073741824
      max_file: 10737418240
      max_streams: 100
      max_consumers: 1000
    }
    users: [
      { user: "_marketprism_broker", password: "generated", permissions: {
          publish: { allow: [">"], deny: ["$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>", "$JS.API.STREAM.SNAPSHOT.>", "$JS.API.STREAM.RESTORE.>", "$JS.API.STREAM.PEER.>", "$JS.API.STREAM.LEADER.>", "$JS.API.CONSUMER.LEADER.>", "$JS.API.META.>", "$JS.API.SERVER.>", "$JS.API.ACCOUNT.>", "$SYS.>", "$KV.>", "$O.>"] }
          subscribe: { allow: [">"], deny: ["$JS.>", "$SYS.>", "$KV.>", "$O.>"] }
        }
      }
      { user: "_marketprism_anonymous" }
    ]
  }
}
no_auth_user: "_marketprism_anonymous"
"#;
        assert_eq!(render(&c, &opts()), expected);
    }

    #[test]
    fn mappings_render_into_the_account() {
        let c = cfg(r#"
nats:
  mappings:
    "legacy.*.*": "market.$2.$1"
    "orders.>":
      - {destination: "orders.v1.>", weight: "90%"}
      - {destination: "orders.v2.>", weight: 10}
"#);
        let text = render(&c, &opts());
        let expected = r#"    mappings {
      "legacy.*.*": "market.$2.$1"
      "orders.>": [
        { destination: "orders.v1.>", weight: 90 }
        { destination: "orders.v2.>", weight: 10 }
      ]
    }
  }
}
"#;
        assert!(text.contains(expected), "{text}");
    }

    #[test]
    fn mapping_sources_are_written_as_raw_keys() {
        // Found by tests/fuzz.rs: a source with `"` was written as
        // "m0.\"a.>", which nats-server refuses (quoted keys have no
        // escapes), and a `\` was doubled: a mapping of another subject.
        let c = cfg(r#"
nats:
  mappings:
    'q"x.*': "to.$1"
    'back\slash.*': "to2.$1"
"#);
        let text = render(&c, &opts());
        assert!(text.contains("      'q\"x.*': \"to.$1\"\n"), "{text}");
        assert!(
            text.contains("      \"back\\slash.*\": \"to2.$1\"\n"),
            "{text}"
        );
        let e = parse_str(
            "nats:\n  mappings:\n    \"it's\\\"x\\\".*\": \"to.$1\"\n",
            crate::config::Format::Yaml,
        )
        .unwrap_err();
        assert!(e.message.contains("both"), "{e}");
    }

    #[test]
    fn no_cluster_block_without_routes() {
        let c = cfg("nats:\n  cluster_port: 6222\n  cluster_name: x\n");
        let text = render(&c, &opts());
        assert!(!text.contains("cluster {"));
        assert!(!text.contains("lame_duck"), "{text}");
    }

    #[test]
    fn a_clustered_node_gets_the_lame_duck_timings() {
        let c = cfg("nats:\n  cluster_routes: [\"nats-route://node2:6222\"]\n");
        let text = render(&c, &opts());
        assert!(
            text.contains("}\nlame_duck_grace_period: \"10s\"\nlame_duck_duration: \"30s\"\n"),
            "{text}"
        );
        let c = cfg("nats:\n  cluster_routes: [\"nats-route://node2:6222\"]\n  lame_duck_grace_period: 1500ms\n  lame_duck_duration: 2m\n");
        let text = render(&c, &opts());
        assert!(
            text.contains("lame_duck_grace_period: \"1500ms\"\nlame_duck_duration: \"2m\"\n"),
            "{text}"
        );
    }

    #[test]
    fn cluster_block_with_routes() {
        let c = cfg("nats:\n  cluster_name: mp\n  cluster_listen: \"0.0.0.0:6222\"\n  cluster_routes: [\"nats-route://node2:6222\"]\n");
        let text = render(&c, &opts());
        assert!(text.contains("cluster {\n  name: \"mp\"\n  listen: \"0.0.0.0:6222\"\n  routes: [\"nats-route://node2:6222\"]\n}\n"), "{text}");
    }

    #[test]
    fn users_go_into_the_account_with_the_internal_user_and_no_anonymous_access() {
        let c = cfg("nats:\n  users:\n    - user: producer\n      password: \"p\\\"w\"\n      permissions:\n        publish: [\"market.>\"]\n        subscribe: {allow: [\"_INBOX.>\"], deny: [\"secret.>\"]}\n");
        let mut o = opts();
        o.internal.as_mut().unwrap().password = "s3cret".into();
        let text = render(&c, &o);
        assert!(!text.contains("no_auth_user"), "{text}");
        assert!(
            text.contains("{ user: \"_marketprism_broker\", password: \"s3cret\", permissions: {"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"      { user: "producer", password: "p\"w", permissions: {
          publish: { allow: ["market.>"] }
          subscribe: { allow: ["_INBOX.>"], deny: ["secret.>"] }
        }
      }
"#
            ),
            "{text}"
        );
        o.mask_secrets = true;
        let masked = render(&c, &o);
        assert!(
            !masked.contains("s3cret") && !masked.contains("p\\\"w"),
            "{masked}"
        );
    }

    #[test]
    fn the_seed_users_get_least_privilege_with_their_jetstream_grants() {
        let c = cfg(include_str!("../config/examples/security.yaml"));
        let text = render(&c, &opts());
        let expected = r#"      { user: "producer", password: "change-me-producer", permissions: {
          publish: { allow: ["market.>"] }
          subscribe: { allow: ["_INBOX.>"] }
        }
      }
      { user: "consumer", password: "change-me-consumer", permissions: {
          publish: { allow: ["$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.INFO.MARKET_DATA", "$JS.API.CONSUMER.CREATE.MARKET_DATA", "$JS.API.CONSUMER.CREATE.MARKET_DATA.>", "$JS.API.CONSUMER.DURABLE.CREATE.MARKET_DATA.>", "$JS.API.CONSUMER.INFO.MARKET_DATA.>", "$JS.API.CONSUMER.MSG.NEXT.MARKET_DATA.>", "$JS.ACK.MARKET_DATA.>", "$JS.FC.MARKET_DATA.>"] }
          subscribe: { allow: ["market.>", "_INBOX.>"] }
        }
      }
"#;
        assert!(text.contains(expected), "{text}");
        assert!(!text.contains("no_auth_user"), "{text}");
    }

    #[test]
    fn a_left_out_direction_with_no_grants_denies_everything() {
        let c = cfg("nats:
  users:
    - user: chat
      password: p
      permissions:
        publish: [\"chat.>\"]
");
        let text = render(&c, &opts());
        assert!(
            text.contains("          publish: { allow: [\"chat.>\"] }\n          subscribe: { deny: [\">\"] }\n"),
            "{text}"
        );
    }

    #[test]
    fn cluster_tls_goes_into_the_cluster_block() {
        let c = cfg("nats:\n  cluster_name: mp\n  cluster_routes: [\"nats-route://node2:6222\"]\n");
        let mut c = c;
        c.nats.cluster_tls = Some(crate::config::TlsConfig {
            cert_file: "/etc/mp/route.pem".into(),
            key_file: "/etc/mp/route-key.pem".into(),
            ca_file: Some("/etc/mp/ca.pem".into()),
            verify: true,
        });
        let text = render(&c, &opts());
        assert!(
            text.contains("  routes: [\"nats-route://node2:6222\"]\n  tls {\n    cert_file: \"/etc/mp/route.pem\"\n    key_file: \"/etc/mp/route-key.pem\"\n    ca_file: \"/etc/mp/ca.pem\"\n    verify: true\n  }\n}\n"),
            "{text}"
        );
        assert!(
            !text.contains("\ntls {"),
            "client TLS was not asked for: {text}"
        );
    }

    #[test]
    fn sync_interval_is_rendered_quoted_where_the_server_has_it() {
        use crate::server_version::ServerVersion;
        let with = |yaml: &str, v: &str| {
            render(
                &cfg(yaml),
                &RenderOptions {
                    server_version: ServerVersion::parse(v),
                    ..opts()
                },
            )
        };
        // Quoted: nats-server's lexer reads a bare 2m as the number 2000000.
        let text = with("port: 1\n", "v2.10.27");
        assert!(text.contains("  sync_interval: \"1s\"\n}"), "{text}");
        let text = with("nats:\n  sync_interval: always\n", "v2.15.1");
        assert!(text.contains("  sync_interval: \"always\"\n"), "{text}");
        let text = with("port: 1\n", "v2.9.10");
        assert!(!text.contains("sync_interval"), "{text}");
    }

    #[test]
    fn jetstream_off_renders_no_store() {
        let c = cfg("nats:\n  jetstream_enabled: false\n");
        let text = render(&c, &opts());
        assert!(!text.contains("jetstream"), "{text}");
    }

    #[test]
    fn tuning_keys_render_in_nats_units() {
        let c = cfg("nats:\n  max_payload: 8MB\n  write_deadline: 1500ms\n  ping_interval: 30s\n  max_pings_out: 5\n  jetstream_max_streams: -1\n");
        let text = render(&c, &opts());
        for line in [
            "max_payload: 8388608",
            "write_deadline: \"1500ms\"",
            "ping_interval: \"30s\"",
            "ping_max: 5",
            "max_streams: -1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(host_port("::", 8222), "[::]:8222");
        assert_eq!(host_port("127.0.0.1", 8222), "127.0.0.1:8222");
    }
}
