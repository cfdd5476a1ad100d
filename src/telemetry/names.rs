//! Every telemetry name tokentap emits, in one place.
//!
//! Dashboards, alerts and the lab's queries depend on these exact strings
//! (docs/metrics.md), so they are written once and referenced everywhere else.
//! Prometheus names are registered without the suffixes the encoder adds
//! (`_total` on counters, the unit on histograms).

/// One metric, defined once: `/metrics` and the OTel instruments are both built
/// from it, so their names, help texts, units and buckets cannot drift apart.
#[derive(Debug, Clone, Copy)]
pub struct Metric<K> {
    /// Name registered with prometheus-client; the encoder adds `_total` to
    /// counters and the unit to histograms (the exposed name is in each doc).
    pub prometheus: &'static str,
    /// OTel instrument name (exported over OTLP).
    pub otel: &'static str,
    /// Prometheus `HELP` and OTel description.
    pub help: &'static str,
    pub unit: Unit,
    /// [`kind::Counter`] or [`kind::Histogram`] (with its buckets).
    pub kind: K,
}

/// What a metric counts or measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A plain count (no unit on either side).
    None,
    /// Seconds: `s` in OTel, `_seconds` in Prometheus.
    Seconds,
    /// Tokens: `{token}` in OTel; an annotation, not a unit, so nothing in
    /// Prometheus (as the OTel-to-Prometheus mapping drops `{...}` units).
    Tokens,
}

impl Unit {
    /// The OTel (UCUM) unit, if any.
    pub const fn otel(self) -> Option<&'static str> {
        match self {
            Unit::None => None,
            Unit::Seconds => Some("s"),
            Unit::Tokens => Some("{token}"),
        }
    }
}

/// Metric kinds; a histogram carries its bucket boundaries.
pub mod kind {
    #[derive(Debug, Clone, Copy)]
    pub struct Counter;

    #[derive(Debug, Clone, Copy)]
    pub struct Histogram {
        pub buckets: &'static [f64],
    }
}

/// Every metric tokentap exports. The lab's instruments keep their Prometheus
/// names in OTel, so a collector's Prometheus exporter shows the same series as
/// `/metrics`; the GenAI ones use the semantic conventions' names.
pub mod metric {
    use super::kind::{Counter, Histogram};
    use super::{Metric, Unit, buckets};

    /// `llm_requests_total`
    pub const LLM_REQUESTS: Metric<Counter> = Metric {
        prometheus: "llm_requests",
        otel: "llm_requests_total",
        help: "LLM requests, by model and outcome",
        unit: Unit::None,
        kind: Counter,
    };
    /// `llm_request_duration_seconds`
    pub const LLM_REQUEST_DURATION: Metric<Histogram> = Metric {
        prometheus: "llm_request_duration",
        otel: "llm_request_duration_seconds",
        help: "Duration of LLM requests until the last byte",
        unit: Unit::Seconds,
        kind: Histogram {
            buckets: buckets::DURATION,
        },
    };
    /// `llm_tokens_used_total`
    pub const LLM_TOKENS_USED: Metric<Counter> = Metric {
        prometheus: "llm_tokens_used",
        otel: "llm_tokens_used_total",
        help: "Tokens used by LLM requests as reported by the provider (type: prompt, completion, total)",
        unit: Unit::None,
        kind: Counter,
    };
    /// `llm_cost_usd_total`; no unit: a collector's Prometheus exporter would append it to the name.
    pub const LLM_COST_USD: Metric<Counter> = Metric {
        prometheus: "llm_cost_usd",
        otel: "llm_cost_usd_total",
        help: "Cost of LLM requests in USD, from provider usage and the price table",
        unit: Unit::None,
        kind: Counter,
    };
    /// `agent_conversations_total`
    pub const AGENT_CONVERSATIONS: Metric<Counter> = Metric {
        prometheus: "agent_conversations",
        otel: "agent_conversations_total",
        help: "Agent conversations started",
        unit: Unit::None,
        kind: Counter,
    };
    /// `agent_messages_total`
    pub const AGENT_MESSAGES: Metric<Counter> = Metric {
        prometheus: "agent_messages",
        otel: "agent_messages_total",
        help: "Agent messages processed, by type",
        unit: Unit::None,
        kind: Counter,
    };
    /// `gen_ai_client_token_usage`
    pub const GEN_AI_TOKEN_USAGE: Metric<Histogram> = Metric {
        prometheus: "gen_ai_client_token_usage",
        otel: "gen_ai.client.token.usage",
        help: "Number of input and output tokens used per call (gen_ai.client.token.usage)",
        unit: Unit::Tokens,
        kind: Histogram {
            buckets: buckets::TOKENS,
        },
    };
    /// `gen_ai_client_operation_duration_seconds`
    pub const GEN_AI_OPERATION_DURATION: Metric<Histogram> = Metric {
        prometheus: "gen_ai_client_operation_duration",
        otel: "gen_ai.client.operation.duration",
        help: "GenAI operation duration (gen_ai.client.operation.duration)",
        unit: Unit::Seconds,
        kind: Histogram {
            buckets: buckets::DURATION,
        },
    };
    /// `gen_ai_client_operation_time_to_first_chunk_seconds`
    pub const GEN_AI_TIME_TO_FIRST_CHUNK: Metric<Histogram> = Metric {
        prometheus: "gen_ai_client_operation_time_to_first_chunk",
        otel: "gen_ai.client.operation.time_to_first_chunk",
        help: "Time to receive the first chunk of a stream (gen_ai.client.operation.time_to_first_chunk)",
        unit: Unit::Seconds,
        kind: Histogram {
            buckets: buckets::DURATION,
        },
    };
    /// `gen_ai_client_operation_time_per_output_chunk_seconds`
    pub const GEN_AI_TIME_PER_OUTPUT_CHUNK: Metric<Histogram> = Metric {
        prometheus: "gen_ai_client_operation_time_per_output_chunk",
        otel: "gen_ai.client.operation.time_per_output_chunk",
        help: "Time between consecutive output chunks of a stream (gen_ai.client.operation.time_per_output_chunk)",
        unit: Unit::Seconds,
        kind: Histogram {
            buckets: buckets::PER_CHUNK,
        },
    };
    /// `tokentap_unpriced_calls_total`
    pub const UNPRICED_CALLS: Metric<Counter> = Metric {
        prometheus: "tokentap_unpriced_calls",
        otel: "tokentap_unpriced_calls_total",
        help: "Calls with usage but no known price (no cost recorded)",
        unit: Unit::None,
        kind: Counter,
    };
    /// `tokentap_parse_errors_total`
    pub const PARSE_ERRORS: Metric<Counter> = Metric {
        prometheus: "tokentap_parse_errors",
        otel: "tokentap_parse_errors_total",
        help: "Responses or requests tokentap could not observe (forwarded unchanged), by reason",
        unit: Unit::None,
        kind: Counter,
    };
    /// `tokentap_telemetry_dropped_total`
    pub const TELEMETRY_DROPPED: Metric<Counter> = Metric {
        prometheus: "tokentap_telemetry_dropped",
        otel: "tokentap_telemetry_dropped_total",
        help: "Telemetry items dropped because an export queue was full or their export failed, by signal",
        unit: Unit::None,
        kind: Counter,
    };
    /// `tokentap_overhead_seconds`
    pub const OVERHEAD: Metric<Histogram> = Metric {
        prometheus: "tokentap_overhead",
        otel: "tokentap_overhead_seconds",
        help: "Time tokentap spent on each proxied call, excluding waiting on the upstream and the client",
        unit: Unit::Seconds,
        kind: Histogram {
            buckets: buckets::OVERHEAD,
        },
    };

    /// Every counter, for the tests holding each backend to its descriptor.
    #[cfg(test)]
    pub const COUNTERS: [&Metric<Counter>; 8] = [
        &LLM_REQUESTS,
        &LLM_TOKENS_USED,
        &LLM_COST_USD,
        &AGENT_CONVERSATIONS,
        &AGENT_MESSAGES,
        &UNPRICED_CALLS,
        &PARSE_ERRORS,
        &TELEMETRY_DROPPED,
    ];

    /// Every histogram, likewise.
    #[cfg(test)]
    pub const HISTOGRAMS: [&Metric<Histogram>; 6] = [
        &LLM_REQUEST_DURATION,
        &GEN_AI_TOKEN_USAGE,
        &GEN_AI_OPERATION_DURATION,
        &GEN_AI_TIME_TO_FIRST_CHUNK,
        &GEN_AI_TIME_PER_OUTPUT_CHUNK,
        &OVERHEAD,
    ];
}

/// Prometheus label names.
pub mod label {
    pub const MODEL: &str = "model";
    pub const PROVIDER: &str = "provider";
    pub const STATUS: &str = "status";
    pub const TYPE: &str = "type";
    pub const ACTION: &str = "action";
    pub const REASON: &str = "reason";
    pub const SIGNAL: &str = "signal";
    pub const GEN_AI_OPERATION_NAME: &str = "gen_ai_operation_name";
    pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai_provider_name";
    pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai_request_model";
    pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai_response_model";
    pub const GEN_AI_TOKEN_TYPE: &str = "gen_ai_token_type";
    pub const SERVER_ADDRESS: &str = "server_address";
    pub const ERROR_TYPE: &str = "error_type";
}

/// Fixed label values.
pub mod value {
    pub const STATUS_SUCCESS: &str = "success";
    pub const STATUS_ERROR: &str = "error";
    pub const TOKENS_PROMPT: &str = "prompt";
    pub const TOKENS_COMPLETION: &str = "completion";
    pub const TOKENS_TOTAL: &str = "total";
    pub const TOKEN_INPUT: &str = "input";
    pub const TOKEN_OUTPUT: &str = "output";
    /// What an unbounded label value folds into past the cap.
    pub const OTHER: &str = "other";
    /// A model the request did not name.
    pub const UNKNOWN: &str = "unknown";
    /// `openai.api.type` of a Realtime session, and its span's name.
    pub const API_TYPE_REALTIME: &str = "realtime";
}

/// Histogram bucket boundaries advised by the GenAI semantic conventions.
pub mod buckets {
    /// `gen_ai.client.token.usage`
    pub const TOKENS: &[f64] = &[
        1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
        4194304.0, 16777216.0, 67108864.0,
    ];
    /// `gen_ai.client.operation.duration` and time to first chunk (seconds).
    pub const DURATION: &[f64] = &[
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    ];
    /// Time tokentap itself spends on a call (seconds): microseconds to tens of milliseconds.
    pub const OVERHEAD: &[f64] = &[
        0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
        0.025, 0.05, 0.1,
    ];
    /// Time per output chunk (seconds).
    pub const PER_CHUNK: &[f64] = &[
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    ];
}

/// Span attribute keys (GenAI semantic conventions v1.41, HTTP, and tokentap's own).
pub mod attr {
    pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
    pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
    pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
    pub const GEN_AI_REQUEST_STREAM: &str = "gen_ai.request.stream";
    pub const GEN_AI_REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
    pub const GEN_AI_REQUEST_TOP_P: &str = "gen_ai.request.top_p";
    pub const GEN_AI_REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
    pub const GEN_AI_REQUEST_FREQUENCY_PENALTY: &str = "gen_ai.request.frequency_penalty";
    pub const GEN_AI_REQUEST_PRESENCE_PENALTY: &str = "gen_ai.request.presence_penalty";
    pub const GEN_AI_REQUEST_STOP_SEQUENCES: &str = "gen_ai.request.stop_sequences";
    pub const GEN_AI_REQUEST_SEED: &str = "gen_ai.request.seed";
    pub const GEN_AI_REQUEST_CHOICE_COUNT: &str = "gen_ai.request.choice.count";
    pub const GEN_AI_REQUEST_ENCODING_FORMATS: &str = "gen_ai.request.encoding_formats";
    pub const GEN_AI_OUTPUT_TYPE: &str = "gen_ai.output.type";
    pub const GEN_AI_RESPONSE_ID: &str = "gen_ai.response.id";
    pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
    pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
    pub const GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
    pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    pub const GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
    pub const GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: &str = "gen_ai.usage.reasoning.output_tokens";
    pub const GEN_AI_EMBEDDINGS_DIMENSION_COUNT: &str = "gen_ai.embeddings.dimension.count";
    pub const GEN_AI_INPUT_MESSAGES: &str = "gen_ai.input.messages";
    pub const GEN_AI_OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
    pub const GEN_AI_SYSTEM_INSTRUCTIONS: &str = "gen_ai.system_instructions";
    pub const GEN_AI_TOKEN_TYPE: &str = "gen_ai.token.type";
    pub const OPENAI_API_TYPE: &str = "openai.api.type";
    pub const OPENAI_REQUEST_SERVICE_TIER: &str = "openai.request.service_tier";
    pub const OPENAI_RESPONSE_SERVICE_TIER: &str = "openai.response.service_tier";
    pub const OPENAI_RESPONSE_SYSTEM_FINGERPRINT: &str = "openai.response.system_fingerprint";
    /// The modality split of a usage (no convention exists for it): parts of
    /// `gen_ai.usage.input_tokens` / `gen_ai.usage.output_tokens`.
    pub const OPENAI_USAGE_INPUT_AUDIO_TOKENS: &str = "openai.usage.input_audio_tokens";
    pub const OPENAI_USAGE_OUTPUT_AUDIO_TOKENS: &str = "openai.usage.output_audio_tokens";
    pub const OPENAI_USAGE_INPUT_IMAGE_TOKENS: &str = "openai.usage.input_image_tokens";
    pub const OPENAI_USAGE_OUTPUT_IMAGE_TOKENS: &str = "openai.usage.output_image_tokens";
    pub const SERVER_ADDRESS: &str = "server.address";
    pub const SERVER_PORT: &str = "server.port";
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    pub const HTTP_RESPONSE_HEADER_X_REQUEST_ID: &str = "http.response.header.x-request-id";
    pub const URL_PATH: &str = "url.path";
    pub const ERROR_TYPE: &str = "error.type";
    /// No convention exists for cost.
    pub const LLM_COST_USD: &str = "llm.cost.usd";
    pub const TOKENTAP_USAGE_INJECTED: &str = "tokentap.usage_injected";
    // --- read by the live view; set by attribution (SPEC §11) ---
    pub const OPENAI_PROJECT: &str = "openai.project";
    pub const TOKENTAP_KEY_ID: &str = "tokentap.key_id";
    // --- end read by the live view ---
}

/// Signals, as in `tokentap_telemetry_dropped_total{signal}`.
pub mod signal {
    pub const TRACES: &str = "traces";
    pub const METRICS: &str = "metrics";
    pub const LOGS: &str = "logs";
}

/// The target of the per-call log line (where it was emitted before it moved
/// to its own module): `--log` filters and JSON logs show it.
pub const LOG_TARGET: &str = "tokentap::telemetry";

/// Names of tokentap's own spans (the agent's).
pub mod span {
    pub const INSTRUMENTATION_SCOPE: &str = "tokentap";
}
