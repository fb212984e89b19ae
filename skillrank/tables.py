"""Every table SkillRank writes: schema, column comments and owner stage, declared in one place.

A table is created (``declare_tables``) before its first write, so that ``DESCRIBE TABLE``
tells an analyst what each column means even before any data arrives.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DataType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from skillrank.config import Config, ConfigError
from skillrank.session import hadoop_path


def _col(name: str, dtype: DataType, comment: str, nullable: bool = True) -> StructField:
    return StructField(name, dtype, nullable, metadata={"comment": comment})


@dataclass(frozen=True)
class TableSpec:
    key: str
    owner: str
    comment: str
    schema: StructType
    partition_by: tuple[str, ...] = ()
    # Delta CHECK constraints (name -> SQL condition): a write that breaks one fails whole.
    checks: tuple[tuple[str, str], ...] = ()
    # Other table properties (name -> value), such as settings of the Parquet writer, which
    # Delta passes to it from the table's properties.
    properties: tuple[tuple[str, str], ...] = ()


POSITION = StructType(
    [
        StructField("title", StringType()),
        StructField("company", StringType()),
        StructField("start", StringType()),
        StructField("end", StringType()),
    ]
)

# Columns and checks shared by the tables train publishes.
_RUN_ID = _col("run_id", StringType(), "train run (runs.run_id)", False)
_WEIGHT = _col("weight", FloatType(), "phi[skill, job]; higher is stronger", False)
_SUPPORT = _col(
    "support",
    LongType(),
    "training profiles holding both the job and the skill; higher is better supported",
    False,
)
_INTERVAL = (
    _col(
        "probability_low",
        DoubleType(),
        "lower end of the 90% interval of probability: the 5th percentile of its posterior,"
        " Beta(A p, A (1 - p)) with A the row's credit plus its prior pseudo-counts"
        " (docs/trainer.md); null for train.model=softmax, which has no posterior",
    ),
    _col(
        "probability_high",
        DoubleType(),
        "upper end of the 90% interval of probability (the 95th percentile); null for"
        " train.model=softmax",
    ),
    _col(
        "rank_best",
        IntegerType(),
        "highest rank the intervals allow: 1 + the skills whose interval lies wholly above"
        " this one's; null for train.model=softmax",
    ),
    _col(
        "rank_worst",
        IntegerType(),
        "lowest rank the intervals allow: 1 + the skills whose interval reaches above this"
        " one's lower end; null where an unranked skill reaches it (it may leave the top"
        " publish.top_k), and for train.model=softmax. Equal to rank_best: settled",
    ),
)
_RANK_CHECKS = (
    ("rank_from_1", "rank >= 1"),
    ("probability_in_0_1", "probability >= 0 AND probability <= 1"),
    ("support_non_negative", "support >= 0"),
)
_INTERVAL_CHECKS = (
    *_RANK_CHECKS,
    (
        "interval_holds_probability",
        "(probability_low IS NULL OR probability_low <= probability)"
        " AND (probability_high IS NULL OR probability <= probability_high)",
    ),
    (
        "rank_range_holds_rank",
        "(rank_best IS NULL OR rank_best <= rank) AND (rank_worst IS NULL OR rank <= rank_worst)",
    ),
)
_NEIGHBOR_CHECKS = (
    ("rank_from_1", "rank >= 1"),
    ("similarity_in_range", "similarity >= -1 AND similarity <= 1"),
)

SPECS: dict[str, TableSpec] = {
    spec.key: spec
    for spec in [
        TableSpec(
            "ingested_files",
            "ingest",
            "One row per crawl file ingested; a file (path, size, mtime) listed here is skipped.",
            StructType(
                [
                    _col("source_file", StringType(), "URI of the crawl file", False),
                    _col("file_size", LongType(), "size in bytes when ingested", False),
                    _col("modified_at", TimestampType(), "file modification time", False),
                    _col("ingest_run_id", StringType(), "ingest run that read it", False),
                    _col("lines", LongType(), "raw lines read (= accepted + quarantined)", False),
                    _col("accepted", LongType(), "lines written to profiles_raw", False),
                    _col("quarantined", LongType(), "lines written to quarantine", False),
                ]
            ),
        ),
        TableSpec(
            "profiles_raw",
            "ingest",
            "Every valid crawl line, parsed but unchanged; several snapshots per profile.",
            StructType(
                [
                    _col("ingest_run_id", StringType(), "ingest run that wrote the row", False),
                    _col("source_file", StringType(), "URI of the crawl file", False),
                    _col("line_number", LongType(), "1-based line number in the file", False),
                    _col("line_sha256", StringType(), "SHA-256 of the raw line", False),
                    _col("profile_id", StringType(), "stable id of the profile", False),
                    _col(
                        "crawled_at", TimestampType(), "when this snapshot was crawled (UTC)", False
                    ),
                    _col("location", StringType(), "location as crawled"),
                    _col("industry", StringType(), "industry as crawled"),
                    _col("positions", ArrayType(POSITION), "positions as crawled"),
                    _col("skills", ArrayType(StringType()), "skills as crawled"),
                ]
            ),
        ),
        TableSpec(
            "quarantine",
            "ingest",
            "Crawl lines rejected by ingest, with the reason (docs/crawl-format.md lists them).",
            StructType(
                [
                    _col("ingest_run_id", StringType(), "ingest run that rejected it", False),
                    _col("source_file", StringType(), "URI of the crawl file", False),
                    _col("line_number", LongType(), "1-based line number in the file", False),
                    _col("reason", StringType(), "reason code, e.g. invalid_json", False),
                    _col("reason_detail", StringType(), "field concerned, where there is one"),
                    _col("raw_bytes", LongType(), "length of the raw line in bytes", False),
                    _col(
                        "raw_text", StringType(), "start of the raw line (invalid UTF-8 replaced)"
                    ),
                    _col(
                        "profile_id",
                        StringType(),
                        "the line's profile_id where it is a JSON object holding one as a string",
                    ),
                ]
            ),
        ),
        TableSpec(
            "profiles",
            "prepare",
            "One row per profile: the latest snapshot, cleaned, with its city, industry and split.",
            StructType(
                [
                    _col("profile_id", StringType(), "stable id of the profile", False),
                    _col(
                        "crawled_at", TimestampType(), "crawl time of the winning snapshot", False
                    ),
                    _col("city", StringType(), "canonical city code; null when not recognised"),
                    _col("industry", StringType(), "canonical industry code; null when unknown"),
                    _col("positions", ArrayType(POSITION), "positions, titles cleaned"),
                    _col(
                        "titles",
                        ArrayType(StringType()),
                        "distinct cleaned titles, first seen first",
                    ),
                    _col("skills", ArrayType(StringType()), "distinct cleaned skills, sorted"),
                    _col("split", StringType(), "train, validation or test (salted hash)", False),
                    _col("source_file", StringType(), "crawl file of the winning snapshot", False),
                    _col("line_number", LongType(), "its line number in that file", False),
                ]
            ),
        ),
        TableSpec(
            "unrecognized_values",
            "prepare",
            "Every location and industry that matched no alias of conf/aliases.yml, and every"
            " title and skill that cost a profile by missing the vocabulary, per prepare run"
            " (one commit a run), with the profiles it cost (docs/tables.md).",
            StructType(
                [
                    _col("prepare_run_id", StringType(), "prepare run that found it", False),
                    _col("field", StringType(), "location, industry, title or skill", False),
                    _col(
                        "raw_value",
                        StringType(),
                        "the value as crawled (latest snapshot of each profile); a title or"
                        " skill as cleaned",
                        False,
                    ),
                    _col(
                        "normalized_value",
                        StringType(),
                        "the value as prepare reads it (normalize_name: case, width, spaces)",
                        False,
                    ),
                    _col(
                        "profiles",
                        LongType(),
                        "profiles whose value it is (a title's or skill's: of those in the"
                        " configured cities and industries)",
                        False,
                    ),
                    _col(
                        "profiles_lost",
                        LongType(),
                        "of them, those it cost: a location's with an industry of"
                        " prepare.industries, an industry's in a city of prepare.cities (the"
                        " two sum to what prepare.max_unrecognized_share bounds); a title's or"
                        " skill's dropped as no_known_title or no_known_skill",
                        False,
                    ),
                ]
            ),
            checks=(
                ("known_field", "field IN ('location', 'industry', 'title', 'skill')"),
                ("lost_within_profiles", "profiles_lost >= 0 AND profiles_lost <= profiles"),
            ),
        ),
        TableSpec(
            "job_vocab",
            "prepare",
            "Job titles the model knows: dense ids, most frequent first.",
            StructType(
                [
                    _col("job_id", IntegerType(), "dense id from 0; column of phi", False),
                    _col("job_title", StringType(), "cleaned job title", False),
                    _col("profile_count", LongType(), "training profiles holding it", False),
                ]
            ),
        ),
        TableSpec(
            "skill_vocab",
            "prepare",
            "Skills the model knows: dense ids, most frequent first.",
            StructType(
                [
                    _col("skill_id", IntegerType(), "dense id from 0; row of phi", False),
                    _col("skill_name", StringType(), "cleaned skill name", False),
                    _col("profile_count", LongType(), "training profiles holding it", False),
                ]
            ),
        ),
        TableSpec(
            "stage_runs",
            "every stage (jobs/_cli.py)",
            "One row per stage run: what it read, wrote and dropped, and how long it took.",
            StructType(
                [
                    _col("run_id", StringType(), "id of the stage run", False),
                    _col("stage", StringType(), "ingest, prepare, ...", False),
                    _col("status", StringType(), "succeeded or failed", False),
                    _col("started_at", TimestampType(), "start (UTC)", False),
                    _col("ended_at", TimestampType(), "end (UTC)", False),
                    _col("duration_seconds", DoubleType(), "wall time in seconds", False),
                    _col("rows_in", LongType(), "rows read"),
                    _col("rows_out", LongType(), "rows written"),
                    _col(
                        "rows_dropped", MapType(StringType(), LongType()), "dropped rows by reason"
                    ),
                    _col(
                        "input_versions", MapType(StringType(), LongType()), "Delta versions read"
                    ),
                    _col(
                        "output_versions",
                        MapType(StringType(), LongType()),
                        "Delta versions written",
                    ),
                    _col(
                        "config_fingerprint", StringType(), "hash of the full configuration", False
                    ),
                    _col("config_json", StringType(), "the full configuration", False),
                    _col("error", StringType(), "one-line error of a failed run"),
                ]
            ),
        ),
        TableSpec(
            "runs",
            "train",
            "One row per training run; its published rows reach the views only when the run"
            " is the current one (run_events, docs/operations.md).",
            StructType(
                [
                    _col("run_id", StringType(), "id of the train run; key of every table", False),
                    _col(
                        "status",
                        StringType(),
                        "running, succeeded (complete, passed the gates or promoted),"
                        " rejected (complete, failed a gate: see gate), failed, or removed"
                        " (rows deleted by maintain)",
                        False,
                    ),
                    _col("started_at", TimestampType(), "start (UTC)", False),
                    _col("ended_at", TimestampType(), "end (UTC); null while running"),
                    _col("device", StringType(), "cpu or cuda", False),
                    _col(
                        "model",
                        StringType(),
                        "model family (train.model): mixture (EM) or softmax (the paper's)",
                    ),
                    _col(
                        "hyperparameters",
                        MapType(StringType(), StringType()),
                        "every train.* setting of the run, as text (e.g."
                        " hyperparameters['prior_strength'])",
                    ),
                    _col("jobs", IntegerType(), "job titles in the vocabulary (J)", False),
                    _col("skills", IntegerType(), "skills in the vocabulary (S)", False),
                    _col("train_profiles", LongType(), "profiles in the train split", False),
                    _col("epochs_run", IntegerType(), "epochs trained"),
                    _col("best_epoch", IntegerType(), "epoch of the published phi"),
                    _col("train_loss", DoubleType(), "mean KL on the train split at best_epoch"),
                    _col(
                        "validation_loss",
                        DoubleType(),
                        "mean KL on the validation split at best_epoch; lower is better",
                    ),
                    _col(
                        "validation_ndcg",
                        DoubleType(),
                        "NDCG@10 on the validation split at best_epoch (the selection metric);"
                        " higher is better",
                    ),
                    _col(
                        "test_loss",
                        DoubleType(),
                        "mean KL on the test split of the published phi; lower is better",
                    ),
                    _col(
                        "cooccurrence_validation_ndcg",
                        DoubleType(),
                        "NDCG@10 of co-occurrence counting on the validation split (a gate)",
                    ),
                    _col(
                        "gate",
                        StringType(),
                        "the promotion gates' verdict: passed, or why the run was rejected",
                    ),
                    _col("config_json", StringType(), "the full configuration", False),
                    _col(
                        "input_manifest",
                        StringType(),
                        "manifest.json trained on: shard files and the Delta versions behind them",
                        False,
                    ),
                    _col(
                        "inputs_fingerprint",
                        StringType(),
                        "digest of the catalog, train, publish and evaluate settings, the"
                        " device and the code: a train on the same shards with the same digest"
                        " keeps this run when it is current; null in runs before 2026-12-02",
                    ),
                    _col("error", StringType(), "one-line error of a failed run"),
                ]
            ),
        ),
        TableSpec(
            "run_events",
            "train (the gates) and runs (promote, pin, unpin)",
            "Every change of the current run, the one the views show: promoted, rejected,"
            " pinned, unpinned (docs/operations.md).",
            StructType(
                [
                    _RUN_ID,
                    _col(
                        "event",
                        StringType(),
                        "promoted, rejected, pinned or unpinned",
                        False,
                    ),
                    _col("at", TimestampType(), "when (UTC)", False),
                    _col("actor", StringType(), "gate (train) or the user who ran runs", False),
                    _col("reason", StringType(), "the gates' verdict or the --reason given"),
                ]
            ),
            checks=(
                (
                    "known_event",
                    "event IN ('promoted', 'rejected', 'pinned', 'unpinned')",
                ),
            ),
        ),
        TableSpec(
            "training_history",
            "train",
            "Loss per epoch of every training run (the paper's Fig 2).",
            StructType(
                [
                    _RUN_ID,
                    _col("epoch", IntegerType(), "1-based epoch", False),
                    _col("train_loss", DoubleType(), "mean KL over the epoch's batches", False),
                    _col(
                        "validation_loss",
                        DoubleType(),
                        "mean KL on the validation split after the epoch; lower is better",
                        False,
                    ),
                    _col(
                        "validation_ndcg",
                        DoubleType(),
                        "NDCG@10 on the validation split after the epoch (the selection"
                        " metric); higher is better",
                    ),
                    _col("seconds", DoubleType(), "wall time of the epoch", False),
                ]
            ),
        ),
        TableSpec(
            "phi",
            "train",
            "The learned matrix phi, one row per (run, job) holding the job's weight of every"
            " skill; partitioned by run_id. current_phi shows one row per (job, skill).",
            StructType(
                [
                    _RUN_ID,
                    _col("job_id", IntegerType(), "job title (job_vocab.job_id)", False),
                    _col(
                        "weights",
                        ArrayType(FloatType()),
                        "phi[:, job]: weights[skill_id] (from 0) is the weight of skill"
                        " skill_vocab.skill_id; higher means the job implies the skill more",
                        False,
                    ),
                ]
            ),
            partition_by=("run_id",),
            # The weights are distinct floats: Parquet's dictionary encoding of them fails and
            # falls back to plain in every page, after the work (2026-12-02, paper scale, a
            # run's 182 million weights appended by Spark: 9.6 s -> 8.3 s warm, 21.3 s ->
            # 14.4 s in a fresh JVM; the files 432 -> 436 MiB).
            properties=(("parquet.enable.dictionary", "false"),),
        ),
        TableSpec(
            "skill_background",
            "train",
            "What every profile lists whatever its jobs: the background of each run's model"
            " (docs/tables.md), one row per skill.",
            StructType(
                [
                    _RUN_ID,
                    _col("skill_id", IntegerType(), "skill (skill_vocab.skill_id)", False),
                    _col("skill_name", StringType(), "skill", False),
                    _col(
                        "weight",
                        FloatType(),
                        "log-scale background: mixture log p0(skill), softmax the skill's bias",
                        False,
                    ),
                    _col(
                        "probability",
                        DoubleType(),
                        "softmax of weight over all skills: the mixture's p0, the share of skill"
                        " mentions a profile makes whatever its jobs; higher is more generic",
                        False,
                    ),
                ]
            ),
            checks=(("probability_in_0_1", "probability >= 0 AND probability <= 1"),),
        ),
        TableSpec(
            "job_skill_rank",
            "train",
            "SkillRank: the top publish.top_k skills of every job title, strongest first.",
            StructType(
                [
                    _RUN_ID,
                    _col("job_id", IntegerType(), "job title id", False),
                    _col("job_title", StringType(), "job title", False),
                    _col("rank", IntegerType(), "1 = the job's strongest skill", False),
                    _col("skill_id", IntegerType(), "skill id", False),
                    _col("skill_name", StringType(), "skill", False),
                    _WEIGHT,
                    _col(
                        "probability",
                        DoubleType(),
                        "job2vec entry: softmax of the job's phi column over all skills;"
                        " higher is stronger (sums to 1 over all skills of a job)",
                        False,
                    ),
                    *_INTERVAL,
                    _SUPPORT,
                ]
            ),
            checks=_INTERVAL_CHECKS,
        ),
        TableSpec(
            "job_skill_rank_by_segment",
            "train",
            "SkillRank within one city or one industry: the top publish.top_k skills of a job"
            " title among the training profiles of the segment, its row shrunk toward the"
            " pooled one (prior_strength); only (segment, job) pairs held by at"
            " least train.segment_min_profiles training profiles; train.model=mixture only.",
            StructType(
                [
                    _RUN_ID,
                    _col("segment_type", StringType(), "city or industry", False),
                    _col(
                        "segment",
                        StringType(),
                        "canonical city or industry code (as profiles.city, profiles.industry)",
                        False,
                    ),
                    _col("job_id", IntegerType(), "job title id", False),
                    _col("job_title", StringType(), "job title", False),
                    _col(
                        "rank", IntegerType(), "1 = the job's strongest skill in the segment", False
                    ),
                    _col("skill_id", IntegerType(), "skill id", False),
                    _col("skill_name", StringType(), "skill", False),
                    _col(
                        "weight",
                        FloatType(),
                        "log of probability; higher is stronger",
                        False,
                    ),
                    _col(
                        "probability",
                        DoubleType(),
                        "the skill's probability in the job's skill distribution within the"
                        " segment (sums to 1 over all skills of a (segment, job) row)",
                        False,
                    ),
                    *_INTERVAL,
                    _col(
                        "lift",
                        DoubleType(),
                        "probability / the pooled probability of the same (job, skill): > 1"
                        " when the segment needs the skill more than the job does overall",
                        False,
                    ),
                    _col(
                        "support",
                        LongType(),
                        "training profiles of the segment holding both the job and the skill",
                        False,
                    ),
                    _col(
                        "profiles",
                        LongType(),
                        "training profiles of the segment holding the job",
                        False,
                    ),
                    _col(
                        "prior_strength",
                        DoubleType(),
                        "strength (pseudo-counts) of the pooled row as the prior of the"
                        " segment's: chosen per segment type among"
                        " train.segment_prior_strengths by the validation profiles' KL",
                        False,
                    ),
                ]
            ),
            checks=_INTERVAL_CHECKS,
        ),
        TableSpec(
            "skill_job_rank",
            "train",
            "The top publish.top_k job titles of every skill, strongest first.",
            StructType(
                [
                    _RUN_ID,
                    _col("skill_id", IntegerType(), "skill id", False),
                    _col("skill_name", StringType(), "skill", False),
                    _col("rank", IntegerType(), "1 = the skill's strongest job", False),
                    _col("job_id", IntegerType(), "job title id", False),
                    _col("job_title", StringType(), "job title", False),
                    _WEIGHT,
                    _col(
                        "probability",
                        DoubleType(),
                        "skill2vec entry: softmax of the skill's phi row over all jobs;"
                        " higher is stronger (sums to 1 over all jobs of a skill)",
                        False,
                    ),
                    _SUPPORT,
                ]
            ),
            checks=_RANK_CHECKS,
        ),
        TableSpec(
            "job_neighbors",
            "train",
            "The publish.neighbors_k job titles nearest to every job title (job2vec cosine).",
            StructType(
                [
                    _RUN_ID,
                    _col("job_id", IntegerType(), "job title id", False),
                    _col("job_title", StringType(), "job title", False),
                    _col("rank", IntegerType(), "1 = the most similar other job", False),
                    _col("neighbor_job_id", IntegerType(), "similar job title id", False),
                    _col("neighbor_job_title", StringType(), "similar job title", False),
                    _col(
                        "similarity",
                        DoubleType(),
                        "cosine similarity of the two job2vec vectors; higher is more similar",
                        False,
                    ),
                    _col(
                        "neighbor_profiles",
                        LongType(),
                        "training profiles holding the similar job title (its vocabulary"
                        " profile_count); null in runs published before 2026-12-01",
                    ),
                ]
            ),
            checks=_NEIGHBOR_CHECKS,
        ),
        TableSpec(
            "skill_neighbors",
            "train",
            "The publish.neighbors_k skills nearest to every skill (skill2vec cosine).",
            StructType(
                [
                    _RUN_ID,
                    _col("skill_id", IntegerType(), "skill id", False),
                    _col("skill_name", StringType(), "skill", False),
                    _col("rank", IntegerType(), "1 = the most similar other skill", False),
                    _col("neighbor_skill_id", IntegerType(), "similar skill id", False),
                    _col("neighbor_skill_name", StringType(), "similar skill", False),
                    _col(
                        "similarity",
                        DoubleType(),
                        "cosine similarity of the two skill2vec vectors; higher is more similar",
                        False,
                    ),
                    _col(
                        "neighbor_profiles",
                        LongType(),
                        "training profiles holding the similar skill (its vocabulary"
                        " profile_count); null in runs published before 2026-12-01",
                    ),
                ]
            ),
            checks=_NEIGHBOR_CHECKS,
        ),
        TableSpec(
            "evaluation",
            "evaluate",
            "Quality of each train run and of the baselines fed the same test profiles"
            " (docs/evaluation.md); one row per (run, method, metric, k, segment).",
            StructType(
                [
                    _RUN_ID,
                    _col(
                        "method",
                        StringType(),
                        "model (the run's phi), another trained model, or a baseline:"
                        " popularity, cooccurrence, pmi, ppmi_svd; model - <baseline>: the"
                        " difference model minus that baseline on the same profiles or titles",
                        False,
                    ),
                    _col(
                        "metric",
                        StringType(),
                        "kl, cross_entropy (lower is better); recall, precision, ndcg, map"
                        " (test profiles); planted_* (generator's truth), taxonomy_* (ESCO,"
                        " O*NET): higher is better; profiles, titles: how many were averaged",
                        False,
                    ),
                    _col("k", IntegerType(), "cut-off of the ranking; null for kl, counts"),
                    _col(
                        "segment",
                        StringType(),
                        "all, city=<code>, industry=<code> (test profiles); titles,"
                        " titles_<a>_<b>_profiles, titles_min_<n>_profiles (planted truth, titles"
                        " by training profiles); esco_essential, onet_technology (taxonomies)",
                        False,
                    ),
                    _col("value", DoubleType(), "mean over the segment (or the count)", False),
                    _col(
                        "ci_low",
                        DoubleType(),
                        "lower end of the 95% percentile bootstrap interval of value (profiles"
                        " or titles resampled, the same resamples for every method); null for"
                        " counts",
                    ),
                    _col(
                        "ci_high",
                        DoubleType(),
                        "upper end of the 95% bootstrap interval of value; null for counts",
                    ),
                ]
            ),
        ),
        TableSpec(
            "coclusters",
            "report",
            "Spectral co-clusters of job2vec (the paper's Fig 4): which co-cluster each job"
            " title and each skill of a run falls in.",
            StructType(
                [
                    _RUN_ID,
                    _col("kind", StringType(), "job or skill", False),
                    _col("item_id", IntegerType(), "job_id or skill_id", False),
                    _col("item_name", StringType(), "job title or skill name", False),
                    _col(
                        "cocluster",
                        IntegerType(),
                        "co-cluster number, 0-based; jobs and skills sharing it go together",
                        False,
                    ),
                ]
            ),
            checks=(("kind_job_or_skill", "kind IN ('job', 'skill')"),),
        ),
    ]
}


def table_name(config: Config, key: str) -> str:
    """Fully qualified name (database.table) of a logical table."""
    try:
        return f"{config.catalog.database}.{config.catalog.tables[key]}"
    except KeyError:
        raise ConfigError(f"catalog.tables lacks an entry for {key!r}") from None


def declare_tables(spark: SparkSession, config: Config, keys: list[str]) -> None:
    """Create the database and the given tables if they do not exist yet (schema + comments).

    A table that exists gains what this version declares and it lacks (CREATE ... IF NOT
    EXISTS would leave it as it is): columns, constraints, properties. A table created here
    has them all in its first commit and is not looked at again: all 20 tables in a new
    database took 5.3-6.5 s instead of 7.5-9.1 s with those checks, and 1.0-1.4 s when they
    all exist (2026-12-04, a warm session, 2 cores, three databases each)."""
    database = config.catalog.database
    if not spark.catalog.databaseExists(database):
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    for key in keys:
        if key == "phi":
            _upgrade_long_phi(spark, config)
        if _create_table(spark, config, key):
            continue  # its first commit holds all of it
        spec, name = SPECS[key], table_name(config, key)
        _add_missing_columns(spark, name, spec.schema)
        if spec.checks or spec.properties:
            rows = spark.sql(f"SHOW TBLPROPERTIES {name}").collect()
            properties = {r.key: r.value for r in rows}
            for check, condition in spec.checks:
                if _constraint_property(check) not in properties:
                    spark.sql(f"ALTER TABLE {name} ADD CONSTRAINT {check} CHECK ({condition})")
            missing = {k: v for k, v in spec.properties if properties.get(k) != v}
            if missing:
                settings = ", ".join(f"'{k}' = '{v}'" for k, v in missing.items())
                spark.sql(f"ALTER TABLE {name} SET TBLPROPERTIES ({settings})")


def _create_table(spark: SparkSession, config: Config, key: str) -> bool:
    """Create the table with its schema, comments, constraints and properties unless it
    exists; whether it created it."""
    if spark.catalog.tableExists(table_name(config, key)):
        return False
    spec = SPECS[key]
    _clear_unregistered_location(spark, config, key)
    builder = (
        DeltaTable.createIfNotExists(spark)
        .tableName(table_name(config, key))
        .comment(f"{spec.comment} Owner: {spec.owner}.")
        .addColumns(spec.schema)
        .partitionedBy(*spec.partition_by)
    )
    # A new table gets its constraints and properties in its first commit (an ALTER TABLE ... ADD
    # CONSTRAINT is one commit and one Spark job each); one that an older version
    # created without some gets them in declare_tables.
    for name, condition in spec.checks:
        builder = builder.property(_constraint_property(name), condition)
    for name, value in spec.properties:
        builder = builder.property(name, value)
    builder.execute()
    return True


def _upgrade_long_phi(spark: SparkSession, config: Config) -> None:
    """Convert a `phi` of the long layout that versions before 2026-12-01 wrote (one row per
    (run, job, skill), ``skill_id`` and ``weight``) to one row per (run, job), keeping every run.

    The old table is renamed to <phi>_long_layout, the new one created and filled from it in
    one commit (its runs not there yet), and the old one dropped: a kill at any step is taken
    up where it stopped by the next call, and no run is ever in neither table.
    """
    name = table_name(config, "phi")
    legacy = f"{name}_long_layout"
    if spark.catalog.tableExists(name) and "weights" not in spark.table(name).columns:
        print(
            f"warning: {name} holds one row per job and skill (the layout of versions before"
            f" 2026-12-01): converting it to one row per job, once",
            file=sys.stderr,
        )
        spark.sql(f"ALTER TABLE {name} RENAME TO {legacy}")
    if not spark.catalog.tableExists(legacy):
        return
    _create_table(spark, config, "phi")
    converted = spark.table(name).select("run_id").distinct()
    by_job = (
        spark.table(legacy)
        .join(converted, "run_id", "left_anti")
        .groupBy("run_id", "job_id")
        .agg(F.array_sort(F.collect_list(F.struct("skill_id", "weight"))).alias("entries"))
        .withColumn("weights", F.col("entries.weight"))
    )
    conform(by_job, "phi").write.insertInto(name)
    spark.sql(f"DROP TABLE {legacy}")


def _constraint_property(name: str) -> str:
    """The table property in which Delta keeps a CHECK constraint."""
    return f"delta.constraints.{name.lower()}"


def _add_missing_columns(spark: SparkSession, name: str, schema: StructType) -> None:
    """Add the declared columns that a table created by an older version lacks (nullable,
    with their comments, each after its declared predecessor, since writes go by position):
    its old rows read null there."""
    present = {f.name for f in spark.table(name).schema}
    missing = [(i, f) for i, f in enumerate(schema) if f.name not in present]
    if not missing:
        return
    if any(not f.nullable or i == 0 for i, f in missing):
        raise ConfigError(f"{name} lacks the column(s) {', '.join(f.name for _, f in missing)}")
    for i, field in missing:
        comment = field.metadata["comment"].replace("'", "\\'")
        spark.sql(
            f"ALTER TABLE {name} ADD COLUMNS ({field.name} {field.dataType.simpleString()}"
            f" COMMENT '{comment}' AFTER {schema[i - 1].name})"
        )


def _clear_unregistered_location(spark: SparkSession, config: Config, key: str) -> None:
    """Remove what a CREATE TABLE killed before the metastore knew the table left behind.

    Delta writes the table's first commit, then the metastore registers the table: a kill in
    between leaves a location that blocks every later CREATE ("not empty and also not a Delta
    table"). It holds no data unless something else wrote there, so it is removed when its
    log has no more than that first commit and the table no row; otherwise the error says
    where the unknown data is, and nothing is deleted.
    """
    database = spark.catalog.getDatabase(config.catalog.database)
    location = f"{database.locationUri.rstrip('/')}/{config.catalog.tables[key].lower()}"
    path, fs = hadoop_path(spark, location)
    if not fs.exists(path):
        return
    log, _ = hadoop_path(spark, f"{location}/_delta_log")
    commits = [s.getPath().getName() for s in fs.listStatus(log)] if fs.exists(log) else []
    commits = [name for name in commits if name.endswith(".json")]
    if commits and (
        commits != ["00000000000000000000.json"]
        or spark.read.format("delta").load(location).limit(1).count()
    ):
        raise ConfigError(
            f"{location} holds a Delta table with data that the metastore does not list as"
            f" {table_name(config, key)}: move it away, or register it, before rerunning"
        )
    fs.delete(path, True)
    print(f"warning: removed {location}, left by a killed CREATE TABLE", file=sys.stderr)


def conform(df: DataFrame, key: str) -> DataFrame:
    """Select and cast the table's columns, in order, so that a write matches its declaration."""
    columns: list[Column] = [
        F.col(field.name).cast(field.dataType).alias(field.name) for field in SPECS[key].schema
    ]
    return df.select(*columns)


def table_version(spark: SparkSession, name: str) -> int:
    """Current Delta version of a table: its log brought up to date, read on the driver.

    DESCRIBE HISTORY (``DeltaTable.history``) answers the same with a Spark job, about 0.25 s
    against 0.04 s; the stages ask after every write. ``deltaLog`` is Delta's internal API,
    stable at the pinned delta-spark (pyproject.toml)."""
    jvm = spark.sparkContext._jvm
    table = jvm.io.delta.tables.DeltaTable.forName(spark._jsparkSession, name)  # type: ignore[union-attr]
    none = jvm.scala.Option.empty()  # type: ignore[union-attr]
    return int(table.deltaLog().update(False, none, none).version())
