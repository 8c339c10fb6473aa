use super::*;
use std::time::Duration;

fn yaml(text: &str) -> Result<Config, ConfigError> {
    parse_str(text, Format::Yaml).map(|(c, _)| c)
}

fn yaml_err(text: &str) -> ConfigError {
    yaml(text).expect_err("config should be refused")
}

const SEED: &str = include_str!("../../config/examples/seed-services.yaml");

#[test]
fn the_seeds_services_yaml_is_accepted_verbatim() {
    let (c, warnings) = parse_str(SEED, Format::Yaml).unwrap();
    assert_eq!(c.port, 8085);
    assert_eq!(c.nats.nats_port, 4222);
    assert_eq!(c.nats.cluster_port, Some(6222));
    assert_eq!(c.nats.jetstream_max_memory, Size(1 << 30));
    assert_eq!(c.nats.jetstream_max_storage, Size(10 << 30));
    assert!(c.data_dir().ends_with("data/nats") && c.data_dir().is_absolute());
    let s = &c.nats.streams["CUSTOM_STREAM"];
    assert_eq!(s.subjects, vec!["custom.>"]);
    assert_eq!(s.max_age.get(), Duration::from_secs(7200));
    assert_eq!(s.max_msgs, 500_000);
    assert_eq!(s.storage, Storage::File);
    // cluster_port without routes is the seed's normal single node.
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(c.cluster_listen(), None);
    let (_, warnings) = parse_str("nats:\n  cluster_name: x\n", Format::Yaml).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("cluster_routes is empty")),
        "{warnings:?}"
    );
}

#[test]
fn the_wrapper_key_is_optional() {
    let unwrapped: String = SEED
        .lines()
        .filter(|l| !l.starts_with("message-broker-service:"))
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect();
    assert_eq!(yaml(&unwrapped).unwrap(), yaml(SEED).unwrap());
}

#[test]
fn other_services_in_services_yaml_are_ignored() {
    let text = format!("api-gateway-service:\n  port: 8080\n  whatever: 1\n{SEED}");
    assert_eq!(yaml(&text).unwrap().port, 8085);
}

#[test]
fn defaults_are_the_seeds() {
    let c = yaml("").unwrap();
    assert_eq!((c.port, c.host.as_str()), (8085, "127.0.0.1"));
    assert!(c.auto_start_nats && c.auto_create_streams);
    assert_eq!(
        (c.nats.nats_port, c.nats.http_port, c.nats.host.as_str()),
        (4222, 8222, "127.0.0.1")
    );
    assert_eq!(c.nats.max_payload, Size(1 << 20));
    assert_eq!(c.nats.write_deadline, Dur::secs(2));
    assert_eq!(c.nats.ping_interval, Dur::secs(120));
    assert_eq!(c.nats.max_pings_out, 2);
    assert_eq!(
        (c.nats.max_connections, c.nats.max_subscriptions),
        (1000, 1000)
    );
    assert_eq!(
        (c.nats.jetstream_max_streams, c.nats.jetstream_max_consumers),
        (100, 1000)
    );
    let streams = c.streams();
    let names: Vec<&str> = streams.keys().map(String::as_str).collect();
    assert_eq!(names, ["MARKET_DATA", "SERVICE_LOGS", "SYSTEM_EVENTS"]);
    let md = &streams["MARKET_DATA"];
    assert_eq!(
        (
            md.subjects[0].as_str(),
            md.max_age,
            md.max_msgs,
            md.storage,
            md.retention
        ),
        (
            "market.>",
            Dur::secs(3600),
            1_000_000,
            Storage::File,
            Retention::Limits
        )
    );
    let se = &streams["SYSTEM_EVENTS"];
    assert_eq!(
        (se.subjects[0].as_str(), se.max_age, se.max_msgs),
        ("system.>", Dur::secs(86_400), 100_000)
    );
    let sl = &streams["SERVICE_LOGS"];
    assert_eq!(
        (sl.subjects[0].as_str(), sl.max_age, sl.max_msgs),
        ("service.>", Dur::secs(604_800), 500_000)
    );
}

#[test]
fn the_seeds_custom_stream_examples_merge_with_the_defaults() {
    let c = yaml(
        r#"
nats:
  streams:
    CUSTOM_ANALYTICS:
      subjects: ["analytics.>", "metrics.>"]
      retention: "workqueue"
      max_age: 86400
      max_msgs: 1000000
      storage: "memory"
    USER_EVENTS:
      subjects: ["user.>"]
      retention: "interest"
      max_age: 3600
      max_msgs: 100000
      storage: "file"
"#,
    )
    .unwrap();
    let s = c.streams();
    assert_eq!(s.len(), 5);
    assert_eq!(s["CUSTOM_ANALYTICS"].retention, Retention::Workqueue);
    assert_eq!(s["CUSTOM_ANALYTICS"].storage, Storage::Memory);
    assert_eq!(s["USER_EVENTS"].retention, Retention::Interest);
}

#[test]
fn a_configured_stream_replaces_the_default_of_that_name() {
    let c = yaml("nats:\n  streams:\n    MARKET_DATA:\n      subjects: [\"market.>\"]\n      max_age: 60\n      storage: memory\n").unwrap();
    let s = c.streams();
    assert_eq!(s["MARKET_DATA"].max_age, Dur::secs(60));
    assert_eq!(s["MARKET_DATA"].storage, Storage::Memory);
    assert_eq!(s.len(), 3);
}

#[test]
fn toml_uses_the_same_schema() {
    let c = parse_str(
        r#"
port = 8085
[nats]
nats_port = 4222
max_payload = "2MB"
write_deadline = "5s"
[nats.streams.CUSTOM_STREAM]
subjects = ["custom.>"]
max_age = 7200
"#,
        Format::Toml,
    )
    .unwrap()
    .0;
    assert_eq!(c.nats.max_payload, Size(2 << 20));
    assert_eq!(c.nats.write_deadline, Dur::secs(5));
    assert_eq!(c.nats.streams["CUSTOM_STREAM"].max_age, Dur::secs(7200));
}

#[test]
fn misspelled_key_names_line_key_and_the_closest_valid_key() {
    let e = yaml_err("port: 8085\nnats:\n  nats_prot: 4222\n");
    assert_eq!(e.line, Some(3));
    assert_eq!(e.key, "nats.nats_prot");
    assert!(e.to_string().contains("did you mean `nats_port`?"), "{e}");
    assert!(e.to_string().starts_with("built-in config: ") || e.file.is_none());
}

#[test]
fn misspelled_key_inside_the_wrapper_and_a_stream() {
    let text = SEED.replace("max_msgs: 500000", "max_mesgs: 500000");
    let e = yaml_err(&text);
    assert_eq!(e.key, "nats.streams.CUSTOM_STREAM.max_mesgs");
    assert_eq!(e.line, Some(23));
    assert!(e.message.contains("did you mean `max_msgs`?"), "{e}");
}

#[test]
fn toml_errors_have_lines_too() {
    let e = parse_str("port = 8085\n[nats]\nhttp_prot = 8222\n", Format::Toml).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (Some(3), "nats.http_prot"));
    assert!(e.message.contains("did you mean `http_port`?"));
}

#[test]
fn wrong_types_and_units_are_refused_with_their_line() {
    let e = yaml_err("nats:\n  nats_port: \"four\"\n");
    assert_eq!((e.line, e.key.as_str()), (Some(2), "nats.nats_port"));
    let e = yaml_err("nats:\n  jetstream_max_memory: \"1XB\"\n");
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(2), "nats.jetstream_max_memory")
    );
    assert!(e.message.contains("unknown unit \"XB\""), "{e}");
    let e = yaml_err("nats:\n  write_deadline: \"soon\"\n");
    assert_eq!((e.line, e.key.as_str()), (Some(2), "nats.write_deadline"));
    assert!(e.message.contains("invalid duration"), "{e}");
    let e = yaml_err(
        "nats:\n  streams:\n    X:\n      subjects: [\"x.>\"]\n      retention: forever\n",
    );
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(5), "nats.streams.X.retention")
    );
    assert!(
        e.message.contains("`limits`, `interest`, `workqueue`"),
        "{e}"
    );
    let e = yaml_err("auto_start_nats: maybe\n");
    assert_eq!((e.line, e.key.as_str()), (Some(1), "auto_start_nats"));
}

#[test]
fn overlapping_stream_subjects_are_refused() {
    let e = yaml_err("nats:\n  streams:\n    BINANCE:\n      subjects: [\"market.binance.>\"]\n");
    assert_eq!(e.key, "nats.streams.BINANCE.subjects");
    assert_eq!(e.line, Some(4));
    assert!(
        e.message
            .contains("overlaps \"market.>\" of stream MARKET_DATA"),
        "{e}"
    );
    let e = yaml_err("nats:\n  streams:\n    A:\n      subjects: [\"a.*\", \"a.b\"]\n");
    assert!(e.message.contains("same stream"), "{e}");
}

#[test]
fn invalid_stream_names_and_subjects_are_refused() {
    let e = yaml_err("nats:\n  streams:\n    \"BAD.NAME\":\n      subjects: [\"bad.>\"]\n");
    assert_eq!((e.line, e.key.as_str()), (Some(3), "nats.streams.BAD.NAME"));
    assert!(e.message.contains("invalid stream name"), "{e}");
    let e = yaml_err("nats:\n  streams:\n    X:\n      subjects: [\"a.>.b\"]\n");
    assert!(e.message.contains("last token"), "{e}");
    let e = yaml_err("nats:\n  streams:\n    X:\n      subjects: []\n");
    assert!(e.message.contains("at least one subject"), "{e}");
    let e = yaml_err("nats:\n  streams:\n    X:\n      max_age: 5\n");
    assert_eq!((e.line, e.key.as_str()), (Some(3), "nats.streams.X"));
    assert!(e.message.contains("missing required key `subjects`"), "{e}");
}

#[test]
fn ports_must_differ() {
    let e = yaml_err("port: 8222\n");
    assert_eq!(e.key, "nats.http_port");
    assert!(e.message.contains("already used by `port`"), "{e}");
    let e = yaml_err("nats:\n  nats_port: 0\n");
    assert_eq!((e.line, e.key.as_str()), (Some(2), "nats.nats_port"));
}

#[test]
fn replicas_need_a_cluster() {
    let e = yaml_err("nats:\n  streams:\n    X:\n      subjects: [x]\n      replicas: 3\n");
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(5), "nats.streams.X.replicas")
    );
    assert!(e.message.contains("cluster of at least 3 nodes"), "{e}");
}

#[test]
fn seed_security_and_cluster_blocks_parse() {
    let c = yaml(
        r#"
nats:
  cluster_name: "marketprism-cluster"
  cluster_listen: "0.0.0.0:6222"
  cluster_routes:
    - "nats-route://node2:6222"
    - "nats-route://node3:6222"
  client_urls:
    - "nats://node1:4222"
    - "nats://node2:4222"
  users:
    - user: "producer"
      password: "producer_pass"
      permissions:
        publish: ["market.>"]
    - user: "consumer"
      password: "consumer_pass"
      permissions:
        subscribe: ["market.>"]
"#,
    )
    .unwrap();
    assert_eq!(c.cluster_listen(), Some(("0.0.0.0".into(), 6222)));
    assert_eq!(
        c.nats.users[0]
            .permissions
            .as_ref()
            .unwrap()
            .publish
            .as_ref()
            .unwrap()
            .allow,
        vec!["market.>"]
    );
    assert!(c.nats.users[1]
        .permissions
        .as_ref()
        .unwrap()
        .publish
        .is_none());
}

#[test]
fn missing_tls_files_are_named() {
    let e = yaml_err(
        "nats:\n  tls:\n    cert_file: /nonexistent/cert.pem\n    key_file: /nonexistent/key.pem\n",
    );
    assert_eq!((e.line, e.key.as_str()), (Some(3), "nats.tls.cert_file"));
    assert!(e.message.contains("/nonexistent/cert.pem"), "{e}");
}

#[test]
fn non_mapping_documents_are_refused() {
    let e = yaml_err("- a\n- b\n");
    assert!(e.message.contains("must be a mapping"), "{e}");
    let e = yaml_err("nats: 5\n");
    assert_eq!(e.key, "nats");
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broker.yaml");
    std::fs::write(&p, "port: 8085\nnats:\n  nats_prot: 1\n").unwrap();
    let e = load_file(&p).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:3: nats.nats_prot: unknown key `nats_prot` (did you mean `nats_port`?)",
            p.display()
        )
    );
    let missing = dir.path().join("nope.yaml");
    assert!(load_file(&missing)
        .unwrap_err()
        .to_string()
        .contains("does not exist"));
    let weird = dir.path().join("broker.conf");
    std::fs::write(&weird, "").unwrap();
    assert!(load_file(&weird).unwrap_err().message.contains("*.yaml"));
}

/// Whatever the bytes, loading answers Ok or Err: never a panic.
fn must_not_panic(text: &str, format: Format) {
    let r = std::panic::catch_unwind(|| parse_str(text, format).map(|_| ()));
    assert!(r.is_ok(), "panicked on {text:?}");
}

#[test]
fn truncated_and_mutated_configs_never_panic() {
    let sources = [
        (SEED, Format::Yaml),
        (include_str!("../../config/broker.yaml"), Format::Yaml),
        (
            include_str!("../../config/examples/broker.toml"),
            Format::Toml,
        ),
        (
            include_str!("../../config/examples/security.yaml"),
            Format::Yaml,
        ),
        (
            include_str!("../../config/examples/consumers.yaml"),
            Format::Yaml,
        ),
    ];
    for (src, format) in sources {
        for cut in 0..src.len() {
            if src.is_char_boundary(cut) {
                must_not_panic(&src[..cut], format);
            }
        }
        let bytes = src.as_bytes();
        for (i, replacement) in (0..bytes.len()).zip(
            [
                b'"', b'[', b'{', b':', b'-', b'\t', b'\n', b'*', b'&', b'!', b'#', b'0',
            ]
            .iter()
            .cycle(),
        ) {
            let mut m = bytes.to_vec();
            m[i] = *replacement;
            must_not_panic(&String::from_utf8_lossy(&m), format);
        }
    }
}

#[test]
fn absurd_nesting_is_an_error_not_a_crash() {
    let deep = format!("nats: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    let e = parse_str(&deep, Format::Yaml).unwrap_err();
    assert!(e.message.contains("recursion limit"), "{e}");
    let deep = format!("nats = {}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_str(&deep, Format::Toml).is_err());
}

#[test]
fn bad_mappings_name_their_key_and_line() {
    let e = yaml_err("nats:\n  mappings:\n    \"a.*\": \"b\"\n");
    assert_eq!((e.line, e.key.as_str()), (Some(3), "nats.mappings.a.*"));
    assert!(e.to_string().contains("does not use wildcard 1"), "{e}");
    let e = yaml_err(
        "nats:\n  mappings:\n    \"a\":\n      - {destination: b, weight: 60}\n      - {destination: c, weight: 30}\n",
    );
    assert!(e.to_string().contains("add up to 90%"), "{e}");
    let e = yaml_err("nats:\n  mappings:\n    \"a\":\n      - {destination: b, weight: 140}\n");
    assert!(e.to_string().contains("from 1 to 100"), "{e}");
    let e = yaml_err("nats:\n  mappings:\n    \"a.>\": \"b.>\"\n    \"a.x\": \"c\"\n");
    assert!(e.to_string().contains("overlaps"), "{e}");
}

const MARKET_WITH_CONSUMERS: &str = r#"
nats:
  streams:
    MARKET_DATA:
      subjects: ["market.>"]
      max_age: 3600
      max_msgs: 1000000
      consumers:
        market-consumer:
          filter_subject: "market.>"
        btc-trades:
          filter_subjects: ["market.*.BTCUSDT.trade"]
          deliver_policy: by_start_sequence
          opt_start_seq: 100
          ack_policy: all
          ack_wait: 1m
          max_deliver: 5
          max_ack_pending: 50
"#;

#[test]
fn consumers_are_declared_under_their_stream_with_defaults() {
    let c = yaml(MARKET_WITH_CONSUMERS).unwrap();
    let md = &c.streams()["MARKET_DATA"];
    let mc = &md.consumers["market-consumer"];
    assert_eq!(mc.filters(), ["market.>"]);
    assert_eq!(
        (
            mc.deliver_policy,
            mc.ack_policy,
            mc.ack_wait,
            mc.max_deliver,
            mc.max_ack_pending
        ),
        (
            DeliverPolicy::All,
            AckPolicy::Explicit,
            Dur::secs(30),
            -1,
            1000
        )
    );
    let btc = &md.consumers["btc-trades"];
    assert_eq!(btc.filters(), ["market.*.BTCUSDT.trade"]);
    assert_eq!(
        (btc.deliver_policy, btc.opt_start_seq),
        (DeliverPolicy::ByStartSequence, Some(100))
    );
    assert_eq!(
        (
            btc.ack_policy,
            btc.ack_wait,
            btc.max_deliver,
            btc.max_ack_pending
        ),
        (AckPolicy::All, Dur::secs(60), 5, 50)
    );
    // The seed's defaults declare no consumer: its clients create their own.
    assert!(yaml("")
        .unwrap()
        .streams()
        .values()
        .all(|s| s.consumers.is_empty()));
    assert_eq!(c.api.fetch_max_batch, 1000);
    assert_eq!(c.api.fetch_max_wait, Dur::secs(30));
}

#[test]
fn consumer_mistakes_name_the_consumer_key_and_line() {
    let e = yaml_err(&MARKET_WITH_CONSUMERS.replace("ack_wait: 1m", "ack_wiat: 1m"));
    assert_eq!(
        (e.line, e.key.as_str()),
        (
            Some(16),
            "nats.streams.MARKET_DATA.consumers.btc-trades.ack_wiat"
        )
    );
    assert!(e.message.contains("did you mean `ack_wait`?"), "{e}");

    let e = yaml_err(&MARKET_WITH_CONSUMERS.replace(
        "filter_subject: \"market.>\"",
        "filter_subject: \"system.>\"",
    ));
    assert_eq!(
        (e.line, e.key.as_str()),
        (
            Some(10),
            "nats.streams.MARKET_DATA.consumers.market-consumer.filter_subject"
        )
    );
    assert!(
        e.message.contains("not within the stream's subjects"),
        "{e}"
    );

    let e = yaml_err(&MARKET_WITH_CONSUMERS.replace("          opt_start_seq: 100\n", ""));
    assert_eq!(
        e.key,
        "nats.streams.MARKET_DATA.consumers.btc-trades.opt_start_seq"
    );
    assert!(e.message.contains("needs opt_start_seq"), "{e}");

    let e = yaml_err(
        &MARKET_WITH_CONSUMERS
            .replace("deliver_policy: by_start_sequence", "deliver_policy: first"),
    );
    assert_eq!(e.line, Some(13));
    assert!(e.message.contains("`by_start_sequence`"), "{e}");

    let e = yaml_err(&MARKET_WITH_CONSUMERS.replace("btc-trades:", "\"btc.trades\":"));
    assert_eq!(e.key, "nats.streams.MARKET_DATA.consumers.btc.trades");
    assert!(e.message.contains("invalid consumer name"), "{e}");

    let e = yaml_err(&MARKET_WITH_CONSUMERS.replace(
        "filter_subject: \"market.>\"",
        "filter_subject: \"market.>\"\n          filter_subjects: [\"market.a\"]",
    ));
    assert!(e.message.contains("not both"), "{e}");

    let e = yaml_err(&MARKET_WITH_CONSUMERS.replace(
        "[\"market.*.BTCUSDT.trade\"]",
        "[\"market.*.BTCUSDT.trade\", \"market.binance.>\"]",
    ));
    assert!(e.message.contains("overlaps"), "{e}");

    let e = yaml_err(&MARKET_WITH_CONSUMERS.replace("max_ack_pending: 50", "max_ack_pending: 0"));
    assert!(e.message.contains("-1 for no limit"), "{e}");
}

#[test]
fn the_shipped_consumers_example_keeps_market_data_as_the_seed_has_it() {
    let c = yaml(include_str!("../../config/examples/consumers.yaml")).unwrap();
    let streams = c.streams();
    let md = &streams["MARKET_DATA"];
    let seed = &default_streams()["MARKET_DATA"];
    assert_eq!(
        (
            &md.subjects,
            md.max_age,
            md.max_msgs,
            md.storage,
            md.retention
        ),
        (
            &seed.subjects,
            seed.max_age,
            seed.max_msgs,
            seed.storage,
            seed.retention
        )
    );
    let names: Vec<&str> = md.consumers.keys().map(String::as_str).collect();
    assert_eq!(names, ["btc-trades", "market-consumer"]);
    assert_eq!(
        md.consumers["btc-trades"].deliver_policy,
        DeliverPolicy::New
    );
}

#[test]
fn workqueue_consumers_must_not_share_messages() {
    let wq = "nats:\n  streams:\n    JOBS:\n      subjects: [\"jobs.>\"]\n      retention: workqueue\n      consumers:\n        a:\n          filter_subject: \"jobs.a.>\"\n        b:\n          filter_subject: \"jobs.>\"\n";
    let e = yaml_err(wq);
    assert_eq!(e.key, "nats.streams.JOBS.consumers.b.filter_subject");
    assert!(e.message.contains("consumer a's"), "{e}");
    yaml(&wq.replace("\"jobs.>\"\n", "\"jobs.b.>\"\n")).unwrap();
    let e = yaml_err(&wq.replace(
        "filter_subject: \"jobs.a.>\"",
        "filter_subject: \"jobs.a.>\"\n          ack_policy: none",
    ));
    assert!(e.message.contains("ack_policy explicit"), "{e}");
}

#[test]
fn max_connections_defaults_to_1024_and_must_be_positive() {
    assert_eq!(yaml("").unwrap().api.max_connections, 1024);
    assert_eq!(
        yaml("api:\n  max_connections: 8\n")
            .unwrap()
            .api
            .max_connections,
        8
    );
    let (_, warnings) = parse_str("api:\n  max_connections: 100\n", Format::Yaml).unwrap();
    assert!(
        warnings.iter().any(|w| w.contains("sse_max_clients (100)")),
        "{warnings:?}"
    );
    let (_, warnings) = parse_str("", Format::Yaml).unwrap();
    assert!(warnings.iter().all(|w| !w.contains("sse_max_clients")));
    let e = yaml_err("api:\n  max_connections: 0\n");
    assert_eq!((e.key.as_str(), e.line), ("api.max_connections", Some(2)));
    assert!(e.message.contains("at least 1"), "{e}");
}

#[test]
fn the_cluster_name_nats_server_reserves_is_refused() {
    // Found by tests/fuzz.rs: a current nats-server refuses cluster name
    // `_` ("cluster name is reserved"), which validated.
    let e = yaml_err("nats:\n  cluster_name: \"_\"\n");
    assert_eq!(e.key, "nats.cluster_name");
    assert!(e.message.contains("reserved"), "{e}");
    yaml("nats:\n  cluster_name: \"_a\"\n").unwrap();
}

const CLUSTER: &str = "nats:\n  server_name: n1\n  cluster_listen: \"127.0.0.1:6222\"\n  cluster_routes:\n    - \"nats-route://127.0.0.1:6223\"\n    - \"nats-route://127.0.0.1:6224\"\n";

#[test]
fn consumer_replicas_are_validated_like_the_streams() {
    // 0 (inherit) and up to the cluster size are fine.
    let ok = format!("{CLUSTER}  streams:\n    X:\n      subjects: [x]\n      replicas: 3\n      consumers:\n        A: {{}}\n        B:\n          replicas: 3\n");
    let c = yaml(&ok).unwrap();
    assert_eq!(c.nats.streams["X"].consumers["A"].replicas, 0);
    assert_eq!(c.nats.streams["X"].consumers["B"].replicas, 3);
    // A single node cannot hold 3 copies: named with key and line.
    let e = yaml_err("nats:\n  streams:\n    X:\n      subjects: [x]\n      consumers:\n        B:\n          replicas: 3\n");
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(7), "nats.streams.X.consumers.B.replicas")
    );
    assert!(e.message.contains("cluster of at least 3 nodes"), "{e}");
    let e = yaml_err(&format!("{CLUSTER}  streams:\n    X:\n      subjects: [x]\n      consumers:\n        B:\n          replicas: 6\n"));
    assert_eq!(e.key, "nats.streams.X.consumers.B.replicas");
    assert!(e.message.contains("between 1 and 5"), "{e}");
}

#[test]
fn one_route_list_fits_every_node_and_a_route_to_itself_is_not_a_peer() {
    // Every node lists all three; this one is 127.0.0.1:6222.
    let all = "nats:\n  server_name: n1\n  cluster_listen: \"127.0.0.1:6222\"\n  cluster_routes:\n    - \"nats-route://127.0.0.1:6222\"\n    - \"nats-route://127.0.0.1:6223\"\n    - \"nats-route://127.0.0.1:6224\"\n";
    let c = yaml(&format!(
        "{all}  streams:\n    X:\n      subjects: [x]\n      replicas: 3\n"
    ))
    .unwrap();
    assert_eq!(c.cluster_nodes(), 3);
    assert!(c.is_own_route("nats-route://127.0.0.1:6222"));
    assert!(!c.is_own_route("nats-route://127.0.0.1:6223"));
    // Rendered as given: nats-server ignores the route to itself.
    assert!(crate::natsconf::render(&c, &Default::default())
        .contains("routes: [\"nats-route://127.0.0.1:6222\", \"nats-route://127.0.0.1:6223\""));
    // Listening everywhere: loopback, this host's name and its own
    // addresses on the cluster port are this node; other hosts are peers.
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let every = format!("nats:\n  server_name: n1\n  cluster_listen: \"0.0.0.0:6222\"\n  cluster_routes: [\"nats-route://localhost:6222\", \"nats-route://{host}:6222\", \"nats-route://127.0.0.2:6222\", \"nats-route://node2:6222\", \"nats-route://192.0.2.1:6222\", \"nats-route://localhost:7222\"]\n");
    let c = yaml(&every).unwrap();
    // node2, 192.0.2.1 (not this machine's) and another port are peers.
    assert_eq!(c.cluster_nodes(), 4);
    // The count is what replicas are checked against: a route to itself
    // does not make a two-node cluster hold 3 copies.
    let two = "nats:\n  server_name: n1\n  cluster_listen: \"127.0.0.1:6222\"\n  cluster_routes: [\"nats-route://127.0.0.1:6222\", \"nats-route://127.0.0.1:6223\"]\n  streams:\n    X:\n      subjects: [x]\n      replicas: 3\n";
    let e = yaml_err(two);
    assert_eq!(e.key, "nats.streams.X.replicas");
    assert!(e.message.contains("lists 1 other node(s)"), "{e}");
    yaml(CLUSTER).unwrap();
}

#[test]
fn single_copy_streams_in_a_cluster_are_warned_about() {
    let (_, warnings) = parse_str(CLUSTER, Format::Yaml).unwrap();
    let w = warnings
        .iter()
        .find(|w| w.contains("keep one copy"))
        .expect("a warning about R1 streams");
    assert!(
        w.contains("MARKET_DATA, SERVICE_LOGS, SYSTEM_EVENTS"),
        "{w}"
    );
    // The shipped cluster example keeps three copies of each.
    let (_, warnings) = parse_str(
        include_str!("../../config/examples/cluster.yaml"),
        Format::Yaml,
    )
    .unwrap();
    assert!(
        !warnings.iter().any(|w| w.contains("keep one copy")),
        "{warnings:?}"
    );
    // A single node: one copy is all there is, nothing to say.
    let (_, warnings) = parse_str("nats:\n  cluster_port: 6222\n", Format::Yaml).unwrap();
    assert!(!warnings.iter().any(|w| w.contains("keep one copy")));
}

#[test]
fn a_jetstream_cluster_needs_a_server_name() {
    let mut c = yaml(CLUSTER).unwrap();
    c.nats.server_name = None;
    let v = super::validate::validate(&c).unwrap_err();
    assert_eq!(v.path, vec!["nats", "server_name"]);
    assert!(v.message.contains("needs a server_name"), "{}", v.message);
    // Without JetStream or without routes the name is optional.
    c.nats.jetstream_enabled = false;
    super::validate::validate(&c).unwrap();
    let mut single = yaml("nats:\n  cluster_port: 6222\n").unwrap();
    single.nats.server_name = None;
    super::validate::validate(&single).unwrap();
}

#[test]
fn a_bad_tokens_file_names_the_key_the_file_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("tokens");
    std::fs::write(&t, "# x\nshort\n").unwrap();
    let p = dir.path().join("broker.yaml");
    std::fs::write(
        &p,
        format!("api:\n  tokens_file: {:?}\n", t.display().to_string()),
    )
    .unwrap();
    let e = load_file(&p).unwrap_err();
    assert_eq!((e.key.as_str(), e.line), ("api.tokens_file", Some(2)));
    assert!(e.message.contains(&format!("{}:2:", t.display())), "{e}");
}

#[test]
fn api_tls_keys_are_named() {
    let e = yaml_err(
        "api:\n  tls:\n    cert_file: /nonexistent/c.pem\n    key_file: /nonexistent/k.pem\n",
    );
    assert_eq!((e.line, e.key.as_str()), (Some(3), "api.tls.cert_file"));
    let e = yaml_err("api:\n  tls:\n    cert_file: a.pem\n    keyfile: k.pem\n");
    assert!(e.message.contains("key_file"), "{e}");
}

#[test]
fn durability_and_sync_interval_parse_with_clear_errors() {
    let c = yaml("port: 1\n").unwrap();
    assert_eq!(c.nats.durability, Durability::Sync);
    assert_eq!(c.nats.sync_interval, None);
    let c = yaml("nats:\n  durability: lazy\n  sync_interval: always\n").unwrap();
    assert_eq!(c.nats.durability, Durability::Lazy);
    assert_eq!(c.nats.sync_interval, Some(SyncInterval::Always));
    let c = yaml("nats:\n  sync_interval: 250ms\n").unwrap();
    assert_eq!(
        c.nats.sync_interval,
        Some(SyncInterval::Every(Dur::millis(250)))
    );
    let c = toml::from_str::<Config>("[nats]\nsync_interval = 2\n").unwrap();
    assert_eq!(
        c.nats.sync_interval,
        Some(SyncInterval::Every(Dur::secs(2)))
    );

    let e = yaml_err("nats:\n  durability: fast\n");
    assert_eq!((e.line, e.key.as_str()), (Some(2), "nats.durability"));
    assert!(e.message.contains("`sync`, `lazy`"), "{e}");
    let e = yaml_err("port: 1\nnats:\n  sync_interval: sometimes\n");
    assert_eq!((e.line, e.key.as_str()), (Some(3), "nats.sync_interval"));
    assert!(e.message.contains("or \"always\""), "{e}");
    let e = yaml_err("nats:\n  sync_interval: 0\n");
    assert!(e.message.contains("would never sync"), "{e}");
}

#[test]
fn lame_duck_defaults_are_the_helm_charts_and_nats_servers_rules_are_checked() {
    let c = yaml("{}\n").unwrap();
    assert_eq!(c.nats.lame_duck_grace_period.get(), Duration::from_secs(10));
    assert_eq!(c.nats.lame_duck_duration.get(), Duration::from_secs(30));
    let c = yaml("nats:\n  lame_duck_grace_period: 1s\n  lame_duck_duration: 2m\n").unwrap();
    assert_eq!(c.nats.lame_duck_grace_period.get(), Duration::from_secs(1));
    assert_eq!(c.nats.lame_duck_duration.get(), Duration::from_secs(120));
    // nats-server refuses a duration under 30 s.
    let e = yaml_err("nats:\n  lame_duck_grace_period: 1s\n  lame_duck_duration: 3s\n");
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(3), "nats.lame_duck_duration")
    );
    assert!(e.message.contains("at least 30s"), "{e}");
    // ... and a grace period that is not strictly shorter.
    let e = yaml_err("nats:\n  lame_duck_grace_period: 30s\n");
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(2), "nats.lame_duck_grace_period")
    );
    assert!(
        e.message
            .contains("shorter than nats.lame_duck_duration (30s)"),
        "{e}"
    );
    let e = yaml_err("nats:\n  lame_duck_duration: soon\n");
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(2), "nats.lame_duck_duration")
    );
}

#[test]
fn alarm_keys_sit_on_their_stream_and_consumer_in_yaml_and_toml() {
    let c = yaml(
        "nats:\n  streams:\n    MD:\n      subjects: [\"md.>\"]\n      alert_if_silent_for: 30s\n      health_fails_on_alarm: true\n      consumers:\n        w:\n          alert_if_pending_over: 10\n",
    )
    .unwrap();
    let md = &c.streams()["MD"];
    assert_eq!(md.alert_if_silent_for, Some(Dur::secs(30)));
    assert!(md.health_fails_on_alarm);
    assert_eq!(md.consumers["w"].alert_if_pending_over, Some(10));
    assert!(!md.consumers["w"].health_fails_on_alarm);
    // Off unless asked for, the seed's streams included.
    assert!(c.streams()["SYSTEM_EVENTS"].alert_if_silent_for.is_none());
    let t = parse_str(
        r#"
[nats.streams.MD]
subjects = ["md.>"]
alert_if_silent_for = "1m30s"
[nats.streams.MD.consumers.w]
alert_if_pending_over = 0
health_fails_on_alarm = true
"#,
        Format::Toml,
    )
    .unwrap()
    .0;
    let md = &t.streams()["MD"];
    assert_eq!(md.alert_if_silent_for, Some(Dur::secs(90)));
    assert_eq!(md.consumers["w"].alert_if_pending_over, Some(0));
    assert!(md.consumers["w"].health_fails_on_alarm);
    // A key one level off is refused with the closest valid key.
    let e = yaml_err(
        "nats:\n  streams:\n    MD:\n      subjects: [\"md.>\"]\n      alert_if_pending_over: 5\n",
    );
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(5), "nats.streams.MD.alert_if_pending_over")
    );
}

#[test]
fn bad_alarm_thresholds_name_the_key_and_line() {
    let stream = |v: &str| {
        format!("nats:\n  streams:\n    MD:\n      subjects: [\"md.>\"]\n      alert_if_silent_for: {v}\n")
    };
    for bad in ["0", "0s", "\"0ms\""] {
        let e = yaml_err(&stream(bad));
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(5), "nats.streams.MD.alert_if_silent_for"),
            "{bad}: {e}"
        );
        assert!(e.message.contains("longer than 0"), "{bad}: {e}");
    }
    let e = yaml_err(&stream("-5"));
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(5), "nats.streams.MD.alert_if_silent_for")
    );
    assert!(e.message.contains("must not be negative"), "{e}");
    let e = yaml_err(&stream("soon"));
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.message.contains("invalid duration"), "{e}");
    let consumer = |v: &str| {
        format!("nats:\n  streams:\n    MD:\n      subjects: [\"md.>\"]\n      consumers:\n        w:\n          alert_if_pending_over: {v}\n")
    };
    for bad in ["-1", "ten", "1.5"] {
        let e = yaml_err(&consumer(bad));
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(7), "nats.streams.MD.consumers.w.alert_if_pending_over"),
            "{bad}: {e}"
        );
    }
    let e = parse_str(
        "[nats.streams.MD]\nsubjects = [\"md.>\"]\nalert_if_silent_for = 0\n",
        Format::Toml,
    )
    .unwrap_err();
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(3), "nats.streams.MD.alert_if_silent_for")
    );
    // Failing /health on an alarm that is not set does nothing: a warning.
    let (_, warnings) = parse_str(
        "nats:\n  streams:\n    MD:\n      subjects: [\"md.>\"]\n      health_fails_on_alarm: true\n",
        Format::Yaml,
    )
    .unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("nats.streams.MD.health_fails_on_alarm does nothing")),
        "{warnings:?}"
    );
}

#[test]
fn the_certificate_files_are_those_in_use_without_private_keys() {
    use super::validate::certificate_files;
    use super::{ApiTlsConfig, TlsConfig};
    let mut c = Config::default();
    assert!(certificate_files(&c).is_empty());
    let tls = |name: &str, ca: bool| TlsConfig {
        cert_file: format!("/p/{name}.pem").into(),
        key_file: format!("/p/{name}-key.pem").into(),
        ca_file: ca.then(|| format!("/p/{name}-ca.pem").into()),
        verify: false,
    };
    c.api.tls = Some(ApiTlsConfig {
        cert_file: "/p/api.pem".into(),
        key_file: "/p/api-key.pem".into(),
        client_ca_file: Some("/p/api-ca.pem".into()),
    });
    c.nats.tls = Some(tls("nats", false));
    c.nats.cluster_tls = Some(tls("route", true));
    let keys = |c: &Config| -> Vec<(String, String)> {
        certificate_files(c)
            .into_iter()
            .map(|(k, p)| (k, p.display().to_string()))
            .collect()
    };
    let mut want = vec![
        ("api.tls.cert_file", "/p/api.pem"),
        ("api.tls.client_ca_file", "/p/api-ca.pem"),
        ("nats.tls.cert_file", "/p/nats.pem"),
    ];
    let owned = |w: &[(&str, &str)]| -> Vec<(String, String)> {
        w.iter()
            .map(|(k, p)| (k.to_string(), p.to_string()))
            .collect()
    };
    assert_eq!(keys(&c), owned(&want), "routes unused without a cluster");
    c.nats.cluster_routes = vec!["nats-route://b:6222".into()];
    want.extend([
        ("nats.cluster_tls.cert_file", "/p/route.pem"),
        ("nats.cluster_tls.ca_file", "/p/route-ca.pem"),
    ]);
    assert_eq!(keys(&c), owned(&want));
}

#[test]
fn fetch_max_bytes_holds_the_largest_message_twice() {
    let c = yaml("port: 8085\n").unwrap();
    assert_eq!(c.api.fetch_max_bytes, Size(16 << 20));
    let e = yaml_err("api:\n  fetch_max_bytes: 1MB\n");
    assert_eq!((e.line, e.key.as_str()), (Some(2), "api.fetch_max_bytes"));
    assert!(e.message.contains("twice nats.max_payload"), "{e}");
    let c = yaml("api:\n  fetch_max_bytes: 2MiB\nnats:\n  max_payload: 1MiB\n").unwrap();
    assert_eq!(c.api.fetch_max_bytes, Size(2 << 20));
    let e = yaml_err("api:\n  fetch_max_bytes: 16MiB\nnats:\n  max_payload: 16MiB\n");
    assert_eq!(e.key, "api.fetch_max_bytes");
}
