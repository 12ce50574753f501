// The labelling page: one leased item at a time, driven by the keyboard. No build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "vigil.token";
const TASK_KEY = "vigil.task";
const state = {
  token: localStorage.getItem(TOKEN_KEY) || "",
  item: null,          // the item shown (our lease)
  done: [],            // ids we labelled or skipped, newest last (for undo)
  busy: false,
  matches: [],         // triage: intents matching the search
  active: 0,           // triage: highlighted match
  poll: null,
  statsTimer: null,
};

class Unauthorized extends Error {}
class Conflict extends Error {}  // e.g. our lease expired and someone else took the item

const HANDOVER_RETRY_S = 30;  // an owner that died is replaced within its session timeout (10 s default)

async function api(method, path, body) {
  let res;
  for (let waited = 0; ; ) {
    res = await fetch(path, {
      method,
      headers: { "Authorization": `Bearer ${state.token}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    // 503 with Retry-After: the queue is changing hands between service instances.
    const after = Number(res.headers.get("Retry-After"));
    if (res.status !== 503 || !after || waited >= HANDOVER_RETRY_S) break;
    toast(`the queue is changing hands; retrying in ${after}s`);
    await new Promise((resolve) => setTimeout(resolve, after * 1000));
    waited += after;
    toast("");
  }
  if (res.status === 401) throw new Unauthorized("token refused");
  const data = await res.json().catch(() => ({}));
  const message = data.error || `${res.status} ${res.statusText}`;
  if (res.status === 409) throw new Conflict(message);
  if (!res.ok) throw new Error(message);
  return data;
}

function taskFilter() { return $("task").value || null; }

function toast(text, error = false) {
  const t = $("toast");
  t.textContent = text;
  t.className = error ? "error" : "";
}

function showLogin(message = "") {
  $("login").hidden = false;
  $("card").hidden = true;
  $("empty").hidden = true;
  $("login-error").textContent = message;
  $("token").value = "";
  $("token").focus();
}

function renderProgress(p) {
  if (!p) return;
  $("who").textContent = `signed in as ${p.annotator}`;
  const q = p.queue;
  $("progress").textContent =
    `queue: ${q.open} open · ${q.leased} leased · ${q.labelled} labelled · ${q.skipped} skipped` +
    `   —   you: ${p.you.labelled} labelled, ${p.you.skipped} skipped`;
}

function show(item) {
  state.item = item;
  $("login").hidden = true;
  $("card").hidden = !item;
  $("empty").hidden = !!item;
  clearInterval(state.poll);
  if (!item) {
    state.poll = setInterval(() => { if (!state.busy) run(lease); }, 5000);
    return;
  }
  $("item-task").textContent = item.task;
  const reasons = $("item-reasons");
  reasons.replaceChildren(...item.reasons.map((r) => {
    const s = document.createElement("span");
    s.className = "reason";
    s.textContent = r.replace("_", " ");
    return s;
  }));
  $("item-id").textContent = item.message_id;
  $("item-text").textContent = item.text;
  $("model-label").textContent = item.model_label;
  $("conf-bar").style.width = `${Math.round(item.confidence * 100)}%`;
  $("conf-text").textContent = `${Math.round(item.confidence * 100)}%`;
  $("model-top").textContent = item.top.slice(1).map(([l, p]) => `${l} ${Math.round(p * 100)}%`).join(" · ");
  const triage = item.task === "triage";
  $("choices-sentiment").hidden = triage;
  $("choices-triage").hidden = !triage;
  if (triage) {
    $("search").value = "";
    filterIntents();
    $("search").focus();
  } else {
    renderSentiment(item);
    document.activeElement && document.activeElement.blur();
  }
}

function renderSentiment(item) {
  const box = $("choices-sentiment");
  box.replaceChildren(...item.labels.slice(0, 9).map((label, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.tabIndex = -1;
    b.dataset.label = label;
    if (label === item.model_label) b.className = "model-pick";
    const k = document.createElement("kbd");
    k.textContent = String(i + 1);
    b.append(k, label);
    b.addEventListener("click", () => submitLabel(label));
    return b;
  }));
}

// Triage search: every typed word must occur in the intent; the model's top labels come first.
function filterIntents() {
  const item = state.item;
  const words = $("search").value.toLowerCase().replace(/_/g, " ").split(/\s+/).filter(Boolean);
  const prob = Object.fromEntries(item.top);
  const scored = item.labels
    .map((label) => {
      const name = label.toLowerCase().replace(/_/g, " ");
      if (!words.every((w) => name.includes(w))) return null;
      const starts = words.filter((w) => name.split(" ").some((part) => part.startsWith(w))).length;
      return { label, starts, p: prob[label] || 0 };
    })
    .filter(Boolean)
    .sort((a, b) => b.starts - a.starts || b.p - a.p || a.label.localeCompare(b.label));
  state.matches = scored.map((s) => s.label);
  state.active = 0;
  const list = $("intents");
  list.replaceChildren(...scored.map((s, i) => {
    const li = document.createElement("li");
    li.dataset.label = s.label;
    const name = document.createElement("span");
    name.textContent = s.label.replace(/_/g, " ");
    const p = document.createElement("span");
    p.className = "p";
    p.textContent = s.p ? `${Math.round(s.p * 100)}%` : "";
    li.append(name, p);
    li.addEventListener("click", () => submitLabel(s.label));
    if (i === 0) li.className = "active";
    return li;
  }));
  if (!scored.length) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = "no intent has all these words; Backspace, or Esc to clear";
    list.append(li);
  }
}

function moveActive(delta) {
  if (!state.matches.length) return;
  const items = $("intents").children;
  items[state.active].className = "";
  state.active = (state.active + delta + state.matches.length) % state.matches.length;
  items[state.active].className = "active";
  items[state.active].scrollIntoView({ block: "nearest" });
}

async function run(action) {
  if (state.busy) return;
  state.busy = true;
  try {
    await action();
  } catch (e) {
    if (e instanceof Unauthorized) {
      localStorage.removeItem(TOKEN_KEY);
      state.token = "";
      showLogin("That token was refused; paste a valid one.");
    } else if (e instanceof Conflict) {
      toast(e.message, true);
      await lease().catch((err) => toast(err.message, true));
    } else {
      toast(e.message, true);
    }
  } finally {
    state.busy = false;
  }
}

async function lease() {
  const out = await api("POST", "/api/queue/lease", { task: taskFilter() });
  renderProgress(out.progress);
  show(out.item);
}

function afterStep(out, verb) {
  if (out.finished && verb !== "reopened") state.done.push(out.finished.item_id);
  renderProgress(out.progress);
  show(out.item);
  refreshStats();
}

function submitLabel(label) {
  const item = state.item;
  if (!item) return;
  run(async () => {
    const out = await api("POST", `/api/items/${item.item_id}/label`, { label, next_task: taskFilter() });
    afterStep(out, "labelled");
    toast(`labelled “${label}” — u undoes`);
  });
}

function skip() {
  const item = state.item;
  if (!item) return;
  run(async () => {
    const out = await api("POST", `/api/items/${item.item_id}/skip`, { next_task: taskFilter() });
    afterStep(out, "skipped");
    toast("skipped — u undoes");
  });
}

function undo() {
  const last = state.done[state.done.length - 1];
  if (!last) { toast("nothing to undo in this session", true); return; }
  run(async () => {
    const out = await api("POST", `/api/items/${last}/undo`, {});
    state.done.pop();
    afterStep(out, "reopened");
    toast("reopened: label it again");
  });
}

function cycleTask() {
  const sel = $("task");
  sel.selectedIndex = (sel.selectedIndex + 1) % sel.options.length;
  localStorage.setItem(TASK_KEY, sel.value);
  toast(`task filter: ${sel.value || "any"}`);
  run(lease);
}

async function refreshStats() {
  try {
    const s = await api("GET", "/api/stats");
    const rows = Object.entries(s.annotators).map(([name, c]) => {
      const tr = document.createElement("tr");
      for (const text of [name, `labels ${c.labels}`, `skipped ${c.skipped}`]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    const a = s.agreement;
    const parts = Object.entries(a).filter(([, v]) => v.messages).map(
      ([t, v]) => `${t}: ${Math.round(v.pairwise * 100)}% over ${v.messages}`);
    if (parts.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 3;
      td.textContent = `agreement ${parts.join(" · ")}`;
      tr.append(td);
      rows.push(tr);
    }
    $("annotators").replaceChildren(...rows);
  } catch (e) { /* stats are a nicety; the next refresh tries again */ }
}

function onKey(e) {
  if (!$("login").hidden || e.ctrlKey || e.metaKey || e.altKey) return;
  const item = state.item;
  const inSearch = document.activeElement === $("search");
  if (inSearch) {
    if (e.key === "ArrowDown") { e.preventDefault(); moveActive(1); }
    else if (e.key === "ArrowUp") { e.preventDefault(); moveActive(-1); }
    else if (e.key === "Enter") {
      e.preventDefault();
      if (state.matches.length) submitLabel(state.matches[state.active]);
    } else if (e.key === "Escape") {
      e.preventDefault();
      if ($("search").value) { $("search").value = ""; filterIntents(); } else { $("search").blur(); }
    }
    return;
  }
  if (document.activeElement === $("task")) return;
  if (e.key === "s") { e.preventDefault(); skip(); return; }
  if (e.key === "u") { e.preventDefault(); undo(); return; }
  if (e.key === "t") { e.preventDefault(); cycleTask(); return; }
  if (!item) return;
  if (item.task === "triage") {
    if (e.key.length === 1 && /\S/.test(e.key)) $("search").focus();  // the key lands in the box
    return;
  }
  const n = Number.parseInt(e.key, 10);
  if (n >= 1 && n <= Math.min(9, item.labels.length)) { e.preventDefault(); submitLabel(item.labels[n - 1]); }
}

function start() {
  $("task").value = localStorage.getItem(TASK_KEY) || "";
  $("task").addEventListener("change", () => { localStorage.setItem(TASK_KEY, $("task").value); $("task").blur(); run(lease); });
  $("search").addEventListener("input", filterIntents);
  document.addEventListener("keydown", onKey);
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    localStorage.setItem(TOKEN_KEY, state.token);
    begin();
  });
  if (!state.token) { showLogin(); return; }
  begin();
}

function begin() {
  run(async () => {
    await lease();
    refreshStats();
    if (!state.statsTimer) state.statsTimer = setInterval(refreshStats, 15000);
  });
}

document.addEventListener("DOMContentLoaded", start);
