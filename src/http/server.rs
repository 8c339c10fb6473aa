//! The hyper 1.x accept loop with graceful shutdown (after
//! hyper-util's server_graceful example), a cap on open connections, and
//! hyper's header read timeout, which also closes idle keep-alive
//! connections: hyper (1.12 in Cargo.lock; hyperium/hyper#3828) restarts it
//! when a connection goes idle after a response. hyper has no separate
//! idle timeout; tests/hostile.rs checks this one holds.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::error::ApiError;
use super::slots::{Eviction, InRequest, Slot, Slots, Tracked};
use crate::app::App;

/// Lets a warning out at most once per `every`, counting what it held back:
/// a flood of clients (or of EMFILE) would otherwise flood the journal too.
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            held: 0,
        }
    }

    /// Some(times it happened since the last report) when a report is due.
    fn due(&mut self) -> Option<u64> {
        self.held += 1;
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.held))
    }
}

/// Serves until `shutdown` turns true, then lets in-flight requests finish
/// for up to `drain`.
///
/// At `api.max_connections` open connections a new client takes the slot
/// of the oldest connection that is not in a request (idle, or still
/// sending its request's head), which is closed: slow or idle clients
/// cannot keep a /health probe out. When every connection is in a request,
/// the loop stops accepting (as nginx and Go's LimitListener do): new
/// clients wait in the kernel's listen backlog and are served as soon as a
/// slot frees. A client holding idle connections also loses them after
/// `api.header_read_timeout`.
pub async fn serve(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    let slots = Arc::new(Slots::default());
    let mut at_limit = Throttle::new(Duration::from_secs(10));
    let mut accept_failed = Throttle::new(Duration::from_secs(10));
    'accept: loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    if let Some(n) = accept_failed.due() {
                        tracing::warn!(error = %e, times = n, "accept failed: {e} ({n} time(s) since the last report)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::flag_set(&mut shutdown) => break,
        };
        // Read per connection, so a reloaded value applies at once.
        let cap = app.config().api.max_connections as usize;
        if slots.open() >= cap {
            let mut eviction = slots.evict(Instant::now());
            if let Some(n) = at_limit.due() {
                let then = if eviction == Eviction::Evicted {
                    "the connection idle the longest was closed to make room"
                } else {
                    "new ones wait until one closes or has been idle for a moment"
                };
                tracing::warn!(
                    max_connections = cap,
                    times = n,
                    "HTTP connection limit reached ({cap} open, api.max_connections); {then} ({n} time(s) since the last report)"
                );
            }
            // Every connection is in a request, or only just idle: wait
            // until one closes or can be evicted.
            while eviction != Eviction::Evicted && slots.open() >= cap {
                let due = match eviction {
                    Eviction::NotBefore(at) => tokio::time::Instant::from_std(at),
                    _ => tokio::time::Instant::now() + Duration::from_secs(3600),
                };
                tokio::select! {
                    _ = slots.freed() => {}
                    _ = tokio::time::sleep_until(due) => {}
                    _ = crate::flag_set(&mut shutdown) => break 'accept,
                }
                if slots.open() >= cap {
                    eviction = slots.evict(Instant::now());
                }
            }
            if eviction == Eviction::Evicted {
                app.stats.http_evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let slot = Slot::take(&slots);
        let _ = stream.set_nodelay(true);
        // Per connection, so a reloaded value (or certificate) applies to
        // new ones while open ones keep theirs.
        let timeout = app.config().api.header_read_timeout.get();
        builder.header_read_timeout(timeout);
        let tls = app.security().tls.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let app = app.clone();
        // The TLS handshake runs here, in the connection's task: a slow (or
        // silent) client must not hold up accepting, and gets
        // header_read_timeout for it as for its headers.
        tokio::spawn(async move {
            let conn = slot.conn.clone();
            let service = service_fn(move |req| {
                let app = app.clone();
                let request = InRequest::begin(&conn);
                async move {
                    let Some(request) = request else {
                        // Evicted just before this request's head was
                        // complete: the connection is closing.
                        let e = ApiError::unavailable("this connection was closed to make room for others; send the request again");
                        return Ok::<_, Infallible>(
                            e.into_response()
                                .map(|b| Tracked::new(http_body_util::Either::Left(b), None)),
                        );
                    };
                    let resp = super::routes::handle(app, req).await?;
                    Ok(resp.map(|b| Tracked::new(b, Some(request))))
                }
            });
            let serve = async {
                match tls {
                    None => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                    Some(config) => {
                        let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                        let stream = match tokio::time::timeout(timeout, accept).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed: {e}");
                                return Ok(());
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake not done within api.header_read_timeout ({timeout:?})");
                                return Ok(());
                            }
                        };
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                }
            };
            // Dropping the connection closes it.
            let ended = tokio::select! {
                ended = serve => ended,
                _ = slot.conn.evicted.notified() => {
                    tracing::debug!("http connection closed to make room under api.max_connections");
                    Ok(())
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let drain = app.config().api.drain_timeout.get();
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("http connections drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(?drain, "http connections still open after the drain timeout ({drain:?}); closing them"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_reports_once_per_period_with_what_it_held_back() {
        let mut t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.due(), Some(1));
        assert_eq!((t.due(), t.due()), (None, None));
        let mut t = Throttle::new(Duration::ZERO);
        assert_eq!((t.due(), t.due()), (Some(1), Some(1)));
        let mut t = Throttle::new(Duration::from_secs(3600));
        t.due();
        t.due();
        t.due();
        t.last = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(t.due(), Some(3), "two held back plus this one");
    }
}
