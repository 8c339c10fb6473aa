//! GET /api/v1/nats/{varz,connz,routez,subsz,jsz,healthz}: nats-server's
//! own monitoring endpoints, passed through from its monitor port (the
//! seed's "Monitoring" section) with the query string, so operators need
//! not reach the monitor port itself (it listens on localhost in the
//! shipped config).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::error::{json_bytes, json_response, ApiError};
use crate::app::App;
use crate::probe;

type Resp = Response<Full<Bytes>>;

/// The endpoints passed through; anything else is 404.
pub const ENDPOINTS: &[&str] = &["varz", "connz", "routez", "subsz", "jsz", "healthz"];

/// connz and subsz of a busy server can be large and slow to build.
const TIMEOUT: Duration = Duration::from_secs(5);

/// GET /api/v1/nats/`name`?`query`: nats-server's status code and JSON
/// body; 503 when its monitor cannot be reached, 404 for other names.
pub async fn passthrough(app: &App, name: &str, query: Option<&str>) -> Result<Resp, ApiError> {
    if !ENDPOINTS.contains(&name) {
        return Err(ApiError::not_found(format!(
            "no such nats-server monitoring endpoint: {name:?}; there are {}",
            ENDPOINTS.join(", ")
        )));
    }
    let monitor = app
        .monitor()
        .ok_or_else(|| unreachable_monitor("no monitor address"))?;
    let path = match query {
        Some(q) if !q.is_empty() => format!("/{name}?{q}"),
        _ => format!("/{name}"),
    };
    let (status, body) = probe::http_get(monitor, &path, TIMEOUT)
        .await
        .map_err(|e| unreachable_monitor(&e))?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() {
        return Ok(json_bytes(status, body.to_vec()));
    }
    // nats-server answers a bad query parameter in plain text: wrap it in
    // our error shape so the API stays JSON.
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let code = if status.is_success() {
        StatusCode::BAD_GATEWAY
    } else {
        status
    };
    Ok(json_response(
        code,
        &serde_json::json!({
            "success": false,
            "error": {"code": "nats_monitor_error", "message": format!("nats-server's /{name} answered {}: {text}", status.as_u16())},
        }),
    ))
}

fn unreachable_monitor(why: &str) -> ApiError {
    ApiError {
        code: "nats_monitor_unavailable",
        ..ApiError::unavailable(format!("nats-server's monitor cannot be reached: {why}"))
    }
}
