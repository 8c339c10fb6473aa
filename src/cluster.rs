//! A clustered node's view of its cluster, derived (purely) from what
//! nats-server reports: the monitor's /routez and /jsz, and the `cluster`
//! section of each stream's info. /api/v1/status shows it; /health and the
//! startup wait turn it into problems.
//!
//! nats-server versions differ in what they report, and the code takes
//! what is there:
//! - /routez: 2.10+ names the remote server (`remote_name`) and may open
//!   several routes per peer (route pooling); 2.9 gives only `remote_id`.
//!   Routes are listed once per remote server.
//! - /jsz `meta_cluster`: `leader` is absent while there is no meta leader;
//!   2.9.10 and 2.10.27 list `replicas` (the other peers) on the meta
//!   leader only, later releases on every node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// One remote server this node has a route to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    /// The remote's server_name (nats-server >= 2.10), else None.
    pub name: Option<String>,
    pub server_id: String,
    /// Where the route goes (its IP and port as nats-server sees them).
    pub address: String,
    /// Whether this route is one of `cluster_routes` (not one that was
    /// gossiped or that the remote opened).
    pub configured: bool,
}

/// A member of a RAFT group (the meta group or a stream's) other than its
/// leader, as the reporting server sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peer {
    pub name: String,
    /// Up to date with the leader.
    pub current: bool,
    /// Milliseconds since the leader last heard from it.
    pub active_ms: u64,
    /// Entries it is behind the leader.
    pub lag: u64,
    /// The group considers it gone.
    pub offline: bool,
}

/// JetStream's meta group (where streams are placed and created).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Meta {
    /// The meta leader's server name; None: no leader (no quorum, or an
    /// election under way) and no stream can be created or changed.
    pub leader: Option<String>,
    pub cluster_size: u64,
    /// The other peers (see the module doc for which versions list them).
    pub peers: Vec<Peer>,
}

/// A stream's RAFT group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamGroup {
    pub name: String,
    /// Server name of the stream leader; None: the stream cannot take
    /// writes.
    pub leader: Option<String>,
    /// The replicas other than the leader.
    pub replicas: Vec<Peer>,
    /// Replicas configured (num_replicas).
    pub configured_replicas: usize,
    /// The stream's last sequence as the stream info (from its leader)
    /// reports it.
    pub last_seq: u64,
}

/// Remote servers this node has routes to, once each, sorted by name.
pub fn routes_from_routez(routez: &Value) -> Vec<Route> {
    let mut out: Vec<Route> = Vec::new();
    for r in routez["routes"].as_array().into_iter().flatten() {
        let server_id = r["remote_id"].as_str().unwrap_or_default().to_string();
        let name = r["remote_name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(String::from);
        let configured = r["is_configured"].as_bool().unwrap_or(false);
        if let Some(seen) = out.iter_mut().find(|o| o.server_id == server_id) {
            // Pooled routes to the same server: one entry; configured if
            // any of them is.
            seen.configured |= configured;
            continue;
        }
        let address = format!(
            "{}:{}",
            r["ip"].as_str().unwrap_or("?"),
            r["port"].as_u64().unwrap_or(0)
        );
        out.push(Route {
            name,
            server_id,
            address,
            configured,
        });
    }
    out.sort_by(|a, b| (&a.name, &a.server_id).cmp(&(&b.name, &b.server_id)));
    out
}

fn peer_from_json(p: &Value) -> Option<Peer> {
    Some(Peer {
        name: p["name"].as_str()?.to_string(),
        current: p["current"].as_bool().unwrap_or(false),
        active_ms: p["active"].as_u64().unwrap_or(0) / 1_000_000,
        lag: p["lag"].as_u64().unwrap_or(0),
        offline: p["offline"].as_bool().unwrap_or(false),
    })
}

/// The meta group from /jsz; None when JetStream is not clustered.
pub fn meta_from_jsz(jsz: &Value) -> Option<Meta> {
    let m = jsz.get("meta_cluster")?;
    if !m.is_object() {
        return None;
    }
    Some(Meta {
        leader: m["leader"]
            .as_str()
            .filter(|l| !l.is_empty())
            .map(String::from),
        cluster_size: m["cluster_size"].as_u64().unwrap_or(0),
        peers: m["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(peer_from_json)
            .collect(),
    })
}

/// A stream's group from its info (async-nats' parsed cluster section).
pub fn stream_group(
    name: &str,
    configured_replicas: usize,
    last_seq: u64,
    cluster: Option<&async_nats::jetstream::stream::ClusterInfo>,
) -> StreamGroup {
    StreamGroup {
        last_seq,
        name: name.to_string(),
        leader: cluster
            .and_then(|c| c.leader.clone())
            .filter(|l| !l.is_empty()),
        replicas: cluster
            .map(|c| {
                c.replicas
                    .iter()
                    .map(|p| Peer {
                        name: p.name.clone(),
                        current: p.current,
                        active_ms: p.active.as_millis() as u64,
                        lag: p.lag.unwrap_or(0),
                        offline: p.offline,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        configured_replicas,
    }
}

/// Why a clustered node cannot do JetStream work right now; None when it
/// can. Used while starting (wait for a leader before creating streams)
/// and by /health.
pub fn meta_problem(meta: Option<&Meta>) -> Option<String> {
    match meta {
        None => {
            Some("JetStream reports no meta group yet (the cluster is still forming)".to_string())
        }
        // cluster_size is what the server knows of, not the configured
        // size (a lone fresh node counts itself and a guess), so no
        // "N of M" is claimed from it.
        Some(m) if m.leader.is_none() => Some(format!(
            "JetStream has no meta leader: no quorum (a majority of the cluster's servers must reach each other; this one knows of {}) or an election under way; streams cannot be created or changed",
            m.cluster_size
        )),
        Some(_) => None,
    }
}

/// Problems of declared streams' groups: one without a leader cannot take
/// writes (publishes to it fail with 503).
pub fn stream_problems(groups: &[StreamGroup]) -> Vec<String> {
    groups
        .iter()
        .filter(|g| g.leader.is_none())
        .map(|g| {
            format!(
                "stream {} has no leader (replicas: {}): its subjects cannot be written until one is elected",
                g.name, g.configured_replicas
            )
        })
        .collect()
}

/// The subject every member of JetStream's meta group subscribes to for
/// votes (`$NRG.V.` + the group `_meta_`, in 2.9.10, 2.10.27 and later
/// alike). A route whose remote shows interest in it leads to a server
/// that runs JetStream in this cluster; a server without JetStream (a
/// mixed cluster) never subscribes it.
pub const META_VOTE_SUBJECT: &str = "$NRG.V._meta_";

/// Remote servers routed to this one that run JetStream here: those with
/// interest in [`META_VOTE_SUBJECT`] on any of their routes (2.10+ carry
/// the system account's interest on a dedicated route, 2.9 on its one
/// route), from `/routez?subs=1`. Once each, by server id; the name where
/// nats-server (2.10+) gives it. Leaf nodes and gateways are not routes
/// and never appear.
pub fn jetstream_routes(routez_subs: &Value) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for r in routez_subs["routes"].as_array().into_iter().flatten() {
        let votes = r["subscriptions_list"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s.as_str() == Some(META_VOTE_SUBJECT));
        let id = r["remote_id"].as_str().unwrap_or_default();
        if !votes || id.is_empty() || out.iter().any(|(i, _)| i == id) {
            continue;
        }
        let name = r["remote_name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(String::from);
        out.push((id.to_string(), name));
    }
    out
}

/// The meta leader knows fewer peers than the JetStream servers it is
/// routed to: nats-server 2.10.27 was seen leaving a follower out for
/// minutes when that follower's replies to the leader never arrived (lost
/// route interest, fixed in later releases), so no R3 stream could be
/// placed ("no suitable peers for placement", JetStream error 10005).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetaShortfall {
    /// Peers the meta group lists besides this node (offline ones too).
    pub known: usize,
    /// JetStream servers this node is routed to.
    pub routed: usize,
    /// Names of routed servers the group does not list, where nats-server
    /// names the routes (2.10+); empty on 2.9.
    pub missing: Vec<String>,
    /// Seen from the other side: this node follows the meta leader but the
    /// peer set the leader sent it leaves this node out (`missing` is this
    /// node). Only a restart of this node's nats-server brings it in: a
    /// new leader elected among the others leaves it out just the same.
    pub left_out: bool,
}

impl std::fmt::Display for MetaShortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.left_out {
            return write!(
                f,
                "the JetStream meta group's {} peers leave this node out although it follows their leader: replicated streams cannot be placed here",
                self.known
            );
        }
        write!(
            f,
            "JetStream meta group knows {} of {} routed peers",
            self.known, self.routed
        )?;
        if !self.missing.is_empty() {
            write!(f, " ({} missing)", self.missing.join(", "))?;
        }
        f.write_str(": replicated streams cannot be placed")
    }
}

/// The decision, from this node's /jsz and `/routez?subs=1`: Some when
/// this node (`me`) is the meta leader and its group lists fewer peers
/// besides itself than the JetStream servers it is routed to.
///
/// Only the leader is judged: 2.9.10 and 2.10.27 list the group's peers
/// (`replicas`) on the leader alone, and the leader's list is the peer set
/// placement picks from. A peer that is down stays listed (offline), so a
/// node going away does not count; a routed server without JetStream has
/// no interest in the meta group's votes and is not counted; a server
/// just joining is missing for a moment (the caller waits a grace period).
pub fn meta_shortfall(me: Option<&str>, jsz: &Value, routez_subs: &Value) -> Option<MetaShortfall> {
    let me = me?;
    let meta = meta_from_jsz(jsz)?;
    if meta.leader.as_deref() != Some(me) {
        return None;
    }
    let peers: Vec<&str> = meta
        .peers
        .iter()
        .map(|p| p.name.as_str())
        .filter(|n| *n != me)
        .collect();
    let routed = jetstream_routes(routez_subs);
    if peers.len() >= routed.len() {
        return None;
    }
    let mut missing: Vec<String> = routed
        .iter()
        .filter_map(|(_, n)| n.clone())
        .filter(|n| !peers.contains(&n.as_str()))
        .collect();
    missing.sort();
    Some(MetaShortfall {
        known: peers.len(),
        routed: routed.len(),
        missing,
        left_out: false,
    })
}

/// The follower's side of [`meta_shortfall`]: this node (`me`) follows a
/// meta leader whose peer set of `others` servers leaves it out (as
/// [`meta_peers_without_me`] read it from /raftz), while it is routed to
/// JetStream servers.
///
/// /raftz lists a group's peers as this node holds them (the set the
/// leader last sent), without this node itself. A member of a group of
/// `size` sees at most `size - 1` others there; seeing `size` or more
/// means the set lacks it. nats-server 2.10.27 was seen that way under
/// load when three servers started at once: the leader ran a group of 2
/// and never added the third, and restarting the leader did not help
/// (the next leader came from the same two).
pub fn left_out_of_meta(me: &str, others: usize, routez_subs: &Value) -> Option<MetaShortfall> {
    let routed = jetstream_routes(routez_subs);
    (!routed.is_empty()).then(|| MetaShortfall {
        known: others,
        routed: routed.len(),
        missing: vec![me.to_string()],
        left_out: true,
    })
}

/// From this node's `/raftz` (2.10.21+; older servers answer 404): the
/// number of peers when this node follows a meta leader whose peer set
/// lacks it. Read before /routez with subscriptions, which is asked for
/// only then ([`left_out_of_meta`]).
pub fn meta_peers_without_me(raftz: &Value) -> Option<usize> {
    let meta = raftz
        .as_object()?
        .values()
        .find_map(|groups| groups.get("_meta_"))?;
    if meta["state"].as_str() != Some("FOLLOWER")
        || meta["leader"].as_str().is_none_or(str::is_empty)
    {
        return None;
    }
    let size = meta["size"].as_u64()? as usize;
    let others = meta["peers"].as_object()?.len();
    (size > 0 && others >= size).then_some(others)
}

/// How long a follower must be left out of the meta group before it
/// restarts its nats-server: a server that just joined is added within a
/// second or two.
pub const META_HEAL_GRACE: Duration = Duration::from_secs(30);

/// How long the leader's group must miss a routed peer before the leader
/// restarts its nats-server. Longer than [`META_HEAL_GRACE`]: when the
/// missing peer sees itself left out, its own restart (lame duck, 10 s)
/// comes first and takes one server away, not two at once; the leader's is
/// for what the follower cannot see (nats-server 2.9 has no /raftz, and a
/// leader that never hears a follower may not tell it so).
pub const META_HEAL_LEADER_GRACE: Duration = Duration::from_secs(60);

/// The grace period for `short`: [`META_HEAL_GRACE`] when this node is the
/// one left out, [`META_HEAL_LEADER_GRACE`] on the leader.
pub fn heal_grace(short: &MetaShortfall) -> Duration {
    if short.left_out {
        META_HEAL_GRACE
    } else {
        META_HEAL_LEADER_GRACE
    }
}

/// At most one self-heal restart per this long: a restart that did not
/// help is not repeated in a loop.
pub const META_HEAL_EVERY: Duration = Duration::from_secs(600);

/// What the meta group check calls for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealStep {
    /// Nothing wrong.
    Fine,
    /// Short of peers, reported; no restart (yet, or not again so soon, or
    /// no stream failed for it).
    Short(MetaShortfall),
    /// Short for the grace period while a stream could not be placed:
    /// restart this node's nats-server.
    Restart(MetaShortfall),
}

/// The self-heal's memory (pure: the caller passes the time in).
#[derive(Debug, Clone, Default)]
pub struct MetaHeal {
    /// Since when the shortfall holds without a break.
    short_since: Option<Instant>,
    last_restart: Option<Instant>,
}

impl MetaHeal {
    /// One check: `shortfall` as [`meta_shortfall`] found it now, and
    /// when a declared stream last failed to be created or updated with
    /// "no suitable peers for placement" (10005). A restart needs both:
    /// the shortfall for [`META_HEAL_GRACE`] without a break, and a
    /// placement failure since it began (the evidence that it matters);
    /// and then none in the last [`META_HEAL_EVERY`].
    pub fn step(
        &mut self,
        now: Instant,
        shortfall: Option<MetaShortfall>,
        no_peers_at: Option<Instant>,
    ) -> HealStep {
        let Some(short) = shortfall else {
            self.short_since = None;
            return HealStep::Fine;
        };
        let since = *self.short_since.get_or_insert(now);
        let lasted = now.saturating_duration_since(since) >= heal_grace(&short);
        let mattered = no_peers_at.is_some_and(|t| t >= since);
        let allowed = self
            .last_restart
            .is_none_or(|t| now.saturating_duration_since(t) >= META_HEAL_EVERY);
        if lasted && mattered && allowed {
            self.last_restart = Some(now);
            // The new nats-server starts the count afresh.
            self.short_since = None;
            HealStep::Restart(short)
        } else {
            HealStep::Short(short)
        }
    }
}

/// What this node's nats-server says of itself on its full /healthz
/// (`details=true`, which 2.10+ honour and 2.9 ignores): whether every
/// JetStream asset it serves is current here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalHealth {
    Ok,
    /// Its error sentences: 2.10+ list all of them (`errors`), 2.9 only
    /// the first (`error`).
    Errors(Vec<String>),
}

/// nats-server's /healthz answer as [`LocalHealth`].
pub fn local_health(status: u16, body: &Value) -> LocalHealth {
    let mut errors: Vec<String> = body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["error"].as_str().map(String::from))
        .collect();
    if let Some(e) = body["error"].as_str().filter(|e| !e.is_empty()) {
        errors.push(e.to_string());
    }
    if status == 200 && errors.is_empty() {
        LocalHealth::Ok
    } else {
        if errors.is_empty() {
            errors.push(format!("/healthz answered {status}"));
        }
        LocalHealth::Errors(errors)
    }
}

/// Last sequence of each stream replica this node holds, from its own
/// monitor's `/jsz?streams=true`.
pub fn local_last_seqs(jsz: &Value) -> BTreeMap<String, u64> {
    jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .filter_map(|s| {
            Some((
                s["name"].as_str()?.to_string(),
                s["state"]["last_seq"].as_u64()?,
            ))
        })
        .collect()
}

/// One JetStream asset that is not current on this node yet: the meta
/// group (`stream` None), a stream's replica, or a consumer's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lagging {
    pub stream: Option<String>,
    pub consumer: Option<String>,
    /// Entries behind the stream leader, as the leader reports this
    /// node's replica; None when not known (consumers, the meta group, a
    /// replica the leader does not list).
    pub lag: Option<u64>,
    /// A sentence for people: what, and how far behind where known.
    pub description: String,
}

/// What this node's catching up amounts to: what is not current yet,
/// and what nats-server reports that is not catching up at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Streams (and the meta group) not current on this node: catching up.
    pub lagging: Vec<Lagging>,
    /// Consumers nats-server calls not current on this node: shown, not
    /// waited for. nats-server 2.9's RAFT isCurrent() is false for a
    /// follower whose commit index is 0, which is what a restarted
    /// follower of a consumer that has not been used since stays (seen:
    /// an idle declared consumer "not current" for as long as a test ran
    /// after a kill -9 of the node's nats-server). Waiting for it would
    /// hold /health and `wait-ready` forever; redelivery covers a
    /// consumer replica that really was behind.
    pub consumers: Vec<Lagging>,
    /// nats-server's other complaints (a stream that could not be
    /// recovered, ...): broken, not catching up.
    pub other: Vec<String>,
}

/// One of nats-server's /healthz sentences, read: the meta group, a
/// stream or a consumer that is not current (with nats-server's reason),
/// or None for anything else.
fn not_current(e: &str) -> Option<(Option<String>, Option<String>, Option<String>)> {
    if e.contains("not current with the meta leader") || e.contains("still recovering meta layer") {
        return Some((None, None, None));
    }
    // "JetStream stream 'ACC > NAME' is not current[: why]" and
    // "JetStream consumer 'ACC > STREAM > NAME' is not current[: why]".
    let (kind, rest) = e.strip_prefix("JetStream ")?.split_once(" '")?;
    let (path, tail) = rest.split_once('\'')?;
    let why = tail
        .strip_prefix(" is not current")?
        .strip_prefix(": ")
        .map(String::from);
    let parts: Vec<&str> = path.split(" > ").collect();
    match (kind, parts.as_slice()) {
        ("stream", [_, stream]) => Some((Some(stream.to_string()), None, why)),
        ("consumer", [_, stream, consumer]) => {
            Some((Some(stream.to_string()), Some(consumer.to_string()), why))
        }
        _ => None,
    }
}

/// The decision: from this node's own /healthz and the leaders' view of
/// the streams' groups (`groups`, found by this node's name `me`), what is
/// catching up here and how far behind.
///
/// Not current when either says so: nats-server's /healthz (it asks the
/// RAFT node and whether a snapshot is being applied) or the stream
/// leader (our replica has not acknowledged what the leader applied; its
/// `lag` says how far behind). A stream without a leader is not catching
/// up but broken ([`stream_problems`] names it), so it is left out; the
/// meta group without a leader likewise ([`meta_problem`]).
pub fn catch_up(
    health: &LocalHealth,
    groups: &[StreamGroup],
    me: Option<&str>,
    local: Option<&BTreeMap<String, u64>>,
) -> CatchUp {
    let errors: &[String] = match health {
        LocalHealth::Ok => &[],
        LocalHealth::Errors(e) => e,
    };
    let leaderless = |s: &str| groups.iter().any(|g| g.name == s && g.leader.is_none());
    let mine = |s: &str| -> Option<&Peer> {
        let g = groups.iter().find(|g| g.name == s)?;
        g.replicas.iter().find(|p| Some(p.name.as_str()) == me)
    };
    let mut out = CatchUp::default();
    for e in errors {
        if e.contains("not established contact with a meta leader") {
            continue; // no meta leader: meta_problem's
        }
        let Some((stream, consumer, why)) = not_current(e) else {
            out.other.push(e.clone());
            continue;
        };
        if stream.as_deref().is_some_and(leaderless) {
            continue;
        }
        let lag = match (&stream, &consumer) {
            (Some(s), None) => mine(s).map(|p| p.lag),
            _ => None,
        };
        let l = lagging(stream, consumer, lag, why);
        if l.consumer.is_some() {
            out.consumers.push(l);
        } else {
            out.lagging.push(l);
        }
    }
    // The leaders' word too: nats-server 2.9 names only the first asset
    // that is not current, and its /healthz says "current" while the
    // replica still misses the tail of a catch-up (seen: 88 of 10000
    // messages) because this node does not know yet what the leader has
    // committed. The leader does: `current` is false until our replica
    // has acknowledged what the leader applied. A replica that is
    // current with a small lag is normal under load and not listed.
    for g in groups.iter().filter(|g| g.leader.is_some()) {
        let listed = out
            .lagging
            .iter()
            .any(|l| l.stream.as_deref() == Some(g.name.as_str()) && l.consumer.is_none());
        let Some(p) = mine(&g.name).filter(|_| !listed) else {
            continue;
        };
        // Both of them say "current, lag 0" for a moment while the
        // replica here still applies the tail (nats-server 2.9.10: 18 of
        // 10000 messages missing for 600 ms): the replica's own last
        // sequence, read after the leader's, tells.
        let missing = local.map(|l| {
            g.last_seq
                .saturating_sub(l.get(&g.name).copied().unwrap_or(0))
        });
        if !p.current || p.offline {
            out.lagging
                .push(lagging(Some(g.name.clone()), None, Some(p.lag), None));
        } else if let Some(n) = missing.filter(|n| *n > 0) {
            let mut l = lagging(Some(g.name.clone()), None, None, None);
            l.description = format!("stream {}: {n} messages behind the leader", g.name);
            out.lagging.push(l);
        }
    }
    out
}

fn lagging(
    stream: Option<String>,
    consumer: Option<String>,
    lag: Option<u64>,
    why: Option<String>,
) -> Lagging {
    let what = match (&stream, &consumer) {
        (Some(s), Some(c)) => format!("consumer {c} of stream {s}"),
        (Some(s), None) => format!("stream {s}"),
        _ => "the JetStream meta group".to_string(),
    };
    let how = match (lag, why) {
        (Some(n), _) if n > 0 => format!("{n} entries behind the leader"),
        (_, Some(why)) => format!("not current yet ({why})"),
        _ => "not current yet".to_string(),
    };
    Lagging {
        stream,
        consumer,
        lag,
        description: format!("{what}: {how}"),
    }
}

/// The status' `cluster` object from what nats-server reported: /routez
/// and /jsz (None when the monitor did not answer), and the declared
/// streams' groups. `jetstream`: whether JetStream runs (without it there
/// is no meta group to miss).
pub fn status(
    cluster_name: Option<&str>,
    server_name: Option<&str>,
    routez: Option<&Value>,
    jsz: Option<&Value>,
    jetstream: bool,
    groups: &[StreamGroup],
) -> Value {
    let meta = jsz.and_then(meta_from_jsz);
    let mut problems: Vec<String> = Vec::new();
    if jetstream {
        problems.extend(meta_problem(meta.as_ref()));
    }
    problems.extend(stream_problems(groups));
    let name = cluster_name
        .map(String::from)
        .or_else(|| jsz.and_then(|j| j["meta_cluster"]["name"].as_str().map(String::from)));
    serde_json::json!({
        "name": name,
        "server_name": server_name,
        "routes": routez.map(routes_from_routez),
        "meta": meta,
        "streams": groups,
        "problems": problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pooled_routes_are_listed_once_per_server_with_their_name() {
        // nats-server 2.15 with route pooling: several routes per peer.
        let routez = json!({"routes": [
            {"remote_id": "NB", "remote_name": "n2", "ip": "127.0.0.1", "port": 26222, "is_configured": true},
            {"remote_id": "NB", "remote_name": "n2", "ip": "127.0.0.1", "port": 26222, "is_configured": false},
            {"remote_id": "NA", "remote_name": "n3", "ip": "127.0.0.1", "port": 26223, "is_configured": false},
        ]});
        let r = routes_from_routez(&routez);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].name.as_deref(), Some("n2"));
        assert!(r[0].configured);
        assert_eq!(r[0].address, "127.0.0.1:26222");
        assert_eq!(r[1].name.as_deref(), Some("n3"));
        assert!(!r[1].configured);
    }

    #[test]
    fn routes_of_nats_server_2_9_have_no_name_but_an_id() {
        let routez = json!({"num_routes": 1, "routes": [
            {"rid": 7, "remote_id": "NBMUX", "did_solicit": true, "is_configured": true, "ip": "127.0.0.1", "port": 26223},
        ]});
        let r = routes_from_routez(&routez);
        assert_eq!(
            r,
            vec![Route {
                name: None,
                server_id: "NBMUX".into(),
                address: "127.0.0.1:26223".into(),
                configured: true
            }]
        );
        assert!(routes_from_routez(&json!({"routes": null})).is_empty());
    }

    #[test]
    fn meta_with_a_leader_is_fine_and_lists_peers_in_milliseconds() {
        // The shape of nats-server 2.9.10's meta leader.
        let jsz = json!({"meta_cluster": {"name": "c", "leader": "n2", "peer": "44jz", "cluster_size": 3,
            "replicas": [{"name": "n1", "current": true, "active": 586506275u64, "peer": "fjFy"},
                         {"name": "n3", "current": false, "active": 0, "lag": 4, "offline": true, "peer": "BXSc"}]}});
        let m = meta_from_jsz(&jsz).unwrap();
        assert_eq!(m.leader.as_deref(), Some("n2"));
        assert_eq!(m.cluster_size, 3);
        assert_eq!(m.peers[0].active_ms, 586);
        assert!(m.peers[0].current);
        assert_eq!((m.peers[1].lag, m.peers[1].offline), (4, true));
        assert_eq!(meta_problem(Some(&m)), None);
    }

    #[test]
    fn no_meta_leader_is_a_problem_naming_the_quorum() {
        // A node whose peers are down: nats-server 2.9.10's /jsz.
        let jsz = json!({"meta_cluster": {"name": "c", "peer": "fqA4", "cluster_size": 3}});
        let m = meta_from_jsz(&jsz).unwrap();
        assert_eq!(m.leader, None);
        assert!(m.peers.is_empty());
        let p = meta_problem(Some(&m)).unwrap();
        assert!(p.contains("no meta leader"), "{p}");
        assert!(p.contains("knows of 3"), "{p}");
        // An empty leader string is no leader either.
        let jsz = json!({"meta_cluster": {"leader": "", "cluster_size": 5}});
        assert!(meta_problem(meta_from_jsz(&jsz).as_ref())
            .unwrap()
            .contains("no meta leader"));
        // No meta_cluster at all: not (yet) clustered JetStream.
        assert_eq!(meta_from_jsz(&json!({"streams": 0})), None);
        assert!(meta_problem(None).is_some());
    }

    #[test]
    fn a_stream_without_leader_is_a_problem_one_with_a_leader_is_not() {
        use async_nats::jetstream::stream::{ClusterInfo, PeerInfo};
        let info = ClusterInfo {
            leader: Some("n1".into()),
            replicas: vec![PeerInfo {
                name: "n2".into(),
                current: false,
                active: std::time::Duration::from_millis(1500),
                lag: Some(12),
                offline: false,
            }],
            ..Default::default()
        };
        let led = stream_group("CLUSTERED", 3, 0, Some(&info));
        assert_eq!(led.leader.as_deref(), Some("n1"));
        assert_eq!(led.replicas[0].active_ms, 1500);
        assert_eq!(led.replicas[0].lag, 12);
        let leaderless = stream_group(
            "ORPHAN",
            3,
            0,
            Some(&ClusterInfo {
                leader: None,
                ..Default::default()
            }),
        );
        let problems = stream_problems(&[led, leaderless]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("stream ORPHAN has no leader"));
    }

    #[test]
    fn the_status_object_shows_routes_leaders_and_what_is_wrong() {
        let routez = json!({"routes": [{"remote_id": "NB", "remote_name": "n2", "ip": "10.0.0.2", "port": 6222, "is_configured": true}]});
        let jsz = json!({"meta_cluster": {"name": "from-jsz", "leader": "n2", "cluster_size": 3}});
        let led = StreamGroup {
            name: "MARKET_DATA".into(),
            leader: Some("n1".into()),
            replicas: vec![],
            configured_replicas: 3,
            last_seq: 0,
        };
        let v = status(
            None,
            Some("n1"),
            Some(&routez),
            Some(&jsz),
            true,
            std::slice::from_ref(&led),
        );
        assert_eq!(v["name"], "from-jsz");
        assert_eq!(v["server_name"], "n1");
        assert_eq!(v["routes"][0]["name"], "n2");
        assert_eq!(v["routes"][0]["address"], "10.0.0.2:6222");
        assert_eq!(v["meta"]["leader"], "n2");
        assert_eq!(v["streams"][0]["leader"], "n1");
        assert_eq!(v["streams"][0]["configured_replicas"], 3);
        assert_eq!(v["problems"], json!([]));
        // Monitor silent, no leader anywhere: nulls and reasons, not errors.
        let leaderless = StreamGroup {
            leader: None,
            ..led
        };
        let v = status(Some("mp"), Some("n1"), None, None, true, &[leaderless]);
        assert_eq!(v["name"], "mp");
        assert_eq!(v["routes"], Value::Null);
        assert_eq!(v["meta"], Value::Null);
        let problems = v["problems"].to_string();
        assert!(problems.contains("no meta group"), "{problems}");
        assert!(
            problems.contains("stream MARKET_DATA has no leader"),
            "{problems}"
        );
        // Without JetStream, no meta group is expected.
        let v = status(Some("mp"), Some("n1"), Some(&routez), None, false, &[]);
        assert_eq!(v["problems"], json!([]));
    }

    fn group(name: &str, leader: Option<&str>, me: Option<(bool, u64)>) -> StreamGroup {
        StreamGroup {
            name: name.into(),
            leader: leader.map(String::from),
            replicas: me
                .map(|(current, lag)| Peer {
                    name: "n3".into(),
                    current,
                    active_ms: 0,
                    lag,
                    offline: false,
                })
                .into_iter()
                .collect(),
            configured_replicas: 3,
            last_seq: 100,
        }
    }

    #[test]
    fn healthz_answers_of_2_9_and_2_10_are_read_alike() {
        assert_eq!(local_health(200, &json!({"status": "ok"})), LocalHealth::Ok);
        // 2.9.10: the first error only.
        let v =
            json!({"status": "unavailable", "error": "JetStream stream '$G > MD' is not current"});
        assert_eq!(
            local_health(503, &v),
            LocalHealth::Errors(vec!["JetStream stream '$G > MD' is not current".into()])
        );
        // 2.10+ with details=true: every error.
        let v = json!({"status": "error", "status_code": 503, "errors": [
            {"type": "STREAM", "stream": "MD", "error": "JetStream stream '$G > MD' is not current: stream catching up"},
            {"type": "CONSUMER", "error": "JetStream consumer '$G > MD > c1' is not current: consumer not current"}]});
        let LocalHealth::Errors(e) = local_health(503, &v) else {
            panic!()
        };
        assert_eq!(e.len(), 2);
        // A 503 without a word is still not Ok.
        assert_eq!(
            local_health(503, &json!({})),
            LocalHealth::Errors(vec!["/healthz answered 503".into()])
        );
    }

    #[test]
    fn a_lagging_replica_is_catching_up_with_its_lag_a_leaderless_one_is_not() {
        let health = LocalHealth::Errors(vec![
            "JetStream stream '$G > MD' is not current: stream catching up".into(),
            "JetStream consumer '$G > MD > c1' is not current: consumer not current".into(),
            "JetStream stream '$G > ORPHAN' is not current: group node unhealthy".into(),
        ]);
        let groups = [
            group("MD", Some("n1"), Some((false, 52000))),
            group("ORPHAN", None, None),
        ];
        let c = catch_up(&health, &groups, Some("n3"), None);
        assert_eq!(c.other, Vec::<String>::new());
        assert_eq!(c.lagging.len(), 1, "{c:?}");
        assert_eq!(c.lagging[0].stream.as_deref(), Some("MD"));
        assert_eq!(c.lagging[0].lag, Some(52000));
        assert_eq!(
            c.lagging[0].description,
            "stream MD: 52000 entries behind the leader"
        );
        // A consumer is listed apart: not waited for.
        assert_eq!(c.consumers.len(), 1, "{c:?}");
        assert_eq!(c.consumers[0].consumer.as_deref(), Some("c1"));
        assert_eq!(
            c.consumers[0].description,
            "consumer c1 of stream MD: not current yet (consumer not current)"
        );
        // nats-server says current, but the leader still misses our
        // acknowledgement: catching up all the same.
        let c = catch_up(&LocalHealth::Ok, &groups, Some("n3"), None);
        assert_eq!(c.lagging.len(), 1, "{c:?}");
        assert_eq!(c.lagging[0].lag, Some(52000));
        // Current on both sides, a few entries in flight (load): nothing.
        let groups = [group("MD", Some("n1"), Some((true, 3)))];
        assert_eq!(
            catch_up(&LocalHealth::Ok, &groups, Some("n3"), None),
            CatchUp::default()
        );
    }

    #[test]
    fn a_replica_that_everyone_calls_current_but_misses_messages_is_catching_up() {
        let groups = [group("MD", Some("n1"), Some((true, 0)))];
        let mut local = BTreeMap::from([("MD".to_string(), 82u64)]);
        let c = catch_up(&LocalHealth::Ok, &groups, Some("n3"), Some(&local));
        assert_eq!(c.lagging.len(), 1, "{c:?}");
        assert_eq!(
            c.lagging[0].description,
            "stream MD: 18 messages behind the leader"
        );
        local.insert("MD".into(), 100);
        assert_eq!(
            catch_up(&LocalHealth::Ok, &groups, Some("n3"), Some(&local)),
            CatchUp::default()
        );
        // Ahead of the leader's figure (read before ours, under load): fine.
        local.insert("MD".into(), 130);
        assert!(
            catch_up(&LocalHealth::Ok, &groups, Some("n3"), Some(&local))
                .lagging
                .is_empty()
        );
        // The stream not there at all yet: all of it is missing.
        let c = catch_up(
            &LocalHealth::Ok,
            &groups,
            Some("n3"),
            Some(&BTreeMap::new()),
        );
        assert_eq!(
            c.lagging[0].description,
            "stream MD: 100 messages behind the leader"
        );
    }

    #[test]
    fn nats_server_2_9_names_one_stream_the_leaders_name_the_others() {
        let health = LocalHealth::Errors(vec!["JetStream stream '$G > A' is not current".into()]);
        let groups = [
            group("A", Some("n1"), Some((false, 10))),
            group("B", Some("n2"), Some((false, 7))),
            group("C", Some("n2"), Some((true, 0))),
        ];
        let c = catch_up(&health, &groups, Some("n3"), None);
        let names: Vec<_> = c
            .lagging
            .iter()
            .map(|l| (l.stream.clone().unwrap(), l.lag))
            .collect();
        assert_eq!(names, vec![("A".into(), Some(10)), ("B".into(), Some(7))]);
        // This node leads A: the leader lists no entry for itself.
        let c = catch_up(&health, &groups, Some("n1"), None);
        assert_eq!(c.lagging[0].lag, None);
        assert_eq!(c.lagging[0].description, "stream A: not current yet");
    }

    #[test]
    fn the_meta_group_catching_up_and_other_complaints_are_told_apart() {
        let health =
            LocalHealth::Errors(vec!["JetStream is not current with the meta leader".into()]);
        let c = catch_up(&health, &[], None, None);
        assert_eq!(
            c.lagging[0].description,
            "the JetStream meta group: not current yet"
        );
        let health = LocalHealth::Errors(vec![
            "JetStream has not established contact with a meta leader".into(),
            "JetStream stream '$G > X' could not be recovered".into(),
        ]);
        let c = catch_up(&health, &[], None, None);
        assert!(c.lagging.is_empty());
        assert_eq!(
            c.other,
            vec!["JetStream stream '$G > X' could not be recovered".to_string()]
        );
    }

    /// `/routez?subs=1` of a 2.10.27 node routed to `js` (JetStream
    /// servers) and `plain` (servers without JetStream): three pooled
    /// routes each without system interest, and the dedicated `$SYS` route
    /// that carries the meta group's vote subject for JetStream servers.
    fn routez_2_10(js: &[&str], plain: &[&str]) -> Value {
        let mut routes = Vec::new();
        for (name, votes) in js
            .iter()
            .map(|n| (n, true))
            .chain(plain.iter().map(|n| (n, false)))
        {
            let id = format!("ID-{name}");
            for _ in 0..3 {
                routes.push(json!({"remote_id": id, "remote_name": name, "subscriptions": 0}));
            }
            let mut subs = vec!["$SYS.REQ.SERVER.PING", "$NRG.R.uhAnqMYw"];
            if votes {
                subs.push(META_VOTE_SUBJECT);
            }
            routes.push(
                json!({"remote_id": id, "remote_name": name, "account": "$SYS",
                "subscriptions_list": subs}),
            );
        }
        json!({"routes": routes})
    }

    fn leader_jsz(leader: &str, peers: &[(&str, bool)]) -> Value {
        let replicas: Vec<Value> = peers
            .iter()
            .map(|(n, offline)| json!({"name": n, "current": !offline, "offline": offline, "active": 0}))
            .collect();
        json!({"meta_cluster": {"name": "c", "leader": leader, "cluster_size": 3, "replicas": replicas}})
    }

    #[test]
    fn a_meta_leader_missing_a_routed_jetstream_peer_is_short() {
        let routez = routez_2_10(&["n2", "n3"], &[]);
        let jsz = leader_jsz("n1", &[("n2", false)]);
        let s = meta_shortfall(Some("n1"), &jsz, &routez).unwrap();
        assert_eq!((s.known, s.routed), (1, 2));
        assert_eq!(s.missing, vec!["n3".to_string()]);
        assert_eq!(
            s.to_string(),
            "JetStream meta group knows 1 of 2 routed peers (n3 missing): replicated streams cannot be placed"
        );
        // Both peers known: fine.
        let jsz = leader_jsz("n1", &[("n2", false), ("n3", false)]);
        assert_eq!(meta_shortfall(Some("n1"), &jsz, &routez), None);
        // The current release lists peers on followers too, the leader
        // among them: only the leader is judged.
        let jsz = leader_jsz("n2", &[("n2", false)]);
        assert_eq!(meta_shortfall(Some("n1"), &jsz, &routez), None);
        // No leader, or this node's name unknown: nothing to judge.
        let jsz = json!({"meta_cluster": {"cluster_size": 3}});
        assert_eq!(meta_shortfall(Some("n1"), &jsz, &routez), None);
        let jsz = leader_jsz("n1", &[("n2", false)]);
        assert_eq!(meta_shortfall(None, &jsz, &routez), None);
        // Not clustered JetStream at all.
        assert_eq!(meta_shortfall(Some("n1"), &json!({}), &routez), None);
    }

    /// /raftz's `_meta_` group as nats-server 2.10.27 served it: `peers`
    /// are the others this node holds, by node id.
    fn raftz(state: &str, size: u64, peers: &[&str]) -> Value {
        let peers: serde_json::Map<String, Value> = peers
            .iter()
            .map(|n| (format!("id-{n}"), json!({"name": n, "known": true})))
            .collect();
        json!({"$SYS": {"_meta_": {"id": "self", "state": state, "size": size,
            "leader": "id-n2", "peers": peers}, "S-R3F-abc": {"state": "FOLLOWER", "size": 3, "peers": {}}}})
    }

    /// Both halves, as `App::meta_shortfall` runs them.
    fn left_out(me: Option<&str>, raftz: &Value, routez: &Value) -> Option<MetaShortfall> {
        left_out_of_meta(me?, meta_peers_without_me(raftz)?, routez)
    }

    #[test]
    fn a_follower_the_leaders_peer_set_leaves_out_sees_it() {
        let routez = routez_2_10(&["n2", "n3"], &[]);
        // Seen under load on 2.10.27: the leader n2 ran a group of 2 (n2,
        // n3); n1 followed it and held both as its peers.
        let short = left_out(Some("n1"), &raftz("FOLLOWER", 2, &["n2", "n3"]), &routez)
            .expect("n1 is left out");
        assert!(short.left_out);
        assert_eq!(short.missing, ["n1"]);
        assert_eq!(
            short.to_string(),
            "the JetStream meta group's 2 peers leave this node out although it follows their leader: replicated streams cannot be placed here"
        );
        // n3, a member of that group of 2, holds only n2: not left out.
        assert_eq!(
            left_out(Some("n3"), &raftz("FOLLOWER", 2, &["n2"]), &routez),
            None
        );
        // A whole group of 3: a follower holds the 2 others.
        assert_eq!(
            left_out(Some("n1"), &raftz("FOLLOWER", 3, &["n2", "n3"]), &routez),
            None
        );
        // Still learning its peers (bootstrapping): fewer than size - 1.
        assert_eq!(
            left_out(Some("n1"), &raftz("FOLLOWER", 3, &["n2"]), &routez),
            None
        );
        // The leader and candidates are judged elsewhere or not at all.
        assert_eq!(
            left_out(Some("n1"), &raftz("LEADER", 2, &["n2", "n3"]), &routez),
            None
        );
        assert_eq!(
            left_out(Some("n1"), &raftz("CANDIDATE", 2, &["n2", "n3"]), &routez),
            None
        );
        // Routed to no JetStream server, no name, no /raftz (2.9): nothing.
        let alone = routez_2_10(&[], &[]);
        assert_eq!(
            left_out(Some("n1"), &raftz("FOLLOWER", 2, &["n2", "n3"]), &alone),
            None
        );
        assert_eq!(
            left_out(None, &raftz("FOLLOWER", 2, &["n2", "n3"]), &routez),
            None
        );
        assert_eq!(left_out(Some("n1"), &Value::Null, &routez), None);
    }

    #[test]
    fn a_routed_server_without_jetstream_is_not_a_missing_peer() {
        // A mixed cluster: n4 routes but has no JetStream (seen on
        // 2.10.27: its $SYS route lacks the vote subject).
        let routez = routez_2_10(&["n2", "n3"], &["n4"]);
        assert_eq!(jetstream_routes(&routez).len(), 2);
        let jsz = leader_jsz("n1", &[("n2", false), ("n3", false)]);
        assert_eq!(meta_shortfall(Some("n1"), &jsz, &routez), None);
    }

    #[test]
    fn a_peer_that_is_down_stays_listed_and_is_no_shortfall() {
        // n3 is down: no route to it, the group lists it offline.
        let routez = routez_2_10(&["n2"], &[]);
        let jsz = leader_jsz("n1", &[("n2", false), ("n3", true)]);
        assert_eq!(meta_shortfall(Some("n1"), &jsz, &routez), None);
        // Leaf nodes and gateways are not in /routez: a super-cluster's
        // meta group lists more peers than this cluster routes to.
        let jsz = leader_jsz("n1", &[("n2", false), ("n3", true), ("x1", false)]);
        assert_eq!(meta_shortfall(Some("n1"), &jsz, &routez), None);
    }

    #[test]
    fn nats_server_2_9_routes_have_no_names_and_are_counted_by_id() {
        // 2.9.10: one route per server, every account's interest on it,
        // no remote_name.
        let routez = json!({"routes": [
            {"remote_id": "NB4G", "subscriptions_list": ["$NRG.AE._meta_", META_VOTE_SUBJECT]},
            {"remote_id": "NAN4", "subscriptions_list": [META_VOTE_SUBJECT, "market.>"]},
        ]});
        assert_eq!(
            jetstream_routes(&routez),
            vec![("NB4G".to_string(), None), ("NAN4".to_string(), None)]
        );
        let jsz = leader_jsz("n2", &[("n1", false)]);
        let s = meta_shortfall(Some("n2"), &jsz, &routez).unwrap();
        assert_eq!((s.known, s.routed, s.missing.len()), (1, 2, 0));
        assert_eq!(
            s.to_string(),
            "JetStream meta group knows 1 of 2 routed peers: replicated streams cannot be placed"
        );
        // /routez without subscriptions (or an old answer): no JetStream
        // route is proven, nothing is short.
        let bare = json!({"routes": [{"remote_id": "NB4G"}, {"remote_id": "NAN4"}]});
        assert_eq!(meta_shortfall(Some("n2"), &jsz, &bare), None);
    }

    /// A follower left out of the group (the 30 s grace).
    fn short() -> Option<MetaShortfall> {
        Some(MetaShortfall {
            known: 2,
            routed: 2,
            missing: vec!["n1".into()],
            left_out: true,
        })
    }

    /// The leader's side of the same (the 60 s grace).
    fn leader_short() -> Option<MetaShortfall> {
        Some(MetaShortfall {
            known: 1,
            routed: 2,
            missing: vec!["n1".into()],
            left_out: false,
        })
    }

    #[test]
    fn the_left_out_follower_restarts_before_the_leader_would() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let (mut follower, mut leader) = (MetaHeal::default(), MetaHeal::default());
        let failed = Some(at(1));
        for s in [0, 5, 10, 20, 25] {
            assert!(matches!(
                follower.step(at(s), short(), failed),
                HealStep::Short(_)
            ));
            assert!(matches!(
                leader.step(at(s), leader_short(), failed),
                HealStep::Short(_)
            ));
        }
        assert!(matches!(
            follower.step(at(30), short(), failed),
            HealStep::Restart(_)
        ));
        assert!(matches!(
            leader.step(at(30), leader_short(), failed),
            HealStep::Short(_)
        ));
        // The follower's restart takes it away: the leader's count starts
        // over, and it never restarts if the follower comes back a member.
        assert_eq!(leader.step(at(45), None, failed), HealStep::Fine);
        assert_eq!(leader.step(at(50), None, failed), HealStep::Fine);
        // Had the follower not seen it, the leader restarts after 60 s.
        let mut alone = MetaHeal::default();
        assert!(matches!(
            alone.step(at(0), leader_short(), failed),
            HealStep::Short(_)
        ));
        assert!(matches!(
            alone.step(at(59), leader_short(), failed),
            HealStep::Short(_)
        ));
        assert!(matches!(
            alone.step(at(60), leader_short(), failed),
            HealStep::Restart(_)
        ));
    }

    #[test]
    fn the_self_heal_waits_the_grace_period_and_needs_a_placement_failure() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = MetaHeal::default();
        // A server joining: short for a moment, then fine.
        assert!(matches!(
            h.step(at(0), short(), Some(at(0))),
            HealStep::Short(_)
        ));
        assert_eq!(h.step(at(2), None, Some(at(1))), HealStep::Fine);
        // Short again: the grace period starts over.
        assert!(matches!(
            h.step(at(3), short(), Some(at(3))),
            HealStep::Short(_)
        ));
        assert!(matches!(
            h.step(at(32), short(), Some(at(30))),
            HealStep::Short(_)
        ));
        // 30 s without a break, but no stream failed to be placed since it
        // began (the streams exist already): reported, not restarted.
        assert!(matches!(
            h.step(at(40), short(), Some(at(2))),
            HealStep::Short(_)
        ));
        assert!(matches!(h.step(at(41), short(), None), HealStep::Short(_)));
        // A placement failure during it: restart, once.
        assert_eq!(
            h.step(at(42), short(), Some(at(41))),
            HealStep::Restart(short().unwrap())
        );
        assert!(matches!(
            h.step(at(50), short(), Some(at(49))),
            HealStep::Short(_)
        ));
        assert!(matches!(
            h.step(at(90), short(), Some(at(89))),
            HealStep::Short(_)
        ));
        // Not again within 10 minutes, however long it lasts.
        assert!(matches!(
            h.step(at(600), short(), Some(at(599))),
            HealStep::Short(_)
        ));
        assert!(matches!(
            h.step(at(642), short(), Some(at(641))),
            HealStep::Restart(_)
        ));
    }
}
