//! Command line: `marketprism-broker [run] [--config FILE] [--log OUTPUT]`,
//! `check-config`, `render-nats-config`, `reload`, `wait-ready`, `--version`,
//! `--help`.

use std::path::PathBuf;
use std::time::Duration;

use crate::logging::Output;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run,
    CheckConfig,
    RenderNatsConfig,
    /// SIGHUP a running daemon and wait for its verdict.
    Reload,
    /// Wait until the running daemon's node is healthy and current.
    WaitReady,
    Version,
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    pub command: Command,
    pub config: Option<PathBuf>,
    pub log: Output,
    /// `reload`: the daemon's pid (default: from its pid file).
    pub pid: Option<u32>,
    /// `reload`: how long to wait for the verdict; `wait-ready`: for the
    /// node to be current. None: the command's default.
    pub timeout: Option<Duration>,
}

pub const USAGE: &str = "\
usage: marketprism-broker [run] [--config FILE] [--log auto|journald|stderr]
       marketprism-broker check-config [--config FILE]
       marketprism-broker render-nats-config [--config FILE]
       marketprism-broker reload [--pid PID] [--timeout DURATION] [--config FILE]
       marketprism-broker wait-ready [--timeout DURATION] [--config FILE]
       marketprism-broker --version

Runs nats-server with JetStream as a supervised service with an HTTP API.

  run                  run the daemon (the default)
  check-config         validate the config (and nats-server's view of it); exit 0 or 78
  render-nats-config   print the generated nats-server.conf (passwords masked)
  reload               send SIGHUP to the running daemon and wait until it has applied
                       (exit 0) or refused (exit 1) the config; systemd's ExecReload
  wait-ready           wait until the running daemon is healthy and every stream and consumer
                       is current on this node (exit 0); 75 on timeout, 69 when no daemon
                       runs. Run it before touching the next node of a cluster
  -c, --config FILE    config file (.yaml, .yml or .toml); default: $MARKETPRISM_BROKER_CONFIG,
                       else /etc/marketprism-broker/broker.yaml, else built-in defaults
  --log OUTPUT         auto (journald when stderr is the journal, the default), journald, stderr
  --pid PID            the daemon to reload (default: from marketprism-broker.pid)
  --timeout DURATION   how long `reload` waits (default 90s) or `wait-ready` waits
                       (default 10m); e.g. 30, 90s, 5m
  -V, --version        print the version
  -h, --help           print this help

Signals: SIGTERM/SIGINT stop (exit 0), SIGHUP reloads the config.
Exit codes: 0 ok, 1 reload refused, 64 usage, 69 nats-server unavailable or port taken
(wait-ready: no daemon running), 70 internal error, 73 state directory not writable,
75 wait-ready timed out, 78 invalid config.";

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Cli, String> {
    let mut cli = Cli {
        command: Command::Run,
        config: None,
        log: Output::Auto,
        pid: None,
        timeout: None,
    };
    let mut command = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                return Ok(Cli {
                    command: Command::Help,
                    ..cli
                })
            }
            "-V" | "--version" => {
                return Ok(Cli {
                    command: Command::Version,
                    ..cli
                })
            }
            "-c" | "--config" => cli.config = Some(PathBuf::from(value(&flag)?)),
            "--log" => cli.log = value(&flag)?.parse()?,
            "--pid" => {
                let v = value(&flag)?;
                cli.pid = Some(
                    v.parse()
                        .map_err(|_| format!("--pid {v:?} is not a process id"))?,
                );
            }
            "--timeout" => {
                let v = value(&flag)?;
                let d = crate::config::Dur::parse(&v).map_err(|e| format!("--timeout: {e}"))?;
                if d.get().is_zero() {
                    return Err(format!("--timeout {v:?}: must be longer than zero"));
                }
                cli.timeout = Some(d.get());
            }
            "run" | "check-config" | "render-nats-config" | "reload" | "wait-ready"
                if command.is_none() =>
            {
                command = Some(match flag.as_str() {
                    "run" => Command::Run,
                    "check-config" => Command::CheckConfig,
                    "reload" => Command::Reload,
                    "wait-ready" => Command::WaitReady,
                    _ => Command::RenderNatsConfig,
                })
            }
            a if a.starts_with('-') => return Err(format!("unknown option {a}")),
            a => return Err(format!("unexpected argument {a:?}")),
        }
    }
    cli.command = command.unwrap_or(Command::Run);
    Ok(cli)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Cli, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn forms() {
        let c = p(&[]).unwrap();
        assert_eq!(
            (c.command, c.config, c.log),
            (Command::Run, None, Output::Auto)
        );
        assert_eq!(
            p(&["--config", "a.yaml"]).unwrap().config,
            Some(PathBuf::from("a.yaml"))
        );
        let c = p(&["check-config", "--config=a.toml"]).unwrap();
        assert_eq!(
            (c.command, c.config),
            (Command::CheckConfig, Some("a.toml".into()))
        );
        assert_eq!(
            p(&["-c", "x.yaml", "render-nats-config"]).unwrap().command,
            Command::RenderNatsConfig
        );
        assert_eq!(p(&["--version"]).unwrap().command, Command::Version);
        assert_eq!(p(&["--log", "journald"]).unwrap().log, Output::Journald);
        let c = p(&["reload", "--pid", "42", "--timeout=5"]).unwrap();
        assert_eq!(
            (c.command, c.pid, c.timeout),
            (Command::Reload, Some(42), Some(Duration::from_secs(5)))
        );
        let c = p(&["wait-ready", "--timeout", "1m30s", "-c", "b.yaml"]).unwrap();
        assert_eq!(
            (c.command, c.timeout, c.config),
            (
                Command::WaitReady,
                Some(Duration::from_secs(90)),
                Some("b.yaml".into())
            )
        );
        assert_eq!(p(&["wait-ready"]).unwrap().timeout, None);
    }

    #[test]
    fn mistakes() {
        assert!(p(&["--config"]).unwrap_err().contains("needs a value"));
        assert!(p(&["--bogus"])
            .unwrap_err()
            .contains("unknown option --bogus"));
        assert!(p(&["run", "check-config"])
            .unwrap_err()
            .contains("unexpected argument"));
        assert!(p(&["--log", "syslog"])
            .unwrap_err()
            .contains("unknown log output"));
        assert!(p(&["reload", "--pid", "me"])
            .unwrap_err()
            .contains("not a process id"));
        assert!(p(&["wait-ready", "--timeout", "soon"])
            .unwrap_err()
            .contains("invalid duration \"soon\""));
        assert!(p(&["wait-ready", "--timeout=0s"])
            .unwrap_err()
            .contains("longer than zero"));
    }
}
