// The campaigns page of the account web app: every call goes to /app/api/v1/… (the
// account API through the session cookie), changing ones with the X-Sendmill-App header.
// Text from the API is put in the page with textContent only; a preview's HTML goes
// into a sandboxed frame (no scripts, no same origin).
"use strict";

const api = async (method, path, body) => {
  const headers = {};
  if (method !== "GET") headers["X-Sendmill-App"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`/app/api${path}`, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    window.location.assign("/app/login");
    throw new Error("signed out");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const detail = data && data.error;
    const error = new Error(detail ? `${detail.field ? detail.field + ": " : ""}${detail.message}` : response.statusText);
    error.detail = detail;
    throw error;
  }
  return data;
};

const el = (tag, text, className) => {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (className) e.className = className;
  return e;
};
const row = (cells) => {
  const tr = document.createElement("tr");
  cells.forEach((c) => tr.appendChild(typeof c === "string" ? el("td", c) : c));
  return tr;
};
const num = (n) => el("td", String(n ?? "—"), "n");
const $ = (id) => document.getElementById(id);

const page = { editing: null, current: null, report: null, campaigns: [], lists: [], timer: null };

// What a state allows, as the API enforces it.
const ACTIONS = {
  draft: ["edit", "schedule", "cancel", "delete"],
  scheduled: ["unschedule", "cancel"],
  sending: ["pause", "cancel", "report"],
  paused: ["resume", "cancel", "report"],
  sent: ["report", "delete"],
  cancelled: ["report", "delete"],
};

async function loadAudiences() {
  const [{ data: lists }, { data: segments }] = await Promise.all([api("GET", "/v1/lists"), api("GET", "/v1/segments")]);
  page.lists = lists;
  for (const id of ["c-lists", "c-exclude"]) {
    $(id).replaceChildren(...lists.map((l) => {
      const o = el("option", `${l.name} (${l.counts.subscribed})`);
      o.value = l.id;
      return o;
    }));
  }
  const none = el("option", "(any)");
  none.value = "";
  $("c-segment").replaceChildren(none, ...segments.map((s) => {
    const o = el("option", s.name);
    o.value = s.id;
    return o;
  }));
}

async function loadCampaigns() {
  const { data } = await api("GET", "/v1/campaigns");
  page.campaigns = data;
  $("campaigns").querySelector("tbody").replaceChildren(...data.map((c) => {
    const size = c.progress.audience_size;
    const bar = el("progress");
    bar.max = size || 1;
    bar.value = size ? c.progress.released + c.progress.skipped + c.progress.not_sent : 0;
    const progress = el("td");
    progress.append(bar, el("span", size == null ? "" : ` of ${size}`, "muted"));
    const actions = el("td");
    for (const action of ACTIONS[c.state] || []) {
      const b = el("button", action, action === "edit" || action === "report" ? "quiet" : "");
      b.type = "button";
      b.dataset.action = action;
      b.addEventListener("click", () => act(c, action));
      actions.appendChild(b);
    }
    const state = el("td", c.state + (c.phase !== "all" && c.state === "sending" ? ` (${c.phase})` : ""));
    state.className = "state";
    const tr = row([c.name, state, progress, num(c.progress.released), c.starts_at ? c.starts_at.replace("T", " ").slice(0, 16) : "when scheduled", actions]);
    tr.dataset.id = c.id;
    tr.dataset.state = c.state;
    return tr;
  }));
  document.body.dataset.campaigns = String(data.length);
}

async function act(c, action) {
  $("campaigns-error").textContent = "";
  try {
    if (action === "edit") return edit(c);
    if (action === "report") return showReport(c.id);
    if (action === "delete") await api("DELETE", `/v1/campaigns/${c.id}`);
    else await api("POST", `/v1/campaigns/${c.id}/${action}`);
    await loadCampaigns();
    if (page.report === c.id) await showReport(c.id);
  } catch (e) {
    $("campaigns-error").textContent = `${c.name}: ${e.message}`;
  }
}

const selected = (id) => [...$(id).selectedOptions].map((o) => o.value);

// The editor's fields as a request body. Keys the form leaves empty are left out, so a
// PATCH keeps what the campaign has (a template's subject, a time set by the API).
function formBody() {
  const body = {
    name: $("c-name").value,
    from: { email: $("c-from").value.trim(), name: $("c-from-name").value.trim() || null },
    audience: { lists: selected("c-lists"), segment_id: $("c-segment").value || null, exclude_lists: selected("c-exclude") },
    throttle_per_hour: $("c-throttle").value ? Number($("c-throttle").value) : null,
  };
  if ($("c-subject").value) body.subject = $("c-subject").value;
  if ($("c-html").value) body.html = $("c-html").value;
  if ($("c-send-at").value) body.send_at = $("c-send-at").value;
  if ($("c-zone").value.trim()) body.time_zone = $("c-zone").value.trim();
  const had = page.current && page.current.ab_test;
  if ($("ab-on").checked) {
    // The variants' other changes (from name, content) are kept; the subjects are the form's.
    const variants = had ? had.variants.map((v) => ({ ...v })) : [{}, {}];
    variants[0].subject = $("ab-a").value || body.subject || variants[0].subject;
    variants[1].subject = $("ab-b").value || variants[1].subject;
    body.ab_test = {
      variants,
      test_percent: Number($("ab-percent").value),
      metric: $("ab-metric").value,
      wait_seconds: Number($("ab-wait").value) * 60,
    };
  } else if (had) {
    body.ab_test = null;
  }
  return body;
}

function edit(c) {
  page.editing = c ? c.id : null;
  page.current = c || null;
  $("editor-title").textContent = c ? `Edit ${c.name}` : "New campaign";
  $("c-name").value = c ? c.name : "";
  $("c-from").value = c ? c.from.email : "";
  $("c-from-name").value = c && c.from.name ? c.from.name : "";
  $("c-subject").value = c && c.subject ? c.subject : "";
  $("c-html").value = c && c.html ? c.html : "";
  for (const [id, values] of [["c-lists", c ? c.audience.lists : []], ["c-exclude", c ? c.audience.exclude_lists : []]]) {
    for (const o of $(id).options) o.selected = values.includes(o.value);
  }
  $("c-segment").value = c && c.audience.segment_id ? c.audience.segment_id : "";
  $("c-throttle").value = c && c.throttle_per_hour ? c.throttle_per_hour : "";
  $("c-send-at").value = "";
  $("c-zone").value = c && c.time_zone ? c.time_zone : "";
  const ab = c && c.ab_test;
  $("ab-on").checked = Boolean(ab);
  $("ab-a").value = ab ? ab.variants[0].subject || "" : "";
  $("ab-b").value = ab ? ab.variants[1].subject || "" : "";
  $("ab-percent").value = ab ? ab.test_percent : 20;
  $("ab-metric").value = ab ? ab.metric : "opens";
  $("ab-wait").value = ab ? Math.max(1, Math.round(ab.wait_seconds / 60)) : 60;
  $("editor-status").textContent = "";
}

async function save(event) {
  event.preventDefault();
  const status = $("editor-status");
  try {
    const body = formBody();
    const saved = page.editing
      ? await api("PATCH", `/v1/campaigns/${page.editing}`, body)
      : await api("POST", "/v1/campaigns", body);
    page.editing = saved.id;
    page.current = saved;
    $("editor-title").textContent = `Edit ${saved.name}`;
    status.textContent = `Saved (${saved.state}).`;
    status.className = "ok";
    status.dataset.saved = saved.id;
    await loadCampaigns();
  } catch (e) {
    status.textContent = e.message;
    status.className = "error";
    if (e.detail && e.detail.field) status.dataset.field = e.detail.field;
  }
}

async function preview(event) {
  event.preventDefault();
  $("preview-error").textContent = "";
  if (!page.editing) {
    $("preview-error").textContent = "Save the campaign first.";
    return;
  }
  try {
    const params = new URLSearchParams();
    const email = $("preview-email").value.trim().toLowerCase();
    if (email) {
      const found = await api("GET", `/v1/contacts?email_prefix=${encodeURIComponent(email)}&limit=5`);
      const contact = found.data.find((c) => c.email === email);
      if (!contact) throw new Error(`no contact ${email}`);
      params.set("contact_id", contact.id);
    }
    if ($("preview-variant").value) params.set("variant", $("preview-variant").value);
    const p = await api("GET", `/v1/campaigns/${page.editing}/preview?${params}`);
    if (p.error) throw new Error(p.error);
    $("preview-subject").textContent = `Subject: ${p.subject}` + (p.email ? ` — for ${p.email}` : "");
    $("preview-subject").dataset.subject = p.subject;
    $("preview-html").srcdoc = p.html || `<pre>${(p.text || "").replace(/[&<>]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[ch])}</pre>`;
  } catch (e) {
    $("preview-error").textContent = e.message;
  }
}

function drawTimeline(minutes) {
  const svg = $("timeline");
  const width = svg.clientWidth || 800;
  const max = Math.max(1, ...minutes.map((m) => m.delivered));
  const slot = width / Math.max(minutes.length, 1);
  const bars = [];
  minutes.forEach((m, i) => {
    [["delivered", m.delivered, 0], ["opened", m.opened, 1], ["clicked", m.clicked, 2]].forEach(([kind, value, k]) => {
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      const h = (value / max) * 110;
      r.setAttribute("x", String(i * slot + k * slot / 3));
      r.setAttribute("y", String(115 - h));
      r.setAttribute("width", String(Math.max(slot / 3 - 2, 1)));
      r.setAttribute("height", String(h));
      r.setAttribute("class", kind);
      const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
      title.textContent = `${new Date(m.minute * 1000).toISOString().slice(11, 16)} ${kind} ${value}`;
      r.appendChild(title);
      bars.push(r);
    });
  });
  svg.replaceChildren(...bars);
}

async function showReport(id) {
  page.report = id;
  clearTimeout(page.timer);
  const s = await api("GET", `/v1/campaigns/${id}/stats`);
  const c = page.campaigns.find((x) => x.id === id);
  $("report-section").hidden = false;
  $("report-title").textContent = `Report: ${c ? c.name : id} (${s.state})`;
  const figures = [
    ["Audience", s.audience_size ?? "—"], ["Released", s.released], ["Delivered", s.delivered], ["Deferred", s.deferred],
    ["Bounced", s.bounced.total], ["Opened (people)", s.opened.unique], ["Clicked (people)", s.clicked.unique], ["Machine opens", s.opened.machine],
    ["Unsubscribed", s.unsubscribed], ["Complained", s.complained], ["Skipped", s.skipped], ["Not sent", s.not_sent],
  ];
  $("funnel").replaceChildren(...figures.map(([label, value]) => {
    const d = el("div", label);
    const b = el("b", String(value));
    b.dataset.figure = label;
    d.prepend(b);
    return d;
  }));
  drawTimeline(s.timeline);
  $("variants").querySelector("tbody").replaceChildren(...s.variants.map((v) => row([v.variant, num(v.released), num(v.unique_opens), num(v.unique_clicks), el("td", `${(v.click_rate * 100).toFixed(1)} %`, "n")])));
  $("winner").textContent = s.winner ? `Winner: ${s.winner}` : "";
  $("links").querySelector("tbody").replaceChildren(...s.links.map((l) => row([l.url, num(l.unique_clicks), num(l.clicks)])));
  $("report-section").dataset.delivered = String(s.delivered);
  $("report-section").dataset.clicked = String(s.clicked.unique);
  // Live: opens and clicks keep arriving long after the last release.
  page.timer = setTimeout(() => {
    if (page.report === id) showReport(id).catch(() => {});
  }, 2000);
}

(async () => {
  $("editor").addEventListener("submit", save);
  $("editor-new").addEventListener("click", () => edit(null));
  $("preview-form").addEventListener("submit", preview);
  try {
    await Promise.all([loadAudiences(), loadCampaigns()]);
  } catch (e) {
    $("campaigns-error").textContent = e.message;
  }
  setInterval(() => loadCampaigns().catch(() => {}), 2000);
  document.body.dataset.loaded = "1";
})();
