"""Prepare transforms: deduplicate, clean, split, filter, build vocabularies, encode for training.

All functions take DataFrames and explicit scalars and return DataFrames; the prepare job
(jobs/prepare.py) does the reading and writing.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StringType

from skillrank.config import SPLITS

# A run of whitespace as Python's \s sees it (Unicode White_Space and U+001C..U+001F),
# spelled out so that Java's regex, in the SQL function normalize_name
# (skillrank/views.py), reads the same class: Java's (?U)\s leaves out U+001C..U+001F.
NAME_SPACES = r"[\t\n\x0b\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
_SPACES = re.compile(NAME_SPACES)

# Why ``encode_profiles`` finds a profile unusable (its drop_reason column).
UNUSABLE_REASONS = ("no_known_title", "no_known_skill")


def normalize_text(text: str | None) -> str | None:
    """A name (title, skill, place, industry) as stored: the one rule of docs/sql.md.

    Format characters (Unicode category Cf: zero-width spaces and joiners, bidirectional
    controls, soft hyphen, byte order mark) removed, so ``data<ZWJ>scientist`` becomes
    ``datascientist``; then NFKC, full case folding, whitespace runs as one space, trimmed.
    None, or nothing left -> None. The SQL function ``normalize_name`` does the same.
    """
    if text is None:
        return None
    visible = "".join(c for c in text if unicodedata.category(c) != "Cf")
    folded = _SPACES.sub(" ", unicodedata.normalize("NFKC", visible).casefold()).strip(" ")
    return folded or None


def alias_lookup(aliases: Mapping[str, list[str]], keep_unknown: bool) -> dict[str, str | None]:
    """Normalised spelling -> canonical value, from an alias section of conf/aliases.yml.

    Canonical names map to themselves (normalised when `keep_unknown`, as titles and skills
    are free text; verbatim codes for cities and industries).
    """
    lookup: dict[str, str | None] = {}
    for canonical, spellings in aliases.items():
        target = normalize_text(canonical) if keep_unknown else canonical
        for spelling in [canonical, *spellings]:
            key = normalize_text(spelling)
            if key is not None:
                lookup[key] = target
    return lookup


def deduplicate_profiles(raw: DataFrame) -> DataFrame:
    """One row per profile_id: the latest crawled_at wins.

    Ties go to the smallest line_sha256 (then source_file, line_number), so the winner does
    not depend on file names or read order. In and out: profiles_raw columns.
    """
    order = Window.partitionBy("profile_id").orderBy(
        F.col("crawled_at").desc(), "line_sha256", "source_file", "line_number"
    )
    return raw.withColumn("_rank", F.row_number().over(order)).where("_rank = 1").drop("_rank")


def _cleaner(lookup: dict[str, str | None], keep_unknown: bool) -> Column:
    """A UDF over an array of raw strings: normalise and apply aliases, element by element.

    The result stays aligned with the input; a value that cleans to nothing (empty, or
    an unknown city or industry) becomes null.
    """

    seen: dict[str | None, str | None] = {}  # per Python worker: names repeat a lot

    def clean_one(value: str | None) -> str | None:
        key = normalize_text(value)
        return None if key is None else lookup.get(key, key if keep_unknown else None)

    def clean(values: list[str | None] | None) -> list[str | None]:
        out: list[str | None] = []
        for value in values or []:
            if value not in seen:
                seen[value] = clean_one(value)
            out.append(seen[value])
        return out

    return F.udf(clean, ArrayType(StringType()), useArrow=False)  # type: ignore[return-value]


def _present(values: Column) -> Column:
    return F.filter(values, lambda v: v.isNotNull())


def clean_profiles(
    profiles: DataFrame,
    title_aliases: Mapping[str, list[str]],
    skill_aliases: Mapping[str, list[str]],
    city_aliases: Mapping[str, list[str]],
    industry_aliases: Mapping[str, list[str]],
) -> DataFrame:
    """Normalise titles and skills, map locations and industries to canonical codes.

    In: profiles_raw columns (one row per profile). Out: profile_id, crawled_at, city,
    industry (null when unrecognised), positions (titles cleaned), titles (distinct,
    first seen first), skills (distinct, sorted), source_file, line_number.
    """
    titles = _cleaner(alias_lookup(title_aliases, True), True)
    skills = _cleaner(alias_lookup(skill_aliases, True), True)
    cities = _cleaner(alias_lookup(city_aliases, False), False)
    industries = _cleaner(alias_lookup(industry_aliases, False), False)
    positions = F.coalesce(
        F.col("positions"), F.array().cast(profiles.schema["positions"].dataType)
    )
    return profiles.select(
        "profile_id",
        "crawled_at",
        cities(F.array("location"))[0].alias("city"),  # type: ignore[operator]
        industries(F.array("industry"))[0].alias("industry"),  # type: ignore[operator]
        positions.alias("positions"),
        titles(positions["title"]).alias("_titles"),  # type: ignore[operator]
        F.array_sort(F.array_distinct(_present(skills("skills")))).alias("skills"),  # type: ignore[operator]
        "source_file",
        "line_number",
    ).select(
        "profile_id",
        "crawled_at",
        "city",
        "industry",
        F.zip_with("positions", "_titles", lambda p, t: p.withField("title", t)).alias("positions"),
        F.array_distinct(_present(F.col("_titles"))).alias("titles"),
        "skills",
        "source_file",
        "line_number",
    )


def assign_splits(profiles: DataFrame, fractions: Mapping[str, float], salt: str) -> DataFrame:
    """Add ``split`` from a salted SHA-256 of profile_id: stable across reruns and new crawls.

    The first 48 bits of sha256(salt + ':' + profile_id) give u in [0, 1); the split is
    train when u < f_train, validation when u < f_train + f_validation, else test.
    """
    u = F.conv(F.substring(F.sha2(F.concat(F.lit(salt + ":"), "profile_id"), 256), 1, 12), 16, 10)
    u = u.cast("double") / float(2**48)
    bound = 0.0
    split: Column | None = None
    for name in SPLITS[:-1]:
        bound += fractions[name]
        split = F.when(u < bound, name) if split is None else split.when(u < bound, name)
    assert split is not None
    return profiles.withColumn("split", split.otherwise(SPLITS[-1]))


def filter_profiles(profiles: DataFrame, cities: list[str], industries: list[str]) -> DataFrame:
    """Keep profiles whose city and industry are among the configured codes."""
    return profiles.where(F.col("city").isin(cities) & F.col("industry").isin(industries))


def build_vocabulary(
    profiles: DataFrame,
    items_column: str,
    id_column: str,
    name_column: str,
    min_profiles: int,
    max_size: int = 0,
) -> DataFrame:
    """Dense vocabulary over an array column: items held by >= `min_profiles` profiles, the
    `max_size` most frequent of them when max_size > 0.

    Out: id_column (0..n-1, most frequent first, then by name), name_column, profile_count.
    """
    counts = (
        profiles.select(F.explode(F.array_distinct(items_column)).alias(name_column))
        .groupBy(name_column)
        .agg(F.count(F.lit(1)).alias("profile_count"))
        .where(F.col("profile_count") >= min_profiles)
    )
    order = Window.orderBy(F.col("profile_count").desc(), F.col(name_column))
    vocabulary = counts.select(
        (F.row_number().over(order) - 1).cast("int").alias(id_column),
        name_column,
        "profile_count",
    )
    return vocabulary.where(F.col(id_column) < max_size) if max_size > 0 else vocabulary


def _months(start: Column, end: Column) -> Column:
    """Whole months between two 'YYYY-MM' strings, at least 1 (unparseable: 1)."""
    months = F.months_between(F.to_date(end, "yyyy-MM"), F.to_date(start, "yyyy-MM"))
    return F.greatest(F.coalesce(F.floor(months), F.lit(1)), F.lit(1)).cast("double")


def encode_profiles(
    profiles: DataFrame, job_vocab: DataFrame, skill_vocab: DataFrame, job_weighting: str
) -> DataFrame:
    """Turn cleaned profiles into model inputs.

    Out: profile_id, split, job_ids, job_weights (sum to 1), skill_ids (sorted), and
    drop_reason (no_known_title / no_known_skill, null when the profile is usable).
    Weights are uniform over a profile's distinct known titles, or proportional to the
    months each title was held when `job_weighting` is "tenure" (an open position ends
    at crawl time).
    """
    if job_weighting not in ("uniform", "tenure"):
        raise ValueError(f"job_weighting must be uniform or tenure, got {job_weighting!r}")
    held = profiles.select(
        "profile_id",
        F.explode("positions").alias("p"),
        F.date_format("crawled_at", "yyyy-MM").alias("_now"),
    ).select(
        "profile_id",
        F.col("p.title").alias("job_title"),
        _months(F.col("p.start"), F.coalesce(F.col("p.end"), F.col("_now"))).alias("months"),
    )
    jobs = (
        held.join(F.broadcast(job_vocab), "job_title")
        .groupBy("profile_id", "job_id")
        .agg(F.sum("months").alias("months"))
        .withColumn("w", F.lit(1.0) if job_weighting == "uniform" else F.col("months"))
        .withColumn("w", F.col("w") / F.sum("w").over(Window.partitionBy("profile_id")))
        .groupBy("profile_id")
        .agg(F.array_sort(F.collect_list(F.struct("job_id", "w"))).alias("_jobs"))
    )
    skills = (
        profiles.select("profile_id", F.explode("skills").alias("skill_name"))
        .join(F.broadcast(skill_vocab), "skill_name")
        .groupBy("profile_id")
        .agg(F.array_sort(F.collect_list("skill_id")).alias("skill_ids"))
    )
    encoded = (
        profiles.select("profile_id", "split")
        .join(jobs, "profile_id", "left")
        .join(skills, "profile_id", "left")
    )
    return encoded.select(
        "profile_id",
        "split",
        F.coalesce(F.col("_jobs.job_id"), F.array().cast("array<int>")).alias("job_ids"),
        F.coalesce(F.col("_jobs.w").cast("array<float>"), F.array().cast("array<float>")).alias(
            "job_weights"
        ),
        F.coalesce("skill_ids", F.array().cast("array<int>")).alias("skill_ids"),
        F.when(F.col("_jobs").isNull(), UNUSABLE_REASONS[0])
        .when(F.col("skill_ids").isNull(), UNUSABLE_REASONS[1])
        .alias("drop_reason"),
    )
