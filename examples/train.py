"""Train the tutorial's RNN language model, or a GRU or an LSTM, through bptt-service.

The job of Denny Britz's tutorial (RNNNumpy + SGD), with every gradient
computed by the service: words of the Book of Genesis (public domain, shipped
in examples/data), a vocabulary cap with an unknown token, sentence start and
end tokens, x = sentence[:-1] and y = sentence[1:], the tutorial's
initialisation and its schedule (evaluate every N epochs, halve the learning
rate when the loss rises). Batches of sentences go to POST /bptt/batch.

    python examples/train.py --quick                # about 45 s on two cores, starts its own server
    python examples/train.py --quick --cell lstm --forget-bias 1
    python examples/train.py --url http://127.0.0.1:8000 --epochs 20

--cell gru or lstm swaps the tanh cell for a gated one (the tutorial's part 4),
with the same loop: U (G, H, C) and W (G, H, H) stacked by gate in the service's
order (GRU r, z, n; LSTM i, f, g, o), initialised as the tutorial initialises
U and W, and a gate bias b (G, H), zeros as in the tutorial's GRU, trained too.

It ends with a loss-curve PNG (examples/output/loss.png unless --plot says
otherwise), a few sentences sampled from the model, and a line with the loss
before and after training; --history also writes the curve as JSON, for
examples/plot_curves.py to draw several on one plot.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service import engine, gated
from service.client import Client
from service.local import LocalServer

HERE = Path(__file__).resolve().parent
UNKNOWN, START, END = "UNKNOWN_TOKEN", "SENTENCE_START", "SENTENCE_END"

Gradients = Callable[..., engine.BatchGradients]  # (U, V, W, xs, ys, bptt_truncate=, cell=, b=) -> BatchGradients
CELLS = ("rnn", "gru", "lstm")


# -- data ---------------------------------------------------------------------------


@dataclass
class Corpus:
    """Sentences as token ids, and the vocabulary (ids 0..C-1)."""

    words: list[str]
    xs: list[np.ndarray]
    ys: list[np.ndarray]

    @property
    def C(self) -> int:
        return len(self.words)


def load_corpus(path: Path, *, vocabulary: int, max_sentences: int | None = None, max_words: int = 40) -> Corpus:
    """One sentence a line ('#' lines skipped), lower-cased words and punctuation.

    The ``vocabulary - 3`` commonest words keep their own id; the others become
    UNKNOWN_TOKEN. Sentences longer than ``max_words`` are left out.
    """
    sentences = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        words = re.findall(r"[a-z']+|[.,;:!?]", line.lower())
        if 2 <= len(words) <= max_words:
            sentences.append(words)
        if max_sentences and len(sentences) >= max_sentences:
            break
    counts = collections.Counter(w for s in sentences for w in s)
    words = [w for w, _ in counts.most_common(vocabulary - 3)] + [UNKNOWN, START, END]
    index = {w: i for i, w in enumerate(words)}
    xs, ys = [], []
    for s in sentences:
        ids = np.array([index[START]] + [index.get(w, index[UNKNOWN]) for w in s] + [index[END]])
        xs.append(ids[:-1])
        ys.append(ids[1:])
    return Corpus(words=words, xs=xs, ys=ys)


# -- the model and the tutorial's SGD schedule ----------------------------------


@dataclass
class Model:
    """The weights. The tutorial's RNN (``cell="rnn"``): U (H, C), V (C, H), W (H, H).

    A gated cell: U (G, H, C), V (C, H), W (G, H, H) and the gate bias b (G, H),
    stacked by gate in the service's order (GRU r, z, n; LSTM i, f, g, o).
    """

    U: np.ndarray
    V: np.ndarray
    W: np.ndarray
    cell: str = "rnn"
    b: np.ndarray | None = None

    @classmethod
    def initial(cls, C: int, H: int, seed: int, *, cell: str = "rnn", forget_bias: float = 0.0) -> Model:
        """The tutorial's initialisation: uniform in +-1/sqrt(n) for n incoming connections.

        Gated cells: every gate's U and W likewise, b zero (the tutorial's GRU)
        except the LSTM's forget gate, ``b_f = forget_bias``.
        """
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
        if forget_bias and cell != "lstm":
            raise ValueError(f"forget_bias is the LSTM's forget-gate bias: cell {cell!r} has none")
        rng = np.random.default_rng(seed)
        stack = () if cell == "rnn" else (len(gated.GATES[cell]),)  # (G,) for a gated cell
        model = cls(
            U=rng.uniform(-np.sqrt(1.0 / C), np.sqrt(1.0 / C), (*stack, H, C)),
            V=rng.uniform(-np.sqrt(1.0 / H), np.sqrt(1.0 / H), (C, H)),
            W=rng.uniform(-np.sqrt(1.0 / H), np.sqrt(1.0 / H), (*stack, H, H)),
            cell=cell,
        )
        if stack:
            model.b = np.zeros((*stack, H))
            if cell == "lstm":
                model.b[1] = forget_bias  # gate f
        return model

    def parameters(self) -> dict[str, np.ndarray]:
        """What SGD updates, by the name of its gradient's suffix: U, V, W (and b)."""
        params = {"U": self.U, "V": self.V, "W": self.W}
        if self.b is not None:
            params["b"] = self.b
        return params

    def options(self) -> dict[str, object]:
        """The request's cell options: none for the tutorial's RNN."""
        return {} if self.cell == "rnn" else {"cell": self.cell, "b": self.b}

    def step(self, state: tuple[np.ndarray, np.ndarray], x: int) -> tuple[np.ndarray, np.ndarray]:
        """One step of the forward pass, (s_{t-1}, c_{t-1}) -> (s_t, c_t), c unused but by the LSTM.

        The service computes losses and gradients, not samples, so the cell is
        restated here (docs/derivation.md, sections 1 and 10; tests/test_train.py
        checks it against the engine's loss).
        """
        s, c = state
        if self.cell == "rnn":
            return np.tanh(self.U[:, x] + self.W @ s), c
        a = self.U[:, :, x] + (0.0 if self.b is None else self.b)  # (G, H), the input side of every gate
        if self.cell == "gru":
            r = _sigmoid(a[0] + self.W[0] @ s)
            z = _sigmoid(a[1] + self.W[1] @ s)
            n = np.tanh(a[2] + self.W[2] @ (r * s))
            return (1.0 - z) * n + z * s, c
        a = a + self.W @ s  # (G, H, H) x (H,) -> (G, H)
        i, f, g, o = _sigmoid(a[0]), _sigmoid(a[1]), np.tanh(a[2]), _sigmoid(a[3])
        c = f * c + i * g
        return o * np.tanh(c), c

    def probabilities(self, s: np.ndarray) -> np.ndarray:
        """o = softmax(V s), the next token's distribution."""
        a = self.V @ s
        e = np.exp(a - a.max())
        return e / e.sum()

    def sample(self, corpus: Corpus, rng: np.random.Generator, max_words: int = 25) -> str:
        """A sentence drawn word by word from the model's distribution (the tutorial's generate_sentence)."""
        index = {w: i for i, w in enumerate(corpus.words)}
        H = self.V.shape[1]
        ids = [index[START]]
        state = self.step((np.zeros(H), np.zeros(H)), ids[0])
        while len(ids) <= max_words:
            p = self.probabilities(state[0])
            p[index[UNKNOWN]] = 0.0  # as the tutorial does: never print the unknown token
            nxt = int(rng.choice(len(p), p=p / p.sum()))
            if nxt == index[END]:
                break
            ids.append(nxt)
            state = self.step(state, nxt)
        text = " ".join(corpus.words[i] for i in ids[1:])
        return re.sub(r" ([.,;:!?])", r"\1", text)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


@dataclass
class History:
    """Mean loss per token at each evaluation, and what the schedule did."""

    evaluations: list[tuple[int, float]] = field(default_factory=list)  # (epoch, loss)
    learning_rates: list[float] = field(default_factory=list)


def mean_loss(gradients: Gradients, model: Model, corpus: Corpus, batch: int) -> float:
    """Loss per token over the corpus (the tutorial's calculate_loss), from the service's losses."""
    total, tokens = 0.0, 0
    for xs, ys in batches(corpus, batch, rng=None):
        g = gradients(model.U, model.V, model.W, xs, ys, **model.options())
        total += g.loss
        tokens += g.tokens
    return total / tokens


def batches(corpus: Corpus, size: int, rng: np.random.Generator | None) -> Iterator[tuple[list, list]]:
    order = np.arange(len(corpus.xs)) if rng is None else rng.permutation(len(corpus.xs))
    for i in range(0, len(order), size):
        pick = order[i : i + size]
        yield [corpus.xs[j] for j in pick], [corpus.ys[j] for j in pick]


def train(
    gradients: Gradients,
    model: Model,
    corpus: Corpus,
    *,
    epochs: int,
    batch: int,
    learning_rate: float,
    evaluate_every: int = 1,
    bptt_truncate: int | None = 4,
    seed: int = 0,
    progress: bool = False,
) -> History:
    """SGD on the summed gradients of each batch, with the tutorial's schedule.

    Each batch's update is ``p -= learning_rate * dL/dp / B``: L is summed over
    the batch's B sentences, so dL/dp / B is the mean of the per-sentence
    gradients, each of the size the tutorial steps with (it takes one step per
    sentence, of the sentence's summed loss).
    Every ``evaluate_every`` epochs the mean loss is measured, and the learning
    rate halves when it rose since the last evaluation.
    """
    rng = np.random.default_rng(seed)
    history = History()
    history.evaluations.append((0, mean_loss(gradients, model, corpus, batch)))
    bar = _progress(total=epochs * len(corpus.xs), enabled=progress)
    start, seen = time.monotonic(), 0
    for epoch in range(1, epochs + 1):
        for xs, ys in batches(corpus, batch, rng):
            g = gradients(model.U, model.V, model.W, xs, ys, bptt_truncate=bptt_truncate, **model.options())
            step = learning_rate / len(xs)
            for name, p in model.parameters().items():
                p -= step * getattr(g, f"dLd{name}")
            seen += len(xs)
            bar.update(len(xs))
            bar.set_postfix(
                loss=f"{g.mean_loss:.3f}", seq_s=f"{seen / (time.monotonic() - start):.0f}", lr=learning_rate
            )
        if epoch % evaluate_every == 0:
            loss = mean_loss(gradients, model, corpus, batch)
            if loss > history.evaluations[-1][1]:
                learning_rate *= 0.5
                bar.write(f"epoch {epoch}: loss {loss:.4f} rose; learning rate halved to {learning_rate:g}")
            else:
                bar.write(f"epoch {epoch}: loss {loss:.4f} per token")
            history.evaluations.append((epoch, loss))
        history.learning_rates.append(learning_rate)
    bar.close()
    return history


def _progress(total: int, enabled: bool):
    if enabled:
        from tqdm import tqdm

        return tqdm(total=total, unit="seq", mininterval=1.0)

    class Quiet:
        def update(self, n: int) -> None: ...
        def set_postfix(self, **kw: object) -> None: ...
        def write(self, text: str) -> None: ...
        def close(self) -> None: ...

    return Quiet()


# -- running -------------------------------------------------------------------------


@contextlib.contextmanager
def service_at(url: str | None) -> Iterator[str]:
    """The given URL, or a service started on a free loopback port for the duration."""
    if url:
        yield url
        return
    with LocalServer(args=["--log-level", "warning"], output=None) as server:
        yield server.url


def plot(history: History, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs, losses = zip(*history.evaluations, strict=False)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, losses, "o-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per token (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def truncation(text: str) -> int | None:
    """--bptt-truncate: an integer K >= 0, or "full" (None: full BPTT, null over HTTP)."""
    if text == "full":
        return None
    try:
        K = int(text)
    except ValueError:
        K = -1
    if K < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 or 'full', got {text!r}")
    return K


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
    parser.add_argument("--url", help="a running service; by default one is started on a free loopback port")
    parser.add_argument("--api-key", help="if the service asks for one")
    parser.add_argument(
        "--text", type=Path, default=HERE / "data" / "genesis.txt", help="the training text, one sentence a line"
    )
    parser.add_argument("--vocabulary", type=int, default=2000, help="C, unknown and sentence tokens included")
    parser.add_argument("--hidden", type=int, default=64, help="H")
    parser.add_argument("--cell", choices=CELLS, default="rnn", help="the tutorial's tanh cell, a GRU or an LSTM")
    parser.add_argument(
        "--forget-bias",
        type=float,
        default=0.0,
        help="LSTM: the forget gate's initial bias (PyTorch's default 0; 1 in Jozefowicz et al. 2015)",
    )
    parser.add_argument("--sentences", type=int, default=None, help="use only the first N sentences")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the sentences")
    parser.add_argument("--batch", type=int, default=16, help="sentences per /bptt/batch request")
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="spread each batch over this many concurrent requests (one connection each: over the replicas "
        "behind a load balancer, or the workers of one server); the sums are the same",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=0.05,
        help="step on the mean per-sentence gradient (the tutorial's 0.005 is for single sentences)",
    )
    parser.add_argument("--evaluate-every", type=int, default=1, help="epochs between evaluations")
    parser.add_argument(
        "--bptt-truncate", type=truncation, default=4, help="K, the tutorial's truncation, or 'full' for full BPTT"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights, the order and the samples")
    parser.add_argument("--plot", type=Path, default=HERE / "output" / "loss.png", help="where the loss curve goes")
    parser.add_argument("--history", type=Path, help="also write the curve and the settings here, as JSON")
    parser.add_argument(
        "--quick", action="store_true", help="C = 1000, H = 48, 1000 sentences, 12 epochs: about 45 s on two cores"
    )
    args = parser.parse_args(argv)
    if args.forget_bias and args.cell != "lstm":
        parser.error(f"--forget-bias is the LSTM's forget-gate bias: --cell {args.cell} has none")
    if args.quick:
        args.vocabulary, args.hidden, args.sentences, args.epochs = 1000, 48, 1000, 12
    truncate = args.bptt_truncate

    corpus = load_corpus(args.text, vocabulary=args.vocabulary, max_sentences=args.sentences)
    tokens = sum(len(x) for x in corpus.xs)
    print(f"{len(corpus.xs)} sentences, {tokens} tokens, C = {corpus.C} words, H = {args.hidden}, cell {args.cell}")
    model = Model.initial(corpus.C, args.hidden, args.seed, cell=args.cell, forget_bias=args.forget_bias)
    start = time.monotonic()
    if args.shards < 1:
        parser.error(f"--shards must be an integer >= 1, got {args.shards}")
    with service_at(args.url) as url, Client(url, api_key=args.api_key) as client:
        history = train(
            functools.partial(client.bptt_batch, shards=args.shards),
            model,
            corpus,
            epochs=args.epochs,
            batch=args.batch,
            learning_rate=args.learning_rate,
            evaluate_every=args.evaluate_every,
            bptt_truncate=truncate,
            seed=args.seed,
            progress=True,
        )
    seconds = time.monotonic() - start
    before, after = history.evaluations[0][1], history.evaluations[-1][1]
    label = args.cell.upper() + (f", forget bias {args.forget_bias:g}" if args.cell == "lstm" else "")
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(history, args.plot, f"{args.text.stem}: {label}, C = {corpus.C}, H = {args.hidden}")
    print(f"wrote {args.plot} ({args.epochs} epochs in {seconds:.0f} s)")
    if args.history:
        args.history.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "api_key"}
        record = {"label": label, "settings": settings, "seconds": round(seconds, 1)}
        record["evaluations"] = history.evaluations
        args.history.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.history}")
    rng = np.random.default_rng(args.seed)
    for _ in range(5):
        print("  ", model.sample(corpus, rng))
    print(
        f"loss per token: before {before:.4f} (ln C = {math.log(corpus.C):.4f}), after {after:.4f}, "
        f"{args.epochs} epochs through the service"
    )


if __name__ == "__main__":
    main()
