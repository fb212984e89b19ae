"""report: the paper's figures for one train run, as PNG files and one self-contained HTML page.

    ./spark-submit.sh report [--workdir DIR] [--run-id ID] [--conf report.KEY=VALUE]

For the current train run (or --run-id) writes
<workdir>/<catalog.reports_dir>/<run_id>/report.html with every figure embedded, plus the
PNG files beside it: the loss curves (Fig 2), phi's histogram (Fig 3), phi before and after
spectral co-clustering (Fig 4), positive associations per job and per skill (Fig 5), t-SNE
maps of job2vec and skill2vec (Fig 6, 7), the strongest job-skill pairs (Table 4) and the
`evaluation` rows of the run as a chart. The co-cluster of every job and skill it clustered
goes to the Delta table `coclusters` (the run's rows replaced in one commit). The directory
is written beside its final place and swapped in, so a reader never sees half a report.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from pyspark.sql import Row
from pyspark.sql import functions as F

from jobs._cli import Stage, StageContext, StageResult, run_stages
from jobs._runs import (
    add_run_argument,
    check_trained,
    load_phi,
    replace_run_rows,
    resolve_run,
    run_manifest,
)
from skillrank import report
from skillrank.shards import read_vocabulary
from skillrank.tables import SPECS, declare_tables

# t-SNE needs a few points to place: a map of fewer is left out.
_MIN_MAP_POINTS = 3
# Skills per segment in Fig 8.
_SEGMENT_SKILLS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)


def run(ctx: StageContext) -> StageResult:
    params, spark = ctx.config.report, ctx.spark
    declare_tables(spark, ctx.config, ["coclusters", "evaluation", "run_events"])
    train_run = resolve_run(ctx)
    run_id = train_run.run_id
    manifest = run_manifest(ctx, train_run)
    job_titles, _ = read_vocabulary(manifest, "job")
    skill_names, _ = read_vocabulary(manifest, "skill")
    final = ctx.workdir / ctx.config.catalog.reports_dir / run_id
    out = final.with_name(f".{run_id}.partial")
    # Left by report runs killed before their move (one process per work directory).
    for stale in final.parent.glob(".*.partial"):
        shutil.rmtree(stale)
    out.mkdir(parents=True)
    with ctx.step("read phi"):
        phi_t = load_phi(ctx, train_run)

    history = (
        spark.table(ctx.table("training_history"))
        .where(F.col("run_id") == run_id)
        .orderBy("epoch")
        .collect()
    )
    figures = []
    with ctx.step("Fig 2, 3, 5: losses, phi histogram, associations per job and skill"):
        figures.append(
            report.loss_figure(
                out,
                [r.epoch for r in history],
                [r.train_loss for r in history],
                [r.validation_loss for r in history],
                train_run.best_epoch,
                train_run.test_loss,
            )
        )
        figures.append(report.phi_histogram_figure(out, phi_t))
        figures.append(report.association_histograms_figure(out, phi_t))

    # Vocabulary ids run from the most frequent title (skill) down: the first ids are the
    # readable subset the paper shows.
    jobs = min(params.cocluster_jobs, manifest.jobs)
    skills = min(params.cocluster_skills, manifest.skills)
    with ctx.step(f"Fig 4: {params.coclusters} spectral co-clusters of {jobs} x {skills} job2vec"):
        job2vec = torch.softmax(phi_t[:jobs], dim=1)[:, :skills].numpy()
        job_labels, skill_labels = report.cocluster(job2vec, params.coclusters, params.seed)
        figures.append(report.cocluster_figure(out, job2vec, job_labels, skill_labels))
    del job2vec

    job_points = min(params.map_points, manifest.jobs)
    skill_points = min(params.map_points, manifest.skills)
    maps = (
        (
            "fig6_job2vec",
            "Fig 6: job2vec map (t-SNE)",
            "job titles",
            job_titles,
            phi_t[:job_points],
        ),
        (
            "fig7_skill2vec",
            "Fig 7: skill2vec map (t-SNE)",
            "skills",
            skill_names,
            phi_t[:, :skill_points].T,
        ),
    )
    for key, title, kind, names, rows in maps:
        if len(rows) < _MIN_MAP_POINTS:
            ctx.log.info(f"  {title}: skipped, only {len(rows)} {kind}")
            continue
        with ctx.step(f"{title} of {len(rows)} {kind}"):
            vectors = torch.softmax(rows.contiguous(), dim=1).numpy()
            coords = report.embed_2d(vectors, params.seed)
            figures.append(
                report.map_figure(out, key, title, coords, names[: len(rows)], params.map_labels)
            )

    segments = ctx.table("job_skill_rank_by_segment")
    if spark.catalog.tableExists(segments):
        with ctx.step("Fig 8: one title's SkillRank in two segments"):
            figure = _segment_figure(ctx, out, segments, run_id)
            if figure is not None:
                figures.append(figure)

    run_rows = spark.table(ctx.table("evaluation")).where(F.col("run_id") == run_id)
    evaluation = [r.asDict() for r in run_rows.collect()]
    if evaluation:
        figures.append(report.evaluation_figure(out, evaluation))
    top_pairs = [
        r.asDict()
        for r in spark.table(ctx.table("job_skill_rank"))
        .where((F.col("run_id") == run_id) & (F.col("support") >= params.top_pairs_min_support))
        .orderBy(F.desc("weight"), "job_id", "skill_id")
        .limit(params.top_pairs)
        .collect()
    ]
    summary = [
        f"Train run {run_id}: {manifest.jobs} job titles x {manifest.skills} skills,"
        f" {manifest.rows['train']} training profiles;"
        f" best epoch {train_run.best_epoch} of {train_run.epochs_run},"
        f" validation loss {train_run.validation_loss:.4f}, test loss {train_run.test_loss:.4f}.",
        "No evaluation rows for this run: run ./spark-submit.sh evaluate for the chart."
        if not evaluation
        else f"{len(evaluation)} evaluation rows (table {ctx.table('evaluation')}).",
    ]
    page = report.render_html(
        run_id,
        figures,
        [
            (
                "Table 4: the most positively associated job-skill pairs"
                f" (held by at least {params.top_pairs_min_support} training profiles)",
                report.top_pairs_html(top_pairs),
            )
        ],
        summary,
    )
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
        version = replace_run_rows(ctx, "coclusters", frame, run_id)
    return StageResult(
        rows_in=manifest.jobs * manifest.skills,
        rows_out=len(memberships),
        output_versions={"coclusters": version},
        summary=[f"report of train run {run_id}: {final / 'report.html'}"],
    )


def _segment_figure(ctx: StageContext, out: Path, table: str, run_id: str) -> report.Figure | None:
    """Fig 8 for the title and segments ``report.segment_pair`` picks; None without two."""
    rows = ctx.spark.table(table).where(F.col("run_id") == run_id)
    pairs = rows.select("segment_type", "segment", "job_title", "profiles").distinct().collect()
    chosen = report.segment_pair([tuple(r) for r in pairs])
    if chosen is None:
        return None
    segment_type, title, *segments = chosen
    panels = []
    for segment in segments:
        top = (
            rows.where(
                (F.col("segment_type") == segment_type)
                & (F.col("segment") == segment)
                & (F.col("job_title") == title)
                & (F.col("rank") <= _SEGMENT_SKILLS)
            )
            .orderBy("rank")
            .collect()
        )
        panels.append((segment, [r.asDict() for r in top]))
    return report.segment_figure(out, title, panels)


STAGE = Stage(name="report", add_arguments=add_arguments, run=run, check=check_trained)


def main() -> None:
    raise SystemExit(run_stages([STAGE]))


if __name__ == "__main__":
    main()
