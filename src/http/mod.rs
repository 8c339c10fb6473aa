//! The HTTP API on plain hyper 1.x: the seed's endpoints plus
//! GET /api/v1/streams/{name} and POST /api/v1/publish/batch, and the
//! consumer endpoints under /api/v1/streams/{name}/consumers.

pub mod consume;
pub mod error;
pub mod publish;
pub mod routes;
pub mod server;

pub use server::serve;
