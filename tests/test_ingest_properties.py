"""ingest under generated bad input: it never crashes and every raw line is accounted for.

Crawls mix valid profiles with corrupted lines of every kind (truncated and invalid JSON,
text after the object, wrong types at every field, missing fields, timestamps in the
future, huge fields and lines, invalid UTF-8, raw and escaped control characters, BOMs)
and, at file level, any legal file name, nested directories, hidden files, links (to a
file, and a loop), CRLF line ends, a CR inside a line, no final newline, empty files,
gzip files cut short and .gz files that are not gzip. Spark work per example is expensive,
so each example holds many lines and there are few examples, derandomized so that CI runs
the same ones every time, and a failure is reported as found, without shrinking (each
shrinking step is a Spark job).
"""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from skillrank.ingest import FILE_REASONS, REASONS, parse_lines
from tests.conftest import Pipeline

LIMITS = {
    "max_line_bytes": 8192,
    "max_field_chars": 64,
    "max_positions": 3,
    "max_skills": 4,
    "quarantine_text_chars": 40,
}
PHASES = (Phase.explicit, Phase.generate)
NOT_AFTER = datetime(2026, 6, 1, tzinfo=UTC)  # later than every valid moment below
STRINGS = ("profile_id", "location", "industry")  # crawled_at is checked as a timestamp
POSITION_FIELDS = ("title", "company", "start", "end")

# Text a valid profile may hold: no control characters, no surrogates, within the limit.
text = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=24)
profile_ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=16)
moments = st.datetimes(datetime(2000, 1, 1), datetime(2025, 12, 31)).map(
    lambda d: d.replace(microsecond=0)
)
offsets = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5.5))])
positions = st.lists(
    st.fixed_dictionaries({}, optional=dict.fromkeys(POSITION_FIELDS, st.none() | text)),
    max_size=LIMITS["max_positions"],
)
# JSON values of every type but string and null, for the wrong-type corruptions.
not_strings = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(text, max_size=2),
    st.dictionaries(st.sampled_from(["a", "title"]), text, max_size=2),
)


@dataclass(frozen=True)
class Line:
    """One raw line, what ingest must say of it, and the profile it holds when valid."""

    raw: bytes
    expected: tuple[str, str | None] | None  # (reason, detail); None: accepted
    record: dict[str, Any] | None = None


@st.composite
def valid_records(draw: st.DrawFn) -> dict[str, Any]:
    moment = draw(moments).replace(tzinfo=draw(offsets))
    stamp = moment.isoformat().replace("+00:00", "Z")
    record: dict[str, Any] = {"profile_id": draw(profile_ids), "crawled_at": stamp}
    optional = {
        "location": st.none() | text,
        "industry": st.none() | text,
        "positions": st.none() | positions,
        "skills": st.none() | st.lists(text, max_size=LIMITS["max_skills"]),
        "connections": st.integers(0, 500),  # an unknown field, ignored
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            record[name] = draw(values)
    return record


def _dumps(record: object, ascii_only: bool) -> bytes:
    return json.dumps(record, ensure_ascii=ascii_only).encode()


@st.composite
def lines(draw: st.DrawFn) -> Line:
    """A valid profile line, or a corruption of one with the reason ingest must give."""
    record = draw(valid_records())
    ascii_only = draw(st.booleans())
    kind = draw(
        st.sampled_from(
            [
                "valid",
                "valid",
                "valid",
                "bom",
                "truncated",
                "garbage",
                "trailing",
                "empty",
                "array",
                "missing",
                "wrong_type",
                "timestamp",
                "future",
                "too_many",
                "huge_field",
                "huge_line",
                "invalid_utf8",
                "raw_control",
                "escaped_control",
            ]
        )  # fmt: skip
    )
    line = _dumps(record, ascii_only)
    if kind == "valid":
        return Line(line, None, record)
    if kind == "bom":
        return Line("\ufeff".encode() + line, None, record)
    if kind == "truncated":
        cut = line[: draw(st.integers(1, len(line) - 1))]
        return Line(cut, ("invalid_json" if _is_utf8(cut) else "invalid_utf8", None))
    if kind == "garbage":  # never JSON; no line breaks, which would split it
        junk = b"#" + draw(st.binary(max_size=40)).replace(b"\n", b"").replace(b"\r", b"")
        return Line(junk, ("invalid_json" if _is_utf8(junk) else "invalid_utf8", None))
    if kind == "trailing":
        junk = draw(st.sampled_from([b" // crawled", b",{}", b"}", b' ""', b"\t[1]"]))
        return Line(line + junk, ("invalid_json", "trailing_content"))
    if kind == "empty":
        return Line(b" " * draw(st.integers(0, 3)), ("empty_line", None))
    if kind == "array":
        return Line(_dumps([record], ascii_only), ("not_an_object", None))
    if kind == "missing":
        name = draw(st.sampled_from(["profile_id", "crawled_at"]))
        how = draw(st.sampled_from(["absent", "null", "blank"]))
        if how == "absent":
            del record[name]
        else:
            record[name] = None if how == "null" else " " * draw(st.integers(0, 3))
        return Line(_dumps(record, ascii_only), ("missing_field", name))
    if kind == "wrong_type":
        name = draw(st.sampled_from(["crawled_at", *STRINGS, "positions", "skills"]))
        record[name] = draw(_wrong_values(name))
        return Line(_dumps(record, ascii_only), ("wrong_type", name))
    if kind == "timestamp":
        record["crawled_at"] = draw(st.sampled_from(["yesterday", "2026-13-45", "noon"]))
        return Line(_dumps(record, ascii_only), ("invalid_timestamp", "crawled_at"))
    if kind == "future":
        record["crawled_at"] = f"{draw(st.integers(2090, 2099))}-01-01T00:00:00Z"
        return Line(_dumps(record, ascii_only), ("future_timestamp", "crawled_at"))
    if kind == "too_many":
        name = draw(st.sampled_from(["positions", "skills"]))
        limit = LIMITS[f"max_{name}"]
        record[name] = [{"title": "x"} if name == "positions" else "x"] * (limit + 1)
        return Line(_dumps(record, ascii_only), ("too_many_items", name))
    if kind == "huge_field":
        name = draw(st.sampled_from([*STRINGS, "positions", "skills"]))
        huge = "h" * draw(st.integers(LIMITS["max_field_chars"] + 1, 400))
        record[name] = {"positions": [{"company": huge}], "skills": ["Java", huge]}.get(name, huge)
        return Line(_dumps(record, ascii_only), ("field_too_long", name))
    if kind == "huge_line":
        record["summary"] = "s " * LIMITS["max_line_bytes"]
        return Line(_dumps(record, ascii_only), ("line_too_long", None))
    if kind == "invalid_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"Z\xfcrich"]))
        record["location"] = "@@"
        return Line(_dumps(record, True).replace(b"@@", bad), ("invalid_utf8", None))
    if kind == "raw_control":  # unescaped inside a string: not JSON
        record["industry"] = "@@"
        raw = draw(st.sampled_from([b"\x00", b"\x01", b"\x07", b"\x1b"]))
        return Line(_dumps(record, ascii_only).replace(b"@@", raw), ("invalid_json", None))
    # escaped_control: valid JSON holding a control character
    name = draw(st.sampled_from([*STRINGS, "positions", "skills"]))
    char = draw(st.sampled_from(["\x00", "\x07", "\t", "\n", "\x7f", "\x85"]))
    value = f"a{char}b"
    record[name] = {"positions": [{"title": value}], "skills": [value]}.get(name, value)
    return Line(_dumps(record, ascii_only), ("control_characters", name))


def _wrong_values(name: str) -> st.SearchStrategy[object]:
    if name == "positions":
        return st.one_of(
            not_strings.filter(lambda v: not isinstance(v, list)),
            text,
            st.lists(st.one_of(text, st.integers()), min_size=1, max_size=2),
            st.builds(lambda f, v: [{f: v}], st.sampled_from(POSITION_FIELDS), not_strings),
        )
    if name == "skills":
        return st.one_of(
            not_strings.filter(lambda v: not isinstance(v, list)),
            text,
            st.lists(not_strings, min_size=1, max_size=2),
        )
    return not_strings


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _expected_row(record: dict[str, Any]) -> tuple[object, ...]:
    stamp = datetime.fromisoformat(record["crawled_at"].replace("Z", "+00:00"))
    held = record.get("positions")
    return (
        record["profile_id"],
        int(stamp.timestamp()),
        record.get("location"),
        record.get("industry"),
        None if held is None else [Row(**{f: p.get(f) for f in POSITION_FIELDS}) for p in held],
        record.get("skills"),
    )


def _check_verdicts(got: dict[int, tuple[str | None, str | None]], batch: list[Line]) -> None:
    """Every line has one verdict, (reason, detail) or (None, None), and the expected one."""
    assert sorted(got) == list(range(len(batch)))
    for i, line in enumerate(batch):
        reason, detail = got[i]
        assert reason is None or reason in REASONS, (line.raw, reason)
        assert (reason, detail) == (line.expected or (None, None)), line.raw


def _values(row: Row) -> tuple[object, ...]:
    return (row.profile_id, row.epoch, row.location, row.industry, row.positions, row.skills)


@settings(max_examples=12, deadline=None, derandomize=True, phases=PHASES)
@given(st.lists(lines(), min_size=20, max_size=60))
def test_parse_lines_accounts_for_every_line(spark: SparkSession, batch: list[Line]) -> None:
    values = spark.createDataFrame(
        [(i, line.raw) for i, line in enumerate(batch)], "idx int, value binary"
    ).select("idx", F.col("value").cast("string"))
    parsed = parse_lines(values, NOT_AFTER, **LIMITS)
    parsed = parsed.withColumn("epoch", F.unix_timestamp("crawled_at"))
    rows = parsed.collect()
    got = {r.idx: r for r in rows}
    assert len(rows) == len(batch)
    _check_verdicts({i: (r.reason, r.reason_detail) for i, r in got.items()}, batch)
    for i, line in enumerate(batch):
        if line.record is not None:
            assert _values(got[i]) == _expected_row(line.record), line.raw


# Legal POSIX file names: any character but '/' and NUL (no surrogates: names are UTF-8).
stems = st.text(st.characters(exclude_characters="/\x00", exclude_categories=("Cs",)), max_size=30)
# Directories below the crawl directory, some with names Hadoop cannot parse or would glob.
FOLDERS = ("", "a/", "a/b c/", "ü:[1]%20#?/")


@dataclass(frozen=True)
class CrawlFileCase:
    path: str  # below the crawl directory
    lines: list[Line]
    crlf: bool
    bom: bool
    cut_at: float | None  # gzip only: keep this share of the compressed bytes
    final_newline: bool = True
    cr_inside: bool = False  # a CR (JSON whitespace) right after each line's opening brace
    not_gzip: bool = False  # a .gz name holding plain text: refused, one not_gzip row


@dataclass(frozen=True)
class Crawl:
    files: list[CrawlFileCase]  # what ingest reads
    hidden: list[CrawlFileCase]  # names starting with '.' or '_', at any depth: not read
    link_to: int  # an extra link to files[link_to]: read once, under the real path


@st.composite
def crawls(draw: st.DrawFn) -> Crawl:
    """One file of each kind, every example: the lines, names and places vary, the kinds not."""
    some = st.lists(lines(), min_size=1, max_size=40)
    flag = st.booleans()

    def path(i: int, suffix: str) -> str:
        # The index keeps names apart; the suffix in any case still names a crawl file.
        cased = "".join(c.upper() if draw(flag) else c for c in suffix)
        return f"{draw(st.sampled_from(FOLDERS))}{draw(stems)}~{i}{cased}"

    # (path, lines, crlf, bom, cut_at, ...). Cut files end lines in LF only: a cut between
    # CR and LF would be ambiguous.
    files = [
        CrawlFileCase(path(0, ".jsonl"), [], False, False, None),
        CrawlFileCase(path(1, ".jsonl.gz"), [], False, False, None),
        CrawlFileCase(
            path(2, ".jsonl"), draw(some), False, draw(flag), None, draw(flag), draw(flag)
        ),
        CrawlFileCase(path(3, ".jsonl"), draw(some), True, True, None, draw(flag), draw(flag)),
        CrawlFileCase(path(4, ".jsonl.gz"), draw(some), draw(flag), False, None, draw(flag)),
        CrawlFileCase(path(5, ".jsonl.gz"), draw(some), False, True, draw(st.floats(0.05, 0.99))),
        CrawlFileCase(path(6, ".jsonl.gz"), draw(some), False, False, 0.0),
        CrawlFileCase(path(7, ".jsonl.gz"), draw(some), False, False, None, not_gzip=True),
    ]
    hidden = [
        CrawlFileCase(f"{draw(st.sampled_from(FOLDERS))}{lead}{draw(stems)}.jsonl", draw(some),
                      False, False, None)
        for lead in (".", "_", "_temporary/", ".cache/")
    ]  # fmt: skip
    return Crawl(files, hidden, draw(st.integers(0, len(files) - 1)))


def _file_bytes(case: CrawlFileCase) -> tuple[bytes, int]:
    """The file's bytes and how many of its lines can be read whole (all, unless it is cut)."""
    end = b"\r\n" if case.crlf else b"\n"
    raws = [
        b"{\r" + line.raw[1:] if case.cr_inside and line.raw.startswith(b'{"') else line.raw
        for line in case.lines
    ]
    data = end.join(raws) + (end if raws and case.final_newline else b"")
    if case.bom and case.lines:
        data = "\ufeff".encode() + data
    packed = case.path.lower().endswith(".gz") and not case.not_gzip
    if not packed or not case.lines:
        return data, len(case.lines)  # an empty .gz file is 0 bytes, not a gzip stream
    packed_data = gzip.compress(data, mtime=0)
    if case.cut_at is None:
        return packed_data, len(case.lines)
    packed_data = packed_data[: max(1, int(len(packed_data) * case.cut_at))]
    # What zlib can decode of the cut stream; a partial last line (no LF yet) is lost.
    readable = zlib.decompressobj(wbits=31).decompress(packed_data)
    return packed_data, readable.count(b"\n")


@settings(
    max_examples=2,
    deadline=None,
    derandomize=True,
    phases=PHASES,
    # One pipeline (database, work directory) for every example: only the first creates the
    # tables; each example writes its own crawl directory and checks only its own rows.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(crawls())
def test_ingest_stage_survives_bad_files(pipeline: Pipeline, tmp_path: Path, crawl: Crawl) -> None:
    root = tmp_path / f"crawl-{uuid.uuid4().hex[:8]}"
    complete: dict[str, int] = {}
    for case in [*crawl.files, *crawl.hidden]:
        data, complete[case.path] = _file_bytes(case)
        (root / case.path).parent.mkdir(parents=True, exist_ok=True)
        (root / case.path).write_bytes(data)
    (root / "a").mkdir(exist_ok=True)
    (root / "a" / "loop").symlink_to(root)
    (root / "link.jsonl").symlink_to(root / crawl.files[crawl.link_to].path)
    cases = crawl.files
    cut = {case.path for case in cases if case.cut_at is not None}
    refused = {case.path for case in cases if case.not_gzip and case.lines}
    limits = [arg for k, v in LIMITS.items() for arg in ("--conf", f"ingest.{k}={v}")]
    assert pipeline.run(["ingest"], "--input", str(root), *limits) == 0

    prefix = f"file:{root}/"

    def mine(table: str) -> list[Row]:
        rows = pipeline.table(table).where(F.col("source_file").startswith(prefix))
        if table == "profiles_raw":
            rows = rows.withColumn("epoch", F.unix_timestamp("crawled_at"))
        return rows.withColumn(
            "name", F.expr(f"substring(source_file, {len(prefix) + 1})")
        ).collect()

    quarantine = mine("quarantine")
    assert {r.reason for r in quarantine} <= {*REASONS, *FILE_REASONS}
    file_rows = [(r.name, r.line_number, r.reason) for r in quarantine if r.reason in FILE_REASONS]
    assert sorted(file_rows) == (
        sorted([(name, complete[name] + 1, "truncated_gzip") for name in cut]
               + [(name, 1, "not_gzip") for name in refused])
    )  # fmt: skip
    raw = mine("profiles_raw")
    for case in cases:
        readable = [] if case.path in refused else case.lines[: complete[case.path]]
        got = {r.line_number - 1: (r.reason, r.reason_detail) for r in quarantine
               if r.name == case.path and r.reason in REASONS}  # fmt: skip
        accepted_rows = {r.line_number - 1: r for r in raw if r.name == case.path}
        rows = [r for r in raw if r.name == case.path]  # no line twice: none lost below
        rows += [r for r in quarantine if r.name == case.path and r.reason in REASONS]
        assert len(got) + len(accepted_rows) == len(rows)
        assert not got.keys() & accepted_rows.keys()
        got.update(dict.fromkeys(accepted_rows, (None, None)))
        _check_verdicts(got, readable)
        for i, row in accepted_rows.items():
            assert _values(row) == _expected_row(readable[i].record), readable[i].raw

    # Per file: the complete lines, plus one for the cut; accepted + quarantined = lines.
    # Hidden files, the link and the loop add nothing.
    listed = mine("ingested_files")
    files = {r.name: (r.lines, r.accepted, r.quarantined) for r in listed}
    expected_files = {}
    for case in cases:
        readable = [] if case.path in refused else case.lines[: complete[case.path]]
        accepted = sum(line.expected is None for line in readable)
        lines_read = len(readable) + (case.path in cut | refused)
        expected_files[case.path] = (lines_read, accepted, lines_read - accepted)
    assert files == expected_files

    # Per run: the stage's own counts, for this run only.
    (run_id,) = {r.ingest_run_id for r in listed}
    run = pipeline.table("stage_runs").where(F.col("run_id") == run_id).first()
    assert (run.status, run.rows_in, run.rows_out) == (
        "succeeded",
        sum(v[0] for v in files.values()),
        sum(v[1] for v in files.values()),
    )
    assert sum(run.rows_dropped.values()) == run.rows_in - run.rows_out
    # A rerun finds every file ingested and changes nothing.
    assert pipeline.run(["ingest"], "--input", str(root), *limits) == 0
    assert len(mine("profiles_raw")) == len(raw)
    assert len(mine("quarantine")) == len(quarantine)
