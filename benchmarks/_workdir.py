"""The work directory of a benchmark run: --workdir (must be empty) or a temporary one."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def work_directory(name: str, workdir: str | None, keep: bool) -> Iterator[Path]:
    """Yield `workdir` (created; refused when not empty) or a new temporary directory.

    A temporary directory is removed at the end unless `keep`; a given one always stays.
    """
    if workdir:
        base = Path(workdir).resolve()
        if base.exists() and any(base.iterdir()):
            raise SystemExit(f"{name} benchmark: error: --workdir {base} is not empty")
        base.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(tempfile.mkdtemp(prefix=f"skillrank-{name}-bench-"))
    try:
        yield base
    finally:
        if workdir or keep:
            print(f"\nwork directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
