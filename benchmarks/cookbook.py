"""Run the cookbook of docs/sql.md through a running Thrift server and print (or write back)
what each query returns, with its wall time as a JDBC/ODBC client sees it.

    ./spark-submit.sh thriftserver start --workdir DIR
    .venv/bin/python benchmarks/cookbook.py [--port 10000] [--questions 1-14] [--write]

Each query runs twice; the time is the second run's (the first warms the server's caches).
Without --write the output blocks are printed; with it, the "Output on the demo run (N rows,
T s ..." line and the text block under each chosen question are replaced in docs/sql.md
(the prose around them is kept: say there what the run was). Questions whose SQL or output
is not that of the demo run (15 and 16 run on another crawl) are left out by default.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from impala.dbapi import connect

SQL_DOC = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
# One question: its heading, its SQL block, the "Output on the demo run (" line's counts and
# the text block that follows.
QUESTION = re.compile(
    r"^### (?P<n>\d+)\. [^\n]*\n.*?```sql\n(?P<sql>.*?)```\n.*?"
    r"Output on the demo run \((?P<counts>\d+ rows, [\d.]+ s)(?P<middle>.*?)```text\n"
    r"(?P<text>.*?)```",
    flags=re.M | re.S,
)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def text_table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    """The docs' plain table: a header, a rule, one line per row, columns padded."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *(line(r) for r in cells)]) + "\n"


def run_query(cursor: Any, sql: str) -> tuple[list[str], list[tuple[Any, ...]], float]:
    """The last statement's columns and rows, and the wall time of the second of two runs of
    all the block's statements (one session)."""
    statements = [s.strip() for s in re.split(r";\s*(?:\n|$)", sql) if s.strip()]
    seconds, rows = 0.0, []
    for _ in range(2):
        start = time.monotonic()
        for statement in statements:
            cursor.execute(statement)
        rows = cursor.fetchall()
        seconds = time.monotonic() - start
    return [d[0].split(".")[-1] for d in cursor.description], rows, seconds


def parse_range(text: str) -> set[int]:
    first, _, last = text.partition("-")
    return set(range(int(first), int(last or first) + 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=10000)
    parser.add_argument("--questions", type=parse_range, default=parse_range("1-14"))
    parser.add_argument("--write", action="store_true", help="replace the outputs in sql.md")
    args = parser.parse_args()
    doc = SQL_DOC.read_text(encoding="utf-8")
    found = [m for m in QUESTION.finditer(doc) if int(m["n"]) in args.questions]
    missing = args.questions - {int(m["n"]) for m in found}
    if missing:
        print(f"no question with a demo-run output block: {sorted(missing)}", file=sys.stderr)
        return 2
    replaced = doc
    connection = connect(
        host=args.host, port=args.port, auth_mechanism="PLAIN", user="analyst",
        password="unused", database="skillrank", timeout=600,
    )  # fmt: skip
    with closing(connection), closing(connection.cursor()) as cursor:
        for match in found:
            columns, rows, seconds = run_query(cursor, match["sql"])
            table = text_table(columns, rows)
            counts = f"{len(rows)} rows, {seconds:.1f} s"
            print(f"### {match['n']} ({counts})\n{table}", flush=True)
            block = match.group(0)
            old_counts = f"({match['counts']}{match['middle']}"
            new = block.replace(old_counts, f"({counts}{match['middle']}", 1)
            new = new.replace(f"```text\n{match['text']}```", f"```text\n{table}```", 1)
            replaced = replaced.replace(block, new, 1)
    if args.write:
        SQL_DOC.write_text(replaced, encoding="utf-8")
        print(f"wrote {len(found)} outputs to {SQL_DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
