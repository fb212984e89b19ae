"""The evaluate and report stages on a small published run with known planted truth."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from skillrank.evaluate import BASELINES
from tests.conftest import Pipeline, write_crawl
from tests.test_publish import PLANTED, SETTINGS, planted_crawl

PLACES = [("Greater Seattle Area", "SEATTLE"), ("New York, New York", "NEW_YORK_METROPOLITAN_AREA")]
INDUSTRIES = [("Computer Software", "COMPUTER_SOFTWARE"), ("Research", "RESEARCH")]
GENERIC = "microsoft excel"
# Three planted skills per title: judge the top 3 (the default cut-off is 10). The four titles
# have 169 (welder), 180, 181 and 189 (nurse) training profiles: these bucket edges put one
# title in each bucket (the test counts them whatever the edges).
EVALUATE = ("--conf", "evaluate.title_k=3", "--conf", "evaluate.title_buckets=[170, 181, 189]")


def _crawl(count: int, seed: int) -> list[dict[str, Any]]:
    """test_publish's planted crawl, spread over two cities and two industries."""
    records = planted_crawl(count, seed)
    for i, record in enumerate(records):
        record["location"] = PLACES[i % 2][0]
        record["industry"] = INDUSTRIES[(i // 2) % 2][0]
    return records


def _write_truth(directory: Path) -> Path:
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


@pytest.fixture(scope="module")
def evaluated(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """A published run, evaluated against its planted truth."""
    tmp_path = tmp_path_factory.mktemp("evaluated")
    pipeline = Pipeline(spark, tmp_path / "work", f"t_evaluate_{uuid.uuid4().hex[:6]}")
    crawl = write_crawl(tmp_path / "crawl.jsonl", _crawl(600, seed=11))
    assert pipeline.run(["ingest", "prepare"], "--input", str(crawl), *SETTINGS) == 0
    # The softmax first, on the same shards: the default mixture, trained last, is the run
    # evaluated, and the softmax run is scored beside it.
    assert pipeline.run(["train"], *SETTINGS, "--conf", "train.model=softmax") == 0
    assert pipeline.run(["train"], *SETTINGS) == 0
    truth = _write_truth(tmp_path / "truth")
    assert pipeline.run(["evaluate"], "--truth", str(truth), *SETTINGS, *EVALUATE) == 0
    return pipeline


def _latest_run(p: Pipeline) -> Any:
    """The runs row of the evaluated run: the latest, the mixture."""
    return p.table("runs").orderBy(F.desc("ended_at")).first()


def _evaluation(p: Pipeline) -> dict[tuple[str, str, int | None, str], float]:
    return {(r.method, r.metric, r.k, r.segment): r.value for r in p.table("evaluation").collect()}


def test_model_kl_is_the_test_loss_and_every_method_is_scored(evaluated: Pipeline) -> None:
    run = _latest_run(evaluated)
    rows = evaluated.table("evaluation").collect()
    assert {r.run_id for r in rows} == {run.run_id}
    values = _evaluation(evaluated)
    assert values[("model", "kl", None, "all")] == pytest.approx(run.test_loss, rel=1e-5)
    # Difference rows (model - <baseline>) are checked below.
    methods = {r.method for r in rows if " - " not in r.method}
    assert methods == {"model", "softmax", *BASELINES}
    assert run.model == "mixture"
    # The softmax run on the same shards is scored as it predicts: its KL is its test loss.
    softmax = evaluated.table("runs").where("model = 'softmax'").first()
    assert values[("softmax", "kl", None, "all")] == pytest.approx(softmax.test_loss, rel=1e-5)
    for method in methods:
        for metric in ("recall", "precision", "ndcg", "map"):
            for k in (5, 10, 20, 50):
                assert 0.0 <= values[(method, metric, k, "all")] <= 1.0, (method, metric, k)
    # Recall@k cannot fall as k grows.
    recalls = [values[("model", "recall", k, "all")] for k in (5, 10, 20, 50)]
    assert recalls == sorted(recalls)
    # Every title's profile holds at most 4 skills out of 13: recall@5 finds most of them.
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


def test_planted_truth_precision_matches_the_published_skillrank(evaluated: Pipeline) -> None:
    """The model's top 3 skills per title (Excel, generic, left out) against the planted ones."""
    run_id = _latest_run(evaluated).run_id
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
        if r.metric in ("profiles", "titles"):
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
    # The model finds the planted skills, popularity ranks the same skills for everyone.
    better = index["model - popularity", "planted_precision", 3, "titles"]
    assert better.value > 0 and better.ci_low > 0, better


def test_rerunning_evaluate_replaces_the_runs_rows(evaluated: Pipeline, tmp_path: Path) -> None:
    before = _evaluation(evaluated)
    truth = _write_truth(tmp_path / "truth")
    assert evaluated.run(["evaluate"], "--truth", str(truth), *SETTINGS, *EVALUATE) == 0
    assert evaluated.table("evaluation").count() == len(before)
    assert _evaluation(evaluated) == before


def test_evaluate_names_a_run_that_does_not_exist(evaluated: Pipeline) -> None:
    assert evaluated.run(["evaluate"], "--run-id", "train-nope", *SETTINGS) == 1
    failed = evaluated.table("stage_runs").where("stage = 'evaluate' AND status = 'failed'")
    (row,) = failed.collect()
    assert row.error == f"--run-id train-nope: no such run in {evaluated.database}.runs"


def test_report_writes_every_figure_and_the_coclusters(evaluated: Pipeline) -> None:
    assert evaluated.run(["report"], *SETTINGS, "--conf", "report.coclusters=2") == 0
    run = _latest_run(evaluated)
    directory = evaluated.workdir / "reports" / run.run_id
    page = (directory / "report.html").read_text(encoding="utf-8")
    pngs = sorted(re.findall(r'href="([\w.]+\.png)"', page))
    assert [p.removesuffix(".png").split("_")[0] for p in pngs] == [
        *("evaluation", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7")
    ]
    for png in pngs:
        assert (directory / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert run.run_id in page and "data scientist" in page  # Table 4 names the pairs
    members = evaluated.table("coclusters").collect()
    assert sorted((r.kind, r.item_name) for r in members) == sorted(
        [("job", t) for t in PLANTED]
        + [("skill", s) for s in {*sum(PLANTED.values(), []), GENERIC}]
    )
    assert {r.cocluster for r in members} == {0, 1}
    # A rerun replaces the report and the run's memberships.
    assert evaluated.run(["report"], *SETTINGS, "--conf", "report.coclusters=2") == 0
    assert evaluated.table("coclusters").count() == len(members)
    assert sorted(p.name for p in directory.parent.iterdir()) == [run.run_id]
