//! Shared daemon state read by the HTTP handlers and kept current by the
//! background tasks: the child's status, the NATS client, the stream
//! matcher, counters. This file holds the state and its accessors; what
//! is done with it lives beside it: the client in `nats.rs`, stream
//! reconciliation in `sync.rs`, the monitor in `monitor.rs`, the alarm
//! checks in `alarms.rs`, the daemon's login in `credentials.rs`, the
//! meta group check in `metaheal.rs`, the event streams' shared
//! subscriptions in `topics.rs`.

mod alarms;
mod credentials;
mod facts;
mod metaheal;
mod monitor;
mod nats;
mod sync;
mod topics;

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::natsconf::Credentials;
use crate::routing::StreamMatcher;
use crate::stats::Stats;
use crate::supervisor::ChildStatus;

pub use alarms::AlarmBoard;
pub use credentials::internal_credentials;
pub use metaheal::MetaHealView;
pub use nats::{
    server_read_all, Lost, Nats, Resumed, EVENTS_CAPACITY, PULL_CHUNK, SUBSCRIPTION_CAPACITY,
};
pub use sync::SyncState;
pub use topics::{Joins, Lane, Ticket, Topics};

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
    /// The subjects they follow: one subscription and fan-out each.
    pub sse_topics: Topics<Lane>,
    /// API tokens and TLS config in force; replaced by a reload.
    security: RwLock<Arc<crate::security::Security>>,
    /// Syncs the store for HTTP publishes under `nats.durability: sync`.
    pub durability: crate::durability::GroupCommit,
    /// The silence and backlog alarms the last check found.
    alarms: Mutex<AlarmBoard>,
    /// Asks the monitor to check the alarms now (a reload changed them).
    pub check_alarms_now: Notify,
    /// The meta group check's last finding and the self-heal's restarts.
    meta_heal: Mutex<MetaHealView>,
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
            sse_topics: Topics::default(),
            security: RwLock::new(Arc::default()),
            durability: crate::durability::GroupCommit::start(config.streams_dir()),
            alarms: Mutex::new(AlarmBoard::default()),
            check_alarms_now: Notify::new(),
            meta_heal: Mutex::new(MetaHealView::default()),
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

    /// Whether this node runs JetStream as part of a cluster.
    pub fn clustered_jetstream(&self) -> bool {
        let c = self.config();
        c.cluster_enabled() && c.nats.jetstream_enabled
    }
}
