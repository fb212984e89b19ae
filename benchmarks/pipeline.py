"""Pipeline benchmark: the main job end to end, its time per stage, and the ETL against DuckDB.

    .venv/bin/python benchmarks/pipeline.py [--workdir DIR] [--keep] [--conf KEY=VALUE]...
        [--duckdb-threads N]

It runs ``./spark-submit.sh all --workdir <base>/all`` (generate included: the default crawl
of the paper's scale unless --conf changes it), echoes its [stage] lines and times the
process. Then, in this process, it runs benchmarks/etl_duckdb.sql (etl.py's DuckDB side) on
the crawl that run generated, and prints in one place: `all`'s closing table (each stage's
seconds, rows in and rows out, the total, the peak memory of Spark's JVM and of the driver's
Python process), the process's wall time, and ingest + prepare against DuckDB's time for the
same work, with etl.py's target. It measures and reports; it asserts nothing about speed.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `skillrank` importable
    sys.path.insert(0, str(ROOT))

from _workdir import work_directory  # noqa: E402
from etl import (  # noqa: E402
    DONE,
    add_run_arguments,
    crawl_files,
    crawl_pattern,
    run_duckdb,
    run_stage,
    spark_counts,
    verdict,
)

from skillrank.config import load_config  # noqa: E402

# `all`'s closing table: its header line, then a line per stage and the total, then this.
_TABLE_HEADER = "  stage "
_TABLE_END = "Peak memory:"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run `all` end to end, print its stage table and the ETL's DuckDB ratio."
    )
    add_run_arguments(parser)
    return parser.parse_args(argv)


def closing_table(log: Path) -> list[str]:
    """The lines of `all`'s closing table in its log, from the header to the peak memory."""
    lines = log.read_text(errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(_TABLE_HEADER)), None)
    if start is None:
        raise SystemExit(f"pipeline benchmark: error: no stage table in {log}")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(_TABLE_END))
    return lines[start : end + 1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config("local", args.conf)
    with work_directory("pipeline", args.workdir, args.keep) as base:
        logs = base / "logs"
        logs.mkdir()
        workdir = base / "all"
        options = ["--workdir", str(workdir), *(opt for kv in args.conf for opt in ("--conf", kv))]
        run = run_stage("all", options, logs / "all.log")
        stage_s = {m.group(1): float(m.group(2)) for s in run.lines if (m := DONE.match(s))}
        files = crawl_files(crawl_pattern(workdir / config.catalog.crawl_dir))
        print("$ duckdb benchmarks/etl_duckdb.sql", flush=True)
        duck, duck_s, threads = run_duckdb(files, config, args.duckdb_threads)
        spark = spark_counts(run, run)

        print("\n=== Pipeline benchmark ===")
        print(
            f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores;"
            f" command: ./spark-submit.sh all {' '.join(options)}"
        )
        print(f"\n`all`, as it printed its stages (log {logs / 'all.log'}):")
        print("\n".join(closing_table(logs / "all.log")))
        print(f"  process wall time (JVM start included): {run.wall_s:.1f} s")
        etl_s = stage_s["ingest"] + stage_s["prepare"]
        agree = (spark.accepted, spark.profiles, spark.kept) == (
            duck.accepted,
            duck.profiles,
            duck.kept,
        )
        print(
            f"\nETL: ingest + prepare {etl_s:.1f} s against DuckDB {duck_s:.1f} s ({threads}"
            f" threads) on the same {len(files)} files: {verdict(etl_s / duck_s)}"
        )
        print(
            f"  counts: accepted {spark.accepted:,} / {duck.accepted:,}, profiles"
            f" {spark.profiles:,} / {duck.profiles:,}, kept {spark.kept:,} / {duck.kept:,}"
            f" (Spark / DuckDB){'' if agree else ' -- they DIFFER'}"
        )
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load average at the end: {load} (1 / 5 / 15 min; other work skews timings)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
