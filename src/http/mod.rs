//! The HTTP API on plain hyper 1.x: the seed's endpoints plus
//! GET /api/v1/streams/{name}, POST /api/v1/publish/batch and
//! /api/v1/publish/stream (streaming ingest), the consumer
//! endpoints under /api/v1/streams/{name}/consumers, the GET
//! /api/v1/subscribe event stream, GET /metrics and the nats-server monitor
//! passthrough GET /api/v1/nats/{endpoint}; and reading streams without a
//! consumer of one's own (replay, latest values, messages by sequence).

pub mod auth;
pub mod body;
pub mod consume;
pub mod error;
pub mod health;
pub mod message;
pub mod metrics;
pub mod monitor;
pub mod openapi;
pub mod publish;
pub mod replay;
pub mod routes;
pub mod server;
pub mod slots;
pub mod sse;
pub mod status;
pub mod streams;
pub mod table;

pub use server::serve;
