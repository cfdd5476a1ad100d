//! The Prometheus view of calls.
//!
//! Instruments are created once at start and every call is recorded from its
//! [`Call`] record in one function, so the lab's `llm_*` set and the GenAI
//! set always agree. Label values that clients control pass through the
//! [`LabelGuard`].

use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, RwLock};

use super::labels::LabelGuard;
use super::names::{buckets, label, metric, value};
use crate::call::Call;
use crate::genai::request::Operation;

type Labels = Vec<(&'static str, String)>;

/// The client-controlled label values of one call, bounded once and shared by
/// `/metrics` and the OTel instruments.
#[derive(Debug, Clone)]
pub struct BoundedLabels {
    pub model: String,
    /// Configured per route, not client-controlled: not bounded.
    pub provider: crate::genai::provider::Provider,
    pub request_model: String,
    pub response_model: Option<String>,
    pub server_address: String,
    pub error_type: Option<String>,
}
/// Most distinct label combinations whose series are kept ready; past it a call's
/// series is built for that call only (client-chosen model names can't grow it).
const SERIES_CACHE_MAX: usize = 4096;

/// Longest raw values (summed) a cached series keeps: model names are short, and a
/// client sending huge ones shouldn't park them in memory.
const SERIES_KEY_MAX_BYTES: usize = 512;

/// The raw values that decide a call's labels.
#[derive(Debug, PartialEq, Eq)]
struct SeriesKey {
    operation: Option<Operation>,
    provider: crate::genai::provider::Provider,
    request_model: Option<String>,
    response_model: Option<String>,
    server_address: String,
    error_type: Option<String>,
}

impl SeriesKey {
    fn of(call: &Call, error_type: Option<&str>) -> SeriesKey {
        SeriesKey {
            operation: call.operation,
            provider: call.provider.clone(),
            request_model: call.request.model.clone(),
            response_model: call.response.model.clone(),
            server_address: call.server_address.clone(),
            error_type: error_type.map(str::to_owned),
        }
    }

    fn len(&self) -> usize {
        self.request_model.as_ref().map_or(0, String::len)
            + self.response_model.as_ref().map_or(0, String::len)
            + self.server_address.len()
            + self.error_type.as_ref().map_or(0, String::len)
    }

    fn matches(&self, call: &Call, error_type: Option<&str>) -> bool {
        self.operation == call.operation
            && self.provider == call.provider
            && self.request_model.as_deref() == call.request.model.as_deref()
            && self.response_model.as_deref() == call.response.model.as_deref()
            && self.server_address == call.server_address
            && self.error_type.as_deref() == error_type
    }
}

/// One label combination: its bounded values and, made on first use, the metric
/// children they select, shared by every call with the same values. Looking up
/// and hashing ten label sets per call was a tenth of the proxy's CPU (issue 6).
#[derive(Debug)]
pub struct Series {
    key: SeriesKey,
    pub labels: BoundedLabels,
    requests: OnceLock<Counter>,
    duration: OnceLock<ExemplarHistogram>,
    op_duration: OnceLock<ExemplarHistogram>,
    tokens: [OnceLock<Counter>; 3],
    token_usage: [OnceLock<Histogram>; 2],
    cost: OnceLock<Counter<f64, AtomicU64>>,
    unpriced: OnceLock<Counter>,
    ttfc: OnceLock<Histogram>,
    per_chunk: OnceLock<Histogram>,
    /// The same labels as OTel attributes (built by the OTel instruments).
    pub otel: OnceLock<super::otel::Attributes>,
}

impl Series {
    fn new(key: SeriesKey, labels: BoundedLabels) -> Series {
        Series {
            key,
            labels,
            requests: OnceLock::new(),
            duration: OnceLock::new(),
            op_duration: OnceLock::new(),
            tokens: Default::default(),
            token_usage: Default::default(),
            cost: OnceLock::new(),
            unpriced: OnceLock::new(),
            ttfc: OnceLock::new(),
            per_chunk: OnceLock::new(),
            otel: OnceLock::new(),
        }
    }

    /// The lab's labels: model, provider, status.
    fn lab(&self) -> Labels {
        let status = if self.labels.error_type.is_some() {
            value::STATUS_ERROR
        } else {
            value::STATUS_SUCCESS
        };
        vec![
            (label::MODEL, self.labels.model.clone()),
            (label::PROVIDER, self.labels.provider.to_string()),
            (label::STATUS, status.to_owned()),
        ]
    }

    /// The GenAI conventions' labels (without `error.type`).
    fn genai(&self, op: Operation) -> Labels {
        let b = &self.labels;
        let mut genai: Labels = vec![
            (label::GEN_AI_OPERATION_NAME, op.name().to_owned()),
            (label::GEN_AI_PROVIDER_NAME, b.provider.to_string()),
            (label::GEN_AI_REQUEST_MODEL, b.request_model.clone()),
        ];
        if let Some(rm) = &b.response_model {
            genai.push((label::GEN_AI_RESPONSE_MODEL, rm.clone()));
        }
        genai.push((label::SERVER_ADDRESS, b.server_address.clone()));
        genai
    }
}

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;
/// Exemplar labels: the trace (and span) a sample came from, so dashboards link to it.
pub type ExemplarLabels = Vec<(&'static str, String)>;
type ExemplarHistogram = HistogramWithExemplars<ExemplarLabels>;
type ExemplarFamily = Family<Labels, ExemplarHistogram, fn() -> ExemplarHistogram>;

fn duration_histogram_with_exemplars() -> ExemplarHistogram {
    HistogramWithExemplars::new(buckets::DURATION.iter().copied())
}

fn duration_histogram() -> Histogram {
    Histogram::new(buckets::DURATION.iter().copied())
}
fn token_histogram() -> Histogram {
    Histogram::new(buckets::TOKENS.iter().copied())
}
fn overhead_histogram() -> Histogram {
    Histogram::new(buckets::OVERHEAD.iter().copied())
}
fn chunk_histogram() -> Histogram {
    Histogram::new(buckets::PER_CHUNK.iter().copied())
}

pub struct Metrics {
    registry: Registry,
    guard: LabelGuard,
    llm_requests: Family<Labels, Counter>,
    llm_duration: ExemplarFamily,
    llm_tokens: Family<Labels, Counter>,
    llm_cost: Family<Labels, Counter<f64, AtomicU64>>,
    agent_conversations: Family<Labels, Counter>,
    agent_messages: Family<Labels, Counter>,
    token_usage: HistogramFamily,
    op_duration: ExemplarFamily,
    ttfc: HistogramFamily,
    per_chunk: HistogramFamily,
    unpriced: Family<Labels, Counter>,
    parse_errors: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    overhead: Histogram,
    series: RwLock<HashMap<u64, Arc<Series>>>,
    hasher: RandomState,
}

/// The exposition format a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// OpenMetrics when the `Accept` header offers it (Prometheus does), else the 0.0.4 text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => prometheus_text::CONTENT_TYPE,
        }
    }
}

impl Metrics {
    pub fn new(max_label_values: usize) -> Metrics {
        let mut registry = Registry::default();
        let llm_requests = Family::default();
        registry.register(
            metric::LLM_REQUESTS,
            "LLM requests, by model and outcome",
            llm_requests.clone(),
        );
        let llm_duration = ExemplarFamily::new_with_constructor(
            duration_histogram_with_exemplars as fn() -> ExemplarHistogram,
        );
        registry.register_with_unit(
            metric::LLM_REQUEST_DURATION,
            "Duration of LLM requests until the last byte",
            Unit::Seconds,
            llm_duration.clone(),
        );
        let llm_tokens = Family::default();
        registry.register(
            metric::LLM_TOKENS_USED,
            "Tokens used by LLM requests as reported by the provider (type: prompt, completion, total)",
            llm_tokens.clone(),
        );
        let llm_cost = Family::default();
        registry.register(
            metric::LLM_COST_USD,
            "Cost of LLM requests in USD, from provider usage and the price table",
            llm_cost.clone(),
        );
        let agent_conversations = Family::default();
        registry.register(
            metric::AGENT_CONVERSATIONS,
            "Agent conversations started",
            agent_conversations.clone(),
        );
        let agent_messages = Family::default();
        registry.register(
            metric::AGENT_MESSAGES,
            "Agent messages processed, by type",
            agent_messages.clone(),
        );
        let token_usage =
            HistogramFamily::new_with_constructor(token_histogram as fn() -> Histogram);
        registry.register(
            metric::GEN_AI_TOKEN_USAGE,
            "Number of input and output tokens used per call (gen_ai.client.token.usage)",
            token_usage.clone(),
        );
        let op_duration = ExemplarFamily::new_with_constructor(
            duration_histogram_with_exemplars as fn() -> ExemplarHistogram,
        );
        registry.register_with_unit(
            metric::GEN_AI_OPERATION_DURATION,
            "GenAI operation duration (gen_ai.client.operation.duration)",
            Unit::Seconds,
            op_duration.clone(),
        );
        let ttfc = HistogramFamily::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register_with_unit(
            metric::GEN_AI_TIME_TO_FIRST_CHUNK,
            "Time to receive the first chunk of a stream (gen_ai.client.operation.time_to_first_chunk)",
            Unit::Seconds,
            ttfc.clone(),
        );
        let per_chunk = HistogramFamily::new_with_constructor(chunk_histogram as fn() -> Histogram);
        registry.register_with_unit(
            metric::GEN_AI_TIME_PER_OUTPUT_CHUNK,
            "Time between consecutive output chunks of a stream (gen_ai.client.operation.time_per_output_chunk)",
            Unit::Seconds,
            per_chunk.clone(),
        );
        let unpriced = Family::default();
        registry.register(
            metric::UNPRICED_CALLS,
            "Calls with usage but no known price (no cost recorded)",
            unpriced.clone(),
        );
        let parse_errors = Family::default();
        registry.register(
            metric::PARSE_ERRORS,
            "Responses or requests tokentap could not observe (forwarded unchanged), by reason",
            parse_errors.clone(),
        );
        let dropped = Family::default();
        registry.register(
            metric::TELEMETRY_DROPPED,
            "Telemetry items dropped because an export queue was full or their export failed, by signal",
            dropped.clone(),
        );
        let overhead = overhead_histogram();
        registry.register_with_unit(
            metric::OVERHEAD,
            "Time tokentap spent on each proxied call, excluding waiting on the upstream and the client",
            Unit::Seconds,
            overhead.clone(),
        );
        Metrics {
            overhead,
            registry,
            guard: LabelGuard::new(max_label_values),
            llm_requests,
            llm_duration,
            llm_tokens,
            llm_cost,
            agent_conversations,
            agent_messages,
            token_usage,
            op_duration,
            ttfc,
            per_chunk,
            unpriced,
            parse_errors,
            dropped,
            series: RwLock::new(HashMap::new()),
            hasher: RandomState::new(),
        }
    }

    /// The series of `call`: its label values bounded (see [`LabelGuard`]) and the
    /// metric children they select, from the cache when these values were seen before.
    /// `error_type`: `call.error_type()`, which the caller has at hand.
    pub fn series(&self, call: &Call, error_type: Option<&str>) -> Arc<Series> {
        let hash = self.hasher.hash_one((
            call.operation,
            call.provider.as_str(),
            call.request.model.as_deref(),
            call.response.model.as_deref(),
            call.server_address.as_str(),
            error_type,
        ));
        // one read lock per call; a full cache is never write-locked again
        let mut room = false;
        if let Ok(cache) = self.series.read() {
            if let Some(s) = cache.get(&hash) {
                if s.key.matches(call, error_type) {
                    return s.clone();
                }
            }
            room = cache.len() < SERIES_CACHE_MAX;
        }
        let series = Arc::new(Series::new(
            SeriesKey::of(call, error_type),
            self.bound(call, error_type),
        ));
        if room && series.key.len() <= SERIES_KEY_MAX_BYTES {
            if let Ok(mut cache) = self.series.write() {
                if cache.len() < SERIES_CACHE_MAX {
                    cache.entry(hash).or_insert_with(|| series.clone());
                }
            }
        }
        series
    }

    fn bound(&self, call: &Call, error_type: Option<&str>) -> BoundedLabels {
        let g = &self.guard;
        BoundedLabels {
            model: g.bound(
                label::MODEL,
                call.request.model.as_deref().unwrap_or(value::UNKNOWN),
            ),
            provider: call.provider.clone(),
            request_model: g.bound(
                label::GEN_AI_REQUEST_MODEL,
                call.request.model.as_deref().unwrap_or(value::UNKNOWN),
            ),
            response_model: call
                .response
                .model
                .as_deref()
                .map(|m| g.bound(label::GEN_AI_RESPONSE_MODEL, m)),
            server_address: g.bound(label::SERVER_ADDRESS, &call.server_address),
            error_type: error_type.map(|e| g.bound(label::ERROR_TYPE, e)),
        }
    }

    /// Records one finished call.
    /// `exemplar`: the sampled trace of the call, attached to its duration samples.
    pub fn record(&self, call: &Call, s: &Series, exemplar: Option<ExemplarLabels>) {
        self.overhead.observe(call.overhead.as_secs_f64());
        for f in &call.parse_failures {
            self.parse_errors
                .get_or_create(&vec![(label::REASON, f.label().to_owned())])
                .inc();
        }
        let Some(op) = call.operation else {
            return; // not a model call: forwarded, not metered
        };
        s.requests
            .get_or_init(|| self.llm_requests.get_or_create(&s.lab()).clone())
            .inc();
        let secs = call.duration.as_secs_f64();
        s.duration
            .get_or_init(|| self.llm_duration.get_or_create(&s.lab()).clone())
            .observe(secs, exemplar.clone(), None);
        s.op_duration
            .get_or_init(|| {
                let mut l = s.genai(op);
                if let Some(e) = &s.labels.error_type {
                    l.push((label::ERROR_TYPE, e.clone()));
                }
                self.op_duration.get_or_create(&l).clone()
            })
            .observe(secs, exemplar, None);

        if let Some(u) = call.usage() {
            let kinds = [
                (value::TOKENS_PROMPT, u.input_tokens),
                (value::TOKENS_COMPLETION, u.output_tokens),
                (value::TOKENS_TOTAL, u.total_tokens),
            ];
            for (slot, (kind, n)) in s.tokens.iter().zip(kinds) {
                slot.get_or_init(|| {
                    let mut l = s.lab();
                    l.push((label::TYPE, kind.to_owned()));
                    self.llm_tokens.get_or_create(&l).clone()
                })
                .inc_by(n);
            }
            let kinds = [
                (value::TOKEN_INPUT, u.input_tokens),
                (value::TOKEN_OUTPUT, u.output_tokens),
            ];
            for (slot, (kind, n)) in s.token_usage.iter().zip(kinds) {
                slot.get_or_init(|| {
                    let mut l = s.genai(op);
                    l.push((label::GEN_AI_TOKEN_TYPE, kind.to_owned()));
                    self.token_usage.get_or_create(&l).clone()
                })
                .observe(n as f64);
            }
            match call.cost {
                Some(c) => {
                    s.cost
                        .get_or_init(|| self.llm_cost.get_or_create(&s.lab()).clone())
                        .inc_by(c);
                }
                None => {
                    s.unpriced
                        .get_or_init(|| {
                            self.unpriced
                                .get_or_create(&vec![(label::MODEL, s.labels.model.clone())])
                                .clone()
                        })
                        .inc();
                }
            }
        }
        if call.streamed {
            if let Some(t) = call.time_to_first_chunk {
                s.ttfc
                    .get_or_init(|| self.ttfc.get_or_create(&s.genai(op)).clone())
                    .observe(t.as_secs_f64());
            }
            if !call.chunk_gaps.is_empty() {
                let h = s
                    .per_chunk
                    .get_or_init(|| self.per_chunk.get_or_create(&s.genai(op)).clone());
                for g in &call.chunk_gaps {
                    h.observe(f64::from(*g));
                }
            }
        }
    }

    /// The agent started a conversation.
    pub fn conversation_started(&self) {
        self.agent_conversations
            .get_or_create(&vec![(label::ACTION, "start".to_owned())])
            .inc();
    }

    /// The agent handled one message of `kind` (`user` or `assistant`).
    pub fn agent_message(&self, kind: &'static str) {
        self.agent_messages
            .get_or_create(&vec![(label::TYPE, kind.to_owned())])
            .inc();
    }

    /// The drop counter of `signal` (`traces`, `metrics`, `logs`), for an export queue.
    /// Creating it also puts the series on the page at 0, so alerts can see it.
    pub fn dropped_counter(&self, signal: &'static str) -> Counter {
        self.dropped
            .get_or_create(&vec![(label::SIGNAL, signal.to_owned())])
            .clone()
    }

    /// Renders the page.
    pub fn encode(&self, format: Format) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        match format {
            Format::OpenMetrics => text::encode(&mut out, &self.registry)?,
            Format::PrometheusText => prometheus_text::encode(&mut out, &self.registry)?,
        }
        Ok(out)
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Outcome;
    use crate::genai::request::RequestFacts;

    fn chat(model: &str) -> Call {
        let request = RequestFacts {
            model: Some(model.to_owned()),
            ..RequestFacts::default()
        };
        Call::new(
            Some(Operation::ChatCompletions),
            request,
            "POST".into(),
            "/v1/chat/completions".into(),
            crate::genai::provider::Provider::default(),
            "api.openai.com".into(),
            443,
        )
    }

    #[test]
    fn calls_with_the_same_labels_share_a_series_and_others_do_not() {
        let m = Metrics::new(100);
        let a = m.series(&chat("gpt-4o"), None);
        let b = m.series(&chat("gpt-4o"), None);
        assert!(Arc::ptr_eq(&a, &b));
        let mut failed = chat("gpt-4o");
        failed.outcome = Outcome::Cancelled;
        let c = m.series(&failed, failed.error_type().as_deref());
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.labels.error_type.as_deref(), Some("cancelled"));
        let d = m.series(&chat("gpt-4o-mini"), None);
        assert_eq!(d.labels.model, "gpt-4o-mini");
        // a model name too long to cache still gets its (bounded) labels
        let long = "m".repeat(SERIES_KEY_MAX_BYTES + 1);
        let e = m.series(&chat(&long), None);
        let f = m.series(&chat(&long), None);
        assert!(!Arc::ptr_eq(&e, &f));
        assert_eq!(e.labels.model, long);
    }

    #[test]
    fn a_cached_series_creates_only_the_children_it_records() {
        let m = Metrics::new(100);
        let call = chat("gpt-4o");
        let s = m.series(&call, None);
        m.record(&call, &s, None);
        m.record(&call, &s, None);
        let page = m.encode(Format::PrometheusText).expect("encode");
        assert!(
            page.contains(
                r#"llm_requests_total{model="gpt-4o",provider="openai",status="success"} 2"#
            ),
            "{page}"
        );
        // no usage, no stream: no token, cost, unpriced or chunk series
        for absent in [
            "llm_tokens_used_total{",
            "llm_cost_usd_total{",
            "tokentap_unpriced_calls_total{",
            "gen_ai_client_operation_time_to_first_chunk_seconds_count{",
        ] {
            assert!(!page.contains(absent), "{absent} in {page}");
        }
        // the same series, once a call brings usage, a price and a stream: they appear
        let mut streamed = call.clone();
        streamed.response.usage = Some(crate::genai::response::Usage {
            input_tokens: 7,
            output_tokens: 5,
            total_tokens: 12,
            cached_input_tokens: None,
            reasoning_tokens: None,
        });
        streamed.cost = Some(0.25);
        streamed.streamed = true;
        streamed.time_to_first_chunk = Some(std::time::Duration::from_millis(30));
        m.record(&streamed, &m.series(&streamed, None), None);
        let page = m.encode(Format::PrometheusText).expect("encode");
        for present in [
            r#"llm_tokens_used_total{model="gpt-4o",provider="openai",status="success",type="completion"} 5"#,
            r#"llm_cost_usd_total{model="gpt-4o",provider="openai",status="success"} 0.25"#,
            "gen_ai_client_operation_time_to_first_chunk_seconds_count{",
            r#"llm_requests_total{model="gpt-4o",provider="openai",status="success"} 3"#,
        ] {
            assert!(page.contains(present), "{present} in {page}");
        }
        assert!(!page.contains("tokentap_unpriced_calls_total{"), "{page}");
    }
}
