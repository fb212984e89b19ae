"""Metrics and baselines for the ``evaluate`` stage: how well a method predicts a profile's skills.

A *method* turns a profile's job titles into a score for every skill (``Method``): the model
(softmax of the job-weighted sum of phi rows) or a count baseline built from the training
split (``count_cooccurrences`` then ``baseline_methods``). Two kinds of evaluation:

- ``profile_metrics``: on held-out profiles, the truth is the profile's own skill set. KL and
  cross-entropy against the uniform distribution over that set (the training loss), and
  precision, recall, NDCG and MAP at k, averaged per segment (all, a city, an industry...).
- ``title_truth_metrics``: per title, against a known relevant skill set: the generator's
  planted truth (``planted_relevance``) or the real taxonomies (``taxonomy_relevance``).

Rankings break ties in score by skill id, lowest first, so every figure is deterministic.
Everything here is numpy/torch on the CPU's side of the file contract; the stage does the I/O.

``ppmi_svd`` is kept: at J=12,000 x S=16,000 on 2 CPU cores, ``baseline_methods`` as a whole
took 6.0 s, the truncated SVD and its reconstruction 5.0 s of it, well under the 60 s budget
(random counts of 140k profiles x 1-4 titles x 5-25 skills, 2.7M nonzero pairs; peak memory
5.2 GB, as each of the four J x S float32 matrices is 768 MB).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from skillrank.model import Batch
from skillrank.prepare import normalize_text

if TYPE_CHECKING:
    from skillrank.generate import Taxonomy

COMBINES = ("softmax", "mixture", "sum")
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
    """One figure: `metric` (at cut-off `k`, None for kl/cross_entropy/profiles) of `method`,
    averaged over the profiles of `segment` (the count of them for metric "profiles")."""

    method: str
    metric: str
    k: int | None
    segment: str
    value: float


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


def model_method(phi_t: Tensor) -> Method:
    """The trained model as a method: rows of phi_t (J x S) are logits, combined by softmax."""
    return Method("model", phi_t, "softmax")


def baseline_methods(counts: CoCounts, smoothing: float) -> list[Method]:
    """The count baselines: popularity, cooccurrence, pmi and ppmi_svd (see the module doc).

    `smoothing` (> 0) is the pseudo-count added to every skill's frequency for popularity, and
    the pseudo-count mass of popularity mixed into every title's P(skill | title), so that no
    predicted probability is zero and KL stays finite.
    """
    if not smoothing > 0:
        raise ValueError(f"smoothing must be > 0, got {smoothing}")
    jobs, skills = counts.pair.shape
    skill = counts.skill.to(torch.float64)
    p_pop = ((skill + smoothing) / (skill.sum() + smoothing * skills)).to(torch.float32)
    popularity = Method("popularity", p_pop[None, :].clone(), "mixture")

    row_total = counts.pair.sum(dim=1, keepdim=True)
    conditional = (counts.pair + smoothing * p_pop) / (row_total + smoothing)
    cooccurrence = Method("cooccurrence", conditional, "mixture")

    pmi_scores = conditional.log() - p_pop.log()
    pmi = Method("pmi", pmi_scores, "sum")

    ppmi = pmi_scores.clamp(min=0.0)
    ppmi_svd = Method("ppmi_svd", _low_rank(ppmi, min(SVD_RANK, jobs, skills)), "sum")
    return [popularity, cooccurrence, pmi, ppmi_svd]


def profile_metrics(
    methods: Sequence[Method],
    batches: Iterable[tuple[list[str], Batch]],
    segments_of: Mapping[str, Sequence[str]],
    ks: Sequence[int],
) -> list[EvaluationRow]:
    """Score every test profile with every method and average the metrics per segment.

    `batches` are (profile ids, Batch) as ``iterate_batches`` yields them; a profile belongs to
    segment "all" plus the labels ``segments_of[profile_id]`` (none when absent). The truth is
    the profile's skill set (skill ids distinct, as the shard contract guarantees). Returns, per
    method and segment (in order of first appearance, "all" first), a "profiles" row (the
    count), "kl" and "cross_entropy" for methods with a distribution, then precision, recall,
    ndcg and map for each k. A segment's value is the mean over its profiles (nan if none).
    """
    ks = list(ks)
    if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
        raise ValueError(f"ks must be a non-empty list of distinct cut-offs >= 1, got {ks}")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    metrics = {m.name: _metric_names(m, ks) for m in methods}
    segments: dict[str, int] = {"all": 0}
    counts = np.zeros(1, dtype=np.int64)
    sums = {m.name: np.zeros((1, len(metrics[m.name]))) for m in methods}

    for ids, batch in batches:
        if len(ids) != batch.size:
            raise ValueError(f"{len(ids)} profile ids for a batch of {batch.size} profiles")
        if batch.size == 0:
            continue
        seg_of_entry, profile_of_entry = _segment_entries(ids, segments_of, segments)
        counts = _grow(counts, len(segments))
        counts += np.bincount(seg_of_entry, minlength=len(segments))
        for method in methods:
            values = _profile_values(method, batch, ks)
            grown = _grow(sums[method.name], len(segments))
            np.add.at(grown, seg_of_entry, values[profile_of_entry])
            sums[method.name] = grown

    rows: list[EvaluationRow] = []
    for method in methods:
        means = sums[method.name] / np.maximum(counts, 1)[:, None]
        means[counts == 0] = math.nan
        for label, index in segments.items():
            rows.append(EvaluationRow(method.name, "profiles", None, label, float(counts[index])))
            for column, (metric, k) in enumerate(metrics[method.name]):
                rows.append(
                    EvaluationRow(method.name, metric, k, label, float(means[index, column]))
                )
    return rows


def title_truth_metrics(
    method: Method, relevant: Mapping[int, np.ndarray], exclude: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """Rank all skills for each title of `relevant` and score the top k against its set.

    `relevant`: job id -> relevant skill ids; `exclude`: skill ids left out of every ranking
    and every relevant set (generic skills); a title whose set is then empty is dropped. Rows
    of title_scores are the method's scores for one title (row 0 for a one-row method).
    Returns arrays in job id order: job_id (int64), precision (hits / k), recall (hits /
    |relevant|), ndcg (at k), relevant (|relevant|, int64).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores_all = method.title_scores
    n_rows, skills = scores_all.shape
    keep = np.ones(skills, dtype=bool)
    exclude = np.asarray(exclude, dtype=np.int64)
    _check_ids(exclude, skills, "excluded skill")
    keep[exclude] = False
    keep_ids = np.flatnonzero(keep)

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
    keep_t = torch.from_numpy(keep_ids)
    for start in range(0, len(job_ids), _TITLE_CHUNK):
        chunk_jobs = job_ids[start : start + _TITLE_CHUNK]
        chunk_sets = sets[start : start + _TITLE_CHUNK]
        rows = torch.tensor([j if n_rows > 1 else 0 for j in chunk_jobs], dtype=torch.int64)
        scores = scores_all.index_select(0, rows).index_select(1, keep_t)
        # Columns are the kept skills in ascending id order, so breaking ties by column
        # breaks them by skill id.
        top = keep_t[_top_k(scores, k)]
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
    occupation_of = _occupation_of_title(
        job_titles,
        zip(truth_titles["title_key"], truth_titles["occupation_id"], strict=True),
        title_lookup,
    )
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
    """The rank-`rank` truncated-SVD reconstruction of `matrix`, with a fixed random seed."""
    q = min(rank + _SVD_OVERSAMPLE, *matrix.shape)
    # svd_lowrank draws its random projection from the global generator: fork it so that the
    # result is reproducible and the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SVD_SEED)
        u, s, v = torch.svd_lowrank(matrix, q=q, niter=_SVD_ITERATIONS)
    return (u[:, :rank] * s[:rank]) @ v[:, :rank].T


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


def _grow(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` with zero rows appended up to `rows` rows."""
    if array.shape[0] >= rows:
        return array
    extra = np.zeros((rows - array.shape[0], *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([array, extra])


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
    rows = torch.repeat_interleave(torch.arange(batch.size, device=scores.device), counts)
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
    top = _top_k(scores, max(ks))
    hits = truth.gather(1, top).to(torch.float64)
    for k in ks:
        values = _ranking_values(hits, sizes, k)
        columns += [values["precision"], values["recall"], values["ndcg"], values["map"]]
    return torch.stack(columns, dim=1).cpu().numpy()


def _top_k(scores: Tensor, k: int) -> Tensor:
    """(B, min(k, S)) column ids of the highest scores per row, best first; ties go to the
    lower column id, which ``torch.topk`` does not promise."""
    b, width = scores.shape
    k = min(k, width)
    if torch.isnan(scores).any():
        # nan compares false with everything: the selection below would come out short.
        raise ValueError("scores hold nan: cannot rank")
    threshold = torch.topk(scores, k, dim=1).values[:, -1:]
    above = scores > threshold
    tied = scores == threshold
    room = k - above.sum(dim=1, keepdim=True)
    # Of the skills tied at the k-th score, take as many as fit, lowest ids first.
    chosen = above | (tied & (tied.to(torch.int32).cumsum(dim=1) <= room))
    ids = chosen.nonzero()[:, 1].view(b, k)  # ascending id within each row
    order = torch.sort(scores.gather(1, ids), dim=1, descending=True, stable=True).indices
    return ids.gather(1, order)


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
    ideal_hits = torch.minimum(sizes, torch.tensor(float(k), dtype=torch.float64))
    ideal_positions = torch.clamp(ideal_hits, max=width).to(torch.int64)
    ideal = torch.cat([torch.zeros(1, dtype=torch.float64), discount.cumsum(0)])
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
