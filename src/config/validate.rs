//! Checks that need the whole config: ports, subjects, names, limits.
//! Returns warnings, or the first error with the key path it concerns.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use super::schema::{AckPolicy, Config, DeliverPolicy, Retention, StreamConfig};
use crate::security::{CertificateFile, Security};
use crate::subject;

/// One validation failure: the key path and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub path: Vec<String>,
    pub message: String,
}

fn fail<T>(path: &[&str], message: impl Into<String>) -> Result<T, Violation> {
    Err(Violation {
        path: path.iter().map(|s| s.to_string()).collect(),
        message: message.into(),
    })
}

/// nats-server's own rules for the lame-duck keys (opts.go and
/// validateOptions, 2.9 to 2.14): a duration of at least 30 s and a grace
/// period strictly below it. Checked whether or not the node is clustered,
/// so adding routes later cannot turn a quiet config into a refused one.
fn check_lame_duck(n: &super::schema::NatsConfig) -> Result<(), Violation> {
    use super::schema::MIN_LAME_DUCK_DURATION;
    let (grace, dur) = (n.lame_duck_grace_period, n.lame_duck_duration);
    if dur.get() < MIN_LAME_DUCK_DURATION.get() {
        return fail(
            &["nats", "lame_duck_duration"],
            format!("must be at least {MIN_LAME_DUCK_DURATION} (nats-server refuses less; got {dur}); a node with few clients still stops soon after nats.lame_duck_grace_period"),
        );
    }
    if grace.get() >= dur.get() {
        return fail(
            &["nats", "lame_duck_grace_period"],
            format!("must be shorter than nats.lame_duck_duration ({dur}), as nats-server requires (got {grace})"),
        );
    }
    Ok(())
}

/// Largest max_payload accepted: nats-server's max_pending default; a
/// bigger payload could never be delivered.
pub const MAX_PAYLOAD_LIMIT: u64 = 64 << 20;

pub fn validate(c: &Config) -> Result<Vec<String>, Violation> {
    let mut warnings = Vec::new();
    let n = &c.nats;

    check_host(&c.host, &["host"])?;
    check_host(&n.host, &["nats", "host"])?;

    let mut ports: Vec<(u16, &[&str])> = vec![
        (c.port, &["port"]),
        (n.nats_port, &["nats", "nats_port"]),
        (n.http_port, &["nats", "http_port"]),
    ];
    if let Some((_, p)) = c.cluster_listen() {
        let key: &[&str] = if n.cluster_listen.is_some() {
            &["nats", "cluster_listen"]
        } else {
            &["nats", "cluster_port"]
        };
        ports.push((p, key));
    }
    for (i, (p, key)) in ports.iter().enumerate() {
        if *p == 0 {
            return fail(key, "port must be between 1 and 65535");
        }
        if let Some((_, other)) = ports[..i].iter().find(|(q, _)| q == p) {
            return fail(
                key,
                format!("port {p} is already used by `{}`", other.join(".")),
            );
        }
    }
    // cluster_port alone (the seed sets it) means nothing without routes;
    // a cluster name or listen address does show intent worth a word.
    if (n.cluster_name.is_some() || n.cluster_listen.is_some())
        && n.cluster_routes.is_empty()
        && c.auto_start_nats
    {
        warnings.push(
            "nats.cluster_routes is empty: running a single node; the cluster port is not opened (JetStream cannot run as a cluster without routes)".into(),
        );
    }

    if let Some(name) = &n.server_name {
        if name.is_empty() || name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return fail(
                &["nats", "server_name"],
                "server name must be non-empty without whitespace",
            );
        }
    }
    if let Some(name) = &n.cluster_name {
        if name.is_empty() || name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return fail(
                &["nats", "cluster_name"],
                "cluster name must be non-empty without whitespace",
            );
        }
        // nats-server >= 2.10 refuses it ("cluster name is reserved").
        if name == "_" {
            return fail(
                &["nats", "cluster_name"],
                "cluster name `_` is reserved by nats-server",
            );
        }
    }
    if let Some(listen) = &n.cluster_listen {
        let ok = listen.rsplit_once(':').is_some_and(|(h, p)| {
            p.parse::<u16>().is_ok_and(|p| p > 0)
                && check_host(h.trim_matches(['[', ']']), &[]).is_ok()
        });
        if !ok {
            return fail(
                &["nats", "cluster_listen"],
                format!("{listen:?} is not HOST:PORT (e.g. \"0.0.0.0:6222\")"),
            );
        }
    }
    check_url(&n.nats_url, &["nats://", "tls://"], &["nats", "nats_url"])?;
    if c.auto_start_nats
        && c.cluster_enabled()
        && !n.client_urls.is_empty()
        && n.internal_password_file.is_none()
    {
        warnings.push("nats.client_urls: the daemon's own client connects to this node's nats-server only (its generated internal password is valid on this node only); to let it fail over to the other nodes, give every node nats.internal_password_file with the same secret".into());
    }
    for (i, u) in n.client_urls.iter().enumerate() {
        check_url(
            u,
            &["nats://", "tls://"],
            &["nats", "client_urls", &i.to_string()],
        )?;
    }
    for (i, u) in n.cluster_routes.iter().enumerate() {
        check_url(
            u,
            &["nats-route://", "nats://"],
            &["nats", "cluster_routes", &i.to_string()],
        )?;
    }
    if c.cluster_listen().is_some() {
        // A route to the node itself is fine (one route list for every
        // node): nats-server recognises its own server id and ignores it.
        // One copy in a cluster: the stream is down whenever its node is,
        // and /health says so on every node. Worth knowing, not an error
        // (the seed's defaults are R1).
        if n.jetstream_enabled {
            let single: Vec<String> = c
                .streams()
                .into_iter()
                .filter(|(_, s)| s.replicas == 1)
                .map(|(name, _)| name)
                .collect();
            if !single.is_empty() {
                warnings.push(format!(
                    "in a cluster, stream(s) {} keep one copy (replicas: 1): each is unavailable while the node holding it is down, and /health is 503 then; declare them with replicas: 3 to survive a node",
                    single.join(", ")
                ));
            }
        }
        // In a cluster, JetStream needs a stable, unique name per node
        // (`load` defaults it to the hostname).
        if n.jetstream_enabled && n.server_name.is_none() {
            return fail(
                &["nats", "server_name"],
                "a JetStream cluster needs a server_name per node (unique in the cluster), and the hostname could not be read to default it",
            );
        }
    }

    let payload = n.max_payload.bytes();
    if payload == 0 || payload > MAX_PAYLOAD_LIMIT {
        return fail(
            &["nats", "max_payload"],
            format!("must be between 1B and 64MB (got {})", n.max_payload),
        );
    }
    if n.write_deadline.get().is_zero() {
        return fail(&["nats", "write_deadline"], "must be greater than 0");
    }
    if n.ping_interval.get().is_zero() {
        return fail(&["nats", "ping_interval"], "must be greater than 0");
    }
    check_lame_duck(n)?;
    for (key, v) in [
        ("jetstream_max_streams", n.jetstream_max_streams),
        ("jetstream_max_consumers", n.jetstream_max_consumers),
    ] {
        if v < -1 || v == 0 {
            return fail(
                &["nats", key],
                format!("must be a positive number, or -1 for no limit (got {v})"),
            );
        }
    }

    let streams = c.streams();
    if n.jetstream_enabled && c.auto_create_streams {
        validate_streams(c, &streams)?;
    } else if !n.streams.is_empty() {
        warnings.push("streams are declared but not created: JetStream is disabled or auto_create_streams is false".into());
    }
    validate_alarms(&streams, &mut warnings)?;

    let sources: Vec<&String> = n.mappings.keys().collect();
    for (i, (source, m)) in n.mappings.iter().enumerate() {
        let at = ["nats", "mappings", source.as_str()];
        crate::mapping::check(source, &m.0).or_else(|e| fail(&at, e))?;
        // natsconf writes a key between `"`, or `'` when it holds a `"`.
        if source.contains('"') && source.contains('\'') {
            return fail(
                &at,
                format!("source {source:?} contains both `\"` and `'`: nats-server.conf has no way to write such a key"),
            );
        }
        if let Some(other) = sources[..i].iter().find(|o| subject::overlaps(o, source)) {
            return fail(
                &at,
                format!("source {source:?} overlaps the mapping source {other:?}: a subject matching both would be mapped by whichever nats-server picks"),
            );
        }
    }
    if !n.mappings.is_empty() && !c.auto_start_nats {
        warnings.push("nats.mappings are rendered only into the nats-server the daemon runs; with auto_start_nats: false, configure the same mappings on your server (the daemon still uses them to find the stream a publish lands in)".into());
    }

    let mut seen = HashSet::new();
    for (i, u) in n.users.iter().enumerate() {
        let idx = i.to_string();
        if u.user.is_empty()
            || u.user
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            return fail(
                &["nats", "users", &idx, "user"],
                "user name must be non-empty without whitespace",
            );
        }
        if !seen.insert(u.user.as_str()) {
            return fail(
                &["nats", "users", &idx, "user"],
                format!("user {:?} is listed twice", u.user),
            );
        }
        if u.user.starts_with("_marketprism") {
            return fail(
                &["nats", "users", &idx, "user"],
                "user names starting with `_marketprism` are reserved for the daemon",
            );
        }
        // secrets::resolve filled it from its one source.
        let (key, password) = match (&u.password_file, &u.password_env) {
            (Some(_), _) => ("password_file", u.password.as_deref().unwrap_or("")),
            (_, Some(_)) => ("password_env", u.password.as_deref().unwrap_or("")),
            _ => ("password", u.password.as_deref().unwrap_or("")),
        };
        if password.is_empty() {
            return fail(&["nats", "users", &idx, key], "password must not be empty");
        }
        if password.chars().any(|ch| ch.is_control()) {
            return fail(
                &["nats", "users", &idx, key],
                "password must not contain control characters",
            );
        }
        if super::secrets::is_bcrypt(password) {
            super::secrets::check_bcrypt(password)
                .or_else(|m| fail(&["nats", "users", &idx, key], m))?;
        }
        if let Some(p) = &u.permissions {
            for (dir, list) in [("publish", &p.publish), ("subscribe", &p.subscribe)] {
                let Some(list) = list else { continue };
                for s in list.allow.iter().chain(&list.deny) {
                    if let Err(e) = subject::check(s, true) {
                        return fail(&["nats", "users", &idx, "permissions", dir], e.message);
                    }
                }
            }
        }
    }

    for (block, tls) in [("tls", &n.tls), ("cluster_tls", &n.cluster_tls)] {
        let Some(tls) = tls else { continue };
        for (key, path) in [
            ("cert_file", Some(&tls.cert_file)),
            ("key_file", Some(&tls.key_file)),
            ("ca_file", tls.ca_file.as_ref()),
        ] {
            let Some(path) = path else { continue };
            if let Err(e) = std::fs::metadata(path) {
                return fail(
                    &["nats", block, key],
                    format!("cannot read {}: {e}", path.display()),
                );
            }
        }
        if tls.verify && tls.ca_file.is_none() {
            warnings.push(format!("nats.{block}.verify is on without ca_file: certificates are checked against the system roots"));
        }
    }
    if n.cluster_tls.is_some() && !c.cluster_enabled() {
        warnings.push("nats.cluster_tls is set but nats.cluster_routes is empty: there are no routes to protect".into());
    }

    if let Some(bin) = &n.server_bin {
        if c.auto_start_nats {
            check_executable(bin).or_else(|m| fail(&["nats", "server_bin"], m))?;
        }
    }

    let s = &c.supervisor;
    for (key, d) in [
        ("start_timeout", s.start_timeout),
        ("stop_timeout", s.stop_timeout),
        ("health_interval", s.health_interval),
        ("health_timeout", s.health_timeout),
        ("backoff_initial", s.backoff_initial),
        ("backoff_max", s.backoff_max),
        ("failure_window", s.failure_window),
        ("stream_resync_interval", s.stream_resync_interval),
    ] {
        if d.get().is_zero() {
            return fail(&["supervisor", key], "must be greater than 0");
        }
    }
    if s.backoff_initial > s.backoff_max {
        return fail(
            &["supervisor", "backoff_initial"],
            format!(
                "{} is more than backoff_max {}",
                s.backoff_initial, s.backoff_max
            ),
        );
    }
    if s.health_failures == 0 {
        return fail(&["supervisor", "health_failures"], "must be at least 1");
    }
    if s.max_failures == 0 {
        return fail(&["supervisor", "max_failures"], "must be at least 1");
    }
    for (key, d) in [
        ("publish_timeout", c.api.publish_timeout),
        ("header_read_timeout", c.api.header_read_timeout),
        ("drain_timeout", c.api.drain_timeout),
        ("sse_heartbeat", c.api.sse_heartbeat),
    ] {
        if d.get().is_zero() {
            return fail(&["api", key], "must be greater than 0");
        }
    }
    if c.api.max_connections == 0 {
        return fail(&["api", "max_connections"], "must be at least 1");
    }
    if c.api.batch_max_entries == 0 {
        return fail(&["api", "batch_max_entries"], "must be at least 1");
    }
    if c.api.batch_max_bytes.bytes() == 0 {
        return fail(&["api", "batch_max_bytes"], "must be greater than 0");
    }
    if c.api.sse_buffer.bytes() == 0 {
        return fail(&["api", "sse_buffer"], "must be greater than 0");
    }
    if c.api.fetch_max_batch == 0 {
        return fail(&["api", "fetch_max_batch"], "must be at least 1");
    }
    if c.api.fetch_max_wait.get().is_zero() {
        return fail(&["api", "fetch_max_wait"], "must be greater than 0");
    }
    let payload = c.nats.max_payload.bytes();
    if c.api.fetch_max_bytes.bytes() < 2 * payload {
        return fail(
            &["api", "fetch_max_bytes"],
            format!(
                "must be at least twice nats.max_payload ({payload} bytes), so that a fetch can bring the largest message with its subject, headers and ack subject; got {} bytes",
                c.api.fetch_max_bytes.bytes()
            ),
        );
    }
    check_api_security(c, &mut warnings);
    if c.api.sse_max_clients >= c.api.max_connections {
        warnings.push(format!(
            "api.sse_max_clients ({}) is not below api.max_connections ({}): open event streams can take every HTTP connection, and then health checks and publishes wait",
            c.api.sse_max_clients, c.api.max_connections
        ));
    }
    Ok(warnings)
}

/// `api.tokens_file` and `api.tls`: what to say about them (the files
/// themselves are loaded by [`load_security`]).
fn check_api_security(c: &Config, warnings: &mut Vec<String>) {
    let api = &c.api;
    match &api.tokens_file {
        Some(path) => {
            warnings.extend(super::secrets::readable_warning("api.tokens_file", path));
        }
        None => {
            if api.tokens_for_reads {
                warnings.push("api.tokens_for_reads has no effect without api.tokens_file".into());
            }
            let loopback = c
                .host
                .parse::<IpAddr>()
                .map(|a| a.is_loopback())
                .unwrap_or(c.host == "localhost");
            if !loopback {
                warnings.push(format!(
                    "the HTTP API listens on {} without api.tokens_file: whoever reaches the port can publish",
                    c.host
                ));
            }
        }
    }
}

/// Loads `api.tokens_file` and `api.tls` as the daemon uses them, once:
/// check-config, start-up and a reload refuse a bad file alike (a reload
/// then keeps the old tokens and certificate), and what loaded is what
/// the server gets.
pub fn load_security(c: &Config) -> Result<Security, Violation> {
    let api = &c.api;
    let mut security = Security::load(
        api.tokens_file.as_deref(),
        api.tls.as_ref().map(|t| t.files()),
    )
    .map_err(|e| Violation {
        path: std::iter::once("api")
            .chain(e.key.split('.'))
            .map(String::from)
            .collect(),
        message: e.message,
    })?;
    security.certificates = certificate_files(c)
        .into_iter()
        .filter_map(|(key, path)| CertificateFile::read(key, path))
        .collect();
    Ok(security)
}

/// The files of the config that hold certificates in use, by the key that
/// names each: the API's certificate and client CAs, nats-server's client
/// and route certificates and CAs (routes only when clustered: else
/// nats-server does not load them). Private keys are left out.
pub fn certificate_files(c: &Config) -> Vec<(String, &Path)> {
    let mut files = Vec::new();
    if let Some(t) = &c.api.tls {
        files.push(("api.tls.cert_file".to_string(), t.cert_file.as_path()));
        if let Some(ca) = &t.client_ca_file {
            files.push(("api.tls.client_ca_file".to_string(), ca.as_path()));
        }
    }
    let n = &c.nats;
    let blocks = [
        ("tls", n.tls.as_ref()),
        (
            "cluster_tls",
            n.cluster_tls.as_ref().filter(|_| c.cluster_enabled()),
        ),
    ];
    for (block, tls) in blocks {
        let Some(t) = tls else { continue };
        files.push((format!("nats.{block}.cert_file"), t.cert_file.as_path()));
        if let Some(ca) = &t.ca_file {
            files.push((format!("nats.{block}.ca_file"), ca.as_path()));
        }
    }
    files
}

fn validate_streams(c: &Config, streams: &BTreeMap<String, StreamConfig>) -> Result<(), Violation> {
    let max = c.nats.jetstream_max_streams;
    if max > 0 && streams.len() as i64 > max {
        return fail(
            &["nats", "jetstream_max_streams"],
            format!(
                "{max} is fewer than the {} streams declared (the seed's 3 defaults included)",
                streams.len()
            ),
        );
    }
    let nodes = c.cluster_nodes();
    let mut claimed: Vec<(&str, &str)> = Vec::new();
    // Built-in streams first, so a conflict is reported on the stream the
    // user wrote (which has a line), not on the default it collides with.
    let ordered = streams
        .iter()
        .filter(|(n, _)| !c.nats.streams.contains_key(*n))
        .chain(
            streams
                .iter()
                .filter(|(n, _)| c.nats.streams.contains_key(*n)),
        );
    for (name, s) in ordered {
        let at = |key: &'static str| -> Vec<&str> {
            let mut p = vec!["nats", "streams", name.as_str()];
            if !key.is_empty() {
                p.push(key);
            }
            p
        };
        subject::check_stream_name(name).or_else(|e| fail(&at(""), e.message))?;
        if s.subjects.is_empty() {
            return fail(&at("subjects"), "a stream needs at least one subject");
        }
        for subj in &s.subjects {
            subject::check(subj, true).or_else(|e| fail(&at("subjects"), e.message))?;
            if subj.starts_with('$') {
                return fail(
                    &at("subjects"),
                    format!("{subj:?}: subjects starting with `$` are reserved by NATS"),
                );
            }
            if let Some((other_subj, other)) =
                claimed.iter().find(|(o, _)| subject::overlaps(o, subj))
            {
                let whose = if *other == name.as_str() {
                    "another subject of the same stream".to_string()
                } else {
                    format!("stream {other}")
                };
                return fail(
                    &at("subjects"),
                    format!("{subj:?} overlaps {other_subj:?} of {whose}; a subject can belong to one stream only"),
                );
            }
            claimed.push((subj, name));
        }
        if s.max_msgs < -1 {
            return fail(
                &at("max_msgs"),
                format!("must be -1 (no limit) or more (got {})", s.max_msgs),
            );
        }
        if !(1..=5).contains(&s.replicas) {
            return fail(
                &at("replicas"),
                format!("must be between 1 and 5 (got {})", s.replicas),
            );
        }
        if s.replicas as usize > nodes {
            return fail(
                &at("replicas"),
                format!("{} replicas need a cluster of at least {} nodes, but nats.cluster_routes lists {} other node(s)", s.replicas, s.replicas, nodes - 1),
            );
        }
        if let (Some(w), false) = (s.duplicate_window, s.max_age.get().is_zero()) {
            if w > s.max_age {
                return fail(
                    &at("duplicate_window"),
                    format!("{w} is longer than max_age {}", s.max_age),
                );
            }
        }
        validate_consumers(name, s, nodes)?;
    }
    let consumers: usize = streams.values().map(|s| s.consumers.len()).sum();
    let max = c.nats.jetstream_max_consumers;
    if max > 0 && consumers as i64 > max {
        return fail(
            &["nats", "jetstream_max_consumers"],
            format!("{max} is fewer than the {consumers} consumers declared"),
        );
    }
    Ok(())
}

/// The silence and lag alarms (`alert_if_silent_for`,
/// `alert_if_pending_over`): checked whether or not the daemon creates
/// the streams, since it watches existing ones either way. A zero silence
/// is refused (every stream would always be silent); a zero pending
/// threshold is a real one (alarm on any backlog). `health_fails_on_alarm`
/// without a threshold does nothing: a warning says so.
fn validate_alarms(
    streams: &BTreeMap<String, StreamConfig>,
    warnings: &mut Vec<String>,
) -> Result<(), Violation> {
    for (name, s) in streams {
        if s.alert_if_silent_for.is_some_and(|d| d.get().is_zero()) {
            return fail(
                &["nats", "streams", name, "alert_if_silent_for"],
                "must be longer than 0 (e.g. \"30s\"); leave it out for no silence alarm",
            );
        }
        if s.health_fails_on_alarm && s.alert_if_silent_for.is_none() {
            warnings.push(format!("nats.streams.{name}.health_fails_on_alarm does nothing without alert_if_silent_for"));
        }
        for (consumer, k) in &s.consumers {
            if k.health_fails_on_alarm && k.alert_if_pending_over.is_none() {
                warnings.push(format!("nats.streams.{name}.consumers.{consumer}.health_fails_on_alarm does nothing without alert_if_pending_over"));
            }
        }
    }
    Ok(())
}

/// The `consumers:` of one stream: what nats-server would refuse at
/// runtime, refused here with the key that causes it.
fn validate_consumers(stream: &str, s: &StreamConfig, nodes: usize) -> Result<(), Violation> {
    // Unfiltered or overlapping consumers of a workqueue stream are refused
    // by nats-server (a message may belong to one consumer only).
    let mut workqueue_claims: Vec<(String, &str)> = Vec::new();
    for (name, k) in &s.consumers {
        let at = |key: &'static str| -> Vec<&str> {
            let mut p = vec!["nats", "streams", stream, "consumers", name.as_str()];
            if !key.is_empty() {
                p.push(key);
            }
            p
        };
        subject::check_consumer_name(name).or_else(|e| fail(&at(""), e.message))?;
        if k.replicas > 5 {
            return fail(
                &at("replicas"),
                format!(
                    "must be 0 (as many as the stream) or between 1 and 5 (got {})",
                    k.replicas
                ),
            );
        }
        if k.replicas as usize > nodes {
            return fail(
                &at("replicas"),
                format!("{} replicas need a cluster of at least {} nodes, but nats.cluster_routes lists {} other node(s)", k.replicas, k.replicas, nodes - 1),
            );
        }
        if k.filter_subject.is_some() && !k.filter_subjects.is_empty() {
            return fail(
                &at("filter_subjects"),
                "give either filter_subject or filter_subjects, not both",
            );
        }
        let key = if k.filter_subject.is_some() {
            "filter_subject"
        } else {
            "filter_subjects"
        };
        let filters = k.filters();
        for (i, f) in filters.iter().enumerate() {
            subject::check(f, true).or_else(|e| fail(&at(key), e.message))?;
            if !s.subjects.iter().any(|p| subject::within(f, p)) {
                return fail(
                    &at(key),
                    format!(
                        "{f:?} is not within the stream's subjects {:?}; the consumer would never see a message",
                        s.subjects
                    ),
                );
            }
            if let Some(other) = filters[..i].iter().find(|o| subject::overlaps(o, f)) {
                return fail(
                    &at(key),
                    format!("{f:?} overlaps {other:?}; nats-server refuses overlapping filters"),
                );
            }
        }
        match (k.deliver_policy, k.opt_start_seq) {
            (DeliverPolicy::ByStartSequence, None | Some(0)) => {
                return fail(
                    &at("opt_start_seq"),
                    "deliver_policy by_start_sequence needs opt_start_seq (1 or more)",
                )
            }
            (DeliverPolicy::ByStartSequence, Some(_)) | (_, None) => {}
            (p, Some(_)) => {
                return fail(
                    &at("opt_start_seq"),
                    format!("opt_start_seq needs deliver_policy by_start_sequence (it is {p})"),
                )
            }
        }
        if k.ack_wait.get().is_zero() {
            return fail(&at("ack_wait"), "must be greater than 0");
        }
        for (key, v) in [
            ("max_deliver", k.max_deliver),
            ("max_ack_pending", k.max_ack_pending),
        ] {
            if v < -1 || v == 0 {
                return fail(
                    &at(key),
                    format!("must be a positive number, or -1 for no limit (got {v})"),
                );
            }
        }
        if s.retention == Retention::Workqueue {
            if k.ack_policy != AckPolicy::Explicit {
                return fail(
                    &at("ack_policy"),
                    "a workqueue stream needs ack_policy explicit",
                );
            }
            let mine = if filters.is_empty() {
                vec![">".to_string()]
            } else {
                filters
            };
            for f in &mine {
                if let Some((_, other)) = workqueue_claims
                    .iter()
                    .find(|(o, _)| subject::overlaps(o, f))
                {
                    return fail(
                        &at(key),
                        format!("on a workqueue stream every message belongs to one consumer, but this consumer's filter {f:?} overlaps consumer {other}'s"),
                    );
                }
            }
            workqueue_claims.extend(mine.into_iter().map(|f| (f, name.as_str())));
        }
    }
    Ok(())
}

fn check_host(h: &str, key: &[&str]) -> Result<(), Violation> {
    if h == "localhost" || h.parse::<IpAddr>().is_ok() {
        Ok(())
    } else {
        fail(
            key,
            format!("{h:?} is not an IP address (use e.g. \"127.0.0.1\", \"0.0.0.0\" or \"::\")"),
        )
    }
}

fn check_url(u: &str, schemes: &[&str], key: &[&str]) -> Result<(), Violation> {
    let rest = schemes.iter().find_map(|s| u.strip_prefix(s));
    let ok = rest.is_some_and(|r| {
        let hostport = r.rsplit('@').next().unwrap_or(r).trim_end_matches('/');
        !hostport.is_empty() && !hostport.chars().any(char::is_whitespace)
    });
    if ok {
        Ok(())
    } else {
        fail(
            key,
            format!("{u:?} is not a URL of the form {}HOST:PORT", schemes[0]),
        )
    }
}

/// An explicitly configured nats-server must exist and be executable.
pub fn check_executable(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(m) if !m.is_file() => Err(format!("{} is not a file", path.display())),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err(format!("{} is not executable", path.display()))
        }
        Ok(_) => Ok(()),
    }
}

/// Host and port of a route URL (`nats-route://[user:pass@]host:port`).
pub(super) fn route_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let hostport = rest.rsplit('@').next()?.trim_end_matches('/');
    let (h, p) = hostport.rsplit_once(':')?;
    Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
}

pub(super) fn is_unspecified(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified())
}
