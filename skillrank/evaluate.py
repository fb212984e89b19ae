"""Metrics and baselines for the ``evaluate`` stage: how well a method predicts a profile's skills.

A *method* turns a profile's job titles into a score for every skill (``Method``): the model
(softmax of the job-weighted sum of phi rows) or a count baseline built from the training
split (``count_cooccurrences`` then ``baseline_methods``). Two kinds of evaluation:

- ``profile_metrics``: on held-out profiles, the truth is the profile's own skill set. KL and
  cross-entropy against the uniform distribution over that set (the training loss), and
  precision, recall, NDCG and MAP at k, per profile (``score_profiles``), then averaged per
  segment (all, a city, an industry...).
- ``title_truth_metrics``: per title, against a known relevant skill set: the generator's
  planted truth (``planted_relevance``) or the real taxonomies (``taxonomy_relevance``);
  ``title_rows`` averages them per segment of titles (e.g. ``title_buckets``).

Every mean comes with a 95% percentile bootstrap interval (``segment_rows``): the profiles (or
titles) of the segment are resampled with replacement, the same resamples for every method,
so that the interval of a difference between two methods (rows "a - b") is a paired one.

Rankings break ties in score by skill id, lowest first, so every figure is deterministic.
Everything here is numpy/torch on the CPU's side of the file contract; the stage does the I/O.

``ppmi_svd`` is kept: at J=12,000 x S=16,000 on 2 CPU cores, ``baseline_methods`` as a whole
took 6.0 s, the truncated SVD and its reconstruction 5.0 s of it, well under the 60 s budget
(random counts of 140k profiles x 1-4 titles x 5-25 skills, 2.7M nonzero pairs; peak memory
5.2 GB, as each of the four J x S float32 matrices is 768 MB).
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from skillrank.model import Batch
from skillrank.rankings import top_k
from skillrank.text import normalize_text

if TYPE_CHECKING:
    from skillrank.generate import Taxonomy

COMBINES = ("softmax", "mixture", "sum")
# Names of the count baselines, as baseline_methods returns them.
BASELINES = ("popularity", "cooccurrence", "pmi", "ppmi_svd")
# The method name of the difference "a minus b": f"{a}{DIFFERENCE}{b}".
DIFFERENCE = " - "
# Percentiles bounding the bootstrap intervals: a 95% interval.
_INTERVAL = (2.5, 97.5)
# Resamples x units drawn at once by mean_intervals, whatever the number of resamples: each
# of its few temporaries (draws, counts) is then 16 MB.
_BOOTSTRAP_CELLS = 1 << 21
# Rank of the ppmi_svd baseline (capped by the matrix shape) and the seed of its random
# projection, so that two runs on the same counts give the same scores.
SVD_RANK = 100
SVD_SEED = 0
# Extra random directions and power iterations of the randomized SVD: enough that the
# leading `SVD_RANK` components are accurate, few enough to stay cheap at paper scale.
_SVD_OVERSAMPLE = 10
_SVD_ITERATIONS = 4
# Titles ranked at once by title_truth_metrics (chunk x S float32 scores in memory).
_TITLE_CHUNK = 1024


@dataclass(frozen=True)
class CoCounts:
    """Training co-occurrence counts, each profile counted once per distinct (title, skill).

    pair (J, S), job (J,), skill (S,): float32 counts of profiles holding title j and skill s,
    title j, skill s; profiles: the number of training profiles.
    """

    pair: Tensor
    job: Tensor
    skill: Tensor
    profiles: int


@dataclass(frozen=True)
class Method:
    """A way to score skills from a profile's titles.

    title_scores is (J, S), or (1, S) for a method that ignores titles. combine says how a
    profile's rows add up (w_k its job weights): "softmax": softmax(sum_k w_k row_k), rows are
    logits; "mixture": sum_k w_k row_k, rows are distributions; "sum": sum_k w_k row_k as
    ranking scores only (no KL or cross-entropy).
    """

    name: str
    title_scores: Tensor
    combine: str

    def __post_init__(self) -> None:
        if self.combine not in COMBINES:
            raise ValueError(f"method {self.name!r}: combine must be one of {COMBINES}")
        if self.title_scores.dim() != 2:
            raise ValueError(f"method {self.name!r}: title_scores must be 2-D (J x S)")

    @property
    def has_distribution(self) -> bool:
        return self.combine != "sum"


@dataclass(frozen=True)
class EvaluationRow:
    """One figure: `metric` (at cut-off `k`, None for kl/cross_entropy/profiles/titles) of
    `method`, averaged over the profiles (or titles) of `segment` (the count of them for
    metric "profiles" or "titles"), with its 95% bootstrap interval [ci_low, ci_high] (None
    for counts, without resamples, or for an empty segment). A method "a - b" is the paired
    difference of a and b over the same profiles or titles."""

    method: str
    metric: str
    k: int | None
    segment: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass(frozen=True)
class Bootstrap:
    """How ``segment_rows`` draws intervals: `samples` resamples (0: no intervals), drawn from
    `seed`; `pairs` (a, b) of methods whose paired differences a - b get rows of their own."""

    samples: int = 0
    seed: int = 0
    pairs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError(f"bootstrap samples must be >= 0, got {self.samples}")


@dataclass(frozen=True)
class ProfileScores:
    """Every method's metrics for each scored profile (``score_profiles``).

    segments: label -> rows of its profiles (ascending), "all" first, holding every row;
    metrics: method name -> its columns (metric, k); values: method name -> (profiles,
    columns) float64, row i the i-th profile scored.
    """

    segments: dict[str, np.ndarray]
    metrics: dict[str, list[tuple[str, int | None]]]
    values: dict[str, np.ndarray]


def count_cooccurrences(batches: Iterable[Batch], jobs: int, skills: int) -> CoCounts:
    """Count training profiles per (title, skill), per title and per skill.

    A profile listing a title (or skill) twice counts once. Vectorised per batch: the pairs of
    a batch are scattered into the flattened (J * S) matrix at j * S + s in one call.
    """
    pair = torch.zeros(jobs * skills, dtype=torch.float32)
    job = torch.zeros(jobs, dtype=torch.float32)
    skill = torch.zeros(skills, dtype=torch.float32)
    profiles = 0
    for batch in batches:
        b = batch.size
        profiles += b
        if b == 0:
            continue
        pj, jj = _distinct_per_profile(batch.job_ids, batch.job_offsets, jobs, "job")
        ps, ss = _distinct_per_profile(batch.skill_ids, batch.skill_offsets, skills, "skill")
        job += torch.bincount(jj, minlength=jobs).to(job.dtype)
        skill += torch.bincount(ss, minlength=skills).to(skill.dtype)
        # Every distinct (profile, title) pairs with every distinct skill of that profile:
        # repeat each title entry once per skill of its profile and walk that profile's skills.
        skills_per_profile = torch.bincount(ps, minlength=b)
        first_skill = torch.cumsum(skills_per_profile, 0) - skills_per_profile
        reps = skills_per_profile[pj]
        total = int(reps.sum())
        if total == 0:
            continue
        group_start = torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
        within = torch.arange(total) - group_start
        pair_skill = ss[torch.repeat_interleave(first_skill[pj], reps) + within]
        pair_job = torch.repeat_interleave(jj, reps)
        pair.index_add_(0, pair_job * skills + pair_skill, torch.ones(total, dtype=pair.dtype))
    return CoCounts(pair.view(jobs, skills), job, skill, profiles)


def softmax_method(
    phi_t: Tensor, background: Tensor, background_weight: float = 0.0, name: str = "model"
) -> Method:
    """A softmax fit (a train run's phi_t, J x S, and its skill bias `background`, S) as a
    method: a title's row is phi_t[j] + background, logits combined by softmax (the job
    weights sum to 1, so the bias counts once: softmax(b + sum_k w_k phi_t[k])).
    `background_weight`, the mixture's lam, is not used: the softmax learns its bias."""
    return Method(name, phi_t + background[None, :], "softmax")


def mixture_method(
    phi_t: Tensor, background: Tensor, background_weight: float, name: str = "model"
) -> Method:
    """A mixture fit (a train run's phi_t, J x S, and background, S) as a method: a title's
    row is lam * p0 + (1 - lam) * theta_j, with p0 = softmax(background), theta_j =
    exp(phi_t[j]) (phi_t is log theta: its rows are distributions already) and lam =
    `background_weight`, distributions combined as a mixture."""
    p0 = torch.softmax(background, dim=0)
    return mixture_of(phi_t.exp(), p0, background_weight, name)


def mixture_of(
    theta: Tensor, p0: Tensor, background_weight: float, name: str = "model", in_place: bool = True
) -> Method:
    """``mixture_method`` from theta (J x S) and p0 (S,) themselves; `theta` is overwritten
    unless not `in_place`."""
    weight = 1.0 - background_weight
    rows = theta.mul_(weight) if in_place else theta.mul(weight)
    rows.add_(background_weight * p0[None, :])
    return Method(name, rows, "mixture")


def baseline_methods(counts: CoCounts, smoothing: float) -> list[Method]:
    """The count baselines: popularity, cooccurrence, pmi and ppmi_svd (see the module doc).

    `smoothing` (> 0) is the pseudo-count added to every skill's frequency for popularity, and
    the pseudo-count mass of popularity mixed into every title's P(skill | title), so that no
    predicted probability is zero and KL stays finite.
    """
    jobs, skills = counts.pair.shape
    p_pop = _popularity(counts, smoothing)
    popularity = Method("popularity", p_pop[None, :].clone(), "mixture")
    cooccurrence = cooccurrence_method(counts, smoothing)
    # In place where the values are the same: each new J x S matrix is 0.7 GB at paper scale.
    pmi_scores = cooccurrence.title_scores.log().sub_(p_pop.log())
    pmi = Method("pmi", pmi_scores, "sum")

    ppmi = pmi_scores.clamp(min=0.0)
    ppmi_svd = Method("ppmi_svd", _low_rank(ppmi, min(SVD_RANK, jobs, skills)), "sum")
    return [popularity, cooccurrence, pmi, ppmi_svd]


def cooccurrence_method(counts: CoCounts, smoothing: float) -> Method:
    """The co-occurrence baseline: each title's skill counts plus `smoothing` pseudo-profiles
    spread like popularity, normalised (P(skill | title), as baseline_methods describes)."""
    p_pop = _popularity(counts, smoothing)
    row_total = counts.pair.sum(dim=1, keepdim=True)
    conditional = torch.add(counts.pair, smoothing * p_pop).div_(row_total + smoothing)
    return Method("cooccurrence", conditional, "mixture")


def _popularity(counts: CoCounts, smoothing: float) -> Tensor:
    """Each skill's share of the skill mentions, with `smoothing` (> 0) added to each count."""
    if not smoothing > 0:
        raise ValueError(f"smoothing must be > 0, got {smoothing}")
    skill = counts.skill.to(torch.float64)
    skills = skill.numel()
    return ((skill + smoothing) / (skill.sum() + smoothing * skills)).to(torch.float32)


def score_profiles(
    methods: Sequence[Method],
    batches: Iterable[tuple[list[str], Batch]],
    segments_of: Mapping[str, Sequence[str]],
    ks: Sequence[int],
) -> ProfileScores:
    """Score every profile with every method: each profile's metrics, and its segments.

    `batches` are (profile ids, Batch) as ``iterate_batches`` yields them; a profile belongs to
    segment "all" plus the labels ``segments_of[profile_id]`` (none when absent; segments in
    order of first appearance). The truth is the profile's skill set (skill ids distinct, as
    the shard contract guarantees). A method's columns are "kl" and "cross_entropy" when it has
    a distribution, then precision, recall, ndcg and map for each k. Memory: profiles x
    columns floats per method; no score matrix outlives its batch.
    """
    ks = list(ks)
    if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
        raise ValueError(f"ks must be a non-empty list of distinct cut-offs >= 1, got {ks}")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    metrics = {m.name: _metric_names(m, ks) for m in methods}
    labels: dict[str, int] = {"all": 0}
    entry_segments: list[np.ndarray] = []
    entry_rows: list[np.ndarray] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    scored = 0
    for ids, batch in batches:
        if len(ids) != batch.size:
            raise ValueError(f"{len(ids)} profile ids for a batch of {batch.size} profiles")
        if batch.size == 0:
            continue
        seg_of_entry, profile_of_entry = _segment_entries(ids, segments_of, labels)
        entry_segments.append(seg_of_entry)
        entry_rows.append(profile_of_entry + scored)
        scored += batch.size
        for method in methods:
            parts[method.name].append(_profile_values(method, batch, ks))
    seg = np.concatenate(entry_segments) if entry_segments else np.zeros(0, dtype=np.int64)
    rows = np.concatenate(entry_rows) if entry_rows else np.zeros(0, dtype=np.int64)
    values = {
        name: np.concatenate(parts[name]) if parts[name] else np.zeros((0, len(metrics[name])))
        for name in names
    }
    segments = {label: rows[seg == index] for label, index in labels.items()}
    return ProfileScores(segments, metrics, values)


def profile_metrics(
    methods: Sequence[Method],
    batches: Iterable[tuple[list[str], Batch]],
    segments_of: Mapping[str, Sequence[str]],
    ks: Sequence[int],
    bootstrap: Bootstrap = Bootstrap(),
) -> list[EvaluationRow]:
    """Score every test profile with every method and average the metrics per segment.

    Inputs as ``score_profiles``; intervals and differences as ``segment_rows`` says (none by
    default). Returns, per segment (in order of first appearance, "all" first) and method, a
    "profiles" row (the count), then a row per column of ``score_profiles``: the mean over the
    segment's profiles (nan if none) and its interval; then the rows of the differences.
    """
    scores = score_profiles(methods, batches, segments_of, ks)
    rows: list[EvaluationRow] = []
    for label, members in scores.segments.items():
        values = {
            name: dict(zip(scores.metrics[name], scores.values[name][members].T, strict=True))
            for name in scores.values
        }
        rows += segment_rows(label, "profiles", len(members), values, bootstrap)
    return rows


def segment_rows(
    segment: str,
    unit: str,
    units: int,
    values: Mapping[str, Mapping[tuple[str, int | None], np.ndarray]],
    bootstrap: Bootstrap,
) -> list[EvaluationRow]:
    """The rows of one segment: means over its units with bootstrap intervals, and differences.

    `values`: method name -> (metric, k) -> that metric's value for each of the segment's
    `units` profiles or titles (float arrays of that length, the same units in the same order
    for every method). Per method, a row `unit` ("profiles" or "titles") holding the count,
    then a row per metric: the mean and the 2.5 and 97.5 percentiles of the means of
    `bootstrap.samples` resamples of the units with replacement. The resamples are drawn from
    `bootstrap.seed` and the segment's name, and are the same for every method: for each pair
    (a, b) of `bootstrap.pairs`, a row "a - b" per metric both have holds the mean of the
    paired differences (mean(a) - mean(b)) and its interval, so a method against itself gives
    exactly 0 in [0, 0]. No interval (None) without samples or units (means nan then).
    """
    for a, b in bootstrap.pairs:
        if a not in values or b not in values:
            raise ValueError(f"pair ({a!r}, {b!r}) names a method without values")
    keys: list[tuple[str, str, int | None]] = []
    columns: list[np.ndarray] = []
    for name, metrics in values.items():
        for (metric, k), column in metrics.items():
            keys.append((name, metric, k))
            columns.append(np.asarray(column, dtype=np.float64))
    for a, b in bootstrap.pairs:
        for (metric, k), column in values[a].items():
            if (metric, k) in values[b]:
                keys.append((f"{a}{DIFFERENCE}{b}", metric, k))
                columns.append(column - np.asarray(values[b][(metric, k)], dtype=np.float64))
    if any(column.shape != (units,) for column in columns):
        raise ValueError(f"segment {segment!r}: every method needs {units} values per metric")
    matrix = np.stack(columns, axis=1) if columns else np.zeros((units, 0))
    rng = np.random.default_rng([bootstrap.seed, zlib.crc32(segment.encode())])
    means, bounds = mean_intervals(matrix, bootstrap.samples, rng)

    rows = [EvaluationRow(name, unit, None, segment, float(units)) for name in values]
    for index, (name, metric, k) in enumerate(keys):
        low, high = (None, None) if bounds is None else bounds[:, index].tolist()
        rows.append(EvaluationRow(name, metric, k, segment, float(means[index]), low, high))
    return rows


def title_truth_metrics(
    method: Method, relevant: Mapping[int, np.ndarray], exclude: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """Rank all skills for each title of `relevant` and score the top k against its set.

    `relevant`: job id -> relevant skill ids; `exclude`: skill ids left out of every ranking
    and every relevant set (generic skills); a title whose set is then empty is dropped. Rows
    of title_scores are the method's scores for one title (row 0 for a one-row method).
    Returns arrays in job id order: job_id (int64), precision (hits / k), recall (hits /
    |relevant|), ndcg (at k), relevant (|relevant|, int64). Each title's best k + |exclude|
    skills are ranked, so the cost grows with `exclude` (the generic skills: tens).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores_all = method.title_scores
    n_rows, skills = scores_all.shape
    keep = np.ones(skills, dtype=bool)
    exclude = np.asarray(exclude, dtype=np.int64)
    _check_ids(exclude, skills, "excluded skill")
    keep[exclude] = False
    # A row's best k + (excluded skills) in rank order, less the excluded ones, hold its best
    # k kept skills in the same order (ties by id): no copy of the kept columns is ranked.
    kept = int(keep.sum())
    take, width = min(k, kept), min(k + skills - kept, skills)

    job_ids: list[int] = []
    sets: list[np.ndarray] = []
    for job_id in sorted(relevant):
        if n_rows > 1 and not 0 <= job_id < n_rows:
            raise ValueError(f"job id {job_id} is outside {method.name}'s {n_rows} titles")
        ids = np.unique(np.asarray(relevant[job_id], dtype=np.int64))
        _check_ids(ids, skills, f"relevant skill of job {job_id}")
        ids = ids[keep[ids]]
        if ids.size:
            job_ids.append(job_id)
            sets.append(ids)

    out: dict[str, list[np.ndarray]] = defaultdict(list)
    keep_t = torch.from_numpy(keep)
    for start in range(0, len(job_ids), _TITLE_CHUNK):
        chunk_jobs = job_ids[start : start + _TITLE_CHUNK]
        chunk_sets = sets[start : start + _TITLE_CHUNK]
        rows = torch.tensor([j if n_rows > 1 else 0 for j in chunk_jobs], dtype=torch.int64)
        low, high = int(rows[0]), int(rows[-1]) + 1
        if high - low <= 2 * len(chunk_jobs):
            # Most titles between the chunk's first and last are judged (95% of them by the
            # planted truth at the paper's scale): ranking the rows where they lie beats
            # copying them out.
            ranked = top_k(scores_all[low:high], width)[rows - low]
        else:
            ranked = top_k(scores_all.index_select(0, rows), width)
        chosen = keep_t[ranked]
        chosen &= chosen.cumsum(dim=1) <= take
        top = ranked[chosen].view(len(chunk_jobs), take)
        truth = torch.zeros(len(chunk_jobs), skills, dtype=torch.bool)
        for row, ids in enumerate(chunk_sets):
            truth[row, torch.from_numpy(ids)] = True
        hits = truth.gather(1, top).to(torch.float64)
        sizes = torch.tensor([ids.size for ids in chunk_sets], dtype=torch.float64)
        values = _ranking_values(hits, sizes, k)
        for key in ("precision", "recall", "ndcg"):
            out[key].append(values[key].numpy())
    empty = np.zeros(0, dtype=np.float64)
    return {
        "job_id": np.asarray(job_ids, dtype=np.int64),
        "precision": np.concatenate(out["precision"]) if job_ids else empty,
        "recall": np.concatenate(out["recall"]) if job_ids else empty,
        "ndcg": np.concatenate(out["ndcg"]) if job_ids else empty,
        "relevant": np.asarray([ids.size for ids in sets], dtype=np.int64),
    }


def title_rows(
    methods: Sequence[Method],
    relevant: Mapping[int, np.ndarray],
    exclude: np.ndarray,
    k: int,
    prefix: str,
    segments: Mapping[str, np.ndarray],
    bootstrap: Bootstrap = Bootstrap(),
) -> list[EvaluationRow]:
    """Mean per-title precision, recall and NDCG@k of every method, per segment of titles.

    Each method ranks the titles of `relevant` once (``title_truth_metrics`` with `exclude`
    and `k`); `segments` maps a label to the job ids it covers, and its rows (``segment_rows``
    with unit "titles", metrics <prefix>_precision, <prefix>_recall and <prefix>_ndcg at k, and
    `bootstrap`) average the judged titles among them. A segment holding no judged title gets
    no rows.
    """
    per_method = {m.name: title_truth_metrics(m, relevant, exclude, k) for m in methods}
    rows: list[EvaluationRow] = []
    for label, members in segments.items():
        inside = {name: np.isin(result["job_id"], members) for name, result in per_method.items()}
        titles = max((int(mask.sum()) for mask in inside.values()), default=0)
        if titles == 0:
            continue
        values: dict[str, dict[tuple[str, int | None], np.ndarray]] = {
            name: {
                (f"{prefix}_{metric}", k): per_method[name][metric][mask]
                for metric in ("precision", "recall", "ndcg")
            }
            for name, mask in inside.items()
        }
        rows += segment_rows(label, "titles", titles, values, bootstrap)
    return rows


def title_buckets(profile_counts: np.ndarray, edges: Sequence[int]) -> dict[str, np.ndarray]:
    """Job ids grouped by how many training profiles hold the title.

    `profile_counts[j]`: training profiles of job j (at least 1 for a vocabulary title);
    `edges`: strictly increasing, >= 2. [5, 20, 50] gives "titles_1_4_profiles" (counts below
    5), "titles_5_19_profiles", "titles_20_49_profiles" and "titles_min_50_profiles" (50 or
    more), in that order; each maps to its job ids, ascending (possibly none).
    """
    edges = list(edges)
    if not edges or edges[0] < 2 or any(b <= a for a, b in pairwise(edges)):
        raise ValueError(f"bucket edges must be strictly increasing and >= 2, got {edges}")
    bucket = np.searchsorted(edges, np.asarray(profile_counts), side="right")
    labels = [f"titles_{low}_{high - 1}_profiles" for low, high in pairwise([1, *edges])]
    labels.append(f"titles_min_{edges[-1]}_profiles")
    return {label: np.flatnonzero(bucket == index) for index, label in enumerate(labels)}


def planted_relevance(
    job_titles: Sequence[str],
    skill_names: Sequence[str],
    truth_titles: Mapping[str, Sequence[object]],
    truth_skills: Mapping[str, Sequence[object]],
    title_lookup: Mapping[str, str | None],
    skill_lookup: Mapping[str, str | None],
    relations: Sequence[str] = ("essential",),
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Map the generator's planted truth onto the vocabulary.

    `truth_titles` holds the columns of truth/titles.parquet (title_key, occupation_id, ...),
    `truth_skills` those of truth/occupation_skills.parquet (occupation_id, skill_key,
    relation, is_generic, ...). A key names vocabulary entry ``lookup.get(key, key)``. Returns
    (job id -> sorted skill ids of the title's occupation with a relation in `relations`, not
    generic, in the vocabulary; titles of several occupations and titles with no such skill
    left out) and the sorted ids of every vocabulary skill generic in any row.
    """
    skill_index = {name: i for i, name in enumerate(skill_names)}
    occupation_of = _planted_occupations(job_titles, truth_titles, title_lookup)
    wanted = set(relations)
    skills_of: dict[object, set[int]] = defaultdict(set)
    generic: set[int] = set()
    rows = zip(
        truth_skills["occupation_id"],
        truth_skills["skill_key"],
        truth_skills["relation"],
        truth_skills["is_generic"],
        strict=True,
    )
    for occupation, key, relation, is_generic in rows:
        sid = _vocabulary_id(key, skill_lookup, skill_index)
        if sid is None:
            continue
        if bool(is_generic):
            generic.add(sid)
        elif relation in wanted:
            skills_of[occupation].add(sid)
    # A vocabulary skill generic in any row (aliases can merge spellings) is excluded from
    # rankings, so it cannot count as relevant either.
    relevant = _relevant_sets(occupation_of, skills_of, generic)
    return relevant, np.asarray(sorted(generic), dtype=np.int64)


def planted_segment_relevance(
    job_titles: Sequence[str],
    skill_names: Sequence[str],
    truth_titles: Mapping[str, Sequence[object]],
    truth_segments: Mapping[str, Sequence[object]],
    title_lookup: Mapping[str, str | None],
    skill_lookup: Mapping[str, str | None],
    exclude: np.ndarray,
) -> dict[tuple[str, str, int], np.ndarray]:
    """(segment_type, segment, job id) -> sorted vocabulary ids of the skills the generator
    planted for the title's occupation in that segment (truth/segment_skills.parquet: columns
    segment_type, segment, occupation_id, skill_key), `exclude` (generic) ids left out;
    titles are matched to occupations as in ``planted_relevance``."""
    skill_index = {name: i for i, name in enumerate(skill_names)}
    occupation_of = _planted_occupations(job_titles, truth_titles, title_lookup)
    jobs_of: dict[object, list[int]] = defaultdict(list)
    for job_id, occupation in occupation_of.items():
        jobs_of[occupation].append(job_id)
    planted: dict[tuple[str, str, int], set[int]] = defaultdict(set)
    rows = zip(
        truth_segments["segment_type"],
        truth_segments["segment"],
        truth_segments["occupation_id"],
        truth_segments["skill_key"],
        strict=True,
    )
    drop = set(np.asarray(exclude).tolist())
    for segment_type, segment, occupation, key in rows:
        sid = _vocabulary_id(key, skill_lookup, skill_index)
        if sid is None or sid in drop:
            continue
        for job_id in jobs_of.get(occupation, ()):
            planted[str(segment_type), str(segment), job_id].add(sid)
    return {key: np.asarray(sorted(ids), dtype=np.int64) for key, ids in planted.items()}


def planted_shares(
    job_titles: Sequence[str],
    skill_names: Sequence[str],
    truth_titles: Mapping[str, Sequence[object]],
    truth_skills: Mapping[str, Sequence[object]],
    title_lookup: Mapping[str, str | None],
    skill_lookup: Mapping[str, str | None],
) -> dict[int, dict[int, float]]:
    """job id -> skill id -> the planted counterpart of theta_j(s): the share of the skill
    mentions of a position of the title's occupation that are s, p_os / sum_s' p_os', over the
    occupation's rows of truth/occupation_skills.parquet (generic rows included) whose skill is
    in the vocabulary; titles matched as in ``planted_relevance``."""
    skill_index = {name: i for i, name in enumerate(skill_names)}
    occupation_of = _planted_occupations(job_titles, truth_titles, title_lookup)
    rates: dict[object, dict[int, float]] = defaultdict(dict)
    rows = zip(
        truth_skills["occupation_id"],
        truth_skills["skill_key"],
        cast(Sequence[float], truth_skills["probability"]),
        strict=True,
    )
    for occupation, key, probability in rows:
        sid = _vocabulary_id(key, skill_lookup, skill_index)
        if sid is not None:
            rates[occupation][sid] = rates[occupation].get(sid, 0.0) + float(probability)
    shares = {}
    for occupation, rate in rates.items():
        total = sum(rate.values())
        shares[occupation] = {sid: p / total for sid, p in rate.items()}
    return {j: shares[o] for j, o in occupation_of.items() if o in shares}


def interval_coverage(
    published: Mapping[int, Sequence[tuple[int, float, float]]],
    shares: Mapping[int, Mapping[int, float]],
    exclude: np.ndarray,
) -> dict[int, float]:
    """job id -> the share of its judged skills whose planted share (``planted_shares``)
    lies inside the published interval. `published`: job id -> (skill id, probability_low,
    probability_high) of its published rows; judged: the skills planted for the title's
    occupation, `exclude` (generic) ids left out, that are published for it."""
    drop = set(np.asarray(exclude).tolist())
    out = {}
    for job_id, rows in published.items():
        planted = shares.get(job_id, {})
        inside = [
            low <= planted[sid] <= high
            for sid, low, high in rows
            if sid in planted and sid not in drop
        ]
        if inside:
            out[job_id] = float(np.mean(inside))
    return out


def segment_truth_rows(
    rankings: Mapping[str, Mapping[tuple[str, str, int], np.ndarray]],
    relevant: Mapping[tuple[str, str, int], np.ndarray],
    exclude: np.ndarray,
    k: int,
    label: str,
    bootstrap: Bootstrap,
) -> list[EvaluationRow]:
    """Precision@k of each method's ranking of every (segment, title) pair against the skills
    planted for that pair (``planted_segment_relevance``), metric "segment_precision", over the
    pairs of `relevant` that every method ranks, as one segment `label` of unit "pairs".

    `rankings`: method -> pair -> its ranked skill ids, best first; `exclude` ids are dropped
    from every ranking first (generic skills)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    drop = np.asarray(exclude, dtype=np.int64)
    pairs = sorted(key for key in relevant if all(key in ranked for ranked in rankings.values()))
    if not pairs:
        return []
    values: dict[str, dict[tuple[str, int | None], np.ndarray]] = {}
    for name, ranked in rankings.items():
        hits = []
        for pair in pairs:
            top = ranked[pair][~np.isin(ranked[pair], drop)][:k]
            hits.append(np.isin(top, relevant[pair]).sum() / k)
        values[name] = {("segment_precision", k): np.asarray(hits, dtype=np.float64)}
    return segment_rows(label, "pairs", len(pairs), values, bootstrap)


def taxonomy_relevance(
    job_titles: Sequence[str],
    skill_names: Sequence[str],
    taxonomy: Taxonomy,
    title_lookup: Mapping[str, str | None],
    skill_lookup: Mapping[str, str | None],
) -> dict[str, dict[int, np.ndarray]]:
    """Relevant skill sets from the real taxonomies, for a sanity check beside planted truth.

    Titles and skills are matched after ``normalize_text`` and the lookups, as prepare cleans
    them. "esco_essential": vocabulary titles equal to one ESCO occupation's preferred label
    -> that occupation's essential skills. "onet_technology": the subset carries no O*NET
    titles, so vocabulary titles equal to the preferred label of ESCO occupations linked to
    one O*NET code (occupations.onet_code, a heuristic crosswalk) -> that code's technology
    skills (hot or not). Titles matching several targets and empty sets are left out.
    """
    skill_index = {name: i for i, name in enumerate(skill_names)}
    labels = [(normalize_text(o["label"]), o) for o in taxonomy.occupations]

    esco_of = _occupation_of_title(
        job_titles, ((key, o["occupation_id"]) for key, o in labels), title_lookup
    )
    esco_skills: dict[object, set[int]] = defaultdict(set)
    for row in taxonomy.occupation_skills:
        if row["relation"] == "essential":
            sid = _vocabulary_id(normalize_text(row["skill"]), skill_lookup, skill_index)
            if sid is not None:
                esco_skills[row["occupation_id"]].add(sid)

    onet_of = _occupation_of_title(
        job_titles, ((key, o["onet_code"]) for key, o in labels if o["onet_code"]), title_lookup
    )
    onet_skills: dict[object, set[int]] = defaultdict(set)
    for row in taxonomy.onet_technology:
        sid = _vocabulary_id(normalize_text(row["skill"]), skill_lookup, skill_index)
        if sid is not None:
            onet_skills[row["onet_code"]].add(sid)

    return {
        "esco_essential": _relevant_sets(esco_of, esco_skills, set()),
        "onet_technology": _relevant_sets(onet_of, onet_skills, set()),
    }


def _distinct_per_profile(
    ids: Tensor, offsets: Tensor, size: int, what: str
) -> tuple[Tensor, Tensor]:
    """(profile, id) of each distinct id of each profile, sorted by profile then id."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
        raise ValueError(f"{what} ids must lie in [0, {size}), got {ids.min()}..{ids.max()}")
    b = offsets.numel() - 1
    profile = torch.repeat_interleave(torch.arange(b), torch.diff(offsets))
    keys = torch.unique(profile * size + ids.to(torch.int64))
    return keys // size, keys % size


def _low_rank(matrix: Tensor, rank: int) -> Tensor:
    """The rank-`rank` truncated-SVD reconstruction of `matrix`, with a fixed random seed,
    written over `matrix`.

    The SVD's products take the matrix's sparse (CSR) form: PPMI is zero on every pair that
    no training profile holds, 98.5% of it at paper scale. Measured on the counts of the
    default crawl (2026-12-04, 2 cores): 4.1 s dense, 2.1 s with the conversion; the
    reconstruction differs by float32 rounding (2e-5 of values up to 13; one title of
    11,990 had another top 10). The conversion and the sparse products hold about 0.22 GiB
    more at their peak (a scratch script: baseline_methods 3.46 -> 3.68 GiB of peak resident
    memory; converted 1,024 rows at a time, 3.63)."""
    with warnings.catch_warnings():  # torch says once that its CSR support is in beta
        warnings.filterwarnings("ignore", "Sparse CSR tensor support", UserWarning)
        u, s, v = truncated_svd(matrix.to_sparse_csr(), rank, SVD_SEED, _SVD_ITERATIONS)
    return torch.mm(u * s, v.T, out=matrix)


def truncated_svd(
    matrix: Tensor, rank: int, seed: int, iterations: int, center: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """(U, S, V) of the leading `rank` singular triplets of `matrix` (m x n; dense, or sparse
    CSR without `center`), its columns' means removed first when `center` (then U * S are
    the principal component scores), by randomized SVD: `rank` + 10 random directions
    refined by `iterations` power iterations, drawn from a generator seeded with `seed`.
    ``rank`` must be at most min(m, n)."""
    m, n = matrix.shape
    if not 1 <= rank <= min(m, n):
        raise ValueError(f"rank must lie in [1, {min(m, n)}] for a {m} x {n} matrix, got {rank}")
    q = min(rank + _SVD_OVERSAMPLE, m, n)
    # svd_lowrank draws its random projection from the global generator: fork it so that the
    # result is reproducible and the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if center:
            u, s, v = torch.pca_lowrank(matrix, q=q, center=True, niter=iterations)
        else:
            u, s, v = torch.svd_lowrank(matrix, q=q, niter=iterations)
    return u[:, :rank], s[:rank], v[:, :rank]


def _metric_names(method: Method, ks: Sequence[int]) -> list[tuple[str, int | None]]:
    names: list[tuple[str, int | None]] = []
    if method.has_distribution:
        names += [("kl", None), ("cross_entropy", None)]
    for k in ks:
        names += [("precision", k), ("recall", k), ("ndcg", k), ("map", k)]
    return names


def _segment_entries(
    ids: Sequence[str], segments_of: Mapping[str, Sequence[str]], segments: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(segment index, row in batch) for each membership; new labels are added to `segments`."""
    seg_of_entry: list[int] = []
    profile_of_entry: list[int] = []
    for row, profile_id in enumerate(ids):
        # dict.fromkeys: a label listed twice (or "all" passed again) counts the profile once.
        for label in dict.fromkeys(("all", *segments_of.get(profile_id, ()))):
            seg_of_entry.append(segments.setdefault(label, len(segments)))
            profile_of_entry.append(row)
    return np.asarray(seg_of_entry, dtype=np.int64), np.asarray(profile_of_entry, dtype=np.int64)


def mean_intervals(
    values: np.ndarray, samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Column means of `values` (units x columns) and their percentile bootstrap intervals,
    (2, columns): low, high (None without samples or units), from `samples` resamples of the
    units with replacement, each the same for every column."""
    units = values.shape[0]
    if units == 0:
        return np.full(values.shape[1], math.nan), None
    # Shifted by the first unit, so that a constant column (a method against itself gives
    # zeros) has exactly its value as mean and as both ends of its interval, with no rounding.
    shift = values[0]
    centered = values - shift
    means = shift + centered.mean(axis=0)
    if samples == 0:
        return means, None
    resampled = np.empty((samples, values.shape[1]))
    chunk = max(1, _BOOTSTRAP_CELLS // units)
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        # How often each unit is drawn in each resample: a (size x units) count matrix, so the
        # resampled means of every column are one matrix product.
        draws = rng.integers(0, units, size=(size, units))
        cells = (np.arange(size)[:, None] * units + draws).ravel()
        times = np.bincount(cells, minlength=size * units).reshape(size, units)
        resampled[start : start + size] = shift + times.astype(np.float64) @ centered / units
    return means, np.percentile(resampled, _INTERVAL, axis=0)


def _profile_values(method: Method, batch: Batch, ks: Sequence[int]) -> np.ndarray:
    """(B, metrics) float64: each profile's metrics, columns as ``_metric_names``."""
    table = method.title_scores
    batch = batch.to(table.device)
    job_ids = batch.job_ids
    if table.shape[0] == 1:
        job_ids = torch.zeros_like(job_ids)  # a method that ignores titles
    elif job_ids.numel() and int(job_ids.max()) >= table.shape[0]:
        raise ValueError(f"job id {int(job_ids.max())} outside {method.name}'s titles")
    # The same weighted sum as skillrank.model.compute_logits, for every combine.
    scores = F.embedding_bag(
        job_ids,
        table,
        batch.job_offsets[:-1],
        mode="sum",
        per_sample_weights=batch.job_weights.to(table.dtype),
    )
    counts = torch.diff(batch.skill_offsets)
    rows = torch.repeat_interleave(
        torch.arange(batch.size, device=scores.device), counts, output_size=batch.skill_ids.numel()
    )
    sizes = counts.to(torch.float64)
    columns: list[Tensor] = []
    if method.has_distribution:
        if method.combine == "softmax":
            picked = torch.log_softmax(scores, dim=1)[rows, batch.skill_ids]
        else:
            # Renormalised: job weights sum to 1 only up to rounding.
            total = scores.sum(dim=1)
            picked = scores[rows, batch.skill_ids].log() - total.log()[rows]
        mean_log_p = torch.zeros(batch.size, dtype=torch.float64, device=scores.device)
        mean_log_p.index_add_(0, rows, picked.to(torch.float64)).div_(sizes)
        # t uniform over n skills: KL = -log n - mean log p over them; cross-entropy = -mean.
        columns += [-sizes.log() - mean_log_p, -mean_log_p]
    truth = torch.zeros_like(scores, dtype=torch.bool)
    truth[rows, batch.skill_ids] = True
    top = top_k(scores, max(ks))
    hits = truth.gather(1, top).to(torch.float64)
    for k in ks:
        values = _ranking_values(hits, sizes, k)
        columns += [values["precision"], values["recall"], values["ndcg"], values["map"]]
    return torch.stack(columns, dim=1).cpu().numpy()


def _ranking_values(hits: Tensor, sizes: Tensor, k: int) -> dict[str, Tensor]:
    """Precision, recall, NDCG and AP at k per row, from the 0/1 relevance of the ranked
    items (B, >= min(k, S) columns, float64) and the truth set sizes (B,)."""
    width = min(k, hits.shape[1])
    rel = hits[:, :width]
    position = torch.arange(1, width + 1, dtype=torch.float64, device=hits.device)
    discount = 1.0 / torch.log2(position + 1.0)
    found = rel.cumsum(dim=1)
    n_hits = found[:, -1]
    # The ideal ranking puts min(k, |truth|) relevant items first.
    ideal_hits = sizes.clamp(max=float(k))
    ideal_positions = torch.clamp(ideal_hits, max=width).to(torch.int64)
    ideal = torch.cat([discount.new_zeros(1), discount.cumsum(0)])
    ideal = ideal[ideal_positions]
    return {
        "precision": n_hits / k,
        "recall": n_hits / sizes,
        "ndcg": (rel * discount).sum(dim=1) / ideal,
        "map": (rel * found / position).sum(dim=1) / ideal_hits,
    }


def _vocabulary_id(
    key: object, lookup: Mapping[str, str | None], index: Mapping[str, int]
) -> int | None:
    """The vocabulary id of a normalised key after the alias map, None if not in it."""
    if not isinstance(key, str):
        return None
    name = lookup.get(key, key)
    return None if name is None else index.get(name)


def _planted_occupations(
    job_titles: Sequence[str],
    truth_titles: Mapping[str, Sequence[object]],
    title_lookup: Mapping[str, str | None],
) -> dict[int, object]:
    """Job id -> its occupation in truth/titles.parquet (columns title_key, occupation_id)."""
    pairs = zip(truth_titles["title_key"], truth_titles["occupation_id"], strict=True)
    return _occupation_of_title(job_titles, pairs, title_lookup)


def _occupation_of_title(
    job_titles: Sequence[str],
    pairs: Iterable[tuple[object, object]],
    title_lookup: Mapping[str, str | None],
) -> dict[int, object]:
    """Job id -> the one target (occupation) whose (key, target) pairs name that title;
    titles named for several targets are ambiguous and left out."""
    title_index = {name: i for i, name in enumerate(job_titles)}
    targets: dict[int, set[object]] = defaultdict(set)
    for key, target in pairs:
        jid = _vocabulary_id(key, title_lookup, title_index)
        if jid is not None:
            targets[jid].add(target)
    return {jid: next(iter(t)) for jid, t in targets.items() if len(t) == 1}


def _relevant_sets(
    target_of: Mapping[int, object], skills_of: Mapping[object, set[int]], drop: set[int]
) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for jid in sorted(target_of):
        ids = sorted(skills_of.get(target_of[jid], set()) - drop)
        if ids:
            out[jid] = np.asarray(ids, dtype=np.int64)
    return out


def _check_ids(ids: np.ndarray, size: int, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        raise ValueError(f"{what} ids must lie in [0, {size}), got {ids.min()}..{ids.max()}")
