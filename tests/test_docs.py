"""docs/derivation.md: the code it quotes is the code that runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.index("\n## ", start + len(heading))
    return text[start:end]


def test_derivation_section_10_quotes_gated_py_as_it_is():
    """Every code span in the engine column of section 10's tables is a line (or part of one) of service/gated.py."""
    doc = _section((ROOT / "docs" / "derivation.md").read_text(encoding="utf-8"), "## 10. Gated cells")
    source = (ROOT / "service" / "gated.py").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| ") and not line.startswith("| equation")]
    quoted = [span for row in rows for span in re.findall(r"`([^`]+)`", row.rsplit(" | ", 1)[-1])]
    assert len(quoted) > 30, quoted
    missing = [span for span in quoted if span not in source]
    assert not missing, f"docs/derivation.md section 10 quotes code that service/gated.py does not hold: {missing}"
