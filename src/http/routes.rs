//! Request routing: authorization first, then the route table (`table`)
//! from path and method to a handler.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::{header, Request, Response};

use super::consume::Kind;
use super::error::ApiError;
use super::table::{classify, Route};
use crate::app::App;

/// A response body: a whole one, an event stream, or the results of a
/// streaming ingest.
pub type Body = Either<Full<Bytes>, Either<super::sse::SseBody, super::publish::IngestBody>>;

pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    // Before anything reads the body: a refused client cannot make us
    // buffer (or publish) a byte.
    if let Err(e) = authorize(&app, &req) {
        return Ok(e.into_response().map(Either::Left));
    }
    let path = req.uri().path().to_string();
    let Some((route, params)) = classify(&path) else {
        let e = ApiError::not_found(format!("no such endpoint: {} {path}", req.method()));
        return Ok(e.into_response().map(Either::Left));
    };
    let resp = if route.takes(req.method()) {
        dispatch(&app, route, (params.get(0), params.get(1)), req).await
    } else {
        Err(ApiError::method_not_allowed(route.allow()))
    };
    let resp = resp.unwrap_or_else(|e| e.into_response().map(Either::Left));
    // Debug builds (the tests' daemon) say when a route answers with a
    // status its table entry, and so the OpenAPI document, lacks.
    #[cfg(debug_assertions)]
    if !route.answers(resp.status().as_u16()) {
        tracing::error!(
            route = route.template(),
            status = resp.status().as_u16(),
            "undocumented HTTP status: {} answered {}, which src/http/table.rs does not list",
            route.template(),
            resp.status().as_u16()
        );
    }
    Ok(resp)
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

/// The handler of `route`, with its path parameters `p` (stream, then
/// consumer or endpoint name).
async fn dispatch(
    app: &Arc<App>,
    route: Route,
    p: (&str, &str),
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    use super::{consume, health, metrics, monitor, openapi, publish, replay, status, streams};
    let whole = match route {
        Route::Subscribe => {
            return super::sse::handle(app, &req)
                .await
                .map(|r| r.map(|b| Either::Right(Either::Left(b))))
        }
        Route::PublishStream => {
            return publish::stream(app.clone(), req)
                .await
                .map(|r| r.map(|b| Either::Right(Either::Right(b))))
        }
        Route::Health => health::health(app).await,
        Route::Status => status::status(app).await,
        Route::Streams => streams::streams(app).await,
        Route::NatsInfo => status::nats_info(app).await,
        Route::NatsMonitor => monitor::passthrough(app, p.0, req.uri().query()).await,
        Route::Metrics => metrics::metrics(app).await,
        Route::OpenApi => Ok(openapi::document()),
        Route::Publish => publish::single(app, req).await,
        Route::PublishBatch => publish::batch(app, req).await,
        Route::StreamDetail => streams::stream_detail(app, p.0).await,
        Route::Consumers => consume::list(app, p.0).await,
        Route::Consumer => consume::detail(app, p.0, p.1).await,
        Route::Fetch => consume::fetch(app, req, p.0, p.1).await,
        Route::Ack => consume::acknowledge(app, req, p.0, p.1, Kind::Ack).await,
        Route::Nak => consume::acknowledge(app, req, p.0, p.1, Kind::Nak).await,
        Route::Term => consume::acknowledge(app, req, p.0, p.1, Kind::Term).await,
        Route::Replay => replay::replay(app, p.0, req.uri().query()).await,
        Route::Latest => replay::latest(app, p.0, req.uri().query()).await,
        Route::SubjectLast => replay::subject_last(app, p.0, p.1, req.uri().query()).await,
        Route::Message => replay::message(app, p.0, p.1, req.uri().query()).await,
    };
    whole.map(|r| r.map(Either::Left))
}
