#!/usr/bin/env bash
# Mutation testing of the code that decides answers with mutmut 3 (`make mutate`).
#
# Two sets of modules, each with the test files that guard it (docs/testing.md):
#   core   service/engine.py, service/checks.py: the [tool.mutmut] table of pyproject.toml
#   rest   codec, v2/protocol, settings, admission: [tool.mutate.rest], whose keys replace
#          [tool.mutmut]'s in the scratch copy's pyproject.toml
#
# Slow (ten minutes to half an hour a set), so not part of `make test`. It runs in a scratch
# copy, build/mutate/<set>/ (git-ignored), so the working tree gets no mutants/ directory and
# edits made meanwhile do not disturb it. One worker process by default: the machine is shared.
#
#   scripts/mutate.sh [core|rest]     fresh run (default core), then the score per module and every survivor
#   MUTATE_KEEP=1 scripts/mutate.sh rest   reuse build/mutate/rest/mutants (changed functions only are re-tested)
#   MUTATE_CHILDREN=2 scripts/mutate.sh rest   two worker processes
#   MUTATE_DIR=/tmp/m scripts/mutate.sh   another scratch directory
#
# Inspect a survivor afterwards:  cd build/mutate/rest && ../../../.venv/bin/mutmut show <name>
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
SET=${1:-${MUTATE_SET:-core}}
WORK=${MUTATE_DIR:-$ROOT/build/mutate/$SET}
CHILDREN=${MUTATE_CHILDREN:-1}

mkdir -p "$WORK"
if [ -z "${MUTATE_KEEP:-}" ]; then
    rm -rf "$WORK/mutants"
fi
rm -rf "$WORK/service" "$WORK/tests"
cp -r "$ROOT/service" "$ROOT/tests" "$WORK/"
cp "$ROOT/pyproject.toml" "$WORK/"
rm -f "$WORK/setup.cfg"
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +

cd "$WORK"
# A set other than core: its [tool.mutate.<set>] keys replace [tool.mutmut]'s (written as a new table).
"$VENV/bin/python" - "$SET" <<'PY'
import json
import re
import sys
import tomllib
from pathlib import Path

name, path = sys.argv[1], Path("pyproject.toml")
text = path.read_text()
tool = tomllib.loads(text)["tool"]
if name != "core":
    if name not in tool.get("mutate", {}):
        sys.exit(f"scripts/mutate.sh: no set {name!r}: pyproject.toml has no [tool.mutate.{name}] (sets: core, "
                 + ", ".join(tool.get("mutate", {})) + ")")
    table = tool["mutmut"] | tool["mutate"][name]
    text = re.sub(r"(?ms)^\[tool\.mutmut\]$.*?(?=^\[|\Z)", "", text)
    lines = [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path.write_text(text + "\n[tool.mutmut]\n" + "\n".join(lines) + "\n")
PY
# Fewer hypothesis examples where a test takes them from the profile (registered in tests/conftest.py).
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-quick}
status=0
"$VENV/bin/mutmut" run --max-children "$CHILDREN" || status=$?

# The score per module, from mutmut's own records (mutants/<file>.meta).
"$VENV/bin/python" - <<'PY'
import json
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

print()
print(f"{'module':<22}{'mutants':>8}{'killed':>8}{'survived':>9}{'other':>7}{'score':>8}")
survivors = []
for meta in sorted(Path("mutants/service").rglob("*.py.meta")):
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    counts = Counter(status_by_exit_code[c] for c in codes.values())
    killed = counts["killed"] + counts["timeout"] + counts["caught by type check"]
    other = len(codes) - killed - counts["survived"]
    score = killed / len(codes) if codes else 1.0
    name = str(meta.relative_to("mutants/service")).removesuffix(".meta")
    print(f"{name:<22}{len(codes):>8}{killed:>8}{counts['survived']:>9}{other:>7}{score:>8.1%}")
    survivors += [k for k, c in codes.items() if status_by_exit_code[c] not in ("killed", "timeout", "caught by type check")]
print()
print("not killed (see docs/testing.md for the equivalent ones):")
for name in survivors:
    print("   ", name)
PY
exit $status
