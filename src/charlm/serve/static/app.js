// charlm serve: the page talks only to the JSON API (/api/runs, /api/generate, /api/score).
"use strict";
const $ = (id) => document.getElementById(id);
let runs = [];
let controller = null;

// The library's messages name command-line flags; this page has none, so it says what to do here.
function pageMessage(message) {
  return message.replace(/ ?\(use --unknown map to replace them with <unk>\)/,
                         " (remove them from the prefix: this page does not map them to <unk>)");
}

function showError(message) {
  $("error").textContent = message ? "error: " + pageMessage(message) : "";
  $("error").hidden = !message;
}

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

// ------------------------------------------------------------------ views
document.querySelectorAll("nav button").forEach((button) => button.addEventListener("click", () => {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b === button));
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== button.dataset.view; });
  if (button.dataset.view === "runs") refreshRuns();
}));

function numberOrNull(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

// ------------------------------------------------------------------ generate (streamed)
async function generate() {
  showError("");
  $("out-prefix").textContent = "";
  $("out-text").textContent = "";
  $("gen-status").textContent = "generating…";
  controller = new AbortController();
  $("go").disabled = true; $("stop").disabled = false;
  const body = {run: $("run").value, length: numberOrNull("length"), seed: numberOrNull("seed"),
                temperature: numberOrNull("temperature"), top_k: numberOrNull("top_k"), top_p: numberOrNull("top_p")};
  // No seed given: draw one here. The server's own 64-bit seeds lose digits as JavaScript numbers,
  // so the seed shown could not repeat the text; one below 2^32 stays exact.
  if (body.seed === null) body.seed = Math.floor(Math.random() * 2 ** 32);
  if ($("prefix").value !== "") body.prefix = $("prefix").value;
  if ($("strategy").value) body.strategy = $("strategy").value;
  try {
    const response = await fetch("/api/generate", {method: "POST", signal: controller.signal,
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    if (!response.ok) throw new Error((await response.json()).error);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handleEvent(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
  } catch (e) {
    if (e.name === "AbortError") $("gen-status").textContent = "stopped";
    else { showError(e.message); $("gen-status").textContent = ""; }
  } finally {
    $("go").disabled = false; $("stop").disabled = true;
  }
}

function handleEvent(block) {
  let kind = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) kind = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  const payload = JSON.parse(data || "{}");
  if (kind === "prefix") $("out-prefix").textContent = payload.text;
  else if (kind === "token") $("out-text").textContent += payload.text;
  else if (kind === "done") $("gen-status").textContent = "done (seed " + payload.seed + ")";
  else if (kind === "error") showError(payload.error);
}

$("go").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());

// ------------------------------------------------------------------ score
function colour(bits) {
  // 0 bits: white; 8 bits and more: strong red.
  const t = Math.min(1, Math.max(0, bits / 8));
  return `rgb(255, ${Math.round(255 - 180 * t)}, ${Math.round(255 - 200 * t)})`;
}

async function score() {
  showError("");
  $("score-out").textContent = "";
  $("score-totals").textContent = "scoring…";
  try {
    const result = await (await api("/api/score", {run: $("run").value, text: $("score-text").value})).json();
    const out = $("score-out");
    result.tokens.forEach((token, i) => {
      const span = document.createElement("span");
      span.textContent = token;
      span.className = "tok";
      const bits = result.surprisal_bits[i];
      span.dataset.index = i;
      if (bits !== null) span.style.background = colour(bits);
      out.appendChild(span);
    });
    out.onmousemove = (event) => {
      const i = event.target.dataset && event.target.dataset.index;
      const tip = $("tooltip");
      if (i === undefined) { tip.hidden = true; return; }
      const bits = result.surprisal_bits[i];
      const alternatives = result.alternatives[i];
      tip.textContent = JSON.stringify(result.tokens[i]) + (bits === null ? "  (first: no history)" :
        "  " + bits.toFixed(2) + " bits\n" + alternatives.map(([t, b]) => JSON.stringify(t) + "  " + b.toFixed(2)).join("\n"));
      tip.style.left = (event.clientX + 12) + "px"; tip.style.top = (event.clientY + 12) + "px"; tip.hidden = false;
    };
    out.onmouseleave = () => { $("tooltip").hidden = true; };
    $("score-totals").textContent = `${(result.tokens.length - 1).toLocaleString()} scored, ` +
      `${result.bits_per_token.toFixed(3)} bits/char, perplexity ${result.perplexity.toFixed(3)}, ` +
      `total ${result.total_bits.toFixed(1)} bits` + (result.unknown ? `, ${result.unknown} unknown` : "");
  } catch (e) { showError(e.message); $("score-totals").textContent = ""; }
}
$("score-go").addEventListener("click", score);

// ------------------------------------------------------------------ runs
const PALETTE = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#57606a"];

async function refreshRuns() {
  if ($("runs").hidden) return;
  try {
    const detailed = await Promise.all(runs.map(async (r) => (await api("/api/runs/" + encodeURIComponent(r.name))).json()));
    drawCurves(detailed);
    const keys = new Set();
    detailed.forEach((r) => Object.entries(r.config || {}).forEach(([section, values]) =>
      Object.keys(values || {}).forEach((k) => keys.add(section + "." + k))));
    const rows = [["run", ...detailed.map((r) => r.name)],
                  ["best val perplexity", ...detailed.map((r) => r.best_val_perplexity === null ? "—" : r.best_val_perplexity.toFixed(3))],
                  ["steps", ...detailed.map((r) => r.steps)],
                  ...[...keys].sort().map((key) => [key, ...detailed.map((r) => {
                    const [section, k] = key.split(".");
                    const v = r.config && r.config[section] ? r.config[section][k] : undefined;
                    return v === undefined ? "" : JSON.stringify(v);
                  })])];
    const table = document.createElement("table");
    rows.forEach((cells, n) => {
      const tr = table.insertRow();
      cells.forEach((c) => { const cell = document.createElement(n ? "td" : "th"); cell.textContent = c; tr.appendChild(cell); });
    });
    $("run-table").replaceChildren(table);
  } catch (e) { showError(e.message); }
}

function drawCurves(detailed) {
  const canvas = $("curves"), g = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = 40;
  g.clearRect(0, 0, W, H);
  const points = detailed.flatMap((r) => r.metrics.flatMap((m) => [m.perplexity, m.val_perplexity]))
    .filter((v) => typeof v === "number" && isFinite(v));
  const steps = detailed.flatMap((r) => r.metrics.map((m) => m.step));
  if (!points.length) { g.fillText("no metrics yet", pad, H / 2); return; }
  const lo = Math.log(Math.min(...points)), hi = Math.log(Math.max(...points)) + 1e-9, maxStep = Math.max(...steps, 1);
  const x = (s) => pad + (W - 2 * pad) * s / maxStep, y = (v) => H - pad - (H - 2 * pad) * (Math.log(v) - lo) / (hi - lo);
  g.strokeStyle = "#999"; g.strokeRect(pad, pad, W - 2 * pad, H - 2 * pad);
  g.fillStyle = "#555"; g.fillText(Math.exp(hi).toFixed(2), 2, pad + 4); g.fillText(Math.exp(lo).toFixed(2), 2, H - pad);
  g.fillText("step " + maxStep, W - pad - 40, H - pad + 16);
  detailed.forEach((r, n) => {
    const colourOf = PALETTE[n % PALETTE.length];
    [["val_perplexity", []], ["perplexity", [2, 3]]].forEach(([key, dash]) => {
      const rows = r.metrics.filter((m) => typeof m[key] === "number" && isFinite(m[key]));
      if (!rows.length) return;
      g.setLineDash(dash); g.strokeStyle = colourOf; g.beginPath();
      rows.forEach((m, i) => (i ? g.lineTo(x(m.step), y(m[key])) : g.moveTo(x(m.step), y(m[key]))));
      g.stroke();
    });
    g.setLineDash([]); g.fillStyle = colourOf; g.fillText(r.name, W - pad - 120, pad + 14 + 14 * n);
  });
}

async function start() {
  try {
    runs = (await (await api("/api/runs")).json()).runs;
    $("run").replaceChildren(...runs.map((r) => new Option(r.name, r.name)));
  } catch (e) { showError(e.message); }
  setInterval(refreshRuns, 3000);
}
start();
