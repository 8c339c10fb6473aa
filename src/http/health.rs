//! GET /health: 200 when the daemon can take publishes, 503 naming what
//! is wrong, with the facts it needs beyond [`App::facts`]: the ones
//! that take a round trip (JetStream, the cluster, the disk).

use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use serde_json::{json, Value};

use super::error::{json_response, ApiError};
use super::status::{pick, rfc3339, SERVICE};
use super::streams::{declared_groups, list_streams};
use crate::app::{App, Lost};
use crate::health::{self, Facts, JetStream, Reconciliation, SyncFailure, JETSTREAM_PROBE_TIMEOUT};

type Resp = Response<Full<Bytes>>;

/// Every fact /health judges: [`App::facts`], plus the store's free space, a
/// recent failed sync, JetStream's answer, the reconciliation's leftovers
/// and the cluster's state (each asked only where it applies).
pub async fn probed_facts(app: &App) -> Facts {
    let mut f = app.facts();
    let c = app.config();
    if app.supervised && c.nats.jetstream_enabled {
        f.store_space = crate::probe::store_space_problem(&c.data_dir());
    }
    f.sync_failure = app.durability.recent_failure().map(|x| SyncFailure {
        ago: SystemTime::now().duration_since(x.at).unwrap_or_default(),
        error: x.error,
    });
    if c.nats.jetstream_enabled && f.connected {
        f.jetstream = Some(ask_jetstream(app).await);
        if c.auto_create_streams {
            f.reconciliation = Some(reconciliation(app));
        }
    }
    if app.clustered_jetstream() {
        f.local_health = app.local_health().await;
        f.server_name = c.nats.server_name.clone();
        f.meta_problem = app.meta_problem().await;
        if f.meta_problem.is_none() && f.connected {
            f.stream_groups = Some(
                list_streams(app)
                    .await
                    .map(|infos| declared_groups(app, &infos))
                    .map_err(|e| e.message),
            );
            f.local_last_seqs = app.local_last_seqs().await;
        }
    }
    f
}

/// A raw $JS.API.INFO request: the answer's shape differs across
/// nats-server versions, and only "does JetStream answer" matters.
async fn ask_jetstream(app: &App) -> JetStream {
    let Some(nats) = app.connected_nats() else {
        return JetStream::Dropped;
    };
    let info = nats.client.request("$JS.API.INFO", Bytes::new());
    match app.while_connected(JETSTREAM_PROBE_TIMEOUT, info).await {
        Ok(Ok(msg)) => match serde_json::from_slice::<Value>(&msg.payload) {
            Ok(v) => JetStream::Answered(v),
            Err(e) => JetStream::Unparsable(e.to_string()),
        },
        Ok(Err(e)) => JetStream::Failed(e.to_string()),
        Err(Lost::TimedOut) => JetStream::TimedOut,
        Err(Lost::Disconnected) => JetStream::Dropped,
    }
}

fn reconciliation(app: &App) -> Reconciliation {
    let synced = app.streams_synced();
    let sync = app.sync.lock().unwrap_or_else(|e| e.into_inner());
    Reconciliation {
        synced,
        missing_streams: sync.report.missing.clone(),
        missing_consumers: sync.report.missing_consumers.clone(),
        errors: sync.report.errors.clone(),
    }
}

/// 200 only when nats-server runs, the client is connected, JetStream
/// answers, the streams are reconciled and (in a cluster) everything is
/// current on this node; 503 naming what is wrong (`unhealthy`) or what is
/// still catching up and how far behind (`catching_up`). Silence and
/// backlog alarms are `warnings` (200), or problems (503) when declared
/// with `health_fails_on_alarm`.
pub async fn health(app: &App) -> Result<Resp, ApiError> {
    let f = probed_facts(app).await;
    let problems = health::problems(&f);
    let lagging = health::catching_up(&f);
    let verdict = health::verdict(&problems, &lagging);
    let healthy = verdict == health::Verdict::Healthy;
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let jetstream = health::jetstream_info(&f).map_or(Value::Null, |v| {
        pick(v, &["streams", "consumers", "memory", "storage"])
    });
    let body = json!({
        "status": if f.child.phase == crate::supervisor::Phase::Draining {
            // Lame duck before a stop or restart: load balancers move away.
            "draining"
        } else {
            verdict.as_str()
        },
        "service": SERVICE,
        "timestamp": rfc3339(SystemTime::now()),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "nats_server": health::nats_server(&f),
        "pid": f.child.pid,
        "connected": f.connected,
        "jetstream": jetstream,
        "problems": problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "warnings": health::warnings(&f),
        "catching_up": lagging,
        "consumers_not_current": health::consumers_not_current(&f),
    });
    let mut resp = json_response(code, &body);
    if !healthy {
        resp.headers_mut().insert(header::RETRY_AFTER, 1.into());
    }
    Ok(resp)
}
