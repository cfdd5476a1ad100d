//! The binary: one-line errors with exit status 2 for bad configuration, and a
//! graceful SIGTERM that lets an in-flight stream finish before exiting 0.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use http_body_util::BodyExt;

fn tokentap() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tokentap"));
    // a clean environment for the settings under test
    for (k, _) in std::env::vars() {
        if k.starts_with("TOKENTAP_") || k.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    c.current_dir(std::env::temp_dir());
    c
}

fn assert_config_error(mut cmd: Command, names: &str) {
    let out = cmd
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit status for {names}: {stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains(names), "{stderr:?} names {names}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn bad_configuration_is_one_line_and_exit_2() {
    let mut c = tokentap();
    c.args(["--upstream", "ftp://example.com"]);
    assert_config_error(c, "--upstream");

    let mut c = tokentap();
    c.env("TOKENTAP_CONNECT_TIMEOUT", "soon");
    assert_config_error(c, "--connect-timeout");

    let mut c = tokentap();
    c.args(["--pricing", "/nonexistent/prices.toml"]);
    assert_config_error(c, "--pricing");

    let dir = std::env::temp_dir().join(format!("tokentap-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[models.x]\ninput = \"cheap\"\n").expect("write");
    let mut c = tokentap();
    c.arg("--pricing").arg(&bad);
    assert_config_error(c, "--pricing");

    let mut c = tokentap();
    c.args(["--max-body", "huge"]);
    assert_config_error(c, "--max-body");

    let mut c = tokentap();
    c.env("OTEL_TRACES_SAMPLER", "sometimes");
    assert_config_error(c, "OTEL_TRACES_SAMPLER");

    let mut c = tokentap();
    c.env("OTEL_TRACES_SAMPLER_ARG", "lots");
    assert_config_error(c, "OTEL_TRACES_SAMPLER_ARG");

    let mut c = tokentap();
    c.args(["--agent-store", "mysql://db"]);
    assert_config_error(c, "--agent-store");

    // a bad store URL is refused without echoing it (it may hold a password)
    let out = tokentap()
        .args(["--listen", "127.0.0.1:0"])
        .args(["--agent-store", "redis://u:hunter2@cache:notaport"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--agent-store") && !stderr.contains("hunter2"),
        "{stderr}"
    );

    let mut c = tokentap();
    c.env("TOKENTAP_AGENT_CONVERSATION_TTL", "0s");
    assert_config_error(c, "--agent-conversation-ttl");

    let mut c = tokentap();
    c.args(["--agent-models", " , "]);
    assert_config_error(c, "--agent-models");
}

#[test]
fn help_lists_every_flag_with_its_env_var() {
    let out = tokentap().arg("--help").output().expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--listen", "TOKENTAP_LISTEN"),
        ("--upstream", "TOKENTAP_UPSTREAM"),
        ("--demo", "TOKENTAP_DEMO"),
        ("--pricing", "TOKENTAP_PRICING"),
        ("--connect-timeout", "TOKENTAP_CONNECT_TIMEOUT"),
        ("--read-timeout", "TOKENTAP_READ_TIMEOUT"),
        ("--max-body", "TOKENTAP_MAX_BODY"),
        ("--max-label-values", "TOKENTAP_MAX_LABEL_VALUES"),
        ("--no-usage-injection", "TOKENTAP_USAGE_INJECTION"),
        (
            "--capture-content",
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
        ),
        ("--agent-model", "TOKENTAP_AGENT_MODEL"),
        ("--agent-system-prompt", "TOKENTAP_AGENT_SYSTEM_PROMPT"),
        ("--agent-max-history", "TOKENTAP_AGENT_MAX_HISTORY"),
        ("--agent-store", "TOKENTAP_AGENT_STORE"),
        (
            "--agent-conversation-ttl",
            "TOKENTAP_AGENT_CONVERSATION_TTL",
        ),
        ("--agent-models", "TOKENTAP_AGENT_MODELS"),
        ("--no-agent", "TOKENTAP_AGENT"),
        ("--access-token", "TOKENTAP_ACCESS_TOKEN"),
    ] {
        assert!(
            help.contains(flag) && help.contains(env),
            "{flag} / {env} in --help"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_stream_finish_then_exits_zero() {
    sigterm_during_a_stream(tokentap()).await;
}

/// On one core tokentap runs a current-thread runtime (src/main.rs): the same
/// stream, signal and flush must work there, where nothing else can run the
/// tasks the shutdown waits for.
#[tokio::test(flavor = "multi_thread")]
async fn on_one_core_sigterm_lets_the_stream_finish_then_exits_zero() {
    let mut c = Command::new("taskset");
    c.args(["-c", "0", env!("CARGO_BIN_EXE_tokentap")]);
    for (k, _) in std::env::vars() {
        if k.starts_with("TOKENTAP_") || k.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    c.current_dir(std::env::temp_dir());
    sigterm_during_a_stream(c).await;
}

async fn sigterm_during_a_stream(mut cmd: Command) {
    let mut child = cmd
        .args([
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--demo-chunk-delay",
            "40ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("utf8");
    let url = first
        .strip_prefix("tokentap listening on ")
        .expect("banner names the URL")
        .trim()
        .to_owned();
    // the banner shows how to use it
    let mut rest = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let last = line.contains("/metrics |");
        rest.push(line);
        if last {
            break;
        }
    }
    assert!(
        rest.iter()
            .any(|l| l.contains("OPENAI_BASE_URL=") && l.contains(&url))
    );
    assert!(rest.iter().any(|l| l.contains("curl")));

    let req = http::Request::post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"a stream that outlives the signal"}]}"#,
        )))
        .expect("req");
    let resp = support::http_client().request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let first = body.frame().await.expect("frame").expect("ok");
    got.extend_from_slice(first.data_ref().expect("data"));

    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());

    // the in-flight stream still completes
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("stream continues after SIGTERM");
        if let Some(d) = frame.data_ref() {
            got.extend_from_slice(d);
        }
    }
    let text = String::from_utf8(got).expect("utf8");
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "complete stream: {text}"
    );

    // and the process exits 0 on its own
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().expect("wait") {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            panic!("tokentap did not exit after SIGTERM");
        }
    };
    assert_eq!(status.code(), Some(0));
    // new connections are refused once it is gone
    let addr = url.trim_start_matches("http://");
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_flag_for_containers() {
    let s = support::Stack::start().await;
    let out = tokentap()
        .args(["--healthcheck", "--listen", &s.proxy.addr.to_string()])
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("healthy"));
    // nothing listening: unhealthy, exit 1, one line
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let out = tokentap()
        .args(["--healthcheck", "--listen", &format!("0.0.0.0:{port}")])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}
