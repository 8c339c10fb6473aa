//! The HTTP API on plain hyper 1.x: the seed's endpoints plus
//! GET /api/v1/streams/{name}.

pub mod error;
pub mod routes;
pub mod server;

pub use server::serve;
