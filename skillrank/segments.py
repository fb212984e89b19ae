"""SkillRank per segment (city, industry): each title's skills within one segment.

The mixture family's theta_j (``skillrank.mixture``) pools every profile of title j. A
segment g (one city, or one industry) gets its own row for title j, shrunk toward the pooled
one:

    theta_gj = (c_gj + beta * theta_j) / (n_gj + beta)

with c_gj the credit title j receives from the training profiles of segment g in one E-step
at the pooled model (each listed skill's credit split between the profile's titles and the
background, as in the pooled fit) and n_gj = sum_s c_gj(s); beta is the prior's strength in
pseudo-counts. This is one EM step from the pooled model with theta_j as each row's prior: a
title seen in few profiles of a segment keeps the pooled ranking, one seen in many gets the
segment's own. (Further EM steps, each attributing a profile's skills with its segment's
rows, scored worse on the validation split of a crawl with planted city skills: validation
KL 1.801 after one step, 1.810 after two, 1.820 after four, at beta 100; docs/trainer.md.)
Each segment type (city, industry) is its own model, with its own beta, the one of
`strengths` whose rows give the validation profiles the lowest KL (``segment_kl``);
profiles without a value are left out.

The interval of a published probability is ``skillrank.rankings.beta_interval`` with the
row's concentration n_gj + beta, and its rank range follows from the intervals
(``skillrank.rankings.interval_columns``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from skillrank.mixture import batch_triples, e_step, profile_kl_sum
from skillrank.model import Batch
from skillrank.rankings import Columns, interval_columns, next_after_top, top_k

# (segment, title) rows per block of the rankings: a block holds block x skills doubles.
_BLOCK = 256


@dataclass(frozen=True)
class SegmentFit:
    """What one E-step at the pooled model adds up over the training profiles.

    keys (N,) ascending: (g * J + j) * S + s of every (segment, title, skill) cell some
    profile names; credit (N,): its credit; support (N,): training profiles
    of segment g holding both title j and skill s; profiles (G, J): training profiles of
    segment g holding title j; title_credit (J,): the pooled credit n_j of each title at the
    published theta (the first pass), for the pooled rows' intervals.
    """

    segments: int
    keys: Tensor
    credit: Tensor
    support: Tensor
    profiles: Tensor
    title_credit: Tensor

    def totals(self, jobs: int, skills: int) -> Tensor:
        """n_gj: the credit of each (segment, title) row, (G, J) float64."""
        out = torch.zeros(self.segments * jobs, dtype=torch.float64)
        out.index_add_(0, torch.div(self.keys, skills, rounding_mode="floor"), self.credit)
        return out.view(self.segments, jobs)


def fit_segments(
    batches: Iterable[tuple[list[str], Batch]],
    segment_of: Callable[[list[str]], Tensor],
    segments: int,
    theta: Tensor,
    background: Tensor,
    lam: float,
) -> SegmentFit:
    """The credit of every (segment, title, skill) cell in one E-step at the pooled model
    (`theta`, J x S; p0 `background`; `lam`), over the training profiles of `batches`.

    `segment_of(profile_ids)` gives their segments, (B, types) int64 in [0, segments) or -1
    where a profile has no value: a profile counts once per type.
    """
    jobs, skills = theta.shape
    none = segments  # the cells of profiles without a value: counted, never published
    cells, shares = [], []
    profiles = torch.zeros((segments + 1) * jobs, dtype=torch.int64)
    title_credit = torch.zeros(jobs, dtype=torch.float64)
    for profile_ids, batch in batches:
        if batch.size == 0:
            continue
        t = batch_triples(batch, skills)
        share, _ = e_step(t, theta.view(-1)[t.flat].double(), background.double(), lam)
        title_credit.index_add_(0, t.job, share)
        holders = torch.repeat_interleave(torch.arange(batch.size), torch.diff(batch.job_offsets))
        of_profile = segment_of(profile_ids)
        for column in torch.where(of_profile < 0, none, of_profile).unbind(1):
            cells.append(column[t.profile[t.entry]] * (jobs * skills) + t.flat)
            shares.append(share)
            profiles.index_add_(
                0, column[holders] * jobs + batch.job_ids, torch.ones_like(batch.job_ids)
            )
    if cells:
        keys, inverse = torch.unique(torch.cat(cells), sorted=True, return_inverse=True)
    else:
        keys, inverse = torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    credit = torch.zeros(keys.numel(), dtype=torch.float64)
    credit.index_add_(0, inverse, torch.cat(shares) if shares else credit[:0])
    support = torch.bincount(inverse, minlength=keys.numel())
    fit = SegmentFit(segments + 1, keys, credit, support, profiles.view(-1, jobs), title_credit)
    return _without_none(fit, jobs, skills)


def _without_none(fit: SegmentFit, jobs: int, skills: int) -> SegmentFit:
    """The fit without the cells of profiles that have no segment (the last index)."""
    segments = fit.segments - 1
    inside = fit.keys < segments * jobs * skills
    return SegmentFit(
        segments,
        fit.keys[inside],
        fit.credit[inside],
        fit.support[inside],
        fit.profiles[:segments],
        fit.title_credit,
    )


def _at(keys: Tensor, values: Tensor, cells: Tensor) -> Tensor:
    """values[i] where keys[i] == cell (keys ascending), 0 for cells not among the keys."""
    if keys.numel() == 0:
        return torch.zeros(cells.shape, dtype=values.dtype)
    at = torch.searchsorted(keys, cells).clamp_max(keys.numel() - 1)
    return torch.where(keys[at] == cells, values[at], torch.zeros((), dtype=values.dtype))


def segment_rankings(
    fit: SegmentFit, theta: Tensor, strengths: Tensor, min_profiles: int, k: int
) -> Iterator[Columns]:
    """The top k skills of every (segment, title) row held by >= `min_profiles` training
    profiles of the segment, with segment g's prior strength `strengths[g]`, as blocks of
    columns: segment_index, job_id, rank, skill_id, weight (log theta_gj), probability
    (theta_gj), probability_low, probability_high, rank_best, rank_worst (its interval and
    rank range, ``interval_columns``), lift (theta_gj / theta_j), support, profiles."""
    jobs, skills = theta.shape
    totals = fit.totals(jobs, skills).view(-1)
    rows = torch.nonzero(fit.profiles.view(-1) >= min_profiles).view(-1)  # g * J + j, ascending
    cell_row = torch.div(fit.keys, skills, rounding_mode="floor")
    k = min(k, skills)
    for start in range(0, rows.numel(), _BLOCK):
        block = rows[start : start + _BLOCK]
        job = block % jobs
        pooled = theta[job].double()
        lo = int(torch.searchsorted(fit.keys, block[0] * skills))
        hi = int(torch.searchsorted(fit.keys, (block[-1] + 1) * skills))
        at = torch.searchsorted(block, cell_row[lo:hi]).clamp_max(block.numel() - 1)
        mine = block[at] == cell_row[lo:hi]
        position = at[mine] * skills + fit.keys[lo:hi][mine] % skills
        counts = torch.zeros(block.numel() * skills, dtype=torch.float64)
        counts.index_add_(0, position, fit.credit[lo:hi][mine])
        held = torch.zeros(block.numel() * skills, dtype=torch.int64)
        held.index_add_(0, position, fit.support[lo:hi][mine])
        strength = strengths.double()[torch.div(block, jobs, rounding_mode="floor")][:, None]
        concentration = totals[block][:, None] + strength
        theta_g = (counts.view(-1, skills) + strength * pooled) / concentration
        top = top_k(theta_g, k)
        probability = theta_g.gather(1, top)
        next_p = next_after_top(theta_g, k).clamp_min(0.0)
        intervals = interval_columns(probability, concentration, next_p)
        n = block.numel()
        yield {
            "segment_index": np.repeat(torch.div(block, jobs, rounding_mode="floor").numpy(), k),
            "job_id": np.repeat(job.numpy().astype(np.int32), k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
            "skill_id": top.reshape(-1).numpy().astype(np.int32),
            "weight": probability.log().reshape(-1).numpy().astype(np.float32),
            "probability": probability.reshape(-1).numpy(),
            **intervals,
            "lift": (probability / pooled.gather(1, top)).reshape(-1).numpy(),
            "support": held.view(-1, skills).gather(1, top).reshape(-1).numpy(),
            "profiles": np.repeat(fit.profiles.view(-1)[block].numpy(), k),
        }


def segment_kl(
    batches: Iterable[tuple[list[str], Batch]],
    segment_of: Callable[[list[str]], Tensor],
    fit: SegmentFit,
    theta: Tensor,
    background: Tensor,
    lam: float,
    strengths: Sequence[float],
) -> tuple[np.ndarray, float, int]:
    """Mean KL of held-out profiles (`batches`, the validation split) under each segment
    type's rows with each prior strength, (types, strengths); under the pooled model; and how
    many profiles were scored. A profile without a value for a type is scored with the pooled
    rows there. Lower is better."""
    jobs, skills = theta.shape
    totals = fit.totals(jobs, skills).view(-1)
    background64 = background.double()
    kl: list[list[float]] = []
    kl_pooled, count = 0.0, 0
    for profile_ids, batch in batches:
        if batch.size == 0:
            continue
        t = batch_triples(batch, skills)
        pooled = theta.view(-1)[t.flat].double()
        kl_pooled += profile_kl_sum(t, e_step(t, pooled, background64, lam)[1])
        for i, column in enumerate(segment_of(profile_ids).unbind(1)):
            g = column[t.profile[t.entry]]
            inside = g >= 0
            credit = _at(fit.keys, fit.credit, g.clamp_min(0) * (jobs * skills) + t.flat)
            total = totals[g.clamp_min(0) * jobs + t.job]
            if i == len(kl):
                kl.append([0.0] * len(strengths))
            for j, strength in enumerate(strengths):
                theta_g = (credit + strength * pooled) / (total + strength)
                theta_at = torch.where(inside, theta_g, pooled)
                kl[i][j] += profile_kl_sum(t, e_step(t, theta_at, background64, lam)[1])
        count += batch.size
    if count == 0:
        return np.full((len(kl), len(strengths)), math.nan), math.nan, 0
    return (
        np.asarray(kl, dtype=np.float64).reshape(-1, len(strengths)) / count,
        kl_pooled / count,
        count,
    )
