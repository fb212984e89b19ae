"""What is derived from phi: SkillRank, job2vec, skill2vec and nearest neighbours.

``phi_t`` is phi transposed (jobs x skills, see skillrank.model). With it:

- job2vec of job j = softmax over skills of phi's column j = ``softmax(phi_t[j])``;
- skill2vec of skill s = softmax over jobs of phi's row s = ``softmax(phi_t[:, s])``;
- SkillRank of job j = its skills by descending weight phi[s, j] (the order of job2vec too,
  softmax being monotone), and the converse per skill;
- neighbours = the most cosine-similar other vectors of job2vec (resp. skill2vec).

Every function walks phi in blocks and yields one block of rows at a time as numpy columns,
so the caller can write them out without ever holding a J x S table of rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

Columns = dict[str, np.ndarray]

# Rows (jobs or skills) per block of the train stage's rankings and neighbour searches: bounds
# the memory of one block (block x width floats).
RANK_BLOCK = 1024
# _log_totals' pieces (bytes of float64) and _columns' bands (rows of phi_t): cache-sized.
_PIECE_BYTES = 1 << 20
_BAND_JOBS = 256

# Central probability of the published intervals, and its standard normal quantile.
INTERVAL_LEVEL = 0.90
_Z = 1.6448536269514722


def phi_blocks(phi_t: Tensor, block_jobs: int) -> Iterator[Columns]:
    """phi as (job_id, weights): one row per job, its weights a row of phi_t (J x S, indexed
    by skill_id, so 2-D), `block_jobs` jobs at a time."""
    for start in range(0, phi_t.shape[0], block_jobs):
        block = phi_t[start : start + block_jobs]
        yield {
            "job_id": np.arange(start, start + len(block), dtype=np.int32),
            "weights": block.numpy(),
        }


def background_columns(background: Tensor) -> Columns:
    """The model's background (S,) as (skill_id, weight, probability = softmax of weight)."""
    return {
        "skill_id": np.arange(background.numel(), dtype=np.int32),
        "weight": background.numpy().astype(np.float32),
        "probability": torch.softmax(background.double(), dim=0).numpy(),
    }


def top_skills_per_job(
    phi_t: Tensor, k: int, block: int, concentration: Tensor | None = None
) -> Iterator[Columns]:
    """SkillRank: each job's k highest-weight skills with their job2vec probability; with
    `concentration` (J,: each job's Dirichlet concentration, see ``beta_interval``), also its
    interval and rank range (``interval_columns``)."""
    for start in range(0, phi_t.shape[0], block):
        rows = phi_t[start : start + block]
        log_total = _log_totals(rows)
        columns = _top_k(rows, log_total, start, k, "job_id", "skill_id")
        if concentration is not None:
            a = concentration[start : start + block].double()[:, None]
            p = torch.from_numpy(columns["probability"]).view(len(rows), -1)
            next_p = torch.exp(next_after_top(rows, k) - log_total)
            columns.update(interval_columns(p, a, next_p))
        yield columns


def interval_columns(p: Tensor, concentration: Tensor, next_p: Tensor) -> Columns:
    """probability_low, probability_high, rank_best and rank_worst of rows of top-k
    probabilities `p` (B, k; rank order) whose Dirichlet concentrations are `concentration`
    (B, 1); `next_p` (B,) is each row's probability at rank k + 1 (0 where there is none).

    The rank range is what the marginal intervals allow: rank_best = 1 + the skills whose
    interval lies wholly above this one's, rank_worst = 1 + the others whose interval
    reaches above its lower end. A Beta interval's ends grow with p (fixed concentration), so
    only skills ranked above can lie wholly above, and all of those reach above: each skill
    is compared with the ranks below it for its worst rank and those above for its best (so
    rank_best <= rank <= rank_worst however the ends round). The skill at rank k + 1 is the
    unranked one that reaches highest: where it reaches above a skill's lower end, that skill
    may leave the top k, and rank_worst is null (a masked entry)."""
    low, high = beta_interval(p, concentration)
    next_high = beta_interval(next_p[:, None], concentration)[1]
    # int32 throughout: an int64 sum of the B x k x k comparisons took about twice as long.
    rank = torch.arange(1, p.shape[1] + 1, dtype=torch.int32)
    above = rank[None, :] < rank[:, None]  # [i, i']: i' ranked above i
    best = 1 + ((low[:, None, :] > high[:, :, None]) & above).sum(dim=2, dtype=torch.int32)
    worst = rank + ((high[:, None, :] > low[:, :, None]) & above.T).sum(dim=2, dtype=torch.int32)
    leaves = (next_p[:, None] > 0) & (next_high > low)
    return {
        "probability_low": low.reshape(-1).numpy(),
        "probability_high": high.reshape(-1).numpy(),
        "rank_best": best.reshape(-1).numpy(),
        "rank_worst": np.ma.masked_array(
            worst.reshape(-1).numpy(), mask=leaves.reshape(-1).numpy()
        ),
    }


def next_after_top(rows: Tensor, k: int) -> Tensor:
    """(B,) float64: each row's (k + 1)-th highest entry; -inf where the row has <= k."""
    if k >= rows.shape[1]:
        return torch.full((rows.shape[0],), -torch.inf, dtype=torch.float64)
    return torch.topk(rows, k + 1, dim=1).values[:, k].double()


def top_jobs_per_skill(phi_t: Tensor, k: int, block: int) -> Iterator[Columns]:
    """Each skill's k highest-weight jobs with their skill2vec probability."""
    for start in range(0, phi_t.shape[1], block):
        columns = _columns(phi_t, start, block)
        yield _top_k(columns, _log_totals(columns), start, k, "skill_id", "job_id")


def job_neighbors(phi_t: Tensor, k: int, block: int, device: str = "cpu") -> Iterator[Columns]:
    """Each job's k most similar other jobs: cosine similarity of job2vec vectors, searched
    on `device` (``_cosine_neighbors``)."""
    vectors = torch.empty_like(phi_t)
    for start in range(0, phi_t.shape[0], block):
        rows = phi_t[start : start + block]
        vectors[start : start + len(rows)] = torch.softmax(rows, dim=1)
    yield from _cosine_neighbors(vectors, k, block, "job_id", "neighbor_job_id", device)


def skill_neighbors(phi_t: Tensor, k: int, block: int, device: str = "cpu") -> Iterator[Columns]:
    """Each skill's k most similar other skills: cosine similarity of skill2vec vectors,
    searched on `device` (``_cosine_neighbors``)."""
    jobs, skills = phi_t.shape
    vectors = torch.empty(skills, jobs, dtype=phi_t.dtype)
    for start in range(0, skills, block):
        columns = _columns(phi_t, start, block)
        vectors[start : start + columns.shape[0]] = torch.softmax(columns, dim=1)
    yield from _cosine_neighbors(vectors, k, block, "skill_id", "neighbor_skill_id", device)


def beta_interval(p: Tensor, concentration: Tensor) -> tuple[Tensor, Tensor]:
    """Central INTERVAL_LEVEL interval of Beta(A p, A (1 - p)), A = `concentration` (same
    shape as `p`, or broadcastable); float64.

    The logit of a Beta(a, b) variable is log X - log Y with X ~ Gamma(a), Y ~ Gamma(b), whose
    cumulants are exact: mean digamma(a) - digamma(b), variance trigamma(a) + trigamma(b),
    third cumulant psi''(a) - psi''(b). Its quantiles come from the Cornish-Fisher expansion to
    the skewness term, mapped back by the logistic: each tail within 0.01 of its 5% for a and
    b down to 1 (tests/test_segments.py checks it against Beta draws).
    """
    a = (concentration.double() * p.double()).clamp_min(1e-12)
    b = (concentration.double() * (1.0 - p.double())).clamp_min(1e-12)
    mean = torch.special.digamma(a) - torch.special.digamma(b)
    variance = torch.special.polygamma(1, a) + torch.special.polygamma(1, b)
    skew = (torch.special.polygamma(2, a) - torch.special.polygamma(2, b)) / variance**1.5
    shift = (_Z * _Z - 1.0) * skew / 6.0
    sd = variance.sqrt()
    return torch.sigmoid(mean + sd * (shift - _Z)), torch.sigmoid(mean + sd * (shift + _Z))


def _top_k(
    rows: Tensor, log_total: Tensor, first_id: int, k: int, row_key: str, item_key: str
) -> Columns:
    """The k largest entries of each row, ranked from 1 (ties: lower id first), with their
    softmax over the row (`log_total`: the rows' ``_log_totals``)."""
    k = min(k, rows.shape[1])
    items = top_k(rows, k)
    weights = rows.gather(1, items)
    probability = torch.exp(weights.double() - log_total[:, None])
    ids = torch.arange(first_id, first_id + rows.shape[0], dtype=torch.int32)
    return {
        row_key: ids.repeat_interleave(k).numpy(),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), rows.shape[0]),
        item_key: items.reshape(-1).to(torch.int32).numpy(),
        "weight": weights.reshape(-1).numpy(),
        "probability": probability.reshape(-1).numpy(),
    }


def _log_totals(rows: Tensor) -> Tensor:
    """(B,) float64: log of the sum of exp over each row of `rows`, in double.

    A few rows at a time, each piece's float64 copy about 1 MiB: logsumexp of a whole
    1,024 x 15,185 block in double took 3-4x as long (2026-12-02, paper-scale phi, 2 cores:
    about 130 ms against 30 ms), the same values to the bit."""
    totals = torch.empty(rows.shape[0], dtype=torch.float64)
    step = max(1, _PIECE_BYTES // (8 * max(1, rows.shape[1])))
    for start in range(0, rows.shape[0], step):
        totals[start : start + step] = torch.logsumexp(rows[start : start + step].double(), dim=1)
    return totals


def _columns(phi_t: Tensor, start: int, block: int) -> Tensor:
    """phi_t[:, start:start + block] transposed (skills x jobs), as a contiguous copy.

    Copied in bands of _BAND_JOBS rows: torch's copy of the whole strided view took about 4x
    as long (2026-12-02, paper scale, 1,024 skills: 155 ms against 40 ms)."""
    part = phi_t[:, start : start + block]
    copy = torch.empty(part.shape[1], part.shape[0], dtype=part.dtype)
    for first in range(0, part.shape[0], _BAND_JOBS):
        copy[:, first : first + _BAND_JOBS] = part[first : first + _BAND_JOBS].T
    return copy


def _cosine_neighbors(
    vectors: Tensor, k: int, block: int, key: str, neighbor_key: str, device: str
) -> Iterator[Columns]:
    """Top-k cosine neighbours of every row of `vectors` (normalised in place), self excluded.

    On `device`: a GPU takes a copy of the vectors and does the products and the top-k
    there (float32, no TF32 unless torch is set so), the results come back for the columns.

    The similarities are exact (float32), and symmetric: each pair of row blocks is
    multiplied once, its product serving the rows of both blocks, which halves the
    multiply-adds of the full product (compute-bound: 2026-12-01, paper scale, this 2-core
    machine, 12.5 s -> 7.5 s for jobs). Each row keeps its best k so far; a similarity may
    differ from the full product's by float32's rounding (measured: at most 3e-6).
    """
    vectors = vectors.to(device)
    vectors.div_(vectors.norm(dim=1, keepdim=True).clamp_min(torch.finfo(vectors.dtype).tiny))
    n = vectors.shape[0]
    k = min(k, n - 1)  # 0 when there is a single row: blocks of no rows, with their columns
    best = torch.full((n, k), -torch.inf, dtype=vectors.dtype, device=vectors.device)
    best_ids = torch.full((n, k), -1, dtype=torch.int64, device=vectors.device)

    def keep(first: int, values: Tensor, ids: Tensor) -> None:
        """Merge candidate (values, ids) of rows first.. into the best k of each."""
        rows = slice(first, first + values.shape[0])
        values, ids = torch.cat([best[rows], values], 1), torch.cat([best_ids[rows], ids], 1)
        top, where = torch.topk(values, k, dim=1)
        best[rows], best_ids[rows] = top, ids.gather(1, where)

    for start in range(0, n, block):
        rows = vectors[start : start + block]
        for other in range(start, n, block):
            similarity = rows @ vectors[other : other + block].T
            if other == start:
                similarity.fill_diagonal_(-torch.inf)
            values, ids = torch.topk(similarity, min(k, similarity.shape[1]), dim=1)
            keep(start, values, ids + other)
            if other != start:
                values, ids = torch.topk(similarity, min(k, similarity.shape[0]), dim=0)
                keep(other, values.T, ids.T + start)
    similarities, order = torch.sort(best, dim=1, descending=True, stable=True)
    neighbors, similarities = best_ids.gather(1, order).cpu(), similarities.cpu()
    for start in range(0, n, block):
        count = min(block, n - start)
        yield {
            key: torch.arange(start, start + count, dtype=torch.int32).repeat_interleave(k).numpy(),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), count),
            neighbor_key: neighbors[start : start + count].reshape(-1).to(torch.int32).numpy(),
            "similarity": similarities[start : start + count]
            .reshape(-1)
            .double()
            .clamp(-1, 1)
            .numpy(),
        }


def top_k(scores: Tensor, k: int) -> Tensor:
    """(B, min(k, S)) column ids of the highest scores per row, best first; ties go to the
    lower column id, which ``torch.topk`` does not promise."""
    b, width = scores.shape
    k = min(k, width)
    # One more than k: a row's (k+1)-th score equals its k-th exactly when more skills tie at
    # the k-th score than the top k holds. Then which of them topk took is arbitrary: those
    # rows (rare with real-valued scores) take the lowest ids instead. (Counting the ties over
    # the whole row took a quarter of evaluate's planted-truth check.)
    values, ids = torch.topk(scores, min(k + 1, width), dim=1)
    # nan compares false with everything: the selection below would come out short. topk
    # ranks nan above every number (PyTorch's CPU comparator, whatever the sign bit), so a row
    # holding one has it first; on another device the whole matrix is checked.
    first = values[:, :1] if scores.device.type == "cpu" else scores
    if bool(torch.isnan(first).any()):
        raise ValueError("scores hold nan: cannot rank")
    threshold = values[:, k - 1 : k]
    ambiguous = (values[:, k:] == threshold).any(dim=1).nonzero()
    ids = ids[:, :k]
    if ambiguous.numel():
        rows = ambiguous[:, 0]
        ids[rows] = _lowest_ids_at_threshold(scores[rows], threshold[rows], k)
    ids = ids.sort(dim=1).values  # ascending id, so that the stable sort breaks ties by id
    order = torch.sort(scores.gather(1, ids), dim=1, descending=True, stable=True).indices
    return ids.gather(1, order)


def _lowest_ids_at_threshold(scores: Tensor, threshold: Tensor, k: int) -> Tensor:
    """(R, k) ids of each row's scores above `threshold`, then of those equal to it, lowest
    ids first, up to k in all (ascending id order)."""
    above = scores > threshold
    tied = scores == threshold
    room = k - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (tied.to(torch.int32).cumsum(dim=1) <= room))
    return chosen.nonzero()[:, 1].view(scores.shape[0], k)
