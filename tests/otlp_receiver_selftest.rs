//! Self-test for the OTLP receiver test support (`tests/support/otlp.rs`).

#[path = "support/otlp.rs"]
mod otlp;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use otlp::{AttrValue, BlackHole, Receiver, closed_port_endpoint};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRACE_ID: [u8; 16] = [
    0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c,
];
const SPAN_ID: [u8; 8] = [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31];
const PARENT_ID: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
const WAIT: Duration = Duration::from_secs(5);

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            kv(
                "service.name",
                any_value::Value::StringValue("tokentap-selftest".into()),
            ),
            kv("process.pid", any_value::Value::IntValue(42)),
        ],
        ..Default::default()
    })
}

fn trace_request() -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: TRACE_ID.to_vec(),
        span_id: SPAN_ID.to_vec(),
        parent_span_id: PARENT_ID.to_vec(),
        name: "chat gpt-4o-mini".into(),
        kind: 3,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes: vec![
            kv(
                "gen_ai.request.model",
                any_value::Value::StringValue("gpt-4o-mini".into()),
            ),
            kv("gen_ai.usage.input_tokens", any_value::Value::IntValue(12)),
            kv(
                "gen_ai.request.temperature",
                any_value::Value::DoubleValue(0.5),
            ),
            kv("gen_ai.is_stream", any_value::Value::BoolValue(true)),
            kv(
                "gen_ai.response.finish_reasons",
                any_value::Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(any_value::Value::StringValue("stop".into())),
                    }],
                }),
            ),
        ],
        status: Some(Status {
            code: 2,
            message: "boom".into(),
        }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "selftest".into(),
                    ..Default::default()
                }),
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn assert_span_received(rx: &Receiver) {
    let spans = rx.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let s = &spans[0];
    assert_eq!(s.name, "chat gpt-4o-mini");
    assert_eq!(s.kind, 3);
    assert_eq!(s.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(s.span_id, "b7ad6b7169203331");
    assert_eq!(s.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(s.status_code, 2);
    assert_eq!(s.start_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(s.end_unix_nano, 1_700_000_000_250_000_000);
    assert_eq!(s.str("gen_ai.request.model"), Some("gpt-4o-mini"));
    assert_eq!(s.int("gen_ai.usage.input_tokens"), Some(12));
    assert_eq!(s.double("gen_ai.request.temperature"), Some(0.5));
    assert_eq!(s.str("gen_ai.usage.input_tokens"), None);
    assert_eq!(
        s.attributes.get("gen_ai.is_stream"),
        Some(&AttrValue::Bool(true))
    );
    assert_eq!(
        s.attributes.get("gen_ai.response.finish_reasons"),
        Some(&AttrValue::Array(vec![AttrValue::Str("stop".into())]))
    );
    assert_eq!(
        rx.resource_attributes(),
        vec![
            ("service.name".to_owned(), "tokentap-selftest".to_owned()),
            ("process.pid".to_owned(), "42".to_owned()),
        ]
    );
    let raw = rx.raw_bytes_seen();
    assert!(
        raw.windows(b"gpt-4o-mini".len())
            .any(|w| w == b"gpt-4o-mini"),
        "raw bytes contain the model name"
    );
}

async fn post(
    url: &str,
    content_type: &str,
    content_encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, Option<String>, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = hyper::Request::post(url).header("content-type", content_type);
    if let Some(enc) = content_encoding {
        builder = builder.header("content-encoding", enc);
    }
    let req = builder
        .body(Full::new(Bytes::from(body)))
        .expect("build request");
    let resp = client.request(req).await.expect("POST succeeds");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("read body")
        .to_bytes();
    (status, ct, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_receiver_collects_spans_metrics_logs() {
    let rx = Receiver::grpc().await;
    assert!(rx.endpoint().starts_with("http://127.0.0.1:"));
    assert!(rx.spans().is_empty());

    let mut client = TraceServiceClient::connect(rx.endpoint())
        .await
        .expect("gRPC connect");
    client
        .export(trace_request())
        .await
        .expect("trace export accepted");
    assert!(rx.wait_for(WAIT, |r| !r.spans().is_empty()).await);
    assert_span_received(&rx);

    let metric = Metric {
        name: "gen_ai.client.token.usage".into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                value: Some(number_data_point::Value::AsInt(7)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let other = Metric {
        name: "gen_ai.client.operation.duration".into(),
        ..Default::default()
    };
    let metrics_req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![metric.clone(), other, metric],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    MetricsServiceClient::connect(rx.endpoint())
        .await
        .expect("gRPC connect (metrics)")
        .export(metrics_req)
        .await
        .expect("metrics export accepted");
    assert_eq!(rx.metrics().len(), 3);
    assert_eq!(
        rx.metric_names(),
        vec![
            "gen_ai.client.operation.duration".to_owned(),
            "gen_ai.client.token.usage".to_owned(),
        ]
    );

    let logs_req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    severity_text: "INFO".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("hello".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    LogsServiceClient::connect(rx.endpoint())
        .await
        .expect("gRPC connect (logs)")
        .export(logs_req)
        .await
        .expect("logs export accepted");
    let logs = rx.logs();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].severity_text, "INFO");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_receiver_collects_spans() {
    let rx = Receiver::http().await;
    let base = rx.endpoint();

    let (status, ct, body) = post(
        &format!("{base}/v1/traces"),
        "application/x-protobuf",
        None,
        trace_request().encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some("application/x-protobuf"));
    ExportTraceServiceResponse::decode(body).expect("response decodes");
    assert!(rx.wait_for(WAIT, |r| !r.spans().is_empty()).await);
    assert_span_received(&rx);
    assert_eq!(rx.raw_bytes_seen(), trace_request().encode_to_vec());

    // gzip-compressed body is accepted too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&trace_request().encode_to_vec())
        .expect("gzip write");
    let compressed = gz.finish().expect("gzip finish");
    let (status, _, _) = post(
        &format!("{base}/v1/traces"),
        "application/x-protobuf",
        Some("gzip"),
        compressed,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(rx.spans().len(), 2);

    // Unknown path, wrong content type, garbage body.
    let (status, _, _) = post(
        &format!("{base}/v1/nope"),
        "application/x-protobuf",
        None,
        vec![],
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = post(
        &format!("{base}/v1/traces"),
        "application/json",
        None,
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 415);
    let (status, _, _) = post(
        &format!("{base}/v1/metrics"),
        "application/x-protobuf",
        None,
        vec![0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(rx.spans().len(), 2);
    assert!(rx.metric_names().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_for_times_out() {
    let rx = Receiver::http().await;
    let started = std::time::Instant::now();
    assert!(
        !rx.wait_for(Duration::from_millis(100), |r| !r.spans().is_empty())
            .await
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread")]
async fn black_hole_accepts_but_never_answers() {
    let hole = BlackHole::start().await;
    let addr = hole
        .endpoint()
        .strip_prefix("http://")
        .expect("http endpoint")
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("black hole accepts connections");
    stream
        .write_all(b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .expect("write accepted");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    assert!(read.is_err(), "black hole answered: {read:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_port_refuses_connections() {
    let endpoint = closed_port_endpoint();
    let addr = endpoint.strip_prefix("http://").expect("http endpoint");
    let err = tokio::net::TcpStream::connect(addr)
        .await
        .expect_err("nothing listens on the closed port");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_receiver_stops_the_server() {
    let rx = Receiver::http().await;
    let addr = rx
        .endpoint()
        .strip_prefix("http://")
        .expect("http endpoint")
        .to_owned();
    drop(rx);
    // Abort is asynchronous; give the runtime a moment to drop the listener.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(&addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "listener still accepting after drop");
}
