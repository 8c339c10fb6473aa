//! Old config vs new config -> what a reload must do (pure).
//!
//! nats-server reloads most settings on SIGHUP without dropping clients;
//! a few need a restart. Which is which was measured on Debian's 2.9.10
//! and a current release (see DESIGN.md's list): both refuse `port`,
//! `host`, `http`, `server_name`, `max_subscriptions`, the store directory
//! and cluster listen changes; 2.9.10 also refuses any change of the
//! JetStream memory/storage limits, current releases only lowering them.
//! The plan marks a raise as hot; the supervisor confirms every hot reload
//! through /varz `config_load_time` and restarts the child when the
//! running server refused it, so the version difference costs a restart
//! on 2.9.10, never a silently ignored setting.

use std::fmt::{Debug, Display};

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{ApiConfig, Config, StreamConfig, SupervisorConfig};

/// What nats-server needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NatsAction {
    /// The rendered config does not change.
    Nothing,
    /// Rewrite the config and SIGHUP: clients stay connected.
    Signal,
    /// Rewrite the config and restart the child.
    Restart,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    pub nats: NatsAction,
    /// One line per changed key: `nats.max_payload: 1MB -> 2MB (hot)`.
    pub changes: Vec<String>,
    /// HTTP host or port changed: bind the new address, then drop the old.
    pub rebind_http: bool,
    /// Declared streams (or whether to manage them) changed.
    pub reconcile_streams: bool,
    /// Where the daemon's own client connects changed.
    pub reconnect_client: bool,
    /// Set when the change cannot be applied by a reload at all; the old
    /// config stays in force.
    pub refused: Option<String>,
}

impl ReloadPlan {
    pub fn is_noop(&self) -> bool {
        self.changes.is_empty()
    }
}

struct Diff<'a> {
    plan: &'a mut ReloadPlan,
}

impl Diff<'_> {
    /// Records `key` if it changed, as its Debug form; raises the nats
    /// action to `action`.
    fn field<T: PartialEq + Debug>(
        &mut self,
        key: &str,
        old: &T,
        new: &T,
        action: NatsAction,
    ) -> bool {
        if old == new {
            return false;
        }
        self.record(key, format!("{old:?}"), format!("{new:?}"), action);
        true
    }

    /// Like `field`, as its Display form (`1MB`, not `Size(1048576)`);
    /// values that display alike count as unchanged.
    fn shown<T: PartialEq + Display>(
        &mut self,
        key: &str,
        old: &T,
        new: &T,
        action: NatsAction,
    ) -> bool {
        if old == new {
            return false;
        }
        let (old, new) = (old.to_string(), new.to_string());
        if old == new {
            return false;
        }
        self.record(key, old, new, action);
        true
    }

    fn record(&mut self, key: &str, old: String, new: String, action: NatsAction) {
        let how = match action {
            NatsAction::Nothing => "",
            NatsAction::Signal => " (hot)",
            NatsAction::Restart => " (restarts nats-server)",
        };
        self.plan
            .changes
            .push(format!("{key}: {old} -> {new}{how}"));
        self.plan.nats = self.plan.nats.max(action);
    }
}

/// One line per changed field of a flat struct of values that apply in
/// place (`supervisor.health_failures: 3 -> 5`), in the order listed,
/// which is the struct's. The pattern names every field of the struct,
/// compared or `except`ed (compared elsewhere), so a field added to it but
/// not here does not compile instead of going unreported.
macro_rules! each_field {
    ($d:expr, $key:literal, $old:expr, $new:expr,
     $ty:ident { $($f:ident,)* } $(except { $($skip:ident,)* })?) => {{
        let (old, new): (&$ty, &$ty) = ($old, $new);
        let $ty { $($f: _,)* $($($skip: _,)*)? } = old;
        $( $d.field(concat!($key, ".", stringify!($f)), &old.$f, &new.$f, NatsAction::Nothing); )*
    }};
}

/// Users are hot. One line per user added, removed or changed, naming
/// what changed but never a password.
fn users(d: &mut Diff, old: &[crate::config::UserConfig], new: &[crate::config::UserConfig]) {
    if old == new {
        return;
    }
    let find = |list: &[crate::config::UserConfig], name: &str| {
        list.iter().find(|u| u.user == name).cloned()
    };
    let mut lines = Vec::new();
    for u in old {
        if find(new, &u.user).is_none() {
            lines.push(format!("nats.users: {} removed (hot)", u.user));
        }
    }
    for u in new {
        match find(old, &u.user) {
            None => lines.push(format!("nats.users: {} added (hot)", u.user)),
            Some(was) if was != *u => {
                let mut what = Vec::new();
                if (&was.password, &was.password_file, &was.password_env)
                    != (&u.password, &u.password_file, &u.password_env)
                {
                    what.push("password");
                }
                if was.permissions != u.permissions {
                    what.push("permissions");
                }
                lines.push(format!(
                    "nats.users.{}: {} changed (hot)",
                    u.user,
                    what.join(" and ")
                ));
            }
            Some(_) => {}
        }
    }
    if lines.is_empty() {
        lines.push("nats.users: order changed (hot)".into());
    }
    d.plan.changes.extend(lines);
    d.plan.nats = d.plan.nats.max(NatsAction::Signal);
}

/// The declared streams as reconciliation sees them: without the alarm keys.
fn without_alarms(c: &Config) -> BTreeMap<String, StreamConfig> {
    let mut all = c.streams();
    for s in all.values_mut() {
        s.alert_if_silent_for = None;
        s.health_fails_on_alarm = false;
        for k in s.consumers.values_mut() {
            k.alert_if_pending_over = None;
            k.health_fails_on_alarm = false;
        }
    }
    all
}

/// One line per changed alarm key (`nats.streams.MD.alert_if_silent_for:
/// 30s -> 1m`), for streams and consumers old or new.
fn alarms(d: &mut Diff, old: &Config, new: &Config) {
    fn shown<T: Display>(v: Option<T>) -> String {
        v.map_or_else(|| "none".to_string(), |v| v.to_string())
    }
    let (old, new) = (old.streams(), new.streams());
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let (o, n) = (old.get(name), new.get(name));
        let key = format!("nats.streams.{name}");
        let silent = |s: Option<&StreamConfig>| s.and_then(|s| s.alert_if_silent_for);
        if silent(o) != silent(n) {
            let (a, b) = (shown(silent(o)), shown(silent(n)));
            d.record(
                &format!("{key}.alert_if_silent_for"),
                a,
                b,
                NatsAction::Nothing,
            );
        }
        let fails = |s: Option<&StreamConfig>| s.is_some_and(|s| s.health_fails_on_alarm);
        d.field(
            &format!("{key}.health_fails_on_alarm"),
            &fails(o),
            &fails(n),
            NatsAction::Nothing,
        );
        let consumers: BTreeSet<&String> = o
            .iter()
            .chain(n.iter())
            .flat_map(|s| s.consumers.keys())
            .collect();
        for c in consumers {
            let k = |s: Option<&StreamConfig>| s.and_then(|s| s.consumers.get(c)).cloned();
            let key = format!("{key}.consumers.{c}");
            let over = |s| k(s).and_then(|k| k.alert_if_pending_over);
            if over(o) != over(n) {
                let (a, b) = (shown(over(o)), shown(over(n)));
                d.record(
                    &format!("{key}.alert_if_pending_over"),
                    a,
                    b,
                    NatsAction::Nothing,
                );
            }
            let fails = |s| k(s).is_some_and(|k| k.health_fails_on_alarm);
            d.field(
                &format!("{key}.health_fails_on_alarm"),
                &fails(o),
                &fails(n),
                NatsAction::Nothing,
            );
        }
    }
}

pub fn plan(old: &Config, new: &Config) -> ReloadPlan {
    use NatsAction::{Nothing, Restart, Signal};
    let mut plan = ReloadPlan {
        nats: Nothing,
        changes: Vec::new(),
        rebind_http: false,
        reconcile_streams: false,
        reconnect_client: false,
        refused: None,
    };
    let mut d = Diff { plan: &mut plan };

    if d.field(
        "auto_start_nats",
        &old.auto_start_nats,
        &new.auto_start_nats,
        Nothing,
    ) {
        d.plan.refused = Some("auto_start_nats cannot change by reload (it decides whether this daemon owns nats-server): restart the service".into());
    }
    let http = d.field("port", &old.port, &new.port, Nothing)
        | d.field("host", &old.host, &new.host, Nothing);
    d.plan.rebind_http = http;
    d.plan.reconcile_streams |= d.field(
        "auto_create_streams",
        &old.auto_create_streams,
        &new.auto_create_streams,
        Nothing,
    );
    each_field!(
        d,
        "supervisor",
        &old.supervisor,
        &new.supervisor,
        SupervisorConfig {
            start_timeout,
            stop_timeout,
            health_interval,
            health_timeout,
            health_failures,
            backoff_initial,
            backoff_max,
            stable_after,
            max_failures,
            failure_window,
            stream_resync_interval,
        }
    );
    // api.tls is a nested struct: one line of its own, after the others.
    each_field!(
        d,
        "api",
        &old.api,
        &new.api,
        ApiConfig {
            publish_timeout,
            header_read_timeout,
            max_connections,
            drain_timeout,
            batch_max_entries,
            batch_max_bytes,
            sse_heartbeat,
            sse_buffer,
            sse_max_clients,
            fetch_max_batch,
            fetch_max_wait,
            fetch_max_bytes,
            tokens_file,
            tokens_for_reads,
        } except {
            tls,
        }
    );
    d.field("api.tls", &old.api.tls, &new.api.tls, Nothing);

    let (o, n) = (&old.nats, &new.nats);
    // Read by every publish as it comes: nothing else to do.
    d.field("nats.durability", &o.durability, &n.durability, Nothing);
    if new.auto_start_nats {
        // Not among what nats-server reloads in place (its store is set up
        // at start).
        d.field(
            "nats.sync_interval",
            &o.sync_interval,
            &n.sync_interval,
            Restart,
        );
        let ports = d.field("nats.nats_port", &o.nats_port, &n.nats_port, Restart)
            | d.field("nats.host", &o.host, &n.host, Restart);
        d.plan.reconnect_client |= ports;
        d.field("nats.http_port", &o.http_port, &n.http_port, Restart);
        d.field("nats.data_dir", &o.data_dir, &n.data_dir, Restart);
        d.field("nats.server_bin", &o.server_bin, &n.server_bin, Restart);
        d.field("nats.server_name", &o.server_name, &n.server_name, Restart);
        d.field(
            "nats.max_subscriptions",
            &o.max_subscriptions,
            &n.max_subscriptions,
            Restart,
        );
        d.field(
            "nats.jetstream_enabled",
            &o.jetstream_enabled,
            &n.jetstream_enabled,
            Restart,
        );
        for (key, a, b) in [
            (
                "nats.jetstream_max_memory",
                o.jetstream_max_memory,
                n.jetstream_max_memory,
            ),
            (
                "nats.jetstream_max_storage",
                o.jetstream_max_storage,
                n.jetstream_max_storage,
            ),
        ] {
            d.shown(key, &a, &b, if b > a { Signal } else { Restart });
        }
        d.field(
            "nats.jetstream_max_streams",
            &o.jetstream_max_streams,
            &n.jetstream_max_streams,
            Signal,
        );
        d.field(
            "nats.jetstream_max_consumers",
            &o.jetstream_max_consumers,
            &n.jetstream_max_consumers,
            Signal,
        );
        d.field(
            "nats.max_connections",
            &o.max_connections,
            &n.max_connections,
            Signal,
        );
        d.shown("nats.max_payload", &o.max_payload, &n.max_payload, Signal);
        d.shown(
            "nats.write_deadline",
            &o.write_deadline,
            &n.write_deadline,
            Signal,
        );
        d.shown(
            "nats.ping_interval",
            &o.ping_interval,
            &n.ping_interval,
            Signal,
        );
        d.field(
            "nats.max_pings_out",
            &o.max_pings_out,
            &n.max_pings_out,
            Signal,
        );
        // The cluster block exists only with routes; adding or removing it,
        // or moving its listener, is a restart; routes alone are hot.
        let (oc, nc) = (old.cluster_listen(), new.cluster_listen());
        let layout = oc.is_some() != nc.is_some()
            || oc != nc
            || (nc.is_some() && o.cluster_name != n.cluster_name);
        if layout {
            d.field(
                "nats.cluster",
                &(oc, &o.cluster_name),
                &(nc, &n.cluster_name),
                Restart,
            );
        }
        d.field(
            "nats.cluster_routes",
            &o.cluster_routes,
            &n.cluster_routes,
            if layout { Restart } else { Signal },
        );
        // Rendered only for a clustered node; nats-server cannot reload
        // them (its diffOptions refuses unknown fields, which would fail
        // the whole SIGHUP), so a new value needs a restart, which drains
        // with the timings the running server was started with.
        let lame_duck = if new.cluster_enabled() {
            Restart
        } else {
            Nothing
        };
        d.shown(
            "nats.lame_duck_grace_period",
            &o.lame_duck_grace_period,
            &n.lame_duck_grace_period,
            lame_duck,
        );
        d.shown(
            "nats.lame_duck_duration",
            &o.lame_duck_duration,
            &n.lame_duck_duration,
            lame_duck,
        );
        users(&mut d, &o.users, &n.users);
        if o.internal_password_file != n.internal_password_file {
            d.plan
                .changes
                .push("nats.internal_password_file changed".into());
            d.plan.refused = Some("nats.internal_password_file cannot change by reload (nats-server and the daemon's own login both use it): restart the service".into());
        }
        // The daemon's own connection uses the same CA and, with verify,
        // presents the same certificate: it reconnects with the new ones.
        d.plan.reconnect_client |= d.field("nats.tls", &o.tls, &n.tls, Signal);
        d.field("nats.cluster_tls", &o.cluster_tls, &n.cluster_tls, Signal);
        // Certificates are re-read on SIGHUP: `systemctl reload` must
        // rotate them even when the config text is the same.
        if n.tls.is_some() || (n.cluster_tls.is_some() && new.cluster_enabled()) {
            d.plan.nats = d.plan.nats.max(Signal);
        }
    } else {
        d.plan.reconnect_client |= d.field("nats.nats_url", &o.nats_url, &n.nats_url, Nothing)
            | d.field("nats.client_urls", &o.client_urls, &n.client_urls, Nothing);
    }
    // The alarm keys are the daemon's own, read by its monitor at every
    // check: applied live, one line each, and nothing to reconcile.
    d.plan.reconcile_streams |= d.field(
        "nats.streams",
        &without_alarms(old),
        &without_alarms(new),
        Nothing,
    );
    alarms(&mut d, old, new);
    // Hot in nats-server (its account's mappings are replaced wholesale);
    // the daemon rebuilds its subject -> stream table with the streams.
    let mappings = if new.auto_start_nats { Signal } else { Nothing };
    d.plan.reconcile_streams |= d.field(
        "nats.mappings",
        &old.nats.mappings,
        &new.nats.mappings,
        mappings,
    );
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_str, Format};

    fn cfg(yaml: &str) -> Config {
        let mut c = parse_str(yaml, Format::Yaml).unwrap().0;
        c.nats.server_name = Some("n".into());
        c
    }

    fn p(a: &str, b: &str) -> ReloadPlan {
        plan(&cfg(a), &cfg(b))
    }

    #[test]
    fn api_security_settings_apply_in_place_one_line_each() {
        let a = cfg("port: 1\n");
        let mut b = a.clone();
        b.api.tokens_for_reads = true;
        b.api.tokens_file = Some("/etc/t".into());
        b.api.tls = Some(crate::config::ApiTlsConfig {
            cert_file: "/c.pem".into(),
            key_file: "/k.pem".into(),
            client_ca_file: None,
        });
        let r = plan(&a, &b);
        assert_eq!(r.nats, NatsAction::Nothing);
        assert!(!r.rebind_http && !r.reconnect_client && r.refused.is_none());
        assert_eq!(r.changes.len(), 3, "{:?}", r.changes);
        assert!(r
            .changes
            .contains(&"api.tokens_for_reads: false -> true".to_string()));
        assert!(
            r.changes
                .contains(&"api.tokens_file: None -> Some(\"/etc/t\")".to_string()),
            "{:?}",
            r.changes
        );
        assert!(r
            .changes
            .iter()
            .any(|c| c.starts_with("api.tls: None -> Some(")));
    }

    #[test]
    fn durability_applies_in_place_and_sync_interval_restarts_nats_server() {
        let r = p("port: 1\n", "port: 1\nnats: {durability: lazy}\n");
        assert_eq!(r.nats, NatsAction::Nothing);
        assert_eq!(r.changes, ["nats.durability: Sync -> Lazy"]);
        let r = p("port: 1\n", "port: 1\nnats: {sync_interval: always}\n");
        assert_eq!(r.nats, NatsAction::Restart);
        assert_eq!(
            r.changes,
            ["nats.sync_interval: None -> Some(Always) (restarts nats-server)"]
        );
    }

    #[test]
    fn user_changes_are_hot_and_never_show_a_password() {
        let a = "nats: {users: [{user: a, password: old-secret}, {user: b, password: x}]}";
        let b = "nats: {users: [{user: a, password: new-secret, permissions: {publish: [\"m.>\"]}}, {user: c, password: y}]}";
        let r = p(a, b);
        assert_eq!(r.nats, NatsAction::Signal);
        assert_eq!(
            r.changes,
            [
                "nats.users: b removed (hot)",
                "nats.users.a: password and permissions changed (hot)",
                "nats.users: c added (hot)",
            ]
        );
        let all = format!("{r:?}");
        assert!(!all.contains("secret"), "{all}");
        let u = &cfg(a).nats.users[0];
        assert!(!format!("{u:?}").contains("old-secret"));
    }

    #[test]
    fn same_config_is_a_noop() {
        let r = p("port: 1\n", "port: 1\n");
        assert!(r.is_noop());
        assert_eq!(r.nats, NatsAction::Nothing);
    }

    #[test]
    fn mappings_are_hot_and_refresh_the_stream_table() {
        let r = p("nats: {}", "nats: {mappings: {\"a.*\": \"b.$1\"}}");
        assert_eq!(r.nats, NatsAction::Signal, "{r:?}");
        assert!(r.reconcile_streams && !r.rebind_http && !r.reconnect_client);
        let r = p(
            "auto_start_nats: false\nnats: {}",
            "auto_start_nats: false\nnats: {mappings: {\"a.*\": \"b.$1\"}}",
        );
        assert_eq!(r.nats, NatsAction::Nothing);
        assert!(r.reconcile_streams);
    }

    #[test]
    fn hot_settings_signal_the_child() {
        for (a, b) in [
            ("nats: {max_payload: 1MB}", "nats: {max_payload: 2MB}"),
            ("nats: {max_connections: 10}", "nats: {max_connections: 20}"),
            ("nats: {write_deadline: 2s}", "nats: {write_deadline: 5s}"),
            ("nats: {ping_interval: 2m}", "nats: {ping_interval: 30s}"),
            ("nats: {max_pings_out: 2}", "nats: {max_pings_out: 3}"),
            (
                "nats: {jetstream_max_memory: 1GB}",
                "nats: {jetstream_max_memory: 2GB}",
            ),
            (
                "nats: {jetstream_max_streams: 100}",
                "nats: {jetstream_max_streams: 50}",
            ),
            ("nats: {}", "nats: {users: [{user: a, password: b}]}"),
        ] {
            let r = p(a, b);
            assert_eq!(r.nats, NatsAction::Signal, "{a} -> {b}: {r:?}");
            assert!(!r.rebind_http && !r.reconnect_client, "{a} -> {b}");
        }
        assert_eq!(
            p("nats: {max_payload: 1MB}", "nats: {max_payload: 2MB}").changes,
            ["nats.max_payload: 1MB -> 2MB (hot)"]
        );
    }

    #[test]
    fn restart_settings_restart_the_child() {
        for (a, b) in [
            ("nats: {nats_port: 4222}", "nats: {nats_port: 4223}"),
            ("nats: {http_port: 8222}", "nats: {http_port: 8223}"),
            ("nats: {host: 127.0.0.1}", "nats: {host: 0.0.0.0}"),
            (
                "nats: {max_subscriptions: 10}",
                "nats: {max_subscriptions: 20}",
            ),
            (
                "nats: {jetstream_max_storage: 10GB}",
                "nats: {jetstream_max_storage: 5GB}",
            ),
            ("nats: {data_dir: /a}", "nats: {data_dir: /b}"),
            (
                "nats: {jetstream_enabled: true}",
                "nats: {jetstream_enabled: false}",
            ),
            (
                "nats: {}",
                "nats: {cluster_routes: [\"nats-route://b:6222\"]}",
            ),
        ] {
            assert_eq!(p(a, b).nats, NatsAction::Restart, "{a} -> {b}");
        }
        let r = p("nats: {nats_port: 4222}", "nats: {nats_port: 4223}");
        assert!(r.reconnect_client);
        assert_eq!(
            r.changes,
            ["nats.nats_port: 4222 -> 4223 (restarts nats-server)"]
        );
    }

    #[test]
    fn lame_duck_timings_restart_a_clustered_node_only() {
        let routes = "cluster_routes: [\"nats-route://b:6222\"]";
        let r = p(
            &format!("nats: {{{routes}}}"),
            &format!("nats: {{{routes}, lame_duck_duration: 1m}}"),
        );
        assert_eq!(r.nats, NatsAction::Restart, "{r:?}");
        assert_eq!(
            r.changes,
            ["nats.lame_duck_duration: 30s -> 1m (restarts nats-server)"]
        );
        // A single node does not render them: nothing to do.
        let r = p("nats: {}", "nats: {lame_duck_grace_period: 5s}");
        assert_eq!(r.nats, NatsAction::Nothing, "{r:?}");
        assert_eq!(r.changes.len(), 1, "{r:?}");
    }

    #[test]
    fn the_strongest_action_wins() {
        let r = p(
            "nats: {max_payload: 1MB, nats_port: 1}",
            "nats: {max_payload: 2MB, nats_port: 2}",
        );
        assert_eq!(r.nats, NatsAction::Restart);
        assert_eq!(r.changes.len(), 2);
    }

    #[test]
    fn routes_alone_are_hot_when_the_cluster_stays() {
        let a = "nats: {cluster_routes: [\"nats-route://b:6222\"]}";
        let b = "nats: {cluster_routes: [\"nats-route://b:6222\", \"nats-route://c:6222\"]}";
        assert_eq!(p(a, b).nats, NatsAction::Signal);
    }

    #[test]
    fn http_and_streams_and_supervisor_do_not_touch_nats() {
        let r = p("port: 8085\n", "port: 9000\n");
        assert!(r.rebind_http);
        assert_eq!(r.nats, NatsAction::Nothing);
        let r = p("nats: {}", "nats: {streams: {X: {subjects: [x]}}}");
        assert!(r.reconcile_streams);
        assert_eq!(r.nats, NatsAction::Nothing);
        let r = p(
            "nats: {streams: {X: {subjects: [x]}}}",
            "nats: {streams: {X: {subjects: [x], consumers: {c: {ack_wait: 5s}}}}}",
        );
        assert!(r.reconcile_streams, "a consumer change is reconciled");
        assert_eq!(r.nats, NatsAction::Nothing);
        let r = p(
            "supervisor: {health_failures: 3}",
            "supervisor: {health_failures: 5}",
        );
        assert_eq!((r.nats, r.changes.len()), (NatsAction::Nothing, 1));
    }

    #[test]
    fn alarm_thresholds_apply_live_without_touching_nats_or_the_streams() {
        let md = |extra: &str, consumer: &str| {
            format!("nats: {{streams: {{MD: {{subjects: [md], {extra} consumers: {{w: {{{consumer}}}}}}}}}}}")
        };
        let r = p(
            &md("", ""),
            &md("alert_if_silent_for: 30s,", "alert_if_pending_over: 10"),
        );
        assert_eq!(r.nats, NatsAction::Nothing);
        assert!(!r.reconcile_streams, "nothing for nats-server to do: {r:?}");
        assert_eq!(
            r.changes,
            [
                "nats.streams.MD.alert_if_silent_for: none -> 30s",
                "nats.streams.MD.consumers.w.alert_if_pending_over: none -> 10",
            ]
        );
        let r = p(
            &md("alert_if_silent_for: 30s,", "alert_if_pending_over: 10"),
            &md(
                "alert_if_silent_for: 2m, health_fails_on_alarm: true,",
                "alert_if_pending_over: 5, health_fails_on_alarm: true",
            ),
        );
        assert_eq!((r.nats, r.reconcile_streams), (NatsAction::Nothing, false));
        assert_eq!(
            r.changes,
            [
                "nats.streams.MD.alert_if_silent_for: 30s -> 2m",
                "nats.streams.MD.health_fails_on_alarm: false -> true",
                "nats.streams.MD.consumers.w.alert_if_pending_over: 10 -> 5",
                "nats.streams.MD.consumers.w.health_fails_on_alarm: false -> true",
            ]
        );
        // With another change to the stream, that one is still reconciled.
        let r = p(
            &md("", ""),
            &md("alert_if_silent_for: 30s, max_msgs: 5,", ""),
        );
        assert!(r.reconcile_streams);
        assert_eq!(r.nats, NatsAction::Nothing);
    }

    #[test]
    fn switching_ownership_of_nats_server_is_refused() {
        let r = p("auto_start_nats: true\n", "auto_start_nats: false\n");
        assert!(r.refused.unwrap().contains("restart the service"));
    }

    #[test]
    fn external_mode_reconnects_on_new_urls_and_ignores_server_settings() {
        let r = p(
            "auto_start_nats: false\nnats: {nats_url: \"nats://a:4222\", max_payload: 1MB}",
            "auto_start_nats: false\nnats: {nats_url: \"nats://b:4222\", max_payload: 2MB}",
        );
        assert!(r.reconnect_client);
        assert_eq!(r.nats, NatsAction::Nothing);
    }
}
