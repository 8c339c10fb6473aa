//! The hyper 1.x accept loop with graceful shutdown (after
//! hyper-util's server_graceful example).

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;

/// Serves until `shutdown` turns true, then lets in-flight requests finish
/// for up to `drain`.
pub async fn serve(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // Per connection, so a reloaded value applies to new ones.
                builder.header_read_timeout(app.config().api.header_read_timeout.get());
                let app = app.clone();
                let service = service_fn(move |req| super::routes::handle(app.clone(), req));
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                });
            }
            _ = crate::flag_set(&mut shutdown) => break,
        }
    }
    drop(listener);
    let drain = app.config().api.drain_timeout.get();
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("http connections drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(?drain, "http connections still open after the drain timeout ({drain:?}); closing them"),
    }
}
