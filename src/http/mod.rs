//! The HTTP API on plain hyper 1.x: the seed's endpoints plus
//! GET /api/v1/streams/{name}, POST /api/v1/publish/batch, GET /metrics
//! and the nats-server monitor passthrough GET /api/v1/nats/{endpoint}.

pub mod error;
pub mod metrics;
pub mod monitor;
pub mod publish;
pub mod routes;
pub mod server;

pub use server::serve;
