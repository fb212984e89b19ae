"""prepare transforms on inline data: dedupe, clean, split, filter, vocabulary, encoding."""

from __future__ import annotations

import datetime as dt
import sys
import unicodedata
import uuid
from dataclasses import replace

import pytest
from pyspark.sql import Row, SparkSession
from pyspark.sql.types import (
    ArrayType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from skillrank.config import Config
from skillrank.prepare import (
    alias_lookup,
    assign_splits,
    build_vocabulary,
    clean_profiles,
    deduplicate_profiles,
    encode_profiles,
    filter_profiles,
    normalize_text,
)
from skillrank.tables import POSITION
from skillrank.views import view_statements

RAW_SCHEMA = StructType(
    [
        StructField("profile_id", StringType()),
        StructField("crawled_at", TimestampType()),
        StructField("line_sha256", StringType()),
        StructField("source_file", StringType()),
        StructField("line_number", LongType()),
        StructField("location", StringType()),
        StructField("industry", StringType()),
        StructField("positions", ArrayType(POSITION)),
        StructField("skills", ArrayType(StringType())),
    ]
)
CITIES = {"SEATTLE": ["Greater Seattle Area", "Seattle, WA"], "MUMBAI": ["Mumbai, India"]}
INDUSTRIES = {"COMPUTER_SOFTWARE": ["Computer Software"], "REAL_ESTATE": ["Real Estate"]}
TITLES = {"senior software engineer": ["sr. software engineer"]}
SKILLS = {"microsoft office": ["MS Office"]}


def _t(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2026, 10, day, hour)


def _raw(pid: str, when: dt.datetime, sha: str = "0", **fields: object) -> Row:
    values = {"location": "Seattle, WA", "industry": "Computer Software", "positions": [],
              "skills": [], "source_file": "f", "line_number": 1, **fields}  # fmt: skip
    return Row(profile_id=pid, crawled_at=when, line_sha256=sha, **values)


def _frame(spark: SparkSession, rows: list[Row]):  # noqa: ANN202 - DataFrame
    return spark.createDataFrame([r.asDict() for r in rows], RAW_SCHEMA)


# Spellings of names that look alike, and the one name each is stored as.
NAMES = [
    ("  Senior   Software\tEngineer ", "senior software engineer"),
    ("ＳＥＮＩＯＲ　ｅｎｇｉｎｅｅｒ", "senior engineer"),  # full-width letters and space
    ("ｄａｔａ　ｓｃｉｅｎｔｉｓｔ", "data scientist"),
    ("Oﬃce Manager", "office manager"),  # ligature
    ("Straße", "strasse"),  # full case folding, not lower()
    ("STRASSE", "strasse"),
    ("cafe\u0301", "caf\u00e9"),  # NFD -> NFC
    ("data\u200dscientist", "datascientist"),  # a format character goes, adding no space
    ("data\u200b scientist", "data scientist"),
    ("\u202edata scientist\u202c", "data scientist"),  # right-to-left override
    ("\u2067Soft\u00adware\u2069", "software"),  # isolate, soft hyphen
    ("\ufeffdata\u2060 scientist", "data scientist"),  # byte order mark, word joiner
    ("data\u00a0 scientist ", "data scientist"),
    ("data\u2028scientist\x1f", "data scientist"),
    ("\U0001f469\u200d\U0001f4bb Developer", "\U0001f469\U0001f4bb developer"),  # emoji ZWJ
    ("\u200d\u00ad", None),
    ("   ", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("raw", "clean"), NAMES)
def test_normalize_text(raw: str | None, clean: str | None) -> None:
    assert normalize_text(raw) == clean


def test_sql_normalize_name_agrees_with_normalize_text(spark: SparkSession, config: Config) -> None:
    database = f"t_normalize_{uuid.uuid4().hex[:6]}"
    spark.sql(f"CREATE DATABASE {database}")
    mine = replace(config, catalog=replace(config.catalog, database=database))
    spark.sql(view_statements(mine)["normalize_name"][0])
    # Every format, space, separator and control character, alone and inside a word, but
    # U+0890 and U+0891: Cf since Unicode 14 (Python 3.11), unknown to Java 17 (Unicode 13).
    kinds = {"Cf", "Cc", "Zs", "Zl", "Zp"}
    odd = [
        chr(c)
        for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c)) in kinds and c not in (0x890, 0x891)
    ]
    extra = ["\U0001f600", "İstanbul", "ǅ", "ﬁ", "①", "DATA SCIENTIST"]
    names = [raw for raw, _ in NAMES] + extra + odd + [f"a{c}b" for c in odd]
    frame = spark.createDataFrame(list(enumerate(names)), "i int, name string")
    query = f"SELECT i, {database}.normalize_name(name) AS clean FROM {{frame}}"
    sql = dict(spark.sql(query, frame=frame).collect())
    differ = [
        (n, sql[i], normalize_text(n)) for i, n in enumerate(names) if sql[i] != normalize_text(n)
    ]
    assert differ == []


def test_latest_snapshot_wins_and_ties_break_by_hash(spark: SparkSession) -> None:
    rows = [
        _raw("a", _t(1), "aa", line_number=1),
        _raw("a", _t(3), "bb", line_number=2),
        _raw("a", _t(2), "cc", line_number=3),
        _raw("b", _t(5), "zz", source_file="f1", line_number=7),
        _raw("b", _t(5), "yy", source_file="f2", line_number=9),
    ]
    got = {r.profile_id: r.line_number for r in deduplicate_profiles(_frame(spark, rows)).collect()}
    assert got == {"a": 2, "b": 9}
    # The winner does not depend on the order the rows arrive in.
    again = deduplicate_profiles(_frame(spark, rows[::-1]))
    assert {r.profile_id: r.line_number for r in again.collect()} == got


def test_clean_profiles_normalises_and_applies_aliases(spark: SparkSession) -> None:
    positions = [
        Row(title="Sr. Software  Engineer", company="A", start="2020-01", end=None),
        Row(title=None, company="B", start="2018-01", end="2019-12"),
        Row(title="SENIOR software engineer", company="C", start="2016-01", end="2017-12"),
        Row(title="Data Scientist", company="D", start="2014-01", end="2015-12"),
    ]
    rows = [
        _raw(
            "a",
            _t(1),
            location="greater  SEATTLE area",
            industry="Real Estate",
            positions=positions,
            skills=["SQL", "ms office", "sql ", "", None],
        ),  # fmt: skip
        _raw("b", _t(1), location="Paris", industry="Farming"),
    ]
    cleaned = clean_profiles(_frame(spark, rows), TITLES, SKILLS, CITIES, INDUSTRIES)
    got = {r.profile_id: r for r in cleaned.collect()}
    a = got["a"]
    assert (a.city, a.industry) == ("SEATTLE", "REAL_ESTATE")
    assert a.titles == ["senior software engineer", "data scientist"]
    assert [p.title for p in a.positions] == [
        "senior software engineer", None, "senior software engineer", "data scientist"
    ]  # fmt: skip
    assert [p.company for p in a.positions] == ["A", "B", "C", "D"]
    assert a.skills == ["microsoft office", "sql"]
    assert (got["b"].city, got["b"].industry, got["b"].titles) == (None, None, [])


def test_look_alike_titles_and_skills_are_one_job_and_one_skill(spark: SparkSession) -> None:
    def person(pid: str, title: str, skill: str) -> Row:
        return _raw(pid, _t(1), positions=[Row(title=title, company=None, start=None, end=None)],
                    skills=[skill])  # fmt: skip

    rows = [
        person("a", "Data Scientist", "Python"),
        person("b", "DATA\u200d SCIENTIST", "Py\u00adthon"),
        person("c", "\u202eData Scientist\u202c", "\u200bpython"),
        person("d", "\ufeffData\u00a0Scientist", "PYTHON\u2066"),
        person("e", "data\u200dscientist", "python"),  # no space: shown as one word
    ]
    cleaned = clean_profiles(_frame(spark, rows), TITLES, SKILLS, CITIES, INDUSTRIES)
    jobs = build_vocabulary(cleaned, "titles", "job_id", "job_title", min_profiles=1)
    assert [tuple(r) for r in jobs.orderBy("job_id").collect()] == [
        (0, "data scientist", 4), (1, "datascientist", 1)
    ]  # fmt: skip
    skills = build_vocabulary(cleaned, "skills", "skill_id", "skill_name", min_profiles=1)
    assert [tuple(r) for r in skills.collect()] == [(0, "python", 5)]


def test_alias_lookup_maps_spellings_and_canonical_names() -> None:
    lookup = alias_lookup(CITIES, keep_unknown=False)
    assert lookup["seattle, wa"] == "SEATTLE"
    assert lookup["seattle"] == "SEATTLE"
    assert alias_lookup(TITLES, keep_unknown=True)["sr. software engineer"] == (
        "senior software engineer"
    )


def test_split_is_a_stable_salted_hash(spark: SparkSession) -> None:
    fractions = {"train": 0.9, "validation": 0.05, "test": 0.05}
    ids = spark.createDataFrame([(f"p-{i}",) for i in range(20000)], "profile_id string")
    first = {r.profile_id: r.split for r in assign_splits(ids, fractions, "salt").collect()}
    counts = {s: sum(1 for v in first.values() if v == s) for s in fractions}
    assert 17700 < counts["train"] < 18300
    assert 850 < counts["validation"] < 1150 and 850 < counts["test"] < 1150
    # A subset (or any other frame holding the same ids) gets the same splits.
    subset = ids.where("profile_id LIKE 'p-1%'")
    again = {r.profile_id: r.split for r in assign_splits(subset, fractions, "salt").collect()}
    assert all(first[k] == v for k, v in again.items())
    other_salt = {r.profile_id: r.split for r in assign_splits(ids, fractions, "pepper").collect()}
    assert sum(first[k] != other_salt[k] for k in first) > 1000


def test_split_matches_the_documented_formula(spark: SparkSession) -> None:
    import hashlib

    fractions = {"train": 0.5, "validation": 0.25, "test": 0.25}
    ids = [f"x{i}" for i in range(200)]
    got = assign_splits(spark.createDataFrame([(i,) for i in ids], "profile_id string"),
                        fractions, "s")  # fmt: skip
    for row in got.collect():
        u = int(hashlib.sha256(f"s:{row.profile_id}".encode()).hexdigest()[:12], 16) / 2**48
        assert row.split == ("train" if u < 0.5 else "validation" if u < 0.75 else "test")


def test_filter_keeps_configured_cities_and_industries(spark: SparkSession) -> None:
    rows = [
        ("a", "SEATTLE", "REAL_ESTATE"),
        ("b", "MUMBAI", "COMPUTER_SOFTWARE"),
        ("c", None, "REAL_ESTATE"),
        ("d", "SEATTLE", None),
        ("e", "SEATTLE", "RESEARCH"),
    ]
    frame = spark.createDataFrame(rows, "profile_id string, city string, industry string")
    kept = filter_profiles(frame, ["SEATTLE"], ["REAL_ESTATE", "RESEARCH"])
    assert sorted(r.profile_id for r in kept.collect()) == ["a", "e"]


def test_vocabulary_ids_are_dense_by_count_then_name(spark: SparkSession) -> None:
    frame = spark.createDataFrame(
        [(["b", "a"],), (["a", "c", "a"],), (["c"],), (["d"],), (["a"],)], "titles array<string>"
    )
    vocab = build_vocabulary(frame, "titles", "job_id", "job_title", min_profiles=2)
    assert [tuple(r) for r in vocab.orderBy("job_id").collect()] == [(0, "a", 3), (1, "c", 2)]
    # A size limit keeps the most frequent; ties broken by name, as the ids are.
    capped = build_vocabulary(frame, "titles", "job_id", "job_title", min_profiles=1, max_size=3)
    assert [tuple(r) for r in capped.orderBy("job_id").collect()] == [
        (0, "a", 3),
        (1, "c", 2),
        (2, "b", 1),
    ]


def _cleaned(spark: SparkSession, rows: list[tuple]):  # noqa: ANN202 - DataFrame
    schema = StructType(
        [
            StructField("profile_id", StringType()),
            StructField("split", StringType()),
            StructField("crawled_at", TimestampType()),
            StructField("positions", ArrayType(POSITION)),
            StructField("skills", ArrayType(StringType())),
        ]
    )
    return spark.createDataFrame(rows, schema)


def test_encode_profiles_weights_and_drop_reasons(spark: SparkSession) -> None:
    def pos(title: str, start: str, end: str | None) -> Row:
        return Row(title=title, company=None, start=start, end=end)

    now = dt.datetime(2026, 1, 15)
    rows = [
        # 'a' held 24 months, 'b' 12 months then 'a' again 12 months (open, ends at crawl).
        (
            "p1",
            "train",
            now,
            [
                pos("a", "2025-01", None),
                pos("b", "2024-01", "2025-01"),
                pos("a", "2022-01", "2024-01"),
            ],
            ["s2", "s1", "zz"],
        ),  # fmt: skip
        ("p2", "test", now, [pos("unknown", "2020-01", None)], ["s1"]),
        ("p3", "validation", now, [pos("b", "2020-01", None)], ["zz"]),
    ]
    jobs = spark.createDataFrame([(0, "a"), (1, "b")], "job_id int, job_title string")
    skills = spark.createDataFrame([(0, "s1"), (1, "s2")], "skill_id int, skill_name string")
    uniform = {r.profile_id: r for r in encode_profiles(_cleaned(spark, rows), jobs, skills,
                                                         "uniform").collect()}  # fmt: skip
    p1 = uniform["p1"]
    assert (p1.job_ids, p1.job_weights, p1.skill_ids, p1.drop_reason) == (
        [0, 1], [0.5, 0.5], [0, 1], None
    )  # fmt: skip
    assert uniform["p2"].drop_reason == "no_known_title"
    assert uniform["p3"].drop_reason == "no_known_skill"
    tenure = encode_profiles(_cleaned(spark, rows), jobs, skills, "tenure")
    p1 = tenure.where("profile_id = 'p1'").first()
    assert p1.job_ids == [0, 1]
    assert p1.job_weights == pytest.approx([36 / 48, 12 / 48])
