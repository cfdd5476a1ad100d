//! tokentap: a sidecar proxy that makes OpenAI traffic observable.
//!
//! # The path of one request
//!
//! ```text
//! client ──► server (route) ──► proxy::forward ──► upstream (pooled hyper client, rustls)
//!                │                  │  read the body (bounded), genai::request → RequestFacts,
//!                │                  │  ask a stream for usage if it would carry none (genai::inject)
//!                │                  ▼
//!                │            tap::Tap wraps the response body: frames pass through as they
//!                │            arrive, observe::Observer decodes a copy (genai::sse / stream /
//!                │            response / decode); exactly once — end, error, or client gone —
//!                │            a call::Call is handed to telemetry::Recorder
//!                ▼
//!          /health, /metrics answered locally
//! ```
//!
//! # Module map
//! - [`config`]: flags, env and `.env` → [`config::Config`]
//! - [`server`]: listener, routes, graceful shutdown
//! - [`proxy`]: forwarding and hop-by-hop rules
//! - [`tap`]: the body wrapper that ends each call exactly once
//! - [`observe`]: what the tap does with the bytes it sees
//! - [`genai`]: pure protocol knowledge (no I/O), unit-tested on recorded bytes
//! - [`call`]: the one record per call all telemetry derives from
//! - [`telemetry`]: names, the label guard, Prometheus metrics
//! - [`demo`]: the simulated OpenAI upstream of `--demo` and the tests
//! - [`error`]: OpenAI-shaped local errors
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

pub mod agent;
pub mod app;
pub mod call;
pub mod config;
pub mod demo;
pub mod error;
pub mod genai;
pub(crate) mod inbound;
pub mod listener;
pub mod observe;
pub mod proxy;
pub(crate) mod route;
pub mod server;
pub mod tap;
pub mod telemetry;
pub mod tls;
pub(crate) mod upstream;
