"""ingest: raw crawl files -> profiles_raw (valid lines) + quarantine (rejected lines).

    ./spark-submit.sh ingest --input PATH [--workdir DIR] [--conf key=value ...]

PATH is a file, a directory (every *.jsonl / *.jsonl.gz below it, any case, but not names
starting with '.' or '_') or a glob. A file already ingested (same real path, size and
modification time) is skipped, so a rerun is a no-op. Rows left behind by an interrupted run
of the same files are removed before they are re-read. A gzip file cut short (or with corrupt
data or checksum) gives the complete lines read before the damage and one ``truncated_gzip``
(``corrupt_gzip``) quarantine row; a .gz file that is not gzip one ``not_gzip`` row, and is
not read. docs/crawl-format.md is the contract.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path
from urllib.parse import unquote, urlparse

from delta.tables import DeltaTable
from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs._cli import Stage, StageContext, StageError, StageResult, run_stages
from skillrank.config import Config
from skillrank.ingest import (
    FILE_REASONS,
    REASONS,
    accepted_profiles,
    damaged_file_lines,
    line_checks,
    number_lines,
    parse_lines,
    quarantined_lines,
)
from skillrank.session import hadoop_path, local_path, resolve_path
from skillrank.tables import SPECS, conform, declare_tables, table_version

CRAWL_SUFFIXES = (".jsonl", ".jsonl.gz")  # matched case-insensitively
GZIP_MAGIC = b"\x1f\x8b"
TABLES = ["ingested_files", "profiles_raw", "quarantine"]
_NO_CRAWL_FILES = "no crawl files (*.jsonl, *.jsonl.gz) found at {source!r}"


@dataclass(frozen=True)
class CrawlFile:
    path: str  # the one spelling of source_file and ingested_files: file:/real/path, or the URI
    size: int
    modified_at: datetime
    local: bool  # read through a link of a safe name (any file name); else by its URI


@dataclass(frozen=True)
class Listing:
    files: list[CrawlFile]
    skipped: list[str]  # what was found but not read, and why
    exists: bool = True  # the input names something (a path, or a glob that matches)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        help="crawl file, directory or glob (.jsonl / .jsonl.gz); default: the generated crawl"
        " in <workdir>/<catalog.crawl_dir>",
    )


def check(args: argparse.Namespace, config: Config) -> None:
    """Fail fast on a missing or empty local input, before Spark starts."""
    if args.input is None or _remote(args.input):
        return
    listing = list_local_files(args.input)
    if not listing.files:
        raise StageError(_nothing_found(args.input, listing))


def _remote(source: str) -> bool:
    return "://" in source and not source.startswith("file:")


def _is_crawl_name(name: str) -> bool:
    return name.lower().endswith(CRAWL_SUFFIXES)


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _nothing_found(source: str, listing: Listing) -> str:
    if not listing.exists:
        return f"input {source!r} does not exist"
    found = _NO_CRAWL_FILES.format(source=source)
    return f"{found}; {_skipped_line(listing.skipped)}" if listing.skipped else found


def _skipped_line(skipped: list[str]) -> str:
    shown = "; ".join(skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
    return f"not read: {len(skipped)} entries ({shown})"


def list_local_files(source: str) -> Listing:
    """The crawl files of a local file, directory or glob (a file: URI or a plain path).

    A path that exists is taken as it is, any other as a glob. Below a directory (and in a
    glob's matches) every file whose name ends in .jsonl or .jsonl.gz, in any case, is
    read, except entries whose name starts with '.' or '_' (hidden files, and the
    _temporary/_SUCCESS of Hadoop writers): those are listed in `skipped`, not read. A file
    named directly is read whatever its name. Symbolic links are followed, and each real
    file is listed once, by its real path: a link loop ends, two links to one file read it
    once.
    """
    base = unquote(urlparse(source).path) if source.startswith("file:") else source
    named = os.path.lexists(base)
    roots = [base] if named else sorted(glob.glob(base, recursive=True))
    found: dict[str, CrawlFile] = {}
    skipped: list[str] = []
    seen_dirs: set[str] = set()

    def visit(path: str, named: bool) -> None:
        name = os.path.basename(path)
        if not named and _hidden(name):
            if os.path.isdir(path) or _is_crawl_name(name):
                skipped.append(f"{path}: name starts with {name[0]!r}")
            return
        real = os.path.realpath(path)
        if os.path.isdir(real):
            if real in seen_dirs:
                return
            seen_dirs.add(real)
            for entry in sorted(os.listdir(real)):
                visit(os.path.join(path, entry), False)
        elif not os.path.exists(real):
            skipped.append(f"{path}: broken link")
        elif (named or _is_crawl_name(name)) and real not in found:
            stat = os.stat(real)
            modified = datetime.fromtimestamp(stat.st_mtime_ns // 1_000_000 / 1000, tz=UTC)
            found[real] = CrawlFile(f"file:{real}", stat.st_size, modified, local=True)

    for root in roots:
        visit(root, named)
    return Listing(sorted(found.values(), key=lambda f: f.path), skipped, exists=bool(roots))


def list_remote_files(spark: SparkSession, pattern: str) -> Listing:
    """The crawl files of a Hadoop URI (file, directory or glob) of another file system.

    The names are matched as in `list_local_files`, but links are the file system's
    business and a file is read by its URI."""
    path, fs = hadoop_path(spark, pattern)
    found: list[CrawlFile] = []
    skipped: list[str] = []
    for status in fs.globStatus(path) or []:
        if not status.isDirectory():
            found.append(_remote_file(status))
            continue
        listing = fs.listFiles(status.getPath(), True)
        while listing.hasNext():
            child = listing.next()
            relative = child.getPath().toString().removeprefix(status.getPath().toString())
            if any(_hidden(part) for part in relative.split("/")):
                skipped.append(f"{child.getPath().toString()}: hidden or underscore name")
            elif _is_crawl_name(child.getPath().getName()):
                found.append(_remote_file(child))
    return Listing(sorted(found, key=lambda f: f.path), skipped)


def _remote_file(status: object) -> CrawlFile:
    return CrawlFile(
        path=status.getPath().toString(),  # type: ignore[attr-defined]
        size=int(status.getLen()),  # type: ignore[attr-defined]
        modified_at=datetime.fromtimestamp(
            status.getModificationTime() / 1000,  # type: ignore[attr-defined]
            tz=UTC,
        ),
        local=False,
    )


def _is_gzip_named(path: str) -> bool:
    return path.lower().endswith(".gz")


def link_local_files(files: list[CrawlFile], links: Path) -> dict[str, str]:
    """Give each local file a link of a safe name under `links`; source path -> link URI.

    Spark reads files by URI strings that Hadoop parses again, so names holding ':' or glob
    characters fail, and names starting with '_' or '.' are skipped; a link named
    f000001.jsonl[.gz] is read like the file itself (the suffix picks the codec)."""
    links.mkdir(parents=True, exist_ok=True)
    read_from = {}
    for i, f in enumerate(files):
        link = links / f"f{i:06d}{'.jsonl.gz' if _is_gzip_named(f.path) else '.jsonl'}"
        link.symlink_to(f.path.removeprefix("file:"))
        read_from[f.path] = f"file:{link}"
    return read_from


def find_damaged_gzips(spark: SparkSession, read_from: dict[str, str]) -> dict[str, str]:
    """The .gz files that cannot be read to the end: source path -> FILE_REASONS code.

    `read_from`: source path -> the URI it is read from. ``not_gzip``: the file does not
    start with gzip's magic bytes (an empty file, or a one-byte start of them, is left to
    the reader); it is not read. Every other .gz file is decompressed once, streamed
    through Hadoop's codec for it, the one the reader uses: a file that passes here reads
    without error. ``truncated_gzip``: the stream ends early (cut short, or non-gzip bytes
    after); ``corrupt_gzip``: any other read error of the codec (bad compressed data, a
    checksum mismatch).
    """
    jvm = spark.sparkContext._jvm
    hadoop = jvm.org.apache.hadoop  # type: ignore[union-attr]
    io_error = jvm.java.lang.Class.forName("java.io.IOException")  # type: ignore[union-attr]
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    codecs = hadoop.io.compress.CompressionCodecFactory(hadoop_conf)
    damaged = {}
    for source, uri in read_from.items():
        if not _is_gzip_named(source):
            continue
        path, fs = hadoop_path(spark, uri)
        stream = fs.open(path)
        try:
            start = bytes(b for b in (stream.read(), stream.read()) if b >= 0)
        finally:
            stream.close()
        if start != GZIP_MAGIC[: len(start)]:
            damaged[source] = "not_gzip"
            continue
        if not start:
            continue
        stream = codecs.getCodec(path).createInputStream(fs.open(path))
        try:
            while stream.skip(1 << 24) > 0:
                pass
        except Py4JJavaError as error:
            if error.java_exception.getClass().getName() == "java.io.EOFException":
                damaged[source] = "truncated_gzip"
            elif io_error.isInstance(error.java_exception):
                damaged[source] = "corrupt_gzip"
            else:
                raise
        finally:
            stream.close()
    return damaged


def read_lines(
    spark: SparkSession, sources: dict[str, str], cut: Collection[str] = ()
) -> DataFrame:
    """Raw lines with source_file, block_start and a row id taken right at the scan.

    `sources`: the URI Spark reads -> the source_file its lines carry. Lines end at LF
    (a CR before it is dropped; a CR elsewhere is part of the line). Files in `cut` (gzip
    the codec cannot read to the end) are read up to the point of failure: the complete
    lines before it only.
    """
    path_class = spark.sparkContext._jvm.org.apache.hadoop.fs.Path  # type: ignore[union-attr]

    def scanned_as(uri: str) -> str:  # the file's _metadata.file_path: encoded, file:/ local
        return re.sub("^file:///", "file:/", path_class(uri).toUri().toString())

    names = spark.createDataFrame(
        [(scanned_as(uri), source) for uri, source in sources.items()],
        "_file_path string, source_file string",
    )

    def scan(files: list[str], up_to_the_cut: bool) -> DataFrame:
        # ignoreCorruptFiles keeps the lines read before the codec fails, and ends the file.
        reader = spark.read.option("ignoreCorruptFiles", up_to_the_cut).option("lineSep", "\n")
        return reader.text(files).select(
            "value",
            F.col("_metadata.file_path").alias("_file_path"),
            F.col("_metadata.file_block_start").alias("block_start"),
            F.monotonically_increasing_id().alias("row_id"),
        )

    whole = [uri for uri in sources if uri not in cut]
    damaged = [uri for uri in sources if uri in cut]
    scans = ([scan(whole, False)] if whole else []) + ([scan(damaged, True)] if damaged else [])
    lines = reduce(DataFrame.unionByName, scans).join(F.broadcast(names), "_file_path")
    value = F.col("value")
    without_cr = value.cast("binary").substr(F.lit(1), F.octet_length(value) - 1).cast("string")
    return lines.select(
        F.when(value.endswith("\r"), without_cr).otherwise(value).alias("value"),
        "source_file",
        "block_start",
        "row_id",
    )


def run(ctx: StageContext) -> StageResult:
    spark, config = ctx.spark, ctx.config
    source = ctx.args.input or resolve_path(ctx.workdir, config.catalog.crawl_dir)
    listing = list_remote_files(spark, source) if _remote(source) else list_local_files(source)
    if listing.skipped:
        ctx.log.warning(f"{_skipped_line(listing.skipped)}: rename them to read them")
    files = listing.files
    if not files:
        raise StageError(_nothing_found(source, listing))
    declare_tables(spark, config, TABLES)
    listed = spark.createDataFrame(
        [(f.path, f.size, f.modified_at) for f in files],
        "source_file string, file_size long, modified_at timestamp",
    )
    done = spark.table(ctx.table("ingested_files"))
    new_paths = {r.source_file for r in listed.join(done, listed.columns, "left_anti").collect()}
    new = [f for f in files if f.path in new_paths]
    if not new:
        return StageResult(0, 0, summary=[f"nothing new: all {len(files)} files already ingested"])

    # A file replaced since it was read, or one an interrupted earlier run wrote rows for
    # without listing it: its rows go first. One query finds the tables that hold any.
    stale = F.col("source_file").isin([f.path for f in new])
    holding = [
        spark.table(ctx.table(key)).where(stale).select(F.lit(key).alias("key")).limit(1)
        for key in ("profiles_raw", "quarantine")
    ]
    for row in reduce(DataFrame.unionByName, holding).collect():
        DeltaTable.forName(spark, ctx.table(row.key)).delete(stale)

    staging = resolve_path(ctx.workdir, f"{ctx.config.catalog.staging_dir}/{ctx.run_id}")
    try:
        # One input: all its files are local (read through links), or none is.
        read_from = (
            link_local_files(new, _links_dir(staging))
            if new[0].local
            else {f.path: f.path for f in new}
        )
        damaged = find_damaged_gzips(spark, read_from)
        # One parsing pass writes every line to a staging Parquet set; the table writes
        # and counts then read that instead of parsing again.
        readable = {uri: p for p, uri in read_from.items() if damaged.get(p) != "not_gzip"}
        cut = {read_from[p] for p in damaged if damaged[p] != "not_gzip"}
        parse_lines(
            number_lines(read_lines(spark, readable, cut)),
            **line_checks(config.ingest, datetime.now(UTC)),
        ).withColumn("ingest_run_id", F.lit(ctx.run_id)).write.parquet(f"{staging}/lines")
        parsed = spark.read.parquet(f"{staging}/lines")
        if damaged:
            cut_rows = damaged_file_lines(parsed, damaged)
            parsed = parsed.unionByName(
                cut_rows.withColumn("ingest_run_id", F.lit(ctx.run_id)), allowMissingColumns=True
            )
        conform(accepted_profiles(parsed), "profiles_raw").write.insertInto(
            ctx.table("profiles_raw")
        )
        conform(quarantined_lines(parsed), "quarantine").write.insertInto(ctx.table("quarantine"))
        # One pass counts the lines per file and reason (None: accepted).
        counted = parsed.groupBy("source_file", "reason").count().collect()
    finally:
        _delete_path(spark, staging)

    file_lines, file_accepted, by_reason = Counter[str](), Counter[str](), Counter[str]()
    for r in counted:
        file_lines[r.source_file] += r["count"]
        if r.reason is None:
            file_accepted[r.source_file] += r["count"]
        else:
            by_reason[r.reason] += r["count"]
    records = []
    for f in new:
        lines, accepted = file_lines[f.path], file_accepted[f.path]
        records.append(
            (f.path, f.size, f.modified_at, ctx.run_id, lines, accepted, lines - accepted)
        )
    ingested = spark.createDataFrame(records, SPECS["ingested_files"].schema)
    conform(ingested, "ingested_files").write.insertInto(ctx.table("ingested_files"))

    lines = sum(r[4] for r in records)
    accepted = sum(r[5] for r in records)
    quarantined = lines - accepted
    found = [k for k in (*REASONS, *FILE_REASONS) if k in by_reason]
    reasons = ", ".join(f"{k}={by_reason[k]}" for k in found)
    return StageResult(
        rows_in=lines,
        rows_out=accepted,
        rows_dropped={k: int(by_reason[k]) for k in found},
        output_versions={k: table_version(spark, ctx.table(k)) for k in TABLES},
        summary=[
            f"{len(new)} new files ({len(files) - len(new)} already ingested)",
            f"raw lines {lines} = accepted {accepted} + quarantined {quarantined}"
            + (f" ({reasons})" if reasons else ""),
        ],
    )


def _links_dir(staging: str) -> Path:
    local = local_path(staging)
    if local is None:
        raise StageError(f"local crawl files need a local catalog.staging_dir, not {staging!r}")
    return local / "links"


def _delete_path(spark: SparkSession, uri: str) -> None:
    path, fs = hadoop_path(spark, uri)
    fs.delete(path, True)


STAGE = Stage(name="ingest", add_arguments=add_arguments, run=run, check=check)


def main() -> None:
    raise SystemExit(run_stages([STAGE]))


if __name__ == "__main__":
    main()
