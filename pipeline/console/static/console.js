// The operator console: polls the console API every 2 s and renders queue gauges, jobs, dead letters
// and undelivered webhooks. Every piece of API data goes into the page through textContent or an
// attribute (never innerHTML). Auth is the HttpOnly session cookie; the token is never kept in JS.

const POLL_MS = 2000;
const LIMIT = 50;
const $ = (selector, root = document) => root.querySelector(selector);

const state = {
  signedIn: false,
  session: 0,            // bumped on logout, so a poll already in flight cannot sign the page back in
  polling: false,
  again: false,          // a poll was asked for while one ran (a filter change): run it right after
  timer: null,
  jobs: new Map(),       // job_id -> latest state from /jobs
  selected: null,        // job_id shown in the detail pane
  rendered: {},          // section -> JSON last rendered, so an unchanged answer costs no DOM work
  reportUrl: null,
};

class HttpError extends Error {
  constructor(path, status, detail) {
    super(detail ? `${detail} (HTTP ${status})` : `${path}: HTTP ${status}`);
    this.status = status;
  }
}
class Unauthorized extends HttpError {}

async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: { Accept: "application/json" }, ...options };
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized(path, 401);
  if (!response.ok) {
    const detail = await response.json().then((body) => body?.detail, () => null);   // FastAPI's {"detail": ...}
    throw new HttpError(path, response.status, typeof detail === "string" ? detail : null);
  }
  return response.status === 204 ? null : response.json();
}

function postJson(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
                     body: body === undefined ? undefined : JSON.stringify(body) });
}

// el("td", {class: "num", dataset: {x: 1}}, "text", childNode): children are text or nodes, never HTML.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== undefined && child !== null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function formatSeconds(s) {
  if (typeof s !== "number" || !Number.isFinite(s)) return "–";
  if (s < 10) return `${s.toFixed(2)} s`;
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)}m ${String(Math.round(s % 60)).padStart(2, "0")}s`;
}

function formatTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay ? date.toLocaleTimeString() : date.toLocaleString();
}

const timeCell = (iso) => el("td", { title: iso || undefined, class: "time" }, formatTime(iso));
const badge = (status) => el("span", { class: `badge ${status}`, dataset: { status } }, status);
const totalSeconds = (job) => Object.values(job.stats?.timings_s ?? {}).reduce((sum, s) => sum + (Number(s) || 0), 0);

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
  const empty = $(".empty", tbody.closest("section"));
  if (empty) empty.hidden = rows.length > 0;
}

function facts(dl, pairs) {
  dl.replaceChildren(...pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

// Skips the render when this section's answer is the same as last time.
function changed(section, data) {
  const json = JSON.stringify(data);
  if (state.rendered[section] === json) return false;
  state.rendered[section] = json;
  return true;
}

function renderQueue(queue) {
  if (!changed("queue", queue)) return;
  const inFlight = queue.in_flight ?? {};
  const values = {
    depth: queue.depth, delayed: queue.delayed, dead: queue.dead, undelivered_webhooks: queue.undelivered_webhooks,
    in_flight: Object.values(inFlight).reduce((sum, n) => sum + n, 0),
  };
  for (const [name, value] of Object.entries(values)) {
    const gauge = $(`.gauge[data-gauge="${name}"]`);
    $(".value", gauge).textContent = value ?? "–";
    gauge.dataset.value = value ?? "";
    gauge.classList.toggle("alert", (name === "dead" || name === "undelivered_webhooks") && value > 0);
  }
  $('.gauge[data-gauge="in_flight"]').title =
    Object.entries(inFlight).map(([consumer, n]) => `${consumer}: ${n}`).join("\n") || "no consumer busy";
  $("#queue-name").textContent = queue.queue ?? "";
  const stages = Object.entries(queue.stages ?? {});
  $("#jobs-sampled").textContent = queue.jobs_sampled
    ? `stage times over the last ${queue.jobs_sampled} jobs` : "no finished job to time yet";
  $("#stage-timings").hidden = stages.length === 0;
  fill($("#stage-timings tbody"), stages.map(([stage, t]) =>
    el("tr", { dataset: { stage } }, el("td", {}, stage),
       el("td", { class: "num" }, formatSeconds(t?.p50_s)), el("td", { class: "num" }, formatSeconds(t?.p95_s)))));
}

function progressBar(percent) {
  const fillSpan = el("span");
  fillSpan.style.width = `${percent}%`;   // CSSOM, not a style attribute: allowed under a strict CSP
  return el("div", { class: "bar", role: "progressbar", "aria-valuenow": percent, title: `${percent}%` }, fillSpan);
}

function jobRow(job) {
  const progress = Math.max(0, Math.min(100, Number(job.progress) || 0));
  const timings = Object.entries(job.stats?.timings_s ?? {}).map(([s, t]) => `${s}: ${formatSeconds(t)}`).join("\n");
  const row = el("tr", { tabindex: 0, dataset: { jobId: job.job_id, status: job.status },
                         "aria-selected": String(job.job_id === state.selected) },
    el("td", { title: job.job_id }, el("code", {}, job.job_id)),
    el("td", { title: job.shop || undefined }, job.product_handle || job.product_id || "–"),
    el("td", {}, badge(job.status)),
    el("td", {}, job.stage || "–"),
    el("td", {}, progressBar(progress)),
    el("td", { class: "num" }, job.attempts ?? 0),
    el("td", { class: "num", title: timings || undefined }, timings ? formatSeconds(totalSeconds(job)) : "–"),
    timeCell(job.updated_at));
  return row;
}

function renderJobs(jobs) {
  state.jobs = new Map(jobs.map((job) => [job.job_id, job]));
  if (changed("jobs", jobs)) fill($("#jobs-table tbody"), jobs.map(jobRow));
  if (state.selected && state.jobs.has(state.selected)) renderDetail(state.jobs.get(state.selected));
}

function selectJob(jobId) {
  state.selected = jobId;
  for (const row of document.querySelectorAll("#jobs-table tbody tr")) {
    row.setAttribute("aria-selected", String(row.dataset.jobId === jobId));
  }
  const job = state.jobs.get(jobId);
  if (job) renderDetail(job);
}

function setLink(a, url) {
  a.hidden = !url;
  if (url) a.href = url; else a.removeAttribute("href");
}

function renderDetail(job) {
  if (!changed("detail", job)) return;
  $("#job-detail-empty").hidden = true;
  $("#job-detail-body").hidden = false;
  $("#job-detail").dataset.jobId = job.job_id;
  $("#detail-job-id").textContent = job.job_id;
  $("#detail-status").replaceWith(Object.assign(badge(job.status), { id: "detail-status" }));
  facts($("#job-summary"), [
    ["Product", job.product_handle || job.product_id], ["Shop", job.shop], ["Quality", job.quality],
    ["Stage", job.stage], ["Progress", `${job.progress ?? 0}%`], ["Attempts", job.attempts],
    ["Created", formatTime(job.created_at)], ["Updated", formatTime(job.updated_at)],
    ["Finished", job.finished_at && formatTime(job.finished_at)],
    ["Retry at", job.retry_at && formatTime(job.retry_at)],
  ]);
  const error = $("#job-error");
  error.hidden = !job.error;
  const { code = "error", message = "" } = job.error ?? {};
  error.replaceChildren(...(job.error ? [el("strong", {}, code), " ", message] : []));

  const timings = Object.entries(job.stats?.timings_s ?? {});
  if (timings.length) timings.push(["total", totalSeconds(job)]);
  $("#job-timings-block").hidden = timings.length === 0;
  $("#job-timings tbody").replaceChildren(...timings.map(([stage, s]) =>
    el("tr", { dataset: { stage } }, el("td", {}, stage), el("td", { class: "num" }, formatSeconds(s)))));
  const stats = job.stats ?? {};
  facts($("#job-stats"), [
    ["Faces", stats.faces?.toLocaleString()], ["Vertices", stats.vertices?.toLocaleString()],
    ["Watertight", stats.watertight === undefined ? undefined : stats.watertight ? "yes" : "no"],
    ["Budgets", stats.budgets_passed === undefined ? undefined : stats.budgets_passed ? "passed" : "exceeded"],
    ["GLB size", stats.bytes?.glb && `${(stats.bytes.glb / 1024).toFixed(0)} KiB`],
    ["Size (m)", Array.isArray(stats.size_m) ? stats.size_m.map((v) => Number(v).toFixed(3)).join(" × ") : undefined],
  ]);
  $("#job-stats-block").hidden = $("#job-stats").childElementCount === 0;
  const history = job.history ?? [];
  $("#job-history-block").hidden = history.length === 0;
  $("#job-history").replaceChildren(...history.map(({ event, at, ...rest }) =>
    el("li", {}, el("span", { class: "time" }, formatTime(at)), " ", el("strong", {}, event),
       Object.keys(rest).length ? ` ${JSON.stringify(rest)}` : "")));
  renderAssets(job.status === "completed" ? job.assets ?? {} : {});
}

function renderAssets(assets) {
  const viewer = $("#job-model");
  $("#job-assets").hidden = !assets.glb && !assets.poster;
  setLink($("#asset-glb"), assets.glb);
  setLink($("#asset-usdz"), assets.usdz);
  setLink($("#asset-report"), assets.report);
  const poster = $("#job-poster");
  poster.hidden = !assets.poster;
  if (assets.poster) poster.src = assets.poster; else poster.removeAttribute("src");
  if ((viewer.getAttribute("src") ?? null) !== (assets.glb ?? null)) {
    viewer.dataset.state = assets.glb ? "loading" : "empty";
    if (assets.glb) viewer.setAttribute("src", assets.glb); else viewer.removeAttribute("src");
  }
  if (assets.report !== state.reportUrl) loadReport(assets.report);
}

async function loadReport(url) {
  state.reportUrl = url;
  const block = $("#job-report");
  block.hidden = !url;
  block.dataset.state = url ? "loading" : "empty";
  $("#job-report-summary").replaceChildren();
  $("#job-report-json").textContent = "";
  if (!url) return;
  try {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const report = await response.json();
    if (state.reportUrl !== url) return;   // another job was selected meanwhile
    const failed = Object.entries(report.validators ?? {}).filter(([, v]) => v.status === "failed").map(([k]) => k);
    facts($("#job-report-summary"), [
      ["Preset", report.preset], ["Formats", (report.formats ?? []).join(", ")],
      ["Validators", Object.entries(report.validators ?? {}).map(([k, v]) => `${k}: ${v.status}`).join(", ")],
      ["Budgets", report.budgets && (report.budgets.passed ? "passed" : "exceeded")],
      ["Watertight", report.surface && (report.surface.watertight ? "yes" : "no")],
      ["Adjustments", (report.adjustments ?? []).join("; ")],
    ]);
    block.dataset.state = failed.length || report.budgets?.passed === false ? "warning" : "loaded";
    $("#job-report-json").textContent = JSON.stringify(report, null, 2);
  } catch (error) {
    if (state.reportUrl !== url) return;
    block.dataset.state = "error";
    $("#job-report-json").textContent = `Could not load the report: ${error.message}`;
    $("#job-report details").open = true;
  }
}

// A letter whose info was trimmed comes as {job_id: null, raw_bytes}: shown, but it cannot be requeued by id.
function deadRow(entry) {
  if (!entry.job_id) {
    const text = `Unreadable letter (${entry.raw_bytes ?? "?"} bytes, its info was trimmed)`;
    return el("tr", { class: "unreadable" }, el("td", { colspan: 5 }, text));
  }
  const reason = [el("strong", {}, entry.error?.code ?? "unknown"), el("br"), entry.error?.message ?? ""];
  return el("tr", { dataset: { jobId: entry.job_id } },
    el("td", { title: entry.job_id }, el("code", {}, entry.job_id)),
    el("td", { class: "reason", title: entry.consumer ? `dead-lettered by ${entry.consumer}` : undefined }, ...reason),
    el("td", { class: "num" }, entry.attempts ?? "–"),
    timeCell(entry.ts),
    el("td", {}, el("button", { type: "button", class: "small", dataset: { requeue: entry.job_id } }, "Requeue")));
}

function renderDead(dead) {
  if (changed("dead", dead)) fill($("#dead-letters tbody"), dead.map(deadRow));
}

function webhookRow(hook) {
  return el("tr", { dataset: { webhookId: hook.webhook_id, jobId: hook.job_id } },
    el("td", {}, el("code", {}, hook.webhook_id)),
    el("td", { title: hook.job_id }, el("code", {}, hook.job_id)),
    el("td", {}, hook.status),
    el("td", { class: "reason" }, hook.error ?? ""),
    timeCell(hook.recorded_at));
}

function renderWebhooks(undelivered) {
  $("#replay-webhooks").disabled = undelivered.length === 0;
  if (changed("webhooks", undelivered)) fill($("#webhooks tbody"), undelivered.map(webhookRow));
}

function setConnection(kind, text) {
  const node = $("#connection");
  node.dataset.state = kind;
  node.textContent = text;
}

function showSignedIn(signedIn) {
  state.signedIn = signedIn;
  $("#login-form").hidden = signedIn;
  $("#console").hidden = !signedIn;
  $("#logout").hidden = !signedIn;
  if (!signedIn) {
    setConnection("signed-out", "Signed out");
    state.rendered = {};
    $("#login-token").focus();
  }
}

async function poll() {
  clearTimeout(state.timer);
  if (state.polling) { state.again = true; return; }
  state.polling = true;
  state.again = false;
  try {
    const status = $("#job-status-filter").value;
    const session = state.session;
    const [queue, jobs, dead, webhooks] = await Promise.all([
      api("/queue"),
      api(`/jobs?${new URLSearchParams({ ...(status && { status }), limit: LIMIT })}`),
      api(`/dead?limit=${LIMIT}`),
      api(`/webhooks?limit=${LIMIT}`),
    ]);
    if (session !== state.session) return;
    if (!state.signedIn) showSignedIn(true);
    renderQueue(queue);
    renderJobs(jobs.jobs ?? []);
    renderDead(dead.dead ?? []);
    renderWebhooks(webhooks.undelivered ?? []);
    setConnection("live", `Live · ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    if (error instanceof Unauthorized) return showSignedIn(false);   // no next poll until signed in
    setConnection("error", `Connection problem: ${error.message} · retrying`);
  } finally {
    state.polling = false;
  }
  // A hidden tab does not poll; visibilitychange starts it again.
  if (state.signedIn && !document.hidden) state.timer = setTimeout(poll, state.again ? 0 : POLL_MS);
}

async function withButton(button, action) {
  button.disabled = true;
  try { await action(); } finally { button.disabled = false; }
}

async function requeue(button) {
  const jobId = button.dataset.requeue;
  const result = $("#requeue-result");
  await withButton(button, async () => {
    try {
      await postJson(`/dead/${encodeURIComponent(jobId)}/requeue`);
      result.textContent = `Requeued ${jobId}`;
    } catch (error) {
      if (error instanceof Unauthorized) return showSignedIn(false);
      result.textContent = error.status === 404 ? `${jobId} is not dead-lettered any more` : error.message;
    }
  });
  poll();
}

async function replayWebhooks(button) {
  const result = $("#replay-result");
  await withButton(button, async () => {
    try {
      const { replayed, delivered, failed } = await postJson("/webhooks/replay");
      result.textContent = `Replayed ${replayed}: ${delivered} delivered, ${failed} failed`;
    } catch (error) {
      if (error instanceof Unauthorized) return showSignedIn(false);
      result.textContent = error.message;
    }
  });
  poll();
}

async function signIn(event) {
  event.preventDefault();
  const input = $("#login-token");
  const message = $("#login-error");
  const token = input.value;
  input.value = "";   // the cookie carries the session from here on
  try {
    await postJson("/ui/session", { token });
    message.hidden = true;
    showSignedIn(true);
    poll();
  } catch (error) {
    message.hidden = false;
    message.textContent = error instanceof Unauthorized ? "That token was not accepted." : error.message;
  }
}

function start() {
  const viewer = $("#job-model");
  viewer.addEventListener("load", () => { viewer.dataset.state = "loaded"; });
  viewer.addEventListener("error", () => { viewer.dataset.state = "error"; });
  $("#login-form").addEventListener("submit", signIn);
  $("#logout").addEventListener("click", async () => {
    state.session += 1;
    clearTimeout(state.timer);
    await fetch("/ui/logout", { method: "POST", credentials: "same-origin" }).catch(() => {});
    showSignedIn(false);
  });
  $("#job-status-filter").addEventListener("change", poll);
  $("#replay-webhooks").addEventListener("click", (event) => replayWebhooks(event.currentTarget));
  $("#dead-letters tbody").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-requeue]");
    if (button) requeue(button);
  });
  const jobs = $("#jobs-table tbody");
  jobs.addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-job-id]");
    if (row) selectJob(row.dataset.jobId);
  });
  jobs.addEventListener("keydown", (event) => {
    const row = event.target.closest("tr[data-job-id]");
    if (row && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); selectJob(row.dataset.jobId); }
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && state.signedIn) poll(); });
  poll();
}

start();
