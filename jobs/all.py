"""all: the stages in order, in one Spark application, ending with a summary of the tables.

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
import sys

from pyspark.sql import functions as F

from jobs import evaluate, generate, ingest, prepare, report, train
from jobs._cli import Stage, StageContext, StageError, StageRange, StageResult, run_stages
from jobs._runs import check_trained
from skillrank.tables import SPECS


def _latest_run(parser: argparse.ArgumentParser) -> None:
    """evaluate and report take the run train has just published (else the current run),
    and the default truth."""
    parser.set_defaults(run_id=None, truth=None)


_EVALUATE = dataclasses.replace(evaluate.STAGE, add_arguments=_latest_run, check=check_trained)
_REPORT = dataclasses.replace(report.STAGE, add_arguments=_latest_run)
STAGES = [generate.STAGE, ingest.STAGE, prepare.STAGE, train.STAGE, _EVALUATE, _REPORT]
NAMES = [stage.name for stage in STAGES]


def _on_trained_run(stage: Stage) -> Stage:
    """`stage` on the run train has just published (the latest started: a train that failed
    or was rejected ended the range), even while a pin holds the views on another run."""

    def run(ctx: StageContext) -> StageResult:
        runs = ctx.spark.table(ctx.table("runs"))
        latest = runs.orderBy(F.desc("started_at")).first()
        assert latest is not None  # train has just recorded its run
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


def summarize(ctx: StageContext) -> list[str]:
    """Row counts of every table and where to look next."""
    lines = ["", f"SkillRank tables in database {ctx.config.catalog.database}:"]
    names = [ctx.table(key) for key in SPECS if ctx.spark.catalog.tableExists(ctx.table(key))]
    # One query for every count: one Spark job, not one per table.
    counts = " UNION ALL ".join(
        f"SELECT {i} AS i, count(*) AS n FROM {n}" for i, n in enumerate(names)
    )
    rows: dict[int, int] = dict(ctx.spark.sql(counts).collect()) if names else {}
    lines += [f"  {name:<32} {rows[i]:>10,} rows" for i, name in enumerate(names)]
    lines += [
        f"Training shards: {ctx.workdir / ctx.config.catalog.shards_dir / 'manifest.json'}",
        "Query them with:",
        f'  ./spark-submit.sh sql --workdir {ctx.workdir} -e "SELECT * FROM'
        f" {ctx.config.catalog.database}.current_job_skill_rank"
        " WHERE job_title = (SELECT job_title FROM"
        f' {ctx.table("job_vocab")} WHERE job_id = 0) ORDER BY rank LIMIT 10"',
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(run_stages(ALL, sys.argv[1:] if argv is None else argv, summarize))


if __name__ == "__main__":
    main()
