#!/usr/bin/env bash
# The test command of README.md: sets up .venv and the Delta JARs on first use, then runs pytest.
#   bash tests/run.sh [pytest options]
#   bash tests/run.sh --lint      (ruff check and ruff format --check over the tree, then mypy
#                                  on skillrank/ and jobs/ as pyproject.toml says; no tests)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ "${1:-}" == "--lint" ]]; then
  # The virtual environment only (spark-submit.sh creates it): the linters start no JVM, so
  # they need neither the JARs nor the class archive of `setup`.
  "$ROOT/spark-submit.sh" --version >/dev/null
  "$ROOT/.venv/bin/python" -m ruff check .
  "$ROOT/.venv/bin/python" -m ruff format --check .
  exec "$ROOT/.venv/bin/python" -m mypy
fi
"$ROOT/spark-submit.sh" setup --workdir "$ROOT/var/setup"
# Two workers, one per core (see tests/conftest.py); `-n 0` runs in this process instead.
exec "$ROOT/.venv/bin/python" -m pytest -n 2 "$@"
