//! The config schema: the seed's keys, verbatim, with the seed's defaults.
//!
//! Every struct denies unknown keys (a typo must not silently become a
//! default) and takes its defaults from its `Default` impl, so serde and
//! code that builds a config by hand agree on them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::units::{Dur, Size};

/// The whole daemon configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP API port.
    pub port: u16,
    /// HTTP API bind address. Loopback by default: the API can publish.
    pub host: String,
    /// Supervise a nats-server child (true) or use an external one (false).
    pub auto_start_nats: bool,
    /// Create and reconcile the declared streams.
    pub auto_create_streams: bool,
    pub nats: NatsConfig,
    pub supervisor: SupervisorConfig,
    pub api: ApiConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 8085,
            host: "127.0.0.1".into(),
            auto_start_nats: true,
            auto_create_streams: true,
            nats: NatsConfig::default(),
            supervisor: SupervisorConfig::default(),
            api: ApiConfig::default(),
        }
    }
}

/// The `nats:` section: the nats-server that is run (or connected to).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub nats_port: u16,
    /// Cluster port. Only listened on when `cluster_routes` are given: a
    /// cluster without routes cannot run JetStream.
    pub cluster_port: Option<u16>,
    /// nats-server's monitoring port (/healthz, /varz): how the daemon probes it.
    pub http_port: u16,
    /// Client (and monitor) bind address.
    pub host: String,
    pub jetstream_enabled: bool,
    pub jetstream_max_memory: Size,
    pub jetstream_max_storage: Size,
    pub jetstream_max_streams: i64,
    pub jetstream_max_consumers: i64,
    /// Where the daemon's client connects when `auto_start_nats` is false.
    pub nats_url: String,
    /// State: JetStream store and the generated nats-server.conf. Default:
    /// $STATE_DIRECTORY when systemd sets it, else `data/nats`.
    pub data_dir: Option<PathBuf>,
    /// nats-server binary. Default: the first on PATH, else /usr/sbin/nats-server.
    pub server_bin: Option<PathBuf>,
    /// Default: the host name.
    pub server_name: Option<String>,
    pub max_connections: u32,
    pub max_subscriptions: u32,
    pub max_payload: Size,
    pub write_deadline: Dur,
    pub ping_interval: Dur,
    pub max_pings_out: u32,
    pub streams: BTreeMap<String, StreamConfig>,
    pub cluster_name: Option<String>,
    pub cluster_listen: Option<String>,
    pub cluster_routes: Vec<String>,
    pub client_urls: Vec<String>,
    /// Lame duck (clustered nodes only): how long nats-server waits, once
    /// told to stop, before it starts closing its clients (they got `ldm`
    /// in INFO and may move to the other nodes meanwhile).
    pub lame_duck_grace_period: Dur,
    /// Lame duck: the whole time over which nats-server closes its
    /// clients, grace period included (at most 1 s between two clients,
    /// so a node with few clients exits soon after the grace period).
    /// nats-server refuses less than 30 s.
    pub lame_duck_duration: Dur,
    /// The daemon's own NATS password, from a file holding the same secret
    /// on every node of a cluster (absolute, or a LoadCredential= name), so
    /// its client may fail over to the other nodes in `client_urls`.
    /// Default: a random password generated per node into the state dir,
    /// good for its own nats-server only.
    pub internal_password_file: Option<PathBuf>,
    pub users: Vec<UserConfig>,
    pub tls: Option<TlsConfig>,
    /// TLS on the cluster routes (same keys as `tls`; `verify` makes nodes
    /// present certificates to each other).
    pub cluster_tls: Option<TlsConfig>,
    /// Subject mappings: source pattern -> destination(s), rendered into
    /// the account nats-server runs clients in.
    pub mappings: BTreeMap<String, MappingConfig>,
    /// What an HTTP publish's answer waits for: `sync` (the JetStream ack
    /// and a sync of the stream's files to disk, shared by concurrent
    /// publishes) or `lazy` (the ack only). Reloadable.
    pub durability: Durability,
    /// nats-server's own store sync (`jetstream { sync_interval }`, 2.10
    /// and later): how old the newest unsynced write of a native client
    /// may get. A duration or `always`. Absent: [`DEFAULT_SYNC_INTERVAL`]
    /// where the server has the key (2.9.x has not: it syncs every 2 min).
    pub sync_interval: Option<SyncInterval>,
}

/// `nats.lame_duck_grace_period` by default: the NATS helm chart's.
pub const DEFAULT_LAME_DUCK_GRACE_PERIOD: Dur = Dur::secs(10);
/// `nats.lame_duck_duration` by default: the NATS helm chart's.
pub const DEFAULT_LAME_DUCK_DURATION: Dur = Dur::secs(30);
/// The shortest `lame_duck_duration` nats-server accepts (2.9 to 2.14:
/// "minimum is 30 seconds").
pub const MIN_LAME_DUCK_DURATION: Dur = Dur::secs(30);

/// nats-server's store sync interval rendered when none is configured:
/// short enough that a power cut loses at most this much of what native
/// clients were acknowledged, long enough to cost little (one fsync per
/// written block per interval).
pub const DEFAULT_SYNC_INTERVAL: Dur = Dur::secs(1);

/// `nats.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Answer after the ack and a sync that covers it (group commit).
    #[default]
    Sync,
    /// Answer after the ack: the message may be only in the page cache.
    Lazy,
}

/// `nats.sync_interval`: a duration or `always`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncInterval {
    /// nats-server syncs every message before it acks (no group commit).
    Always,
    Every(Dur),
}

impl SyncInterval {
    /// The value as nats-server's config takes it.
    pub fn render(self) -> String {
        match self {
            SyncInterval::Always => "always".into(),
            SyncInterval::Every(d) => d.to_go(),
        }
    }
}

impl fmt::Display for SyncInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl<'de> Deserialize<'de> for SyncInterval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SyncInterval;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"always\" or a duration such as \"1s\" or \"100ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SyncInterval, E> {
                if v.trim().eq_ignore_ascii_case("always") {
                    return Ok(SyncInterval::Always);
                }
                let d = Dur::parse(v).map_err(|e| E::custom(format!("{e}, or \"always\"")))?;
                SyncInterval::every(d).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SyncInterval, E> {
                let d: Dur = de::Deserialize::deserialize(de::value::U64Deserializer::<E>::new(v))?;
                SyncInterval::every(d).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SyncInterval, E> {
                let d: Dur = de::Deserialize::deserialize(de::value::I64Deserializer::<E>::new(v))?;
                SyncInterval::every(d).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<SyncInterval, E> {
                let d: Dur = de::Deserialize::deserialize(de::value::F64Deserializer::<E>::new(v))?;
                SyncInterval::every(d).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl SyncInterval {
    fn every(d: Dur) -> Result<SyncInterval, String> {
        if d.get().is_zero() {
            return Err("a sync_interval of 0 would never sync: use \"always\" or a positive duration such as \"1s\"".into());
        }
        Ok(SyncInterval::Every(d))
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            nats_port: 4222,
            cluster_port: Some(6222),
            http_port: 8222,
            host: "127.0.0.1".into(),
            jetstream_enabled: true,
            jetstream_max_memory: Size(1 << 30),
            jetstream_max_storage: Size(10 << 30),
            jetstream_max_streams: 100,
            jetstream_max_consumers: 1000,
            nats_url: "nats://localhost:4222".into(),
            data_dir: None,
            server_bin: None,
            server_name: None,
            max_connections: 1000,
            max_subscriptions: 1000,
            max_payload: Size(1 << 20),
            write_deadline: Dur::secs(2),
            ping_interval: Dur::secs(120),
            max_pings_out: 2,
            streams: BTreeMap::new(),
            cluster_name: None,
            cluster_listen: None,
            cluster_routes: Vec::new(),
            client_urls: Vec::new(),
            lame_duck_grace_period: DEFAULT_LAME_DUCK_GRACE_PERIOD,
            lame_duck_duration: DEFAULT_LAME_DUCK_DURATION,
            internal_password_file: None,
            users: Vec::new(),
            tls: None,
            cluster_tls: None,
            mappings: BTreeMap::new(),
            durability: Durability::Sync,
            sync_interval: None,
        }
    }
}

/// One declared JetStream stream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub subjects: Vec<String>,
    #[serde(default)]
    pub retention: Retention,
    /// Seconds (or a duration string); 0 or absent: no age limit.
    #[serde(default)]
    pub max_age: Dur,
    /// -1 or absent: no count limit.
    #[serde(default = "unlimited")]
    pub max_msgs: i64,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub max_bytes: Option<Size>,
    #[serde(default = "one")]
    pub replicas: u8,
    #[serde(default)]
    pub discard: Discard,
    /// Absent: nats-server's default (2 minutes).
    #[serde(default)]
    pub duplicate_window: Option<Dur>,
    /// Durable pull consumers to keep on this stream, by name.
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerConfig>,
    /// Alarm when the stream's newest message (as nats-server stores it,
    /// whoever published it) is older than this; absent: no alarm. The
    /// clock starts no earlier than the daemon's start or the stream's
    /// creation. Applied live by a reload.
    #[serde(default)]
    pub alert_if_silent_for: Option<Dur>,
    /// This stream's silence alarm makes /health answer 503 (else it is
    /// only listed among /health's warnings). Applied live by a reload.
    #[serde(default)]
    pub health_fails_on_alarm: bool,
}

fn unlimited() -> i64 {
    -1
}
fn one() -> u8 {
    1
}

impl StreamConfig {
    pub fn new(subjects: &[&str], max_age_secs: u64, max_msgs: i64) -> Self {
        StreamConfig {
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            retention: Retention::Limits,
            max_age: Dur::secs(max_age_secs),
            max_msgs,
            storage: Storage::File,
            max_bytes: None,
            replicas: 1,
            discard: Discard::Old,
            duplicate_window: None,
            consumers: BTreeMap::new(),
            alert_if_silent_for: None,
            health_fails_on_alarm: false,
        }
    }
}

/// One declared durable pull consumer (`consumers:` under a stream). Pull
/// only: the daemon's HTTP fetch and clients' `pull_subscribe` bind to it;
/// a push consumer would deliver into a subject nobody may be reading.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// Only messages on this subject (wildcards allowed; within the
    /// stream's subjects). Absent, with no `filter_subjects`: everything.
    pub filter_subject: Option<String>,
    /// Several filters (nats-server >= 2.10; one entry works everywhere).
    pub filter_subjects: Vec<String>,
    pub deliver_policy: DeliverPolicy,
    /// First stream sequence, with `deliver_policy: by_start_sequence`.
    pub opt_start_seq: Option<u64>,
    pub ack_policy: AckPolicy,
    /// Unacknowledged messages are redelivered after this long.
    pub ack_wait: Dur,
    /// Deliveries per message; -1: no limit.
    pub max_deliver: i64,
    /// Unacknowledged messages outstanding before delivery pauses; -1: no limit.
    pub max_ack_pending: i64,
    /// Copies of the consumer's state in a cluster; 0: as many as its
    /// stream has. Applied when the consumer is created.
    pub replicas: u8,
    /// Alarm when more messages than this are unprocessed: not delivered
    /// yet (num_pending) plus delivered and not acknowledged
    /// (num_ack_pending). Absent: no alarm. Applied live by a reload.
    pub alert_if_pending_over: Option<u64>,
    /// This consumer's alarm makes /health answer 503 (else it is only
    /// listed among /health's warnings). Applied live by a reload.
    pub health_fails_on_alarm: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            filter_subject: None,
            filter_subjects: Vec::new(),
            deliver_policy: DeliverPolicy::All,
            opt_start_seq: None,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Dur::secs(30),
            max_deliver: -1,
            // nats-server's own default for a consumer that names none.
            max_ack_pending: 1000,
            replicas: 0,
            alert_if_pending_over: None,
            health_fails_on_alarm: false,
        }
    }
}

impl ConsumerConfig {
    /// The filters in force: `filter_subject` or `filter_subjects`
    /// (validation allows only one of them); empty means the whole stream.
    pub fn filters(&self) -> Vec<String> {
        match &self.filter_subject {
            Some(f) => vec![f.clone()],
            None => self.filter_subjects.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    #[default]
    All,
    Last,
    New,
    ByStartSequence,
    LastPerSubject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    #[default]
    Explicit,
    None,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    #[default]
    Limits,
    Interest,
    Workqueue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    #[default]
    Old,
    New,
}

macro_rules! names {
    ($($t:ident { $($v:ident => $s:literal),* })*) => {$(
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $($t::$v => $s),* }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
names! {
    Retention { Limits => "limits", Interest => "interest", Workqueue => "workqueue" }
    Storage { File => "file", Memory => "memory" }
    Discard { Old => "old", New => "new" }
    DeliverPolicy { All => "all", Last => "last", New => "new", ByStartSequence => "by_start_sequence", LastPerSubject => "last_per_subject" }
    AckPolicy { Explicit => "explicit", None => "none", All => "all" }
}

/// A NATS user (the seed's `users:` list).
///
/// Exactly one of `password` (plain text or a bcrypt hash),
/// `password_file` and `password_env` gives the secret; loading resolves
/// the latter two into `password`, so the rest of the daemon sees one.
/// Its Debug form masks the password: configs get logged.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (first line). Absolute, or a name in
    /// $CREDENTIALS_DIRECTORY (systemd's LoadCredential=).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable of the daemon holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub permissions: Option<Permissions>,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("permissions", &self.permissions)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    #[serde(default)]
    pub publish: Option<PermissionList>,
    #[serde(default)]
    pub subscribe: Option<PermissionList>,
}

/// `["market.>"]` (allow list) or `{allow: [...], deny: [...]}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PermissionList {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl<'de> Deserialize<'de> for PermissionList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AllowDeny {
            #[serde(default)]
            allow: Vec<String>,
            #[serde(default)]
            deny: Vec<String>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PermissionList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of subjects, or a mapping with `allow` and/or `deny` lists")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(PermissionList {
                    allow: vec![v.to_string()],
                    deny: vec![],
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut allow = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    allow.push(s);
                }
                Ok(PermissionList {
                    allow,
                    deny: vec![],
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let ad = AllowDeny::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(PermissionList {
                    allow: ad.allow,
                    deny: ad.deny,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping's destinations: `"dest"` (all messages), or a list of
/// `{destination, weight}` splitting them by percent.
#[derive(Debug, Clone, PartialEq)]
pub struct MappingConfig(pub Vec<crate::mapping::Destination>);

impl<'de> Deserialize<'de> for MappingConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Weighted {
            destination: String,
            weight: Weight,
        }
        struct Weight(u8);
        impl<'de> Deserialize<'de> for Weight {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct W;
                impl Visitor<'_> for W {
                    type Value = Weight;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a percentage from 1 to 100, such as 90 or \"90%\"")
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Weight, E> {
                        match u8::try_from(v) {
                            Ok(w @ 1..=100) => Ok(Weight(w)),
                            _ => Err(E::custom(format!(
                                "weight {v}: must be a percentage from 1 to 100"
                            ))),
                        }
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Weight, E> {
                        u64::try_from(v)
                            .map_err(|_| E::custom(format!("weight {v}: must be from 1 to 100")))
                            .and_then(|v| self.visit_u64(v))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<Weight, E> {
                        let n = v.trim().trim_end_matches('%').trim();
                        n.parse::<u64>()
                            .map_err(|_| {
                                E::custom(format!(
                                    "weight {v:?}: expected a percentage such as 90 or \"90%\""
                                ))
                            })
                            .and_then(|n| self.visit_u64(n))
                    }
                }
                d.deserialize_any(W)
            }
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MappingConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a destination subject, or a list of {destination, weight}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MappingConfig(vec![crate::mapping::Destination {
                    subject: v.to_string(),
                    weight: 100,
                }]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(w) = seq.next_element::<Weighted>()? {
                    out.push(crate::mapping::Destination {
                        subject: w.destination,
                        weight: w.weight.0,
                    });
                }
                Ok(MappingConfig(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Client TLS for nats-server (the seed's `tls:` block).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Require and verify client certificates (mutual TLS).
    #[serde(default)]
    pub verify: bool,
}

/// How the daemon supervises nats-server. Not in the seed (the original did
/// not supervise); every value has a default that suits production.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Longest wait for a started nats-server to become healthy (JetStream
    /// recovery of a big store can take a while).
    pub start_timeout: Dur,
    /// SIGTERM -> SIGKILL grace period when stopping nats-server.
    pub stop_timeout: Dur,
    /// Health probe period while running.
    pub health_interval: Dur,
    /// One probe's deadline.
    pub health_timeout: Dur,
    /// Consecutive failed probes of a live process that mean it hangs.
    pub health_failures: u32,
    /// First restart delay; doubles per failure, with jitter.
    pub backoff_initial: Dur,
    pub backoff_max: Dur,
    /// Uptime after which the restart delay starts from the beginning again.
    pub stable_after: Dur,
    /// More than this many failures within `failure_window` -> give up (exit 69).
    pub max_failures: u32,
    pub failure_window: Dur,
    /// Period of the stream reconciliation that repairs drift.
    pub stream_resync_interval: Dur,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            start_timeout: Dur::secs(60),
            stop_timeout: Dur::secs(10),
            health_interval: Dur::secs(1),
            health_timeout: Dur::secs(1),
            health_failures: 3,
            backoff_initial: Dur::millis(100),
            backoff_max: Dur::secs(30),
            stable_after: Dur::secs(60),
            max_failures: 10,
            failure_window: Dur::secs(300),
            stream_resync_interval: Dur::secs(60),
        }
    }
}

/// HTTP API behaviour beyond host/port.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Deadline for a publish (JetStream ack included). Past it: 503.
    pub publish_timeout: Dur,
    /// Time a client gets to send its request headers; also how long an
    /// idle keep-alive connection is kept waiting for its next request.
    pub header_read_timeout: Dur,
    /// Most HTTP connections open at once; past it new ones wait in the
    /// listen backlog until one closes.
    pub max_connections: u32,
    /// How long in-flight requests may finish at shutdown.
    pub drain_timeout: Dur,
    /// Most entries one POST /api/v1/publish/batch may carry (413 past it).
    pub batch_max_entries: u32,
    /// Largest body of a batch publish (413 past it).
    pub batch_max_bytes: Size,
    /// Period of the comment line that keeps an idle event stream (GET
    /// /api/v1/subscribe) open through proxies, and finds clients gone.
    pub sse_heartbeat: Dur,
    /// Most bytes queued for one event-stream client; past it messages are
    /// dropped (and counted) until the client catches up.
    pub sse_buffer: Size,
    /// Most event streams open at once (429 past it).
    pub sse_max_clients: u32,
    /// Most messages one POST .../consumers/{name}/fetch may ask for.
    pub fetch_max_batch: u32,
    /// Longest a fetch may wait for messages (`expires_ms` is capped to it).
    pub fetch_max_wait: Dur,
    /// Most message bytes (subject, ack subject, headers and payload, as
    /// nats-server counts them) one fetch or replay page brings: bounds
    /// the daemon's memory per request whatever the messages' size.
    pub fetch_max_bytes: Size,
    /// Bearer tokens, one per line (`TOKEN`, `TOKEN read`, `TOKEN write`).
    /// Absent: no authentication (the API listens on loopback by default).
    /// An absolute path, or (like `password_file`) a credential name in
    /// $CREDENTIALS_DIRECTORY (systemd LoadCredential=). Re-read on SIGHUP.
    pub tokens_file: Option<PathBuf>,
    /// With a tokens file: whether reads (GET) need a token too. GET
    /// /health never does (liveness probes).
    pub tokens_for_reads: bool,
    /// TLS for the API itself. Certificate and key are re-read on SIGHUP.
    pub tls: Option<ApiTlsConfig>,
}

/// `api.tls`: the API's own certificate (PEM files; relative paths as for
/// `api.tokens_file`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// Certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Require client certificates signed by these CAs (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl ApiTlsConfig {
    /// The files, as [`crate::security`] loads them.
    pub fn files(&self) -> crate::security::TlsFiles<'_> {
        crate::security::TlsFiles {
            cert_file: &self.cert_file,
            key_file: &self.key_file,
            client_ca_file: self.client_ca_file.as_deref(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            publish_timeout: Dur::secs(5),
            header_read_timeout: Dur::secs(10),
            max_connections: 1024,
            drain_timeout: Dur::secs(10),
            batch_max_entries: 10_000,
            batch_max_bytes: Size(16 << 20),
            sse_heartbeat: Dur::secs(15),
            sse_buffer: Size(1 << 20),
            sse_max_clients: 100,
            fetch_max_batch: 1000,
            fetch_max_wait: Dur::secs(30),
            fetch_max_bytes: Size(16 << 20),
            tokens_file: None,
            tokens_for_reads: false,
            tls: None,
        }
    }
}

/// The three streams every broker has (the seed's table), before configured
/// ones are merged over them.
pub fn default_streams() -> BTreeMap<String, StreamConfig> {
    BTreeMap::from([
        (
            "MARKET_DATA".to_string(),
            StreamConfig::new(&["market.>"], 3600, 1_000_000),
        ),
        (
            "SYSTEM_EVENTS".to_string(),
            StreamConfig::new(&["system.>"], 86_400, 100_000),
        ),
        (
            "SERVICE_LOGS".to_string(),
            StreamConfig::new(&["service.>"], 7 * 86_400, 500_000),
        ),
    ])
}
