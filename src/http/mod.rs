//! The HTTP API on plain hyper 1.x: the seed's endpoints plus
//! GET /api/v1/streams/{name}, POST /api/v1/publish/batch, the consumer
//! endpoints under /api/v1/streams/{name}/consumers and the
//! GET /api/v1/subscribe event stream.

pub mod consume;
pub mod error;
pub mod publish;
pub mod routes;
pub mod server;
pub mod subscribe;

pub use server::serve;
