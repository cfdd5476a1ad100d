// tokentap live view: the recent calls from /api/calls, new ones from the
// /api/calls/stream feed, charts drawn as plain SVG. No library, no other host.
"use strict";
(() => {
  const cfg = document.body.dataset;
  // the page keeps at most 5,000 calls (a browser tab, not a database); the API serves the whole ring
  const RECENT = Math.min(Number(cfg.recent) || 1000, 5000);
  const TRACE_URL = cfg.traceUrl || "";
  const $ = (id) => document.getElementById(id);
  const SVGNS = "http://www.w3.org/2000/svg";
  let calls = []; // newest first
  const seen = new Set(); // span ids, so a call fetched and streamed shows once
  let dirty = false;

  const keyOf = (c) => c.span_id || `${c.time}|${c.model}|${c.duration_seconds}`;
  function add(c, fresh) {
    const k = keyOf(c);
    if (seen.has(k)) return;
    seen.add(k);
    c._t = Date.parse(c.time);
    c._fresh = fresh;
    calls.unshift(c);
    if (calls.length > RECENT) seen.delete(keyOf(calls.pop()));
    dirty = true;
  }

  // ---- filters and window
  const filters = [...document.querySelectorAll("select[data-field]")];
  const options = Object.fromEntries(filters.map((s) => [s.dataset.field, new Set()]));
  function learn(c) {
    for (const s of filters) {
      const v = c[s.dataset.field];
      if (v == null || s.dataset.field === "status" || options[s.dataset.field].has(v)) continue;
      options[s.dataset.field].add(v);
      const o = document.createElement("option");
      o.textContent = v;
      s.append(o);
    }
  }
  const wanted = (c) => filters.every((s) => !s.value || String(c[s.dataset.field]) === s.value);
  function windowStart() {
    const w = $("window").value;
    return w === "all" ? -Infinity : Date.now() - Number(w) * 1000;
  }
  for (const s of [...filters, $("window")]) s.addEventListener("change", () => { dirty = true; });

  // ---- formatting
  const n = (v) => (v == null ? "–" : v.toLocaleString("en-US"));
  const usd = (v) => (v == null ? "–" : "$" + (v < 0.01 && v > 0 ? v.toPrecision(2) : v.toFixed(4)));
  const secs = (v) => (v == null ? "–" : v < 1 ? (v * 1000).toFixed(0) + " ms" : v.toFixed(2) + " s");
  const clock = (t) => new Date(t).toLocaleTimeString("en-GB", { hour12: false }) + "." + String(t % 1000).padStart(3, "0");
  function td(tr, text, cls) {
    const d = tr.insertCell();
    d.textContent = text;
    if (cls) d.className = cls;
    return d;
  }
  function traceCell(tr, id) {
    const d = tr.insertCell();
    if (!id) { d.textContent = "–"; return; }
    if (TRACE_URL) {
      const a = document.createElement("a");
      a.href = TRACE_URL.replaceAll("{trace_id}", id);
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      a.textContent = id.slice(0, 16) + "…";
      a.className = "trace";
      a.addEventListener("click", (e) => e.stopPropagation());
      d.append(a);
    } else {
      d.textContent = id.slice(0, 16) + "…";
      d.title = id;
    }
  }

  // ---- the table
  const MAX_ROWS = 300;
  function renderTable(shown) {
    const body = $("calls").tBodies[0];
    const rows = document.createDocumentFragment();
    for (const c of shown.slice(0, MAX_ROWS)) {
      const tr = document.createElement("tr");
      tr.dataset.traceId = c.trace_id || "";
      if (c._fresh) { tr.className = "fresh"; c._fresh = false; }
      td(tr, clock(c._t));
      td(tr, c.operation);
      td(tr, c.model ?? "–");
      td(tr, c.provider);
      td(tr, c.status + (c.error_type ? ` (${c.error_type})` : ""), c.status);
      td(tr, n(c.input_tokens), "num");
      td(tr, n(c.output_tokens), "num");
      td(tr, usd(c.cost_usd), "num");
      td(tr, secs(c.duration_seconds), "num");
      td(tr, secs(c.time_to_first_chunk_seconds), "num");
      td(tr, c.project ?? "–");
      td(tr, c.key_id ?? "–");
      traceCell(tr, c.trace_id);
      tr.addEventListener("click", () => details(c));
      rows.append(tr);
    }
    body.replaceChildren(rows);
    $("empty").hidden = shown.length > 0;
  }

  // ---- details
  function details(c) {
    const fields = $("d-fields");
    fields.replaceChildren();
    for (const [k, v] of Object.entries(c)) {
      if (k.startsWith("_") || k === "attributes") continue;
      const tr = fields.insertRow();
      td(tr, k);
      td(tr, v == null ? "null" : String(v));
    }
    const attrs = $("d-attrs");
    attrs.replaceChildren();
    for (const [k, v] of Object.entries(c.attributes || {})) {
      const tr = attrs.insertRow();
      td(tr, k);
      td(tr, typeof v === "string" ? v : JSON.stringify(v));
    }
    const p = $("d-trace");
    p.replaceChildren();
    if (c.trace_id && TRACE_URL) {
      const a = document.createElement("a");
      a.href = TRACE_URL.replaceAll("{trace_id}", c.trace_id);
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      a.textContent = "open trace " + c.trace_id;
      a.id = "d-trace-link";
      p.append(a);
    } else if (c.trace_id) {
      p.textContent = "trace " + c.trace_id;
    }
    $("d-capture").textContent = cfg.capture === "on"
      ? "Content capture is on: prompts and completions are among the attributes."
      : "Content capture is off: prompt and completion text is not recorded.";
    $("details").hidden = false;
  }
  $("close").addEventListener("click", () => { $("details").hidden = true; });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("details").hidden = true; });

  // ---- charts
  function quantile(v, p) {
    if (!v.length) return null;
    const s = [...v].sort((a, b) => a - b);
    return s[Math.max(0, Math.ceil(p * s.length) - 1)];
  }
  function el(name, attrs, parent) {
    const e = document.createElementNS(SVGNS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (parent) parent.append(e);
    return e;
  }
  const W = 400, H = 140, L = 44, B = 16, T = 6;
  function lines(svg, series, t0, t1, fmt) {
    svg.replaceChildren();
    const max = Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1] ?? 0))) || 1;
    const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - 4);
    const y = (v) => H - B - (v / max) * (H - B - T);
    el("line", { x1: L, y1: H - B, x2: W - 4, y2: H - B, class: "axis" }, svg);
    el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }, svg);
    el("text", { x: 2, y: T + 8 }, svg).textContent = fmt(max);
    el("text", { x: 2, y: H - B }, svg).textContent = "0";
    el("text", { x: L, y: H - 3 }, svg).textContent = clock(t0).slice(0, 8);
    el("text", { x: W - 50, y: H - 3 }, svg).textContent = clock(t1).slice(0, 8);
    for (const s of series) {
      let d = "", pen = "M";
      for (const [t, v] of s.points) {
        if (v == null) continue; // empty buckets are skipped, the line joins its neighbours
        d += `${pen}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        pen = "L";
      }
      el("path", { d, class: `line ${s.cls}`, "data-points": s.points.filter((p) => p[1] != null).length }, svg);
    }
  }
  function bars(svg, rows) {
    svg.replaceChildren();
    const top = rows.slice(0, 6);
    const max = Math.max(0, ...top.map((r) => r[1])) || 1;
    const h = (H - 4) / Math.max(top.length, 1);
    top.forEach(([label, v], i) => {
      const yy = 2 + i * h;
      el("rect", { x: 130, y: yy + 2, width: Math.max(1, (v / max) * (W - 210)), height: h - 6, class: "bar", "data-model": label }, svg);
      el("text", { x: 2, y: yy + h / 2 + 3 }, svg).textContent = label.length > 20 ? label.slice(0, 19) + "…" : label;
      el("text", { x: 134 + (v / max) * (W - 210), y: yy + h / 2 + 3 }, svg).textContent = usd(v);
    });
    if (!top.length) el("text", { x: W / 2 - 30, y: H / 2 }, svg).textContent = "no cost yet";
  }
  function renderCharts(shown) {
    const now = Date.now();
    const start = windowStart();
    const first = shown.length ? shown[shown.length - 1]._t : now - 60000;
    const t0 = Number.isFinite(start) ? start : Math.min(first, now - 60000);
    const span = now - t0;
    const step = Math.max(1000, Math.ceil(span / 60 / 1000) * 1000); // about 60 buckets
    const buckets = Math.ceil(span / step);
    const b = Array.from({ length: buckets }, (_, i) => ({ t: t0 + (i + 0.5) * step, n: 0, err: 0, tin: 0, tout: 0, dur: [], ttfc: [] }));
    for (const c of shown) {
      const i = Math.floor((c._t - t0) / step);
      if (i < 0 || i >= buckets) continue;
      const k = b[i];
      k.n += 1;
      if (c.status === "error") k.err += 1;
      k.tin += c.input_tokens || 0;
      k.tout += c.output_tokens || 0;
      k.dur.push(c.duration_seconds);
      if (c.time_to_first_chunk_seconds != null) k.ttfc.push(c.time_to_first_chunk_seconds);
    }
    const per = step / 1000;
    const rate = (v) => v.toFixed(v < 10 ? 2 : 0);
    lines($("chart-requests"), [
      { cls: "s0", points: b.map((k) => [k.t, k.n / per]) },
      { cls: "s1", points: b.map((k) => [k.t, k.err / per]) },
    ], t0, now, rate);
    lines($("chart-tokens"), [
      { cls: "s0", points: b.map((k) => [k.t, k.tin / per]) },
      { cls: "s2", points: b.map((k) => [k.t, k.tout / per]) },
    ], t0, now, rate);
    lines($("chart-latency"), [
      { cls: "s0", points: b.map((k) => [k.t, quantile(k.dur, 0.5)]) },
      { cls: "s1", points: b.map((k) => [k.t, quantile(k.dur, 0.95)]) },
      { cls: "s3", points: b.map((k) => [k.t, quantile(k.ttfc, 0.5)]) },
    ], t0, now, (v) => v.toFixed(2));
    const cost = new Map();
    for (const c of shown) if (c.cost_usd != null) cost.set(c.model ?? "?", (cost.get(c.model ?? "?") || 0) + c.cost_usd);
    bars($("chart-cost"), [...cost].sort((a, b2) => b2[1] - a[1]));
  }

  function renderTotals(shown) {
    const sum = (f) => shown.reduce((a, c) => a + (c[f] || 0), 0);
    $("t-calls").textContent = n(shown.length);
    $("t-errors").textContent = n(shown.filter((c) => c.status === "error").length);
    $("t-in").textContent = n(sum("input_tokens"));
    $("t-out").textContent = n(sum("output_tokens"));
    $("t-cost").textContent = usd(sum("cost_usd"));
    $("t-p95").textContent = secs(quantile(shown.map((c) => c.duration_seconds), 0.95));
  }

  function render() {
    if (!dirty) return;
    dirty = false;
    const from = windowStart();
    const shown = calls.filter((c) => c._t >= from && wanted(c));
    renderTotals(shown);
    renderTable(shown);
    renderCharts(shown);
  }

  // since start, exact even after the ring forgot old calls
  async function sinceStart() {
    try {
      const r = await fetch("/api/summary?window=all", { cache: "no-store" });
      if (!r.ok) return;
      const s = await r.json();
      $("since-start").textContent = `Since start (${new Date(s.started).toLocaleString("en-GB")}): ` +
        `${n(s.calls)} requests, ${n(s.errors)} errors, ${n(s.input_tokens)} input and ` +
        `${n(s.output_tokens)} output tokens, ${usd(s.cost_usd)}. The page keeps the last ${n(RECENT)} calls.`;
    } catch (_) { /* the feed's status shows the connection */ }
  }

  // ---- data: subscribe first, then fetch what came before (duplicates are skipped)
  function connect() {
    const es = new EventSource("/api/calls/stream");
    es.addEventListener("open", () => { $("conn").textContent = "live"; $("conn").className = "conn live"; });
    es.addEventListener("error", () => { $("conn").textContent = "reconnecting…"; $("conn").className = "conn down"; });
    es.addEventListener("call", (e) => {
      const c = JSON.parse(e.data);
      learn(c);
      add(c, true);
    });
  }
  async function load() {
    connect();
    try {
      const r = await fetch(`/api/calls?limit=${RECENT}`, { cache: "no-store" });
      if (r.ok) {
        const list = await r.json();
        for (const c of list.reverse()) { learn(c); add(c, false); }
        calls.sort((a, b) => b._t - a._t); // streamed calls may have arrived first
      }
    } catch (_) { /* shown by the feed status */ }
    dirty = true;
    render();
    sinceStart();
  }
  setInterval(render, 500);
  setInterval(() => { dirty = true; }, 5000); // the window slides even without calls
  setInterval(sinceStart, 5000);
  load();
})();
