//! The daemon's own NATS client: where it connects, how it reconnects
//! (at once after a child restart), and round trips that give up when the
//! connection drops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use super::App;
use crate::probe;

/// Messages one subscription of the daemon's client may buffer.
pub const SUBSCRIPTION_CAPACITY: usize = 4096;

/// The daemon's NATS connection.
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Single HTTP publishes go through this, so concurrent ones reach the
    /// connection together.
    pub coalescer: crate::coalesce::Coalescer,
    /// Pull consumers an HTTP fetch looked up a moment ago on this
    /// connection's server.
    pub known_pulls: crate::jetstream::KnownPulls,
}

/// Why a NATS round trip got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The connection dropped (or was down) before the answer came.
    Disconnected,
    TimedOut,
}

impl App {
    /// Where the daemon's own client connects.
    pub fn nats_urls(&self) -> Vec<String> {
        let c = self.config();
        let n = &c.nats;
        let scheme = if n.tls.is_some() { "tls" } else { "nats" };
        if self.supervised {
            let own = format!("{scheme}://{}", probe::connect_addr(&n.host, n.nats_port));
            // Its own node first (see connect: the order is kept); the
            // others only where the internal password is the same on
            // every node.
            let others: Vec<String> = match n.internal_password_file {
                Some(_) => n
                    .client_urls
                    .iter()
                    .filter(|u| **u != own)
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            std::iter::once(own).chain(others).collect()
        } else {
            let mut urls = vec![n.nats_url.clone()];
            urls.extend(n.client_urls.iter().filter(|u| **u != n.nats_url).cloned());
            urls
        }
    }

    /// Creates the client. It connects in the background and reconnects
    /// forever with a short delay: after a child restart the new server is
    /// up within a few hundred milliseconds and publishes should resume at
    /// once, not after async-nats' default growing backoff.
    pub async fn connect(self: &Arc<Self>) -> Result<(), String> {
        let app = Arc::downgrade(self);
        let gen = self.client_gen.fetch_add(1, Ordering::SeqCst) + 1;
        // Our own child restarts in a few hundred ms: retry often. A remote
        // server may be down for long: do not hammer it.
        let max_delay_ms = if self.supervised { 100 } else { 1000 };
        let shared_login = self.config().nats.internal_password_file.is_some();
        let mut opts = async_nats::ConnectOptions::new()
            .name("marketprism-broker")
            // The given order: our own nats-server first, always.
            .retain_servers_order()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(10))
            // Messages a subscription may hold before async-nats drops
            // (the default is 65536): bounds what an event stream that
            // falls behind can pin in memory.
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            // async-nats counts the first try as attempt 1: no delay then.
            .reconnect_delay_callback(move |attempt| {
                Duration::from_millis((20 * attempt.saturating_sub(1) as u64).min(max_delay_ms))
            })
            .event_callback(move |event| {
                let app = app.clone();
                async move {
                    let Some(app) = app.upgrade() else { return };
                    if app.client_gen.load(Ordering::SeqCst) != gen {
                        return;
                    }
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to nats-server");
                            app.reconnected.notify_one();
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("disconnected from nats-server");
                            app.connection_lost.notify_waiters();
                        }
                        async_nats::Event::Closed => tracing::debug!("nats client closed"),
                        // Failed reconnect attempts while nats-server
                        // restarts: the supervisor already says why.
                        async_nats::Event::ClientError(e) => {
                            tracing::debug!(error = %e, "nats client error")
                        }
                        // An event stream's subscription buffer was full
                        // (SUBSCRIPTION_CAPACITY): the message is gone.
                        // Counted, not logged one by one.
                        async_nats::Event::SlowConsumer(_) => {
                            app.stats.sse_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        other => tracing::warn!(event = %other, "nats client event: {other}"),
                    }
                }
            });
        if let Some(c) = &self.credentials {
            opts = opts.user_and_password(c.user.clone(), c.password.clone());
        }
        if self.supervised && !shared_login {
            // Other nodes a clustered server advertises do not know this
            // node's generated password: trying them only delays
            // reconnecting to our own restarted child.
            opts = opts.ignore_discovered_servers();
        }
        if let Some(tls) = &self.config().nats.tls {
            opts = opts.require_tls(true);
            if let Some(ca) = &tls.ca_file {
                opts = opts.add_root_certificates(ca.clone());
            }
            if tls.verify {
                // The server demands a client certificate: present its own.
                opts = opts.add_client_certificate(tls.cert_file.clone(), tls.key_file.clone());
            }
        }
        let urls: Vec<async_nats::ServerAddr> = self
            .nats_urls()
            .iter()
            .map(|u| u.parse().map_err(|e| format!("bad NATS URL {u}: {e}")))
            .collect::<Result<_, _>>()?;
        let client = opts
            .connect(urls)
            .await
            .map_err(|e| format!("cannot connect to NATS: {e}"))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(self.config().api.publish_timeout.get());
        let coalescer = crate::coalesce::Coalescer::start(js.clone());
        *self.nats.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Nats {
            client,
            js,
            coalescer,
            known_pulls: Default::default(),
        }));
        Ok(())
    }

    /// Connects a new client to the current URLs (after a reload moved
    /// them); the old one closes when its last user drops it.
    pub async fn repoint_client(self: &Arc<Self>) -> Result<(), String> {
        self.connect().await
    }

    /// Runs `fut` (a NATS round trip) unless the connection drops first or
    /// `timeout` passes.
    pub async fn while_connected<T>(
        &self,
        timeout: Duration,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, Lost> {
        let lost = self.connection_lost.notified();
        tokio::pin!(lost);
        lost.as_mut().enable();
        if !self.is_connected() {
            return Err(Lost::Disconnected);
        }
        tokio::select! {
            r = tokio::time::timeout(timeout, fut) => r.map_err(|_| Lost::TimedOut),
            _ = lost => Err(Lost::Disconnected),
        }
    }

    /// Waits until the client is connected, up to `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_connected() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.is_connected()
    }
}
