"""checks.compare against an independent oracle: the seed's loop with each mistake made (tests/mistakes.py).

The wrong gradients come from tests/mistakes.py, never from service.checks, so a
recomputation in checks that drifts from the mistake it names fails here.
Tolerances: compare's default, 1e-6 relative to the largest entry; the
oracle and the vectorised recomputations agree to about 1e-15.
"""

from __future__ import annotations

import time
import warnings

import mistakes
import numpy as np
import pytest
import seed
from helpers import make_problem, numerical_gradient
from hypothesis import given, settings
from hypothesis import strategies as st

from service import checks, engine
from service.checks import MistakeName

pytestmark = pytest.mark.usefixtures("both_loops")  # the compiled paths and the numpy reference (conftest)

NAMES = ("dLdU", "dLdV", "dLdW")


def arrays_of(p, K):
    return dict(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y, s0=p.s0, bptt_truncate=K)


def _engine_grads(p):
    g = engine.bptt(p.U, p.V, p.W, p.x, p.y, s0=p.s0)
    return g.dLdU, g.dLdV, g.dLdW


def _one_step_dLdV(U, V, W, x, y):
    """dLdV of a sequence of T = 1 as checks recomputes it: outer(o_0 - onehot(y_0), s_0), bit for bit."""
    o, s = engine.forward(U, V, W, x)  # (1, C), (1, H)
    o[0, y[0]] -= 1.0
    return np.outer(o[0], s[0])


def submission(p, K, mistake="", also=""):
    return dict(zip(NAMES, mistakes.bptt(p.U, p.V, p.W, p.x, p.y, K, p.s0, mistake=mistake, also=also), strict=True))


def diagnosed(report) -> list[str]:
    return [d["mistake"] for d in report["diagnosis"]]


def test_mistake_names_are_one_enum_with_the_oracles_spelling():
    assert [str(m) for m in MistakeName] == list(mistakes.NAMES)
    assert MistakeName("dLdW_transposed") is MistakeName.DLDW_TRANSPOSED
    assert MistakeName.NO_RECURRENCE == "no_recurrence"  # a str: it goes into JSON as is
    assert not hasattr(checks, "PARAMS")


@pytest.mark.parametrize("with_s0", [False, True])
@pytest.mark.parametrize("K", [None, 3])
def test_compare_names_each_mistake_made_in_the_seed_loop(rng, K, with_s0):
    """T = 9, K = 3 or full: every mistake changes the gradients and is the only one that fits."""
    p = make_problem(rng, H=4, C=5, T=9, scale=2.0, s0=with_s0)
    names = mistakes.applicable(K)
    assert len(names) == (11 if K is None else 12)
    for name in names:
        report = checks.compare(arrays_of(p, K), submission(p, K, name))
        assert not report["passed"], name
        assert diagnosed(report) == [name]
        assert report["diagnosis"][0]["explanation"]


@pytest.mark.parametrize("K", [None, 0, 3, 20])
def test_compare_correct_submission_passes_without_diagnosis(rng, K):
    p = make_problem(rng, H=4, C=5, T=9, scale=2.0, s0=True)
    right = dict(zip(NAMES, seed.bptt(p.U, p.V, p.W, p.x, p.y, 9 if K is None else K, s0=p.s0), strict=True))
    report = checks.compare(arrays_of(p, K), right)
    assert report["passed"] and report["diagnosis"] == []
    assert all(r["passed"] and r["max_relative_error"] < 1e-12 for r in report["parameters"].values())


def test_compare_reports_every_mistake_that_fits_K_1(rng):
    """K = 1: going back one step less (K = 0) is the same as never going back."""
    p = make_problem(rng, H=4, C=5, T=9, scale=2.0)
    for made in ("no_recurrence", "truncation_off_by_one_short"):
        report = checks.compare(arrays_of(p, 1), submission(p, 1, made))
        assert diagnosed(report) == ["truncation_off_by_one_short", "no_recurrence"]


def test_compare_reports_every_mistake_that_fits_T_1(rng):
    """T = 1 and s0 = 0: skipping step 0 and writing dLdU into the (missing) next column both give
    dLdU = 0, and dLdW = outer(delta, s0) = 0 either way."""
    p = make_problem(rng, H=3, C=4, T=1)
    for made in ("missing_t0_term", "dLdU_next_token"):
        sub = submission(p, None, made)
        assert not sub["dLdU"].any() and not sub["dLdW"].any()
        report = checks.compare(arrays_of(p, None), sub)
        assert diagnosed(report) == ["missing_t0_term", "dLdU_next_token"]
    # With s0 given, dLdW tells them apart.
    p.s0 = rng.uniform(-1, 1, 3)
    assert diagnosed(checks.compare(arrays_of(p, None), submission(p, None, "missing_t0_term"))) == ["missing_t0_term"]


def test_compare_symmetric_W_cannot_tell_W_from_W_transposed(rng):
    """W = W^T: the mistake changes nothing, so alone it passes, and with another it is that other."""
    p = make_problem(rng, H=4, C=5, T=9, scale=2.0)
    p.W = (p.W + p.W.T) / 2
    report = checks.compare(arrays_of(p, None), submission(p, None, "w_not_transposed"))
    assert report["passed"] and report["diagnosis"] == []
    both = submission(p, None, "w_not_transposed", also="tanh_derivative_wrong_step")
    assert diagnosed(checks.compare(arrays_of(p, None), both)) == ["tanh_derivative_wrong_step"]
    # An asymmetric W tells them apart: both mistakes at once match neither.
    q = make_problem(rng, H=4, C=5, T=9, scale=2.0)
    both = submission(q, None, "w_not_transposed", also="tanh_derivative_wrong_step")
    report = checks.compare(arrays_of(q, None), both)
    assert not report["passed"] and report["diagnosis"] == []


def test_compare_diagnosis_respects_the_tolerance(rng):
    p = make_problem(rng, H=4, C=5, T=7, scale=2.0)
    wrong = submission(p, None, "output_error_double_counted")
    scale = np.abs(wrong["dLdW"]).max()
    for rel, named in ((1e-8, True), (1e-4, False)):
        near = {k: v.copy() for k, v in wrong.items()}
        near["dLdW"][1, 2] += rel * scale
        assert diagnosed(checks.compare(arrays_of(p, None), near)) == (["output_error_double_counted"] * named)
    # A looser tolerance accepts the 1e-4 miss.
    near["dLdW"][1, 2] = wrong["dLdW"][1, 2] + 1e-4 * scale
    report = checks.compare(arrays_of(p, None), near, tolerance=1e-3)
    assert report["tolerance"] == 1e-3 and diagnosed(report) == ["output_error_double_counted"]


def test_compare_explanations_name_T_and_K(rng):
    p = make_problem(rng, H=3, C=4, T=6, scale=2.0)
    by_name = {
        d["mistake"]: d["explanation"]
        for made in ("mean_instead_of_sum", "truncation_off_by_one_short", "truncation_off_by_one_long")
        for d in checks.compare(arrays_of(p, 2), submission(p, 2, made))["diagnosis"]
    }
    assert "divided by T = 6" in by_name["mean_instead_of_sum"]
    assert (
        "bptt_truncate = 1: your loop goes back one step less than asked (K = 2)"
        in by_name["truncation_off_by_one_short"]
    )
    assert (
        "bptt_truncate = 3: your loop goes back one step more than asked (K = 2)"
        in by_name["truncation_off_by_one_long"]
    )
    full = checks.compare(arrays_of(p, None), submission(p, None, "truncated_instead_of_full"))
    assert "(bptt_truncate = 4)" in full["diagnosis"][0]["explanation"]


def test_compare_worst_entries_and_errors(rng):
    p = make_problem(rng, H=3, C=4, T=5)
    right = submission(p, None)
    wrong = {k: v.copy() for k, v in right.items()}
    wrong["dLdU"][1, 3] -= 0.25
    wrong["dLdU"][0, 0] += 0.125
    report = checks.compare(arrays_of(p, None), wrong, worst=2)
    u = report["parameters"]["dLdU"]
    assert [w["index"] for w in u["worst"]] == [[1, 3], [0, 0]]
    assert u["worst"][0] == {
        "index": [1, 3],
        "submitted": pytest.approx(right["dLdU"][1, 3] - 0.25, abs=1e-15),
        "expected": pytest.approx(right["dLdU"][1, 3], abs=1e-15),
        "abs_error": pytest.approx(0.25, rel=1e-12),
    }
    assert u["max_absolute_error"] == pytest.approx(0.25, rel=1e-12)
    assert u["max_relative_error"] == pytest.approx(0.25 / np.abs(right["dLdU"]).max(), rel=1e-9)
    assert not u["passed"] and report["parameters"]["dLdW"]["passed"] and not report["passed"]
    assert report["diagnosis"] == []


def test_compare_all_zero_expected_gradient_uses_the_floor(rng):
    """V = 0 and U = 0: s = 0, so dLdW = 0 exactly; 1e-15 off is within ABS_FLOOR * tolerance."""
    p = make_problem(rng, H=2, C=3, T=4)
    p.U[:] = 0
    right = submission(p, None)
    assert not right["dLdW"].any()
    near = {k: v.copy() for k, v in right.items()}
    near["dLdW"][0, 1] = 1e-15
    assert checks.compare(arrays_of(p, None), near)["parameters"]["dLdW"]["passed"]
    near["dLdW"][0, 1] = 1e-13
    assert not checks.compare(arrays_of(p, None), near)["parameters"]["dLdW"]["passed"]


problems = st.builds(
    lambda seed_, H, C, T, scale, with_s0: make_problem(np.random.default_rng(seed_), H, C, T, scale=scale, s0=with_s0),
    seed_=st.integers(0, 2**32 - 1),
    H=st.integers(1, 5),
    C=st.integers(2, 6),
    T=st.integers(1, 10),
    scale=st.sampled_from([0.5, 2.0]),
    with_s0=st.booleans(),
)


@settings(deadline=None, derandomize=True)  # examples: the profile (conftest.py)
@given(p=problems, K=st.one_of(st.none(), st.integers(0, 10)), data=st.data())
def test_compare_finds_the_mistake_and_only_mistakes_that_fit(p, K, data):
    """Any problem, any mistake: named whenever it changes the gradients, and every name given fits."""
    made = data.draw(st.sampled_from(mistakes.applicable(K)))
    sub = submission(p, K, made)
    report = checks.compare(arrays_of(p, K), sub)
    if report["passed"]:
        assert report["diagnosis"] == []
        return
    names = diagnosed(report)
    assert made in names
    for name in names:  # each name's own oracle gradients are the submission's, to the tolerance
        other = submission(p, K, name)
        if name == "already_clipped" and made != name:
            # The oracle clips at half the largest entry; the diagnosis names any level c that fits, and
            # c is then the submission's largest entry: a mistake whose gradients happen to be the right
            # ones clipped there fits too (found with the numpy engine's roundings, H = 1, C = 2).
            right, c = submission(p, K), max(float(np.abs(sub[k]).max()) for k in NAMES)
            other = {k: np.clip(right[k], -c, c) for k in NAMES}
        for k in NAMES:
            assert np.abs(other[k] - sub[k]).max() <= 1e-6 * max(np.abs(other[k]).max(), 1e-8), (made, name, k)


def test_compare_is_vectorised_T_3000(rng):
    """The seed's loop for 8 mistakes at T = 3000 (full) takes minutes; the vectorised recomputation well
    under a second on an idle core. Bound 10 s, for a busy shared machine."""
    p = make_problem(rng, H=16, C=20, T=3000, s0=True)
    right = dict(zip(NAMES, (g for g in _engine_grads(p)), strict=True))
    wrong = {**right, "dLdW": right["dLdW"].T.copy()}
    start = time.perf_counter()
    report = checks.compare(arrays_of(p, None), wrong)
    assert time.perf_counter() - start < 10
    assert diagnosed(report) == ["dLdW_transposed"]


def test_compare_exact_matches_at_tolerance_zero(rng):
    """tolerance = 0: only exact equality passes or names a mistake (the comparisons are <=, not <).

    T = 1 and s0 = 0: both mistakes that fit give dLdU = 0 and dLdW = 0 exactly, and dLdV is
    outer(o_0 - onehot(y_0), s_0), one rounding per entry, as the recomputation does it (the
    engine's own bptt divides by the softmax's sum elsewhere, which differs in the last bit).
    """
    p = make_problem(rng, H=3, C=4, T=1)
    g = _engine_grads(p)
    report = checks.compare(arrays_of(p, None), dict(zip(NAMES, g, strict=True)), tolerance=0.0)
    assert report["passed"] and report["diagnosis"] == []
    wrong = {"dLdU": np.zeros_like(g[0]), "dLdV": _one_step_dLdV(p.U, p.V, p.W, p.x, p.y), "dLdW": np.zeros_like(g[2])}
    report = checks.compare(arrays_of(p, None), wrong, tolerance=0.0)
    assert not report["passed"]
    assert diagnosed(report) == ["missing_t0_term", "dLdU_next_token"]


def test_compare_passes_at_exactly_the_tolerance(rng):
    p = make_problem(rng, H=3, C=4, T=5)
    g = dict(zip(NAMES, _engine_grads(p), strict=True))
    off = {**g, "dLdW": g["dLdW"] + 1e-3}
    rel = float(np.abs(off["dLdW"] - g["dLdW"]).max()) / float(np.abs(g["dLdW"]).max())
    assert checks.compare(arrays_of(p, None), off, tolerance=rel)["passed"]
    below = float(np.nextafter(rel, 0))
    report = checks.compare(arrays_of(p, None), off, tolerance=below)
    assert not report["passed"] and report["parameters"]["dLdW"]["max_relative_error"] == rel
    assert [len(r["worst"]) for r in report["parameters"].values()] == [5, 5, 5]  # the default


def truncated(rng, K=1):
    p = make_problem(rng, H=4, C=6, T=10, scale=3.0)
    return p, dict(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y, bptt_truncate=K)


def test_gradient_check_defaults_are_the_documented_ones(rng):
    _, arrays = truncated(rng)
    arrays["U"] = rng.uniform(-1, 1, (4, 15))  # 60 entries: more than the default 50 samples
    arrays["V"] = rng.uniform(-1, 1, (15, 4))
    arrays["x"] = rng.integers(0, 15, 10)
    arrays["y"] = rng.integers(0, 15, 10)
    report = checks.gradient_check(arrays)
    assert report == checks.gradient_check(arrays, h=1e-5, tolerance=1e-6, samples=50, seed=0)
    assert report == checks.gradient_check(arrays)  # reproducible: the seed, not the clock
    assert report["U"]["checked"] == 50 and report["U"]["entries"] == 60
    assert report["W"]["checked"] == 16 == report["W"]["entries"]
    assert not report["W"]["passed"]  # truncated: about 1e-2 off, failing a 1e-6 tolerance
    assert report != checks.gradient_check(arrays, seed=1)


def test_gradient_check_samples_distinct_entries(rng, monkeypatch):
    """Every checked entry is perturbed exactly twice (+h, -h), and no entry is checked twice."""
    p, arrays = truncated(rng, K=None)
    original = {"U": p.U.copy(), "V": p.V.copy(), "W": p.W.copy()}
    seen: dict[str, list[int]] = {"U": [], "V": [], "W": []}
    real = checks.engine.loss

    def loss(U, V, W, *args, **kwargs):
        for name, a in zip("UVW", (U, V, W), strict=True):
            changed = np.flatnonzero(a != original[name])
            if len(changed):
                assert len(changed) == 1
                seen[name].append(int(changed[0]))
        return real(U, V, W, *args, **kwargs)

    monkeypatch.setattr(checks.engine, "loss", loss)
    report = checks.gradient_check(arrays, samples=20)
    for name in "UVW":
        picks = seen[name][::2]
        assert seen[name][1::2] == picks  # + h then - h on the same entry
        assert len(picks) == len(set(picks)) == report[name]["checked"] == min(20, original[name].size)
    assert all(r["passed"] for r in report.values())


def test_gradient_check_leaves_the_arrays_alone_and_converts_them(rng):
    """Read-only arrays work (the check perturbs its own float64 copies); integer weights are converted."""
    p, arrays = truncated(rng, K=None)
    for a in (p.U, p.V, p.W):
        a.setflags(write=False)
    before = [a.copy() for a in (p.U, p.V, p.W)]
    assert all(r["passed"] for r in checks.gradient_check(arrays, samples=10).values())
    for a, b in zip((p.U, p.V, p.W), before, strict=True):
        np.testing.assert_array_equal(a, b)
    ints = {**arrays, **{k: np.round(arrays[k] * 3).astype(np.int64) for k in "UVW"}}
    report = checks.gradient_check(ints, samples=10)
    assert all(r["passed"] for r in report.values()), report


def test_gradient_check_worst_entry_against_own_central_differences(rng):
    """Truncated K = 1: the report's worst W entry, its errors and values, from differences computed here."""
    p, arrays = truncated(rng)
    g = engine.bptt(**arrays)

    def loss() -> float:
        return seed.calculate_total_loss(p.U, p.V, p.W, p.x, p.y)

    W = p.W.copy()
    p.W = W
    numeric = numerical_gradient(loss, W)
    rel = np.abs(g.dLdW - numeric) / np.maximum(np.maximum(np.abs(g.dLdW), np.abs(numeric)), 1e-8)
    r = checks.gradient_check(arrays)["W"]
    k = np.unravel_index(int(np.argmax(rel)), W.shape)
    assert r["worst"]["index"] == [int(i) for i in k]
    assert r["worst"]["analytic"] == g.dLdW[k]
    assert r["worst"]["numeric"] == pytest.approx(numeric[k], abs=1e-8)
    assert r["max_relative_error"] == pytest.approx(rel.max(), rel=1e-6)
    assert r["max_absolute_error"] == pytest.approx(np.abs(g.dLdW - numeric).max(), rel=1e-6)
    # At exactly its own worst error the check passes; just below, it fails.
    tol = r["max_relative_error"]
    assert checks.gradient_check(arrays, tolerance=tol)["W"]["passed"]
    assert not checks.gradient_check(arrays, tolerance=float(np.nextafter(tol, 0)))["W"]["passed"]


def test_gradient_check_points_at_the_non_finite_entry(rng, monkeypatch):
    """A loss that is infinite only when W[2, 1] moves up: W fails there, with null numbers; U and V pass."""
    p, arrays = truncated(rng, K=None)
    real = checks.engine.loss
    W0 = p.W.copy()

    def loss(U, V, W, *args, **kwargs):
        return float("inf") if W[2, 1] > W0[2, 1] else real(U, V, W, *args, **kwargs)  # f(p + h) only: n = inf

    monkeypatch.setattr(checks.engine, "loss", loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inf - inf inside relative_error stays quiet
        report = checks.gradient_check(arrays)
    w = report["W"]
    assert w["worst"]["index"] == [2, 1] and w["worst"]["numeric"] is None
    assert w["max_relative_error"] is None and w["max_absolute_error"] is None and not w["passed"]
    assert report["U"]["passed"] and report["V"]["passed"]
    assert report["U"]["worst"]["numeric"] is not None


# What a learner reads, word for word, for T = 6 and K = 2 (K = None for truncated_instead_of_full).
EXPLANATIONS = {
    "mean_instead_of_sum": "Your gradients are the expected ones divided by T = 6: the gradient of the mean loss "
    "per token. The loss here is the sum over t (as in the tutorial's bptt); its gradient sums the contributions "
    "of all outputs.",
    "tanh_derivative_wrong_step": "Going back from step k to k-1, the error must be multiplied by tanh'(z_{k-1}) = "
    "1 - s_{k-1}^2, the derivative at the step you arrive at; yours uses 1 - s_k^2 (in the tutorial's loop: "
    "s[bptt_step-1], not s[bptt_step]).",
    "missing_t0_term": "Your loop back in time stops before step 0: the contributions at k = 0 (the first input, "
    "with s_{-1} = s0) are missing from dLdU and dLdW. Loop down to step 0 inclusive.",
    "output_error_double_counted": "You add the output error V^T delta_o at every earlier step as you go back, "
    "inside the loop over outputs t: each output's error is then counted once per later output. In the per-output "
    "loop the output error enters once, at its own step; only the one-pass form adds V^T delta_o[k] at each step k "
    "(docs/derivation.md, section 7).",
    "truncation_off_by_one_short": "Your gradients are those of bptt_truncate = 1: your loop goes back one step "
    "less than asked (K = 2). The tutorial's inner loop runs bptt_step from t down to max(0, t - K) inclusive: "
    "K + 1 steps.",
    "truncation_off_by_one_long": "Your gradients are those of bptt_truncate = 3: your loop goes back one step "
    "more than asked (K = 2). The tutorial's inner loop runs bptt_step from t down to max(0, t - K) inclusive: "
    "K + 1 steps.",
    "truncated_instead_of_full": "Your gradients are those of the tutorial's truncated BPTT (bptt_truncate = 4), "
    "not the full gradient asked for (bptt_truncate = null).",
    "w_not_transposed": "Going back one step, the error is multiplied by W^T (delta_{k-1} = W^T delta_k * "
    "(1 - s_{k-1}^2)); yours uses W. In numpy: W.T.dot(delta_t), not W.dot(delta_t).",
    "dLdW_transposed": "Your dLdW is the transpose of the expected one: the outer product goes the other way round. "
    "dLdW[i, j] is the derivative with respect to W[i, j], which carries s_{k-1}[j] into z_k[i]: "
    "np.outer(delta_t, s[bptt_step - 1]), delta first.",
    "no_recurrence": "Your dLdU and dLdW hold only each output's direct path, through its own step: the error is "
    "never carried back through W to earlier steps. Each output's delta must go back step by step "
    "(delta_{k-1} = W^T delta_k * (1 - s_{k-1}^2)), adding to dLdU and dLdW at every step.",
    "outer_with_current_state": "Your dLdW uses the outer product of the delta at step k with s_k; "
    "z_k = U x_k + W s_{k-1} takes the previous state, so it is np.outer(delta_t, s[bptt_step - 1]).",
    "dLdU_next_token": "Your dLdU adds the delta at step k to the column of the next token, x_{k+1}; it belongs in "
    "the column of the token read at that step: dLdU[:, x[bptt_step]] += delta_t.",
}


def test_compare_explanations_word_for_word(rng):
    p = make_problem(rng, H=3, C=4, T=6, scale=2.0)
    got = {}
    for K in (2, None):
        for made in mistakes.applicable(K):
            (d,) = checks.compare(arrays_of(p, K), submission(p, K, made))["diagnosis"]
            got[d["mistake"]] = d["explanation"]
    clipped = got.pop("already_clipped")  # names the value: half the largest entry of the oracle's gradients
    c = 0.5 * max(np.abs(g).max() for g in seed.bptt(p.U, p.V, p.W, p.x, p.y, 6))
    assert clipped.startswith(f"Your gradients are the expected ones clipped to [-{c:.6g}, {c:.6g}]: check")
    assert got == EXPLANATIONS


@pytest.mark.parametrize("T", [1, 2, 3])
@pytest.mark.parametrize("K", [None, 0, 1])
def test_compare_short_sequences_every_mistake(rng, T, K):
    """T = 1..3, where mistakes coincide with each other or with the right answer: each is named
    whenever it changes the gradients, and every name given fits (checked with the oracle)."""
    p = make_problem(rng, H=3, C=4, T=T, scale=2.0, s0=True)
    for made in mistakes.applicable(K):
        sub = submission(p, K, made)
        report = checks.compare(arrays_of(p, K), sub)
        if report["passed"]:
            assert report["diagnosis"] == []
            continue
        names = diagnosed(report)
        assert made in names, (T, K, made, names)
        for name in names:
            other = submission(p, K, name)
            for k in NAMES:
                assert np.abs(other[k] - sub[k]).max() <= 1e-6 * max(np.abs(other[k]).max(), 1e-8)


def test_compare_float32_weights_recomputes_in_float64(rng):
    """Mistakes are recomputed in float64 whatever the weights' dtype: exact at tolerance 0 (T = 1, s0 = 0)."""
    p = make_problem(rng, H=3, C=4, T=1)
    g64 = engine.bptt(p.U, p.V, p.W, p.x, p.y)
    arrays = {**arrays_of(p, None), **{k: getattr(p, k).astype(np.float32) for k in "UVW"}}
    arrays32_64 = {k: arrays[k].astype(np.float64) for k in "UVW"}
    dLdV = _one_step_dLdV(arrays32_64["U"], arrays32_64["V"], arrays32_64["W"], p.x, p.y)
    assert np.abs(dLdV - g64.dLdV).max() > 1e-9  # the float32 weights are other numbers
    wrong = {"dLdU": np.zeros((3, 4)), "dLdV": dLdV, "dLdW": np.zeros((3, 3))}
    assert diagnosed(checks.compare(arrays, wrong, tolerance=0.0)) == ["missing_t0_term", "dLdU_next_token"]


def test_relative_error_is_float64_and_symmetric():
    a = np.array([1.0, -2.0, 0.0], dtype=np.float32)
    n = np.array([1.5, 2.0, 1e-9], dtype=np.float32)
    rel = checks.relative_error(a, n)
    assert rel.dtype == np.float64
    np.testing.assert_allclose(rel, [0.5 / 1.5, 2.0, 1e-9 / 1e-8], rtol=1e-6)
    np.testing.assert_array_equal(rel, checks.relative_error(n, a))


def test_gradient_check_default_tolerance_is_1e_6(rng):
    """h = 0.01: central differences off by about h^2 f''' / 6 (1e-4 to 1e-2 relative here); the default
    tolerance 1e-6 fails them, 0.1 passes them."""
    _, arrays = truncated(rng, K=None)
    report = checks.gradient_check(arrays, h=0.01)
    assert 1e-6 < report["W"]["max_relative_error"] < 0.1
    assert not report["W"]["passed"]
    assert checks.gradient_check(arrays, h=0.01, tolerance=0.1)["W"]["passed"]


def test_gradient_check_draws_with_numpy_choice_in_parameter_order(rng, monkeypatch):
    """The sample: parameters in order U, V, W, b, c, s0; one with at most ``samples`` entries is checked
    whole without drawing; the others check their ``(samples + 1) // 2`` largest |gradient| entries, then
    draw the rest with ``default_rng(seed).choice(others, samples // 2, replace=False)``.

    H = 5, C = 3, samples = 15: U and V (15 entries) are whole, W (25) draws first."""
    rng2 = np.random.default_rng(3)
    p = make_problem(rng2, H=5, C=3, T=6)
    arrays = dict(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y)
    W0 = p.W.copy()
    seen: list[int] = []
    real = checks.engine.loss

    def loss(U, V, W, *args, **kwargs):
        changed = np.flatnonzero(W != W0)
        seen.extend(int(i) for i in changed)
        return real(U, V, W, *args, **kwargs)

    monkeypatch.setattr(checks.engine, "loss", loss)
    report = checks.gradient_check(arrays, samples=15, seed=11)
    assert report["U"]["checked"] == report["V"]["checked"] == 15 and report["W"]["checked"] == 15
    dLdW = seed.bptt(p.U, p.V, p.W, p.x, p.y, 6)[2].ravel()
    order = np.argsort(-np.abs(dLdW), kind="stable")
    top, others = order[:8], order[8:]
    expected = [*top, *np.random.default_rng(11).choice(others, 7, replace=False)]
    assert seen[::2] == [int(i) for i in expected]
    assert report["W"]["h"] == 1e-5


@pytest.mark.parametrize(
    ("T", "K", "passes", "lags"),
    [
        # Full: four one-pass sweeps (right, tanh step, double counting, W not transposed);
        # truncated_instead_of_full is four lags, no_recurrence none.
        (20, None, 4, 4),
        (20, 19, 5, 18),  # K = T - 1 is full BPTT, and so is K + 1; K - 1 is a loop of 18 lags
        # Truncated K: one loop to K + 1 gives K - 1, K, K + 1; three more of K lags; no_recurrence none.
        (20, 3, 0, 4 + 3 * 3),
        (20, 1, 0, 2 + 3 * 1),
        (20, 18, 0, 19 + 3 * 18),  # K + 1 = T - 1 (full) comes from the same loop
    ],
)
def test_compare_cost_is_a_few_sweeps(rng, monkeypatch, T, K, passes, lags):
    """The diagnosis's work, counted: one-pass sweeps over T steps and lags of the truncated loops."""
    p = make_problem(rng, H=3, C=4, T=T, scale=2.0)
    counted = {"passes": 0, "lags": 0}
    real_sweep, real_lags = checks._sweep, checks._lag_sums

    def sweep(W, first, factor, k, **kw):
        if k is None or k >= len(first) - 1:
            counted["passes"] += 1
        return real_sweep(W, first, factor, k, **kw)

    def lag_sums(W, first, factor, Ks, **kw):
        counted["lags"] += max(Ks)
        return real_lags(W, first, factor, Ks, **kw)

    monkeypatch.setattr(checks, "_sweep", sweep)
    monkeypatch.setattr(checks, "_lag_sums", lag_sums)
    report = checks.compare(arrays_of(p, K), submission(p, K, "dLdW_transposed"))
    assert diagnosed(report) == ["dLdW_transposed"]
    assert counted == {"passes": passes, "lags": lags}


def test_compare_already_clipped_whole_explanation_and_its_bounds(rng):
    """The already_clipped diagnosis, word for word, at any scale of the gradients; none for an all-zero
    submission (nothing is clipped at 0) or for gradients whose largest entry was not clipped."""
    p = make_problem(rng, H=3, C=4, T=6, scale=2.0)
    right = submission(p, None)
    big = max(float(np.abs(g).max()) for g in right.values())
    for scale in (1.0, 1e3):  # the check is relative: gradients of 1e3 as well as of 1
        q = make_problem(np.random.default_rng(7), H=3, C=4, T=6, scale=2.0)
        q.V = q.V * scale
        expected = submission(q, None)
        c = 0.5 * max(float(np.abs(g).max()) for g in expected.values())
        clipped = {k: np.clip(v, -c, c) * (1 + 1e-8) for k, v in expected.items()}  # within 1e-6 relative
        for tolerance in (1e-6, 1e-7):
            (d,) = checks.compare(arrays_of(q, None), clipped, tolerance=tolerance)["diagnosis"]
            assert d == {
                "mistake": "already_clipped",
                "explanation": f"Your gradients are the expected ones clipped to [-{c:.6g}, {c:.6g}]: check the "
                "gradients before clipping them (clipping is a step of the update, after the gradient; this service "
                "clips only when asked with `clip`).",
            }
    zero = {k: np.zeros_like(v) for k, v in right.items()}
    assert "already_clipped" not in diagnosed(checks.compare(arrays_of(p, None), zero))
    unclipped = {k: v.copy() for k, v in right.items()}
    unclipped["dLdV"][np.unravel_index(np.argmin(np.abs(unclipped["dLdV"])), unclipped["dLdV"].shape)] += big / 10
    assert "already_clipped" not in diagnosed(checks.compare(arrays_of(p, None), unclipped))


def test_compare_disagreement_lists_the_wrong_columns_worst_first(rng):
    """Two of dLdU's token columns off (by 0.5 and 0.2), the rest right: the disagreement names those two,
    worst first, and no column that is right."""
    p = make_problem(rng, H=4, C=20, T=3)  # 17 tokens or more never read: their columns are 0 in both, exactly
    p.x[:] = [3, 7, 11]
    sub = submission(p, None)
    first, second = 3, 7
    sub["dLdU"][:, first] += 0.2
    sub["dLdU"][:, second] += 0.5
    report = checks.compare(arrays_of(p, None), sub)
    assert report["diagnosis"] == []
    columns = report["disagreement"]["dLdU_columns"]
    assert [c["token"] for c in columns[:2]] == [second, first]
    assert [c["max_absolute_error"] for c in columns[:2]] == pytest.approx([0.5, 0.2])
    rest = [c["max_absolute_error"] for c in columns[2:]]  # read columns off by the sums' last bits, if any
    assert all(0 < e < 1e-12 for e in rest) and rest == sorted(rest, reverse=True)
    sub["dLdU"] += np.linspace(0.1, 0.3, 20)  # every column off: the five worst are listed
    columns = checks.compare(arrays_of(p, None), sub)["disagreement"]["dLdU_columns"]
    assert [c["token"] for c in columns] == [7, 3, 19, 18, 17]  # 0.67, 0.33, 0.30, 0.29, 0.28
