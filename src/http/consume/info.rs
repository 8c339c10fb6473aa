//! Reading consumers' state: GET .../consumers and .../consumers/{name},
//! and the consumer lookup that fetch and ack start from.

use async_nats::jetstream::consumer;
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::ErrorCode;
use futures::stream::TryStreamExt;
use hyper::StatusCode;
use serde_json::{json, Value};

use super::{api_timeout, rfc3339_nanos, Resp};
use crate::app::{App, Nats};
use crate::http::body::connected;
use crate::http::error::{json_response, ApiError};
use crate::subject;

fn no_stream(stream: &str) -> ApiError {
    ApiError::not_found(format!("no stream named {stream:?}"))
}

fn no_consumer(stream: &str, name: &str) -> ApiError {
    ApiError::not_found(format!("stream {stream} has no consumer named {name:?}"))
}

/// 404 for a stream or consumer name that nats-server would never accept
/// (no lookup needed to know it does not exist).
pub(super) fn check_names(stream: &str, name: &str) -> Result<(), ApiError> {
    if subject::check_stream_name(stream).is_err() {
        return Err(no_stream(stream));
    }
    if subject::check_consumer_name(name).is_err() {
        return Err(no_consumer(stream, name));
    }
    Ok(())
}

/// One consumer's info, with 404 for an unknown stream or consumer.
pub(super) async fn consumer_info(
    app: &App,
    nats: &Nats,
    stream: &str,
    name: &str,
) -> Result<consumer::Info, ApiError> {
    check_names(stream, name)?;
    let work = async {
        let handle = nats
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|_| no_stream(stream))?;
        handle
            .consumer_info(name)
            .await
            .map_err(|e| match e.kind() {
                ConsumerInfoErrorKind::StreamNotFound => no_stream(stream),
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::InvalidName => {
                    no_consumer(stream, name)
                }
                _ => ApiError::unavailable(format!("cannot get consumer {name} of {stream}: {e}")),
            })
    };
    let timeout = api_timeout(app);
    match app.while_connected(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::unavailable(format!(
            "JetStream did not answer about consumer {name} of {stream} within {timeout:?}"
        ))),
    }
}

fn seq_json(s: &consumer::SequenceInfo) -> Value {
    json!({
        "consumer_seq": s.consumer_sequence,
        "stream_seq": s.stream_sequence,
        "last_active": s.last_active.map(|t| rfc3339_nanos(t.unix_timestamp_nanos())),
    })
}

/// What GET .../consumers/{name} answers (and each entry of the list).
fn consumer_json(i: &consumer::Info, declared: bool) -> Value {
    let c = &i.config;
    let a = crate::jetstream::actual_consumer_from(c);
    json!({
        "stream": i.stream_name,
        "name": i.name,
        "declared": declared,
        "config": {
            "durable": c.durable_name.is_some(),
            "type": if c.deliver_subject.is_some() { "push" } else { "pull" },
            "deliver_subject": c.deliver_subject,
            "filter_subjects": a.filters,
            "deliver_policy": a.deliver_policy,
            "opt_start_seq": a.opt_start_seq,
            "ack_policy": a.ack_policy,
            "ack_wait_ms": c.ack_wait.as_millis() as u64,
            "max_deliver": c.max_deliver,
            "max_ack_pending": c.max_ack_pending,
        },
        "num_pending": i.num_pending,
        "num_ack_pending": i.num_ack_pending,
        "num_redelivered": i.num_redelivered,
        "num_waiting": i.num_waiting,
        "delivered": seq_json(&i.delivered),
        "ack_floor": seq_json(&i.ack_floor),
        "created": rfc3339_nanos(i.created.unix_timestamp_nanos()),
    })
}

fn is_declared(app: &App, stream: &str, name: &str) -> bool {
    app.config()
        .streams()
        .get(stream)
        .is_some_and(|s| s.consumers.contains_key(name))
}

pub(crate) async fn list(app: &App, stream: &str) -> Result<Resp, ApiError> {
    if subject::check_stream_name(stream).is_err() {
        return Err(no_stream(stream));
    }
    let nats = connected(app)?;
    let work = async {
        let s = nats
            .js
            .get_stream(stream)
            .await
            .map_err(|e| match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    no_stream(stream)
                }
                _ => ApiError::unavailable(format!("cannot get stream {stream}: {e}")),
            })?;
        s.consumers()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot list consumers of {stream}: {e}")))
    };
    let timeout = api_timeout(app);
    let mut infos = match app.while_connected(timeout, work).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ApiError::unavailable(format!(
                "JetStream did not list the consumers of {stream} within {timeout:?}"
            )))
        }
    };
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let list: Vec<Value> = infos
        .iter()
        .map(|i| consumer_json(i, is_declared(app, stream, &i.name)))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"stream": stream, "consumers": list}),
    ))
}

pub(crate) async fn detail(app: &App, stream: &str, name: &str) -> Result<Resp, ApiError> {
    let nats = connected(app)?;
    let info = consumer_info(app, &nats, stream, name).await?;
    Ok(json_response(
        StatusCode::OK,
        &consumer_json(&info, is_declared(app, stream, name)),
    ))
}
