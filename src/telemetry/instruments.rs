//! The OTLP mirror of `/metrics`: OTel instruments fed from the same calls.
//!
//! Each instrument is built from the same descriptor in
//! [`super::names::metric`] as its Prometheus family, and records the same
//! bounded labels (as attributes built once per series), so a collector's
//! view and `/metrics` show the same series.
//!
//! Each series binds its instruments to its attributes on first use (the
//! SDK's bound instruments). An unbound measurement sorts and SipHashes its
//! attribute set to find its aggregator, ~1.5k instructions each; a Realtime
//! turn records one chunk gap per delta, so that lookup was most of a turn's
//! metering (issue 14). A bound one goes straight to its aggregator.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, Counter, Histogram, Meter, ObservableCounter,
};

use super::names::{Metric, attr, kind, label, metric, signal, value};
use super::otel::DropCounters;
use super::series::{BoundedLabels, SeriesCache, Slot};
use super::sink::{CallSink, Recorded};
use crate::call::Call;
use crate::genai::request::Operation;

/// A series' labels as OTel attributes, built once per label combination.
#[derive(Debug, Clone)]
struct Attributes {
    lab: [KeyValue; 3],
    /// `lab` and the opt-in attribution labels: the three counters'.
    counted: Vec<KeyValue>,
    genai: Vec<KeyValue>,
    with_error: Vec<KeyValue>,
    tokens: [Vec<KeyValue>; 3],
    token_usage: [Vec<KeyValue>; 2],
}

impl Attributes {
    fn new(op: Operation, b: &BoundedLabels) -> Self {
        let lab = [
            KeyValue::new(label::MODEL, b.model.clone()),
            KeyValue::new(label::PROVIDER, b.provider.to_string()),
            KeyValue::new(label::STATUS, b.status()),
        ];
        let mut counted = lab.to_vec();
        counted.extend(
            b.dimensions
                .iter()
                .map(|(k, v)| KeyValue::new(*k, v.clone())),
        );
        let mut genai = vec![
            KeyValue::new(attr::GEN_AI_OPERATION_NAME, op.name()),
            KeyValue::new(attr::GEN_AI_PROVIDER_NAME, b.provider.to_string()),
            KeyValue::new(attr::GEN_AI_REQUEST_MODEL, b.request_model.clone()),
            KeyValue::new(attr::SERVER_ADDRESS, b.server_address.clone()),
        ];
        if let Some(rm) = &b.response_model {
            genai.push(KeyValue::new(attr::GEN_AI_RESPONSE_MODEL, rm.clone()));
        }
        let mut with_error = genai.clone();
        if let Some(e) = &b.error_type {
            with_error.push(KeyValue::new(attr::ERROR_TYPE, e.clone()));
        }
        let tokens = [
            value::TOKENS_PROMPT,
            value::TOKENS_COMPLETION,
            value::TOKENS_TOTAL,
        ]
        .map(|kind| {
            let mut l = counted.clone();
            l.push(KeyValue::new(label::TYPE, kind));
            l
        });
        let token_usage = [value::TOKEN_INPUT, value::TOKEN_OUTPUT].map(|kind| {
            let mut l = genai.clone();
            l.push(KeyValue::new(attr::GEN_AI_TOKEN_TYPE, kind));
            l
        });
        Attributes {
            lab,
            counted,
            genai,
            with_error,
            tokens,
            token_usage,
        }
    }
}

/// A series' instruments, each bound to its attributes when first recorded
/// (binding early would export empty series for instruments it never uses).
#[derive(Debug, Clone, Default)]
struct Bound {
    attributes: OnceLock<Attributes>,
    requests: OnceLock<BoundCounter<u64>>,
    duration: OnceLock<BoundHistogram<f64>>,
    op_duration: OnceLock<BoundHistogram<f64>>,
    tokens: [OnceLock<BoundCounter<u64>>; 3],
    token_usage: [OnceLock<BoundHistogram<u64>>; 2],
    cost: OnceLock<BoundCounter<f64>>,
    unpriced: OnceLock<BoundCounter<u64>>,
    ttfc: OnceLock<BoundHistogram<f64>>,
    per_chunk: OnceLock<BoundHistogram<f64>>,
}

/// `def`'s counter: `$new` is the meter's builder for its value type.
macro_rules! counter {
    ($meter:ident . $new:ident, $def:expr) => {{
        let def: &Metric<kind::Counter> = &$def;
        described!($meter.$new(def.otel), def)
    }};
}

/// `def`'s histogram, with its buckets.
macro_rules! histogram {
    ($meter:ident . $new:ident, $def:expr) => {{
        let def: &Metric<kind::Histogram> = &$def;
        described!(
            $meter
                .$new(def.otel)
                .with_boundaries(def.kind.buckets.to_vec()),
            def
        )
    }};
}

/// `builder` with `def`'s description and unit, built.
macro_rules! described {
    ($builder:expr, $def:expr) => {{
        let b = $builder.with_description($def.help);
        match $def.unit.otel() {
            Some(unit) => b.with_unit(unit).build(),
            None => b.build(),
        }
    }};
}

/// The OTel instruments, mirroring `/metrics`.
#[derive(Debug)]
pub struct Instruments {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    tokens: Counter<u64>,
    cost: Counter<f64>,
    conversations: Counter<u64>,
    messages: Counter<u64>,
    token_usage: Histogram<u64>,
    op_duration: Histogram<f64>,
    ttfc: Histogram<f64>,
    per_chunk: Histogram<f64>,
    unpriced: Counter<u64>,
    parse_errors: Counter<u64>,
    overhead: Histogram<f64>,
    /// Reports `tokentap_telemetry_dropped_total` at each collection.
    _dropped: ObservableCounter<u64>,
    /// Each series' bound instruments.
    slot: Slot<Bound>,
}

impl Instruments {
    /// Creates the instruments on `m`; their attributes live in a slot of `series`.
    pub fn new(m: &Meter, drops: &DropCounters, series: &mut SeriesCache) -> Instruments {
        let d = drops.clone();
        let dropped = &metric::TELEMETRY_DROPPED;
        Instruments {
            requests: counter!(m.u64_counter, metric::LLM_REQUESTS),
            duration: histogram!(m.f64_histogram, metric::LLM_REQUEST_DURATION),
            tokens: counter!(m.u64_counter, metric::LLM_TOKENS_USED),
            cost: counter!(m.f64_counter, metric::LLM_COST_USD),
            conversations: counter!(m.u64_counter, metric::AGENT_CONVERSATIONS),
            messages: counter!(m.u64_counter, metric::AGENT_MESSAGES),
            token_usage: histogram!(m.u64_histogram, metric::GEN_AI_TOKEN_USAGE),
            op_duration: histogram!(m.f64_histogram, metric::GEN_AI_OPERATION_DURATION),
            ttfc: histogram!(m.f64_histogram, metric::GEN_AI_TIME_TO_FIRST_CHUNK),
            per_chunk: histogram!(m.f64_histogram, metric::GEN_AI_TIME_PER_OUTPUT_CHUNK),
            unpriced: counter!(m.u64_counter, metric::UNPRICED_CALLS),
            parse_errors: counter!(m.u64_counter, metric::PARSE_ERRORS),
            overhead: histogram!(m.f64_histogram, metric::OVERHEAD),
            _dropped: described!(
                m.u64_observable_counter(dropped.otel)
                    .with_callback(move |o| {
                        for (signal, c) in [
                            (signal::TRACES, &d.traces),
                            (signal::METRICS, &d.metrics),
                            (signal::LOGS, &d.logs),
                        ] {
                            o.observe(c.get(), &[KeyValue::new(label::SIGNAL, signal)]);
                        }
                    }),
                dropped
            ),
            slot: series.slot(),
        }
    }
}

impl CallSink for Instruments {
    /// Records one call with the attributes of its series (labels already bounded).
    fn record(&self, call: &Call, r: &Recorded) {
        self.overhead.record(call.overhead.as_secs_f64(), &[]);
        for f in &call.parse_failures {
            self.parse_errors
                .add(1, &[KeyValue::new(label::REASON, f.label())]);
        }
        let Some(op) = call.operation else { return };
        let b = r.series.slot(&self.slot);
        let a = b
            .attributes
            .get_or_init(|| Attributes::new(op, &r.series.labels));
        let secs = call.duration.as_secs_f64();
        b.requests
            .get_or_init(|| self.requests.bind(&a.counted))
            .add(1);
        b.duration
            .get_or_init(|| self.duration.bind(&a.lab))
            .record(secs);
        b.op_duration
            .get_or_init(|| self.op_duration.bind(&a.with_error))
            .record(secs);
        if let Some(u) = call.usage() {
            let counts = [u.input_tokens, u.output_tokens, u.total_tokens];
            for ((cell, attrs), n) in b.tokens.iter().zip(&a.tokens).zip(counts) {
                cell.get_or_init(|| self.tokens.bind(attrs)).add(n);
            }
            for ((cell, attrs), n) in b.token_usage.iter().zip(&a.token_usage).zip(counts) {
                cell.get_or_init(|| self.token_usage.bind(attrs)).record(n);
            }
            match call.cost {
                Some(c) => b.cost.get_or_init(|| self.cost.bind(&a.counted)).add(c),
                // `model` alone (the first of the lab's labels)
                None => b
                    .unpriced
                    .get_or_init(|| self.unpriced.bind(&a.lab[..1]))
                    .add(1),
            }
        }
        if call.streamed {
            if let Some(t) = call.time_to_first_chunk {
                b.ttfc
                    .get_or_init(|| self.ttfc.bind(&a.genai))
                    .record(t.as_secs_f64());
            }
            if !call.chunk_gaps.is_empty() {
                let h = b.per_chunk.get_or_init(|| self.per_chunk.bind(&a.genai));
                for g in &call.chunk_gaps {
                    h.record(f64::from(*g));
                }
            }
        }
    }

    fn conversation_started(&self) {
        self.conversations
            .add(1, &[KeyValue::new(label::ACTION, "start")]);
    }

    fn agent_message(&self, kind: &'static str) {
        self.messages.add(1, &[KeyValue::new(label::TYPE, kind)]);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry::trace::SpanContext;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    use super::*;
    use crate::call::ParseFailure;
    use crate::genai::response::Usage;
    use crate::telemetry::names::Unit;
    use crate::telemetry::series::tests::chat;

    /// Bounds of a histogram's first point; `None` for other kinds.
    fn bounds<T>(d: &MetricData<T>) -> Option<Vec<f64>> {
        match d {
            MetricData::Histogram(h) => h.data_points().next().map(|p| p.bounds().collect()),
            _ => None,
        }
    }

    /// Instruments on a meter whose reader exports into memory, and their series.
    fn instruments() -> (
        InMemoryMetricExporter,
        SdkMeterProvider,
        SeriesCache,
        Instruments,
    ) {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let mut series = SeriesCache::new(100, 1024);
        let drops = DropCounters {
            traces: Default::default(),
            metrics: Default::default(),
            logs: Default::default(),
        };
        let i = Instruments::new(&provider.meter("test"), &drops, &mut series);
        (exporter, provider, series, i)
    }

    #[test]
    fn every_instrument_is_built_as_its_descriptor_says() {
        let (exporter, provider, series, i) = instruments();
        // calls and events that reach every instrument
        let mut call = chat("gpt-4o");
        call.response.usage = Some(Usage {
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
        call.note_parse_failure(ParseFailure::InvalidSse);
        for cost in [None, Some(0.25)] {
            call.cost = cost;
            let r = Recorded {
                series: series.series(&call, None),
                error_type: None,
                span: SpanContext::empty_context(),
                attributes: Default::default(),
            };
            i.record(&call, &r);
        }
        i.conversation_started();
        i.agent_message("user");
        provider.force_flush().expect("flush");

        let mut seen = HashMap::new();
        for rm in exporter.get_finished_metrics().expect("metrics") {
            for sm in rm.scope_metrics() {
                for m in sm.metrics() {
                    let b = match m.data() {
                        AggregatedMetrics::F64(d) => bounds(d),
                        AggregatedMetrics::U64(d) => bounds(d),
                        AggregatedMetrics::I64(d) => bounds(d),
                    };
                    let described = (m.description().to_owned(), m.unit().to_owned());
                    seen.insert(m.name().to_owned(), (described, b));
                }
            }
        }
        let described = |def_otel: &str, help: &str, unit: Unit| {
            let (d, _) = seen
                .get(def_otel)
                .unwrap_or_else(|| panic!("{def_otel} in {seen:?}"));
            assert_eq!(*d, (help.to_owned(), unit.otel().unwrap_or("").to_owned()));
        };
        for def in metric::COUNTERS {
            described(def.otel, def.help, def.unit);
            assert_eq!(seen[def.otel].1, None, "{}", def.otel);
        }
        for def in metric::HISTOGRAMS {
            described(def.otel, def.help, def.unit);
            assert_eq!(
                seen[def.otel].1.as_deref(),
                Some(def.kind.buckets),
                "{}",
                def.otel
            );
        }
        assert_eq!(
            seen.len(),
            metric::COUNTERS.len() + metric::HISTOGRAMS.len()
        );
    }

    /// The points of metric `name`: (attributes, count or sum) per series.
    fn points(exporter: &InMemoryMetricExporter, name: &str) -> Vec<(Vec<KeyValue>, f64)> {
        let mut out = Vec::new();
        for rm in exporter.get_finished_metrics().expect("metrics") {
            for sm in rm.scope_metrics() {
                for m in sm.metrics().filter(|m| m.name() == name) {
                    let attrs = |a: &mut dyn Iterator<Item = &KeyValue>| {
                        let mut v: Vec<KeyValue> = a.cloned().collect();
                        v.sort_by(|x, y| x.key.as_str().cmp(y.key.as_str()));
                        v
                    };
                    match m.data() {
                        AggregatedMetrics::U64(MetricData::Sum(d)) => out.extend(
                            d.data_points()
                                .map(|p| (attrs(&mut p.attributes()), p.value() as f64)),
                        ),
                        AggregatedMetrics::F64(MetricData::Histogram(d)) => out.extend(
                            d.data_points()
                                .map(|p| (attrs(&mut p.attributes()), p.count() as f64)),
                        ),
                        other => panic!("{name}: unexpected {other:?}"),
                    }
                }
            }
        }
        out
    }

    #[test]
    fn a_series_records_every_measurement_and_exports_only_what_it_used() {
        let (exporter, provider, series, i) = instruments();
        let record = |call: &Call| {
            let r = Recorded {
                series: series.series(call, None),
                error_type: None,
                span: SpanContext::empty_context(),
                attributes: Default::default(),
            };
            i.record(call, &r);
        };
        // two plain calls of one series, then three streamed turns of another
        let plain = chat("gpt-4o");
        record(&plain);
        record(&plain);
        let mut streamed = chat("gpt-realtime");
        streamed.streamed = true;
        streamed.time_to_first_chunk = Some(std::time::Duration::from_millis(30));
        for gaps in [vec![0.02, 0.03], vec![0.01], vec![0.5, 0.4, 0.3]] {
            streamed.chunk_gaps = gaps;
            record(&streamed);
        }
        provider.force_flush().expect("flush");

        let model = |p: &(Vec<KeyValue>, f64)| {
            p.0.iter()
                .find(|kv| kv.key.as_str() == label::MODEL)
                .map(|kv| kv.value.to_string())
        };
        let mut requests: Vec<(Option<String>, f64)> = points(&exporter, metric::LLM_REQUESTS.otel)
            .iter()
            .map(|p| (model(p), p.1))
            .collect();
        requests.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            requests,
            vec![
                (Some("gpt-4o".to_owned()), 2.0),
                (Some("gpt-realtime".to_owned()), 3.0)
            ]
        );
        let request_model = |p: &(Vec<KeyValue>, f64)| {
            p.0.iter()
                .find(|kv| kv.key.as_str() == attr::GEN_AI_REQUEST_MODEL)
                .map(|kv| kv.value.to_string())
        };
        // one gap per delta, all turns summed, on the streamed series only
        let per_chunk = points(&exporter, metric::GEN_AI_TIME_PER_OUTPUT_CHUNK.otel);
        assert_eq!(per_chunk.len(), 1, "{per_chunk:?}");
        assert_eq!(
            request_model(&per_chunk[0]).as_deref(),
            Some("gpt-realtime")
        );
        assert_eq!(per_chunk[0].1, 6.0);
        let ttfc = points(&exporter, metric::GEN_AI_TIME_TO_FIRST_CHUNK.otel);
        assert_eq!(ttfc.len(), 1, "{ttfc:?}");
        assert_eq!(ttfc[0].1, 3.0);
        // no usage on either series: no token series was bound, none is exported
        assert!(points(&exporter, metric::LLM_TOKENS_USED.otel).is_empty());
    }
}
