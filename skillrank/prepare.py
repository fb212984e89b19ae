"""Prepare transforms: deduplicate, clean, split, filter, build vocabularies, encode for training.

All functions take DataFrames and explicit scalars and return DataFrames; the prepare job
(jobs/prepare.py) does the reading and writing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StringType, StructField, StructType

from skillrank.config import SPLITS
from skillrank.text import SPACES, normalize_text

# Why ``encode_profiles`` finds a profile unusable (its drop_reason column).
UNUSABLE_REASONS = ("no_known_title", "no_known_skill")

# What a location or an industry turned out to be (clean_profiles' *_status columns): one of
# conf/aliases.yml's canonical values; known to be something else (an `other_places` place, a
# region or country holding no city of the map, an `other_industries` industry); matching
# nothing the map knows (a spelling to add to it); or absent.
MATCHED, OTHER, UNRECOGNIZED, MISSING = "matched", "other", "unrecognized", "missing"

# Why ``filter_reasons`` leaves a profile out, decided in this order (location first).
FILTER_REASONS = (
    "missing_location",
    "unrecognized_location",
    "outside_cities",
    "missing_industry",
    "unrecognized_industry",
    "outside_industries",
)


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


# Shapes a place name takes inside a location ("Greater Seattle Area", "Mumbai Metropolitan
# Region", "Delhi NCR"), stripped one at a time: each step leaves a form to look up.
_METRO_PREFIXES = ("greater ",)
_METRO_SUFFIXES = (
    " metropolitan area",
    " metropolitan region",
    " metro area",
    " metropolitan",
    " metroplex",
    " metro",
    " area",
    " region",
    " bay",
    " ncr",
    " city",
)
_HYPHENS = re.compile(r"\s*[-\u2010-\u2015]\s*")


def place_key(text: str | None) -> str | None:
    """A place name or region as looked up: normalize_text, dots dropped ("U.S." = "us")."""
    key = normalize_text(text)
    key = None if key is None else SPACES.sub(" ", key.replace(".", "")).strip(" ")
    return key or None


def place_forms(place: str) -> list[str]:
    """The forms of one place name (a key) to look up, most literal first: the name, then the
    name with each metro shape stripped in turn, then the first name of a hyphenated metro
    ("seattle-tacoma-bellevue" -> "seattle")."""
    forms = [place]
    while True:
        form = forms[-1]
        for prefix in _METRO_PREFIXES:
            if form.startswith(prefix) and len(form) > len(prefix):
                form = form[len(prefix) :]
        for suffix in _METRO_SUFFIXES:
            if form.endswith(suffix) and len(form) > len(suffix):
                form = form[: -len(suffix)]
                break
        if form == forms[-1]:
            break
        forms.append(form.strip(" "))
    first = _HYPHENS.split(forms[-1], maxsplit=1)[0]
    return forms + [first] if first and first != forms[-1] else forms


@dataclass(frozen=True)
class PlaceMatcher:
    """Locations -> canonical city codes, from the place sections of conf/aliases.yml.

    Built by ``place_matcher``; ``match`` is the rule conf/aliases.yml describes.
    """

    spellings: Mapping[str, str]  # whole location key -> city code
    names: Mapping[str, frozenset[str]]  # place name key -> city codes of that name
    areas: Mapping[str, frozenset[str]]  # city code -> its region and country codes
    qualifiers: Mapping[str, frozenset[str]]  # region or country key -> region/country codes
    held: frozenset[str]  # region and country codes holding a city of the map
    others: frozenset[str]  # place forms known to be no city of the map

    def match(self, location: str | None) -> tuple[str | None, str]:
        """(city code or None, MATCHED / OTHER / UNRECOGNIZED / MISSING) of one location.

        "Seattle, WA, USA": place "seattle", then each of region and country must hold the
        city. A place that is no city is OTHER when known to lie elsewhere (an other place,
        a bare region or country, a region or country holding no city of the map), else
        UNRECOGNIZED ("Tacoma, WA": maybe Seattle's, the map does not say).
        """
        key = place_key(location)
        if key is None:
            return None, MISSING
        if key in self.spellings:
            return self.spellings[key], MATCHED
        place, *rest = [part.strip(" ") for part in key.split(",")]
        given = [self._areas_of(q) for q in rest if q]
        forms = place_forms(place) if place else []
        if None not in given:
            for form in forms:
                for code in sorted(self.names.get(form, ())):
                    if all(areas & self.areas[code] for areas in given if areas is not None):
                        return code, MATCHED
        if any(form in self.others for form in forms):
            return None, OTHER
        if None in given or not forms:
            return None, UNRECOGNIZED
        if not given:
            bare_area = any(form in self.qualifiers for form in forms)
            return None, OTHER if bare_area else UNRECOGNIZED
        codes = frozenset().union(*(a for a in given if a is not None))
        finest = {c for c in codes if "-" in c} or codes  # a region if one is given
        return None, UNRECOGNIZED if finest & self.held else OTHER

    def _areas_of(self, qualifier: str) -> frozenset[str] | None:
        """Region and country codes a qualifier names; a census-style "ny-nj-pa" names each
        of its parts. None when any part is unknown."""
        if qualifier in self.qualifiers:
            return self.qualifiers[qualifier]
        parts = [self.qualifiers.get(p) for p in _HYPHENS.split(qualifier)]
        if len(parts) < 2 or None in parts:
            return None
        return frozenset().union(*(p for p in parts if p is not None))


def place_matcher(
    cities: Mapping[str, Mapping[str, object]],
    regions: Mapping[str, list[str]],
    countries: Mapping[str, list[str]],
    other_places: list[str],
) -> PlaceMatcher:
    """The PlaceMatcher of conf/aliases.yml's `cities` (code -> region, names, spellings),
    `regions` and `countries` (ISO 3166 code -> spellings) and `other_places`."""
    spellings: dict[str, str] = {}
    names: dict[str, set[str]] = {}
    areas: dict[str, frozenset[str]] = {}
    for code, city in cities.items():
        region = str(city["region"])
        areas[code] = frozenset({region, region.split("-")[0]})
        for spelling in _strings(city["spellings"]):
            key = place_key(spelling)
            if key is not None:
                spellings[key] = code
        for name in _strings(city["names"]):
            key = place_key(name)
            if key is not None:
                names.setdefault(key, set()).add(code)
    qualifiers: dict[str, set[str]] = {}
    for section in (regions, countries):
        for area, words in section.items():
            for word in words:
                key = place_key(word)
                if key is not None:
                    qualifiers.setdefault(key, set()).add(area)
    others = {
        form
        for place in other_places
        for form in place_forms(place_key(place.split(",")[0]) or "")
        if form
    }
    return PlaceMatcher(
        spellings=spellings,
        names={k: frozenset(v) for k, v in names.items()},
        areas=areas,
        qualifiers={k: frozenset(v) for k, v in qualifiers.items()},
        held=frozenset().union(*areas.values()),
        others=frozenset(others),
    )


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


_WORDS = re.compile(r"[^\W_]+")
_FILLER = {"and", "the"}


def industry_key(text: str | None) -> str | None:
    """An industry as compared: normalize_text, "&" read as "and", then the words without
    "and"/"the", each singular, run together ("Hospitals & Healthcare" -> "hospitalhealthcare")."""
    key = normalize_text(text)
    if key is None:
        return None
    words = [w for w in _WORDS.findall(key.replace("&", " and ")) if w not in _FILLER]
    return "".join(_singular(w) for w in words) or None


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


@dataclass(frozen=True)
class IndustryMatcher:
    """Industries -> canonical codes, from `industries` and `other_industries` of
    conf/aliases.yml (``industry_matcher``)."""

    codes: Mapping[str, str]  # industry key -> code
    others: frozenset[str]  # keys of industries known to be none of the codes

    def match(self, industry: str | None) -> tuple[str | None, str]:
        """(code or None, MATCHED / OTHER / UNRECOGNIZED / MISSING) of one industry."""
        key = industry_key(industry)
        if key is None:
            return None, MISSING
        if key in self.codes:
            return self.codes[key], MATCHED
        return None, OTHER if key in self.others else UNRECOGNIZED


def industry_matcher(
    industries: Mapping[str, list[str]], other_industries: list[str]
) -> IndustryMatcher:
    """The IndustryMatcher of code -> spellings (the code itself one of them) and the others."""
    codes = {
        key: code
        for code, spellings in industries.items()
        for spelling in [code, *spellings]
        if (key := industry_key(spelling)) is not None
    }
    others = {key for name in other_industries if (key := industry_key(name)) is not None}
    return IndustryMatcher(codes=codes, others=frozenset(others - set(codes)))


def deduplicate_profiles(raw: DataFrame) -> DataFrame:
    """One row per profile_id: the latest crawled_at wins.

    Ties go to the smallest line_sha256 (then source_file, line_number), so the winner does
    not depend on file names or read order. In and out: profiles_raw columns.
    """
    order = Window.partitionBy("profile_id").orderBy(
        F.col("crawled_at").desc(), "line_sha256", "source_file", "line_number"
    )
    return raw.withColumn("_rank", F.row_number().over(order)).where("_rank = 1").drop("_rank")


def row_changes(new: DataFrame, old: DataFrame, key: str) -> DataFrame:
    """What turns `old` into `new` (one row per `key` in each, the same columns): the rows of
    `new` that `old` lacks as they are (new or changed), ``vanished`` false, then the keys of
    `old` that `new` lacks, their other columns null and ``vanished`` true. No rows when the
    two hold the same rows; nulls compare equal."""
    same = new[key] == old[key]
    for column in new.columns:
        if column != key:
            same = same & new[column].eqNullSafe(old[column])
    changed = new.join(old, same, "left_anti").withColumn("vanished", F.lit(False))
    gone = old.select(key).join(new.select(key), key, "left_anti")
    return changed.unionByName(gone.withColumn("vanished", F.lit(True)), allowMissingColumns=True)


def alias_matchers(aliases: Mapping[str, Any]) -> tuple[PlaceMatcher, IndustryMatcher]:
    """The place and the industry matcher of conf/aliases.yml (load_aliases' mapping)."""
    places = place_matcher(
        aliases["cities"], aliases["regions"], aliases["countries"], aliases["other_places"]
    )
    return places, industry_matcher(aliases["industries"], aliases["other_industries"])


def _through_memo(
    values: pa.Array, seen: dict[Any, Any], fn: Callable[[Any], Any]
) -> tuple[list[Any], pa.Array]:
    """``fn`` of each distinct value of `values`, computed once per Python worker (`seen`
    keeps them across batches), and each element's index into that list (a null element's
    points at ``fn(None)``, the last)."""
    codes = pc.dictionary_encode(values)
    results = []
    for value in [*codes.dictionary.to_pylist(), None]:
        if value not in seen:
            seen[value] = fn(value)
        results.append(seen[value])
    return results, pc.fill_null(codes.indices, len(results) - 1)


def _cleaner(lookup: dict[str, str | None], keep_unknown: bool) -> Column:
    """An Arrow UDF over an array of raw strings: normalise and apply aliases, element by
    element, each distinct string once (names repeat a lot).

    The result stays aligned with the input; a value that cleans to nothing (empty, or
    unknown when not `keep_unknown`) becomes null, a null array an empty one.
    """

    seen: dict[str | None, str | None] = {}

    def clean_one(value: str | None) -> str | None:
        key = normalize_text(value)
        return None if key is None else lookup.get(key, key if keep_unknown else None)

    def clean(values: pa.Array) -> pa.Array:
        cleaned, index = _through_memo(values.flatten(), seen, clean_one)
        lengths = pc.fill_null(pc.list_value_length(values), 0)
        offsets = pc.cumulative_sum(pa.concat_arrays([pa.array([0], lengths.type), lengths]))
        return type(values).from_arrays(
            offsets.cast(values.offsets.type),
            pa.array(cleaned, values.type.value_type).take(index),
        )

    return F.arrow_udf(clean, ArrayType(StringType()))  # type: ignore[call-overload]


def _matcher(match: Callable[[str | None], tuple[str | None, str]]) -> Column:
    """An Arrow UDF over one raw string: struct(code, status) of ``match`` (a matcher's
    method), each distinct string once."""

    seen: dict[str | None, tuple[str | None, str]] = {}

    def run(values: pa.Array) -> pa.Array:
        pairs, index = _through_memo(values, seen, match)
        code, status = (pa.array([p[i] for p in pairs], pa.string()).take(index) for i in (0, 1))
        return pa.StructArray.from_arrays([code, status], names=["code", "status"])

    schema = StructType([StructField("code", StringType()), StructField("status", StringType())])
    return F.arrow_udf(run, schema)  # type: ignore[call-overload]


def _present(values: Column) -> Column:
    return F.filter(values, lambda v: v.isNotNull())


def clean_profiles(
    profiles: DataFrame,
    title_aliases: Mapping[str, list[str]],
    skill_aliases: Mapping[str, list[str]],
    places: PlaceMatcher,
    industries: IndustryMatcher,
) -> DataFrame:
    """Normalise titles and skills, map locations and industries to canonical codes.

    In: profiles_raw columns (one row per profile). Out: profile_id, crawled_at, city,
    industry (null unless matched), positions (titles cleaned), titles (distinct, first seen
    first), skills (distinct, sorted), source_file, line_number, and what the `profiles`
    table does not keep: raw_location, raw_industry (as crawled), location_status and
    industry_status (MATCHED, OTHER, UNRECOGNIZED or MISSING).
    """
    titles = _cleaner(alias_lookup(title_aliases, True), True)
    skills = _cleaner(alias_lookup(skill_aliases, True), True)
    city = _matcher(places.match)(F.col("location"))  # type: ignore[operator]
    industry = _matcher(industries.match)(F.col("industry"))  # type: ignore[operator]
    positions = F.coalesce(
        F.col("positions"), F.array().cast(profiles.schema["positions"].dataType)
    )
    return profiles.select(
        "profile_id",
        "crawled_at",
        city.alias("_city"),
        industry.alias("_industry"),
        positions.alias("positions"),
        titles(positions["title"]).alias("_titles"),  # type: ignore[operator]
        F.array_sort(F.array_distinct(_present(skills("skills")))).alias("skills"),  # type: ignore[operator]
        "source_file",
        "line_number",
        F.col("location").alias("raw_location"),
        F.col("industry").alias("raw_industry"),
    ).select(
        "profile_id",
        "crawled_at",
        F.col("_city.code").alias("city"),
        F.col("_industry.code").alias("industry"),
        F.zip_with("positions", "_titles", lambda p, t: p.withField("title", t)).alias("positions"),
        F.array_distinct(_present(F.col("_titles"))).alias("titles"),
        "skills",
        "source_file",
        "line_number",
        "raw_location",
        "raw_industry",
        F.col("_city.status").alias("location_status"),
        F.col("_industry.status").alias("industry_status"),
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


def filter_reasons(cleaned: DataFrame, cities: list[str], industries: list[str]) -> DataFrame:
    """Add ``filter_reason``: why filter_profiles leaves a profile out, null when it keeps it.

    In: clean_profiles' columns. The location decides first (missing_location,
    unrecognized_location, outside_cities: known to be elsewhere, or a city not configured),
    then the industry likewise (FILTER_REASONS).
    """
    reason = F.lit(None).cast("string")
    for field, codes, outside in (
        ("industry", industries, "outside_industries"),
        ("location", cities, "outside_cities"),
    ):
        status = F.col(f"{field}_status")
        code = F.col("city" if field == "location" else "industry")
        reason = (
            F.when(status == MISSING, f"missing_{field}")
            .when(status == UNRECOGNIZED, f"unrecognized_{field}")
            .when(~F.coalesce(code.isin(codes), F.lit(False)), outside)
            .otherwise(reason)
        )
    return cleaned.withColumn("filter_reason", reason)


def unrecognized_values(cleaned: DataFrame, cities: list[str], industries: list[str]) -> DataFrame:
    """Every location and industry value that matched nothing the alias map knows.

    In: clean_profiles' columns. Out: field (location / industry), raw_value (as crawled),
    normalized_value (normalize_text of it), profiles (holding it), profiles_lost (of them,
    those the other filter keeps: a location's with an industry of `industries`, an
    industry's in a city of `cities`; what the missing alias cost).
    """
    parts = []
    for field, other, codes in (("location", "industry", industries), ("industry", "city", cities)):
        parts.append(
            cleaned.where(F.col(f"{field}_status") == UNRECOGNIZED)
            .groupBy(F.col(f"raw_{field}").alias("raw_value"))
            .agg(
                F.count(F.lit(1)).alias("profiles"),
                F.count_if(F.col(other).isin(codes)).alias("profiles_lost"),
            )
            .select(F.lit(field).alias("field"), "raw_value", "profiles", "profiles_lost")
        )
    normalized = F.udf(normalize_text, StringType(), useArrow=False)
    found = parts[0].unionByName(parts[1])
    return found.select(
        "field",
        "raw_value",
        normalized("raw_value").alias("normalized_value"),
        "profiles",
        "profiles_lost",
    )


def unusable_items(profiles: DataFrame, encoded: DataFrame) -> DataFrame:
    """The titles and skills that cost encode_profiles' dropped profiles: the titles of every
    profile dropped as no_known_title (none of them is in the vocabulary), the skills of
    every one dropped as no_known_skill.

    In: the filtered profiles (profile_id, titles, skills) and encode_profiles' output. Out:
    unrecognized_values' columns: field (title / skill), raw_value and normalized_value (the
    cleaned name), profiles (of `profiles`, holding it), profiles_lost (of them, those
    dropped for that reason).
    """
    parts = []
    fields = zip(("title", "skill"), ("titles", "skills"), UNUSABLE_REASONS, strict=True)
    for field, column, reason in fields:
        held = profiles.select("profile_id", F.explode(F.array_distinct(column)).alias("item"))
        lost = encoded.where(F.col("drop_reason") == reason).select(
            "profile_id", F.lit(1).alias("_lost")
        )
        parts.append(
            held.join(F.broadcast(lost), "profile_id", "left")
            .groupBy("item")
            .agg(F.count(F.lit(1)).alias("profiles"), F.count("_lost").alias("profiles_lost"))
            .where(F.col("profiles_lost") > 0)
            .select(
                F.lit(field).alias("field"),
                F.col("item").alias("raw_value"),
                F.col("item").alias("normalized_value"),
                "profiles",
                "profiles_lost",
            )
        )
    return parts[0].unionByName(parts[1])


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
