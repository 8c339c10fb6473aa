//! Command line: `marketprism-broker [run] [--config FILE]`,
//! `check-config`, `render-nats-config`, `--version`, `--help`.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run,
    CheckConfig,
    RenderNatsConfig,
    Version,
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    pub command: Command,
    pub config: Option<PathBuf>,
}

pub const USAGE: &str = "\
usage: marketprism-broker [run] [--config FILE]
       marketprism-broker check-config [--config FILE]
       marketprism-broker render-nats-config [--config FILE]
       marketprism-broker --version

Runs nats-server with JetStream as a supervised service with an HTTP API.

  run                  run the daemon (the default)
  check-config         validate the config (and nats-server's view of it); exit 0 or 78
  render-nats-config   print the generated nats-server.conf (passwords masked)
  -c, --config FILE    config file (.yaml, .yml or .toml); default: $MARKETPRISM_BROKER_CONFIG,
                       else /etc/marketprism-broker/broker.yaml, else built-in defaults
  -V, --version        print the version
  -h, --help           print this help

Exit codes: 0 ok, 64 usage, 69 nats-server unavailable or port taken, 70 internal error,
73 state directory not writable, 78 invalid config.";

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Cli, String> {
    let mut command = None;
    let mut config = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                return Ok(Cli {
                    command: Command::Help,
                    config,
                })
            }
            "-V" | "--version" => {
                return Ok(Cli {
                    command: Command::Version,
                    config,
                })
            }
            "-c" | "--config" => {
                let v = it
                    .next()
                    .ok_or_else(|| format!("{arg} needs a file name"))?;
                config = Some(PathBuf::from(v));
            }
            a if a.starts_with("--config=") => {
                config = Some(PathBuf::from(&a["--config=".len()..]))
            }
            "run" | "check-config" | "render-nats-config" if command.is_none() => {
                command = Some(match arg.as_str() {
                    "run" => Command::Run,
                    "check-config" => Command::CheckConfig,
                    _ => Command::RenderNatsConfig,
                })
            }
            a if a.starts_with('-') => return Err(format!("unknown option {a}")),
            a => return Err(format!("unexpected argument {a:?}")),
        }
    }
    Ok(Cli {
        command: command.unwrap_or(Command::Run),
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Cli, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn forms() {
        assert_eq!(
            p(&[]).unwrap(),
            Cli {
                command: Command::Run,
                config: None
            }
        );
        assert_eq!(
            p(&["--config", "a.yaml"]).unwrap().config,
            Some(PathBuf::from("a.yaml"))
        );
        assert_eq!(
            p(&["check-config", "--config=a.toml"]).unwrap(),
            Cli {
                command: Command::CheckConfig,
                config: Some("a.toml".into())
            }
        );
        assert_eq!(
            p(&["-c", "x.yaml", "render-nats-config"]).unwrap().command,
            Command::RenderNatsConfig
        );
        assert_eq!(p(&["--version"]).unwrap().command, Command::Version);
    }

    #[test]
    fn mistakes() {
        assert!(p(&["--config"]).unwrap_err().contains("needs a file"));
        assert!(p(&["--bogus"])
            .unwrap_err()
            .contains("unknown option --bogus"));
        assert!(p(&["run", "check-config"])
            .unwrap_err()
            .contains("unexpected argument"));
    }
}
