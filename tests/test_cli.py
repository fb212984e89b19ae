"""./spark-submit.sh itself: one-line errors and exit codes, Java, the lock, the py-files zip.

The one end-to-end run of the script (`all`, then `sql`) is test_sql.py's work directory.
"""

from __future__ import annotations

import fcntl
import os
import runpy
import subprocess
import sys
import time
import types
import zipfile
from importlib import metadata
from pathlib import Path

import pyspark
import pytest
import torch
from pyspark.sql import SparkSession

import jobs._cli
from jobs._cli import common_parser, inputs_fingerprint
from jobs._launch import PYFILES_UNUSED_SECONDS, STAGE_NAMES, python_files_zip
from jobs._launch import main as launch
from jobs.all import NAMES as ALL_NAMES
from skillrank.config import Config
from skillrank.session import repair_metastore
from tests.conftest import submit_environment

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "spark-submit.sh")
RUN_ID = "train-20260101T000000Z-0123abcd"  # well formed; no work directory here has it


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, timeout=timeout,
        env=submit_environment(**(env or {})),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch"], "unknown stage 'nosuch'"),
        (["prepare", "--conf", "prepare.bogus=1"], "unknown config key 'prepare.bogus'"),
        (["prepare", "--conf", "prepare.split_fractions.test=0.5"], "sum to 1"),
        (["prepare", "--conf", "prepare.cities=[GOTHAM]"], "prepare.cities: unknown GOTHAM"),
        (["ingest", "--input", "/nonexistent/crawl"], "input '/nonexistent/crawl' does not exist"),
        (["ingest", "--bogus-option"], "unrecognized arguments: --bogus-option"),
        (["train", "--conf", "train.model=foo"], "'train.model' must be one of"),
        (["train", "--conf", "train.prior_strength=0"], "'train.prior_strength' must be > 0"),
        (["all", "--conf", "train.background_weight=1.5"], "must be in [0, 1)"),
        (["train", "--conf", "train.segments=[city,country]"], "'train.segments[1]' must be one"),
        (["train", "--conf", "train.segment_min_profiles=0"], "min_profiles' must be >= 1"),
        (["all", "--conf", "train.segment_prior_strengths=[]"], "must list values > 0"),
        (["train", "--resume"], "--resume applies to train.model=softmax"),
        (["all", "--from", "train", "--to", "prepare"], "--from train comes after --to prepare"),
        (["all", "--from", "bogus"], "argument --from: invalid choice: 'bogus'"),
        (["all", "--to", "prepare", "--from", "train"], "--from train comes after --to prepare"),
        (["all", "--from", "prepare", "--input", "/tmp"], "--input is read by ingest, which"),
        (["all", "--from", "train"], "no training shards: "),
        (["prepare"], "nothing ingested in "),
        (["all", "--from", "prepare"], "nothing ingested in "),
        (["evaluate"], "no train run in "),
        (["report", "--run-id", RUN_ID], "no train run in "),
        (["evaluate", "--run-id", "train-x"], "--run-id: 'train-x' is not a train run id"),
        (["runs", "pin", "prepare-20260101T000000Z-0123abcd"], "is not a train run id"),
        (["all", "--from", "evaluate"], "no train run in "),
        (["runs"], "no train run in "),
        (["maintain"], "no train run in "),
        (["maintain", "--conf", "maintain.vacuum_retention_hours=1"], "Delta's safety check"),
        (["train", "--config", "/nonexistent.yml"], "--config /nonexistent.yml: no such file"),
        (["train", "--properties-file", "/nonexistent"], "--properties-file /nonexistent: no such"),
        (["evaluate", "--dry-run"], "no train run in "),
        (["runs", "promote"], "runs promote needs a RUN_ID"),
        (["runs", "unpin", RUN_ID], f"runs unpin takes no RUN_ID, got '{RUN_ID}'"),
        (["runs", "demote", RUN_ID], "argument action: invalid choice: 'demote'"),
        (["train", "--conf", "publish.gate_ndcg_below_cooccurrence=-1"], "must be >= 0"),
    ],
)
def test_bad_arguments_fail_fast_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # In this process: the launcher's checks are the same code ./spark-submit.sh runs (one
    # case goes through the script, below).
    try:
        code = launch([*args, "--workdir", str(tmp_path / "w")])
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "w").exists()  # nothing was touched


def test_a_run_id_that_cannot_be_used_fails_before_spark(
    spark: SparkSession, config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The runs table is read from its Delta log (jobs._delta_log); a stage that names a run
    # it cannot use exits 2 with one line, and the work directory gains nothing.
    workdir = tmp_path / "w"
    catalog = config.catalog
    table = workdir / catalog.warehouse_dir / f"{catalog.database}.db" / catalog.tables["runs"]
    ids = [f"train-20250101T00000{i}Z-0123abcd" for i in range(3)]
    rows = list(zip(ids, ["failed", "rejected", "running"], strict=True))
    runs = spark.createDataFrame(rows, "run_id STRING, status STRING")
    runs.write.format("delta").save(str(table))
    cases = [
        (["evaluate", "--run-id", RUN_ID], f"--run-id {RUN_ID}: no such run in skillrank.runs"),
        (["report", "--run-id", ids[0]], f"--run-id {ids[0]}: the run is failed, not succeeded"),
        (["evaluate"], "no succeeded train run in skillrank.runs: run train first"),
        (["all", "--from", "report"], "no succeeded train run in skillrank.runs"),
        (["runs", "show", RUN_ID], f"no run '{RUN_ID}' in skillrank.runs (see: runs list)"),
        (["runs", "pin", ids[1]], "only a succeeded run can be pinned (promote it first: runs"),
        (["runs", "promote", ids[2]], f"run {ids[2]} is running: only a complete run can be"),
    ]
    before = sorted(workdir.rglob("*"))
    for args, message in cases:
        assert launch([*args, "--workdir", str(workdir)]) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, lines)
    assert sorted(workdir.rglob("*")) == before
    # A rejected run can be evaluated: the checks before Spark let it through.
    assert launch(["evaluate", "--run-id", ids[1], "--workdir", str(workdir), "--dry-run"]) == 0


@pytest.mark.parametrize(
    ("stage", "gpus", "processes"), [("train", 0, 1), ("train", 1, 2), ("all", 0, 1)]
)
def test_cuda_needs_a_gpu_per_training_process(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
    gpus: int,
    processes: int,
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    # Both families run on a GPU: the default one (mixture) gets as far as the GPU count.
    settings = ["--conf", f"train.num_processes={processes}"]
    code = launch([stage, "--device", "cuda", *settings, "--workdir", str(tmp_path / "w")])
    assert code == 2
    expected = (
        f"--device cuda with {processes} training process(es) on this machine needs"
        f" {processes} GPU(s) (one per process), torch sees {gpus}"
    )
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_version_names_the_checkout_and_its_packages(capsys: pytest.CaptureFixture[str]) -> None:
    assert launch(["--version"]) == 0
    torch_release = torch.__version__.split("+")[0]  # without the build's local label
    expected = f"skillrank {metadata.version('skillrank')} (pyspark {pyspark.__version__},"
    expected += f" delta-spark {metadata.version('delta-spark')}, torch {torch_release},"
    assert capsys.readouterr().out.startswith(expected)


def test_a_dry_run_checks_prints_the_stages_and_settings_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    properties = tmp_path / "spark.properties"
    properties.write_text("# sizing\nspark.executor.memory 4g\n! x\nspark.ui.port: 4050\n")
    workdir = str(tmp_path / "w")
    args = ["all", "--dry-run", "--workdir", workdir, "--properties-file", str(properties)]
    assert launch([*args, "--conf", "train.max_epochs=7", "--conf", "spark.ui.port=4060"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("dry run: would run generate, ingest, prepare, train, evaluate,")
    assert "    train.max_epochs = 7" in lines
    assert (
        '    spark.extra_conf = {"spark.executor.memory": "4g", "spark.ui.port": "4060"}' in lines
    )
    assert (
        launch(["all", "--dry-run", "--workdir", workdir, "--from", "ingest", "--to", "train"]) == 0
    )
    assert capsys.readouterr().out.startswith("dry run: would run ingest, prepare, train;")
    properties.write_text("spark.ui.port 4050\nui.port 4050\n")
    assert launch(args) == 2
    assert "spark.properties:2: not a spark.* setting: 'ui.port 4050'" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_the_script_fails_fast_with_one_line(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _run("train", "--conf", "train.model=foo", "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("spark-submit.sh train: error: config key 'train.model' must be one of")
    assert not (tmp_path / "w").exists()
    print(f"./spark-submit.sh refused a bad setting in {time.monotonic() - started:.1f} s")


def test_the_default_work_directory_does_not_depend_on_where_the_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # as cron, which starts in $HOME
    assert Path(common_parser("spark-submit.sh prepare").parse_args([]).workdir) == ROOT / "var"


def test_an_input_without_crawl_files_fails_before_spark(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes" / "sub").mkdir(parents=True)
    (tmp_path / "notes" / "sub" / "readme.txt").write_text("not a crawl")
    for source in (tmp_path / "empty", tmp_path / "notes", tmp_path / "empty" / "*.jsonl*"):
        result = _run("ingest", "--input", str(source), "--workdir", str(tmp_path / "w"))
        assert result.returncode == 2, result.stderr
        expected = f"no crawl files (*.jsonl, *.jsonl.gz) found at {str(source)!r}"
        if "*" in str(source):
            expected = f"input {str(source)!r} does not exist"
        assert result.stderr.strip().splitlines() == [f"spark-submit.sh ingest: error: {expected}"]
        assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_metastore_cut_short_by_a_kill_is_created_again(tmp_path: Path) -> None:
    # What SIGKILL during the first start on a work directory leaves (seen by
    # benchmarks/faults.py): Derby's directories, but no service.properties.
    half = tmp_path / "w" / "metastore_db"
    for name in ("seg0", "log", "tmp"):
        (half / name).mkdir(parents=True)
    (half / "db.lck").write_bytes(b"")
    result = _run("sql", "--workdir", str(tmp_path / "w"), "-e", "SHOW DATABASES")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed a half-created metastore of a killed run" in result.stderr
    assert "default" in result.stdout.split()
    assert (half / "service.properties").is_file()


def test_a_metastore_directory_holding_other_files_is_never_deleted(
    tmp_path: Path, config: Config
) -> None:
    half = tmp_path / config.catalog.metastore_dir
    (half / "seg0").mkdir(parents=True)
    (half / "profiles.csv").write_text("not Derby's")
    assert repair_metastore(config, tmp_path) is False
    assert (half / "profiles.csv").read_text() == "not Derby's"
    (half / "profiles.csv").unlink()  # Derby's entries alone: a creation cut short
    assert repair_metastore(config, tmp_path) is True
    assert not half.exists()


def _fake_java(tmp_path: Path, version_line: str) -> dict[str, str]:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return {"JAVA_HOME": str(home)}


def test_old_java_is_refused_with_what_to_install(tmp_path: Path) -> None:
    result = _run("prepare", env=_fake_java(tmp_path, 'openjdk version "11.0.2" 2019-01-15'))
    assert result.returncode == 2
    assert "Java 17 or newer is required" in result.stderr and "11.0.2" in result.stderr


def test_missing_java_is_refused_with_what_to_install(tmp_path: Path) -> None:
    result = _run("prepare", env={"JAVA_HOME": str(tmp_path / "nojdk")})
    assert result.returncode == 2
    assert "Java not found: install OpenJDK 17" in result.stderr


def test_a_second_process_on_a_busy_work_directory_is_refused(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    first = subprocess.Popen(
        [SCRIPT, "sql", "--workdir", str(workdir), "-e", "SELECT 1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=submit_environment(),
    )  # fmt: skip
    try:
        # The launcher takes the lock, then becomes spark-submit (and the JVM): the lock
        # must stay held after that exec, for as long as the query runs.
        lock = workdir / ".skillrank.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and "sql (pid" in lock.read_text()):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.2)
        second = _run("generate", "--workdir", str(workdir), timeout=60)
        assert first.poll() is None, "the first process ended too early for the check"
        assert second.returncode == 75, second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert f"work directory {workdir} is in use by sql (pid {first.pid}" in line
    finally:
        assert first.wait(timeout=120) == 0
    # Released when the holder ends, however it ends: the lock can be taken again.
    with open(workdir / ".skillrank.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_the_py_files_zip_is_reused_and_zips_unused_for_a_week_are_removed(
    tmp_path: Path,
) -> None:
    stale, recent = tmp_path / "skillrank-stale.zip", tmp_path / "skillrank-recent.zip"
    for path in (stale, recent):
        path.write_bytes(b"an older build")
    week_ago = time.time() - PYFILES_UNUSED_SECONDS - 60
    os.utime(stale, (week_ago, week_ago))

    built = python_files_zip(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted([built, recent])
    names = zipfile.ZipFile(built).namelist()
    assert "skillrank/trainer.py" in names and "jobs/train.py" in names
    assert "skillrank/__init__.py" not in names  # a namespace portion on the executors

    os.utime(built, (week_ago, week_ago))  # an old zip, used again: kept and touched
    assert python_files_zip(tmp_path) == built
    assert built.stat().st_mtime > week_ago + 60
    assert sorted(tmp_path.iterdir()) == sorted([built, recent])


class _Task:
    """Stands in for Airflow's BashOperator: records what the example DAG builds."""

    made: list[_Task] = []

    def __init__(self, task_id: str, bash_command: str) -> None:
        self.task_id, self.bash_command, self.downstream = task_id, bash_command, []
        _Task.made.append(self)

    def __rshift__(self, other: _Task) -> _Task:
        self.downstream.append(other)
        return other


class _Dag:
    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs

    def __enter__(self) -> _Dag:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_the_airflow_example_runs_existing_stages_and_retries_only_a_busy_workdir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Airflow is not a dependency: the example runs against stand-ins of the two names it uses.
    airflow = types.ModuleType("airflow")
    airflow.DAG = _Dag  # type: ignore[attr-defined]
    bash = types.ModuleType("airflow.operators.bash")
    bash.BashOperator = _Task  # type: ignore[attr-defined]
    for name, module in (("airflow", airflow), ("airflow.operators", types.ModuleType("x"))):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "airflow.operators.bash", bash)
    monkeypatch.setattr(_Task, "made", [])
    example = runpy.run_path(str(ROOT / "docs" / "examples" / "airflow_nightly.py"))
    tasks = {t.task_id: t for t in _Task.made}
    assert [d.task_id for t in _Task.made for d in t.downstream] == [
        "prepare_train_evaluate_report",
        "maintain",
    ]
    for task in tasks.values():
        words = task.bash_command.replace(";", " ; ").split()
        stage = words[words.index(example["SKILLRANK"]) + 1]
        assert stage in STAGE_NAMES, task.task_id
        if "--from" in words:
            assert words[words.index("--from") + 1] in ALL_NAMES
        assert subprocess.run(["bash", "-n", "-c", task.bash_command]).returncode == 0
    # The retry loop, run with a stand-in script: busy twice, then the train run is rejected.
    script = example["skillrank"]("train").replace(example["SKILLRANK"], "./fake")
    script = script.replace(f"sleep {example['BUSY_WAIT_SECONDS']}", "sleep 0")
    fake = "n=$(cat count 2>/dev/null || echo 0); echo $((n + 1)) > count"
    fake += "; [ $n -lt 2 ] && exit 75; exit 3"
    (tmp_path / "fake").write_text(fake)
    (tmp_path / "fake").chmod(0o755)
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path)
    assert (result.returncode, (tmp_path / "count").read_text().strip()) == (3, "3")


def test_inputs_fingerprint_follows_the_settings_and_every_source_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("skillrank/a.py", "skillrank/csrc/k.c", "jobs/b.py", "jobs/notes.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    monkeypatch.setattr(jobs._cli, "PROJECT_ROOT", tmp_path)
    first = inputs_fingerprint({"train": {"seed": 1}}, "cpu")
    assert inputs_fingerprint({"train": {"seed": 1}}, "cpu") == first
    assert inputs_fingerprint({"train": {"seed": 2}}, "cpu") != first
    assert inputs_fingerprint({"train": {"seed": 1}}, "cuda") != first
    (tmp_path / "jobs/notes.md").write_text("not code")
    assert inputs_fingerprint({"train": {"seed": 1}}, "cpu") == first
    for name in ("skillrank/a.py", "skillrank/csrc/k.c", "jobs/b.py"):
        (tmp_path / name).write_text(name + " changed")
        changed = inputs_fingerprint({"train": {"seed": 1}}, "cpu")
        assert changed != first, name
        first = changed
    (tmp_path / "jobs/b.py").rename(tmp_path / "jobs/c.py")  # same bytes, another file
    assert inputs_fingerprint({"train": {"seed": 1}}, "cpu") != first
