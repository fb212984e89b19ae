"""maintain: retention of train runs, then OPTIMIZE and VACUUM of the tables.

    ./spark-submit.sh maintain [--workdir DIR] [--unsafe-retention] [--conf maintain.KEY=VALUE]

Keeps the rows of the latest maintain.keep_runs succeeded train runs, a pinned run and the
run that is current without the pin (skillrank.promotion) in the tables keyed by run_id
(phi, the rankings, training_history, evaluation, coclusters, ...); every other run that
published rows (succeeded or rejected) loses them and its report, and its `runs` row turns
'removed' (the row and its run_events stay: the history of what was published). Then every
table but those keyed by run_id is compacted (OPTIMIZE of its files below
maintain.compact_files_below_mib), and every table is VACUUMed with
maintain.vacuum_retention_hours of history kept for time travel; fewer than Delta's 168
hours only with --unsafe-retention. The softmax checkpoint files go too
(maintain.remove_checkpoints), unless the latest train run failed. Prints the warehouse's
bytes before and after. A rerun removes nothing more.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from delta.tables import DeltaTable
from pyspark.sql import functions as F

from jobs._cli import Stage, StageContext, StageError, StageResult, run_stages
from jobs._runs import require_runs
from skillrank.config import Config
from skillrank.promotion import REJECTED, pinned_run_sql, promoted_run_sql
from skillrank.publish import RUN_TABLES
from skillrank.session import hadoop_path
from skillrank.tables import SPECS, declare_tables, table_version

# Delta's own floor for VACUUM's retention (spark.databricks.delta.retentionDurationCheck).
SAFE_RETENTION_HOURS = 168.0
REMOVED = "removed"
# The tables keyed by run_id: retention deletes their rows run by run. They are not
# compacted: each run's rows sit in the few files its stage wrote, which a query of one run
# picks by their statistics (one run_id each) and a deletion removes without rewriting
# another run's rows. Compacting merged runs into shared files that every later deletion
# rewrites, and rewrote phi's zstd files as snappy ones three times their size (OPTIMIZE
# writes with the session's codec; Delta takes none from table properties): on a paper-scale
# work directory of one run, 85.7 s of OPTIMIZE and 404 -> 959.5 MiB of warehouse within the
# retention, against 24.5 s and 427.3 MiB without them (2026-12-04, docs/operations.md).
_RUN_KEYED = (*RUN_TABLES, "evaluation", "coclusters")
# Tables deleted from, compacted or vacuumed at once (one Spark job each, from threads of the
# driver). A small table's command is mostly the driver's latency (its log's replay, a file
# listing, a commit), which leaves the cores half idle when the tables go one by one
# (paper scale, warm: the stage 108-122 s against 129-138 s one at a time; docs/operations.md).
_TABLES_AT_ONCE = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unsafe-retention",
        action="store_true",
        help=f"allow maintain.vacuum_retention_hours below {SAFE_RETENTION_HOURS:g}",
    )


def check(args: argparse.Namespace, config: Config) -> None:
    hours = config.maintain.vacuum_retention_hours
    if hours < SAFE_RETENTION_HOURS and not args.unsafe_retention:
        raise StageError(
            f"maintain.vacuum_retention_hours={hours:g} is below Delta's safety check"
            f" ({SAFE_RETENTION_HOURS:g} hours: a reader or writer may still need those files);"
            " add --unsafe-retention to do it anyway"
        )
    require_runs(args, config)


def run(ctx: StageContext) -> StageResult:
    params, spark = ctx.config.maintain, ctx.spark
    declare_tables(spark, ctx.config, ["run_events"])  # runs trained before it existed
    tables = [key for key in SPECS if spark.catalog.tableExists(ctx.table(key))]
    before = _warehouse_bytes(ctx)
    runs = spark.table(ctx.table("runs"))
    latest = runs.where("status = 'succeeded'").orderBy(F.desc("ended_at")).limit(params.keep_runs)
    keep = {r.run_id for r in latest.collect()}
    # The pinned run, and the run that is current without the pin (after an unpin).
    events = ctx.table("run_events")
    held = spark.sql(
        f"SELECT {pinned_run_sql(events)}, {promoted_run_sql(ctx.table('runs'), events)}"
    ).first()
    assert held is not None  # a SELECT without FROM has one row
    keep |= {run for run in held if run}
    ended = runs.where(F.col("status").isin("succeeded", REJECTED, "failed")).collect()
    # A failed run's rows are normally gone already (train deletes them); not if that failed.
    dropped = sorted(r.run_id for r in ended if r.run_id not in keep)
    removed = sorted(r.run_id for r in ended if r.run_id not in keep and r.status != "failed")
    with ctx.step(f"deleted the rows of {len(removed)} runs, kept {len(keep)}"):
        if dropped:
            gone = F.col("run_id").isin(dropped)
            _each(
                [k for k in _RUN_KEYED if k in tables],
                lambda key: DeltaTable.forName(spark, ctx.table(key)).delete(gone),
            )
        if removed:
            DeltaTable.forName(spark, ctx.table("runs")).update(
                F.col("run_id").isin(removed), {"status": F.lit(REMOVED)}
            )
        for run_id in removed:
            shutil.rmtree(ctx.workdir / ctx.config.catalog.reports_dir / run_id, True)
    if params.remove_checkpoints:
        _remove_checkpoints(ctx)
    compacted = [key for key in tables if key not in _RUN_KEYED]
    with ctx.step(f"compacted {len(compacted)} tables (OPTIMIZE)"):
        below = params.compact_files_below_mib * 2**20
        spark.conf.set("spark.databricks.delta.optimize.minFileSize", str(below))
        _each(compacted, lambda key: spark.sql(f"OPTIMIZE {ctx.table(key)}"))
    with ctx.step(f"vacuumed them, keeping {params.vacuum_retention_hours:g} hours of history"):
        # Delta 4 ignores RETAIN (but 0) in favour of each table's
        # delta.deletedFileRetentionDuration unless told not to; and it lists a table's files
        # with one task per spark.sql.sources.parallelPartitionDiscovery.parallelism
        # (10,000: half a minute per small table here).
        spark.conf.set("spark.databricks.delta.vacuum.retentionWindowIgnore.enabled", "false")
        # No VACUUM START / END commits in each table's history: two per table and maintain
        # (40 with 20 tables) lengthened every log and took half of VACUUM's work
        # (docs/operations.md). What maintain did is its stage_runs row.
        spark.conf.set("spark.databricks.delta.vacuum.logging.enabled", "false")
        parallelism = str(ctx.config.spark.shuffle_partitions)
        spark.conf.set("spark.sql.sources.parallelPartitionDiscovery.parallelism", parallelism)
        if params.vacuum_retention_hours < SAFE_RETENTION_HOURS:
            spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
        retain = f"RETAIN {params.vacuum_retention_hours:g} HOURS"
        _each(tables, lambda key: spark.sql(f"VACUUM {ctx.table(key)} {retain}"))
    after = _warehouse_bytes(ctx)
    return StageResult(
        rows_in=len(removed) + len(keep),
        rows_out=len(keep),
        rows_dropped={"runs_removed": len(removed)},
        output_versions={key: table_version(spark, ctx.table(key)) for key in tables},
        summary=[
            f"kept the rows of {len(keep)} runs: {', '.join(sorted(keep))}",
            f"removed {len(removed)} runs: {', '.join(removed) or 'none'}",
            f"warehouse: {before / 2**20:,.1f} MiB before, {after / 2**20:,.1f} MiB after"
            " (files a deletion unreferences go once older than the retention)",
        ],
    )


def _each(tables: list[str], command: Callable[[str], object]) -> None:
    """command(key) for every table, _TABLES_AT_ONCE at a time. After an error no other
    table starts: the commands running finish, then the error is raised (as the loop over
    one table at a time stopped at the first)."""
    waiting = iter(tables)
    with ThreadPoolExecutor(_TABLES_AT_ONCE, thread_name_prefix="maintain") as pool:
        running = {pool.submit(command, key) for key in itertools.islice(waiting, _TABLES_AT_ONCE)}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
            running |= {pool.submit(command, key) for key in itertools.islice(waiting, len(done))}


def _warehouse_bytes(ctx: StageContext) -> int:
    """Bytes under the database's location (every table's data and log)."""
    info = ctx.spark.sql(f"DESCRIBE DATABASE {ctx.config.catalog.database}").collect()
    location = next(r.info_value for r in info if r.info_name == "Location")
    path, fs = hadoop_path(ctx.spark, location)
    return int(fs.getContentSummary(path).getLength())


def _remove_checkpoints(ctx: StageContext) -> None:
    """The softmax checkpoint files, unless the latest train run failed (kept for --resume)."""
    last = ctx.spark.table(ctx.table("runs")).orderBy(F.desc("started_at")).first()
    directory = ctx.workdir / ctx.config.train.checkpoint_dir
    if last is None or last.status == "failed" or not directory.is_dir():
        return
    files = [p for p in directory.iterdir() if p.is_file()]
    for path in files:
        path.unlink()
    ctx.log.info(f"  removed {len(files)} checkpoint files from {directory}")


STAGE = Stage(name="maintain", add_arguments=add_arguments, run=run, check=check)


def main() -> None:
    raise SystemExit(run_stages([STAGE]))


if __name__ == "__main__":
    main()
