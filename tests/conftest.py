"""One SparkSession (Delta + Derby metastore in a temp dir) for the whole run, and test helpers."""

from __future__ import annotations

import gzip
import importlib
import json
import os
import random
import re
import socket
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pyspark.sql import DataFrame, Row, SparkSession

from jobs._cli import run_stages
from skillrank.config import Config, load_config
from skillrank.model import Batch
from skillrank.session import build_spark
from skillrank.shards import Manifest

# tests/run.sh runs the suite on two pytest-xdist workers, one file at a time per worker (so
# that a module's fixtures are built once), test_evaluation.py on the worker that runs
# test_publish.py (they share evaluated_runs). A worker takes the next file as it runs out:
# the longest files go first, so that small ones fill the end (seconds of the 80 slowest
# items, two workers, 2026-12-04: 292, 222, 280 for the two sharing a run, 184, 89, 52, 43,
# 42, 31, 20); the rest follow by file name (pytest_collection_modifyitems).
_SHARED_SCOPE = {"test_evaluation.py": "test_publish.py"}
_LONGEST = (
    *("test_sql.py", "test_cluster.py", "test_evaluation.py", "test_publish.py"),
    *("test_pipeline.py", "test_ingest.py", "test_distributed.py", "test_tables.py"),
    *("test_generate.py", "test_ingest_properties.py", "test_cli.py"),
)

# The JVMs of the stages a test starts through ./spark-submit.sh live a minute or two, in
# which the C2 JIT compiler and the parallel collector's threads burn a large share of the
# 2-core machine's CPU: C1 alone and the serial collector are enough for them (results don't
# change; test_sql's `all --to train`: 131.5 s -> 101.2 s of CPU, the same wall time alone).
# C1 compiled 67,000 methods in 15 s of that run: compiling at 4x the invocation counts
# leaves out the lukewarm ones (2026-12-01, the same command alone, three runs without and
# four with: 80.4-81.6 -> 69.2-71.0 busy core-seconds, 62.9-64.0 s -> 59.9-61.5 s wall; a
# Thrift server query costs the same). Not for the shared session, which lives the whole
# run: there C1 made the suite slower, and so did 4x counts (test_evaluation.py and
# test_publish.py in one process: 235 s as it is, 251 s with 4x counts, 327 s with C1 and 4x
# counts).
FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:CompileThresholdScaling=4"


def submit_environment(**extra: str) -> dict[str, str]:
    """The environment of a ./spark-submit.sh a test starts: this one's, FAST_JVM, `extra`."""
    return {**os.environ, "SPARK_SUBMIT_OPTS": FAST_JVM, **extra}


# Tests on these fixtures run pipeline stages end to end in this process: `slow`, like the
# ones that run spark-submit (test_sql.py), and so out of the day-to-day subset (README).
_STAGE_FIXTURES = {"pipeline", "evaluated_runs"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _STAGE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

    # Then in _LONGEST's order, whatever order the command line names them in:
    # test_evaluation.py reads evaluated_runs as conftest left it, before test_publish.py adds
    # runs to it and its last test (maintain) deletes some.
    def order(item: pytest.Item) -> tuple[int, str]:
        name = item.path.name
        return (_LONGEST.index(name) if name in _LONGEST else len(_LONGEST)), name

    items.sort(key=order)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        """xdist's per-scope scheduling, with files as the scopes (xdist's own
        xdist_group marks are lost under pytest 9, whose node ids are read-only)."""

        def _split_scope(self, nodeid: str) -> str:
            name = Path(nodeid.split("::", 1)[0]).name
            return _SHARED_SCOPE.get(name, name)

    config.option.loadscopereorder = False  # collection order: the longest files first
    return ByFile(config, log)


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


# /proc/net/tcp{,6} spell a local address in hex, 32-bit words in host (little-endian) order.
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def listening_addresses(pid: int) -> list[str]:
    """The local addresses (hex, as /proc/net spells them) of `pid`'s listening TCP sockets."""
    fds = Path(f"/proc/{pid}/fd")
    inodes = {os.readlink(fd).removeprefix("socket:[").rstrip("]") for fd in fds.iterdir()}
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1].split(":")[0])
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers the tests start)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


def warehouse_dir(spark: SparkSession) -> Path:
    """The session's warehouse directory (Spark spells it file:/...)."""
    return Path((spark.conf.get("spark.sql.warehouse.dir") or "").removeprefix("file:"))


class Pipeline:
    """Runs stages in-process on the shared session, with its own database and work directory."""

    def __init__(self, spark: SparkSession, workdir: Path, database: str) -> None:
        self.spark, self.workdir, self.database = spark, workdir, database

    def run(self, stage_names: list[str], *args: str) -> int:
        stages = [importlib.import_module(f"jobs.{name}").STAGE for name in stage_names]
        common = ["--workdir", str(self.workdir), "--master", "local[2]"]
        common += ["--conf", f"catalog.database={self.database}"]
        # The shared session's warehouse, not one under this work directory (the config takes
        # a file:/// URI).
        common += ["--conf", f"catalog.warehouse_dir={warehouse_dir(self.spark).as_uri()}"]
        common += ["--conf", "spark.shuffle_partitions=2"]
        return run_stages(stages, [*common, *args])

    def table(self, name: str) -> DataFrame:
        return self.spark.table(f"{self.database}.{name}")

    def manifest(self) -> Manifest:
        return Manifest.read(self.workdir / "shards" / "manifest.json")


@pytest.fixture
def pipeline(spark: SparkSession, tmp_path: Path, request: pytest.FixtureRequest) -> Pipeline:
    name = re.sub(r"\W+", "_", request.node.name.lower())[:40]
    return Pipeline(spark, tmp_path / "work dir", f"t_{name}_{uuid.uuid4().hex[:6]}")


# --- planted crawls: titles with their own skills, and a published, evaluated run of one ---

# Each title's own skills; every profile also shows "Microsoft Excel" now and then.
PLANTED = {
    "data scientist": ["python", "statistics", "machine learning"],
    "nurse": ["triage", "patient care", "phlebotomy"],
    "accountant": ["bookkeeping", "auditing", "tax law"],
    "welder": ["welding", "blueprints", "metal fabrication"],
}
SETTINGS = (
    *("--conf", "prepare.min_job_profiles=1", "--conf", "prepare.min_skill_profiles=1"),
    *("--conf", "train.max_epochs=60", "--conf", "train.batch_size=50"),
    *("--conf", "train.learning_rate=2.0", "--conf", "publish.neighbors_k=2"),
)


def planted_crawl(
    count: int, seed: int, planted: dict[str, list[str]] = PLANTED
) -> list[dict[str, Any]]:
    """Profiles holding one or two planted titles and (90% each) their planted skills."""
    rng = random.Random(seed)
    titles = sorted(planted)
    records = []
    for i in range(count):
        held = rng.sample(titles, rng.choice([1, 1, 2]))
        skills = {s for t in held for s in planted[t] if rng.random() < 0.9}
        if rng.random() < 0.3 or not skills:
            skills.add("microsoft excel")
        positions = [
            {"title": t.title(), "company": "X", "start": f"20{10 + k}-01", "end": None}
            for k, t in enumerate(held)
        ]
        records.append(profile(f"p{i:04d}", positions=positions, skills=sorted(skills)))
    return records


PLACES = [("Greater Seattle Area", "SEATTLE"), ("New York, New York", "NEW_YORK_METROPOLITAN_AREA")]
INDUSTRIES = [("Computer Software", "COMPUTER_SOFTWARE"), ("Research", "RESEARCH")]
GENERIC = "microsoft excel"
# Three planted skills per title: judge the top 3 (the default cut-off is 10). The four titles
# have 169 (welder), 180, 181 and 189 (nurse) training profiles: these bucket edges put one
# title in each bucket (the test counts them whatever the edges).
EVALUATE = ("--conf", "evaluate.title_k=3", "--conf", "evaluate.title_buckets=[170, 181, 189]")


# Listed by every nurse in Seattle (PLACES[0]) and by no one else.
CITY_SKILL = ("nurse", "ultrasound")


def spread_crawl(count: int, seed: int) -> list[dict[str, Any]]:
    """planted_crawl, spread over two cities and two industries; CITY_SKILL planted."""
    records = planted_crawl(count, seed)
    title, skill = CITY_SKILL
    for i, record in enumerate(records):
        record["location"] = PLACES[i % 2][0]
        record["industry"] = INDUSTRIES[(i // 2) % 2][0]
        held = {p["title"].lower() for p in record["positions"]}
        if i % 2 == 0 and title in held:
            record["skills"] = sorted([*record["skills"], skill])
    return records


def write_planted_truth(directory: Path) -> Path:
    """Planted truth in the generator's layout: one occupation per title, Excel generic."""
    occupations = {title: f"occ-{n}" for n, title in enumerate(sorted(PLANTED))}
    directory.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "title": [t.title() for t in occupations],
                "title_key": list(occupations),
                "occupation_id": list(occupations.values()),
                "probability": [1.0] * len(occupations),
            }
        ),
        directory / "titles.parquet",
    )
    skills: dict[str, list[Any]] = {
        "occupation_id": [],
        "skill": [],
        "skill_key": [],
        "relation": [],
        "is_generic": [],
        "probability": [],
    }
    for title, occupation in occupations.items():
        for skill, relation, generic in [
            *((s, "essential", False) for s in PLANTED[title]),
            (GENERIC, None, True),
        ]:
            for key, value in zip(
                skills, (occupation, skill.title(), skill, relation, generic, 0.9), strict=True
            ):
                skills[key].append(value)
    pq.write_table(pa.table(skills), directory / "occupation_skills.parquet")
    return directory


@dataclass(frozen=True)
class Evaluated:
    """A work directory with two train runs on the same shards, the softmax family's and
    then the default mixture's, the mixture's evaluated against its planted truth."""

    pipeline: Pipeline
    mixture: str  # run_id
    softmax: str  # run_id
    truth: Path

    def run(self, run_id: str) -> Row:
        (row,) = self.pipeline.table("runs").where(f"run_id = '{run_id}'").collect()
        return row

    def rows(self, table: str, run_id: str) -> list[Row]:
        """One run's rows of a run table."""
        return self.pipeline.table(table).where(f"run_id = '{run_id}'").collect()


@pytest.fixture(scope="session")
def evaluated_runs(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    """Shared by test_publish and test_evaluation, which read it; tests that add runs to it
    name the runs they look at."""
    tmp_path = tmp_path_factory.mktemp("evaluated")
    pipeline = Pipeline(spark, tmp_path / "work dir", f"t_evaluated_{uuid.uuid4().hex[:6]}")
    crawl = write_crawl(tmp_path / "crawl.jsonl", spread_crawl(600, seed=11))
    assert pipeline.run(["ingest", "prepare"], "--input", str(crawl), *SETTINGS) == 0
    truth = write_planted_truth(tmp_path / "truth")
    run_ids = []
    evaluated = ("--truth", str(truth), *EVALUATE)
    for family, stages, more in (
        ("softmax", ["train"], ()),
        ("mixture", ["train", "evaluate"], evaluated),
    ):
        # Switching families on purpose: the mixture replaces the softmax run whatever the
        # validation loss gate would say (test_publish checks the gates). The mixture's
        # evaluate runs in train's application, on the phi train hands it in memory
        # (test_evaluation's rerun reads it back from the table and finds the same rows).
        switch = ("--conf", "publish.gate_validation_loss_increase=100.0")
        settings = (*SETTINGS, "--conf", f"train.model={family}", *switch, *more)
        assert pipeline.run(stages, *settings) == 0
        latest = pipeline.table("runs").orderBy("started_at").collect()[-1]
        assert latest.model == family
        run_ids.append(latest.run_id)
    return Evaluated(pipeline, mixture=run_ids[1], softmax=run_ids[0], truth=truth)
