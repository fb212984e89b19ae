"""Kill stages with SIGKILL at random moments, rerun them, and check nothing was lost.

    .venv/bin/python benchmarks/faults.py [--profiles N] [--kills N] [--seed N]
        [--workdir DIR] [--keep]

1. Generates a small crawl, then runs ingest, prepare and train once, uninterrupted, in a
   reference work directory.
2. In a second work directory, for each stage in order: starts it `--kills` times and kills
   its whole process group (launcher, JVM, Python driver) with SIGKILL after a random delay
   drawn from [0, the reference run's duration], then runs it to completion (train with
   `--resume` when a checkpoint is there).
3. Compares the two work directories' tables (read by path, so no metastore is shared):
   ingest and prepare tables row for row (run ids aside), and the latest succeeded train
   run's phi and rankings; checks that no train run is left `running` and that every
   failed one has no rows left; and prints kills per stage, reruns that recovered, rows
   lost and partial writes seen (both must be 0).
"""

from __future__ import annotations

import argparse
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
STAGES = ("ingest", "prepare", "train")
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


def stage_command(stage: str, workdir: Path, crawl: Path, options: list[str]) -> list[str]:
    command = [SCRIPT, stage, "--workdir", str(workdir), *options]
    if stage == "ingest":
        command += ["--input", str(crawl)]
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
        return spark.read.format("delta").load(str(workdir / "warehouse" / f"{database}.db" / name))

    def latest_run(workdir: Path, name: str) -> DataFrame:
        runs = table(workdir, "runs").where("status = 'succeeded'")
        latest = runs.orderBy(F.col("ended_at").desc()).first().run_id
        return table(workdir, name).where(F.col("run_id") == latest)

    problems = []
    for name in BATCH_TABLES:
        want, got = fingerprint(table(reference, name)), fingerprint(table(faulted, name))
        if want != got:
            problems.append(f"{name}: reference {want[0]} rows, after faults {got[0]} (or content)")
    for name in RUN_TABLES:
        if name == "training_history":  # seconds differ from run to run
            continue
        want = fingerprint(latest_run(reference, name))
        got = fingerprint(latest_run(faulted, name))
        if want != got:
            problems.append(f"{name} (latest run): {want[0]} rows vs {got[0]} (or content)")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    config = load_config()
    options = ["--conf", "prepare.min_job_profiles=2", "--conf", "prepare.min_skill_profiles=2"]
    options += ["--conf", "train.learning_rate=50.0", "--conf", "train.max_epochs=15"]
    with work_directory("faults", args.workdir, args.keep) as base:
        crawl, reference, faulted, logs = (base / n for n in ("crawl", "ref", "faulted", "logs"))
        logs.mkdir()
        print(f"generating a crawl of {args.profiles:,} profiles", flush=True)
        run_to_end(
            [SCRIPT, "generate", "--workdir", str(base / "gen"), "--output", str(crawl),
             "--conf", f"generate.profiles={args.profiles}", "--conf", "generate.shards=4"],
            logs / "generate.log",
        )  # fmt: skip
        durations = {}
        for stage in STAGES:
            command = stage_command(stage, reference, crawl, options)
            durations[stage] = run_to_end(command, logs / f"reference-{stage}.log")
            print(f"reference {stage}: {durations[stage]:.1f} s", flush=True)

        kills = {stage: 0 for stage in STAGES}
        recovered = {stage: 0 for stage in STAGES}
        for stage in STAGES:
            log = logs / f"faulted-{stage}.log"
            for _ in range(args.kills):
                delay = rng.uniform(0.0, durations[stage])
                command = stage_command(stage, faulted, crawl, options)
                killed = run_and_kill(command, delay, log)
                kills[stage] += killed
                print(f"{stage}: killed after {delay:.1f} s" if killed else
                      f"{stage}: finished before {delay:.1f} s", flush=True)  # fmt: skip
            run_to_end(stage_command(stage, faulted, crawl, options), log)
            recovered[stage] += 1
            print(f"{stage}: rerun to completion", flush=True)

        spark = build_spark(
            config, base / "compare", "local[*]", "skillrank-faults",
            extra={"spark.ui.showConsoleProgress": "false"},
        )  # fmt: skip
        problems = compare(spark, reference, faulted, config.catalog.database)
        spark.stop()

    print("\n=== Fault injection ===")
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
