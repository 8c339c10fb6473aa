//! The shipped Grafana dashboard and Prometheus alert rules
//! (monitoring/): every metric name their expressions use is one a live
//! daemon's /metrics serves, so a renamed metric fails here rather than
//! leave an empty panel or an alert that can never fire; `promtool check
//! rules` accepts the rules and `promtool test rules` fires each alert on
//! its cause and nowhere else; a real Prometheus scraping a live daemon
//! evaluates every query of both: none refused, none empty, no alert
//! firing on a healthy daemon.
//!
//! promtool and the server come from Debian's prometheus package
//! (scripts/lib.sh `ensure_prometheus`); MPB_PROMTOOL and MPB_PROMETHEUS
//! name them, else they are looked up on PATH.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/monitoring/grafana/marketprism-broker.json"
);
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/monitoring/prometheus/marketprism-broker.rules.yml"
);
const RULES_TEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/monitoring/marketprism-broker.rules.test.yml"
);

/// Series Prometheus makes itself for every scrape target, not /metrics.
const PROMETHEUS_OWN: &[&str] = &["up"];

// ---- PromQL: the metric names an expression selects ----------------------

/// Words that are PromQL syntax, not metric names, when not followed by a
/// parenthesis: binary operators, modifiers and the special numbers.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "Inf", "NaN", "inf", "nan",
];

/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression (Grafana variables allowed)
/// selects: identifiers that are not functions or aggregations (followed
/// by `(`), keywords, label names in `by (...)`-style lists or in `{...}`
/// matchers, strings, numbers, durations (`[5m]`, `offset 1h`) or Grafana
/// variables (`$job`, `${x}`, `$__rate_interval`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let s: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // Skips from an opening bracket to its matching close, stepping over
    // strings (whose contents may hold brackets).
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < s.len() {
            match s[i] {
                '"' | '\'' | '`' => i = skip_string(&s, i),
                c if c == open => {
                    depth += 1;
                    i += 1
                }
                c if c == close => {
                    depth -= 1;
                    i += 1;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => i += 1,
            }
        }
        panic!("unbalanced {open}{close} in {expr}");
    };
    let next_non_space = |mut j: usize| {
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&s, i);
        } else if c == '#' {
            // A comment, to the end of the line.
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '$' {
            i += 1;
            if i < s.len() && s[i] == '{' {
                i = skip_group(i, '{', '}');
            } else {
                while i < s.len() && ident_char(s[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration: 0.99, 1e9, 0x1F, 5m, 1h30m.
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                if (s[i] == 'e' || s[i] == 'E') && matches!(s.get(i + 1), Some('+' | '-')) {
                    i += 1;
                }
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < s.len() && ident_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let after = next_non_space(i);
            let next_word: String = s[after..].iter().take_while(|c| ident_char(**c)).collect();
            // `sum by (le) (...)`: an aggregation, its grouping first.
            let called =
                s.get(after) == Some(&'(') || ["by", "without"].contains(&next_word.as_str());
            if LABEL_LISTS.contains(&word.as_str()) {
                if called {
                    i = skip_group(after, '(', ')');
                }
            } else if word == "offset" {
                // `offset 5m`: the duration is skipped as a number next.
            } else if called || KEYWORDS.contains(&word.as_str()) {
                // A function or aggregation: its arguments are scanned on.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index just past the string literal that starts at `i`.
fn skip_string(s: &[char], i: usize) -> usize {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() {
        if s[j] == '\\' && quote != '`' {
            j += 2;
            continue;
        }
        if s[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    panic!("unterminated string in {}", s.iter().collect::<String>());
}

/// Grafana's `label_values(metric_or_selector, label)`: the selector part.
fn variable_expr(query: &str) -> String {
    let q = query.trim();
    match q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        // The last argument is a label name; a selector's matchers may hold
        // commas of their own, so cut at the last one.
        Some(args) => match args.rfind(',') {
            Some(comma) if !args[comma..].contains('}') => args[..comma].to_string(),
            _ => args.to_string(),
        },
        None => q.to_string(),
    }
}

#[test]
fn the_extractor_finds_metric_names_and_nothing_else() {
    let e = |x: &str| metric_names(x).into_iter().collect::<Vec<_>>();
    assert_eq!(
        e(
            r#"histogram_quantile(0.99, sum by (le, instance) (rate(marketprism_broker_publish_duration_seconds_bucket{job=~"$job",instance=~"$instance"}[$__rate_interval])))"#
        ),
        ["marketprism_broker_publish_duration_seconds_bucket"]
    );
    assert_eq!(
        e(
            r#"sum without (endpoint) (rate(a_total{outcome="failed", x='}{b'}[5m] offset 1h)) / on (instance) group_left (version) b_info > bool 0.1e+2 and c unless up == 0x1F"#
        ),
        ["a_total", "b_info", "c", "up"]
    );
    assert_eq!(
        e(r#"time() - max_over_time(start:seconds[1h:5m]) # a comment naming not_a_metric"#),
        ["start:seconds"]
    );
    assert_eq!(
        e("topk without(a) (3, m) + count_values by (v) (\"v\", n)"),
        ["m", "n"]
    );
    assert_eq!(
        e("sum(rate(m_sum[5m])) / sum(rate(m_count[5m]))"),
        ["m_count", "m_sum"]
    );
    assert_eq!(
        e(r#"time() - max_over_time(start:seconds[1h:5m]) # a comment naming not_a_metric"#),
        ["start:seconds"]
    );
    assert_eq!(e("vector(1) + scalar(sum(x))"), ["x"]);
    assert_eq!(
        variable_expr(r#"label_values(m{job=~"$job",a="b,c"}, instance)"#),
        r#"m{job=~"$job",a="b,c"}"#
    );
    assert_eq!(variable_expr("label_values(m, job)"), "m");
}

// ---- The dashboard and the rules ------------------------------------------

/// Every query of the dashboard, named by its panel: the panels' targets
/// (rows' nested panels included) and the template variables.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            if p["type"] == "row" {
                walk(&p["panels"], out);
                continue;
            }
            let targets = p["targets"].as_array().map_or(&[][..], |t| t.as_slice());
            assert!(!targets.is_empty(), "panel {title} has no query");
            for t in targets {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title}: target without expr: {t}"));
                out.push((format!("panel {title:?}"), expr.to_string()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().or(v["query"].as_str());
        let q = q.unwrap_or_else(|| panic!("variable {} has no query", v["name"]));
        out.push((format!("variable {}", v["name"]), variable_expr(q)));
    }
    out
}

/// Every alert's expression, named by the alert.
fn rule_queries(rules: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for g in rules["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap();
            out.push((
                format!("alert {name}"),
                r["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    out
}

/// What `queries` use that `served` (sample names in a scrape) lacks:
/// "where: name". A query that selects no metric at all is listed too.
fn unserved(queries: &[(String, String)], served: &BTreeSet<String>) -> Vec<String> {
    let mut missing = Vec::new();
    for (place, expr) in queries {
        let names = metric_names(expr);
        if names.is_empty() {
            missing.push(format!("{place}: selects no metric: {expr}"));
        }
        for n in names {
            if !served.contains(&n) && !PROMETHEUS_OWN.contains(&n.as_str()) {
                missing.push(format!("{place}: {n}"));
            }
        }
    }
    missing
}

/// The sample names of a Prometheus text exposition (a histogram's are its
/// `_bucket`, `_sum` and `_count`, never its bare family name).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// A YAML document (the daemon's own YAML parser) as JSON.
fn yaml(text: &str) -> Result<Value, yaml_rust2::ScanError> {
    use yaml_rust2::Yaml;
    fn json_of(y: &Yaml) -> Value {
        match y {
            Yaml::Real(r) => json!(r.parse::<f64>().unwrap()),
            Yaml::Integer(i) => json!(i),
            Yaml::String(s) => json!(s),
            Yaml::Boolean(b) => json!(b),
            Yaml::Array(a) => Value::Array(a.iter().map(json_of).collect()),
            Yaml::Hash(h) => Value::Object(
                h.iter()
                    .map(|(k, v)| {
                        let k = match k {
                            Yaml::String(s) => s.clone(),
                            other => panic!("a key that is not a string: {other:?}"),
                        };
                        (k, json_of(v))
                    })
                    .collect(),
            ),
            Yaml::Null => Value::Null,
            other => panic!("unexpected YAML: {other:?}"),
        }
    }
    let docs = yaml_rust2::YamlLoader::load_from_str(text)?;
    assert_eq!(docs.len(), 1, "one YAML document");
    Ok(json_of(&docs[0]))
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap()
}

fn rules() -> Value {
    yaml(&std::fs::read_to_string(RULES).unwrap()).unwrap()
}

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().unwrap() >= 36,
        "{}",
        d["schemaVersion"]
    );
    assert_eq!(d["uid"], "marketprism-broker");
    assert_eq!(d["id"], Value::Null, "an export for sharing has no id");
    // The data source is chosen on import.
    assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(d["__inputs"][0]["pluginId"], "prometheus");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        vars.contains(&"job") && vars.contains(&"instance"),
        "{vars:?}"
    );
    let mut ids = BTreeSet::new();
    let mut panels = 0;
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "id twice: {p}");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] != "row" {
            panels += 1;
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                assert!(
                    expr.contains(r#"job=~"$job""#) && expr.contains(r#"instance=~"$instance""#),
                    "panel {}: {expr} ignores the job/instance selection",
                    p["title"]
                );
            }
        }
    }
    assert!(panels >= 20, "{panels} panels");
}

// ---- promtool ---------------------------------------------------------------

/// A program of Debian's prometheus package (scripts/lib.sh
/// `ensure_prometheus`): the path in `env`, else `name` on PATH.
fn prometheus_tool(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return p.into();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no {name}: run scripts/test (ensure_prometheus) or set {env}"))
}

fn promtool() -> PathBuf {
    prometheus_tool("MPB_PROMTOOL", "promtool")
}

fn run_promtool(args: &[&Path]) -> std::process::Output {
    let out = Command::new(promtool()).args(args).output().unwrap();
    eprintln!(
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn promtool_accepts_the_rules_and_each_alert_fires_on_its_cause_only() {
    let check = Command::new(promtool())
        .args(["check", "rules", RULES])
        .output()
        .unwrap();
    check.expect_code_for(0, "promtool check rules");
    let text = String::from_utf8_lossy(&check.stdout);
    let alerts = rule_queries(&rules()).len();
    assert!(
        text.contains(&format!("SUCCESS: {alerts} rules found")),
        "{text}"
    );
    let test = run_promtool(&[Path::new("test"), Path::new("rules"), Path::new(RULES_TEST)]);
    test.expect_code_for(0, "promtool test rules");

    // Every alert has a test in which it fires.
    let cases: Value = yaml(&std::fs::read_to_string(RULES_TEST).unwrap()).unwrap();
    let fired: BTreeSet<&str> = cases["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|c| c["alertname"].as_str().unwrap())
        .collect();
    for (place, _) in rule_queries(&rules()) {
        let name = place.strip_prefix("alert ").unwrap();
        assert!(fired.contains(name), "no test fires {name}");
    }

    // And the tests can fail: the same tests against rules where the
    // backlog alert watches the wrong value do.
    let dir = tempfile::tempdir().unwrap();
    let broken = std::fs::read_to_string(RULES).unwrap().replace(
        "marketprism_broker_consumer_pending_alarm == 1",
        "marketprism_broker_consumer_pending_alarm == 0",
    );
    assert_ne!(broken, std::fs::read_to_string(RULES).unwrap());
    std::fs::write(dir.path().join("rules.yml"), broken).unwrap();
    let tests = std::fs::read_to_string(RULES_TEST).unwrap().replace(
        "../../monitoring/prometheus/marketprism-broker.rules.yml",
        "rules.yml",
    );
    std::fs::write(dir.path().join("test.yml"), tests).unwrap();
    let out = run_promtool(&[
        Path::new("test"),
        Path::new("rules"),
        &dir.path().join("test.yml"),
    ]);
    assert_ne!(out.status.code(), Some(0), "broken rules passed the tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("alertname: MarketprismBrokerConsumerBacklog"),
        "{text}"
    );
}

#[test]
fn every_alert_says_what_to_do() {
    for g in rules()["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let name = r["alert"].as_str().unwrap();
            assert!(
                ["critical", "warning"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: severity"
            );
            assert!(
                r["annotations"]["summary"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: summary"
            );
            let d = r["annotations"]["description"].as_str().unwrap_or("");
            // A command to run, or where to look.
            assert!(
                d.contains('`') || d.contains("GET /"),
                "{name}: the description names no command: {d}"
            );
        }
    }
}

// ---- Against a live /metrics ------------------------------------------------

/// An open GET /api/v1/subscribe: the stream stays open while it lives.
struct EventStream {
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    _body: hyper::body::Incoming,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Opens GET /api/v1/subscribe and waits for its first bytes.
async fn open_event_stream(port: u16, subject: &str) -> EventStream {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(format!("/api/v1/subscribe?subject={subject}"))
        .header("host", "127.0.0.1")
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the event stream's first event");
    assert!(first.is_some());
    EventStream { conn, _body: body }
}

async fn scrape(d: &Daemon) -> String {
    let (code, _, body) = d
        .request(None, "GET", "/metrics", &[], vec![])
        .await
        .unwrap();
    assert_eq!(code, 200);
    String::from_utf8(body.to_vec()).unwrap()
}

/// One sample's value: `name{labels}` as the text has it.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

const P: &str = "marketprism_broker_";

/// A daemon with a declared stream and consumer (alarm thresholds set),
/// after a little of everything: publishes single and in a batch, a fetch
/// and an ack, an event-stream client (open while the guard lives).
async fn busy_daemon() -> (Daemon, EventStream, tempfile::TempDir) {
    // nats-server's client port uses TLS, so the certificate expiry is
    // served too.
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = certs::Pki::new(pki_dir.path());
    let d = Daemon::builder()
        .nats(&format!(
            "  tls:\n    cert_file: {:?}\n    key_file: {:?}\n    ca_file: {:?}\n  streams:\n    FEED:\n      subjects: [\"feed.>\"]\n      alert_if_silent_for: 1h\n      consumers:\n        worker:\n          filter_subject: \"feed.>\"\n          alert_if_pending_over: 100\n",
            pki.cert, pki.key, pki.ca
        ))
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    for i in 0..3 {
        let (code, v) = d.publish("feed.btc", json!({"p": i})).await;
        assert_eq!(code, 200, "{v}");
    }
    let (code, v) = d
        .post(
            "/api/v1/publish/batch",
            json!([{"subject": "feed.eth", "message": {"p": 1}}, {"subject": "core.x", "message": 1}]),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let consumer = "/api/v1/streams/FEED/consumers/worker";
    let (code, v) = d
        .post(
            &format!("{consumer}/fetch"),
            json!({"batch": 2, "expires_ms": 1000}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let tokens: Vec<Value> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ack_token"].clone())
        .collect();
    assert_eq!(tokens.len(), 2, "{v}");
    let (code, v) = d
        .post(&format!("{consumer}/ack"), json!({"tokens": tokens}))
        .await;
    assert_eq!(code, 200, "{v}");
    let sse = open_event_stream(d.http, "feed.%3E").await;
    (d, sse, pki_dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_the_rules_use_only_metrics_a_live_daemon_serves() {
    let (d, sse, _pki) = busy_daemon().await;

    let text = scrape(&d).await;
    assert_eq!(
        sample(&text, &format!("{P}sse_clients")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("{P}health_status{{status=\"healthy\"}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("{P}health_status{{status=\"unhealthy\"}}")),
        Some(0.0)
    );
    let served = sample_names(&text);
    // The per-stream and per-consumer series are there to be checked.
    for n in [
        "stream_last_message_age_seconds",
        "consumer_num_pending",
        "stream_silent_alarm",
        "consumer_pending_alarm",
        "certificate_expiry_timestamp_seconds",
    ] {
        assert!(
            served.contains(&format!("{P}{n}")),
            "{n} not served:\n{text}"
        );
    }

    let dash = dashboard();
    let queries = dashboard_queries(&dash);
    assert_eq!(
        unserved(&queries, &served),
        Vec::<String>::new(),
        "dashboard"
    );
    let alerts = rule_queries(&rules());
    assert_eq!(
        unserved(&alerts, &served),
        Vec::<String>::new(),
        "alert rules"
    );

    // Every metric family the daemon serves has a place on the dashboard
    // (the pid and the last exit's code are for humans reading /metrics).
    let used: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    for f in families {
        if [format!("{P}child_pid")].contains(&f.to_string()) {
            continue;
        }
        assert!(
            used.iter().any(|u| u == f
                || u.strip_prefix(f)
                    .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
            "{f} is on no panel"
        );
    }

    // A renamed metric fails the check: in a copy of the dashboard, and in
    // a copy of the rules.
    let renamed = serde_json::to_string(&dash)
        .unwrap()
        .replace("stream_last_message_age_seconds", "stream_last_message_age");
    let renamed: Value = serde_json::from_str(&renamed).unwrap();
    let missing = unserved(&dashboard_queries(&renamed), &served);
    assert_eq!(
        missing,
        ["panel \"Age of the last message\": marketprism_broker_stream_last_message_age"],
    );
    let renamed: Value = yaml(
        &std::fs::read_to_string(RULES)
            .unwrap()
            .replace("sync_failures_total", "sync_errors_total"),
    )
    .unwrap();
    let missing = unserved(&rule_queries(&renamed), &served);
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(
        missing
            .iter()
            .all(|m| m.ends_with(": marketprism_broker_sync_errors_total")),
        "{missing:?}"
    );
    drop(sse);
}

// ---- Evaluated by a real Prometheus ----------------------------------------

fn prometheus() -> PathBuf {
    prometheus_tool("MPB_PROMETHEUS", "prometheus")
}

/// A Prometheus server of its own, killed on drop.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes 127.0.0.1:`target` every second and evaluates the shipped
    /// rules every second.
    fn start(target: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{RULES:?}]\nscrape_configs:\n  - job_name: marketprism-broker\n    static_configs:\n      - targets: [\"127.0.0.1:{target}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(prometheus())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// GET /api/v1/`what`: the JSON answer (errors included), None while
    /// the server does not answer yet.
    async fn api(&self, what: &str) -> Option<Value> {
        let (_, _, body) = request(self.port, "GET", &format!("/api/v1/{what}"), &[], vec![])
            .await
            .ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// An instant query's answer.
    async fn query(&self, expr: &str) -> Value {
        let q: String = url_encode(expr);
        self.api(&format!("query?query={q}"))
            .await
            .expect("prometheus answers")
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A dashboard query as Grafana sends it with every variable at "All"
/// (their `allValue` is `.*`) and a rate window of a few scrapes.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "5s")
        .replace("${job}", ".*")
        .replace("${instance}", ".*")
        .replace("${stream}", ".*")
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$stream", ".*")
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_evaluates_every_query_of_the_dashboard_and_the_rules() {
    let (d, sse, _pki) = busy_daemon().await;
    let prom = Prometheus::start(d.http);
    // Up, and scraped often enough for 5s rate windows to hold samples.
    eventually(
        Duration::from_secs(30),
        "prometheus scraping the daemon",
        || async {
            let v = prom.api("query?query=up").await?;
            (v["data"]["result"][0]["value"][1] == "1").then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;

    let mut wrong = Vec::new();
    let mut empty = Vec::new();
    for (place, expr) in dashboard_queries(&dashboard()) {
        let sent = as_grafana_sends(&expr);
        assert!(!sent.contains('$'), "{place}: a variable left in {sent}");
        let v = prom.query(&sent).await;
        if v["status"] != "success" {
            wrong.push(format!("{place}: {sent}: {}", v["error"]));
        } else if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            empty.push(format!("{place}: {sent}"));
        }
    }
    assert_eq!(wrong, Vec::<String>::new(), "queries Prometheus refuses");
    // What these checks would see: a query with a syntax error, and one of
    // a renamed metric.
    let v = prom
        .query("sum(rate(marketprism_broker_http_requests_total[5s])")
        .await;
    assert_eq!(v["status"], "error", "{v}");
    let v = prom
        .query("marketprism_broker_stream_last_message_age")
        .await;
    assert_eq!(v["data"]["result"], json!([]), "{v}");
    assert_eq!(
        empty,
        Vec::<String>::new(),
        "queries with no series on a busy daemon"
    );

    // Every rule evaluated without error, and none fires on a healthy daemon.
    let rules = eventually(Duration::from_secs(10), "rules evaluated", || async {
        let v = prom.api("rules").await?;
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (!rules.is_empty()
            && rules
                .iter()
                .all(|r| r["lastEvaluation"] != "0001-01-01T00:00:00Z"))
        .then_some(rules)
    })
    .await;
    assert_eq!(rules.len(), rule_queries(&self::rules()).len());
    for r in &rules {
        assert_eq!(r["health"], "ok", "{}: {}", r["name"], r["lastError"]);
        assert_eq!(
            r["state"], "inactive",
            "{} fires on a healthy daemon",
            r["name"]
        );
    }
    drop(sse);
}
