//! The span exporter's tests: retry rules against scripted collectors, and the variables.

use super::*;
use std::sync::{Arc, Mutex};

/// A collector answering each request with the next `(status, Retry-After)`, each reply
/// carrying `body` bytes and sent `delay` after the request; counts the requests.
async fn collector_with_body(
    script: Vec<(u16, Option<&'static str>)>,
    body: usize,
    delay: Duration,
) -> (String, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(0usize));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (count, script) = (count.clone(), script.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let n = {
                        let mut c = count.lock().expect("count");
                        *c += 1;
                        *c - 1
                    };
                    let (status, after) = script[n.min(script.len() - 1)];
                    let mut resp = http::Response::builder().status(status);
                    if let Some(a) = after {
                        resp = resp.header(http::header::RETRY_AFTER, a);
                    }
                    let resp = resp
                        .body(http_body_util::Full::new(Bytes::from(vec![0u8; body])))
                        .expect("response");
                    async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(sock);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    (url, seen)
}

async fn export_to(script: Vec<(u16, Option<&'static str>)>) -> (bool, usize) {
    export_with_replies_of(script, 0).await
}

async fn export_with_replies_of(
    script: Vec<(u16, Option<&'static str>)>,
    body: usize,
) -> (bool, usize) {
    let (url, seen) = collector_with_body(script, body, Duration::ZERO).await;
    let ok = http_exporter(url, Duration::from_secs(2))
        .export(Vec::new())
        .await
        .is_ok();
    let n = *seen.lock().expect("count");
    (ok, n)
}

fn http_exporter(url: String, timeout: Duration) -> OtlpSpans {
    let client = super::super::transport::Transport::default()
        .http(timeout)
        .expect("client");
    OtlpSpans::new(
        Wire::Http {
            shown: shown(&url),
            client: Box::new(client),
            url,
        },
        false,
        timeout,
    )
}

#[tokio::test]
async fn retries_what_a_retry_can_mend_and_waits_as_asked_only_when_time_allows() {
    assert_eq!(
        export_to(vec![(503, None), (502, None), (200, None)]).await,
        (true, 3)
    );
    assert_eq!(export_to(vec![(400, None)]).await, (false, 1));
    // asked to wait longer than the export may take: not retried
    assert_eq!(export_to(vec![(429, Some("5"))]).await, (false, 1));
    assert_eq!(
        export_to(vec![(429, Some("0")), (200, None)]).await,
        (true, 2)
    );
    // four attempts at most
    assert_eq!(export_to(vec![(503, None)]).await, (false, 4));
}

/// A reply whose body is refused (over the client's 4 MiB) still means the collector
/// got the spans: not sent again, where a retry would store them twice.
#[tokio::test]
async fn a_request_the_collector_answered_is_not_sent_again() {
    let big = 5 * 1024 * 1024;
    assert_eq!(
        export_with_replies_of(vec![(200, None)], big).await,
        (false, 1)
    );
    assert_eq!(
        export_with_replies_of(vec![(503, None)], big).await,
        (false, 1)
    );
    // a small reply body is read as before
    assert_eq!(
        export_with_replies_of(vec![(200, None)], 64).await,
        (true, 1)
    );
}

/// A collector's URL may carry credentials (a user, a token in the query): the errors that
/// reach the log name the collector without them.
#[tokio::test]
async fn an_export_error_names_the_collector_without_its_credentials() {
    let (url, _) = collector_with_body(vec![(400, None)], 0, Duration::ZERO).await;
    let url = url.replacen("http://", "http://user:s3cret-tok@", 1) + "?api-key=s3cret-key";
    let e = http_exporter(url.clone(), Duration::from_secs(2))
        .export(Vec::new())
        .await
        .expect_err("a 400 fails the export");
    let text = e.to_string();
    assert!(text.contains("400"), "{text}");
    let at = url.find('@').expect("userinfo") + 1;
    let bare = &url[at..url.find('?').expect("query")];
    assert!(text.contains(bare), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

/// Each attempt gets only the time the export has left: a second attempt started late is cut
/// at the export's deadline, and the error says why the first one failed.
#[tokio::test]
async fn an_attempt_ends_at_the_exports_deadline() {
    let (url, seen) = collector_with_body(vec![(503, None)], 0, Duration::from_millis(800)).await;
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let e = http_exporter(url, timeout)
        .export(Vec::new())
        .await
        .expect_err("every attempt fails");
    let took = started.elapsed();
    // without the deadline the second attempt runs to ~1.7 s
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(*seen.lock().expect("count"), 2);
    assert!(e.to_string().contains("503"), "{e}");
}

/// A gRPC collector whose reply is over tonic's 4 MiB limit for a message got the request
/// (its reply says so): the spans are not sent again, as over OTLP/HTTP.
#[tokio::test]
async fn a_grpc_request_whose_reply_is_too_large_is_not_sent_again() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    struct Big(Arc<Mutex<usize>>);
    #[tonic::async_trait]
    impl TraceService for Big {
        async fn export(
            &self,
            _: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            *self.0.lock().expect("count") += 1;
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans: 0,
                    error_message: "x".repeat(5 * 1024 * 1024),
                }),
            }))
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(0usize));
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Big(seen.clone())))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    let server = tokio::spawn(server);
    let timeout = Duration::from_secs(2);
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .timeout(timeout)
        .connect_lazy();
    let e = OtlpSpans::new(
        Wire::Grpc(tonic::client::Grpc::new(channel)),
        false,
        timeout,
    );
    let failed = e.export(Vec::new()).await.is_err();
    server.abort();
    assert!(failed);
    assert_eq!(*seen.lock().expect("count"), 1);
}

fn table<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

#[test]
fn endpoints_headers_and_compression_read_as_the_otlp_crate_reads_them() {
    let none = table(&[]);
    assert_eq!(grpc_endpoint(&none), "http://localhost:4317");
    assert_eq!(http_url(&none), "http://localhost:4318/v1/traces");
    assert!(headers(&none).is_empty() && !gzip_wanted(&none));

    let general = table(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            " a = 1 ,b=x%20y,=no,c=,bad%zz=%zz",
        ),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP"),
    ]);
    assert_eq!(http_url(&general), "http://c:4318/v1/traces");
    assert_eq!(grpc_endpoint(&general), "http://c:4318/");
    assert!(gzip_wanted(&general));
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    };
    let read = |env: &dyn Fn(&str) -> Option<String>| -> Vec<(String, String)> {
        headers(env)
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_owned()))
            .collect()
    };
    assert_eq!(
        read(&general),
        pairs(&[("a", "1"), ("b", "x y"), ("bad%zz", "%zz")])
    );

    // the traces variables win and are used as they are
    let own = table(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "t=2"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
    ]);
    assert_eq!(http_url(&own), "http://t:1/custom");
    assert_eq!(grpc_endpoint(&own), "http://t:1/custom");
    assert_eq!(read(&own), pairs(&[("t", "2")]));
    assert!(!gzip_wanted(&own));

    // a gRPC endpoint without a scheme: TLS unless insecure
    let bare = [("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")];
    assert_eq!(grpc_endpoint(&table(&bare)), "https://c:4317");
    let insecure = [bare[0], ("OTEL_EXPORTER_OTLP_INSECURE", "True")];
    assert_eq!(grpc_endpoint(&table(&insecure)), "http://c:4317");
    let path = [("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317/p://q")];
    assert_eq!(grpc_endpoint(&table(&path)), "https://c:4317/p://q");

    // set but empty: the traces headers and insecure flag are that (none, false); an
    // empty or unknown compression is passed over for the general one
    let empty = table(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", ""),
        ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
        ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", ""),
        ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip "),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
    ]);
    assert!(headers(&empty).is_empty());
    assert_eq!(grpc_endpoint(&empty), "https://c:4317");
    assert!(gzip_wanted(&empty));
}

static YIELDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_yield() {
    YIELDS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

#[tokio::test]
async fn a_gentle_export_yields_every_few_spans_and_no_other_export_does() {
    let (url, seen) = collector_with_body(vec![(200, None)], 0, Duration::ZERO).await;
    let mut e = http_exporter(url, Duration::from_secs(2));
    e.yield_core = count_yield;
    let scope = opentelemetry::InstrumentationScope::builder("t").build();
    let spans = |n| {
        (0..n)
            .map(|i| wire::tests::span(i, &scope))
            .collect::<Vec<_>>()
    };
    let yields = || YIELDS.load(std::sync::atomic::Ordering::SeqCst);
    assert!(e.export_gently(spans(40), false).await.is_ok());
    assert_eq!(yields(), 0);
    // 40 spans written, then dropped: a yield after every 16 of either
    assert!(e.export_gently(spans(40), true).await.is_ok());
    assert_eq!(yields(), 4);
    assert!(e.export(spans(40)).await.is_ok());
    assert_eq!(yields(), 4, "the SDK's own export call is never gentle");
    assert_eq!(*seen.lock().expect("count"), 3);
}
