//! GET /api/v1/streams and /api/v1/streams/{name}: the streams nats-server
//! has, whether each is declared, and a declared stream's drift; also the
//! stream listing and RAFT groups the status and health handlers read.

use std::time::Duration;

use async_nats::jetstream::stream;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::error::{json_response, ApiError};
use crate::app::App;
use crate::subject;

type Resp = Response<Full<Bytes>>;

/// The streams nats-server has, by name (none without JetStream); 503
/// when it cannot tell within 5 s.
pub(super) async fn list_streams(app: &App) -> Result<Vec<stream::Info>, ApiError> {
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

/// The RAFT groups of the declared streams that exist.
pub(super) fn declared_groups(
    app: &App,
    infos: &[stream::Info],
) -> Vec<crate::cluster::StreamGroup> {
    app.declared_groups(infos)
}

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

pub async fn streams(app: &App) -> Result<Resp, ApiError> {
    let declared = app.config().streams();
    let infos = list_streams(app).await?;
    let list: Vec<Value> = infos
        .iter()
        .map(|i| stream_json(i, declared.contains_key(&i.config.name)))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "streams": list })))
}

pub async fn stream_detail(app: &App, name: &str) -> Result<Resp, ApiError> {
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
