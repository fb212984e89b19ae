"""Stage `generate`: write a synthetic crawl with its planted truth (docs/generator.md).

Writes ``DIR/crawl-NNNNN.jsonl.gz`` (gzip JSON Lines), ``DIR/truth/*.parquet`` and
``DIR/stats.json``; DIR defaults to ``<workdir>/<catalog.crawl_dir>``. Shards are generated
in parallel worker processes, each from its own seed stream, into a temporary directory that
replaces DIR at the end. A rerun whose parameters match ``DIR/stats.json`` does nothing.
Generation runs on the driver machine (one process per core of the Spark master's default
parallelism); DIR is a local directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import shutil
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs._cli import Stage, StageContext, StageError, StageResult, run_stages
from skillrank.config import Config, ConfigError, load_aliases
from skillrank.generate import (
    TAXONOMY_DIR,
    CrawlParams,
    ShardStats,
    Truth,
    generate_shard,
    gzip_lines,
    load_taxonomy,
    normalize_label,
    plan_truth,
    shard_ranges,
    truth_tables,
    vocabulary_estimate,
)

GENERATOR = "skillrank.generate"
STATS_FILE = "stats.json"
# Column types of the truth tables that may have no rows (pyarrow infers the others).
_TRUTH_SCHEMAS = {
    "segment_skills": pa.schema(
        [
            ("segment_type", pa.string()),
            ("segment", pa.string()),
            ("occupation_id", pa.string()),
            ("skill_key", pa.string()),
            ("skill_label", pa.string()),
            ("probability", pa.float64()),
        ]
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="where the crawl goes (default: <workdir>/<catalog.crawl_dir>)",
    )


def check(args: argparse.Namespace, config: Config) -> None:
    """Reject an --output the generator cannot write, profiles longer than ingest takes
    (generate's own settings were checked on load; ingest's limit may be lowered on its own),
    or snapshots dated after today."""
    g = config.generate
    if g.max_positions > config.ingest.max_positions:
        raise ConfigError("generate.max_positions must not exceed ingest.max_positions")
    # A third snapshot comes two gaps after the first, which may start at the window's end.
    latest = date.fromisoformat(g.crawl_start) + timedelta(
        days=g.crawl_window_days + 2 * (g.recrawl_gap_days[1] + 1)
    )
    if latest > datetime.now(UTC).date():
        raise ConfigError(
            f"generate.crawl_start {g.crawl_start} dates snapshots up to {latest}, in the future,"
            " which ingest quarantines (future_timestamp): choose an earlier crawl_start"
        )
    if args.output and "://" in args.output and not args.output.startswith("file://"):
        raise ConfigError(f"--output must be a local directory, got {args.output}")


def crawl_params(config: Config) -> CrawlParams:
    """The generator's crawl settings: generate knobs, alias spellings and ingest limits."""
    aliases = load_aliases(config)

    def keyed(section: str) -> dict[str, list[str]]:
        return {normalize_label(k): list(v) for k, v in aliases[section].items()}

    return CrawlParams(
        knobs=config.generate,
        cities={c: list(aliases["cities"][c]["spellings"]) for c in config.prepare.cities},
        city_parts={c: _city_parts(aliases, c) for c in config.prepare.cities},
        industries={i: list(aliases["industries"][i]) for i in config.prepare.industries},
        title_aliases=keyed("titles"),
        skill_aliases=keyed("skills"),
        max_line_bytes=config.ingest.max_line_bytes,
        max_field_chars=config.ingest.max_field_chars,
        max_skills_ingest=config.ingest.max_skills,
    )


def _city_parts(aliases: dict[str, Any], code: str) -> tuple[list[str], list[str], list[str]]:
    """A city's names, its region's spellings and its country's (conf/aliases.yml)."""
    region = aliases["cities"][code]["region"]
    country = region.split("-")[0]
    return (
        list(aliases["cities"][code]["names"]),
        list(aliases["regions"][region]),
        list(aliases["countries"][country]),
    )


def build_truth(config: Config) -> Truth:
    """The planted truth of the configured seed and knobs, from the packaged taxonomy."""
    return plan_truth(load_taxonomy(), config.generate, list(config.prepare.cities))


def _parameters(config: Config, params: CrawlParams) -> dict[str, Any]:
    """Everything the crawl's bytes depend on, as recorded in stats.json."""
    digest = hashlib.sha256()
    for path in sorted(TAXONOMY_DIR.glob("*.csv.gz")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return {
        "generate": dataclasses.asdict(config.generate),
        # What the crawl takes besides the section above: spellings and ingest's limits.
        "crawl": json.loads(
            json.dumps({k: v for k, v in dataclasses.asdict(params).items() if k != "knobs"})
        ),
        "taxonomy_sha256": digest.hexdigest(),
    }


def _output_dir(ctx: StageContext) -> Path:
    chosen = ctx.args.output or str(ctx.workdir / ctx.config.catalog.crawl_dir)
    if "://" in chosen:
        if not chosen.startswith("file://"):
            raise StageError(f"generate writes local files only, got {chosen}")
        chosen = chosen.removeprefix("file://")
    return Path(chosen).resolve()


def _previous_stats(output: Path) -> dict[str, Any] | None:
    """stats.json of an earlier generator run in `output`; StageError if DIR is something else."""
    stats = output / STATS_FILE
    if stats.is_file():
        recorded = json.loads(stats.read_text(encoding="utf-8"))
        if recorded.get("generator") == GENERATOR:
            return recorded
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise StageError(f"{output} exists and is not a generated crawl: refusing to replace it")
    return None


def run(ctx: StageContext) -> StageResult:
    clock = time.monotonic()
    output = _output_dir(ctx)
    params = crawl_params(ctx.config)
    parameters = _parameters(ctx.config, params)
    previous = _previous_stats(output)
    if previous is not None and previous["parameters"] == parameters:
        return StageResult(
            rows_in=0,
            rows_out=0,
            summary=[
                f"{output} already holds this crawl (same parameters and seed): nothing to do"
            ],
        )

    truth = build_truth(ctx.config)
    # +1: a spacing variant doubles one space.
    fields = [*truth.titles, *truth.skills, *truth.companies, *params.knobs.other_locations]
    longest = max(len(text) + 1 for text in [*fields, *params.knobs.other_industries])
    if longest > params.max_field_chars:
        raise StageError(
            f"ingest.max_field_chars ({params.max_field_chars}) is below the longest generated "
            f"field ({longest} characters): valid profiles would be quarantined"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    # Left by a generate run killed before its swap (.tmp) or inside it (.old, the crawl it
    # was replacing); one process per work directory, so no run of now owns them.
    for suffix in ("tmp", "old"):
        for stale in output.parent.glob(f".{output.name}.generate-*.{suffix}"):
            shutil.rmtree(stale)
    staging = output.parent / f".{output.name}.{ctx.run_id}.tmp"
    staging.mkdir()
    try:
        stats, files = _write_shards(ctx, truth, params, staging)
        tables = truth_tables(truth)
        (staging / "truth").mkdir()
        for name, columns in tables.items():
            table = pa.table(columns, schema=_TRUTH_SCHEMAS.get(name))
            pq.write_table(table, staging / "truth" / f"{name}.parquet")
        vocabulary = vocabulary_estimate(
            stats, ctx.config.prepare.min_job_profiles, ctx.config.prepare.min_skill_profiles
        )
        document = {
            "generator": GENERATOR,
            "seed": ctx.config.generate.seed,
            "parameters": parameters,
            "profiles": stats.profiles,
            "profiles_in_scope": stats.profiles_in_scope,
            "snapshots": stats.snapshots,
            "lines": stats.lines,
            "duplicate_lines": stats.duplicate_lines,
            "malformed_lines": sum(stats.malformed.values()),
            "malformed": stats.malformed,
            "positions_per_profile": round(stats.positions / stats.profiles, 4),
            "skills_per_profile": round(stats.skills / stats.profiles, 4),
            "vocabulary_estimate": vocabulary,
            "truth": {name: len(next(iter(cols.values()))) for name, cols in tables.items()},
            "files": files,
        }
        text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (staging / STATS_FILE).write_text(text, encoding="utf-8")
        _replace(output, staging, ctx.run_id)
    finally:
        if staging.exists():
            shutil.rmtree(staging)

    size = sum(f["bytes"] for f in files)
    seconds = time.monotonic() - clock
    return StageResult(
        rows_in=0,
        rows_out=stats.lines,
        summary=[
            f"wrote {stats.profiles} profiles as {stats.lines} lines in {len(files)} files "
            f"({size / 1e6:.1f} MB) to {output}",
            f"{stats.snapshots} snapshots, {stats.duplicate_lines} duplicate lines, "
            f"{sum(stats.malformed.values())} malformed lines "
            f"({', '.join(f'{k} {v}' for k, v in stats.malformed.items())})",
            f"{stats.profiles_in_scope} profiles in the prepare filter's cities and industries; "
            f"vocabulary estimate {vocabulary['titles']} titles, {vocabulary['skills']} skills",
            f"generated in {seconds:.1f}s",
        ],
    )


def _write_shards(
    ctx: StageContext, truth: Truth, params: CrawlParams, staging: Path
) -> tuple[ShardStats, list[dict[str, Any]]]:
    """Generate and write every shard in worker processes; return merged counts and files.

    One process per core Spark may use (its default parallelism): the shards are pure
    Python and go to local files, so worker processes need no Spark Python workers.
    """
    g = ctx.config.generate
    processes = max(1, min(g.shards, ctx.spark.sparkContext.defaultParallelism))
    tasks = [
        (index, first, count, g.seed, g.compress_level, str(staging))
        for index, (first, count) in enumerate(shard_ranges(g.profiles, g.shards))
    ]
    # spawn, not fork: the driver process runs JVM-gateway threads.
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes, initializer=_init_worker, initargs=(truth, params)) as pool:
        results = sorted(pool.imap_unordered(_write_shard, tasks))
    total = ShardStats()
    files = []
    for index, stats, size in results:
        total.merge(stats)
        files.append({"name": _shard_name(index), "lines": stats.lines, "bytes": size})
    return total, files


# Set once per worker process by _init_worker, so the truth is sent once, not per shard.
_WORKER: dict[str, Any] = {}


def _init_worker(truth: Truth, params: CrawlParams) -> None:
    _WORKER["truth"], _WORKER["params"] = truth, params


def _write_shard(task: tuple[int, int, int, int, int, str]) -> tuple[int, ShardStats, int]:
    index, first, count, seed, level, directory = task
    shard = generate_shard(_WORKER["truth"], _WORKER["params"], index, first, count, seed)
    path = Path(directory) / _shard_name(index)
    path.write_bytes(gzip_lines(shard.lines, level))
    return index, shard.stats, path.stat().st_size


def _shard_name(index: int) -> str:
    return f"crawl-{index:05d}.jsonl.gz"


def _replace(output: Path, staging: Path, run_id: str) -> None:
    """Move the finished crawl into place; an earlier generated crawl there is removed."""
    if not output.exists():
        staging.rename(output)
        return
    retired = output.parent / f".{output.name}.{run_id}.old"
    output.rename(retired)
    staging.rename(output)
    shutil.rmtree(retired)


STAGE = Stage(name="generate", add_arguments=add_arguments, run=run, check=check)


def main() -> None:
    raise SystemExit(run_stages([STAGE]))


if __name__ == "__main__":
    main()
