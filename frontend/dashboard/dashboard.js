// MoLE fleet dashboard: polls /api/v1/admin/dashboard and draws the fleet, its charts and
// its routing. No library: tables are built with the DOM, charts are SVG paths drawn here.
"use strict";

const API = "/api/v1";
const POLL_MS = 2000;
const GONE_KEEP_MS = 60000;      // a vanished worker stays listed (struck through) this long
const COLORS = ["#2f6fdb", "#d0342c", "#1f9d55", "#c98a00", "#7b4fd6", "#0f8b8d", "#b0467a", "#5d6b82"];
const SVG = "http://www.w3.org/2000/svg";

const state = {
  token: sessionStorage.getItem("mole.dashboard.token"),
  open: new Set(),               // services whose workers are shown
  previous: null,                // last fleet snapshot: worker id -> row
  previousAt: 0,
  served: new Map(),             // worker id -> [served, time] for throughput
  gone: new Map(),               // worker id -> {row, at}
  events: [],
  timer: null,
  last: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function fmt(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

// ---------------------------------------------------------------- login

function showLogin(message) {
  clearTimeout(state.timer);
  state.token = null;
  sessionStorage.removeItem("mole.dashboard.token");
  $("fleet").hidden = true;
  $("logout").hidden = true;
  $("login-panel").hidden = false;
  $("login-error").textContent = message || "";
}

async function login(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const body = new URLSearchParams({ username: form.get("username"), password: form.get("password") });
  const response = await fetch(`${API}/auth/token`, { method: "POST", body });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    $("login-error").textContent = answer.detail || `login failed (${response.status})`;
    return;
  }
  state.token = answer.access_token;
  sessionStorage.setItem("mole.dashboard.token", state.token);
  start();
}

// ---------------------------------------------------------------- polling

function start() {
  $("login-panel").hidden = true;
  $("fleet").hidden = false;
  $("logout").hidden = false;
  poll();
}

async function poll() {
  clearTimeout(state.timer);
  try {
    const response = await fetch(`${API}/admin/dashboard?span=600&bucket=10`, {
      headers: { Authorization: `Bearer ${state.token}` },
    });
    if (response.status === 401) return showLogin("Your session has ended: log in again.");
    if (response.status === 403) return showLogin("This page is for administrators.");
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.detail || `HTTP ${response.status}`);
    render(answer);
    $("status-error").textContent = answer.fleet_error ? `broker: ${answer.fleet_error.detail}` : "";
  } catch (err) {
    $("status-error").textContent = `could not refresh: ${err.message}`;
  }
  state.timer = setTimeout(poll, POLL_MS);
}

// ---------------------------------------------------------------- rendering

function render(data) {
  state.last = data;
  const now = data.now * 1000;
  const fleet = data.fleet || { services: [], counters: {}, broker: {} };
  const current = new Map();
  for (const service of fleet.services) for (const w of service.worker_rows) current.set(String(w.id), w);
  trackChanges(current, now);
  renderTiles(fleet, data.series);
  renderServices(fleet, current, now);
  renderCharts(data.series);
  renderRouting(data.routing || []);
  const broker = fleet.broker || {};
  $("broker-line").textContent = broker.id ? `broker ${broker.id} · up ${fmt(broker.uptime_s / 60, 1)} min` : "";
  $("refresh-line").textContent = `updated ${new Date(now).toLocaleTimeString()}`;
  $("span-label").textContent = `${Math.round(data.series.points * data.series.bucket_s / 60)} min`;
}

function trackChanges(current, now) {
  if (state.previous) {
    for (const [id, row] of state.previous) {
      if (!current.has(id) && !state.gone.has(id)) {
        state.gone.set(id, { row, at: now });
        addEvent("left", `worker ${id} left ${row.service}`, now);
      }
    }
    for (const [id, row] of current) {
      if (!state.previous.has(id)) addEvent("joined", `worker ${id} joined ${row.service}`, now);
      state.gone.delete(id);
    }
  }
  for (const [id, entry] of state.gone) if (now - entry.at > GONE_KEEP_MS) state.gone.delete(id);
  state.previous = current;
}

function addEvent(kind, text, now) {
  state.events.unshift({ kind, text, at: now });
  state.events.length = Math.min(state.events.length, 200);
  const list = $("events");
  list.replaceChildren(...state.events.map((e) =>
    el("li", { class: e.kind }, `${new Date(e.at).toLocaleTimeString()} ${e.text}`)));
}

function throughput(row, now) {
  const id = String(row.id);
  const before = state.served.get(id);
  state.served.set(id, [row.served || 0, now]);
  if (!before || now <= before[1]) return null;
  return Math.max(0, ((row.served || 0) - before[0]) / ((now - before[1]) / 1000));
}

function renderTiles(fleet, series) {
  let workers = 0, slots = 0, queued = 0, inflight = 0;
  for (const s of fleet.services) {
    workers += s.worker_rows.length;
    slots += s.slots || 0;
    queued += s.queue_depth || 0;
    inflight += s.in_flight || 0;
  }
  $("tile-services").textContent = fmt(fleet.services.length);
  $("worker-count").textContent = fmt(workers);
  $("tile-slots").textContent = fmt(slots);
  $("tile-queued").textContent = fmt(queued);
  $("tile-inflight").textContent = fmt(inflight);
  const overall = series.overall;
  const last = lastComplete(overall.requests);
  $("tile-rate").textContent = last === null ? "–" : fmt(overall.requests[last] / series.bucket_s, 1);
  $("tile-p99").textContent = last === null ? "–" : fmt(overall.p99[last], 1);
  $("tile-errors").textContent = fmt(overall.errors.reduce((a, b) => a + b, 0));
}

function lastComplete(values) {
  // the last bucket is still filling: show the one before it when there is one
  if (!values.length) return null;
  return values.length > 1 ? values.length - 2 : 0;
}

function workerMatches(row, filter) {
  if (!filter) return true;
  const meta = row.metadata || {};
  const text = [row.id, row.service, row.address, meta.device, meta.worker_id, row.state].join(" ").toLowerCase();
  return text.includes(filter);
}

function renderServices(fleet, current, now) {
  const filter = $("worker-filter").value.trim().toLowerCase();
  const body = $("services").tBodies[0];
  const rows = [];
  const many = fleet.services.reduce((n, s) => n + s.worker_rows.length, 0) > 40;
  for (const service of fleet.services) {
    const open = filter ? true : state.open.has(service.name) || (!many && !state.open.has(`-${service.name}`));
    const row = el("tr", { class: `service-row${open ? " open" : ""}${service.worker_rows.length ? "" : " no-workers"}`,
                          "data-service": service.name },
      el("td", {}, service.name), el("td", { class: "workers" }, fmt(service.worker_rows.length)),
      el("td", {}, fmt(service.slots)), el("td", { class: "queue" }, fmt(service.queue_depth)),
      el("td", {}, fmt(service.in_flight)), el("td", {}, fmt(service.served)), el("td", {}, fmt(service.errors)));
    row.addEventListener("click", () => toggle(service.name, open));
    rows.push(row);
    if (!open) continue;
    const workers = service.worker_rows.filter((w) => workerMatches(w, filter));
    for (const [id, entry] of state.gone) if (entry.row.service === service.name) workers.push({ ...entry.row, state: "gone" });
    if (workers.length) rows.push(workerHeader());
    for (const w of workers) rows.push(workerRow(w, now));
  }
  body.replaceChildren(...rows);
}

function workerHeader() {
  return el("tr", { class: "worker-head" },
    ...["worker", "device · address", "slots", "last heartbeat", "in flight", "served", "throughput"]
      .map((name) => el("td", {}, name)));
}

function workerRow(w, now) {
  const meta = w.metadata || {};
  const rate = w.state === "gone" ? null : throughput(w, now);
  const adapters = Array.isArray(meta.adapters) ? `${meta.adapters.length} adapters` : "";
  const details = [meta.device, adapters, w.address].filter(Boolean).join(" · ");
  return el("tr", { class: `worker-row${w.state === "gone" ? " gone" : ""}`, "data-worker-id": String(w.id) },
    el("td", {}, String(w.id), " ", el("span", { class: `state ${w.state}` }, w.state)),
    el("td", { class: "muted" }, details),
    el("td", {}, fmt(w.slots)),
    el("td", {}, w.last_heartbeat_s === undefined ? "" : `♥ ${fmt(w.last_heartbeat_s, 1)} s`),
    el("td", {}, fmt(w.in_flight)),
    el("td", {}, fmt(w.served)),
    el("td", {}, rate === null ? "" : `${fmt(rate, 1)}/s`));
}

function toggle(name, wasOpen) {
  if (wasOpen) { state.open.delete(name); state.open.add(`-${name}`); }
  else { state.open.add(name); state.open.delete(`-${name}`); }
  if (state.last) render(state.last);
}

// ---------------------------------------------------------------- charts

function chartSeries(series) {
  const group = $("chart-group").value;
  if (group === "overall") return [["all", series.overall]];
  return Object.entries(series[group] || {});
}

function renderCharts(series) {
  const lines = chartSeries(series);
  const perSecond = (values) => values.map((v) => (v === null ? null : v / series.bucket_s));
  drawChart($("chart-rate"), lines.map(([name, s], i) => ({ name, color: COLORS[i % COLORS.length], values: perSecond(s.requests) })), series);
  const latency = [];
  lines.forEach(([name, s], i) => {
    latency.push({ name: `${name} p50`, color: COLORS[i % COLORS.length], values: s.p50, dashed: true });
    latency.push({ name: `${name} p99`, color: COLORS[i % COLORS.length], values: s.p99 });
  });
  drawChart($("chart-latency"), latency, series);
  drawChart($("chart-errors"), lines.map(([name, s], i) => ({ name, color: COLORS[i % COLORS.length], values: perSecond(s.errors) })), series);
  $("chart-legend").replaceChildren(...lines.map(([name], i) => {
    const item = el("span", {}, name);
    item.style.setProperty("--c", COLORS[i % COLORS.length]);
    return item;
  }));
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function drawChart(svg, lines, series) {
  const width = svg.clientWidth || 400, height = svg.clientHeight || 160;
  const left = 38, right = 6, top = 6, bottom = 16;
  const points = series.points;
  let max = 0;
  for (const line of lines) for (const v of line.values) if (v !== null && v > max) max = v;
  max = niceMax(max);
  const x = (i) => left + (points <= 1 ? 0 : (i / (points - 1)) * (width - left - right));
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  const nodes = [];
  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    nodes.push(svgEl("line", { class: "axis", x1: left, x2: width - right, y1: y(value), y2: y(value) }));
    const label = svgEl("text", { x: left - 4, y: y(value) + 3, "text-anchor": "end" });
    label.textContent = fmt(value, value < 10 && value % 1 ? 1 : 0);
    nodes.push(label);
  }
  const span = svgEl("text", { x: left, y: height - 3 });
  span.textContent = `−${Math.round(points * series.bucket_s / 60)} min`;
  const nowLabel = svgEl("text", { x: width - right, y: height - 3, "text-anchor": "end" });
  nowLabel.textContent = "now";
  nodes.push(span, nowLabel);
  for (const line of lines) {
    let d = "";
    let pen = false;
    line.values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    if (!d) continue;
    const path = svgEl("path", { d, stroke: line.color });
    if (line.dashed) path.setAttribute("stroke-dasharray", "4 3");
    const title = svgEl("title", {});
    title.textContent = line.name;
    path.append(title);
    nodes.push(path);
  }
  svg.replaceChildren(...nodes);
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

// ---------------------------------------------------------------- routing

function renderRouting(routes) {
  const max = routes.reduce((m, r) => Math.max(m, r.requests), 0) || 1;
  $("routing").tBodies[0].replaceChildren(...routes.map((r) => {
    const bar = el("div", { class: "bar" });
    bar.style.width = `${(100 * r.requests) / max}%`;
    return el("tr", { "data-route": `${r.language}/${r.task}/${r.model}` },
      el("td", {}, r.language), el("td", {}, r.task), el("td", {}, r.model),
      el("td", {}, fmt(r.requests)), el("td", {}, fmt(r.errors)), el("td", { style: "width:30%" }, bar));
  }));
}

// ---------------------------------------------------------------- wiring

$("login-form").addEventListener("submit", login);
$("logout").addEventListener("click", () => showLogin(""));
$("worker-filter").addEventListener("input", () => state.last && render(state.last));
$("chart-group").addEventListener("change", () => state.last && renderCharts(state.last.series));
if (state.token) start(); else showLogin("");
