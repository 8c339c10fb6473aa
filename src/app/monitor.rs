//! nats-server's monitor as the app sees it: which address (our child's,
//! or an external server's), and the JetStream cluster's meta leader.

use std::net::SocketAddr;

use super::App;
use crate::config::Config;
use crate::probe;

impl App {
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

    /// GET /varz from nats-server's monitor.
    pub async fn varz(&self) -> Option<serde_json::Value> {
        self.monitor_json("/varz").await
    }

    /// GET `path` (e.g. /jsz, /routez) from nats-server's monitor, as JSON.
    pub async fn monitor_json(&self, path: &str) -> Option<serde_json::Value> {
        probe::monitor_json(self.monitor()?, path).await
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
