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

// The tutorial's initialisation: uniform in +-1/sqrt(fan-in); W times `scale`.
function randomModel(H, C, T, seed, scale) {
  const rand = generator(seed);
  const matrix = (rows, cols, bound) =>
    Array.from({ length: rows }, () => Array.from({ length: cols }, () => (2 * rand() - 1) * bound));
  const tokens = () => Array.from({ length: T }, () => Math.floor(rand() * C));
  return {
    U: matrix(H, C, 1 / Math.sqrt(C)),
    V: matrix(C, H, 1 / Math.sqrt(H)),
    W: matrix(H, H, scale / Math.sqrt(H)),
    x: tokens(),
    y: tokens(),
  };
}

function request() {
  const pasted = $("pasted").value.trim();
  let body;
  if (pasted) {
    body = JSON.parse(pasted);
  } else {
    const num = (id) => Number($(id).value);
    body = randomModel(num("H"), num("C"), num("T"), num("seed"), num("scale"));
    const K = $("K").value.trim();
    body.bptt_truncate = K === "" ? null : Number(K);
  }
  body.trace = true;
  return body;
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
  series.forEach(({ label, values, stroke }, i) => {
    ctx.strokeStyle = stroke;
    ctx.fillStyle = stroke;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    values.forEach((v, j) => {
      if (!(v > 0)) return;
      if (started) ctx.lineTo(px(j), py(v));
      else ctx.moveTo(px(j), py(v));
      started = true;
    });
    ctx.stroke();
    ctx.fillText(label, pad.left + W - 60, pad.top + 14 + 16 * i);
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

// After an error, the previous drawing goes: it must not be taken for the new result.
function clearResults() {
  $("results").hidden = true;
  $("summary").textContent = "";
  $("flowsummary").textContent = "";
  for (const id of ["heatmap", "lags", "flowmap", "lagdecay", "bias"]) {
    const c = $(id);
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
  delete document.body.dataset.loss;
  delete document.body.dataset.radius;
}

function fail(message) {
  clearResults();
  const status = $("status");
  status.className = "error";
  status.textContent = message;
}

async function compute(event) {
  if (event) event.preventDefault();
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
  const headers = { "Content-Type": "application/json" };
  if ($("key").value) headers.Authorization = `Bearer ${$("key").value}`;
  const response = await fetch("/bptt", { method: "POST", headers, body: JSON.stringify(body) });
  const data = await response.json();
  if (!response.ok) {
    fail(`${response.status}: ${data.detail}`);
    return;
  }
  const K = body.bptt_truncate;
  $("summary").textContent =
    `loss ${data.loss.toFixed(6)} over ${data.tokens} tokens (mean ${data.mean_loss.toFixed(4)} per token; ` +
    `ln C = ${Math.log(body.U[0].length).toFixed(4)}), ${K == null ? "full BPTT" : `bptt_truncate = ${K}`}.`;
  drawHeatmap($("heatmap"), data.trace.delta_norms);
  drawLags($("lags"), data.trace.lag_summary);
  $("results").hidden = false;
  await drawFlow(body, headers);
  status.textContent = "done";
  document.body.dataset.loss = String(data.loss);  // for tests
}

$("controls").addEventListener("submit", compute);
// The slider scales W and recomputes at once: vanishing turns into exploding around a spectral radius of 1.
$("slider").addEventListener("change", () => {
  $("scale").value = $("slider").value;
  compute();
});
compute();  // the default model, drawn on load
