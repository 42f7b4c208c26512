"""Admission: a request against the service's limits and budgets, before any of the work is done.

Over a limit is ``LimitError`` (413), naming the limit, its value and its
setting. Three kinds, each checked where it is first known:

- the price of parsing a JSON body (its numbers and lists), before parsing it;
- the shapes: T per sequence, C x H, tokens x C, batch size and tokens, trace values;
- the cost model (``service.costs``): the predicted seconds and peak bytes of the
  computation, from the shapes alone, against BPTT_MAX_REQUEST_SECONDS and
  BPTT_MAX_REQUEST_BYTES. ``POST <route>/cost`` (``/bptt/cost``, ...) answers the same prediction
  without computing; ``GET /limits`` lists what is in force.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from . import costs
from .errors import LimitError
from .settings import Settings

__all__ = [
    "BASELINE_BYTES",
    "COUNT_SECONDS_PER_BYTE",
    "PARSE_BYTES_PER_LIST",
    "PARSE_BYTES_PER_NUMBER",
    "PARSE_SECONDS_PER_BYTE",
    "admit",
    "bptt_estimate",
    "check_json_parse",
    "check_trace",
    "check_work",
    "examples",
    "machine",
    "pod_memory",
    "refusal",
]

# Memory of one worker process with nothing computing: the interpreter, numpy,
# the web stack, and what the first requests leave behind (measured about 75 MiB
# idle and under 120 MiB after the adversarial suite's catalogue; tests/test_adversarial.py).
BASELINE_BYTES = 160 << 20
# Parsing JSON number text makes Python objects: a float (24 bytes) and its list
# slot (8), pydantic's intermediate, about 40 bytes a number; a list about 120.
PARSE_BYTES_PER_NUMBER = 40
PARSE_BYTES_PER_LIST = 120

# Parsing JSON number text holds the GIL: measured here about 0.11 us a number
# and 1.5 us a list (pydantic-core, one-element rows the worst case per byte).
PARSE_SECONDS_PER_NUMBER = 0.12e-6
PARSE_SECONDS_PER_LIST = 1.6e-6
# Validating a body's text and decoding its base64 tensors: measured about 1 ns a byte (57 us for the
# 55 KB body of C = 65, H = 32, T = 25), priced at twice that. Counting the commas and brackets
# (``check_json_parse``) reads the body twice at about 0.2 ns a byte.
PARSE_SECONDS_PER_BYTE = 2e-9
COUNT_SECONDS_PER_BYTE = 0.5e-9


def _refuse(what: str, value: int, limit: int, setting: str, field: str) -> LimitError:
    return LimitError(
        f"{what} is {value:,}, over the limit of {limit:,} (setting BPTT_{setting.upper()})",
        field=field,
    )


def check_work(settings: Settings, *, H: int, C: int, lengths: Sequence[int]) -> None:
    """Refuse work over the configured limits; ``lengths`` are the sequences' T (one for ``/bptt``)."""
    if settings.max_weights < C * H:
        raise _refuse(f"C x H = {C:,} x {H:,}", C * H, settings.max_weights, "max_weights", "U")
    B = len(lengths)
    if settings.max_batch < B:
        raise _refuse("the number of sequences", B, settings.max_batch, "max_batch", "sequences")
    longest = max(lengths)
    if longest > settings.max_tokens:
        field = "x" if B == 1 else f"sequences[{list(lengths).index(longest)}].x"
        raise _refuse("T (tokens in one sequence)", longest, settings.max_tokens, "max_tokens", field)
    N = sum(lengths)
    if B > 1 and settings.max_batch_tokens < N:
        raise _refuse("the batch's total tokens", N, settings.max_batch_tokens, "max_batch_tokens", "sequences")
    if settings.max_probabilities < N * C:
        raise _refuse(
            f"the probability matrix (tokens x C = {N:,} x {C:,})",
            N * C,
            settings.max_probabilities,
            "max_probabilities",
            "x" if B == 1 else "sequences",
        )


def check_trace(settings: Settings, *, H: int, T: int, K: int | None) -> None:
    """A trace holds T x L x H numbers (L = lags kept); refuse it over BPTT_MAX_TRACE_VALUES."""
    lags = T if K is None else min(T, K + 1)
    values = T * lags * H
    if values > settings.max_trace_values:
        raise LimitError(
            f"the trace (T x lags x H = {T:,} x {lags:,} x {H:,}) is {values:,} numbers, over the limit "
            f"of {settings.max_trace_values:,} (setting BPTT_MAX_TRACE_VALUES); shorten the sequence "
            "or set bptt_truncate",
            field="trace",
        )


def check_json_parse(settings: Settings, body: bytes) -> float:
    """Refuse a JSON body whose numbers and lists would take too long to parse, before parsing it;
    else the estimated seconds of its parse (its bytes included).

    Commas bound the numbers and ``[`` the lists (base64 strings hold neither), so
    counting them (C speed) prices the parse; a body of base64 tensors costs nothing here.
    """
    numbers = _count(body, b",") + 1
    lists = _count(body, b"[")
    seconds = numbers * PARSE_SECONDS_PER_NUMBER + lists * PARSE_SECONDS_PER_LIST
    if seconds > settings.max_parse_seconds:
        raise LimitError(
            f"this JSON body holds about {numbers:,} numbers in {lists:,} lists: parsing it would take about "
            f"{seconds:.2g} s, over the limit of {settings.max_parse_seconds:g} s (setting BPTT_MAX_PARSE_SECONDS); "
            'send the arrays as base64 tensor objects ({"dtype", "shape", "data"}), which parse in milliseconds, '
            "or split the request",
            field="body",
        )
    return seconds + len(body) * PARSE_SECONDS_PER_BYTE


def _count(body: bytes, byte: bytes) -> int:
    """How many times ``byte`` occurs in ``body``: numpy's vectorised compare, 3x faster than
    ``bytes.count`` here, a megabyte at a time (no temporary the size of a large body)."""
    a = np.frombuffer(body, dtype=np.uint8)
    code = byte[0]
    return sum(int(np.count_nonzero(a[i : i + _CHUNK] == code)) for i in range(0, len(a), _CHUNK))


_CHUNK = 1 << 20


@functools.lru_cache(maxsize=256)
def bptt_estimate(
    *,
    lengths: tuple[int, ...],
    H: int,
    C: int,
    K: int | None,
    itemsize: int,
    biases: bool,
    clip: bool,
    trace: bool = False,
    cell: str,
    machine: costs.Machine,
) -> costs.Estimate:
    """``costs.bptt``, remembered for the last shapes priced: a training loop sends the same shapes at
    every step, and pricing them is 20 us of a 0.3 ms request at C = 65, H = 32, T = 25."""
    return costs.bptt(
        lengths=lengths, H=H, C=C, K=K, itemsize=itemsize, biases=biases, clip=clip, trace=trace, cell=cell,
        machine=machine,
    )  # fmt: skip


def machine(settings: Settings) -> costs.Machine:
    """The cost model's constants, scaled by BPTT_SPEED."""
    return _machine(settings.speed)


@functools.lru_cache(maxsize=8)
def _machine(speed: float) -> costs.Machine:
    return replace(costs.DEFAULT, speed=speed)


def refusal(settings: Settings, estimate: costs.Estimate, *, inputs: int, what: str) -> LimitError | None:
    """The 413 a request with this ``estimate`` gets, or None when it is admitted.

    ``inputs`` are the bytes of the request's own arrays, counted with the
    computation's peak against BPTT_MAX_REQUEST_BYTES.
    """
    advice = "send shorter sequences, a smaller bptt_truncate or fewer at once; POST <route>/cost prices a request"
    if estimate.seconds > settings.max_request_seconds:
        return LimitError(
            f"{what} would take about {estimate.seconds:.3g} s to compute (the cost model's estimate from its "
            f"shapes), over the limit of {settings.max_request_seconds:g} s (setting BPTT_MAX_REQUEST_SECONDS); "
            + advice,
            field="body",
        )
    total = estimate.bytes + inputs
    if total > settings.max_request_bytes:
        return LimitError(
            f"{what} would need about {total / 2**20:,.0f} MiB of memory (the cost model's estimate from its "
            f"shapes), over the limit of {settings.max_request_bytes / 2**20:,.0f} MiB (setting "
            f"BPTT_MAX_REQUEST_BYTES); " + advice,
            field="body",
        )
    return None


def admit(settings: Settings, estimate: costs.Estimate, *, inputs: int, what: str) -> None:
    """Raise the 413 of ``refusal`` when the request is over a budget."""
    refused = refusal(settings, estimate, inputs=inputs, what=what)
    if refused is not None:
        raise refused


def _largest(fits: Any, low: int, high: int) -> int:
    """The largest n in [low, high] with fits(n) (fits is monotone), or low - 1 when none fits."""
    if not fits(low):
        return low - 1
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def examples(settings: Settings) -> list[dict[str, Any]]:
    """What the limits in force admit, from the cost model: the largest request of a few shapes."""
    m = machine(settings)

    def fits(lengths: list[int], H: int, C: int, K: int | None) -> bool:
        try:
            check_work(settings, H=H, C=C, lengths=lengths)  # the shape limits, as a request meets them
        except LimitError:
            return False
        estimate = costs.bptt(lengths=lengths, H=H, C=C, K=K, machine=m)
        inputs = 8 * (2 * H * C + H * H) + 16 * sum(lengths)
        return refusal(settings, estimate, inputs=inputs, what="") is None

    tokens = settings.max_tokens
    out = [
        {
            "shape": "the tutorial's model, C = 8000, H = 100, full BPTT",
            "largest": "T",
            "value": _largest(lambda T: fits([T], 100, 8000, None), 1, tokens),
        },
        {
            "shape": "the tutorial's model, C = 8000, H = 100, bptt_truncate = 4",
            "largest": "T",
            "value": _largest(lambda T: fits([T], 100, 8000, 4), 1, tokens),
        },
        {
            "shape": "a batch of sequences of T = 50, C = 8000, H = 100",
            "largest": "B",
            "value": _largest(lambda B: fits([50] * B, 100, 8000, None), 1, settings.max_batch),
        },
        {
            "shape": "T = 1000, C = 65, H = 100 (characters)",
            "largest": "bptt_truncate",
            "value": _largest(lambda K: fits([1000], 100, 65, K), 0, 998),
        },
        {
            "shape": "C = 1, T = 1000, full BPTT",
            "largest": "H",
            "value": _largest(lambda H: fits([1000], H, 1, None), 1, 20_000),
        },
    ]
    return out


def pod_memory(settings: Settings) -> dict[str, int]:
    """The worst-case memory of one worker process under these settings, by part (bytes).

    Every term is bounded by a setting: the requests computing at once (BPTT_THREADS,
    each within BPTT_MAX_REQUEST_BYTES: its arrays, the computation's peak and its
    answer), the Python objects of their JSON parses (BPTT_MAX_PARSE_SECONDS prices
    them), and every request body held, arriving or waiting (BPTT_MAX_BYTES_IN_FLIGHT).
    The deployment's memory limit must cover the sum with room for the allocator
    (tests/test_deploy.py).
    """
    numbers = settings.max_parse_seconds / PARSE_SECONDS_PER_NUMBER
    lists = settings.max_parse_seconds / PARSE_SECONDS_PER_LIST
    parse = int(max(numbers * PARSE_BYTES_PER_NUMBER, lists * PARSE_BYTES_PER_LIST))
    return {
        "baseline": BASELINE_BYTES,
        "computing": settings.threads * settings.max_request_bytes,
        "parsing": settings.threads * parse,
        "bodies": settings.max_bytes_in_flight,
    }
