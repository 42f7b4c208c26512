"""service.admission at its edges: every limit at its value (admitted) and one past it (refused,
naming the field and the setting), the budgets to the byte, and ``examples``: what each shape
admits, found at the limit that binds it."""

from __future__ import annotations

import pytest

from service import admission, costs
from service.errors import LimitError
from service.settings import Settings

# Budgets no small request reaches, so that a shape limit is the one that binds.
ROOMY = {"max_request_seconds": 1e9, "max_request_bytes": 1 << 50, "max_bytes_in_flight": 1 << 60}


def refused(call, *args, **kwargs) -> LimitError:
    with pytest.raises(LimitError) as info:
        call(*args, **kwargs)
    return info.value


@pytest.mark.parametrize(
    ("setting", "value", "H", "C", "at", "past", "field"),
    [
        ("max_weights", 12, 3, 4, None, None, "U"),  # C x H = 12 at the limit; C = 5 past it
        ("max_batch", 3, 2, 2, [1, 1, 1], [1, 1, 1, 1], "sequences"),
        ("max_tokens", 5, 2, 2, [5], [6], "x"),
        ("max_tokens", 5, 2, 2, [5, 5], [5, 6], "sequences[1].x"),
        ("max_batch_tokens", 6, 2, 2, [3, 3], [3, 4], "sequences"),
        ("max_probabilities", 12, 2, 4, [3], [4], "x"),
        ("max_probabilities", 12, 2, 4, [1, 2], [2, 2], "sequences"),
    ],
)
def test_check_work_every_limit_at_its_value_and_one_past(setting, value, H, C, at, past, field):
    settings = Settings(**{setting: value})
    if setting == "max_weights":
        admission.check_work(settings, H=H, C=C, lengths=[1])
        error = refused(admission.check_work, settings, H=H, C=C + 1, lengths=[1])
        over = 15
    else:
        admission.check_work(settings, H=H, C=C, lengths=at)
        error = refused(admission.check_work, settings, H=H, C=C, lengths=past)
        over = {"max_batch": len(past), "max_tokens": max(past), "max_batch_tokens": sum(past)}.get(
            setting, sum(past) * C
        )
    assert error.field == field
    assert error.message.endswith(f" is {over:,}, over the limit of {value:,} (setting BPTT_{setting.upper()})")


def test_check_work_names_the_first_of_the_longest_sequences():
    error = refused(admission.check_work, Settings(max_tokens=5), H=2, C=2, lengths=[2, 6, 3, 6])
    assert error.field == "sequences[1].x"


def test_check_work_writes_large_numbers_with_commas():
    error = refused(admission.check_work, Settings(max_weights=999_999), H=1_000, C=1_000, lengths=[1])
    assert error.message == ("C x H = 1,000 x 1,000 is 1,000,000, over the limit of 999,999 (setting BPTT_MAX_WEIGHTS)")


@pytest.mark.parametrize(("T", "K", "lags"), [(5, 0, 1), (5, 3, 4), (5, 4, 5), (5, 5, 5), (2, None, 2)])
def test_check_trace_at_its_value_and_one_past(T, K, lags):
    values = T * lags * 3
    admission.check_trace(Settings(max_trace_values=values), H=3, T=T, K=K)
    error = refused(admission.check_trace, Settings(max_trace_values=values - 1), H=3, T=T, K=K)
    assert error.field == "trace"
    assert error.message.startswith(f"the trace (T x lags x H = {T} x {lags} x 3) is {values} numbers")


def test_check_json_parse_at_its_price_and_past_it():
    body = b"[[" + b"1," * 999 + b"1]]"  # 1,000 numbers in 2 lists
    seconds = 1000 * admission.PARSE_SECONDS_PER_NUMBER + 2 * admission.PARSE_SECONDS_PER_LIST
    admission.check_json_parse(Settings(max_parse_seconds=seconds), body)
    error = refused(admission.check_json_parse, Settings(max_parse_seconds=seconds * 0.999), body)
    assert error.message.startswith(
        "this JSON body holds about 1,000 numbers in 2 lists: parsing it would take about 0.00012 s, "
        f"over the limit of {seconds * 0.999:g} s (setting BPTT_MAX_PARSE_SECONDS)"
    )
    admission.check_json_parse(Settings(max_parse_seconds=admission.PARSE_SECONDS_PER_NUMBER), b"{}")  # one number


def test_refusal_bytes_count_the_inputs_to_the_byte():
    settings = Settings(max_request_bytes=10 << 20)
    estimate = costs.Estimate(seconds=0.0, bytes=6 << 20, terms={})
    assert admission.refusal(settings, estimate, inputs=4 << 20, what="it") is None
    over = admission.refusal(settings, estimate, inputs=(4 << 20) + 1, what="it")
    assert over is not None and over.field == "body"
    assert over.message.startswith("it would need about 10 MiB of memory")
    assert "over the limit of 10 MiB (setting BPTT_MAX_REQUEST_BYTES)" in over.message


def test_refusal_seconds_at_the_limit_and_past_it_with_three_figures():
    settings = Settings(max_request_seconds=1.5)
    assert admission.refusal(settings, costs.Estimate(seconds=1.5, bytes=0, terms={}), inputs=0, what="x") is None
    assert admission.refusal(settings, costs.Estimate(seconds=1.5001, bytes=0, terms={}), inputs=0, what="x")
    over = admission.refusal(
        Settings(max_request_seconds=1.2), costs.Estimate(seconds=1234.5678, bytes=0, terms={}), inputs=0, what="x"
    )
    assert over is not None
    assert over.message.startswith("x would take about 1.23e+03 s to compute (the cost model's estimate from its ")
    assert "over the limit of 1.2 s (setting BPTT_MAX_REQUEST_SECONDS); send shorter" in over.message


def test_refusal_memory_in_mib_with_commas():
    settings = Settings(max_request_bytes=1000 << 20, max_bytes_in_flight=1 << 40)
    over = admission.refusal(settings, costs.Estimate(seconds=0.0, bytes=2000 << 20, terms={}), inputs=0, what="x")
    assert over is not None
    assert "about 2,000 MiB of memory" in over.message and "limit of 1,000 MiB" in over.message


def test_admit_raises_the_refusal_and_passes_what_fits():
    estimate = costs.Estimate(seconds=3.0, bytes=0, terms={})
    admission.admit(Settings(max_request_seconds=3.0), estimate, inputs=0, what="this request")
    error = refused(admission.admit, Settings(max_request_seconds=2.0), estimate, inputs=0, what="this request")
    want = admission.refusal(Settings(max_request_seconds=2.0), estimate, inputs=0, what="this request")
    assert want is not None and (error.field, error.message) == (want.field, want.message)
    assert error.message.startswith("this request would take about 3 s")


# -- examples -------------------------------------------------------------------------------------


SHAPES = [
    ("the tutorial's model, C = 8000, H = 100, full BPTT", "T"),
    ("the tutorial's model, C = 8000, H = 100, bptt_truncate = 4", "T"),
    ("a batch of sequences of T = 50, C = 8000, H = 100", "B"),
    ("T = 1000, C = 65, H = 100 (characters)", "bptt_truncate"),
    ("C = 1, T = 1000, full BPTT", "H"),
]


def values(**settings) -> list[int]:
    examples = admission.examples(Settings(**settings))
    assert [(e["shape"], e["largest"]) for e in examples] == SHAPES
    return [e["value"] for e in examples]


def test_examples_at_the_shape_limits_that_bind():
    assert values(max_tokens=37, **ROOMY)[:2] == [37, 37]
    assert values(max_probabilities=8000 * 37, **ROOMY)[:2] == [37, 37]
    assert values(max_probabilities=8000 * 37 - 1, **ROOMY)[:2] == [36, 36]
    assert values(max_batch=7, **ROOMY)[2] == 7
    assert values(max_batch_tokens=50 * 7, **ROOMY)[2] == 7
    assert values(max_batch_tokens=50 * 7 - 1, **ROOMY)[2] == 6
    assert values(**ROOMY)[3] == 998  # every K up to T - 2 = 998 admitted
    assert values(max_weights=1234, **ROOMY)[4] == 1234  # C = 1: H = C x H


def test_examples_when_nothing_fits_are_one_below_the_search():
    assert values(max_weights=1, **ROOMY) == [0, 0, 0, -1, 1]  # the last: C x H = 1 x 1 fits
    assert values(max_tokens=999, **ROOMY)[3:] == [-1, 0]  # T = 1000 is over the limit for any K or H


def inputs(lengths: list[int], H: int, C: int) -> int:
    """The bytes of a request's own arrays: U, V, W as float64 and x, y as int64."""
    return 8 * (2 * H * C + H * H) + 2 * 8 * sum(lengths)


def admitted(settings: Settings, lengths: list[int], H: int, C: int, K: int | None) -> bool:
    estimate = costs.bptt(lengths=lengths, H=H, C=C, K=K, machine=admission.machine(settings))
    return admission.refusal(settings, estimate, inputs=inputs(lengths, H, C), what="") is None


@pytest.mark.parametrize("speed", [1.0, 3.0])
def test_examples_at_the_cost_models_budget_are_admitted_and_one_past_refused(speed):
    settings = Settings(max_request_seconds=0.05, speed=speed)
    T, T4, B, K, H = values(max_request_seconds=0.05, speed=speed)
    for fits, n in [
        (lambda n: admitted(settings, [n], 100, 8000, None), T),
        (lambda n: admitted(settings, [n], 100, 8000, 4), T4),
        (lambda n: admitted(settings, [50] * n, 100, 8000, None), B),
        (lambda n: admitted(settings, [1000], 100, 65, n), K),
        (lambda n: admitted(settings, [1000], n, 1, None), H),
    ]:
        assert n >= 1 and fits(n) and not fits(n + 1)


def test_examples_at_the_roomiest_reach_the_ends_of_their_searches():
    assert values(max_probabilities=10**9, **ROOMY)[2:] == [1024, 998, 20_000]  # BPTT_MAX_BATCH, T - 2, the end


# (example, its shape at n: lengths, H, C, K; n)
AT_BYTES = [
    (0, lambda n: ([n], 100, 8000, None), 123),
    (2, lambda n: ([50] * n, 100, 8000, None), 5),
    (4, lambda n: ([1000], n, 1, None), 321),
]


@pytest.mark.parametrize(("which", "shape", "n"), AT_BYTES)
def test_examples_at_a_memory_budget_of_exactly_the_largest_requests_bytes(which, shape, n):
    """The budget is the predicted peak plus the request's own arrays at n, to the byte: n is the
    largest admitted, so a byte more counted for the arrays (or another shape) moves it."""
    lengths, H, C, K = shape(n)
    estimate = costs.bptt(lengths=lengths, H=H, C=C, K=K, machine=admission.machine(Settings()))
    budget = estimate.bytes + inputs(lengths, H, C)
    assert values(max_request_bytes=budget, max_request_seconds=1e9)[which] == n


def test_examples_truncation_at_a_memory_budget_that_does_not_depend_on_k():
    """The peak memory of T = 1000, C = 65, H = 100 is the same for every K: at that peak plus the
    arrays every K is admitted, a byte below it none; a byte less counted for the arrays admits them."""
    estimate = costs.bptt(lengths=[1000], H=100, C=65, K=0, machine=admission.machine(Settings()))
    assert costs.bptt(lengths=[1000], H=100, C=65, K=998, machine=admission.machine(Settings())).bytes == estimate.bytes
    budget = estimate.bytes + inputs([1000], 100, 65)
    assert values(max_request_bytes=budget, max_request_seconds=1e9)[3] == 998
    assert values(max_request_bytes=budget - 1, max_request_seconds=1e9)[3] == -1
