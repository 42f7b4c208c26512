"""Admission: a request's size against the service's limits, before any of the work is done.

Over a limit is ``LimitError`` (413), naming the limit, its value and its
setting. The limits: T per sequence, C x H weights, the tokens x C probability
matrix, batch size and tokens, trace values, and the estimated work of a check.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import LimitError
from .settings import Settings

__all__ = ["check_flops", "check_trace", "check_work"]


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
