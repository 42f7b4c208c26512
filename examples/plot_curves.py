"""Draw the loss curves of several runs of examples/train.py on one plot.

    python examples/train.py --quick --cell gru --history examples/output/gru.json
    python examples/plot_curves.py docs/train-cells.png examples/output/*.json

Each JSON file is what ``train.py --history`` writes: a label, the settings and
the (epoch, loss per token) evaluations. It prints a table of the final losses.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("png", type=Path, help="where the plot goes")
    parser.add_argument("histories", type=Path, nargs="+", help="JSON files written by train.py --history")
    parser.add_argument("--title", default=None, help="by default, the data and sizes of the first run")
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text(encoding="utf-8")) for path in args.histories]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for run in runs:
        epochs, losses = zip(*run["evaluations"], strict=True)
        ax.plot(epochs, losses, "o-", markersize=3, label=run["label"])
    title = args.title or _title(runs[0]["settings"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per token (nats)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")

    print("| run | loss before | loss after | lowest | seconds |")
    print("|---|---|---|---|---|")
    for run in runs:
        losses = [loss for _, loss in run["evaluations"]]
        print(f"| {run['label']} | {losses[0]:.4f} | {losses[-1]:.4f} | {min(losses):.4f} | {run['seconds']:.0f} |")


def _title(settings: dict[str, Any]) -> str:
    """The first run's data and sizes, e.g. "genesis: C = 1000, H = 48, 1000 sentences, bptt_truncate 4"."""
    K = settings.get("bptt_truncate")
    parts = [f"C = {settings.get('vocabulary')}", f"H = {settings.get('hidden')}"]
    if settings.get("sentences"):
        parts.append(f"{settings['sentences']} sentences")
    parts.append(f"bptt_truncate {'full' if K is None else K}")
    return f"{Path(settings['text']).stem}: {', '.join(parts)}"


if __name__ == "__main__":
    main()
