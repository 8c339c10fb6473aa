//! One health probe of the child, run as its own task: the supervisor's
//! loop also waits for commands, exits, the watchdog and store-failure
//! notices, and a probe future dropped whenever one of those came first
//! would start over each time: with store failures logged every few
//! milliseconds a probe never finished (and nats-server got a /healthz
//! request per notice).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::natsconf::Credentials;
use crate::probe;

/// How long after a running child's /healthz answered "unhealthy" it is
/// asked again before that counts as a failed probe. Single-server
/// nats-server lists its store's stream folders for /healthz, and a stream
/// being created has its folder a few milliseconds before it is registered:
/// /healthz answers 503 "JetStream stream ... could not be recovered" in
/// between. Counting that would mark the node unhealthy (503 at /health)
/// for a whole probe period on every stream created. A real fault
/// still answers 503 the second time; a child that does not answer at all
/// gets no second look (its timeout already waited).
const HEALTHZ_SECOND_LOOK: Duration = Duration::from_millis(100);

/// What a probe needs, owned (see the module's doc).
#[derive(Clone)]
pub(super) struct Prober {
    pub monitor: SocketAddr,
    pub client: SocketAddr,
    pub config: Arc<Config>,
    pub internal: Option<Credentials>,
}

impl Prober {
    /// Waits until `at`, then probes: readiness (healthz + a NATS round
    /// trip) while starting, liveness (healthz) while running.
    pub async fn probe_at(&self, at: Instant, starting: bool) -> Result<(), String> {
        tokio::time::sleep_until(at.into()).await;
        let timeout = self.config.supervisor.health_timeout.get();
        let clustered = self.config.cluster_enabled();
        match probe::healthz(self.monitor, timeout, clustered).await {
            Ok(()) => {}
            Err(first @ probe::HealthzFailure::Answered { .. }) if !starting => {
                tokio::time::sleep(HEALTHZ_SECOND_LOOK).await;
                probe::healthz(self.monitor, timeout, clustered)
                    .await
                    .map_err(|again| {
                        tracing::debug!(%first, "/healthz failed twice, {HEALTHZ_SECOND_LOOK:?} apart");
                        again.to_string()
                    })?;
            }
            Err(e) => return Err(e.to_string()),
        }
        if !starting && self.config.nats.jetstream_enabled {
            // A little more room than /healthz: /jsz takes JetStream's
            // lock, which a busy server holds a moment longer.
            if let Err(e) = probe::jsz(self.monitor, timeout.max(Duration::from_secs(1))).await {
                if let Some(full) = probe::store_space_problem(&self.config.data_dir()) {
                    return Err(format!("{e} ({full})"));
                }
                // A node catching up (a big snapshot or backlog from its
                // peers) may answer /jsz late; killing it would only start
                // the catch-up over (nats-server issues 6964, 5976). When
                // its own /healthz says it is catching up, it is alive.
                match self.catching_up(timeout).await {
                    Some(what) => {
                        tracing::info!(
                            "nats-server is slow to answer /jsz ({e}) while catching up ({what}); not counted as a failed probe"
                        );
                    }
                    None => return Err(e),
                }
            }
        }
        if starting && self.config.nats.tls.is_none() {
            let creds = self.internal.as_ref();
            probe::nats_ping(
                self.client,
                creds.map(|c| (c.user.as_str(), c.password.as_str())),
                timeout,
            )
            .await?;
        }
        Ok(())
    }

    /// What is catching up, when nats-server's own full /healthz answers
    /// within `timeout` that this node is catching up and nothing else is
    /// wrong; None otherwise.
    async fn catching_up(&self, timeout: Duration) -> Option<String> {
        if !self.config.cluster_enabled() {
            return None;
        }
        let health = probe::local_health(self.monitor, timeout).await.ok()?;
        let c = crate::cluster::catch_up(&health, &[], None, None);
        (c.other.is_empty() && !c.lagging.is_empty()).then(|| {
            c.lagging
                .iter()
                .map(|l| l.description.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
    }
}

/// The probe in flight, if any. Dropping it (or [`InFlight::cancel`])
/// aborts the probe: its answer would be about a child or config that is
/// gone.
#[derive(Default)]
pub(super) struct InFlight(Option<tokio::task::JoinHandle<Result<(), String>>>);

impl InFlight {
    /// Starts a probe at `at` unless one is already under way.
    pub fn ensure(&mut self, prober: impl FnOnce() -> Prober, at: Instant, starting: bool) {
        if self.0.is_none() {
            let p = prober();
            self.0 = Some(tokio::spawn(async move { p.probe_at(at, starting).await }));
        }
    }

    pub fn cancel(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }

    /// The probe's result; pending forever when none is under way.
    /// Cancel-safe: dropping this future leaves the probe running.
    pub async fn done(&mut self) -> Result<(), String> {
        let Some(task) = self.0.as_mut() else {
            return std::future::pending().await;
        };
        let result = task
            .await
            .unwrap_or_else(|e| Err(format!("health probe task failed: {e}")));
        self.0 = None;
        result
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cancel();
    }
}
