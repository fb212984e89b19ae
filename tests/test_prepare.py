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

from skillrank.config import Config, load_aliases
from skillrank.prepare import (
    MATCHED,
    MISSING,
    OTHER,
    UNRECOGNIZED,
    alias_lookup,
    alias_matchers,
    assign_splits,
    build_vocabulary,
    clean_profiles,
    deduplicate_profiles,
    encode_profiles,
    filter_profiles,
    filter_reasons,
    industry_matcher,
    place_forms,
    place_matcher,
    row_changes,
    unrecognized_values,
    unusable_items,
)
from skillrank.tables import POSITION
from skillrank.text import normalize_text
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
# A small alias map of the shape of conf/aliases.yml's place and industry sections.
CITIES = {
    "SEATTLE": {"region": "US-WA", "names": ["Seattle"], "spellings": ["Seattle, WA"]},
    "MUMBAI": {"region": "IN-MH", "names": ["Mumbai", "Bombay"], "spellings": []},
}
REGIONS = {"US-WA": ["Washington", "WA"], "US-TX": ["Texas"], "IN-MH": ["Maharashtra"]}
COUNTRIES = {"US": ["United States", "USA"], "IN": ["India"], "FR": ["France"]}
PLACES = place_matcher(CITIES, REGIONS, COUNTRIES, ["Paris, Île-de-France, France"])
INDUSTRIES = industry_matcher(
    {"COMPUTER_SOFTWARE": ["Computer Software"], "REAL_ESTATE": ["Real Estate"]}, ["Farming"]
)
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
        _raw("c", _t(1), location="Tacoma, WA", industry="Widgets"),
        _raw("d", _t(1), location=" ", industry=None),
    ]
    cleaned = clean_profiles(_frame(spark, rows), TITLES, SKILLS, PLACES, INDUSTRIES)
    got = {r.profile_id: r for r in cleaned.collect()}
    a = got["a"]
    assert (a.city, a.industry) == ("SEATTLE", "REAL_ESTATE")
    statuses = {
        pid: (r.city, r.location_status, r.raw_location, r.industry, r.industry_status)
        for pid, r in got.items()
    }
    assert statuses == {
        "a": ("SEATTLE", MATCHED, "greater  SEATTLE area", "REAL_ESTATE", MATCHED),
        "b": (None, OTHER, "Paris", None, OTHER),
        "c": (None, UNRECOGNIZED, "Tacoma, WA", None, UNRECOGNIZED),
        "d": (None, MISSING, " ", None, MISSING),
    }
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
    cleaned = clean_profiles(_frame(spark, rows), TITLES, SKILLS, PLACES, INDUSTRIES)
    jobs = build_vocabulary(cleaned, "titles", "job_id", "job_title", min_profiles=1)
    assert [tuple(r) for r in jobs.orderBy("job_id").collect()] == [
        (0, "data scientist", 4), (1, "datascientist", 1)
    ]  # fmt: skip
    skills = build_vocabulary(cleaned, "skills", "skill_id", "skill_name", min_profiles=1)
    assert [tuple(r) for r in skills.collect()] == [(0, "python", 5)]


def test_alias_lookup_maps_spellings_and_canonical_names() -> None:
    lookup = alias_lookup({"SEATTLE": ["Seattle, WA", "Seattle"]}, keep_unknown=False)
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


def test_row_changes_hold_new_changed_and_vanished_rows_only(spark: SparkSession) -> None:
    schema = "profile_id string, city string, skills array<string>"
    old = spark.createDataFrame(
        [
            ("same", None, ["sql", None]),  # nulls, in a column and in an array, compare equal
            ("moved", "SEATTLE", ["sql"]),
            ("relisted", "SEATTLE", ["sql", "git"]),
            ("lost city", "SEATTLE", None),
            ("gone", "MUMBAI", ["git"]),
        ],
        schema,
    )
    new = spark.createDataFrame(
        [
            ("same", None, ["sql", None]),
            ("moved", "MUMBAI", ["sql"]),
            ("relisted", "SEATTLE", ["git", "sql"]),  # the same skills in another order
            ("lost city", None, None),
            ("born", "SEATTLE", []),
        ],
        schema,
    )
    changes = sorted(tuple(r) for r in row_changes(new, old, "profile_id").collect())
    assert changes == [
        ("born", "SEATTLE", [], False),
        ("gone", None, None, True),
        ("lost city", None, None, False),
        ("moved", "MUMBAI", ["sql"], False),
        ("relisted", "SEATTLE", ["git", "sql"], False),
    ]
    assert row_changes(old, old, "profile_id").isEmpty()


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


# How profiles write each target city, after public naming conventions: LinkedIn's metro
# names ("Greater X Area", "X Metropolitan Area"), "city, state/region[, country]" with full
# names and postal abbreviations, the US Census metro names ("Seattle-Tacoma-Bellevue, WA",
# "New York-Newark-Jersey City, NY-NJ-PA"), India's "Mumbai Metropolitan Region", "Delhi
# NCR", local and former names (Bombay), boroughs and districts of the city.
CITY_SPELLINGS = {
    "SAN_FRANCISCO_BAY_AREA": [
        "San Francisco Bay Area", "San Francisco, California, United States",
        "San Francisco, CA", "San Francisco, CA, USA", "SF Bay Area", "Bay Area",
        "San Francisco Metropolitan Area", "San Francisco Metro Area",
        "San Francisco-Oakland-Berkeley, CA", "San Jose-San Francisco-Oakland, CA",
        "Silicon Valley", "SAN FRANCISCO", "San Francisco, U.S.", "Greater San Francisco Area",
    ],
    "NEW_YORK_METROPOLITAN_AREA": [
        "New York Metropolitan Area", "Greater New York City Area",
        "New York City Metropolitan Area", "New York, New York, United States", "New York, NY",
        "New York, NY, USA", "New York City, NY", "NYC", "Greater NYC Area", "NYC Metro Area",
        "New York-Newark-Jersey City, NY-NJ-PA", "Manhattan, New York",
        "Brooklyn, New York, United States", "Queens, NY", "New York, N.Y.",
    ],
    "SEATTLE": [
        "Greater Seattle Area", "Seattle, Washington", "Seattle, Washington, United States",
        "Seattle, WA", "Seattle, WA, US", "Seattle Area", "Seattle Metropolitan Area",
        "Seattle-Tacoma-Bellevue, WA", "Seattle Metro", "Seattle, Wash.",
        "seattle, washington state", "Seattle, United States of America",
    ],
    "PITTSBURGH": [
        "Greater Pittsburgh Area", "Pittsburgh, Pennsylvania",
        "Pittsburgh, Pennsylvania, United States", "Pittsburgh, PA", "Pittsburgh, PA, USA",
        "Pittsburgh Metropolitan Area", "Pittsburgh Metro Area", "Pittsburgh, Pa.", "PGH",
    ],
    "MUMBAI": [
        "Mumbai Area, India", "Mumbai, Maharashtra, India", "Mumbai, India",
        "Mumbai Metropolitan Region", "Greater Mumbai", "Mumbai Suburban, Maharashtra, India",
        "Navi Mumbai, Maharashtra", "Thane, Maharashtra, India", "Bombay", "Bombay, India",
        "Mumbai Metropolitan Area",
    ],
    "NEW_DELHI": [
        "New Delhi Area, India", "Delhi Area, India", "New Delhi, Delhi, India",
        "New Delhi, India", "Delhi, India", "Delhi NCR", "NCR", "Greater Delhi Area",
        "Delhi, National Capital Territory of Delhi, India", "New Delhi, NCT of Delhi",
        "National Capital Region, India",
    ],
}  # fmt: skip
# Real places that share a name, or part of one, with a target city, and must not match it.
NOT_TARGETS = [
    "New York Mills, Minnesota", "New York Mills", "New York Mills, New York",
    "West New York, New Jersey", "New York, Lincolnshire, England", "Delhi, Ontario",
    "Delhi, Ontario, Canada", "Delhi, New York", "Delhi, California", "Delhi, Louisiana",
    "Delhi, Iowa", "Bombay, New York", "Pittsburg, California", "Pittsburg, Kansas",
    "Pittsburg, Texas", "East Pittsburgh, Pennsylvania", "Washington, Pennsylvania",
    "San Francisco, Córdoba, Argentina", "San Francisco, Heredia, Costa Rica",
    "Paris, Texas", "London, Ontario", "Tacoma, WA", "Maharashtra, India", "Washington",
]  # fmt: skip
INDUSTRY_SPELLINGS = {
    "COMPUTER_SOFTWARE": ["Computer Software", "computer  software", "Software Development",
                          "Software"],
    "HOSPITAL_AND_HEALTH_CARE": ["Hospital & Health Care", "Hospitals and Health Care",
                                 "Hospitals & Healthcare", "HOSPITAL AND HEALTHCARE"],
    "FINANCIAL_SERVICES": ["Financial Services", "Financial Service", "financial services"],
    "REAL_ESTATE": ["Real Estate", "Real-Estate", "REAL ESTATE"],
    "RESEARCH": ["Research", "Research Services"],
    "MARKETING_AND_ADVERTISING": ["Marketing and Advertising", "Marketing & Advertising",
                                  "Advertising Services", "Marketing, Advertising"],
}  # fmt: skip
NOT_TARGET_INDUSTRIES = [
    "Banking", "Higher Education", "Internet", "Information Technology & Services",
    "IT Services and IT Consulting", "Computer Hardware", "Computer Games", "Market Research",
    "Commercial Real Estate", "Mental Health Care", "Investment Banking", "Insurance",
]  # fmt: skip


@pytest.fixture(scope="module")
def aliases(config: Config) -> dict:
    return load_aliases(config)


def test_every_usual_spelling_of_a_target_city_matches_it(aliases: dict) -> None:
    places, _ = alias_matchers(aliases)
    got = {(code, s): places.match(s) for code, spellings in CITY_SPELLINGS.items()
           for s in spellings}  # fmt: skip
    assert {k: v for k, v in got.items() if v != (k[0], MATCHED)} == {}
    # The rules match them, not the list: the whole spellings alone miss most of them.
    spellings_only = {code: {**city, "names": []} for code, city in aliases["cities"].items()}
    bare = place_matcher(spellings_only, aliases["regions"], aliases["countries"], [])
    missed = [s for _, s in got if bare.match(s)[1] != MATCHED]
    assert len(missed) > 0.6 * len(got), missed


def test_places_that_only_look_like_a_target_city_do_not_match(aliases: dict) -> None:
    places, _ = alias_matchers(aliases)
    matched = {s: places.match(s) for s in NOT_TARGETS}
    assert {s: m for s, m in matched.items() if m[0] is not None} == {}
    # Known to lie elsewhere (outside_cities) where a region or country says so; unknown
    # (a spelling to look at) where they might be a target's: "Tacoma, WA", "Delhi, New York".
    assert matched["Delhi, Ontario"] == (None, OTHER)
    assert matched["New York Mills, Minnesota"] == (None, OTHER)
    assert matched["Tacoma, WA"] == (None, UNRECOGNIZED)
    assert matched["New York Mills"] == (None, UNRECOGNIZED)


def test_industry_spellings_old_and_new_match_and_others_do_not(aliases: dict) -> None:
    _, industries = alias_matchers(aliases)
    got = {(code, s): industries.match(s) for code, spellings in INDUSTRY_SPELLINGS.items()
           for s in spellings}  # fmt: skip
    assert {k: v for k, v in got.items() if v != (k[0], MATCHED)} == {}
    others = {s: industries.match(s) for s in NOT_TARGET_INDUSTRIES}
    assert {s: m for s, m in others.items() if m != (None, OTHER)} == {}
    assert industries.match("Widgets") == (None, UNRECOGNIZED)
    assert industries.match(" ") == (None, MISSING)


def test_the_generators_other_places_and_industries_are_known_elsewhere(
    config: Config, aliases: dict
) -> None:
    places, industries = alias_matchers(aliases)
    g = config.generate
    wrong = [(p, places.match(p)) for p in g.other_locations if places.match(p) != (None, OTHER)]
    wrong += [
        (i, industries.match(i)) for i in g.other_industries if industries.match(i) != (None, OTHER)
    ]
    assert wrong == []
    for code, city in aliases["cities"].items():  # and every listed spelling is its city's
        assert {s: places.match(s) for s in city["spellings"]} == dict.fromkeys(
            city["spellings"], (code, MATCHED)
        )


def test_place_forms_strip_metro_shapes() -> None:
    assert place_forms("greater new york city area") == ["greater new york city area",
                                                         "new york city", "new york"]  # fmt: skip
    assert place_forms("seattle-tacoma-bellevue metro") == [
        "seattle-tacoma-bellevue metro", "seattle-tacoma-bellevue", "seattle"
    ]  # fmt: skip
    assert place_forms("bay area") == ["bay area", "bay"]
    assert place_forms("area") == ["area"]


def test_filter_reasons_and_unrecognized_values_add_up(spark: SparkSession) -> None:
    rows = [
        ("a", "Seattle, WA", "Computer Software"),  # kept
        ("b", "Tacoma, WA", "Computer Software"),  # unrecognized location, industry kept
        ("c", "tacoma,  wa", "Farming"),  # unrecognized location, outside industry
        ("d", "Paris", "Computer Software"),  # outside
        ("e", None, "Real Estate"),  # missing location
        ("f", "Bombay", "Widgets"),  # city kept, unrecognized industry
        ("g", "Mumbai, India", "Widgets"),
        ("h", "Dallas, Texas", "Widgets"),  # outside city first
        ("i", "Seattle", None),  # missing industry
        ("j", "Seattle", "Farming"),  # outside industries
        ("k", "Mumbai", "Real Estate"),  # kept; outside_cities where MUMBAI is not configured
    ]
    raw = _frame(spark, [_raw(p, _t(1), location=loc, industry=ind) for p, loc, ind in rows])
    cleaned = clean_profiles(raw, TITLES, SKILLS, PLACES, INDUSTRIES)
    cities, industries = ["SEATTLE", "MUMBAI"], ["COMPUTER_SOFTWARE", "REAL_ESTATE"]
    reasons = filter_reasons(cleaned, cities, industries)
    got = {r.profile_id: r.filter_reason for r in reasons.collect()}
    assert got == {
        "a": None, "b": "unrecognized_location", "c": "unrecognized_location",
        "d": "outside_cities", "e": "missing_location", "f": "unrecognized_industry",
        "g": "unrecognized_industry", "h": "outside_cities", "i": "missing_industry",
        "j": "outside_industries", "k": None,
    }  # fmt: skip
    only_seattle = filter_reasons(cleaned, ["SEATTLE"], industries)
    assert only_seattle.where("profile_id = 'k'").first().filter_reason == "outside_cities"
    found = unrecognized_values(cleaned, cities, industries)
    assert sorted(tuple(r) for r in found.collect()) == [
        ("industry", "Widgets", "widgets", 3, 2),  # h is in no configured city
        ("location", "Tacoma, WA", "tacoma, wa", 1, 1),
        ("location", "tacoma,  wa", "tacoma, wa", 1, 0),  # its industry is outside anyway
    ]


def test_unusable_items_name_what_cost_the_dropped_profiles(spark: SparkSession) -> None:
    profiles = spark.createDataFrame(
        [
            ("a", ["nurse"], ["triage"]),
            ("b", ["zookeeper", "juggler"], ["triage"]),  # no known title
            ("c", ["zookeeper"], ["feeding"]),  # no known title
            ("d", ["nurse"], ["feeding", "juggling"]),  # no known skill
            ("e", ["zookeeper", "nurse"], ["juggling", "triage"]),  # usable
        ],
        "profile_id string, titles array<string>, skills array<string>",
    )
    encoded = spark.createDataFrame(
        [("a", None), ("b", "no_known_title"), ("c", "no_known_title"),
         ("d", "no_known_skill"), ("e", None)],
        "profile_id string, drop_reason string",
    )  # fmt: skip
    got = sorted(tuple(r) for r in unusable_items(profiles, encoded).collect())
    assert got == [
        ("skill", "feeding", "feeding", 2, 1),
        ("skill", "juggling", "juggling", 2, 1),
        ("title", "juggler", "juggler", 1, 1),
        ("title", "zookeeper", "zookeeper", 3, 2),
    ]
