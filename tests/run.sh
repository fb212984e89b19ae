#!/usr/bin/env bash
# The test command of README.md: sets up .venv and the Delta JARs on first use, then runs pytest.
#   bash tests/run.sh [pytest options]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/spark-submit.sh" setup --workdir "$ROOT/var/setup"
cd "$ROOT"
# Two workers, one per core (see tests/conftest.py); `-n 0` runs in this process instead.
exec "$ROOT/.venv/bin/python" -m pytest -n 2 "$@"
