// Every page's charts (bench and capacity report, tune, compare, lifecycle): plain SVG drawn from the JSON embedded in
// the page (no library, no network).
// Every mark carries its values: hovering shows them in the tooltip, and <title> for screen readers.
"use strict";
const D = JSON.parse(document.getElementById("report-data").textContent);
const NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];
const tip = document.getElementById("tip");

function el(name, attrs, parent) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "n/a";
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toPrecision(2);
}

function ticks(lo, hi, log) {
  if (log) {
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++)
      for (const m of [1, 2, 5]) { const t = m * 10 ** e; if (t >= lo && t <= hi) out.push(t); }
    return out.length ? out : [lo, hi];
  }
  const span = hi - lo || 1, raw = span / 5, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => span / s <= 6);
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

function showTip(event, html) {
  tip.innerHTML = html;
  tip.style.display = "block";
  tip.style.left = (event.pageX + 12) + "px";
  tip.style.top = (event.pageY + 12) + "px";
}
function hideTip() { tip.style.display = "none"; }

function frame(container, opts, xs, ys) {
  const W = opts.width || 560, H = opts.height || 300, M = {l: 58, r: 12, t: 22, b: 42};
  container.innerHTML = "";
  if (opts.title) { const h = document.createElement("div"); h.className = "chart-title"; h.textContent = opts.title;
                    container.appendChild(h); }
  const svg = el("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img"}, container);
  const lim = (vals, log, zero) => {
    let v = vals.filter(x => x !== null && Number.isFinite(x) && (!log || x > 0));
    if (!v.length) v = [log ? 1 : 0, 1];
    let lo = Math.min(...v), hi = Math.max(...v);
    if (zero && !log) lo = Math.min(0, lo);
    if (lo === hi) { lo = log ? lo / 2 : lo - 1; hi = log ? hi * 2 : hi + 1; }
    if (!log) hi += (hi - lo) * 0.05;
    return [lo, hi];
  };
  const [x0, x1] = lim(xs, opts.logX, opts.xZero);
  const [y0, y1] = lim(ys, opts.logY, opts.yZero !== false);
  const sx = v => opts.logX ? M.l + (Math.log10(v) - Math.log10(x0)) / (Math.log10(x1) - Math.log10(x0)) * (W - M.l - M.r)
                            : M.l + (v - x0) / (x1 - x0) * (W - M.l - M.r);
  const sy = v => opts.logY ? H - M.b - (Math.log10(v) - Math.log10(y0)) / (Math.log10(y1) - Math.log10(y0)) * (H - M.t - M.b)
                            : H - M.b - (v - y0) / (y1 - y0) * (H - M.t - M.b);
  const axes = el("g", {class: "axes"}, svg);
  for (const t of ticks(y0, y1, opts.logY)) {
    el("line", {x1: M.l, x2: W - M.r, y1: sy(t), y2: sy(t), class: "grid"}, axes);
    el("text", {x: M.l - 6, y: sy(t) + 4, "text-anchor": "end"}, axes).textContent = fmt(t);
  }
  const xt = opts.xTicks || ticks(x0, x1, opts.logX);
  for (const t of xt) el("text", {x: sx(t), y: H - M.b + 16, "text-anchor": "middle"}, axes).textContent = fmt(t);
  el("line", {x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b, class: "axis"}, axes);
  el("line", {x1: M.l, x2: M.l, y1: M.t, y2: H - M.b, class: "axis"}, axes);
  el("text", {x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle", class: "label"}, axes).textContent = opts.xlabel || "";
  el("text", {x: 14, y: (M.t + H - M.b) / 2, transform: `rotate(-90 14 ${(M.t + H - M.b) / 2})`, "text-anchor": "middle",
              class: "label"}, axes).textContent = opts.ylabel || "";
  return {svg, sx, sy, W, H, M};
}

// series: [{name, color, dash, points: [[x, y, note], ...]}]; hlines: [{y, label}]; vlines: [{x, label, color}]
function lineChart(container, opts) {
  const series = opts.series.filter(s => s.points.some(p => p[1] !== null));
  const xs = series.flatMap(s => s.points.map(p => p[0])).concat((opts.vlines || []).map(v => v.x));
  const ys = series.flatMap(s => s.points.map(p => p[1])).concat((opts.hlines || []).map(h => h.y));
  const f = frame(container, opts, xs, ys);
  const marks = el("g", {class: "marks"}, f.svg);
  for (const h of opts.hlines || []) {
    el("line", {x1: f.M.l, x2: f.W - f.M.r, y1: f.sy(h.y), y2: f.sy(h.y), class: "slo"}, marks);
    el("text", {x: f.W - f.M.r - 4, y: f.sy(h.y) - 4, "text-anchor": "end", class: "slo-label"}, marks).textContent = h.label;
  }
  for (const v of opts.vlines || [])
    el("line", {x1: f.sx(v.x), x2: f.sx(v.x), y1: f.M.t, y2: f.H - f.M.b, stroke: v.color, "stroke-dasharray": "2 3"}, marks)
      .appendChild(document.createElementNS(NS, "title")).textContent = v.label;
  series.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length];
    const pts = s.points.filter(p => p[1] !== null && Number.isFinite(p[1]) && (!opts.logY || p[1] > 0));
    if (s.line !== false && pts.length > 1)
      el("path", {d: "M" + pts.map(p => `${f.sx(p[0]).toFixed(1)},${f.sy(p[1]).toFixed(1)}`).join("L"), fill: "none",
                  stroke: color, "stroke-width": 1.6, "stroke-dasharray": s.dash || ""}, marks);
    if (s.marker === false) return;
    for (const p of pts) {
      const dot = el("circle", {cx: f.sx(p[0]), cy: f.sy(p[1]), r: s.r || 3.5, fill: p[3] === false ? "#fff" : color,
                                stroke: color, class: "point"}, marks);
      const text = `<b>${s.name}</b><br>${opts.xname || opts.xlabel}: ${fmt(p[0])}<br>${opts.yname || opts.ylabel}: ` +
                   `${fmt(p[1])}${p[2] ? "<br>" + p[2] : ""}`;
      dot.appendChild(document.createElementNS(NS, "title")).textContent = text.replace(/<br>/g, "; ").replace(/<[^>]+>/g, "");
      dot.addEventListener("mousemove", e => showTip(e, text));
      dot.addEventListener("mouseleave", hideTip);
    }
  });
  legend(container, series.map((s, i) => [s.name, s.color || PALETTE[i % PALETTE.length], s.dash]));
}

// groups: [{label, bars: [{name, parts: [{name, value, color}]}]}]: stacked bars, side by side within a group
function barChart(container, opts) {
  const tops = opts.groups.flatMap(g => g.bars.map(b => b.parts.reduce((a, p) => a + (p.value || 0), 0)));
  const n = opts.groups.length, per = Math.max(...opts.groups.map(g => g.bars.length), 1);
  const f = frame(container, {...opts, xTicks: []}, [0, n], tops.concat([0]));
  const marks = el("g", {class: "marks"}, f.svg), slot = (f.W - f.M.l - f.M.r) / n, width = slot * 0.8 / per;
  opts.groups.forEach((g, gi) => {
    el("text", {x: f.M.l + slot * (gi + 0.5), y: f.H - f.M.b + 16, "text-anchor": "middle"}, f.svg).textContent = g.label;
    g.bars.forEach((b, bi) => {
      let bottom = 0;
      const x = f.M.l + slot * gi + slot * 0.1 + bi * width;
      for (const p of b.parts) {
        if (!(p.value > 0)) continue;
        const rect = el("rect", {x, width: width - 2, y: f.sy(bottom + p.value), height: f.sy(bottom) - f.sy(bottom + p.value),
                                 fill: p.color, class: "bar"}, marks);
        const text = `<b>${b.name}</b>, ${g.label}<br>${p.name}: ${fmt(p.value)} ${opts.unit || ""}`;
        rect.appendChild(document.createElementNS(NS, "title")).textContent = text.replace(/<br>/g, "; ").replace(/<[^>]+>/g, "");
        rect.addEventListener("mousemove", e => showTip(e, text));
        rect.addEventListener("mouseleave", hideTip);
        bottom += p.value;
      }
      el("text", {x: x + width / 2, y: f.sy(bottom) - 3, "text-anchor": "middle", class: "bar-label"}, marks).textContent = b.short || "";
    });
  });
  const seen = new Map();
  opts.groups.forEach(g => g.bars.forEach(b => b.parts.forEach(p => seen.set(p.name, p.color))));
  legend(container, [...seen].map(([name, color]) => [name, color]));
}

// rows: [{label, change, low, high, verdict}]: each change (%) with its 95% interval, against zero (a forest plot);
// effect: the minimum effect (%), drawn either side of zero
function forestChart(container, opts) {
  const rows = opts.rows.filter(r => r.change !== null && Number.isFinite(r.change));
  container.innerHTML = "";
  if (!rows.length) return;
  if (opts.title) { const h = document.createElement("div"); h.className = "chart-title"; h.textContent = opts.title;
                    container.appendChild(h); }
  const W = opts.width || 760, left = 300, rowH = 18, H = rowH * rows.length + 48;
  const svg = el("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img"}, container);
  const values = rows.flatMap(r => [r.change, r.low, r.high]).filter(v => v !== null && Number.isFinite(v));
  const bound = Math.max(10, opts.effect || 0, ...values.map(Math.abs)) * 1.1;
  const sx = v => left + (v + bound) / (2 * bound) * (W - left - 40), bottom = H - 32;
  const axes = el("g", {class: "axes"}, svg);
  for (const t of [-bound, -bound / 2, 0, bound / 2, bound]) {
    el("line", {x1: sx(t), x2: sx(t), y1: 6, y2: bottom, class: t === 0 ? "axis" : "grid"}, axes);
    el("text", {x: sx(t), y: bottom + 14, "text-anchor": "middle"}, axes).textContent =
      t === 0 ? "0" : (t > 0 ? "+" : "") + fmt(t) + "%";
  }
  for (const e of opts.effect ? [-opts.effect, opts.effect] : [])
    el("line", {x1: sx(e), x2: sx(e), y1: 6, y2: bottom, class: "slo"}, axes)
      .appendChild(document.createElementNS(NS, "title")).textContent = "the minimum effect";
  el("text", {x: (left + W - 40) / 2, y: H - 4, "text-anchor": "middle", class: "label"}, axes).textContent =
    "change of B over A, with its 95% interval (dashed: the minimum effect)";
  const marks = el("g", {class: "marks"}, svg);
  rows.forEach((r, i) => {
    const y = 14 + i * rowH, color = {slower: "#b00020", faster: "#1b7f3b"}[r.verdict] || "#555";
    el("text", {x: 4, y: y + 4}, marks).textContent = r.label;
    if (r.low !== null && r.high !== null)
      el("line", {x1: sx(r.low), x2: sx(r.high), y1: y, y2: y, stroke: color, "stroke-width": 2}, marks);
    const dot = el("circle", {cx: sx(r.change), cy: y, r: 4, fill: color, class: "point"}, marks);
    const text = `<b>${r.label}</b><br>change: ${r.change > 0 ? "+" : ""}${fmt(r.change)}%<br>95% interval: ` +
                 (r.low === null ? "n/a" : `${fmt(r.low)}% to ${fmt(r.high)}%`) + `<br>${r.verdict}`;
    dot.appendChild(document.createElementNS(NS, "title")).textContent = text.replace(/<br>/g, "; ").replace(/<[^>]+>/g, "");
    dot.addEventListener("mousemove", e => showTip(e, text));
    dot.addEventListener("mouseleave", hideTip);
  });
}

function legend(container, items) {
  const box = document.createElement("div");
  box.className = "legend";
  for (const [name, color, dash] of items) {
    const item = document.createElement("span");
    item.innerHTML = `<i style="background:${color};${dash ? "opacity:.55" : ""}"></i>`;
    item.appendChild(document.createTextNode(name));
    box.appendChild(item);
  }
  container.appendChild(box);
}

function picker(id, options, draw) {
  const select = document.getElementById(id);
  if (!select) return;
  for (const [value, label] of options) {
    const o = document.createElement("option"); o.value = value; o.textContent = label; select.appendChild(o);
  }
  select.addEventListener("change", () => draw(select.value));
  if (options.length) draw(options[0][0]);
}

function colorOf(name) { return D.colors[name] || "#555"; }

function drawAll() {
  const chart = id => document.getElementById(id);
  if (chart("chart-latency")) {
    lineChart(chart("chart-latency"), {xlabel: D.levelName, ylabel: "latency (ms)", logY: true, title: "p50 (solid) and p99 (dashed)",
      series: D.curves.flatMap(c => [
        {name: c.name + " p50", color: colorOf(c.name), points: c.points.map(p => [p.level, p.p50, p.note, p.valid])},
        {name: c.name + " p99", color: colorOf(c.name), dash: "5 3", points: c.points.map(p => [p.level, p.p99, p.note, p.valid])}])});
    lineChart(chart("chart-throughput"), {xlabel: D.levelName, ylabel: "throughput (req/s)", title: "successful requests per second",
      series: D.curves.map(c => ({name: c.name, color: colorOf(c.name), points: c.points.map(p => [p.level, p.rps, p.note, p.valid])}))});
  }
  if (chart("chart-pairs")) {
    barChart(chart("chart-pairs"), {ylabel: "p50 latency (ms)", unit: "ms", title: "REST against gRPC: p50 at each level",
      groups: D.pairs.map(g => ({label: g.level, bars: g.bars.map(b => ({name: b.name, short: b.short,
        parts: [{name: b.name + " p50", value: b.p50, color: colorOf(b.name)}]}))}))});
  }
  if (chart("chart-timeline")) picker("pick-run", D.runs.map((r, i) => [i, r.label]), i => {
    const r = D.runs[i];
    lineChart(chart("chart-timeline"), {xlabel: "seconds since measuring began", ylabel: "latency (ms)", logY: true,
      xname: "t (s)", title: `${r.label}: per ${fmt(r.bucket_s)} s, p50 and p99` + (r.extended ? " (extended until it settled)" : ""),
      vlines: r.span ? [{x: r.span[0], color: "#555", label: "the figures come from here..."},
                        {x: r.span[1], color: "#555", label: "...to here"}] : [], series: [
        {name: "p50", color: colorOf(r.name), points: r.timeline.map(b => [b[0], b[1], `${b[3]} requests`])},
        {name: "p99", color: colorOf(r.name), dash: "5 3", points: r.timeline.map(b => [b[0], b[2], `${b[3]} requests`])},
        {name: "failures", color: "#b00020", line: false, points: r.timeline.filter(b => b[4] > 0).map(b => [b[0], b[1], `${b[4]} failed`])}]});
  });
  if (chart("chart-cdf")) picker("pick-level", D.levels.map(l => [l, D.levelLabel(l)]), level => {
    const mine = D.runs.filter(r => String(r.level) === String(level));
    lineChart(chart("chart-cdf"), {xlabel: "latency (ms, log)", ylabel: "fraction of requests", logX: true, yZero: true,
      xname: "latency (ms)", yname: "fraction", title: "latency distribution (CDF)",
      series: mine.map(r => ({name: r.label, color: colorOf(r.name), marker: false, dash: r.repeat > 1 ? "4 2" : "",
                              points: r.cdf.map(p => [p[0], p[1]])}))});
  });
  if (chart("chart-images")) {
    lineChart(chart("chart-images"), {xlabel: "request size (KiB, log)", ylabel: "p50 latency (ms)", logX: true, title: D.imagesTitle,
      xname: "KiB", series: D.images.map(s => ({name: s.name, color: colorOf(s.name), line: false, points: s.points}))});
  }
  if (chart("chart-breakdown")) {
    barChart(chart("chart-breakdown"), {ylabel: "mean ms from send", unit: "ms", title: "where the time goes",
      groups: D.breakdown.map(g => ({label: g.level, bars: g.bars}))});
  }
  if (chart("chart-capacity")) {
    lineChart(chart("chart-capacity"), {xlabel: "offered load (req/s)", ylabel: D.capacity.ylabel, logY: true,
      title: "probes: filled pass, hollow fail", hlines: [{y: D.capacity.slo_ms, label: D.capacity.slo_text}],
      vlines: D.capacity.results.map(r => ({x: r.capacity, color: colorOf(r.name), label: `${r.name}: ${fmt(r.capacity)} req/s`})),
      series: D.capacity.results.map(r => ({name: r.name, color: colorOf(r.name), points: r.probes}))});
  }
  if (chart("chart-pareto")) {
    lineChart(chart("chart-pareto"), {xlabel: "throughput (answered requests/s)", ylabel: D.pareto.ylabel,
      xname: "req/s", yname: "ms", xZero: true, title: "passing probes of every trial; black: the Pareto front of each cell",
      hlines: [{y: D.pareto.slo_ms, label: D.pareto.slo_text}],
      series: D.pareto.trials.map(t => ({name: t.name, line: false, points: t.points})).concat(
        D.pareto.fronts.map(f => ({name: f.name, color: "#000", marker: false, points: f.points})))});
  }
  if (chart("chart-changes")) {
    forestChart(chart("chart-changes"), {rows: D.changes.rows, effect: D.changes.effect,
      title: "B against A: each figure's change and its interval"});
  }
  if (chart("chart-swap")) {
    const w = D.swap;
    lineChart(chart("chart-swap"), {xlabel: "seconds since the load began (due time)", ylabel: "latency (ms)", logY: true,
      xname: "t (s)", yname: "ms", title: "latency around the swap, per model", vlines: w.markers, series: w.series});
    lineChart(chart("chart-swap-share"), {xlabel: "seconds since the load began (due time)", ylabel: "share", yZero: true,
      xname: "t (s)", yname: "share", title: "answered by the new version", vlines: w.markers,
      series: [{name: "new version", color: "#08519c", points: w.share}]});
    if (w.compared.length) lineChart(chart("chart-swap-compare"), {xlabel: "seconds since the copy (due time)",
      ylabel: "latency (ms)", logY: true, xname: "t (s)", yname: "ms", title: "p99 of the swapped model, per setting",
      vlines: [{x: 0, label: "copy started", color: "#555"}], series: w.compared});
  }
  if (chart("chart-density-memory")) {
    const d = D.density;
    lineChart(chart("chart-density-memory"), {xlabel: "copies of the model served", ylabel: "MiB", yZero: true,
      xname: "copies", yname: "MiB", title: "memory against copies served", hlines: d.limit, series: d.memory});
    lineChart(chart("chart-density-latency"), {xlabel: "copies of the model served", ylabel: "latency (ms)",
      xname: "copies", yname: "ms", title: "latency at a fixed rate spread over the copies", hlines: d.slo,
      series: d.latency});
  }
  if (chart("chart-coldstart")) {
    const c = D.coldstart;
    barChart(chart("chart-coldstart"), {ylabel: "seconds from start", unit: "s", title: "each cold start, by phase",
      groups: c.groups});
    lineChart(chart("chart-first"), {xlabel: "request after AVAILABLE", ylabel: "latency (ms)", logY: true,
      xname: "request", yname: "ms", title: "the first requests, one at a time", hlines: c.steady,
      series: c.first.map(s => ({...s, marker: false}))});
    if (c.memory.length) barChart(chart("chart-memory"), {ylabel: "MiB", unit: "MiB", title: "the server's memory",
      groups: c.memory});
  }
  document.body.dataset.rendered = "yes";
}

D.levelLabel = l => D.mode === "open" ? `${l} req/s` : `${l} user${l == 1 ? "" : "s"}`;
drawAll();
