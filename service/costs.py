"""The cost model: the seconds and peak bytes of a request, from its shapes alone.

Admission asks this module before any array is allocated; the routes refuse
(413) a request whose estimate is over the per-request budgets, answer the
estimate in a dry run, and list the limits. Standard library only: no numpy,
no web imports. Dimension letters, as in service/engine.py:

    T  sequence length (steps; T_max, the longest, in a batch)
    H  hidden units                   C  vocabulary size (classes)
    B  batch (sequences)              N  predicted tokens (sum of lengths)
    K  truncation (lags kept)         L  lags a trace keeps, min(T, K + 1)
    G  gates of the cell (1 rnn, 3 gru, 4 lstm)
    s  bytes per number (itemsize: 8 float64, 4 float32)

Time is a sum of counted work times calibrated seconds per unit (``Machine``):
Python steps of the engine's loops, multiply-adds of the per-step (B, H) x
(H, H) products and of the large output-layer products, bytes of weights
streamed, elements of element-wise passes, of exp/tanh and of gathers. The
counts follow the engine's code line by line (each function below names the
code it follows); benchmarks/bench_costs.py fits the constants on this machine
and checks the predictions against the real calls (docs/cost-model.md).

Memory is the peak of the numpy arrays alive at once during the call, derived
from the same code: the largest sum over the points where arrays are made and
freed. The request's own arrays (the weights U, V, W, the token ids, s0, the
biases, a learner's submitted gradients) are not counted: they exist before
admission, and the parser's limits bound them. Neither is the encoding of the
answer (JSON lists or base64 of the gradients and the trace).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

from . import engine, kernel
from .errors import InputError

__all__ = ["CELLS", "DEFAULT", "UNITS", "Estimate", "Machine", "bptt", "compare", "gates", "gradient_check"]

# Gates per cell: the recurrence of a gated cell does about G times the work of
# the vanilla cell's (G products with W per step, G element-wise nonlinearities).
CELLS: dict[str, int] = {"rnn": 1, "gru": 3, "lstm": 4}
# A gated cell's recurrence: the per-step overhead and element-wise work over the vanilla cell's, beyond
# the G-fold products (measured, docs/cost-model.md, "Gated cells").
GATED_STEP_FACTOR = 3.0
# gated_checks.compare's forward + backward passes beyond the expected gradients' bptt (its SWEEPS;
# tests/test_costs.py checks they agree). Measured at T = 1000, H = 16: 3.8 to 4.9 times one gated.bptt.
# gated_checks.GatedMistakeName's size: the candidates whose gradients a gated compare holds at once (a test
# keeps the two equal).
GATED_MISTAKES = 14
GATED_COMPARE_PASSES: dict[str, dict[str, int]] = {
    "gru": {"full": 9, "truncated": 11},
    "lstm": {"full": 7, "truncated": 9},
}

_INDEX = 8  # bytes of an intp token id or index (the engine's X, Y, argsort orders)
_OBJECT = 256  # bytes of a Python ndarray object and its bookkeeping, counted where one is made per step
_CACHE = 2 << 20  # L2 per core here: a W read at every step stays in it when smaller than this
_ARITHMETIC = ("small_madd", "large_madd", "gemv_madd", "element", "transcendental", "gather")
# The truncated backward pass and the trace multiply the deltas by W^T and tanh' once per lag; with
# weights like the seed's they shrink by about half per lag and fall below the smallest normal float
# (2^-126 in float32, 2^-1022 in float64) after about this many lags. From there until they are
# zero, every product and element-wise pass on them takes the CPU's slow path (5 to 20 times slower).
# Counting every lag past this point as subnormal is an upper bound for such weights.
_SUBNORMAL = {4: 100, 8: 900}
_MMAP = 32 << 20  # service/runtime.py's mmap threshold: arrays this large get fresh pages every call
_LOOP_OBJECTS = 192 << 10  # Python objects of the checks' loops (closures, records, reports), measured


@dataclass(frozen=True)
class Estimate:
    """The predicted cost of one request.

    Attributes
    ----------
    seconds : float
        Wall time of the computation, on this machine divided by ``Machine.speed``.
    bytes : int
        Peak bytes of numpy arrays alive at once (the request's inputs excluded).
    terms : dict of str to float
        Seconds by named part ("setup", "recurrence", "output layer", ...),
        summing to ``seconds``: what the dry-run route shows.

    Notes
    -----
    ``a + b`` is the cost of running ``a`` and then ``b``: seconds and terms
    add, and the peak is the larger of the two peaks (``a``'s arrays are freed
    when ``b`` starts). Where ``b`` runs while some of ``a``'s results are held,
    the functions below add those bytes to ``b`` before adding.
    """

    seconds: float
    bytes: int
    terms: dict[str, float]

    def __add__(self, other: Estimate) -> Estimate:
        terms = dict(self.terms)
        for name, value in other.terms.items():
            terms[name] = terms.get(name, 0.0) + value
        return Estimate(seconds=self.seconds + other.seconds, bytes=max(self.bytes, other.bytes), terms=terms)

    def holding(self, held: int) -> Estimate:
        """This estimate with ``held`` more bytes alive throughout (results of an earlier step)."""
        return replace(self, bytes=self.bytes + held)


@dataclass(frozen=True)
class Machine:
    """Seconds per unit of work, calibrated on one machine, and its speed.

    Measured by ``python benchmarks/bench_costs.py --fit`` on the development
    machine (2 shared cores, OpenBLAS on one thread, numpy 2; medians of 3 runs
    under load from other processes), then scaled up so that predictions sit
    between the measured time and twice it (docs/cost-model.md). A constant
    the fit set to 0 is absorbed by others (exp and tanh by the element-wise
    passes). Every time divides by ``speed``: 2.0 on a machine twice as fast,
    0.5 on one twice as slow.

    Attributes
    ----------
    call : float
        Fixed cost of one engine call (argument checks, padding, small numpy calls).
    loss_call : float
        Fixed cost of one ``engine.loss`` in a gradient check, with its loop's Python.
    sequence : float
        Per sequence checked and padded (``_Batch.of`` loops over them).
    step : float
        Per iteration of the engine's Python loops over time or lags (3-4 numpy calls).
    op : float
        Per numpy call in the tutorial's loop (service/checks.py) and other Python loops.
    lag_row : float
        Per (B, H) x (H, H) slice of a truncated lag's stacked product (one BLAS call each).
    small_madd : float
        Per multiply-add of the per-step (B, H) x (H, H) products of a batch (B > 1)
        and of a trace's (T - j, H) x (H, H) lags.
    large_madd : float
        Per multiply-add of the large products (output layer, dLdW).
    gemv_madd : float
        Per multiply-add of a matrix-vector product: the per-step products of one
        sequence (B = 1), the tutorial loop's products.
    weight_byte : float
        Per byte of V read by an output-layer product.
    w_byte : float
        Per byte of a matrix read by a per-step product when it does not fit in
        the cache (W with H > 512 in float64; the tutorial loop's V and W): those
        products run at memory bandwidth.
    element : float
        Per element of an element-wise pass (add, multiply, copy, compare, zero).
    transcendental : float
        Per element of exp or tanh.
    gather : float
        Per element copied by fancy indexing (``U.T[X]``, rows of the padded batch).
    page_byte : float
        Per byte of an array of 32 MiB or more, which malloc maps fresh from the
        kernel at every call (page faults, zeroing); smaller blocks are reused
        (service/runtime.py raises glibc's mmap threshold to 32 MiB).
    sort : float
        Per n log2 n of a sort of n numbers.
    stack_row : float
        Per row ``np.stack`` copies into a trace's per-output deltas.
    subnormal_row : float
        Per row of a lag whose deltas have vanished into subnormal numbers (see ``_SUBNORMAL``).
    subnormal_madd : float
        Per multiply-add of such a lag's product: subnormal operands take the CPU's slow path.
    baseline_bytes : int
        Bytes of small arrays and Python objects a call makes besides the ones counted.
    speed : float
        This machine's speed relative to the calibration machine; divides every
        time. benchmarks/bench_costs.py measures it: its reference workload's time
        there (REFERENCE_SECONDS) over its time here.
    """

    call: float = 0.00237
    loss_call: float = 9.78e-05
    sequence: float = 3.16e-05
    step: float = 4.01e-06
    op: float = 1.03e-06
    lag_row: float = 6.01e-08
    small_madd: float = 9.03e-11
    large_madd: float = 6.17e-11
    gemv_madd: float = 2.29e-10
    w_byte: float = 1.03e-10
    weight_byte: float = 2.24e-10
    element: float = 1.65e-09
    transcendental: float = 0.0
    gather: float = 2.39e-08
    page_byte: float = 4.06e-10
    sort: float = 5.31e-09
    stack_row: float = 7.15e-07
    subnormal_row: float = 1.11e-08
    # The fit found no slowdown in its draws; the deltas of long truncations do become
    # subnormal and slow (docs/cost-model.md): priced here so admission never under-estimates.
    subnormal_madd: float = 1.0e-9
    baseline_bytes: int = 64 << 10
    speed: float = 1.0

    def seconds(self, work: Mapping[str, float]) -> float:
        """Seconds of counted ``work`` (unit name -> count) on this machine."""
        return sum(count * float(getattr(self, unit)) for unit, count in work.items()) / self.speed


# The names of the seconds-per-unit constants: the keys of counted work.
UNITS = tuple(f.name for f in fields(Machine) if f.name not in ("baseline_bytes", "speed"))
DEFAULT = Machine()

# -- counted work, phase by phase -------------------------------------------------

_Work = dict[str, float]


def _estimate(phases: Sequence[tuple[str, _Work]], peak: float, machine: Machine) -> Estimate:
    terms: dict[str, float] = {}
    for name, work in phases:
        terms[name] = terms.get(name, 0.0) + machine.seconds(work)
    return Estimate(seconds=sum(terms.values()), bytes=math.ceil(peak) + machine.baseline_bytes, terms=terms)


def _fresh(*sizes: float) -> float:
    """Bytes of the arrays (sizes in bytes) that are large enough to be mapped fresh from the kernel."""
    return sum(n for n in sizes if n >= _MMAP)


def _streamed(nbytes: float) -> float:
    """Bytes of a matrix read from memory by one step's product: none when it stays in the cache between steps."""
    return nbytes if nbytes > _CACHE else 0.0


def _in_dtype(work: _Work, s: int) -> _Work:
    """Arithmetic in float32 (s = 4) takes about half the time of float64: SIMD lanes and bandwidth double."""
    return {unit: count * s / 8 if unit in _ARITHMETIC else count for unit, count in work.items()}


def _subnormal(T: int, lags: int, s: int) -> int:
    """Rows of the lags j = _SUBNORMAL[s] .. lags - 1: those where the deltas are subnormal numbers."""
    first = _SUBNORMAL[s]
    return max(0, _lag_rows(T, lags) - _lag_rows(T, first))


def _lag_rows(T: int, lags: int) -> int:
    """Rows of the lags j = 1 .. lags - 1 together: sum_j (T - j) (a truncated backward pass, a trace)."""
    j = min(lags, T) - 1
    return j * T - j * (j + 1) // 2


def _per_step(B: int) -> str:
    """The unit of a (B, H) x (H, H) product: a matrix-vector product for one row, else a small gemm."""
    return "gemv_madd" if B == 1 else "small_madd"


def _forward(T: int, B: int, H: int, s: int, G: int) -> _Work:
    """engine._hidden_states: S = U.T[X], then per step dot(h, WT), add, tanh (G-fold for a gated cell)."""
    return {
        "step": T,
        "gather": G * T * B * H,  # U.T[X]: (T, B, H)
        _per_step(B): G * T * B * H * H,  # (B, H) x (H, H) per step
        "w_byte": G * T * _streamed(H * H * s),  # W read once per step
        "element": G * T * B * H + G * H * H,  # z_t = U x_t + W s_{t-1}; WT copy
        "transcendental": G * T * B * H,  # tanh
    }


def _output_layer(N: int, H: int, C: int, s: int, products: int) -> _Work:
    """engine._logits and _softmax over N rows, then ``products - 1`` more (N, C)-by-(C, H) products."""
    return {
        "large_madd": products * N * H * C,  # V s_t; delta_o^T s; delta_o V
        "weight_byte": products * C * H * s,  # V (and dLdV) read once per product, evicted in between
        "transcendental": N * C,  # exp
        "element": 6 * N * C,  # max, shift, sum, divide, -1 at y, (+ c)
    }


def _engine_bptt(
    lengths: Sequence[int], H: int, C: int, K: int | None, s: int, biases: bool, clip: bool, G: int
) -> tuple[list[tuple[str, _Work]], float, float]:
    """Work and peak bytes of engine._bptt_unchecked (and _Batch.of, _bptt's clip).

    Returns (phases, peak bytes, bytes of the results that outlive the call).
    """
    B, T, N = len(lengths), max(lengths), sum(lengths)
    padded = B > 1 and min(lengths) < T
    full = K is None or K >= T - 1
    TB = T * B
    M = TB * H * s  # one (T, B, H) array of states
    NH = N * H * s  # one (N, H) array of rows
    setup: _Work = {"call": 1, "sequence": B, "element": 6 * N + (2 * TB if B > 1 else 0)}
    forward = _forward(T, B, H, s, G)
    output = _output_layer(N, H, C, s, 3)
    output["gather"] = (N * H + N if padded else 0) + N  # s_rows, y_rows; delta_o[arange, y]
    output["element"] += (TB * H if padded else 0) + (N * C if biases else 0)  # dLds scatter; + c
    if full:
        backward: _Work = {
            "step": T,
            _per_step(B): G * T * B * H * H,  # dz_k W per step
            "w_byte": G * T * _streamed(H * H * s),
            "element": 2 * TB * H + 2 * G * TB * H,  # dtanh = 1 - S*S; add, multiply per step
        }
    else:
        assert K is not None
        R = _lag_rows(T, K + 1)  # sum over lags j = 1..K of T - j rows
        backward = {
            "step": K,
            "lag_row": R if H > 1 else 0,  # numpy multiplies 1 x 1 matrices without BLAS
            _per_step(B): G * R * B * H * H,  # delta[1:] @ W, (T-j, B, H) x (H, H)
            "w_byte": G * K * _streamed(H * H * s),
            "subnormal_row": G * _subnormal(T, K + 1, s) * B,
            "subnormal_madd": G * _subnormal(T, K + 1, s) * B * H * H,
            "element": 4 * TB * H + 2 * R * B * H,  # dtanh; delta, dz copy; *= dtanh, dz +=
        }
    D = min(N, C)  # distinct tokens, at most
    gradients: _Work = {
        "large_madd": G * TB * H * H,  # dLdW = dz^T s_prev: (H, TB) x (TB, H)
        "gather": (N * H if padded else 0) + 2 * N * H,  # dz_rows; dz[order]; dLdU[:, x_rows] in _check_finite
        "sort": N * math.log2(N + 1),  # argsort of x
        "element": TB * H + N * H + H * C + 2 * N * H + H * H + (TB if B > 1 else 0) + (N * H if biases else 0),
    }
    if clip:
        gradients["element"] += 3 * (2 * H * C + H * H)
    # Arrays mapped fresh at every call: S, S*S, dtanh, dz, s_prev (and dLds, the rows when padded),
    # delta_o, dLdV, dLdU, dLds_rows, dz[order], dLdU[:, x_rows]; the lags' deltas when truncated.
    # engine._output_layer's rows at once: their (n, C) delta_o stays under OUTPUT_CHUNK_BYTES
    n = min(N, max(1, engine.OUTPUT_CHUNK_BYTES // (C * s)))
    chunked = n < N  # then each chunk's dLdV is added to the sum: one (C, H) more
    fresh = _fresh(M, M, M, M, M, n * C * s, C * H * s, H * C * s, NH, NH, NH, D * H * s)
    fresh += _fresh(M, NH, NH) if padded else 0
    fresh += _fresh(H * C * s, H * H * s) if clip else 0
    if not full:
        assert K is not None
        first_small = max(1, T - _MMAP // (B * H * s) + 1)  # lags j >= this have fewer than 32 MiB
        fresh += M + _lag_rows(T, min(K + 1, first_small)) * B * H * s if M >= _MMAP else 0
    if G > 1:
        # A gated step makes three to four times the vanilla step's numpy calls, and each gate's sigmoid
        # or tanh is several element-wise passes (gated._gru_forward, _lstm_back): measured against the
        # vanilla cell in one run (docs/cost-model.md), the recurrence costs about twice what G alone says.
        for work in (forward, backward):
            for unit in ("step", "element", "transcendental"):
                work[unit] = GATED_STEP_FACTOR * work.get(unit, 0.0)
    phases = [("setup", setup), ("recurrence", forward), ("output layer", output)]
    phases += [("recurrence", backward), ("gradients", gradients)]
    phases = [(name, _in_dtype(work, s)) for name, work in phases] + [("memory", {"page_byte": fresh})]

    # Peak bytes, following the arrays alive at each point of _bptt_unchecked.
    batch = 2 * TB * _INDEX + B * H * s + B * _INDEX  # X, Y, S0, lengths
    rows = TB + NH + N * _INDEX if padded else 0  # valid mask; s_rows, y_rows copies
    softmax = 2 * N * _INDEX + 6 * N * s  # arange, max, shifted_y, z, log z, token_loss
    out = n * C * s + (2 if chunked else 1) * C * H * s + NH + (M if padded else 0) + N * s  # delta_o, dLdV, ...
    gates = (G - 1) * 2 * M  # gated cells: gate activations and their gradients (design, not calibrated)
    alive = batch + M + rows + gates  # S
    hidden = batch + M + H * H * s + 2 * B * H * s + gates  # S, WT, buf in _hidden_states
    at_softmax = alive + n * C * s + softmax + (C * H * s + NH if chunked else 0)  # (the sums so far)
    at_dtanh = alive + out + 2 * M  # S*S, then 1 - that
    # dtanh, dz, carry (full); dtanh, delta, the next delta, dz (truncated)
    at_backward = alive + out + (2 * M + B * H * s if full else 4 * M)
    after = alive + out + 3 * M + H * H * s + (NH + N * _INDEX if padded else 0)  # dtanh, dz, s_prev, dLdW, dz/x rows
    at_columns = after + 2 * N * _INDEX + 2 * N + D * _INDEX + NH + D * H * s + H * C * s  # _sum_into_columns
    results = H * C * s + B * H * s * 2 + B * _INDEX * 2 + (H + C) * s  # dLdU, dLds0, final_state, losses, biases
    at_losses = after + results + TB * _INDEX + N * _INDEX  # seq_of_row copy and its rows
    seq_of_row = N * _INDEX if B > 1 else 0  # a local of _bptt_unchecked: alive until it returns
    at_check = after + results + seq_of_row + N * H * s + max(N * H, H * H)  # dLdU[:, x_rows], isfinite's mask
    outputs = results + C * H * s + H * H * s  # what the call returns
    # _bptt clips after _bptt_unchecked returns, the batch (X, Y, S0) still alive: abs(grad) and its mask
    at_clip = outputs + batch + (max(H * C, H * H) * (s + 1) if clip else 0)
    peak = max(hidden, at_softmax, at_dtanh, at_backward, at_columns, at_losses, at_check, at_clip)
    if G == 1 and B == 1 and engine.kernel_in_use() == "numba" and kernel.fused_pays(T, H, C, K):
        # kernel.bptt_one, priced in time as the numpy engine above (it is faster), in memory as itself:
        # W transposed, S, the (T, C) logits turned into delta_o, dLds, dz (and the lags' delta), the
        # gradients and their small buffers.
        states = (3 + (0 if full else 1)) * T * H * s
        arrays = T * C * s + states + T * s + 2 * H * C * s + 2 * H * H * s + (3 * C + 6 * H) * s
        peak = batch + arrays + (H * C * s if clip else 0)
    if G > 1:
        # gated._bptt_unchecked on top of the vanilla cell's arrays: the G - 1 more (H, C) and (H, H) blocks
        # of dLdU and dLdW, and 2G - 1 more (T, B, H) arrays (the input pre-activations A, dA and the
        # gates are (T, B, G, H); the LSTM's c_t, c_{t-1}, tanh(c_t)). Measured with tracemalloc against
        # this estimate at nine shapes (docs/cost-model.md, "Gated cells"): 1.0 to 1.3 times the peak.
        extra = (G - 1) * (H * C + H * H) * s + (2 * G - 1) * M
        if not full:  # gated._backward_lags: the lags' (T, B, G, H) errors beside the vanilla cell's
            extra += (G + 1) * M
        peak += extra
        outputs += (G - 1) * (H * C + H * H) * s
    return phases, peak, outputs


def _engine_trace(T: int, H: int, C: int, K: int | None, s: int) -> tuple[list[tuple[str, _Work]], float]:
    """Work and peak bytes of engine.trace: the deltas of every lag, stacked per output.

    The lags: lag 0 = (delta_o V) * dtanh (T, H), lag j = (lag[1:] W) * dtanh[:T-j];
    then one np.stack per output t of its min(t + 1, L) rows, and the norms per lag.
    """
    L = T if K is None else min(T, K + 1)
    R = _lag_rows(T, L)  # rows of lags 1..L-1
    Q = T + R  # rows of all lags, = rows of all deltas
    work: _Work = {
        "call": 1,
        "sequence": 1,
        "step": L,
        "small_madd": R * H * H,  # lag[1:] @ W, (T-j, H) x (H, H), one product per lag
        "w_byte": (L - 1) * _streamed(H * H * s),
        "subnormal_row": _subnormal(T, L, s),
        "subnormal_madd": _subnormal(T, L, s) * H * H,
        "stack_row": Q,  # np.stack per output t of its min(t + 1, L) rows
        "op": 12 * T + 12 * L,  # np.stack per output, norm per lag
        "element": Q * H * 5 + T * L + 2 * T * H,  # * dtanh, the stacked copy, conj * x and its sum; norms
    }
    forward = _forward(T, 1, H, s, 1)
    output = _output_layer(T, H, C, s, 2)  # V s_t; delta_o V
    fresh = _fresh(T * C * s, *[T * H * s] * 4, Q * H * s)
    phases = [("trace", _in_dtype(w, s)) for w in (forward, output, work)] + [("memory", {"page_byte": fresh})]
    base = 2 * T * _INDEX + H * s + T * H * s  # X, Y, S0; S
    hidden = base + H * H * s + H * s
    at_softmax = base + T * C * s + 2 * T * _INDEX + 6 * T * s
    lags = base + T * C * s + T * H * s + 2 * T * H * s  # delta_o, dtanh, (delta_o V) and the lag it makes
    # At the norms of lag 0: every lag and every delta alive, with norm's two (T, H) temporaries.
    at_norms = base + T * C * s + T * H * s + 2 * Q * H * s + T * L * 8 + 2 * T * H * s + T * _OBJECT
    return phases, max(hidden, at_softmax, lags, at_norms)


# -- the routes -------------------------------------------------------------------


def bptt(
    *,
    lengths: Sequence[int],
    H: int,
    C: int,
    K: int | None,
    itemsize: int = 8,
    biases: bool = False,
    clip: bool = False,
    trace: bool = False,
    cell: str = "rnn",
    machine: Machine = DEFAULT,
) -> Estimate:
    """Cost of ``engine.bptt`` (one length) or ``engine.bptt_batch`` (several), with ``trace`` after it.

    Covers ``POST /bptt``, ``POST /bptt/batch`` and the V2 infer route.

    Parameters
    ----------
    lengths : sequence of int >= 1
        Each sequence's T; one for ``/bptt``.
    H, C : int >= 1
        Hidden units and vocabulary size.
    K : int >= 0 or None
        ``bptt_truncate``; None for exact gradients.
    itemsize : 8 or 4
        Bytes per number: float64 or float32 weights.
    biases : bool
        The request has the biases b and c.
    clip : bool
        The request clips the gradients.
    trace : bool
        ``engine.trace`` runs after ``engine.bptt`` (one sequence), its
        gradients held meanwhile.
    cell : "rnn", "gru" or "lstm"
        The gated cells multiply the recurrence's work by G = 3 or 4 and keep
        G - 1 more pairs of (T, B, H) arrays; the engine has no gated cell yet,
        so only "rnn" is calibrated and the gated estimates are a design.
    machine : Machine

    Returns
    -------
    Estimate

    Notes
    -----
    The batch is padded to T_max x B in the recurrence (engine._Batch.of);
    the output layer has N = sum(lengths) rows. With T = T_max and R =
    sum_{j=1..K} (T - j) the rows of the truncated lags, time is about

        2 T step + 2 G T B H^2 madd                              full, or
        (T + K) step + R lag_row + G (T + R) B H^2 madd          truncated,
        + 3 N H C large_madd + 3 C H s weight_byte + N C (transcendental + 6 element)
        + G T B H^2 large_madd + B sequence + element passes over (T, B, H) and (H, C)
        + page_byte x the arrays of 32 MiB or more

    where madd is gemv_madd for one sequence and small_madd for a batch, and
    truncated lags past _SUBNORMAL[s] add subnormal_row and subnormal_madd
    (engine._hidden_states, _backward_full or _backward_truncated, the output
    layer, dLdW and _sum_into_columns; float32 halves the arithmetic). The
    peak holds about six (T, B, H) arrays (S, dLds, dtanh, dz, s_prev, and two
    lag deltas when truncated) beside the (N, C) delta_o, dLdU and dLdV.
    """
    lengths = _check_lengths(lengths)
    _check_dims(H=H, C=C, K=K, itemsize=itemsize)
    G = gates(cell)
    phases, peak, outputs = _engine_bptt(lengths, H, C, K, itemsize, biases, clip, G)
    estimate = _estimate(phases, peak, machine)
    if trace:
        if len(lengths) != 1:
            raise InputError(f"trace needs one sequence, got {len(lengths)} lengths", field="trace")
        # A gated cell's trace is of full BPTT (gated.trace: every lag), about G times the vanilla one's work.
        trace_phases, trace_peak = _engine_trace(lengths[0], H, C, K if G == 1 else None, itemsize)
        if G > 1:
            trace_phases = [(name, {u: G * n for u, n in work.items()}) for name, work in trace_phases]
            trace_peak *= G
        estimate = estimate + _estimate(trace_phases, trace_peak + outputs, machine)
    return estimate


def gradient_check(
    *,
    T: int,
    H: int,
    C: int,
    K: int | None,
    samples: int,
    sizes: Sequence[int],
    cell: str = "rnn",
    machine: Machine = DEFAULT,
) -> Estimate:
    """Cost of ``checks.gradient_check``: one ``engine.bptt``, then 2 losses per sampled entry.

    Parameters
    ----------
    T, H, C, K : as for ``bptt`` (one sequence, float64)
    samples : int >= 1
        Entries checked per parameter (all of a smaller one).
    sizes : sequence of int
        Each checked parameter's number of entries: H C, C H, H H, and H, C,
        H for b, c, s0 when given (more than three: biases are assumed); G times
        more for U, W, b and b_hh of a gated cell.
    cell : "rnn", "gru" or "lstm"
        A gated cell's forward pass does about G times the recurrence's work.
    machine : Machine

    Notes
    -----
    E = 2 sum_p min(size_p, samples) evaluations of ``engine.loss``, each a
    forward pass (T steps of (1, H) x (H, H)) and a (T, H) x (H, C) product
    with its softmax. Memory: the bptt's peak, or its gradients, the float64
    copies of the parameters, the sampling and one loss evaluation at once.
    """
    _check_dims(H=H, C=C, K=K, itemsize=8)
    if samples < 1:
        raise InputError(f"samples must be an integer >= 1, got {samples}", field="samples")
    (T,) = _check_lengths([T])
    G = gates(cell)
    first = bptt(lengths=[T], H=H, C=C, K=K, biases=len(sizes) > 3, cell=cell, machine=machine)
    E = 2 * sum(min(n, samples) for n in sizes)
    loss: _Work = {"loss_call": 1, "element": 6 * T, "page_byte": _fresh(8 * T * C, 8 * G * T * H)}
    forward, output = _forward(T, 1, H, 8, G), _output_layer(T, H, C, 8, 1)
    work = {unit: E * (loss.get(unit, 0.0) + forward.get(unit, 0.0) + output.get(unit, 0.0)) for unit in UNITS}
    report: _Work = {"element": 3 * sum(sizes), "op": 40 * len(sizes)}  # copies; picks, errors per parameter
    # engine.loss: X, Y, S0, S, then WT (hidden) or the (T, C) logits and softmax temporaries.
    loss_peak = 2 * T * _INDEX + 8 * H + 8 * G * T * H + max(8 * G * H * H + 8 * H, 8 * T * C + 2 * T * _INDEX + 48 * T)
    # rng.choice without replacement permutes the whole parameter unless it is large and sparsely sampled.
    choice = max((_INDEX * n for n in sizes if n > samples and (n <= 10_000 or samples * 50 > n)), default=0)
    held = 8 * ((G + 1) * H * C + G * H * H + 3 * G * H + C) + 8 * sum(sizes) + 4 * 8 * samples  # g, copies, picks
    peak = held + max(loss_peak, choice) + _LOOP_OBJECTS
    loop = _estimate([("loss evaluations", work), ("python steps", report)], peak, machine)
    return first + loop


def compare(*, T: int, H: int, C: int, K: int | None, cell: str = "rnn", machine: Machine = DEFAULT) -> Estimate:
    """Cost of ``checks.compare`` when the submission fails (the diagnosis runs).

    ``checks.compare`` recomputes every classic mistake vectorised (docs/testing.md):
    one ``engine.bptt`` for the expected gradients, one forward pass, then four
    one-pass sweeps over T (full BPTT) or one loop of K + 1 lags and three of K
    (truncated), and a T x H^2 product per mistake. Measured here against
    ``engine.bptt`` alone: 3 to 4 times its time; priced as 3.5 times this module's
    bptt estimate (itself above the measured bptt). Memory: the bptt's peak, plus
    about six (T, H) arrays, one (T, C), the mistakes' (H, C) and (H, H) gradients.
    """
    _check_dims(H=H, C=C, K=K, itemsize=8)
    (T,) = _check_lengths([T])
    G = gates(cell)
    one = bptt(lengths=[T], H=H, C=C, K=K, cell=cell, machine=machine)
    extra = 8 * (6 * G * T * H + T * C + 2 * G * H * C + G * H * H) + _LOOP_OBJECTS
    if G == 1:
        sweeps = 2.5 * one.seconds
    else:  # gated_checks.SWEEPS: at most F forward and B backward passes, each about half a bptt
        passes = GATED_COMPARE_PASSES[cell]["full" if K is None else "truncated"]
        sweeps = one.seconds * passes / 2
        # Every candidate's gradients are held until the diagnosis is written (measured with tracemalloc:
        # 0.47 to 0.9 times the peak without this term, 1.0 to 2.6 with it).
        extra += GATED_MISTAKES * 8 * (G * H * C + C * H + G * H * H)
    return Estimate(
        seconds=one.seconds + sweeps,
        bytes=one.bytes + extra,
        terms={**one.terms, "mistakes' recomputations": sweeps},
    )


def vjp(*, N: int, T: int, D: int, H: int, G: int = 1, machine: Machine = DEFAULT) -> Estimate:
    """Cost of ``service.vjp.rnn_vjp`` (G = 1) or ``lstm_vjp`` (G = 4), in the canonical layout.

    One loop over time forward and one backward: T steps of (N, H) x (H, G H) each
    way; the products that do not recur (x Wx, dx, dWx) once, N T D G H each; the
    element-wise passes and the nonlinearities over (T, N, G H). Memory: about six
    (T, N, G H) arrays, three (T, N, D), and the weights' gradients.
    """
    for name, value in (("N", N), ("T", T), ("D", D), ("H", H)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}", field=name)
    work: _Work = {
        "step": 2 * T,
        "gemv_madd" if N == 1 else "small_madd": 2 * G * T * N * H * H,
        "large_madd": 3 * G * N * T * D * H,
        "element": 12 * G * N * T * H,
        "transcendental": 2 * G * N * T * H,
    }
    peak = 8 * (6 * G * N * T * H + 3 * N * T * D + 3 * G * H * (H + D))
    return _estimate([("recurrence and products", work)], peak, machine)


# Measured here (one BLAS thread): the products of step Jacobians cost about 60 ns per T^2 H^2
# with the singular values of every pair (spectral), 16 ns without (Frobenius), or 1.2 and
# 0.2 ns per pair x H^3 once H is large; the larger of the two terms bounds both regimes.
_FLOW_SECONDS = {"spectral": (60e-9, 1.2e-9), "frobenius": (16e-9, 0.2e-9)}


def flow(*, T: int, H: int, C: int, norm: str = "spectral", machine: Machine = DEFAULT) -> Estimate:
    """Cost of ``service.flow.flow`` for the vanilla cell: O(T^2 H^2) to O(T^2 H^3).

    The Jacobian products of every pair k <= t (with a singular value decomposition
    per pair for the spectral norm), and the per-lag gradients (about twice a bptt).
    Memory: the T step Jacobians and a row of products (H^2 each), the T x T table.
    """
    if norm not in _FLOW_SECONDS:
        raise InputError(f"norm must be 'spectral' or 'frobenius', got {norm!r}", field="norm")
    (T,) = _check_lengths([T])
    one = bptt(lengths=[T], H=H, C=C, K=None, machine=machine)
    per_square, per_cube = _FLOW_SECONDS[norm]
    products = max(per_square * T * T * H * H, per_cube * T * (T + 1) / 2 * H**3) / machine.speed
    lags = 2 * one.seconds
    return one + Estimate(
        seconds=products + lags,
        bytes=8 * (4 * T * H * H + 3 * T * T + 4 * H * C),
        terms={"Jacobian products": products, "per-lag gradients": lags},
    )


def gates(cell: str) -> int:
    """G, the gates of a cell: 1 for "rnn", 3 for "gru", 4 for "lstm"."""
    if cell not in CELLS:
        raise InputError(f"cell must be one of {', '.join(map(repr, CELLS))}, got {cell!r}", field="cell")
    return CELLS[cell]


def _check_lengths(lengths: Sequence[int]) -> list[int]:
    if len(lengths) == 0:
        raise InputError("lengths must hold at least one sequence length, got none", field="lengths")
    out = [int(n) for n in lengths]
    for i, n in enumerate(out):
        if n < 1:
            raise InputError(f"lengths[{i}] must be a sequence length >= 1, got {n}", field=f"lengths[{i}]")
    return out


def _check_dims(*, H: int, C: int, K: int | None, itemsize: int) -> None:
    for name, value in (("H", H), ("C", C)):
        if value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value}", field=name)
    if K is not None and K < 0:
        raise InputError(f"K (bptt_truncate) must be an integer >= 0 or None, got {K}", field="bptt_truncate")
    if itemsize not in (4, 8):
        raise InputError(f"itemsize must be 4 (float32) or 8 (float64), got {itemsize}", field="itemsize")
