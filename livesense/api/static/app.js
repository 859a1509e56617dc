// The livesense page: publish camera + microphone over WHIP, follow a stream's status and
// recent moments, search and ask, and keep standing queries that light up as they match.

import { api, ApiError, auth, keyframe } from "./api.js";
import { WhipPublisher } from "./whip.js";

const $ = (id) => document.getElementById(id);
const STREAM_KEY = "livesense.stream";
const WATCH_KEY = "livesense.watches";
const STREAM_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const TIMELINE_LIMIT = 40;

const state = {
  stream: "",
  publisher: null,
  media: null,
  publishing: "idle", // idle | connecting | live | error
  ingest: null, // this stream's ingest status from /v1/streams
  records: -1,
  timelineKeys: new Set(),
  anchors: new Map(), // stream -> wall clock at stream time 0 (from stored moments)
  watches: [],
};

// ---- small helpers -----------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clock(t) {
  const s = Math.max(0, Math.round(t));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

function wallTime(unix) {
  return new Date(unix * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function wallOf(moment) {
  if (moment.wall) return moment.wall;
  const anchor = state.anchors.get(moment.stream);
  return anchor === undefined ? null : anchor + moment.start;
}

function terms(query) {
  return (query || "")
    .toLowerCase()
    .split(/[^\p{L}\p{N}]+/u)
    .filter((w) => w.length > 1 && !STOP.has(w));
}
const STOP = new Set(["the", "a", "an", "of", "to", "in", "on", "is", "was", "what", "where", "when", "who", "did", "does", "do", "and", "or", "at", "it", "say", "said", "show", "shown"]);

/** Text with the query's words marked (built as DOM nodes, never as HTML). */
function highlighted(text, words) {
  const frag = document.createDocumentFragment();
  if (!words.length) {
    frag.append(text);
    return frag;
  }
  const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const re = new RegExp(`(${escaped.join("|")})`, "giu");
  let last = 0;
  for (const match of text.matchAll(re)) {
    frag.append(text.slice(last, match.index), el("mark", {}, match[0]));
    last = match.index + match[0].length;
  }
  frag.append(text.slice(last));
  return frag;
}

function notice(message) {
  const box = $("notice");
  box.textContent = message || "";
  box.hidden = !message;
}

function failed(error) {
  if (error instanceof ApiError && error.status === 401) {
    notice("The service needs an access token: set it with the key button at the top right.");
    $("token-panel").hidden = false;
    return;
  }
  notice(error.message || String(error));
}

// ---- moments (timeline rows, search results, watch hits) ----------------------------------

function tags(evidence) {
  const out = [];
  for (const line of evidence.ocr || []) out.push(el("span", { class: "tag ocr", title: "on screen" }, line));
  for (const [name, p] of Object.entries(evidence.events || {})) {
    if (p >= 0.5) out.push(el("span", { class: `tag ev-${name}`, title: `heard: ${name} ${p}` }, name));
  }
  const objects = evidence.objects || [];
  for (const o of objects) {
    const name = o.count > 1 ? `${o.count} × ${o.label}` : o.label;
    const swatch = o.color ? el("span", { class: "swatch", style: `background:${o.color}` }) : null;
    out.push(
      el("span", { class: `tag obj${o.score < 0.5 ? " weak" : ""}`, title: `seen: ${o.label} ${o.score}${o.color ? `, ${o.color}` : ""}` }, swatch, name),
    );
  }
  const scene = Object.entries(evidence.scene || {}).sort((a, b) => b[1] - a[1]);
  if (scene.length && scene[0][1] >= 0.3) {
    out.push(el("span", { class: "tag scene", title: `looks like: ${scene[0][0]} ${scene[0][1]}` }, scene[0][0]));
  }
  const person = objects.some((o) => o.label === "person");
  if (evidence.faces && !person) out.push(el("span", { class: "tag faces" }, evidence.faces === 1 ? "1 face" : `${evidence.faces} faces`));
  return out;
}

/** Boxes of the seen objects over the keyframe (boxes are in the keyframe's pixels). */
function drawBoxes(img, objects) {
  const layer = $("moment-boxes");
  layer.replaceChildren();
  const place = () => {
    const w = img.naturalWidth;
    const h = img.naturalHeight;
    if (!w || !h) return;
    layer.replaceChildren(
      ...objects.map((o) => {
        const [x1, y1, x2, y2] = o.box;
        const style = `left:${(100 * x1) / w}%;top:${(100 * y1) / h}%;width:${(100 * (x2 - x1)) / w}%;height:${(100 * (y2 - y1)) / h}%`;
        return el("div", { class: "box", style }, el("span", {}, `${o.label} ${Math.round(o.score * 100)}%`));
      }),
    );
  };
  if (img.complete && img.naturalWidth) place();
  else img.addEventListener("load", place, { once: true });
}

function momentRow(moment, { query = "", score = null, showStream = false, onClick = null } = {}) {
  const ev = moment.evidence || {};
  const wall = wallOf(moment);
  const img = el("img", { alt: "", loading: "lazy" });
  keyframe(ev.keyframe).then((url) => {
    if (url) img.src = url;
  });
  const said = ev.transcript
    ? el("p", { class: "said" }, highlighted(ev.transcript, terms(query)))
    : el("p", { class: "said none" }, "nothing said");
  const ocr =
    (ev.ocr || []).length ||
    Object.values(ev.events || {}).some((p) => p >= 0.5) ||
    ev.faces ||
    (ev.objects || []).length ||
    Object.values(ev.scene || {}).some((p) => p >= 0.3);
  const row = el(
    "li",
    {
      class: "moment-row",
      dataset: { stream: moment.stream, start: String(moment.start) },
      tabindex: "0",
      onclick: () => (onClick ? onClick(moment) : openMoment(moment)),
      onkeydown: (e) => e.key === "Enter" && (onClick ? onClick(moment) : openMoment(moment)),
    },
    el("div", { class: "thumb" }, img, el("span", { class: "t" }, clock(moment.start))),
    el(
      "div",
      { class: "moment-text" },
      el(
        "div",
        { class: "moment-head" },
        el("span", { class: "when" }, wall ? wallTime(wall) : `${clock(moment.start)}–${clock(moment.end)}`),
        el("span", {}, wall ? `${clock(moment.start)}–${clock(moment.end)}` : ""),
        showStream ? el("span", {}, `· ${moment.stream}`) : null,
        moment.count > 1 ? el("span", {}, `· ${moment.count} snippets`) : null,
        score !== null ? el("span", { class: "score", title: "match score" }, score.toFixed(2)) : null,
      ),
      said,
      ocr ? el("div", { class: "tags" }, ...tags(ev)) : null,
    ),
  );
  return row;
}

/** A stretch with no media: the source dropped, or its clock jumped. */
function gapRow(gap) {
  return el(
    "li",
    { class: "gap-row", dataset: { start: String(gap.start) }, title: gap.reason },
    el("span", { class: "when" }, `${clock(gap.start)}–${clock(gap.end)}`),
    el("span", {}, `no media · ${gap.reason}`),
  );
}

function openMoment(moment) {
  const dialog = $("moment");
  const ev = moment.evidence || {};
  const img = $("moment-img");
  img.removeAttribute("src");
  $("moment-boxes").replaceChildren();
  keyframe(ev.keyframe).then((url) => {
    if (url) {
      img.src = url;
      drawBoxes(img, ev.objects || []);
    }
  });
  const wall = wallOf(moment);
  $("moment-body").replaceChildren(
    el(
      "div",
      { class: "moment-head" },
      el("span", { class: "when" }, wall ? wallTime(wall) : clock(moment.start)),
      el("span", {}, `${clock(moment.start)}–${clock(moment.end)} in ${moment.stream}`),
    ),
    ev.transcript ? el("p", { class: "said" }, ev.transcript) : el("p", { class: "said none" }, "nothing said"),
    el("div", { class: "tags" }, ...tags(ev)),
  );
  if (!dialog.open) dialog.showModal();
}

/** Jump to a moment: show it in the timeline when it is there, else open it. */
function jump(moment) {
  if (moment.stream === state.stream) {
    const row = $("timeline").querySelector(`[data-start="${CSS.escape(String(moment.start))}"]`);
    if (row) {
      row.scrollIntoView({ behavior: "smooth", block: "center" });
      row.classList.remove("flash");
      void row.offsetWidth; // restart the animation
      row.classList.add("flash");
      return;
    }
  }
  openMoment(moment);
}

// ---- status and timeline -----------------------------------------------------------------

function renderState() {
  let s = state.publishing;
  const ingest = state.ingest;
  if (s === "idle" && ingest && ingest.state === "running") s = "ingesting";
  document.body.dataset.state = s;
  const label = {
    idle: ingest && ["done", "stopped"].includes(ingest.state) ? "Ended" : "Idle",
    connecting: "Connecting…",
    live: "Live",
    ingesting: ingest && ingest.url && ingest.url.startsWith("whip://") ? "Live (elsewhere)" : "Ingesting",
    error: "Error",
  }[s];
  $("st-state").querySelector(".text").textContent = label;
  $("st-lag").textContent = ingest && ingest.state === "running" ? `${ingest.lag.toFixed(1)} s` : "–";
  $("st-drops").textContent = ingest ? String(ingest.drops) : "0";
  $("st-drops").parentElement.classList.toggle("warn", Boolean(ingest && ingest.drops));
  const button = $("publish");
  const busy = state.publishing === "connecting" || state.publishing === "live";
  button.textContent = busy ? "Stop" : "Go live";
  button.className = busy ? "danger" : "primary";
  $("stream").disabled = busy;
}

async function refreshStatus() {
  let body;
  try {
    body = await api.streams();
  } catch (error) {
    failed(error);
    return;
  }
  if ($("notice").textContent.startsWith("The service needs an access token")) notice("");
  const list = $("streams");
  const names = body.streams.map((s) => s.stream);
  if (list.children.length !== names.length || [...list.children].some((o, i) => o.value !== names[i])) {
    list.replaceChildren(...names.map((n) => el("option", { value: n })));
  }
  const mine = body.streams.find((s) => s.stream === state.stream);
  state.ingest = mine ? mine.ingest : null;
  const records = mine ? mine.records : 0;
  $("st-snippets").textContent = String(mine ? mine.snippets ?? records : 0);
  renderState();
  if (records !== state.records) {
    state.records = records;
    refreshTimeline();
  }
}

async function refreshTimeline() {
  const stream = state.stream;
  if (!stream) return;
  let body;
  try {
    body = await api.timeline(stream, TIMELINE_LIMIT);
  } catch (error) {
    failed(error);
    return;
  }
  if (stream !== state.stream) return;
  const list = $("timeline");
  const fresh = [];
  for (const m of body.moments) {
    if (m.wall) state.anchors.set(stream, m.wall - m.start);
    const key = `${m.start}`;
    if (!state.timelineKeys.has(key)) fresh.push(m);
  }
  const rows = fresh.map((m) => [m.start, `${m.start}`, () => momentRow({ ...m, stream })]);
  for (const g of body.gaps || []) {
    const key = `gap:${g.start}`;
    if (!state.timelineKeys.has(key)) rows.push([g.start, key, () => gapRow(g)]);
  }
  // Newest first: each new row goes before the first older row.
  for (const [start, key, make] of rows.sort((a, b) => b[0] - a[0])) {
    state.timelineKeys.add(key);
    const row = make();
    row.dataset.key = key;
    const older = [...list.children].find((r) => Number(r.dataset.start) < start) || null;
    list.insertBefore(row, older);
  }
  while (list.children.length > TIMELINE_LIMIT) {
    state.timelineKeys.delete(list.lastChild.dataset.key);
    list.lastChild.remove();
  }
  $("timeline-empty").hidden = list.children.length > 0;
  // The API lists moments newest first; the newest is still picked by time, not position.
  const newest = body.moments.reduce((a, m) => (!a || m.end > a.end ? m : a), null);
  $("timeline-sub").textContent = newest
    ? `${state.records} stored · newest ${clock(newest.end)}${newest.wall ? ` (${wallTime(newest.wall + newest.end - newest.start)})` : ""}`
    : "";
}

function setStream(value) {
  const stream = value.trim();
  if (!STREAM_ID.test(stream)) {
    notice("A stream id is 1 to 64 letters, digits, '.', '_' or '-'.");
    return;
  }
  notice("");
  state.stream = stream;
  localStorage.setItem(STREAM_KEY, stream);
  $("stream").value = stream;
  state.records = -1;
  state.ingest = null;
  state.timelineKeys.clear();
  $("timeline").replaceChildren();
  $("timeline-empty").hidden = false;
  $("timeline-sub").textContent = "";
  refreshStatus();
}

// ---- publishing --------------------------------------------------------------------------

async function goLive() {
  if (state.publisher) {
    await stopLive();
    return;
  }
  notice("");
  state.publishing = "connecting";
  renderState();
  try {
    const media = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 15, max: 30 } },
      audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: true },
    });
    state.media = media;
    $("preview").srcObject = media;
    $("preview-empty").hidden = true;
    const publisher = new WhipPublisher(`/whip/${encodeURIComponent(state.stream)}`, {
      token: auth.token || null,
      onState: (s) => {
        if (publisher !== state.publisher) return;
        if (s === "connected") state.publishing = "live";
        else if (s === "failed") {
          notice("The connection to the service was lost.");
          stopLive("error");
          return;
        }
        renderState();
      },
    });
    state.publisher = publisher;
    await publisher.start(media);
    const tracks = media.getTracks().map((t) => t.kind).join(" + ");
    $("pub-info").textContent = `Publishing ${tracks} to “${state.stream}”.`;
  } catch (error) {
    const message = error && error.name === "NotAllowedError"
      ? "Camera and microphone access was refused by the browser."
      : error.message || String(error);
    notice(message);
    await stopLive("error");
  }
  refreshStatus();
}

async function stopLive(final = "idle") {
  const publisher = state.publisher;
  state.publisher = null;
  if (publisher) await publisher.stop();
  if (state.media) for (const track of state.media.getTracks()) track.stop();
  state.media = null;
  $("preview").srcObject = null;
  $("preview-empty").hidden = false;
  $("pub-info").textContent = "Publishes camera and microphone to this stream over WebRTC (WHIP).";
  state.publishing = final === "error" ? "idle" : final;
  renderState();
  refreshStatus();
}

// ---- search and ask ----------------------------------------------------------------------

async function query(mode) {
  const text = $("search-input").value.trim();
  if (!text) return;
  const stream = $("all-streams").checked ? null : state.stream;
  const answer = $("answer");
  const results = $("results");
  results.setAttribute("aria-busy", "true");
  try {
    const body = mode === "ask" ? await api.ask(text, stream) : await api.search(text, stream);
    answer.hidden = false;
    if (mode === "ask") {
      answer.replaceChildren(el("span", { class: "label" }, "Answer"), body.answer);
    } else {
      const n = body.hits.length;
      answer.replaceChildren(
        el("span", { class: "label" }, "Search"),
        n ? `${n} moment${n === 1 ? "" : "s"} match “${text}”.` : `Nothing matches “${text}” yet.`,
      );
    }
    results.replaceChildren(
      ...body.hits.map((hit) =>
        momentRow(hit, { query: text, score: hit.score, showStream: !stream, onClick: jump }),
      ),
    );
    notice("");
  } catch (error) {
    failed(error);
  } finally {
    results.removeAttribute("aria-busy");
  }
}

// ---- watches -----------------------------------------------------------------------------

function saveWatches() {
  const list = state.watches.map((w) => ({ q: w.q, stream: w.stream }));
  localStorage.setItem(WATCH_KEY, JSON.stringify(list));
}

function addWatch(q, stream) {
  if (state.watches.some((w) => w.q === q && w.stream === stream)) return;
  const watch = { q, stream, count: 0, hits: [], socket: null, closed: false, retry: 0, timer: null };
  const count = el("span", { class: "count", title: "matches" }, "0");
  const meta = el("span", { class: "meta" }, stream ? `in ${stream}` : "all streams");
  const remove = el("button", {
    class: "ghost x",
    type: "button",
    title: "Stop watching",
    "aria-label": `Stop watching ${q}`,
    onclick: (e) => {
      e.stopPropagation();
      removeWatch(watch);
    },
  }, "✕");
  watch.el = el(
    "li",
    {
      class: "watch-item",
      title: "Click to jump to the latest match",
      onclick: () => watch.hits.length && jump(watch.hits[0]),
    },
    el("span", { class: "lamp" }),
    el("span", { class: "wq" }, el("span", { class: "q" }, q), meta),
    count,
    remove,
  );
  watch.countEl = count;
  watch.metaEl = meta;
  $("watches").prepend(watch.el);
  state.watches.push(watch);
  saveWatches();
  connectWatch(watch);
}

function connectWatch(watch) {
  const socket = api.watch(watch.q, watch.stream);
  watch.socket = socket;
  let opened = false;
  socket.addEventListener("open", () => {
    opened = true;
  });
  socket.addEventListener("message", (event) => {
    const msg = JSON.parse(event.data);
    if (msg.watching) {
      watch.retry = 0;
      watch.el.classList.remove("closed");
      return;
    }
    if (!msg.hit) return;
    watch.count += 1;
    watch.hits.unshift(msg.hit);
    watch.hits.length = Math.min(watch.hits.length, 20);
    watch.countEl.textContent = String(watch.count);
    const hit = msg.hit;
    const where = watch.stream ? "" : ` in ${hit.stream}`;
    const show = () => {
      if (watch.hits[0] !== hit) return;
      const wall = wallOf(hit);
      watch.metaEl.textContent = `matched ${wall ? wallTime(wall) : clock(hit.start)}${where}`;
    };
    show();
    watch.el.classList.add("matched", "lit");
    clearTimeout(watch.timer);
    watch.timer = setTimeout(() => watch.el.classList.remove("lit"), 2600);
    if (hit.stream === state.stream) refreshTimeline().then(show); // it may bring the wall clock
  });
  socket.addEventListener("close", (event) => {
    if (watch.closed) return;
    watch.el.classList.add("closed");
    if (event.code === 1008) {
      watch.metaEl.textContent = event.reason || "refused by the service";
      return;
    }
    // refused before it opened (a token, stream or rate limit: an HTTP answer the browser
    // does not show), or the service is unreachable: say so, and try again later
    if (!opened) watch.metaEl.textContent = "not open: check the token; retrying";
    watch.retry = Math.min(watch.retry + 1, 6);
    setTimeout(() => !watch.closed && connectWatch(watch), 500 * 2 ** watch.retry);
  });
}

function removeWatch(watch) {
  watch.closed = true;
  if (watch.socket) watch.socket.close();
  watch.el.remove();
  state.watches = state.watches.filter((w) => w !== watch);
  saveWatches();
}

// ---- wiring ------------------------------------------------------------------------------

function init() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    auth.token = params.get("token");
    params.delete("token");
    history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
  }
  $("token").value = auth.token;
  const initial = params.get("stream") || localStorage.getItem(STREAM_KEY) || `cam-${Math.random().toString(36).slice(2, 6)}`;

  $("stream").addEventListener("change", (e) => setStream(e.target.value));
  $("publish").addEventListener("click", goLive);
  $("token-btn").addEventListener("click", () => ($("token-panel").hidden = !$("token-panel").hidden));
  $("token-save").addEventListener("click", () => {
    auth.token = $("token").value.trim();
    $("token-panel").hidden = true;
    for (const w of state.watches) {
      w.socket.close();
    }
    notice("");
    refreshStatus();
  });
  $("ask-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("search-input").value.trim();
    query(q.endsWith("?") ? "ask" : "search");
  });
  $("ask-btn").addEventListener("click", () => query("ask"));
  $("watch-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("watch-input").value.trim();
    if (!q) return;
    addWatch(q, $("all-streams").checked ? null : state.stream);
    $("watch-input").value = "";
  });
  window.addEventListener("pagehide", () => state.publisher && state.publisher.stop());

  setStream(initial);
  let saved = [];
  try {
    saved = JSON.parse(localStorage.getItem(WATCH_KEY) || "[]");
  } catch {
    saved = [];
  }
  for (const w of saved.reverse()) if (w && w.q) addWatch(w.q, w.stream || null);
  setInterval(refreshStatus, 1000);
  setInterval(refreshTimeline, 5000);
  renderState();
  window.livesense = state; // for the console and for tests
}

init();
