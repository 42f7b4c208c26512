// GET /explain: draws POST /bptt's trace. Plain JavaScript, no libraries, no network but this server.
"use strict";

const $ = (id) => document.getElementById(id);

// mulberry32: a small seeded generator, so a seed always gives the same model.
function generator(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const uniform = (rand, rows, cols, bound) =>
  Array.from({ length: rows }, () => Array.from({ length: cols }, () => (2 * rand() - 1) * bound));

// The tutorial's initialisation: uniform in +-1/sqrt(fan-in); W times `scale`.
function randomModel(H, C, T, seed, scale) {
  const rand = generator(seed);
  const tokens = () => Array.from({ length: T }, () => Math.floor(rand() * C));
  return {
    U: uniform(rand, H, C, 1 / Math.sqrt(C)),
    V: uniform(rand, C, H, 1 / Math.sqrt(H)),
    W: uniform(rand, H, H, scale / Math.sqrt(H)),
    x: tokens(),
    y: tokens(),
  };
}

// The cells, their gates stacked in PyTorch's order (GRU r, z, n; LSTM i, f, g, o), and how they are drawn.
const CELLS = ["rnn", "gru", "lstm"];
const GATES = { gru: 3, lstm: 4 };
const NAMES = { rnn: "vanilla RNN", gru: "GRU", lstm: "LSTM" };
const STROKES = { rnn: "#d62728", gru: "#2ca02c", lstm: "#1f77b4" };

// A gated cell for the vanilla model's tokens and V: every gate's U (H x C) and W (H x H) drawn as the
// vanilla cell's are, from a generator of the cell's own, so the tokens stay the same whichever cell is chosen.
// The LSTM's forget gate gets the bias `forgetBias` (1 is Jozefowicz et al. 2015's advice, Keras' default).
function gatedModel(base, cell, { H, C, seed, scale, resetAfter, forgetBias }) {
  const G = GATES[cell];
  const rand = generator((seed ^ Math.imul(G, 0x9e3779b9)) >>> 0);
  const body = {
    cell,
    U: Array.from({ length: G }, () => uniform(rand, H, C, 1 / Math.sqrt(C))),  // (G, H, C)
    V: base.V,
    W: Array.from({ length: G }, () => uniform(rand, H, H, scale / Math.sqrt(H))),  // (G, H, H)
    x: base.x,
    y: base.y,
  };
  if (cell === "gru") body.reset_after = resetAfter;
  if (cell === "lstm") body.b = Array.from({ length: G }, (_, g) => new Array(H).fill(g === 1 ? forgetBias : 0));
  return body;
}

// The random model of the form's sizes and seed, for `cell`, with full BPTT.
function randomBody(cell) {
  const num = (id) => Number($(id).value);
  const sizes = { H: num("H"), C: num("C"), seed: num("seed"), scale: num("scale") };
  const base = randomModel(sizes.H, sizes.C, num("T"), sizes.seed, sizes.scale);
  if (cell === "rnn") return base;
  return gatedModel(base, cell, { ...sizes, resetAfter: $("reset_after").checked, forgetBias: num("forget_bias") });
}

function request() {
  const pasted = $("pasted").value.trim();
  let body;
  if (pasted) {
    body = JSON.parse(pasted);
  } else {
    body = randomBody($("cell").value);
    const K = $("K").value.trim();
    body.bptt_truncate = K === "" ? null : Number(K);
  }
  body.trace = true;
  return body;
}

async function post(path, body, headers) {
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  return { ok: response.ok, status: response.status, data: await response.json() };
}

// A perceptual ramp (viridis' ends and middle), for values in [0, 1].
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function colour(v) {
  const x = Math.min(Math.max(v, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2);
  const f = x - i;
  const c = RAMP[i].map((lo, k) => Math.round(lo + f * (RAMP[i + 1][k] - lo)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function drawHeatmap(canvas, norms) {
  const ctx = canvas.getContext("2d");
  const T = norms.length;
  const pad = { left: 44, top: 14, right: 84, bottom: 34 };
  const w = (canvas.width - pad.left - pad.right) / T;
  const h = (canvas.height - pad.top - pad.bottom) / T;
  const logs = norms.flat().filter((v) => v > 0).map(Math.log10);
  const lo = Math.min(...logs);
  const hi = Math.max(...logs);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  norms.forEach((row, t) => {
    row.forEach((n, j) => {  // row[j] is the delta at step k = t - j
      const k = t - j;
      ctx.fillStyle = n > 0 ? colour((Math.log10(n) - lo) / (hi - lo || 1)) : "#000";
      ctx.fillRect(pad.left + k * w, pad.top + t * h, Math.ceil(w), Math.ceil(h));
    });
  });
  ctx.fillStyle = "#222";
  ctx.font = "12px sans-serif";
  ctx.fillText("step k →", pad.left, canvas.height - 8);
  ctx.save();
  ctx.translate(14, pad.top + 60);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText("output t →", -50, 0);
  ctx.restore();
  for (let i = 0; i <= 4; i++) {  // colour bar
    const y0 = pad.top + (i * (canvas.height - pad.top - pad.bottom)) / 5;
    ctx.fillStyle = colour(1 - i / 4);
    ctx.fillRect(canvas.width - pad.right + 10, y0, 14, (canvas.height - pad.top - pad.bottom) / 5);
    ctx.fillStyle = "#222";
    ctx.fillText(`1e${(hi - (i * (hi - lo)) / 4).toFixed(1)}`, canvas.width - pad.right + 30, y0 + 12);
  }
}

function drawLags(canvas, summary) {
  const ctx = canvas.getContext("2d");
  const pad = { left: 64, top: 16, right: 16, bottom: 40 };
  const W = canvas.width - pad.left - pad.right;
  const H = canvas.height - pad.top - pad.bottom;
  const values = summary.flatMap((s) => [s.mean_norm, s.max_norm]).filter((v) => v > 0).map(Math.log10);
  const lo = Math.floor(Math.min(...values));
  const hi = Math.ceil(Math.max(...values)) + (Math.min(...values) === Math.max(...values) ? 1 : 0);
  const px = (j) => pad.left + (summary.length > 1 ? (j * W) / (summary.length - 1) : W / 2);
  const py = (v) => pad.top + H - ((Math.log10(v) - lo) / (hi - lo)) * H;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#ccd";
  ctx.fillStyle = "#222";
  ctx.font = "12px sans-serif";
  for (let e = lo; e <= hi; e++) {
    ctx.beginPath();
    ctx.moveTo(pad.left, py(10 ** e));
    ctx.lineTo(pad.left + W, py(10 ** e));
    ctx.stroke();
    ctx.fillText(`1e${e}`, 8, py(10 ** e) + 4);
  }
  ctx.fillText("lag j = t − k →", pad.left + W / 2 - 40, canvas.height - 6);
  for (const j of new Set([0, Math.floor((summary.length - 1) / 2), summary.length - 1])) {
    ctx.fillText(String(j), px(j) - 4, pad.top + H + 16);
  }
  for (const [key, stroke] of [["max_norm", "#d62728"], ["mean_norm", "#1f77b4"]]) {
    ctx.strokeStyle = stroke;
    ctx.lineWidth = 2;
    ctx.beginPath();
    summary.forEach((s, j) => (j ? ctx.lineTo(px(j), py(s[key])) : ctx.moveTo(px(j), py(s[key]))));
    ctx.stroke();
    ctx.fillStyle = stroke;
    ctx.fillText(key === "max_norm" ? "largest" : "mean", pad.left + W - 60, key === "max_norm" ? pad.top + 14 : pad.top + 30);
  }
  ctx.lineWidth = 1;
}

// log10 values in a T x T table (null where there is none), row t, column k.
function drawLogMatrix(canvas, rows) {
  const ctx = canvas.getContext("2d");
  const T = rows.length;
  const pad = { left: 44, top: 14, right: 84, bottom: 34 };
  const w = (canvas.width - pad.left - pad.right) / T;
  const h = (canvas.height - pad.top - pad.bottom) / T;
  const values = rows.flat().filter((v) => v !== null);
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  rows.forEach((row, t) => {
    row.forEach((v, k) => {
      if (v === null) return;
      ctx.fillStyle = colour((v - lo) / (hi - lo || 1));
      ctx.fillRect(pad.left + k * w, pad.top + t * h, Math.ceil(w), Math.ceil(h));
    });
  });
  ctx.fillStyle = "#222";
  ctx.font = "12px sans-serif";
  ctx.fillText("step k →", pad.left, canvas.height - 8);
  ctx.fillText(`1e${hi.toFixed(1)}`, canvas.width - pad.right + 8, pad.top + 12);
  ctx.fillText(`1e${lo.toFixed(1)}`, canvas.width - pad.right + 8, canvas.height - pad.bottom);
}

// Curves on a log scale over x = 0, 1, ...; `mark` draws a vertical line at that x.
function drawCurves(canvas, series, { xlabel, mark }) {
  const ctx = canvas.getContext("2d");
  const pad = { left: 64, top: 16, right: 16, bottom: 40 };
  const W = canvas.width - pad.left - pad.right;
  const H = canvas.height - pad.top - pad.bottom;
  const n = Math.max(...series.map((s) => s.values.length));
  const logs = series.flatMap((s) => s.values).filter((v) => v > 0).map(Math.log10);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#222";
  ctx.font = "12px sans-serif";
  ctx.fillText(xlabel, pad.left + W / 2 - 40, canvas.height - 6);
  if (!logs.length) {
    ctx.fillText("all zero", pad.left + W / 2 - 20, pad.top + H / 2);
    return;
  }
  const lo = Math.floor(Math.min(...logs));
  const hi = Math.ceil(Math.max(...logs)) + (Math.min(...logs) === Math.max(...logs) ? 1 : 0);
  const px = (j) => pad.left + (n > 1 ? (j * W) / (n - 1) : W / 2);
  const py = (v) => pad.top + H - ((Math.log10(v) - lo) / (hi - lo)) * H;
  ctx.strokeStyle = "#ccd";
  for (let e = lo; e <= hi; e++) {
    ctx.beginPath();
    ctx.moveTo(pad.left, py(10 ** e));
    ctx.lineTo(pad.left + W, py(10 ** e));
    ctx.stroke();
    ctx.fillText(`1e${e}`, 8, py(10 ** e) + 4);
  }
  for (const j of new Set([0, Math.floor((n - 1) / 2), n - 1])) ctx.fillText(String(j), px(j) - 4, pad.top + H + 16);
  if (mark !== undefined && mark < n) {
    ctx.strokeStyle = "#888";
    ctx.setLineDash([4, 4]);
    ctx.beginPath();
    ctx.moveTo(px(mark), pad.top);
    ctx.lineTo(px(mark), pad.top + H);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillText(`K = ${mark}`, px(mark) + 4, pad.top + 12);
  }
  series.forEach(({ label, values, stroke, width }, i) => {
    ctx.strokeStyle = stroke;
    ctx.fillStyle = stroke;
    ctx.lineWidth = width || 2;
    ctx.beginPath();
    let started = false;
    values.forEach((v, j) => {
      if (!(v > 0)) return;
      if (started) ctx.lineTo(px(j), py(v));
      else ctx.moveTo(px(j), py(v));
      started = true;
    });
    ctx.stroke();
    ctx.textAlign = "right";
    ctx.fillText(label, pad.left + W - 4, pad.top + 14 + 16 * i);
    ctx.textAlign = "left";
  });
  ctx.lineWidth = 1;
}

async function drawFlow(body, headers) {
  const flowBody = {};
  for (const k of ["U", "V", "W", "x", "y", "s0", "b", "c"]) if (body[k] !== undefined) flowBody[k] = body[k];
  const response = await fetch("/bptt/flow", { method: "POST", headers, body: JSON.stringify(flowBody) });
  const flow = await response.json();
  if (!response.ok) {
    $("flowsummary").textContent = `The flow was not computed: ${response.status}: ${flow.detail}`;
    return;
  }
  const rho = flow.W_spectral_radius;
  $("flowsummary").textContent =
    `W: spectral radius ${rho.toFixed(4)}, largest singular value ${flow.W_sigma_max.toFixed(4)} ` +
    `(${rho < 1 ? "below 1: products of Jacobians shrink, gradients vanish" : "1 or more: products can grow, gradients may explode"}; a bound, not an equality).`;
  document.body.dataset.radius = String(rho);  // for tests
  drawLogMatrix($("flowmap"), flow.log10_jacobian_norms);
  const lags = flow.lag_contributions;
  drawCurves($("lagdecay"), [
    { label: "dL/dW", values: lags.dLdW, stroke: "#d62728" },
    { label: "dL/dU", values: lags.dLdU, stroke: "#1f77b4" },
  ], { xlabel: "lag l →" });
  const bias = flow.truncation_bias;
  drawCurves($("bias"), [
    { label: "dL/dW", values: bias.dLdW, stroke: "#d62728" },
    { label: "dL/dU", values: bias.dLdU, stroke: "#1f77b4" },
  ], { xlabel: "bptt_truncate K →", mark: 4 });
}

const norm = (v) => Math.sqrt(v.reduce((sum, a) => sum + a * a, 0));

// ||dL/ds_k|| by step for the chosen cell, and the LSTM's ||dL/dc_k||.
function drawSteps(cell, trace) {
  const canvas = $("statesteps");
  const ds = trace.dLds.map(norm);
  const series = [{ label: "‖∂L/∂s_k‖", values: ds, stroke: STROKES[cell] }];
  canvas.dataset.dlds = JSON.stringify(ds);  // for tests
  delete canvas.dataset.dldc;
  if (trace.dLdc) {
    const dc = trace.dLdc.map(norm);
    series.push({ label: "‖∂L/∂c_k‖ (cell state)", values: dc, stroke: "#9467bd" });
    canvas.dataset.dldc = JSON.stringify(dc);
  }
  drawCurves(canvas, series, { xlabel: "step k →" });
  $("dcnote").hidden = !trace.dLdc;
}

// The three cells (or the pasted one) on one chart and in the table: mean ||dE_t/ds_{t-j}|| by lag j.
function drawComparison(runs, chosen) {
  const curves = runs.map(({ cell, data }) => ({ cell, means: data.trace.state_lag_summary.map((s) => s.mean_norm) }));
  drawCurves(
    $("compare"),
    curves.map(({ cell, means }) => ({
      label: NAMES[cell], values: means, stroke: STROKES[cell], width: cell === chosen ? 3.5 : 1.5,
    })),
    { xlabel: "lag j = t − k →" },
  );
  const far = Math.floor((Math.min(...curves.map((c) => c.means.length)) - 1) / 2);  // half way back: many outputs
  $("farhead").textContent = `at lag ${far}`;
  $("farlag").textContent = String(far);
  const tbody = $("comparetable").tBodies[0];
  tbody.replaceChildren();
  for (const { cell, means } of curves) {
    const row = tbody.insertRow();
    Object.assign(row.dataset, { cell, lag0: String(means[0]), far: String(means[far]), lag: String(far) });  // for tests
    for (const text of [NAMES[cell], means[0].toExponential(3), means[far].toExponential(3), (means[far] / means[0]).toExponential(2)]) {
      row.insertCell().textContent = text;
    }
    if (cell === chosen) row.style.fontWeight = "600";
  }
  if (curves.length < 2) {
    $("statesummary").textContent = `The pasted ${NAMES[chosen]}: clear the pasted text to compare the three cells on random models.`;
    return;
  }
  // Whatever these weights show, said in words: which cell keeps the most of an output's error `far` steps back.
  const ranked = [...curves].sort((a, b) => b.means[far] - a.means[far]);
  const grows = curves.filter((c) => c.means[far] > c.means[0]).map((c) => NAMES[c.cell]);
  $("statesummary").textContent =
    `${far} steps back, what is left of an output's error is ` +
    curves.map((c) => `${c.means[far].toExponential(1)} for the ${NAMES[c.cell]}`).join(", ") +
    `: here the ${NAMES[ranked[0].cell]} keeps the most, the ${NAMES[ranked[ranked.length - 1].cell]} the least` +
    (grows.length ? ` (and the ${grows.join(" and the ")} grows: exploding).` : ".");
}

// After an error, the previous drawing goes: it must not be taken for the new result.
function clearResults() {
  $("results").hidden = true;
  for (const id of ["summary", "flowsummary", "statesummary"]) $(id).textContent = "";
  for (const id of ["heatmap", "lags", "flowmap", "lagdecay", "bias", "statesteps", "compare"]) {
    const c = $(id);
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
  $("comparetable").tBodies[0].replaceChildren();
  delete $("statesteps").dataset.dlds;
  delete $("statesteps").dataset.dldc;
  delete document.body.dataset.loss;
  delete document.body.dataset.radius;
  delete document.body.dataset.cell;
}

function fail(message) {
  clearResults();
  const status = $("status");
  status.className = "error";
  status.textContent = message;
}

let latest = 0;  // the newest computation: an older one that finishes later does not draw over it

async function compute(event) {
  if (event) event.preventDefault();
  const mine = ++latest;
  const status = $("status");
  status.className = "";
  status.textContent = "computing…";
  let body;
  try {
    body = request();
  } catch (err) {
    fail(`The pasted text is not JSON: ${err.message}`);
    return;
  }
  const pasted = $("pasted").value.trim() !== "";
  const cell = body.cell || "rnn";
  const headers = { "Content-Type": "application/json" };
  if ($("key").value) headers.Authorization = `Bearer ${$("key").value}`;
  const { ok, status: code, data } = await post("/bptt", body, headers);
  if (mine !== latest) return;
  if (!ok) {
    fail(`${code}: ${data.detail}`);
    return;
  }
  // The same tokens through the other cells, with full BPTT (the gated cells' trace always is).
  const runs = [];
  for (const other of pasted ? [cell] : CELLS) {
    if (other === cell && (pasted || body.bptt_truncate == null)) {
      runs.push({ cell, data });
      continue;
    }
    const answer = await post("/bptt", { ...randomBody(other), trace: true }, headers);
    if (mine !== latest) return;
    if (!answer.ok) {
      fail(`${NAMES[other]}: ${answer.status}: ${answer.data.detail}`);
      return;
    }
    runs.push({ cell: other, data: answer.data });
  }
  const K = body.bptt_truncate;
  $("summary").textContent =
    `${NAMES[cell]}: loss ${data.loss.toFixed(6)} over ${data.tokens} tokens (mean ${data.mean_loss.toFixed(4)} per token; ` +
    `ln C = ${Math.log(body.V.length).toFixed(4)}), ${K == null ? "full BPTT" : `bptt_truncate = ${K}`}.`;
  $("results").hidden = false;
  drawSteps(cell, data.trace);
  drawComparison(runs, cell);
  // delta_t and the Jacobians of tanh(U x + W s) are the vanilla cell's.
  const vanilla = cell === "rnn";
  $("vanilla").hidden = !vanilla;
  $("vanillanote").hidden = vanilla;
  if (vanilla) {
    drawHeatmap($("heatmap"), data.trace.delta_norms);
    drawLags($("lags"), data.trace.lag_summary);
    await drawFlow(body, headers);
    if (mine !== latest) return;
  } else {
    $("flowsummary").textContent = "";
    delete document.body.dataset.radius;
  }
  status.textContent = "done";
  document.body.dataset.loss = String(data.loss);  // for tests
  document.body.dataset.cell = cell;
}

$("controls").addEventListener("submit", compute);
for (const id of ["cell", "reset_after", "forget_bias"]) $(id).addEventListener("change", () => compute());
// The slider scales W and recomputes at once: vanishing turns into exploding around a spectral radius of 1.
$("slider").addEventListener("change", () => {
  $("scale").value = $("slider").value;
  compute();
});
compute();  // the default model, drawn on load
