// The account web app: every call goes to /app/api/v1/… (the account API, through the
// session cookie), changing ones with the X-Sendmill-App header. Text from the API is
// put in the page with textContent only, never as HTML.
"use strict";

const api = async (method, path, body, contentType) => {
  const headers = {};
  if (method !== "GET") headers["X-Sendmill-App"] = "1";
  let payload;
  if (body !== undefined) {
    if (contentType) {
      headers["Content-Type"] = contentType;
      payload = body;
    } else {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
  }
  const response = await fetch(`/app/api${path}`, { method, headers, body: payload, credentials: "same-origin" });
  if (response.status === 401) {
    window.location.assign("/app/login");
    throw new Error("signed out");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error((data && data.error && data.error.message) || response.statusText);
    error.detail = data && data.error;
    throw error;
  }
  return data;
};

const cell = (text, className) => {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
};

const row = (cells) => {
  const tr = document.createElement("tr");
  cells.forEach((c) => tr.appendChild(c));
  return tr;
};

const state = { lists: [], cursor: null };

async function loadLists() {
  const { data } = await api("GET", "/v1/lists");
  state.lists = data;
  const body = document.querySelector("#lists tbody");
  body.replaceChildren(...data.map((l) => {
    const tr = row([cell(l.name), cell(l.opt_in), cell(String(l.counts.subscribed), "n"),
      cell(String(l.counts.unconfirmed), "n"), cell(String(l.counts.unsubscribed), "n")]);
    tr.dataset.listId = l.id;
    return tr;
  }));
  const select = document.getElementById("import-list");
  const chosen = select.value;
  select.replaceChildren(...data.map((l) => {
    const option = document.createElement("option");
    option.value = l.id;
    option.textContent = l.name;
    return option;
  }));
  if (chosen) select.value = chosen;
}

async function searchContacts(more) {
  const params = new URLSearchParams({ limit: "50" });
  const prefix = document.getElementById("search-prefix").value.trim();
  const status = document.getElementById("search-status").value;
  if (prefix) params.set("email_prefix", prefix);
  if (status) params.set("status", status);
  if (more && state.cursor) params.set("cursor", state.cursor);
  const page = await api("GET", `/v1/contacts?${params}`);
  const body = document.querySelector("#contacts tbody");
  const rows = page.data.map((c) => {
    const opened = c.engagement && c.engagement.last_opened_at ? c.engagement.last_opened_at.slice(0, 10) : "—";
    const tr = row([cell(c.email), cell(c.name), cell(c.status), cell(JSON.stringify(c.attributes)), cell(opened)]);
    tr.dataset.email = c.email;
    return tr;
  });
  if (more) rows.forEach((r) => body.appendChild(r));
  else body.replaceChildren(...rows);
  state.cursor = page.next_cursor || null;
  document.getElementById("contacts-more").hidden = !state.cursor;
}

async function pollImport(id) {
  const status = document.getElementById("import-status");
  const progress = document.getElementById("import-progress");
  for (;;) {
    const job = await api("GET", `/v1/imports/${id}`);
    progress.hidden = false;
    status.textContent = `${job.state}: ${job.rows_read} rows read, ${job.created} created, ${job.updated} updated, ${job.skipped} skipped`;
    status.dataset.state = job.state;
    if (job.state === "completed" || job.state === "failed") {
      progress.value = 1;
      if (job.error) status.textContent += ` (${job.error})`;
      const table = document.getElementById("import-skipped");
      const lines = job.skipped_lines || [];
      table.hidden = lines.length === 0;
      table.querySelector("tbody").replaceChildren(...lines.map((l) => row([cell(String(l.line), "n"), cell(l.reason)])));
      await loadLists();
      return job;
    }
    // The row count of the file is not known before its end: the bar runs indeterminate.
    progress.removeAttribute("value");
    await new Promise((resolve) => setTimeout(resolve, 400));
  }
}

let countTimer = null;
function scheduleCount() {
  clearTimeout(countTimer);
  countTimer = setTimeout(countSegment, 300);
}

async function countSegment() {
  const expression = document.getElementById("segment-expression").value;
  const out = document.getElementById("segment-count");
  if (!expression.trim()) {
    out.textContent = "";
    out.className = "";
    return;
  }
  try {
    const { count } = await api("POST", "/v1/segments/check", { expression });
    out.textContent = `${count} contacts match`;
    out.className = "ok";
    out.dataset.count = String(count);
    delete out.dataset.position;
  } catch (e) {
    out.textContent = e.message;
    out.className = "error";
    delete out.dataset.count;
    if (e.detail && e.detail.position) out.dataset.position = String(e.detail.position);
  }
}

async function loadSegments() {
  const { data } = await api("GET", "/v1/segments");
  const body = document.querySelector("#segments tbody");
  const rows = await Promise.all(data.map(async (s) => {
    let count = "…";
    try {
      count = String((await api("GET", `/v1/segments/${s.id}/count`)).count);
    } catch (e) {
      count = e.message;
    }
    return row([cell(s.name), cell(s.expression), cell(count, "n")]);
  }));
  body.replaceChildren(...rows);
}

function wire() {
  document.getElementById("new-list").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = document.getElementById("lists-error");
    error.textContent = "";
    try {
      await api("POST", "/v1/lists", {
        name: document.getElementById("new-list-name").value,
        opt_in: document.getElementById("new-list-opt-in").value,
      });
      document.getElementById("new-list-name").value = "";
      await loadLists();
    } catch (e) {
      error.textContent = e.message;
    }
  });
  document.getElementById("search").addEventListener("submit", (event) => {
    event.preventDefault();
    searchContacts(false);
  });
  document.getElementById("contacts-more").addEventListener("click", () => searchContacts(true));
  document.getElementById("import").addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = document.getElementById("import-file").files[0];
    const list = document.getElementById("import-list").value;
    const status = document.getElementById("import-status");
    if (!file || !list) return;
    const type = /\.(ndjson|jsonl)$/i.test(file.name) ? "application/x-ndjson" : "text/csv";
    status.textContent = "uploading…";
    status.dataset.state = "uploading";
    try {
      const job = await api("POST", `/v1/lists/${list}/imports`, file, type);
      await pollImport(job.id);
    } catch (e) {
      status.textContent = e.message;
      status.dataset.state = "refused";
    }
  });
  document.getElementById("segment-expression").addEventListener("input", scheduleCount);
  document.getElementById("segment-save").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = document.getElementById("segment-count");
    try {
      await api("POST", "/v1/segments", {
        name: document.getElementById("segment-name").value,
        expression: document.getElementById("segment-expression").value,
      });
      document.getElementById("segment-name").value = "";
      await loadSegments();
    } catch (e) {
      out.textContent = e.message;
      out.className = "error";
    }
  });
}

(async () => {
  wire();
  const me = await api("GET", "/v1/lists").catch(() => null);
  if (!me) return;
  await Promise.all([loadLists(), searchContacts(false), loadSegments()]);
  document.body.dataset.loaded = "1";
})();
