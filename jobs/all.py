"""all: the stages in order, in one Spark application, ending with each stage's time and rows.

    ./spark-submit.sh all [--input PATH] [--from STAGE] [--to STAGE] [--workdir DIR]
                          [--conf key=value ...]

Without --input, `generate` first writes the default crawl into <workdir>/<catalog.crawl_dir>
(skipped when the same crawl is already there) and `ingest` reads it. Then prepare; train,
which publishes phi and the rankings; evaluate and report, on the run train just published
(a run that fails a promotion gate ends `all` with exit 3, docs/operations.md).
`--from` and `--to` run a range of these (both ends included), still in one application:
`all --from prepare --to train` after a new ingest, or `all --from train` to go on after a
failed train (a failing `all` names the `--from` that resumes it).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import resource
import sys
from pathlib import Path

from pyspark.sql import functions as F

from jobs import evaluate, generate, ingest, prepare, report, train
from jobs._cli import (
    Stage,
    StageContext,
    StageError,
    StageRange,
    StageResult,
    StageTime,
    run_stages,
)
from jobs._runs import check_trained


def _latest_run(parser: argparse.ArgumentParser) -> None:
    """evaluate and report take the run train has just published (else the current run),
    and the default truth."""
    parser.set_defaults(run_id=None, truth=None)


_EVALUATE = dataclasses.replace(evaluate.STAGE, add_arguments=_latest_run, check=check_trained)
_REPORT = dataclasses.replace(report.STAGE, add_arguments=_latest_run)
STAGES = [generate.STAGE, ingest.STAGE, prepare.STAGE, train.STAGE, _EVALUATE, _REPORT]
NAMES = [stage.name for stage in STAGES]


def _on_trained_run(stage: Stage) -> Stage:
    """`stage` on the run train has just published (a train that failed or was rejected
    ended the range; one that found its run standing published nothing: then the latest
    started), even while a pin holds the views on another run."""

    def run(ctx: StageContext) -> StageResult:
        if ctx.handoff.published is not None:
            ctx.args.run_id = ctx.handoff.published[0]
        else:  # train found a run standing and published nothing: the latest started
            runs = ctx.spark.table(ctx.table("runs"))
            latest = runs.orderBy(F.desc("started_at")).first()
            assert latest is not None  # train has recorded or kept a run
            ctx.args.run_id = latest.run_id
        return stage.run(ctx)

    return dataclasses.replace(stage, run=run, check=lambda args, config: None)


# A stage's own check wants its inputs already there: not when an earlier stage of the same
# range writes them (prepare the shards for train; train the run for evaluate and report).
_WRITTEN_IN_RANGE = {
    "prepare": ("ingest", dataclasses.replace(prepare.STAGE, check=lambda args, config: None)),
    "train": ("prepare", dataclasses.replace(train.STAGE, check=train.check_options)),
    "evaluate": ("train", _on_trained_run(_EVALUATE)),
    "report": ("train", _on_trained_run(_REPORT)),
}


def _range_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="first", choices=NAMES, default=NAMES[0],
                        help="first stage to run (default: generate)")  # fmt: skip
    parser.add_argument("--to", dest="last", choices=NAMES, default=NAMES[-1],
                        help="last stage to run (default: report)")  # fmt: skip


def select(args: argparse.Namespace) -> list[Stage]:
    """The stages from --from to --to; generate only without --input, ingest only with one
    or after generate."""
    first, last = NAMES.index(args.first), NAMES.index(args.last)
    if first > last:
        raise StageError(f"--from {args.first} comes after --to {args.last} ({' < '.join(NAMES)})")
    chosen = STAGES[first : last + 1]
    if args.input is not None:
        if not first <= NAMES.index("ingest") <= last:
            raise StageError("--input is read by ingest, which --from/--to leave out")
        chosen = [s for s in chosen if s.name != "generate"]
    names = [s.name for s in chosen]
    for name, (writer, relaxed) in _WRITTEN_IN_RANGE.items():
        if name in names and writer in names:
            chosen[names.index(name)] = relaxed
    return chosen


ALL = StageRange("all", STAGES, _range_arguments, select)


def summarize(ctx: StageContext, times: list[StageTime]) -> list[str]:
    """The stages' times and rows, the processes' peak memory, and where to look next."""
    lines = ["", f"  {'stage':<10} {'seconds':>8} {'rows in':>12} {'rows out':>12}"]
    lines += [
        f"  {t.stage:<10} {t.seconds:>8.1f} {t.rows_in:>12,} {t.rows_out:>12,}" for t in times
    ]
    lines.append(f"  {'total':<10} {sum(t.seconds for t in times):>8.1f}")
    jvm = ctx.spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()  # type: ignore[union-attr]
    # (A child's peak would include what it shared with this process when forked.)
    python = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    lines += [
        f"Peak memory: Spark's JVM {_gib(_peak_rss(int(jvm)))}, this Python process {_gib(python)}",
        f"Every stage's row counts and versions: SELECT * FROM {ctx.table('stage_runs')}",
        f"Training shards: {ctx.workdir / ctx.config.catalog.shards_dir / 'manifest.json'}",
        "Query the rankings with:",
        f'  ./spark-submit.sh sql --workdir {ctx.workdir} -e "SELECT * FROM'
        f" {ctx.config.catalog.database}.current_job_skill_rank"
        " WHERE job_title = (SELECT job_title FROM"
        f' {ctx.table("job_vocab")} WHERE job_id = 0) ORDER BY rank LIMIT 10"',
    ]
    return lines


def _peak_rss(pid: int) -> int | None:
    """Peak resident memory (bytes) of a process on this machine, from Linux's /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, flags=re.M)
    return int(found.group(1)) * 1024 if found else None


def _gib(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(run_stages(ALL, sys.argv[1:] if argv is None else argv, summarize))


if __name__ == "__main__":
    main()
