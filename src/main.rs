//! `tokentap` binary: flags → configuration → telemetry → logging → [`app`]; nothing else.
//!
//! Every start-up failure is an [`app::StartError`] printed as one line with its exit status.
#![forbid(unsafe_code)]

use std::process::ExitCode;

/// Opt-in (`--features mimalloc`): a call makes hundreds of small, short-lived
/// allocations, and under mimalloc a call costs about a quarter fewer
/// instructions than under glibc's allocator, but peak memory at 1,000
/// concurrent streams is about 60 % higher (docs/benchmarks.md, "Allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use tokentap::app::{self, StartError};
use tokentap::config::{Cli, Config, LogFormat, RouteSpec};
use tokentap::genai::provider::Provider;
use tokentap::telemetry::otel::OtelSettings;

/// Log lines go to stderr (text or JSON) and, when a logs exporter is on, over OTLP.
/// The OTLP bridge never sees the export machinery's own events (they would loop).
fn init_logging(
    format: LogFormat,
    filter: &str,
    otel_logs: Option<&opentelemetry_sdk::logs::SdkLoggerProvider>,
) -> Result<(), String> {
    use tracing_subscriber::filter::{Targets, filter_fn};
    use tracing_subscriber::prelude::*;
    let targets: Targets = filter
        .parse()
        .map_err(|e| format!("--log {filter:?}: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let bridge = otel_logs.map(|p| {
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(p).with_filter(
            filter_fn(|meta| {
                let t = meta.target();
                !(t.starts_with("hyper")
                    || t.starts_with("h2")
                    || t.starts_with("tonic")
                    || t.starts_with("tower")
                    || t.starts_with("opentelemetry")
                    || t.starts_with("tokentap::telemetry::export"))
            }),
        )
    });
    tracing_subscriber::registry()
        .with(targets)
        .with(fmt)
        .with(bridge)
        .try_init()
        .map_err(|e| e.to_string())
}

/// What the banner says about the live view: off, open, or behind the access token.
#[derive(Clone, Copy)]
enum LiveView {
    Off,
    Open,
    Token,
}

fn banner(running: &app::Running, demo: bool, routes: &[RouteSpec], live: LiveView) {
    let url = running.url();
    println!("tokentap listening on {url}");
    if demo {
        println!(
            "  upstream: built-in demo OpenAI at {} (offline, no key needed)",
            running.upstream
        );
    } else {
        println!("  upstream: {}", running.upstream);
    }
    for r in routes {
        let provider = r
            .provider
            .as_deref()
            .map_or_else(|| Provider::for_host(r.upstream.host()), Provider::new);
        println!(
            "  route:    {url}{}/ -> {} (provider {provider})",
            r.prefix, r.upstream
        );
    }
    match live {
        LiveView::Open => println!("  live:     {url}/ui"),
        LiveView::Token => {
            println!("  live:     {url}/ui?token=<your --access-token> (once; a cookie keeps it)")
        }
        LiveView::Off => {}
    }
    println!("  metrics:  {url}/metrics");
    println!("  health:   {url}/health");
    println!();
    println!("Point any OpenAI SDK at it:");
    println!("  export OPENAI_BASE_URL={url}/v1");
    println!();
    println!("Or try it with curl:");
    let auth = if demo {
        ""
    } else {
        " -H \"Authorization: Bearer $OPENAI_API_KEY\""
    };
    println!(
        "  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\\n    -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"What is OpenTelemetry?\"}}]}}'"
    );
    println!("  curl -s {url}/metrics | grep llm_");
}

fn main() -> ExitCode {
    let runtime = match std::thread::available_parallelism().map(std::num::NonZero::get) {
        // one core: a current-thread runtime, without a worker's hand-offs and wake-ups
        Ok(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    match runtime {
        Ok(rt) => rt.block_on(async_main()),
        Err(e) => {
            eprintln!("tokentap: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn async_main() -> ExitCode {
    // `tokentap key-id`: the one subcommand, before flags (it takes none)
    if std::env::args_os().nth(1).is_some_and(|a| a == "key-id") {
        return key_id();
    }
    // `.env` fills the environment before flags are read; real env vars win.
    let _ = dotenvy::dotenv();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let msg = e.to_string();
            let line = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("tokentap: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    if cli.healthcheck {
        return healthcheck(cli.listen).await;
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokentap: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `tokentap key-id`: reads an API key on stdin, prints its `tokentap.key_id`.
/// On stdin, not as an argument, so the key stays out of shell history and `ps`.
fn key_id() -> ExitCode {
    if std::env::args_os().len() > 2 {
        eprintln!("tokentap: key-id takes no arguments (it reads the key on stdin)");
        return ExitCode::from(2);
    }
    let mut input = String::new();
    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input) {
        eprintln!("tokentap: key-id: cannot read stdin: {e}");
        return ExitCode::from(2);
    }
    let key = input.trim();
    if key.is_empty() {
        eprintln!("tokentap: key-id: no key on stdin");
        return ExitCode::from(2);
    }
    println!("{}", tokentap::genai::attribution::key_id(key));
    ExitCode::SUCCESS
}

/// Starts tokentap and serves until SIGINT or SIGTERM.
async fn run(cli: Cli) -> Result<(), StartError> {
    let (log_format, log_filter, demo) = (cli.log_format, cli.log.clone(), cli.demo);
    let cfg = Config::try_from(cli).map_err(StartError::Config)?;
    let settings = OtelSettings::from_env(&cfg.service_name).map_err(StartError::Config)?;
    let telemetry = app::telemetry(&cfg, &settings)?;
    init_logging(
        log_format,
        &log_filter,
        telemetry.providers.logger_provider.as_ref(),
    )
    .map_err(StartError::Config)?;
    let routes = cfg.routes.clone();
    let live = match (cfg.recent_calls, &cfg.access_token) {
        (0, _) => LiveView::Off,
        (_, None) => LiveView::Open,
        (_, Some(_)) => LiveView::Token,
    };
    let running = app::start_with(cfg, telemetry).await?;
    // the handlers are in place before the banner says we are up: a SIGTERM right
    // after it must drain, not kill
    let signal = shutdown_signal();
    banner(&running, demo, &routes, live);
    signal.await;
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    Ok(())
}

/// GET /health on the listen address (loopback when it listens on all interfaces).
async fn healthcheck(listen: std::net::SocketAddr) -> ExitCode {
    use http_body_util::{BodyExt, Empty};
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let uri = format!("http://{addr}/health");
    let req = match http::Request::get(&uri).body(Empty::<bytes::Bytes>::new()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokentap: healthcheck: {e}");
            return ExitCode::from(1);
        }
    };
    let result = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    })
    .await;
    match result {
        Ok(Ok((status, body))) if status == http::StatusCode::OK => {
            println!("{}", String::from_utf8_lossy(&body));
            ExitCode::SUCCESS
        }
        Ok(Ok((status, _))) => {
            eprintln!("tokentap: healthcheck: {uri} answered {status}");
            ExitCode::from(1)
        }
        Ok(Err(e)) => {
            eprintln!("tokentap: healthcheck: {uri}: {e}");
            ExitCode::from(1)
        }
        Err(_) => {
            eprintln!("tokentap: healthcheck: {uri}: no answer within 3s");
            ExitCode::from(1)
        }
    }
}

/// Resolves at SIGINT or SIGTERM; the handlers are installed when this is called.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term) => {},
                () = wait(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
