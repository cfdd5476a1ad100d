//! Pure GenAI protocol knowledge: what OpenAI requests and responses mean.
//!
//! Nothing here touches hyper, tokio or OpenTelemetry, so every rule about
//! the wire format is unit-tested on recorded bytes and reused by the proxy,
//! the agent and the benchmarks alike.

pub mod attribution;
pub mod azure;
pub mod chunk;
pub mod chunk_head;
mod chunk_shape;
pub mod content;
pub mod decode;
pub mod details;
pub mod inject;
pub mod lenient;
pub mod multipart;
pub mod pricing;
pub mod provider;
pub mod query;
pub mod realtime;
pub mod realtime_shape;
pub mod request;
pub mod response;
pub mod scan;
pub mod shape;
pub mod sse;
pub mod stream;
pub mod wellformed;
