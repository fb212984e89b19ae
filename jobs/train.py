"""train: learn phi from the shards that prepare wrote, then publish it and its rankings.

    ./spark-submit.sh train [--workdir DIR] [--resume] [--device cpu|cuda] [--conf train.KEY=VALUE]

Reads only <workdir>/<catalog.shards_dir>/manifest.json and the files it lists; writes a
checkpoint after every epoch to <workdir>/<train.checkpoint_dir>/checkpoint.pt (see
docs/trainer.md). `--resume` continues from that checkpoint. Then publishes, under this
run's run_id, the Delta tables runs, training_history, phi, job_skill_rank, skill_job_rank,
job_neighbors and skill_neighbors, the current_* views (docs/tables.md) and the analysts'
views and skill_gap function (docs/sql.md). The run's
`runs` row leaves 'running' only after every table is written; a failed run deletes what
it wrote and is marked 'failed', so the views never show it. A complete run then meets the
promotion gates (publish.gate_*, skillrank.promotion): it turns 'succeeded' and becomes the
current run, or it is kept as 'rejected' and the stage exits 3 (docs/operations.md).
When the current run was trained on the same shard set with the same settings, device and
code (`runs.inputs_fingerprint`), a run without `--resume` trains and writes nothing: that
run stands (docs/tables.md, "How reruns behave").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from delta.tables import DeltaTable
from py4j.protocol import Py4JJavaError
from pyspark.ml.torch.distributor import TorchDistributor
from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F

from jobs._cli import (
    LogWriter,
    Stage,
    StageContext,
    StageError,
    StageResult,
    inputs_fingerprint,
    run_stages,
)
from jobs._runs import (
    RANKING_COLUMNS,
    current_run,
    hand_off_counts,
    hand_off_history,
    hand_off_phi,
    hand_off_published,
    hand_off_rankings,
    profile_segments,
    ranking_schema,
    record_event,
)
from skillrank import rankings
from skillrank.config import Config, TrainConfig
from skillrank.families import FAMILIES
from skillrank.model import Batch
from skillrank.promotion import (
    EXIT_REJECTED,
    GATE,
    PROMOTED,
    REJECTED,
    RunScores,
    gate_reasons,
)
from skillrank.publish import (
    RUN_TABLES,
    named_neighbors,
    ranked_pairs,
)
from skillrank.segments import SegmentFit, fit_segments, segment_kl, segment_rankings
from skillrank.session import local_path, resolve_path
from skillrank.shards import Manifest, iterate_batches
from skillrank.tables import SPECS, conform, declare_tables, table_version
from skillrank.trainer import (
    SELECTION_K,
    TrainResult,
    clear_process_errors,
    cooccurrence_validation_ndcg,
    count_split,
    process_errors,
    score_split,
    train_process,
    with_best_phi,
)
from skillrank.views import declare_views

CHECKPOINT_FILE = "checkpoint.pt"
# Jobs (rows of phi) per block when staging phi: bounds the memory of one block (block x
# skills floats) on the driver; rankings.RANK_BLOCK does the same for the rankings.
_PHI_BLOCK_JOBS = 256
# Bytes per staged Parquet file (phi's weights are J x S floats: 770 MB at paper scale).
_STAGED_FILE_BYTES = 96 << 20
# The codec of phi's Parquet files (Spark's session setting; a Delta write takes no option):
# zstd packs a paper-scale run's weights into 147 MiB against snappy's 437 (their exponents
# and leading bits repeat, which an entropy coder finds and snappy does not), and the append
# took as long, 9.7-10.4 s against 9.7-13.9 s (2026-12-04, 2 cores, the staged weights of a
# paper-scale run appended to a Delta table, two runs each).
_CODEC_SETTING = "spark.sql.parquet.compression.codec"
_PHI_CODEC = "zstd"
# Profiles per batch of a segment pass.
_SEGMENT_BATCH = 16384
# The profile columns a segment can come from, in the order profile_segments gives them.
_SEGMENT_COLUMNS = ("city", "industry")


@dataclass(frozen=True)
class Segments:
    """The mixture's segment fit: names[g] = (segment_type, segment); theta = exp(phi_t);
    strengths[g]: the prior strength chosen for segment g's type."""

    names: list[tuple[str, str]]
    fit: SegmentFit
    theta: torch.Tensor
    strengths: torch.Tensor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--device", help="cpu or cuda (default: train.device of the config)")


def _paths(workdir: Path, config: Config) -> tuple[Path, Path]:
    manifest = workdir / config.catalog.shards_dir / "manifest.json"
    checkpoint = workdir / config.train.checkpoint_dir / CHECKPOINT_FILE
    return manifest, checkpoint


def check_options(args: argparse.Namespace, config: Config) -> None:
    """Fail fast, before Spark starts, on options the model family does not take."""
    model, device = config.train.model, args.device or config.train.device
    family = FAMILIES[model]
    if args.resume and not family.resumable:
        resumable = " or ".join(name for name, f in FAMILIES.items() if f.resumable)
        raise StageError(f"--resume applies to train.model={resumable}; a {model} fit starts over")
    processes = config.train.num_processes
    if device == "cuda" and (processes == 1 or config.train.local_mode):
        # NCCL takes one GPU per process; processes on the executors use theirs.
        gpus = torch.cuda.device_count()
        if gpus < processes:
            raise StageError(
                f"--device cuda with {processes} training process(es) on this machine needs"
                f" {processes} GPU(s) (one per process), torch sees {gpus}"
            )


def check(args: argparse.Namespace, config: Config) -> None:
    """Fail fast, before Spark starts, on bad options or when there is nothing to train on or
    resume from."""
    check_options(args, config)
    manifest, checkpoint = _paths(Path(args.workdir).resolve(), config)
    if not manifest.is_file():
        raise StageError(f"no training shards: {manifest} does not exist (run prepare first)")
    if args.resume and not checkpoint.is_file():
        raise StageError(f"--resume: no checkpoint at {checkpoint}")
    try:
        shard_set = Manifest.read(manifest)
    except ValueError as exc:
        raise StageError(str(exc)) from exc
    processes = config.train.num_processes
    if processes > 1:
        shards = len(shard_set.split_files["train"])
        if shards < processes:
            raise StageError(
                f"train.num_processes={processes}, but the train split has {shards} shard"
                " files: each process needs at least one (lower prepare.rows_per_shard and"
                " rerun prepare)"
            )


def run(ctx: StageContext) -> StageResult:
    manifest_path, checkpoint = _paths(ctx.workdir, ctx.config)
    manifest_text = manifest_path.read_text(encoding="utf-8")
    manifest = Manifest.parse(manifest_text, manifest_path.parent, str(manifest_path))
    declare_tables(ctx.spark, ctx.config, ["runs", "run_events", *RUN_TABLES])
    device = ctx.args.device or ctx.config.train.device
    declare_views(ctx.spark, ctx.config)
    _discard_interrupted(ctx)
    config = ctx.config.to_dict()
    fingerprint = inputs_fingerprint({key: config[key] for key in _READ_SECTIONS}, device)
    # Read once: one SkillRank process at a time uses the work directory (the launcher's
    # lock), so no other run becomes current before this one's gates compare with it.
    current = current_run(ctx)
    standing = None if ctx.args.resume else _standing_run(current, manifest_text, fingerprint)
    if standing is not None:
        return StageResult(
            rows_in=0,
            rows_out=0,
            summary=[
                f"nothing changed since train run {standing.run_id} (shard set"
                f" {manifest.prepare_run_id}, settings, device and code): it stands as the"
                " current run"
            ],
        )
    _insert_run(ctx, device, manifest, manifest_text, fingerprint)
    try:
        with ctx.step("trained (epochs, checkpoints)"):
            result = _train(ctx, manifest_path, checkpoint, device)
        with ctx.step("scored the test split (test loss)"):
            test_loss = _test_loss(ctx.config.train, manifest_path, result)
        segments = None
        if FAMILIES[ctx.config.train.model].segment_rows:
            with ctx.step("fitted the segment rows and the pooled rows' credit"):
                segments = _fit_segments(ctx, manifest_path, result)
        batch_size = ctx.config.evaluate.batch_size
        with ctx.step("counted the training split's (title, skill) pairs"):
            counts = count_split(manifest, "train", batch_size)
        with ctx.step("scored co-occurrence counting on the validation split (a gate)"):
            cooccurrence_ndcg = cooccurrence_validation_ndcg(
                counts, manifest, ctx.config.evaluate.smoothing, batch_size
            )
        with ctx.step("published phi and rankings"):
            published = _publish(ctx, result, manifest, segments, counts.pair, device)
        hand_off_phi(ctx, ctx.run_id, result.phi_t)
        hand_off_rankings(ctx, ctx.run_id, published)
        hand_off_history(ctx, ctx.run_id, result.history)
        hand_off_published(ctx, ctx.run_id)
        hand_off_counts(ctx, manifest, counts)
        outcome = _run_outcome(result, test_loss)
        reasons = gate_reasons(
            RunScores(ctx.run_id, **{k: outcome[k] for k in _SCORES}),
            cooccurrence_ndcg,
            _scores(current),
            ctx.config.publish,
        )
        verdict = "; ".join(reasons) or "passed"
        outcome |= {"cooccurrence_validation_ndcg": cooccurrence_ndcg, "gate": verdict}
        _update_run(ctx, outcome | {"status": REJECTED if reasons else "succeeded"})
        record_event(ctx, ctx.run_id, REJECTED if reasons else PROMOTED, GATE, verdict)
    except BaseException as exc:
        _discard(ctx, str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
        raise
    jobs, skills = result.phi_t.shape
    return StageResult(
        rows_in=manifest.rows["train"],
        rows_out=jobs * skills,
        input_versions=manifest.delta_versions,
        output_versions={
            key: table_version(ctx.spark, ctx.table(key)) for key in ("runs", *RUN_TABLES)
        },
        summary=[
            f"phi ({ctx.config.train.model}): {skills} skills x {jobs} jobs;"
            f" {result.epochs_run} epochs, best epoch {result.best_epoch}",
            f"validation NDCG@{SELECTION_K} {result.best_validation_ndcg:.6f},"
            f" validation loss {result.best_validation_loss:.6f},"
            f" test loss {test_loss:.6f}",
            f"checkpoint: {checkpoint}",
            "peak memory of this Python process (training and publishing):"
            f" {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB",
            f"co-occurrence counting's validation NDCG@{SELECTION_K}: {cooccurrence_ndcg:.6f}",
            *_verdict_lines(ctx, reasons),
        ],
        exit_code=EXIT_REJECTED if reasons else 0,
    )


# The configuration sections whose settings the stage reads: a change to any of them trains a
# new run even on the same shards (the others, such as spark.*, do not change what it writes).
_READ_SECTIONS = ("catalog", "train", "publish", "evaluate")


def _standing_run(current: Row | None, manifest_text: str, fingerprint: str) -> Row | None:
    """`current` (the current run) when training now would repeat it: trained on the same
    shard set (the same manifest, to the byte) with the same settings, device and code. A run
    has no random state beyond its seeds, so a second one would publish the same tables again."""
    if current is None or current.input_manifest != manifest_text:
        return None
    return current if current.inputs_fingerprint == fingerprint else None


# The columns of _run_outcome that the gates read.
_SCORES = ("train_loss", "validation_loss", "validation_ndcg", "test_loss")


def _scores(run: Row | None) -> RunScores | None:
    return None if run is None else RunScores(run.run_id, **{k: run[k] for k in _SCORES})


def _verdict_lines(ctx: StageContext, reasons: list[str]) -> list[str]:
    database = ctx.config.catalog.database
    if not reasons:
        return [
            f"passed the gates; published run {ctx.run_id}:"
            f" SELECT * FROM {database}.current_job_skill_rank"
        ]
    return [f"REJECTED run {ctx.run_id} (kept, not current): {reason}" for reason in reasons] + [
        "the views still show the current run; to publish this one anyway:"
        f" ./spark-submit.sh runs promote {ctx.run_id} --reason '...'"
    ]


def _train(ctx: StageContext, manifest: Path, checkpoint: Path, device: str) -> TrainResult:
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    params = ctx.config.train
    config_json = json.dumps(ctx.config.to_dict(), sort_keys=True)
    if params.num_processes > 1:
        return _train_distributed(ctx, manifest, checkpoint, device, config_json)
    try:
        return FAMILIES[params.model].fit(
            manifest,
            params,
            checkpoint,
            resume=ctx.args.resume,
            device=device,
            config_json=config_json,
            log=LogWriter(ctx.log),
        )
    except ValueError as exc:
        raise StageError(str(exc)) from exc


def _train_distributed(
    ctx: StageContext, manifest: Path, checkpoint: Path, device: str, config_json: str
) -> TrainResult:
    """train.num_processes processes started by TorchDistributor (on the driver's machine
    with train.local_mode, else in a barrier stage on the executors); rank 0 writes the
    checkpoint, from which the best phi is read here for publishing."""
    params = ctx.config.train
    distributor = TorchDistributor(
        num_processes=params.num_processes,
        local_mode=params.local_mode,
        use_gpu=torch.device(device).type == "cuda",
    )
    ctx.log.info(
        f"  {params.num_processes} processes"
        f" ({'on this machine' if params.local_mode else 'on the executors'})"
    )
    clear_process_errors(checkpoint)
    try:
        result = distributor.run(
            train_process,
            FAMILIES[params.model].fit,
            str(manifest),
            params,
            str(checkpoint),
            bool(ctx.args.resume),
            device,
            config_json,
        )
    except (RuntimeError, Py4JJavaError) as exc:  # local mode; the executors' barrier stage
        errors = process_errors(checkpoint)
        where = "above" if params.local_mode else "in the executors' stdout logs"
        cause = errors[0] if errors else f"{str(exc).strip().splitlines()[0]} (output {where})"
        raise StageError(f"distributed training failed: {cause}") from exc
    # run returns rank 0's return value: train_process's TrainResult.
    return with_best_phi(cast(TrainResult, result), checkpoint)


def _fit_segments(ctx: StageContext, manifest_path: Path, result: TrainResult) -> Segments:
    """The segment rows' credit from one E-step at the published model (skillrank.segments),
    one streamed pass over the training split; each segment type's prior strength is the one
    of train.segment_prior_strengths with the lowest validation KL (printed beside the pooled
    model's)."""
    params = ctx.config.train
    manifest = Manifest.read(manifest_path)
    codes = {split: profile_segments(ctx, manifest, split) for split in ("train", "validation")}
    columns = [(name, _SEGMENT_COLUMNS.index(name)) for name in params.segments]
    names: list[tuple[str, str]] = [
        (name, value)
        for name, column in columns
        for value in sorted(
            {v for v in (c[column] for c in codes["train"].values()) if v is not None}
        )
    ]
    index: dict[tuple[str, str | None], int] = {name: g for g, name in enumerate(names)}

    def segment_of(split: str) -> Callable[[list[str]], torch.Tensor]:
        lookup = codes[split]

        def of(profile_ids: list[str]) -> torch.Tensor:
            rows = [lookup.get(p, (None, None)) for p in profile_ids]
            return torch.tensor(
                [[index.get((name, c[column]), -1) for name, column in columns] for c in rows],
                dtype=torch.int64,
            ).view(len(rows), len(columns))

        return of

    def batches(split: str) -> Iterator[tuple[list[str], Batch]]:
        return iterate_batches(manifest.shards[split], _SEGMENT_BATCH, shuffle=False)

    theta = result.phi_t.exp()
    p0 = torch.softmax(result.background.double(), dim=0)
    lam, grid = params.background_weight, params.segment_prior_strengths
    fit = fit_segments(batches("train"), segment_of("train"), len(names), theta, p0, lam)
    kl, kl_pooled, scored = segment_kl(
        batches("validation"), segment_of("validation"), fit, theta, p0, lam, grid
    )
    chosen: dict[str, float] = {}
    for (name, _), row in zip(columns, kl, strict=True):
        best = int(np.nanargmin(row)) if scored else 0
        chosen[name] = grid[best]
        members = [g for g, (t, _) in enumerate(names) if t == name]
        rows = int((fit.profiles[members] >= params.segment_min_profiles).sum())
        ctx.log.info(
            f"  segments by {name}: {len(members)} values, {rows} (value, job) rows with"
            f" >= {params.segment_min_profiles} profiles; prior strength {grid[best]:g}:"
            f" validation KL {row[best]:.6f} (pooled rows {kl_pooled:.6f}, {scored} profiles;"
            f" by strength {', '.join(f'{v:g}: {k:.4f}' for v, k in zip(grid, row, strict=True))})"
        )
    strengths = torch.tensor([chosen[t] for t, _ in names], dtype=torch.float64)
    return Segments(names, fit, theta, strengths)


def _segment_blocks(segments: Segments, min_profiles: int, k: int) -> Iterator[dict]:
    """The rows of job_skill_rank_by_segment, named by segment type and value."""
    types = np.array([t for t, _ in segments.names], dtype=object)
    values = np.array([v for _, v in segments.names], dtype=object)
    for block in segment_rankings(
        segments.fit, segments.theta, segments.strengths, min_profiles, k
    ):
        g = block.pop("segment_index")
        yield {
            "segment_type": types[g],
            "segment": values[g],
            "prior_strength": segments.strengths.numpy()[g],
            **block,
        }


def _publish(
    ctx: StageContext,
    result: TrainResult,
    manifest: Manifest,
    segments: Segments | None,
    pairs: torch.Tensor,
    device: str,
) -> dict[str, pa.Table]:
    """Stage phi and the rankings as Parquet (block by block), then append them with Spark.

    `pairs` (J x S, CoCounts.pair of the train split) gives each ranked pair its support.
    The neighbour searches run on the run's `device` when it is a GPU this process sees (the
    driver's: with train.local_mode=false the GPUs that trained may be the executors'), else
    on the CPU. Returns the RANKING_COLUMNS of the rankings it published (for evaluate)."""
    spark, k = ctx.spark, ctx.config.publish
    gpu = torch.device(device).type == "cuda" and torch.cuda.is_available()
    search = device if gpu else "cpu"
    phi_t = result.phi_t
    staging = resolve_path(ctx.workdir, f"{ctx.config.catalog.staging_dir}/{ctx.run_id}")
    local = local_path(staging)  # Arrow refuses a file: URI holding a space
    fs, root = (pafs.LocalFileSystem(), str(local)) if local else pafs.FileSystem.from_uri(staging)
    concentration = (
        segments.fit.title_credit + ctx.config.train.prior_strength if segments else None
    )
    block = rankings.RANK_BLOCK
    staged = {
        "phi": rankings.phi_blocks(phi_t, _PHI_BLOCK_JOBS),
        "skill_background": iter([rankings.background_columns(result.background)]),
        "job_skill_rank": _with_support(
            rankings.top_skills_per_job(phi_t, k.top_k, block, concentration), pairs
        ),
        "skill_job_rank": _with_support(rankings.top_jobs_per_skill(phi_t, k.top_k, block), pairs),
        "job_neighbors": rankings.job_neighbors(phi_t, k.neighbors_k, block, search),
        "skill_neighbors": rankings.skill_neighbors(phi_t, k.neighbors_k, block, search),
        "job_skill_rank_by_segment": _segment_blocks(
            segments, ctx.config.train.segment_min_profiles, k.top_k
        )
        if segments
        else iter([]),
    }
    kept: dict[str, list[pa.Table]] = {key: [] for key in RANKING_COLUMNS}
    codec = spark.conf.get(_CODEC_SETTING) or "snappy"  # (Spark's default)
    for key in RANKING_COLUMNS:
        staged[key] = _keeping(staged[key], ranking_schema(key), kept[key])
    try:
        rows = {}
        for name, blocks in staged.items():
            with ctx.step(f"staged {name}"):
                rows[name] = _write_blocks(fs, f"{root}/{name}", blocks)

        def read(name: str) -> DataFrame:
            return spark.read.parquet(f"{staging}/{name}").withColumn("run_id", F.lit(ctx.run_id))

        def parquet(files: list[Path]) -> DataFrame:
            return spark.read.parquet(*(str(f) for f in files))

        job_vocab = parquet(manifest.vocabulary_files("job"))
        skill_vocab = parquet(manifest.vocabulary_files("skill"))
        job_skill_rank = read("job_skill_rank")
        if concentration is None:  # no posterior: the interval and rank range are unknown
            job_skill_rank = job_skill_rank.withColumns(
                {c: F.lit(None).cast("double") for c in ("probability_low", "probability_high")}
                | {c: F.lit(None).cast("int") for c in ("rank_best", "rank_worst")}
            )
        outputs = {
            "training_history": spark.createDataFrame(
                [Row(run_id=ctx.run_id, **vars(r)) for r in result.history]
            ),
            "phi": read("phi"),
            "skill_background": read("skill_background").join(
                F.broadcast(skill_vocab.select("skill_id", "skill_name")), "skill_id"
            ),
            "job_skill_rank": ranked_pairs(job_skill_rank, job_vocab, skill_vocab),
            "skill_job_rank": ranked_pairs(read("skill_job_rank"), job_vocab, skill_vocab),
            "job_neighbors": named_neighbors(read("job_neighbors"), job_vocab, "job"),
            "skill_neighbors": named_neighbors(read("skill_neighbors"), skill_vocab, "skill"),
        }
        if rows["job_skill_rank_by_segment"]:
            outputs["job_skill_rank_by_segment"] = (
                read("job_skill_rank_by_segment")
                .join(F.broadcast(job_vocab.select("job_id", "job_title")), "job_id")
                .join(F.broadcast(skill_vocab.select("skill_id", "skill_name")), "skill_id")
            )
        for key, df in outputs.items():
            with ctx.step(f"wrote {key}"):
                spark.conf.set(_CODEC_SETTING, _PHI_CODEC if key == "phi" else codec)
                conform(df, key).write.insertInto(ctx.table(key))
    finally:
        spark.conf.set(_CODEC_SETTING, codec)
        if fs.get_file_info(root).type != pafs.FileType.NotFound:
            fs.delete_dir(root)
    # One contiguous copy of each column, in Arrow's memory: the blocks' arrays go now (held
    # to the end of the application, they kept the process's peak 0.15 GiB higher).
    return {
        key: pa.concat_tables(tables).combine_chunks()
        if tables
        else ranking_schema(key).empty_table()
        for key, tables in kept.items()
    }


def _keeping(blocks: Iterator[dict], schema: pa.Schema, kept: list[pa.Table]) -> Iterator[dict]:
    """The blocks as they come, the columns of `schema` of each appended to `kept` (a column
    the blocks lack, such as a softmax run's interval, as nulls)."""
    for block in blocks:
        rows = len(next(iter(block.values())))
        columns = [
            _arrow_column(block[f.name]).cast(f.type) if f.name in block else pa.nulls(rows, f.type)
            for f in schema
        ]
        kept.append(pa.Table.from_arrays(columns, schema=schema))
        yield block


def _with_support(blocks: Iterator[dict], pairs: torch.Tensor) -> Iterator[dict]:
    """Blocks of ranked (job_id, skill_id) pairs, each with its support: pairs[job, skill],
    the training profiles that hold both (CoCounts.pair)."""
    for columns in blocks:
        jobs, skills = (torch.from_numpy(columns[key]).long() for key in ("job_id", "skill_id"))
        yield columns | {"support": pairs[jobs, skills].to(torch.int64).numpy()}


def _write_blocks(fs: pafs.FileSystem, path: str, blocks: Iterator[dict]) -> int:
    """Write blocks of numpy columns as the Parquet files of one staged dataset; its rows.

    A 2-D column becomes a list column, one row of it per row (phi's weights). A new file
    starts every _STAGED_FILE_BYTES, so that Spark reads and writes them in parallel. The
    files are read once, by Spark, and deleted: they are written without compression or
    dictionaries (phi's 728 MB instead of 404 at paper scale), which took its staging from
    about 4 s to 2 and Spark's append of it from about 10 s to 9 (benchmarks/README.md).
    """
    fs.create_dir(path, recursive=True)
    writer, size, files, total = None, 0, 0, 0
    try:
        for block in blocks:
            table = pa.table({name: _arrow_column(column) for name, column in block.items()})
            if writer is None or size >= _STAGED_FILE_BYTES:
                if writer is not None:
                    writer.close()
                name = f"{path}/part-{files:05d}.parquet"
                writer, size, files = (
                    pq.ParquetWriter(
                        name, table.schema, filesystem=fs, compression="none", use_dictionary=False
                    ),
                    0,
                    files + 1,
                )
            writer.write_table(table)
            size += table.nbytes
            total += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return total


def _arrow_column(column: np.ndarray) -> pa.Array:
    """A numpy column as Arrow: a 2-D one as a list per row, over the same values."""
    if column.ndim == 1:
        return pa.array(column)
    rows, width = column.shape
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(column).reshape(-1)))


def _insert_run(
    ctx: StageContext, device: str, manifest: Manifest, manifest_text: str, fingerprint: str
) -> None:
    """Record the run as 'running' before anything is published."""
    values = {
        "run_id": ctx.run_id,
        "status": "running",
        "started_at": datetime.now(UTC),
        "device": device,
        "model": ctx.config.train.model,
        "hyperparameters": {k: str(v) for k, v in dataclasses.asdict(ctx.config.train).items()},
        "jobs": manifest.jobs,
        "skills": manifest.skills,
        "train_profiles": manifest.rows["train"],
        "config_json": json.dumps(ctx.config.to_dict(), sort_keys=True),
        "input_manifest": manifest_text,
        "inputs_fingerprint": fingerprint,
    }
    schema = SPECS["runs"].schema
    row = Row(**{field.name: values.get(field.name) for field in schema})
    ctx.spark.createDataFrame([row], schema).write.insertInto(ctx.table("runs"))


def _test_loss(params: TrainConfig, manifest_path: Path, result: TrainResult) -> float:
    """Mean KL of the published model on the test split: the one read of the test split,
    after training chose everything on the validation split."""
    family = FAMILIES[params.model]
    method = family.method(result.phi_t, result.background, params.background_weight)
    test_loss, _ = score_split(method, Manifest.read(manifest_path), "test", params.batch_size)
    return test_loss


def _run_outcome(result: TrainResult, test_loss: float) -> dict:
    best = result.history[result.best_epoch - 1] if result.history else None
    return {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_loss": best.train_loss if best else None,
        "validation_loss": result.best_validation_loss,
        "validation_ndcg": result.best_validation_ndcg,
        "test_loss": test_loss,
    }


def _update_run(ctx: StageContext, values: dict, run_id: str | None = None) -> None:
    """Set the columns of a run's `runs` row (default this run's) and its end time."""
    DeltaTable.forName(ctx.spark, ctx.table("runs")).update(
        F.col("run_id") == (run_id or ctx.run_id),
        {"ended_at": F.current_timestamp(), **{k: F.lit(v) for k, v in values.items()}},
    )


def _discard_interrupted(ctx: StageContext) -> None:
    """Clean up after runs that were killed: still 'running', but no process is on them.

    The launcher lets one SkillRank process at a time use a work directory (and its
    metastore), so a 'running' row seen here belongs to a run that ended without finishing:
    its rows are deleted and it is marked failed, as if it had failed cleanly.
    """
    runs = ctx.spark.table(ctx.table("runs")).where("status = 'running'").select("run_id")
    for (run_id,) in runs.collect():
        for key in RUN_TABLES:
            DeltaTable.forName(ctx.spark, ctx.table(key)).delete(F.col("run_id") == run_id)
        error = f"interrupted: the run ended without finishing (cleaned up by {ctx.run_id})"
        _update_run(ctx, {"status": "failed", "error": error}, run_id)
        ctx.log.info(f"  cleaned up interrupted run {run_id}")


def _discard(ctx: StageContext, error: str) -> None:
    """After a failure: delete the rows this run published and mark it failed.

    Best effort: if this fails too (Spark gone), the rows stay, still invisible through the
    current_* views because the run never became 'succeeded'.
    """
    try:
        for key in RUN_TABLES:
            DeltaTable.forName(ctx.spark, ctx.table(key)).delete(F.col("run_id") == ctx.run_id)
        _update_run(ctx, {"status": "failed", "error": error[:1000]})
    except Exception as exc:  # keep the original error, which is the one to report
        ctx.log.warning(f"warning: could not clean up run {ctx.run_id}: {exc}")


STAGE = Stage(name="train", add_arguments=add_arguments, run=run, check=check)


def main() -> None:
    raise SystemExit(run_stages([STAGE]))


if __name__ == "__main__":
    main()
