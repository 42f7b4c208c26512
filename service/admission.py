"""Admission: a request's size against the service's limits, before any of the work is done.

Over a limit is ``LimitError`` (413), naming the limit, its value and its
setting. The limits: T per sequence, C x H weights, the tokens x C probability
matrix, batch size and tokens, trace values, and the estimated work of a check.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import LimitError
from .settings import Settings

__all__ = ["check_flops", "check_json_parse", "check_trace", "check_work"]

# Parsing JSON number text holds the GIL: measured here about 0.11 us a number
# and 1.5 us a list (pydantic-core, one-element rows the worst case per byte).
PARSE_SECONDS_PER_NUMBER = 0.12e-6
PARSE_SECONDS_PER_LIST = 1.6e-6


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


def check_flops(settings: Settings, flops: float, what: str) -> None:
    """Refuse a check whose estimated arithmetic is over BPTT_MAX_CHECK_FLOPS."""
    if flops > settings.max_check_flops:
        raise LimitError(
            f"{what} would take about {flops:.3g} floating-point operations, over the limit of "
            f"{settings.max_check_flops:.3g} (setting BPTT_MAX_CHECK_FLOPS); use a smaller model, "
            "shorter sequence or fewer samples",
            field="body",
        )


def check_json_parse(settings: Settings, body: bytes) -> None:
    """Refuse a JSON body whose numbers and lists would take too long to parse, before parsing it.

    Commas bound the numbers and ``[`` the lists (base64 strings hold neither), so
    counting them (C speed) prices the parse; a body of base64 tensors costs nothing here.
    """
    numbers = body.count(b",") + 1
    lists = body.count(b"[")
    seconds = numbers * PARSE_SECONDS_PER_NUMBER + lists * PARSE_SECONDS_PER_LIST
    if seconds > settings.max_parse_seconds:
        raise LimitError(
            f"this JSON body holds about {numbers:,} numbers in {lists:,} lists: parsing it would take about "
            f"{seconds:.2g} s, over the limit of {settings.max_parse_seconds:g} s (setting BPTT_MAX_PARSE_SECONDS); "
            'send the arrays as base64 tensor objects ({"dtype", "shape", "data"}), which parse in milliseconds, '
            "or split the request",
            field="body",
        )
