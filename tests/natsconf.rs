//! Every config the project ships renders to a nats-server.conf that both
//! Debian's nats-server 2.9.10 and a current release accept (`-t`) and
//! actually start on: `-t` alone passes configs that die at start (a
//! cluster block without routes next to JetStream, for one).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use marketprism_broker::config::{load_file, Config};
use marketprism_broker::natsconf::{render, Credentials, RenderOptions, INTERNAL_USER};
use marketprism_broker::server_version::ServerVersion;

fn shipped_configs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["config", "config/examples"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if e.path().is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The config as shipped, on free ports and a private state dir.
fn localized(path: &Path, dir: &Path) -> Config {
    let mut c = load_file(path).unwrap_or_else(|e| panic!("{e}")).config;
    let [nats, http, cluster] = free_ports::<3>();
    c.nats.nats_port = nats;
    c.nats.http_port = http;
    c.nats.cluster_port = Some(cluster);
    if c.nats.cluster_listen.is_some() {
        c.nats.cluster_listen = Some(format!("127.0.0.1:{cluster}"));
    }
    c.nats.data_dir = Some(dir.join("state"));
    c
}

/// As the daemon renders it for `bin` (whose version decides whether
/// `sync_interval` is written).
fn rendered(c: &Config, bin: &Path) -> String {
    render(
        c,
        &RenderOptions {
            internal: Some(Credentials {
                user: INTERNAL_USER.into(),
                password: "generated-in-test".into(),
            }),
            mask_secrets: false,
            source: "test".into(),
            server_version: ServerVersion::query(bin),
        },
    )
}

#[test]
fn nats_server_t_accepts_every_shipped_config_on_both_versions() {
    for bin in nats_servers() {
        for path in shipped_configs() {
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("nats-server.conf");
            std::fs::write(&conf, rendered(&localized(&path, dir.path()), &bin)).unwrap();
            if let Err(e) = nats_server_t(&bin, &conf) {
                panic!(
                    "{} -t refuses the rendering of {}:\n{e}",
                    bin.display(),
                    path.display()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_server_starts_on_every_shipped_config_on_both_versions() {
    for bin in nats_servers() {
        for path in shipped_configs() {
            let dir = tempfile::tempdir().unwrap();
            let c = localized(&path, dir.path());
            let conf = dir.path().join("nats-server.conf");
            std::fs::write(&conf, rendered(&c, &bin)).unwrap();
            let mut child = Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // A clustered node cannot be JetStream-healthy alone (its
            // peers are on other machines); it must still come up and
            // serve its monitor. Everything else must be fully healthy.
            let probe = if c.cluster_enabled() {
                "/varz"
            } else {
                "/healthz"
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            let result = loop {
                if let Ok((200, _)) = get_json(c.nats.http_port, probe).await {
                    break Ok(());
                }
                if let Some(st) = child.try_wait().unwrap() {
                    break Err(format!("exited with {st}"));
                }
                if Instant::now() > deadline {
                    break Err("no answer within 15 s".into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            if let Err(e) = result {
                panic!(
                    "{} on {}: {e}\n{}",
                    bin.display(),
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}
