//! GET /api/v1/status and /api/v1/nats/info: the daemon's and
//! nats-server's state, figures and cluster, as JSON.

use std::time::SystemTime;

use async_nats::jetstream::stream;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::error::{json_response, ApiError};
use super::streams::{declared_groups, list_streams};
use crate::app::App;
use crate::health;

type Resp = Response<Full<Bytes>>;

/// Service name the seed's status reports.
pub const SERVICE: &str = "message-broker-service";

pub(super) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The status' `cluster` object: null on a single node (no routes), so the
/// key is always there and `cluster == null` means "not clustered".
async fn cluster_status(app: &App, infos: &[stream::Info]) -> Value {
    let c = app.config();
    if !c.cluster_enabled() {
        return Value::Null;
    }
    let (routez, jsz) = tokio::join!(app.monitor_json("/routez"), async {
        if c.nats.jetstream_enabled {
            app.monitor_json("/jsz").await
        } else {
            None
        }
    });
    let groups = declared_groups(app, infos);
    let mut v = crate::cluster::status(
        c.nats.cluster_name.as_deref(),
        c.nats.server_name.as_deref(),
        routez.as_ref(),
        jsz.as_ref(),
        c.nats.jetstream_enabled,
        &groups,
    );
    // What is still catching up on this node (not a problem: nothing is
    // restarted for it), decided as /health decides it.
    let f = health::Facts {
        local_health: app.local_health().await,
        server_name: c.nats.server_name.clone(),
        stream_groups: Some(Ok(groups)),
        local_last_seqs: app.local_last_seqs().await,
        ..health::Facts::default()
    };
    v["catching_up"] = serde_json::to_value(health::catching_up(&f)).unwrap_or(Value::Null);
    v["consumers_not_current"] =
        serde_json::to_value(health::consumers_not_current(&f)).unwrap_or(Value::Null);
    // The meta group check (this node leads a group that misses routed
    // peers) and the restarts its self-heal asked for.
    let heal = app.meta_heal();
    if let (Some(s), Some(problems)) = (&heal.shortfall, v["problems"].as_array_mut()) {
        problems.push(Value::String(s.to_string()));
    }
    v["meta_heal"] = serde_json::to_value(&heal).unwrap_or(Value::Null);
    v
}

pub(super) fn pick(v: &Value, keys: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for k in keys {
        out.insert(k.to_string(), v.get(*k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

const SERVER_INFO_KEYS: &[&str] = &[
    "server_id",
    "server_name",
    "version",
    "go",
    "host",
    "port",
    "max_connections",
    "connections",
    "total_connections",
    "routes",
    "remotes",
    "in_msgs",
    "out_msgs",
    "in_bytes",
    "out_bytes",
    "max_payload",
    "mem",
    "cpu",
    "uptime",
];

/// nats-server's own figures: /varz when the monitor answers, else what
/// the client's INFO tells.
async fn server_info(app: &App) -> Value {
    if let Some(v) = app.varz().await {
        return pick(&v, SERVER_INFO_KEYS);
    }
    match app.connected_nats() {
        Some(n) => {
            let i = n.client.server_info();
            let v = json!({
                "server_id": i.server_id, "server_name": i.server_name, "version": i.version,
                "go": i.go, "host": i.host, "port": i.port, "max_payload": i.max_payload,
            });
            pick(&v, SERVER_INFO_KEYS)
        }
        None => Value::Null,
    }
}

pub async fn status(app: &App) -> Result<Resp, ApiError> {
    let f = app.facts();
    let (streams, streams_error) = match list_streams(app).await {
        Ok(v) => (v, None),
        Err(e) => (Vec::new(), Some(e.message)),
    };
    let jetstream_streams: Vec<Value> = streams
        .iter()
        .map(|i| {
            json!({
                "name": i.config.name, "subjects": i.config.subjects, "messages": i.state.messages,
                "bytes": i.state.bytes, "consumer_count": i.state.consumer_count,
            })
        })
        .collect();
    let sync = app.sync.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let board = app.alarm_board();
    let body = json!({
        "service": SERVICE,
        "timestamp": rfc3339(SystemTime::now()),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "nats_server": {
            "status": health::nats_server(&f),
            "supervised": f.supervised,
            "pid": f.child.pid,
            "restarts": f.child.restarts,
            "last_failure": f.child.last_failure,
            "connected": f.connected,
            "server_info": server_info(app).await,
        },
        "jetstream_streams": jetstream_streams,
        "jetstream_error": streams_error,
        "cluster": cluster_status(app, &streams).await,
        "stream_reconciliation": {
            "last_run": sync.at.map(rfc3339),
            "created": sync.report.created,
            "updated": sync.report.updated,
            "drift": sync.report.drift,
            "errors": sync.report.errors,
            "error": sync.error,
        },
        "alarms": board.alarms.iter().map(crate::alarms::Alarm::to_json).collect::<Vec<_>>(),
        "alarms_checked_at": board
            .checked_at
            .map(|t| humantime::format_rfc3339_millis(t).to_string()),
        "alarms_error": board.error,
        "message_stats": app.stats.snapshot(),
        "throughput": super::metrics::throughput(app),
        "latency": super::metrics::latency(app),
    });
    Ok(json_response(StatusCode::OK, &body))
}

pub async fn nats_info(app: &App) -> Result<Resp, ApiError> {
    let child = app.child.borrow().clone();
    let n = &app.config().nats;
    let ports = match child.ports {
        Some(p) => json!({"nats": p.nats, "cluster": p.cluster, "http": p.http}),
        None => {
            json!({"nats": n.nats_port, "cluster": app.config().cluster_listen().map(|(_, p)| p), "http": n.http_port})
        }
    };
    let body = json!({
        "status": health::nats_server(&app.facts()),
        "pid": child.pid,
        "ports": ports,
        "server_info": server_info(app).await,
        "config_file": app.supervised.then(|| app.config().data_dir().join("nats-server.conf")),
        "restarts": child.restarts,
        "healthy_since": child.healthy_since.map(rfc3339),
    });
    Ok(json_response(StatusCode::OK, &body))
}
