"""The compute routes' answers, as plans: parse -> price -> admit -> compute -> encode.

Each ``*_plan`` parses a request body (pydantic, in the compute thread), turns
it into the engine's arrays, checks its shapes against the limits and prices it
with the cost model; ``Plan.admitted`` refuses it (413) over a budget, or runs
it. The dry runs (``POST <route>/cost``) stop after the price. Nothing here
knows about HTTP: ``service.rest`` reads the bodies and writes the answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import admission, checks, costs, engine, flow, gated, gated_checks, inputs, ops, vjp
from .codec import Array, Encoding, to_wire
from .errors import InputError, LimitError
from .handlers import parse
from .schemas import (
    BpttBatchRequest,
    BpttRequest,
    CompareRequest,
    FlowRequest,
    GradientCheckRequest,
    VjpCompareRequest,
    VjpRequest,
)
from .settings import Settings

__all__ = [
    "ANSWER_BYTES_PER_NUMBER",
    "PLANS",
    "Plan",
    "Planner",
    "batch_plan",
    "bptt_plan",
    "check_plan",
    "compare_plan",
    "cost_plan",
    "flow_plan",
    "vjp_compare_plan",
    "vjp_plan",
]


@dataclass(frozen=True)
class Plan:
    """A parsed request, priced: what it is, what it will cost, and the computation itself."""

    what: str  # the shapes, for messages: "this request (T = 50, H = 100, C = 8000)"
    estimate: costs.Estimate
    inputs: int  # bytes of the request's arrays, and of its answer where that is large (gradients, tables)
    run: Callable[[], dict[str, Any]]

    def admitted(self, settings: Settings) -> dict[str, Any]:
        """Admit (413 over a budget), then compute."""
        admission.admit(settings, self.estimate, inputs=self.inputs, what=self.what)
        return self.run()


# A route's body parsed and priced: ``service.rest`` runs the plan in the event loop or a compute thread.
Planner = Callable[[bytes, Settings], Plan]


def _nbytes(arrays: dict[str, Any]) -> int:
    total = 0
    for value in arrays.values():
        for a in value if isinstance(value, list) else [value]:
            total += getattr(a, "nbytes", 0)
    return total


# Writing an answer holds, per number, its text (JSON: up to 24 characters; base64: 10.7) and
# the output buffer orjson builds: 32 bytes a number bounds both encodings.
ANSWER_BYTES_PER_NUMBER = 32


def _answer_bytes(H: int, C: int, B: int = 1, *, biases: bool = False, trace_values: int = 0, G: int = 1) -> int:
    """Bytes of an answer being written: dLdU (G x H x C), dLdV (C x H), dLdW (G x H x H), dLds0 and
    final_state (B x H; also dLdc0 and final_cell for a gated cell), dLdb, dLdb_hh and dLdc, a trace's values."""
    states = 2 * B * H * (2 if G > 1 else 1)
    numbers = (G + 1) * H * C + G * H * H + states + (2 * G * H + C if biases else 0) + B + trace_values
    return ANSWER_BYTES_PER_NUMBER * numbers


def _cell(arrays: dict[str, Any]) -> tuple[str, int, int, int]:
    """(cell, G, H, C) of a request's arrays: U is H x C, or G x H x C for a gated cell."""
    U = arrays["U"]
    H, C = U.shape[-2:]
    cell = arrays.get("cell", "rnn")
    return cell, costs.gates(cell), H, C


def _has_biases(arrays: dict[str, Any]) -> bool:
    return any(arrays.get(name) is not None for name in ("b", "b_hh", "c"))


def _what(lengths: list[int], H: int, C: int, K: int | None, cell: str = "rnn") -> str:
    T = f"T = {lengths[0]:,}" if len(lengths) == 1 else f"B = {len(lengths):,}, longest T = {max(lengths):,}"
    truncate = "" if K is None else f", bptt_truncate = {K:,}"
    kind = "" if cell == "rnn" else f"cell {cell!r}, "
    return f"this request ({kind}{T}, H = {H:,}, C = {C:,}{truncate})"


def bptt_plan(body: bytes, settings: Settings) -> Plan:
    """``POST /bptt``, parsed and priced."""
    request = parse(BpttRequest, body)
    arrays = inputs.bptt_arrays(request)
    cell, G, H, C = _cell(arrays)
    T, K = len(arrays["x"]), request.bptt_truncate
    admission.check_work(settings, H=H, C=C, lengths=[T])
    if request.trace:
        admission.check_trace(settings, H=H, T=T, K=None if cell != "rnn" else K)
    estimate = admission.bptt_estimate(
        lengths=(T,),
        H=H,
        C=C,
        K=K,
        itemsize=arrays["U"].itemsize,
        biases=_has_biases(arrays),
        clip=request.clip is not None,
        trace=request.trace,
        cell=cell,
        machine=admission.machine(settings),
    )

    def run() -> dict[str, Any]:
        with ops.engine_timer("bptt" if cell == "rnn" else f"bptt_{cell}") as counts:
            result = engine.bptt(**arrays) if cell == "rnn" else gated.bptt(**arrays)
            counts["tokens"] = result.tokens
        answer = _gradients_body(result, request.encoding)
        if request.trace:
            answer["trace"] = _trace(arrays, request.encoding, settings)
        return answer

    lags = T if K is None or cell != "rnn" else min(T, K + 1)
    trace_values = 2 * T * lags * H + 2 * T * C + 2 * T * H if request.trace else 0
    answer = _answer_bytes(H, C, biases=_has_biases(arrays), trace_values=trace_values, G=G)
    return Plan(_what([T], H, C, K, cell), estimate, _nbytes(arrays) + answer, run)


def batch_plan(body: bytes, settings: Settings) -> Plan:
    """``POST /bptt/batch``, parsed and priced (padding to the longest sequence included)."""
    request = parse(BpttBatchRequest, body)
    arrays = inputs.batch_arrays(request)
    cell, G, H, C = _cell(arrays)
    lengths = [len(x) for x in arrays["xs"]]
    admission.check_work(settings, H=H, C=C, lengths=lengths)
    estimate = admission.bptt_estimate(
        lengths=tuple(lengths),
        H=H,
        C=C,
        K=request.bptt_truncate,
        itemsize=arrays["U"].itemsize,
        biases=_has_biases(arrays),
        clip=request.clip is not None,
        cell=cell,
        machine=admission.machine(settings),
    )

    def run() -> dict[str, Any]:
        with ops.engine_timer("bptt_batch" if cell == "rnn" else f"bptt_batch_{cell}") as counts:
            result = engine.bptt_batch(**arrays) if cell == "rnn" else gated.bptt_batch(**arrays)
            counts["tokens"] = result.tokens
        return {**_gradients_body(result, request.encoding), "losses": result.losses}

    answer = _answer_bytes(H, C, len(lengths), biases=_has_biases(arrays), G=G)
    return Plan(_what(lengths, H, C, request.bptt_truncate, cell), estimate, _nbytes(arrays) + answer, run)


def check_plan(body: bytes, settings: Settings) -> Plan:
    """``POST /gradient-check``, parsed and priced."""
    request = parse(GradientCheckRequest, body)
    arrays = inputs.check_arrays(request)
    cell, _, H, C = _cell(arrays)
    T, K = len(arrays["x"]), request.bptt_truncate
    admission.check_work(settings, H=H, C=C, lengths=[T])
    sizes = [arrays[k].size for k in checks.PARAMETERS if arrays.get(k) is not None]  # what gradient_check checks
    estimate = costs.gradient_check(
        T=T, H=H, C=C, K=K, samples=request.samples, sizes=sizes, cell=cell, machine=admission.machine(settings)
    )

    def run() -> dict[str, Any]:
        with ops.engine_timer("gradient_check"):
            steps: float | dict[str, float] = (
                {str(k): v for k, v in request.h.items()} if isinstance(request.h, dict) else request.h
            )
            report = checks.gradient_check(
                arrays, h=steps, tolerance=request.tolerance, samples=request.samples, seed=request.seed
            )
        note = None
        if K is not None:
            note = (
                f"bptt_truncate = {K}: the truncated gradients of U and W are not the "
                "derivatives of the loss, so they are expected to fail where outputs reach back further "
                "than K steps (docs/derivation.md, section 6)."
            )
        return {
            "passed": all(r["passed"] for r in report.values()),
            "h": request.h,
            "tolerance": request.tolerance,
            "seed": request.seed,
            "parameters": report,
            "note": note,
        }

    return Plan(_what([T], H, C, K, cell), estimate, _nbytes(arrays), run)


def compare_plan(body: bytes, settings: Settings) -> Plan:
    """``POST /bptt/compare``, parsed and priced (the diagnosis's recomputations included)."""
    request = parse(CompareRequest, body)
    arrays, submitted = inputs.compare_arrays(request)
    cell, _, H, C = _cell(arrays)
    T, K = len(arrays["x"]), request.bptt_truncate
    admission.check_work(settings, H=H, C=C, lengths=[T])
    estimate = costs.compare(T=T, H=H, C=C, K=K, cell=cell, machine=admission.machine(settings))

    def run() -> dict[str, Any]:
        with ops.engine_timer("compare" if cell == "rnn" else f"compare_{cell}"):
            if cell == "rnn":
                return checks.compare(arrays, submitted, tolerance=request.tolerance)
            kwargs = {k: v for k, v in arrays.items() if k != "cell"}
            kind: gated.Cell = "gru" if cell == "gru" else "lstm"
            return gated_checks.compare(kind, kwargs, submitted, tolerance=request.tolerance)

    return Plan(_what([T], H, C, K, cell), estimate, _nbytes(arrays) + _nbytes(submitted), run)


def _vjp_arrays(request: VjpRequest) -> dict[str, Any]:
    names = ("x", "h0", "dh", "Wx", "Wh", "b", "Wf", "Wi", "Wc", "Wo", "bf", "bi", "bc", "bo", "c0")
    return {n: inputs.dense(getattr(request, n), n) for n in names if getattr(request, n) is not None}


def _vjp_estimate(arrays: dict[str, Any], cell: str, layout: str, settings: Settings) -> costs.Estimate:
    """``costs.vjp`` from the layout's shapes; shapes that do not fit the layout are priced from
    their sizes (the engine then names what is wrong)."""
    x, h0 = arrays["x"], arrays["h0"]
    if x.ndim == 3 and h0.ndim == 2 and x.size and h0.size:
        N, T, D = x.shape if layout == "cs231n" else (x.shape[1], x.shape[2], x.shape[0])
        H = h0.shape[1] if layout == "cs231n" else h0.shape[0]
    else:
        N, T, D, H = 1, max(x.size, 1), 1, max(h0.size, 1)
    G = 4 if cell == "lstm" else 1
    return costs.vjp(N=N, T=T, D=D, H=H, G=G, machine=admission.machine(settings))


def vjp_plan(body: bytes, settings: Settings) -> Plan:
    """``POST /vjp``, parsed and priced."""
    request = parse(VjpRequest, body)
    arrays = _vjp_arrays(request)
    estimate = _vjp_estimate(arrays, request.cell, request.layout, settings)
    what = f"this request (x of shape {list(arrays['x'].shape)}, h0 of shape {list(arrays['h0'].shape)})"

    def run() -> dict[str, Any]:
        with ops.engine_timer("vjp"):
            if request.cell == "rnn":
                extra = sorted(set(arrays) - {"x", "h0", "dh", "Wx", "Wh", "b"})
                if extra:
                    raise InputError(f"{extra[0]} is for the LSTM; cell is 'rnn'", field=extra[0])
                missing = [n for n in ("Wx", "Wh", "b") if n not in arrays]
                if missing:
                    raise InputError(f"{missing[0]} is required for cell 'rnn'", field=missing[0])
                r = vjp.rnn_vjp(*(arrays[n] for n in ("x", "h0", "Wx", "Wh", "b", "dh")), layout=request.layout)
                states, grads = {"h": r.h, "c": None}, {n: getattr(r, n) for n in ("dx", "dh0", "dWx", "dWh", "db")}
            else:
                names = vjp.LSTM_WEIGHTS[vjp.Layout(request.layout)]
                weights = {n: arrays[n] for n in names if n in arrays}
                missing = [n for n in names if n not in arrays]
                if missing:
                    raise InputError(
                        f"{missing[0]} is required for the LSTM in the {request.layout} layout", field=missing[0]
                    )
                lstm = vjp.lstm_vjp(arrays["x"], arrays["h0"], weights, arrays["dh"], layout=request.layout,
                                    c0=arrays.get("c0"))  # fmt: skip
                states = {"h": lstm.h, "c": lstm.c}
                grads = {"dx": lstm.dx, "dh0": lstm.dh0, "dc0": lstm.dc0, **lstm.dW}
        wire = {k: None if v is None else to_wire(v, request.encoding) for k, v in states.items()}
        return {"cell": request.cell, "layout": request.layout, **wire,
                "gradients": {k: to_wire(v, request.encoding) for k, v in grads.items()}}  # fmt: skip

    answer = ANSWER_BYTES_PER_NUMBER * 3 * sum(a.size for a in arrays.values())
    return Plan(what, estimate, _nbytes(arrays) + answer, run)


def vjp_compare_plan(body: bytes, settings: Settings) -> Plan:
    """``POST /vjp/compare``, parsed and priced (the diagnosis recomputes once per classic mistake)."""
    request = parse(VjpCompareRequest, body)
    if request.cell != "rnn":
        raise InputError(
            "POST /vjp/compare diagnoses the vanilla cell's rnn_backward; cell must be 'rnn'", field="cell"
        )
    arrays = _vjp_arrays(request)
    submitted = {n: inputs.dense(getattr(request, n), n) for n in ("dx", "dh0", "dWx", "dWh", "db")
                 if getattr(request, n) is not None}  # fmt: skip
    if not submitted:
        raise InputError("send at least one of your gradients: dx, dh0, dWx, dWh, db", field="dx")
    single = _vjp_estimate(arrays, "rnn", request.layout, settings)
    rounds = 1 + len(vjp.Mistake) + 1
    estimate = costs.Estimate(single.seconds * rounds, 2 * single.bytes, {"recomputations": single.seconds * rounds})
    what = f"this comparison (x of shape {list(arrays['x'].shape)})"

    def run() -> dict[str, Any]:
        missing = [n for n in ("Wx", "Wh", "b") if n not in arrays]
        if missing:
            raise InputError(f"{missing[0]} is required for cell 'rnn'", field=missing[0])
        problem = [arrays[n] for n in ("x", "h0", "Wx", "Wh", "b", "dh")]
        with ops.engine_timer("vjp_compare"):
            correct = vjp.rnn_vjp(*problem, layout=request.layout)
            report = {}
            for name, mine in submitted.items():
                want = getattr(correct, name)
                same = mine.shape == want.shape
                report[name] = {
                    "max_absolute_error": float(np.abs(mine - want).max()) if same else None,
                    "passed": vjp.matches(mine, want, request.tolerance),
                }
            passed = all(r["passed"] for r in report.values())
            found = [] if passed else vjp.diagnose(submitted, *problem, layout=request.layout,
                                                   tolerance=request.tolerance)  # fmt: skip
        return {
            "passed": passed,
            "tolerance": request.tolerance,
            "parameters": report,
            "diagnosis": [{"mistake": str(m), "explanation": vjp.DESCRIPTIONS[m]} for m in found],
        }

    return Plan(what, estimate, _nbytes(arrays) + _nbytes(submitted), run)


def flow_plan(body: bytes, settings: Settings) -> Plan:
    """``POST /bptt/flow``, parsed and priced (O(T^2 H^3): its own terms in the cost model)."""
    request = parse(FlowRequest, body)
    arrays = inputs.flow_arrays(request)
    H, C = arrays["U"].shape
    T = len(arrays["x"])
    admission.check_work(settings, H=H, C=C, lengths=[T])
    estimate = costs.flow(T=T, H=H, C=C, norm=request.norm, machine=admission.machine(settings))

    def run() -> dict[str, Any]:
        with ops.engine_timer("flow"):
            f = flow.flow(
                arrays["U"], arrays["V"], arrays["W"], arrays["x"], arrays["y"],
                s0=arrays["s0"], b=arrays["b"], c=arrays["c"], norm=request.norm,
            )  # fmt: skip
        norms = f.log10_jacobian_norms
        table = [[float(v) if np.isfinite(v) else None for v in row] for row in norms]
        return {
            "norm": request.norm,
            "log10_jacobian_norms": table,
            "step_jacobian_sigma": f.step_jacobian_sigma,
            "W_spectral_radius": f.W_spectral_radius,
            "W_sigma_max": f.W_sigma_max,
            "lag_contributions": f.lag_contributions,
            "truncation_bias": f.truncation_bias,
        }

    answer = ANSWER_BYTES_PER_NUMBER * (T * T + 8 * T)
    return Plan(_what([T], H, C, None), estimate, _nbytes(arrays) + answer, run)


PLANS: dict[str, Planner] = {
    "/bptt": bptt_plan,
    "/bptt/batch": batch_plan,
    "/gradient-check": check_plan,
    "/bptt/compare": compare_plan,
    "/bptt/flow": flow_plan,
    "/vjp": vjp_plan,
    "/vjp/compare": vjp_compare_plan,
}


def cost_plan(route: str) -> Planner:
    """``POST {route}/cost``: a plan whose work is the price and verdict of ``route``'s, computing nothing."""

    def plan(body: bytes, settings: Settings) -> Plan:
        try:
            with inputs.pricing(settings.max_body_bytes):  # tensors may come as {dtype, shape}, without data
                priced = PLANS[route](body, settings)
        except LimitError as exc:  # a shape limit: refused before any price
            refusal: dict[str, Any] = {"route": route, "admitted": False, "refusal": exc.message, "estimate": None}
            return Plan(route, costs.Estimate(0.0, 0, {}), 0, lambda: refusal)
        refused = admission.refusal(settings, priced.estimate, inputs=priced.inputs, what=priced.what)
        answer: dict[str, Any] = {
            "route": route,
            "admitted": refused is None,
            "refusal": None if refused is None else refused.message,
            "estimate": {
                "seconds": priced.estimate.seconds,
                "bytes": priced.estimate.bytes + priced.inputs,
                "compute_bytes": priced.estimate.bytes,
                "input_bytes": priced.inputs,  # the request's arrays and its answer
                "terms": priced.estimate.terms,
            },
        }
        return Plan(route, costs.Estimate(0.0, 0, {}), 0, lambda: answer)

    return plan


def _gradients_body(
    g: engine.Gradients | engine.BatchGradients | gated.GatedGradients | gated.GatedBatchGradients, encoding: Encoding
) -> dict[str, Any]:
    """The loss and every gradient; a gated cell's answer also has dLdb_hh, dLdc0 and final_cell."""

    def wire(a: Array | None) -> Any:
        return None if a is None else to_wire(a, encoding)

    names = ["dLdU", "dLdV", "dLdW", "dLds0", "final_state", "dLdb", "dLdc"]
    if isinstance(g, gated.GatedGradients | gated.GatedBatchGradients):
        names += ["dLdb_hh", "dLdc0", "final_cell"]
    return {
        "loss": g.loss,
        "mean_loss": g.mean_loss,
        "tokens": g.tokens,
        **{name: wire(getattr(g, name)) for name in names},
        "clipped": g.clipped,
    }


def _trace(arrays: dict[str, Any], encoding: Encoding, settings: Settings) -> dict[str, Any]:
    """The trace of one sequence: dL/ds_k (and, LSTM, dL/dc_k) at every step, with per-lag norms
    ||dE_t/ds_{t-j}||, for every cell; the vanilla cell also has the seed's delta_o and deltas."""
    keys = {k: v for k, v in arrays.items() if k not in ("clip", "bptt_truncate")}
    if "cell" in arrays:
        g = gated.trace(**keys)
        assert g.norms is not None  # asked for (the default)
        return {
            "dLds": to_wire(g.dLds, encoding),
            "dLdc": None if g.dLdc is None else to_wire(g.dLdc, encoding),
            "state_norms": [row[~np.isnan(row)] for row in g.norms],
            "state_lag_summary": g.lag_summary(),
        }
    t = engine.trace(**keys, bptt_truncate=arrays["bptt_truncate"])
    keep = t.delta_o.size <= settings.max_trace_delta_o
    dLds, state_norms = _state_gradients(t, arrays["V"], arrays["W"])
    return {
        "delta_o": to_wire(t.delta_o, encoding) if keep else None,
        "deltas": [to_wire(d, encoding) for d in t.deltas],
        "delta_norms": [row[~np.isnan(row)] for row in t.norms],
        "lag_summary": t.lag_summary(),
        "dLds": to_wire(dLds, encoding),
        "dLdc": None,
        "state_norms": [row[~np.isnan(row)] for row in state_norms],
        "state_lag_summary": engine.lag_summary(state_norms),
    }


def _state_gradients(t: engine.Trace, V: Array, W: Array) -> tuple[Array, Array]:
    """From the vanilla cell's deltas: dL/ds_k (T, H) as BPTT (truncated or not) passes it back, and
    ||dE_t/ds_{t-j}|| (T, L), NaN where output t does not reach back j steps.

    dE_t/ds_t = V^T delta_o[t], and one step further back dE_t/ds_{t-j} = W^T dE_t/dz_{t-j+1} = W^T
    deltas[t][j-1] (the state s_{t-j} enters z_{t-j+1} through W)."""
    T, L = t.norms.shape
    direct = t.delta_o @ V  # (T, C) x (C, H): row t is V^T delta_o[t]
    dLds = direct.copy()
    norms = np.full((T, L), np.nan)
    norms[:, 0] = np.linalg.norm(direct, axis=1)
    for out, deltas in enumerate(t.deltas):
        reach = min(out, L - 1)  # lags j = 1 .. reach
        back = deltas[:reach] @ W  # (reach, H): row j - 1 = dE_t/ds_{t-j}
        dLds[out - np.arange(1, reach + 1)] += back
        norms[out, 1 : reach + 1] = np.linalg.norm(back, axis=1)
    return dLds, norms
