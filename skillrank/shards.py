"""Read the training shards that `prepare` writes (docs/tables.md, "Training shards").

The trainer reads only ``manifest.json`` and the Parquet files it lists. A split is streamed
shard by shard and record batch by record batch, through a bounded in-memory shuffle buffer,
so memory holds at most about ``buffer_size`` profiles plus one record batch, never a split.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from skillrank.model import Batch

COLUMNS = ["profile_id", "job_ids", "job_weights", "skill_ids"]
# Rows per Parquet read; small enough to keep memory bounded, large enough to be fast.
_READ_ROWS = 8192


@dataclass(frozen=True)
class Manifest:
    """What the trainer needs from manifest.json: vocabulary sizes and shard files per split."""

    root: Path
    jobs: int
    skills: int
    shards: dict[str, list[Path]]
    rows: dict[str, int]
    raw: dict[str, Any]


def read_manifest(path: Path) -> Manifest:
    """Parse `<shards_dir>/manifest.json`; shard paths are resolved against its directory."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read manifest {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"manifest {path} is not valid JSON: {exc}") from exc
    return manifest_from_json(raw, path.parent, str(path))


def manifest_from_json(raw: Any, root: Path, source: str = "manifest") -> Manifest:
    """A parsed manifest (e.g. the copy a train run records) with paths under `root`."""
    try:
        jobs, skills = int(raw["vocabulary"]["jobs"]), int(raw["vocabulary"]["skills"])
        splits = raw["splits"]
        shards = {s: [root / f["path"] for f in v["shards"]] for s, v in splits.items()}
        rows = {s: int(v["rows"]) for s, v in splits.items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source} lacks {exc} (see docs/tables.md)") from exc
    return Manifest(root, jobs, skills, shards, rows, raw)


def iterate_batches(
    files: list[Path],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    buffer_size: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[list[str], Batch]]:
    """Yield (profile ids, Batch) of `batch_size` profiles (the last one may be smaller).

    With `shuffle`, the shard order and the order within a shuffle buffer of `buffer_size`
    profiles are drawn from a generator seeded by (seed, epoch): the same seed and epoch give
    the same batches, another epoch another order. Without it, files are read in order.
    Every profile of `files` is yielded exactly once.

    With `world` > 1 this process is `rank` of `world` processes reading the files together:
    after the (seeded, common) file order is drawn, it reads every world-th file from its
    rank on, so the processes read disjoint sets of files that cover `files`, each with its
    own shuffle buffer order (seeded by seed, epoch and rank).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng([seed, epoch])
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    order = rng.permutation(len(files)) if shuffle else np.arange(len(files))
    if world > 1:
        order = order[rank::world]
        rng = np.random.default_rng([seed, epoch, rank])
    # Keep at least two batches' worth so that each emitted batch mixes several reads.
    keep = max(buffer_size, 2 * batch_size) if shuffle else batch_size
    pending: list[pa.RecordBatch] = []
    held = 0
    for index in order:
        for record_batch in pq.ParquetFile(files[index]).iter_batches(
            batch_size=_READ_ROWS, columns=COLUMNS
        ):
            pending.append(record_batch)
            held += record_batch.num_rows
            if held >= keep:
                table = pa.Table.from_batches(pending)
                if shuffle:
                    table = table.take(pa.array(rng.permutation(table.num_rows)))
                # Emit down to half the buffer, keeping the rest to mix with what comes next.
                emit = (table.num_rows - (keep // 2 if shuffle else 0)) // batch_size * batch_size
                for start in range(0, emit, batch_size):
                    yield _to_batch(table.slice(start, batch_size))
                rest = table.slice(emit)
                pending, held = rest.to_batches(), rest.num_rows
    if held:
        table = pa.Table.from_batches(pending)
        if shuffle:
            table = table.take(pa.array(rng.permutation(table.num_rows)))
        for start in range(0, table.num_rows, batch_size):
            yield _to_batch(table.slice(start, batch_size))


def _to_batch(table: pa.Table) -> tuple[list[str], Batch]:
    table = table.combine_chunks()
    job_ids, job_offsets = _flatten(table.column("job_ids"))
    job_weights, _ = _flatten(table.column("job_weights"))
    skill_ids, skill_offsets = _flatten(table.column("skill_ids"))
    batch = Batch(
        job_ids=torch.from_numpy(job_ids.astype(np.int64)),
        job_weights=torch.from_numpy(job_weights.astype(np.float32)),
        job_offsets=torch.from_numpy(job_offsets),
        skill_ids=torch.from_numpy(skill_ids.astype(np.int64)),
        skill_offsets=torch.from_numpy(skill_offsets),
    )
    return table.column("profile_id").to_pylist(), batch


def _flatten(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return values, offsets


def read_vocabulary(manifest: Manifest, kind: str) -> tuple[list[str], np.ndarray]:
    """Names and training-profile counts of the run's job titles (kind 'job') or skills
    ('skill'), both indexed by id."""
    key, name = ("job_id", "job_title") if kind == "job" else ("skill_id", "skill_name")
    files = [manifest.root / f["path"] for f in manifest.raw["vocabulary"][f"{kind}_vocab"]]
    table = pq.ParquetDataset(files).read(columns=[key, name, "profile_count"]).sort_by(key)
    ids = table.column(key).to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(f"{kind}_vocab of {manifest.raw.get('prepare_run_id')} is not dense")
    return table.column(name).to_pylist(), table.column("profile_count").to_numpy()
