//! Three daemons clustered on loopback: their ports and the `nats:` section
//! every node gets (the same route list, itself included, as one config
//! pushed to every machine has it; nats-server ignores the route to itself).

use std::path::Path;

use super::{free_ports, Daemon, DaemonBuilder};

/// One node's ports: HTTP API, NATS clients, monitor, cluster.
#[derive(Clone, Copy)]
pub struct Node {
    pub http: u16,
    pub nats: u16,
    pub monitor: u16,
    pub cluster: u16,
}

/// Free ports for three nodes.
pub fn ports() -> Vec<Node> {
    let p = free_ports::<12>();
    (0..3)
        .map(|i| Node {
            http: p[i * 4],
            nats: p[i * 4 + 1],
            monitor: p[i * 4 + 2],
            cluster: p[i * 4 + 3],
        })
        .collect()
}

/// Node `i`'s server name: n1, n2, n3.
pub fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// Node `i` of cluster `cluster_name`: server name, cluster listen address
/// and the routes to all three, then `more` (indented `nats:` lines).
pub fn node(
    i: usize,
    nodes: &[Node],
    bin: &Path,
    state: &Path,
    cluster_name: &str,
    more: &str,
) -> DaemonBuilder {
    let me = nodes[i];
    let routes: String = nodes
        .iter()
        .map(|n| format!("    - \"nats-route://127.0.0.1:{}\"\n", n.cluster))
        .collect();
    let nats = format!(
        "  server_name: {}\n  cluster_name: {cluster_name}\n  cluster_listen: \"127.0.0.1:{}\"\n  cluster_routes:\n{routes}{more}",
        name(i),
        me.cluster
    );
    Daemon::builder()
        .bin(bin)
        .state(state)
        .ports((me.http, me.nats, me.monitor))
        .nats(&nats)
}
