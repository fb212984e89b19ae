"""The promotion gates and the rule that names the current run (skillrank.promotion).

The whole story on published runs (a diverging run rejected, runs promote/pin/unpin) is in
tests/test_publish.py; here each gate and each case of the rule on hand-made rows.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime

import pytest
from pyspark.sql import SparkSession

from skillrank.config import Config
from skillrank.promotion import RunScores, current_run_sql, gate_reasons

GOOD = RunScores("new", train_loss=1.9, validation_loss=2.0, validation_ndcg=0.52, test_loss=2.1)
CURRENT = RunScores("old", train_loss=1.8, validation_loss=1.9, validation_ndcg=0.50, test_loss=2.0)


def test_each_gate_names_what_failed(config: Config) -> None:
    params = replace(
        config.publish, gate_validation_loss_increase=0.10, gate_ndcg_below_cooccurrence=0.01
    )
    assert gate_reasons(GOOD, 0.50, CURRENT, params) == []
    assert gate_reasons(GOOD, 0.50, None, params) == []  # the first run: no loss to compare
    # Losses: 2.0 <= 1.9 * 1.1 = 2.09 passes; 2.1 does not.
    worse = replace(GOOD, validation_loss=2.1)
    assert gate_reasons(worse, 0.50, CURRENT, params) == [
        "validation loss 2.1 > 2.09 (the current run old's 1.9 + 10%)"
    ]
    # NDCG: 0.52 >= 0.525 - 0.01 passes; 0.51 < 0.53 - 0.01 does not.
    assert gate_reasons(GOOD, 0.525, CURRENT, params) == []
    assert gate_reasons(replace(GOOD, validation_ndcg=0.51), 0.53, CURRENT, params) == [
        "validation NDCG@10 0.5100 < 0.5200 (co-occurrence counting's 0.5300 - 0.01)"
    ]
    # Anything not finite fails alone (the other gates cannot be read then).
    diverged = replace(GOOD, validation_loss=math.inf, test_loss=math.nan)
    assert gate_reasons(diverged, 0.50, CURRENT, params) == [
        "validation loss is inf (not a finite number)",
        "test loss is nan (not a finite number)",
    ]
    assert gate_reasons(replace(GOOD, train_loss=None), 0.50, CURRENT, params) == []
    assert gate_reasons(replace(GOOD, validation_ndcg=None), 0.50, None, params) == [
        "validation NDCG@10 is None (not a finite number)"
    ]


def _current(spark: SparkSession, runs: list[tuple], events: list[tuple]) -> str | None:
    for name, rows, schema in (
        ("promotion_runs", runs, "run_id STRING, status STRING, ended_at TIMESTAMP"),
        ("promotion_events", events, "run_id STRING, event STRING, at TIMESTAMP"),
    ):
        spark.createDataFrame(rows, schema).createOrReplaceTempView(name)
    return spark.sql(f"SELECT {current_run_sql('promotion_runs', 'promotion_events')}").first()[0]


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], "b"),  # before run_events: the latest succeeded run ("c" was rejected)
        ([("a", "promoted", 1), ("c", "rejected", 3)], "a"),
        ([("a", "promoted", 1), ("b", "promoted", 2)], "b"),
        ([("a", "promoted", 1), ("b", "promoted", 2), ("a", "promoted", 4)], "a"),  # rollback
        ([("b", "promoted", 2), ("a", "pinned", 3), ("c", "promoted", 4)], "a"),  # pin holds
        ([("b", "promoted", 2), ("a", "pinned", 3), ("a", "unpinned", 5)], "b"),
        ([("a", "pinned", 3), ("a", "unpinned", 5), ("b", "pinned", 6)], "b"),
    ],
)
def test_the_current_run_is_the_pinned_one_else_the_latest_promotion(
    spark: SparkSession, events: list[tuple[str, str, int]], expected: str
) -> None:
    def at(minute: int) -> datetime:
        return datetime(2026, 11, 30, 1, minute)

    runs = [("a", "succeeded", at(1)), ("b", "succeeded", at(2)), ("c", "rejected", at(3))]
    assert _current(spark, runs, [(r, e, at(m)) for r, e, m in events]) == expected
