//! Flag parsing and validation.

use super::*;

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
    assert!(parse_duration("fast").is_err());
    assert!(parse_duration("3days").is_err());
    // a deadline past a year would overflow timer arithmetic later: refused now
    assert!(parse_duration("1000000000s").is_err());
    assert!(parse_duration("8761h").is_err());
    assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
    assert!(parse_positive_duration("0s").is_err());
    assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
    assert_eq!(parse_size("32MiB"), Ok(32 << 20));
    assert_eq!(parse_size("1kb"), Ok(1000));
    assert_eq!(parse_size("77"), Ok(77));
    assert!(parse_size("lots").is_err());
    assert!(parse_size("99999999999GiB").is_err());
}

#[test]
fn upstream_urls() {
    let u = Upstream::parse("http://127.0.0.1:9000/prefix/").expect("valid");
    assert_eq!(u.prefix, "/prefix");
    assert_eq!(u.port(), 9000);
    let o = Upstream::parse("https://api.openai.com").expect("valid");
    assert_eq!(
        (o.host(), o.port(), o.prefix.as_str()),
        ("api.openai.com", 443, "")
    );
    assert!(Upstream::parse("ftp://x").is_err());
    assert!(Upstream::parse("api.openai.com").is_err());
    assert!(Upstream::parse("http://x/?a=1").is_err());
}

#[test]
fn flags_and_env_forms() {
    let c = Cli::try_parse_from([
        "tokentap",
        "--demo",
        "--no-usage-injection",
        "--max-body",
        "1MiB",
    ])
    .expect("parses");
    assert!(c.demo);
    assert!(!c.usage_injection);
    assert_eq!(c.max_body, 1 << 20);
    let d = Cli::try_parse_from(["tokentap"]).expect("parses");
    assert!(d.usage_injection && !d.demo && !d.capture_content);
    assert!(Cli::try_parse_from(["tokentap", "--connect-timeout", "soon"]).is_err());
    assert!(Cli::try_parse_from(["tokentap", "--no-usage-injection", "true"]).is_err());
}

#[test]
fn route_flags_repeat_and_combine() {
    let c = Cli::try_parse_from([
        "tokentap",
        "--route",
        "/a=http://a",
        "--route",
        "/b=http://b /c=http://c",
        "--provider",
        "vllm",
    ])
    .expect("parses");
    let cfg = Config::try_from(c).expect("valid");
    let prefixes: Vec<_> = cfg.routes.iter().map(|r| r.prefix.as_str()).collect();
    assert_eq!(prefixes, ["/a", "/b", "/c"]);
    assert_eq!(cfg.provider.as_deref(), Some("vllm"));
    assert!(Cli::try_parse_from(["tokentap", "--provider", "no way"]).is_err());
}

#[test]
fn a_client_certificate_needs_its_key_and_a_ca_file_must_be_readable() {
    let only_cert = Cli::try_parse_from(["tokentap", "--upstream-client-cert", "c.pem"]);
    assert!(only_cert.is_err());
    let only_key = Cli::try_parse_from(["tokentap", "--upstream-client-key", "k.pem"]);
    assert!(only_key.is_err());
    let e = Cli::try_parse_from(["tokentap", "--upstream-ca", "/nonexistent/ca.pem"])
        .expect_err("unreadable CA file");
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
}

#[test]
fn agent_in_production_flags() {
    let d = Config::try_from(Cli::try_parse_from(["tokentap"]).expect("parses")).expect("ok");
    assert!(d.agent && d.agent_models.is_none());
    assert_eq!(d.agent_store, AgentStore::Memory);
    assert_eq!(d.agent_conversation_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(d.agent_lock_wait, Duration::from_secs(30));
    let c = Cli::try_parse_from([
        "tokentap",
        "--no-agent",
        "--agent-store",
        "redis://:pw@cache:6379/1",
        "--agent-models",
        "*",
        "--agent-conversation-ttl",
        "90m",
    ])
    .expect("parses");
    assert!(
        !format!("{c:?}").contains("pw@"),
        "the password never prints"
    );
    let c = Config::try_from(c).expect("valid");
    assert!(!c.agent);
    assert_eq!(c.agent_models, Some(AgentModels::Any));
    assert_eq!(c.agent_conversation_ttl, Duration::from_secs(5400));
    let AgentStore::Redis(u) = &c.agent_store else {
        panic!("redis store");
    };
    assert_eq!(u.shown(), "redis at cache:6379/1");
    assert!(!format!("{c:?}").contains("pw@"));
    assert!(Cli::try_parse_from(["tokentap", "--no-agent", "true"]).is_err());
}

#[test]
fn live_view_flags_are_checked() {
    let d = Cli::try_parse_from(["tokentap"]).expect("parses");
    assert_eq!((d.recent_calls, d.trace_url), (1000, None));
    let c = Cli::try_parse_from([
        "tokentap",
        "--recent-calls",
        "0",
        "--trace-url",
        "http://localhost:16686/trace/{trace_id}",
    ])
    .expect("parses");
    assert_eq!(c.recent_calls, 0);
    assert!(Cli::try_parse_from(["tokentap", "--recent-calls", "-1"]).is_err());
    assert!(Cli::try_parse_from(["tokentap", "--recent-calls", "999999999"]).is_err());
    assert!(Cli::try_parse_from(["tokentap", "--trace-url", "http://jaeger/trace/"]).is_err());
    assert!(Cli::try_parse_from(["tokentap", "--trace-url", "javascript:{trace_id}"]).is_err());
}

#[test]
fn secrets_do_not_print() {
    let s = Secret::new("sk-very-secret");
    assert!(!format!("{s:?}").contains("very"));
}
