"""ingest: strict parsing, a negative test per reason, exact line numbers, idempotent reruns."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from jobs.ingest import read_lines
from skillrank.ingest import REASONS, number_lines, parse_lines
from skillrank.prepare import deduplicate_profiles
from tests.conftest import Pipeline, profile, write_crawl

LIMITS = {
    "not_after": datetime(2027, 1, 1, tzinfo=UTC),
    "max_line_bytes": 4096,
    "max_field_chars": 64,
    "max_positions": 3,
    "max_skills": 4,
    "quarantine_text_chars": 40,
}

# One bad line per reason code, each otherwise valid so that only that reason applies.
# Those that are JSON objects with a string profile_id name profile "p" in quarantine.
NAMED = {"wrong_type", "invalid_timestamp", "future_timestamp", "too_many_items",
         "field_too_long", "control_characters"}  # fmt: skip
BAD_LINES: dict[str, tuple[str | bytes, str | None]] = {
    "empty_line": ("   ", None),
    "line_too_long": (json.dumps(profile("p", skills=["x" * 5000])), None),
    "invalid_utf8": (
        b'{"profile_id": "p", "crawled_at": "2026-10-01", "location": "Z\xfcrich"}',
        None,
    ),
    "invalid_json": ('{"profile_id": "p", "crawled_at": "2026-10-01"', None),
    "not_an_object": ('["p", "2026-10-01"]', None),
    "missing_field": (json.dumps({"crawled_at": "2026-10-01T00:00:00Z"}), "profile_id"),
    "wrong_type": (json.dumps(profile("p", skills="Java")), "skills"),
    "invalid_timestamp": (json.dumps(profile("p", crawled_at="yesterday")), "crawled_at"),
    "future_timestamp": (json.dumps(profile("p", crawled_at="2099-01-01T00:00:00Z")), "crawled_at"),
    "too_many_items": (json.dumps(profile("p", skills=list("abcde"))), "skills"),
    "field_too_long": (json.dumps(profile("p", industry="y" * 65)), "industry"),
    "control_characters": (json.dumps(profile("p", location="Seattle\u0007")), "location"),
}


# Lines each of which a parametrized test below checks alone.
WRONG_TYPES: list[tuple[str, object]] = [
    ("profile_id", 17),
    ("crawled_at", 1759320000),
    ("location", ["Seattle"]),
    ("industry", {"name": "Software"}),
    ("positions", {"title": "Engineer"}),
    ("positions", ["Engineer"]),
    ("positions", [{"title": 3}]),
    ("positions", [{"title": "Engineer", "end": False}]),
    ("skills", ["Java", 1]),
    ("skills", [["Java"]]),
]
CONTROL_CHARACTERS = [
    (json.dumps(profile("p", skills=["Java\u0085"]), ensure_ascii=False), "skills"),
    (json.dumps(profile("p", positions=[{"title": "Chef\nde cuisine"}])), "positions"),
    (json.dumps(profile("p", industry="Software\u007f")), "industry"),
]
TRAILING_CONTENT = [
    '{"profile_id": "p", "crawled_at": "2026-10-01"} garbage',
    '{"profile_id": "p", "crawled_at": "2026-10-01"} // crawled {}',
    '{"profile_id": "p", "crawled_at": "2026-10-01"},{"profile_id": "q"}',
    '{"profile_id": "p", "crawled_at": "2026-10-01"}}',
    '{"profile_id": "p", "crawled_at": "2026-10-01"} ""',
    '{"profile_id": "p", "crawled_at": "2026-10-01"} \\}',
    '[{"profile_id": "p"}] 5',
    # Nested deeper than the regex that decides usual lines (the exact count decides).
    '{"profile_id": "p", "crawled_at": "2026-10-01", "x": ' + "[" * 12 + "]" * 12 + "}]",
    '{"profile_id": "p", "crawled_at": "2026-10-01", "x": ' + "[" * 12 + "]" * 12 + "} {}",
]
Verdicts = dict[str | bytes, Row]


def _lines(spark: SparkSession, values: list[str | bytes]) -> DataFrame:
    """The lines as parse_lines reads them, each with its position (``idx``, a lineage column
    parse_lines keeps)."""
    rows = [(i, v.encode() if isinstance(v, str) else v) for i, v in enumerate(values)]
    frame = spark.createDataFrame(rows, "idx int, value binary")
    return frame.select("idx", F.col("value").cast("string"))


@pytest.fixture(scope="module")
def verdicts(spark: SparkSession) -> Verdicts:
    """parse_lines' row for each line above, by the line: one Spark job for all of them.

    parse_lines decides each line on its own (no grouping, no ordering), so a line parsed
    among others gets the row it gets alone; its index travels as a lineage column.
    """
    lines = list(
        dict.fromkeys(
            [line for line, _ in BAD_LINES.values()]
            + [json.dumps(profile("p", **{field: value})) for field, value in WRONG_TYPES]
            + [line for line, _ in CONTROL_CHARACTERS]
            + TRAILING_CONTENT
        )
    )
    rows = parse_lines(_lines(spark, lines), **LIMITS).collect()
    assert sorted(row.idx for row in rows) == list(range(len(lines)))  # one row per line
    by_index = {row.idx: row for row in rows}
    return {line: by_index[i] for i, line in enumerate(lines)}


def test_every_reason_code_has_a_negative_test() -> None:
    assert set(BAD_LINES) == set(REASONS)


@pytest.mark.parametrize("reason", REASONS)
def test_bad_line_is_quarantined_with_its_reason(verdicts: Verdicts, reason: str) -> None:
    line, detail = BAD_LINES[reason]
    row = verdicts[line]
    assert (row.reason, row.reason_detail) == (reason, detail)
    raw = line if isinstance(line, bytes) else line.encode()
    assert row.raw_bytes == len(raw)
    assert row.raw_text == raw.decode("utf-8", "replace")[:40]
    assert row.profile_id == ("p" if reason in NAMED else None)


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES)
def test_wrong_type_at_every_field(verdicts: Verdicts, field: str, value: object) -> None:
    row = verdicts[json.dumps(profile("p", **{field: value}))]
    assert (row.reason, row.reason_detail) == ("wrong_type", field)
    assert row.profile_id == (None if field == "profile_id" else "p")


def test_valid_lines_arrive_unchanged(spark: SparkSession) -> None:
    record = profile(
        "p-1",
        crawled_at="2026-10-01T12:00:00+02:00",
        positions=[
            {
                "title": " Senior  Engineer ",
                "company": None,
                "start": "2019-03",
                "end": None,
                "team": {"size": 4},
            }
        ],  # fmt: skip
        skills=["Java", "Ünïcode"],
        extra_field=[1, 2],
    )
    minimal = {"profile_id": "p-2", "crawled_at": "2026-10-02T00:00:00Z"}
    with_bom = "\ufeff" + json.dumps(profile("p-3"))
    rows = parse_lines(_lines(spark, [json.dumps(record), json.dumps(minimal), with_bom]), **LIMITS)
    got = {r.profile_id: r for r in rows.collect()}
    assert all(r.reason is None for r in got.values())
    p1 = got["p-1"]
    assert str(p1.crawled_at) == "2026-10-01 10:00:00"  # UTC
    assert p1.positions == [
        Row(title=" Senior  Engineer ", company=None, start="2019-03", end=None)
    ]
    assert p1.skills == ["Java", "Ünïcode"]
    assert (p1.location, p1.industry) == ("Greater Seattle Area", "Computer Software")
    assert (got["p-2"].positions, got["p-2"].skills, got["p-2"].location) == (None, None, None)
    assert got["p-3"].skills == ["Java", "SQL"]


def test_a_byte_order_mark_alone_is_an_empty_line(spark: SparkSession) -> None:
    rows = parse_lines(_lines(spark, ["\ufeff", "\ufeff  "]), **LIMITS).collect()
    assert [r.reason for r in rows] == ["empty_line", "empty_line"]


def test_line_numbers_are_exact_across_splits_and_files(
    spark: SparkSession, tmp_path: Path
) -> None:
    plain = write_crawl(tmp_path / "a.jsonl", [json.dumps(profile(f"a{i}")) for i in range(300)])
    packed = write_crawl(tmp_path / "b.jsonl.gz", [json.dumps(profile(f"b{i}")) for i in range(40)])
    spark.conf.set("spark.sql.files.maxPartitionBytes", "4096")  # split a.jsonl into many blocks
    try:
        lines = number_lines(read_lines(spark, {plain.as_uri(): "a", packed.as_uri(): "b"}))
        got = {r.line_number: json.loads(r.value)["profile_id"] for r in lines.collect()
               if r.source_file == "a"}  # fmt: skip
        gz = lines.where(F.col("source_file") == "b").collect()
        blocks = read_lines(spark, {plain.as_uri(): "a"}).select("block_start").distinct().count()
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert blocks > 3
    assert got == {i + 1: f"a{i}" for i in range(300)}
    assert sorted((r.line_number, json.loads(r.value)["profile_id"]) for r in gz) == [
        (i + 1, f"b{i}") for i in range(40)
    ]


def test_ingest_counts_add_up_and_rerun_is_a_noop(pipeline: Pipeline, tmp_path: Path) -> None:
    crawl = tmp_path / "crawl"
    good = [profile(f"p{i}") for i in range(5)]
    write_crawl(crawl / "one.jsonl", [*good[:3], "not json", ""])
    write_crawl(crawl / "two.jsonl.gz", [*good[3:], json.dumps(profile("p9", skills="x"))])
    assert pipeline.run(["ingest"], "--input", str(crawl)) == 0

    raw = pipeline.table("profiles_raw")
    quarantine = pipeline.table("quarantine")
    assert sorted(r.profile_id for r in raw.collect()) == ["p0", "p1", "p2", "p3", "p4"]
    assert sorted(
        (Path(r.source_file).name, r.line_number, r.reason, r.profile_id)
        for r in quarantine.collect()
    ) == [
        ("one.jsonl", 4, "invalid_json", None),
        ("one.jsonl", 5, "empty_line", None),
        ("two.jsonl.gz", 3, "wrong_type", "p9"),
    ]
    files = {Path(r.source_file).name: (r.lines, r.accepted, r.quarantined)
             for r in pipeline.table("ingested_files").collect()}  # fmt: skip
    assert files == {"one.jsonl": (5, 3, 2), "two.jsonl.gz": (3, 2, 1)}
    run = pipeline.table("stage_runs").where("stage = 'ingest'").first()
    assert (run.status, run.rows_in, run.rows_out) == ("succeeded", 8, 5)
    assert run.rows_dropped == {"empty_line": 1, "invalid_json": 1, "wrong_type": 1}

    before = {k: sorted(pipeline.table(k).drop("ingest_run_id").collect())
              for k in ("profiles_raw", "quarantine")}  # fmt: skip
    assert pipeline.run(["ingest"], "--input", str(crawl)) == 0
    after = {k: sorted(pipeline.table(k).drop("ingest_run_id").collect())
             for k in ("profiles_raw", "quarantine")}  # fmt: skip
    assert after == before
    assert pipeline.table("ingested_files").count() == 2


def test_gzip_cut_short_keeps_its_complete_lines(pipeline: Pipeline, tmp_path: Path) -> None:
    # A full flush after the third line makes the stream decodable exactly up to there;
    # cutting two bytes into what follows leaves lines 1-3 complete and line 4 unreadable.
    packer = zlib.compressobj(wbits=31)
    head = packer.compress(b'{"profile_id": "c1", "crawled_at": "2026-10-01"}\nnot json\n')
    head += packer.compress(b'{"profile_id": "c3", "crawled_at": "2026-10-01"}\n')
    head += packer.flush(zlib.Z_FULL_FLUSH)
    tail = packer.compress(json.dumps(profile("c4")).encode() + b"\n") + packer.flush()
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    (crawl / "cut.jsonl.gz").write_bytes(head + tail[:2])
    (crawl / "header.jsonl.gz").write_bytes((head + tail)[:5])  # not even the gzip header
    write_crawl(crawl / "whole.jsonl.gz", [profile("w1"), profile("w2")])
    assert pipeline.run(["ingest"], "--input", str(crawl)) == 0

    raw = pipeline.table("profiles_raw").collect()
    assert sorted((Path(r.source_file).name, r.line_number, r.profile_id) for r in raw) == [
        ("cut.jsonl.gz", 1, "c1"),
        ("cut.jsonl.gz", 3, "c3"),
        ("whole.jsonl.gz", 1, "w1"),
        ("whole.jsonl.gz", 2, "w2"),
    ]
    quarantine = pipeline.table("quarantine").collect()
    assert sorted(
        (Path(r.source_file).name, r.line_number, r.reason, r.raw_bytes, r.raw_text)
        for r in quarantine
    ) == [
        ("cut.jsonl.gz", 2, "invalid_json", 8, "not json"),
        ("cut.jsonl.gz", 4, "truncated_gzip", 0, None),
        ("header.jsonl.gz", 1, "truncated_gzip", 0, None),
    ]
    files = {Path(r.source_file).name: (r.lines, r.accepted, r.quarantined)
             for r in pipeline.table("ingested_files").collect()}  # fmt: skip
    assert files == {
        "cut.jsonl.gz": (4, 2, 2),
        "header.jsonl.gz": (1, 0, 1),
        "whole.jsonl.gz": (2, 2, 0),
    }
    run = pipeline.table("stage_runs").where("stage = 'ingest'").first()
    assert (run.rows_in, run.rows_out) == (7, 4)
    assert run.rows_dropped == {"invalid_json": 1, "truncated_gzip": 2}


def test_gzip_with_a_bad_checksum_or_corrupt_data_is_flagged(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    packed = bytearray(
        write_crawl(crawl / "crc.jsonl.gz", [profile("k1"), profile("k2")]).read_bytes()
    )
    # The trailer's CRC-32: the check fails at the end of the stream, in the reader's first
    # (and, for a small file, only) buffer, so none of its lines come back.
    packed[-8] ^= 0xFF
    (crawl / "crc.jsonl.gz").write_bytes(bytes(packed))
    # A stored (uncompressed) deflate block whose length and its complement disagree.
    header = gzip.compress(b"", mtime=0)[:10]
    (crawl / "body.jsonl.gz").write_bytes(header + b"\x01\x05\x00\x00\x00hello")
    write_crawl(crawl / "whole.jsonl.gz", [profile("w1")])
    assert pipeline.run(["ingest"], "--input", str(crawl)) == 0

    raw = pipeline.table("profiles_raw").collect()
    assert [(Path(r.source_file).name, r.profile_id) for r in raw] == [("whole.jsonl.gz", "w1")]
    quarantine = pipeline.table("quarantine").collect()
    assert sorted((Path(r.source_file).name, r.line_number, r.reason) for r in quarantine) == [
        ("body.jsonl.gz", 1, "corrupt_gzip"),
        ("crc.jsonl.gz", 1, "corrupt_gzip"),
    ]
    files = {Path(r.source_file).name: (r.lines, r.accepted, r.quarantined)
             for r in pipeline.table("ingested_files").collect()}  # fmt: skip
    assert files == {
        "body.jsonl.gz": (1, 0, 1),
        "crc.jsonl.gz": (1, 0, 1),
        "whole.jsonl.gz": (1, 1, 0),
    }


def test_rows_left_by_an_interrupted_ingest_are_replaced(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    crawl = write_crawl(tmp_path / "c.jsonl", [profile("p1"), profile("p2")])
    assert pipeline.run(["ingest"], "--input", str(crawl)) == 0
    # Simulate a crash after profiles_raw was written but before ingested_files was.
    pipeline.spark.sql(f"DELETE FROM {pipeline.database}.ingested_files")
    assert pipeline.run(["ingest"], "--input", str(crawl)) == 0
    assert sorted(r.profile_id for r in pipeline.table("profiles_raw").collect()) == ["p1", "p2"]


def test_missing_input_fails_before_any_table_exists(pipeline: Pipeline, tmp_path: Path) -> None:
    assert pipeline.run(["ingest"], "--input", str(tmp_path / "nowhere")) == 2
    assert not pipeline.spark.catalog.databaseExists(pipeline.database)


@pytest.mark.parametrize(("line", "field"), CONTROL_CHARACTERS)
def test_control_characters_in_every_form(verdicts: Verdicts, line: str, field: str) -> None:
    row = verdicts[line]
    assert (row.reason, row.reason_detail) == ("control_characters", field)


def test_escaped_quotes_do_not_hide_a_long_field(spark: SparkSession) -> None:
    title = ("x" * 30 + '"') * 3  # 93 characters, no run of 65 between raw quotes
    line = json.dumps(profile("p", positions=[{"title": title}]))
    (row,) = parse_lines(_lines(spark, [line]), **LIMITS).collect()
    assert (row.reason, row.reason_detail) == ("field_too_long", "positions")


@pytest.mark.parametrize("line", TRAILING_CONTENT)
def test_anything_after_the_first_value_is_invalid_json(verdicts: Verdicts, line: str) -> None:
    row = verdicts[line]
    assert (row.reason, row.reason_detail) == ("invalid_json", "trailing_content")


def test_brackets_quotes_and_spaces_are_not_trailing_content(spark: SparkSession) -> None:
    skills = ['} {"x": [', "back\\slash\\", 'quote " ]', "\\u00e9 \\"]
    record = profile("p", skills=skills, positions=[{"title": "a}b", "team": [[{}], {"a": []}]}])
    deep = json.dumps(profile("q", skills=skills, x=json.loads("[" * 12 + "{}" + "]" * 12)))
    text = json.dumps(record)
    lines = [text, f"  {text} \t ", f"{text}\r", deep]
    rows = parse_lines(_lines(spark, lines), **LIMITS).collect()
    assert [(r.reason, r.skills) for r in rows] == [(None, skills)] * 4


# Every form try_to_timestamp takes (docs/crawl-format.md lists them), as UTC; None: refused.
TIMESTAMPS = {
    "2026-10-01T12:00:00Z": "2026-10-01 12:00:00",
    "2026-10-01T12:00:00+02:00": "2026-10-01 10:00:00",
    "2026-10-01T12:00:00-0530": "2026-10-01 17:30:00",
    "2026-10-01T12:00:00+02": "2026-10-01 10:00:00",
    "2026-10-01T12:00:00 UTC": "2026-10-01 12:00:00",
    "2026-10-01T12:00:00 Europe/Paris": "2026-10-01 10:00:00",
    "2026-10-01T12:00:00": "2026-10-01 12:00:00",
    "2026-10-01 12:00:00.123456": "2026-10-01 12:00:00.123456",
    "2026-10-01T12:00": "2026-10-01 12:00:00",
    "2026-10-01": "2026-10-01 00:00:00",
    "2026-10": "2026-10-01 00:00:00",
    "2026-1-5": "2026-01-05 00:00:00",
    " 2026-10-01 ": "2026-10-01 00:00:00",
    "10/01/2026 12:00": None,
    "1 Oct 2026": None,
    "2026-10-01T25:61:00Z": None,
    "20261001": None,
    "1759320000": None,
    "2026-10-01t12:00:00z": None,
}


def test_timestamp_forms_are_exactly_the_documented_ones(spark: SparkSession) -> None:
    lines = [json.dumps(profile(f"p{i}", crawled_at=s)) for i, s in enumerate(TIMESTAMPS)]
    rows = parse_lines(_lines(spark, lines), **LIMITS).collect()
    got = {r.profile_id: None if r.reason else str(r.crawled_at) for r in rows}
    assert got == {f"p{i}": utc for i, utc in enumerate(TIMESTAMPS.values())}
    assert {r.reason for r in rows if r.reason} == {"invalid_timestamp"}


def test_a_snapshot_from_the_future_is_quarantined_not_kept(spark: SparkSession) -> None:
    tolerance = {**LIMITS, "not_after": datetime(2026, 10, 2, tzinfo=UTC)}
    stamps = ["2026-10-01T23:59:59Z", "2026-10-02T00:00:00Z", "2026-10-02T00:00:01Z"]
    lines = [json.dumps(profile(f"p{i}", crawled_at=s)) for i, s in enumerate(stamps)]
    rows = parse_lines(_lines(spark, lines), **tolerance).collect()
    assert [r.reason for r in rows] == [None, None, "future_timestamp"]


def test_any_file_name_is_read_once_under_one_spelling(pipeline: Pipeline, tmp_path: Path) -> None:
    crawl = tmp_path / "crawl"
    odd = ["a b%20?.jsonl", "crawl-2026-10-01T12:00:00.jsonl", "br[1]#ü.JSONL"]
    for i, name in enumerate(odd):
        write_crawl(crawl / name, [profile(f"{i}-{n}") for n in range(3)])
    write_crawl(crawl / "deep" / "er" / "x.jsonl.gz", [profile("gz")])
    (crawl / "framing.jsonl").write_bytes(
        b'{"profile_id": "cr",\r"crawled_at": "2026-10-01"}\r\nnot json\n'
        b'{"profile_id": "last", "crawled_at": "2026-10-01"}'  # no final newline
    )
    (crawl / "plain.jsonl.gz").write_bytes(json.dumps(profile("no")).encode() + b"\n")
    write_crawl(crawl / "_part.jsonl", [profile("hidden")])
    write_crawl(crawl / ".x.jsonl", [profile("hidden")])
    (crawl / "loop").symlink_to(crawl)
    (crawl / "again.jsonl").symlink_to(crawl / odd[0])
    (crawl / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    assert pipeline.run(["ingest"], "--input", str(crawl)) == 0

    uri = f"file:{crawl.resolve()}/"
    files = {r.source_file.removeprefix(uri): (r.lines, r.accepted, r.quarantined)
             for r in pipeline.table("ingested_files").collect()}  # fmt: skip
    assert files == {
        **dict.fromkeys(odd, (3, 3, 0)),
        "deep/er/x.jsonl.gz": (1, 1, 0),
        "framing.jsonl": (3, 2, 1),
        "plain.jsonl.gz": (1, 0, 1),
    }
    raw = [(r.source_file.removeprefix(uri), r.line_number, r.profile_id)
           for r in pipeline.table("profiles_raw").collect()]  # fmt: skip
    assert sorted(raw) == sorted(
        [(name, n + 1, f"{i}-{n}") for i, name in enumerate(odd) for n in range(3)]
        + [("deep/er/x.jsonl.gz", 1, "gz"), ("framing.jsonl", 1, "cr")]
        + [("framing.jsonl", 3, "last")]
    )
    rejected = [(r.source_file.removeprefix(uri), r.line_number, r.reason)
                for r in pipeline.table("quarantine").collect()]  # fmt: skip
    assert sorted(rejected) == [
        ("framing.jsonl", 2, "invalid_json"),
        ("plain.jsonl.gz", 1, "not_gzip"),
    ]

    assert pipeline.run(["ingest"], "--input", str(crawl)) == 0  # a rerun adds nothing
    assert pipeline.table("profiles_raw").count() == len(raw)
    write_crawl(crawl / odd[0], [profile("new")])
    os.utime(crawl / odd[0], (1e9, 1e9))
    assert pipeline.run(["ingest"], "--input", str(crawl)) == 0  # a replaced file: its rows go
    mine = pipeline.table("profiles_raw").where(F.col("source_file") == uri + odd[0]).collect()
    assert [r.profile_id for r in mine] == ["new"]
    assert pipeline.table("profiles_raw").count() == len(raw) - 2


def test_hidden_files_alone_are_refused_before_spark(pipeline: Pipeline, tmp_path: Path) -> None:
    write_crawl(tmp_path / "crawl" / "_part.jsonl", [profile("p")])
    assert pipeline.run(["ingest"], "--input", str(tmp_path / "crawl")) == 2
    assert not pipeline.spark.catalog.databaseExists(pipeline.database)


def test_profile_ids_are_kept_exactly_as_written(spark: SparkSession) -> None:
    ids = ["p1", "P1", " p1", "p1 "]
    lines = [json.dumps(profile(pid)) for pid in ids]
    lineage = {"source_file": F.lit("f"), "line_number": F.lit(1)}
    parsed = parse_lines(_lines(spark, lines), **LIMITS).withColumns(lineage)
    assert sorted(r.profile_id for r in deduplicate_profiles(parsed).collect()) == sorted(ids)
