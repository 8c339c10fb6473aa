//! Users, permissions, secrets and TLS against the real daemon and
//! nats-server: what each user may do, what they may not, that secrets stay
//! secret, and that TLS is required, verified and rotated.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::json;

/// bcrypt (cost 4) of "consumer-secret".
const CONSUMER_HASH: &str = "$2b$04$aeRWi/gQldVjhfajb7X7vux9q/wRDeC8whFIEUzjmw0CA8uwmnn/O";
const PRODUCER_PASS: &str = "producer-secret-from-a-file";
const PRODUCER_PASS_2: &str = "producer-secret-rotated";
const CONSUMER_PASS: &str = "consumer-secret";
const AUDITOR_PASS: &str = "auditor-secret-from-env";

/// A client logged in as `user`, with the server's errors (permission
/// violations) collected.
async fn login(
    port: u16,
    user: &str,
    pass: &str,
) -> Result<(async_nats::Client, Arc<Mutex<Vec<String>>>), String> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
        .request_timeout(Some(Duration::from_secs(1)))
        .max_reconnects(Some(1))
        .event_callback(move |e| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = e {
                    sink.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .map_err(|e| e.to_string())?;
    Ok((client, errors))
}

/// Waits until the server reported an error containing `needle`.
async fn violation(errors: &Arc<Mutex<Vec<String>>>, needle: &str) {
    let errors = errors.clone();
    eventually(
        Duration::from_secs(5),
        &format!("a permissions violation for {needle}"),
        || {
            let errors = errors.clone();
            async move {
                errors
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|e| {
                        e.to_lowercase().contains("permissions violation") && e.contains(needle)
                    })
                    .cloned()
            }
        },
    )
    .await;
}

async fn stream_messages(d: &Daemon, stream: &str) -> u64 {
    let (code, v) = d.get(&format!("/api/v1/streams/{stream}")).await;
    assert_eq!(code, 200, "{v}");
    v["messages"]
        .as_u64()
        .unwrap_or_else(|| panic!("no message count in {v}"))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn users_config(pass_file: &Path) -> String {
    format!(
        r#"  users:
    - user: producer
      password_file: {pass_file:?}
      permissions:
        publish: ["market.>"]
    - user: consumer
      password: "{CONSUMER_HASH}"
      permissions:
        subscribe: ["market.>"]
    - user: auditor
      password_env: MPB_TEST_AUDITOR_PASS
      permissions:
        subscribe: ["system.>"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_users_get_exactly_what_they_were_given() {
    for bin in nats_servers() {
        users_on(&bin).await;
    }
}

async fn users_on(bin: &Path) {
    let secrets_dir = tempfile::tempdir().unwrap();
    let pass_file = secrets_dir.path().join("producer.pass");
    std::fs::write(&pass_file, format!("{PRODUCER_PASS}\n")).unwrap();
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::builder()
        .bin(bin)
        .nats(&users_config(&pass_file))
        .env("MPB_TEST_AUDITOR_PASS", AUDITOR_PASS)
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let port = d.nats;

    // The daemon's own user publishes for HTTP callers.
    for i in 0..3 {
        let (code, v) = d
            .publish("market.binance.BTCUSDT.trade", json!({"http": i}))
            .await;
        assert_eq!(code, 200, "{v}");
    }

    // The seed's producer and consumer (nats-py), each as its user.
    let produced = python_client(
        "seed_secure.py",
        &[
            "produce",
            &format!("nats://producer:{PRODUCER_PASS}@127.0.0.1:{port}"),
            "5",
        ],
    )
    .await;
    assert_eq!(
        produced["acked_seqs"].as_array().unwrap().len(),
        5,
        "{produced}"
    );
    assert_eq!(produced["errors"], json!([]), "{produced}");
    let consumed = python_client(
        "seed_secure.py",
        &[
            "consume",
            &format!("nats://consumer:{CONSUMER_PASS}@127.0.0.1:{port}"),
            "8",
        ],
    )
    .await;
    assert_eq!(
        consumed["received"].as_array().unwrap().len(),
        8,
        "{consumed}"
    );
    assert_eq!(consumed["ack_pending"], 0, "{consumed}");
    assert_eq!(consumed["errors"], json!([]), "{consumed}");
    let stored = stream_messages(&d, "MARKET_DATA").await;
    assert_eq!(stored, 8);

    // The producer may not subscribe to what it publishes, nor read the
    // stream through the JetStream API.
    let (producer, perrs) = login(port, "producer", PRODUCER_PASS).await.unwrap();
    let mut sub = producer.subscribe("market.>").await.unwrap();
    producer.flush().await.unwrap();
    violation(&perrs, "market.>").await;
    let (code, _) = d
        .publish("market.binance.ETHUSDT.trade", json!({"after": 1}))
        .await;
    assert_eq!(code, 200);
    let got = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut sub),
    )
    .await;
    assert!(
        !matches!(got, Ok(Some(_))),
        "the producer received a message it may not subscribe to"
    );
    let pjs = async_nats::jetstream::new(producer.clone());
    assert!(pjs.get_stream("MARKET_DATA").await.is_err());
    violation(&perrs, "$JS.API.STREAM.INFO.MARKET_DATA").await;

    // The consumer may not publish, delete or purge the stream, nor use
    // another stream's API.
    let (consumer, cerrs) = login(port, "consumer", CONSUMER_PASS).await.unwrap();
    consumer
        .publish("market.binance.BTCUSDT.trade", "forged".into())
        .await
        .unwrap();
    consumer.flush().await.unwrap();
    violation(&cerrs, "market.binance.BTCUSDT.trade").await;
    let cjs = async_nats::jetstream::new(consumer.clone());
    assert!(cjs.delete_stream("MARKET_DATA").await.is_err());
    violation(&cerrs, "$JS.API.STREAM.DELETE.MARKET_DATA").await;
    let other = cjs
        .create_consumer_on_stream(
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("snoop".into()),
                ..Default::default()
            },
            "SYSTEM_EVENTS",
        )
        .await;
    assert!(
        other.is_err(),
        "the consumer made a consumer on SYSTEM_EVENTS"
    );
    // What it was given works: the stream it consumes is readable.
    let info = cjs.get_stream("MARKET_DATA").await.unwrap();
    assert_eq!(info.cached_info().config.name, "MARKET_DATA");
    assert_eq!(stream_messages(&d, "MARKET_DATA").await, stored + 1);

    // The auditor's password came from the environment.
    let (auditor, aerrs) = login(port, "auditor", AUDITOR_PASS).await.unwrap();
    let mut sys_sub = auditor.subscribe("system.>").await.unwrap();
    auditor.flush().await.unwrap();
    // flush() only writes the SUB out: a publish from another connection
    // can overtake it (and the auditor may not publish to sync on its own
    // inbox). Publish until one arrives.
    let mut got = None;
    for _ in 0..10 {
        let (code, _) = d.publish("system.health", json!({"ok": true})).await;
        assert_eq!(code, 200);
        let next = futures::StreamExt::next(&mut sys_sub);
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(500), next).await {
            got = m;
            break;
        }
    }
    let m = got.expect("the auditor gets system.>");
    assert_eq!(m.subject.as_str(), "system.health");
    let _ = auditor.subscribe("market.>").await.unwrap();
    auditor.flush().await.unwrap();
    violation(&aerrs, "market.>").await;

    // Wrong or missing credentials are refused.
    let e = login(port, "consumer", "wrong").await.unwrap_err();
    assert!(e.to_lowercase().contains("authorization"), "{e}");
    let e = async_nats::connect(format!("nats://127.0.0.1:{port}"))
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("authorization"), "{e}");

    // The daemon's own password: generated, kept 0600 in the state dir,
    // and good only for what the daemon does.
    let cred_file = d.state_dir().join("internal-credentials");
    assert_eq!(mode(&cred_file), 0o600);
    let internal = std::fs::read_to_string(&cred_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(internal.len() >= 32, "a short generated password");
    let (daemon_user, ierrs) = login(port, "_marketprism_broker", &internal).await.unwrap();
    let ijs = async_nats::jetstream::new(daemon_user);
    assert!(ijs.delete_stream("MARKET_DATA").await.is_err());
    violation(&ierrs, "$JS.API.STREAM.DELETE.MARKET_DATA").await;
    assert!(ijs.get_stream("MARKET_DATA").await.is_ok());
    let rendered = d.state_dir().join("nats-server.conf");
    assert_eq!(mode(&rendered), 0o600, "{}", rendered.display());

    // A new password in the file applies by reload, live: the new one
    // logs in, the old one no longer does, nats-server stays.
    let pid = d.child_pid().unwrap();
    std::fs::write(&pass_file, format!("{PRODUCER_PASS_2}\n")).unwrap();
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "the reload to finish", || async {
        d.log().contains("reload done").then_some(())
    })
    .await;
    assert!(
        d.log().contains("nats.users.producer: password changed"),
        "{}",
        d.log()
    );
    login(port, "producer", PRODUCER_PASS_2).await.unwrap();
    assert!(login(port, "producer", PRODUCER_PASS).await.is_err());
    assert_eq!(d.child_pid(), Some(pid));

    // No secret shows: not in the log, status, metrics, or the config
    // render-nats-config prints (which shows the expanded permissions).
    let (_, status) = d.get("/api/v1/status").await;
    let (_, _, metrics) = request(d.http, "GET", "/metrics", &[], vec![])
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("render-nats-config")
        .arg("--config")
        .arg(&d.config_path)
        .env("MPB_TEST_AUDITOR_PASS", AUDITOR_PASS)
        .output()
        .unwrap();
    out.expect_code(0);
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("$JS.ACK.MARKET_DATA.>"), "{printed}");
    assert!(printed.contains("\"********\""), "{printed}");
    for (what, text) in [
        ("log", d.log()),
        ("status", status.to_string()),
        ("metrics", metrics),
        ("render-nats-config", printed),
    ] {
        for secret in [
            PRODUCER_PASS,
            CONSUMER_PASS,
            CONSUMER_HASH,
            AUDITOR_PASS,
            &internal,
        ] {
            assert!(!text.contains(secret), "a password in the {what}:\n{text}");
        }
    }
}

#[test]
fn check_config_warns_when_others_can_read_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let pass_file = dir.path().join("producer.pass");
    std::fs::write(&pass_file, "p4ssword-in-a-file\n").unwrap();
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("broker.yaml");
    let check = |text: &str, file_mode: u32| {
        std::fs::write(&config, text).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(file_mode)).unwrap();
        let out = std::process::Command::new(BIN)
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        out.expect_code(0);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let plain = "nats:\n  users:\n    - user: a\n      password: plain-pass\n";
    let out = check(plain, 0o644);
    assert!(
        out.contains("every user on this machine can read it") && out.contains("broker.yaml"),
        "{out}"
    );
    assert!(!out.contains("plain-pass"), "{out}");
    let out = check(plain, 0o640);
    assert!(!out.contains("every user"), "{out}");
    // A bcrypt hash in a readable file is not a plain-text secret.
    let out = check(
        &format!("nats:\n  users:\n    - user: a\n      password: \"{CONSUMER_HASH}\"\n"),
        0o644,
    );
    assert!(!out.contains("every user"), "{out}");
    let out = check(
        &format!("nats:\n  users:\n    - user: a\n      password_file: {pass_file:?}\n"),
        0o644,
    );
    assert!(
        out.contains("password_file") && out.contains("every user on this machine"),
        "{out}"
    );
    // A hash that is not one is refused with its key and line.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        &config,
        "nats:\n  users:\n    - user: a\n      password: \"$2a$10$short\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    out.expect_code(78);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nats.users.0.password")
            && err.contains("broker.yaml:4:")
            && err.contains("bcrypt"),
        "{err}"
    );
}

/// A raw NATS client without TLS: whether the server ever answers PONG.
async fn plain_pong(port: u16) -> (bool, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let info = String::from_utf8_lossy(&buf[..n]).to_string();
    let _ = s
        .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest).to_string();
    (rest.contains("PONG"), format!("{info}{rest}"))
}

async fn tls_client(
    port: u16,
    ca: &Path,
    cert: Option<(&Path, &Path)>,
) -> Result<async_nats::Client, String> {
    let mut o = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.to_path_buf())
        .max_reconnects(Some(1));
    if let Some((c, k)) = cert {
        o = o.add_client_certificate(c.to_path_buf(), k.to_path_buf());
    }
    o.connect(format!("nats://127.0.0.1:{port}"))
        .await
        .map_err(|e| e.to_string())
}

async fn peer_matches(port: u16, pki: &certs::Pki) -> serde_json::Value {
    python_client(
        "seed_secure.py",
        &[
            "tls-peer",
            "127.0.0.1",
            &port.to_string(),
            pki.ca.to_str().unwrap(),
            pki.cert.to_str().unwrap(),
        ],
    )
    .await
}

async fn reloaded(d: &Daemon, n: usize) {
    eventually(Duration::from_secs(10), "the reload to finish", || async {
        (d.log().matches("reload done").count() >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_required_verified_and_rotated_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = certs::Pki::new(&dir.path().join("pki"));
    let tls = format!(
        "  tls:\n    cert_file: {:?}\n    key_file: {:?}\n    ca_file: {:?}\n    verify: false\n",
        pki.cert, pki.key, pki.ca
    );
    let d = Daemon::builder().nats(&tls).start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let pid = d.child_pid().unwrap();

    // The daemon's own connection goes through TLS.
    let (code, v) = d
        .publish("market.binance.BTCUSDT.trade", json!({"p": 1}))
        .await;
    assert_eq!(code, 200, "{v}");

    // A plain client is refused; a TLS client that trusts the CA is served.
    let (pong, said) = plain_pong(d.nats).await;
    assert!(!pong, "a plain-text client got PONG: {said}");
    assert!(said.contains("\"tls_required\":true"), "{said}");
    let c = tls_client(d.nats, &pki.ca, None).await.unwrap();
    let ack = async_nats::jetstream::new(c)
        .publish("market.binance.BTCUSDT.trade", "tls".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "MARKET_DATA");
    let first = peer_matches(d.nats, &pki).await;
    assert_eq!(first["matches_file"], true, "{first}");

    // A rotated certificate is served after SIGHUP, by the same nats-server.
    pki.issue_server("rotated");
    d.signal(Signal::SIGHUP);
    reloaded(&d, 1).await;
    let second = peer_matches(d.nats, &pki).await;
    assert_eq!(
        second["matches_file"], true,
        "the old certificate is still served: {second}"
    );
    assert_ne!(first["sha256"], second["sha256"]);
    assert_eq!(d.child_pid(), Some(pid));

    // verify: true (mutual TLS) by reload: a client without a certificate
    // is refused, one with a certificate from the CA is served, and so is
    // the daemon (it reconnects presenting its certificate).
    d.edit_config(|c| c.replace("verify: false", "verify: true"));
    d.signal(Signal::SIGHUP);
    reloaded(&d, 2).await;
    assert_eq!(d.child_pid(), Some(pid));
    let e = tls_client(d.nats, &pki.ca, None).await.unwrap_err();
    assert!(!e.is_empty());
    let (cert, key) = pki.client("alice");
    let c = tls_client(d.nats, &pki.ca, Some((&cert, &key)))
        .await
        .unwrap();
    c.publish("market.binance.BTCUSDT.trade", "mtls".into())
        .await
        .unwrap();
    c.flush().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the daemon publishing again",
        || async {
            let (code, _) = d
                .publish("market.binance.BTCUSDT.trade", json!({"p": 2}))
                .await;
            (code == 200).then_some(())
        },
    )
    .await;
}

/// Routes between nodes with `cluster_tls` (verify: nodes present
/// certificates from the CA) form and carry messages; a node without the
/// TLS settings cannot join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_routes_use_tls_and_a_node_without_it_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::Pki::new(&dir.path().join("pki"));
    let [ca, cb, cc] = free_ports::<3>();
    let node = |name: &str, own: u16, peers: &[u16], tls: bool| {
        let routes: Vec<String> = peers
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        let mut yaml = format!(
            "  server_name: {name}\n  jetstream_enabled: false\n  cluster_name: tlsmesh\n  cluster_listen: \"127.0.0.1:{own}\"\n  cluster_routes: [{}]\n",
            routes.join(", ")
        );
        if tls {
            yaml.push_str(&format!(
                "  cluster_tls:\n    cert_file: {:?}\n    key_file: {:?}\n    ca_file: {:?}\n    verify: true\n",
                pki.cert, pki.key, pki.ca
            ));
        }
        Daemon::builder()
            .top("auto_create_streams: false\n")
            .nats(&yaml)
            .start()
    };
    let a = node("tls-a", ca, &[cb], true);
    let b = node("tls-b", cb, &[ca], true);
    a.wait_healthy(Duration::from_secs(20)).await;
    b.wait_healthy(Duration::from_secs(20)).await;
    let routes = |d: &Daemon| {
        let port = d.http;
        async move {
            let (code, v) = get_json(port, "/api/v1/nats/routez").await.unwrap();
            assert_eq!(code, 200, "{v}");
            // Remote servers, not routes: 2.10+ pools several per peer.
            let mut ids: Vec<&str> = v["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["remote_id"].as_str())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len() as u64
        }
    };
    eventually(
        Duration::from_secs(15),
        "the TLS route between a and b",
        || async { (routes(&a).await >= 1 && routes(&b).await >= 1).then_some(()) },
    )
    .await;
    let rendered = std::fs::read_to_string(a.state_dir().join("nats-server.conf")).unwrap();
    assert!(rendered.contains("  tls {\n"), "{rendered}");

    // A message published on a reaches a subscriber on b over the route.
    let sub_client = async_nats::connect(b.nats_url()).await.unwrap();
    let mut sub = sub_client.subscribe("chat.>").await.unwrap();
    sub_client.flush().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let got = loop {
        let (code, v) = a.publish("chat.room1", json!({"hello": "b"})).await;
        assert_eq!(code, 200, "{v}");
        let next = futures::StreamExt::next(&mut sub);
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), next).await {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no message crossed the TLS route"
        );
    };
    assert_eq!(got.subject.as_str(), "chat.room1");

    // A node routing to a without TLS never joins.
    let c = node("plain-c", cc, &[ca], false);
    c.wait_healthy(Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        routes(&c).await,
        0,
        "a plain-text node joined a TLS cluster"
    );
    assert_eq!(routes(&a).await, 1, "a has only b");
}

/// A user allowed to publish a mapped source gets its messages through and
/// acknowledged: nats-server checks a publish after mapping it, so the
/// user is granted the destinations (and the inbox for the acks of the
/// stream capturing them), nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_of_a_mapped_subject_gets_its_jetstream_acks() {
    for bin in nats_servers() {
        let d = Daemon::builder()
            .bin(&bin)
            .nats(
                "  mappings:\n    \"legacy.*.*\": \"market.$2.$1\"\n  users:\n    - user: legacy\n      password: legacy-feed-pass\n      permissions:\n        publish: [\"legacy.>\"]\n",
            )
            .start();
        d.wait_healthy(Duration::from_secs(20)).await;
        let (client, errors) = login(d.nats, "legacy", "legacy-feed-pass").await.unwrap();
        let ack = async_nats::jetstream::new(client.clone())
            .publish("legacy.BTCUSDT.binance", "old feed".into())
            .await
            .unwrap()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}: {:?}", bin.display(), errors.lock().unwrap()));
        assert_eq!(ack.stream, "MARKET_DATA");
        // Nothing beyond that.
        client
            .publish("system.alert", "forged".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        violation(&errors, "system.alert").await;
        assert_eq!(stream_messages(&d, "MARKET_DATA").await, 1);
        assert_eq!(stream_messages(&d, "SYSTEM_EVENTS").await, 0);
    }
}
