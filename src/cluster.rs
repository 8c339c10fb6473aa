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
//!   2.9 lists `replicas` (the other peers) on the meta leader only, 2.10+
//!   on every node.

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
    cluster: Option<&async_nats::jetstream::stream::ClusterInfo>,
) -> StreamGroup {
    StreamGroup {
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
        let led = stream_group("CLUSTERED", 3, Some(&info));
        assert_eq!(led.leader.as_deref(), Some("n1"));
        assert_eq!(led.replicas[0].active_ms, 1500);
        assert_eq!(led.replicas[0].lag, 12);
        let leaderless = stream_group(
            "ORPHAN",
            3,
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
}
