//! The daemon's own NATS client: where it connects, how it reconnects
//! (at once after a child restart), and round trips that give up when the
//! connection drops; beside it the event streams' own connection.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use super::App;
use crate::probe;

/// Messages one subscription of the daemon's client (the inbox of an
/// HTTP fetch, ack or replay) may buffer before async-nats drops.
pub const SUBSCRIPTION_CAPACITY: usize = 4096;

/// The most messages one pull of the daemon asks for (a fetch or a replay
/// page of more pulls again once the previous pull came in full): the
/// messages of one pull, and its status, always fit the reply
/// subscription's buffer, which async-nats would otherwise overflow
/// silently, leaving what it dropped unseen.
pub const PULL_CHUNK: usize = SUBSCRIPTION_CAPACITY / 2;
const _: () = assert!(
    PULL_CHUNK < SUBSCRIPTION_CAPACITY,
    "a pull's status fits too"
);

/// Messages one event-stream subject's subscription may buffer before the
/// fan-out (`http::sse::topic`) takes them: async-nats' default. async-nats
/// drops past it without telling whom (an `Event::SlowConsumer` on a
/// bounded channel at best), so it is sized for bursts the fan-out has not
/// taken yet, not as the memory bound: the fan-out takes whatever is
/// waiting each time it runs, skips (counting and announcing them to every
/// client) all but the newest `topic::SHED_AFTER` when it is that far
/// behind, and bounds each client to `api.sse_buffer`. The buffer itself
/// costs nothing while empty (tokio allocates its slots 32 at a time).
pub const EVENTS_CAPACITY: usize = 65_536;

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
    /// Which of the daemon's clients this is (`App::connect` counts them).
    pub gen: u64,
    /// The event streams' connection, made on the first GET
    /// /api/v1/subscribe: their subscriptions are not the main client's,
    /// so a burst they cannot take makes async-nats report slow consumers
    /// on this connection's event channel, never crowding the main one's
    /// Disconnected and Connected events out of its 128 slots.
    events: tokio::sync::OnceCell<async_nats::Client>,
    /// How to make it: the main client's servers, login, TLS and
    /// reconnect settings.
    events_opts: (async_nats::ConnectOptions, Vec<async_nats::ServerAddr>),
    /// Each time the event streams' connection came back after it was
    /// down: the fan-outs tell their clients what they may have missed.
    pub events_resumed: Arc<tokio::sync::watch::Sender<Resumed>>,
    /// Since when it is down (None while it is up).
    events_down_since: Arc<Mutex<Option<Instant>>>,
}

/// The event streams' connection came back: how many times so far, and
/// how long it was down the last time. Core NATS keeps nothing for a
/// subscription that is not there: what was published on its subjects
/// meanwhile was not delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resumed {
    pub count: u64,
    pub down_for: Duration,
}

/// Waits until nats-server has read everything `client` sent before (a
/// SUB taken up, messages received): it reads a connection's protocol in
/// order, so the "no responders" answer to a request nobody listens for
/// comes after. async-nats' `flush()` only hands the bytes to the socket.
pub async fn server_read_all(client: &async_nats::Client) -> Result<(), String> {
    match client
        .request(client.new_inbox(), bytes::Bytes::new())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Err(e) => Err(e.to_string()),
    }
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

    /// The settings both of the daemon's connections share. They connect
    /// in the background and reconnect forever with a short delay: after
    /// a child restart the new server is up within a few hundred
    /// milliseconds and publishes should resume at once, not after
    /// async-nats' default growing backoff.
    fn connect_options(
        &self,
    ) -> Result<(async_nats::ConnectOptions, Vec<async_nats::ServerAddr>), String> {
        // Our own child restarts in a few hundred ms: retry often. A remote
        // server may be down for long: do not hammer it.
        let max_delay_ms = if self.supervised { 100 } else { 1000 };
        let shared_login = self.config().nats.internal_password_file.is_some();
        let mut opts = async_nats::ConnectOptions::new()
            // The given order: our own nats-server first, always.
            .retain_servers_order()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(10))
            // async-nats counts the first try as attempt 1: no delay then.
            .reconnect_delay_callback(move |attempt| {
                Duration::from_millis((20 * attempt.saturating_sub(1) as u64).min(max_delay_ms))
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
        Ok((opts, urls))
    }

    /// Creates the client (see `connect_options`). A client that replaces
    /// another ends the event streams' topics: they read the old client's
    /// subscriptions, and their clients are told to reconnect.
    pub async fn connect(self: &Arc<Self>) -> Result<(), String> {
        let app = Arc::downgrade(self);
        let gen = self.client_gen.fetch_add(1, Ordering::SeqCst) + 1;
        let (base, urls) = self.connect_options()?;
        let opts = base
            .clone()
            .name("marketprism-broker")
            // Messages a subscription may hold before async-nats drops
            // (the default is 65536): an HTTP fetch, ack or replay
            // takes at most a batch.
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
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
                        // A fetch's, ack's or replay's inbox was full
                        // (SUBSCRIPTION_CAPACITY); event streams have a
                        // connection of their own.
                        async_nats::Event::SlowConsumer(sid) => {
                            tracing::debug!(sid, "a subscription of the daemon's client was full: async-nats dropped a message")
                        }
                        other => tracing::warn!(event = %other, "nats client event: {other}"),
                    }
                }
            });
        let client = opts
            .connect(urls.clone())
            .await
            .map_err(|e| format!("cannot connect to NATS: {e}"))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(self.config().api.publish_timeout.get());
        let coalescer = crate::coalesce::Coalescer::start(js.clone());
        let old = self
            .nats
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(Arc::new(Nats {
                client,
                js,
                coalescer,
                known_pulls: Default::default(),
                gen,
                events: tokio::sync::OnceCell::new(),
                events_opts: (base, urls),
                events_resumed: Arc::new(tokio::sync::watch::channel(Resumed::default()).0),
                events_down_since: Arc::default(),
            }));
        if old.is_some() {
            self.sse_topics.retire_all();
        }
        Ok(())
    }

    /// The event streams' connection of `nats`, made on first use with
    /// the same settings. Its events only log: the main client's say
    /// whether the daemon is connected. A message async-nats drops from a
    /// full subscription here (the fan-out fell `EVENTS_CAPACITY` behind
    /// on one subject, which its shedding is there to prevent) cannot be
    /// told to the clients of that subject: it is counted in `sse_lost`
    /// and logged at the 1st, 2nd, 4th, 8th... time.
    pub async fn events_client(
        self: &Arc<Self>,
        nats: &Nats,
    ) -> Result<async_nats::Client, String> {
        let app = Arc::downgrade(self);
        let resumed = nats.events_resumed.clone();
        let down_since = nats.events_down_since.clone();
        nats.events
            .get_or_try_init(|| async {
                let (opts, urls) = nats.events_opts.clone();
                opts.name("marketprism-broker-events")
                    .subscription_capacity(EVENTS_CAPACITY)
                    .event_callback(move |event| {
                        let app = app.clone();
                        let resumed = resumed.clone();
                        let down_since = down_since.clone();
                        async move {
                            let Some(app) = app.upgrade() else { return };
                            match event {
                                async_nats::Event::Disconnected => {
                                    let mut since = down_since.lock().unwrap_or_else(|e| e.into_inner());
                                    since.get_or_insert_with(Instant::now);
                                    tracing::debug!("event streams' nats client disconnected");
                                }
                                async_nats::Event::Connected => {
                                    let since = down_since.lock().unwrap_or_else(|e| e.into_inner()).take();
                                    if let Some(since) = since {
                                        let down_for = since.elapsed();
                                        tracing::info!(down_ms = down_for.as_millis() as u64, "event streams reconnected; their clients are told what they may have missed");
                                        resumed.send_modify(|r| {
                                            r.count += 1;
                                            r.down_for = down_for;
                                        });
                                    }
                                }
                                async_nats::Event::SlowConsumer(_) => {
                                    let n = app.stats.sse_lost.fetch_add(1, Ordering::Relaxed) + 1;
                                    if n.is_power_of_two() {
                                        tracing::warn!(lost = n, "event streams lost messages before the fan-out took them (it fell {EVENTS_CAPACITY} messages behind on a subject); their clients were not told");
                                    }
                                }
                                other => tracing::debug!(event = %other, "event streams' nats client: {other}"),
                            }
                        }
                    })
                    .connect(urls)
                    .await
                    .map_err(|e| format!("cannot connect to NATS for event streams: {e}"))
            })
            .await
            .cloned()
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
