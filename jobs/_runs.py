"""What evaluate and report read of a published train run: its row, its inputs, its phi.

A run is named by ``--run-id`` or, by default, is the current one (what the views show:
skillrank.promotion). Its inputs are the shard set its ``runs.input_manifest`` lists and the
``profiles`` table at the Delta version that shard set was written from, so evaluating an
older run reads what that run was trained on, not what a later prepare wrote.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import torch
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from jobs._cli import StageContext, StageError, local_table_dir, require_table, run_id_of
from jobs._delta_log import live_rows, live_table
from skillrank.config import Config
from skillrank.evaluate import CoCounts, Method
from skillrank.families import FAMILIES
from skillrank.promotion import REJECTED, current_run_sql
from skillrank.shards import Manifest
from skillrank.tables import SPECS, conform, table_name, table_version
from skillrank.trainer import EpochRecord, count_split

T = TypeVar("T")


def add_run_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-id",
        type=run_id_of("train"),
        help="train run to use (default: the current run)",
        default=None,
    )


def check_trained(args: argparse.Namespace, config: Config) -> None:
    """Fail before Spark starts when nothing was ever trained in the work directory, when
    no run succeeded, or when --run-id names no run that can be used."""
    statuses = run_statuses(args, config)
    if statuses is None:
        return
    runs = table_name(config, "runs")
    if args.run_id is not None:
        problem = unusable_run(args.run_id, statuses.get(args.run_id), runs)
        if problem is not None:
            raise StageError(problem)
    elif "succeeded" not in statuses.values():
        raise StageError(_no_succeeded_run(runs))


def run_statuses(args: argparse.Namespace, config: Config) -> dict[str, str] | None:
    """Each train run's status, read before Spark starts: StageError when the work
    directory has no runs table; None where its rows cannot be read without Spark (tables
    not in a local warehouse, a Delta feature jobs._delta_log does not read), so that the
    stage finds out after Spark starts."""
    require_runs(args, config)
    table_dir = local_table_dir(args, config, "runs")
    rows = None if table_dir is None else live_rows(table_dir, ["run_id", "status"])
    return None if rows is None else {str(r["run_id"]): str(r["status"]) for r in rows}


def small_table(ctx: StageContext, key: str, columns: list[str]) -> pa.Table:
    """`columns` of table `key`, a table of a few rows (`stage_runs`, `ingested_files`), with
    timestamps as UTC instants: read from its Delta log and files under the embedded default
    (jobs._delta_log), else by Spark. In `all`, Spark's two reads of report's metadata kept
    the JVM busy for 6.5 core-seconds beside the figures (2026-12-04)."""
    table_dir = local_table_dir(ctx.args, ctx.config, key)
    table = None if table_dir is None else live_table(table_dir, columns)
    if table is None:
        table = ctx.spark.table(ctx.table(key)).select(*columns).toArrow()
    utc = pa.timestamp("us", tz="UTC")
    return pa.table(
        {
            c: table[c].cast(utc) if pa.types.is_timestamp(table[c].type) else table[c]
            for c in columns
        }
    )


def require_runs(args: argparse.Namespace, config: Config) -> None:
    """Fail before Spark starts when the work directory has no runs table."""
    require_table(args, config, "runs", "no train run", "train")


def unusable_run(run_id: str, status: str | None, runs: str) -> str | None:
    """Why --run-id `run_id` (whose status is `status`; None when table `runs` has no such
    run) cannot be evaluated or reported; None when it can."""
    if status is None:
        return f"--run-id {run_id}: no such run in {runs}"
    if status not in ("succeeded", REJECTED):
        return f"--run-id {run_id}: the run is {status}, not succeeded"
    return None


def _no_succeeded_run(runs: str) -> str:
    return f"no succeeded train run in {runs}: run train first"


def resolve_run(ctx: StageContext) -> Row:
    """The runs row of --run-id (a succeeded or a rejected run), or of the current run;
    StageError if there is none."""
    wanted, runs = ctx.args.run_id, ctx.table("runs")
    if wanted is None:
        row = current_run(ctx)
        if row is None:
            raise StageError(_no_succeeded_run(runs))
        return row
    row = ctx.spark.table(runs).where(F.col("run_id") == wanted).first()
    problem = unusable_run(wanted, None if row is None else row.status, runs)
    if problem is not None:
        raise StageError(problem)
    assert row is not None  # unusable_run: no such run
    return row


def current_run(ctx: StageContext) -> Row | None:
    """The runs row of the current run (skillrank.promotion); None before any succeeded.
    The stage declares run_events first (work directories trained before it existed)."""
    current = current_run_sql(ctx.table("runs"), ctx.table("run_events"))
    return ctx.spark.sql(f"SELECT * FROM {ctx.table('runs')} WHERE run_id = {current}").first()


def record_event(ctx: StageContext, run_id: str, event: str, actor: str, reason: str) -> None:
    """Append one row to run_events (the story of the current run)."""
    row = Row(run_id=run_id, event=event, at=datetime.now(UTC), actor=actor, reason=reason)
    df = ctx.spark.createDataFrame([row], SPECS["run_events"].schema)
    conform(df, "run_events").write.insertInto(ctx.table("run_events"))


def run_manifest(ctx: StageContext, run: Row) -> Manifest:
    """The shard set the run was trained on; StageError when a later prepare removed it."""
    root = ctx.workdir / ctx.config.catalog.shards_dir
    manifest = Manifest.parse(run.input_manifest, root, f"run {run.run_id}'s input_manifest")
    missing = [p for files in manifest.shards.values() for p in files if not p.is_file()]
    if missing:
        raise StageError(
            f"run {run.run_id} was trained on shard set {manifest.prepare_run_id},"
            f" which is gone ({missing[0]} missing): prepare keeps only the latest sets;"
            " train again to evaluate on the current data"
        )
    return manifest


def profile_segments(
    ctx: StageContext, manifest: Manifest, split: str
) -> dict[str, tuple[str | None, str | None]]:
    """profile_id -> (city, industry) codes (None where unknown) of every profile of a split
    of the run's shards, read from `profiles` at the Delta version the shards were written
    from."""
    version = manifest.delta_versions.get("profiles")
    sql = f"SELECT profile_id, city, industry FROM {ctx.table('profiles')}"
    if version is not None:
        sql += f" VERSION AS OF {int(version)}"
    try:
        table = ctx.spark.sql(f"{sql} WHERE split = '{split}'").toArrow()
    except Exception as exc:
        if version is None or not _FILES_GONE.search(str(exc)):
            raise
        raise StageError(
            f"{ctx.table('profiles')} at version {version}, which the shards of"
            f" {manifest.prepare_run_id} were written from, has lost files to VACUUM (maintain"
            " removes what OPTIMIZE replaced once it is older than the retention): run"
            " prepare again, then train on its shards"
        ) from exc
    ids, cities, industries = (table.column(c).to_pylist() for c in table.column_names)
    return dict(zip(ids, zip(cities, industries, strict=True), strict=True))


# How Spark and Delta say that a data file of a table version is gone.
_FILES_GONE = re.compile("FileNotFound|FAILED_READ_FILE|DELTA_FILE_NOT_FOUND")


def segments_of_test_profiles(ctx: StageContext, manifest: Manifest) -> dict[str, tuple[str, ...]]:
    """profile_id -> ('city=<code>', 'industry=<code>') of every test profile of the run."""
    return {
        profile_id: tuple(
            f"{name}={value}"
            for name, value in zip(("city", "industry"), codes, strict=True)
            if value is not None
        )
        for profile_id, codes in profile_segments(ctx, manifest, "test").items()
    }


def replace_run_rows(
    ctx: StageContext, key: str, rows: DataFrame, run_id: str, fingerprint: str | None = None
) -> int:
    """Replace a run's rows of table `key` with `rows` in one Delta commit; the new version.

    ``INSERT INTO ... REPLACE WHERE`` deletes and inserts atomically: a reader sees the old
    rows or the new ones, and a rerun leaves exactly one set. The first rows of a run train
    published in this application (``hand_off_published``) are appended instead: the table
    holds none of its rows, and an append commits without computing the table's list of files
    (2.1-2.8 s against 0.4-0.7 s for a report's co-clusters, 2026-12-04). With `fingerprint`
    (a digest of everything the rows depend on, ``inputs_fingerprint``), the commit records it
    and this stage run in its user metadata, for ``standing_rows``.
    """
    rows, name = conform(rows, key), ctx.table(key)
    written = _held(ctx.handoff.published, run_id)
    view = f"_replace_{key}"
    if fingerprint is not None:
        ctx.spark.conf.set(_USER_METADATA, json.dumps([ctx.run_id, fingerprint]))
    try:
        if written is not None and key not in written:
            rows.write.insertInto(name)
        else:
            rows.createOrReplaceTempView(view)
            sql = f"INSERT INTO {name} REPLACE WHERE run_id = '{run_id}' SELECT * FROM {view}"
            ctx.spark.sql(sql)
    finally:
        ctx.spark.conf.unset(_USER_METADATA)
        ctx.spark.catalog.dropTempView(view)
    if written is not None:
        written.add(key)
    return table_version(ctx.spark, name)


# The session setting whose value Delta writes into the next commit's commitInfo.userMetadata.
_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


def standing_rows(ctx: StageContext, key: str, run_id: str, fingerprint: str) -> str | None:
    """The stage run whose ``replace_run_rows`` of run_id's rows with `fingerprint` made the
    latest commit of table `key`, else None. Its rows stand: nothing they depend on has
    changed, and nothing was written to the table since. None at once for a run train
    published in this application (``hand_off_published``): none of its rows were written
    before."""
    if _held(ctx.handoff.published, run_id) is not None:
        return None
    latest = DeltaTable.forName(ctx.spark, ctx.table(key)).history(1).first()
    try:
        stage_run, recorded = json.loads(latest.userMetadata) if latest else (None, None)
    except (TypeError, ValueError):  # no metadata, or not this function's
        return None
    return stage_run if recorded == fingerprint else None


def hand_off_phi(ctx: StageContext, run_id: str, phi_t: torch.Tensor) -> None:
    """Leave the phi_t of run_id (published by train, or read by ``load_phi``) to the later
    stages of this application (``load_phi``); only the latest run's, so one phi is kept at
    most."""
    ctx.handoff.phi = (run_id, phi_t)


def _held(slot: tuple[str, T] | None, key: str) -> T | None:
    """What a Handoff slot holds when it was left for `key` (a run id), else None."""
    return slot[1] if slot is not None and slot[0] == key else None


def hand_off_published(ctx: StageContext, run_id: str) -> None:
    """Record that train published run_id in this application: no stage has written rows
    keyed by it to evaluation or coclusters (``replace_run_rows``)."""
    ctx.handoff.published = (run_id, set())


def hand_off_history(ctx: StageContext, run_id: str, history: list[EpochRecord]) -> None:
    """Leave the epochs of the run train published to the later stages of this application
    (``training_history``)."""
    ctx.handoff.history = (run_id, history)


def training_history(ctx: StageContext, run_id: str) -> list[EpochRecord]:
    """The run's epochs in order: those train handed off earlier in this application, else
    read from the table."""
    if (history := _held(ctx.handoff.history, run_id)) is not None:
        return history
    table = ctx.spark.table(ctx.table("training_history")).where(F.col("run_id") == run_id)
    # A few rows: sorted here, without the sampling job of a Spark sort.
    rows = table.drop("run_id").toArrow().to_pylist()
    return sorted((EpochRecord(**row) for row in rows), key=lambda r: r.epoch)


def hand_off_counts(ctx: StageContext, manifest: Manifest, counts: CoCounts) -> None:
    """Leave the co-occurrence counts of the manifest's train split to the later stages of
    this application (``training_counts``)."""
    ctx.handoff.counts = (manifest.prepare_run_id, counts)


def training_counts(ctx: StageContext, manifest: Manifest, batch_size: int) -> CoCounts:
    """The co-occurrence counts of the manifest's train split: those train counted earlier
    in this application on the same shards (``hand_off_counts``; callers must not change
    them in place), else counted now in batches of `batch_size` profiles."""
    if (counts := _held(ctx.handoff.counts, manifest.prepare_run_id)) is not None:
        ctx.log.info(f"  training counts of {manifest.prepare_run_id}: as train counted them")
        return counts
    return count_split(manifest, "train", batch_size)


# The columns of a run's published tables that evaluate and report read
# (``ranking_columns``): names are left out, the vocabularies give them.
RANKING_COLUMNS = {
    "job_skill_rank": (
        *("job_id", "skill_id", "rank", "probability", "probability_low", "probability_high"),
        "support",
    ),
    "job_skill_rank_by_segment": (
        *("segment_type", "segment", "job_id", "skill_id", "rank", "profiles", "probability"),
        *("probability_low", "probability_high", "lift"),
    ),
    "job_neighbors": ("job_id", "rank", "neighbor_job_id", "similarity"),
    "skill_background": ("skill_id", "weight", "probability"),
}


def ranking_schema(key: str) -> pa.Schema:
    """The Arrow schema of RANKING_COLUMNS[key], typed as the table declares them."""
    fields = {f.name: f for f in SPECS[key].schema}
    return to_arrow_schema(StructType([fields[name] for name in RANKING_COLUMNS[key]]))


def hand_off_rankings(ctx: StageContext, run_id: str, tables: dict[str, pa.Table]) -> None:
    """Leave RANKING_COLUMNS of the rankings train published for run_id (one Arrow table per
    key, ``ranking_schema``) to the later stages of this application (``ranking_columns``)."""
    ctx.handoff.rankings = (run_id, tables)


def ranking_columns(ctx: StageContext, key: str, run_id: str) -> pa.Table:
    """RANKING_COLUMNS[key] of the run's rows of table `key`, in no given order: those train
    handed off earlier in this application, else read from the table."""
    if (tables := _held(ctx.handoff.rankings, run_id)) is not None:
        return tables[key]
    rows = ctx.spark.table(ctx.table(key)).where(F.col("run_id") == run_id)
    return rows.select(*RANKING_COLUMNS[key]).toArrow()


def hand_off_evaluation(ctx: StageContext, run_id: str, rows: list[dict[str, Any]]) -> None:
    """Leave the evaluation rows of run_id (as dicts, without the run id) that evaluate wrote
    or kept to the later stages of this application (``evaluation_rows``)."""
    ctx.handoff.evaluation = (run_id, rows)


def evaluation_rows(ctx: StageContext, run_id: str) -> list[dict[str, Any]]:
    """The run's evaluation rows as dicts without the run id: those evaluate handed off
    earlier in this application, else read from the table."""
    if (rows := _held(ctx.handoff.evaluation, run_id)) is not None:
        return rows
    table = ctx.spark.table(ctx.table("evaluation")).where(F.col("run_id") == run_id)
    return table.drop("run_id").toArrow().to_pylist()


def load_phi(ctx: StageContext, run: Row) -> torch.Tensor:
    """The run's phi as phi_t (jobs x skills, float32): the tensor train published or an
    earlier stage read in this application (``hand_off_phi``: the same values, so callers
    must not change it in place), else read from the Delta table `phi`, and handed off in
    turn when no phi is held yet: after a train that kept its run, report takes the one
    evaluate read, while a run of another family that evaluate scores beside it never
    displaces the one train published.

    Spark names the Parquet files of the run's partition in the table's current snapshot
    (deleted rows never come back); pyarrow reads them batch by batch into one dense array,
    so memory holds phi plus one record batch.
    """
    if (held := _held(ctx.handoff.phi, run.run_id)) is not None:
        ctx.log.info(f"  phi of {run.run_id}: as an earlier stage of this application had it")
        return held
    phi = ctx.spark.table(ctx.table("phi")).where(F.col("run_id") == run.run_id)
    files = phi.inputFiles()
    if not files:
        raise StageError(f"run {run.run_id} has no rows in {ctx.table('phi')}")
    fs, _ = pafs.FileSystem.from_uri(files[0])
    paths = [pafs.FileSystem.from_uri(f)[1] for f in files]
    phi_t = np.full((run.jobs, run.skills), np.nan, dtype=np.float32)
    dataset = pads.dataset(paths, format="parquet", filesystem=fs)
    for batch in dataset.to_batches(columns=["job_id", "weights"]):
        weights = batch.column(1)
        if not (weights.value_lengths().to_numpy() == run.skills).all():
            raise StageError(
                f"{ctx.table('phi')} holds a row of other than {run.skills} weights for run"
                f" {run.run_id}"
            )
        values = weights.flatten().to_numpy()
        phi_t[batch.column(0).to_numpy()] = values.reshape(batch.num_rows, run.skills)
    if np.isnan(phi_t).any():
        raise StageError(
            f"{ctx.table('phi')} lacks jobs of run {run.run_id} (or holds NaN): expected one"
            f" row for each of its {run.jobs} jobs"
        )
    phi_read = torch.from_numpy(phi_t)
    if ctx.handoff.phi is None:
        hand_off_phi(ctx, run.run_id, phi_read)
    return phi_read


def load_model(ctx: StageContext, run: Row, name: str = "model") -> tuple[Method, Method]:
    """The run's model as two evaluation methods named `name`: its predictions of a profile
    (its family's ``method``, skillrank.families: phi, the background from `skill_background`,
    the family and background weight from `runs`), and the ranking SkillRank publishes (phi's
    rows as they are). A run published before model families existed is the paper's softmax
    without a background (no skill_background rows: zeros)."""
    phi_t = load_phi(ctx, run)
    rows = ranking_columns(ctx, "skill_background", run.run_id)
    background = torch.zeros(run.skills, dtype=torch.float32)
    if rows.num_rows:
        if rows.num_rows != run.skills:
            raise StageError(
                f"{ctx.table('skill_background')} holds {rows.num_rows} rows for run"
                f" {run.run_id}, expected {run.skills}"
            )
        ids = torch.from_numpy(rows["skill_id"].to_numpy().astype(np.int64))
        background[ids] = torch.from_numpy(rows["weight"].to_numpy().astype(np.float32))
    lam = float((run.hyperparameters or {}).get("background_weight", 0.0))
    prediction = FAMILIES[run.model or "softmax"].method(phi_t, background, lam, name)
    return prediction, Method(name, phi_t, "sum")


def sibling_runs(ctx: StageContext, run: Row) -> list[Row]:
    """The latest succeeded run of each other model family trained on the same shard set as
    `run` (same prepare run), to be scored beside it."""
    prepare_run = _shard_set(run)
    runs = ctx.spark.table(ctx.table("runs")).where(
        (F.col("status") == "succeeded") & F.col("model").isNotNull()
    )
    latest: dict[str, Row] = {}
    for row in runs.orderBy("ended_at").collect():
        if _shard_set(row) == prepare_run and row.model != (run.model or "softmax"):
            latest[row.model] = row
    return [latest[model] for model in sorted(latest)]


def _shard_set(run: Row) -> str:
    """The prepare run whose shards a train run read."""
    return Manifest.parse(run.input_manifest, Path(), f"run {run.run_id}'s manifest").prepare_run_id
