//! Shared daemon state read by the HTTP handlers and kept current by the
//! background tasks: the child's status, the NATS client, the stream
//! matcher, counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::jetstream as js_sync;
use crate::natsconf::{self, Credentials};
use crate::probe;
use crate::stats::Stats;
use crate::subject::StreamMatcher;
use crate::supervisor::ChildStatus;

/// Messages one subscription of the daemon's client may buffer.
pub const SUBSCRIPTION_CAPACITY: usize = 4096;

/// The daemon's NATS connection.
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Single HTTP publishes go through this, so concurrent ones reach the
    /// connection together.
    pub coalescer: crate::coalesce::Coalescer,
}

/// Why a NATS round trip got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The connection dropped (or was down) before the answer came.
    Disconnected,
    TimedOut,
}

/// What the last stream sync found.
#[derive(Debug, Clone, Default)]
pub struct SyncState {
    /// Child generation the last successful sync ran against.
    pub generation: u64,
    pub at: Option<SystemTime>,
    pub report: js_sync::Report,
    pub error: Option<String>,
}

pub struct App {
    /// The config in force; replaced by a successful reload.
    config: RwLock<Arc<Config>>,
    pub started_at: SystemTime,
    pub started: Instant,
    /// Child status; in external mode a constant `None`-pid status.
    pub child: watch::Receiver<ChildStatus>,
    pub supervised: bool,
    /// The current client; replaced (not re-pointed) when a reload moves
    /// the server, because a client stuck retrying an address that is gone
    /// does not process commands until it reconnects.
    nats: RwLock<Option<Arc<Nats>>>,
    /// Which client's events count: an old client's late events are ignored.
    client_gen: AtomicU64,
    /// Signalled when the client (re)connects: streams may need recreating.
    pub reconnected: Notify,
    /// Wakes every request waiting on NATS when the connection drops: a
    /// reply can no longer come, so waiting for the timeout would only make
    /// the caller wait.
    pub connection_lost: Notify,
    matcher: RwLock<Arc<StreamMatcher>>,
    pub stats: Stats,
    pub sync: Mutex<SyncState>,
    /// Completed syncs, for tests and status.
    pub syncs: AtomicU64,
    pub credentials: Option<Credentials>,
    /// A sentence to add to systemd's STATUS (a failed reload).
    note: Mutex<Option<String>>,
    /// Set when the daemon stops: open event streams end themselves.
    pub closing: watch::Sender<bool>,
    /// Open GET /api/v1/subscribe streams.
    pub sse_clients: AtomicUsize,
    /// API tokens and TLS config in force; replaced by a reload.
    security: RwLock<Arc<crate::security::Security>>,
    /// Syncs the store for HTTP publishes under `nats.durability: sync`.
    pub durability: crate::durability::GroupCommit,
}

impl App {
    pub fn new(
        config: Arc<Config>,
        child: watch::Receiver<ChildStatus>,
        supervised: bool,
        credentials: Option<Credentials>,
    ) -> Self {
        App {
            started_at: SystemTime::now(),
            started: Instant::now(),
            child,
            supervised,
            nats: RwLock::new(None),
            client_gen: AtomicU64::new(0),
            reconnected: Notify::new(),
            connection_lost: Notify::new(),
            matcher: RwLock::new(Arc::new(StreamMatcher::default())),
            stats: Stats::default(),
            sync: Mutex::new(SyncState::default()),
            syncs: AtomicU64::new(0),
            credentials,
            note: Mutex::new(None),
            closing: watch::channel(false).0,
            sse_clients: AtomicUsize::new(0),
            security: RwLock::new(Arc::default()),
            durability: crate::durability::GroupCommit::start(config.streams_dir()),
            config: RwLock::new(config),
        }
    }

    pub fn note(&self) -> Option<String> {
        self.note.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_note(&self, note: Option<String>) {
        *self.note.lock().unwrap_or_else(|e| e.into_inner()) = note;
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts a reloaded config in force.
    pub fn set_config(&self, c: Arc<Config>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = c;
    }

    pub fn security(&self) -> Arc<crate::security::Security> {
        self.security
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts (re)loaded tokens and TLS config in force: new requests and
    /// connections see them; open TLS connections keep their certificate.
    pub fn set_security(&self, s: crate::security::Security) {
        *self.security.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }

    /// nats-server's monitor, for /varz: our child's, or for an external
    /// server the host of nats_url on http_port.
    pub fn monitor(&self) -> Option<SocketAddr> {
        let c = self.config();
        if self.supervised {
            Some(probe::connect_addr(&c.nats.host, c.nats.http_port))
        } else {
            external_monitor(&c)
        }
    }

    /// Connects a new client to the current URLs (after a reload moved
    /// them); the old one closes when its last user drops it.
    pub async fn repoint_client(self: &Arc<Self>) -> Result<(), String> {
        self.connect().await
    }

    pub fn nats(&self) -> Option<Arc<Nats>> {
        self.nats.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The client, when it is connected now: what a handler about to make
    /// a NATS round trip needs.
    pub fn connected_nats(&self) -> Option<Arc<Nats>> {
        self.nats().filter(|_| self.is_connected())
    }

    /// The client's own view, not the event flag: events arrive a moment
    /// after the state changes.
    pub fn is_connected(&self) -> bool {
        self.nats().is_some_and(|n| {
            n.client.connection_state() == async_nats::connection::State::Connected
        })
    }

    pub fn matcher(&self) -> Arc<StreamMatcher> {
        self.matcher
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

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
        }));
        Ok(())
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

    /// Reconciles declared streams (when enabled) and refreshes the subject
    /// matcher from the streams nats-server really has.
    pub async fn sync_streams(&self) -> Result<(), String> {
        let generation = self.child.borrow().generation;
        let nats = self.nats().ok_or("not connected to NATS")?;
        let c = self.config();
        let work = async {
            if !c.nats.jetstream_enabled {
                Ok(js_sync::Report::default())
            } else if c.auto_create_streams {
                js_sync::reconcile(&nats.js, &c.streams()).await
            } else {
                js_sync::list(&nats.js).await.map(|infos| js_sync::Report {
                    streams: infos
                        .into_iter()
                        .map(|i| (i.config.name, i.config.subjects))
                        .collect(),
                    ..Default::default()
                })
            }
        };
        // A request in flight when the child dies would wait out its whole
        // timeout and hold up the reconciliation the new child needs.
        let result = match self.while_connected(Duration::from_secs(60), work).await {
            Ok(r) => r,
            Err(Lost::Disconnected) => Err(
                "the connection to nats-server dropped during stream reconciliation".to_string(),
            ),
            Err(Lost::TimedOut) => Err("stream reconciliation took longer than 60 s".to_string()),
        };
        if result.is_ok() && self.supervised && c.nats.jetstream_enabled {
            // What reconciliation created must survive a power cut.
            match tokio::task::spawn_blocking(self.durability.metadata_sync()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot sync the streams' metadata: {e}"),
                Err(e) => tracing::warn!(error = %e, "cannot sync the streams' metadata: {e}"),
            }
        }
        let mut st = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(report) => {
                let matcher = StreamMatcher::new(
                    report
                        .streams
                        .iter()
                        .map(|(n, s)| (n.as_str(), s.as_slice())),
                )
                .with_mappings(c.nats.mappings.iter().map(|(src, m)| {
                    (
                        src.as_str(),
                        m.0.iter().map(|d| d.subject.clone()).collect(),
                    )
                }));
                *self.matcher.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(matcher);
                st.generation = generation;
                st.at = Some(SystemTime::now());
                st.report = report;
                st.error = None;
                self.syncs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                st.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Whether streams were synced against the current child.
    pub fn streams_synced(&self) -> bool {
        let st = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        st.at.is_some() && (!self.supervised || st.generation == self.child.borrow().generation)
    }

    /// GET /varz from nats-server's monitor.
    pub async fn varz(&self) -> Option<serde_json::Value> {
        self.monitor_json("/varz").await
    }

    /// GET `path` (e.g. /jsz, /routez) from nats-server's monitor, as JSON.
    pub async fn monitor_json(&self, path: &str) -> Option<serde_json::Value> {
        probe::monitor_json(self.monitor()?, path).await
    }

    /// Whether this node runs JetStream as part of a cluster.
    pub fn clustered_jetstream(&self) -> bool {
        let c = self.config();
        c.cluster_enabled() && c.nats.jetstream_enabled
    }

    /// Why JetStream cannot do cluster work now (no meta leader), from the
    /// monitor's /jsz; None when it can, or when this node is not clustered.
    pub async fn meta_problem(&self) -> Option<String> {
        if !self.clustered_jetstream() {
            return None;
        }
        match self.monitor_json("/jsz").await {
            Some(jsz) => crate::cluster::meta_problem(crate::cluster::meta_from_jsz(&jsz).as_ref()),
            None => Some("nats-server's monitor does not answer /jsz".into()),
        }
    }
}

/// The monitor of an external server: the host of nats_url, on http_port.
fn external_monitor(c: &Config) -> Option<SocketAddr> {
    let rest = c.nats.nats_url.split("://").nth(1)?;
    let hostport = rest.rsplit('@').next()?.trim_end_matches('/');
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) => h.trim_matches(['[', ']']),
        None => hostport,
    };
    use std::net::ToSocketAddrs;
    (host, c.nats.http_port).to_socket_addrs().ok()?.next()
}

/// The daemon's own login to the nats-server it runs: generated at first
/// start and kept (0600) in the state dir, never hard-coded.
pub fn internal_credentials(c: &Config) -> std::io::Result<Option<Credentials>> {
    if !c.auto_start_nats {
        return Ok(None);
    }
    if let Some(shared) = &c.nats.internal_password_file {
        // Validation read it a moment ago; it names the file on error.
        let password =
            crate::config::secrets::read_password_file(shared).map_err(std::io::Error::other)?;
        return Ok(Some(Credentials {
            user: natsconf::INTERNAL_USER.into(),
            password,
        }));
    }
    let path = c.data_dir().join("internal-credentials");
    let password = match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => {
            use std::io::Read;
            let mut raw = [0u8; 24];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
            let p: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(c.data_dir())?;
            crate::runfiles::write_atomic(&path, format!("{p}\n").as_bytes(), 0o600)?;
            p
        }
    };
    Ok(Some(Credentials {
        user: natsconf::INTERNAL_USER.into(),
        password,
    }))
}
