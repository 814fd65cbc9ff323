// The execgo operator page: plain ES2020 (a module, so strict and with
// its own scope), no framework, no build step.  It uses only the public
// JSON API, with the user's bearer token when the runtime asks for one.
// Everything the API answers reaches the page as text (text nodes,
// textContent, attribute values), never as markup.

// The API lives where the page does (a proxy's path prefix included).
const BASE = location.pathname.replace(/[^/]*$/, "").replace(/ui\/$/, "");
const TOKEN_KEY = "execgo.token";
const OWNER_KEY = "execgo.owner";
const STATUSES = ["accepted", "running", "success", "failed", "cancelled"];
const TERMINAL = new Set(["success", "failed", "cancelled"]);
const TERMINAL_EVENTS = new Set(["finished", "failed", "cancelled"]);
const OUTPUT_CAP = 1 << 20;
const LIST_POLL_MS = 1000;
const RUNTIME_POLL_MS = 2000;
const HISTORY = 150;
const SVG_NS = "http://www.w3.org/2000/svg";
const EVENT_CLASS = {
  started: "e-run", finished: "e-ok", failed: "e-bad", timeout_triggered: "e-bad", pids_limit_reached: "e-bad",
  cancelled: "e-warn", kill_requested: "e-warn", degraded: "e-warn", recovered: "e-warn",
};
const $ = (selector) => document.querySelector(selector);

// ---- DOM: attributes are set as values, and a child that is not a node
// becomes a text node.

function h(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : String(value));
  }
  return add(node, children);
}

function add(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function put(node, ...children) {
  node.textContent = "";
  return add(node, children);
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

const card = (title, ...children) => h("section", { class: "card" }, h("h2", {}, title), children);
const kv = (pairs) => h("dl", { class: "kv" }, pairs.map(([key, value]) => [h("dt", {}, key), h("dd", {}, value)]));
const taskLink = (id) => h("a", { href: "#/tasks/" + encodeURIComponent(id), title: id }, id);

function table(head, rows, attributes) {
  const cells = head.map((c) => (Array.isArray(c) ? h("th", { class: c[1] }, c[0]) : h("th", {}, c)));
  return h("div", { class: "table-wrap" }, h("table", attributes, h("thead", {}, h("tr", {}, cells)), h("tbody", {}, rows)));
}

function badge(status) {
  const known = STATUSES.includes(status) || ["alive", "lost", "left"].includes(status);
  return h("span", { class: "badge s-" + (known ? status : "unknown") }, status);
}

function chips(map, limit) {
  const entries = Object.entries(map || {});
  const shown = entries.slice(0, limit).map(([k, v]) => h("span", { class: "chip", title: `${k}=${v}` }, `${k}=${v}`));
  return entries.length > limit ? [shown, h("span", { class: "muted" }, `+${entries.length - limit}`)] : shown;
}

function bar(used, capacity, extra) {
  const share = capacity > 0 ? Math.min(100, (100 * used) / capacity) : 100;
  const fill = h("div", { class: "fill" + (share >= 95 ? " full" : share >= 80 ? " warn" : "") });
  fill.style.width = share.toFixed(1) + "%";
  const meter = { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": capacity, "aria-valuenow": used };
  return h("div", Object.assign(meter, extra), fill);
}

// ---- Formatting

const missing = (v) => v === undefined || v === null;

function fmtBytes(n) {
  if (missing(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i += 1) n /= 1024;
  return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
}

function fmtDuration(ms) {
  if (missing(ms) || isNaN(ms)) return "–";
  if (ms < 1000) return Math.round(ms) + " ms";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  const hours = Math.floor(m / 60);
  return hours < 48 ? `${hours} h ${m % 60} min` : `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

function fmtAgo(iso) {
  const t = Date.parse(iso);
  if (isNaN(t)) return "–";
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  return s < 86400 ? Math.floor(s / 3600) + " h ago" : new Date(t).toLocaleDateString();
}

function fmtTime(iso) {
  const t = Date.parse(iso);
  return isNaN(t) ? (iso ? String(iso) : "–") : new Date(t).toLocaleString();
}

function fmtClock(iso) {
  const d = new Date(Date.parse(iso));
  return isNaN(d) ? String(iso) : d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

const fmtCount = (n) => (missing(n) ? "–" : Number(n).toLocaleString());
const fmtRate = (n) => n.toFixed(n >= 10 ? 0 : n >= 1 ? 1 : 2);
const yesNo = (b) => (b ? "yes" : "no");

// ---- Storage (either may be disabled) and waiting

function stored(area, key) {
  try { return area.getItem(key) || ""; } catch (e) { return ""; }
}

function keep(area, key, value) {
  try { if (value) area.setItem(key, value); else area.removeItem(key); } catch (e) { /* not kept */ }
}

const token = () => stored(sessionStorage, TOKEN_KEY);
const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

// ---- The API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Not worth showing: a request given up, or one that asked for a token.
const quiet = (e) => e.name === "AbortError" || (e instanceof ApiError && e.status === 401);
const refused = (e) => e instanceof ApiError && e.status >= 400 && e.status < 500;
const taskPath = (id, rest) => "api/v1/tasks/" + encodeURIComponent(id) + (rest || "");

async function request(path, options) {
  const { method = "GET", headers = {}, signal } = options || {};
  const sent = Object.assign({}, headers);
  const bearer = token();
  if (bearer) sent.Authorization = "Bearer " + bearer;
  let response;
  try {
    response = await fetch(BASE + path, { method, headers: sent, signal, cache: "no-store", credentials: "omit" });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    connection(false);
    throw new ApiError(0, "unreachable", "Cannot reach the runtime; retrying.");
  }
  connection(true);
  if (response.ok) return response;
  let code = "http_" + response.status;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) { code = String(body.error.code); message = String(body.error.message); }
  } catch (e) { /* not the envelope */ }
  if (response.status === 401) {
    keep(sessionStorage, TOKEN_KEY, "");
    signin.show(bearer ? "The token was refused." : "");
  }
  throw new ApiError(response.status, code, message);
}

const getJSON = async (path, signal) => (await request(path, { signal })).json();

function connection(up) {
  const node = $("#conn");
  node.className = "conn " + (up ? "live" : "down");
  node.textContent = up ? "connected" : "offline";
}

// ---- Sign-in: asked for when the API answers 401.

const signin = {
  shown: false,
  show(message) {
    this.shown = true;
    $("#signin").hidden = false;
    $("#signin-error").textContent = message || "";
    $("#token").value = "";
    $("#token").focus();
    session();
  },
  async submit(event) {
    event.preventDefault();
    const value = $("#token").value.trim();
    if (!value) return;
    keep(sessionStorage, TOKEN_KEY, value);
    try {
      await request("api/v1/runtime/info");
    } catch (e) {
      if (!quiet(e)) $("#signin-error").textContent = e.message;
      return;
    }
    this.shown = false;
    $("#signin").hidden = true;
    session();
    route();
  },
};

function session() {
  $("#signout").hidden = !token();
}

// ---- Polling: paused while the page is hidden or asks for a token.

function poller(fn, ms) {
  let timer = 0;
  let busy = false;
  let again = false;
  let stopped = false;
  const tick = async () => {
    timer = 0;
    if (stopped) return;
    if (document.hidden || signin.shown) { timer = setTimeout(tick, ms); return; }
    busy = true;
    try { await fn(); } catch (e) { if (!(e instanceof ApiError) && e.name !== "AbortError") console.error(e); }
    busy = false;
    if (stopped) return;
    if (again) { again = false; tick(); } else timer = setTimeout(tick, ms);
  };
  const now = () => {
    if (stopped || document.hidden) return;
    if (busy) { again = true; return; }
    clearTimeout(timer);
    tick();
  };
  document.addEventListener("visibilitychange", now);
  tick();
  return { now, stop() { stopped = true; clearTimeout(timer); document.removeEventListener("visibilitychange", now); } };
}

// ---- Streams: resumed from where they broke off, ended by an AbortSignal.

async function followLog(id, name, pane, signal, terminal) {
  const decoder = new TextDecoder("utf-8");
  let offset = 0;
  let first = true;
  while (!signal.aborted) {
    let pause = 1000;
    try {
      const response = await request(taskPath(id, `/${name}?follow=true&offset=${offset}`), { signal });
      const size = Number(response.headers.get("x-execgo-log-size")) || 0;
      if (first && size - offset > OUTPUT_CAP) {
        // A long log: start with its last OUTPUT_CAP bytes.
        first = false;
        await response.body.cancel();
        offset = size - OUTPUT_CAP;
        pane.skip(offset);
        continue;
      }
      first = false;
      pane.state("live");
      const reader = response.body.getReader();
      for (let r = await reader.read(); !r.done; r = await reader.read()) {
        offset += r.value.byteLength;
        pane.write(decoder.decode(r.value, { stream: true }), offset);
      }
      // The stream ends with the task, or when the server stops.
      if (terminal()) {
        pane.write(decoder.decode(), offset);
        pane.end();
        return;
      }
      pause = 300;
    } catch (e) {
      if (signal.aborted) return;
      if (refused(e)) { pane.state(quiet(e) ? "" : e.message); return; }
      pane.state("reconnecting…");
    }
    await sleep(pause, signal);
  }
}

async function followEvents(id, onEvent, onError, signal) {
  let after = 0;
  let ended = false;
  while (!signal.aborted && !ended) {
    try {
      const response = await request(taskPath(id, `/events?follow=true&after_seq=${after}`), { signal });
      const reader = response.body.getReader();
      const decoder = new TextDecoder("utf-8");
      let buffer = "";
      for (let r = await reader.read(); !r.done; r = await reader.read()) {
        const lines = (buffer + decoder.decode(r.value, { stream: true })).split("\n");
        buffer = lines.pop();
        for (const line of lines.filter((l) => l.trim())) {
          const event = JSON.parse(line);
          if (event.seq <= after) continue;
          after = event.seq;
          ended = ended || TERMINAL_EVENTS.has(event.event_type);
          onEvent(event);
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (refused(e)) { if (!quiet(e)) onError(e.message); return; }
    }
    if (!ended) await sleep(1000, signal);
  }
}

// ---- The task list

function liveDuration(task, fetchedAt) {
  if (missing(task.duration_ms)) return undefined;
  return task.status === "running" ? task.duration_ms + (Date.now() - fetchedAt) : task.duration_ms;
}

function exitOf(task) {
  if (!missing(task.exit_code)) return `exit ${task.exit_code}`;
  return missing(task.exit_signal) ? "" : `signal ${task.exit_signal}`;
}

function resultOf(task) {
  if (task.status === "accepted") return "queued";
  if (task.status === "running") return task.pid ? `pid ${task.pid}` : "starting";
  const exit = exitOf(task);
  if (!task.error) return exit;
  return exit ? `${task.error.code} (${exit})` : task.error.code;
}

function listQuery(filters, limit) {
  const query = new URLSearchParams({ limit: String(limit) });
  for (const key of ["status", "tenant", "owner"]) if (filters[key].trim()) query.set(key, filters[key].trim());
  for (const label of filters.label.split(",").map((s) => s.trim()).filter((s) => s)) query.append("label", label);
  return query.toString();
}

function tasksView(main, params) {
  const filters = {};
  for (const key of ["status", "tenant", "owner", "label", "id"]) filters[key] = params.get(key) || "";
  let limit = 100;
  let tasks = [];
  let cursor = null;
  let fetchedAt = 0;
  let rows = new Map();

  const field = (name, label, placeholder) => {
    const type = name === "id" ? "search" : "text";
    const input = h("input", { name, type, placeholder, spellcheck: "false", autocomplete: "off" });
    input.value = filters[name];
    return h("label", {}, label, input);
  };
  const status = h("select", { name: "status" }, h("option", { value: "" }, "any"),
    STATUSES.map((s) => h("option", { value: s }, s)));
  status.value = filters.status;
  const form = h("form", { class: "filters", role: "search" },
    h("label", {}, "Status", status), field("tenant", "Tenant", "any"), field("owner", "Owner", "any"),
    field("label", "Labels", "key:value, …"), field("id", "Task id", "search  /"), h("button", { type: "reset" }, "Clear"));
  const counts = h("div", { class: "counts" });
  const live = h("span", { class: "live" });
  const notice = h("div", { class: "notice error", hidden: true });
  const list = table(["Status", "Task", ["Created", "narrow-hide"], ["Duration", "num"], "Result", ["Node", "wide"],
    ["Metadata", "wide"]], [], { id: "tasks" });
  const tbody = list.querySelector("tbody");
  const empty = h("div", { class: "empty", hidden: true });
  const moreText = h("span");
  const moreButton = h("button", { type: "button" }, "Show more");
  const more = h("div", { class: "more", hidden: true }, moreText, moreButton);
  add(main, [h("div", { class: "view-head" }, h("h1", {}, "Tasks"), counts, live), form, notice, list, empty, more]);

  let debounce = 0;
  const changed = (event) => {
    for (const key of Object.keys(filters)) filters[key] = form.elements.namedItem(key).value;
    const shown = new URLSearchParams(Object.entries(filters).filter(([, value]) => value));
    const hash = "#/tasks" + (shown.toString() ? "?" + shown : "");
    if (location.hash !== hash) window.history.replaceState(null, "", hash);
    render();
    if (event && event.target && event.target.name === "id") return;
    clearTimeout(debounce);
    debounce = setTimeout(poll.now, 250);
  };
  form.addEventListener("submit", (event) => event.preventDefault());
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  form.addEventListener("reset", () => setTimeout(changed));
  moreButton.addEventListener("click", () => { limit = Math.min(500, limit + 100); poll.now(); });
  const slash = (event) => {
    if (event.key === "/" && !/^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName)) {
      event.preventDefault();
      form.elements.namedItem("id").focus();
    }
  };
  document.addEventListener("keydown", slash);

  const rowKey = (task) => [task.status, task.updated_at, task.node_id].join(" ");

  function row(task) {
    const created = h("td", { class: "narrow-hide", title: fmtTime(task.created_at) });
    const duration = h("td", { class: "num" });
    const degraded = (task.execution_plan || {}).degraded;
    const node = h("tr", { "data-id": task.task_id, "data-status": task.status },
      h("td", {}, badge(task.status)),
      h("td", { class: "id" }, taskLink(task.task_id), degraded ? [" ", h("span", { class: "chip warn" }, "degraded")] : null),
      created, duration, h("td", {}, resultOf(task)), h("td", { class: "wide mono" }, task.node_id || "–"),
      h("td", { class: "wide wrap" }, chips(task.metadata, 3)));
    const tick = (now) => {
      created.textContent = fmtAgo(now.created_at);
      duration.textContent = fmtDuration(liveDuration(now, fetchedAt));
    };
    return { node, tick, key: rowKey(task) };
  }

  function render() {
    const needle = filters.id.trim();
    const shown = needle ? tasks.filter((t) => t.task_id.toLowerCase().includes(needle.toLowerCase())) : tasks;
    const next = new Map();
    for (const task of shown) {
      const old = rows.get(task.task_id);
      const kept = old && old.key === rowKey(task) ? old : row(task);
      if (kept !== old && rows.size) {
        kept.node.classList.add("flash");
        kept.node.addEventListener("animationend", () => kept.node.classList.remove("flash"), { once: true });
      }
      kept.tick(task);
      next.set(task.task_id, kept);
    }
    rows = next;
    const order = [...next.values()].map((r) => r.node);
    const moved = order.length !== tbody.children.length || order.some((node, i) => tbody.children[i] !== node);
    if (moved) tbody.replaceChildren(...order);
    const tally = {};
    for (const task of tasks) tally[task.status] = (tally[task.status] || 0) + 1;
    put(counts, STATUSES.filter((s) => tally[s]).map((s) => h("span", { class: "badge s-" + s }, `${tally[s]} ${s}`)));
    empty.hidden = shown.length > 0;
    const other = needle && !tasks.some((t) => t.task_id === needle);
    put(empty, fetchedAt ? "No task matches these filters." : "Loading…",
      other ? [" ", h("a", { href: "#/tasks/" + encodeURIComponent(needle) }, `Open task ${needle}`)] : null);
    more.hidden = !cursor;
    moreButton.hidden = limit >= 500;
    moreText.textContent = `The newest ${tasks.length} tasks.` + (limit >= 500 ? " Narrow the filters to see older ones." : "");
  }

  const poll = poller(async () => {
    const query = listQuery(filters, limit);
    try {
      const page = await getJSON("api/v1/tasks?" + query);
      if (query !== listQuery(filters, limit)) return;
      tasks = page.tasks;
      cursor = page.next_cursor;
      fetchedAt = Date.now();
      notice.hidden = true;
      live.textContent = "live · " + new Date().toLocaleTimeString();
      render();
    } catch (e) {
      if (quiet(e)) return;
      notice.textContent = e.message;
      notice.hidden = false;
    }
  }, LIST_POLL_MS);
  render();
  return { stop() { poll.stop(); clearTimeout(debounce); document.removeEventListener("keydown", slash); } };
}

// ---- One task

function outputPane(name, small) {
  const pre = h("pre", { class: "output" + (small ? " small" : ""), id: name, tabindex: "0" });
  const info = h("span", { class: "info", id: name + "-info" });
  const cap = h("p", { class: "cap", hidden: true });
  const follow = h("input", { type: "checkbox", checked: true });
  const section = h("section", { class: "card" },
    h("div", { class: "pane-head" }, h("h2", {}, name), info, h("label", {}, follow, "follow")), cap, pre);
  let kept = 0;
  let bytes = 0;
  let state = "";
  const show = () => { info.textContent = [fmtBytes(bytes), state].filter((s) => s).join(" · "); };
  const trimmed = () => {
    cap.hidden = false;
    cap.textContent = `Showing the last ${fmtBytes(OUTPUT_CAP)} of ${fmtBytes(bytes)}: the page keeps no more.`;
  };
  return {
    section,
    skip(offset) { bytes = offset; trimmed(); show(); },
    write(text, offset) {
      bytes = offset;
      show();
      if (!text) return;
      const bottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      // Text nodes of up to 64 KiB: appending and trimming stay cheap.
      const last = pre.lastChild;
      if (last && last.data.length < 65536) last.appendData(text); else pre.appendChild(document.createTextNode(text));
      kept += text.length;
      while (kept > OUTPUT_CAP) {
        const first = pre.firstChild;
        const excess = Math.min(kept - OUTPUT_CAP, first.data.length);
        if (excess === first.data.length) first.remove(); else first.deleteData(0, excess);
        kept -= excess;
        trimmed();
      }
      if (follow.checked && bottom) pre.scrollTop = pre.scrollHeight;
    },
    state(text) { state = text; show(); },
    end() { state = "complete"; pre.classList.add("done"); show(); },
  };
}

function verdictOf(task, fetchedAt) {
  const error = task.error ? `${task.error.code}: ${task.error.message}` : "";
  switch (task.status) {
    case "accepted": return ["Queued", "Waiting for capacity or a node."];
    case "running":
      return ["Running", `for ${fmtDuration(liveDuration(task, fetchedAt))}` + (task.pid ? ` · pid ${task.pid}` : "")];
    case "success": return ["Succeeded", `exit code ${task.exit_code} in ${fmtDuration(task.duration_ms)}`];
    case "failed": return ["Failed", [error, exitOf(task)].filter((s) => s).join(" · ")];
    case "cancelled": return ["Cancelled", error];
    default: return [String(task.status), error];
  }
}

function sandboxText(sandbox) {
  if (!sandbox) return "–";
  const namespaces = Object.entries(sandbox.namespaces || {}).filter(([, on]) => on).map(([n]) => n);
  return [sandbox.profile, sandbox.chroot ? "chroot " + (sandbox.rootfs || "") : "",
    sandbox.workspace_subdir ? "workspace " + sandbox.workspace_subdir : "",
    namespaces.length ? "namespaces: " + namespaces.join(", ") : ""].filter((s) => s).join(" · ");
}

function limitText(value, enforced, how, fmt) {
  if (missing(value)) return "not set";
  if (!enforced) return [fmt(value), " ", h("span", { class: "chip warn" }, "not enforced")];
  return [fmt(value), " ", h("span", { class: "muted" }, "enforced" + (how ? ` (${how})` : ""))];
}

function planView(plan) {
  if (!plan) return h("p", { class: "muted" }, "No plan yet.");
  const limits = plan.resource_enforcement || {};
  const how = limits.mechanisms || {};
  const reasons = (list, cls) => (list ? h("ul", { class: cls }, list.map((r) => h("li", {}, r))) : null);
  return [
    plan.degraded ? h("div", { class: "notice warn", id: "degraded" }, h("strong", {}, "Degraded: "),
      "the plan differs from the request.", reasons(plan.fallback_reasons, "reasons")) : null,
    kv([
      ["Mode", plan.capability_mode],
      ["Requested", sandboxText(plan.requested_sandbox)],
      ["Effective", sandboxText(plan.effective_sandbox)],
      ["Wall time", fmtDuration(limits.wall_time_ms)],
      ["CPU time", limitText(limits.cpu_time_sec, limits.cpu_time_enforced, how.cpu_time_sec, (v) => v + " s")],
      ["Memory", limitText(limits.memory_bytes, limits.memory_enforced, how.memory_bytes, fmtBytes)],
      ["PIDs", limitText(limits.pids_max, limits.pids_enforced, how.pids_max, String)],
      ["cgroup", yesNo(limits.cgroup_enforced)],
      ["OOM detection", yesNo(limits.oom_detection)],
      ["Runs as", plan.run_as ? `uid ${plan.run_as.uid}, gid ${plan.run_as.gid}` : "not launched yet"],
    ]),
    reasons(plan.capability_warnings, "reasons muted"),
  ];
}

function taskView(main, id) {
  const aborter = new AbortController();
  const signal = aborter.signal;
  let task = null;
  let fetchedAt = 0;
  let streaming = false;
  let firstEvent = null;
  const terminal = () => task !== null && TERMINAL.has(task.status);

  const owner = h("input", { id: "owner", name: "owner", placeholder: "owner", spellcheck: "false", autocomplete: "off" });
  owner.value = stored(localStorage, OWNER_KEY);
  const ownerLabel = h("label", { title: "Sent as x-execgo-owner: the task's owner, if it has one" }, "Owner", owner);
  // With a token, the token's owner is the one a kill presents.
  ownerLabel.hidden = Boolean(token());
  const kill = h("button", { type: "button", class: "danger", id: "kill", disabled: true }, "Kill");
  const badgeSlot = h("span", { id: "task-status" });
  const notice = h("div", { class: "notice", id: "task-notice", role: "status", hidden: true });
  const verdict = h("div", { class: "card verdict", id: "verdict" }, "Loading…");
  const [summary, usage, plan, metadata, artifacts] = ["Summary", "Usage", "Plan", "Metadata", "Artifacts"].map((t) => card(t));
  const stdout = outputPane("stdout", false);
  const stderr = outputPane("stderr", true);
  const timeline = h("ol", { class: "timeline", id: "events" });
  const eventsError = h("p", { class: "error", hidden: true });
  add(main, [
    h("div", { class: "crumbs" }, h("a", { href: "#/tasks" }, "Tasks"), " / ", id),
    h("div", { class: "task-head" }, h("h1", {}, id), badgeSlot, h("div", { class: "actions" }, ownerLabel, kill)),
    notice, verdict,
    h("div", { class: "grid" }, summary, usage, plan),
    h("div", { class: "cols" }, h("div", { class: "stack" }, stdout.section, stderr.section),
      h("div", { class: "stack" }, card("Events", timeline, eventsError), metadata, artifacts)),
  ]);

  const say = (kind, text) => {
    notice.className = "notice " + kind;
    notice.textContent = text;
    notice.hidden = false;
  };
  const fill = (section, ...children) => put(section, section.firstChild, children);
  const mono = (text) => h("span", { class: "mono" }, text);

  function showVerdict() {
    const [head, detail] = verdictOf(task, fetchedAt);
    verdict.className = "card verdict v-" + (STATUSES.includes(task.status) ? task.status : "unknown");
    put(verdict, h("strong", {}, head), detail ? h("span", { class: "detail" }, detail) : null,
      task.output_unavailable ? h("span", { class: "detail" }, "Output unavailable: " + task.output_unavailable) : null);
  }

  function show(answer) {
    task = answer;
    fetchedAt = Date.now();
    const degraded = (task.execution_plan || {}).degraded;
    put(badgeSlot, badge(task.status), degraded ? [" ", h("span", { class: "chip warn" }, "degraded")] : null);
    kill.disabled = terminal();
    showVerdict();
    fill(summary, kv([
      ["Created", fmtTime(task.created_at)],
      ["Started", fmtTime(task.started_at)],
      ["Finished", fmtTime(task.finished_at)],
      ["Duration", fmtDuration(liveDuration(task, fetchedAt))],
      ["Exit", exitOf(task) || "–"],
      ["PID", missing(task.pid) ? "–" : `${task.pid} (group ${task.pgid})`],
      ["Node", task.node_id || "–"],
    ]));
    const used = task.usage || {};
    const reserved = task.reservation;
    fill(usage, kv([
      ["Wall", fmtDuration(used.duration_ms)],
      ["User CPU", fmtDuration(used.user_cpu_ms)],
      ["System CPU", fmtDuration(used.system_cpu_ms)],
      ["Max RSS", fmtBytes(used.max_rss_bytes)],
      ["Memory peak", fmtBytes(used.memory_peak_bytes)],
      ["Reserved", reserved ? [`${reserved.task_slots} slot`,
        missing(reserved.memory_bytes) ? "" : fmtBytes(reserved.memory_bytes),
        missing(reserved.pids) ? "" : `${reserved.pids} pids`].filter((s) => s).join(" · ") : "–"],
    ]));
    fill(plan, planView(task.execution_plan));
    const entries = Object.entries(task.metadata || {});
    fill(metadata, entries.length ? kv(entries.map(([k, v]) => [mono(k), mono(v)])) : h("p", { class: "muted" }, "None."));
    fill(artifacts, kv(Object.entries(task.artifacts || {}).map(([k, v]) => [k.replace(/_(path|dir)$/, ""), mono(v)])));
    if (!streaming) {
      streaming = true;
      followLog(id, "stdout", stdout, signal, terminal);
      followLog(id, "stderr", stderr, signal, terminal);
      followEvents(id, onEvent, (message) => { eventsError.textContent = message; eventsError.hidden = false; }, signal);
    }
  }

  async function load() {
    try {
      show(await getJSON(taskPath(id), signal));
    } catch (e) {
      if (quiet(e)) return;
      if (e.status === 404) put(verdict, h("strong", {}, "Not found"), h("span", { class: "detail" }, e.message));
      else say("error", e.message);
    }
  }

  // Each event may change the status: read it again (once per burst).
  let reloading = 0;
  function onEvent(event) {
    const at = Date.parse(event.timestamp);
    if (firstEvent === null) firstEvent = at;
    timeline.appendChild(h("li", { class: EVENT_CLASS[event.event_type] || "", "data-type": event.event_type },
      h("span", { class: "ev-time", title: fmtTime(event.timestamp) }, fmtClock(event.timestamp)),
      h("span", { class: "ev-type" }, event.event_type),
      event.message ? h("span", { class: "ev-msg" }, event.message) : null,
      at > firstEvent ? h("span", { class: "ev-msg" }, ` · +${fmtDuration(at - firstEvent)}`) : null,
      event.data === undefined ? null
        : h("details", {}, h("summary", {}, "data"), h("pre", {}, JSON.stringify(event.data, null, 2)))));
    if (!reloading) reloading = setTimeout(() => { reloading = 0; load(); }, 150);
  }

  // Kill takes two clicks: the first arms the button for a few seconds.
  let armed = 0;
  const disarm = () => {
    clearTimeout(armed);
    armed = 0;
    kill.textContent = "Kill";
    kill.classList.remove("confirm");
  };
  kill.addEventListener("click", async () => {
    if (!armed) {
      armed = setTimeout(disarm, 4000);
      kill.textContent = "Confirm kill";
      kill.classList.add("confirm");
      return;
    }
    disarm();
    const name = owner.value.trim();
    if (!/^[\x21-\x7e]*$/.test(name)) { say("error", "An owner is written in visible ASCII characters."); return; }
    keep(localStorage, OWNER_KEY, name);
    kill.disabled = true;
    try {
      const headers = name && !token() ? { "x-execgo-owner": name } : {};
      show(await (await request(taskPath(id, "/kill"), { method: "POST", headers })).json());
      say("ok", terminal() ? `The task is ${task.status}.` : "Kill requested: SIGTERM now, SIGKILL after the grace period.");
    } catch (e) {
      if (!quiet(e)) say("error", e.message);
      kill.disabled = terminal();
    }
  });

  const ticker = setInterval(() => { if (task && task.status === "running") showVerdict(); }, 1000);
  // The events drive the updates; this catches a stream that broke off.
  const safety = poller(async () => { if (task && !terminal()) await load(); }, 5000);
  load();
  return { stop() { aborter.abort(); safety.stop(); clearInterval(ticker); clearTimeout(reloading); disarm(); } };
}

// ---- The runtime: views read every RUNTIME_POLL_MS, /metrics sampled
// into a trend that outlives the view (while the page is open).

const trend = [];

function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const label of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[label[1]] = label[2];
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

const sum = (samples, name, where) => samples
  .filter((s) => s.name === name && Object.entries(where || {}).every(([k, v]) => s.labels[k] === v))
  .reduce((total, s) => total + s.value, 0);
const ENDINGS = [["success", "c-ok"], ["failed", "c-bad"], ["cancelled", "c-cancel"]];

function record(text) {
  const samples = parseMetrics(text);
  const finished = {};
  for (const [status] of ENDINGS) finished[status] = sum(samples, "execgo_runtime_tasks_finished_total", { status });
  trend.push({
    t: Date.now(),
    queued: sum(samples, "execgo_runtime_cluster_tasks_queued"),
    running: sum(samples, "execgo_runtime_tasks_running"),
    submitted: sum(samples, "execgo_runtime_tasks_submitted_total"),
    finished,
  });
  if (trend.length > HISTORY) trend.shift();
}

// What happened between two samples (counters that went down, after a
// restart, count as nothing).
function intervals() {
  const out = [];
  for (let i = 1; i < trend.length; i += 1) {
    const [a, b] = [trend[i - 1], trend[i]];
    const seconds = Math.max(0.001, (b.t - a.t) / 1000);
    const done = {};
    for (const [key] of ENDINGS) done[key] = Math.max(0, b.finished[key] - a.finished[key]);
    const ended = ENDINGS.reduce((total, [key]) => total + done[key], 0);
    out.push({ done, submitted: Math.max(0, b.submitted - a.submitted) / seconds, finished: ended / seconds });
  }
  return out;
}

// Charts: a window of at least 20 samples, newest on the right.
const W = 300;
const H = 80;
const slots = (count) => Math.max(20, count);
const chartBox = () => svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });

function lineChart(series) {
  const top = Math.max(1, ...series.flatMap((s) => s.values));
  const chart = chartBox();
  for (const s of series) {
    const n = slots(s.values.length);
    if (s.values.length < 2) continue;
    const x = (i) => ((W * (n - s.values.length + i)) / (n - 1)).toFixed(1);
    const line = s.values.map((v, i) => `${x(i)},${(H - 2 - ((H - 8) * v) / top).toFixed(1)}`).join(" ");
    chart.appendChild(svg("polygon", { class: s.cls, points: `${x(0)},${H} ${line} ${W},${H}` }));
    chart.appendChild(svg("polyline", { class: s.cls, points: line }));
  }
  return [chart, top];
}

function stackChart(stacks) {
  const top = Math.max(1, ...stacks.map((s) => ENDINGS.reduce((a, [key]) => a + s[key], 0)));
  const chart = chartBox();
  const width = W / slots(stacks.length);
  stacks.forEach((stack, i) => {
    let y = H;
    for (const [key, cls] of ENDINGS) {
      const height = ((H - 6) * stack[key]) / top;
      if (height <= 0) continue;
      y -= height;
      chart.appendChild(svg("rect", { class: cls, x: (W - (stacks.length - i) * width).toFixed(2), y: y.toFixed(2),
        width: (width * 0.8).toFixed(2), height: height.toFixed(2) }));
    }
  });
  return [chart, top];
}

const legend = (items) => h("div", { class: "legend" },
  items.map(([cls, label, value]) => h("span", { class: cls }, label, h("b", {}, value))));
const plot = ([chart, top], fmt) => h("div", { class: "plot" }, chart, h("span", { class: "scale" }, "max " + fmt(top)));
const RESOURCES = [["task_slots", "Task slots", fmtCount], ["memory_bytes", "Memory", fmtBytes], ["pids", "PIDs", fmtCount]];

function quotaCell(tenant, key, fmt) {
  const used = (tenant.reserved || {})[key] || 0;
  const quota = tenant.quota ? tenant.quota[key] : undefined;
  if (missing(quota)) return h("td", {}, fmt(used), h("span", { class: "muted" }, " · no quota"));
  return h("td", {}, bar(used, quota, { class: "bar thin" }), `${fmt(used)} / ${fmt(quota)}`);
}

function runtimeView(main) {
  const sub = h("span", { class: "sub" });
  const section = (id) => h("section", { class: "card", id });
  const [capacity, queue, throughput, outcomes, tenants, reservations, nodes, about] =
    ["capacity", "queue", "throughput", "outcomes", "tenants", "reservations", "nodes", "about"].map(section);
  add(main, [h("div", { class: "view-head" }, h("h1", {}, "Runtime"), sub),
    h("div", { class: "grid" }, capacity, queue, throughput, outcomes),
    h("div", { class: "stack" }, nodes, tenants, reservations, about)]);
  const set = (node, title, ...children) => put(node, h("h2", {}, title), children);
  // A view the token may not read is shown as such, not as an error.
  const failed = (node, title, what, e) => {
    if (quiet(e)) return;
    const denied = e instanceof ApiError && e.status === 403;
    set(node, title, denied ? h("p", { class: "admin-only" }, `Admin only: ${what} needs a token with role=admin.`)
      : h("p", { class: "error" }, e.message));
  };

  function showResources(view) {
    const capped = RESOURCES.filter(([key]) => !missing(view.capacity[key]));
    set(capacity, "Capacity", h("div", { class: "bars" }, capped.map(([key, label, fmt]) => {
      const [used, total] = [(view.reserved || {})[key] || 0, view.capacity[key]];
      return h("div", { class: "bar-row" }, h("span", { class: "label" }, label),
        h("span", { class: "value" }, `${fmt(used)} / ${fmt(total)}`), bar(used, total, { "aria-label": label }));
    })));
    const owners = view.tenants || [];
    set(tenants, "Tenants", owners.length
      ? table(["Tenant", ...RESOURCES.map(([, label]) => label)],
        owners.map((t) => h("tr", {}, h("td", { class: "mono" }, t.tenant),
          RESOURCES.map(([key, , fmt]) => quotaCell(t, key, fmt)))))
      : h("p", { class: "muted" }, "No tenant has a quota or a reservation."));
    const active = view.active_reservations || [];
    set(reservations, `Reservations (${active.length})`, active.length
      ? table(["Task", "Status", ["Slots", "num"], ["Memory", "num"], ["PIDs", "num"], ["Reserved", "narrow-hide"]],
        active.map((r) => h("tr", {}, h("td", { class: "id" }, taskLink(r.task_id)), h("td", {}, badge(r.status)),
          h("td", { class: "num" }, fmtCount(r.reservation.task_slots)),
          h("td", { class: "num" }, fmtBytes(r.reservation.memory_bytes)),
          h("td", { class: "num" }, fmtCount(r.reservation.pids)),
          h("td", { class: "narrow-hide" }, fmtAgo(r.reserved_at)))))
      : h("p", { class: "muted" }, "No task holds a reservation."));
  }

  function showCharts(view) {
    const last = trend[trend.length - 1];
    const steps = intervals();
    const stat = (label, value) => h("div", {}, h("span", { class: "label" }, label),
      h("span", { class: "big" }, fmtCount(value)));
    const waiting = view ? view.accepted_waiting_tasks : last.queued;
    const series = (values, cls) => ({ values, cls });
    set(queue, "Queue", h("div", { class: "stats" }, stat("waiting", waiting), stat("running", last.running)),
      plot(lineChart([series(trend.map((s) => s.queued), "c2"), series(trend.map((s) => s.running), "c1")]), fmtCount),
      legend([["c2", "queued", last.queued], ["c1", "running", last.running]]));
    const now = steps[steps.length - 1] || { submitted: 0, finished: 0 };
    set(throughput, "Throughput",
      plot(lineChart([series(steps.map((s) => s.finished), "c1"), series(steps.map((s) => s.submitted), "c2")]), fmtRate),
      legend([["c1", "finished/s", fmtRate(now.finished)], ["c2", "submitted/s", fmtRate(now.submitted)]]));
    const span = trend.length > 1 ? fmtDuration(last.t - trend[0].t) : "";
    set(outcomes, "Outcomes", plot(stackChart(steps.map((s) => s.done)), fmtCount),
      legend(ENDINGS.map(([key, cls]) => [cls, key, steps.reduce((a, s) => a + s.done[key], 0)])),
      h("p", { class: "foot" }, span ? `From /metrics every ${RUNTIME_POLL_MS / 1000} s, the last ${span}.`
        : "Sampling /metrics…"));
  }

  function showNodes(view) {
    const list = view.nodes || [];
    const head = ["Node", "State", "Running", ["Address", "wide"], ["Labels", "wide"], ["Lease until", "narrow-hide"]];
    set(nodes, `Nodes (${list.length})`, table(head, list.map((n) => {
      const slots = (n.capacity || {}).task_slots;
      return h("tr", { "data-node": n.node_id }, h("td", { class: "mono" }, n.node_id), h("td", {}, badge(n.state)),
        h("td", {}, slots ? [bar(n.running_tasks, slots, { class: "bar thin" }), `${n.running_tasks} / ${slots}`]
          : fmtCount(n.running_tasks)),
        h("td", { class: "wide mono" }, n.advertise_url || "–"), h("td", { class: "wide" }, chips(n.labels, 4)),
        h("td", { class: "narrow-hide" }, fmtTime(n.lease_expires_at)));
    })));
  }

  (async () => {
    const [info, config] = await Promise.allSettled([getJSON("api/v1/runtime/info"), getJSON("api/v1/runtime/config")]);
    const i = info.status === "fulfilled" ? info.value : {};
    const c = config.status === "fulfilled" ? config.value : {};
    const platform = i.platform || {};
    if (i.runtime_id) sub.textContent = `${i.runtime_id} · version ${i.version} · up since ${fmtTime(i.started_at)}`;
    set(about, "About", kv([
      ["Runtime", i.runtime_id], ["Version", i.version], ["Started", fmtTime(i.started_at)],
      ["Platform", [platform.os, platform.arch, platform.containerized ? "containerized" : ""].filter((s) => s).join(" · ")],
      ["Store", c.database], ["Listens on", c.listen_addr], ["Max running", fmtCount(c.max_running_tasks)],
      ["Max queued", fmtCount(c.max_queued_tasks)], ["Kill grace", fmtDuration(c.termination_grace_ms)],
    ].filter(([, v]) => !missing(v))));
  })();

  const poll = poller(async () => {
    const [resources, cluster, metrics] = await Promise.allSettled([
      getJSON("api/v1/runtime/resources"), getJSON("api/v1/runtime/cluster"), request("metrics").then((r) => r.text())]);
    if (resources.status === "fulfilled") showResources(resources.value);
    else {
      for (const [node, title] of [[capacity, "Capacity"], [tenants, "Tenants"], [reservations, "Reservations"]]) {
        failed(node, title, "the resource ledger", resources.reason);
      }
    }
    if (cluster.status === "fulfilled") showNodes(cluster.value);
    else failed(nodes, "Nodes", "the cluster", cluster.reason);
    if (metrics.status === "fulfilled") {
      record(metrics.value);
      showCharts(resources.status === "fulfilled" ? resources.value : null);
    } else {
      for (const [node, title] of [[queue, "Queue"], [throughput, "Throughput"], [outcomes, "Outcomes"]]) {
        failed(node, title, "/metrics", metrics.reason);
      }
    }
  }, RUNTIME_POLL_MS);
  return { stop: () => poll.stop() };
}

// ---- Routing: #/tasks?filters, #/tasks/<id>, #/runtime

let current = null;

function route() {
  if (current) current.stop();
  const main = $("#main");
  main.textContent = "";
  const hash = location.hash.slice(1) || "/tasks";
  const at = hash.indexOf("?");
  const path = at < 0 ? hash : hash.slice(0, at);
  const one = /^\/tasks\/(.+)$/.exec(path);
  let name = "tasks";
  if (path === "/runtime") {
    name = "runtime";
    current = runtimeView(main);
  } else if (one) {
    let id = one[1];
    try { id = decodeURIComponent(id); } catch (e) { /* shown as written */ }
    current = taskView(main, id);
  } else current = tasksView(main, new URLSearchParams(at < 0 ? "" : hash.slice(at + 1)));
  for (const link of document.querySelectorAll("[data-nav]")) link.classList.toggle("active", link.dataset.nav === name);
}

$("#signin-form").addEventListener("submit", (event) => signin.submit(event));
$("#signout").addEventListener("click", () => {
  keep(sessionStorage, TOKEN_KEY, "");
  session();
  route();
});
window.addEventListener("hashchange", route);
session();
route();
