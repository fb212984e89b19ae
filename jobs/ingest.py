"""ingest: raw crawl files -> profiles_raw (valid lines) + quarantine (rejected lines).

    ./spark-submit.sh ingest --input PATH [--workdir DIR] [--conf key=value ...]

PATH is a file, a directory (every *.jsonl / *.jsonl.gz below it) or a glob. A file already
ingested (same path, size and modification time) is skipped, so a rerun is a no-op. Rows
left behind by an interrupted run of the same files are removed before they are re-read.
A gzip file cut short (or with corrupt data or checksum) gives the complete lines read before
the damage and one ``truncated_gzip`` (``corrupt_gzip``) quarantine row.
"""

from __future__ import annotations

import argparse
import glob
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path

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
    number_lines,
    parse_lines,
    quarantined_lines,
)
from skillrank.session import hadoop_path, resolve_path
from skillrank.tables import SPECS, conform, declare_tables, table_version

CRAWL_SUFFIXES = (".jsonl", ".jsonl.gz")
TABLES = ["ingested_files", "profiles_raw", "quarantine"]
_NO_CRAWL_FILES = "no crawl files (*.jsonl, *.jsonl.gz) found at {source!r}"


@dataclass(frozen=True)
class CrawlFile:
    path: str
    size: int
    modified_at: datetime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        help="crawl file, directory or glob (.jsonl / .jsonl.gz); default: the generated crawl"
        " in <workdir>/<catalog.crawl_dir>",
    )


def check(args: argparse.Namespace, config: Config) -> None:
    """Fail fast on a missing or empty local input, before Spark starts."""
    if args.input is None or "://" in args.input:
        return
    matches = glob.glob(args.input, recursive=True)
    if not matches:
        raise StageError(f"input {args.input!r} does not exist")
    if not any(_holds_crawl_files(Path(m)) for m in matches):
        raise StageError(_NO_CRAWL_FILES.format(source=args.input))


def _holds_crawl_files(path: Path) -> bool:
    """A file (whatever its name, as list_crawl_files takes it), or a directory with one below."""
    if not path.is_dir():
        return True
    return any(p.name.endswith(CRAWL_SUFFIXES) for p in path.rglob("*") if p.is_file())


def list_crawl_files(spark: SparkSession, pattern: str) -> list[CrawlFile]:
    """Expand a file, directory or glob (any Hadoop URI) into crawl files, sorted by path."""
    path, fs = hadoop_path(spark, pattern)
    found: list[CrawlFile] = []
    for status in fs.globStatus(path) or []:
        if status.isDirectory():
            listing = fs.listFiles(status.getPath(), True)
            while listing.hasNext():
                child = listing.next()
                if child.getPath().getName().endswith(CRAWL_SUFFIXES):
                    found.append(_crawl_file(child))
        else:
            found.append(_crawl_file(status))
    return sorted(found, key=lambda f: f.path)


def _crawl_file(status: object) -> CrawlFile:
    return CrawlFile(
        path=status.getPath().toString(),  # type: ignore[attr-defined]
        size=int(status.getLen()),  # type: ignore[attr-defined]
        modified_at=datetime.fromtimestamp(
            status.getModificationTime() / 1000,
            tz=UTC,  # type: ignore[attr-defined]
        ),
    )


def find_damaged_gzips(spark: SparkSession, files: list[CrawlFile]) -> dict[str, str]:
    """The gzip files the codec cannot read to the end: path -> FILE_REASONS code.

    Each file is decompressed once, streamed through Hadoop's codec for it, the one the
    reader uses: a file that passes here reads without error. ``truncated_gzip``: the stream
    ends early (cut short, or non-gzip bytes after); ``corrupt_gzip``: any other read error
    of the codec (bad compressed data, a checksum mismatch). An empty file is not gzip at all
    and reads as no lines, so it is left out.
    """
    jvm = spark.sparkContext._jvm
    hadoop = jvm.org.apache.hadoop  # type: ignore[union-attr]
    io_error = jvm.java.lang.Class.forName("java.io.IOException")  # type: ignore[union-attr]
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    codecs = hadoop.io.compress.CompressionCodecFactory(hadoop_conf)
    damaged = {}
    for f in files:
        if not f.path.endswith(".gz") or f.size == 0:
            continue
        path, fs = hadoop_path(spark, f.path)
        stream = codecs.getCodec(path).createInputStream(fs.open(path))
        try:
            while stream.skip(1 << 24) > 0:
                pass
        except Py4JJavaError as error:
            if error.java_exception.getClass().getName() == "java.io.EOFException":
                damaged[f.path] = FILE_REASONS[0]
            elif io_error.isInstance(error.java_exception):
                damaged[f.path] = FILE_REASONS[1]
            else:
                raise
        finally:
            stream.close()
    return damaged


def read_lines(spark: SparkSession, paths: list[str], damaged: Collection[str] = ()) -> DataFrame:
    """Raw lines with source_file, block_start and a row id taken right at the scan.

    Files in `damaged` (gzip the codec cannot read to the end) are read up to the point of
    failure: the complete lines before it only.
    """

    def scan(files: list[str], up_to_the_cut: bool) -> DataFrame:
        # ignoreCorruptFiles keeps the lines read before the codec fails, and ends the file.
        reader = spark.read.option("ignoreCorruptFiles", up_to_the_cut)
        return reader.text(files).select(
            "value",
            F.col("_metadata.file_path").alias("source_file"),
            F.col("_metadata.file_block_start").alias("block_start"),
            F.monotonically_increasing_id().alias("row_id"),
        )

    whole = [p for p in paths if p not in damaged]
    cut = [p for p in paths if p in damaged]
    scans = ([scan(whole, False)] if whole else []) + ([scan(cut, True)] if cut else [])
    return reduce(DataFrame.unionByName, scans)


def run(ctx: StageContext) -> StageResult:
    spark, config = ctx.spark, ctx.config
    source = ctx.args.input or resolve_path(ctx.workdir, config.catalog.crawl_dir)
    files = list_crawl_files(spark, source)
    if not files:
        raise StageError(_NO_CRAWL_FILES.format(source=source))
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

    # An interrupted earlier run may have written rows for these files without listing them.
    stale = F.col("source_file").isin([f.path for f in new])
    for key in ("profiles_raw", "quarantine"):
        if spark.table(ctx.table(key)).where(stale).limit(1).count():
            DeltaTable.forName(spark, ctx.table(key)).delete(stale)

    damaged = find_damaged_gzips(spark, new)
    # One parsing pass writes every line to a staging Parquet set; the table writes and
    # counts then read that instead of parsing again.
    staging = resolve_path(ctx.workdir, f"{ctx.config.catalog.staging_dir}/{ctx.run_id}")
    parse_lines(
        number_lines(read_lines(spark, [f.path for f in new], damaged)),
        max_line_bytes=config.ingest.max_line_bytes,
        max_field_chars=config.ingest.max_field_chars,
        max_positions=config.ingest.max_positions,
        max_skills=config.ingest.max_skills,
        quarantine_text_chars=config.ingest.quarantine_text_chars,
    ).withColumn("ingest_run_id", F.lit(ctx.run_id)).write.parquet(staging)
    try:
        parsed = spark.read.parquet(staging)
        if damaged:
            cut = damaged_file_lines(parsed, damaged)
            parsed = parsed.unionByName(
                cut.withColumn("ingest_run_id", F.lit(ctx.run_id)), allowMissingColumns=True
            )
        conform(accepted_profiles(parsed), "profiles_raw").write.insertInto(
            ctx.table("profiles_raw")
        )
        quarantine = quarantined_lines(parsed)
        conform(quarantine, "quarantine").write.insertInto(ctx.table("quarantine"))
        per_file = {
            r.source_file: r
            for r in parsed.groupBy("source_file")
            .agg(
                F.count(F.lit(1)).alias("lines"),
                F.count_if(F.col("reason").isNull()).alias("accepted"),
            )
            .collect()
        }
        by_reason = {r.reason: r["count"] for r in quarantine.groupBy("reason").count().collect()}
    finally:
        _delete_path(spark, staging)

    records = []
    for f in new:
        stats = per_file.get(f.path)
        lines, accepted = (stats.lines, stats.accepted) if stats else (0, 0)
        records.append(
            (f.path, f.size, f.modified_at, ctx.run_id, lines, accepted, lines - accepted)
        )
    listing = spark.createDataFrame(records, SPECS["ingested_files"].schema)
    conform(listing, "ingested_files").write.insertInto(ctx.table("ingested_files"))

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


def _delete_path(spark: SparkSession, uri: str) -> None:
    path, fs = hadoop_path(spark, uri)
    fs.delete(path, True)


STAGE = Stage(name="ingest", add_arguments=add_arguments, run=run, check=check)


def main() -> None:
    raise SystemExit(run_stages([STAGE]))


if __name__ == "__main__":
    main()
