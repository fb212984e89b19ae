#!/usr/bin/env bash
# The test command of README.md: sets up .venv and the Delta JARs on first use, then runs pytest.
#   bash tests/run.sh [pytest options]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/spark-submit.sh" setup --workdir "$ROOT/var/setup"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
