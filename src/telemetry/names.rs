//! Every telemetry name tokentap emits, in one place.
//!
//! Dashboards, alerts and the lab's queries depend on these exact strings
//! (SPEC §4–5), so they are written once and referenced everywhere else.
//! Prometheus names are registered without the suffixes the encoder adds
//! (`_total` on counters, the unit on histograms).

/// Metric names as registered (the exposed name is in the comment).
pub mod metric {
    /// `llm_requests_total`
    pub const LLM_REQUESTS: &str = "llm_requests";
    /// `llm_request_duration_seconds`
    pub const LLM_REQUEST_DURATION: &str = "llm_request_duration";
    /// `llm_tokens_used_total`
    pub const LLM_TOKENS_USED: &str = "llm_tokens_used";
    /// `llm_cost_usd_total`
    pub const LLM_COST_USD: &str = "llm_cost_usd";
    /// `agent_conversations_total`
    pub const AGENT_CONVERSATIONS: &str = "agent_conversations";
    /// `agent_messages_total`
    pub const AGENT_MESSAGES: &str = "agent_messages";
    /// `gen_ai_client_token_usage` (OTel `gen_ai.client.token.usage`)
    pub const GEN_AI_TOKEN_USAGE: &str = "gen_ai_client_token_usage";
    /// `gen_ai_client_operation_duration_seconds`
    pub const GEN_AI_OPERATION_DURATION: &str = "gen_ai_client_operation_duration";
    /// `gen_ai_client_operation_time_to_first_chunk_seconds`
    pub const GEN_AI_TIME_TO_FIRST_CHUNK: &str = "gen_ai_client_operation_time_to_first_chunk";
    /// `gen_ai_client_operation_time_per_output_chunk_seconds`
    pub const GEN_AI_TIME_PER_OUTPUT_CHUNK: &str = "gen_ai_client_operation_time_per_output_chunk";
    /// `tokentap_unpriced_calls_total`
    pub const UNPRICED_CALLS: &str = "tokentap_unpriced_calls";
    /// `tokentap_parse_errors_total`
    pub const PARSE_ERRORS: &str = "tokentap_parse_errors";
    /// `tokentap_telemetry_dropped_total`
    pub const TELEMETRY_DROPPED: &str = "tokentap_telemetry_dropped";
    /// `tokentap_overhead_seconds`
    pub const OVERHEAD: &str = "tokentap_overhead";
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
}

/// OpenTelemetry instrument names (exported over OTLP). The lab's instruments
/// keep their Prometheus names so a collector's Prometheus exporter shows the
/// same series as `/metrics`.
pub mod instrument {
    pub const LLM_REQUESTS: &str = "llm_requests_total";
    pub const LLM_REQUEST_DURATION: &str = "llm_request_duration_seconds";
    pub const LLM_TOKENS_USED: &str = "llm_tokens_used_total";
    pub const LLM_COST_USD: &str = "llm_cost_usd_total";
    pub const AGENT_CONVERSATIONS: &str = "agent_conversations_total";
    pub const AGENT_MESSAGES: &str = "agent_messages_total";
    pub const GEN_AI_TOKEN_USAGE: &str = "gen_ai.client.token.usage";
    pub const GEN_AI_OPERATION_DURATION: &str = "gen_ai.client.operation.duration";
    pub const GEN_AI_TIME_TO_FIRST_CHUNK: &str = "gen_ai.client.operation.time_to_first_chunk";
    pub const GEN_AI_TIME_PER_OUTPUT_CHUNK: &str = "gen_ai.client.operation.time_per_output_chunk";
    pub const UNPRICED_CALLS: &str = "tokentap_unpriced_calls_total";
    pub const PARSE_ERRORS: &str = "tokentap_parse_errors_total";
    pub const TELEMETRY_DROPPED: &str = "tokentap_telemetry_dropped_total";
    pub const OVERHEAD: &str = "tokentap_overhead_seconds";
}

/// Signals, as in `tokentap_telemetry_dropped_total{signal}`.
pub mod signal {
    pub const TRACES: &str = "traces";
    pub const METRICS: &str = "metrics";
    pub const LOGS: &str = "logs";
}

/// Names of tokentap's own spans (the agent's).
pub mod span {
    pub const INSTRUMENTATION_SCOPE: &str = "tokentap";
}
