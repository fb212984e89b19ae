"""Ingest transforms: number raw crawl lines, parse them strictly, accept or quarantine each.

Parsing goes through Spark's VARIANT type so that JSON types are checked exactly (a number
where a string belongs is ``wrong_type``, not silently turned into text); the fields are
read with ``from_json`` and an explicit schema, which gives the variant's values wherever the
type checks pass, at a fraction of ``variant_get``'s cost. Reason codes are tried in the
order of ``REASONS``; the first that applies is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import reduce
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from skillrank.config import IngestConfig

# In the order they are tried. docs/crawl-format.md explains each.
REASONS = (
    "empty_line",
    "line_too_long",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "invalid_timestamp",
    "future_timestamp",
    "too_many_items",
    "field_too_long",
    "control_characters",
)
# Recorded once per file, not per line: a gzip file cut short, or with corrupt compressed
# data or checksum, or a .gz file that is not gzip at all (damaged_file_lines).
FILE_REASONS = ("truncated_gzip", "corrupt_gzip", "not_gzip")

STRING_FIELDS = ("profile_id", "crawled_at", "location", "industry")
POSITION_FIELDS = ("title", "company", "start", "end")
REQUIRED_FIELDS = ("profile_id", "crawled_at")
# JSON escapes that can stand for a control character (\u00 also covers harmless ones).
_CONTROL_ESCAPES = ("\\u00", "\\b", "\\f", "\\n", "\\r", "\\t")
_POSITIONS_TYPE = "array<struct<title string, company string, start string, `end` string>>"
_RECORD_TYPE = (
    ", ".join(f"{n} string" for n in STRING_FIELDS)
    + f", positions {_POSITIONS_TYPE}, skills array<string>"
)


def line_checks(ingest: IngestConfig, now: datetime) -> dict[str, Any]:
    """``parse_lines``' settings from the ingest configuration, for an ingest at `now`."""
    limits = ("max_line_bytes", "max_field_chars", "max_positions", "max_skills")
    return {
        "not_after": now + timedelta(hours=ingest.future_tolerance_hours),
        "quarantine_text_chars": ingest.quarantine_text_chars,
        **{name: getattr(ingest, name) for name in limits},
    }


def number_lines(lines: DataFrame) -> DataFrame:
    """Give every raw line its 1-based line number within its file.

    In: source_file, block_start (byte offset of the split the line was read from) and
    row_id (``monotonically_increasing_id()`` taken right after the scan, so consecutive
    within a split), plus any other columns. Out: the same with ``line_number``.
    Only a per-split summary is shuffled, never the lines themselves.
    """
    blocks = lines.groupBy("source_file", "block_start").agg(
        F.count(F.lit(1)).alias("_block_lines"), F.min("row_id").alias("_first_row_id")
    )
    earlier = (
        Window.partitionBy("source_file")
        .orderBy("block_start")
        .rowsBetween(Window.unboundedPreceding, -1)
    )
    blocks = blocks.withColumn(
        "_lines_before", F.coalesce(F.sum("_block_lines").over(earlier), F.lit(0))
    )
    numbered = lines.join(F.broadcast(blocks), ["source_file", "block_start"])
    return numbered.withColumn(
        "line_number", F.col("_lines_before") + F.col("row_id") - F.col("_first_row_id") + 1
    ).drop("_block_lines", "_first_row_id", "_lines_before", "block_start", "row_id")


def _kind(v: Column, path: str) -> Column:
    """JSON type of the value at `path`: STRING, BIGINT, ARRAY<...>, VOID (null); NULL if absent."""
    return F.schema_of_variant(F.variant_get(v, path, "variant"))


def _string_ok(kind: Column) -> Column:
    return kind.isNull() | kind.isin("STRING", "VOID")


def _positions_ok(v: Column) -> Column:
    """positions is absent, null, or an array of objects whose known fields are strings or null."""
    kind = _kind(v, "$.positions")
    field_ok = " AND ".join(
        f"coalesce(schema_of_variant(variant_get(e, '$.{name}', 'variant')) IN ('STRING', 'VOID'),"
        " true)"
        for name in POSITION_FIELDS
    )
    elements = F.expr(
        "forall(try_variant_get(v, '$.positions', 'array<variant>'), "
        f"e -> schema_of_variant(e) LIKE 'OBJECT<%' AND {field_ok})"
    )
    return kind.isNull() | (kind == "VOID") | (kind.startswith("ARRAY<") & elements)


def _skills_ok(v: Column) -> Column:
    kind = _kind(v, "$.skills")
    return kind.isNull() | kind.isin("VOID", "ARRAY<STRING>", "ARRAY<VOID>")


def _strings_of(field: str) -> Column:
    """Every string a field holds, as an array (positions: all four strings of every position)."""
    if field == "positions":
        return F.flatten(
            F.transform("positions", lambda p: F.array(*[p[n] for n in POSITION_FIELDS]))
        )
    if field == "skills":
        return F.col("skills")
    return F.array(F.col(field))


def _c1_control(raw: Column) -> Column:
    """The raw line holds U+007F-U+009F. Only a line with a character beyond ASCII (more
    bytes than characters) can hold U+0080-U+009F, so the regex reads those lines only."""
    beyond_ascii = F.octet_length(raw) != F.char_length(raw)
    return raw.contains("\x7f") | (beyond_ascii & raw.rlike("[\x80-\x9f]"))


def _any(*conditions: Column) -> Column:
    return reduce(lambda a, b: a | b, conditions)


def _usual_shape() -> str:
    """Regex for ``schema_of_variant`` of a record with only known fields, all well typed.

    Variant objects list their keys sorted, so the record's schema string is matched
    field by field in order. A record that matches needs no per-field type checks; any
    other record (extra fields, nulls in arrays, wrong types) goes through them.
    """
    text = "(?:STRING|VOID)"
    position = f"(?:company|end|start|title): {text}"
    fields = {
        "crawled_at": "STRING",
        "industry": text,
        "location": text,
        "positions": f"(?:VOID|ARRAY<OBJECT<{position}(?:, {position})*>>)",
        "profile_id": "STRING",
        "skills": "(?:VOID|ARRAY<STRING>|ARRAY<VOID>)",
    }
    parts = [
        f"{', ' if i else ''}{name}: {kind}" if name in REQUIRED_FIELDS
        else f"(?:, {name}: {kind})?"
        for i, (name, kind) in enumerate(fields.items())
    ]  # fmt: skip
    return "^OBJECT<" + "".join(parts) + ">$"


def _one_value(depth: int) -> str:
    """Regex for a bracket string that is one value nested at most `depth` deep: an opening
    bracket, any number of such values one level less deep, a closing bracket. The two kinds
    of bracket count alike, as in ``_trailing_content``'s balance. Possessive quantifiers: a
    bracket string parses one way only, so nothing is retried."""
    inner = ""
    for _ in range(depth):
        inner = rf"[\[{{](?:{inner})*+[\]}}]" if inner else r"[\[{][\]}]"
    return f"^{inner}$"


# Lines nested deeper than this (a profile is 3 deep) take the exact, slower balance count.
_REGEX_DEPTH = 8


def _trailing_content(raw: Column) -> Column:
    """True when something follows the line's first JSON array or object (``parse_json``
    reads the first value and ignores the rest: ``{...} garbage``, ``{...},{...}``).

    Escape pairs become one placeholder character each, then strings are dropped with every
    other character but brackets, which leaves the line's bracket structure; the first
    value ends where its brackets first balance. Lines that do not start with a bracket are
    left to the other checks. A line without a backslash has no escape pair to replace, and
    the balance is decided by a regex for the usual nesting depth; only a line that does not
    match it is counted bracket by bracket (an interpreted, slower expression).
    """
    skeleton = F.when(raw.contains("\\"), F.regexp_replace(raw, r"\\.", "x")).otherwise(raw)
    brackets = F.regexp_replace(skeleton, r'"[^"]*"|[^\[\]{}]', "")

    def step(a: Column, c: Column) -> Column:
        depth = a["depth"] + F.when(c.isin("{", "["), 1).otherwise(-1)
        return F.struct(
            depth.alias("depth"),
            (a["closed"] + F.when(depth == 0, 1).otherwise(0)).alias("closed"),
        )

    start = F.struct(F.lit(0).alias("depth"), F.lit(0).alias("closed"))
    balance = F.aggregate(F.split(brackets, ""), start, step)
    one_value = brackets.rlike(_one_value(_REGEX_DEPTH)) | (
        (balance["closed"] == 1) & (balance["depth"] == 0)
    )
    return skeleton.rlike(r"^\ufeff?\s*[\[{]") & ~(one_value & skeleton.rlike(r"[\]}]\s*$"))


def parse_lines(
    lines: DataFrame,
    not_after: datetime,
    max_line_bytes: int,
    max_field_chars: int,
    max_positions: int,
    max_skills: int,
    quarantine_text_chars: int,
) -> DataFrame:
    """Parse raw crawl lines and decide, for each, accept (reason null) or a reason code.

    In: a ``value`` column (the raw line) plus any lineage columns, which are kept, and
    `not_after`, the latest ``crawled_at`` accepted (ingest time plus a tolerance).
    Out: the lineage columns plus reason, reason_detail, raw_bytes, line_sha256, raw_text
    (for rejected lines only: the first `quarantine_text_chars` characters, invalid UTF-8
    replaced) and the parsed profile fields (profile_id, crawled_at, location, industry,
    positions, skills; exact for accepted lines only: where a field has the wrong type, it
    holds that value's JSON text or null, except profile_id, which is null unless the line
    is an object whose profile_id is a string, so that a rejected line names its profile
    where it can). The raw ``value`` itself is dropped.
    """
    valid_utf8 = F.expr("is_valid_utf8(value)")
    raw = F.col("value")
    without_bom = F.when(raw.startswith("\ufeff"), F.expr("substr(value, 2)")).otherwise(raw)
    parsed = lines.withColumn("raw_bytes", F.octet_length("value")).withColumn(
        "v",
        F.when((F.col("raw_bytes") <= max_line_bytes) & valid_utf8, F.try_parse_json(without_bom)),
    )
    v = F.col("v")
    all_fields = [*STRING_FIELDS, "positions", "skills"]
    record = F.when(v.isNotNull(), F.from_json(without_bom, _RECORD_TYPE))
    parsed = parsed.select(
        "*", F.schema_of_variant(v).alias("_shape"), record.alias("_record")
    ).select("*", *[F.col(f"_record.{n}").alias(n) for n in all_fields])
    # Cheap tests on the raw line rule out most lines before the per-field checks: a string
    # of more than N characters needs N+1 raw characters between quotes (or an escaped
    # quote), and a control character needs an escape or a raw C1 character.
    parsed = parsed.select(
        "*",
        F.col("_shape").rlike(_usual_shape()).alias("_usual"),
        (raw.rlike(f'(?:^|")[^"]{{{max_field_chars + 1},}}') | raw.contains('\\"')).alias("_long"),
        _any(*[raw.contains(e) for e in _CONTROL_ESCAPES], _c1_control(raw)).alias("_control"),
    )
    usual, shape = F.col("_usual"), F.col("_shape")
    crawled_at = F.try_to_timestamp(F.col("crawled_at"))

    checks: list[tuple[Column, str, str | None]] = [
        (F.trim(without_bom) == "", "empty_line", None),
        (F.col("raw_bytes") > max_line_bytes, "line_too_long", None),
        (~valid_utf8, "invalid_utf8", None),
        (v.isNull(), "invalid_json", None),
        (_trailing_content(raw), "invalid_json", "trailing_content"),
        (~shape.startswith("OBJECT<"), "not_an_object", None),
    ]
    for name in REQUIRED_FIELDS:
        kind = _kind(v, f"$.{name}")
        absent = ~usual & (kind.isNull() | (kind == "VOID"))
        checks.append((absent | (F.trim(name) == ""), "missing_field", name))
    # The per-field type checks run only for records outside the usual shape.
    checks += [(~usual & ~_string_ok(_kind(v, f"$.{n}")), "wrong_type", n) for n in STRING_FIELDS]
    checks += [
        (~usual & ~_positions_ok(v), "wrong_type", "positions"),
        (~usual & ~_skills_ok(v), "wrong_type", "skills"),
        (crawled_at.isNull(), "invalid_timestamp", "crawled_at"),
        (crawled_at > F.lit(not_after), "future_timestamp", "crawled_at"),
        (F.coalesce(F.size("positions"), F.lit(0)) > max_positions, "too_many_items", "positions"),
        (F.coalesce(F.size("skills"), F.lit(0)) > max_skills, "too_many_items", "skills"),
    ]
    for name in all_fields:
        longest = F.array_max(F.transform(_strings_of(name), lambda s: F.char_length(s)))
        too_long = F.coalesce(longest, F.lit(0)) > max_field_chars
        checks.append((F.col("_long") & too_long, "field_too_long", name))
    for name in all_fields:
        control = F.exists(_strings_of(name), lambda s: s.rlike(r"\p{Cc}"))
        checks.append(
            (F.col("_control") & F.coalesce(control, F.lit(False)), "control_characters", name)
        )

    verdict: Column = F.lit(None).cast("struct<code: string, detail: string>")
    for condition, code, detail in reversed(checks):
        outcome = F.struct(F.lit(code).alias("code"), F.lit(detail).cast("string").alias("detail"))
        verdict = F.when(condition, outcome).otherwise(verdict)
    return (
        parsed.withColumn("_verdict", verdict)
        .withColumn("reason", F.col("_verdict.code"))
        .withColumn("reason_detail", F.col("_verdict.detail"))
        .withColumn("crawled_at", crawled_at)
        .withColumn(
            "profile_id",
            F.when(usual | (_kind(v, "$.profile_id") == "STRING"), F.col("profile_id")),
        )
        .withColumn("line_sha256", F.sha2(F.col("value"), 256))
        .withColumn(
            "raw_text",
            F.when(
                F.col("reason").isNotNull(),
                F.substring(F.expr("make_valid_utf8(value)"), 1, quarantine_text_chars),
            ),
        )
        .drop("value", "v", "_record", "_shape", "_usual", "_long", "_control", "_verdict")
    )


def accepted_profiles(parsed: DataFrame) -> DataFrame:
    """The lines of ``parse_lines`` output that passed every check (profiles_raw rows)."""
    return parsed.where(F.col("reason").isNull())


def damaged_file_lines(parsed: DataFrame, damaged: Mapping[str, str]) -> DataFrame:
    """One quarantine row per gzip file the codec could not read to its end.

    In: ``parse_lines`` output holding the lines read from each damaged file before the
    codec failed, and `damaged`: file URI (as in source_file) -> its FILE_REASONS code
    (``truncated_gzip``: the stream ends early; ``corrupt_gzip``: bad compressed data or
    checksum). Out: a row per file with source_file, line_number (the line after the last
    one read; 1 when none was), the reason, reason_detail, raw_text and profile_id null,
    raw_bytes 0.
    """
    spark = parsed.sparkSession
    files = spark.createDataFrame(list(damaged.items()), "source_file string, reason string")
    last = parsed.groupBy("source_file").agg(F.max("line_number").alias("_last"))
    return files.join(last, "source_file", "left").select(
        "source_file",
        (F.coalesce(F.col("_last"), F.lit(0)) + 1).cast("long").alias("line_number"),
        "reason",
        F.lit(None).cast("string").alias("reason_detail"),
        F.lit(0).cast("long").alias("raw_bytes"),
        F.lit(None).cast("string").alias("raw_text"),
        F.lit(None).cast("string").alias("profile_id"),
    )


def quarantined_lines(parsed: DataFrame) -> DataFrame:
    """The lines of ``parse_lines`` output that were rejected (quarantine rows)."""
    return parsed.where(F.col("reason").isNotNull())
