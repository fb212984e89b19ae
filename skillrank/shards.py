"""Read the training shards that `prepare` writes (docs/tables.md, "Training shards").

The trainer reads only ``manifest.json`` and the Parquet files it lists. A split is streamed
shard by shard and record batch by record batch, through a bounded in-memory shuffle buffer,
so memory holds at most about ``buffer_size`` profiles plus one record batch, never a split.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from skillrank.model import Batch

# The shard files' columns: the file contract between prepare, which writes them with Spark
# (as pyspark's from_arrow_schema reads this), and the trainer, which reads them here
# (docs/tables.md, "Training shards").
SHARD_FILE_SCHEMA = pa.schema(
    [
        pa.field("profile_id", pa.string(), nullable=False),
        pa.field("job_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("job_weights", pa.list_(pa.float32()), nullable=False),
        pa.field("skill_ids", pa.list_(pa.int32()), nullable=False),
    ]
)
# As manifest.json records them: column -> Arrow type.
SHARD_COLUMNS = {field.name: str(field.type) for field in SHARD_FILE_SCHEMA}
# Rows per Parquet read; small enough to keep memory bounded, large enough to be fast.
_READ_ROWS = 8192


# manifest.json's layout (docs/tables.md, "Training shards"); read() refuses any other.
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class ShardFile:
    """One Parquet file of a shard set: its path under the manifest's directory, its rows."""

    path: str
    rows: int


@dataclass(frozen=True)
class Manifest:
    """manifest.json: the shard set `prepare` wrote (its one writer, ``to_json``) and
    everything the trainer, evaluate and the benchmarks read of it (``read``)."""

    prepare_run_id: str
    created_at: str  # ISO 8601, UTC
    config_fingerprint: str
    split_fractions: dict[str, float]
    split_salt: str
    job_weighting: str
    jobs: int  # vocabulary sizes
    skills: int
    vocab_files: dict[str, list[ShardFile]]  # job_vocab, skill_vocab
    split_files: dict[str, list[ShardFile]]  # train, validation, test
    shard_columns: dict[str, str]  # column -> Arrow type of the shards (SHARD_COLUMNS)
    delta_versions: dict[str, int]  # the input tables' versions the set was written from
    # Digest of what else the set depends on (settings, alias map, code; jobs/prepare.py);
    # empty in manifests written before it was recorded.
    inputs_fingerprint: str = ""
    root: Path = Path(".")  # the directory the paths are under

    @property
    def shards(self) -> dict[str, list[Path]]:
        """Split -> its shard files, resolved under `root`."""
        return {s: [self.root / f.path for f in files] for s, files in self.split_files.items()}

    @property
    def rows(self) -> dict[str, int]:
        """Split -> its profiles."""
        return {s: sum(f.rows for f in files) for s, files in self.split_files.items()}

    def vocabulary_files(self, kind: str) -> list[Path]:
        """The files of job_vocab (kind 'job') or skill_vocab ('skill'), under `root`."""
        return [self.root / f.path for f in self.vocab_files[f"{kind}_vocab"]]

    def to_json(self) -> str:
        def listing(files: list[ShardFile]) -> list[dict[str, Any]]:
            return [{"path": f.path, "rows": f.rows} for f in files]

        document = {
            "format_version": MANIFEST_FORMAT,
            "prepare_run_id": self.prepare_run_id,
            "created_at": self.created_at,
            "config_fingerprint": self.config_fingerprint,
            "split_fractions": self.split_fractions,
            "split_salt": self.split_salt,
            "job_weighting": self.job_weighting,
            "vocabulary": {
                "jobs": self.jobs,
                "skills": self.skills,
                **{kind: listing(files) for kind, files in self.vocab_files.items()},
            },
            "splits": {
                split: {"rows": sum(f.rows for f in files), "shards": listing(files)}
                for split, files in self.split_files.items()
            },
            "shard_columns": self.shard_columns,
            "delta_versions": self.delta_versions,
            "inputs_fingerprint": self.inputs_fingerprint,
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @staticmethod
    def read(path: Path) -> Manifest:
        """Parse `<shards_dir>/manifest.json`; shard paths resolve against its directory."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read manifest {path}: {exc.strerror}") from exc
        return Manifest.parse(text, path.parent, str(path))

    @staticmethod
    def parse(text: str, root: Path, source: str = "manifest") -> Manifest:
        """A manifest from its JSON text (e.g. the copy a train run records), paths under
        `root`; ValueError naming `source` when it is not one this version can read."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} is not valid JSON: {exc}") from exc
        version = raw.get("format_version") if isinstance(raw, dict) else None
        if version != MANIFEST_FORMAT:
            raise ValueError(
                f"{source} has format_version {version!r}; this version of SkillRank reads"
                f" {MANIFEST_FORMAT}: run prepare again to rewrite the shards"
            )

        def files(listing: list[dict[str, Any]]) -> list[ShardFile]:
            return [ShardFile(str(f["path"]), int(f["rows"])) for f in listing]

        try:
            vocabulary = raw["vocabulary"]
            return Manifest(
                prepare_run_id=str(raw["prepare_run_id"]),
                created_at=str(raw["created_at"]),
                config_fingerprint=str(raw["config_fingerprint"]),
                split_fractions={k: float(v) for k, v in raw["split_fractions"].items()},
                split_salt=str(raw["split_salt"]),
                job_weighting=str(raw["job_weighting"]),
                jobs=int(vocabulary["jobs"]),
                skills=int(vocabulary["skills"]),
                vocab_files={k: files(vocabulary[k]) for k in ("job_vocab", "skill_vocab")},
                split_files={s: files(v["shards"]) for s, v in raw["splits"].items()},
                shard_columns=dict(raw["shard_columns"]),
                delta_versions={k: int(v) for k, v in raw["delta_versions"].items()},
                inputs_fingerprint=str(raw.get("inputs_fingerprint", "")),
                root=root,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{source} lacks {exc} (see docs/tables.md)") from exc


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
            batch_size=_READ_ROWS, columns=SHARD_FILE_SCHEMA.names
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


_Item = TypeVar("_Item")
# How often a read-ahead thread that waits for room in its queue checks whether to stop.
_READ_AHEAD_POLL_S = 0.1


def read_ahead(items: Iterator[_Item], depth: int = 2) -> Iterator[_Item]:
    """The same items in the same order, produced by a background thread up to `depth`
    ahead of the consumer: reading the next batches overlaps the work on this one (steps on a
    GPU, which wait on the device, not on the interpreter). An exception raised by `items`
    is raised here, in its place; closing this iterator stops the thread."""
    ready: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=_READ_AHEAD_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            more, item = ready.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


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
    table = (
        pq.ParquetDataset(manifest.vocabulary_files(kind))
        .read(columns=[key, name, "profile_count"])
        .sort_by(key)
    )
    ids = table.column(key).to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(f"{kind}_vocab of {manifest.prepare_run_id} is not dense")
    return table.column(name).to_pylist(), table.column("profile_count").to_numpy()
