//! nats-server's monitor as the app sees it: which address (our child's,
//! or an external server's), the JetStream cluster's meta leader, and
//! whether this node is current (catching up or not).

use std::net::SocketAddr;

use super::App;
use crate::cluster::{LocalHealth, StreamGroup};
use crate::config::Config;
use crate::probe;

/// How long nats-server's own /healthz may take to say whether this node
/// is current.
const LOCAL_HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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

impl App {
    /// nats-server's own full /healthz (with `details=true`, which 2.10+
    /// honour): whether every JetStream asset this node serves is current
    /// here. None when this node is not clustered JetStream (a single
    /// node has nothing to catch up from).
    pub async fn local_health(&self) -> Option<Result<LocalHealth, String>> {
        if !self.clustered_jetstream() {
            return None;
        }
        let monitor = self.monitor()?;
        Some(probe::local_health(monitor, LOCAL_HEALTH_TIMEOUT).await)
    }

    /// The RAFT groups of the declared streams among `infos`.
    pub fn declared_groups(
        &self,
        infos: &[async_nats::jetstream::stream::Info],
    ) -> Vec<StreamGroup> {
        let declared = self.config().streams();
        infos
            .iter()
            .filter(|i| declared.contains_key(&i.config.name))
            .map(|i| {
                crate::cluster::stream_group(
                    &i.config.name,
                    i.config.num_replicas,
                    i.state.last_sequence,
                    i.cluster.as_ref(),
                )
            })
            .collect()
    }

    /// The facts [`crate::health::catching_up`] reads, for STATUS=:
    /// nats-server's own /healthz, the declared streams' groups (the
    /// leaders' view of our replicas) and this node's name. Nothing when
    /// not clustered.
    pub async fn catch_up_facts(&self) -> crate::health::Facts {
        let mut f = crate::health::Facts {
            local_health: self.local_health().await,
            server_name: self.config().nats.server_name.clone(),
            ..crate::health::Facts::default()
        };
        if f.local_health.is_none() {
            return f;
        }
        if let Some(nats) = self.connected_nats() {
            let list = crate::jetstream::list(&nats.js);
            if let Ok(Ok(infos)) = tokio::time::timeout(LOCAL_HEALTH_TIMEOUT, list).await {
                f.stream_groups = Some(Ok(self.declared_groups(&infos)));
                f.local_last_seqs = self.local_last_seqs().await;
            }
        }
        f
    }

    /// Last sequence of each stream replica this node's nats-server holds
    /// (its monitor's /jsz?streams=true). Ask it after the stream infos:
    /// a replica that is current is then at or past the leader's figure.
    pub async fn local_last_seqs(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        let jsz = self.monitor_json("/jsz?streams=true").await?;
        Some(crate::cluster::local_last_seqs(&jsz))
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
