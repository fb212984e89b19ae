"""Kill stages with SIGKILL at random moments, rerun them, and check nothing was lost.

    .venv/bin/python benchmarks/faults.py [--profiles N] [--kills N] [--seed N]
        [--workdir DIR] [--keep]

1. Runs every stage of `all` (generate a small crawl, ingest, prepare, train, evaluate,
   report) once, uninterrupted, in a reference work directory.
2. In a second work directory, for each stage in order: starts it `--kills` times and kills
   its whole process group (launcher, JVM, Python driver) with SIGKILL after a random delay
   drawn from [0, the reference run's duration], then runs it to completion (train with
   `--resume` when a checkpoint is there).
3. Compares the two work directories: the crawl files byte for byte; the ingest and prepare
   tables row for row (run ids aside); the latest succeeded train run's phi and rankings,
   its evaluation and co-clusters (read by path, so no metastore is shared); checks that no
   train run is left `running`, that every failed one has no rows left and that the reports
   directory holds only complete reports; that every corrupt line generate planted is in
   quarantine with its reason; and prints corruptions tried, kills per stage, reruns that
   recovered, rows lost and partial writes seen (both must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `skillrank` importable
    sys.path.insert(0, str(ROOT))

from _workdir import work_directory  # noqa: E402
from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from skillrank.config import load_config  # noqa: E402
from skillrank.publish import RUN_TABLES  # noqa: E402
from skillrank.session import build_spark  # noqa: E402

SCRIPT = str(ROOT / "spark-submit.sh")
STAGES = ("generate", "ingest", "prepare", "train", "evaluate", "report")
# Columns that legitimately differ between two runs of the same input.
RUN_COLUMNS = {"ingest_run_id", "run_id"}
BATCH_TABLES = ("ingested_files", "profiles_raw", "quarantine", "profiles", "job_vocab",
                "skill_vocab")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=3000, help="profiles in the crawl")
    parser.add_argument("--kills", type=int, default=3, help="kills per stage")
    parser.add_argument("--seed", type=int, default=7, help="seeds the kill moments")
    parser.add_argument("--workdir", help="keep everything here (must be empty)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args(argv)


def stage_command(stage: str, workdir: Path, options: list[str]) -> list[str]:
    """The stage's command line; generate and ingest use <workdir>/crawl by default."""
    command = [SCRIPT, stage, "--workdir", str(workdir), *options]
    if stage == "train" and (workdir / "checkpoints" / "checkpoint.pt").is_file():
        command.append("--resume")
    return command


def run_to_end(command: list[str], log: Path) -> float:
    """Run a stage to completion; its duration. Fails the harness if the stage fails."""
    started = time.monotonic()
    with open(log, "ab") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"faults: {' '.join(command[1:3])} exited {code}; see {log}")
    return time.monotonic() - started


def run_and_kill(command: list[str], delay: float, log: Path) -> bool:
    """Start a stage, SIGKILL its process group after `delay` s; False if it ended first."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            process.wait(timeout=delay)
            return False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True


def fingerprint(df: DataFrame) -> tuple[int, int]:
    """(rows, order-independent hash of the rows), run-id columns left out."""
    columns = [c for c in df.columns if c not in RUN_COLUMNS]
    row = df.select(F.count(F.lit(1)), F.sum(F.xxhash64(*columns).cast("decimal(38,0)"))).first()
    return int(row[0]), int(row[1] or 0)


def compare(spark: SparkSession, reference: Path, faulted: Path, database: str) -> list[str]:
    """Differences between the two work directories' tables (empty when equal)."""

    def table(workdir: Path, name: str) -> DataFrame:
        df = spark.read.format("delta").load(str(workdir / "warehouse" / f"{database}.db" / name))
        # Each work directory generates its own crawl: compare files by name, not by path or
        # modification time (the bytes are compared separately).
        if "source_file" in df.columns:
            df = df.withColumn("source_file", F.regexp_extract("source_file", "[^/]+$", 0))
        return df.drop("modified_at")

    def latest_run(workdir: Path, name: str) -> DataFrame:
        runs = table(workdir, "runs").where("status = 'succeeded'")
        latest = runs.orderBy(F.col("ended_at").desc()).first().run_id
        return table(workdir, name).where(F.col("run_id") == latest)

    problems = []
    for name in BATCH_TABLES:
        want, got = fingerprint(table(reference, name)), fingerprint(table(faulted, name))
        if want != got:
            problems.append(f"{name}: reference {want[0]} rows, after faults {got[0]} (or content)")
    for name in (*RUN_TABLES, "evaluation", "coclusters"):
        if name == "training_history":  # seconds differ from run to run
            continue
        want = fingerprint(latest_run(reference, name))
        got = fingerprint(latest_run(faulted, name))
        if want != got:
            problems.append(f"{name} (latest run): {want[0]} rows vs {got[0]} (or content)")
    if _crawl_files(reference) != _crawl_files(faulted):
        problems.append("crawl: the generated files differ from the reference's (rows changed)")
    leftovers = [
        *faulted.glob(".crawl.*.tmp"),
        *(faulted / "staging").glob("*"),
        *(faulted / "reports").glob(".*.partial"),
    ]
    if leftovers:
        problems.append(f"left over by killed runs: {', '.join(p.name for p in leftovers)}")
    reports = sorted(p.name for p in (faulted / "reports").iterdir())
    complete = [p for p in reports if (faulted / "reports" / p / "report.html").is_file()]
    if reports != complete or len(complete) != 1:
        problems.append(f"reports: {reports} left, expected one complete report")
    runs = table(faulted, "runs")
    left_running = runs.where("status = 'running'").count()
    if left_running:
        problems.append(f"runs: {left_running} run(s) left 'running' after the reruns")
    failed = [r.run_id for r in runs.where("status = 'failed'").collect()]
    for name in RUN_TABLES:
        leftover = table(faulted, name).where(F.col("run_id").isin(failed)).count()
        if leftover:
            problems.append(f"{name}: {leftover} rows of failed runs still there")
    return problems


def check_corruptions(spark: SparkSession, faulted: Path, database: str) -> tuple[int, int, int]:
    """(corrupt lines the generator planted, kinds, those quarantined with their reason)."""
    planted = json.loads((faulted / "crawl" / "stats.json").read_text())["malformed"]
    path = str(faulted / "warehouse" / f"{database}.db" / "quarantine")
    found = {
        r.reason: r["count"]
        for r in spark.read.format("delta").load(path).groupBy("reason").count().collect()
    }
    matched = sum(min(n, found.get(reason, 0)) for reason, n in planted.items())
    return sum(planted.values()), sum(1 for n in planted.values() if n), matched


def _crawl_files(workdir: Path) -> dict[str, bytes]:
    crawl = workdir / "crawl"
    return {str(p.relative_to(crawl)): p.read_bytes() for p in crawl.rglob("*") if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    config = load_config()
    options = ["--conf", "prepare.min_job_profiles=2", "--conf", "prepare.min_skill_profiles=2"]
    options += ["--conf", "train.learning_rate=50.0", "--conf", "train.max_epochs=15"]
    options += ["--conf", f"generate.profiles={args.profiles}", "--conf", "generate.shards=4"]
    with work_directory("faults", args.workdir, args.keep) as base:
        reference, faulted, logs = (base / n for n in ("ref", "faulted", "logs"))
        logs.mkdir()
        print(f"crawls of {args.profiles:,} profiles", flush=True)
        durations = {}
        for stage in STAGES:
            command = stage_command(stage, reference, options)
            durations[stage] = run_to_end(command, logs / f"reference-{stage}.log")
            print(f"reference {stage}: {durations[stage]:.1f} s", flush=True)

        kills = {stage: 0 for stage in STAGES}
        recovered = {stage: 0 for stage in STAGES}
        for stage in STAGES:
            log = logs / f"faulted-{stage}.log"
            for _ in range(args.kills):
                delay = rng.uniform(0.0, durations[stage])
                command = stage_command(stage, faulted, options)
                killed = run_and_kill(command, delay, log)
                kills[stage] += killed
                print(f"{stage}: killed after {delay:.1f} s" if killed else
                      f"{stage}: finished before {delay:.1f} s", flush=True)  # fmt: skip
            run_to_end(stage_command(stage, faulted, options), log)
            recovered[stage] += 1
            print(f"{stage}: rerun to completion", flush=True)

        spark = build_spark(
            config, base / "compare", "local[*]", "skillrank-faults",
            extra={"spark.ui.showConsoleProgress": "false"},
        )  # fmt: skip
        problems = compare(spark, reference, faulted, config.catalog.database)
        tried, kinds, quarantined = check_corruptions(spark, faulted, config.catalog.database)
        spark.stop()
    if quarantined != tried:
        problems.append(f"quarantine: {tried - quarantined} planted corrupt lines lost (rows)")

    print("\n=== Fault injection ===")
    print(
        f"corruptions tried: {tried} corrupt lines of {kinds} kinds planted by generate;"
        f" quarantined with their reason: {quarantined}"
    )
    for stage in STAGES:
        print(f"{stage:8} kills injected {kills[stage]}, reruns that recovered {recovered[stage]}")
    lost = sum("rows" in p and "left" not in p for p in problems)
    partial = sum("left" in p or "failed runs" in p for p in problems)
    print(f"tables differing from the uninterrupted run (rows lost or changed): {lost}")
    print(f"partial writes seen (runs left running, rows of failed runs): {partial}")
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
