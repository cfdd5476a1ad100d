//! Result rows, the three tables, the targets of SPEC §14, and the JSON file.

use serde::Serialize;

use crate::stats::{Summary, Timeline};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Direct,
    Nginx,
    /// The hyper floor (`floor.rs`).
    Floor,
    Tokentap,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::Direct,
        Target::Nginx,
        Target::Floor,
        Target::Tokentap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Nginx => "nginx",
            Target::Floor => "floor",
            Target::Tokentap => "tokentap",
        }
    }
}

/// CPU over the measured window (100 % = one core) and the proxy's peak RSS.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Resources {
    pub proxy_cpu_pct: Option<f64>,
    pub mock_cpu_pct: f64,
    /// The harness on core 0 (pacer included), without the OTLP receiver thread.
    pub generator_cpu_pct: f64,
    pub otlp_receiver_cpu_pct: f64,
    /// `VmHWM` summed over the proxy's processes (nginx: master + worker).
    pub proxy_peak_rss_mib: Option<f64>,
    /// Per CPU, whoever used it (ours, other users', softirq): `/proc/stat`.
    pub core_busy_pct: Vec<f64>,
    /// Per CPU, time the hypervisor gave to another guest.
    pub core_steal_pct: Vec<f64>,
}

impl Resources {
    /// The columns every table ends with, and [`Resources::cells`] fills.
    const HEADERS: [&'static str; 5] = [
        "proxy CPU",
        "mock CPU",
        "gen CPU",
        "core0/1 busy %",
        "steal",
    ];

    fn cells(&self) -> [String; 5] {
        [
            opt_pct(self.proxy_cpu_pct),
            pct(self.mock_cpu_pct),
            pct(self.generator_cpu_pct),
            self.cores(),
            self.steal(),
        ]
    }

    /// The highest per-CPU steal, the noise this VM cannot see otherwise.
    fn steal(&self) -> String {
        let max = self.core_steal_pct.iter().copied().fold(0.0, f64::max);
        format!("{max:.0}%")
    }

    /// `core0/core1` busy, including softirq and other users' processes.
    fn cores(&self) -> String {
        self.core_busy_pct
            .iter()
            .take(2)
            .map(|b| format!("{b:.0}"))
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// What the proxy itself said during the run.
#[derive(Debug, Default, Serialize)]
pub struct Health {
    pub log_lines: usize,
    pub log_issues: usize,
    pub log_samples: Vec<String>,
    /// tokentap only: requests the harness sent it in this run (warm-up included).
    pub calls_sent: Option<u64>,
    pub llm_requests_total: Option<f64>,
    pub telemetry_dropped_total: Option<f64>,
    pub spans_received: Option<usize>,
    pub log_records_received: Option<usize>,
    pub metric_names_received: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct ClosedRow {
    pub target: Target,
    pub connections: usize,
    pub seconds: f64,
    pub throughput_rps: f64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency: Summary,
    pub resources: Resources,
    pub health: Health,
}

#[derive(Debug, Serialize)]
pub struct OpenRow {
    pub target: Target,
    pub rate_rps: u32,
    pub connections: usize,
    pub seconds: f64,
    pub scheduled: u64,
    pub ok: u64,
    pub errors: u64,
    pub late_sends: u64,
    pub max_send_lag_us: u32,
    pub unfinished: u64,
    pub achieved_rps: f64,
    pub first_error: Option<String>,
    /// From the intended send time (coordinated omission corrected).
    pub latency: Summary,
    pub resources: Resources,
    pub health: Health,
}

#[derive(Debug, Serialize)]
pub struct StreamRow {
    pub target: Target,
    pub streams: usize,
    pub rounds: usize,
    pub started: usize,
    pub completed: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub ttfb: Summary,
    pub ttfb_timeline: Timeline,
    /// TTFB of each round on its own: which round of a level fell behind.
    pub ttfb_by_round: Vec<Summary>,
    pub chunk_gap: Summary,
    /// The proxy's `VmHWM` after each round: growth from round to round is retained memory.
    pub peak_rss_after_round_mib: Vec<f64>,
    pub resources: Resources,
    pub health: Health,
}

/// Scenario (iv): the proxy's resident set before and after opening the idle connections.
#[derive(Debug, Serialize)]
pub struct IdleRow {
    pub target: Target,
    /// All still open when measured: a proxy that closed some would look cheaper, so that
    /// is an error, not a row.
    pub connections: usize,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub per_connection_kib: f64,
    pub health: Health,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub scenario: &'static str,
    pub target: &'static str,
    pub value: Option<f64>,
    pub limit: f64,
    pub unit: &'static str,
    /// `None`: could not be judged (a row is missing).
    pub met: Option<bool>,
    pub note: String,
}

impl Verdict {
    fn line(&self) -> String {
        let status = match self.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "n/a",
        };
        format!(
            "  target {} {}: {status} — {}",
            self.scenario, self.target, self.note
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

/// `left`: how many leading columns are left-aligned (labels); the rest are numbers.
fn print_table(title: &str, headers: &[&str], left: usize, rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                let pad = w - c.chars().count();
                if i < left {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!();
    println!("{title}");
    let head: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let line = render(&head);
    println!("{line}");
    println!("{}", "-".repeat(line.chars().count()));
    for row in rows {
        println!("{}", render(row));
    }
}

fn us(v: u32) -> String {
    v.to_string()
}

fn ms(v_us: u32) -> String {
    format!("{:.2}", f64::from(v_us) / 1000.0)
}

fn pct(v: f64) -> String {
    format!("{v:.0}%")
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), pct)
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    }
}

fn delta_us(a: u32, b: Option<u32>) -> String {
    b.map_or_else(
        || "-".to_owned(),
        |b| format!("{:+}", i64::from(a) - i64::from(b)),
    )
}

fn lat(s: &Summary, f: impl Fn(&Summary) -> u32, fmt: fn(u32) -> String) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        fmt(f(s))
    }
}

fn health_lines(target: Target, h: &Health) -> Vec<String> {
    let mut out = Vec::new();
    if target == Target::Tokentap {
        let f = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |v| format!("{v:.0}"));
        let u = |v: Option<usize>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        out.push(format!(
            "  tokentap telemetry: {} calls sent, llm_requests_total {}, OTLP receiver got {} spans / {} log records / {} metric names, tokentap_telemetry_dropped_total {}",
            h.calls_sent.map_or_else(|| "?".to_owned(), |v| v.to_string()),
            f(h.llm_requests_total),
            u(h.spans_received),
            u(h.log_records_received),
            u(h.metric_names_received),
            f(h.telemetry_dropped_total),
        ));
    }
    if target != Target::Direct && (h.log_issues > 0 || target == Target::Tokentap) {
        out.push(format!(
            "  {} log: {} lines, {} warning/error lines{}",
            target.name(),
            h.log_lines,
            h.log_issues,
            h.log_samples
                .first()
                .map_or_else(String::new, |s| format!(", e.g. {s}"))
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Scenario (i)
// ---------------------------------------------------------------------------------------------

pub fn closed_table(rows: &[ClosedRow], title: &str) -> Vec<Verdict> {
    let rps = |t: Target| {
        rows.iter()
            .find(|r| r.target == t)
            .map(|r| r.throughput_rps)
    };
    let p99 = |t: Target| {
        rows.iter()
            .find(|r| r.target == t && !r.latency.is_empty())
            .map(|r| r.latency.p99_us)
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.target.name().to_owned(),
                format!("{:.0}", r.throughput_rps),
                ratio(r.throughput_rps, rps(Target::Direct)),
                ratio(r.throughput_rps, rps(Target::Nginx)),
                lat(&r.latency, |s| s.p50_us, us),
                lat(&r.latency, |s| s.p90_us, us),
                lat(&r.latency, |s| s.p99_us, us),
                delta_us(r.latency.p99_us, p99(Target::Direct)),
                r.errors.to_string(),
                cpu_per_call_us(r).map_or_else(|| "-".to_owned(), |c| format!("{c:.1}")),
            ]
            .into_iter()
            .chain(r.resources.cells())
            .collect()
        })
        .collect();
    print_table(
        title,
        &[
            "target",
            "req/s",
            "vs direct",
            "vs nginx",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99 +µs vs direct",
            "errors",
            "CPU µs/call",
        ]
        .into_iter()
        .chain(Resources::HEADERS)
        .collect::<Vec<_>>(),
        1,
        &table,
    );
    for r in rows {
        for l in health_lines(r.target, &r.health) {
            println!("{l}");
        }
        if let Some(e) = &r.first_error {
            println!("  {} first error: {e}", r.target.name());
        }
    }
    let cpu = |t: Target| {
        rows.iter()
            .find(|r| r.target == t)
            .and_then(cpu_per_call_us)
    };
    let throughput = match (rps(Target::Tokentap), rps(Target::Nginx)) {
        (Some(t), Some(n)) if n > 0.0 => Some((t / n, t, n)),
        _ => None,
    };
    let per_call = match (cpu(Target::Tokentap), cpu(Target::Floor)) {
        (Some(t), Some(f)) if f > 0.0 => Some((t / f, t, f)),
        _ => None,
    };
    let verdicts = vec![
        at_most(
            "(i)",
            "throughput nginx/tokentap <= 1.25 (tokentap >= 0.8x nginx)",
            throughput.map(|(r, _, _)| 1.0 / r),
            1.25,
            "ratio",
            |_| {
                let (r, t, n) = throughput.unwrap_or_default();
                format!("tokentap {r:.2}x nginx ({t:.0} vs {n:.0} req/s)")
            },
            "the nginx and tokentap rows",
        ),
        at_most(
            "(i)",
            "CPU per call tokentap/floor <= 1.50",
            per_call.map(|(r, _, _)| r),
            1.5,
            "ratio",
            |r| {
                let (_, t, f) = per_call.unwrap_or_default();
                format!("{r:.2}x the hyper floor ({t:.1} vs {f:.1} µs per call)")
            },
            "the floor and tokentap rows",
        ),
    ];
    for v in &verdicts {
        println!("{}", v.line());
    }
    verdicts
}

// ---------------------------------------------------------------------------------------------
// Scenario (ii)
// ---------------------------------------------------------------------------------------------

pub fn open_table(rows: &[OpenRow], title: &str) -> Vec<Verdict> {
    let p99 = |t: Target| {
        rows.iter()
            .find(|r| r.target == t && !r.latency.is_empty())
            .map(|r| r.latency.p99_us)
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.target.name().to_owned(),
                format!("{:.0}", r.achieved_rps),
                lat(&r.latency, |s| s.p50_us, us),
                lat(&r.latency, |s| s.p90_us, us),
                lat(&r.latency, |s| s.p99_us, us),
                lat(&r.latency, |s| s.max_us, us),
                delta_us(r.latency.p99_us, p99(Target::Direct)),
                delta_us(r.latency.p99_us, p99(Target::Nginx)),
                r.late_sends.to_string(),
                r.errors.to_string(),
                r.unfinished.to_string(),
            ]
            .into_iter()
            .chain(r.resources.cells())
            .collect()
        })
        .collect();
    print_table(
        title,
        &[
            "target",
            "req/s",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "max µs",
            "p99 +µs vs direct",
            "p99 +µs vs nginx",
            "late sends",
            "errors",
            "unfinished",
        ]
        .into_iter()
        .chain(Resources::HEADERS)
        .collect::<Vec<_>>(),
        1,
        &table,
    );
    println!(
        "  (gen CPU high by design: the pacer spins the last 350 µs before each slot; late sends = sent over one slot late)"
    );
    for r in rows {
        for l in health_lines(r.target, &r.health) {
            println!("{l}");
        }
        if let Some(e) = &r.first_error {
            println!("  {} first error: {e}", r.target.name());
        }
    }
    let tok = rows.iter().find(|r| r.target == Target::Tokentap);
    let added = match (tok, p99(Target::Direct)) {
        (Some(t), Some(d)) if !t.latency.is_empty() => Some((
            f64::from(t.latency.p99_us) - f64::from(d),
            t.errors + t.unfinished,
        )),
        _ => None,
    };
    let mut verdict = at_most(
        "(ii)",
        "p99 tokentap - direct <= 0.2 ms",
        added.map(|(a, _)| a),
        200.0,
        "µs",
        |a| format!("{a:+.0} µs over direct (limit +200 µs)"),
        "the direct and tokentap rows",
    );
    if let Some((_, failures)) = added.filter(|(_, f)| *f > 0) {
        verdict.met = Some(false);
        verdict
            .note
            .push_str(&format!(", and {failures} requests failed or unfinished"));
    } else if let Some((a, _)) = added.filter(|(a, _)| *a < 0.0) {
        // one hop more cannot be faster at the p99: direct's own tail was the machine's,
        // and a verdict against it would be met by noise
        verdict.met = None;
        verdict.note = format!(
            "not judged: direct's own p99 ({} µs) was above tokentap's ({a:+.0} µs), so this run's tail is the machine's; run again",
            p99(Target::Direct).unwrap_or_default()
        );
    }
    println!("{}", verdict.line());
    vec![verdict]
}

// ---------------------------------------------------------------------------------------------
// Scenario (iii)
// ---------------------------------------------------------------------------------------------

pub fn streams_table(rows: &[StreamRow], title: &str, judged_level: usize) -> Vec<Verdict> {
    let gap99 = |t: Target, level: usize| {
        rows.iter()
            .find(|r| r.target == t && r.streams == level && !r.chunk_gap.is_empty())
            .map(|r| f64::from(r.chunk_gap.p99_us))
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.streams.to_string(),
                r.target.name().to_owned(),
                format!("{}/{}", r.completed, r.started),
                lat(&r.ttfb, |s| s.p50_us, ms),
                lat(&r.ttfb, |s| s.p99_us, ms),
                lat(&r.chunk_gap, |s| s.p50_us, ms),
                lat(&r.chunk_gap, |s| s.p99_us, ms),
                ratio(
                    f64::from(r.chunk_gap.p99_us),
                    gap99(Target::Direct, r.streams),
                ),
                ratio(
                    f64::from(r.chunk_gap.p99_us),
                    gap99(Target::Nginx, r.streams),
                ),
                r.resources
                    .proxy_peak_rss_mib
                    .map_or_else(|| "-".to_owned(), |m| format!("{m:.1}")),
            ]
            .into_iter()
            .chain(r.resources.cells())
            .collect()
        })
        .collect();
    print_table(
        title,
        &[
            "streams",
            "target",
            "completed",
            "TTFB p50 ms",
            "TTFB p99 ms",
            "gap p50 ms",
            "gap p99 ms",
            "gap p99 vs direct",
            "gap p99 vs nginx",
            "peak RSS MiB",
        ]
        .into_iter()
        .chain(Resources::HEADERS)
        .collect::<Vec<_>>(),
        2,
        &table,
    );
    for r in rows {
        if r.ttfb_by_round.len() > 1 {
            let ms: Vec<String> = r
                .ttfb_by_round
                .iter()
                .map(|t| format!("{:.1}", f64::from(t.p99_us) / 1000.0))
                .collect();
            println!(
                "  [{} streams] {} TTFB p99 by round: {} ms",
                r.streams,
                r.target.name(),
                ms.join(" / ")
            );
        }
        for l in health_lines(r.target, &r.health) {
            println!("  [{} streams]{l}", r.streams);
        }
        if let Some(e) = &r.first_error {
            println!(
                "  [{} streams] {} first error: {e}",
                r.streams,
                r.target.name()
            );
        }
    }
    let tok = rows
        .iter()
        .find(|r| r.target == Target::Tokentap && r.streams == judged_level);
    let ttfb99 = |t: Target| {
        rows.iter()
            .find(|r| r.target == t && r.streams == judged_level && !r.ttfb.is_empty())
            .map(|r| f64::from(r.ttfb.p99_us))
    };
    let vs_nginx = |f: &dyn Fn(Target) -> Option<f64>| match (f(Target::Tokentap), f(Target::Nginx))
    {
        (Some(t), Some(n)) if n > 0.0 => Some((t / n, t, n)),
        _ => None,
    };
    let ttfb = vs_nginx(&ttfb99);
    let gap = vs_nginx(&|t| gap99(t, judged_level));
    let rows_needed = format!("the nginx and tokentap rows at {judged_level} streams");
    let ms_note = |v: Option<(f64, f64, f64)>| {
        move |r: f64| {
            let (_, t, n) = v.unwrap_or_default();
            format!("{r:.2}x nginx ({:.1} vs {:.1} ms)", t / 1000.0, n / 1000.0)
        }
    };
    let verdicts = vec![
        at_most(
            "(iii)",
            "streams not completed == 0",
            tok.map(|t| {
                (t.started - t.completed.min(t.started)) as f64
                    + if t.started == 0 { 1.0 } else { 0.0 }
            }),
            0.0,
            "streams",
            |_| {
                let t = tok.map_or((0, 0), |t| (t.completed, t.started));
                format!(
                    "{}/{} streams of {judged_level} concurrent completed",
                    t.0, t.1
                )
            },
            &format!("the tokentap row at {judged_level} streams"),
        ),
        at_most(
            "(iii)",
            "TTFB p99 tokentap/nginx <= 1.50",
            ttfb.map(|v| v.0),
            1.5,
            "ratio",
            ms_note(ttfb),
            &rows_needed,
        ),
        at_most(
            "(iii)",
            "chunk-gap p99 tokentap/nginx <= 1.50",
            gap.map(|v| v.0),
            1.5,
            "ratio",
            ms_note(gap),
            &rows_needed,
        ),
        at_most(
            "(iii)",
            "peak RSS <= 40 MiB",
            tok.and_then(|t| t.resources.proxy_peak_rss_mib),
            40.0,
            "MiB",
            |m| format!("{m:.1} MiB at {judged_level} streams"),
            &format!("the tokentap row at {judged_level} streams"),
        ),
    ];
    for v in &verdicts {
        println!("{}", v.line());
    }
    verdicts
}

// ---------------------------------------------------------------------------------------------
// Scenario (iv)
// ---------------------------------------------------------------------------------------------

/// No SPEC §14 target: the table only.
pub fn idle_table(rows: &[IdleRow], title: &str) {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.target.name().to_owned(),
                r.connections.to_string(),
                format!("{:.1}", r.rss_before_mib),
                format!("{:.1}", r.rss_after_mib),
                format!("{:.1}", r.per_connection_kib),
            ]
        })
        .collect();
    print_table(
        title,
        &[
            "target",
            "connections",
            "RSS before MiB",
            "RSS after MiB",
            "KiB per connection",
        ],
        1,
        &table,
    );
    for r in rows {
        for l in health_lines(r.target, &r.health) {
            println!("  [idle]{l}");
        }
    }
}

/// A verdict on `value` against an upper `limit` (`None`: a row it needs is missing).
fn at_most(
    scenario: &'static str,
    target: &'static str,
    value: Option<f64>,
    limit: f64,
    unit: &'static str,
    note: impl FnOnce(f64) -> String,
    missing: &str,
) -> Verdict {
    match value {
        Some(v) => Verdict {
            scenario,
            target,
            value: Some(v),
            limit,
            unit,
            met: Some(v <= limit),
            note: note(v),
        },
        None => Verdict {
            scenario,
            target,
            value: None,
            limit,
            unit,
            met: None,
            note: format!("needs {missing}"),
        },
    }
}

/// CPU time of the proxy per call (µs): its share of a core over the window, per request.
pub fn cpu_per_call_us(r: &ClosedRow) -> Option<f64> {
    let cpu = r.resources.proxy_cpu_pct?;
    (r.throughput_rps > 0.0).then(|| cpu / 100.0 / r.throughput_rps * 1e6)
}
