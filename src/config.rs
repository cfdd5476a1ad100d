//! Typed configuration from flags, environment and `.env`.
//!
//! Every setting is validated here, once, so a bad value stops tokentap at
//! start with one line naming the setting (exit status 2) instead of
//! surfacing later as a failed request. Secrets are wrapped so that no
//! `Debug` or log line can print them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

mod agent;
mod attribution;
mod routes;
pub use agent::{AgentModels, AgentStore, AgentStoreArg, RedisUrl};
pub use routes::{RouteList, RouteSpec, check_routes, parse_provider};

use crate::genai::attribution::Dimension;
use crate::tls::{CaCerts, ClientIdentity};
use attribution::{check_baggage_keys, check_dimensions};

/// A value that must never be printed (API keys).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The upstream base URL, split once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash (may be empty).
    pub prefix: String,
}

impl Upstream {
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL ({e})"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{s:?} has no scheme (http:// or https://)"))?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(format!("{s:?}: scheme must be http or https"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{s:?} has no host"))?;
        if authority.host().is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        if uri.query().is_some() {
            return Err(format!(
                "{s:?}: a query string is not allowed in the upstream URL"
            ));
        }
        Ok(Upstream {
            scheme,
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    pub fn host(&self) -> &str {
        self.authority.host()
    }

    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.scheme == http::uri::Scheme::HTTPS {
                443
            } else {
                80
            })
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

/// Parses `500ms`, `2s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 2s, 5m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    let d = Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))?;
    if d > MAX_DURATION {
        return Err(format!("{s:?} is out of range (at most one year)"));
    }
    Ok(d)
}

/// A duration that must be more than zero (a zero deadline would close or refuse everything).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(d)
}

/// Longest duration any setting accepts: deadlines past it would overflow the
/// clock arithmetic of timers, and no real wait is that long.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `32MiB`, `512KiB`, `1GiB`, `10MB`, or a number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 32MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The egress proxies the environment names (`None` when it names none):
/// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, upper or lower case, as curl reads them.
fn egress_proxy_from_env() -> Option<std::sync::Arc<hyper_util::client::proxy::matcher::Matcher>> {
    const VARS: [&str; 6] = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ];
    VARS.iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
        .then(|| std::sync::Arc::new(hyper_util::client::proxy::matcher::Matcher::from_env()))
}

/// `--upstream-ca FILE`: read and checked at start.
fn parse_ca(s: &str) -> Result<CaCerts, String> {
    CaCerts::load(std::path::Path::new(s))
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    Upstream::parse(s)
}

fn parse_bool_env(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("{other:?} is not true or false")),
    }
}

/// `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`: `true` and `SPAN_ONLY` turn capture on.
fn parse_capture(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "span_only" | "span_and_event" | "1" => Ok(true),
        "false" | "no_content" | "event_only" | "0" | "" => Ok(false),
        other => Err(format!("{other:?} is not true, false or SPAN_ONLY")),
    }
}

/// The lab agent's system prompt (an English rendering of the lab's).
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful and friendly assistant.";

/// tokentap: a sidecar proxy that makes OpenAI traffic observable.
#[derive(Debug, Clone, Parser)]
#[command(name = "tokentap", version, about, long_about = None)]
pub struct Cli {
    /// Address of the one listener (proxy, agent, /metrics, /health; HTTP/1.1 and h2c)
    #[arg(
        long,
        env = "TOKENTAP_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Base URL requests are forwarded to; a path prefix in it is kept
    #[arg(long, env = "TOKENTAP_UPSTREAM", default_value = "https://api.openai.com", value_name = "URL", value_parser = parse_upstream)]
    pub upstream: Upstream,

    /// Provider name of --upstream (default: inferred from its host, e.g. openai, azure.ai.openai, groq)
    #[arg(long, env = "TOKENTAP_PROVIDER", value_parser = parse_provider, value_name = "NAME")]
    pub provider: Option<String>,

    /// PREFIX=URL[,provider=NAME] [,ca=FILE]: requests under PREFIX go to URL, PREFIX removed (repeatable; the longest prefix wins; env: routes separated by spaces)
    #[arg(long = "route", env = "TOKENTAP_ROUTES", value_parser = RouteList::parse, value_name = "ROUTE")]
    pub routes: Vec<RouteList>,

    /// Use the built-in simulated OpenAI upstream (offline, no key needed)
    #[arg(long, env = "TOKENTAP_DEMO", value_parser = parse_bool_env, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub demo: bool,

    /// Delay between streamed chunks of the demo upstream
    #[arg(long, env = "TOKENTAP_DEMO_CHUNK_DELAY", default_value = "30ms", value_parser = parse_duration, value_name = "DURATION")]
    pub demo_chunk_delay: Duration,

    /// Override or extend model prices (TOML, or LiteLLM's JSON layout when the file ends in .json)
    #[arg(long, env = "TOKENTAP_PRICING", value_name = "FILE")]
    pub pricing: Option<PathBuf>,

    /// Upstream connect timeout (→ 504)
    #[arg(long, env = "TOKENTAP_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,

    /// Longest wait for the next byte from the upstream (→ 504 before the response starts; ends the stream after)
    #[arg(long, env = "TOKENTAP_READ_TIMEOUT", default_value = "600s", value_parser = parse_duration, value_name = "DURATION")]
    pub read_timeout: Duration,

    /// Largest request body (→ 413)
    #[arg(long, env = "TOKENTAP_MAX_BODY", default_value = "32MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_body: u64,

    /// Close a connection that has not sent a complete request head within this (slowloris)
    #[arg(long, env = "TOKENTAP_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub header_timeout: Duration,

    /// Longest wait for the next byte of a request body (→ 408)
    #[arg(long, env = "TOKENTAP_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub request_timeout: Duration,

    /// Close an idle keep-alive client connection after this
    #[arg(long, env = "TOKENTAP_IDLE_TIMEOUT", default_value = "300s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// Client connections served at once; past it tokentap waits before accepting more
    #[arg(long, env = "TOKENTAP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_connections: u32,

    /// Largest agent request body (→ 413)
    #[arg(long, env = "TOKENTAP_AGENT_MAX_BODY", default_value = "1MiB", value_parser = parse_size, value_name = "SIZE")]
    pub agent_max_body: u64,

    /// A metric label value longer than this (bytes) is recorded as `other`
    #[arg(
        long,
        env = "TOKENTAP_MAX_LABEL_LENGTH",
        default_value_t = 128,
        value_name = "BYTES"
    )]
    pub max_label_length: usize,

    /// Distinct values per metric label before new ones fold into `other`
    #[arg(
        long,
        env = "TOKENTAP_MAX_LABEL_VALUES",
        default_value_t = 1000,
        value_name = "N"
    )]
    pub max_label_values: usize,

    /// Do not ask streams for usage on the client's behalf (streams without include_usage then record no tokens); env: TOKENTAP_USAGE_INJECTION=false
    #[arg(long = "no-usage-injection", env = "TOKENTAP_USAGE_INJECTION", value_parser = parse_usage_injection, num_args = 0, default_missing_value = "false", default_value = "true", hide_env_values = true)]
    pub usage_injection: bool,

    /// Record prompts and completions on spans (opt-in, privacy)
    #[arg(long, env = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", value_parser = parse_capture, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub capture_content: bool,

    /// The agent's default model
    #[arg(
        long,
        env = "TOKENTAP_AGENT_MODEL",
        default_value = "gpt-4o-mini",
        value_name = "MODEL"
    )]
    pub agent_model: String,

    /// The agent's system prompt
    #[arg(long, env = "TOKENTAP_AGENT_SYSTEM_PROMPT", default_value = DEFAULT_SYSTEM_PROMPT, value_name = "TEXT")]
    pub agent_system_prompt: String,

    /// Most conversations the agent keeps (least recently used ones are evicted)
    #[arg(
        long,
        env = "TOKENTAP_AGENT_MAX_CONVERSATIONS",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub agent_max_conversations: usize,

    /// Most messages kept per conversation (oldest turns are trimmed; the system prompt stays)
    #[arg(
        long,
        env = "TOKENTAP_AGENT_MAX_HISTORY",
        default_value_t = 100,
        value_name = "N"
    )]
    pub agent_max_history: usize,

    /// Grace period for in-flight requests at shutdown
    #[arg(long, env = "TOKENTAP_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_grace: Duration,

    /// Log line format
    #[arg(
        long,
        env = "TOKENTAP_LOG_FORMAT",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `info,tokentap=debug`
    #[arg(
        long,
        env = "TOKENTAP_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log: String,

    /// Check that a tokentap listening on --listen is healthy (GET /health) and exit 0 or 1; for container healthchecks
    #[arg(long)]
    pub healthcheck: bool,

    // --- upstream TLS and egress (docs/configuration.md) ---
    /// Extra CA certificates (PEM) trusted for https upstreams, besides Mozilla's roots and the system store
    #[arg(long, env = "TOKENTAP_UPSTREAM_CA", value_name = "FILE", value_parser = parse_ca)]
    pub upstream_ca: Option<CaCerts>,

    /// Client certificate chain (PEM) presented to upstreams that ask for one (mTLS); needs --upstream-client-key
    #[arg(
        long,
        env = "TOKENTAP_UPSTREAM_CLIENT_CERT",
        value_name = "FILE",
        requires = "upstream_client_key"
    )]
    pub upstream_client_cert: Option<PathBuf>,

    /// Private key (PEM) of --upstream-client-cert
    #[arg(
        long,
        env = "TOKENTAP_UPSTREAM_CLIENT_KEY",
        value_name = "FILE",
        requires = "upstream_client_cert"
    )]
    pub upstream_client_key: Option<PathBuf>,
    // --- end upstream TLS and egress ---
    // --- attribution (SPEC §11) ---
    /// W3C baggage keys whose entries are recorded on every call's span (comma-separated)
    #[arg(
        long,
        env = "TOKENTAP_BAGGAGE_KEYS",
        value_delimiter = ',',
        value_name = "K1,K2"
    )]
    pub baggage_keys: Vec<String>,

    /// Opt-in labels on llm_requests_total, llm_tokens_used_total and llm_cost_usd_total: any of project, organization, key_id, user, and --baggage-keys (comma-separated)
    #[arg(
        long,
        env = "TOKENTAP_METRIC_DIMENSIONS",
        value_delimiter = ',',
        value_name = "LIST"
    )]
    pub metric_dimensions: Vec<String>,
    // --- end attribution ---
    /// When set, the agent's routes and the live view need `Authorization: Bearer <token>` (→ 401); /health, /metrics and proxied traffic are unaffected
    #[arg(long, env = "TOKENTAP_ACCESS_TOKEN", value_name = "TOKEN", hide_env_values = true, value_parser = parse_access_token)]
    pub access_token: Option<Secret>,

    // --- agent in production (docs/configuration.md) ---
    /// Where the agent keeps conversations: `memory`, or `redis://[user:pass@]host:port[/db]` (shared by replicas, kept across restarts)
    #[arg(long, env = "TOKENTAP_AGENT_STORE", default_value = "memory", value_parser = agent::parse_agent_store_arg, value_name = "STORE", hide_env_values = true)]
    pub agent_store: AgentStoreArg,

    /// A conversation untouched this long is forgotten
    #[arg(long, env = "TOKENTAP_AGENT_CONVERSATION_TTL", default_value = "24h", value_parser = parse_positive_duration, value_name = "TTL")]
    pub agent_conversation_ttl: Duration,

    /// Models a /chat may ask for, comma-separated (`*`: any; default: only --agent-model; others → 422)
    #[arg(long, env = "TOKENTAP_AGENT_MODELS", value_parser = agent::parse_agent_models, value_name = "MODELS")]
    pub agent_models: Option<AgentModels>,

    /// Do not serve the agent's routes (they are forwarded like any path); env: TOKENTAP_AGENT=false
    #[arg(long = "no-agent", env = "TOKENTAP_AGENT", value_parser = parse_bool_env, num_args = 0, default_missing_value = "false", default_value = "true", hide_env_values = true)]
    pub agent: bool,

    /// Longest wait for another turn's hold on a conversation (→ 409)
    #[arg(long, env = "TOKENTAP_AGENT_LOCK_WAIT", default_value = "30s", value_parser = parse_positive_duration, value_name = "DURATION", hide = true)]
    pub agent_lock_wait: Duration,
    // --- end agent in production ---
    // --- live view (docs/live-view.md) ---
    /// Recent calls the live view (/ui, /api/calls) keeps in memory; 0 turns the live view off
    #[arg(long, env = "TOKENTAP_RECENT_CALLS", default_value_t = 1000, value_parser = parse_recent_calls, value_name = "N")]
    pub recent_calls: usize,

    /// Link from the live view to a call's trace: a URL with {trace_id}, e.g. http://localhost:16686/trace/{trace_id}
    #[arg(long, env = "TOKENTAP_TRACE_URL", value_parser = parse_trace_url, value_name = "TEMPLATE")]
    pub trace_url: Option<String>,
    // --- end live view ---
    /// Service name reported in /health and telemetry
    #[arg(
        long,
        env = "OTEL_SERVICE_NAME",
        default_value = "tokentap",
        value_name = "NAME",
        hide = true
    )]
    pub service_name: String,
}

/// `--access-token`: a non-empty token without spaces (it travels in a header).
fn parse_access_token(s: &str) -> Result<Secret, String> {
    if s.is_empty() || s.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err("an access token must be non-empty printable ASCII without spaces".into());
    }
    Ok(Secret::new(s))
}

/// Largest `--recent-calls`: a call takes about 2.5 KiB in the ring (more with
/// content capture), so this bounds it near half a gigabyte.
pub const MAX_RECENT_CALLS: usize = 200_000;

/// `--recent-calls`: 0 (off) up to [`MAX_RECENT_CALLS`].
fn parse_recent_calls(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of calls"))?;
    if n > MAX_RECENT_CALLS {
        return Err(format!("at most {MAX_RECENT_CALLS} calls"));
    }
    Ok(n)
}

/// `--trace-url`: an http(s) URL template that names `{trace_id}`.
fn parse_trace_url(s: &str) -> Result<String, String> {
    if !s.contains("{trace_id}") {
        return Err(format!("{s:?} has no {{trace_id}} to fill in"));
    }
    if !(s.starts_with("http://") || s.starts_with("https://")) {
        return Err(format!("{s:?} is not an http:// or https:// URL"));
    }
    let probe = s.replace("{trace_id}", "0af7651916cd43dd8448eb211c80319c");
    probe
        .parse::<http::Uri>()
        .map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    Ok(s.to_owned())
}

/// `--no-usage-injection` (flag) and `TOKENTAP_USAGE_INJECTION=false` (env) both mean off.
/// As a flag the parser receives `default_missing_value`; as env the user's value.
fn parse_usage_injection(s: &str) -> Result<bool, String> {
    parse_bool_env(s)
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    /// `--provider`: the default route's provider, when not inferred from its host.
    pub provider: Option<String>,
    /// `--route`s, in the order given.
    pub routes: Vec<RouteSpec>,
    pub demo: bool,
    pub demo_chunk_delay: Duration,
    pub pricing: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_body: u64,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: u32,
    pub agent_max_body: u64,
    pub max_label_length: usize,
    pub max_label_values: usize,
    pub usage_injection: bool,
    pub capture_content: bool,
    pub shutdown_grace: Duration,
    pub service_name: String,
    pub api_key: Option<Secret>,
    pub agent_model: String,
    pub agent_system_prompt: String,
    pub agent_max_conversations: usize,
    pub agent_max_history: usize,
    // --- upstream TLS and egress (docs/configuration.md) ---
    /// `--upstream-ca`.
    pub upstream_ca: Option<CaCerts>,
    /// `--upstream-client-cert` with `--upstream-client-key`.
    pub upstream_identity: Option<ClientIdentity>,
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` (read once, at start).
    pub egress_proxy: Option<std::sync::Arc<hyper_util::client::proxy::matcher::Matcher>>,
    /// `--access-token`: guards the agent's routes and the live view.
    pub access_token: Option<Secret>,
    // --- attribution (SPEC §11) ---
    /// `--baggage-keys`.
    pub baggage_keys: Vec<String>,
    /// `--metric-dimensions`, validated.
    pub metric_dimensions: Vec<Dimension>,
    // --- end attribution ---
    // --- agent in production (docs/configuration.md) ---
    /// `--agent-store`.
    pub agent_store: AgentStore,
    /// `--agent-conversation-ttl`.
    pub agent_conversation_ttl: Duration,
    /// `--agent-models` (`None`: only `agent_model`).
    pub agent_models: Option<AgentModels>,
    /// False with `--no-agent`: the agent's routes are proxied.
    pub agent: bool,
    /// Longest wait for another turn's hold on a conversation (→ 409).
    pub agent_lock_wait: Duration,
    // --- end agent in production ---
    // --- live view ---
    /// `--recent-calls`: the live view's ring; 0 turns the view off.
    pub recent_calls: usize,
    /// `--trace-url`: the trace link template (`{trace_id}`).
    pub trace_url: Option<String>,
    // --- end live view ---
}

impl Config {
    /// Defaults for an upstream, as used by tests and embedders.
    pub fn for_upstream(upstream: Upstream) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream,
            provider: None,
            routes: Vec::new(),
            demo: false,
            demo_chunk_delay: Duration::ZERO,
            pricing: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(600),
            max_body: 32 << 20,
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            agent_max_body: 1 << 20,
            max_label_length: 128,
            max_label_values: 1000,
            usage_injection: true,
            capture_content: false,
            shutdown_grace: Duration::from_secs(30),
            service_name: "tokentap".to_owned(),
            api_key: None,
            agent_model: "gpt-4o-mini".to_owned(),
            agent_system_prompt: DEFAULT_SYSTEM_PROMPT.to_owned(),
            agent_max_conversations: 10_000,
            agent_max_history: 100,
            upstream_ca: None,
            upstream_identity: None,
            egress_proxy: None,
            access_token: None,
            baggage_keys: Vec::new(),
            metric_dimensions: Vec::new(),
            // --- agent in production ---
            agent_store: AgentStore::Memory,
            agent_conversation_ttl: Duration::from_secs(24 * 3600),
            agent_models: None,
            agent: true,
            agent_lock_wait: Duration::from_secs(30),
            // --- end agent in production ---
            // --- live view ---
            recent_calls: 1000,
            trace_url: None,
            // --- end live view ---
        }
    }
}

impl TryFrom<Cli> for Config {
    type Error = String;

    /// Fails only on a client certificate and key that can't be used together.
    fn try_from(c: Cli) -> Result<Config, String> {
        let upstream_identity = match (&c.upstream_client_cert, &c.upstream_client_key) {
            (Some(cert), Some(key)) => Some(
                ClientIdentity::load(cert, key)
                    .map_err(|e| format!("--upstream-client-cert/--upstream-client-key: {e}"))?,
            ),
            _ => None,
        };
        let baggage_keys = check_baggage_keys(c.baggage_keys)?;
        let metric_dimensions = check_dimensions(&c.metric_dimensions, &baggage_keys)?;
        Ok(Config {
            listen: c.listen,
            upstream: c.upstream,
            provider: c.provider,
            routes: c.routes.into_iter().flat_map(|l| l.0).collect(),
            demo: c.demo,
            demo_chunk_delay: c.demo_chunk_delay,
            pricing: c.pricing,
            connect_timeout: c.connect_timeout,
            read_timeout: c.read_timeout,
            max_body: c.max_body,
            header_timeout: c.header_timeout,
            request_timeout: c.request_timeout,
            idle_timeout: c.idle_timeout,
            max_connections: c.max_connections,
            agent_max_body: c.agent_max_body,
            max_label_length: c.max_label_length,
            max_label_values: c.max_label_values,
            usage_injection: c.usage_injection,
            capture_content: c.capture_content,
            shutdown_grace: c.shutdown_grace,
            service_name: c.service_name,
            api_key: std::env::var("OPENAI_API_KEY")
                .ok()
                .filter(|k| !k.is_empty())
                .map(Secret::new),
            agent_model: c.agent_model,
            agent_system_prompt: c.agent_system_prompt,
            agent_max_conversations: c.agent_max_conversations.max(1),
            agent_max_history: c.agent_max_history.max(2),
            upstream_ca: c.upstream_ca,
            upstream_identity,
            egress_proxy: egress_proxy_from_env(),
            access_token: c.access_token,
            baggage_keys,
            metric_dimensions,
            // --- agent in production ---
            agent_store: c.agent_store.0.map_err(|e| format!("--agent-store: {e}"))?,
            agent_conversation_ttl: c.agent_conversation_ttl,
            agent_models: c.agent_models,
            agent: c.agent,
            agent_lock_wait: c.agent_lock_wait,
            // --- end agent in production ---
            // --- live view ---
            recent_calls: c.recent_calls,
            trace_url: c.trace_url,
            // --- end live view ---
        })
    }
}

#[cfg(test)]
mod tests;
