//! Request routing and the handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::stream;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::error::{json_response, ApiError};
use crate::app::{App, Lost};
use crate::subject;
use crate::supervisor::Phase;

type Resp = Response<Full<Bytes>>;

/// Service name the seed's status reports.
pub const SERVICE: &str = "message-broker-service";

/// A response body: a whole one, or an event stream.
pub type Body = http_body_util::Either<Full<Bytes>, super::subscribe::SseBody>;

pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    use http_body_util::Either;
    // Before anything reads the body: a refused client cannot make us
    // buffer (or publish) a byte.
    if let Err(e) = authorize(&app, &req) {
        return Ok(e.into_response().map(Either::Left));
    }
    if req.uri().path() == "/api/v1/subscribe" {
        let r = if req.method() == Method::GET {
            super::subscribe::handle(&app, &req).await
        } else {
            Err(ApiError::method_not_allowed("GET"))
        };
        return Ok(match r {
            Ok(resp) => resp.map(Either::Right),
            Err(e) => e.into_response().map(Either::Left),
        });
    }
    Ok(route(&app, req)
        .await
        .unwrap_or_else(ApiError::into_response)
        .map(Either::Left))
}

/// `api.tokens_file` enforcement (see `auth`): Ok, or the 401/403 to send.
fn authorize(app: &App, req: &Request<Incoming>) -> Result<(), ApiError> {
    let security = app.security();
    let Some(tokens) = &security.tokens else {
        return Ok(());
    };
    let need = super::auth::need(
        req.method(),
        req.uri().path(),
        app.config().api.tokens_for_reads,
    );
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    super::auth::decide(tokens, need, header).map_err(|r| {
        app.stats.auth_refused[r as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The path and reason only: the header may hold a real token.
        tracing::debug!(method = %req.method(), path = req.uri().path(), reason = r.as_str(), "HTTP request refused: {}", r.as_str());
        r.into_error()
    })
}

async fn route(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let path = req.uri().path().to_string();
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match path.as_str() {
        "/health" if get => health(app).await,
        "/api/v1/status" if get => status(app).await,
        "/api/v1/streams" if get => streams(app).await,
        "/api/v1/nats/info" if get => nats_info(app).await,
        "/metrics" if get => super::metrics::metrics(app).await,
        "/api/v1/publish" if req.method() == Method::POST => super::publish::single(app, req).await,
        "/api/v1/publish/batch" if req.method() == Method::POST => {
            super::publish::batch(app, req).await
        }
        "/api/v1/publish" | "/api/v1/publish/batch" => Err(ApiError::method_not_allowed("POST")),
        "/health" | "/api/v1/status" | "/api/v1/streams" | "/api/v1/nats/info" | "/metrics" => {
            Err(ApiError::method_not_allowed("GET, HEAD"))
        }
        p if p.starts_with("/api/v1/nats/") => {
            let name = &p["/api/v1/nats/".len()..];
            super::monitor::passthrough(app, get, name, req.uri().query()).await
        }
        p => match p.strip_prefix("/api/v1/streams/") {
            Some(rest) if rest.split('/').nth(1) == Some("consumers") => {
                super::consume::route(app, req, rest).await
            }
            Some(name) if !name.is_empty() && !name.contains('/') => {
                if get {
                    stream_detail(app, name).await
                } else {
                    Err(ApiError::method_not_allowed("GET, HEAD"))
                }
            }
            _ => Err(ApiError::not_found(format!(
                "no such endpoint: {} {p}",
                req.method()
            ))),
        },
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

// ------------------------------------------------------------- health ----

/// 200 only when nats-server runs, the client is connected, JetStream
/// answers and the streams are reconciled; 503 naming what is wrong.
async fn health(app: &App) -> Result<Resp, ApiError> {
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
        if let Some(full) = crate::probe::store_space_problem(&app.config().data_dir()) {
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

// ------------------------------------------------------------- status ----

/// The RAFT groups of the declared streams that exist.
fn declared_groups(app: &App, infos: &[stream::Info]) -> Vec<crate::cluster::StreamGroup> {
    let declared = app.config().streams();
    infos
        .iter()
        .filter(|i| declared.contains_key(&i.config.name))
        .map(|i| {
            crate::cluster::stream_group(&i.config.name, i.config.num_replicas, i.cluster.as_ref())
        })
        .collect()
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
    crate::cluster::status(
        c.nats.cluster_name.as_deref(),
        c.nats.server_name.as_deref(),
        routez.as_ref(),
        jsz.as_ref(),
        c.nats.jetstream_enabled,
        &declared_groups(app, infos),
    )
}

fn pick(v: &Value, keys: &[&str]) -> Value {
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

fn nats_status(app: &App) -> &'static str {
    if app.supervised {
        app.child.borrow().phase.as_str()
    } else if app.is_connected() {
        "running"
    } else {
        "unreachable"
    }
}

async fn list_streams(app: &App) -> Result<Vec<stream::Info>, ApiError> {
    let nats = app
        .connected_nats()
        .ok_or_else(|| ApiError::unavailable("not connected to nats-server"))?;
    if !app.config().nats.jetstream_enabled {
        return Ok(Vec::new());
    }
    match tokio::time::timeout(Duration::from_secs(5), crate::jetstream::list(&nats.js)).await {
        Ok(Ok(mut v)) => {
            v.sort_by(|a, b| a.config.name.cmp(&b.config.name));
            Ok(v)
        }
        Ok(Err(e)) => Err(ApiError::unavailable(e.to_string())),
        Err(_) => Err(ApiError::unavailable(
            "JetStream did not list its streams within 5 s",
        )),
    }
}

async fn status(app: &App) -> Result<Resp, ApiError> {
    let child = app.child.borrow().clone();
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
    let body = json!({
        "service": SERVICE,
        "timestamp": rfc3339(SystemTime::now()),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "nats_server": {
            "status": nats_status(app),
            "supervised": app.supervised,
            "pid": child.pid,
            "restarts": child.restarts,
            "last_failure": child.last_failure,
            "connected": app.is_connected(),
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
        "message_stats": app.stats.snapshot(),
        "throughput": super::metrics::throughput(app),
        "latency": super::metrics::latency(app),
    });
    Ok(json_response(StatusCode::OK, &body))
}

// ------------------------------------------------------------ streams ----

fn stream_json(i: &stream::Info, declared: bool) -> Value {
    let c = &i.config;
    let s = &i.state;
    json!({
        "name": c.name,
        "subjects": c.subjects,
        "messages": s.messages,
        "bytes": s.bytes,
        "first_seq": s.first_sequence,
        "last_seq": s.last_sequence,
        "consumer_count": s.consumer_count,
        "storage": match c.storage { stream::StorageType::File => "file", stream::StorageType::Memory => "memory" },
        "retention": match c.retention {
            stream::RetentionPolicy::Limits => "limits",
            stream::RetentionPolicy::Interest => "interest",
            stream::RetentionPolicy::WorkQueue => "workqueue",
        },
        "declared": declared,
    })
}

async fn streams(app: &App) -> Result<Resp, ApiError> {
    let declared = app.config().streams();
    let infos = list_streams(app).await?;
    let list: Vec<Value> = infos
        .iter()
        .map(|i| stream_json(i, declared.contains_key(&i.config.name)))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "streams": list })))
}

async fn stream_detail(app: &App, name: &str) -> Result<Resp, ApiError> {
    if subject::check_stream_name(name).is_err() {
        return Err(ApiError::not_found(format!("no stream named {name:?}")));
    }
    let nats = app
        .connected_nats()
        .ok_or_else(|| ApiError::unavailable("not connected to nats-server"))?;
    let info = match tokio::time::timeout(Duration::from_secs(5), nats.js.get_stream(name)).await {
        Err(_) => return Err(ApiError::unavailable("JetStream did not answer within 5 s")),
        Ok(Ok(s)) => s.cached_info().clone(),
        Ok(Err(e)) => {
            use async_nats::jetstream::context::GetStreamErrorKind;
            use async_nats::jetstream::ErrorCode;
            return Err(match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    ApiError::not_found(format!("no stream named {name:?}"))
                }
                _ => ApiError::unavailable(format!("cannot get stream {name}: {e}")),
            });
        }
    };
    let declared = app.config().streams().contains_key(name);
    let mut v = stream_json(&info, declared);
    let c = &info.config;
    v["config"] = json!({
        "max_age_seconds": c.max_age.as_secs(),
        "max_msgs": c.max_messages,
        "max_bytes": c.max_bytes,
        "replicas": c.num_replicas,
        "discard": match c.discard { stream::DiscardPolicy::Old => "old", stream::DiscardPolicy::New => "new" },
        "duplicate_window_seconds": c.duplicate_window.as_secs(),
    });
    v["created"] = json!(info.created.to_string());
    let sync = app.sync.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = format!("{name}: ");
    v["drift"] = json!(sync
        .report
        .drift
        .iter()
        .filter(|d| d.starts_with(&prefix))
        .collect::<Vec<_>>());
    Ok(json_response(StatusCode::OK, &v))
}

// ---------------------------------------------------------- nats info ----

async fn nats_info(app: &App) -> Result<Resp, ApiError> {
    let child = app.child.borrow().clone();
    let n = &app.config().nats;
    let ports = match child.ports {
        Some(p) => json!({"nats": p.nats, "cluster": p.cluster, "http": p.http}),
        None => {
            json!({"nats": n.nats_port, "cluster": app.config().cluster_listen().map(|(_, p)| p), "http": n.http_port})
        }
    };
    let body = json!({
        "status": nats_status(app),
        "pid": child.pid,
        "ports": ports,
        "server_info": server_info(app).await,
        "config_file": app.supervised.then(|| app.config().data_dir().join("nats-server.conf")),
        "restarts": child.restarts,
        "healthy_since": child.healthy_since.map(rfc3339),
    });
    Ok(json_response(StatusCode::OK, &body))
}
