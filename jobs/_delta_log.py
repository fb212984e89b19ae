"""The live rows of a small local Delta table, read without Spark: for checks before the JVM
and for the stages' reads of such tables.

A Delta table's current state is the set of data files its log adds and has not removed:
the latest checkpoint (a Parquet file of actions) and the JSON commits after it. This reads
only what a plain table needs (reader protocol 1: no deletion vectors, column mapping or
other reader features) and answers None for anything else, so a caller that cannot decide
leaves the question to Spark. It reads whole files: meant for tables of a few rows (`runs`,
`stage_runs`, `ingested_files`), which it reads in milliseconds where a Spark query costs the
JVM about a core-second (jobs._runs.small_table).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq


def live_rows(table_dir: Path, columns: list[str]) -> list[dict[str, object]] | None:
    """`columns` of every row of the Delta table at `table_dir` (its newest version), or
    None when this reader cannot tell (no log, a gap in it, a reader feature, a
    multi-part checkpoint)."""
    table = live_table(table_dir, columns)
    return None if table is None else table.to_pylist()


def live_table(table_dir: Path, columns: list[str]) -> pa.Table | None:
    """``live_rows`` as one Arrow table, as its files hold them (Spark's timestamps: naive,
    in UTC)."""
    try:
        paths = _live_files(table_dir / "_delta_log")
        if paths is None:
            return None
        parts = [pq.read_table(table_dir / unquote(p), columns=columns) for p in sorted(paths)]
        if not parts:
            return pa.table({name: pa.nulls(0) for name in columns})
        return pa.concat_tables(parts)
    except (OSError, ValueError, KeyError, TypeError):
        # A file gone or half-written meanwhile, a layout this reader does not know (a
        # checkpoint in another format), files of other schemas: Spark reads it, or says
        # what is wrong.
        return None


def _live_files(log: Path) -> set[str] | None:
    commits = {int(p.name.split(".")[0]): p for p in log.glob("[0-9]*.json")}
    if not commits:
        return None
    first, files = 0, set[str]()
    if (log / "_last_checkpoint").is_file():
        checkpoint = json.loads((log / "_last_checkpoint").read_text())
        if "parts" in checkpoint:
            return None
        first = checkpoint["version"] + 1
        actions = pq.read_table(log / f"{checkpoint['version']:020d}.checkpoint.parquet")
        for action in actions.select(["protocol", "add"]).to_pylist():
            if not _readable(action) or (action["add"] or {}).get("deletionVector"):
                return None
            if action["add"]:
                files.add(action["add"]["path"])
    if any(version not in commits for version in range(first, max(commits) + 1)):
        return None
    for version in range(first, max(commits) + 1):
        for line in commits[version].read_text().splitlines():
            action = json.loads(line)
            if not _readable(action) or action.get("add", {}).get("deletionVector"):
                return None
            if "add" in action:
                files.add(action["add"]["path"])
            elif "remove" in action:
                files.discard(action["remove"]["path"])
    return files


def _readable(action: dict) -> bool:
    protocol = action.get("protocol")
    return protocol is None or protocol["minReaderVersion"] == 1
