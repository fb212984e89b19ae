"""ingest + prepare together on small crawls: content, idempotent reruns, appended crawls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pyspark.testing import assertDataFrameEqual

from jobs._cli import run_stages
from jobs.all import ALL
from skillrank.tables import table_version
from tests.conftest import LOOPBACK, Pipeline, listening_addresses, profile, write_crawl

SMALL = ("--conf", "prepare.min_job_profiles=1", "--conf", "prepare.min_skill_profiles=1")


def _job(title: str, start: str = "2020-01", end: str | None = None) -> dict[str, Any]:
    return {"title": title, "company": "X", "start": start, "end": end}


def _crawl(n: int) -> list[dict[str, Any]]:
    """n profiles in Seattle/Computer Software, plus one each outside city and industry."""
    records = [
        profile(
            f"p{i:03d}",
            positions=[_job(["Data Scientist", "Nurse"][i % 2])],
            skills=[["Python", "SQL"], ["Triage"]][i % 2],
        )  # fmt: skip
        for i in range(n)
    ]
    records.append(profile("paris", location="Paris, France"))
    records.append(profile("farm", industry="Farming"))
    return records


# The tables a rerun on the same crawl must leave as they are.
_RERUN_TABLES = ("profiles", "job_vocab", "skill_vocab")


def _versions(p: Pipeline) -> dict[str, int]:
    return {t: table_version(p.spark, f"{p.database}.{t}") for t in ("profiles", "job_vocab")}


def _shard_rows(p: Pipeline) -> dict[str, list[dict[str, Any]]]:
    return {
        split: sorted(
            (row for path in files for row in pq.read_table(path).to_pylist()),
            key=lambda r: r["profile_id"],
        )
        for split, files in p.manifest().shards.items()
    }


def test_pipeline_writes_profiles_vocabularies_and_shards_and_reruns_idempotently(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    first = write_crawl(tmp_path / "crawl" / "c1.jsonl.gz", [*_crawl(60), "{broken"])
    assert pipeline.run(["ingest", "prepare"], "--input", str(first.parent), *SMALL) == 0

    profiles = {r.profile_id: r for r in pipeline.table("profiles").collect()}
    assert len(profiles) == 62
    assert (profiles["paris"].city, profiles["farm"].industry) == (None, None)
    assert profiles["p001"].titles == ["nurse"] and profiles["p000"].skills == ["python", "sql"]

    manifest = pipeline.manifest()
    rows = _shard_rows(pipeline)
    split_of = {pid: r.split for pid, r in profiles.items()}
    assert {s: len(v) for s, v in rows.items()} == manifest.rows
    assert sum(len(v) for v in rows.values()) == 60  # paris and farm filtered out
    for split, shard_rows in rows.items():
        assert all(split_of[r["profile_id"]] == split for r in shard_rows)

    jobs = {r.job_title: r.job_id for r in pipeline.table("job_vocab").collect()}
    skills = {r.skill_name: r.skill_id for r in pipeline.table("skill_vocab").collect()}
    assert set(jobs) <= {"data scientist", "nurse"} and set(skills) <= {"python", "sql", "triage"}
    assert manifest.jobs == len(jobs)
    for r in rows["train"]:
        n = int(r["profile_id"][1:])
        assert r["job_ids"] == [jobs[["data scientist", "nurse"][n % 2]]]
        assert r["job_weights"] == [1.0]
        assert r["skill_ids"] == sorted(skills[s] for s in [["python", "sql"], ["triage"]][n % 2])

    run = pipeline.table("stage_runs").where("stage = 'prepare'").first()
    assert run.rows_in == 62 and run.rows_out == 60
    assert run.rows_dropped["outside_cities"] == 1 and run.rows_dropped["outside_industries"] == 1
    assert sum(run.rows_dropped.values()) == 2  # no other reason, no unrecognised value
    assert pipeline.table("unrecognized_values").count() == 0
    assert run.input_versions["profiles_raw"] == manifest.delta_versions["profiles_raw"]

    # The same crawl again: tables and shards unchanged. What a run killed outright left in
    # staging goes at the next start.
    tables = {name: pipeline.table(name).collect() for name in _RERUN_TABLES}
    before = profiles
    stale = pipeline.workdir / "staging" / "ingest-20260101T000000Z-deadbeef"
    stale.mkdir(parents=True)
    (stale / "part-00000.parquet").write_bytes(b"half written")
    foreign = pipeline.workdir / "staging" / "notes.txt"  # not a run's: it stays
    foreign.write_text("kept")
    versions = _versions(pipeline)
    assert pipeline.run(["ingest", "prepare"], "--input", str(first.parent), *SMALL) == 0
    for name, kept in tables.items():
        assertDataFrameEqual(pipeline.table(name), kept, rtol=0.0, atol=0.0)
    # Nothing changed, so prepare committed nothing and the shard set stands.
    assert _versions(pipeline) == versions
    assert pipeline.manifest() == manifest
    assert _shard_rows(pipeline) == rows
    assert list((pipeline.workdir / "staging").iterdir()) == [foreign]
    stood = pipeline.table("stage_runs").where("stage = 'prepare'").orderBy("started_at").collect()
    assert [(r.rows_in, r.rows_out) for r in stood] == [(62, 60), (0, 0)]
    # Another setting writes a new set from the same profiles.
    assert pipeline.run(["prepare"], *SMALL, "--conf", "prepare.rows_per_shard=7") == 0
    assert pipeline.manifest().prepare_run_id != manifest.prepare_run_id
    assert _shard_rows(pipeline) == rows
    assert len(pipeline.manifest().shards["train"]) > len(manifest.shards["train"])

    # A second file in the crawl directory: new snapshots win, older ones are ignored.
    later = "2026-11-01T00:00:00Z"
    earlier = "2026-09-01T00:00:00Z"
    update = [
        profile("p000", later, skills=["Rust"]),  # newer snapshot: wins
        profile("p001", earlier, skills=["Cobol"]),  # older snapshot: ignored
        profile("new1", later),
    ]
    write_crawl(tmp_path / "crawl" / "c2.jsonl", update)
    # And a profile erased from profiles_raw (a person's request): prepare deletes it too.
    pipeline.spark.sql(f"DELETE FROM {pipeline.database}.profiles_raw WHERE profile_id = 'p005'")
    assert pipeline.run(["ingest", "prepare"], "--input", str(first.parent), *SMALL) == 0
    after = {r.profile_id: r for r in pipeline.table("profiles").collect()}

    assert after["p000"].skills == ["rust"]
    assert after["p001"].skills == before["p001"].skills == ["triage"]
    assert set(after) == set(before) - {"p005"} | {"new1"}
    # In a shard before, in none now.
    assert "p005" in {r["profile_id"] for v in rows.values() for r in v}
    assert "p005" not in {r["profile_id"] for v in _shard_rows(pipeline).values() for r in v}
    assert all(after[k].split == before[k].split for k in after.keys() & before.keys())
    changed = [k for k in after.keys() & before.keys() if after[k] != before[k]]
    assert changed == ["p000"]


def _alias_gaps_crawl() -> list[dict[str, Any]]:
    """40 profiles prepare keeps, and some it drops for each reason: "Emerald City, WA" (a
    nickname of Seattle the alias map lacks) and the typo "Computer Sofware" cost profiles, a
    title and a skill held once miss the vocabulary (prepare.min_*_profiles=2)."""
    records = [
        profile(f"k{i:02d}", positions=[_job("Nurse")], skills=["Triage"]) for i in range(40)
    ]
    records.append(profile("zoo", positions=[_job("Zookeeper")], skills=["Triage"]))
    records.append(profile("jug", positions=[_job("Nurse")], skills=["Juggling"]))
    odd = [
        *(("Emerald City, WA", "Computer Software"),) * 3,  # lost: the industry is kept
        ("Emerald City, WA", "Farming"),  # not lost: outside the industries anyway
        *(("Seattle", "Computer Sofware"),) * 2,  # lost: the city is kept
        ("Dallas, Texas", "Computer Sofware"),  # not lost: outside the cities anyway
        ("Paris, France", "Computer Software"),
        (None, "Computer Software"),
        ("Seattle, WA", "Farming"),
        ("Seattle, WA", ""),
    ]
    for i, (location, industry) in enumerate(odd):
        records.append(profile(f"x{i:02d}", location=location, industry=industry))
    return records


# A title and a skill held by one profile miss the vocabulary.
VOCABULARY_OF_2 = ("--conf", "prepare.min_job_profiles=2", "--conf", "prepare.min_skill_profiles=2")


def test_unrecognized_values_add_up_to_the_profiles_lost_and_warn(
    pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crawl = write_crawl(tmp_path / "c.jsonl", _alias_gaps_crawl())
    assert pipeline.run(["ingest", "prepare"], "--input", str(crawl), *VOCABULARY_OF_2) == 0
    run = pipeline.table("stage_runs").where("stage = 'prepare'").first()
    found = pipeline.table("unrecognized_values").where(f"prepare_run_id = '{run.run_id}'")
    assert sorted(tuple(r)[1:] for r in found.collect()) == [
        ("industry", "Computer Sofware", "computer sofware", 3, 2),
        ("location", "Emerald City, WA", "emerald city, wa", 4, 3),
        ("skill", "juggling", "juggling", 1, 1),
        ("title", "zookeeper", "zookeeper", 1, 1),
    ]
    assert run.rows_dropped == {
        "superseded_snapshot": 0,
        "missing_location": 1,
        "unrecognized_location": 4,  # the location rows' profiles
        "outside_cities": 2,  # Paris; Dallas, Texas (a region holding no target city)
        "missing_industry": 1,
        "unrecognized_industry": 2,  # the industry rows' profiles_lost
        "outside_industries": 1,
        "no_known_title": 1,  # the title rows' profiles_lost
        "no_known_skill": 1,  # the skill rows' profiles_lost
    }
    assert (run.rows_in, run.rows_out) == (53, 40)
    assert run.rows_in - run.rows_out == sum(run.rows_dropped.values())
    captured = capsys.readouterr()
    (warning,) = captured.err.strip().splitlines()
    # 3 + 2 lost to the alias map, of the 42 the filter keeps and those 5.
    assert "warning: 5 of 47 profiles that pass the other filter (10.6%, above" in warning
    assert f"prepare_run_id = '{run.run_id}'" in warning
    assert "'Emerald City, WA' (3 of 4)" in captured.out  # the summary names the costliest
    assert "'Computer Sofware' (2 of 3)" in captured.out
    assert (
        "unrecognised titles: 1 values, 1 profiles lost; costliest: 'zookeeper' (1 of 1)"
        in captured.out
    )


def test_strict_fails_before_the_shards_when_aliases_lose_too_many(
    pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crawl = write_crawl(tmp_path / "c.jsonl", _alias_gaps_crawl())
    args = ("--input", str(crawl), "--strict", *VOCABULARY_OF_2)
    assert pipeline.run(["ingest", "prepare"], *args) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "prepare failed: 5 of 47 profiles that pass the other filter (10.6%" in line
    run = pipeline.table("stage_runs").where("stage = 'prepare'").first()
    assert run.status == "failed" and run.error.startswith("5 of 47 profiles")
    assert not (pipeline.workdir / "shards" / "manifest.json").exists()
    found = pipeline.table("unrecognized_values").where(f"prepare_run_id = '{run.run_id}'")
    # What to fix is recorded all the same (the places: the vocabulary was not built).
    assert sorted(r.field for r in found.collect()) == ["industry", "location"]
    # A threshold above the share: the same data passes, without a warning.
    loose = ("--conf", "prepare.max_unrecognized_share=0.2")
    assert pipeline.run(["prepare"], "--strict", *loose, *VOCABULARY_OF_2) == 0
    assert "warning" not in capsys.readouterr().err
    assert pipeline.manifest().rows["train"] > 0


def test_a_local_stage_listens_on_loopback_only(pipeline: Pipeline, tmp_path: Path) -> None:
    # The stages of this process run on its session's local master: the driver's RPC and
    # block manager listen beside it, on 127.0.0.1 (docs/cluster.md, "What listens").
    write_crawl(tmp_path / "c.jsonl", [profile("p1")])
    assert pipeline.run(["ingest"], "--input", str(tmp_path / "c.jsonl")) == 0
    runtime = pipeline.spark.sparkContext._jvm.java.lang.management.ManagementFactory
    pid = int(runtime.getRuntimeMXBean().getName().split("@")[0])
    addresses = listening_addresses(pid)
    assert len(addresses) >= 2, addresses  # the driver's RPC, the block manager
    assert set(addresses) <= LOOPBACK, addresses


def test_failed_stage_exits_1_and_records_why(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pipeline.run(["prepare"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prepare failed: profiles_raw is empty: run ingest first" in err[0]
    run = pipeline.table("stage_runs").first()
    assert (run.stage, run.status, run.error) == (
        "prepare",
        "failed",
        "profiles_raw is empty: run ingest first",
    )
    assert (pipeline.workdir / "logs" / f"{run.run_id}.log").is_file()


def test_a_failing_range_names_the_stage_to_resume_from(
    pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Profiles outside the configured cities only: ingest succeeds, prepare has nothing to
    # train on. `all --from ingest --to train` runs both in one application and stops there.
    outside = [profile(f"x{i}", location="Paris, France") for i in range(5)]
    crawl = write_crawl(tmp_path / "c.jsonl", outside)
    common = ["--workdir", str(pipeline.workdir), "--master", "local[2]"]
    common += ["--conf", f"catalog.database={pipeline.database}", *SMALL]
    code = run_stages(ALL, [*common, "--from", "ingest", "--to", "train", "--input", str(crawl)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "prepare failed: no usable training profiles" in err[0]
    assert err[-1] == (
        "skillrank all: the stages before prepare succeeded: rerun from it with"
        " `all --from prepare`"
    )
    runs = pipeline.table("stage_runs").orderBy("started_at").collect()
    assert [(r.stage, r.status) for r in runs] == [("ingest", "succeeded"), ("prepare", "failed")]


def test_train_stage_learns_from_the_shards_and_resumes(pipeline: Pipeline, tmp_path: Path) -> None:
    crawl = write_crawl(tmp_path / "c.jsonl", _crawl(300))
    assert pipeline.run(["ingest", "prepare"], "--input", str(crawl), *SMALL) == 0
    # The softmax family: the one with checkpoints to resume from.
    fast = ("--conf", "train.model=softmax", "--conf", "train.max_epochs=2")
    fast += ("--conf", "train.batch_size=50", "--conf", "train.learning_rate=1.0")
    assert pipeline.run(["train"], *fast) == 0
    checkpoint = pipeline.workdir / "checkpoints" / "checkpoint.pt"
    assert checkpoint.is_file()
    run = pipeline.table("stage_runs").where("stage = 'train'").first()
    manifest = pipeline.manifest()
    assert run.rows_in == manifest.rows["train"]
    assert run.rows_out == manifest.jobs * manifest.skills

    longer = ("--conf", "train.model=softmax", "--conf", "train.max_epochs=3")
    longer += ("--conf", "train.batch_size=50", "--conf", "train.learning_rate=1.0")
    assert pipeline.run(["train"], "--resume", *longer) == 0
    assert pipeline.table("stage_runs").where("stage = 'train'").count() == 2


def test_train_without_shards_fails_before_spark(pipeline: Pipeline) -> None:
    assert pipeline.run(["train"]) == 2
    assert not pipeline.spark.catalog.databaseExists(pipeline.database)
