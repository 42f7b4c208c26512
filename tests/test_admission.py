"""service.admission in isolation: every refusal's exact message and field (what a user reads), the parse
price, the budgets' arithmetic, the search for the largest admitted shape, and the pod's memory terms."""

from __future__ import annotations

import pytest

from service import admission, costs
from service.errors import LimitError
from service.settings import Settings


def refused(call, *args, **kwargs) -> LimitError:
    with pytest.raises(LimitError) as info:
        call(*args, **kwargs)
    return info.value


@pytest.mark.parametrize(
    ("limits", "H", "C", "lengths", "field", "message"),
    [
        ({"max_weights": 11}, 3, 4, [2], "U", "C x H = 4 x 3 is 12, over the limit of 11 (setting BPTT_MAX_WEIGHTS)"),
        (
            {"max_batch": 2},
            3,
            4,
            [1, 1, 1],
            "sequences",
            "the number of sequences is 3, over the limit of 2 (setting BPTT_MAX_BATCH)",
        ),
        (
            {"max_tokens": 4},
            3,
            4,
            [5],
            "x",
            "T (tokens in one sequence) is 5, over the limit of 4 (setting BPTT_MAX_TOKENS)",
        ),
        (
            {"max_tokens": 4},
            3,
            4,
            [2, 6, 3],
            "sequences[1].x",
            "T (tokens in one sequence) is 6, over the limit of 4 (setting BPTT_MAX_TOKENS)",
        ),
        (
            {"max_batch_tokens": 5},
            3,
            4,
            [3, 3],
            "sequences",
            "the batch's total tokens is 6, over the limit of 5 (setting BPTT_MAX_BATCH_TOKENS)",
        ),
        (
            {"max_probabilities": 1_999},
            3,
            1_000,
            [2],
            "x",
            "the probability matrix (tokens x C = 2 x 1,000) is 2,000, over the limit of 1,999 "
            "(setting BPTT_MAX_PROBABILITIES)",
        ),
        (
            {"max_probabilities": 11},
            3,
            4,
            [2, 1],
            "sequences",
            "the probability matrix (tokens x C = 3 x 4) is 12, over the limit of 11 (setting BPTT_MAX_PROBABILITIES)",
        ),
    ],
)
def test_check_work_names_the_limit_its_value_and_setting(limits, H, C, lengths, field, message):
    error = refused(admission.check_work, Settings(**limits), H=H, C=C, lengths=lengths)
    assert (error.field, error.message) == (field, message)
    admission.check_work(Settings(), H=H, C=C, lengths=lengths)  # the defaults admit it


def test_a_single_sequence_is_not_held_to_the_batch_token_limit():
    admission.check_work(Settings(max_batch_tokens=5, max_tokens=10), H=2, C=2, lengths=[8])


@pytest.mark.parametrize(("K", "lags"), [(None, 5), (2, 3), (9, 5)])
def test_check_trace_counts_k_plus_one_lags(K, lags):
    values = 5 * lags * 4
    admission.check_trace(Settings(max_trace_values=values), H=4, T=5, K=K)
    error = refused(admission.check_trace, Settings(max_trace_values=values - 1), H=4, T=5, K=K)
    assert error.field == "trace"
    assert error.message == (
        f"the trace (T x lags x H = 5 x {lags} x 4) is {values:,} numbers, over the limit of {values - 1:,} "
        "(setting BPTT_MAX_TRACE_VALUES); shorten the sequence or set bptt_truncate"
    )


def test_json_parse_price_counts_commas_and_brackets():
    body = b"[" * 10 + b"," * 99  # 100 numbers, 10 lists
    seconds = 100 * admission.PARSE_SECONDS_PER_NUMBER + 10 * admission.PARSE_SECONDS_PER_LIST
    admission.check_json_parse(Settings(max_parse_seconds=seconds * 1.0001), body)
    error = refused(admission.check_json_parse, Settings(max_parse_seconds=seconds * 0.9999), body)
    assert error.field == "body"
    assert error.message.startswith(
        f"this JSON body holds about 100 numbers in 10 lists: parsing it would take about {seconds:.2g} s"
    )
    assert error.message.endswith(
        '(setting BPTT_MAX_PARSE_SECONDS); send the arrays as base64 tensor objects ({"dtype", "shape", "data"}), '
        "which parse in milliseconds, or split the request"
    )


def test_refusal_over_time_and_over_memory_says_which():
    estimate = costs.Estimate(seconds=2.5, bytes=3 << 20, terms={})
    advice = "send shorter sequences, a smaller bptt_truncate or fewer at once; POST <route>/cost prices a request"
    slow = admission.refusal(Settings(max_request_seconds=2.0), estimate, inputs=0, what="this request (T = 9)")
    assert slow is not None and slow.field == "body"
    assert slow.message == (
        "this request (T = 9) would take about 2.5 s to compute (the cost model's estimate from its shapes), "
        "over the limit of 2 s (setting BPTT_MAX_REQUEST_SECONDS); " + advice
    )
    big = admission.refusal(Settings(max_request_bytes=4 << 20), estimate, inputs=2 << 20, what="this request")
    assert big is not None and big.message == (
        "this request would need about 5 MiB of memory (the cost model's estimate from its shapes), over the "
        "limit of 4 MiB (setting BPTT_MAX_REQUEST_BYTES); " + advice
    )
    assert admission.refusal(Settings(), estimate, inputs=1 << 20, what="") is None
    exact = costs.Estimate(seconds=2.0, bytes=3 << 20, terms={})  # at the limits exactly: admitted
    assert (
        admission.refusal(Settings(max_request_seconds=2.0, max_request_bytes=4 << 20), exact, inputs=1 << 20, what="")
        is None
    )


def test_machine_takes_the_speed_setting():
    assert admission.machine(Settings(speed=2.5)).speed == 2.5
    assert admission.machine(Settings(speed=2.5)).step == costs.DEFAULT.step


@pytest.mark.parametrize(
    ("threshold", "low", "high", "want"), [(7, 1, 20, 7), (0, 1, 20, 0), (25, 1, 20, 20), (1, 1, 20, 1)]
)
def test_largest_finds_the_edge_of_a_monotone_predicate(threshold, low, high, want):
    assert admission._largest(lambda n: n <= threshold, low, high) == want


def test_pod_memory_terms():
    settings = Settings(threads=3, max_request_bytes=100 << 20, max_bytes_in_flight=200 << 20, max_parse_seconds=1.0)
    parts = admission.pod_memory(settings)
    parse = int(max(1.0 / admission.PARSE_SECONDS_PER_NUMBER * admission.PARSE_BYTES_PER_NUMBER,
                    1.0 / admission.PARSE_SECONDS_PER_LIST * admission.PARSE_BYTES_PER_LIST))  # fmt: skip
    assert parts == {
        "baseline": admission.BASELINE_BYTES,
        "computing": 300 << 20,
        "parsing": 3 * parse,
        "bodies": 200 << 20,
    }


def test_json_parse_counts_commas_and_brackets_across_chunks():
    """The vectorised count, a megabyte at a time, equals bytes.count, across chunk boundaries."""
    body = b"[1," * ((3 << 20) // 3 + 7)
    assert admission._count(body, b",") == body.count(b",")
    assert admission._count(body, b"[") == body.count(b"[")
    assert admission._count(b"", b",") == 0


def test_bptt_estimate_is_the_cost_models_and_remembered():
    shapes = {"H": 32, "C": 65, "K": None, "itemsize": 8, "biases": False, "clip": False, "cell": "rnn"}
    machine = admission.machine(Settings())
    first = admission.bptt_estimate(lengths=(25,), machine=machine, **shapes)
    hits = admission.bptt_estimate.cache_info().hits
    assert admission.bptt_estimate(lengths=(25,), machine=machine, **shapes) is first
    assert admission.bptt_estimate.cache_info().hits == hits + 1
    assert first == costs.bptt(lengths=[25], machine=machine, **shapes)
