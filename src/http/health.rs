//! GET /health: 200 when the daemon can take publishes, 503 naming what
//! is wrong.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use serde_json::{json, Value};

use super::error::{json_response, ApiError};
use super::status::{pick, rfc3339, SERVICE};
use super::streams::{declared_groups, list_streams};
use crate::app::{App, Lost};
use crate::supervisor::Phase;

type Resp = Response<Full<Bytes>>;

/// 200 only when nats-server runs, the client is connected, JetStream
/// answers and the streams are reconciled; 503 naming what is wrong.
pub async fn health(app: &App) -> Result<Resp, ApiError> {
    let child = app.child.borrow().clone();
    let mut problems: Vec<String> = Vec::new();
    if app.supervised {
        if child.phase != Phase::Running {
            let mut p = format!("nats-server is {}", child.phase.as_str());
            if let Some(d) = child.restart_in {
                p.push_str(&format!(" (next attempt in {} ms)", d.as_millis()));
            }
            if let Some(f) = &child.last_failure {
                p.push_str(&format!("; last failure: {f}"));
            }
            problems.push(p);
        } else if !child.healthy {
            problems.push("nats-server is not answering its health probe".into());
        }
    }
    if app.supervised && app.config().nats.jetstream_enabled {
        if let Some(full) = crate::supervisor::probe::store_space_problem(&app.config().data_dir())
        {
            problems.push(full);
        }
    }
    if let Some(f) = app.durability.recent_failure() {
        let ago = SystemTime::now()
            .duration_since(f.at)
            .unwrap_or_default()
            .as_secs();
        problems.push(format!(
            "syncing the JetStream store to disk failed {ago} s ago ({}); the publishes waiting for it were answered {} (listed for {} s after a failure)",
            f.error,
            match f.error.kind {
                crate::durability::FailureKind::NoSpace => "507",
                crate::durability::FailureKind::Io => "503",
            },
            crate::durability::FAILURE_SHOWN_FOR.as_secs()
        ));
    }
    let connected = app.is_connected();
    if !connected {
        problems.push(format!(
            "not connected to nats-server at {}",
            app.nats_urls().join(", ")
        ));
    }
    let mut jetstream = Value::Null;
    if app.config().nats.jetstream_enabled && connected {
        let nats = app.nats().expect("connected implies a client");
        // A raw $JS.API.INFO request: the answer's shape differs across
        // nats-server versions, and only "does JetStream answer" matters.
        let info = nats.client.request("$JS.API.INFO", Bytes::new());
        match app.while_connected(Duration::from_secs(2), info).await {
            Ok(Ok(msg)) => match serde_json::from_slice::<Value>(&msg.payload) {
                Ok(v) if v.get("error").is_none() => {
                    jetstream = pick(&v, &["streams", "consumers", "memory", "storage"]);
                }
                Ok(v) => problems.push(format!(
                    "JetStream refuses requests: {}",
                    v["error"]["description"]
                        .as_str()
                        .unwrap_or("unknown error")
                )),
                Err(e) => problems.push(format!("JetStream answered nonsense: {e}")),
            },
            Ok(Err(e)) => problems.push(format!("JetStream does not answer: {e}")),
            Err(Lost::TimedOut) => problems.push("JetStream does not answer within 2 s".into()),
            Err(Lost::Disconnected) => {
                problems.push("the connection to nats-server dropped".into())
            }
        }
        if app.config().auto_create_streams {
            if !app.streams_synced() {
                problems.push("streams are not reconciled yet".into());
            }
            let sync = app.sync.lock().unwrap_or_else(|e| e.into_inner());
            for name in &sync.report.missing {
                let why = sync
                    .report
                    .errors
                    .iter()
                    .find(|e| e.starts_with(&format!("{name}: ")))
                    .cloned();
                problems.push(match why {
                    Some(e) => format!("declared stream {name} does not exist ({e}); its subjects are not persisted"),
                    None => format!("declared stream {name} does not exist; its subjects are not persisted"),
                });
            }
            for name in &sync.report.missing_consumers {
                let (stream, consumer) = name.split_once('/').unwrap_or((name, ""));
                let prefix = format!("{stream}: consumer {consumer}: ");
                let why = sync
                    .report
                    .errors
                    .iter()
                    .find_map(|e| e.strip_prefix(&prefix))
                    .unwrap_or("reason unknown");
                problems.push(format!(
                    "declared consumer {consumer} of stream {stream} does not exist ({why})"
                ));
            }
        }
    }
    // A clustered node is only as useful as its cluster: without a meta
    // leader no stream can be created or changed, and a stream without a
    // leader takes no writes. Both are this node's problem too (a load
    // balancer should send publishes elsewhere).
    if app.clustered_jetstream() {
        if let Some(p) = app.meta_problem().await {
            problems.push(p);
        } else if connected {
            match list_streams(app).await {
                Ok(infos) => {
                    let groups = declared_groups(app, &infos);
                    problems.extend(crate::cluster::stream_problems(&groups));
                }
                Err(e) => problems.push(format!(
                    "cannot read the streams' cluster state: {}",
                    e.message
                )),
            }
        }
    }
    let (status, code) = if problems.is_empty() {
        ("healthy", StatusCode::OK)
    } else {
        ("unhealthy", StatusCode::SERVICE_UNAVAILABLE)
    };
    let body = json!({
        "status": status,
        "service": SERVICE,
        "timestamp": rfc3339(SystemTime::now()),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "nats_server": if app.supervised { child.phase.as_str() } else if connected { "running" } else { "unreachable" },
        "pid": child.pid,
        "connected": connected,
        "jetstream": jetstream,
        "problems": problems,
    });
    let mut resp = json_response(code, &body);
    if code == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(header::RETRY_AFTER, 1.into());
    }
    Ok(resp)
}
