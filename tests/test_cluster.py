"""A real Spark standalone cluster runs the stages: the same tables as a local run.

A master and two workers (one core, 1 GiB each) from pyspark's own distribution, on
127.0.0.1; ingest, prepare and train run through ./spark-submit.sh (`all --from ingest --to
train`, one application) with --master spark://... in one work directory, train with two
processes on the cluster's executors (one per worker); side by side, the same stages run in
this process on the shared local session (tests/conftest.py's Pipeline), on the same crawl,
train with two processes on this machine (TorchDistributor's local mode, torchrun under this
process's driver). One process against two is tests/test_distributed.py's.
"""

from __future__ import annotations

import collections
import io
import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyspark
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from skillrank.publish import RUN_TABLES
from tests.conftest import (
    FAST_JVM,
    SETTINGS,
    Pipeline,
    free_port,
    planted_crawl,
    submit_environment,
    write_crawl,
)

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
SPARK_CLASS = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
# Shards of at most 70 rows: the train split (267 profiles) has four, two per process when
# two train together.
SMALL = ("--conf", "spark.driver_memory=1g", "--conf", "spark.shuffle_partitions=2")
SMALL += ("--conf", "prepare.rows_per_shard=70")
WORKERS = 2
STAGES = ("ingest", "prepare", "train")
# The two runs train on the same shard rows, but Spark may lay them out in another order, and
# each sums its two processes' counts: phi may differ by rounding, at most by this much (its
# weights are about -8 to 0).
PHI_TOLERANCE = 0.05
# Malformed lines among the crawl's profiles, for quarantine.
BAD_LINES = [
    "{not json",
    '["an", "array"]',
    json.dumps({"crawled_at": "2026-10-01T12:00:00Z", "skills": ["java"]}),
    json.dumps({"profile_id": "bad-time", "crawled_at": "yesterday"}),
]


@dataclass(frozen=True)
class Cluster:
    url: str
    webui: str
    worker_dirs: list[Path]

    def state(self) -> dict[str, Any]:
        """The master's view: workers, running and completed applications."""
        with urllib.request.urlopen(f"{self.webui}/json/", timeout=5) as response:
            return json.load(response)


def _cluster_environment(home: Path) -> dict[str, str]:
    """The daemons' environment: nothing of the project's, so executors get only --py-files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYSPARK"))}
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    env["JAVA_TOOL_OPTIONS"] = FAST_JVM  # the daemons' and the executors' JVMs
    env["SPARK_LOCAL_DIRS"] = str(home / "local")
    env["SPARK_WORKER_DIR"] = str(home / "work")
    return env


def _start_daemon(home: Path, main_class: str, *args: str) -> subprocess.Popen:
    """Start a Spark daemon in its own session (process group), logging to <home>/daemon.log."""
    home.mkdir(parents=True)
    with open(home / "daemon.log", "wb") as log:
        return subprocess.Popen(
            [SPARK_CLASS, main_class, *args],
            cwd=home,
            env=_cluster_environment(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop_daemons(daemons: list[subprocess.Popen]) -> None:
    """Stop each daemon's process group (a worker's executors and Python workers with it)."""
    for daemon in reversed(daemons):
        _signal_group(daemon, signal.SIGTERM)
    for daemon in reversed(daemons):
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_group(daemon, signal.SIGKILL)
            daemon.wait(timeout=30)


def _signal_group(daemon: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(daemon.pid, signum)
    except ProcessLookupError:
        pass


def _wait_for_workers(cluster: Cluster, daemons: list[subprocess.Popen], root: Path) -> None:
    deadline = time.monotonic() + 120
    alive = 0
    while time.monotonic() < deadline:
        exited = [d.args[1] for d in daemons if d.poll() is not None]
        assert not exited, f"{exited} exited at start; logs under {root}"
        try:
            alive = cluster.state()["aliveworkers"]
        except OSError:
            alive = 0  # the master's web UI is not up yet
        if alive == WORKERS:
            return
        time.sleep(1)
    pytest.fail(f"{alive} of {WORKERS} workers registered in 120 s; logs under {root}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master and two workers of one core and 1 GiB; stopped by process group at the end."""
    root = tmp_path_factory.mktemp("cluster")
    port, webui_port = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    worker_homes = [root / f"worker{i}" for i in range(1, WORKERS + 1)]
    daemons: list[subprocess.Popen] = []
    try:
        daemons.append(
            _start_daemon(
                root / "master",
                "org.apache.spark.deploy.master.Master",
                *("--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui_port)),
            )
        )
        for home in worker_homes:
            daemons.append(
                _start_daemon(
                    home,
                    "org.apache.spark.deploy.worker.Worker",
                    *(url, "--cores", "1", "--memory", "1g", "--host", "127.0.0.1"),
                    *("--webui-port", str(free_port())),
                )
            )
        cluster = Cluster(url, f"http://127.0.0.1:{webui_port}", [h / "work" for h in worker_homes])
        _wait_for_workers(cluster, daemons, root)
        yield cluster
    finally:
        _stop_daemons(daemons)


@pytest.fixture(scope="module")
def crawl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = [*planted_crawl(300, seed=7), *BAD_LINES]
    return write_crawl(tmp_path_factory.mktemp("crawl") / "crawl.jsonl", lines)


def _submit(stage: str, workdir: Path, *options: str) -> str:
    """Run one stage through ./spark-submit.sh; its standard output."""
    # The driver's JVM takes FAST_JVM from SPARK_SUBMIT_OPTS, not from JAVA_TOOL_OPTIONS,
    # which spoils the `java -version` that spark-submit.sh reads.
    env = submit_environment(SPARK_LOCAL_IP="127.0.0.1")
    result = subprocess.run(
        [str(ROOT / "spark-submit.sh"), stage, "--workdir", str(workdir), *SMALL, *SETTINGS]
        + list(options),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, f"{stage} {options}: {result.stderr[-3000:]}"
    return result.stdout


@dataclass(frozen=True)
class InWorkdir:
    """The tables of a work directory's own warehouse, read by path with the shared session."""

    spark: SparkSession
    workdir: Path

    def table(self, name: str) -> DataFrame:
        path = self.workdir / "warehouse" / "skillrank.db" / name
        return self.spark.read.format("delta").load(str(path))


Tables = InWorkdir | Pipeline


@dataclass(frozen=True)
class Runs:
    """The cluster's run and the local one, with what their train stages printed."""

    on_cluster: InWorkdir
    on_local: Pipeline
    cluster_output: str
    local_output: str


# Train with two processes: on the cluster, one on each worker's executor.
TWO = ("--conf", "train.num_processes=2")
ON_EXECUTORS = (*TWO, "--conf", "train.local_mode=false")


@pytest.fixture(scope="module")
def runs(
    cluster: Cluster, crawl: Path, spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> Runs:
    """The cluster run, and the local run in this process meanwhile (the cluster's JVMs
    mostly wait on each other)."""
    workdir = tmp_path_factory.mktemp("on_cluster")
    local = Pipeline(
        spark, tmp_path_factory.mktemp("on_local"), f"t_cluster_{uuid.uuid4().hex[:6]}"
    )
    range_ = ("--from", STAGES[0], "--to", STAGES[-1], "--input", str(crawl))
    with ThreadPoolExecutor(1) as pool:
        on_cluster = pool.submit(
            _submit, "all", workdir, "--master", cluster.url, *range_, *ON_EXECUTORS
        )
        assert local.run(["ingest", "prepare"], "--input", str(crawl), *SMALL, *SETTINGS) == 0
        with redirect_stdout(io.StringIO()) as out:
            assert local.run(["train"], *SMALL, *SETTINGS, *TWO) == 0
        cluster_output = on_cluster.result()
    return Runs(InWorkdir(spark, workdir), local, cluster_output, out.getvalue())


@pytest.fixture(scope="module")
def on_cluster(runs: Runs) -> InWorkdir:
    return runs.on_cluster


@pytest.fixture(scope="module")
def on_local(runs: Runs) -> Pipeline:
    return runs.on_local


def _rows(tables: Tables, name: str, *columns: str) -> list[tuple]:
    return sorted(tuple(r) for r in tables.table(name).select(*columns).collect())


def test_the_cluster_ran_every_stage_on_both_executors(
    cluster: Cluster, on_cluster: InWorkdir
) -> None:
    (app,) = cluster.state()["completedapps"]
    assert app["name"] == "skillrank-all" and app["state"] == "FINISHED", app
    for worker_dir in cluster.worker_dirs:
        # An executor of the application ran on this worker and fetched the --py-files zip.
        zips = list((worker_dir / app["id"]).glob("*/skillrank-*.zip"))
        assert zips, f"no executor of {app['name']} fetched the zip in {worker_dir}"
    stages = _rows(on_cluster, "stage_runs", "started_at", "stage", "status")
    assert [(stage, status) for _, stage, status in stages] == [
        (stage, "succeeded") for stage in STAGES
    ]


def test_same_vocabularies(on_cluster: InWorkdir, on_local: Pipeline) -> None:
    for table, columns, size in (
        ("job_vocab", ("job_id", "job_title"), 4),
        ("skill_vocab", ("skill_id", "skill_name"), 13),
    ):
        cluster_vocab = on_cluster.table(table).select(*columns).collect()
        assertDataFrameEqual(cluster_vocab, on_local.table(table).select(*columns))
        assert len(cluster_vocab) == size, table


def test_same_split_per_profile(on_cluster: InWorkdir, on_local: Pipeline) -> None:
    cluster_split = on_cluster.table("profiles").select("profile_id", "split").collect()
    assertDataFrameEqual(cluster_split, on_local.table("profiles").select("profile_id", "split"))
    splits = [r.split for r in cluster_split]
    assert len(splits) == 300 and set(splits) == {"train", "validation", "test"}


def test_same_quarantine(on_cluster: InWorkdir, on_local: Pipeline) -> None:
    columns = ("line_number", "reason", "reason_detail", "raw_bytes", "raw_text", "profile_id")
    cluster_rows = on_cluster.table("quarantine").select(*columns).orderBy(*columns).collect()
    assertDataFrameEqual(cluster_rows, on_local.table("quarantine").select(*columns))
    assert [(line, reason, pid) for line, reason, *_, pid in cluster_rows] == [
        (301, "invalid_json", None),
        (302, "not_an_object", None),
        (303, "missing_field", None),
        (304, "invalid_timestamp", "bad-time"),
    ]


def test_phi_within_tolerance(on_cluster: InWorkdir, on_local: Pipeline) -> None:
    cluster_phi = on_cluster.table("phi").select("job_id", "weights").collect()
    assert [len(r.weights) for r in cluster_phi] == [13] * 4
    assertDataFrameEqual(
        cluster_phi, on_local.table("phi").select("job_id", "weights"), rtol=0.0, atol=PHI_TOLERANCE
    )


def test_same_top10_skillrank(on_cluster: InWorkdir, on_local: Pipeline) -> None:
    def top10(tables: Tables) -> DataFrame:
        ranks = tables.table("job_skill_rank").where("rank <= 10")
        return ranks.select("job_title", "rank", "skill_name")

    cluster_top = top10(on_cluster).collect()
    assertDataFrameEqual(cluster_top, top10(on_local))
    titles = collections.Counter(r.job_title for r in cluster_top)
    assert titles == dict.fromkeys(["accountant", "data scientist", "nurse", "welder"], 10)


# --- the two train processes of each run ---


def _one_distributed_run(tables: Tables) -> None:
    """The work directory's train run succeeded with two processes and published its tables."""
    (run,) = tables.table("runs").collect()
    assert run.status == "succeeded"
    assert json.loads(run.config_json)["train"]["num_processes"] == 2
    for table in ("training_history", *RUN_TABLES):
        assert tables.table(table).where(f"run_id = '{run.run_id}'").count() > 0, table


def test_training_with_a_process_on_each_worker(cluster: Cluster, runs: Runs) -> None:
    assert "2 processes (on the executors)" in runs.cluster_output
    _one_distributed_run(runs.on_cluster)
    (app,) = cluster.state()["completedapps"]
    for worker_dir in cluster.worker_dirs:
        # Each worker's executor ran one task of TorchDistributor's barrier stage.
        logs = "".join(p.read_text() for p in (worker_dir / app["id"]).glob("*/stderr"))
        assert "finished global sync successfully" in logs, worker_dir


def test_two_processes_on_the_driver_machine(runs: Runs) -> None:
    assert "2 processes (on this machine)" in runs.local_output
    _one_distributed_run(runs.on_local)
