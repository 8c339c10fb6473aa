//! SIGHUP reloads: hot changes keep nats-server and its clients, restart-
//! only changes restart it, a broken file changes nothing.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::json;

/// A client that counts its disconnects.
async fn watched_client(url: &str) -> (async_nats::Client, Arc<AtomicUsize>) {
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = drops.clone();
    let client = async_nats::ConnectOptions::new()
        .event_callback(move |e| {
            let counter = counter.clone();
            async move {
                if matches!(e, async_nats::Event::Disconnected) {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .connect(url)
        .await
        .unwrap();
    (client, drops)
}

async fn varz(d: &Daemon) -> serde_json::Value {
    get_json(d.monitor, "/varz").await.unwrap().1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hot_change_keeps_nats_server_and_its_clients() {
    let d = Daemon::builder()
        .nats("  max_payload: 1MB\n  max_connections: 100\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let pid = d.child_pid().unwrap();
    let (client, drops) = watched_client(&d.nats_url()).await;
    let mut sub = subscribe_synced(&client, "hot.>").await;
    let loaded_before = varz(&d).await["config_load_time"].clone();

    d.edit_config(|c| {
        c.replace("max_payload: 1MB", "max_payload: 2MB")
            .replace("max_connections: 100", "max_connections: 200")
    });
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "the reload to finish", || async {
        d.log().contains("reload done").then_some(())
    })
    .await;

    let v = varz(&d).await;
    assert_ne!(
        v["config_load_time"], loaded_before,
        "nats-server did not reload"
    );
    assert_eq!(
        (v["max_payload"].as_u64(), v["max_connections"].as_u64()),
        (Some(2 << 20), Some(200))
    );
    assert_eq!(
        d.child_pid(),
        Some(pid),
        "a hot change must not restart nats-server"
    );
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "the client was disconnected"
    );
    // The subscription made before the reload still delivers.
    client.publish("hot.x", "still here".into()).await.unwrap();
    use futures::StreamExt;
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"still here");
    assert!(
        d.log().contains("nats.max_payload: 1MB -> 2MB (hot)"),
        "{}",
        d.log()
    );
    assert!(
        d.log()
            .contains(&format!("nats-server (pid {pid}) reloaded its config live")),
        "{}",
        d.log()
    );
    let (code, _) = d.get("/health").await;
    assert_eq!(code, 200);
    // The daemon enforces the new limit too.
    let (status, resp) = d.publish("test.big", json!("x".repeat(1_500_000))).await;
    assert_ne!(status, 413, "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_only_change_restarts_nats_server_on_the_new_port() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let (status, _) = d.publish("market.a.b.trade", json!(1)).await;
    assert_eq!(status, 200);
    let old_pid = d.child_pid().unwrap();
    let new_port = free_port();
    let old_port = d.nats;
    d.edit_config(|c| {
        c.replace(
            &format!("nats_port: {old_port}"),
            &format!("nats_port: {new_port}"),
        )
    });
    d.signal(Signal::SIGHUP);
    let new_pid = d.wait_new_child(old_pid, Duration::from_secs(10)).await;
    eventually(Duration::from_secs(10), "the reload to finish", || async {
        d.log().contains("reload done").then_some(())
    })
    .await;
    assert!(!alive(old_pid));
    assert_eq!(varz(&d).await["port"], new_port);
    let (_, info) = d.get("/api/v1/nats/info").await;
    assert_eq!(
        (info["pid"].as_u64(), info["ports"]["nats"].as_u64()),
        (Some(new_pid as u64), Some(new_port as u64))
    );
    // The daemon's own client followed: publishing persists, on the old stream.
    let (status, resp) = d.publish("market.a.b.trade", json!(2)).await;
    assert_eq!((status, resp["seq"].as_u64()), (200, Some(2)), "{resp}");
    assert!(async_nats::connect(format!("nats://127.0.0.1:{new_port}"))
        .await
        .is_ok());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", old_port)).is_err(),
        "the old port still listens"
    );
    let (_, status) = d.get("/api/v1/status").await;
    assert_eq!(
        status["nats_server"]["restarts"], 0,
        "a requested restart is not a failure"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_file_keeps_everything_running_on_the_old_config() {
    let d = Daemon::builder().nats("  max_payload: 1MB\n").start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let pid = d.child_pid().unwrap();
    let (client, drops) = watched_client(&d.nats_url()).await;
    client.flush().await.unwrap();
    for (i, broken) in [
        "",
        "nats:\n  nats_port: [unclosed\n",
        "port: 1\nport: 2\n",
        "nats:\n  max_payload: 1XB\n",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(&d.config_path, broken).unwrap();
        d.signal(Signal::SIGHUP);
        eventually(Duration::from_secs(10), "the reload to fail", || async {
            (d.log().matches("reload failed:").count() > i).then_some(())
        })
        .await;
    }
    let log = d.log();
    assert!(log.contains("config file is empty"), "{log}");
    assert!(
        log.contains(&format!(
            "{}:2: nats.max_payload: invalid size \"1XB\"",
            d.config_path.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("still running on the previous config"),
        "{log}"
    );
    assert_eq!(d.child_pid(), Some(pid));
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    assert_eq!(varz(&d).await["max_payload"], 1 << 20);
    let (code, _) = d.get("/health").await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_api_moves_to_a_new_port_and_streams_follow_the_file() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let pid = d.child_pid().unwrap();
    let new_http = free_port();
    d.edit_config(|c| {
        c.replace(
            &format!("port: {}\n", d.http),
            &format!("port: {new_http}\n"),
        )
        .replace(
            "nats:\n",
            "nats:\n  streams:\n    ORDERS:\n      subjects: [\"orders.>\"]\n",
        )
    });
    d.signal(Signal::SIGHUP);
    // The new listener may answer before ORDERS exists (the reload creates
    // streams after it binds): 503 naming ORDERS for that moment, then 200.
    eventually(
        Duration::from_secs(10),
        "the API healthy on its new port",
        || async {
            match get_json(new_http, "/health").await {
                Ok((200, _)) => Some(()),
                Ok((503, h)) => {
                    assert!(h.to_string().contains("ORDERS"), "{h}");
                    None
                }
                Ok((code, h)) => panic!("{code}: {h}"),
                Err(_) => None,
            }
        },
    )
    .await;
    eventually(Duration::from_secs(10), "the old port to close", || async {
        get_json(d.http, "/health").await.is_err().then_some(())
    })
    .await;
    let (code, s) = get_json(new_http, "/api/v1/streams/ORDERS").await.unwrap();
    assert_eq!(code, 200, "{s}");
    assert_eq!(
        d.child_pid(),
        Some(pid),
        "neither change concerns nats-server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_change_whose_port_is_taken_changes_nothing() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let pid = d.child_pid().unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    d.edit_config(|c| {
        c.replace(
            &format!("nats_port: {}", d.nats),
            &format!("nats_port: {taken}"),
        )
    });
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "the reload to fail", || async {
        d.log().contains("reload failed:").then_some(())
    })
    .await;
    assert!(
        d.log().contains(&format!("port {taken} (nats.nats_port)")),
        "{}",
        d.log()
    );
    assert_eq!(d.child_pid(), Some(pid));
    let (status, _) = d.publish("market.a.b.trade", json!(1)).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reload_command_waits_for_the_verdict() {
    let d = Daemon::builder().nats("  max_payload: 1MB\n").start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let reload = |with_pid: bool| {
        let mut c = std::process::Command::new(BIN);
        c.arg("reload")
            .arg("--config")
            .arg(&d.config_path)
            .arg("--timeout")
            .arg("20");
        if with_pid {
            c.arg("--pid").arg(d.pid().to_string());
        }
        c.env_remove("RUNTIME_DIRECTORY").output().unwrap()
    };
    d.edit_config(|c| c.replace("max_payload: 1MB", "max_payload: 3MB"));
    let out = reload(true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    out.expect_code(0);
    assert!(
        stdout.starts_with("reloaded: nats-server (pid")
            && stdout.contains("reloaded its config live"),
        "{stdout}"
    );
    // Right when it returns, the change is in force.
    assert_eq!(varz(&d).await["max_payload"], 3 << 20);

    // A broken file: exit 1 with the reason; the pid comes from the pid file.
    let good = std::fs::read_to_string(&d.config_path).unwrap();
    std::fs::write(
        &d.config_path,
        good.replace("nats:\n", "nats:\n  nats_prot: 1\n"),
    )
    .unwrap();
    let out = reload(true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    out.expect_code(1);
    assert!(
        stderr.contains("reload failed:") && stderr.contains("did you mean `nats_port`?"),
        "{stderr}"
    );
    let (code, _) = d.get("/health").await;
    assert_eq!(code, 200);
    // Good again, and the pid taken from the daemon's pid file.
    std::fs::write(
        &d.config_path,
        good.replace("max_payload: 3MB", "max_payload: 4MB"),
    )
    .unwrap();
    let out = reload(false);
    out.expect_code(0);
    assert_eq!(varz(&d).await["max_payload"], 4 << 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_sighups_ends_on_the_last_file() {
    let d = Daemon::builder().nats("  max_connections: 100\n").start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let pid = d.child_pid().unwrap();
    for n in 101..=120 {
        d.edit_config(|c| {
            c.replace(
                &format!("max_connections: {}", n - 1),
                &format!("max_connections: {n}"),
            )
        });
        d.signal(Signal::SIGHUP);
    }
    eventually(
        Duration::from_secs(20),
        "the last value in force",
        || async { (varz(&d).await["max_connections"] == 120).then_some(()) },
    )
    .await;
    assert_eq!(d.child_pid(), Some(pid));
    // Signals that came in during a reload coalesce into one more reload.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reloads = d.log().matches("reload done").count();
    assert!(
        (1..20).contains(&reloads),
        "{reloads} reloads for 20 SIGHUPs"
    );
    assert!(!d.log().contains("reload failed"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_api_can_widen_its_bind_address_on_the_same_port() {
    let d = Daemon::builder().top("host: \"127.0.0.1\"\n").start();
    d.wait_healthy(Duration::from_secs(20)).await;
    d.edit_config(|c| c.replace("host: \"127.0.0.1\"\n", "host: \"0.0.0.0\"\n"));
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "the reload to finish", || async {
        d.log().contains("reload done").then_some(())
    })
    .await;
    assert!(
        d.log()
            .contains(&format!("HTTP API moved to 0.0.0.0:{}", d.http)),
        "{}",
        d.log()
    );
    let (code, _) = d.get("/health").await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_change_the_running_server_refuses_becomes_a_restart() {
    // Raising JetStream's memory limit is live on current nats-server
    // releases; 2.9 and 2.10 (2.10.27, Debian 13's) keep the old value.
    // The daemon must notice through /varz and restart instead.
    for bin in nats_servers() {
        let d = Daemon::builder()
            .bin(&bin)
            .nats("  jetstream_max_memory: 256MB\n")
            .start();
        d.wait_healthy(Duration::from_secs(20)).await;
        let pid = d.child_pid().unwrap();
        let version = varz(&d).await["version"].as_str().unwrap().to_string();
        d.edit_config(|c| c.replace("jetstream_max_memory: 256MB", "jetstream_max_memory: 512MB"));
        d.signal(Signal::SIGHUP);
        eventually(Duration::from_secs(20), "the reload to finish", || async {
            d.log().contains("reload done").then_some(())
        })
        .await;
        d.wait_healthy(Duration::from_secs(20)).await;
        let v = varz(&d).await;
        assert_eq!(
            v["jetstream"]["config"]["max_memory"],
            512 << 20,
            "{version}: {v}"
        );
        if version.starts_with("2.9.") || version.starts_with("2.10.") {
            assert_ne!(d.child_pid(), Some(pid), "{version} cannot raise it live");
            assert!(
                d.log().contains("did not take the change live"),
                "{}",
                d.log()
            );
        } else {
            assert_eq!(d.child_pid(), Some(pid), "{version} raises it live");
        }
    }
}
