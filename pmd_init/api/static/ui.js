// pmd's dashboard. Plain JavaScript, no build step, nothing loaded from elsewhere.
// Live through /ws (state, health, readiness, metrics) and the SSE log streams, which it
// reads with fetch so that the API key travels in a header. It asks the server again
// only when an event says something changed (or a connection comes back): no polling.
"use strict";

const API = "/api/v1/daemon";
const KEY_ITEM = "pmd.key";
const LOG_LINES = 500;   // per pane
const EVENTS_MAX = 500;  // kept for the session
const REFRESH_DELAY = 300;  // ms after the last event before reading the views again
const ALIVE = ["STARTING", "RUNNING", "STOPPING", "UNKNOWN"];
const LEVELS = ["open", "metrics", "read", "operate", "admin"];  // docs/access.md
const ORDER = ["RUNNING", "STARTING", "BACKOFF", "STOPPING", "UNKNOWN", "FATAL", "EXITED",
               "STOPPED"];

const $ = (id) => document.getElementById(id);
const S = {
  needsKey: document.querySelector('meta[name="pmd-auth"]').content === "key",
  key: null,
  me: null,             // GET /whoami: who pmd takes this page for, and its level
  programs: new Map(),  // "p:<id>" or "q:<temporary id>" -> entry
  live: new Map(),      // same keys -> figures from /ws: { cpu, mem, health, ports }
  rows: new Map(),      // same keys -> <tr> in a list
  events: [],
  ws: null, wsDelay: 1000, wsTimer: 0,
  refreshTimer: 0, refreshing: null, refreshAgain: false,
  view: { kind: "list" },
  logs: null,           // { controller, key, port }
  ticker: 0,
  started: false,
};

// ---- helpers ---------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) node.append(child);
  return node;
}

function b64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (S.key) h["X-API-Key"] = S.key;
  return h;
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, options) {
  const opts = Object.assign({ cache: "no-store" }, options || {});
  opts.headers = headers(opts.body ? { "Content-Type": "application/json" } : {});
  const response = await fetch(path, opts);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const error = (body && body.error) || {};
    if (response.status === 401 && S.needsKey) askKey(error.message || "the key was refused");
    throw new ApiError(response.status, error.code || "HTTP_" + response.status,
                       error.message || response.statusText);
  }
  return body;
}

function hms(seconds) {
  if (seconds === null || seconds === undefined || seconds < 0) return "";
  seconds = Math.floor(seconds);
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
  const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${m}m ${s}s`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function parseHms(text) {
  if (!text) return null;
  const parts = String(text).split(":").map(Number);
  if (parts.length !== 3 || parts.some(isNaN)) return null;
  return parts[0] * 3600 + parts[1] * 60 + parts[2];
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function announce(text) { $("announce").textContent = text; }

// ---- the key ---------------------------------------------------------------------

function askKey(reason) {
  S.key = null;
  S.me = null;
  showWho();
  sessionStorage.removeItem(KEY_ITEM);
  closeWs();
  stopLogs();
  $("key-error").textContent = reason ? "The key was refused: " + reason + "." : "";
  show("login");
  $("forget").hidden = true;
  $("verdicts").hidden = true;
  $("key").focus();
}

async function submitKey(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) { $("key-error").textContent = "Enter the API key."; return; }
  S.key = key;
  if (!(await identify())) return;
  sessionStorage.setItem(KEY_ITEM, key);
  $("key").value = "";
  $("key-error").textContent = "";
  begin();
}

// ---- who the page acts as --------------------------------------------------------

function may(level) {
  return S.me !== null && LEVELS.indexOf(S.me.level) >= LEVELS.indexOf(level);
}

function showWho() {
  const node = $("who");
  node.hidden = S.me === null;
  node.textContent = S.me ? `as ${S.me.identity || S.me.kind.replace("-", " ")} (${S.me.level})` : "";
}

// Asks /whoami (open) who pmd takes this page for. Below `read` the page has nothing to
// show: a read route is asked once for the server's own reason, and the key prompt comes
// back with it. True when the page may go on.
async function identify() {
  let me;
  try {
    me = await api(API + "/whoami");
    if (LEVELS.indexOf(me.level) < LEVELS.indexOf("read")) await api(API + "/status");
  } catch (e) {
    if (!(e instanceof ApiError)) $("key-error").textContent = "pmd did not answer: " + e.message;
    else if (e.status !== 401 || !S.needsKey) askKey(e.message);  // else api() has asked
    return false;
  }
  S.me = me;
  showWho();
  if (S.view.kind !== "list") renderDetail();
  return true;
}

// ---- reading the views ------------------------------------------------------------

function instanceFrom(status, now) {
  const uptime = parseHms(status.uptime);
  return {
    port: status.port === undefined ? null : status.port,
    state: status.status, pid: status.pid || null,
    started: uptime === null ? null : now - uptime * 1000,
    restarts: status.restarts || 0,
    exit_code: status.exit_code === undefined ? null : status.exit_code,
    ready: status.ready === undefined ? null : status.ready,
    since: status.since || null,
    retry_at: status.retry_at || null, reason: status.backoff_reason || null,
  };
}

function live(key) {
  // /ws's figures (health, CPU, memory) by program; they may come before the views do
  let figures = S.live.get(key);
  if (!figures) S.live.set(key, figures = { cpu: null, mem: null, health: null, ports: {} });
  return figures;
}

async function refresh() {
  if (S.refreshing) { S.refreshAgain = true; return S.refreshing; }
  S.refreshing = (async () => {
    try {
      const [programs, quick] = await Promise.all([
        api(API + "/programs?include_status=true"), api(API + "/quick-start")]);
      const now = Date.now();
      const next = new Map();
      for (const p of programs.programs) {
        const status = p.status;
        const instances = status.type === "port-range"
          ? status.instances.map((i) => instanceFrom(i, now)) : [instanceFrom(status, now)];
        const spec = Object.assign({}, p);
        delete spec.status;
        const key = "p:" + p.id;
        next.set(key, {
          key, kind: "p", id: p.id, name: p.name, spec, instances,
          state: status.status, ranged: status.type === "port-range",
          waiting: status.waiting_for || null, blocked: status.blocked || null,
        });
      }
      for (const q of quick.ephemeral_programs) {
        const key = "q:" + q.temporary_id;
        const inst = instanceFrom(Object.assign({}, q, { status: q.status.toUpperCase() }), now);
        next.set(key, {
          key, kind: "q", id: q.temporary_id, name: q.name, spec: q, instances: [inst],
          state: inst.state, ranged: false,
        });
      }
      S.programs = next;
      render();
      await verdicts();
    } catch (e) {
      if (e instanceof ApiError && e.status === 403) askKey(e.message);  // lowered below read
      else if (!(e instanceof ApiError)) setConn("error", "pmd did not answer");
    }
  })();
  try { await S.refreshing; } finally {
    S.refreshing = null;
    if (S.refreshAgain) { S.refreshAgain = false; scheduleRefresh(); }
  }
}

function scheduleRefresh() {
  clearTimeout(S.refreshTimer);
  S.refreshTimer = setTimeout(refresh, REFRESH_DELAY);
}

async function verdicts() {
  const health = await api(API + "/health");
  const ready = health.readiness;
  const box = $("verdicts");
  box.hidden = false;
  set($("v-health"), health.status === "ok" ? `ok (version ${health.version}, pid ${health.pid})`
      : health.status, health.status === "ok" ? "good" : "bad");
  const counts = ready.programs;
  const missing = (ready.not_ready || []).map((r) => r.name + (r.reason ? ` (${r.reason})` : ""));
  set($("v-ready"), ready.ready ? `ready (${counts.ready} of ${counts.total})`
      : `not ready: ${counts.not_ready} of ${counts.total}` +
        (missing.length ? " waiting: " + missing.join(", ") : ""), ready.ready ? "good" : "warn");
  set($("v-config"), health.config_problem || "ok", health.config_problem ? "bad" : "good");
  const bad = Object.entries(health.storage || {}).filter(([, v]) => !v.ok);
  set($("v-storage"), bad.length ? bad.map(([k, v]) => `${k}: ${v.error || v.code}`).join("; ")
      : "ok", bad.length ? "bad" : "good");
  const cleaned = health.ephemeral_cleaned || [];
  set($("v-cleaned"), cleaned.length ? `${cleaned.length} quick-start entr${cleaned.length === 1
      ? "y" : "ies"}: ` + cleaned.slice(-5).map(describeCleaned).join(", ") : "nothing",
      cleaned.length ? "warn" : "good");
}

function describeCleaned(item) {
  if (typeof item !== "object" || item === null) return String(item);
  return [item.name || item.temporary_id, item.reason].filter(Boolean).join(" ");
}

function set(node, text, tone) {
  node.textContent = text;
  node.dataset.tone = tone;
}

// ---- /ws ---------------------------------------------------------------------------

function setConn(state, text) {
  const node = $("conn");
  node.dataset.state = state;
  node.textContent = text;
}

function closeWs() {
  clearTimeout(S.wsTimer);
  if (S.ws) { S.ws.onclose = null; S.ws.close(); S.ws = null; }
}

function connect() {
  closeWs();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // The key goes as a subprotocol (a browser cannot set headers here), never in the URL.
  const protocols = S.key ? ["pmd", "pmd.key." + b64url(S.key)] : ["pmd"];
  const ws = new WebSocket(`${scheme}://${location.host}/ws?interval=2`, protocols);
  S.ws = ws;
  ws.onopen = async () => {
    const again = S.wsDelay > 1000;  // back after a break: the identities may have changed
    S.wsDelay = 1000;
    setConn("live", "live");
    if (again && !(await identify())) return;
    refresh();
  };
  ws.onmessage = (m) => {
    let message;
    try { message = JSON.parse(m.data); } catch (e) { return; }
    onMessage(message);
  };
  ws.onclose = () => {
    S.ws = null;
    setConn("down", `disconnected, trying again in ${Math.round(S.wsDelay / 1000)} s`);
    S.wsTimer = setTimeout(connect, S.wsDelay);
    S.wsDelay = Math.min(S.wsDelay * 2, 15000);
  };
}

function keyOf(id) { return (typeof id === "string" ? "q:" : "p:") + id; }

function onMessage(m) {
  if (m.type === "snapshot") { usage(m.processes, true); return; }
  if (m.type === "metrics") { usage(m.processes, false); return; }
  if (m.type === "dropped") { scheduleRefresh(); return; }
  const entry = S.programs.get(keyOf(m.id));
  const inst = entry && (entry.instances.find((i) => i.port === (m.port ?? null))
                         || (entry.ranged ? null : entry.instances[0]));
  if (m.type === "state_change") {
    record({ t: m.timestamp, key: keyOf(m.id), name: m.name, port: m.port,
             text: `${m.from} \u2192 ${m.to}` + (m.exit_code !== null ? `, exit ${m.exit_code}` : "")
               + (m.pid ? `, pid ${m.pid}` : "") + (m.reason ? ` (${m.reason})` : "") });
    announce(`${m.instance || m.name}: ${m.to}`);
    if (inst) {
      inst.state = m.to;
      inst.pid = ALIVE.includes(m.to) ? m.pid : null;
      if (m.to === "STARTING" || (m.to === "RUNNING" && inst.started === null)) {
        inst.started = m.timestamp * 1000;
      }
      if (!ALIVE.includes(m.to)) { inst.started = null; if (inst.ready !== null) inst.ready = false; }
      if (m.exit_code !== null) inst.exit_code = m.exit_code;
      inst.since = new Date(m.timestamp * 1000).toISOString();
      entry.state = entry.ranged ? overall(entry) : m.to;
      live(entry.key).health = healthOf(entry);
      render();
    }
  } else if (m.type === "health") {
    record({ t: Date.parse(m.time) / 1000, key: keyOf(m.id), name: m.name, port: m.port,
             text: `health ${m.from} \u2192 ${m.to}` });
    const figures = live(keyOf(m.id));
    figures.ports[m.port ?? ""] = m.to;
    figures.health = entry ? healthOf(entry) : m.to;
    render();
  } else if (m.type === "ready") {
    record({ t: m.timestamp, key: keyOf(m.id), name: m.name, port: m.port,
             text: `ready (${m.via})` });
    if (inst) { inst.ready = true; render(); }
  } else if (m.type === "waiting") {
    if (m.blocked) {
      record({ t: m.timestamp, key: keyOf(m.id), name: m.name, port: null,
               text: `blocked: ${m.blocked}` });
    }
    if (entry) {
      entry.waiting = m.waiting_for.length ? m.waiting_for : null;
      entry.blocked = m.blocked;
      render();
    }
  } else {
    return;
  }
  scheduleRefresh();  // restarts, readiness verdicts and the like, read once things settle
}

function overall(entry) {
  const states = entry.instances.map((i) => i.state);
  return ORDER.find((s) => states.includes(s)) || states[0];
}

function healthOf(entry) {
  const ports = live(entry.key).ports;
  const running = entry.instances.filter((i) => i.state === "RUNNING")
    .map((i) => ports[i.port ?? ""]);
  if (!running.length) return "unknown";
  if (running.includes("unhealthy")) return "unhealthy";
  return running.every((h) => h === "healthy") ? "healthy" : "unknown";
}

function usage(processes, snapshot) {
  for (const p of processes) {
    const figures = live(keyOf(p.id));
    figures.cpu = p.cpu_usage;
    figures.mem = p.memory_usage;
    if (snapshot) {
      figures.health = p.health_status;
      for (const i of p.instances || []) figures.ports[i.port] = i.health_status;
      if (!p.instances) figures.ports[""] = p.health_status;
    }
  }
  render();
}

function record(event) {
  S.events.unshift(event);
  if (S.events.length > EVENTS_MAX) S.events.length = EVENTS_MAX;
  renderEvents();
}

// ---- rendering ---------------------------------------------------------------------

function stateBadge(state) {
  return el("span", { class: "state s-" + String(state || "unknown").toLowerCase(),
                      text: state || "?" });
}

function readyText(entry) {
  const values = entry.instances.map((i) => i.ready).filter((v) => v !== null);
  if (!values.length) return "";
  return values.every(Boolean) ? "ready" : "not ready";
}

function uptimeOf(entry) {
  const starts = entry.instances.map((i) => i.started).filter((s) => s !== null);
  if (!starts.length) return "";
  return hms((Date.now() - Math.min(...starts)) / 1000);
}

function cells(entry) {
  const first = entry.instances.find((i) => i.pid) || entry.instances[0] || {};
  const link = el("a", { href: `#/${entry.kind}/${encodeURIComponent(entry.id)}`,
                         text: entry.name });
  const name = el("td", { class: "name", "data-label": "Name" }, link);
  if (entry.ranged) {
    const ports = entry.instances.map((i) => `${i.port} ${i.state}`).join(", ");
    name.append(el("div", { class: "ports", text: ports }));
  }
  if (entry.waiting) {
    name.append(el("div", { class: "ports", text: (entry.blocked ? "blocked: " : "waiting for ")
      + (entry.blocked || [].concat(entry.waiting).join(", ")) }));
  }
  const figures = live(entry.key);
  const alive = entry.instances.some((i) => i.pid);
  const cpu = figures.cpu === null || !alive ? "" : figures.cpu.toFixed(1) + " %";
  const mem = figures.mem === null || !alive ? "" : bytes(figures.mem);
  const quick = entry.kind === "q";
  return [
    name,
    el("td", { class: "state-cell", "data-label": "State" }, stateBadge(entry.state)),
    el("td", { class: "pid", "data-label": "PID", text: first.pid || "" }),
    el("td", { class: "uptime", "data-label": "Uptime", text: uptimeOf(entry) }),
    quick ? el("td", { "data-label": "Exit code", text: first.exit_code ?? "" })
          : el("td", { class: "restarts", "data-label": "Restarts",
                       text: entry.instances.reduce((n, i) => n + i.restarts, 0) }),
    el("td", { "data-label": "CPU", text: cpu }),
    el("td", { "data-label": "Memory", text: mem }),
    quick ? el("td", { "data-label": "Expires", text: entry.spec.expires_at
                       ? clock(Date.parse(entry.spec.expires_at) / 1000) : "" })
          : el("td", { "data-label": "Ready", text: readyText(entry) }),
    quick ? el("td", { class: "cmd", "data-label": "Command", text: entry.spec.command })
          : el("td", { "data-label": "Health", text: entry.spec.health_check
                       ? (figures.health || "unknown") : "" }),
  ];
}

function renderList() {
  const bodies = { p: $("programs"), q: $("quick") };
  const order = [...S.programs.values()];
  for (const [key, row] of S.rows) {
    if (!S.programs.has(key)) { row.remove(); S.rows.delete(key); }
  }
  for (const entry of order) {
    let row = S.rows.get(entry.key);
    if (!row) {
      row = el("tr", { "data-key": entry.key });
      S.rows.set(entry.key, row);
    }
    row.dataset.name = entry.name;
    row.dataset.state = entry.state;
    const fresh = cells(entry);
    // Update cell by cell, keeping the name's link: a focused link stays focused.
    if (row.children.length !== fresh.length) row.replaceChildren(...fresh);
    else fresh.forEach((cell, i) => {
      const old = row.children[i];
      if (i > 0) { if (old.outerHTML !== cell.outerHTML) old.replaceWith(cell); return; }
      const link = old.firstChild;
      link.textContent = entry.name;
      link.setAttribute("href", cell.firstChild.getAttribute("href"));
      old.replaceChildren(link, ...[...cell.children].slice(1));
    });
    bodies[entry.kind].append(row);  // in the order of the views (by id, then by age)
  }
  $("programs-empty").hidden = order.some((e) => e.kind === "p");
  $("quick-empty").hidden = order.some((e) => e.kind === "q");
}

function renderDetail() {
  const entry = S.programs.get(S.view.key);
  if (!entry) {
    $("d-title").textContent = "This program is gone.";
    $("d-instances").replaceChildren();
    for (const id of ["b-start", "b-stop", "b-restart"]) $(id).disabled = true;
    return;
  }
  const title = $("d-title");
  title.replaceChildren(entry.name + " ", stateBadge(entry.state));
  const rows = entry.instances.map((i) => el("tr", { "data-port": i.port ?? "" },
    el("td", { "data-label": "Instance", text: i.port ?? entry.name }),
    el("td", { class: "state-cell", "data-label": "State" }, stateBadge(i.state)),
    el("td", { class: "pid", "data-label": "PID", text: i.pid || "" }),
    el("td", { class: "uptime", "data-label": "Uptime",
               text: i.started === null ? "" : hms((Date.now() - i.started) / 1000) }),
    el("td", { class: "restarts", "data-label": "Restarts", text: i.restarts }),
    el("td", { "data-label": "Exit code", text: i.exit_code ?? "" }),
    el("td", { "data-label": "Ready", text: i.ready === null ? "" : i.ready ? "ready" : "not ready" }),
    el("td", { "data-label": "Health", text: entry.spec.health_check
               ? (live(entry.key).ports[i.port ?? ""] || "unknown") : "" }),
    el("td", { "data-label": "Since", text: i.since ? clock(Date.parse(i.since) / 1000) : "" })));
  $("d-instances").replaceChildren(...rows);
  const alive = entry.instances.some((i) => ALIVE.includes(i.state));
  const quick = entry.kind === "q";
  if (!S.busy) {
    $("b-start").disabled = quick;
    $("b-restart").disabled = quick;
    $("b-stop").disabled = !alive && !quick;
  }
  // below `operate` the actions are not offered at all (docs/access.md)
  const operate = may("operate");
  $("actions").hidden = !operate;
  $("b-start").hidden = $("b-restart").hidden = quick || !operate;
  $("b-stop").hidden = !operate;
  $("b-stop").textContent = quick ? "Stop and remove" : "Stop";
  const config = JSON.stringify(entry.spec, null, 2);
  if ($("d-config").textContent !== config) $("d-config").textContent = config;
  const select = $("d-port");
  $("d-port-label").hidden = !entry.ranged;
  if (entry.ranged && select.options.length !== entry.instances.length) {
    select.replaceChildren(...entry.instances.map((i) => el("option", { value: i.port, text: i.port })));
  }
  if (!S.logs || S.logs.key !== entry.key) startLogs(entry);
}

function renderEvents() {
  const item = (e) => el("li", {}, el("time", { text: clock(e.t) }), " ",
    el("strong", { text: e.name + (e.port ? ":" + e.port : "") }), " " + e.text);
  $("events").replaceChildren(...S.events.slice(0, 100).map(item));
  if (S.view.kind !== "list") {
    $("d-events").replaceChildren(...S.events.filter((e) => e.key === S.view.key).map(item));
  }
}

function render() {
  if (S.view.kind === "list") renderList(); else renderDetail();
  clearInterval(S.ticker);
  // Uptimes count up on the page's own clock, only while something runs: nothing is asked.
  const running = [...S.programs.values()].some((e) => e.instances.some((i) => i.started !== null));
  if (running) S.ticker = setInterval(tick, 1000);
}

function tick() {
  if (S.view.kind === "list") {
    for (const entry of S.programs.values()) {
      const row = S.rows.get(entry.key);
      const cell = row && row.querySelector(".uptime");
      if (cell) cell.textContent = uptimeOf(entry);
    }
  } else {
    const entry = S.programs.get(S.view.key);
    if (!entry) return;
    for (const row of $("d-instances").children) {
      const inst = entry.instances.find((i) => String(i.port ?? "") === row.dataset.port);
      if (inst) row.querySelector(".uptime").textContent =
        inst.started === null ? "" : hms((Date.now() - inst.started) / 1000);
    }
  }
}

function show(section) {
  for (const id of ["login", "list", "detail"]) $(id).hidden = id !== section;
  $("events-panel").hidden = section !== "list";
}

// ---- a program's page: logs and actions --------------------------------------------

function stopLogs() {
  if (S.logs) { S.logs.controller.abort(); S.logs = null; }
}

function startLogs(entry) {
  const port = entry.ranged ? Number($("d-port").value || entry.instances[0].port) : null;
  if (S.logs && S.logs.key === entry.key && S.logs.port === port) return;
  stopLogs();
  const controller = new AbortController();
  S.logs = { controller, key: entry.key, port };
  const base = entry.kind === "p" ? `${API}/programs/${entry.id}`
    : `${API}/quick-start/${encodeURIComponent(entry.id)}`;
  for (const type of ["stdout", "stderr"]) {
    const pane = $("log-" + type);
    pane.replaceChildren();
    const query = `?type=${type}&lines=100` + (port !== null ? `&port=${port}` : "");
    follow(base + "/logs/stream" + query, pane, controller.signal);
  }
}

// Server-Sent Events read through fetch (EventSource cannot send the key as a header).
async function follow(url, pane, signal) {
  let last = null, retry = 1000;
  while (!signal.aborted) {
    try {
      const extra = last === null ? {} : { "Last-Event-ID": last };
      const response = await fetch(url, { headers: headers(extra), signal, cache: "no-store" });
      if (!response.ok) {
        let message = response.statusText;
        try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
        if (response.status === 401 && S.needsKey) { askKey(message); return; }
        note(pane, message);
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = parseEvent(block);
          if (event.retry) retry = event.retry;
          if (event.id !== null) last = event.id;
          if (event.type === "end") { note(pane, "the program was removed"); return; }
          if (event.type === "message" && event.data !== null) lines(pane, event.data);
          if (event.type === "reset") note(pane, "log file rotated");
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, retry));
  }
}

function parseEvent(block) {
  const event = { type: "message", data: null, id: null, retry: null };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") event.data = event.data === null ? value : event.data + "\n" + value;
    else if (field === "event") event.type = value;
    else if (field === "id") event.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) event.retry = Number(value);
  }
  return event;
}

function lines(pane, text) {
  const atEnd = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 4;
  const received = Date.now() / 1000;
  for (const line of text.split("\n")) {
    // data-received: when this page got the line (shown as its title)
    pane.append(el("li", { text: line, "data-received": received.toFixed(3),
                           title: "received " + clock(received) }));
  }
  while (pane.children.length > LOG_LINES) pane.firstChild.remove();
  if (atEnd) pane.scrollTop = pane.scrollHeight;
}

function note(pane, text) {
  pane.append(el("li", { class: "note", text: "\u2014 " + text + " \u2014" }));
}

async function act(action) {
  const entry = S.programs.get(S.view.key);
  if (!entry) return;
  const port = entry.ranged ? Number($("d-port").value) : null;
  const what = entry.name + (port !== null ? ":" + port : "");
  if (action === "stop") {
    const text = entry.kind === "q"
      ? `Stop ${what} and remove it? A quick-start program cannot be started again.`
      : `Stop ${what}? It stays stopped until started again.`;
    if (!(await confirmStop(text))) return;
  }
  const path = entry.kind === "q" ? `${API}/quick-start/${encodeURIComponent(entry.id)}/stop`
    : `${API}/programs/${entry.id}/${action}`;
  const body = entry.kind === "q" ? undefined : JSON.stringify(port !== null ? { port } : {});
  const buttons = ["b-start", "b-stop", "b-restart"].map($);
  S.busy = true;
  buttons.forEach((b) => { b.disabled = true; });
  $("d-result").textContent = `${action}: ${what}\u2026`;
  try {
    await api(path, { method: "POST", body });
    $("d-result").textContent = `${action}: ${what}: done`;
  } catch (e) {
    $("d-result").textContent = `${action}: ${what}: refused: ${e.message}`;
  } finally {
    S.busy = false;
    renderDetail();
  }
}

function confirmStop(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (ok) => {
      dialog.removeEventListener("close", onClose);
      $("confirm-ok").onclick = $("confirm-cancel").onclick = null;
      if (dialog.open) dialog.close();
      resolve(ok);
    };
    const onClose = () => done(false);
    dialog.addEventListener("close", onClose);
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

// ---- navigation --------------------------------------------------------------------

function route() {
  if (!S.started) return;
  const match = /^#\/([pq])\/(.+)$/.exec(location.hash);
  if (!match) {
    S.view = { kind: "list" };
    stopLogs();
    show("list");
    renderList();
    renderEvents();
    return;
  }
  const id = decodeURIComponent(match[2]);
  S.view = { kind: match[1], key: match[1] + ":" + id };
  $("d-result").textContent = "";
  $("d-port").replaceChildren();
  show("detail");
  renderDetail();
  renderEvents();
  const entry = S.programs.get(S.view.key);
  if (entry) startLogs(entry); else stopLogs();
  $("d-title").focus();
}

async function begin() {
  if (S.me === null && !(await identify())) return;
  S.started = true;
  $("forget").hidden = !S.needsKey;
  setConn("connecting", "connecting");
  connect();
  await refresh();
  route();
}

function init() {
  $("key-form").addEventListener("submit", submitKey);
  $("forget").addEventListener("click", () => askKey(""));
  $("b-start").addEventListener("click", () => act("start"));
  $("b-stop").addEventListener("click", () => act("stop"));
  $("b-restart").addEventListener("click", () => act("restart"));
  $("d-port").addEventListener("change", () => {
    const entry = S.programs.get(S.view.key);
    if (entry) startLogs(entry);
  });
  $("d-title").setAttribute("tabindex", "-1");
  window.addEventListener("hashchange", route);
  S.key = sessionStorage.getItem(KEY_ITEM);
  if (S.needsKey && !S.key) { askKey(""); return; }
  begin();
}

init();
