"""Spark transforms that turn the rankings of skillrank.rankings into the published tables.

Each function takes DataFrames and returns one, with the columns of its table in
skillrank.tables (conform() casts and orders them). The views of skillrank.views show the
rows of the current run (skillrank.promotion: ``current_run_sql``).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

# Published tables keyed by run_id, each with a current_<name> view.
RUN_TABLES = (
    "training_history",
    "phi",
    "skill_background",
    "job_skill_rank",
    "job_skill_rank_by_segment",
    "skill_job_rank",
    "job_neighbors",
    "skill_neighbors",
)


def ranked_pairs(ranked: DataFrame, job_vocab: DataFrame, skill_vocab: DataFrame) -> DataFrame:
    """A top-k ranking (job_id, skill_id, rank, weight, probability, support) with names."""
    return ranked.join(F.broadcast(job_vocab.select("job_id", "job_title")), "job_id").join(
        F.broadcast(skill_vocab.select("skill_id", "skill_name")), "skill_id"
    )


def named_neighbors(neighbors: DataFrame, vocab: DataFrame, kind: str) -> DataFrame:
    """Neighbour pairs (<kind>_id, neighbor_<kind>_id, rank, similarity) with both names and
    the neighbour's training profiles (the vocabulary's profile_count)."""
    key, name = f"{kind}_id", "job_title" if kind == "job" else "skill_name"
    names = F.broadcast(vocab.select(key, name))
    other = F.broadcast(
        vocab.select(
            F.col(key).alias(f"neighbor_{key}"),
            F.col(name).alias(f"neighbor_{name}"),
            F.col("profile_count").alias("neighbor_profiles"),
        )
    )
    return neighbors.join(names, key).join(other, f"neighbor_{key}")
