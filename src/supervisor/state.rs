//! The nats-server child's lifecycle as an explicit state machine (pure).
//!
//! The I/O shell (`supervisor::run`) turns the world into [`Event`]s and
//! carries out the [`Action`]s that [`Machine::handle`] returns; every
//! decision (when a hang is declared, when restarting stops being worth
//! it, when the backoff starts over) lives here and is unit-tested without
//! processes or clocks.

use std::time::{Duration, Instant};

use super::backoff::{Backoff, FailureWindow, Jitter};

/// Tunables, from the `supervisor:` config section.
#[derive(Debug, Clone)]
pub struct Policy {
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub health_failures: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub stable_after: Duration,
    pub max_failures: u32,
    pub failure_window: Duration,
    /// Stop (and restart) a healthy child in lame-duck mode, waiting this
    /// long for it to exit before the SIGINT; None: SIGTERM at once (a
    /// single node, whose clients have nowhere to move).
    pub lame_duck: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Nothing spawned yet.
    Idle,
    /// Spawned, not yet healthy.
    Starting { pid: u32, since: Instant },
    /// Healthy at least once since spawn.
    Running {
        pid: u32,
        since: Instant,
        probe_failures: u32,
    },
    /// We killed it (hang, start timeout) and wait for it to exit.
    Killing {
        pid: u32,
        reason: String,
        since: Instant,
    },
    /// Waiting before the next spawn.
    Backoff { until: Instant, reason: String },
    /// Asked to restart (a reload that nats-server cannot apply live);
    /// SIGTERM sent, the next child starts as soon as this one exits.
    Restarting { pid: u32, since: Instant },
    /// Asked to stop (or restart) a clustered child: SIGUSR2 sent; it
    /// closes its client port, hands JetStream leaderships over, tells
    /// its clients to move and exits by itself. Past `until` it is
    /// interrupted (SIGINT: nats-server ignores SIGTERM in lame-duck mode).
    Draining {
        pid: u32,
        until: Instant,
        then_restart: bool,
    },
    /// Asked to stop; SIGTERM (or SIGINT after a drain) sent.
    Stopping { pid: u32, since: Instant },
    /// Stopped on request.
    Stopped,
    /// Gave up after too many failures.
    Failed { reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start,
    Spawned {
        pid: u32,
    },
    /// The spawn (or its preparation) failed; the message says why.
    SpawnFailed {
        error: String,
    },
    Healthy,
    ProbeFailed {
        error: String,
    },
    /// The process exited; `status` describes how ("exit code 1", "signal 9").
    Exited {
        status: String,
    },
    /// A timer the machine asked for fired (start/stop/backoff deadlines).
    Tick,
    /// Restart with the (new) config: not a failure, no backoff.
    RestartRequested,
    StopRequested,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Spawn,
    /// SIGTERM: a graceful stop.
    Terminate {
        pid: u32,
    },
    /// SIGUSR2: lame-duck mode (`nats-server --signal ldm`).
    LameDuck {
        pid: u32,
    },
    /// SIGINT: stop now, also in lame-duck mode (which ignores SIGTERM).
    Interrupt {
        pid: u32,
    },
    /// SIGKILL the process group.
    Kill {
        pid: u32,
    },
    /// Ask for a `Tick` at this instant.
    WakeAt(Instant),
    /// The child became healthy (again): reconnect, reconcile streams.
    Announce {
        pid: u32,
    },
    /// Restarting is hopeless: the daemon exits 69 with this message.
    GiveUp {
        reason: String,
    },
    /// A clean stop finished.
    Done,
}

#[derive(Debug)]
pub struct Machine {
    policy: Policy,
    pub state: State,
    backoff: Backoff,
    failures: FailureWindow,
    jitter: Jitter,
    /// Restarts after failures since the daemon started.
    pub restarts: u64,
    /// Why the last child ended, for status and health.
    pub last_failure: Option<String>,
    /// Whether any child has been healthy since the daemon started. Until
    /// then a failure is most likely permanent (bad config, unwritable
    /// store), so the daemon gives up after a few tries instead of making
    /// systemd wait through the whole backoff ladder.
    ever_healthy: bool,
    initial_failures: u32,
    /// Set by the shell while the JetStream store's filesystem is full. A
    /// failure then is the disk's, not nats-server's: it is still restarted
    /// with backoff (clients can read, consumers drain) but it does not
    /// count towards giving up, so the daemon is still there, and comes
    /// back by itself, once room is made. (Before the first healthy child
    /// the few start attempts still apply: a daemon that never got going
    /// says so.)
    pub store_full: bool,
}

/// Failed start attempts before the first healthy child that mean give up.
pub const INITIAL_ATTEMPTS: u32 = 3;

impl Machine {
    pub fn new(policy: Policy) -> Self {
        Machine {
            backoff: Backoff::new(policy.backoff_initial, policy.backoff_max),
            failures: FailureWindow::new(policy.max_failures, policy.failure_window),
            jitter: Jitter::from_time(),
            policy,
            state: State::Idle,
            restarts: 0,
            last_failure: None,
            ever_healthy: false,
            initial_failures: 0,
            store_full: false,
        }
    }

    /// New tunables (a reload). The failure history is kept.
    pub fn set_policy(&mut self, policy: Policy) {
        self.backoff.initial = policy.backoff_initial;
        self.backoff.max = policy.backoff_max;
        self.failures.max = policy.max_failures;
        self.failures.window = policy.failure_window;
        self.policy = policy;
    }

    /// The pid of a live child, if any.
    pub fn pid(&self) -> Option<u32> {
        match self.state {
            State::Starting { pid, .. }
            | State::Running { pid, .. }
            | State::Killing { pid, .. }
            | State::Restarting { pid, .. }
            | State::Draining { pid, .. }
            | State::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        use Event as E;
        use State as S;
        let state = std::mem::replace(&mut self.state, S::Idle);
        let (next, actions) = match (state, event) {
            (S::Idle, E::Start) => (S::Idle, vec![Action::Spawn]),
            (S::Idle | S::Backoff { .. }, E::Spawned { pid }) => (
                S::Starting { pid, since: now },
                vec![Action::WakeAt(now + self.policy.start_timeout)],
            ),
            (S::Idle | S::Backoff { .. }, E::SpawnFailed { error }) => self.failure(error, now),
            (S::Starting { pid, .. }, E::Healthy) => {
                self.ever_healthy = true;
                (
                    S::Running {
                        pid,
                        since: now,
                        probe_failures: 0,
                    },
                    vec![Action::Announce { pid }],
                )
            }
            (S::Starting { pid, since }, E::Tick) if now >= since + self.policy.start_timeout => {
                let reason = format!(
                    "nats-server did not become healthy within {:?}",
                    self.policy.start_timeout
                );
                (
                    S::Killing {
                        pid,
                        reason,
                        since: now,
                    },
                    vec![Action::Kill { pid }],
                )
            }
            (S::Running { pid, since, .. }, E::Healthy) => (
                S::Running {
                    pid,
                    since,
                    probe_failures: 0,
                },
                vec![],
            ),
            (
                S::Running {
                    pid,
                    since,
                    probe_failures,
                },
                E::ProbeFailed { error },
            ) => {
                let failures = probe_failures + 1;
                if failures >= self.policy.health_failures {
                    let reason = format!("nats-server (pid {pid}) stopped answering: {failures} health probes failed in a row, last: {error}");
                    (
                        S::Killing {
                            pid,
                            reason,
                            since: now,
                        },
                        vec![Action::Kill { pid }],
                    )
                } else {
                    (
                        S::Running {
                            pid,
                            since,
                            probe_failures: failures,
                        },
                        vec![],
                    )
                }
            }
            (S::Running { since, .. }, E::Exited { status }) => {
                if now.duration_since(since) >= self.policy.stable_after {
                    self.backoff.reset();
                }
                self.failure(format!("nats-server exited unexpectedly ({status})"), now)
            }
            (S::Starting { .. }, E::Exited { status }) => self.failure(
                format!("nats-server exited during start-up ({status})"),
                now,
            ),
            (S::Killing { reason, .. }, E::Exited { .. }) => self.failure(reason, now),
            (S::Backoff { until, .. }, E::Tick) if now >= until => (S::Idle, vec![Action::Spawn]),
            // A healthy clustered child drains first, for a stop or a
            // restart alike.
            (S::Running { pid, .. }, ev @ (E::StopRequested | E::RestartRequested))
                if self.policy.lame_duck.is_some() =>
            {
                let until = now + self.policy.lame_duck.unwrap_or_default();
                let then_restart = ev == E::RestartRequested;
                (
                    S::Draining {
                        pid,
                        until,
                        then_restart,
                    },
                    vec![Action::LameDuck { pid }, Action::WakeAt(until)],
                )
            }
            (S::Draining { pid, until, .. }, E::StopRequested) => (
                S::Draining {
                    pid,
                    until,
                    then_restart: false,
                },
                vec![],
            ),
            (
                S::Draining {
                    pid,
                    until,
                    then_restart,
                },
                E::Tick,
            ) if now >= until => {
                let next = if then_restart {
                    S::Restarting { pid, since: now }
                } else {
                    S::Stopping { pid, since: now }
                };
                (
                    next,
                    vec![
                        Action::Interrupt { pid },
                        Action::WakeAt(now + self.policy.stop_timeout),
                    ],
                )
            }
            (S::Draining { then_restart, .. }, E::Exited { .. }) => {
                if then_restart {
                    (S::Idle, vec![Action::Spawn])
                } else {
                    (S::Stopped, vec![Action::Done])
                }
            }
            // Stopping: terminate a live child, or finish at once.
            (
                S::Starting { pid, .. } | S::Running { pid, .. } | S::Killing { pid, .. },
                E::StopRequested,
            ) => (
                S::Stopping { pid, since: now },
                vec![
                    Action::Terminate { pid },
                    Action::WakeAt(now + self.policy.stop_timeout),
                ],
            ),
            (S::Idle | S::Backoff { .. }, E::StopRequested) => (S::Stopped, vec![Action::Done]),
            (S::Restarting { pid, .. }, E::StopRequested) => (
                S::Stopping { pid, since: now },
                vec![Action::WakeAt(now + self.policy.stop_timeout)],
            ),
            // Restart on request (a reload): stop gracefully, start at once.
            (S::Starting { pid, .. } | S::Running { pid, .. }, E::RestartRequested) => (
                S::Restarting { pid, since: now },
                vec![
                    Action::Terminate { pid },
                    Action::WakeAt(now + self.policy.stop_timeout),
                ],
            ),
            (S::Idle | S::Backoff { .. }, E::RestartRequested) => (S::Idle, vec![Action::Spawn]),
            (S::Restarting { pid, since }, E::Tick) if now >= since + self.policy.stop_timeout => {
                (S::Restarting { pid, since }, vec![Action::Kill { pid }])
            }
            (S::Restarting { .. }, E::Exited { .. }) => (S::Idle, vec![Action::Spawn]),
            (S::Stopping { pid, since }, E::Tick) if now >= since + self.policy.stop_timeout => {
                (S::Stopping { pid, since }, vec![Action::Kill { pid }])
            }
            (S::Stopping { .. }, E::Exited { .. }) => (S::Stopped, vec![Action::Done]),
            // Anything else does not change the state (a probe result that
            // raced an exit, an early tick, ...).
            (state, _) => (state, vec![]),
        };
        self.state = next;
        actions
    }

    fn failure(&mut self, reason: String, now: Instant) -> (State, Vec<Action>) {
        self.last_failure = Some(reason.clone());
        let window_full = !self.store_full && self.failures.record(now);
        if !self.ever_healthy {
            self.initial_failures += 1;
            if self.initial_failures >= INITIAL_ATTEMPTS.min(self.policy.max_failures) {
                let reason = format!("giving up: nats-server could not be started ({} attempts); last failure: {reason}", self.initial_failures);
                return (
                    State::Failed {
                        reason: reason.clone(),
                    },
                    vec![Action::GiveUp { reason }],
                );
            }
        }
        if window_full {
            let reason = format!(
                "giving up: nats-server failed {} times within {:?}; last failure: {reason}",
                self.failures.count(),
                self.policy.failure_window
            );
            return (
                State::Failed {
                    reason: reason.clone(),
                },
                vec![Action::GiveUp { reason }],
            );
        }
        self.restarts += 1;
        let delay = self.backoff.next_delay(self.jitter.unit());
        let until = now + delay;
        (
            State::Backoff { until, reason },
            vec![Action::WakeAt(until)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            health_failures: 3,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            max_failures: 3,
            failure_window: Duration::from_secs(60),
            lame_duck: None,
        }
    }

    fn clustered(t: Instant) -> Machine {
        let mut m = Machine::new(Policy {
            lame_duck: Some(Duration::from_secs(40)),
            ..policy()
        });
        m.handle(Event::Start, t);
        m.handle(Event::Spawned { pid: 10 }, t);
        m.handle(Event::Healthy, t);
        m
    }

    #[test]
    fn a_clustered_child_drains_in_lame_duck_mode_and_stops_by_itself() {
        let t = Instant::now();
        let mut m = clustered(t);
        let until = t + Duration::from_secs(40);
        assert_eq!(
            m.handle(Event::StopRequested, t),
            vec![Action::LameDuck { pid: 10 }, Action::WakeAt(until)]
        );
        assert_eq!(m.pid(), Some(10));
        // No SIGTERM meanwhile, however many ticks.
        assert_eq!(m.handle(Event::Tick, t + Duration::from_secs(39)), vec![]);
        assert_eq!(m.handle(Event::StopRequested, t), vec![]);
        assert_eq!(
            m.handle(
                Event::Exited {
                    status: "exit code 0".into()
                },
                t + Duration::from_secs(12)
            ),
            vec![Action::Done]
        );
        assert_eq!(m.state, State::Stopped);
        assert_eq!(m.restarts, 0, "a drain is no failure");
    }

    #[test]
    fn a_drain_that_overstays_is_interrupted_then_killed() {
        let t = Instant::now();
        let mut m = clustered(t);
        m.handle(Event::StopRequested, t);
        let late = t + Duration::from_secs(40);
        // SIGINT, not SIGTERM: nats-server ignores SIGTERM in lame-duck mode.
        assert_eq!(
            m.handle(Event::Tick, late),
            vec![
                Action::Interrupt { pid: 10 },
                Action::WakeAt(late + Duration::from_secs(5))
            ]
        );
        assert_eq!(
            m.handle(Event::Tick, late + Duration::from_secs(5)),
            vec![Action::Kill { pid: 10 }]
        );
    }

    #[test]
    fn a_clustered_restart_drains_then_spawns_and_a_stop_meanwhile_wins() {
        let t = Instant::now();
        let mut m = clustered(t);
        assert_eq!(
            m.handle(Event::RestartRequested, t)[0],
            Action::LameDuck { pid: 10 }
        );
        let exited = Event::Exited {
            status: "exit code 0".into(),
        };
        assert_eq!(m.handle(exited.clone(), t), vec![Action::Spawn]);
        m.handle(Event::Spawned { pid: 11 }, t);
        m.handle(Event::Healthy, t);
        m.handle(Event::RestartRequested, t);
        m.handle(Event::StopRequested, t);
        assert_eq!(m.handle(exited, t), vec![Action::Done]);
    }

    #[test]
    fn a_single_node_or_an_unhealthy_child_gets_sigterm_at_once() {
        let t = Instant::now();
        let mut m = started(t);
        assert_eq!(
            m.handle(Event::StopRequested, t)[0],
            Action::Terminate { pid: 10 }
        );
        // Clustered but still starting: lame-duck mode would do nothing
        // (nats-server ignores SIGUSR2 before it listens).
        let mut m = Machine::new(Policy {
            lame_duck: Some(Duration::from_secs(40)),
            ..policy()
        });
        m.handle(Event::Start, t);
        m.handle(Event::Spawned { pid: 12 }, t);
        assert_eq!(
            m.handle(Event::StopRequested, t)[0],
            Action::Terminate { pid: 12 }
        );
    }

    fn started(t: Instant) -> Machine {
        let mut m = Machine::new(policy());
        assert_eq!(m.handle(Event::Start, t), vec![Action::Spawn]);
        m.handle(Event::Spawned { pid: 10 }, t);
        assert_eq!(
            m.handle(Event::Healthy, t),
            vec![Action::Announce { pid: 10 }]
        );
        m
    }

    fn backoff_until(m: &Machine) -> Instant {
        match m.state {
            State::Backoff { until, .. } => until,
            ref s => panic!("expected backoff, got {s:?}"),
        }
    }

    #[test]
    fn crash_restarts_after_about_100ms() {
        let t = Instant::now();
        let mut m = started(t);
        let a = m.handle(
            Event::Exited {
                status: "signal 9".into(),
            },
            t,
        );
        let until = backoff_until(&m);
        assert_eq!(a, vec![Action::WakeAt(until)]);
        let d = until - t;
        assert!(
            d >= Duration::from_millis(80) && d <= Duration::from_millis(120),
            "{d:?}"
        );
        assert!(m.last_failure.as_deref().unwrap().contains("signal 9"));
        assert_eq!(m.handle(Event::Tick, t), vec![], "early tick is ignored");
        assert_eq!(m.handle(Event::Tick, until), vec![Action::Spawn]);
        m.handle(Event::Spawned { pid: 11 }, until);
        assert_eq!(
            m.handle(Event::Healthy, until),
            vec![Action::Announce { pid: 11 }]
        );
        assert_eq!(m.restarts, 1);
    }

    #[test]
    fn failures_while_the_store_is_full_never_give_up_but_still_back_off() {
        let t = Instant::now();
        let mut m = started(t);
        m.store_full = true;
        let mut delays = Vec::new();
        for i in 0..10u32 {
            let now = t + Duration::from_secs(i.into());
            m.handle(
                Event::Exited {
                    status: "signal 9".into(),
                },
                now,
            );
            let until = backoff_until(&m);
            delays.push(until - now);
            assert_eq!(m.handle(Event::Tick, until), vec![Action::Spawn]);
            m.handle(Event::Spawned { pid: 20 + i }, until);
            m.handle(Event::Healthy, until);
        }
        assert!(delays[9] > delays[0] * 4, "{delays:?}");
        assert_eq!(m.restarts, 10);
        // Room again: failures count as before (max_failures 3).
        m.store_full = false;
        let now = t + Duration::from_secs(20);
        for _ in 0..3 {
            m.handle(
                Event::Exited {
                    status: "signal 9".into(),
                },
                now,
            );
            let until = backoff_until(&m);
            m.handle(Event::Tick, until);
            m.handle(Event::Spawned { pid: 99 }, until);
            m.handle(Event::Healthy, until);
        }
        let a = m.handle(
            Event::Exited {
                status: "signal 9".into(),
            },
            now,
        );
        assert!(matches!(a[..], [Action::GiveUp { .. }]), "{a:?}");
    }

    #[test]
    fn hang_is_declared_after_n_failed_probes_in_a_row() {
        let t = Instant::now();
        let mut m = started(t);
        let fail = || Event::ProbeFailed {
            error: "timeout".into(),
        };
        assert_eq!(m.handle(fail(), t), vec![]);
        assert_eq!(m.handle(fail(), t), vec![]);
        assert_eq!(
            m.handle(Event::Healthy, t),
            vec![],
            "a success resets the count"
        );
        assert_eq!(m.handle(fail(), t), vec![]);
        assert_eq!(m.handle(fail(), t), vec![]);
        assert_eq!(m.handle(fail(), t), vec![Action::Kill { pid: 10 }]);
        m.handle(
            Event::Exited {
                status: "signal 9".into(),
            },
            t,
        );
        backoff_until(&m);
        assert!(m
            .last_failure
            .as_deref()
            .unwrap()
            .contains("stopped answering"));
    }

    #[test]
    fn too_many_failures_in_the_window_gives_up() {
        let t = Instant::now();
        let mut m = started(t);
        for i in 0..3 {
            m.handle(
                Event::Exited {
                    status: format!("exit code {i}"),
                },
                t,
            );
            let until = backoff_until(&m);
            m.handle(Event::Tick, until);
            m.handle(
                Event::SpawnFailed {
                    error: "exec failed".into(),
                },
                until,
            );
            if matches!(m.state, State::Failed { .. }) {
                break;
            }
            let until = backoff_until(&m);
            m.handle(Event::Tick, until);
            m.handle(Event::Spawned { pid: 20 + i }, until);
        }
        match &m.state {
            State::Failed { reason } => assert!(
                reason.contains("giving up") && reason.contains("exec failed"),
                "{reason}"
            ),
            s => panic!("expected failed, got {s:?}"),
        }
    }

    #[test]
    fn a_first_start_that_keeps_failing_gives_up_after_a_few_tries() {
        let t = Instant::now();
        let mut m = Machine::new(policy());
        m.handle(Event::Start, t);
        let mut now = t;
        for i in 1..=INITIAL_ATTEMPTS {
            m.handle(Event::Spawned { pid: i }, now);
            let a = m.handle(
                Event::Exited {
                    status: "exit code 1".into(),
                },
                now,
            );
            if i < INITIAL_ATTEMPTS {
                now = backoff_until(&m);
                assert_eq!(m.handle(Event::Tick, now), vec![Action::Spawn]);
            } else {
                assert!(
                    matches!(&a[..], [Action::GiveUp { reason }] if reason.contains("could not be started (3 attempts)") && reason.contains("exit code 1")),
                    "{a:?}"
                );
            }
        }
    }

    #[test]
    fn stable_uptime_resets_the_backoff() {
        let t = Instant::now();
        let mut m = started(t);
        // Three quick failures grow the delay...
        let mut now = t;
        for _ in 0..2 {
            m.handle(Event::Exited { status: "x".into() }, now);
            now = backoff_until(&m);
            m.handle(Event::Tick, now);
            m.handle(Event::Spawned { pid: 1 }, now);
            m.handle(Event::Healthy, now);
        }
        // ...then a long stable run: the next delay is the initial one again.
        now += Duration::from_secs(61);
        m.handle(Event::Exited { status: "x".into() }, now);
        let d = backoff_until(&m) - now;
        assert!(d <= Duration::from_millis(120), "{d:?}");
    }

    #[test]
    fn start_timeout_kills_and_counts_as_failure() {
        let t = Instant::now();
        let mut m = Machine::new(policy());
        m.handle(Event::Start, t);
        assert_eq!(
            m.handle(Event::Spawned { pid: 5 }, t),
            vec![Action::WakeAt(t + Duration::from_secs(10))]
        );
        assert_eq!(
            m.handle(
                Event::ProbeFailed {
                    error: "refused".into()
                },
                t
            ),
            vec![],
            "start-up probes do not count"
        );
        assert_eq!(
            m.handle(Event::Tick, t + Duration::from_secs(10)),
            vec![Action::Kill { pid: 5 }]
        );
        m.handle(
            Event::Exited {
                status: "signal 9".into(),
            },
            t + Duration::from_secs(10),
        );
        assert!(m
            .last_failure
            .as_deref()
            .unwrap()
            .contains("did not become healthy"));
    }

    #[test]
    fn stop_terminates_then_kills_after_the_timeout() {
        let t = Instant::now();
        let mut m = started(t);
        assert_eq!(
            m.handle(Event::StopRequested, t),
            vec![
                Action::Terminate { pid: 10 },
                Action::WakeAt(t + Duration::from_secs(5))
            ]
        );
        assert_eq!(
            m.handle(Event::Tick, t + Duration::from_secs(5)),
            vec![Action::Kill { pid: 10 }]
        );
        assert_eq!(
            m.handle(
                Event::Exited {
                    status: "signal 9".into()
                },
                t
            ),
            vec![Action::Done]
        );
        assert_eq!(m.state, State::Stopped);
        assert_eq!(m.restarts, 0, "a requested stop is not a failure");
    }

    #[test]
    fn a_requested_restart_is_graceful_immediate_and_not_a_failure() {
        let t = Instant::now();
        let mut m = started(t);
        assert_eq!(
            m.handle(Event::RestartRequested, t),
            vec![
                Action::Terminate { pid: 10 },
                Action::WakeAt(t + Duration::from_secs(5))
            ]
        );
        assert_eq!(
            m.handle(
                Event::Exited {
                    status: "exit code 0".into()
                },
                t
            ),
            vec![Action::Spawn]
        );
        m.handle(Event::Spawned { pid: 11 }, t);
        assert_eq!(
            m.handle(Event::Healthy, t),
            vec![Action::Announce { pid: 11 }]
        );
        assert_eq!((m.restarts, m.last_failure.clone()), (0, None));
    }

    #[test]
    fn a_requested_restart_kills_a_child_that_will_not_stop() {
        let t = Instant::now();
        let mut m = started(t);
        m.handle(Event::RestartRequested, t);
        assert_eq!(
            m.handle(Event::Tick, t + Duration::from_secs(5)),
            vec![Action::Kill { pid: 10 }]
        );
        assert_eq!(
            m.handle(
                Event::Exited {
                    status: "signal 9".into()
                },
                t
            ),
            vec![Action::Spawn]
        );
    }

    #[test]
    fn a_requested_restart_during_backoff_starts_now() {
        let t = Instant::now();
        let mut m = started(t);
        m.handle(Event::Exited { status: "x".into() }, t);
        assert_eq!(m.handle(Event::RestartRequested, t), vec![Action::Spawn]);
    }

    #[test]
    fn stop_during_backoff_finishes_at_once() {
        let t = Instant::now();
        let mut m = started(t);
        m.handle(Event::Exited { status: "x".into() }, t);
        assert_eq!(m.handle(Event::StopRequested, t), vec![Action::Done]);
    }
}
