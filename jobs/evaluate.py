"""evaluate: how good a train run's phi is, against baselines and against known truth.

    ./spark-submit.sh evaluate [--workdir DIR] [--run-id ID] [--truth DIR] [--conf KEY=VALUE]

Evaluates the current train run (or --run-id) on the test split it was trained
beside, and the baselines of skillrank.evaluate, computed from its training split only and
fed exactly the same test profiles. Against the crawl generator's planted truth
(<workdir>/<catalog.crawl_dir>/truth, or --truth; skipped when absent) and against the ESCO
and O*NET taxonomies shipped in skillrank/taxonomy/. Every mean gets a 95% bootstrap
interval, and the model's difference from each baseline a row of its own with a paired one.
Writes the Delta table `evaluation` (the run's rows are replaced in one commit, so a rerun is
idempotent) and prints the model against the best baseline on the headline metrics, with the
interval of their difference. When the same runs, settings, truth and code gave the table's
latest commit, those rows stand and nothing is written (docs/tables.md, "How reruns
behave"). docs/evaluation.md defines every metric.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import Row

from jobs._cli import (
    Stage,
    StageContext,
    StageError,
    StageResult,
    file_digests,
    inputs_fingerprint,
    run_stages,
)
from jobs._runs import (
    add_run_argument,
    check_trained,
    evaluation_rows,
    hand_off_evaluation,
    load_model,
    ranking_columns,
    replace_run_rows,
    resolve_run,
    run_manifest,
    segments_of_test_profiles,
    sibling_runs,
    standing_rows,
    training_counts,
)
from skillrank.config import Config, EvaluateConfig, load_aliases
from skillrank.evaluate import (
    BASELINES,
    DIFFERENCE,
    Bootstrap,
    EvaluationRow,
    baseline_methods,
    interval_coverage,
    planted_relevance,
    planted_segment_relevance,
    planted_shares,
    profile_metrics,
    segment_rows,
    segment_truth_rows,
    taxonomy_relevance,
    title_buckets,
    title_rows,
)
from skillrank.generate import TAXONOMY_DIR, load_taxonomy
from skillrank.prepare import alias_lookup
from skillrank.rankings import INTERVAL_LEVEL
from skillrank.shards import iterate_batches, read_vocabulary
from skillrank.tables import SPECS, declare_tables

# Training profiles per batch while counting co-occurrences (memory: a few MB per batch).
_COUNT_BATCH = 8192
# The planted truth's files that evaluate reads (docs/generator.md).
_TRUTH_FILES = ("titles.parquet", "occupation_skills.parquet", "segment_skills.parquet")
# The method compared with the baselines: the run's model (its family method's default name).
_MODEL = "model"
# The run's pooled SkillRank, compared with its segment rankings.
_POOLED = "pooled"
# The columns of job_skill_rank that judge the published intervals.
_INTERVAL_COLUMNS = ("job_id", "skill_id", "probability_low", "probability_high")
# The order of the segment rankings' rows: each (segment, job)'s skills by rank.
_SEGMENT_ORDER = ("segment_type", "segment", "job_id", "rank")
# (metric, k, segment) printed in the closing summary: k "title_k" means evaluate.title_k;
# segment "buckets" stands for each bucket of titles by training profiles, in order.
_HEADLINES: tuple[tuple[str, int | Literal["title_k"] | None, str], ...] = (
    ("kl", None, "all"),
    ("recall", 20, "all"),
    ("precision", 10, "all"),
    ("ndcg", 10, "all"),
    ("map", 10, "all"),
    ("planted_precision", "title_k", "titles"),
    ("planted_ndcg", "title_k", "titles"),
    ("planted_precision", "title_k", "buckets"),
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
    check_trained(args, config)


def run(ctx: StageContext) -> StageResult:
    params = ctx.config.evaluate
    declare_tables(ctx.spark, ctx.config, ["evaluation", "run_events"])
    train_run = resolve_run(ctx)
    manifest = run_manifest(ctx, train_run)
    ctx.log.info(f"  train run {train_run.run_id} ({manifest.prepare_run_id})")
    siblings = sibling_runs(ctx, train_run)
    truth_dir = Path(ctx.args.truth or ctx.workdir / ctx.config.catalog.crawl_dir / "truth")
    aliases = load_aliases(ctx.config)
    name = ctx.table("evaluation")
    fingerprint = _inputs_fingerprint(ctx, [train_run, *siblings], truth_dir, aliases)
    standing = standing_rows(ctx, "evaluation", train_run.run_id, fingerprint)
    if standing is not None:
        kept = evaluation_rows(ctx, train_run.run_id)
        hand_off_evaluation(ctx, train_run.run_id, kept)
        return StageResult(
            rows_in=0,
            rows_out=0,
            summary=[
                f"nothing changed since {standing} evaluated train run {train_run.run_id} (the"
                " runs, settings, planted truth, taxonomies and code): its rows stand:"
                f" SELECT * FROM {name} WHERE run_id = '{train_run.run_id}'",
                *summarize([EvaluationRow(**r) for r in kept], params.title_k),
            ],
        )
    with ctx.step(f"read the model and {len(siblings)} other families' runs on its shards"):
        # Each as (its predictions of a profile, the ranking SkillRank publishes).
        models = [load_model(ctx, train_run, _MODEL)]
        models += [load_model(ctx, run, run.model) for run in siblings]
    with ctx.step("counted training co-occurrences (baselines)"):
        counts = training_counts(ctx, manifest, _COUNT_BATCH)
        baselines = baseline_methods(counts, params.smoothing)
    methods = [prediction for prediction, _ in models] + baselines
    title_methods = [ranking for _, ranking in models] + baselines
    names = [m.name for m in methods]
    # Every method is scored; only the run's model is compared with the count baselines.
    pairs = tuple((_MODEL, b) for b in BASELINES if _MODEL in names and b in names)
    bootstrap = Bootstrap(params.bootstrap_samples, params.bootstrap_seed, pairs)
    with ctx.step(
        f"scored {manifest.rows['test']} test profiles with {len(methods)} methods"
        f" ({params.bootstrap_samples} bootstrap resamples)"
    ):
        test_batches = iterate_batches(manifest.shards["test"], params.batch_size, shuffle=False)
        segments_of = segments_of_test_profiles(ctx, manifest)
        rows = profile_metrics(methods, test_batches, segments_of, params.ks, bootstrap)

    job_titles, job_counts = read_vocabulary(manifest, "job")
    skill_names, _ = read_vocabulary(manifest, "skill")
    lookups = alias_lookup(aliases["titles"], True), alias_lookup(aliases["skills"], True)
    nothing = np.zeros(0, dtype=np.int64)
    if (truth_dir / "titles.parquet").is_file():
        with ctx.step(f"checked SkillRank against the planted truth in {truth_dir}"):
            truth_titles = pq.read_table(truth_dir / "titles.parquet").to_pydict()
            truth_skills = pq.read_table(truth_dir / "occupation_skills.parquet").to_pydict()
            relevant, generic = planted_relevance(
                job_titles, skill_names, truth_titles, truth_skills, *lookups
            )
            segments = {
                "titles": np.fromiter(relevant, dtype=np.int64),
                **title_buckets(job_counts, params.title_buckets),
            }
            rows += title_rows(
                title_methods, relevant, generic, params.title_k, "planted", segments, bootstrap
            )
            shares = planted_shares(job_titles, skill_names, truth_titles, truth_skills, *lookups)
            ranks = ranking_columns(ctx, "job_skill_rank", train_run.run_id)
            rows += _coverage_rows(ranks, shares, generic, segments, bootstrap)
        if (truth_dir / "segment_skills.parquet").is_file() and ctx.spark.catalog.tableExists(
            ctx.table("job_skill_rank_by_segment")
        ):
            with ctx.step("checked the segment rankings against the planted segment skills"):
                planted = planted_segment_relevance(
                    job_titles,
                    skill_names,
                    truth_titles,
                    pq.read_table(truth_dir / "segment_skills.parquet").to_pydict(),
                    *lookups,
                    generic,
                )
                if planted:  # a crawl generated with generate.segment_skills=0 has none
                    segment_ranks = ranking_columns(
                        ctx, "job_skill_rank_by_segment", train_run.run_id
                    )
                    rows += _segment_precision_rows(
                        params, segment_ranks, ranks, planted, generic, bootstrap
                    )
    else:
        ctx.log.info(f"  no planted truth at {truth_dir}: planted_* metrics skipped")
    with ctx.step("checked SkillRank against the ESCO and O*NET taxonomies"):
        taxonomy = taxonomy_relevance(job_titles, skill_names, load_taxonomy(), *lookups)
        for label, sets in taxonomy.items():
            # Judged as they come, on any crawl: no skill is set aside as generic.
            segment = {label: np.fromiter(sets, dtype=np.int64)}
            rows += title_rows(
                title_methods, sets, nothing, params.title_k, "taxonomy", segment, bootstrap
            )

    frame = ctx.spark.createDataFrame(
        [Row(run_id=train_run.run_id, **vars(r)) for r in rows], SPECS["evaluation"].schema
    )
    with ctx.step(f"wrote {len(rows)} rows to {name}"):
        version = replace_run_rows(ctx, "evaluation", frame, train_run.run_id, fingerprint)
    hand_off_evaluation(ctx, train_run.run_id, [vars(r) for r in rows])
    return StageResult(
        rows_in=manifest.rows["test"],
        rows_out=len(rows),
        output_versions={"evaluation": version},
        summary=[
            f"evaluated train run {train_run.run_id}:"
            f" SELECT * FROM {name} WHERE run_id = '{train_run.run_id}'",
            *summarize(rows, params.title_k),
        ],
    )


def _inputs_fingerprint(
    ctx: StageContext, runs: list[Row], truth_dir: Path, aliases: dict[str, Any]
) -> str:
    """A digest of what the evaluation rows depend on besides the runs' tables, which do not
    change once published: which runs are scored, the evaluate settings, the planted truth,
    the alias map, the taxonomies and the code."""
    files = [truth_dir / name for name in _TRUTH_FILES] + sorted(TAXONOMY_DIR.glob("*.csv.gz"))
    return inputs_fingerprint(
        ctx.config.to_dict()["evaluate"],
        [run.run_id for run in runs],
        str(truth_dir),
        aliases,
        file_digests(files),
    )


def _coverage_rows(
    ranks: pa.Table,
    shares: dict[int, dict[int, float]],
    generic: np.ndarray,
    segments: dict[str, np.ndarray],
    bootstrap: Bootstrap,
) -> list[EvaluationRow]:
    """interval_coverage of the run's published intervals (`ranks`: its job_skill_rank
    columns, ``ranking_columns``), per segment of titles: the mean over titles of the share of
    their planted skills whose planted share lies inside the interval, and coverage_titles,
    how many titles were judged. No rows for a run without intervals (softmax)."""
    table = ranks.filter(pc.is_valid(ranks["probability_low"]))
    # Only the rows of planted (title, skill) pairs are judged: the others (most of the
    # million) are left out here, in numpy, not one by one in Python.
    pair = (table["job_id"].to_numpy().astype(np.int64) << 32) | table["skill_id"].to_numpy()
    planted = np.sort(
        np.fromiter((j << 32 | s for j, row in shares.items() for s in row), np.int64)
    )
    if not planted.size:
        return []
    # By binary search: np.isin sorts the two arrays together, 1.4 s against 0.09 s for the
    # 1.2 M rows and 1.4 M planted pairs of a paper-scale run.
    at = np.searchsorted(planted, pair).clip(max=planted.size - 1)
    table = table.filter(planted[at] == pair)
    published: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
    for job_id, skill_id, low, high in zip(
        *(table.column(c).to_pylist() for c in _INTERVAL_COLUMNS), strict=True
    ):
        published[job_id].append((skill_id, low, high))
    covered = interval_coverage(published, shares, generic)
    rows: list[EvaluationRow] = []
    plain = Bootstrap(bootstrap.samples, bootstrap.seed)
    for label, members in segments.items():
        judged = [j for j in members.tolist() if j in covered]
        if judged:
            values: dict[str, dict[tuple[str, int | None], np.ndarray]] = {
                _MODEL: {("interval_coverage", None): np.array([covered[j] for j in judged])}
            }
            rows += segment_rows(label, "coverage_titles", len(judged), values, plain)
    return rows


def _segment_precision_rows(
    params: EvaluateConfig,
    segment_ranks: pa.Table,
    ranks: pa.Table,
    planted: dict[tuple[str, str, int], np.ndarray],
    generic: np.ndarray,
    bootstrap: Bootstrap,
) -> list[EvaluationRow]:
    """Planted segment skills found by the run's segment rankings (`segment_ranks`: its
    job_skill_rank_by_segment columns) against its pooled ranking of the same titles
    (`ranks`: its job_skill_rank columns), on the (segment, title) pairs with at least the
    last of evaluate.title_buckets training profiles."""
    least = params.title_buckets[-1]
    # Both come in no given order: the (segment, job) rows are put in order here, in Arrow,
    # and the pooled ranking's million rows with numpy.
    segment_rows = segment_ranks.filter(pc.greater_equal(segment_ranks["profiles"], least))
    segment_rows = segment_rows.sort_by([(c, "ascending") for c in _SEGMENT_ORDER])
    ranked: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    for segment_type, segment, job_id, skill_id in zip(
        *(segment_rows.column(c).to_pylist() for c in _SEGMENT_ORDER[:3] + ("skill_id",)),
        strict=True,
    ):
        ranked[segment_type, segment, job_id].append(skill_id)
    jobs, skills, order_in_job = (ranks[c].to_numpy() for c in ("job_id", "skill_id", "rank"))
    order = np.lexsort((order_in_job, jobs))
    jobs, skills = jobs[order], skills[order]
    firsts = np.flatnonzero(np.diff(jobs, prepend=-1))  # where each job's rows start
    pooled = {}
    if firsts.size:
        pooled = dict(zip(jobs[firsts].tolist(), np.split(skills, firsts[1:]), strict=True))
    rankings = {
        _MODEL: {key: np.asarray(ids) for key, ids in ranked.items()},
        _POOLED: {key: pooled[key[2]] for key in ranked if key[2] in pooled},
    }
    compared = Bootstrap(bootstrap.samples, bootstrap.seed, ((_MODEL, _POOLED),))
    return segment_truth_rows(
        rankings,
        planted,
        generic,
        params.title_k,
        f"segment_jobs_min_{least}_profiles",
        compared,
    )


def summarize(rows: Sequence[EvaluationRow], title_k: int) -> list[str]:
    """One line per headline metric, and per bucket of titles for planted precision: the
    model's value, the best baseline's, their difference with its 95% bootstrap interval, and
    a verdict when that interval excludes 0 ("within noise" when it does not)."""
    index = {(r.method, r.metric, r.k, r.segment): r for r in rows}
    baselines = [b for b in BASELINES if any(r.method == b for r in rows)]
    buckets = dict.fromkeys(
        r.segment for r in rows if r.metric.startswith("planted_") and r.segment != "titles"
    )
    lines = [
        "model against the best baseline, difference with its 95% interval (docs/evaluation.md):"
    ]
    for metric, k, segment in _HEADLINES:
        k = title_k if k == "title_k" else k
        for label in buckets if segment == "buckets" else [segment]:
            model = index.get((_MODEL, metric, k, label))
            scored = [
                index[b, metric, k, label] for b in baselines if (b, metric, k, label) in index
            ]
            if model is None or not scored:
                continue
            lower = metric in _LOWER_IS_BETTER
            choose = min if lower else max
            best = choose(scored, key=lambda r: r.value)
            difference = index[f"{_MODEL}{DIFFERENCE}{best.method}", metric, k, label]
            unit = "titles" if metric.startswith(("planted_", "taxonomy_")) else "profiles"
            count = index[_MODEL, unit, None, label].value
            name = f"{metric}@{k}" if k is not None else metric
            lines.append(
                f"  {name:<21} {label:<22} {count:>7,.0f} {unit:<8}  model {model.value:.4f}"
                f"   {best.method} {best.value:.4f}   {_comparison(difference, lower)}"
            )
    for row in rows:
        if row.method == _MODEL and row.metric == "interval_coverage":
            count = index[_MODEL, "coverage_titles", None, row.segment].value
            lines.append(
                f"  interval_coverage     {row.segment:<22} {count:>7,.0f} titles    model"
                f" {row.value:.4f} [{row.ci_low:.4f}, {row.ci_high:.4f}]"
                f" (nominal {INTERVAL_LEVEL:.2f})"
            )
        if row.method == _MODEL and row.metric == "segment_precision":
            pooled = index[_POOLED, row.metric, row.k, row.segment]
            difference = index[f"{_MODEL}{DIFFERENCE}{_POOLED}", row.metric, row.k, row.segment]
            count = index[_MODEL, "pairs", None, row.segment].value
            lines.append(
                f"  {row.metric}@{row.k} {row.segment} {count:,.0f} (segment, title) pairs:"
                f" segment rankings {row.value:.4f}   pooled {pooled.value:.4f}"
                f"   {_comparison(difference, False)}"
            )
    return lines


def _comparison(difference: EvaluationRow, lower_is_better: bool) -> str:
    """Model minus baseline, its interval, and which is better when the interval excludes 0."""
    low, high = difference.ci_low, difference.ci_high
    text = f"difference {difference.value:+.4f}"
    if low is None or high is None:
        return f"{text} (no interval)"
    if low <= 0 <= high:
        verdict = "within noise"
    else:
        verdict = "model better" if (high < 0) == lower_is_better else "baseline better"
    return f"{text} [{low:+.4f}, {high:+.4f}]   {verdict}"


STAGE = Stage(name="evaluate", add_arguments=add_arguments, run=run, check=check)


def main() -> None:
    raise SystemExit(run_stages([STAGE]))


if __name__ == "__main__":
    main()
