"""Analysts' SQL through the real Thrift server: its life cycle, every cookbook query of
docs/sql.md checked against the tables, the views' comments, delta-rs reading the same rows,
and queries that keep running while a new run publishes.

One work directory, built by ./spark-submit.sh (the embedded metastore of the shared test
session cannot be served): `all --to train` on a crawl with planted answers, `thriftserver
start` on free ports, then `all --from train`: a second train run, published while a client
keeps querying, its evaluation and report (the two make the suite's one end-to-end run of
the script). Queries go over HiveServer2's protocol
(impyla), as a JDBC/ODBC client's would, and through `./spark-submit.sh sql`.
"""

from __future__ import annotations

import collections
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from impala.dbapi import connect
from pyspark.sql import Row, SparkSession

from jobs._launch import lock_workdir
from skillrank.config import Config
from skillrank.servers import (
    METASTORE,
    THRIFTSERVER,
    ServerState,
    process_alive,
    read_state,
    write_state,
)
from skillrank.views import VIEWS
from tests.conftest import (
    LOOPBACK,
    SETTINGS,
    free_port,
    listening_addresses,
    planted_crawl,
    submit_environment,
    write_crawl,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "spark-submit.sh")
COOKBOOK = ROOT / "docs" / "sql.md"
# The cookbook's literals ('data scientist', 'python', ...) name titles and skills that are
# in the default demo run too; two titles share "statistics", two share "python".
PLANTED = {
    "data scientist": ["python", "statistics", "machine learning"],
    "data analyst": ["sql", "statistics", "data visualisation"],
    "software developer": ["python", "java", "git"],
    "accountant": ["bookkeeping", "auditing", "tax law"],
}
MALFORMED = ["{this is not json", '["an array", "not an object"]']
PROFILES = 500
# Every other profile lives in New York; the data scientists of Seattle list one more skill.
NEW_YORK = ("New York, New York", "NEW_YORK_METROPOLITAN_AREA")
SEATTLE_SKILL = ("data scientist", "cloud computing")
# publish.view_min_support of the served runs: it leaves out some of their ranked pairs.
FLOOR = 30


def two_city_crawl() -> list[dict[str, Any]]:
    """planted_crawl over Seattle (its default) and New York, with SEATTLE_SKILL planted."""
    records = planted_crawl(PROFILES, 17, PLANTED)
    title, skill = SEATTLE_SKILL
    for i, record in enumerate(records):
        if i % 2:
            record["location"] = NEW_YORK[0]
        elif title in {p["title"].lower() for p in record["positions"]}:
            record["skills"] = sorted([*record["skills"], skill])
    return records


@dataclass
class Served:
    workdir: Path
    port: int
    options: tuple[str, ...]  # --workdir and --conf options of every command
    # Standard output of `all --to train` and of `all --from train`.
    outputs: list[str] = field(default_factory=list)
    # What a client querying through the server saw while the second run was published.
    answers: list[list[tuple[Any, ...]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    while_publishing: int = 0  # answers taken between PUBLISH_STARTS and PUBLISH_ENDS

    def submit(self, command: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
        """./spark-submit.sh <command> with the common options, then `args` (they win)."""
        return subprocess.run(
            [SCRIPT, command, *self.options, *args], capture_output=True, text=True,
            timeout=timeout,
            env=submit_environment(),
        )  # fmt: skip

    def start(self, command: str, *args: str) -> subprocess.Popen:
        """submit's command as a running process; standard error joins its standard output."""
        return subprocess.Popen(
            [SCRIPT, command, *self.options, *args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=submit_environment(),
        )  # fmt: skip

    def rows(self, spark: SparkSession, table: str) -> list[Row]:
        return spark.read.format("delta").load(str(self.table_path(table))).collect()

    def table_path(self, table: str) -> Path:
        return self.workdir / "warehouse" / "skillrank.db" / table


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


PUBLISH_QUERY = (
    "SELECT run_id, count(*), sum(probability) FROM skillrank.skills_for_job GROUP BY run_id"
)


# The second run's train stage logs these lines when it starts to stage its tables and when
# it has published them: in between, the client queries without pause.
PUBLISH_STARTS, PUBLISH_ENDS = "[train]   staged ", "[train] passed the gates; published run"


def _train_while_querying(served: Served) -> None:
    """train, evaluate and report the second run (one application) while a client runs PUBLISH_QUERY
    through the server: every 2 s before and after the publish, back to back during it (the
    train stage's own lines tell when). Answers and errors go into `served`."""
    publishing, done = threading.Event(), threading.Event()

    def keep_querying() -> None:
        with closing(_connect(served)) as connection, closing(connection.cursor()) as cursor:
            extra = 2  # a few answers after the run is published
            while extra > 0:
                extra -= done.is_set()
                busy = publishing.is_set() and not done.is_set()
                try:
                    cursor.execute(PUBLISH_QUERY)
                    served.answers.append(cursor.fetchall())
                    served.while_publishing += busy
                except Exception as exc:  # every failure is a finding
                    served.errors.append(repr(exc))
                if not busy:
                    publishing.wait(2.0)  # leave the 2 cores to train until it publishes

    reader = threading.Thread(target=keep_querying)
    reader.start()
    started = time.monotonic()
    process = served.start("all", "--from", "train")
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith(PUBLISH_STARTS):
                publishing.set()
            elif line.startswith(PUBLISH_ENDS):
                done.set()
        assert process.wait(timeout=900) == 0, "".join(lines)[-3000:]
        served.outputs.append("".join(lines))
    finally:
        publishing.set()
        done.set()
        reader.join(timeout=600)
        process.kill()
    print(f"{len(served.answers)} answers while run 2 ran ({time.monotonic() - started:.0f} s)")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, config: Config) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("sql")
    crawl = write_crawl(tmp / "crawl.jsonl", [*two_city_crawl(), *MALFORMED])
    port = free_port()
    options = (
        *("--workdir", str(tmp / "work"), *SETTINGS, "--conf", "spark.driver_memory=1g"),
        # 2 shuffle partitions for 500 profiles, as the shared session has (conftest): the
        # default 8 cost `all --to train` 90 busy core-seconds instead of 75.
        *("--conf", "spark.shuffle_partitions=2"),
        *("--conf", f"publish.view_min_support={FLOOR}"),
        *("--conf", f"sql.port={port}", "--conf", f"sql.metastore_port={free_port()}"),
    )
    served = Served(tmp / "work", port, options)
    # Run 1 (5 epochs).
    ran = served.submit(
        "all", "--input", str(crawl), "--to", "train", "--conf", "train.max_epochs=5"
    )
    served.outputs.append(_succeeded(ran).stdout)
    # A server killed with its machine leaves pid files behind: they must not block a start.
    for kind in (THRIFTSERVER, METASTORE):
        stale = ServerState(kind, _dead_pid(), "127.0.0.1", 1, "gone.log", "2026-01-01T00:00:00Z")
        write_state(config, served.workdir, stale)
    started = served.submit("thriftserver", "start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"up at jdbc:hive2://127.0.0.1:{port}/skillrank" in started.stdout
        # Run 2 (the latest), published under a client's queries, its evaluation and report.
        _train_while_querying(served)
        yield served
    finally:
        served.submit("thriftserver", "stop")


def _connect(served: Served) -> Any:
    return connect(
        host="127.0.0.1", port=served.port, auth_mechanism="PLAIN", user="analyst",
        password="unused", database="skillrank", timeout=300,
    )  # fmt: skip


def _run_sql(served: Served, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run the statements of one cookbook block in one session; the last one's answer."""
    statements = [s.strip() for s in re.split(r";\s*(?:\n|$)", sql) if s.strip()]
    # The cursor is closed here too: left to the garbage collector, it would try to close its
    # operation after the test, reconnecting to a server that may have stopped.
    with closing(_connect(served)) as connection, closing(connection.cursor()) as cursor:
        for statement in statements:
            cursor.execute(statement)
        return [d[0] for d in cursor.description], cursor.fetchall()


# --- what the tables say (read by path with the shared session, not through the views) ---


@dataclass(frozen=True)
class Facts:
    latest: str
    previous: str
    runs: dict[str, Row]
    ranks: dict[str, list[Row]]  # run_id -> job_skill_rank rows
    skill_ranks: list[Row]  # skill_job_rank, latest run
    job_neighbors: list[Row]
    skill_neighbors: list[Row]
    evaluation: list[Row]
    quarantine: list[Row]
    profiles: list[Row]
    segment_ranks: list[Row]  # job_skill_rank_by_segment, latest run

    def in_city(self, title: str, city: str) -> list[Row]:
        rows = [r for r in self.segment_ranks if r.job_title == title and r.segment == city]
        return sorted(rows, key=lambda r: r.rank)

    def job(self, title: str, run: str | None = None) -> list[Row]:
        rows = [r for r in self.ranks[run or self.latest] if r.job_title == title]
        return sorted(rows, key=lambda r: r.rank)

    def shown(self, title: str | None = None) -> list[Row]:
        """The latest run's rows as skills_for_job shows them (support at or above the
        floor): one title's by rank, or all."""
        rows = self.job(title) if title else self.ranks[self.latest]
        return [r for r in rows if r.support >= FLOOR]


@pytest.fixture(scope="module")
def facts(served: Served, spark: SparkSession) -> Facts:
    runs = {r.run_id: r for r in served.rows(spark, "runs")}
    succeeded = sorted(
        (r for r in runs.values() if r.status == "succeeded"), key=lambda r: r.ended_at
    )
    latest = succeeded[-1].run_id

    def of_latest(table: str) -> list[Row]:
        return [r for r in served.rows(spark, table) if r.run_id == latest]

    ranks: dict[str, list[Row]] = {}
    for row in served.rows(spark, "job_skill_rank"):
        ranks.setdefault(row.run_id, []).append(row)
    return Facts(
        latest=latest,
        previous=succeeded[-2].run_id,
        runs=runs,
        ranks=ranks,
        skill_ranks=of_latest("skill_job_rank"),
        job_neighbors=of_latest("job_neighbors"),
        skill_neighbors=of_latest("skill_neighbors"),
        evaluation=of_latest("evaluation"),
        quarantine=served.rows(spark, "quarantine"),
        profiles=served.rows(spark, "profiles"),
        segment_ranks=of_latest("job_skill_rank_by_segment"),
    )


def _same(answer: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> None:
    """Row by row; numbers rounded to 4 places by the query match to that precision."""
    assert len(answer) == len(expected), (answer, expected)
    for got, want in zip(answer, expected, strict=True):
        assert len(got) == len(want), (got, want)
        for g, w in zip(got, want, strict=True):
            if isinstance(w, float):
                assert g == pytest.approx(w, abs=1.01e-4), (got, want)
            else:
                assert g == w, (got, want)


def _skills_of_data_scientist(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    expected = [(r.rank, r.skill_name, r.probability, r.support) for r in f.shown("data scientist")]
    _same(rows, expected[:10])
    assert {r[1] for r in rows[:3]} == set(PLANTED["data scientist"])


def _jobs_for_python(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    mine = sorted((r for r in f.skill_ranks if r.skill_name == "python"), key=lambda r: r.rank)
    shown = [(r.rank, r.job_title, r.probability, r.support) for r in mine if r.support >= FLOOR]
    _same(rows, shown[:10])
    assert {r[1] for r in rows[:2]} == {"data scientist", "software developer"}


def _similar_jobs(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    mine = sorted(
        (r for r in f.job_neighbors if r.job_title == "data scientist"), key=lambda r: r.rank
    )
    shown = [(r.rank, r.neighbor_job_title, r.similarity, r.neighbor_profiles) for r in mine]
    _same(rows, [s for s in shown if s[-1] >= FLOOR][:10])
    assert rows and rows[0][1] != "accountant"  # shares no planted skill with it


def _similar_skills(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    mine = sorted((r for r in f.skill_neighbors if r.skill_name == "python"), key=lambda r: r.rank)
    shown = [(r.rank, r.neighbor_skill_name, r.similarity, r.neighbor_profiles) for r in mine]
    _same(rows, [s for s in shown if s[-1] >= FLOOR][:10])


def _skill_gap(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    held = ("python", "sql", "data engineering")
    missing = [r for r in f.shown("data scientist") if r.skill_name not in held]
    expected = [(n, r.skill_name, r.rank, r.probability) for n, r in enumerate(missing, 1)]
    _same(rows, expected[:10])
    assert {r[1] for r in rows[:2]} == {"statistics", "machine learning"}


def _upskilling(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    held = {r.skill_name: r.probability for r in f.job("data analyst")}
    gains = [
        (r.skill_name, r.rank, r.probability, held.get(r.skill_name, 0.0),
         r.probability - held.get(r.skill_name, 0.0))
        for r in f.job("data scientist")
    ]  # fmt: skip
    expected = sorted((g for g in gains if g[4] > 0), key=lambda g: -g[4])
    _same(rows, expected[:10])
    assert {r[0] for r in rows[:2]} == {"python", "machine learning"}


def _run_changes(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    base = {r.skill_name: r.rank for r in f.job("data scientist", f.previous)}
    new = {r.skill_name: r.rank for r in f.job("data scientist")}
    expected = []
    for skill in set(base) | set(new):
        b, n = base.get(skill), new.get(skill)
        if (b or 99) <= 10 or (n or 99) <= 10:
            change = (
                "new" if b is None else "dropped" if n is None
                else "up" if n < b else "down" if n > b else "same"
            )  # fmt: skip
            expected.append((skill, b, n, change))
    expected.sort(key=lambda e: (e[2] if e[2] is not None else 1000, e[1] or 0))
    _same(rows, expected)
    assert f.previous != f.latest and len(rows) >= 10


def _current_run(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    r = f.runs[f.latest]
    _same(rows, [(r.run_id, r.status, r.epochs_run, r.best_epoch, r.validation_loss,
                  r.test_loss, r.jobs, r.skills)])  # fmt: skip
    assert r.epochs_run > f.runs[f.previous].epochs_run == 5


def _baselines(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    recall = [
        (e.method, e.value) for e in f.evaluation
        if e.metric == "recall" and e.k == 20 and e.segment == "all" and " - " not in e.method
    ]  # fmt: skip
    _same(rows, sorted(recall, key=lambda m: (-m[1], m[0])))
    assert {m for m, _ in recall} == {"model", "popularity", "cooccurrence", "pmi", "ppmi_svd"}


def _common_skills(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    counts: dict[str, int] = {}
    for r in f.shown():
        if r.rank <= 10:
            counts[r.skill_name] = counts.get(r.skill_name, 0) + 1
    _same(rows, sorted(counts.items(), key=lambda c: (-c[1], c[0]))[:10])


def _jobs_for_skill_set(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    held = {"python", "statistics", "sql"}
    totals: dict[str, tuple[float, int]] = {}
    for r in f.shown():
        if r.skill_name in held:
            p, n = totals.get(r.job_title, (0.0, 0))
            totals[r.job_title] = (p + r.probability, n + 1)
    expected = sorted(
        ((j, p, n) for j, (p, n) in totals.items() if n >= 2), key=lambda t: (-t[1], t[0])
    )
    _same(rows, expected[:10])
    assert {rows[0][0], rows[1][0]} == {"data scientist", "data analyst"}  # two of three each


def _shared_top_skills(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    mine = {r.skill_name for r in f.shown("data scientist") if r.rank <= 20}
    shared: dict[str, int] = {}
    for r in f.shown():
        if r.job_title != "data scientist" and r.rank <= 20 and r.skill_name in mine:
            shared[r.job_title] = shared.get(r.job_title, 0) + 1
    _same(rows, sorted(shared.items(), key=lambda s: (-s[1], s[0]))[:10])


def _quarantine(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    counts: dict[str, int] = {}
    for q in f.quarantine:
        counts[q.reason] = counts.get(q.reason, 0) + 1
    _same(rows, sorted(counts.items(), key=lambda c: (-c[1], c[0])))
    assert sum(counts.values()) == len(MALFORMED)


def _splits(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    counts: dict[str, int] = {}
    for p in f.profiles:
        counts[p.split] = counts.get(p.split, 0) + 1
    _same(rows, sorted(counts.items()))
    assert sum(counts.values()) == PROFILES


def _skills_in_a_city(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    expected = [
        (r.rank, r.skill_name, r.probability, r.probability_low, r.probability_high,
         round(r.lift, 2), r.support)
        for r in f.in_city("data scientist", "SEATTLE")
    ]  # fmt: skip
    _same(rows, expected[:10])
    title, skill = SEATTLE_SKILL
    (planted,) = [r for r in rows if r[1] == skill]
    assert planted[5] > 1.5 and planted[3] <= planted[2] <= planted[4]


def _skills_apart_in_two_cities(f: Facts, rows: list[tuple[Any, ...]]) -> None:
    seattle = f.in_city("data scientist", "SEATTLE")
    new_york = f.in_city("data scientist", NEW_YORK[1])
    last = new_york[-1]  # ranks and bounds every skill outside New York's rows
    by_name = {r.skill_name: r for r in new_york}
    apart = []
    for s in seattle:
        n = by_name.get(s.skill_name)
        if s.probability_low > (n.probability_high if n else last.probability_high) or (
            n and n.probability_low > s.probability_high
        ):
            gap = abs((n.rank if n else last.rank + 1) - s.rank)
            apart.append(
                (gap, s.skill_name, s.rank, n and n.rank, s.probability, n and n.probability)
            )
    apart.sort(key=lambda a: (-a[0], a[1]))
    _same(rows, [a[1:] for a in apart][:10])
    assert SEATTLE_SKILL[1] in {r[0] for r in rows}


CHECKS: dict[int, Callable[[Facts, list[tuple[Any, ...]]], None]] = {
    1: _skills_of_data_scientist,
    2: _jobs_for_python,
    3: _similar_jobs,
    4: _similar_skills,
    5: _skill_gap,
    6: _upskilling,
    7: _run_changes,
    8: _current_run,
    9: _baselines,
    10: _common_skills,
    11: _jobs_for_skill_set,
    12: _shared_top_skills,
    13: _quarantine,
    14: _splits,
    15: _skills_in_a_city,
    16: _skills_apart_in_two_cities,
}


def cookbook() -> dict[int, tuple[str, str]]:
    """The cookbook of docs/sql.md: question number -> (question, SQL)."""
    text = COOKBOOK.read_text(encoding="utf-8")
    found = re.findall(r"^### (\d+)\. (.+?)\n[^#]*?```sql\n(.*?)```", text, flags=re.M | re.S)
    return {int(n): (question, sql) for n, question, sql in found}


def test_the_cookbook_has_a_checked_answer_for_every_question() -> None:
    questions = cookbook()
    assert len(questions) >= 12
    assert sorted(questions) == sorted(CHECKS)


@pytest.mark.parametrize("number", sorted(CHECKS))
def test_cookbook_query_through_jdbc(served: Served, facts: Facts, number: int) -> None:
    question, sql = cookbook()[number]
    _, rows = _run_sql(served, sql)
    assert rows, question
    CHECKS[number](facts, rows)


def test_every_view_and_column_is_described(served: Served) -> None:
    for view in VIEWS:
        _, rows = _run_sql(served, f"DESCRIBE TABLE EXTENDED skillrank.{view.name}")
        columns = {r[0]: r[2] for r in rows[: len(view.columns)]}
        assert columns == dict(view.columns), view.name
        assert any(r[0] == "Comment" and r[1] == view.comment for r in rows), view.name
    _, rows = _run_sql(served, "DESCRIBE FUNCTION EXTENDED skillrank.skill_gap")
    assert any("Skill gap:" in str(r) for r in rows)


# skill_gap's arguments as a person may type them, and the skills each list holds.
GAP_ARGUMENTS = [
    # Full-width, upper case, a soft hyphen, zero-width and bidirectional characters.
    (
        "ＤＡＴＡ　ＳＣＩＥＮＴＩＳＴ",
        "array('PYTHON', 'Statis\u00adtics', '\u200bmachine\u00a0learning\u202c')",
        {"python", "statistics", "machine learning"},
    ),
    ("\u202eData\u200b Scientist", "array(NULL, 'microsoft excel')", {"microsoft excel"}),
    ("data scientist", "array(NULL)", set()),
    ("data scientist", "NULL", set()),
]


def test_skill_gap_reads_names_as_prepare_stores_them(served: Served, facts: Facts) -> None:
    top = facts.shown("data scientist")
    for target, held, holds in GAP_ARGUMENTS:
        query = f"SELECT gap_rank, skill_name FROM skillrank.skill_gap('{target}', {held})"
        _, rows = _run_sql(served, query + " ORDER BY gap_rank")
        lacks = [r.skill_name for r in top if r.skill_name not in holds]
        assert rows == list(enumerate(lacks, 1)), query
    _, rows = _run_sql(served, "SELECT skillrank.normalize_name(' Ｄata\u200d  SCIENTIST ')")
    assert rows == [("data scientist",)]


# Each view with a support floor: its table, and the table's support column.
FLOORED = {
    "skills_for_job": ("job_skill_rank", "support"),
    "jobs_for_skill": ("skill_job_rank", "support"),
    "similar_jobs": ("job_neighbors", "neighbor_profiles"),
    "similar_skills": ("skill_neighbors", "neighbor_profiles"),
}


def test_views_leave_out_rows_below_the_support_floor_and_functions_take_another(
    served: Served, facts: Facts, spark: SparkSession
) -> None:
    assert sorted(FLOORED) == sorted(v.name for v in VIEWS if v.support)
    dropped = 0
    for view, (table, column) in FLOORED.items():
        rows = [r for r in served.rows(spark, table) if r.run_id == facts.latest]
        supports = collections.Counter(r[column] for r in rows)
        asked = {
            "view": (FLOOR, f"skillrank.{view}"),
            "default": (FLOOR, f"skillrank.{view}_supported_by()"),  # the view's floor
            "all": (1, f"skillrank.{view}_supported_by(1)"),
            "named": (FLOOR + 10, f"skillrank.{view}_supported_by(min_support => {FLOOR + 10})"),
        }
        union = " UNION ALL ".join(
            f"SELECT '{key}', support, count(*) FROM {query} GROUP BY support"
            for key, (_, query) in asked.items()
        )
        _, answer = _run_sql(served, union)  # one round trip per view
        for key, (floor, query) in asked.items():
            got = {n: c for k, n, c in answer if k == key}
            assert got == {n: c for n, c in supports.items() if n >= floor}, query
        dropped += sum(c for n, c in supports.items() if n < FLOOR)
    assert dropped > 0  # the floor leaves something out of these runs


def test_status_says_where_the_server_is(served: Served) -> None:
    result = served.submit("thriftserver", "status", timeout=60)
    assert result.returncode == 0
    assert f"up at jdbc:hive2://127.0.0.1:{served.port}/skillrank" in result.stdout
    again = served.submit("thriftserver", "start", timeout=120)
    assert again.returncode == 0 and "already running" in again.stdout


def test_the_local_server_listens_on_loopback_only(served: Served, config: Config) -> None:
    # The server's JVM runs a local master: its driver, block manager and Spark UI listen
    # beside the Thrift port, on 127.0.0.1 like it (nothing outside needs them).
    state = read_state(config, served.workdir, THRIFTSERVER)
    assert state is not None
    addresses = listening_addresses(state.pid)
    assert len(addresses) >= 4, addresses  # Thrift, driver, block manager, UI
    assert set(addresses) <= LOOPBACK, addresses


@pytest.mark.parametrize("key", ["job_skill_rank", "phi"])  # phi: one array of weights a row
def test_delta_rs_reads_exactly_the_rows_spark_reads(
    served: Served, spark: SparkSession, key: str
) -> None:
    path = served.table_path(key)
    by_spark = sorted(tuple(r) for r in served.rows(spark, key))
    table = DeltaTable(str(path)).to_pyarrow_table()
    by_delta_rs = sorted(tuple(r.values()) for r in table.to_pylist())
    assert table.column_names == spark.read.format("delta").load(str(path)).columns
    assert len(by_spark) > 0 and by_delta_rs == by_spark


def test_queries_during_a_publish_see_one_complete_run(served: Served, spark: SparkSession) -> None:
    assert served.errors == []
    assert served.while_publishing >= 3, served.while_publishing
    expected = {}
    for row in (r for r in served.rows(spark, "job_skill_rank") if r.support >= FLOOR):
        n, total = expected.get(row.run_id, (0, 0.0))
        expected[row.run_id] = (n + 1, total + row.probability)
    seen = set()
    for rows in served.answers:
        assert len(rows) == 1, rows  # never two runs in one answer
        run_id, count, total = rows[0]
        assert count == expected[run_id][0], rows  # never part of a run
        assert total == pytest.approx(expected[run_id][1], rel=1e-12)
        seen.add(run_id)
    runs = {r.run_id: r for r in served.rows(spark, "runs")}
    newest = max((r for r in runs.values() if r.status == "succeeded"), key=lambda r: r.ended_at)
    assert len(seen) == 2 and newest.run_id in seen, seen  # before and after the publish


def test_all_reports_each_stage_of_the_run(served: Served) -> None:
    first, second = served.outputs
    quarantined = "quarantined 2 (invalid_json=1, not_an_object=1)"
    assert f"[ingest] raw lines {PROFILES + 2} = accepted {PROFILES} + {quarantined}" in first
    assert "[train] passed the gates; published run train-" in first
    # evaluate and report ran on the second run: no planted truth here (--input).
    assert "no planted truth at" in second
    (page,) = (served.workdir / "reports").glob("train-*/report.html")
    assert 'href="fig2_loss.png"' in page.read_text(encoding="utf-8")
    # Each `all` ends with its stages' seconds, rows in and rows out, and peak memory.
    tables = {}
    for out in (first, second):
        table = re.findall(r"^ +(\w+) +[\d.]+ +([\d,]+) +([\d,]+)$", out, flags=re.M)
        tables[tuple(stage for stage, *_ in table)] = dict((stage, io) for stage, *io in table)
        assert re.search(r"^ +total +[\d.]+$", out, flags=re.M), out[-3000:]
        assert re.search(r"Peak memory: Spark's JVM \d+\.\d\d GiB, this Python process", out)
    assert list(tables) == [("ingest", "prepare", "train"), ("train", "evaluate", "report")]
    ingested = tables["ingest", "prepare", "train"]["ingest"]
    assert ingested == [str(PROFILES + len(MALFORMED)), str(PROFILES)]


def test_the_sql_command_reads_the_tables_the_server_serves(
    served: Served, facts: Facts, spark: SparkSession
) -> None:
    queries = (
        "SELECT skill_name, profile_count FROM skillrank.skill_vocab ORDER BY skill_id;"
        " SELECT rank, skill_name, support FROM skillrank.current_job_skill_rank"
        " WHERE job_title = 'data scientist' ORDER BY rank"
    )
    # A batch holds the work directory: a shell on the served metastore runs all the same.
    batch = lock_workdir(served.workdir, "a batch stage")
    try:
        result = _succeeded(served.submit("sql", "-e", queries, timeout=300))
    finally:
        os.close(batch)
    assert "on the metastore the Thrift server serves (no lock)" in result.stderr
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    vocab = sorted(served.rows(spark, "skill_vocab"), key=lambda r: r.skill_id)
    expected = [[r.skill_name, str(r.profile_count)] for r in vocab]
    expected += [[str(r.rank), r.skill_name, str(r.support)] for r in facts.job("data scientist")]
    assert rows == expected


def test_stop_leaves_nothing_running(served: Served, config: Config) -> None:
    states = [read_state(config, served.workdir, kind) for kind in (THRIFTSERVER, METASTORE)]
    pids = [state.pid for state in states if state is not None]
    assert len(pids) == 2
    result = served.submit("thriftserver", "stop", timeout=180)
    assert result.returncode == 0 and "stopped" in result.stdout
    assert not any(process_alive(state.pid, state.kind) for state in states if state)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", served.port), timeout=2).close()
    status = served.submit("thriftserver", "status", timeout=60)
    assert status.returncode == 3 and "not running" in status.stdout


@pytest.mark.parametrize(
    "settings",
    [
        ["sql.host=0.0.0.0"],
        ["sql.host=0.0.0.0", "sql.authentication=NOSASL"],  # no authentication either
        # sql.hive_conf reaches the server last: its bind address and mode are the ones checked
        ["sql.hive_conf.hive.server2.thrift.bind.host=0.0.0.0"],
        [
            "sql.host=0.0.0.0",
            "sql.authentication=LDAP",
            "sql.hive_conf.hive.server2.authentication=NONE",
        ],
    ],
)
def test_an_open_bind_without_authentication_is_refused(
    tmp_path: Path, settings: list[str]
) -> None:
    confs = [part for setting in settings for part in ("--conf", setting)]
    result = subprocess.run(
        [SCRIPT, "thriftserver", "start", "--workdir", str(tmp_path / "w"), *confs],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "refusing to bind the Thrift server to 0.0.0.0 without authentication" in line
    assert not (tmp_path / "w").exists()
