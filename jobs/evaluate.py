"""evaluate: how good a train run's phi is, against baselines and against known truth.

    ./spark-submit.sh evaluate [--workdir DIR] [--run-id ID] [--truth DIR] [--conf KEY=VALUE]

Evaluates the latest succeeded train run (or --run-id) on the test split it was trained
beside, and the baselines of skillrank.evaluate, computed from its training split only and
fed exactly the same test profiles. Against the crawl generator's planted truth
(<workdir>/<catalog.crawl_dir>/truth, or --truth; skipped when absent) and against the ESCO
and O*NET taxonomies shipped in skillrank/taxonomy/. Writes the Delta table `evaluation`
(the run's rows are replaced in one commit, so a rerun is idempotent) and prints the model
against the best baseline on the headline metrics. docs/evaluation.md defines every metric.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pyspark.sql import Row

from jobs._cli import Stage, StageContext, StageError, StageResult, run_stages
from jobs._runs import (
    add_run_argument,
    load_phi,
    read_vocabulary,
    replace_run_rows,
    resolve_run,
    run_manifest,
    test_segments,
)
from skillrank.config import Config, load_aliases
from skillrank.evaluate import (
    EvaluationRow,
    Method,
    baseline_methods,
    count_cooccurrences,
    model_method,
    planted_relevance,
    profile_metrics,
    taxonomy_relevance,
    title_truth_metrics,
)
from skillrank.generate import load_taxonomy
from skillrank.prepare import alias_lookup
from skillrank.shards import iterate_batches
from skillrank.tables import SPECS, declare_tables

# Training profiles per batch while counting co-occurrences (memory: a few MB per batch).
_COUNT_BATCH = 8192
# (metric, k, segment) printed in the closing summary: k None means the evaluate.* cut-off.
_HEADLINES = (
    ("kl", None, "all"),
    ("recall", 20, "all"),
    ("precision", 10, "all"),
    ("ndcg", 10, "all"),
    ("map", 10, "all"),
    ("planted_precision", "title_k", "titles"),
    ("planted_ndcg", "title_k", "titles"),
    ("planted_precision", "title_k", "titles_min_profiles"),
    ("taxonomy_precision", "title_k", "esco_essential"),
)
_LOWER_IS_BETTER = ("kl", "cross_entropy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument(
        "--truth",
        help="planted truth of a generated crawl (default: <workdir>/<catalog.crawl_dir>/truth)",
    )


def check(args: argparse.Namespace, config: Config) -> None:
    if args.truth is not None and not (Path(args.truth) / "titles.parquet").is_file():
        raise StageError(f"--truth {args.truth}: no titles.parquet there (see docs/generator.md)")


def run(ctx: StageContext) -> StageResult:
    params = ctx.config.evaluate
    declare_tables(ctx.spark, ctx.config, ["evaluation"])
    train_run = resolve_run(ctx)
    manifest = run_manifest(ctx, train_run)
    print(f"[evaluate]   train run {train_run.run_id} ({manifest.raw['prepare_run_id']})")
    with ctx.step("read phi"):
        phi_t = load_phi(ctx, train_run)
    with ctx.step("counted training co-occurrences (baselines)"):
        train_batches = iterate_batches(manifest.shards["train"], _COUNT_BATCH, shuffle=False)
        counts = count_cooccurrences(
            (batch for _, batch in train_batches), manifest.jobs, manifest.skills
        )
        methods = [model_method(phi_t), *baseline_methods(counts, params.smoothing)]
    with ctx.step(f"scored {manifest.rows['test']} test profiles with {len(methods)} methods"):
        test_batches = iterate_batches(manifest.shards["test"], params.batch_size, shuffle=False)
        rows = profile_metrics(methods, test_batches, test_segments(ctx, manifest), params.ks)

    job_titles, job_counts = read_vocabulary(manifest, "job")
    skill_names, _ = read_vocabulary(manifest, "skill")
    aliases = load_aliases(ctx.config)
    lookups = alias_lookup(aliases["titles"], True), alias_lookup(aliases["skills"], True)
    truth_dir = Path(ctx.args.truth or ctx.workdir / ctx.config.catalog.crawl_dir / "truth")
    nothing = np.zeros(0, dtype=np.int64)
    if (truth_dir / "titles.parquet").is_file():
        with ctx.step(f"checked SkillRank against the planted truth in {truth_dir}"):
            relevant, generic = planted_relevance(
                job_titles,
                skill_names,
                pq.read_table(truth_dir / "titles.parquet").to_pydict(),
                pq.read_table(truth_dir / "occupation_skills.parquet").to_pydict(),
                *lookups,
            )
            segments = {"titles": relevant}
            if params.title_min_profiles > 0:
                segments[f"titles_min_{params.title_min_profiles}_profiles"] = {
                    j: s for j, s in relevant.items() if job_counts[j] >= params.title_min_profiles
                }
            rows += _title_rows(methods, segments, generic, params.title_k, "planted")
    else:
        print(f"[evaluate]   no planted truth at {truth_dir}: planted_* metrics skipped")
    with ctx.step("checked SkillRank against the ESCO and O*NET taxonomies"):
        taxonomy = taxonomy_relevance(job_titles, skill_names, load_taxonomy(), *lookups)
        # Judged as they come, on any crawl: no skill is set aside as generic.
        rows += _title_rows(methods, taxonomy, nothing, params.title_k, "taxonomy")

    name = ctx.table("evaluation")
    frame = ctx.spark.createDataFrame(
        [Row(run_id=train_run.run_id, **vars(r)) for r in rows], SPECS["evaluation"].schema
    )
    with ctx.step(f"wrote {len(rows)} rows to {name}"):
        version = replace_run_rows(ctx, "evaluation", frame, train_run.run_id)
    return StageResult(
        rows_in=manifest.rows["test"],
        rows_out=len(rows),
        output_versions={"evaluation": version},
        summary=[
            f"evaluated train run {train_run.run_id}:"
            f" SELECT * FROM {name} WHERE run_id = '{train_run.run_id}'",
            *summarize(rows, params.title_k, params.title_min_profiles),
        ],
    )


def _title_rows(
    methods: Sequence[Method],
    segments: dict[str, dict[int, np.ndarray]],
    exclude: np.ndarray,
    k: int,
    prefix: str,
) -> list[EvaluationRow]:
    """Mean per-title precision, recall and NDCG@k of every method, per segment of titles."""
    rows = []
    for segment, relevant in segments.items():
        for method in methods:
            if not relevant:
                continue
            per_title = title_truth_metrics(method, relevant, exclude, k)
            titles = len(per_title["job_id"])
            rows.append(EvaluationRow(method.name, "titles", None, segment, float(titles)))
            for metric in ("precision", "recall", "ndcg"):
                value = float(np.mean(per_title[metric])) if titles else math.nan
                rows.append(EvaluationRow(method.name, f"{prefix}_{metric}", k, segment, value))
    return rows


def summarize(rows: Sequence[EvaluationRow], title_k: int, min_profiles: int) -> list[str]:
    """One line per headline metric: the model's value against the best baseline's."""
    index = {(r.method, r.metric, r.k, r.segment): r.value for r in rows}
    methods = sorted({r.method for r in rows} - {"model"})
    lines = ["model against the best baseline (docs/evaluation.md):"]
    for metric, k, segment in _HEADLINES:
        k = title_k if k == "title_k" else k
        if segment == "titles_min_profiles":
            segment = f"titles_min_{min_profiles}_profiles"
        model = index.get(("model", metric, k, segment))
        scored = [
            (index[m, metric, k, segment], m) for m in methods if (m, metric, k, segment) in index
        ]
        if model is None or not scored:
            continue
        lower = metric in _LOWER_IS_BETTER
        best, best_method = min(scored) if lower else max(scored)
        wins = model < best if lower else model > best
        label = f"{metric}@{k}" if k is not None else metric
        lines.append(
            f"  {label:<22} {segment:<28} model {model:.4f}   best baseline {best_method}"
            f" {best:.4f}   {'model better' if wins else 'baseline better'}"
        )
    return lines


STAGE = Stage(name="evaluate", add_arguments=add_arguments, run=run, check=check)


def main() -> None:
    raise SystemExit(run_stages([STAGE]))


if __name__ == "__main__":
    main()
