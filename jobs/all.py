"""all: every stage in order, in one Spark session, ending with a summary of the tables.

    ./spark-submit.sh all [--input PATH] [--workdir DIR] [--conf key=value ...]

Without --input, `generate` first writes the default crawl into <workdir>/<catalog.crawl_dir>
(skipped when the same crawl is already there) and `ingest` reads it. Then prepare; train,
which publishes phi and the rankings; evaluate and report, on the run train just published.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import evaluate, generate, ingest, prepare, report, train
from jobs._cli import StageContext, run_stages
from skillrank.tables import SPECS


def _latest_run(parser: argparse.ArgumentParser) -> None:
    """evaluate and report take the run train has just published, and the default truth."""
    parser.set_defaults(run_id=None, truth=None)


# train's own check wants the shards already there; here prepare writes them first.
STAGES = [
    generate.STAGE,
    ingest.STAGE,
    prepare.STAGE,
    dataclasses.replace(train.STAGE, check=lambda args, config: None),
    dataclasses.replace(evaluate.STAGE, add_arguments=_latest_run, check=lambda a, c: None),
    dataclasses.replace(report.STAGE, add_arguments=_latest_run),
]


def summarize(ctx: StageContext) -> list[str]:
    """Row counts of every table and where to look next."""
    lines = ["", f"SkillRank tables in database {ctx.config.catalog.database}:"]
    for key in SPECS:
        name = ctx.table(key)
        if ctx.spark.catalog.tableExists(name):
            lines.append(f"  {name:<32} {ctx.spark.table(name).count():>10,} rows")
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
    argv = sys.argv[1:] if argv is None else argv
    given_input = any(a == "--input" or a.startswith("--input=") for a in argv)
    raise SystemExit(run_stages(STAGES[1:] if given_input else STAGES, argv, summarize))


if __name__ == "__main__":
    main()
