//! The Prometheus view of calls (`/metrics`).
//!
//! Every family is registered once at start from its descriptor in
//! [`super::names::metric`], and every call is recorded from its [`Call`]
//! record in one function, so the lab's `llm_*` set and the GenAI set always
//! agree. The children a label combination selects are looked up once per
//! [`super::series::Series`] and kept in its slot.

use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{self, Registry};
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use super::names::{Metric, Unit, kind, label, metric, value};
use super::series::{BoundedLabels, SeriesCache, Slot};
use super::sink::{CallSink, Recorded};
use crate::call::Call;
use crate::genai::request::Operation;
use crate::hex;

type Labels = Vec<(&'static str, String)>;
/// Exemplar labels: the trace (and span) a sample came from, so dashboards link to it.
type ExemplarLabels = Vec<(&'static str, String)>;
type ExemplarHistogram = HistogramWithExemplars<ExemplarLabels>;
type HistogramFamily = Family<Labels, Histogram, Buckets>;
type ExemplarFamily = Family<Labels, ExemplarHistogram, Buckets>;

/// Makes a family's histograms with its descriptor's buckets.
#[derive(Debug, Clone, Copy)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

impl MetricConstructor<ExemplarHistogram> for Buckets {
    fn new_metric(&self) -> ExemplarHistogram {
        HistogramWithExemplars::new(self.0.iter().copied())
    }
}

/// Registers `m` under `def`'s name, help and unit.
fn register<K>(registry: &mut Registry, def: &Metric<K>, m: impl registry::Metric) {
    match def.unit {
        Unit::Seconds => {
            registry.register_with_unit(def.prometheus, def.help, registry::Unit::Seconds, m)
        }
        // `{token}` is an annotation, not a unit: no suffix
        Unit::None | Unit::Tokens => registry.register(def.prometheus, def.help, m),
    }
}

/// A registered counter family.
fn counters<M>(registry: &mut Registry, def: &Metric<kind::Counter>) -> Family<Labels, M>
where
    M: Default,
    Family<Labels, M>: registry::Metric,
{
    let f = Family::<Labels, M>::default();
    register(registry, def, f.clone());
    f
}

/// A registered histogram family with `def`'s buckets.
fn histograms<M>(
    registry: &mut Registry,
    def: &Metric<kind::Histogram>,
) -> Family<Labels, M, Buckets>
where
    Buckets: MetricConstructor<M>,
    Family<Labels, M, Buckets>: registry::Metric,
{
    let f = Family::new_with_constructor(Buckets(def.kind.buckets));
    register(registry, def, f.clone());
    f
}

/// A registered histogram (no labels) with `def`'s buckets.
fn histogram(registry: &mut Registry, def: &Metric<kind::Histogram>) -> Histogram {
    let h: Histogram = Buckets(def.kind.buckets).new_metric();
    register(registry, def, h.clone());
    h
}

/// The lab's labels: model, provider, status.
fn lab(b: &BoundedLabels) -> Labels {
    vec![
        (label::MODEL, b.model.clone()),
        (label::PROVIDER, b.provider.to_string()),
        (label::STATUS, b.status().to_owned()),
    ]
}

/// The lab's labels and the opt-in attribution labels: the three counters'.
fn counted(b: &BoundedLabels) -> Labels {
    let mut l = lab(b);
    l.extend(b.dimensions.iter().cloned());
    l
}

/// The GenAI conventions' labels (without `error.type`).
fn genai(b: &BoundedLabels, op: Operation) -> Labels {
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

/// The children one label combination selects, each made on first use and shared
/// by every call with the same values (kept in the series' slot).
#[derive(Debug, Default, Clone)]
struct Children {
    requests: OnceLock<Counter>,
    duration: OnceLock<ExemplarHistogram>,
    op_duration: OnceLock<ExemplarHistogram>,
    tokens: [OnceLock<Counter>; 3],
    token_usage: [OnceLock<Histogram>; 2],
    cost: OnceLock<Counter<f64, AtomicU64>>,
    unpriced: OnceLock<Counter>,
    ttfc: OnceLock<Histogram>,
    per_chunk: OnceLock<Histogram>,
}

pub struct Metrics {
    registry: Registry,
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
    slot: Slot<Children>,
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
    /// Registers every family; their children live in a slot of `series`.
    pub fn new(series: &mut SeriesCache) -> Metrics {
        let mut r = Registry::default();
        // registered in the order written, which is the page's order
        Metrics {
            llm_requests: counters(&mut r, &metric::LLM_REQUESTS),
            llm_duration: histograms(&mut r, &metric::LLM_REQUEST_DURATION),
            llm_tokens: counters(&mut r, &metric::LLM_TOKENS_USED),
            llm_cost: counters(&mut r, &metric::LLM_COST_USD),
            agent_conversations: counters(&mut r, &metric::AGENT_CONVERSATIONS),
            agent_messages: counters(&mut r, &metric::AGENT_MESSAGES),
            token_usage: histograms(&mut r, &metric::GEN_AI_TOKEN_USAGE),
            op_duration: histograms(&mut r, &metric::GEN_AI_OPERATION_DURATION),
            ttfc: histograms(&mut r, &metric::GEN_AI_TIME_TO_FIRST_CHUNK),
            per_chunk: histograms(&mut r, &metric::GEN_AI_TIME_PER_OUTPUT_CHUNK),
            unpriced: counters(&mut r, &metric::UNPRICED_CALLS),
            parse_errors: counters(&mut r, &metric::PARSE_ERRORS),
            dropped: counters(&mut r, &metric::TELEMETRY_DROPPED),
            overhead: histogram(&mut r, &metric::OVERHEAD),
            slot: series.slot(),
            registry: r,
        }
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

impl CallSink for Metrics {
    fn record(&self, call: &Call, r: &Recorded) {
        self.overhead.observe(call.overhead.as_secs_f64());
        for f in &call.parse_failures {
            self.parse_errors
                .get_or_create(&vec![(label::REASON, f.label().to_owned())])
                .inc();
        }
        let Some(op) = call.operation else {
            return; // not a model call: forwarded, not metered
        };
        let b = &r.series.labels;
        let c = r.series.slot(&self.slot);
        // the sampled trace of the call, attached to its duration samples
        let exemplar = r.span.is_sampled().then(|| {
            vec![
                ("trace_id", hex::lower(&r.span.trace_id().to_bytes())),
                ("span_id", hex::lower(&r.span.span_id().to_bytes())),
            ]
        });
        c.requests
            .get_or_init(|| self.llm_requests.get_or_create(&counted(b)).clone())
            .inc();
        let secs = call.duration.as_secs_f64();
        c.duration
            .get_or_init(|| self.llm_duration.get_or_create(&lab(b)).clone())
            .observe(secs, exemplar.clone(), None);
        c.op_duration
            .get_or_init(|| {
                let mut l = genai(b, op);
                if let Some(e) = &b.error_type {
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
            for (slot, (kind, n)) in c.tokens.iter().zip(kinds) {
                slot.get_or_init(|| {
                    let mut l = counted(b);
                    l.push((label::TYPE, kind.to_owned()));
                    self.llm_tokens.get_or_create(&l).clone()
                })
                .inc_by(n);
            }
            let kinds = [
                (value::TOKEN_INPUT, u.input_tokens),
                (value::TOKEN_OUTPUT, u.output_tokens),
            ];
            for (slot, (kind, n)) in c.token_usage.iter().zip(kinds) {
                slot.get_or_init(|| {
                    let mut l = genai(b, op);
                    l.push((label::GEN_AI_TOKEN_TYPE, kind.to_owned()));
                    self.token_usage.get_or_create(&l).clone()
                })
                .observe(n as f64);
            }
            match call.cost {
                Some(cost) => {
                    c.cost
                        .get_or_init(|| self.llm_cost.get_or_create(&counted(b)).clone())
                        .inc_by(cost);
                }
                None => {
                    c.unpriced
                        .get_or_init(|| {
                            self.unpriced
                                .get_or_create(&vec![(label::MODEL, b.model.clone())])
                                .clone()
                        })
                        .inc();
                }
            }
        }
        if call.streamed {
            if let Some(t) = call.time_to_first_chunk {
                c.ttfc
                    .get_or_init(|| self.ttfc.get_or_create(&genai(b, op)).clone())
                    .observe(t.as_secs_f64());
            }
            if !call.chunk_gaps.is_empty() {
                let h = c
                    .per_chunk
                    .get_or_init(|| self.per_chunk.get_or_create(&genai(b, op)).clone());
                for g in &call.chunk_gaps {
                    h.observe(f64::from(*g));
                }
            }
        }
    }

    /// The agent started a conversation.
    fn conversation_started(&self) {
        self.agent_conversations
            .get_or_create(&vec![(label::ACTION, "start".to_owned())])
            .inc();
    }

    /// The agent handled one message of `kind` (`user` or `assistant`).
    fn agent_message(&self, kind: &'static str) {
        self.agent_messages
            .get_or_create(&vec![(label::TYPE, kind.to_owned())])
            .inc();
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
    use crate::telemetry::series::tests::chat;
    use opentelemetry::trace::SpanContext;

    fn recorded(series: &SeriesCache, call: &Call) -> Recorded {
        Recorded {
            series: series.series(call, None),
            error_type: None,
            span: SpanContext::empty_context(),
            attributes: Default::default(),
        }
    }

    #[test]
    fn a_cached_series_creates_only_the_children_it_records() {
        let mut series = SeriesCache::new(100, 1024);
        let m = Metrics::new(&mut series);
        let call = chat("gpt-4o");
        m.record(&call, &recorded(&series, &call));
        m.record(&call, &recorded(&series, &call));
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
            details: Default::default(),
        });
        streamed.cost = Some(0.25);
        streamed.streamed = true;
        streamed.time_to_first_chunk = Some(std::time::Duration::from_millis(30));
        m.record(&streamed, &recorded(&series, &streamed));
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

    /// The name a family is exposed under (before `_total`, `_bucket`, ...).
    fn exposed<K>(def: &Metric<K>) -> String {
        match def.unit {
            Unit::Seconds => format!("{}_seconds", def.prometheus),
            Unit::None | Unit::Tokens => def.prometheus.to_owned(),
        }
    }

    #[test]
    fn every_family_is_registered_as_its_descriptor_says() {
        let mut series = SeriesCache::new(100, 1024);
        let m = Metrics::new(&mut series);
        // calls and events that reach every family (empty ones are not on the page)
        let mut call = chat("gpt-4o");
        call.response.usage = Some(crate::genai::response::Usage {
            input_tokens: 7,
            output_tokens: 5,
            total_tokens: 12,
            cached_input_tokens: None,
            reasoning_tokens: None,
            details: Default::default(),
        });
        call.streamed = true;
        call.time_to_first_chunk = Some(std::time::Duration::from_millis(30));
        call.chunk_gaps = vec![0.02];
        call.note_parse_failure(crate::call::ParseFailure::InvalidSse);
        m.record(&call, &recorded(&series, &call));
        call.cost = Some(0.25);
        m.record(&call, &recorded(&series, &call));
        m.conversation_started();
        m.agent_message("user");
        m.dropped_counter(crate::telemetry::names::signal::LOGS);
        let page = m.encode(Format::OpenMetrics).expect("encode");
        let described = |name: &str, help: &str, kind: &str| {
            assert!(
                page.contains(&format!("# HELP {name} {help}.\n")),
                "{name} help in {page}"
            );
            assert!(
                page.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} type in {page}"
            );
        };
        for def in metric::COUNTERS {
            described(&exposed(def), def.help, "counter");
        }
        for def in metric::HISTOGRAMS {
            let name = exposed(def);
            described(&name, def.help, "histogram");
            assert_eq!(
                page.contains(&format!("# UNIT {name} seconds\n")),
                def.unit == Unit::Seconds,
                "{name} unit in {page}"
            );
            let buckets = page
                .lines()
                .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
                .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
                .filter(|le| *le != "+Inf")
                .map(|le| le.parse::<f64>().expect("le"))
                .collect::<Vec<_>>();
            // each child repeats the boundaries; the first child's are enough
            assert_eq!(
                buckets.get(..def.kind.buckets.len()),
                Some(def.kind.buckets),
                "{name}"
            );
        }
    }
}
