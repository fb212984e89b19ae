"""prepare: profiles_raw -> profiles (merged), vocabularies, and the trainer's Parquet shards.

    ./spark-submit.sh prepare [--workdir DIR] [--conf key=value ...]

    ./spark-submit.sh prepare --strict   # fail when the alias map loses too many profiles

Deduplicates snapshots (latest crawled_at wins), cleans text, assigns the salted-hash
split and merges the result into `profiles` (a profile's row changes only when its
content does). Warns (fails with --strict) when the locations and industries that match no
alias cost more than prepare.max_unrecognized_share of the profiles that the other filter
keeps. Then filters to the configured cities x industries, builds the vocabularies from the
training split, records those values and the titles and skills of the profiles that the
vocabularies leave without a title or skill in `unrecognized_values`, and writes
<shards_dir>/<run_id>/{train,validation,test,job_vocab,skill_vocab}/*.parquet plus
<shards_dir>/manifest.json, replaced atomically. When nothing it reads changed since the
current shard set was written (the tables' versions, the settings, the alias map and the
code, as its manifest records them), it writes nothing and the set stands.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from jobs._cli import (
    Stage,
    StageContext,
    StageError,
    StageResult,
    inputs_fingerprint,
    require_table,
    run_stages,
)
from skillrank.config import SPLITS, Config, load_aliases
from skillrank.prepare import (
    FILTER_REASONS,
    UNUSABLE_REASONS,
    alias_matchers,
    assign_splits,
    build_vocabulary,
    clean_profiles,
    deduplicate_profiles,
    encode_profiles,
    filter_profiles,
    filter_reasons,
    row_changes,
    unrecognized_values,
    unusable_items,
)
from skillrank.session import local_path, resolve_path
from skillrank.shards import SHARD_COLUMNS, SHARD_FILE_SCHEMA, Manifest, ShardFile
from skillrank.tables import SPECS, conform, declare_tables, table_version

SHARD_SETS_KEPT = 2  # the current set and the one before, for a trainer still reading it
SHOWN_UNRECOGNIZED = 5  # values per field named in the summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail (before writing shards) when locations and industries that match no alias"
        " cost more than prepare.max_unrecognized_share of the eligible profiles",
    )


def _merge_profiles(ctx: StageContext, source: DataFrame) -> None:
    """Apply to `profiles` what changed: insert new, update changed, delete vanished profiles.
    Only files holding a changed row are rewritten, and the same input commits nothing."""
    table = DeltaTable.forName(ctx.spark, ctx.table("profiles"))
    changes = row_changes(conform(source, "profiles"), table.toDF(), "profile_id")
    if changes.isEmpty():
        return
    columns: dict[str, str | Column] = {c: f"s.`{c}`" for c in table.toDF().columns}
    (
        table.alias("t")
        .merge(changes.alias("s"), "t.profile_id = s.profile_id")
        .whenMatchedDelete(condition="s.vanished")
        .whenMatchedUpdate(set=columns)
        .whenNotMatchedInsert(values=columns)
        .execute()
    )


def _write_shards(
    encoded: DataFrame, split: str, rows: int, rows_per_shard: int, path: str
) -> None:
    shards = max(1, math.ceil(rows / rows_per_shard))
    (
        encoded.where(F.col("split") == split)
        .select([F.col(f.name).cast(f.dataType) for f in from_arrow_schema(SHARD_FILE_SCHEMA)])
        .repartitionByRange(shards, "profile_id")
        .sortWithinPartitions("profile_id")
        .write.mode("overwrite")
        .parquet(path)
    )


def _shard_listing(directory: Path, base: Path) -> list[ShardFile]:
    """The Parquet files Spark wrote into `directory` that hold rows, each with its rows (read
    from its footer: no Spark job), named relative to `base`, in name order. Like Spark, it
    skips names that start with "_" or "." (_SUCCESS, the .crc checksums)."""
    files = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith((".", "_")))
    listing = [ShardFile(str(f.relative_to(base)), pq.read_metadata(f).num_rows) for f in files]
    return [f for f in listing if f.rows]


def _local_dir(uri: str) -> Path:
    local = local_path(uri)
    if local is None:
        raise StageError(f"shards_dir must be a local path for now, got {uri}")
    return local


def _inputs_fingerprint(ctx: StageContext, aliases: dict[str, Any]) -> str:
    """A digest of what a shard set depends on besides the tables it reads: prepare's
    settings and --strict, the alias map, and the code (``inputs_fingerprint``)."""
    return inputs_fingerprint(ctx.config.to_dict()["prepare"], ctx.args.strict, aliases)


def _standing_set(ctx: StageContext, root: Path, fingerprint: str) -> Manifest | None:
    """The current shard set when a run now would write the same one: written from the
    versions the tables are at now (nothing committed to them since), with the same
    settings, alias map and code, and its files all there. None otherwise."""
    try:
        manifest = Manifest.read(root / "manifest.json")
    except ValueError:  # none yet, or one this version does not read
        return None
    if manifest.inputs_fingerprint != fingerprint:
        return None
    now = {key: table_version(ctx.spark, ctx.table(key)) for key in manifest.delta_versions}
    files = [p for paths in manifest.shards.values() for p in paths] + [
        p for kind in ("job", "skill") for p in manifest.vocabulary_files(kind)
    ]
    if now != manifest.delta_versions or not all(p.is_file() for p in files):
        return None
    return manifest


def _read_version(ctx: StageContext, key: str, version: int) -> DataFrame:
    return ctx.spark.sql(f"SELECT * FROM {ctx.table(key)} VERSION AS OF {version}")


def run(ctx: StageContext) -> StageResult:
    spark, config, params = ctx.spark, ctx.config, ctx.config.prepare
    declare_tables(
        spark,
        config,
        ["profiles_raw", "profiles", "job_vocab", "skill_vocab", "unrecognized_values"],
    )
    raw_version = table_version(spark, ctx.table("profiles_raw"))
    aliases = load_aliases(config)
    shards_root = resolve_path(ctx.workdir, config.catalog.shards_dir)
    local_root = _local_dir(shards_root)
    fingerprint = _inputs_fingerprint(ctx, aliases)
    standing = _standing_set(ctx, local_root, fingerprint)
    if standing is not None:
        return StageResult(
            0,
            0,
            input_versions={"profiles_raw": raw_version},
            summary=[
                f"nothing changed since {standing.prepare_run_id} (profiles_raw at version"
                f" {raw_version}, the same settings, alias map and code): its shards stand"
                f" -> {local_root / 'manifest.json'}"
            ],
        )
    raw = _read_version(ctx, "profiles_raw", raw_version)
    raw_rows = raw.count()
    if raw_rows == 0:
        raise StageError("profiles_raw is empty: run ingest first")

    places, industries = alias_matchers(aliases)
    with ctx.step("deduplicated, cleaned, split and merged into profiles"):
        cleaned = clean_profiles(
            deduplicate_profiles(raw),
            title_aliases=aliases["titles"],
            skill_aliases=aliases["skills"],
            places=places,
            industries=industries,
        )
        cleaned = filter_reasons(
            assign_splits(cleaned, params.split_fractions, params.split_salt),
            params.cities,
            params.industries,
        ).persist(StorageLevel.MEMORY_AND_DISK)
        _merge_profiles(ctx, cleaned)
    profiles_version = table_version(spark, ctx.table("profiles"))
    profiles = _read_version(ctx, "profiles", profiles_version)
    with ctx.step("found the locations and industries that match no alias"):
        counted = cleaned.groupBy("filter_reason").count().collect()
        reasons = {r.filter_reason: r["count"] for r in counted}
        unmatched = unrecognized_values(cleaned, params.cities, params.industries).collect()
        cleaned.unpersist()
    total = sum(reasons.values())
    lost = sum(r.profiles_lost for r in unmatched)
    eligible = reasons.get(None, 0) + lost
    share = lost / eligible if eligible else 0.0
    if share > params.max_unrecognized_share:
        message = (
            f"{lost} of {eligible} profiles that pass the other filter ({share:.1%}, above"
            f" prepare.max_unrecognized_share {params.max_unrecognized_share:g}) have a location"
            f" or industry that matches no alias in {params.aliases_file}: see"
            f" unrecognized_values WHERE prepare_run_id = '{ctx.run_id}'"
        )
        if ctx.args.strict:
            _record_unrecognized(ctx, unmatched)
            raise StageError(message)
        ctx.log.warning(f"warning: {message}")
    kept = filter_profiles(profiles, params.cities, params.industries).persist(
        StorageLevel.MEMORY_AND_DISK
    )

    with ctx.step("built the vocabularies from the training split"):
        train = kept.where(F.col("split") == "train")
        job_vocab = build_vocabulary(
            train, "titles", "job_id", "job_title", params.min_job_profiles, params.max_jobs
        )
        skill_vocab = build_vocabulary(
            train, "skills", "skill_id", "skill_name", params.min_skill_profiles, params.max_skills
        )
        conform(job_vocab, "job_vocab").write.insertInto(ctx.table("job_vocab"), overwrite=True)
        conform(skill_vocab, "skill_vocab").write.insertInto(
            ctx.table("skill_vocab"), overwrite=True
        )
    versions = {
        "profiles_raw": raw_version,
        "profiles": profiles_version,
        "job_vocab": table_version(spark, ctx.table("job_vocab")),
        "skill_vocab": table_version(spark, ctx.table("skill_vocab")),
    }
    job_vocab = _read_version(ctx, "job_vocab", versions["job_vocab"])
    skill_vocab = _read_version(ctx, "skill_vocab", versions["skill_vocab"])

    encoded = encode_profiles(kept, job_vocab, skill_vocab, params.job_weighting).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    tally = {
        (r.split, r.drop_reason): r["count"]
        for r in encoded.groupBy("split", "drop_reason").count().collect()
    }
    with ctx.step("recorded what matched no alias or vocabulary in unrecognized_values"):
        unmatched += unusable_items(kept, encoded).collect()
        _record_unrecognized(ctx, unmatched)
    kept.unpersist()
    usable = encoded.where(F.col("drop_reason").isNull())
    split_rows = {s: tally.get((s, None), 0) for s in SPLITS}
    if split_rows["train"] == 0:
        raise StageError("no usable training profiles after filtering (check cities/industries)")

    # The shard set's directory, as Spark writes it and as it is listed here.
    set_uri, set_dir = f"{shards_root.rstrip('/')}/{ctx.run_id}", local_root / ctx.run_id
    split_files = {}
    with ctx.step(f"wrote shards under {set_uri}"):
        for split in SPLITS:
            path = f"{set_uri}/{split}"
            _write_shards(usable, split, split_rows[split], params.rows_per_shard, path)
            split_files[split] = _shard_listing(set_dir / split, local_root)
        encoded.unpersist()
        for name, vocab, key in (
            ("job_vocab", job_vocab, "job_id"),
            ("skill_vocab", skill_vocab, "skill_id"),
        ):
            vocab.coalesce(1).orderBy(key).write.mode("overwrite").parquet(f"{set_uri}/{name}")

    vocab_files = {
        name: _shard_listing(set_dir / name, local_root) for name in ("job_vocab", "skill_vocab")
    }
    vocab_sizes = {
        "jobs": sum(f.rows for f in vocab_files["job_vocab"]),
        "skills": sum(f.rows for f in vocab_files["skill_vocab"]),
    }
    manifest = Manifest(
        prepare_run_id=ctx.run_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        config_fingerprint=config.fingerprint(),
        split_fractions=params.split_fractions,
        split_salt=params.split_salt,
        job_weighting=params.job_weighting,
        jobs=vocab_sizes["jobs"],
        skills=vocab_sizes["skills"],
        vocab_files=vocab_files,
        split_files=split_files,
        shard_columns=SHARD_COLUMNS,
        delta_versions=versions,
        inputs_fingerprint=fingerprint,
    )
    _publish_manifest(local_root, ctx.run_id, manifest)

    dropped = {
        "superseded_snapshot": raw_rows - total,
        **{r: reasons.get(r, 0) for r in FILTER_REASONS},
        **{r: sum(n for (_, why), n in tally.items() if why == r) for r in UNUSABLE_REASONS},
    }
    return StageResult(
        rows_in=raw_rows,
        rows_out=sum(split_rows.values()),
        rows_dropped=dropped,
        input_versions={"profiles_raw": raw_version},
        output_versions={k: v for k, v in versions.items() if k != "profiles_raw"},
        summary=[
            f"profiles_raw rows {raw_rows} -> profiles {total} -> kept {sum(tally.values())}"
            f" (dropped: {', '.join(f'{k}={v}' for k, v in dropped.items())})",
            *_unrecognized_lines(unmatched, params.aliases_file),
            f"vocabulary: {vocab_sizes['jobs']} jobs, {vocab_sizes['skills']} skills",
            "shards: "
            + ", ".join(f"{s}={split_rows[s]}" for s in SPLITS)
            + f" -> {local_root / 'manifest.json'}",
        ],
    )


def _record_unrecognized(ctx: StageContext, rows: list[Row]) -> None:
    """Append this run's rows of unrecognized_values, in one commit."""
    schema = SPECS["unrecognized_values"].schema
    frame = ctx.spark.createDataFrame([(ctx.run_id, *row) for row in rows], schema)
    frame.write.insertInto(ctx.table("unrecognized_values"))


# What to do about an unrecognised value of each field (summary lines).
_REMEDIES = {
    "location": "a city's names or spellings, or other_places",
    "industry": "industries or other_industries",
    "title": "titles (a spelling of a known title), or lower prepare.min_job_profiles",
    "skill": "skills (a spelling of a known skill), or lower prepare.min_skill_profiles",
}


def _unrecognized_lines(rows: list[Row], aliases_file: str) -> list[str]:
    """Per field: how many values and profiles, the costliest values, and what to extend."""
    lines = []
    for field, remedy in _REMEDIES.items():
        found = sorted(
            (r for r in rows if r.field == field),
            key=lambda r: (-r.profiles_lost, -r.profiles, r.raw_value),
        )
        if not found:
            continue
        shown = "; ".join(
            f"{r.raw_value!r} ({r.profiles_lost} of {r.profiles})"
            for r in found[:SHOWN_UNRECOGNIZED]
        )
        lines.append(
            f"unrecognised {field}s: {len(found)} values, {sum(r.profiles_lost for r in found)}"
            f" profiles lost; costliest: {shown} (extend {aliases_file}: {remedy})"
        )
    return lines


def _publish_manifest(root: Path, run_id: str, manifest: Manifest) -> None:
    """Atomically point manifest.json at the new shard set, then drop sets no longer needed."""
    tmp = root / f".manifest.{run_id}.json"
    tmp.write_text(manifest.to_json())
    os.replace(tmp, root / "manifest.json")
    sets = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("prepare-")),
        key=lambda p: p.name,
    )
    for old in sets[:-SHARD_SETS_KEPT]:
        shutil.rmtree(old)


def check(args: argparse.Namespace, config: Config) -> None:
    require_table(args, config, "profiles_raw", "nothing ingested", "ingest")


STAGE = Stage(name="prepare", add_arguments=add_arguments, run=run, check=check)


def main() -> None:
    raise SystemExit(run_stages([STAGE]))


if __name__ == "__main__":
    main()
