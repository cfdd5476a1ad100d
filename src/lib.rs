//! tokentap: a sidecar proxy that makes OpenAI traffic observable.
//!
//! # The path of one request
//!
//! ```text
//!            listener (accept, head/idle deadlines, connection cap)
//!               │
//! client ──► server ──► Target: /health · /metrics · agent · proxy
//!                                              │        │
//!                                              │        ▼  proxy stages (proxy/*.rs)
//!                                              │   read body (inbound: size + time bounds)
//!                                              │   → route (route.rs: upstream, provider, pool)
//!                                              │   → prepare (RequestFacts → Call, usage injection)
//!                                              │   → upstream request → send (upstream.rs pool)
//!                                              │   → tap: tap::Tap passes every frame on as it
//!                                              │     arrives; observe::Observer decodes a copy
//!                                              │     (genai::sse / stream / response / decode)
//!                                              ▼
//!              agent (lab API) ── calls the model through the same proxy stages
//!
//! exactly once per call — end, error, or client gone — a call::Call goes to
//! telemetry::Recorder (a tapped one just after its response has left): priced,
//! labels bounded once, then handed to each CallSink in order:
//! Prometheus metrics → OTel instruments → log line → live view → span
//! ```
//!
//! # Module map
//! Composition and configuration:
//! - [`app`]: the composition root — builds every part, one `StartError` with its exit code
//! - [`config`]: flags, env and `.env` → [`config::Config`]
//!
//! The request path, in order:
//! - `listener`: the socket, the shared accept loop, per-connection limits, channel bodies
//! - `server`: routes each request to a local route, the agent or the proxy
//! - `inbound`: reading a client's body within size and time limits
//! - `proxy`: the forwarding stages (`proxy/{prepare,request,send,retry,respond}.rs`),
//!   and WebSocket upgrades tunnelled byte for byte (`proxy/{upgrade,tunnel}.rs`)
//! - `route`: where a request goes (upstream, provider, connection pool)
//! - `upstream`: the pooled client of a route (TLS, buffers)
//! - [`tap`]: the body wrapper that ends each call exactly once
//! - [`observe`]: what the tap does with the bytes it sees
//! - `agent`: the lab's conversation API on the proxy's stages (`agent/chat.rs`); its
//!   conversations in `agent/store.rs`: memory (`store/in_memory.rs`, `store/lru.rs`) or
//!   Redis (`store/in_redis.rs`: leases, fenced writes)
//!
//! What a call is and what becomes of it:
//! - [`genai`]: pure protocol knowledge (no I/O), unit-tested on recorded bytes
//! - [`call`]: the one record per call all telemetry derives from
//! - [`telemetry`]: the recorder and its sinks (metrics, instruments, log, span), one
//!   descriptor per metric, the series cache, OTel providers and export queues
//! - `error`: OpenAI-shaped local errors
//! - `access`: `--access-token` for the agent and the live view
//! - `live`: the live view — a ring of recent calls (one more sink), `/ui` and `/api/*`
//!
//! Beside the path:
//! - [`demo`]: the simulated OpenAI upstream of `--demo` and the tests (`demo/`: one file
//!   per endpoint)
//! - [`websocket`]: a bounded, pure reader of WebSocket messages from copied bytes
//!   (fragments, control frames, `permessage-deflate`), for observing tunnels
//!
//! - `hex`: bytes as lower-case hex (ids, fingerprints, tokens); imports nothing
//!
//! No module imports one that imports it back; `genai` imports none of the others but
//! the leaf `hex`.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

pub(crate) mod access;
pub(crate) mod agent;
pub mod app;
pub mod call;
pub mod config;
pub mod demo;
pub(crate) mod error;
pub mod genai;
pub(crate) mod hex;
pub(crate) mod inbound;
pub(crate) mod listener;
pub(crate) mod live;
pub mod observe;
pub(crate) mod proxy;
pub(crate) mod route;
pub(crate) mod server;
pub mod tap;
pub mod telemetry;
pub mod tls;
pub(crate) mod upstream;
pub mod websocket;
