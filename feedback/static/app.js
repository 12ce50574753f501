// The labelling page: one leased item at a time, driven by the keyboard. No build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "vigil.token";
const TASK_KEY = "vigil.task";
const DONE_KEY = "vigil.done";  // per tab: undo still works after a reload
const state = {
  token: localStorage.getItem(TOKEN_KEY) || "",
  item: null,          // the item shown (our lease)
  settling: null,      // timer while a new item is too fresh for a choice key (SETTLE_MS)
  done: JSON.parse(sessionStorage.getItem(DONE_KEY) || "[]"),  // ids we labelled or skipped, newest last (for undo)
  unsure: null,        // id we sent a label or skip for that got no answer: it may have landed
  busy: false,
  matches: [],         // triage: intents matching the search
  active: 0,           // triage: highlighted match
  picked: false,       // triage: the annotator typed or moved the highlight on this item
  poll: null,
  retry: null,
  statsTimer: null,
};

class Unauthorized extends Error {}
class Conflict extends Error {  // e.g. our lease expired and someone else took the item
  constructor(message, code) { super(message); this.code = code; }
}
class Offline extends Error {}  // no answer at all: whatever we sent may or may not have landed

const HANDOVER_RETRY_S = 30;  // an owner that died is replaced within its session timeout (10 s default)
const ANSWER_TIMEOUT_MS = 10000;  // a hung call would otherwise freeze the page without a word
const OFFLINE_RETRY_MS = 5000;
// A key pressed twice (a bouncy key, an impatient annotator) must not label the item that the first
// press brought up before anyone could read it: choice keys wait this long after an item shows.
const SETTLE_MS = 300;

async function api(method, path, body) {
  let res;
  for (let waited = 0; ; ) {
    try {
      res = await fetch(path, {
        method,
        headers: { "Authorization": `Bearer ${state.token}`, "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(ANSWER_TIMEOUT_MS),
      });
    } catch (e) {
      throw new Offline(e.name === "TimeoutError"
        ? `the labelling service did not answer within ${ANSWER_TIMEOUT_MS / 1000} s`
        : "the labelling service cannot be reached");
    }
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
  if (res.status === 409) throw new Conflict(message, data.code);
  if (!res.ok) throw new Error(message);
  return data;
}

function taskFilter() { return $("task").value || null; }

function toast(text, error = false) {
  const t = $("toast");
  t.textContent = text;
  t.className = error ? "error" : "";
}

function setNet(text) {
  $("net").textContent = text;
  $("net").hidden = !text;
}

function remember(done) {
  state.done = done.slice(-20);  // the service keeps as many per annotator
  sessionStorage.setItem(DONE_KEY, JSON.stringify(state.done));
}

function undoKey() { return state.item && state.item.task === "triage" ? "Alt+U" : "u"; }

function showLogin(message = "") {
  // Nothing may call the service with the refused token meanwhile: a poll answered 401 would
  // show this form again and wipe what the annotator is typing into it.
  clearInterval(state.poll);
  clearInterval(state.statsTimer);
  clearTimeout(state.retry);
  state.poll = state.statsTimer = state.retry = null;
  setNet("");
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
    `queue${p.task ? ` (${p.task})` : ""}: ${q.open} open · ${q.leased} leased · ${q.labelled} labelled · ${q.skipped} skipped` +
    `   —   you: ${p.you.labelled} labelled, ${p.you.skipped} skipped`;
}

function show(item) {
  state.item = item;
  clearTimeout(state.settling);
  $("card").classList.add("settling");
  state.settling = setTimeout(() => { state.settling = null; $("card").classList.remove("settling"); }, SETTLE_MS);
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
  renderText(item.text);
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
    state.picked = false;
    $("search").focus();
  } else {
    renderSentiment(item);
    document.activeElement && document.activeElement.blur();
  }
}

// Bidi controls and zero-width characters are invisible yet change the text: U+202E shows
// "detaler" as "related", which is not what the model scored. Each is shown as a marker instead.
const HIDDEN = /[\u200B-\u200F\u202A-\u202E\u2060\u2066-\u2069\uFEFF]/g;
const HIDDEN_NAMES = {
  "200B": "ZWSP", "200C": "ZWNJ", "200D": "ZWJ", "200E": "LRM", "200F": "RLM", "202A": "LRE", "202B": "RLE",
  "202C": "PDF", "202D": "LRO", "202E": "RLO", "2060": "WJ", "2066": "LRI", "2067": "RLI", "2068": "FSI",
  "2069": "PDI", "FEFF": "BOM",
};

function renderText(text) {
  const parts = [];
  let last = 0;
  for (const m of text.matchAll(HIDDEN)) {
    const code = m[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, "0");
    const mark = document.createElement("span");
    mark.className = "hidden-char";
    mark.textContent = HIDDEN_NAMES[code];
    mark.title = `U+${code}, an invisible character in the message`;
    parts.push(text.slice(last, m.index), mark);
    last = m.index + 1;
  }
  parts.push(text.slice(last));
  $("item-text").replaceChildren(...parts);
  $("item-text").scrollTop = 0;
}

function renderSentiment(item) {
  const box = $("choices-sentiment");
  box.replaceChildren(...item.labels.slice(0, 9).map((label, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.label = label;
    b.setAttribute("aria-keyshortcuts", String(i + 1));
    if (label === item.model_label) b.className = "model-pick";
    const k = document.createElement("kbd");
    k.textContent = String(i + 1);
    b.append(k, label);
    b.addEventListener("click", () => submitLabel(label));
    return b;
  }));
}

// Triage search, forgiving of how people write an intent: words split on spaces, "_" and "-"; a
// plural s/es ignored; "topup" found in "top up" (separators dropped); "password" near "passcode"
// (a shared start of 4 letters). Intents are ranked by how well the words match, not dropped for
// one word they lack; among equals the model's likelier labels come first.
const SEPARATORS = /[\s_\-]+/;
const NEAR = 4;

function wordScore(word, parts, joined) {
  const forms = [word, ...[word.replace(/s$/, ""), word.replace(/es$/, "")].filter((f) => f.length > 2)];
  if (parts.some((p) => forms.includes(p))) return 4;
  if (parts.some((p) => forms.some((f) => p.startsWith(f)))) return 3;
  if (forms.some((f) => joined.includes(f))) return 2;
  const near = (p) => word.length >= NEAR && p.slice(0, NEAR) === word.slice(0, NEAR);
  return parts.some(near) ? 1 : 0;
}

function filterIntents() {
  const item = state.item;
  const words = $("search").value.toLowerCase().split(SEPARATORS).filter(Boolean);
  const prob = Object.fromEntries(item.top);
  const scored = item.labels
    .map((label) => {
      const parts = label.toLowerCase().split(SEPARATORS).filter(Boolean);
      const score = words.reduce((sum, w) => sum + wordScore(w, parts, parts.join("")), 0);
      return { label, score, p: prob[label] || 0 };
    })
    .filter((s) => !words.length || s.score > 0)
    .sort((a, b) => b.score - a.score || b.p - a.p || a.label.localeCompare(b.label));
  state.matches = scored.map((s) => s.label);
  state.active = 0;
  const list = $("intents");
  list.replaceChildren(...scored.map((s, i) => {
    const li = document.createElement("li");
    li.id = `intent-${i}`;
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", String(i === 0));
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
    li.textContent = "no intent matches these words; Backspace, or Esc to clear";
    list.append(li);
  }
  $("search").setAttribute("aria-activedescendant", scored.length ? "intent-0" : "");
}

function moveActive(delta) {
  if (!state.matches.length) return;
  const items = $("intents").children;
  items[state.active].className = "";
  items[state.active].setAttribute("aria-selected", "false");
  state.active = (state.active + delta + state.matches.length) % state.matches.length;
  const li = items[state.active];
  li.className = "active";
  li.setAttribute("aria-selected", "true");
  $("search").setAttribute("aria-activedescendant", li.id);
  li.scrollIntoView({ block: "nearest" });
  state.picked = true;
}

// conflict: what to tell the annotator when the service refuses the change with 409 (its own
// wording names API calls); the page then shows whatever item the service holds for them.
async function run(action, conflict = "that item is no longer leased to you (the lease ran out, or it changed elsewhere)") {
  if (state.busy) return;
  state.busy = true;
  $("card").setAttribute("aria-busy", "true");
  const slow = setTimeout(() => setNet("waiting for the labelling service…"), 1000);
  try {
    await action();
    clearTimeout(state.retry);
    state.retry = null;
  } catch (e) {
    if (e instanceof Unauthorized) {
      localStorage.removeItem(TOKEN_KEY);
      state.token = "";
      showLogin("That token was refused; paste a valid one.");
    } else if (e instanceof Offline) {
      setNet(`${e.message}; trying again every ${OFFLINE_RETRY_MS / 1000} s`);
      if (state.unsure) toast("no answer: your choice may or may not be saved; the page finds out once the service answers", true);
      clearTimeout(state.retry);
      state.retry = setTimeout(() => run(resume), OFFLINE_RETRY_MS);
    } else if (e instanceof Conflict) {
      toast(conflict, true);
      await lease().catch((err) => toast(err.message, true));
    } else {
      toast(`the labelling service could not do that: ${e.message}`, true);
    }
  } finally {
    clearTimeout(slow);
    if (!state.retry) setNet("");
    $("card").removeAttribute("aria-busy");
    state.busy = false;
  }
}

async function lease() {
  const out = await api("POST", "/api/queue/lease", { task: taskFilter() });
  // A label or skip that got no answer landed if the service has moved us on from its item.
  const unsure = state.unsure;
  const landed = unsure && (!out.item || out.item.item_id !== unsure);
  if (landed) remember([...state.done, unsure]);
  state.unsure = null;
  renderProgress(out.progress);
  show(out.item);
  if (landed) toast(`your last label or skip did reach the service — ${undoKey()} undoes it`);
  else if (unsure) toast("your last label or skip was not saved: choose again", true);
}

function afterStep(out, verb) {
  if (out.finished && verb !== "reopened") remember([...state.done, out.finished.item_id]);
  renderProgress(out.progress);
  show(out.item);
  refreshStats();
}

// One finishing call for the item shown; a lost answer leaves it unsure (see lease).
async function finish(item, path, body) {
  try {
    return await api("POST", `/api/items/${item.item_id}/${path}`, body);
  } catch (e) {
    if (e instanceof Offline) state.unsure = item.item_id;
    throw e;
  }
}

function submitLabel(label) {
  const item = state.item;
  if (!item) return;
  run(async () => {
    let out;
    try {
      out = await finish(item, "label", { label, next_task: taskFilter() });
    } catch (e) {
      if (!(e instanceof Conflict && e.code === "already_labelled")) throw e;
      // An earlier press landed though its answer was lost: keep it undoable.
      state.unsure = null;
      remember([...state.done, item.item_id]);
      await lease();
      toast(`your earlier label for ${item.message_id} did reach the service, so “${label}” was not ` +
            `saved — ${undoKey()} reopens it to label it again`, true);
      return;
    }
    afterStep(out, "labelled");
    toast(`labelled “${label}” — ${undoKey()} undoes`);
  });
}

function skip() {
  const item = state.item;
  if (!item) return;
  run(async () => {
    const out = await finish(item, "skip", { next_task: taskFilter() });
    afterStep(out, "skipped");
    toast(`skipped — ${undoKey()} undoes`);
  });
}

function undo() {
  const last = state.done[state.done.length - 1];
  if (!last) { toast("nothing to undo in this tab", true); return; }
  run(async () => {
    const out = await api("POST", `/api/items/${last}/undo`, { next_task: taskFilter() });
    remember(state.done.slice(0, -1));
    afterStep(out, "reopened");
    toast("reopened: label it again");
  }, "that can no longer be undone: only your latest label or skip, for a short while after it");
}

function cycleTask() {
  if (state.busy) return;  // the lease below would be dropped, leaving the filter shown but not applied
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

// Alt+S/U/T everywhere: on a ticket every letter goes into the intent search, so plain s/u/t
// (sentiment items, the empty queue) cannot be the only way. e.code, since Alt changes e.key on
// some layouts (macOS Option+S types "ß").
const COMMANDS = { KeyS: skip, KeyU: undo, KeyT: cycleTask };

function onKey(e) {
  if (!$("login").hidden || e.ctrlKey || e.metaKey) return;
  if (e.altKey) {
    const command = COMMANDS[e.code];
    if (command) { e.preventDefault(); command(); }
    return;
  }
  if (document.activeElement === $("task")) return;
  const item = state.item;
  if (item && item.task === "triage") { searchKey(e); return; }
  const command = COMMANDS[`Key${e.key.toUpperCase()}`];
  if (command) { e.preventDefault(); command(); return; }
  if (!item) return;
  const n = Number.parseInt(e.key, 10);
  if (n >= 1 && n <= Math.min(9, item.labels.length)) {
    e.preventDefault();
    if (!e.repeat && !state.settling) submitLabel(item.labels[n - 1]);
  }
}

function searchKey(e) {
  const box = $("search");
  if (e.key === "ArrowDown") { e.preventDefault(); moveActive(1); }
  else if (e.key === "ArrowUp") { e.preventDefault(); moveActive(-1); }
  else if (e.key === "Enter") {
    e.preventDefault();
    // Nothing typed or chosen yet: an Enter meant for the previous ticket must not label this one.
    if (e.repeat) return;
    if (!box.value.trim() && !state.picked) { toast("type part of the intent, or ↑↓ to choose one, then Enter", true); return; }
    if (state.matches.length) submitLabel(state.matches[state.active]);
  } else if (e.key === "Escape") {
    e.preventDefault();
    box.value = "";
    filterIntents();
  } else if (e.key.length === 1 && document.activeElement !== box) {
    box.focus();  // the key lands in the box
  }
}

function start() {
  $("task").value = localStorage.getItem(TASK_KEY) || "";
  $("task").addEventListener("change", () => { localStorage.setItem(TASK_KEY, $("task").value); $("task").blur(); run(lease); });
  $("search").addEventListener("input", () => { filterIntents(); state.picked = true; });
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

async function resume() {
  await lease();
  refreshStats();
  if (!state.statsTimer) state.statsTimer = setInterval(refreshStats, 15000);
}

function begin() { run(resume); }

document.addEventListener("DOMContentLoaded", start);
