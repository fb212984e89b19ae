"""One SparkSession (Delta + Derby metastore in a temp dir) for the whole run, and test helpers."""

from __future__ import annotations

import gzip
import importlib
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pyspark.sql import DataFrame, SparkSession

from jobs._cli import run_stages
from skillrank.config import Config, load_config
from skillrank.model import Batch
from skillrank.session import build_spark


@pytest.fixture(scope="session")
def config() -> Config:
    return load_config("local", ["spark.shuffle_partitions=2"])


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory, config: Config) -> Iterator[SparkSession]:
    workdir: Path = tmp_path_factory.mktemp("spark")
    session = build_spark(
        config, workdir, "local[2]", "skillrank-tests", extra={"spark.ui.enabled": "false"}
    )
    yield session
    session.stop()


def write_crawl(path: Path, lines: list[dict[str, Any] | str | bytes]) -> Path:
    """Write crawl lines (dicts as JSON, str and bytes as they are); gzip when the name ends .gz."""
    chunks = []
    for line in lines:
        text = json.dumps(line) if isinstance(line, dict) else line
        chunks.append(text if isinstance(text, bytes) else text.encode())
    data = b"\n".join(chunks) + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def profile(pid: str, crawled_at: str = "2026-10-01T12:00:00Z", **fields: Any) -> dict[str, Any]:
    """A valid crawl record in Seattle / Computer Software; keyword fields replace defaults."""
    record: dict[str, Any] = {
        "profile_id": pid,
        "crawled_at": crawled_at,
        "location": "Greater Seattle Area",
        "industry": "Computer Software",
        "positions": [
            {"title": "Software Engineer", "company": "Acme", "start": "2019-03", "end": None}
        ],
        "skills": ["Java", "SQL"],
    }
    record.update(fields)
    return record


def profile_batch(
    profiles: Sequence[tuple[Sequence[int], Sequence[float], Sequence[int]]],
    weight_dtype: torch.dtype,
) -> Batch:
    """A Batch (CSR) of (job ids, job weights, skill ids) profiles."""
    job_ids = [j for jobs, _, _ in profiles for j in jobs]
    job_weights = [w for _, weights, _ in profiles for w in weights]
    skill_ids = [s for _, _, skills in profiles for s in skills]
    job_counts = [len(jobs) for jobs, _, _ in profiles]
    skill_counts = [len(skills) for _, _, skills in profiles]
    return Batch(
        job_ids=torch.tensor(job_ids, dtype=torch.int64),
        job_weights=torch.tensor(job_weights, dtype=weight_dtype),
        job_offsets=torch.tensor(np.cumsum([0, *job_counts]), dtype=torch.int64),
        skill_ids=torch.tensor(skill_ids, dtype=torch.int64),
        skill_offsets=torch.tensor(np.cumsum([0, *skill_counts]), dtype=torch.int64),
    )


def random_batch(rng: np.random.Generator, profiles: int, jobs: int, skills: int) -> Batch:
    """Profiles of 1-3 distinct jobs (weights summing to 1, float64) and 1-5 distinct skills."""
    drawn = []
    for _ in range(profiles):
        held = rng.choice(jobs, size=rng.integers(1, 4), replace=False)
        weights = rng.random(len(held)) + 0.1
        listed = sorted(rng.choice(skills, size=rng.integers(1, 6), replace=False))
        drawn.append((sorted(held), list(weights / weights.sum()), listed))
    return profile_batch(drawn, torch.float64)


class Pipeline:
    """Runs stages in-process on the shared session, with its own database and work directory."""

    def __init__(self, spark: SparkSession, workdir: Path, database: str) -> None:
        self.spark, self.workdir, self.database = spark, workdir, database

    def run(self, stage_names: list[str], *args: str) -> int:
        stages = [importlib.import_module(f"jobs.{name}").STAGE for name in stage_names]
        common = ["--workdir", str(self.workdir), "--master", "local[2]"]
        common += ["--conf", f"catalog.database={self.database}"]
        common += ["--conf", "spark.shuffle_partitions=2"]
        return run_stages(stages, [*common, *args])

    def table(self, name: str) -> DataFrame:
        return self.spark.table(f"{self.database}.{name}")

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.workdir / "shards" / "manifest.json").read_text())


@pytest.fixture
def pipeline(spark: SparkSession, tmp_path: Path, request: pytest.FixtureRequest) -> Pipeline:
    name = re.sub(r"\W+", "_", request.node.name.lower())[:40]
    return Pipeline(spark, tmp_path / "work", f"t_{name}_{uuid.uuid4().hex[:6]}")
