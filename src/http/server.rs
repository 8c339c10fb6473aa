//! The hyper 1.x accept loop with graceful shutdown (after
//! hyper-util's server_graceful example), a cap on open connections, and
//! hyper's header read timeout, which also closes idle keep-alive
//! connections (hyper >= 1.6 restarts it after every response).

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

/// Says "connection limit reached" once per burst, not once per
/// connection: a flood of clients would otherwise flood the journal too.
struct LimitLog {
    last: Option<Instant>,
    waits: u64,
}

impl LimitLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn hit(&mut self, cap: usize) {
        self.waits += 1;
        if self.last.is_none_or(|t| t.elapsed() >= Self::EVERY) {
            tracing::warn!(
                max_connections = cap,
                waits = self.waits,
                "HTTP connection limit reached ({cap} open, api.max_connections); new connections wait until one closes ({} time(s) since the last report)",
                self.waits
            );
            self.last = Some(Instant::now());
            self.waits = 0;
        }
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
    let mut limit_log = LimitLog {
        last: None,
        waits: 0,
    };
    loop {
        // Read per connection, so a reloaded value applies at once.
        let cap = app.config().api.max_connections as usize;
        if slots.open.load(Ordering::Acquire) >= cap {
            limit_log.hit(cap);
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
                        tracing::warn!(error = %e, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let slot = Slot::take(&slots);
                let _ = stream.set_nodelay(true);
                // Per connection, so a reloaded value applies to new ones.
                builder.header_read_timeout(app.config().api.header_read_timeout.get());
                let app = app.clone();
                let service = service_fn(move |req| super::routes::handle(app.clone(), req));
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _slot = slot;
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
