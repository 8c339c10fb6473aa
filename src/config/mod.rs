//! Loading and validating the daemon's configuration.
//!
//! `load` reads YAML or TOML (by extension) into a line-annotated tree,
//! deserializes the typed [`Config`] from it, merges the seed's default
//! streams, resolves paths, and validates. Any problem becomes one
//! [`ConfigError`] that names the file, line and key.

mod de;
mod schema;
pub mod secrets;
mod tree;
mod units;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::security::Security;

pub use de::{closest, unknown_key_message};
pub use schema::*;
pub use tree::{Node, SyntaxError};
pub use units::{Dur, Size};
pub use validate::check_executable;

/// Where the packaged config lives.
pub const DEFAULT_PATH: &str = "/etc/marketprism-broker/broker.yaml";
/// Environment variable that names the config file when --config is absent.
pub const ENV_CONFIG: &str = "MARKETPRISM_BROKER_CONFIG";
/// The seed's wrapper key; optional so services.yaml is accepted verbatim.
pub const WRAPPER_KEY: &str = "message-broker-service";

/// A config problem, located as precisely as possible.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<u32>,
    /// Dotted key path (`nats.streams.CUSTOM.max_age`); empty for
    /// file-level problems.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(p), Some(l)) => write!(f, "{}:{l}: ", p.display())?,
            (Some(p), None) => write!(f, "{}: ", p.display())?,
            (None, _) => f.write_str("built-in config: ")?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The NATS account every client (and the daemon itself) lives in.
pub const ACCOUNT: &str = "MARKETPRISM";

/// Where a loaded config came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    File(PathBuf),
    /// No --config, no env, nothing at the default path.
    BuiltinDefaults,
}

/// The file's path, or "built-in defaults": how logs and errors name it.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltinDefaults => f.write_str("built-in defaults"),
        }
    }
}

/// A validated config, ready to run.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    /// Things worth saying that do not stop the daemon.
    pub warnings: Vec<String>,
    /// The API tokens and TLS identity, loaded while validating: the
    /// server uses these, not a second read of the files.
    pub security: Security,
}

/// Resolves which file to read: an explicit path (CLI, then env) must
/// exist; the default path may be absent (built-in defaults).
pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    let env = std::env::var_os(ENV_CONFIG)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    match explicit.map(Path::to_path_buf).or(env) {
        Some(path) => load_file(&path),
        None if Path::new(DEFAULT_PATH).exists() => load_file(Path::new(DEFAULT_PATH)),
        None => {
            let (config, warnings, security) = finish(Config::default(), None)?;
            Ok(Loaded {
                config,
                source: Source::BuiltinDefaults,
                warnings,
                security,
            })
        }
    }
}

/// Loads for a reload: like [`load`], but the file must have stopped
/// changing (two identical reads `settle` apart) and must not be empty.
/// A reload triggered while an editor or `cat >` is still writing would
/// otherwise apply half a file, and an empty YAML file is valid: it means
/// "all defaults".
pub fn load_for_reload(
    explicit: Option<&Path>,
    settle: std::time::Duration,
) -> Result<Loaded, ConfigError> {
    let env = std::env::var_os(ENV_CONFIG)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let path = match explicit.map(Path::to_path_buf).or(env) {
        Some(p) => p,
        None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
        None => return load(None),
    };
    let file_err = |message: String| ConfigError {
        file: Some(path.clone()),
        line: None,
        key: String::new(),
        message,
    };
    let mut last =
        std::fs::read(&path).map_err(|e| file_err(format!("cannot read config file: {e}")))?;
    for _ in 0..50 {
        std::thread::sleep(settle);
        let now =
            std::fs::read(&path).map_err(|e| file_err(format!("cannot read config file: {e}")))?;
        if now == last {
            if last.iter().all(u8::is_ascii_whitespace) {
                return Err(file_err(
                    "config file is empty (still being written?); not reloading an empty file"
                        .into(),
                ));
            }
            return load_file(&path);
        }
        last = now;
    }
    Err(file_err(
        "config file keeps changing; not reloading a file that is being written".into(),
    ))
}

/// Reads and validates one file.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let file_err = |message: String| ConfigError {
        file: Some(path.to_path_buf()),
        line: None,
        key: String::new(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        file_err(match e.kind() {
            std::io::ErrorKind::NotFound => "config file does not exist".to_string(),
            _ => format!("cannot read config file: {e}"),
        })
    })?;
    let (config, mut warnings, security) = parse(&text, Format::from_path(path).map_err(file_err)?)
        .map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })?;
    let inline_secret = config.nats.users.iter().any(|u| {
        u.password_file.is_none()
            && u.password_env.is_none()
            && !u.password.as_deref().is_some_and(secrets::is_bcrypt)
    });
    if inline_secret {
        warnings.extend(secrets::readable_warning(
            "the config file (plain-text passwords: consider bcrypt hashes, password_file or password_env)",
            path,
        ));
    }
    Ok(Loaded {
        config,
        source: Source::File(path.to_path_buf()),
        warnings,
        security,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Toml,
}

impl Format {
    pub fn from_path(path: &Path) -> Result<Format, String> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("yaml" | "yml") => Ok(Format::Yaml),
            Some("toml") => Ok(Format::Toml),
            _ => Err("cannot tell the config format: name the file *.yaml, *.yml or *.toml".into()),
        }
    }
}

/// An error about the key at `key` (dotted) found after loading (say,
/// against the nats-server version), with the file and line it came from,
/// like the errors loading finds.
pub fn error_at(source: &Source, key: &str, message: String) -> ConfigError {
    let (file, line) = match source {
        Source::File(p) => {
            let line = std::fs::read_to_string(p).ok().and_then(|text| {
                let root = match Format::from_path(p).ok()? {
                    Format::Yaml => tree::parse_yaml(&text),
                    Format::Toml => tree::parse_toml(&text),
                }
                .ok()?;
                let base = root.get(WRAPPER_KEY).unwrap_or(&root);
                base.line_of(&key.split('.').collect::<Vec<_>>())
            });
            (Some(p.clone()), line)
        }
        Source::BuiltinDefaults => (None, None),
    };
    ConfigError {
        file,
        line,
        key: key.into(),
        message,
    }
}

/// Parses and validates config text (no file involved: errors have no file).
/// The security files it names are loaded to check them, then dropped.
pub fn parse_str(text: &str, format: Format) -> Result<(Config, Vec<String>), ConfigError> {
    parse(text, format).map(|(config, warnings, _)| (config, warnings))
}

/// [`parse_str`], keeping the loaded security material.
fn parse(text: &str, format: Format) -> Result<(Config, Vec<String>, Security), ConfigError> {
    let root = match format {
        Format::Yaml => tree::parse_yaml(text),
        Format::Toml => tree::parse_toml(text),
    }
    .map_err(|e| ConfigError {
        file: None,
        line: e.line,
        key: String::new(),
        message: e.message,
    })?;
    // services.yaml holds every MarketPrism service under its own key; ours
    // is `message-broker-service`, the others are not ours to judge.
    let base = root.get(WRAPPER_KEY).unwrap_or(&root);
    if let tree::Value::Str(_)
    | tree::Value::Int(_)
    | tree::Value::Bool(_)
    | tree::Value::Seq(_)
    | tree::Value::Float(_) = base.value
    {
        return Err(ConfigError {
            file: None,
            line: Some(base.line),
            key: String::new(),
            message: "the config must be a mapping of keys (e.g. `port: 8085`)".into(),
        });
    }
    let config: Config = de::from_node(base).map_err(|e| ConfigError {
        file: None,
        line: e.line,
        key: e.path(),
        message: e.message,
    })?;
    finish(config, Some(base))
}

/// Resolves defaults that depend on the environment, merges the default
/// streams and validates. `base` locates errors in the source.
fn finish(
    mut config: Config,
    base: Option<&Node>,
) -> Result<(Config, Vec<String>, Security), ConfigError> {
    resolve_paths(&mut config);
    let env = secrets::Env::process();
    secrets::resolve(&mut config, &env)
        .and_then(|mut warnings| {
            secrets::resolve_api(&mut config, &env)?;
            warnings.extend(validate::validate(&config)?);
            let security = validate::load_security(&config)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            warnings.extend(security.certificates.iter().filter_map(|c| {
                let path = c.path.display().to_string();
                crate::security::expiry::warning(&c.key, &path, c.not_after, now)
            }));
            Ok((warnings, security))
        })
        .map_err(|v| {
            let path: Vec<&str> = v.path.iter().map(String::as_str).collect();
            ConfigError {
                file: None,
                line: base.and_then(|b| b.line_of(&path)),
                key: v.path.join("."),
                message: v.message,
            }
        })
        .map(|(warnings, security)| (config, warnings, security))
}

/// Makes `data_dir` absolute (nats-server gets it as store_dir and must not
/// depend on its working directory) and fills environment defaults.
fn resolve_paths(config: &mut Config) {
    let dir = config.nats.data_dir.clone().unwrap_or_else(|| {
        std::env::var_os("STATE_DIRECTORY")
            .and_then(|v| {
                // systemd separates several StateDirectory= entries with ':'.
                let s = v.to_string_lossy().into_owned();
                s.split(':')
                    .next()
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("data/nats"))
    });
    config.nats.data_dir = Some(absolute(&dir));
    if config.nats.server_name.is_none() {
        // nats-server would invent a random id per start; a stable name
        // keeps logs, /varz and (later) cluster membership readable.
        config.nats.server_name = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty());
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

impl Config {
    /// The seed's three default streams with the configured ones merged
    /// over them (a configured stream of the same name replaces the default).
    pub fn streams(&self) -> BTreeMap<String, StreamConfig> {
        let mut all = default_streams();
        all.extend(self.nats.streams.clone());
        all
    }

    /// State directory (absolute after `load`).
    pub fn data_dir(&self) -> PathBuf {
        self.nats
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data/nats"))
    }

    /// Where nats-server keeps the streams of the account every client
    /// lives in (`<store_dir>/jetstream/<account>/streams`): what the group
    /// commit syncs.
    pub fn streams_dir(&self) -> PathBuf {
        self.data_dir()
            .join("jetstream")
            .join(ACCOUNT)
            .join("streams")
    }

    /// Runtime directory for the pid file: $RUNTIME_DIRECTORY under systemd,
    /// else the state directory.
    pub fn runtime_dir(&self) -> PathBuf {
        std::env::var_os("RUNTIME_DIRECTORY")
            .and_then(|v| {
                v.to_string_lossy()
                    .split(':')
                    .next()
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| self.data_dir())
    }

    /// Whether nats-server gets a cluster block (see `natsconf`).
    pub fn cluster_enabled(&self) -> bool {
        !self.nats.cluster_routes.is_empty()
    }

    /// Whether the route URL `u` leads back to this node: its cluster
    /// listen address, or, when it listens on every address, the cluster
    /// port at a loopback address, an address of this machine or its host
    /// name. Names are not looked up: a route to this node under another
    /// name counts as a peer. nats-server itself ignores any route to
    /// itself (it recognises its own server id), so routes are rendered as
    /// given and one route list fits every node; this only counts nodes.
    pub fn is_own_route(&self, u: &str) -> bool {
        let Some((host, port)) = self.cluster_listen() else {
            return false;
        };
        let Some((h, p)) = validate::route_host_port(u) else {
            return false;
        };
        if p != port {
            return false;
        }
        if h.eq_ignore_ascii_case(&host) {
            return true;
        }
        if !validate::is_unspecified(&host) {
            return false;
        }
        match h.parse::<std::net::IpAddr>() {
            // An address is this machine's when a socket can bind to it.
            Ok(ip) => ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok(),
            Err(_) => {
                h.eq_ignore_ascii_case("localhost")
                    || nix::unistd::gethostname()
                        .ok()
                        .and_then(|n| n.into_string().ok())
                        .is_some_and(|n| h.eq_ignore_ascii_case(&n))
            }
        }
    }

    /// The nodes of the cluster as the config knows them: this one and
    /// every route that is not a route to itself.
    pub fn cluster_nodes(&self) -> usize {
        1 + self
            .nats
            .cluster_routes
            .iter()
            .filter(|u| !self.is_own_route(u))
            .count()
    }

    /// The cluster listen address, when clustering is on.
    pub fn cluster_listen(&self) -> Option<(String, u16)> {
        if !self.cluster_enabled() {
            return None;
        }
        if let Some(l) = &self.nats.cluster_listen {
            if let Some((h, p)) = l.rsplit_once(':') {
                if let Ok(p) = p.parse() {
                    return Some((h.trim_matches(['[', ']']).to_string(), p));
                }
            }
        }
        Some((
            self.nats.host.clone(),
            self.nats.cluster_port.unwrap_or(6222),
        ))
    }
}

#[cfg(test)]
mod tests;
