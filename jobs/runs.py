"""runs: list the train runs, show one, and choose which one the views show.

    ./spark-submit.sh runs [list]                          every run, newest first
    ./spark-submit.sh runs show RUN_ID                     one run, its gate verdict, its events
    ./spark-submit.sh runs promote RUN_ID [--reason TEXT]  make it the current run
    ./spark-submit.sh runs pin RUN_ID [--reason TEXT]      hold the views on it
    ./spark-submit.sh runs unpin [--reason TEXT]           let the latest promotion decide again

The current run is the one the views show (skillrank.promotion, docs/operations.md). promote
takes a succeeded run (a rollback) or a rejected one (a gate overridden on purpose: the run
turns 'succeeded', its gate verdict stays); pin takes a succeeded run and holds the views on
it whatever later runs do, until unpin. Each of the three is a row of run_events, with the
user who ran it and the --reason.
"""

from __future__ import annotations

import argparse
import getpass

from delta.tables import DeltaTable
from pyspark.sql import Row
from pyspark.sql import functions as F

from jobs._cli import Stage, StageContext, StageError, StageResult, run_id_of, run_stages
from jobs._runs import current_run, record_event, run_statuses
from skillrank.config import Config
from skillrank.promotion import PINNED, PROMOTED, REJECTED, UNPINNED, pinned_run_sql
from skillrank.tables import declare_tables, table_name

ACTIONS = ("list", "show", "promote", "pin", "unpin")
_NEED_RUN = ("show", "promote", "pin")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", default="list", choices=ACTIONS)
    parser.add_argument(
        "target", nargs="?", metavar="RUN_ID", type=run_id_of("train"), help="train run"
    )
    parser.add_argument("--reason", default="", help="why (promote, pin, unpin): in run_events")


def check(args: argparse.Namespace, config: Config) -> None:
    if args.action in _NEED_RUN and args.target is None:
        raise StageError(f"runs {args.action} needs a RUN_ID (see: runs list)")
    if args.action not in _NEED_RUN and args.target is not None:
        raise StageError(f"runs {args.action} takes no RUN_ID, got {args.target!r}")
    statuses = run_statuses(args, config)
    if statuses is not None and args.target is not None:
        problem = _refusal(args.action, args.target, statuses.get(args.target), config)
        if problem is not None:
            raise StageError(problem)


def _refusal(action: str, target: str, status: str | None, config: Config) -> str | None:
    """Why `runs action target` cannot be done on a run whose status is `status` (None when
    there is no such run); None when it can."""
    if status is None:
        return f"no run {target!r} in {table_name(config, 'runs')} (see: runs list)"
    if action == "pin" and status != "succeeded":
        hint = f" (promote it first: runs promote {target})" if status == REJECTED else ""
        return f"run {target} is {status}: only a succeeded run can be pinned{hint}"
    if action == "promote" and status not in ("succeeded", REJECTED):
        return f"run {target} is {status}: only a complete run can be promoted"
    return None


def run(ctx: StageContext) -> StageResult:
    declare_tables(ctx.spark, ctx.config, ["run_events"])  # runs trained before it existed
    runs = ctx.spark.table(ctx.table("runs"))
    current = current_run(ctx)
    pin = _pinned(ctx)
    action, target = ctx.args.action, ctx.args.target
    if action == "list":
        rows = runs.orderBy(F.desc("started_at")).collect()
        return StageResult(len(rows), 0, summary=_listing(rows, current, pin))
    row = None if target is None else runs.where(F.col("run_id") == target).first()
    if target is not None:
        problem = _refusal(action, target, None if row is None else row.status, ctx.config)
        if problem is not None:
            raise StageError(problem)
    if action == "show":
        assert row is not None  # check(): show, pin and promote name a run
        events = (
            ctx.spark.table(ctx.table("run_events"))
            .where(F.col("run_id") == target)
            .orderBy("at")
            .collect()
        )
        return StageResult(1 + len(events), 0, summary=_details(row, current, pin, events))
    actor, reason = getpass.getuser(), ctx.args.reason
    if action == "unpin":
        if pin is None:
            raise StageError("no run is pinned")
        record_event(ctx, pin, UNPINNED, actor, reason)
    elif action == "pin":
        record_event(ctx, target, PINNED, actor, reason)
    else:  # promote
        assert row is not None  # check(): promote names a run
        if row.status == REJECTED:
            DeltaTable.forName(ctx.spark, ctx.table("runs")).update(
                F.col("run_id") == target, {"status": F.lit("succeeded")}
            )
        record_event(ctx, target, PROMOTED, actor, reason)
    now = current_run(ctx)
    held = _pinned(ctx)
    summary = [f"{action} {target or pin}: recorded in {ctx.table('run_events')} (by {actor})"]
    summary.append(f"current run: {now.run_id if now else 'none'}" + (" (pinned)" if held else ""))
    return StageResult(1, 1, summary=summary)


def _pinned(ctx: StageContext) -> str | None:
    """The run a pin holds the views on, or None."""
    row = ctx.spark.sql(f"SELECT {pinned_run_sql(ctx.table('run_events'))}").first()
    assert row is not None  # a SELECT without FROM has one row
    return row[0]


def _listing(rows: list[Row], current: Row | None, pin: str | None) -> list[str]:
    lines = [f"{len(rows)} train runs, newest first; * = current (what the views show)"]
    for r in rows:
        mark = "*" if current is not None and r.run_id == current.run_id else " "
        pinned = " pinned" if r.run_id == pin else ""
        verdict = f" gate: {r.gate}" if r.gate else ""
        error = f" error: {r.error}" if r.error else ""
        lines.append(
            f"{mark} {r.run_id} {r.status}{pinned} model={r.model}"
            f" validation_loss={_number(r.validation_loss)}"
            f" validation_ndcg={_number(r.validation_ndcg)}{verdict}{error}"
        )
    return lines


def _details(row: Row, current: Row | None, pin: str | None, events: list[Row]) -> list[str]:
    role = "current" if current is not None and row.run_id == current.run_id else "not current"
    lines = [f"{row.run_id}: {row.status}, {role}{', pinned' if row.run_id == pin else ''}"]
    for key in (
        "model", "started_at", "ended_at", "epochs_run", "best_epoch", "train_loss",
        "validation_loss", "validation_ndcg", "cooccurrence_validation_ndcg", "test_loss",
        "gate", "error",
    ):  # fmt: skip
        lines.append(f"  {key}: {_number(row[key]) if isinstance(row[key], float) else row[key]}")
    lines += [
        f"  event {e.at:%Y-%m-%d %H:%M:%S} {e.event} by {e.actor}: {e.reason}" for e in events
    ]
    return lines


def _number(value: float | None) -> str:
    return "null" if value is None else f"{value:.6g}"


STAGE = Stage(name="runs", add_arguments=add_arguments, run=run, check=check)


def main() -> None:
    raise SystemExit(run_stages([STAGE]))


if __name__ == "__main__":
    main()
