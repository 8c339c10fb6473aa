//! The hyper 1.x accept loop with graceful shutdown (after
//! hyper-util's server_graceful example), a cap on open connections, and
//! hyper's header read timeout, which also closes idle keep-alive
//! connections: hyper (1.12 in Cargo.lock; hyperium/hyper#3828) restarts it
//! when a connection goes idle after a response. hyper has no separate
//! idle timeout; tests/hostile.rs checks this one holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::app::App;

/// Open connections, and a wake-up for the accept loop when one closes.
#[derive(Default)]
struct Slots {
    open: AtomicUsize,
    freed: Notify,
}

/// One open connection's share of `Slots`; dropping it frees the slot.
struct Slot(Arc<Slots>);

impl Slot {
    fn take(slots: &Arc<Slots>) -> Slot {
        slots.open.fetch_add(1, Ordering::AcqRel);
        Slot(slots.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        // Only the accept loop waits; with nobody waiting the permit is
        // stored, so a slot freed between its check and its wait is not lost.
        self.0.freed.notify_one();
    }
}

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
/// At `api.max_connections` open connections the loop stops accepting (as
/// nginx and Go's LimitListener do): new clients wait in the kernel's listen
/// backlog and are served as soon as a slot frees, rather than being cut
/// off, and a client holding idle connections loses them after
/// `api.header_read_timeout`.
pub async fn serve(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    let slots = Arc::new(Slots::default());
    let mut at_limit = Throttle::new(Duration::from_secs(10));
    let mut accept_failed = Throttle::new(Duration::from_secs(10));
    loop {
        // Read per connection, so a reloaded value applies at once.
        let cap = app.config().api.max_connections as usize;
        if slots.open.load(Ordering::Acquire) >= cap {
            if let Some(n) = at_limit.due() {
                tracing::warn!(
                    max_connections = cap,
                    times = n,
                    "HTTP connection limit reached ({cap} open, api.max_connections); new connections wait until one closes ({n} time(s) since the last report)"
                );
            }
            tokio::select! {
                _ = slots.freed.notified() => continue,
                _ = crate::flag_set(&mut shutdown) => break,
            }
        }
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        if let Some(n) = accept_failed.due() {
                            tracing::warn!(error = %e, times = n, "accept failed: {e} ({n} time(s) since the last report)");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let slot = Slot::take(&slots);
                let _ = stream.set_nodelay(true);
                // Per connection, so a reloaded value (or certificate)
                // applies to new ones while open ones keep theirs.
                let timeout = app.config().api.header_read_timeout.get();
                builder.header_read_timeout(timeout);
                let tls = app.security().tls.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let app = app.clone();
                // The TLS handshake runs here, in the connection's task: a
                // slow (or silent) client must not hold up accepting, and
                // gets header_read_timeout for it as for its headers.
                tokio::spawn(async move {
                    let _slot = slot;
                    let service = service_fn(move |req| super::routes::handle(app.clone(), req));
                    let ended = match tls {
                        None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await,
                        Some(config) => {
                            let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                            let stream = match tokio::time::timeout(timeout, accept).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed: {e}");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!("TLS handshake not done within api.header_read_timeout ({timeout:?})");
                                    return;
                                }
                            };
                            watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await
                        }
                    };
                    if let Err(e) = ended {
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
