//! The deployment files, checked without Docker: the Dockerfile builds the binary
//! the tests use with the documented command, the collector configuration uses
//! only components that exist in the pinned collector image (none of the removed
//! ones the lab's configuration had), its pipelines are wired, and the compose
//! stack, Prometheus and Grafana files agree with each other. Fast and offline:
//! the only subprocesses are `cargo fetch --offline` and `cargo metadata --offline`
//! on a replay of the Dockerfile's build context (no compilation).
//!
//! compose/check.sh covers the rest: the Compose schema, YAML syntax, hadolint,
//! `promtool check config`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------
// What the collector configuration was verified against
// ---------------------------------------------------------------------------

/// The collector image tag in compose/docker-compose.yml. The allow-list below
/// was checked against this release: its `distributions/otelcol-contrib/manifest.yaml`
/// in open-telemetry/opentelemetry-collector-releases (tag v0.159.0) lists
/// otlpreceiver, batchprocessor, memorylimiterprocessor, otlpexporter,
/// debugexporter and prometheusexporter, and the core repository's metadata at
/// v0.159.0 gives their types. Bumping the tag means checking the list again.
/// Known ahead: the collector's batching migration plan (an RFC in the core
/// repository) deprecates the batch processor from about 0.160.0 and drops it
/// from the contrib distribution around 0.166.0, batching moving into the
/// exporters' `sending_queue`.
const COLLECTOR_CONTRIB_VERSION: &str = "0.159.0";

/// Component types used here and verified to exist in that release.
const ALLOWED_RECEIVERS: &[&str] = &["otlp"];
const ALLOWED_PROCESSORS: &[&str] = &["batch", "memory_limiter"];
/// `otlp_grpc` is the OTLP gRPC exporter's type since 0.144 (`otlp` is its deprecated alias).
const ALLOWED_EXPORTERS: &[&str] = &["otlp_grpc", "debug", "prometheus"];
const ALLOWED_CONNECTORS: &[&str] = &[];
const ALLOWED_EXTENSIONS: &[&str] = &[];

/// (section, type, why): component types that no longer exist, or only as
/// deprecated aliases; a configuration naming them fails to start (or warns)
/// on current collectors. `*` is any section.
const DENIED: &[(&str, &str, &str)] = &[
    (
        "exporters",
        "jaeger",
        "removed in 0.85: Jaeger takes OTLP (otlp_grpc exporter)",
    ),
    (
        "exporters",
        "jaeger_thrift",
        "removed in 0.85: Jaeger takes OTLP",
    ),
    ("exporters", "logging", "removed in 0.111: use `debug`"),
    ("exporters", "loki", "removed: Loki takes OTLP"),
    ("*", "opencensus", "removed"),
    (
        "exporters",
        "otlp",
        "deprecated alias of `otlp_grpc` (since 0.144)",
    ),
    (
        "exporters",
        "otlphttp",
        "deprecated alias of `otlp_http` (since 0.144)",
    ),
];

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

const BUILD_COMMAND: &str = "cargo build --release --locked --bin tokentap";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn yaml(rel: &str) -> Yaml {
    parse_yaml(&read(rel), rel)
}

// ---------------------------------------------------------------------------
// A YAML subset: block mappings and sequences, flow sequences of scalars,
// quoted and plain scalars, comments. Anything else (anchors, tags, flow
// mappings, multi-line plain scalars) is refused, so a test never silently
// misreads a file; compose/check.sh parses the same files with a full parser.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Null,
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The node at `path`, or a panic naming the path.
    fn at(&self, path: &[&str]) -> &Yaml {
        let mut node = self;
        for (i, k) in path.iter().enumerate() {
            node = node
                .get(k)
                .unwrap_or_else(|| panic!("missing key {}", path[..=i].join(".")));
        }
        node
    }

    fn str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    fn s(&self, path: &[&str]) -> &str {
        self.at(path)
            .str()
            .unwrap_or_else(|| panic!("{} is not a scalar", path.join(".")))
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            Yaml::Map(m) => m.iter().map(|(k, _)| k.as_str()).collect(),
            Yaml::Null => vec![],
            other => panic!("not a mapping: {other:?}"),
        }
    }

    fn items(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(v) => v,
            other => panic!("not a sequence: {other:?}"),
        }
    }

    /// A sequence of scalars.
    fn strs(&self) -> Vec<&str> {
        self.items()
            .iter()
            .map(|v| v.str().unwrap_or_else(|| panic!("not a scalar: {v:?}")))
            .collect()
    }
}

struct Line {
    no: usize,
    indent: usize,
    text: String,
}

fn parse_yaml(src: &str, name: &str) -> Yaml {
    let mut lines = Vec::new();
    for (i, raw) in src.lines().enumerate() {
        let no = i + 1;
        let t = strip_comment(raw);
        if t.trim().is_empty() {
            continue;
        }
        assert!(
            !t.starts_with('\t'),
            "{name}:{no}: tab indentation is not YAML"
        );
        if t == "---" && lines.is_empty() {
            continue;
        }
        let text = t.trim_start();
        lines.push(Line {
            no,
            indent: t.len() - text.len(),
            text: text.to_string(),
        });
    }
    if lines.is_empty() {
        return Yaml::Null;
    }
    let mut p = Parser { lines, i: 0, name };
    let indent = p.lines[0].indent;
    let v = p.block(indent);
    if let Some(l) = p.lines.get(p.i) {
        panic!("{name}:{}: unexpected indentation", l.no);
    }
    v
}

/// The line without its comment (`#` at the start or after a blank, outside
/// quoted scalars; a quote opens one only where a scalar can start).
fn strip_comment(raw: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in raw.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if (c == '"' || c == '\'') && matches!(prev, ' ' | '\t' | '[' | ',') => {
                quote = Some(c)
            }
            None if c == '#' && matches!(prev, ' ' | '\t') => return raw[..i].trim_end(),
            None => {}
        }
        prev = c;
    }
    raw.trim_end()
}

fn is_dash(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key: value` or `key:` → (key, value); None when the text is not a mapping entry.
fn split_key(text: &str) -> Option<(String, &str)> {
    if text.starts_with('[') || text.starts_with('{') {
        return None;
    }
    if let Some(q) = text.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = text[1..].find(q)? + 1;
        let rest = text[end + 1..].trim_start();
        let value = rest.strip_prefix(':')?;
        if !(value.is_empty() || value.starts_with(' ')) {
            return None;
        }
        return Some((text[1..end].to_string(), value.trim()));
    }
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ') {
            return Some((text[..i].to_string(), text[i + 1..].trim()));
        }
    }
    None
}

struct Parser<'a> {
    lines: Vec<Line>,
    i: usize,
    name: &'a str,
}

impl Parser<'_> {
    fn fail(&self, msg: &str) -> ! {
        let no = self.lines.get(self.i).map_or(0, |l| l.no);
        panic!("{}:{no}: {msg}", self.name)
    }

    fn block(&mut self, indent: usize) -> Yaml {
        if is_dash(&self.lines[self.i].text) {
            self.seq(indent)
        } else {
            self.map(indent)
        }
    }

    fn seq(&mut self, indent: usize) -> Yaml {
        let mut items = Vec::new();
        while let Some(l) = self.lines.get(self.i) {
            if l.indent < indent || (l.indent == indent && !is_dash(&l.text)) {
                break; // the sequence ends (it was the value of a key at this indentation)
            }
            if l.indent > indent {
                self.fail("unexpected indentation in a sequence");
            }
            let rest = l.text[1..].trim_start().to_string();
            if rest.is_empty() {
                self.i += 1;
                match self.lines.get(self.i) {
                    Some(n) if n.indent > indent => {
                        let ind = n.indent;
                        items.push(self.block(ind));
                    }
                    _ => items.push(Yaml::Null),
                }
            } else if split_key(&rest).is_some() || is_dash(&rest) {
                // an item that is itself a mapping (or sequence) starting on the dash's line
                let ind = indent + (l.text.len() - rest.len());
                self.lines[self.i] = Line {
                    no: l.no,
                    indent: ind,
                    text: rest,
                };
                items.push(self.block(ind));
            } else {
                items.push(self.inline(&rest));
                self.i += 1;
            }
        }
        Yaml::Seq(items)
    }

    fn map(&mut self, indent: usize) -> Yaml {
        let mut entries: Vec<(String, Yaml)> = Vec::new();
        while let Some(l) = self.lines.get(self.i) {
            if l.indent < indent || (l.indent == indent && is_dash(&l.text)) {
                break;
            }
            if l.indent > indent {
                self.fail("unexpected indentation");
            }
            let Some((key, value)) = split_key(&l.text) else {
                self.fail("expected `key: value`");
            };
            let value = value.to_string();
            if entries.iter().any(|(k, _)| *k == key) {
                self.fail(&format!("duplicate key {key}"));
            }
            self.i += 1;
            let next = self.lines.get(self.i).map(|n| (n.indent, is_dash(&n.text)));
            let node = if value.is_empty() {
                match next {
                    Some((ind, _)) if ind > indent => self.block(ind),
                    Some((ind, true)) if ind == indent => self.seq(indent),
                    _ => Yaml::Null,
                }
            } else if value.starts_with('|') || value.starts_with('>') {
                let mut text = Vec::new();
                while let Some(n) = self.lines.get(self.i).filter(|n| n.indent > indent) {
                    text.push(n.text.clone());
                    self.i += 1;
                }
                Yaml::Str(text.join("\n"))
            } else {
                if matches!(next, Some((ind, _)) if ind > indent) {
                    self.fail("multi-line plain scalars are not supported here");
                }
                self.inline(&value)
            };
            entries.push((key, node));
        }
        Yaml::Map(entries)
    }

    fn inline(&self, v: &str) -> Yaml {
        if let Some(body) = v.strip_prefix('[') {
            let Some(body) = body.strip_suffix(']') else {
                self.fail("unclosed flow sequence");
            };
            if body.contains('[') || body.contains('{') {
                self.fail("nested flow collections are not supported here");
            }
            let mut items = Vec::new();
            let (mut cur, mut quote) = (String::new(), None);
            for c in body.chars() {
                match quote {
                    Some(q) if c == q => {
                        quote = None;
                        cur.push(c)
                    }
                    Some(_) => cur.push(c),
                    None if c == '"' || c == '\'' => {
                        quote = Some(c);
                        cur.push(c)
                    }
                    None if c == ',' => items.push(self.inline(std::mem::take(&mut cur).trim())),
                    None => cur.push(c),
                }
            }
            if !cur.trim().is_empty() {
                items.push(self.inline(cur.trim()));
            }
            return Yaml::Seq(items);
        }
        if v == "{}" {
            return Yaml::Map(vec![]);
        }
        if v.starts_with('{') || v.starts_with('&') || v.starts_with('*') || v.starts_with('!') {
            self.fail("flow mappings, anchors, aliases and tags are not supported here");
        }
        if let Some(body) = v.strip_prefix('"') {
            let Some(body) = body.strip_suffix('"') else {
                self.fail("unclosed double quote");
            };
            return Yaml::Str(body.replace("\\\"", "\"").replace("\\\\", "\\"));
        }
        if let Some(body) = v.strip_prefix('\'') {
            let Some(body) = body.strip_suffix('\'') else {
                self.fail("unclosed single quote");
            };
            return Yaml::Str(body.replace("''", "'"));
        }
        if v == "~" || v == "null" {
            return Yaml::Null;
        }
        Yaml::Str(v.to_string())
    }
}

#[test]
fn the_yaml_subset_parser_reads_what_the_tests_rely_on() {
    let y = parse_yaml(
        "a:\n  b: [x, \"y:z\", 'w''s']   # comment\n  it: it's # gone\n  c:\n  - k: v\n    l: \"#not a comment\"\n  - plain:colon\n  d: http://host:1/p\nlist:\n- 1\n- - nested\nempty:\n",
        "inline",
    );
    assert_eq!(y.at(&["a", "b"]).strs(), ["x", "y:z", "w's"]);
    assert_eq!(y.s(&["a", "it"]), "it's");
    let c = y.at(&["a", "c"]).items();
    assert_eq!(c[0].s(&["k"]), "v");
    assert_eq!(c[0].s(&["l"]), "#not a comment");
    assert_eq!(c[1].str(), Some("plain:colon"));
    assert_eq!(y.s(&["a", "d"]), "http://host:1/p");
    assert_eq!(y.at(&["list"]).items()[1].strs(), ["nested"]);
    assert_eq!(y.at(&["empty"]), &Yaml::Null);
    for bad in ["a: &x 1", "a:\n  b: 1\n   c: 2", "a: 1\na: 2", "a: {b: 1}"] {
        assert!(
            std::panic::catch_unwind(|| parse_yaml(bad, "bad")).is_err(),
            "refuses {bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// (a) the collector configuration
// ---------------------------------------------------------------------------

const COLLECTOR_CONFIG: &str = "compose/otel-collector/config.yaml";

/// `type/name` → `type`.
fn component_type(id: &str) -> &str {
    id.split('/').next().unwrap_or(id)
}

#[test]
fn collector_uses_only_components_verified_in_the_pinned_version() {
    let cfg = yaml(COLLECTOR_CONFIG);
    let sections: [(&str, &[&str]); 5] = [
        ("receivers", ALLOWED_RECEIVERS),
        ("processors", ALLOWED_PROCESSORS),
        ("exporters", ALLOWED_EXPORTERS),
        ("connectors", ALLOWED_CONNECTORS),
        ("extensions", ALLOWED_EXTENSIONS),
    ];
    for top in cfg.keys() {
        assert!(
            sections.iter().any(|(s, _)| *s == top) || top == "service",
            "{COLLECTOR_CONFIG}: unknown top-level section `{top}`"
        );
    }
    let mut problems = Vec::new();
    for (section, allowed) in sections {
        for id in cfg.get(section).map(Yaml::keys).unwrap_or_default() {
            let ty = component_type(id);
            // kind-aware: the OTLP receiver is still `otlp`, the Jaeger receiver still `jaeger`
            let denied = DENIED
                .iter()
                .find(|(sec, d, _)| *d == ty && (*sec == "*" || *sec == section));
            if let Some((_, _, why)) = denied {
                problems.push(format!("{section}.{id}: `{ty}` {why}"));
                continue;
            }
            if !allowed.contains(&ty) {
                problems.push(format!(
                    "{section}.{id}: `{ty}` is not in the allow-list verified against \
                     collector-contrib {COLLECTOR_CONTRIB_VERSION} (tests/deploy.rs)"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_deny_list_catches_the_labs_removed_exporters() {
    // The lab's collector configuration, reduced to its components.
    let lab = parse_yaml(
        "exporters:\n  jaeger:\n    endpoint: jaeger:14250\n  logging:\n    loglevel: debug\n  prometheus:\n    endpoint: 0.0.0.0:8889\n",
        "lab",
    );
    let denied: Vec<&str> = lab
        .at(&["exporters"])
        .keys()
        .into_iter()
        .filter(|id| {
            DENIED
                .iter()
                .any(|(sec, d, _)| *sec == "exporters" && *d == component_type(id))
        })
        .collect();
    assert_eq!(denied, ["jaeger", "logging"]);
    assert_eq!(component_type("otlp_grpc/jaeger"), "otlp_grpc");
}

#[test]
fn collector_pipelines_reference_only_defined_components() {
    let cfg = yaml(COLLECTOR_CONFIG);
    let defined = |section: &str| -> BTreeSet<String> {
        cfg.get(section)
            .map(Yaml::keys)
            .unwrap_or_default()
            .into_iter()
            .map(String::from)
            .collect()
    };
    let (receivers, processors, exporters, connectors, extensions) = (
        defined("receivers"),
        defined("processors"),
        defined("exporters"),
        defined("connectors"),
        defined("extensions"),
    );
    let pipelines = cfg.at(&["service", "pipelines"]);
    let mut used = BTreeSet::new();
    let mut signals = BTreeSet::new();
    for name in pipelines.keys() {
        let signal = component_type(name);
        assert!(
            ["traces", "metrics", "logs", "profiles"].contains(&signal),
            "pipeline {name}: unknown signal"
        );
        signals.insert(signal.to_string());
        let p = pipelines.at(&[name]);
        let list = |k: &str| -> Vec<String> {
            p.get(k)
                .map(|v| v.strs().into_iter().map(String::from).collect())
                .unwrap_or_default()
        };
        let (rs, ps, es) = (list("receivers"), list("processors"), list("exporters"));
        for k in p.keys() {
            assert!(
                ["receivers", "processors", "exporters"].contains(&k),
                "pipeline {name}: unknown key {k}"
            );
        }
        assert!(!rs.is_empty(), "pipeline {name} has no receiver");
        assert!(!es.is_empty(), "pipeline {name} has no exporter");
        for r in &rs {
            assert!(
                receivers.contains(r) || connectors.contains(r),
                "pipeline {name}: receiver {r} is not defined"
            );
        }
        for x in &ps {
            assert!(
                processors.contains(x),
                "pipeline {name}: processor {x} is not defined"
            );
        }
        for e in &es {
            assert!(
                exporters.contains(e) || connectors.contains(e),
                "pipeline {name}: exporter {e} is not defined"
            );
        }
        // memory_limiter first, so it can refuse data before anything buffers it
        assert_eq!(
            ps.first().map(String::as_str),
            Some("memory_limiter"),
            "pipeline {name}: memory_limiter must be the first processor"
        );
        assert!(ps.iter().any(|x| x == "batch"), "pipeline {name}: no batch");
        used.extend(rs.into_iter().chain(ps).chain(es));
    }
    assert_eq!(
        signals,
        BTreeSet::from(["logs".into(), "metrics".into(), "traces".into()]),
        "tokentap exports the three signals"
    );
    for id in receivers
        .iter()
        .chain(&processors)
        .chain(&exporters)
        .chain(&connectors)
    {
        assert!(used.contains(id), "{id} is defined but no pipeline uses it");
    }
    let enabled_ext: Vec<String> = cfg
        .get("service")
        .and_then(|s| s.get("extensions"))
        .map(|v| v.strs().into_iter().map(String::from).collect())
        .unwrap_or_default();
    for e in &enabled_ext {
        assert!(
            extensions.contains(e),
            "service.extensions: {e} is not defined"
        );
    }
}

#[test]
fn collector_routes_each_signal_where_the_stack_expects_it() {
    let cfg = yaml(COLLECTOR_CONFIG);
    let grpc = cfg.s(&["receivers", "otlp", "protocols", "grpc", "endpoint"]);
    let http = cfg.s(&["receivers", "otlp", "protocols", "http", "endpoint"]);
    assert_eq!((grpc, http), ("0.0.0.0:4317", "0.0.0.0:4318"));

    // traces to Jaeger over OTLP, plaintext inside the compose network
    let exporters = cfg
        .at(&["service", "pipelines", "traces", "exporters"])
        .strs();
    let jaeger = exporters
        .iter()
        .find(|e| component_type(e) == "otlp_grpc")
        .expect("traces go to Jaeger over OTLP");
    let j = cfg.at(&["exporters", jaeger]);
    assert_eq!(j.s(&["endpoint"]), "jaeger:4317");
    assert_eq!(j.s(&["tls", "insecure"]), "true");

    // metrics for Prometheus, named and labelled as on tokentap's /metrics page
    let metrics = cfg
        .at(&["service", "pipelines", "metrics", "exporters"])
        .strs();
    assert!(metrics.contains(&"prometheus"), "{metrics:?}");
    let p = cfg.at(&["exporters", "prometheus"]);
    assert_eq!(p.s(&["endpoint"]), "0.0.0.0:8889");
    // with suffixes: gen_ai.client.operation.duration (unit s) → …_duration_seconds,
    // as on /metrics; the translator never doubles an existing _total or _seconds
    let strategy = p.get("translation_strategy").and_then(Yaml::str);
    assert!(
        matches!(strategy, None | Some("UnderscoreEscapingWithSuffixes")),
        "translation_strategy {strategy:?}: tokentap's names need underscores and suffixes"
    );
    assert_ne!(
        p.get("add_metric_suffixes").and_then(Yaml::str),
        Some("false"),
        "suffixes off would drop _seconds from the GenAI histograms"
    );
    assert_eq!(
        p.get("without_scope_info").and_then(Yaml::str),
        Some("true"),
        "/metrics has no otel_scope_* labels"
    );
    let rtc = p
        .get("resource_to_telemetry_conversion")
        .and_then(|r| r.get("enabled"))
        .and_then(Yaml::str);
    assert_ne!(
        rtc,
        Some("true"),
        "resource attributes as labels would add service_name, telemetry_sdk_* … to every series"
    );

    for signal in ["traces", "metrics", "logs"] {
        let es = cfg
            .at(&["service", "pipelines", signal, "exporters"])
            .strs();
        assert!(es.contains(&"debug"), "{signal}: debug exporter");
    }
    assert_eq!(cfg.s(&["exporters", "debug", "verbosity"]), "basic");
}

// ---------------------------------------------------------------------------
// (b) compose: pinned images, wiring, the lab's ports
// ---------------------------------------------------------------------------

const COMPOSE: &str = "compose/docker-compose.yml";

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    compose.at(&["services", name])
}

#[test]
fn compose_pins_the_collector_version_the_allow_list_was_checked_against() {
    let compose = yaml(COMPOSE);
    assert_eq!(
        service(&compose, "otel-collector").s(&["image"]),
        format!("otel/opentelemetry-collector-contrib:{COLLECTOR_CONTRIB_VERSION}")
    );
    assert!(
        read(COLLECTOR_CONFIG)
            .lines()
            .next()
            .is_some_and(|l| l.contains(COLLECTOR_CONTRIB_VERSION)),
        "{COLLECTOR_CONFIG} names the version in its first line"
    );
    // every image pinned to a version, none floating
    let expected = [
        ("otel-collector", "otel/opentelemetry-collector-contrib:"),
        ("jaeger", "jaegertracing/jaeger:2."),
        ("prometheus", "prom/prometheus:v"),
        ("grafana", "grafana/grafana:"),
        ("redis", "redis:"),
    ];
    for (name, prefix) in expected {
        let image = service(&compose, name).s(&["image"]);
        let tag = image
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{name}: image {image} is not {prefix}…"));
        assert!(
            tag.split(['.', '-'])
                .next()
                .is_some_and(|m| m.parse::<u32>().is_ok()),
            "{name}: {image} is not pinned to a version"
        );
        assert!(!image.ends_with(":latest"), "{name}: {image}");
    }
    let prom = service(&compose, "prometheus").s(&["image"]);
    assert!(
        prom.starts_with("prom/prometheus:v2.") || prom.starts_with("prom/prometheus:v3."),
        "{prom}"
    );
}

/// Host port → container port of a service's `ports`.
fn ports(svc: &Yaml) -> Vec<(u16, u16)> {
    svc.get("ports")
        .map(|p| p.strs())
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let (h, c) = p.split_once(':').unwrap_or((p, p));
            (
                h.parse().expect("host port"),
                c.parse().expect("container port"),
            )
        })
        .collect()
}

fn env<'a>(svc: &'a Yaml, key: &str) -> Option<&'a Yaml> {
    svc.get("environment").and_then(|e| e.get(key))
}

#[test]
fn compose_services_wiring_and_the_labs_ports() {
    let compose = yaml(COMPOSE);
    assert!(
        compose.get("version").is_none(),
        "no obsolete top-level version:"
    );
    let names = compose.at(&["services"]).keys();
    for n in [
        "tokentap",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(&n), "service {n}");
    }
    let published: Vec<(&str, (u16, u16))> = names
        .iter()
        .flat_map(|n| {
            ports(service(&compose, n))
                .into_iter()
                .map(move |p| (*n, p))
        })
        .collect();
    for want in [
        ("tokentap", (8080, 8080)),
        ("otel-collector", (4317, 4317)),
        ("otel-collector", (4318, 4318)),
        ("otel-collector", (8889, 8889)),
        ("jaeger", (16686, 16686)),
        ("prometheus", (9090, 9090)),
        ("grafana", (3000, 3000)),
    ] {
        assert!(published.contains(&want), "{want:?} in {published:?}");
    }
    let hosts: BTreeSet<u16> = published.iter().map(|(_, (h, _))| *h).collect();
    assert_eq!(hosts.len(), published.len(), "a host port published twice");

    // tokentap: built from this repository, demo by default, OTLP to the collector
    let t = service(&compose, "tokentap");
    assert_eq!(t.s(&["build", "context"]), "..");
    assert_eq!(t.s(&["build", "dockerfile"]), "Dockerfile");
    assert_eq!(t.at(&["command"]).strs(), ["--demo"]);
    let e = |k: &str| env(t, k).and_then(Yaml::str);
    assert_eq!(
        e("OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some("http://otel-collector:4317")
    );
    assert_eq!(e("OTEL_SERVICE_NAME"), Some("tokentap"));
    assert_eq!(e("OTEL_METRIC_EXPORT_INTERVAL"), Some("5000"));
    assert!(env(t, "ENVIRONMENT").is_some(), "ENVIRONMENT");
    assert_eq!(
        env(t, "OPENAI_API_KEY"),
        Some(&Yaml::Null),
        "the key is passed through, never written in the file"
    );
    assert!(
        t.at(&["healthcheck", "test"])
            .strs()
            .contains(&"--healthcheck"),
        "tokentap's healthcheck is `tokentap --healthcheck`"
    );
    // the agent keeps conversations in the stack's Redis, and waits for it
    let store = e("TOKENTAP_AGENT_STORE").expect("TOKENTAP_AGENT_STORE");
    let host = store
        .strip_prefix("redis://")
        .and_then(|r| r.split([':', '/']).next())
        .expect("a redis:// URL");
    assert!(names.contains(&host), "{store} names the {host} service");
    assert_eq!(
        t.s(&["depends_on", host, "condition"]),
        "service_healthy",
        "tokentap waits for Redis"
    );
    assert!(
        ports(service(&compose, host)).is_empty(),
        "Redis is not published"
    );

    // the collector's --config is the mounted file
    let c = service(&compose, "otel-collector");
    let config_arg = c.at(&["command"]).strs().concat();
    let target = config_arg.strip_prefix("--config=").expect("--config=");
    assert!(
        mounts(c)
            .iter()
            .any(|(src, dst)| src == "./otel-collector/config.yaml" && dst == target),
        "{target} is mounted from ./otel-collector/config.yaml"
    );

    // Prometheus: exemplars kept, its config and the rule file side by side
    let p = service(&compose, "prometheus");
    let args = p.at(&["command"]).strs();
    assert!(
        args.contains(&"--enable-feature=exemplar-storage"),
        "{args:?}"
    );
    let config = args
        .iter()
        .find_map(|a| a.strip_prefix("--config.file="))
        .expect("--config.file");
    let pm = mounts(p);
    assert!(
        pm.iter()
            .any(|(s, d)| s == "./prometheus/prometheus.yml" && d == config)
    );
    let rule_dir = Path::new(config).parent().expect("dir");
    assert!(
        pm.iter()
            .any(|(s, d)| s == "./prometheus/alerts.yml"
                && Path::new(d) == rule_dir.join("alerts.yml")),
        "alerts.yml mounted next to prometheus.yml (rule_files is relative): {pm:?}"
    );

    // Grafana: password from the environment, provisioning and dashboards mounted
    let g = service(&compose, "grafana");
    assert_eq!(
        env(g, "GF_SECURITY_ADMIN_PASSWORD").and_then(Yaml::str),
        Some("${GRAFANA_ADMIN_PASSWORD:-admin}")
    );
    let gm = mounts(g);
    assert!(
        gm.iter()
            .any(|(s, d)| s == "./grafana/provisioning" && d == "/etc/grafana/provisioning")
    );
    let dashboards_dir = &gm
        .iter()
        .find(|(s, _)| s == "./grafana/dashboards")
        .expect("dashboards mounted")
        .1;
    if let Some(home) = env(g, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH").and_then(Yaml::str) {
        let file = Path::new(home)
            .strip_prefix(dashboards_dir.as_str())
            .expect("the home dashboard is one of the mounted dashboards");
        assert!(
            repo()
                .join("compose/grafana/dashboards")
                .join(file)
                .is_file(),
            "home dashboard {home}"
        );
    }
    let provider = yaml("compose/grafana/provisioning/dashboards/dashboards.yml");
    assert_eq!(
        provider.at(&["providers"]).items()[0].s(&["options", "path"]),
        dashboards_dir.as_str(),
        "the dashboard provider reads the mounted directory"
    );

    // one network; depends_on names services, and waits for health only where there is a healthcheck
    for n in &names {
        let s = service(&compose, n);
        assert_eq!(
            s.at(&["networks"]).strs(),
            ["observability"],
            "{n}: network"
        );
        if let Some(deps) = s.get("depends_on") {
            for d in deps.keys() {
                assert!(names.contains(&d), "{n} depends on unknown {d}");
                if deps.s(&[d, "condition"]) == "service_healthy" {
                    assert!(
                        service(&compose, d).get("healthcheck").is_some(),
                        "{n} waits for {d} to be healthy, but {d} has no healthcheck"
                    );
                }
            }
        }
    }
    assert!(compose.at(&["networks"]).get("observability").is_some());
}

/// `./src:/dst[:ro]` bind mounts of a service (named volumes skipped).
fn mounts(svc: &Yaml) -> Vec<(String, String)> {
    svc.get("volumes")
        .map(|v| v.strs())
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v.starts_with("./") || v.starts_with("../"))
        .map(|v| {
            let mut parts = v.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().expect("target"));
            (src.to_string(), dst.to_string())
        })
        .collect()
}

#[test]
fn every_bind_mounted_file_exists() {
    let compose = yaml(COMPOSE);
    let mut missing = Vec::new();
    for n in compose.at(&["services"]).keys() {
        for (src, _) in mounts(service(&compose, n)) {
            let p = repo().join("compose").join(&src);
            if !p.exists() {
                // docker would create an empty directory there and the service would fail
                missing.push(format!("{n}: {src}"));
            }
        }
    }
    assert!(missing.is_empty(), "missing mount sources: {missing:?}");
}

// ---------------------------------------------------------------------------
// Prometheus and Grafana files agree with compose
// ---------------------------------------------------------------------------

#[test]
fn prometheus_scrapes_tokentap_directly_and_the_collector() {
    let prom = yaml("compose/prometheus/prometheus.yml");
    assert_eq!(prom.at(&["rule_files"]).strs(), ["alerts.yml"]);
    let jobs = prom.at(&["scrape_configs"]).items();
    let job = |name: &str| {
        jobs.iter()
            .find(|j| j.s(&["job_name"]) == name)
            .unwrap_or_else(|| panic!("job {name}"))
    };
    let targets = |j: &Yaml| -> Vec<String> {
        j.at(&["static_configs"])
            .items()
            .iter()
            .flat_map(|s| s.at(&["targets"]).strs())
            .map(String::from)
            .collect()
    };
    let t = job("tokentap");
    assert_eq!(targets(t), ["tokentap:8080"]);
    assert_eq!(t.s(&["scrape_interval"]), "5s");
    assert_eq!(targets(job("otel-collector")), ["otel-collector:8889"]);
    // the hosts are compose services, and the ports the ones they listen on
    let compose = yaml(COMPOSE);
    for (svc, port) in [("tokentap", 8080), ("otel-collector", 8889)] {
        assert!(
            ports(service(&compose, svc))
                .iter()
                .any(|(_, c)| *c == port),
            "{svc} listens on {port}"
        );
    }
    assert_eq!(
        yaml(COLLECTOR_CONFIG).s(&["exporters", "prometheus", "endpoint"]),
        "0.0.0.0:8889"
    );
}

#[test]
fn grafana_datasources_link_exemplars_to_jaeger() {
    let ds = yaml("compose/grafana/provisioning/datasources/datasources.yml");
    let list = ds.at(&["datasources"]).items();
    let by_uid = |uid: &str| {
        list.iter()
            .find(|d| d.s(&["uid"]) == uid)
            .unwrap_or_else(|| panic!("datasource uid {uid}"))
    };
    let p = by_uid("prometheus");
    assert_eq!(
        (p.s(&["type"]), p.s(&["url"])),
        ("prometheus", "http://prometheus:9090")
    );
    let dest = &p.at(&["jsonData", "exemplarTraceIdDestinations"]).items()[0];
    // tokentap labels its exemplars trace_id (see docs/metrics.md)
    assert_eq!(
        (dest.s(&["name"]), dest.s(&["datasourceUid"])),
        ("trace_id", "jaeger")
    );
    let j = by_uid("jaeger");
    assert_eq!(
        (j.s(&["type"]), j.s(&["url"])),
        ("jaeger", "http://jaeger:16686")
    );

    // every data source a provisioned dashboard names is provisioned
    let uids: BTreeSet<&str> = list.iter().map(|d| d.s(&["uid"])).collect();
    let dir = repo().join("compose/grafana/dashboards");
    let mut n = 0;
    for entry in fs::read_dir(&dir).expect("compose/grafana/dashboards") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        n += 1;
        let json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).expect("read"))
                .expect("dashboard JSON");
        let mut named = Vec::new();
        collect_datasource_uids(&json, &mut named);
        for uid in named {
            // `-- Grafana --` is Grafana's built-in annotation source
            assert!(
                uid.starts_with('$') || uid == "-- Grafana --" || uids.contains(uid.as_str()),
                "{}: data source uid {uid} is not provisioned",
                path.display()
            );
        }
    }
    assert!(n > 0, "no dashboard in {}", dir.display());
}

fn collect_datasource_uids(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(uid) = m
                .get("datasource")
                .and_then(|d| d.get("uid"))
                .and_then(|u| u.as_str())
            {
                out.push(uid.to_string());
            }
            m.values().for_each(|x| collect_datasource_uids(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_datasource_uids(x, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// (c) the Dockerfile
// ---------------------------------------------------------------------------

struct Instr {
    op: String,
    args: String,
}

struct Stage {
    image: String,
    name: Option<String>,
    instrs: Vec<Instr>,
}

/// Instructions with continuation lines joined and comments dropped, by stage.
fn dockerfile_stages() -> Vec<Stage> {
    let src = read("Dockerfile");
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in src.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part.trim());
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                logical.push(std::mem::take(&mut cur).trim().to_string());
            }
        }
    }
    assert!(
        cur.trim().is_empty(),
        "Dockerfile ends inside a continuation"
    );
    let mut stages: Vec<Stage> = Vec::new();
    for l in logical.into_iter().filter(|l| !l.is_empty()) {
        let (op, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let (op, args) = (op.to_ascii_uppercase(), args.trim().to_string());
        if op == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_, n] if as_.eq_ignore_ascii_case("as") => Some(n.to_string()),
                [_] => None,
                _ => panic!("FROM {args}"),
            };
            stages.push(Stage {
                image: words[0].to_string(),
                name,
                instrs: vec![],
            });
        } else {
            stages
                .last_mut()
                .expect("an instruction before FROM")
                .instrs
                .push(Instr { op, args });
        }
    }
    stages
}

/// The `&&`-separated commands of a RUN.
fn commands(run: &str) -> Vec<String> {
    run.split("&&")
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn json_array(args: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("not an exec-form JSON array: {args}: {e}"))
}

#[test]
fn dockerfile_builds_the_release_binary_and_runs_it_as_non_root() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "multi-stage");
    let (builder, runtime) = (&stages[0], stages.last().unwrap());

    // builder: official Rust image, at least the crate's rust-version
    let rust = builder
        .image
        .strip_prefix("rust:")
        .unwrap_or_else(|| panic!("builder image {}", builder.image));
    let version = |s: &str| -> (u32, u32) {
        let mut it = s.split(['.', '-']).map(|x| x.parse::<u32>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let msrv = manifest["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    assert!(
        version(rust) >= version(msrv),
        "rust:{rust} < rust-version {msrv}"
    );

    // every cargo invocation of the build is exactly the documented command
    let builds: Vec<String> = builder
        .instrs
        .iter()
        .filter(|i| i.op == "RUN")
        .flat_map(|i| commands(&i.args))
        .filter(|c| c.starts_with("cargo"))
        .collect();
    assert!(!builds.is_empty(), "the builder runs cargo");
    for b in &builds {
        assert_eq!(b, BUILD_COMMAND);
    }

    // runtime: Debian slim, the release binary from the builder, non-root, healthcheck, 8080
    assert_eq!(runtime.image, "debian:bookworm-slim");
    let builder_name = builder.name.as_deref().expect("the builder stage is named");
    let workdir = builder
        .instrs
        .iter()
        .find(|i| i.op == "WORKDIR")
        .map(|i| i.args.as_str())
        .expect("builder WORKDIR");
    let copy = runtime
        .instrs
        .iter()
        .find(|i| i.op == "COPY" && i.args.starts_with(&format!("--from={builder_name} ")))
        .expect("COPY --from=builder");
    let words: Vec<&str> = copy.args.split_whitespace().collect();
    assert_eq!(
        words[1],
        format!("{}/target/release/tokentap", workdir.trim_end_matches('/')),
        "the runtime copies the release build of the tokentap bin"
    );
    let installed = words[2];
    assert!(
        ["/usr/local/bin/tokentap", "/usr/bin/tokentap"].contains(&installed),
        "{installed} is on PATH, so `tokentap --healthcheck` works"
    );
    let last = |op: &str| {
        runtime
            .instrs
            .iter()
            .rev()
            .find(|i| i.op == op)
            .map(|i| i.args.as_str())
    };
    let user = last("USER").expect("USER");
    let uid = user.split(':').next().unwrap();
    assert!(!["root", "0"].contains(&uid), "runs as {user}");
    assert_eq!(uid, "10001");
    let health = last("HEALTHCHECK").expect("HEALTHCHECK");
    let cmd = health
        .split_once("CMD")
        .expect("HEALTHCHECK … CMD")
        .1
        .trim();
    assert_eq!(json_array(cmd), ["tokentap", "--healthcheck"]);
    assert!(
        runtime.instrs.iter().any(|i| i.op == "EXPOSE"
            && i.args
                .split_whitespace()
                .any(|p| p == "8080" || p == "8080/tcp")),
        "EXPOSE 8080"
    );
    assert!(
        runtime
            .instrs
            .iter()
            .any(|i| i.op == "ENV" && i.args.replace(' ', "=") == "TOKENTAP_LISTEN=0.0.0.0:8080"),
        "ENV TOKENTAP_LISTEN=0.0.0.0:8080"
    );
    assert_eq!(
        json_array(last("ENTRYPOINT").expect("ENTRYPOINT")),
        ["tokentap"]
    );
    let installs: Vec<String> = runtime
        .instrs
        .iter()
        .filter(|i| i.op == "RUN")
        .flat_map(|i| commands(&i.args))
        .filter(|c| c.starts_with("apt-get install"))
        .collect();
    for i in &installs {
        let pkgs: Vec<&str> = i
            .split_whitespace()
            .skip(2)
            .filter(|w| !w.starts_with('-'))
            .collect();
        assert_eq!(pkgs, ["ca-certificates"], "runtime packages: {i}");
    }
}

#[test]
fn the_docs_give_the_same_build_command() {
    for doc in ["compose/README.md", "docs/deploy.md"] {
        assert!(
            read(doc).contains(BUILD_COMMAND),
            "{doc} shows `{BUILD_COMMAND}`"
        );
    }
    assert!(read("Dockerfile").contains(BUILD_COMMAND));
}

#[test]
fn dockerignore_keeps_target_and_git_out_but_not_what_the_build_copies() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    for must in ["target", ".git"] {
        assert!(
            patterns.iter().any(|p| p == must),
            ".dockerignore excludes {must}"
        );
    }
    for (src, _) in builder_copies() {
        assert!(
            !patterns
                .iter()
                .any(|p| p == &src || src.starts_with(&format!("{p}/"))),
            ".dockerignore excludes {src}, which the Dockerfile copies"
        );
    }
}

// ---------------------------------------------------------------------------
// (d) the same build outside Docker
// ---------------------------------------------------------------------------

/// (source, destination) of the builder stage's COPY instructions from the context.
fn builder_copies() -> Vec<(String, String)> {
    let stages = dockerfile_stages();
    let mut out = Vec::new();
    for i in stages[0].instrs.iter().filter(|i| i.op == "COPY") {
        assert!(
            !i.args.starts_with("--from"),
            "the builder copies from the context only"
        );
        let words: Vec<&str> = i.args.split_whitespace().collect();
        let (dst, srcs) = words.split_last().expect("COPY src… dst");
        for s in srcs {
            out.push((s.to_string(), dst.to_string()));
        }
    }
    out
}

/// A fresh directory under the system's temp dir, removed when dropped (a failed
/// assertion included).
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn copy_tree(src: &Path, dst: &Path) {
    if src.is_dir() {
        fs::create_dir_all(dst).expect("mkdir");
        for e in fs::read_dir(src).expect("read_dir") {
            let e = e.expect("entry");
            copy_tree(&e.path(), &dst.join(e.file_name()));
        }
    } else {
        fs::copy(src, dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    }
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The host target triple (`rustc -vV`).
fn host_triple() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().expect("rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("host: line")
        .trim()
        .to_string()
}

/// Checks a directory the way the Dockerfile's `cargo build --locked` sees it,
/// without compiling: `cargo fetch --locked` parses the manifest strictly (a
/// declared target whose file is missing fails, as in a build), resolves against
/// Cargo.lock without changing it, and has every dependency of the host platform,
/// optional ones included (downloaded here if this machine's builds never needed
/// them: an offline fetch failed on a fresh machine for the optional allocator). Returns the bin targets of the
/// package (`cargo metadata --no-deps`), after checking it is this crate.
fn bins_of(dir: &Path) -> Vec<String> {
    let manifest = dir.join("Cargo.toml");
    let out = cargo()
        .args([
            "fetch",
            "--locked",
            "--target",
            &host_triple(),
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("cargo fetch runs");
    assert!(
        out.status.success(),
        "cargo fetch --locked on the Dockerfile's build context ({}): {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    assert_eq!(packages.len(), 1, "one package");
    assert_eq!(packages[0]["name"], "tokentap");
    packages[0]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|x| x == "bin"))
        })
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_dockerfile_builds_the_tokentap_bin_of_this_package_from_its_context() {
    // the binary the tests run is this package's `tokentap` bin …
    let tested = Path::new(env!("CARGO_BIN_EXE_tokentap"));
    assert!(tested.is_file(), "{}", tested.display());
    assert_eq!(
        tested.file_stem().and_then(|s| s.to_str()),
        Some("tokentap")
    );
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    assert_eq!(manifest["package"]["name"].as_str(), Some("tokentap"));
    let bin_arg = BUILD_COMMAND
        .split_whitespace()
        .skip_while(|w| *w != "--bin")
        .nth(1);
    assert_eq!(
        bin_arg,
        Some(env!("CARGO_PKG_NAME")),
        "--bin names this package's binary"
    );

    // … and replaying the builder stage (its COPYs and the file stubs its RUNs
    // write) gives, before each `cargo build`, a context where cargo resolves
    // this package with --locked and finds that bin.
    let stages = dockerfile_stages();
    let guard = TempDir::new("tokentap-deploy-test");
    let tmp = guard.0.clone();
    let mut checked = 0;
    for i in &stages[0].instrs {
        match i.op.as_str() {
            "COPY" => {
                let words: Vec<&str> = i.args.split_whitespace().collect();
                let (dst, srcs) = words.split_last().expect("COPY src… dst");
                for s in srcs {
                    let from = repo().join(s);
                    let to = if from.is_dir() || (srcs.len() == 1 && !dst.ends_with('/')) {
                        tmp.join(dst)
                    } else {
                        tmp.join(dst).join(Path::new(s).file_name().unwrap())
                    };
                    copy_tree(&from, &to);
                }
            }
            "RUN" => {
                for c in commands(&i.args) {
                    let words: Vec<&str> = c.split_whitespace().collect();
                    match words.as_slice() {
                        ["cargo", ..] => {
                            assert_eq!(c, BUILD_COMMAND);
                            let bins = bins_of(&tmp);
                            assert!(bins.iter().any(|b| b == "tokentap"), "bins {bins:?}");
                            checked += 1;
                        }
                        ["mkdir", "-p", dirs @ ..] => dirs
                            .iter()
                            .for_each(|d| fs::create_dir_all(tmp.join(d)).unwrap()),
                        ["touch", files @ ..] => files.iter().for_each(|f| {
                            let p = tmp.join(f);
                            if !p.exists() {
                                fs::write(p, "").unwrap();
                            }
                        }),
                        ["rm", "-rf", paths @ ..] => paths.iter().for_each(|p| {
                            let _ = fs::remove_dir_all(tmp.join(p));
                        }),
                        [_, .., ">", file] => fs::write(tmp.join(file), "fn main() {}\n").unwrap(),
                        _ => panic!("teach this test the builder's command `{c}`"),
                    }
                }
            }
            _ => {}
        }
    }
    assert!(checked >= 1, "no cargo build replayed");
}
