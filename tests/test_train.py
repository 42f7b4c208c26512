"""examples/train.py: the tutorial's training job, through the service (and examples/plot_curves.py)."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from service import engine, gated
from service.client import Client

pytestmark = pytest.mark.slow


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"{name}_example"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


train = _load("train")
plot_curves = _load("plot_curves")


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


def test_training_with_shards_equals_training_in_one_request(corpus, live_server):
    """--shards: each batch over three concurrent requests, summed by the client: the same weights."""
    one = train.Model.initial(corpus.C, 16, 5)
    sharded = train.Model.initial(corpus.C, 16, 5)
    kwargs = dict(epochs=1, batch=12, learning_rate=0.05, bptt_truncate=4, seed=4)
    train.train(engine.bptt_batch, one, corpus, **kwargs)
    with Client(live_server.url) as client:
        train.train(functools.partial(client.bptt_batch, shards=3), sharded, corpus, **kwargs)
    for name in ("U", "V", "W"):
        a, b = getattr(one, name), getattr(sharded, name)
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
            "--shards",
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


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_model_step_agrees_with_the_engine(corpus, cell):
    """The example's restated forward (for sampling) gives the loss the service computes."""
    model = train.Model.initial(corpus.C, 8, 1, cell=cell, forget_bias=1.0 if cell == "lstm" else 0.0)
    model.U *= 30.0  # large enough that the cell's nonlinearities matter
    if model.b is not None:
        model.b += np.random.default_rng(2).normal(size=model.b.shape)
    x, y = corpus.xs[3], corpus.ys[3]
    state, loss = (np.zeros(8), np.zeros(8)), 0.0
    for x_t, y_t in zip(x, y, strict=True):
        state = model.step(state, int(x_t))
        loss -= math.log(model.probabilities(state[0])[y_t])
    if cell == "rnn":
        expected = engine.bptt(model.U, model.V, model.W, x, y).loss
    else:
        expected = gated.loss(cell, model.U, model.V, model.W, x, y, b=model.b)
    assert loss == pytest.approx(expected, rel=1e-12)


def test_model_initial_gated_shapes_and_forget_bias():
    lstm = train.Model.initial(50, 6, 0, cell="lstm", forget_bias=1.0)
    assert lstm.U.shape == (4, 6, 50) and lstm.W.shape == (4, 6, 6) and lstm.V.shape == (50, 6)
    np.testing.assert_array_equal(lstm.b, np.repeat([[0.0], [1.0], [0.0], [0.0]], 6, axis=1))  # i, f, g, o
    assert np.abs(lstm.U).max() <= 1 / math.sqrt(50) and np.abs(lstm.W).max() <= 1 / math.sqrt(6)
    assert train.Model.initial(50, 6, 0, cell="gru").b.shape == (3, 6)
    with pytest.raises(ValueError, match="forget_bias is the LSTM's"):
        train.Model.initial(50, 6, 0, cell="gru", forget_bias=1.0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_main_trains_a_gated_cell_end_to_end(live_server, tmp_path, capsys, cell):
    history = tmp_path / f"{cell}.json"
    argv = ["--url", live_server.url, "--cell", cell, "--vocabulary", "200", "--hidden", "16", "--sentences", "60"]
    argv += ["--epochs", "1", "--batch", "8", "--plot", str(tmp_path / "loss.png"), "--history", str(history)]
    train.main(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("loss per token: before ")
    record = json.loads(history.read_text())
    assert record["settings"]["cell"] == cell and record["label"].startswith(cell.upper())
    (_, before), (epoch, after) = record["evaluations"]
    assert epoch == 1 and after < before


def test_plot_curves_draws_the_runs_and_tabulates_them(tmp_path, capsys):
    runs = []
    for label, losses in [("RNN", [5.3, 5.0, 4.8]), ("GRU", [5.3, 4.9, 4.7])]:
        path = tmp_path / f"{label}.json"
        settings = {"text": "data/genesis.txt", "vocabulary": 200, "hidden": 16, "sentences": 60, "bptt_truncate": 4}
        record = {"label": label, "settings": settings, "seconds": 3.0, "evaluations": list(enumerate(losses))}
        path.write_text(json.dumps(record))
        runs.append(str(path))
    png = tmp_path / "cells.png"
    plot_curves.main([str(png), *runs])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "| GRU | 5.3000 | 4.7000 | 4.7000 | 3 |" in out
    assert plot_curves._title(record["settings"]) == "genesis: C = 200, H = 16, 60 sentences, bptt_truncate 4"
