//! sysexits-style exit codes: systemd and scripts can tell a bad config
//! (78, do not restart blindly) from an unavailable dependency (69).

pub const OK: i32 = 0;
/// Wrong command line.
pub const USAGE: i32 = 64;
/// nats-server cannot be run or kept running; a port is taken.
pub const UNAVAILABLE: i32 = 69;
/// A bug: an internal error that should not happen.
pub const SOFTWARE: i32 = 70;
/// The state directory or a state file cannot be created.
pub const CANTCREAT: i32 = 73;
/// Try again later: `wait-ready` timed out while the node was still
/// catching up (or unhealthy).
pub const TEMPFAIL: i32 = 75;
/// The configuration is invalid.
pub const CONFIG: i32 = 78;
