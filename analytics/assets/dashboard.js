// The operations dashboard: fetches the JSON under /dashboard/api and draws it with
// uPlot. Every number shown comes from ClickHouse (counts) or Redis/PostgreSQL (pauses,
// alerts). `window.sendmillDashboard` exposes what was drawn, for tests and debugging.
"use strict";

const state = { charts: {}, points: {}, loaded: 0 };
window.sendmillDashboard = state;

const $ = (id) => document.getElementById(id);
const palette = ["#2457c5", "#2e9d5b", "#e08e0b", "#c5352b", "#7b4fc9", "#1a9aa0", "#8a8f98", "#d1477a"];
const pct = (x) => (x * 100).toFixed(x < 0.01 && x > 0 ? 2 : 1) + "%";
const num = (x) => Number(x).toLocaleString("en");
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
  if (response.status === 401) { location.href = "/dashboard/login"; throw new Error("signed out"); }
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

function windowParams() {
  const minutes = Number($("window").value);
  const to = new Date();
  const from = new Date(to.getTime() - minutes * 60000);
  const interval = minutes <= 360 ? "minute" : minutes <= 10080 ? "hour" : "day";
  state.range = [Math.floor(from.getTime() / 1000), Math.ceil(to.getTime() / 1000)];
  return { minutes, from: from.toISOString(), to: to.toISOString(), interval };
}

// One uPlot per container, replaced on every refresh.
function draw(id, series, data, opts) {
  const el = $(id);
  if (state.charts[id]) state.charts[id].destroy();
  el.innerHTML = "";
  const points = data[0].length;
  state.points[id] = points;
  el.dataset.points = String(points);
  if (points === 0) { el.innerHTML = '<p class="empty">No events in this window.</p>'; return; }
  const width = Math.max(300, el.clientWidth);
  // The x axis always spans the chosen window, however few points fall in it.
  const range = state.range;
  state.charts[id] = new uPlot(Object.assign({
    width, height: 240,
    scales: { x: { time: true, range: () => range }, s: { range: (u, min, max) => [0, Math.max(1, max)] } },
    series: [{}].concat(series.map((s, i) => Object.assign({ stroke: palette[i % palette.length], width: 2, points: { show: points < 3 } }, s))),
    axes: [{}, { size: 60 }],
    legend: { live: true },
  }, opts || {}), data, el);
}

function table(id, headers, rows) {
  const el = $(id);
  if (rows.length === 0) { el.innerHTML = '<p class="empty">Nothing to show.</p>'; return; }
  const head = headers.map((h) => `<th class="${h.n ? "n" : ""}">${esc(h.label)}</th>`).join("");
  const body = rows.map((r) => "<tr>" + r.map((c, i) => `<td class="${headers[i].n ? "n" : ""}">${c}</td>`).join("") + "</tr>").join("");
  el.innerHTML = `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

function seconds(t) { return Math.floor(new Date(t).getTime() / 1000); }

async function loadStats(w) {
  const base = `from=${encodeURIComponent(w.from)}&to=${encodeURIComponent(w.to)}&interval=${w.interval}`;
  const total = await api(`/dashboard/api/stats?${base}`);
  const group = $("group").value;
  const grouped = await api(`/dashboard/api/stats?${base}&group_by=${group}`);
  document.querySelectorAll(".group-name").forEach((e) => { e.textContent = $("group").selectedOptions[0].textContent; });

  const t = total.totals, r = total.rates;
  $("kpis").innerHTML = [
    ["accepted", num(t.accepted)], ["delivered", num(t.delivered)], ["delivery rate", pct(r.delivery)],
    ["deferral rate", pct(r.deferral)], ["bounce rate", pct(r.bounce)], ["complaint rate", pct(r.complaint)],
    ["open rate", pct(r.open)], ["click rate", pct(r.click)],
  ].map(([label, value]) => `<div class="kpi"><b>${value}</b><span>${label}</span></div>`).join("");

  const series = total.groups.length ? total.groups[0].series : [];
  const xs = series.map((p) => seconds(p.t));
  const kinds = ["accepted", "delivered", "deferred", "bounced", "complained"];
  draw("chart-volume", kinds.map((k) => ({ label: k })), [xs].concat(kinds.map((k) => series.map((p) => p.counts[k]))));
  const rates = ["delivery", "deferral", "bounce", "complaint"];
  draw("chart-rates", rates.map((k) => ({ label: k, value: (u, v) => v == null ? "-" : pct(v) })),
    [xs].concat(rates.map((k) => series.map((p) => p.rates[k]))),
    { axes: [{}, { size: 60, values: (u, vals) => vals.map((v) => pct(v)) }] });

  // Bounce rate per group on one time axis.
  const groups = grouped.groups.filter((g) => g.key !== "").slice(0, 8);
  const allXs = [...new Set(groups.flatMap((g) => g.series.map((p) => seconds(p.t))))].sort((a, b) => a - b);
  const columns = groups.map((g) => {
    const byX = new Map(g.series.map((p) => [seconds(p.t), p.rates.bounce]));
    return allXs.map((x) => byX.has(x) ? byX.get(x) : null);
  });
  draw("chart-groups", groups.map((g) => ({ label: g.key, spanGaps: true, value: (u, v) => v == null ? "-" : pct(v) })), [allXs].concat(columns),
    { axes: [{}, { size: 60, values: (u, vals) => vals.map((v) => pct(v)) }] });

  table("table-groups", [{ label: group }, { label: "sent", n: 1 }, { label: "delivered", n: 1 }, { label: "deferral", n: 1 }, { label: "bounce", n: 1 }, { label: "complaint", n: 1 }],
    grouped.groups.map((g) => [esc(g.key || "(none)"), num(g.counts.delivered + g.counts.bounced + g.counts.expired), pct(g.rates.delivery), pct(g.rates.deferral),
      `<span class="${g.rates.bounce > 0.05 ? "bad" : ""}">${pct(g.rates.bounce)}</span>`, pct(g.rates.complaint)]));
}

async function loadPipeline(w) {
  const view = await api(`/dashboard/api/pipeline?minutes=${w.minutes}`);
  const stages = [...new Set(view.throughput.map((s) => s.stage))].sort();
  const xs = [...new Set(view.throughput.map((s) => s.minute).concat(view.latency.map((l) => l.minute)))].sort((a, b) => a - b);
  const cols = stages.map((stage) => {
    const m = new Map(view.throughput.filter((s) => s.stage === stage).map((s) => [s.minute, s.events]));
    return xs.map((x) => m.get(x) ?? null);
  });
  const lat = new Map(view.latency.map((l) => [l.minute, l]));
  const p95 = xs.map((x) => lat.has(x) ? lat.get(x).p95_ms / 1000 : null);
  draw("chart-pipeline",
    stages.map((s) => ({ label: s + " events", spanGaps: true })).concat([{ label: "p95 accept→outcome (s)", scale: "s", dash: [6, 4], spanGaps: true }]),
    [xs].concat(cols, [p95]),
    { axes: [{}, { size: 60 }, { scale: "s", side: 1, size: 50, grid: { show: false } }] });
}

async function loadPending() {
  const view = await api("/dashboard/api/pending");
  $("pending-summary").innerHTML = `${num(view.in_flight)} in flight, ` +
    `<span class="${view.overdue > 0 ? "bad" : ""}">${num(view.overdue)} overdue</span> ` +
    `(no event for ${Math.round(view.overdue_after_secs / 60)} min)`;
  table("table-pending", [{ label: "lane" }, { label: "last seen by" }, { label: "in flight", n: 1 }, { label: "overdue", n: 1 }],
    view.by.map((p) => [esc(p.lane), esc(p.stage), num(p.in_flight), `<span class="${p.overdue > 0 ? "bad" : ""}">${num(p.overdue)}</span>`]));
}

async function loadTables(w) {
  const bounces = await api(`/dashboard/api/bounces?minutes=${w.minutes}`);
  table("table-bounces", [{ label: "category" }, { label: "code" }, { label: "example reply" }, { label: "count", n: 1 }],
    bounces.map((b) => [esc(b.bounce_category || "-"), esc(`${b.smtp_code || ""} ${b.smtp_enhanced}`), esc(b.example.slice(0, 120)), num(b.count)]));
  const campaigns = await api(`/dashboard/api/campaigns?minutes=${w.minutes}`);
  const share = (n, d) => d ? ` <small>(${pct(n / d)})</small>` : "";
  table("table-campaigns", [{ label: "campaign" }, { label: "accepted", n: 1 }, { label: "delivered", n: 1 }, { label: "opened", n: 1 }, { label: "clicked", n: 1 }, { label: "unsubscribed", n: 1 }, { label: "complained", n: 1 }],
    campaigns.map((c) => [esc(c.campaign_id), num(c.accepted), num(c.delivered) + share(c.delivered, c.accepted), num(c.opened) + share(c.opened, c.delivered),
      num(c.clicked) + share(c.clicked, c.delivered), num(c.unsubscribed), num(c.complained)]));
  const inbound = await api(`/dashboard/api/inbound?minutes=${w.minutes}`);
  table("table-inbound", [{ label: "event" }, { label: "category" }, { label: "count", n: 1 }],
    inbound.map((i) => [esc(i.event_type), esc(i.bounce_category || "-"), num(i.count)]));
}

async function loadPaused() {
  const view = await api("/dashboard/api/paused");
  table("table-paused", [{ label: "paused" }, { label: "why" }, { label: "" }],
    view.paused.map((p) => [`<code>${esc(p.member)}</code>`, esc(p.reason), `<button class="resume" data-member="${esc(p.member)}">Resume</button>`]));
  $("table-paused").querySelectorAll("button.resume").forEach((button) => {
    button.addEventListener("click", async () => {
      button.disabled = true;
      await api("/dashboard/api/resume", {
        method: "POST",
        headers: { "content-type": "application/json", "x-sendmill-dashboard": "1" },
        body: JSON.stringify({ member: button.dataset.member }),
      });
      await loadPaused();
    });
  });
  table("table-alerts", [{ label: "raised" }, { label: "subject" }, { label: "metric" }, { label: "value", n: 1 }, { label: "threshold", n: 1 }, { label: "resolved" }],
    view.alerts.map((a) => [esc(new Date(a.raised_at).toLocaleString()), `<code>${esc(a.subject_kind)}:${esc(a.subject)}</code>`, esc(a.metric),
      a.metric === "overdue_messages" ? num(a.value) : pct(a.value), a.metric === "overdue_messages" ? num(a.threshold) : pct(a.threshold), a.resolved_at ? esc(new Date(a.resolved_at).toLocaleString()) : '<span class="bad">open</span>']));
}

async function refresh() {
  const w = windowParams();
  try {
    await Promise.all([loadStats(w), loadPipeline(w), loadPending(), loadTables(w), loadPaused()]);
    state.loaded += 1;
    document.body.dataset.loaded = String(state.loaded);
  } catch (e) {
    console.error(e);
  }
}

$("window").addEventListener("change", refresh);
$("group").addEventListener("change", refresh);
refresh();
setInterval(refresh, 15000);
