//! The daemon's own login to the nats-server it runs.

use crate::config::Config;
use crate::natsconf::{self, Credentials};

/// The daemon's own login to the nats-server it runs: generated at first
/// start and kept (0600) in the state dir, never hard-coded.
pub fn internal_credentials(c: &Config) -> std::io::Result<Option<Credentials>> {
    if !c.auto_start_nats {
        return Ok(None);
    }
    if let Some(shared) = &c.nats.internal_password_file {
        // Validation read it a moment ago; it names the file on error.
        let password =
            crate::config::secrets::read_password_file(shared).map_err(std::io::Error::other)?;
        return Ok(Some(Credentials {
            user: natsconf::INTERNAL_USER.into(),
            password,
        }));
    }
    let path = c.data_dir().join("internal-credentials");
    let password = match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => {
            use std::io::Read;
            let mut raw = [0u8; 24];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
            let p: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(c.data_dir())?;
            crate::runfiles::write_atomic(&path, format!("{p}\n").as_bytes(), 0o600)?;
            p
        }
    };
    Ok(Some(Credentials {
        user: natsconf::INTERNAL_USER.into(),
        password,
    }))
}
