//! Users' passwords: written in the config (plain text or a bcrypt hash),
//! read from a file, or taken from the daemon's environment. Loading
//! resolves `password_file` / `password_env` into `password`, so the
//! renderer and the reload diff see one value (a changed file is a changed
//! password, applied by reload).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::schema::Config;
use super::validate::Violation;

fn fail<T>(i: usize, key: &str, message: impl Into<String>) -> Result<T, Violation> {
    Err(Violation {
        path: vec!["nats".into(), "users".into(), i.to_string(), key.into()],
        message: message.into(),
    })
}

/// Whether `p` is meant as a bcrypt hash (nats-server's own test: `$2`).
pub fn is_bcrypt(p: &str) -> bool {
    p.starts_with("$2")
}

/// A bcrypt hash as nats-server compares it: `$2a$`/`$2b$`/`$2y$`, a
/// two-digit cost from 4 to 31, then 53 characters of bcrypt's base64.
pub fn check_bcrypt(p: &str) -> Result<(), String> {
    let bad = || {
        Err(
            "starts with `$2` so nats-server takes it for a bcrypt hash, but it is not one (expected 60 characters like `$2a$11$` + 53 of [./A-Za-z0-9]; make one with `htpasswd -bnBC 11 \"\" PASSWORD | tr -d ':\\n'`)"
                .to_string(),
        )
    };
    let b = p.as_bytes();
    if b.len() != 60
        || !matches!(&b[..4], b"$2a$" | b"$2b$" | b"$2y$")
        || b[6] != b'$'
        || !b[4..6].iter().all(u8::is_ascii_digit)
    {
        return bad();
    }
    let cost = (b[4] - b'0') * 10 + (b[5] - b'0');
    if !(4..=31).contains(&cost) {
        return bad();
    }
    if !b[7..]
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
    {
        return bad();
    }
    Ok(())
}

/// Where to look things up: the process environment in the daemon, a
/// table in unit tests.
pub struct Env<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    /// $CREDENTIALS_DIRECTORY (systemd's LoadCredential=).
    pub credentials_dir: Option<PathBuf>,
}

impl Env<'_> {
    pub fn process() -> Env<'static> {
        Env {
            var: &|k| std::env::var(k).ok(),
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }
}

/// Fills every user's `password` from its one source; returns warnings
/// (a password file others can read).
pub fn resolve(c: &mut Config, env: &Env) -> Result<Vec<String>, Violation> {
    let mut warnings = Vec::new();
    for (i, u) in c.nats.users.iter_mut().enumerate() {
        let given = [
            u.password.is_some(),
            u.password_file.is_some(),
            u.password_env.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                return fail(
                    i,
                    "password",
                    format!(
                        "user {:?} has no password: give `password` (plain or a bcrypt hash), `password_file` or `password_env`",
                        u.user
                    ),
                )
            }
            1 => {}
            _ => {
                let key = if u.password_file.is_some() && u.password.is_some() {
                    "password_file"
                } else {
                    "password_env"
                };
                return fail(
                    i,
                    key,
                    "give only one of `password`, `password_file` and `password_env`",
                );
            }
        }
        if let Some(file) = &u.password_file {
            let path = secret_path(file, env).or_else(|m| fail(i, "password_file", m))?;
            let line = read_password_file(&path).or_else(|m| fail(i, "password_file", m))?;
            warnings.extend(readable_warning(
                &format!("nats.users.{i}.password_file"),
                &path,
            ));
            u.password = Some(line);
        }
        if let Some(var) = &u.password_env {
            match (env.var)(var) {
                Some(v) if !v.is_empty() => u.password = Some(v),
                _ => {
                    return fail(
                        i,
                        "password_env",
                        format!("environment variable {var} is not set (or empty) for the daemon"),
                    )
                }
            }
        }
    }
    if let Some(file) = &c.nats.internal_password_file {
        let key = ["nats", "internal_password_file"];
        let at = |m: String| Violation {
            path: key.iter().map(|s| s.to_string()).collect(),
            message: m,
        };
        let path = secret_path(file, env).map_err(at)?;
        let password = read_password_file(&path).map_err(at)?;
        if password.len() < 16 {
            return Err(at(format!(
                "{} holds a password of {} characters: give at least 16 (e.g. `head -c 24 /dev/urandom | base64`)",
                path.display(),
                password.len()
            )));
        }
        warnings.extend(readable_warning("nats.internal_password_file", &path));
        c.nats.internal_password_file = Some(path);
    }
    Ok(warnings)
}

/// The password in a password file: its first line, which must hold one
/// (for users' `password_file` and the shared `internal_password_file`).
pub fn read_password_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!(
            "{} is empty: its first line is the password",
            path.display()
        ));
    }
    if line.chars().any(char::is_control) {
        return Err(format!(
            "{}: the password on its first line has control characters",
            path.display()
        ));
    }
    Ok(line.to_string())
}

/// The API's secret files (`api.tokens_file`, `api.tls.*`) by the same
/// rule as a password file: absolute, or a LoadCredential= name. Made
/// absolute here so validation and the daemon read the same file.
pub fn resolve_api(c: &mut Config, env: &Env) -> Result<(), Violation> {
    let at = |key: &[&str], m: String| Violation {
        path: key.iter().map(|s| s.to_string()).collect(),
        message: m,
    };
    let api = &mut c.api;
    if let Some(p) = &mut api.tokens_file {
        *p = secret_path(p, env).map_err(|m| at(&["api", "tokens_file"], m))?;
    }
    if let Some(t) = &mut api.tls {
        for (key, p) in [
            ("cert_file", Some(&mut t.cert_file)),
            ("key_file", Some(&mut t.key_file)),
            ("client_ca_file", t.client_ca_file.as_mut()),
        ] {
            if let Some(p) = p {
                *p = secret_path(p, env).map_err(|m| at(&["api", "tls", key], m))?;
            }
        }
    }
    Ok(())
}

/// An absolute path as is; a relative one is a name in
/// $CREDENTIALS_DIRECTORY.
fn secret_path(p: &Path, env: &Env) -> Result<PathBuf, String> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    match &env.credentials_dir {
        Some(dir) => Ok(dir.join(p)),
        None => Err(format!(
            "{} is relative: give an absolute path, or a credential name when systemd's LoadCredential= sets $CREDENTIALS_DIRECTORY",
            p.display()
        )),
    }
}

/// The group the package runs the daemon as (systemd/*.sysusers).
const SERVICE_GROUP: &str = "marketprism-broker";

/// Who besides the daemon can read a secret file: others, or a group that
/// is neither the checking process' own (check-config in ExecStartPre runs
/// as the service user) nor the service's (root:marketprism-broker 0640 is
/// how the package ships its config, and a root-run check-config should
/// not cry wolf over that).
fn too_readable(md: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mode = md.mode();
    if mode & 0o004 != 0 {
        return Some("others, so every user on this machine can read it".into());
    }
    if mode & 0o040 == 0 || md.gid() == nix::unistd::getegid().as_raw() {
        return None;
    }
    let gid = nix::unistd::Gid::from_raw(md.gid());
    match nix::unistd::Group::from_gid(gid).ok().flatten() {
        Some(g) if g.name == SERVICE_GROUP => None,
        Some(g) => Some(format!("group {}", g.name)),
        None => Some(format!("group {gid}")),
    }
}

/// A warning when the secret file `path` (named `what`: a key, or what
/// the file is) can be read by more than the daemon; the one rule for
/// configs with passwords, password files and API token files.
pub fn readable_warning(what: &str, path: &Path) -> Option<String> {
    let md = std::fs::metadata(path).ok()?;
    let who = too_readable(&md)?;
    Some(format!(
        "{what} {} holds secrets but is readable by {who} (mode {:03o}): chmod go-r it (0640 root:marketprism-broker, or 0600)",
        path.display(),
        md.permissions().mode() & 0o777
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::UserConfig;

    fn user(password: Option<&str>, file: Option<&Path>, env: Option<&str>) -> Config {
        let mut c = Config::default();
        c.nats.users.push(UserConfig {
            user: "u".into(),
            password: password.map(String::from),
            password_file: file.map(Path::to_path_buf),
            password_env: env.map(String::from),
            permissions: None,
        });
        c
    }

    fn no_env() -> Env<'static> {
        Env {
            var: &|_| None,
            credentials_dir: None,
        }
    }

    #[test]
    fn bcrypt_hashes_are_recognised_and_checked() {
        let good = "$2a$11$PWIFAL8RsWyGI3jVZtO9Nu8.6jOxzxfZo7c/W0eLk017hjgUKWrhy";
        assert!(is_bcrypt(good));
        check_bcrypt(good).unwrap();
        check_bcrypt(&good.replace("$2a$", "$2b$")).unwrap();
        for bad in [
            "$2a$11$short",
            &good.replace("$2a$11$", "$2a$99$"),
            &good.replace("$2a$", "$2c$"),
            &good.replace('.', "!"),
        ] {
            let e = check_bcrypt(bad).unwrap_err();
            assert!(e.contains("bcrypt"), "{e}");
        }
        assert!(!is_bcrypt("plain"));
    }

    #[test]
    fn exactly_one_source() {
        let e = resolve(&mut user(None, None, None), &no_env()).unwrap_err();
        assert_eq!(e.path, ["nats", "users", "0", "password"]);
        assert!(e.message.contains("password_file"), "{}", e.message);
        let e = resolve(&mut user(Some("a"), Some(Path::new("/x")), None), &no_env()).unwrap_err();
        assert_eq!(e.path, ["nats", "users", "0", "password_file"]);
        assert!(e.message.contains("only one"), "{}", e.message);
    }

    #[test]
    fn a_file_gives_its_first_line_and_warns_when_others_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = user(None, Some(&f), None);
        assert!(resolve(&mut c, &no_env()).unwrap().is_empty());
        assert_eq!(c.nats.users[0].password.as_deref(), Some("s3cret"));

        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = resolve(&mut user(None, Some(&f), None), &no_env()).unwrap();
        assert!(w[0].contains("every user") && w[0].contains("644"), "{w:?}");

        // A relative name is a systemd credential.
        let e = resolve(&mut user(None, Some(Path::new("pw")), None), &no_env()).unwrap_err();
        assert!(e.message.contains("CREDENTIALS_DIRECTORY"), "{}", e.message);
        let env = Env {
            var: &|_| None,
            credentials_dir: Some(dir.path().to_path_buf()),
        };
        let mut c = user(None, Some(Path::new("pw")), None);
        resolve(&mut c, &env).unwrap();
        assert_eq!(c.nats.users[0].password.as_deref(), Some("s3cret"));

        let e = resolve(
            &mut user(None, Some(&dir.path().join("nope")), None),
            &no_env(),
        )
        .unwrap_err();
        assert!(e.message.contains("nope"), "{}", e.message);
        std::fs::write(&f, "\n").unwrap();
        let e = resolve(&mut user(None, Some(&f), None), &no_env()).unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
    }

    #[test]
    fn api_secret_files_are_absolute_or_credential_names() {
        let env = Env {
            var: &|_| None,
            credentials_dir: Some("/run/credentials/mpb.service".into()),
        };
        let mut c = Config::default();
        c.api.tokens_file = Some("api-tokens".into());
        c.api.tls = Some(crate::config::ApiTlsConfig {
            cert_file: "/etc/mpb/api.pem".into(),
            key_file: "api-key".into(),
            client_ca_file: None,
        });
        resolve_api(&mut c, &env).unwrap();
        assert_eq!(
            c.api.tokens_file.as_deref(),
            Some(Path::new("/run/credentials/mpb.service/api-tokens"))
        );
        let tls = c.api.tls.as_ref().unwrap();
        assert_eq!(tls.cert_file, Path::new("/etc/mpb/api.pem"));
        assert_eq!(
            tls.key_file,
            Path::new("/run/credentials/mpb.service/api-key")
        );

        let mut c = Config::default();
        c.api.tls = Some(crate::config::ApiTlsConfig {
            cert_file: "/etc/mpb/api.pem".into(),
            key_file: "api-key".into(),
            client_ca_file: None,
        });
        let e = resolve_api(&mut c, &no_env()).unwrap_err();
        assert_eq!(e.path, ["api", "tls", "key_file"]);
        assert!(e.message.contains("CREDENTIALS_DIRECTORY"), "{}", e.message);
    }

    #[test]
    fn a_shared_internal_password_is_long_and_found_like_other_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("internal.pass");
        std::fs::write(&f, "short\n").unwrap();
        let mut c = Config::default();
        c.nats.internal_password_file = Some(f.clone());
        let e = resolve(&mut c.clone(), &no_env()).unwrap_err();
        assert_eq!(e.path, ["nats", "internal_password_file"]);
        assert!(e.message.contains("at least 16"), "{}", e.message);
        std::fs::write(&f, "0123456789abcdef-shared\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(resolve(&mut c.clone(), &no_env()).unwrap().is_empty());
        // A credential name becomes the absolute path the daemon reads.
        c.nats.internal_password_file = Some("internal.pass".into());
        let env = Env {
            var: &|_| None,
            credentials_dir: Some(dir.path().to_path_buf()),
        };
        resolve(&mut c, &env).unwrap();
        assert_eq!(c.nats.internal_password_file, Some(f.clone()));
        assert_eq!(read_password_file(&f).unwrap(), "0123456789abcdef-shared");
    }

    #[test]
    fn an_environment_variable_gives_the_password() {
        let env = Env {
            var: &|k| (k == "PRODUCER_PASS").then(|| "from-env".to_string()),
            credentials_dir: None,
        };
        let mut c = user(None, None, Some("PRODUCER_PASS"));
        resolve(&mut c, &env).unwrap();
        assert_eq!(c.nats.users[0].password.as_deref(), Some("from-env"));
        let e = resolve(&mut user(None, None, Some("MISSING")), &env).unwrap_err();
        assert_eq!(e.path, ["nats", "users", "0", "password_env"]);
        assert!(e.message.contains("MISSING"), "{}", e.message);
    }
}
