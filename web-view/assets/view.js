// The disksynth web view: everything comes from this server's /api (no
// other origin), drawn on canvases; updates arrive as Server-Sent Events.
"use strict";

const $ = (id) => document.getElementById(id);
const COLS = 128;
const KIND_COLOUR = { f: "#5c8fd6", m: "#e8a33d", z: "#e4e4e4", u: "#9e9e9e" };
const KIND_NAME = { f: "file data", m: "metadata", z: "free", u: "unknown" };
const WRITTEN = "#ab47bc";
let exportName = new URLSearchParams(location.search).get("export");
let cells = null;          // /api/cells
let heat = [];             // per cell: [read, write, trim] glow, 0..1
let written = new Set();   // cells clients wrote
let source = null;
const conns = new Map();   // connection id -> colour
const PALETTE = ["#1e88e5", "#43a047", "#fb8c00", "#8e24aa", "#00897b", "#e53935", "#6d4c41", "#3949ab"];

function q(path) {
  return exportName === null ? path : path + (path.includes("?") ? "&" : "?") + "export=" + encodeURIComponent(exportName);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function us(n) {
  if (n === null || n === undefined) return "–";
  return n < 1000 ? "≤" + n + " µs" : "≤" + (n / 1000).toFixed(n < 10000 ? 1 : 0) + " ms";
}

function text(tag, t, cls) {
  const e = document.createElement(tag);
  e.textContent = t;
  if (cls) e.className = cls;
  return e;
}

function rows(tbody, list) {
  tbody.replaceChildren(...list.map((cols) => {
    const tr = document.createElement("tr");
    cols.forEach((c) => tr.append(text("td", String(c))));
    return tr;
  }));
}

// ---- the map ----------------------------------------------------------

function geometry() {
  const canvas = $("map");
  const n = cells ? cells.kinds.length : 0;
  const rowsN = Math.max(1, Math.ceil(n / COLS));
  const w = canvas.width / COLS;
  const h = Math.max(4, Math.min(w, 256 / rowsN));
  canvas.height = Math.ceil(rowsN * h);
  return { w, h };
}

function mix(a, b, t) {
  const pa = parseInt(a.slice(1), 16), pb = parseInt(b.slice(1), 16);
  const c = [16, 8, 0].map((s) => Math.round(((pa >> s) & 255) * (1 - t) + ((pb >> s) & 255) * t));
  return "rgb(" + c.join(",") + ")";
}

function drawMap() {
  if (!cells) return;
  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  const { w, h } = canvas.geo;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < cells.kinds.length; i++) {
    let colour = written.has(i) ? WRITTEN : KIND_COLOUR[cells.kinds[i]];
    const [r, wr, t] = heat[i];
    if (wr > 0.02) colour = mix(colour.startsWith("#") ? colour : "#ffffff", "#ff4136", wr);
    else if (r > 0.02) colour = mix(colour, "#2ecc40", r);
    else if (t > 0.02) colour = mix(colour, "#ffdc00", t);
    ctx.fillStyle = colour;
    ctx.fillRect((i % COLS) * w, Math.floor(i / COLS) * h, w - 1, h - 1);
  }
}

function cellAt(ev) {
  const canvas = $("map");
  const rect = canvas.getBoundingClientRect();
  const x = (ev.clientX - rect.left) * canvas.width / rect.width;
  const y = (ev.clientY - rect.top) * canvas.height / rect.height;
  const i = Math.floor(y / canvas.geo.h) * COLS + Math.floor(x / canvas.geo.w);
  return cells && i >= 0 && i < cells.kinds.length ? i : null;
}

// Where on the page the first cell mostly holding `text` is (for scripts
// driving the page: a screenshot pointing at a file).
window.cellPoint = (text) => {
  if (!cells) return null;
  const i = cells.names.findIndex((n) => n.includes(text));
  if (i < 0) return null;
  const canvas = $("map");
  const rect = canvas.getBoundingClientRect();
  const sx = rect.width / canvas.width, sy = rect.height / canvas.height;
  return { x: rect.left + ((i % COLS) + 0.5) * canvas.geo.w * sx, y: rect.top + (Math.floor(i / COLS) + 0.5) * canvas.geo.h * sy };
};

function describeCell(i) {
  const start = i * cells.cell_size;
  const end = Math.min(start + cells.cell_size, cells.size);
  const off = cells.file_offsets[i];
  return "cell " + i + " [" + start + ", " + end + "): mostly " + KIND_NAME[cells.kinds[i]] +
    ": " + cells.names[i] + (off === null ? "" : " @ " + off) + (written.has(i) ? " (written by a client)" : "");
}

async function showCell(i) {
  const start = i * cells.cell_size;
  const r = await fetch(q("/api/map?offset=" + start + "&length=" + cells.cell_size));
  const m = await r.json();
  const box = $("cell-info");
  box.replaceChildren(...m.regions.map((p) => {
    const what = p.kind === "file" ? p.path + " @ " + p.file_offset : p.name;
    return text("div", p.offset + " +" + p.length + "  " + p.kind + "  " + what +
      (p.within ? "  (in " + p.within + ")" : "") + (p.read_bytes ? "  read " + bytes(p.read_bytes) : ""));
  }));
  if (m.more) box.append(text("div", "…"));
}

async function loadCells() {
  const r = await fetch(q("/api/cells"));
  cells = await r.json();
  heat = Array.from(cells.kinds, () => [0, 0, 0]);
  $("map").geo = geometry();
  $("cell-note").textContent = cells.kinds.length + " cells of " + bytes(cells.cell_size);
  drawMap();
}

// ---- figures ----------------------------------------------------------

function fileList(ol, list, key) {
  ol.replaceChildren(...list.slice(0, 10).map((f) => {
    const li = text("li", f.path + " ");
    li.append(text("span", key === "ago" ? f.read_s_ago + " s ago, " + bytes(f.read_bytes) : bytes(f.read_bytes), "n"));
    return li;
  }));
  if (!list.length) ol.append(text("li", "nothing read yet", "n"));
}

function drawGraph(history) {
  const canvas = $("graph");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (history.length < 2) return;
  let max = 1;
  for (const s of history) max = Math.max(max, s.read_bps, s.write_bps);
  const x = (i) => (i / (history.length - 1)) * (canvas.width - 2) + 1;
  const y = (v) => canvas.height - 14 - (v / max) * (canvas.height - 20);
  const line = (get, colour, width) => {
    ctx.strokeStyle = colour; ctx.lineWidth = width; ctx.beginPath();
    history.forEach((s, i) => { const v = get(s); if (v === undefined) return; i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v)); });
    ctx.stroke();
  };
  const ids = new Set();
  history.forEach((s) => s.conn_read_bps.forEach(([id]) => ids.add(id)));
  for (const id of ids) {
    if (!conns.has(id)) conns.set(id, PALETTE[conns.size % PALETTE.length]);
    line((s) => { const c = s.conn_read_bps.find((k) => k[0] === id); return c ? c[1] : 0; }, conns.get(id), 1);
  }
  line((s) => s.read_bps, "#2e7d32", 2);
  line((s) => s.write_bps, "#c62828", 2);
  ctx.fillStyle = "#444"; ctx.font = "11px sans-serif";
  ctx.fillText("max " + bytes(max) + "/s, last " + Math.round(history[history.length - 1].t - history[0].t) + " s", 4, canvas.height - 2);
  const legend = [text("span", "read (all)"), text("span", "write (all)")];
  legend[0].style.color = "#2e7d32"; legend[1].style.color = "#c62828";
  for (const id of ids) { const s = text("span", "conn " + id + " read"); s.style.color = conns.get(id); legend.push(s); }
  $("graph-legend").replaceChildren(...legend);
}

function show(st) {
  if (!st.ops) return;
  if (st.exports && st.exports.length > 1) {
    const pick = $("pick");
    if (pick.options.length !== st.exports.length) {
      pick.replaceChildren(...st.exports.map((n) => { const o = text("option", n || "(default)"); o.value = n; return o; }));
    }
    pick.value = st.export;
    $("pick-label").hidden = false;
  }
  $("summary").textContent = (st.export ? "export " + st.export + ": " : "") + bytes(st.size) + " disk, up " +
    Math.round(st.uptime_s) + " s, " + st.connections.open.length + " open connection" +
    (st.connections.open.length === 1 ? "" : "s") + " (" + st.connections.total + " so far)";
  $("rate").textContent = "read " + bytes(st.throughput.read_bps) + "/s, write " + bytes(st.throughput.write_bps) + "/s";
  fileList($("recent"), st.recent_files, "ago");
  fileList($("top"), st.top_files, "bytes");
  rows($("ops").tBodies[0], Object.entries(st.ops).filter(([, o]) => o.requests > 0)
    .map(([name, o]) => [name, o.requests, o.errors, bytes(o.bytes), us(o.p50_us), us(o.p90_us), us(o.p99_us)]));
  const lr = st.latency_recent;
  $("latency").textContent = "last 10 s: read p50 " + us(lr.read.p50_us) + ", p99 " + us(lr.read.p99_us) +
    "; write p50 " + us(lr.write.p50_us) + ", p99 " + us(lr.write.p99_us);
  rows($("conns").tBodies[0], st.connections.open.map((c) =>
    [c.id, c.peer, bytes(c.read_bytes), bytes(c.written_bytes), bytes(c.read_bps) + "/s", bytes(c.write_bps) + "/s"]));
  const dev = Object.entries(st.device);
  rows($("device").tBodies[0], dev.length ? dev.map(([k, v]) => [k.replaceAll("_", " "), k.endsWith("bytes") ? bytes(v) : v])
    : [["no figures from this device (caches and origins keep them: xz, qcow2, http)"]]);
  drawGraph(st.history);
  if (cells) {
    written = new Set(st.written_cells);
    for (const [i, r, w, t] of st.cells) {
      if (!heat[i]) continue;
      const glow = (n) => (n > 0 ? 1 : 0);
      heat[i] = [Math.max(heat[i][0], glow(r)), Math.max(heat[i][1], glow(w)), Math.max(heat[i][2], glow(t))];
    }
  }
}

function connect() {
  if (source) source.close();
  source = new EventSource(q("/api/events"));
  source.addEventListener("stats", (ev) => { $("live").className = "on"; show(JSON.parse(ev.data)); });
  source.onerror = () => { $("live").className = "off"; };
}

// Glow fades over about two seconds.
setInterval(() => {
  for (const h of heat) for (let k = 0; k < 3; k++) h[k] *= 0.85;
  drawMap();
}, 100);

$("map").addEventListener("mousemove", (ev) => {
  const i = cellAt(ev);
  $("hover").textContent = i === null ? "" : describeCell(i);
});
$("map").addEventListener("click", (ev) => { const i = cellAt(ev); if (i !== null) showCell(i); });
$("pick").addEventListener("change", () => {
  exportName = $("pick").value;
  history.replaceState(null, "", "?export=" + encodeURIComponent(exportName));
  start();
});

async function start() {
  await loadCells();
  const r = await fetch(q("/api/stats"));
  show(await r.json());
  connect();
}
start().catch((e) => { $("summary").textContent = "cannot reach the server: " + e; });
