#!/usr/bin/env bash
# Mutation testing of service/engine.py and service/checks.py with mutmut 3 (`make mutate`).
#
# Slow (about half an hour on one core), so not part of `make test`. It runs in a scratch
# copy, build/mutate/ (git-ignored), so the working tree gets no mutants/ directory and
# edits made meanwhile do not disturb it. One worker process: the machine is shared.
# Settings: the [tool.mutmut] table of pyproject.toml (which files, which tests).
#
#   scripts/mutate.sh            fresh run, then the score per module and every survivor
#   MUTATE_KEEP=1 scripts/mutate.sh   reuse build/mutate/mutants (mutmut re-tests changed functions only)
#   MUTATE_DIR=/tmp/m scripts/mutate.sh   another scratch directory
#
# Inspect a survivor afterwards:  cd build/mutate && ../../.venv/bin/mutmut show <name>
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
WORK=${MUTATE_DIR:-$ROOT/build/mutate}
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
for meta in sorted(Path("mutants/service").glob("*.py.meta")):
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    counts = Counter(status_by_exit_code[c] for c in codes.values())
    killed = counts["killed"] + counts["timeout"] + counts["caught by type check"]
    other = len(codes) - killed - counts["survived"]
    score = killed / len(codes) if codes else 1.0
    name = meta.name.removesuffix(".meta")
    print(f"{name:<22}{len(codes):>8}{killed:>8}{counts['survived']:>9}{other:>7}{score:>8.1%}")
    survivors += [k for k, c in codes.items() if status_by_exit_code[c] != "killed" and status_by_exit_code[c] != "timeout"]
print()
print("not killed (see docs/testing.md for the equivalent ones):")
for name in survivors:
    print("   ", name)
PY
exit $status
