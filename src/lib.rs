//! marketprism-broker: runs nats-server + JetStream as a supervised Linux
//! system service with an HTTP API.

pub mod config;
pub mod subject;
pub mod natsconf;
pub mod supervisor;
