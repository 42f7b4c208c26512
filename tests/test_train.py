"""examples/train.py: the tutorial's training job, through the service."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from service import engine
from service.client import Client

pytestmark = pytest.mark.slow


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train.py"
spec = importlib.util.spec_from_file_location("train_example", EXAMPLE)
train = importlib.util.module_from_spec(spec)
sys.modules["train_example"] = train  # dataclasses look their module up
spec.loader.exec_module(train)


@pytest.fixture(scope="module")
def corpus():
    return train.load_corpus(train.HERE / "data" / "genesis.txt", vocabulary=300, max_sentences=120)


def test_corpus_is_built_as_the_tutorial_builds_it(corpus):
    words = corpus.words
    assert corpus.C == 300 and words[-3:] == [train.UNKNOWN, train.START, train.END]
    for x, y in zip(corpus.xs, corpus.ys, strict=False):
        assert x[0] == words.index(train.START) and y[-1] == words.index(train.END)
        np.testing.assert_array_equal(x[1:], y[:-1])  # x = sentence[:-1], y = sentence[1:]
    assert any(words.index(train.UNKNOWN) in x for x in corpus.xs)  # the cap bites


def test_initial_loss_is_ln_C_within_one_percent(corpus):
    """The tutorial's check: small random weights predict nearly uniformly, so loss/token ~ ln C."""
    for seed in range(3):
        model = train.Model.initial(corpus.C, 32, seed)
        loss = train.mean_loss(engine.bptt_batch, model, corpus, batch=64)
        assert abs(loss - math.log(corpus.C)) < 0.01 * math.log(corpus.C), (loss, math.log(corpus.C))


def test_training_lowers_the_loss(corpus):
    model = train.Model.initial(corpus.C, 32, 0)
    history = train.train(engine.bptt_batch, model, corpus, epochs=4, batch=8, learning_rate=0.1)
    losses = [loss for _, loss in history.evaluations]
    assert losses[-1] < losses[0] - 0.5, losses  # nats per token


def test_schedule_halves_the_learning_rate_when_the_loss_rises(corpus):
    model = train.Model.initial(corpus.C, 32, 0)
    history = train.train(engine.bptt_batch, model, corpus, epochs=3, batch=16, learning_rate=5.0)
    losses = [loss for _, loss in history.evaluations]
    rises = [b > a for a, b in itertools.pairwise(losses)]
    assert any(rises), losses  # a learning rate of 5 overshoots...
    expected = 5.0 * 0.5 ** np.cumsum(rises)
    np.testing.assert_allclose(history.learning_rates, expected)  # ...and is halved each time


def test_training_through_http_equals_training_in_process(corpus, live_server):
    """The same job, gradients from the service (base64, float64) or from the engine: equal weights."""
    local = train.Model.initial(corpus.C, 24, 7)
    remote = train.Model.initial(corpus.C, 24, 7)
    kwargs = dict(epochs=2, batch=16, learning_rate=0.05, bptt_truncate=4, seed=3)
    train.train(engine.bptt_batch, local, corpus, **kwargs)
    with Client(live_server.url) as client:
        train.train(client.bptt_batch, remote, corpus, **kwargs)
    for name in ("U", "V", "W"):
        a, b = getattr(local, name), getattr(remote, name)
        assert np.abs(a - b).max() <= 1e-12 * np.abs(a).max(), name


def test_main_runs_end_to_end(live_server, tmp_path, capsys):
    png = tmp_path / "loss.png"
    train.main(
        [
            "--url",
            live_server.url,
            "--vocabulary",
            "200",
            "--hidden",
            "16",
            "--sentences",
            "60",
            "--epochs",
            "2",
            "--plot",
            str(png),
        ]
    )
    out = capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = out.strip().splitlines()[-1]
    assert last.startswith("loss per token: before ") and "after" in last
    before, after = (float(w.rstrip(",")) for w in (last.split()[4], last.split()[-6]))
    assert after < before
