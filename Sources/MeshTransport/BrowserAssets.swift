/// The browser view (`GET /ui`): one page, its stylesheet and its script, plain HTML, CSS and JavaScript shipped
/// inside the binary. No build step, nothing fetched from elsewhere (the page's Content-Security-Policy allows only
/// this node), no data in the page itself: it signs in, then draws what `/ui/api/v1/ui/stream` sends.
enum BrowserAssets {
    static let page = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>AgentMesh</title>
<link rel="stylesheet" href="/ui/app.css">
<script src="/ui/app.js" defer></script>
</head>
<body>
<header>
  <h1>AgentMesh</h1>
  <span id="node-name" class="muted"></span>
  <span id="live" class="live" title="live updates">connecting</span>
  <nav>
    <a href="#/mesh" data-view="mesh">Mesh</a>
    <a href="#/tasks" data-view="tasks">Tasks</a>
    <a href="#/workflows" data-view="workflows">Workflows</a>
    <a href="#/health" data-view="health">Health</a>
  </nav>
</header>
<main>
  <section id="signin" hidden>
    <h2>Sign in</h2>
    <p id="signin-message">Run <code>agentmesh ui</code> on the node's host and open the link it prints (it works once, for two minutes).</p>
  </section>

  <section id="view-mesh" class="view" hidden>
    <div class="split">
      <div class="card"><h2>Members</h2><svg id="members-graph" role="img" aria-label="members and sessions"></svg>
        <p class="legend"><span class="dot alive"></span>alive <span class="dot suspect"></span>suspect <span class="dot dead"></span>dead <span class="dot left"></span>left — lines are this node's open sessions</p></div>
      <div class="card"><h2>Capabilities</h2><div class="scroll"><table id="members-table"><thead><tr><th>member</th><th>status</th><th>capabilities (capacity)</th><th>load</th><th>last heard</th></tr></thead><tbody></tbody></table></div></div>
    </div>
  </section>

  <section id="view-tasks" class="view" hidden>
    <div class="card">
      <h2>Tasks</h2>
      <form id="task-filter" class="filters">
        <label>state <select name="state"><option value="">any</option><option>submitted</option><option>offered</option><option>running</option><option>input_required</option><option>completed</option><option>failed</option><option>timed_out</option><option>canceled</option></select></label>
        <label>capability <input name="capability" size="12"></label>
        <label>peer <input name="peer" size="10"></label>
        <label>last <select name="since"><option value="">all</option><option value="300">5 min</option><option value="3600">hour</option><option value="86400">day</option></select></label>
      </form>
      <div class="scroll"><table id="task-list"><thead><tr><th>task</th><th>capability</th><th>state</th><th>ran on</th><th>submitted</th><th>took</th></tr></thead><tbody></tbody></table></div>
    </div>
  </section>

  <section id="view-task" class="view" hidden>
    <div class="card" id="task-detail">
      <h2>Task <code id="task-id"></code> <span id="task-state" class="badge"></span></h2>
      <p id="task-summary" class="muted"></p>
      <button id="cancel-task" type="button" hidden>Cancel</button>
      <h3>Attempts</h3><ol id="task-timeline" class="timeline"></ol>
      <h3>Progress</h3><ol id="task-progress" class="events"></ol>
      <h3>Result</h3><pre id="task-result"></pre>
      <h3>Log</h3><pre id="task-log"></pre>
    </div>
  </section>

  <section id="view-workflows" class="view" hidden>
    <div class="card"><h2>Workflows</h2><div class="scroll"><table id="workflow-list"><thead><tr><th>run</th><th>name</th><th>state</th><th>steps</th><th>submitted</th><th>took</th></tr></thead><tbody></tbody></table></div></div>
  </section>

  <section id="view-workflow" class="view" hidden>
    <div class="card"><h2>Workflow <span id="workflow-name"></span> <span id="workflow-state" class="badge"></span></h2>
      <p id="workflow-summary" class="muted"></p>
      <div class="scroll"><svg id="workflow-graph" role="img" aria-label="the workflow's steps"></svg></div>
      <p class="legend">a map step shows its items folded: done / all; ↺ marks a compensation</p></div>
  </section>

  <section id="view-health" class="view" hidden>
    <div class="card"><h2>Capabilities, last 5 minutes</h2><div class="scroll"><table id="stats-table"><thead><tr><th>capability</th><th>peer</th><th>runs</th><th>per minute</th><th>success</th><th>p50</th><th>p99</th><th>queue p50</th></tr></thead><tbody></tbody></table></div></div>
    <div class="card"><h2>Peers: limits and bans</h2><div class="scroll"><table id="limits-table"><thead><tr><th>peer</th><th>session</th><th>banned until</th><th>bans</th><th>refused (by class)</th></tr></thead><tbody></tbody></table></div></div>
    <div class="card"><h2>Audit logs</h2>
      <label>peer <select id="audit-peer"><option value="">all</option></select></label>
      <div class="scroll"><table id="audit-logs"><thead><tr><th>peer</th><th>verified</th><th>records</th><th>checkpoints</th><th>transcripts</th></tr></thead><tbody></tbody></table></div>
      <h3>Newest records</h3><div class="scroll"><table id="audit-records"><thead><tr><th>time</th><th>peer</th><th>event</th><th>message</th><th>task</th><th>detail</th></tr></thead><tbody></tbody></table></div></div>
    <div class="card"><h2>This node</h2><p id="node-summary" class="muted"></p><button id="leave" type="button">Leave the mesh</button></div>
  </section>
</main>
</body>
</html>
"""#

    static let style = #"""
:root { --bg: #f6f7f9; --card: #ffffff; --text: #1d2330; --muted: #5d6678; --line: #d9dde5; --accent: #2f6fe4;
  --alive: #2e9d5b; --suspect: #d99a1e; --dead: #d2463c; --left: #8a93a3; --running: #2f6fe4; color-scheme: light dark; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #12151b; --card: #1b2029; --text: #e4e8ef; --muted: #98a2b3; --line: #2d3441; --accent: #6d9cf5; }
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg); color: var(--text); }
header { display: flex; flex-wrap: wrap; align-items: center; gap: 0.4rem 1rem; padding: 0.6rem 1rem; background: var(--card);
  border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 1; }
header h1 { font-size: 1.1rem; margin: 0; }
nav { display: flex; gap: 0.25rem; margin-left: auto; flex-wrap: wrap; }
nav a { padding: 0.3rem 0.7rem; border-radius: 6px; color: var(--text); text-decoration: none; }
nav a.current { background: var(--accent); color: #fff; }
main { padding: 1rem; max-width: 1400px; margin: 0 auto; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 0.8rem 1rem; margin-bottom: 1rem; }
.split { display: grid; grid-template-columns: minmax(0, 1.1fr) minmax(0, 1fr); gap: 1rem; }
@media (max-width: 760px) { .split { grid-template-columns: 1fr; } main { padding: 0.5rem; } nav { margin-left: 0; } }
h2 { font-size: 1rem; margin: 0 0 0.6rem; } h3 { font-size: 0.9rem; margin: 1rem 0 0.4rem; color: var(--muted); }
.muted { color: var(--muted); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.3rem 0.5rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
td.wrap { white-space: normal; }
tbody tr[data-href] { cursor: pointer; } tbody tr[data-href]:hover { background: color-mix(in srgb, var(--accent) 10%, transparent); }
code, pre { font-family: ui-monospace, "SF Mono", Menlo, monospace; font-size: 0.85rem; }
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 0.5rem; overflow: auto; max-height: 18rem; margin: 0; white-space: pre-wrap; }
.badge { font-size: 0.75rem; padding: 0.1rem 0.5rem; border-radius: 999px; background: var(--line); vertical-align: middle; }
.state-completed, .state-alive, .ok { color: var(--alive); } .state-failed, .state-dead, .state-timed_out, .bad { color: var(--dead); }
.state-running, .state-offered, .state-compensating { color: var(--running); } .state-suspect, .state-input_required { color: var(--suspect); }
.state-canceled, .state-left, .state-skipped, .state-pending, .state-submitted { color: var(--left); }
.live { font-size: 0.8rem; color: var(--muted); } .live.on::before { content: "● "; color: var(--alive); }
.dot { display: inline-block; width: 0.7rem; height: 0.7rem; border-radius: 50%; margin: 0 0.2rem 0 0.6rem; vertical-align: -1px; }
.dot.alive { background: var(--alive); } .dot.suspect { background: var(--suspect); } .dot.dead { background: var(--dead); } .dot.left { background: var(--left); }
.legend { font-size: 0.8rem; color: var(--muted); }
svg { width: 100%; display: block; }
#workflow-graph { width: auto; max-width: none; }
#members-graph { height: 340px; }
svg text { fill: var(--text); font-size: 12px; } svg .small { font-size: 10px; fill: var(--muted); }
svg line.session { stroke: var(--accent); stroke-width: 2; opacity: 0.6; }
svg .member circle { stroke: var(--card); stroke-width: 3; }
svg .member.alive circle { fill: var(--alive); } svg .member.suspect circle { fill: var(--suspect); }
svg .member.dead circle { fill: var(--dead); } svg .member.left circle { fill: var(--left); }
svg .member.self circle { stroke: var(--accent); }
svg .step rect { fill: var(--card); stroke: var(--line); stroke-width: 2; rx: 8; }
svg .step.completed rect { stroke: var(--alive); } svg .step.failed rect { stroke: var(--dead); } svg .step.running rect { stroke: var(--running); }
svg .step.canceled rect, svg .step.skipped rect { stroke: var(--left); stroke-dasharray: 4 3; }
svg path.edge { fill: none; stroke: var(--muted); stroke-width: 1.5; marker-end: url(#arrow); }
.filters { display: flex; flex-wrap: wrap; gap: 0.5rem 1rem; margin-bottom: 0.6rem; }
input, select, button { font: inherit; color: var(--text); background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 0.2rem 0.4rem; }
button { cursor: pointer; padding: 0.3rem 0.9rem; } button:hover { border-color: var(--accent); }
#cancel-task, #leave { color: var(--dead); border-color: var(--dead); }
ol.timeline, ol.events { margin: 0; padding-left: 1.2rem; } ol.timeline li, ol.events li { margin: 0.15rem 0; }
ol.events li code { word-break: break-all; }
"""#

    static let script = #"""
"use strict";
// The browser view of an AgentMesh node. It signs in once with the code in the link `agentmesh ui` printed, then
// draws what the node's live stream sends; it changes things only through the control API, with the CSRF token.

const api = "/ui/api";
let csrf = sessionStorage.getItem("agentmesh-csrf");
let snapshot = null;
let stream = null;
let taskEvents = null;
let shownTask = null;
let shownState = null;
// Reads of the shown task travel on separate connections, so an older answer can arrive after a newer one: reads
// are numbered as sent and an overtaken answer is dropped, and a finished task never goes back to running.
let taskReads = 0;
let taskReadShown = 0;
const finishedStates = ["completed", "failed", "timed_out", "canceled"];

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  for (const child of children.flat()) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

const $ = (selector) => document.querySelector(selector);
const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "-");
const ago = (iso) => {
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  return seconds < 60 ? `${seconds.toFixed(0)} s ago` : seconds < 3600 ? `${(seconds / 60).toFixed(0)} min ago` : `${(seconds / 3600).toFixed(1)} h ago`;
};
const took = (from, to) => (from && to ? `${((new Date(to) - new Date(from)) / 1000).toFixed(2)} s` : "-");
const stateBadge = (state) => el("span", { class: `badge state-${state}` }, state);

async function call(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrf || "";
  const response = await fetch(api + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
  if (response.status === 401) signedOut((await response.json()).error);
  return response;
}

function signedOut(message) {
  if (stream) stream.close();
  $("#signin").hidden = false;
  if (message) $("#signin-message").textContent = message;
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  $("#live").textContent = "signed out";
  $("#live").classList.remove("on");
}

async function signIn() {
  const code = new URLSearchParams(location.hash.slice(1)).get("code");
  if (code) {
    // The code works once: it leaves the address bar (and the history) at once.
    history.replaceState(null, "", "/ui#/mesh");
    const response = await fetch("/ui/session", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ code }) });
    const answer = await response.json();
    if (!response.ok) return signedOut(answer.error);
    csrf = answer.csrf;
    sessionStorage.setItem("agentmesh-csrf", csrf);
  }
  const check = await call("GET", "/v1/node");
  if (!check.ok) return;
  $("#signin").hidden = true;
  connect();
  route();
}

function connect() {
  stream = new EventSource(api + "/v1/ui/stream");
  stream.addEventListener("mesh", (event) => {
    snapshot = JSON.parse(event.data);
    $("#live").textContent = "live";
    $("#live").classList.add("on");
    render();
  });
  stream.onerror = () => {
    $("#live").textContent = "reconnecting";
    $("#live").classList.remove("on");
  };
}

function route() {
  const [view, id] = location.hash.replace(/^#\/?/, "").split("/");
  const name = id ? (view === "tasks" ? "task" : "workflow") : view || "mesh";
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${name}`;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.dataset.view === (view || "mesh"));
  if (name === "task") openTask(id);
  else closeTask();
  if (name === "health") loadAudit();
  render();
}

function render() {
  if (!snapshot) return;
  $("#node-name").textContent = `${snapshot.node.name} · ${snapshot.node.listen}`;
  renderMembers();
  renderTasks();
  renderWorkflows();
  renderHealth();
  // The stream's list is brief (no results): a task on show whose state changed is read again whole.
  const brief = shownTask && snapshot.tasks.tasks.find((task) => task.id === shownTask);
  if (brief && brief.state !== shownState) refreshTask(shownTask);
  const [view, id] = location.hash.replace(/^#\/?/, "").split("/");
  if (view === "workflows" && id) renderWorkflow(snapshot.workflows.workflows.find((run) => run.id.startsWith(id)));
}

function renderMembers() {
  const members = snapshot.members.members;
  const graph = $("#members-graph");
  graph.replaceChildren();
  const width = graph.clientWidth || 500, height = 340, cx = width / 2, cy = height / 2;
  const self = members.find((member) => member.connection === "self");
  const others = members.filter((member) => member !== self);
  // An ellipse that fills the panel; the first member starts half a step past the top, so two sit left and right.
  const rx = Math.max(60, width / 2 - 90), ry = height / 2 - 80;
  const position = new Map();
  if (self) position.set(self.id, [cx, cy]);
  others.forEach((member, index) => {
    const angle = (2 * Math.PI * index) / Math.max(others.length, 1) - Math.PI / 2 + Math.PI / Math.max(others.length, 1);
    position.set(member.id, [cx + rx * Math.cos(angle), cy + ry * Math.sin(angle)]);
  });
  for (const member of others) {
    if (!self || member.connection === "none") continue;
    const [x1, y1] = position.get(self.id), [x2, y2] = position.get(member.id);
    graph.append(svg("line", { class: "session", x1, y1, x2, y2 }));
  }
  for (const member of members) {
    const [x, y] = position.get(member.id);
    const capabilities = member.capabilities.map((c) => `${c.name}×${c.capacity}`);
    const status = member.accuser && member.status !== "alive" ? `${member.status}, by ${member.accuser}` : member.status;
    // Capabilities wrap onto two lines of at most 24 characters (a longer name is cut with …), then "+N more" and the
    // load: one long line ran past the panel's edge. The title holds them all.
    const cut = (word) => (word.length > 24 ? word.slice(0, 23) + "…" : word);
    const lines = [];
    let shown = 0;
    for (const word of capabilities.map(cut)) {
      if (lines.length && lines[lines.length - 1].length + 1 + word.length <= 24) lines[lines.length - 1] += " " + word;
      else if (lines.length < 2) lines.push(word);
      else break;
      shown += 1;
    }
    lines.push(capabilities.length ? (shown < capabilities.length ? `+${capabilities.length - shown} more · ` : "") + `load ${member.load}` : status);
    graph.append(svg("g", { class: `member ${member.status}${member === self ? " self" : ""}`, "data-name": member.name, "data-status": member.status, transform: `translate(${x},${y})` },
      svg("title", {}, `${member.name} ${member.id}\n${status}\n${capabilities.join(" ")}\nlast heard ${ago(member.last_heard)}`),
      svg("circle", { r: member === self ? 22 : 18 }),
      svg("text", { y: 36, "text-anchor": "middle" }, member.name),
      ...lines.map((line, index) => svg("text", { y: 50 + 13 * index, "text-anchor": "middle", class: "small capabilities" }, line))));
  }
  const rows = members.map((member) => el("tr", { "data-name": member.name },
    el("td", {}, member.name, member.connection === "self" ? " (this node)" : ""),
    el("td", { class: `state-${member.status}` }, member.accuser && member.status !== "alive" ? `${member.status} (by ${member.accuser})` : member.status),
    el("td", { class: "wrap" }, member.capabilities.map((c) => `${c.name} (${c.capacity})`).join(", ") || "-"),
    el("td", {}, member.load), el("td", {}, ago(member.last_heard))));
  $("#members-table tbody").replaceChildren(...rows);
}

function taskFilter() {
  const form = new FormData($("#task-filter"));
  return (task) => {
    if (form.get("state") && task.state !== form.get("state")) return false;
    if (form.get("capability") && !task.capability.includes(form.get("capability"))) return false;
    if (form.get("peer") && !(task.executed_by || "").includes(form.get("peer"))) return false;
    if (form.get("since") && (Date.now() - new Date(task.submitted_at)) / 1000 > Number(form.get("since"))) return false;
    return true;
  };
}

function renderTasks() {
  const rows = snapshot.tasks.tasks.filter(taskFilter()).map((task) => el("tr", { "data-id": task.id, "data-state": task.state, "data-href": `#/tasks/${task.id}` },
    el("td", {}, el("code", {}, task.id.slice(0, 12))), el("td", {}, task.capability), el("td", {}, stateBadge(task.state)),
    el("td", {}, task.executed_by || "-"), el("td", {}, time(task.submitted_at)), el("td", {}, took(task.submitted_at, task.finished_at))));
  $("#task-list tbody").replaceChildren(...rows);
}

async function openTask(id) {
  if (shownTask && shownTask.startsWith(id)) return;
  closeTask();
  const task = await readTask("GET", `/v1/tasks/${id}`);
  if (!task) return;
  shownTask = task.id;
  $("#task-progress").replaceChildren();
  renderTask(task);
  // Progress as it arrives: the node's server-sent events for the task, resumed by the browser after a drop.
  taskEvents = new EventSource(`${api}/v1/tasks/${task.id}/events`);
  taskEvents.addEventListener("progress", (event) => {
    const progress = JSON.parse(event.data);
    $("#task-progress").append(el("li", { "data-sequence": progress.sequence }, `${time(progress.time)} `, el("code", {}, JSON.stringify(progress.data))));
  });
  taskEvents.addEventListener("end", (event) => {
    renderTask(JSON.parse(event.data));
    taskEvents.close();
  });
  loadLog(task.id);
}

async function refreshTask(id) {
  const task = await readTask("GET", `/v1/tasks/${id}`);
  if (task && shownTask === id) renderTask(task);
}

async function readTask(method, path) {
  const number = ++taskReads;
  const response = await call(method, path);
  if (!response.ok || number < taskReadShown) return null;
  taskReadShown = number;
  return response.json();
}

function closeTask() {
  if (taskEvents) taskEvents.close();
  taskEvents = null;
  shownTask = null;
  shownState = null;
}

async function loadLog(id) {
  const response = await call("GET", `/v1/tasks/${id}/logs`);
  if (response.ok) $("#task-log").textContent = (await response.json()).text || "(nothing on stderr)";
}

function renderTask(task) {
  if (!task || (task.id === shownTask && finishedStates.includes(shownState) && !finishedStates.includes(task.state))) return;
  shownState = task.state;
  $("#task-id").textContent = task.id;
  $("#task-state").replaceWith(Object.assign(stateBadge(task.state), { id: "task-state" }));
  $("#task-summary").textContent = `${task.capability} · submitted ${time(task.submitted_at)} · deadline ${time(task.deadline)}`
    + (task.executed_by ? ` · ran on ${task.executed_by}` : "") + (task.waiting ? ` · ${task.waiting}` : "") + (task.error ? ` · ${task.error}` : "");
  const finished = finishedStates.includes(task.state);
  $("#cancel-task").hidden = finished;
  const steps = task.attempts.flatMap((attempt) => [
    el("li", {}, `${time(attempt.offered_at)} offered to ${attempt.peer_name} (attempt ${attempt.epoch})`),
    attempt.accepted_at ? el("li", {}, `${time(attempt.accepted_at)} accepted by ${attempt.peer_name}, ran there`) : [],
    attempt.ended_at ? el("li", { class: attempt.outcome === "completed" ? "ok" : "bad" }, `${time(attempt.ended_at)} ${attempt.outcome}`) : [],
  ]);
  $("#task-timeline").replaceChildren(...steps);
  $("#task-result").textContent = task.state === "completed" ? JSON.stringify(task.result, null, 2) : task.error || "(not yet)";
  if (finished && shownTask === task.id) loadLog(task.id);
}

function renderWorkflows() {
  const rows = snapshot.workflows.workflows.map((run) => el("tr", { "data-id": run.id, "data-href": `#/workflows/${run.id}` },
    el("td", {}, el("code", {}, run.id.slice(0, 12))), el("td", {}, run.name), el("td", {}, stateBadge(run.state)),
    el("td", {}, `${run.steps.filter((step) => step.state === "completed").length} / ${run.steps.length}`),
    el("td", {}, time(run.submitted_at)), el("td", {}, `${run.seconds.toFixed(2)} s`)));
  $("#workflow-list tbody").replaceChildren(...rows);
}

function renderWorkflow(run) {
  if (!run) return;
  $("#workflow-name").textContent = run.name;
  $("#workflow-state").replaceWith(Object.assign(stateBadge(run.state), { id: "workflow-state" }));
  $("#workflow-summary").textContent = `${run.id} · ${run.seconds.toFixed(2)} s` + (run.error ? ` · ${run.error}` : "");
  // Steps in layers: a step sits one layer after the last step it waits for.
  const layer = new Map();
  const depth = (step) => {
    if (layer.has(step.name)) return layer.get(step.name);
    layer.set(step.name, 0);
    const value = step.after.length ? 1 + Math.max(...step.after.map((name) => depth(run.steps.find((s) => s.name === name) || { name, after: [] }))) : 0;
    layer.set(step.name, value);
    return value;
  };
  run.steps.forEach(depth);
  const columns = new Map();
  const box = { w: 170, h: 62, gx: 60, gy: 24 };
  const place = new Map();
  for (const step of run.steps) {
    const column = layer.get(step.name), row = columns.get(column) || 0;
    columns.set(column, row + 1);
    place.set(step.name, [20 + column * (box.w + box.gx), 20 + row * (box.h + box.gy)]);
  }
  const graph = $("#workflow-graph");
  const width = 40 + Math.max(...[...columns.keys()].map((c) => (c + 1) * (box.w + box.gx))), height = 40 + Math.max(...columns.values()) * (box.h + box.gy);
  graph.setAttribute("viewBox", `0 0 ${width} ${height}`);
  graph.style.width = `${width}px`;
  graph.style.height = `${height}px`;
  graph.replaceChildren(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" }, svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "currentColor" }))));
  for (const step of run.steps) {
    for (const name of step.after) {
      if (!place.has(name)) continue;
      const [x1, y1] = place.get(name), [x2, y2] = place.get(step.name);
      graph.append(svg("path", { class: "edge", d: `M${x1 + box.w},${y1 + box.h / 2} C${x1 + box.w + box.gx / 2},${y1 + box.h / 2} ${x2 - box.gx / 2},${y2 + box.h / 2} ${x2},${y2 + box.h / 2}` }));
    }
  }
  for (const step of run.steps) {
    const [x, y] = place.get(step.name);
    const detail = step.is_map ? `map: ${step.completed} / ${step.items} done${step.failed ? `, ${step.failed} failed` : ""}` : step.capability;
    graph.append(svg("g", { class: `step ${step.state}`, "data-step": step.name, transform: `translate(${x},${y})` },
      svg("title", {}, `${step.name}: ${step.state}${step.error ? `\n${step.error}` : ""}`),
      svg("rect", { width: box.w, height: box.h }),
      svg("text", { x: 10, y: 20 }, step.name),
      svg("text", { x: 10, y: 37, class: "small" }, `${step.state}${step.seconds ? ` · ${step.seconds.toFixed(2)} s` : ""}`),
      svg("text", { x: 10, y: 53, class: "small" }, step.compensation ? `↺ ${step.compensation}` : detail)));
  }
}

function renderHealth() {
  const stats = snapshot.stats.last_five_minutes.map((row) => el("tr", {},
    el("td", {}, row.capability), el("td", {}, row.peer || "all"), el("td", {}, row.executions), el("td", {}, (row.executions / 5).toFixed(1)),
    el("td", { class: row.success_rate < 0.99 ? "bad" : "ok" }, `${(row.success_rate * 100).toFixed(1)} %`),
    el("td", {}, `${(row.execution.p50 * 1000).toFixed(1)} ms`), el("td", {}, `${(row.execution.p99 * 1000).toFixed(1)} ms`),
    el("td", {}, `${(row.queue_wait.p50 * 1000).toFixed(1)} ms`)));
  $("#stats-table tbody").replaceChildren(...stats);
  const limits = snapshot.limits.peers.map((peer) => el("tr", {},
    el("td", {}, peer.name), el("td", {}, peer.connected ? "open" : "none"),
    el("td", { class: peer.banned_until ? "bad" : "" }, peer.banned_until ? time(peer.banned_until) : "-"), el("td", {}, peer.bans),
    el("td", { class: "wrap" }, peer.classes.map((c) => `${c.limit_class} ${c.refused}/${c.accepted + c.refused}`).join(", "))));
  $("#limits-table tbody").replaceChildren(...limits);
  const node = snapshot.node;
  $("#node-summary").textContent = `${node.name} (${node.id.slice(0, 12)}), version ${node.version}, listening on ${node.listen}${node.advertise !== node.listen ? ` (advertised as ${node.advertise})` : ""}, `
    + `up since ${time(node.started_at)}; ${node.messages_received} messages received`;
  const select = $("#audit-peer");
  const known = new Set([...select.options].map((option) => option.value));
  for (const member of snapshot.members.members) {
    if (member.connection !== "self" && !known.has(member.id)) select.append(el("option", { value: member.id }, member.name));
  }
}

async function loadAudit() {
  const peer = $("#audit-peer").value;
  const response = await call("GET", `/v1/audit?last=20${peer ? `&peer=${peer}` : ""}`);
  if (!response.ok) return;
  const audit = await response.json();
  $("#audit-logs tbody").replaceChildren(...audit.logs.map((log) => el("tr", {},
    el("td", {}, log.peer_name || log.file), el("td", { class: log.ok ? "ok" : "bad" }, log.ok ? "ok" : log.problem),
    el("td", {}, log.records), el("td", {}, log.checkpoints), el("td", {}, log.peer_checkpoints))));
  $("#audit-records tbody").replaceChildren(...audit.records.map((record) => el("tr", {},
    el("td", {}, time(record.time)), el("td", {}, record.peer_name), el("td", {}, record.event), el("td", {}, record.message || "-"),
    el("td", {}, record.task ? el("code", {}, record.task.slice(0, 12)) : "-"), el("td", { class: "wrap" }, record.detail))));
}

document.addEventListener("DOMContentLoaded", () => {
  window.addEventListener("hashchange", route);
  document.body.addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-href]");
    if (row) location.hash = row.dataset.href;
  });
  $("#task-filter").addEventListener("input", () => snapshot && renderTasks());
  $("#audit-peer").addEventListener("change", loadAudit);
  $("#cancel-task").addEventListener("click", async () => {
    if (!shownTask) return;
    const id = shownTask;
    const task = await readTask("POST", `/v1/tasks/${id}/cancel`);
    if (task && shownTask === id) renderTask(task);
  });
  $("#leave").addEventListener("click", async () => {
    if (confirm("This node leaves the mesh and stops. Leave?")) await call("POST", "/v1/leave");
  });
  window.addEventListener("resize", () => snapshot && renderMembers());
  signIn();
});
"""#
}
