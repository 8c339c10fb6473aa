//! Request routing: authorization first, then each path and method to its
//! handler.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response};

use super::error::ApiError;
use crate::app::App;

type Resp = Response<Full<Bytes>>;

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
        "/health" if get => super::health::health(app).await,
        "/api/v1/status" if get => super::status::status(app).await,
        "/api/v1/streams" if get => super::streams::streams(app).await,
        "/api/v1/nats/info" if get => super::status::nats_info(app).await,
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
            Some(rest)
                if matches!(
                    rest.split('/').nth(1),
                    Some("replay" | "latest" | "subjects" | "messages")
                ) =>
            {
                super::replay::route(app, req, rest).await
            }
            Some(name) if !name.is_empty() && !name.contains('/') => {
                if get {
                    super::streams::stream_detail(app, name).await
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
