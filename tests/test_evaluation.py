"""The evaluate and report stages on a small published run with known planted truth
(conftest's evaluated_runs)."""

from __future__ import annotations

import argparse
import re
import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from jobs._cli import StageContext, local_table_dir
from jobs._delta_log import live_table
from jobs._runs import (
    RANKING_COLUMNS,
    evaluation_rows,
    hand_off_evaluation,
    hand_off_history,
    hand_off_phi,
    hand_off_published,
    hand_off_rankings,
    load_phi,
    ranking_columns,
    ranking_schema,
    replace_run_rows,
    small_table,
    standing_rows,
    training_history,
)
from skillrank.config import Config, load_config
from skillrank.evaluate import BASELINES
from skillrank.tables import SPECS, declare_tables, table_name, table_version
from skillrank.trainer import EpochRecord
from tests.conftest import (
    CITY_SKILL,
    EVALUATE,
    GENERIC,
    PLANTED,
    SETTINGS,
    Evaluated,
    Pipeline,
    warehouse_dir,
)


@pytest.fixture(scope="module")
def evaluated(evaluated_runs: Evaluated) -> Pipeline:
    return evaluated_runs.pipeline


def _evaluated_run(evaluated_runs: Evaluated) -> Any:
    """The runs row of the evaluated run: the mixture, trained after the softmax."""
    return evaluated_runs.run(evaluated_runs.mixture)


def _rows_of(p: Pipeline, run_id: str, table: str = "evaluation") -> list[Row]:
    return p.table(table).where(F.col("run_id") == run_id).collect()


def _evaluation(p: Pipeline) -> dict[tuple[str, str, int | None, str], float]:
    return {(r.method, r.metric, r.k, r.segment): r.value for r in p.table("evaluation").collect()}


def test_model_kl_is_the_test_loss_and_every_method_is_scored(
    evaluated: Pipeline, evaluated_runs: Evaluated
) -> None:
    run = _evaluated_run(evaluated_runs)
    rows = evaluated.table("evaluation").collect()
    assert {r.run_id for r in rows} == {run.run_id}
    values = _evaluation(evaluated)
    assert values[("model", "kl", None, "all")] == pytest.approx(run.test_loss, rel=1e-5)
    # Difference rows (model - <baseline>) are checked below.
    methods = {r.method for r in rows if " - " not in r.method}
    assert methods == {"model", "softmax", *BASELINES}
    assert run.model == "mixture"
    # The softmax run on the same shards is scored as it predicts: its KL is its test loss.
    softmax = evaluated_runs.run(evaluated_runs.softmax)
    assert values[("softmax", "kl", None, "all")] == pytest.approx(softmax.test_loss, rel=1e-5)
    for method in methods:
        for metric in ("recall", "precision", "ndcg", "map"):
            for k in (5, 10, 20, 50):
                assert 0.0 <= values[(method, metric, k, "all")] <= 1.0, (method, metric, k)
    # Recall@k cannot fall as k grows.
    recalls = [values[("model", "recall", k, "all")] for k in (5, 10, 20, 50)]
    assert recalls == sorted(recalls)
    # A title's profiles list its 3 planted skills, Excel and in Seattle the nurses' own skill
    # (14 in all): recall@5 finds most of them.
    assert values[("model", "recall", 5, "all")] > 0.8


def test_segments_count_the_test_profiles_of_each_city_and_industry(
    evaluated: Pipeline,
) -> None:
    test = evaluated.table("profiles").where("split = 'test'")
    expected = {"all": test.count()}
    for column in ("city", "industry"):
        for row in test.groupBy(column).count().collect():
            expected[f"{column}={row[column]}"] = row["count"]
    assert len(expected) == 5  # all, two cities, two industries
    values = _evaluation(evaluated)
    for method in ("model", "cooccurrence"):
        got = {
            s: v for (m, metric, _, s), v in values.items() if m == method and metric == "profiles"
        }
        assert got == expected, method


def test_planted_truth_precision_matches_the_published_skillrank(
    evaluated: Pipeline, evaluated_runs: Evaluated
) -> None:
    """The model's top 3 skills per title (Excel, generic, left out) against the planted ones."""
    run_id = evaluated_runs.mixture
    ranks = (
        evaluated.table("job_skill_rank")
        .where((F.col("run_id") == run_id) & (F.col("skill_name") != GENERIC))
        .collect()
    )
    hits = []
    for title, skills in PLANTED.items():
        top = sorted((r for r in ranks if r.job_title == title), key=lambda r: r.rank)[:3]
        hits.append(len({r.skill_name for r in top} & set(skills)) / 3)
    values = _evaluation(evaluated)
    assert values[("model", "titles", None, "titles")] == len(PLANTED)
    assert values[("model", "planted_precision", 3, "titles")] == pytest.approx(
        sum(hits) / len(hits)
    )
    assert values[("model", "planted_precision", 3, "titles")] == 1.0
    assert values[("model", "planted_ndcg", 3, "titles")] == pytest.approx(1.0)


def test_planted_buckets_hold_the_titles_of_their_training_counts(evaluated: Pipeline) -> None:
    counts = {r.job_title: r.profile_count for r in evaluated.table("job_vocab").collect()}
    expected = {
        "titles_1_169_profiles": sum(1 for t in PLANTED if counts[t] < 170),
        "titles_170_180_profiles": sum(1 for t in PLANTED if 170 <= counts[t] < 181),
        "titles_181_188_profiles": sum(1 for t in PLANTED if 181 <= counts[t] < 189),
        "titles_min_189_profiles": sum(1 for t in PLANTED if counts[t] >= 189),
    }
    assert sum(expected.values()) == len(PLANTED)
    values = _evaluation(evaluated)
    for method in ("model", "popularity"):
        got = {
            segment: value
            for (m, metric, _, segment), value in values.items()
            if m == method and metric == "titles" and segment.startswith("titles_")
        }
        # An empty bucket gets no rows.
        assert got == {s: n for s, n in expected.items() if n}, (method, counts)


def test_every_mean_has_an_interval_and_the_model_a_difference_per_baseline(
    evaluated: Pipeline,
) -> None:
    rows = evaluated.table("evaluation").collect()
    index = {(r.method, r.metric, r.k, r.segment): r for r in rows}
    methods = {r.method for r in rows if " - " not in r.method}
    assert methods == {"model", "softmax", *BASELINES}
    assert {r.method for r in rows} - methods == {f"model - {b}" for b in BASELINES}
    for r in rows:
        if r.metric in ("profiles", "titles", "coverage_titles"):
            assert (r.ci_low, r.ci_high) == (None, None), r
        elif r.method in methods:
            assert r.ci_low is not None and r.ci_high is not None, r
            assert r.ci_low <= r.value <= r.ci_high, r
        else:
            # model - <baseline>: the difference of the two means, with a paired interval.
            baseline = r.method.removeprefix("model - ")
            model = index["model", r.metric, r.k, r.segment].value
            other = index[baseline, r.metric, r.k, r.segment].value
            assert r.value == pytest.approx(model - other, abs=1e-12), r
            assert r.ci_low is not None and r.ci_high is not None and r.ci_low <= r.ci_high, r
    # The mixture's intervals are judged on every planted title, the softmax's (none) not.
    assert index["model", "coverage_titles", None, "titles"].value == len(PLANTED)
    assert 0.0 <= index["model", "interval_coverage", None, "titles"].value <= 1.0
    assert not any(r.metric == "interval_coverage" and r.method != "model" for r in rows)
    # The model finds the planted skills, popularity ranks the same skills for everyone.
    better = index["model - popularity", "planted_precision", 3, "titles"]
    assert better.value > 0 and better.ci_low > 0, better


def test_rerunning_evaluate_replaces_the_runs_rows(
    evaluated: Pipeline, evaluated_runs: Evaluated
) -> None:
    before = _evaluation(evaluated)
    run = ("--run-id", evaluated_runs.mixture, "--truth", str(evaluated_runs.truth))
    # The first evaluate ran in train's application: the table held none of the run's rows,
    # so they were appended (replace_run_rows).
    assert _latest_mode(evaluated.spark, f"{evaluated.database}.evaluation") == "Append"
    # Nothing changed since the first evaluate (runs, settings, truth, code): its rows stand,
    # and the rerun writes nothing but its stage_runs row.
    version = table_version(evaluated.spark, f"{evaluated.database}.evaluation")
    assert evaluated.run(["evaluate"], *run, *SETTINGS, *EVALUATE) == 0
    assert table_version(evaluated.spark, f"{evaluated.database}.evaluation") == version
    kept = evaluated.table("stage_runs").where("stage = 'evaluate'").orderBy("started_at")
    assert [tuple(r) for r in kept.select("status", "rows_in", "rows_out").tail(1)] == [
        ("succeeded", 0, 0)
    ]
    # Another batch size scores the same profiles: the run's rows are replaced by equal ones.
    # The first evaluate ran with train (conftest): on the phi and the rankings (interval
    # coverage) train handed over in memory; this one reads them from the tables.
    batch = ("--conf", "evaluate.batch_size=7")
    assert evaluated.run(["evaluate"], *run, *SETTINGS, *EVALUATE, *batch) == 0
    assert table_version(evaluated.spark, f"{evaluated.database}.evaluation") == version + 1
    assert _latest_mode(evaluated.spark, f"{evaluated.database}.evaluation") == "Overwrite"
    assert evaluated.table("evaluation").count() == len(before)
    assert _evaluation(evaluated) == before


def _latest_mode(spark: SparkSession, table: str) -> str:
    """The write mode of the table's latest commit: Append, or Overwrite for REPLACE WHERE."""
    latest = spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").first()
    assert latest is not None
    return str(latest.operationParameters["mode"])


def test_rows_stand_only_while_their_commit_is_the_latest(
    spark: SparkSession, config: Config
) -> None:
    database = f"t_stand_{uuid.uuid4().hex[:6]}"
    local = replace(config, catalog=replace(config.catalog, database=database))
    declare_tables(spark, local, ["coclusters"])
    ctx = StageContext(spark, local, Path("/nonexistent"), "report-a", argparse.Namespace())

    def rows(run_id: str) -> DataFrame:
        row = Row(run_id=run_id, kind="job", item_id=0, item_name="nurse", cocluster=0)
        return spark.createDataFrame([row], SPECS["coclusters"].schema)

    def run_ids() -> list[str]:
        return sorted(r.run_id for r in spark.table(table_name(local, "coclusters")).collect())

    assert standing_rows(ctx, "coclusters", "train-a", "f1") is None  # the table's creation
    replace_run_rows(ctx, "coclusters", rows("train-a"), "train-a", "f1")
    assert standing_rows(ctx, "coclusters", "train-a", "f1") == "report-a"
    assert standing_rows(ctx, "coclusters", "train-a", "f2") is None
    # Any later commit (here another run's rows, written without a digest) ends it.
    replace_run_rows(ctx, "coclusters", rows("train-b"), "train-b")
    assert standing_rows(ctx, "coclusters", "train-a", "f1") is None
    assert run_ids() == ["train-a", "train-b"]
    # A run train published in this application has no rows yet: none stand, the first are
    # appended and the next replace them, each commit with its digest.
    hand_off_published(ctx, "train-c")
    assert standing_rows(ctx, "coclusters", "train-c", "f3") is None
    modes = []
    for _ in range(2):
        replace_run_rows(ctx, "coclusters", rows("train-c"), "train-c", "f3")
        modes.append(_latest_mode(spark, table_name(local, "coclusters")))
    assert modes == ["Append", "Overwrite"]
    assert run_ids() == ["train-a", "train-b", "train-c"]
    later = StageContext(spark, local, Path("/nonexistent"), "report-b", argparse.Namespace())
    assert standing_rows(later, "coclusters", "train-c", "f3") == "report-a"


def test_small_tables_read_from_the_delta_log_equal_sparks_reads(
    evaluated: Pipeline, config: Config
) -> None:
    # Under the embedded default (a warehouse under the work directory) small_table reads the
    # Delta log and files; elsewhere (here the shared session's warehouse as a URI, as
    # Pipeline's stages see it) Spark reads them.
    spark = evaluated.spark
    warehouse = warehouse_dir(spark)
    contexts = [
        StageContext(
            spark,
            replace(
                config,
                catalog=replace(config.catalog, database=evaluated.database, warehouse_dir=where),
            ),
            warehouse.parent,
            "report-x",
            argparse.Namespace(workdir=str(warehouse.parent)),
        )
        for where in (warehouse.name, warehouse.as_uri())
    ]
    for key, columns in (
        ("stage_runs", ["run_id", "stage", "status", "ended_at", "config_fingerprint"]),
        ("ingested_files", ["ingest_run_id", "source_file", "lines", "modified_at"]),
    ):
        by_log, by_spark = (small_table(ctx, key, columns) for ctx in contexts)
        table_dir = local_table_dir(contexts[0].args, contexts[0].config, key)
        assert table_dir is not None and live_table(table_dir, columns) is not None
        assert local_table_dir(contexts[1].args, contexts[1].config, key) is None
        assert by_log.num_rows > 0 and by_log.schema == by_spark.schema
        # One timestamp column each (ended_at, modified_at), as UTC instants either way.
        kinds = [str(f.type) for f in by_log.schema if f.type.id == pa.timestamp("us").id]
        assert kinds == ["timestamp[us, tz=UTC]"]
        assert sorted(by_log.to_pylist(), key=str) == sorted(by_spark.to_pylist(), key=str)


def test_a_later_stage_takes_what_train_and_evaluate_handed_over(spark: SparkSession) -> None:
    # In one application (`all`), evaluate and report use the tensor train published (the
    # table is read only for another run: the rerun above shows the two give the same rows).
    ctx = StageContext(
        spark, load_config(), Path("/nonexistent"), "evaluate-x", argparse.Namespace()
    )
    phi_t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    hand_off_phi(ctx, "train-a", phi_t)
    assert load_phi(ctx, Row(run_id="train-a", jobs=2, skills=3)) is phi_t
    later = torch.zeros(2, 3)
    hand_off_phi(ctx, "train-b", later)  # a later run's replaces it
    assert load_phi(ctx, Row(run_id="train-b", jobs=2, skills=3)) is later
    # So do report's Fig 2 (train's epochs) and its scores (the rows evaluate wrote).
    history = [EpochRecord(1, 2.5, 2.0, 0.4, 0.1), EpochRecord(2, 2.2, 1.9, 0.5, 0.1)]
    hand_off_history(ctx, "train-b", history)
    assert training_history(ctx, "train-b") is history
    rows = [{"method": "model", "metric": "kl", "k": None, "segment": "all", "value": 1.9}]
    hand_off_evaluation(ctx, "train-b", rows)
    assert evaluation_rows(ctx, "train-b") is rows
    # And evaluate takes the columns of the rankings train published.
    rankings = {key: ranking_schema(key).empty_table() for key in RANKING_COLUMNS}
    hand_off_rankings(ctx, "train-b", rankings)
    for key, table in rankings.items():
        assert ranking_columns(ctx, key, "train-b") is table


def test_evaluate_names_a_run_that_does_not_exist(evaluated: Pipeline) -> None:
    nope = "train-20200101T000000Z-00000000"
    assert evaluated.run(["evaluate"], "--run-id", nope, *SETTINGS) == 1
    failed = evaluated.table("stage_runs").where("stage = 'evaluate' AND status = 'failed'")
    (row,) = failed.collect()
    assert row.error == f"--run-id {nope}: no such run in {evaluated.database}.runs"


def test_report_writes_every_figure_and_the_coclusters(
    evaluated: Pipeline, evaluated_runs: Evaluated
) -> None:
    run = _evaluated_run(evaluated_runs)
    options = ("--run-id", run.run_id, *SETTINGS, "--conf", "report.coclusters=2")
    assert evaluated.run(["report"], *options) == 0
    directory = evaluated.workdir / "reports" / run.run_id
    page = (directory / "report.html").read_text(encoding="utf-8")
    # The figures in the paper's order, then ours.
    pngs = re.findall(r'href="([\w.]+\.png)"', page)
    assert [p.removesuffix(".png").split("_")[0] for p in pngs] == [
        *("fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "evaluation")
    ]
    for png in pngs:
        assert (directory / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # First, the verdict in words, with the evaluation's numbers.
    scores = {(r.method, r.metric, r.k, r.segment): r for r in _rows_of(evaluated, run.run_id)}
    verdict = page[page.index("</h1>") :].split("</p>", 1)[0]
    assert verdict.startswith('</h1>\n<p class="verdict"><strong>The published model (mixture) ')
    recall = scores["model", "recall", 20, "all"]
    profiles = scores["model", "profiles", None, "all"].value
    assert f"recall@20 {recall.value:.3f} [{recall.ci_low:.3f}, {recall.ci_high:.3f}]" in verdict
    assert f"over {profiles:,.0f} test profiles" in verdict
    # test_every_mean_has_an_interval... finds the model above popularity on planted truth.
    assert "beats every baseline on planted precision@3" in verdict or re.search(
        r"on planted precision@3 it beats [a-z_, ]*popularity", verdict
    ), verdict
    # The run: its crawl file and splits.
    manifest = evaluated.manifest()
    assert "1 file, " in page and "crawl.jsonl" in page
    assert (
        f"{manifest.rows['train']:,} training, {manifest.rows['validation']:,} validation" in page
    )
    # What SkillRank says: each title's top 10 skills in SkillRank's order.
    ranks = sorted(_rows_of(evaluated, run.run_id, "job_skill_rank"), key=lambda r: r.rank)
    for title in PLANTED:
        top = [r.skill_name for r in ranks if r.job_title == title][:10]
        skills = "".join(f"<li>{skill}</li>" for skill in top)
        assert f"<h3>{title}</h3>" in page and f"<ol>{skills}</ol>" in page
    assert page.count("Nearest jobs (cosine of job2vec)") == 3
    # Table 4 by lift: SkillRank's probability over the skill's background probability.
    background = {
        r.skill_name: r.probability for r in _rows_of(evaluated, run.run_id, "skill_background")
    }
    table = page[page.index('<table class="pairs">') :]
    num = '<td class="num">'
    row = rf"{num}([\d,.]+)</td>{num}[\d.]+</td>{num}[\d,]+</td></tr>"
    lifts = [float(lift.replace(",", "")) for lift in re.findall(row, table)]
    best = max(
        (r for r in ranks if r.support >= 20),
        key=lambda r: r.probability / background[r.skill_name],
    )
    assert lifts == sorted(lifts, reverse=True)
    assert lifts[0] == pytest.approx(best.probability / background[best.skill_name], abs=0.05)
    members = evaluated.table("coclusters").collect()
    assert sorted((r.kind, r.item_name) for r in members) == sorted(
        [("job", t) for t in PLANTED]
        + [("skill", s) for s in {*sum(PLANTED.values(), []), GENERIC, CITY_SKILL[1]}]
    )
    assert {r.cocluster for r in members} == {0, 1}
    # Nothing changed (the run, its evaluation, settings, code): the report stands.
    written = (directory / "report.html").stat().st_mtime_ns
    version = table_version(evaluated.spark, f"{evaluated.database}.coclusters")
    assert evaluated.run(["report"], *options) == 0
    assert (directory / "report.html").stat().st_mtime_ns == written
    assert table_version(evaluated.spark, f"{evaluated.database}.coclusters") == version
    # Without its page, a rerun writes the report again and replaces the run's memberships.
    shutil.rmtree(directory)
    assert evaluated.run(["report"], *options) == 0
    assert evaluated.table("coclusters").count() == len(members)
    assert table_version(evaluated.spark, f"{evaluated.database}.coclusters") == version + 1
    assert sorted(p.name for p in directory.parent.iterdir()) == [run.run_id]
    assert (directory / "report.html").read_text(encoding="utf-8").count("<img") == page.count(
        "<img"
    )
