//! The command line: check-config, render-nats-config, --version, and the
//! daemon refusing a bad config with file, line, key and a suggestion.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("MARKETPRISM_BROKER_CONFIG");
    // check-config runs nats-server -t: make sure it finds Debian's.
    let path = format!(
        "{}:{}",
        nats_server().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.env("PATH", path);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn version_and_help() {
    let o = run(&["--version"], &[]);
    o.expect_code(0);
    assert_eq!(
        text(&o.stdout).trim(),
        format!("marketprism-broker {}", env!("CARGO_PKG_VERSION"))
    );
    let o = run(&["--help"], &[]);
    o.expect_code(0);
    assert!(text(&o.stdout).contains("check-config"));
}

#[test]
fn usage_errors_exit_64() {
    let o = run(&["--bogus"], &[]);
    o.expect_code(64);
    assert!(text(&o.stderr).contains("unknown option --bogus"));
}

#[test]
fn every_shipped_config_checks_ok() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in ["config", "config/examples"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if e.path().is_dir() {
                continue;
            }
            let p = e.path().display().to_string();
            let o = run(&["check-config", "--config", &p], &[]);
            o.expect_code_for(0, &format!("check-config of {p}"));
            assert_eq!(text(&o.stdout).trim(), format!("{p}: OK"));
            n += 1;
        }
    }
    assert!(n >= 8, "only {n} configs found");
}

#[test]
fn a_misspelled_key_exits_78_with_file_line_key_and_suggestion() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "broker.yaml",
        "port: 8085\nnats:\n  nats_port: 4222\n  jetstream_max_memroy: 1GB\n",
    );
    let want = format!("{p}:4: nats.jetstream_max_memroy: unknown key `jetstream_max_memroy` (did you mean `jetstream_max_memory`?)");
    let o = run(&["check-config", "--config", &p], &[]);
    o.expect_code(78);
    assert_eq!(
        text(&o.stderr).trim(),
        format!("marketprism-broker: invalid config: {want}")
    );
    // The daemon itself refuses it the same way, before doing anything.
    let o = run(&["--config", &p], &[]);
    o.expect_code(78);
    assert!(text(&o.stderr).contains(&want), "{}", text(&o.stderr));
}

#[test]
fn other_config_mistakes_exit_78_naming_key_and_line() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("a.toml", "port = 8085\n[nats]\nmax_payload = \"1XB\"\n", ":3: nats.max_payload: invalid size \"1XB\": unknown unit \"XB\""),
        ("b.yaml", "nats:\n  streams:\n    BINANCE:\n      subjects: [\"market.binance.>\"]\n", ":4: nats.streams.BINANCE.subjects: \"market.binance.>\" overlaps \"market.>\" of stream MARKET_DATA"),
        ("c.yaml", "nats:\n  streams:\n    \"BAD NAME\":\n      subjects: [\"x.>\"]\n", ":3: nats.streams.BAD NAME: invalid stream name"),
        ("d.yaml", "nats:\n  ping_interval: sometimes\n", ":2: nats.ping_interval: invalid duration \"sometimes\""),
        ("e.yaml", "port: \"eighty\"\n", ":1: port: invalid type: string \"eighty\", expected u16"),
        ("f.yaml", "nats:\n  nats_port: [1\n", ":3: YAML syntax error"),
        ("g.yaml", "nats:\n  mappings:\n    \"legacy.*.*\": \"market.$2\"\n", ":3: nats.mappings.legacy.*.*: destination \"market.$2\" does not use wildcard 1 of the source \"legacy.*.*\""),
    ];
    for (name, body, want) in cases {
        let p = write(d.path(), name, body);
        let o = run(&["check-config", "--config", &p], &[]);
        o.expect_code_for(78, &format!("check-config of {name}"));
        assert!(
            text(&o.stderr).contains(&format!("{p}{want}")),
            "{name}: {}",
            text(&o.stderr)
        );
        assert!(!text(&o.stderr).contains("panicked"));
    }
}

#[test]
fn what_nats_server_refuses_is_refused_by_check_config() {
    // A TLS block with files that exist but are not certificates: our
    // validation passes, nats-server -t does not.
    let d = tempfile::tempdir().unwrap();
    let cert = write(d.path(), "cert.pem", "not a certificate\n");
    let key = write(d.path(), "key.pem", "not a key\n");
    let p = write(
        d.path(),
        "tls.yaml",
        &format!("nats:\n  tls:\n    cert_file: {cert:?}\n    key_file: {key:?}\n"),
    );
    let o = run(&["check-config", "--config", &p], &[]);
    o.expect_code(78);
    assert!(
        text(&o.stderr).contains("the generated nats-server config is refused by"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn an_explicit_config_that_is_missing_is_an_error() {
    let o = run(
        &["check-config", "--config", "/nonexistent/broker.yaml"],
        &[],
    );
    o.expect_code(78);
    assert!(text(&o.stderr).contains("/nonexistent/broker.yaml: config file does not exist"));
    let o = run(
        &["check-config"],
        &[("MARKETPRISM_BROKER_CONFIG", "/nonexistent/env.yaml")],
    );
    o.expect_code(78);
    assert!(text(&o.stderr).contains("/nonexistent/env.yaml: config file does not exist"));
}

#[test]
fn the_env_variable_names_the_config() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "env.yaml", "port: 9999\n");
    let o = run(
        &["render-nats-config"],
        &[("MARKETPRISM_BROKER_CONFIG", &p)],
    );
    o.expect_code(0);
    assert!(text(&o.stdout).contains(&format!("# Source: {p}")));
}

#[test]
fn without_any_config_the_built_in_defaults_are_used() {
    if Path::new("/etc/marketprism-broker/broker.yaml").exists() {
        eprintln!("skipped: this machine has /etc/marketprism-broker/broker.yaml");
        return;
    }
    let o = run(&["check-config"], &[]);
    o.expect_code(0);
    assert_eq!(text(&o.stdout).trim(), "built-in defaults: OK");
}

#[test]
fn render_nats_config_shows_the_generated_file_with_passwords_masked() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = run(
        &[
            "render-nats-config",
            "--config",
            &root
                .join("config/examples/seed-services.yaml")
                .display()
                .to_string(),
        ],
        &[],
    );
    o.expect_code(0);
    let t = text(&o.stdout);
    assert!(
        t.contains("port: 4222\n")
            && t.contains("http: \"127.0.0.1:8222\"")
            && t.contains("jetstream {"),
        "{t}"
    );
    assert!(!t.contains("cluster {"), "no routes, no cluster block: {t}");
    let o = run(
        &[
            "render-nats-config",
            "--config",
            &root
                .join("config/examples/security.yaml")
                .display()
                .to_string(),
        ],
        &[],
    );
    let t = text(&o.stdout);
    assert!(
        t.contains("user: \"producer\", password: \"********\""),
        "{t}"
    );
    assert!(!t.contains("change-me"), "{t}");
    assert!(!t.contains("no_auth_user"), "{t}");
}

/// nats-server 2.9.x has no `sync_interval`: asking for it is a config
/// error naming file, line and key; a current server gets it rendered
/// (quoted), and Debian's is named once with what its acks are worth.
#[test]
fn sync_interval_is_checked_against_the_nats_server_version() {
    let d = tempfile::tempdir().unwrap();
    let yaml = |bin: &std::path::Path| {
        format!(
            "port: 8085\nnats:\n  server_bin: {:?}\n  sync_interval: 250ms\n",
            bin.display().to_string()
        )
    };
    // MPB_NATS_SERVER may be a 2.10 (scripts/test's second run, with
    // Debian 13's): then the old server is just another that has it.
    let version = Command::new(nats_server())
        .arg("--version")
        .output()
        .unwrap();
    if !text(&version.stdout).contains("v2.9.") {
        let o = run(
            &[
                "check-config",
                "--config",
                &write(d.path(), "old.yaml", &yaml(&nats_server())),
            ],
            &[],
        );
        o.expect_code(0);
        assert!(
            !text(&o.stderr).contains("sync_interval"),
            "{}",
            text(&o.stderr)
        );
        return;
    }
    let old = write(d.path(), "old.yaml", &yaml(&nats_server()));
    let o = run(&["check-config", "--config", &old], &[]);
    o.expect_code(78);
    assert!(
        text(&o.stderr).contains(&format!(
            "invalid config: {old}:4: nats.sync_interval: nats-server 2.9.10 has no sync_interval"
        )),
        "{}",
        text(&o.stderr)
    );

    let new = write(d.path(), "new.yaml", &yaml(&nats_server_current()));
    let o = run(&["check-config", "--config", &new], &[]);
    o.expect_code(0);
    let o = run(&["render-nats-config", "--config", &new], &[]);
    assert!(
        text(&o.stdout).contains("  sync_interval: \"250ms\"\n"),
        "{}",
        text(&o.stdout)
    );

    let plain = write(
        d.path(),
        "plain.yaml",
        &format!(
            "nats:\n  server_bin: {:?}\n",
            nats_server().display().to_string()
        ),
    );
    let o = run(&["check-config", "--config", &plain], &[]);
    o.expect_code(0);
    let warned = text(&o.stderr);
    assert_eq!(
        warned.matches("has no sync_interval").count(),
        1,
        "{warned}"
    );
    assert!(warned.contains("native clients"), "{warned}");
}

#[test]
fn wait_ready_refuses_a_bad_timeout_with_64() {
    for (arg, says) in [
        ("soon", "invalid duration \"soon\""),
        ("-5s", "invalid duration \"-5s\""),
        ("0", "must be longer than zero"),
    ] {
        let o = run(&["wait-ready", &format!("--timeout={arg}")], &[]);
        o.expect_code_for(64, arg);
        let err = text(&o.stderr);
        assert!(
            err.contains(&format!("--timeout: {says}")) || err.contains(says),
            "{arg}: {err}"
        );
        assert!(
            err.contains("wait-ready [--timeout DURATION]"),
            "usage: {err}"
        );
    }
    let o = run(&["wait-ready", "--timeout"], &[]);
    o.expect_code(64);
    assert!(text(&o.stderr).contains("--timeout needs a value"));
}

#[test]
fn wait_ready_without_a_daemon_exits_69_at_once() {
    let d = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = write(
        d.path(),
        "b.yaml",
        &format!(
            "port: {port}\nnats:\n  data_dir: {:?}\n",
            d.path().display().to_string()
        ),
    );
    let t = std::time::Instant::now();
    let o = run(&["wait-ready", "--timeout", "30s", "--config", &p], &[]);
    o.expect_code(69);
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!("nothing listens on 127.0.0.1:{port}"))
            && err.contains("no daemon to wait for"),
        "{err}"
    );
}
