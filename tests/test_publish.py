"""train publishes phi and its rankings to Delta: the tables agree with phi and with the data.

Read on conftest's evaluated_runs (two runs, softmax then mixture, on one set of shards).
"""

from __future__ import annotations

import getpass
import io
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pyspark.sql import functions as F

import jobs.maintain
import jobs.train
from jobs._cli import StageContext
from jobs._runs import RANKING_COLUMNS
from skillrank.config import Config, load_config
from skillrank.mixture import train_mixture
from skillrank.promotion import EXIT_REJECTED
from skillrank.publish import RUN_TABLES
from skillrank.tables import table_version
from skillrank.views import declare_views, view_statements
from tests.conftest import CITY_SKILL, GENERIC, PLANTED, SETTINGS, Evaluated, Pipeline

# The crawl's skills: the planted ones, the generic one and the city's own.
SKILLS = len({s for skills in PLANTED.values() for s in skills} | {GENERIC, CITY_SKILL[1]})


@pytest.fixture(scope="module")
def published(evaluated_runs: Evaluated) -> Evaluated:
    """conftest's published runs, read here: the mixture's (the default family) and, trained
    before it on the same shards, the softmax's."""
    return evaluated_runs


def test_runs_and_history_describe_the_training(published: Evaluated) -> None:
    run = published.run(published.mixture)
    assert run.status == "succeeded" and run.error is None and run.ended_at >= run.started_at
    assert (run.jobs, run.skills) == (4, SKILLS)
    manifest = published.pipeline.workdir / "shards" / "manifest.json"
    assert run.input_manifest == manifest.read_text()
    assert run.model == "mixture" and run.hyperparameters["prior_strength"] == str(
        load_config(overrides=_overrides()).train.prior_strength
    )
    history = sorted(published.rows("training_history", run.run_id), key=lambda r: r.epoch)
    assert [h.epoch for h in history] == list(range(1, run.epochs_run + 1))
    best = max(history, key=lambda h: h.validation_ndcg)  # the first of the highest
    assert (run.best_epoch, run.validation_ndcg, run.validation_loss, run.train_loss) == (
        best.epoch,
        best.validation_ndcg,
        best.validation_loss,
        best.train_loss,
    )
    # The test loss is the model's KL on the test profiles: below the popularity baseline's.
    (popularity,) = [
        r.value
        for r in published.rows("evaluation", run.run_id)
        if (r.method, r.metric, r.segment) == ("popularity", "kl", "all")
    ]
    assert 0 < run.test_loss < popularity


def _overrides(*more: str) -> list[str]:
    """The --conf settings of SETTINGS (and `more`), as load_config takes them."""
    return [*SETTINGS[1::2], *more]


def _published_arrays(p: Pipeline, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """phi_t (J x S) and the background (S,) of a run, from the tables `phi` and
    `skill_background`."""
    phi_t = np.full((4, SKILLS), np.nan, dtype=np.float32)
    for row in p.table("phi").where(F.col("run_id") == run_id).collect():
        phi_t[row.job_id] = row.weights
    background = np.full(SKILLS, np.nan, dtype=np.float32)
    for row in p.table("skill_background").where(F.col("run_id") == run_id).collect():
        background[row.skill_id] = row.weight
    return phi_t, background


def test_phi_and_background_tables_hold_the_fits_own_values(
    published: Evaluated, tmp_path: Path
) -> None:
    run = published.run(published.mixture)
    # The mixture's fit is deterministic: fitted again on the same shards, bit for bit.
    fit = train_mixture(
        published.pipeline.workdir / "shards" / "manifest.json",
        load_config(overrides=_overrides()).train,
        tmp_path / "refit" / "ckpt.pt",
        log=io.StringIO(),
    )
    phi_t, background = _published_arrays(published.pipeline, run.run_id)
    assert fit.best_epoch == run.best_epoch
    np.testing.assert_array_equal(phi_t, fit.phi_t.numpy())
    np.testing.assert_array_equal(background, fit.background.numpy())
    # The mixture's phi is log theta and its background log p0: both rows are distributions.
    np.testing.assert_allclose(np.exp(phi_t.astype(np.float64)).sum(axis=1), 1.0, rtol=1e-5)
    rows = published.rows("skill_background", run.run_id)
    probability = {r.skill_id: r.probability for r in rows}
    np.testing.assert_allclose([probability[s] for s in range(SKILLS)], np.exp(background), 1e-6)


def test_current_phi_is_the_current_runs_weights_one_row_per_entry(published: Evaluated) -> None:
    pipeline = published.pipeline
    (current,) = pipeline.table("current_runs").collect()
    rows = pipeline.table("current_phi").collect()
    assert len(rows) == 4 * SKILLS and {r.run_id for r in rows} == {current.run_id}
    exploded = np.full((4, SKILLS), np.nan, dtype=np.float32)
    for row in rows:
        exploded[row.job_id, row.skill_id] = row.weight
    np.testing.assert_array_equal(exploded, _published_arrays(pipeline, current.run_id)[0])
    # phi's files are zstd (its weights pack 3x smaller than with snappy); the other tables
    # keep the session's codec, snappy.
    for table, codec in (("phi", "ZSTD"), ("job_skill_rank", "SNAPPY")):
        files = pipeline.table(table).where(F.col("run_id") == current.run_id).inputFiles()
        assert files
        for file in files:
            metadata = pq.ParquetFile(file.removeprefix("file:")).metadata
            assert {metadata.row_group(0).column(i).compression for i in range(2)} == {codec}


def test_the_softmax_family_publishes_its_best_epoch_and_bias(published: Evaluated) -> None:
    run = published.run(published.softmax)
    assert (run.model, run.hyperparameters["skill_bias"]) == ("softmax", "True")
    checkpoints = published.pipeline.workdir / "checkpoints"
    best = torch.load(checkpoints / f"checkpoint.best-epoch-{run.best_epoch}.pt", weights_only=True)
    phi_t, background = _published_arrays(published.pipeline, run.run_id)
    np.testing.assert_array_equal(phi_t, best["phi_t"].numpy())
    np.testing.assert_array_equal(background, best["background"].numpy())
    assert np.isfinite(background).all() and np.ptp(background) > 0  # a learned bias
    ranks = published.rows("job_skill_rank", run.run_id)
    top = {r.job_title: r.skill_name for r in ranks if r.rank == 1}
    assert sorted(top) == sorted(PLANTED)
    assert all(skill in PLANTED[title] for title, skill in top.items()), top


def test_skillrank_finds_the_planted_skills_and_agrees_with_phi(published: Evaluated) -> None:
    run_id = published.mixture
    phi = {(r.job_id, s): w for r in published.rows("phi", run_id) for s, w in enumerate(r.weights)}
    ranks = published.rows("job_skill_rank", run_id)
    by_job: dict[str, list[Any]] = {}
    for row in ranks:
        by_job.setdefault(row.job_title, []).append(row)
    assert sorted(by_job) == sorted(PLANTED)
    for title, rows in by_job.items():
        rows.sort(key=lambda r: r.rank)
        assert [r.rank for r in rows] == list(range(1, SKILLS + 1)), title  # top_k 100 > SKILLS
        weights = [r.weight for r in rows]
        assert weights == sorted(weights, reverse=True), title
        assert all(phi[(r.job_id, r.skill_id)] == r.weight for r in rows)
        assert {r.skill_name for r in rows[:3]} == set(PLANTED[title]), title
        # job2vec: softmax of the job's column of phi over all SKILLS skills.
        expected = np.exp(np.array(weights, dtype=np.float64))
        expected /= expected.sum()
        np.testing.assert_allclose([r.probability for r in rows], expected, rtol=1e-9)
        assert abs(sum(r.probability for r in rows) - 1.0) < 1e-9

    by_skill: dict[str, list[Any]] = {}
    for row in published.rows("skill_job_rank", run_id):
        by_skill.setdefault(row.skill_name, []).append(row)
    for title, skills in PLANTED.items():
        for skill in skills:
            rows = sorted(by_skill[skill], key=lambda r: r.rank)
            assert rows[0].job_title == title, (skill, rows[0])
            assert abs(sum(r.probability for r in rows) - 1.0) < 1e-9  # over all 4 jobs


def test_support_matches_a_count_over_training_profiles(published: Evaluated) -> None:
    training = published.pipeline.table("profiles").where("split = 'train'")
    pairs = (
        training.select(
            "profile_id",
            F.explode(F.array_distinct("positions.title")).alias("job_title"),
            "skills",
        )
        .select("profile_id", "job_title", F.explode("skills").alias("skill_name"))
        .distinct()
        .groupBy("job_title", "skill_name")
        .count()
    )
    expected = {(r.job_title, r.skill_name): r["count"] for r in pairs.collect()}
    ranks = published.rows("job_skill_rank", published.mixture)
    assert {(r.job_title, r.skill_name): r.support for r in ranks} == {
        (r.job_title, r.skill_name): expected.get((r.job_title, r.skill_name), 0) for r in ranks
    }
    planted = [r.support for r in ranks if r.skill_name in PLANTED[r.job_title]]
    other = [r.support for r in ranks if r.skill_name not in PLANTED[r.job_title]]
    assert min(planted) > max(other) > 0, (planted, other)


def test_neighbors_are_the_most_cosine_similar_vectors(published: Evaluated) -> None:
    phi_t = np.zeros((4, SKILLS))
    for row in published.rows("phi", published.mixture):
        phi_t[row.job_id] = row.weights
    job2vec = np.exp(phi_t) / np.exp(phi_t).sum(axis=1, keepdims=True)
    skill2vec = (np.exp(phi_t) / np.exp(phi_t).sum(axis=0, keepdims=True)).T
    for table, vectors, key, other in (
        ("job_neighbors", job2vec, "job_id", "neighbor_job_id"),
        ("skill_neighbors", skill2vec, "skill_id", "neighbor_skill_id"),
    ):
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        cosine = unit @ unit.T
        rows = published.rows(table, published.mixture)
        assert len(rows) == 2 * len(vectors), table
        for row in rows:
            i, j = row[key], row[other]
            assert i != j
            np.testing.assert_allclose(row.similarity, cosine[i, j], rtol=1e-5)
            np.fill_diagonal(cosine, -np.inf)
            assert row.similarity == pytest.approx(np.sort(cosine[i])[::-1][row.rank - 1], 1e-5)


def test_views_show_the_latest_succeeded_run_and_a_failed_run_leaves_nothing(
    published: Evaluated, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = published.pipeline
    (first,) = pipeline.table("current_runs").collect()  # the latest succeeded run so far
    ranked_before = pipeline.table("job_skill_rank").count()

    def broken(*args: Any) -> None:
        raise RuntimeError("injected failure while publishing")

    monkeypatch.setattr(jobs.train, "named_neighbors", broken)
    assert pipeline.run(["train"], *SETTINGS) == 1
    failed = pipeline.table("runs").orderBy(F.desc("started_at")).first()
    assert (failed.status, failed.error) == ("failed", "injected failure while publishing")
    for table in RUN_TABLES:
        assert pipeline.table(table).where(F.col("run_id") == failed.run_id).count() == 0
        current = {r.run_id for r in pipeline.table(f"current_{table}").collect()}
        assert current == {first.run_id}, table

    # A run killed while publishing: still 'running', some rows written. The next run
    # (the only process on the work directory) deletes them and marks it failed.
    killed = F.lit("train-killed")
    for table in ("runs", "job_skill_rank"):
        rows = pipeline.table(table).where(F.col("run_id") == first.run_id)
        rows = rows.withColumn("run_id", killed)
        if table == "runs":
            rows = rows.withColumn("status", F.lit("running")).withColumn("ended_at", F.lit(None))
        rows.write.insertInto(f"{pipeline.database}.{table}")

    monkeypatch.undo()
    # What train hands to evaluate and report in its application (jobs._runs) is caught.
    handed: dict[str, dict[str, pa.Table]] = {}
    hand_off_rankings = jobs.train.hand_off_rankings

    def catch(ctx: StageContext, run_id: str, tables: dict[str, pa.Table]) -> None:
        handed[run_id] = tables
        hand_off_rankings(ctx, run_id, tables)

    monkeypatch.setattr(jobs.train, "hand_off_rankings", catch)
    assert pipeline.run(["train"], *SETTINGS) == 0
    monkeypatch.undo()
    cleaned = pipeline.table("runs").where("run_id = 'train-killed'").first()
    assert cleaned.status == "failed" and cleaned.error.startswith("interrupted:")
    assert pipeline.table("job_skill_rank").where("run_id = 'train-killed'").count() == 0
    latest = pipeline.table("runs").where("status = 'succeeded'").orderBy("ended_at").collect()
    assert latest[-2].run_id == first.run_id
    current = pipeline.table("current_job_skill_rank")
    assert {r.run_id for r in current.collect()} == {latest[-1].run_id}
    assert current.count() == 4 * SKILLS
    assert pipeline.table("job_skill_rank").count() == ranked_before + 4 * SKILLS
    # It equals, value for value, what they read from the tables without it.
    assert list(handed) == [latest[-1].run_id]
    for key, columns in RANKING_COLUMNS.items():
        read = pipeline.table(key).where(F.col("run_id") == latest[-1].run_id).select(*columns)
        order = [(c, "ascending") for c in columns]
        expected = read.toArrow().sort_by(order).to_pydict()
        assert handed[latest[-1].run_id][key].sort_by(order).to_pydict() == expected, key
        assert len(expected["rank" if "rank" in columns else "skill_id"]) > 0, key

    # Nothing changed since that run (shards, settings, device, code): it stands, and the
    # rerun writes nothing but its stage_runs row.
    runs_version = table_version(pipeline.spark, f"{pipeline.database}.runs")
    assert pipeline.run(["train"], *SETTINGS) == 0
    assert table_version(pipeline.spark, f"{pipeline.database}.runs") == runs_version
    kept = pipeline.table("stage_runs").where("stage = 'train'").orderBy("started_at").collect()
    assert (kept[-1].status, kept[-1].rows_in, kept[-1].rows_out) == ("succeeded", 0, 0)
    assert {r.run_id for r in current.collect()} == {latest[-1].run_id}


def test_views_are_recreated_only_when_missing_or_defined_differently(
    published: Evaluated, config: Config
) -> None:
    pipeline = published.pipeline
    mine = replace(config, catalog=replace(config.catalog, database=pipeline.database))
    names = list(view_statements(mine))
    assert declare_views(pipeline.spark, mine) == []  # train created them all
    pipeline.spark.sql(f"DROP VIEW {pipeline.database}.upskilling")
    pipeline.spark.sql(
        f"ALTER VIEW {pipeline.database}.similar_jobs SET TBLPROPERTIES"
        " ('skillrank.definition' = 'older')"
    )
    pipeline.spark.sql(f"DROP FUNCTION {pipeline.database}.normalize_name")
    assert declare_views(pipeline.spark, mine) == ["similar_jobs", "upskilling", "normalize_name"]
    assert declare_views(pipeline.spark, mine) == []
    functions = {"normalize_name", "skill_gap"}
    assert {f"current_{t}" for t in ("runs", *RUN_TABLES)} | functions <= set(names)
    rows = pipeline.table("upskilling").where("from_job = 'nurse' AND to_job = 'welder'")
    assert {r.skill_name for r in rows.collect()} >= set(PLANTED["welder"])
    gap = pipeline.spark.sql(f"SELECT * FROM {pipeline.database}.skill_gap('ＷＥＬＤＥＲ', NULL)")
    assert {r.skill_name for r in gap.collect()} >= set(PLANTED["welder"])


def test_intervals_hold_the_published_probability_for_the_mixture_only(
    published: Evaluated,
) -> None:
    mixture = published.rows("job_skill_rank", published.mixture)
    assert all(r.probability_low < r.probability < r.probability_high for r in mixture)
    # Every skill is ranked (top_k >= SKILLS): none can leave, each worst rank is known.
    assert all(r.rank_best <= r.rank <= r.rank_worst for r in mixture)
    assert any(r.rank_best < r.rank_worst for r in mixture)
    # More support, narrower: a title's planted skills against its rarely listed ones.
    for title in PLANTED:
        rows = sorted((r for r in mixture if r.job_title == title), key=lambda r: r.rank)
        relative = [(r.probability_high - r.probability_low) / r.probability for r in rows]
        assert max(relative[:3]) < min(relative[-3:]), title
    softmax = published.rows("job_skill_rank", published.softmax)
    assert {
        (r.probability_low, r.probability_high, r.rank_best, r.rank_worst) for r in softmax
    } == {(None, None, None, None)}


def test_segment_rankings_cover_the_supported_pairs_and_find_the_city_skill(
    published: Evaluated,
) -> None:
    pipeline, min_profiles = published.pipeline, load_config().train.segment_min_profiles
    training = pipeline.table("profiles").where("split = 'train'")
    expected = {}
    for column in ("city", "industry"):
        counts = (
            training.select(column, F.explode(F.array_distinct("positions.title")).alias("t"))
            .groupBy(column, "t")
            .count()
            .collect()
        )
        expected |= {(column, r[column], r.t): r["count"] for r in counts}
    rows = published.rows("job_skill_rank_by_segment", published.mixture)
    pairs: dict[tuple[str, str, str], list[Any]] = {}
    for row in rows:
        pairs.setdefault((row.segment_type, row.segment, row.job_title), []).append(row)
    assert set(pairs) == {key for key, count in expected.items() if count >= min_profiles}
    assert len(pairs) == 16  # 2 cities and 2 industries x 4 titles, each well supported
    for key, ranked in pairs.items():
        ranked.sort(key=lambda r: r.rank)
        assert [r.rank for r in ranked] == list(range(1, SKILLS + 1)), key
        assert {r.profiles for r in ranked} == {expected[key]}, key
        assert abs(sum(r.probability for r in ranked) - 1.0) < 1e-6, key  # theta in float32
        assert all(r.probability_low < r.probability < r.probability_high for r in ranked), key
        assert all(r.rank_best <= r.rank <= r.rank_worst for r in ranked), key
    title, skill = CITY_SKILL
    seattle = [r for r in pairs["city", "SEATTLE", title] if r.skill_name == skill][0]
    new_york = [
        r for r in pairs["city", "NEW_YORK_METROPOLITAN_AREA", title] if r.skill_name == skill
    ][0]
    assert seattle.rank <= 3 and seattle.lift > 1.5, seattle
    assert new_york.rank > 3 and new_york.lift < 1.0 and new_york.support == 0, new_york
    assert published.rows("job_skill_rank_by_segment", published.softmax) == []
    # The analysts' views: the city's rows, and the skill as the city's surest distinctive one.
    view = pipeline.spark.sql(
        f"SELECT rank, skill_name, probability FROM {pipeline.database}.skills_for_job_in"
        f" WHERE job_title = '{title}' AND segment = 'SEATTLE' ORDER BY rank"
    ).collect()
    assert [(r.rank, r.skill_name) for r in view] == [
        (r.rank, r.skill_name) for r in pairs["city", "SEATTLE", title]
    ]
    distinctive = pipeline.spark.sql(
        f"SELECT skill_name, confident, lift, pooled_probability"
        f" FROM {pipeline.database}.distinctive_skills WHERE job_title = '{title}'"
        " AND segment = 'SEATTLE' ORDER BY confident DESC, lift DESC LIMIT 1"
    ).first()
    assert (distinctive.skill_name, distinctive.confident) == (skill, True)
    assert distinctive.pooled_probability == pytest.approx(seattle.probability / seattle.lift)


def test_a_diverging_run_is_rejected_and_runs_choose_the_current_one(
    published: Evaluated, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = published.pipeline

    def current() -> set[str]:
        views = ("current_runs", "current_job_skill_rank", "skills_for_job")
        return {r.run_id for view in views for r in pipeline.table(view).collect()}

    (before,) = pipeline.table("current_runs").collect()
    diverging = ("train.model=softmax", "train.learning_rate=1000000000.0", "train.l2=0.0")
    code = pipeline.run(["train"], *SETTINGS, *(a for c in diverging for a in ("--conf", c)))
    assert code == EXIT_REJECTED
    bad = pipeline.table("runs").orderBy(F.desc("started_at")).first()
    assert bad.status == "rejected" and bad.gate.startswith("validation loss "), bad
    assert f"(the current run {before.run_id}'s " in bad.gate and "NDCG@10" in bad.gate
    assert pipeline.table("job_skill_rank").where(F.col("run_id") == bad.run_id).count() > 0
    assert current() == {before.run_id}  # kept, published, not shown
    capsys.readouterr()
    assert pipeline.run(["runs"], "list") == 0
    listing = capsys.readouterr().out
    assert f"* {before.run_id} succeeded" in listing
    assert f"  {bad.run_id} rejected model=softmax" in listing and bad.gate in listing

    def runs(*args: str) -> int:
        return pipeline.run(["runs"], *args)

    # A pin holds the views; a promotion (here overriding the gate) shows once it is lifted;
    # promoting the earlier run rolls back.
    assert runs("pin", before.run_id, "--reason", "hold during the migration") == 0
    assert runs("pin", bad.run_id) == 1  # rejected: promote it first
    assert runs("promote", bad.run_id, "--reason", "checked by hand") == 0
    assert current() == {before.run_id}
    assert runs("unpin") == 0
    assert current() == {bad.run_id}
    assert runs("unpin") == 1  # no pin left
    assert runs("promote", before.run_id, "--reason", "roll back") == 0
    assert current() == {before.run_id}
    assert runs("promote") == 2 and runs("list", bad.run_id) == 2  # checked before Spark work
    promoted = pipeline.table("runs").where(F.col("run_id") == bad.run_id).first()
    assert (promoted.status, promoted.gate) == ("succeeded", bad.gate)  # the verdict stays
    events = pipeline.table("run_events").where(F.col("run_id").isin(before.run_id, bad.run_id))
    story = [(e.run_id, e.event, e.actor, e.reason) for e in events.orderBy("at").collect()]
    user = getpass.getuser()
    assert story[-5:] == [
        (bad.run_id, "rejected", "gate", bad.gate),
        (before.run_id, "pinned", user, "hold during the migration"),
        (bad.run_id, "promoted", user, "checked by hand"),
        (before.run_id, "unpinned", user, ""),
        (before.run_id, "promoted", user, "roll back"),
    ]


def test_log_lines_are_json_objects_on_request_and_levels_filter_them(
    published: Evaluated, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = published.pipeline
    capsys.readouterr()
    assert pipeline.run(["runs"], "list", "--log-format", "json") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["level"], r["stage"]) for r in records} == {("INFO", "runs")}
    assert records[0]["message"].startswith("run runs-") and records[-1]["message"].startswith(
        "done in "
    )
    assert len({r["run_id"] for r in records}) == 1 and records[0]["time"].endswith("+00:00")
    assert pipeline.run(["runs"], "list", "--log-level", "WARNING") == 0
    assert capsys.readouterr().out == ""
    assert pipeline.run(["runs"], "pin", "train-20200101T000000Z-00000000") == 1
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("skillrank runs: error: runs failed: no run 'train-2020")


def test_maintain_keeps_the_latest_current_and_pinned_runs_and_vacuums(
    published: Evaluated, capsys: pytest.CaptureFixture[str]
) -> None:
    # Last in the module (and after test_evaluation.py, conftest's order): it deletes the
    # rows of runs that other tests read, and it reads the runs they added (four succeeded
    # ones by now: softmax, mixture and two more).
    pipeline, spark = published.pipeline, published.pipeline.spark
    (current,) = pipeline.table("current_runs").collect()
    succeeded = pipeline.table("runs").where("status = 'succeeded'").orderBy("ended_at").collect()
    pinned, latest = succeeded[0], succeeded[-1]
    assert pipeline.run(["runs"], "pin", pinned.run_id) == 0
    keep = {pinned.run_id, current.run_id, latest.run_id}
    gone = {r.run_id for r in succeeded} - keep
    assert len(gone) == 1 and len(keep) == 3, (succeeded, current)
    phi = f"{pipeline.database}.phi"
    # The kept latest run's phi as two small files (a paper-scale run writes several of about
    # 21 MiB): maintain compacts small files, but never those of a table keyed by run_id.
    latest_only = f"run_id = '{latest.run_id}'"
    spark.sql(
        f"INSERT INTO {phi} REPLACE WHERE {latest_only}"
        f" SELECT /*+ REPARTITION(2) */ * FROM {phi} WHERE {latest_only}"
    )

    def phi_files() -> int:  # of the latest run, in the table's current version
        files = spark.table(phi).where(latest_only).select("_metadata.file_path").distinct()
        return files.count()

    assert phi_files() == 2
    version = spark.sql(f"DESCRIBE HISTORY {phi}").first().version
    ranked = {
        r.run_id: r["count"]
        for r in pipeline.table("job_skill_rank").groupBy("run_id").count().collect()
    }
    folder = Path(spark.sql(f"DESCRIBE DETAIL {phi}").first().location.removeprefix("file:"))

    def size() -> int:  # of the data files (the log grows with every maintenance commit)
        files = [p for p in folder.rglob("*.parquet") if "_delta_log" not in p.parts]
        return sum(p.stat().st_size for p in files)

    assert pipeline.run(["maintain"], "--conf", "maintain.keep_runs=1") == 0
    status = {r.run_id: r.status for r in pipeline.table("runs").collect()}
    assert {status[r] for r in gone} == {"removed"} and {status[r] for r in keep} == {"succeeded"}
    for table in (*RUN_TABLES, "evaluation"):
        assert pipeline.table(table).where(F.col("run_id").isin(*gone)).count() == 0, table
    after = {
        r.run_id: r["count"]
        for r in pipeline.table("job_skill_rank").groupBy("run_id").count().collect()
    }
    assert after == {run: ranked[run] for run in keep}
    assert {r.run_id for r in pipeline.table("current_runs").collect()} == {pinned.run_id}
    history = {
        table: {
            r.operation
            for r in spark.sql(f"DESCRIBE HISTORY {pipeline.database}.{table}").collect()
        }
        for table in ("phi", "job_skill_rank", "profiles")
    }
    for table in ("phi", "job_skill_rank"):
        assert "DELETE" in history[table] and "OPTIMIZE" not in history[table], table
    assert phi_files() == 2
    assert "OPTIMIZE" in history["profiles"]
    # VACUUM leaves no commits (the second maintain below shows that it ran).
    assert not any(
        "VACUUM" in operation for operations in history.values() for operation in operations
    )
    assert not any((pipeline.workdir / "checkpoints").iterdir())  # the latest run succeeded
    # Within the retention (168 hours) the removed runs are still there by time travel ...
    # (rows are read: a count could come from the log's statistics without any file)
    old = spark.sql(f"SELECT * FROM {phi} VERSION AS OF {version}").where(
        F.col("run_id").isin(*gone)
    )
    assert len(old.collect()) > 0
    # ... and a second maintain removes no run; with no retention it frees their files.
    before = size()
    unsafe = ("--unsafe-retention", "--conf", "maintain.vacuum_retention_hours=0")
    assert pipeline.run(["maintain"], "--conf", "maintain.keep_runs=1", *unsafe) == 0
    assert {r.run_id: r.status for r in pipeline.table("runs").collect()} == status
    assert size() < before
    with pytest.raises(
        Exception, match="FileNotFound|FAILED_READ_FILE|DELTA_FILE_NOT_FOUND|does not exist"
    ):
        old.collect()
    assert pipeline.run(["runs"], "unpin") == 0  # back to the latest promotion, kept
    assert {r.run_id for r in pipeline.table("current_job_skill_rank").collect()} == {
        current.run_id
    }
    # OPTIMIZE replaced the files of the profiles version the shards come from, and that
    # VACUUM removed them: evaluate, which reads it (segments), says what to do in one line.
    profiles = f"{pipeline.database}.profiles"
    shards_version = pipeline.manifest().delta_versions["profiles"]
    with pytest.raises(Exception, match="FileNotFound|FAILED_READ_FILE|DELTA_FILE_NOT_FOUND"):
        spark.sql(f"SELECT * FROM {profiles} VERSION AS OF {shards_version}").collect()
    capsys.readouterr()
    assert pipeline.run(["evaluate"], *SETTINGS) == 1
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert f"evaluate failed: {profiles} at version {shards_version}, which the shards" in error
    assert "has lost files to VACUUM" in error
    assert "run prepare again, then train on its shards (trace: " in error


def test_maintain_works_on_four_tables_at_a_time_and_starts_none_after_an_error() -> None:
    started: list[str] = []
    running, most = set(), 0
    lock = threading.Lock()

    def command(key: str) -> None:
        nonlocal most
        with lock:
            started.append(key)
            running.add(key)
            most = max(most, len(running))
        try:
            if key == "t0":
                raise RuntimeError("t0 failed")
            time.sleep(0.3)  # t0 fails while the three beside it still run
        finally:
            with lock:
                running.discard(key)

    at_once = jobs.maintain._TABLES_AT_ONCE
    tables = [f"t{i}" for i in range(10)]
    jobs.maintain._each(tables[1:], command)
    assert sorted(started) == tables[1:] and most == at_once == 4
    started.clear()
    with pytest.raises(RuntimeError, match="t0 failed"):
        jobs.maintain._each(tables, command)
    assert sorted(started) == tables[:at_once]  # those beside t0 finished, no other began
