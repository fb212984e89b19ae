"""report: one train run for a reader, as one self-contained HTML page and PNG files.

    ./spark-submit.sh report [--workdir DIR] [--run-id ID] [--conf report.KEY=VALUE]

For the current train run (or --run-id) writes
<workdir>/<catalog.reports_dir>/<run_id>/report.html: first, in words, whether the model
beats each baseline on the headline measures (the run's `evaluation` rows); the run's
metadata (when, on which crawl files and profiles, with which settings); the top skills of
the most common titles and the nearest jobs of a few; then the paper's figures in its order
(loss curves, phi's histogram, named co-clusters, positive associations, t-SNE maps of
job2vec and skill2vec with labels that do not overlap, Table 4 by lift), Fig 8 and the
evaluation chart; the PNG files beside it. The co-cluster of every job and skill it
clustered goes to the Delta table `coclusters` (the run's rows replaced in one commit). The
directory is written beside its final place and swapped in, so a reader never sees half a
report. When the run's evaluation, the settings and the code are those of the report in
place, it stands and nothing is written (docs/tables.md, "How reruns behave").
docs/evaluation.md describes each part; benchmarks/report_check.py checks the page in a
browser.
"""

from __future__ import annotations

import argparse
import shutil
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pyspark.sql import Row

from jobs._cli import Stage, StageContext, StageResult, inputs_fingerprint, run_stages
from jobs._runs import (
    add_run_argument,
    check_trained,
    evaluation_rows,
    load_phi,
    ranking_columns,
    replace_run_rows,
    resolve_run,
    run_manifest,
    small_table,
    standing_rows,
    training_history,
)
from skillrank import report, report_page
from skillrank.config import ReportConfig
from skillrank.shards import Manifest, read_vocabulary
from skillrank.tables import SPECS, declare_tables, table_version

# t-SNE needs a few points to place: a map of fewer is left out.
_MIN_MAP_POINTS = 3
# Skills per segment in Fig 8, and the columns that name a (segment, title) pair.
_SEGMENT_SKILLS = 10
_PAIR = ("segment_type", "segment", "job_title", "profiles")
# Fig 4: co-clusters shown, and titles and skills shown of each.
_COCLUSTERS_SHOWN = 8
_COCLUSTER_MEMBERS_SHOWN = 5
# "What SkillRank says": titles, skills per title, titles with their nearest jobs (half as
# many as skills); crawl files named in the metadata.
_SAYS_TITLES = 8
_SAYS_SKILLS = 10
_SAYS_NEIGHBOURS = 3
_FILES_LISTED = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)


def run(ctx: StageContext) -> StageResult:
    params, spark = ctx.config.report, ctx.spark
    declare_tables(spark, ctx.config, ["coclusters", "evaluation", "run_events"])
    train_run = resolve_run(ctx)
    run_id = train_run.run_id
    manifest = run_manifest(ctx, train_run)
    final = ctx.workdir / ctx.config.catalog.reports_dir / run_id
    out = final.with_name(f".{run_id}.partial")
    # Left by report runs killed before their move (one process per work directory).
    for stale in final.parent.glob(".*.partial"):
        shutil.rmtree(stale)
    fingerprint = _inputs_fingerprint(ctx, run_id)
    standing = standing_rows(ctx, "coclusters", run_id, fingerprint)
    if standing is not None and (final / "report.html").is_file():
        return StageResult(
            rows_in=0,
            rows_out=0,
            summary=[
                f"nothing changed since {standing} reported train run {run_id} (its evaluation,"
                f" settings and code): {final / 'report.html'} stands"
            ],
        )
    job_titles, job_profiles = read_vocabulary(manifest, "job")
    skill_names, _ = read_vocabulary(manifest, "skill")
    out.mkdir(parents=True)
    with ctx.step("read phi"):
        phi_t = load_phi(ctx, train_run)

    history = training_history(ctx, run_id)
    sections: list[report.Figure | report_page.Section] = []
    with ctx.step("Fig 2, 3: losses, phi histogram"):
        sections.append(
            report.loss_figure(
                out,
                [r.epoch for r in history],
                [r.train_loss for r in history],
                [r.validation_loss for r in history],
                train_run.best_epoch,
                train_run.test_loss,
            )
        )
        sections.append(report.phi_histogram_figure(out, phi_t))

    # Vocabulary ids run from the most frequent title (skill) down.
    jobs = min(params.cocluster_jobs, manifest.jobs)
    skills = min(params.cocluster_skills, manifest.skills)
    with ctx.step(f"Fig 4: {params.coclusters} spectral co-clusters of {jobs} x {skills} job2vec"):
        job2vec = torch.softmax(phi_t[:jobs], dim=1)[:, :skills].numpy()
        job_labels, skill_labels = report.cocluster(job2vec, params.coclusters, params.seed)
        shown = report.top_coclusters(
            job2vec, job_labels, skill_labels, job_profiles[:jobs].astype(float),
            _COCLUSTERS_SHOWN, _COCLUSTER_MEMBERS_SHOWN,
        )  # fmt: skip
        clusters = int(max(job_labels.max(), skill_labels.max())) + 1
        sections.append(
            report.cocluster_figure(out, job2vec, shown, job_titles, skill_names, clusters)
        )
    del job2vec
    with ctx.step("Fig 5: positive associations per job and skill"):
        sections.append(report.association_histograms_figure(out, phi_t))

    job_points = min(params.map_points, manifest.jobs)
    skill_points = min(params.map_points, manifest.skills)
    maps = (
        ("fig6_job2vec", "Fig 6: job2vec map (t-SNE)", "job titles", job_titles,
         phi_t[:job_points]),
        ("fig7_skill2vec", "Fig 7: skill2vec map (t-SNE)", "skills", skill_names,
         phi_t[:, :skill_points].T),
    )  # fmt: skip
    for key, title, kind, names, rows in maps:
        if len(rows) < _MIN_MAP_POINTS:
            ctx.log.info(f"  {title}: skipped, only {len(rows)} {kind}")
            continue
        with ctx.step(f"{title} of {len(rows)} {kind}"):
            vectors = torch.softmax(rows.contiguous(), dim=1).numpy()
            coords = report.embed_2d(vectors, params.seed)
            sections.append(
                report.map_figure(out, key, title, coords, names[: len(rows)], params.map_labels)
            )
    # Read once for Table 4 and "What SkillRank says" (when train handed them on, not read).
    ranks = ranking_columns(ctx, "job_skill_rank", run_id)
    background = ranking_columns(ctx, "skill_background", run_id)
    sections.append(_top_pairs(params, ranks, background, job_titles, skill_names))

    if spark.catalog.tableExists(ctx.table("job_skill_rank_by_segment")):
        with ctx.step("Fig 8: one title's SkillRank in two segments"):
            figure = _segment_figure(ctx, out, run_id, job_titles, skill_names)
            if figure is not None:
                sections.append(figure)

    evaluation = evaluation_rows(ctx, run_id)
    scores = report.Scores.of(evaluation)
    if evaluation:
        sections.append(report.evaluation_figure(out, evaluation))
    neighbours = ranking_columns(ctx, "job_neighbors", run_id)
    says = _says(ranks, neighbours, job_titles, skill_names, job_profiles)
    lead = "\n".join(
        [
            report_page.verdict_html(scores, train_run.model),
            "<h2>The run</h2>",
            report_page.metadata_html(_metadata(ctx, train_run, manifest)),
            f"<h2>What SkillRank says: the top {_SAYS_SKILLS} skills of the"
            f" {_SAYS_TITLES} most common job titles</h2>",
            report_page.skillrank_says_html(says),
        ]
    )
    page = report_page.render_html(run_id, lead, sections)
    (out / "report.html").write_text(page, encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)

    memberships = [
        Row(run_id=run_id, kind="job", item_id=i, item_name=job_titles[i], cocluster=int(c))
        for i, c in enumerate(job_labels)
    ] + [
        Row(run_id=run_id, kind="skill", item_id=i, item_name=skill_names[i], cocluster=int(c))
        for i, c in enumerate(skill_labels)
    ]
    name = ctx.table("coclusters")
    with ctx.step(f"wrote {len(memberships)} co-cluster memberships to {name}"):
        frame = spark.createDataFrame(memberships, SPECS["coclusters"].schema)
        version = replace_run_rows(ctx, "coclusters", frame, run_id, fingerprint)
    return StageResult(
        rows_in=manifest.jobs * manifest.skills,
        rows_out=len(memberships),
        output_versions={"coclusters": version},
        summary=[f"report of train run {run_id}: {final / 'report.html'}"],
    )


def _inputs_fingerprint(ctx: StageContext, run_id: str) -> str:
    """A digest of what the report and the co-clusters depend on besides the run's tables,
    which do not change once published: the run, the version of `evaluation` (the page shows
    the run's rows), the report settings and the code."""
    evaluation = table_version(ctx.spark, ctx.table("evaluation"))
    return inputs_fingerprint(ctx.config.to_dict()["report"], run_id, evaluation)


def _top_pairs(
    params: ReportConfig,
    ranks: pa.Table,
    background: pa.Table,
    job_titles: list[str],
    skill_names: list[str],
) -> report_page.Section:
    """Table 4: the pairs with the largest lift (the title's probability of the skill over
    the skill's background probability) among those held by enough training profiles.
    `ranks` and `background`: the run's columns of job_skill_rank and skill_background
    (``ranking_columns``)."""
    floor, count = params.top_pairs_min_support, params.top_pairs
    p0 = np.full(len(skill_names), np.nan)
    p0[background["skill_id"].to_numpy()] = background["probability"].to_numpy()
    ranks = ranks.filter(pc.greater_equal(ranks["support"], floor))
    job, skill, probability, support = (
        ranks[c].to_numpy() for c in ("job_id", "skill_id", "probability", "support")
    )
    lift = probability / p0[skill]
    # Highest lift first; ties by job id, then skill id.
    pairs = [
        report_page.TopPair(
            job_titles[job[i]], skill_names[skill[i]], lift[i], probability[i], int(support[i])
        )
        for i in np.lexsort((skill, job, -lift))[:count]
    ]
    heading = (
        "Table 4: the most specific job-skill pairs: the largest lift (how many times more"
        " likely the title makes the skill than the background does), among the pairs of"
        f" SkillRank held by at least {floor} training profiles"
    )
    return heading, report_page.top_pairs_html(pairs)


def _metadata(ctx: StageContext, run: Row, manifest: Manifest) -> list[tuple[str, str]]:
    """When, on what data and with what settings the run was made."""
    # The run's own stage_runs row, and the ingests that fed its shards.
    stage_runs = small_table(
        ctx, "stage_runs", ["run_id", "stage", "status", "ended_at", "config_fingerprint"]
    ).to_pylist()
    stage = next((r for r in stage_runs if r["run_id"] == run.run_id), None)
    created = datetime.fromisoformat(manifest.created_at)
    ingests = {
        r["run_id"]
        for r in stage_runs
        if r["stage"] == "ingest" and r["status"] == "succeeded" and r["ended_at"] <= created
    }
    ingested = small_table(ctx, "ingested_files", ["ingest_run_id", "source_file", "lines"])
    files = sorted(
        (f for f in ingested.to_pylist() if f["ingest_run_id"] in ingests),
        key=lambda f: f["source_file"],
    )
    names = [Path(unquote(urlparse(f["source_file"]).path)).name for f in files]
    listed = ", ".join(names[:_FILES_LISTED]) + (" ..." if len(names) > _FILES_LISTED else "")
    rows = manifest.rows
    ended = "still running" if run.ended_at is None else f"{run.ended_at:%Y-%m-%d %H:%M:%S} UTC"
    return [
        ("run", f"{run.run_id}: {run.status}, model family {run.model}, on {run.device}"),
        ("trained", f"{run.started_at:%Y-%m-%d %H:%M:%S} UTC to {ended}"),
        (
            "crawl",
            f"{len(files)} file{'' if len(files) == 1 else 's'},"
            f" {sum(f['lines'] for f in files):,} lines: {listed}",
        ),
        (
            "profiles",
            f"{rows['train']:,} training, {rows['validation']:,} validation and"
            f" {rows['test']:,} test profiles (shard set of {manifest.prepare_run_id});"
            f" {manifest.jobs:,} job titles x {manifest.skills:,} skills",
        ),
        (
            "fit",
            f"kept epoch {run.best_epoch} of {run.epochs_run}: validation loss"
            f" {run.validation_loss:.4f}, validation NDCG@10 {run.validation_ndcg:.4f}"
            f" (co-occurrence {run.cooccurrence_validation_ndcg:.4f}), test loss"
            f" {run.test_loss:.4f}; gates: {run.gate}",
        ),
        ("configuration", "fingerprint " + (stage["config_fingerprint"] if stage else "unknown")),
        ("hyperparameters", ", ".join(f"{k}={v}" for k, v in sorted(run.hyperparameters.items()))),
        ("report written", f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"),
    ]


def _says(
    ranks: pa.Table,
    neighbours: pa.Table,
    job_titles: list[str],
    skill_names: list[str],
    profiles: np.ndarray,
) -> list[report_page.TitleSkills]:
    """The most common titles' top skills, and the nearest titles of the first few, from the
    run's columns of job_skill_rank and job_neighbors (``ranking_columns``)."""
    titles = min(_SAYS_TITLES, len(profiles))
    first = _first_ranks(ranks, titles, _SAYS_SKILLS)
    near = _first_ranks(neighbours, _SAYS_NEIGHBOURS, _SAYS_SKILLS // 2)
    return [
        report_page.TitleSkills(
            job_titles[job],
            int(profiles[job]),
            [skill_names[r["skill_id"]] for r in first if r["job_id"] == job],
            [
                (job_titles[r["neighbor_job_id"]], r["similarity"])
                for r in near
                if r["job_id"] == job
            ],
        )
        for job in range(titles)
        if any(r["job_id"] == job for r in first)
    ]


def _first_ranks(table: pa.Table, jobs: int, ranks: int) -> list[dict[str, Any]]:
    """The rows of the first `jobs` job ids and their first `ranks` ranks, by job and rank."""
    mask = pc.and_(pc.less(table["job_id"], jobs), pc.less_equal(table["rank"], ranks))
    return table.filter(mask).sort_by([("job_id", "ascending"), ("rank", "ascending")]).to_pylist()


def _segment_figure(
    ctx: StageContext, out: Path, run_id: str, job_titles: list[str], skill_names: list[str]
) -> report.Figure | None:
    """Fig 8 for the title and segments ``report.segment_pair`` picks; None without two."""
    # The top skills of every (segment, title) pair, and so the pairs themselves.
    top = ranking_columns(ctx, "job_skill_rank_by_segment", run_id)
    top = top.filter(pc.less_equal(top["rank"], _SEGMENT_SKILLS))
    by_pair: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in top.to_pylist():
        row["job_title"] = job_titles[row["job_id"]]
        row["skill_name"] = skill_names[row["skill_id"]]
        by_pair[tuple(row[c] for c in _PAIR)].append(row)
    chosen = report.segment_pair(sorted(by_pair))
    if chosen is None:
        return None
    segment_type, title, *segments = chosen
    rows_of = {pair[:3]: rows for pair, rows in by_pair.items()}  # without the profiles
    panels = [
        (segment, sorted(rows_of[segment_type, segment, title], key=lambda row: row["rank"]))
        for segment in segments
    ]
    return report.segment_figure(out, title, panels)


STAGE = Stage(name="report", add_arguments=add_arguments, run=run, check=check_trained)


def main() -> None:
    raise SystemExit(run_stages([STAGE]))


if __name__ == "__main__":
    main()
