"""The mixture family's math: a profile's skills as the union of its jobs' skills.

A profile with job distribution w (its titles' weights, summing to 1) lists skill s with

    p(s | profile) = lam * p0(s) + (1 - lam) * sum_j w_j theta_j(s)

p0 is the background: the share of training skill mentions that are s (what every profile
lists, whatever its jobs); theta_j is title j's own skill distribution. EM fits theta: the
E-step splits the credit for every listed skill between the background and the profile's
titles in proportion to the terms above; the M-step sets

    theta_j = (c_j + alpha * m_j) / (n_j + alpha)

with c_j the credit title j received (its expected counts), n_j = sum_s c_j(s), and m_j the
title's prior, a distribution with strength alpha (pseudo-counts). This is MAP-EM: every
iteration raises (never lowers) the training log-likelihood plus sum_j alpha m_j . log theta_j
(``objective``). Everything works on the sparse (profile, title, skill) triples of a batch;
theta is never needed beyond the entries the triples name.

Priors: p0 for every title (``skillrank.trainer.popularity``); ``word_prior``: for titles
sharing a word with other titles ("senior java developer", "java developer"), the credit
pooled over those other titles; or ``neighbour_prior``: the theta of the titles whose skills
best explain the title's own credit ("flight lieutenant" -> "air force officer", words or
not). Either way a title seen twice borrows what its relatives are known for.
"""

from __future__ import annotations

import math
import re
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
import torch.distributed as dist
from torch import Tensor

from skillrank.checkpoint import save_best
from skillrank.config import TrainConfig
from skillrank.evaluate import mixture_of
from skillrank.model import Batch
from skillrank.shards import Manifest, iterate_batches, read_ahead, read_vocabulary
from skillrank.trainer import (
    SELECTION_K,
    EpochRecord,
    Ranks,
    TrainResult,
    score_split,
    skill_popularity,
    training_device,
)

# Profiles per batch of an EM pass: the triples of one batch (a few MB) are all it holds.
_PASS_BATCH = 16384
# A process training alone.
_ALONE = Ranks()
# Titles whose theta a title's neighbour prior mixes: the nearest few in skill space.
_NEIGHBOURS = 5
# Titles per block of the neighbour search: each block scores its titles against every title.
_NEIGHBOUR_BLOCK = 1024
# A skill credited to more titles than this is scored in the neighbour search by a dense
# product, the others by a sparse one (on a paper-scale credit, 235 of 15,185 skills: 1.1 s
# dense + 1.5 s sparse per search, against 0.3 + 4.5 s with every skill sparse and 3.9 +
# 0.6 s with 500 here; 2026-12-04, 2 cores, a scratch timing).
_DENSE_SKILL_TITLES = 2000
# Words of a title that say nothing about the job's skills.
_STOP_WORDS = frozenset(
    "a an and at for from in of on or the to with senior junior lead head chief assistant"
    " trainee apprentice associate principal".split()
)


@dataclass(frozen=True)
class Triples:
    """The (profile, title, skill) triples of a batch, one per listed skill and title.

    entry (T,): index of the (profile, skill) entry, 0..E-1 in the batch's skill order;
    flat (T,): j * S + s, the triple's cell of a J x S matrix; weight (T,): the title's w_j;
    job (T,) and skill (E,) ids; profile (E,): the profile of each entry; sizes (B,): skills
    per profile.
    """

    entry: Tensor
    flat: Tensor
    weight: Tensor
    job: Tensor
    skill: Tensor
    profile: Tensor
    sizes: Tensor


@dataclass(frozen=True)
class EStep:
    """What one pass of the E-step adds up: the credit per (title, skill) cell, the log
    likelihood, and the per-profile KL (the training loss of the softmax family)."""

    counts: Tensor
    log_likelihood: float
    kl_sum: float
    profiles: int


def batch_triples(batch: Batch, skills: int) -> Triples:
    """The triples of a batch: every listed skill paired with every title of its profile."""
    device = batch.skill_ids.device
    sizes = torch.diff(batch.skill_offsets)
    jobs_per_profile = torch.diff(batch.job_offsets)
    profile = torch.repeat_interleave(torch.arange(batch.size, device=device), sizes)
    reps = jobs_per_profile[profile]
    entry = torch.repeat_interleave(torch.arange(profile.numel(), device=device), reps)
    first = torch.cumsum(reps, 0) - reps
    within = torch.arange(entry.numel(), device=device) - torch.repeat_interleave(first, reps)
    position = batch.job_offsets[profile[entry]] + within
    job = batch.job_ids[position]
    return Triples(
        entry=entry,
        flat=job * skills + batch.skill_ids[entry],
        weight=batch.job_weights[position],
        job=job,
        skill=batch.skill_ids,
        profile=profile,
        sizes=sizes,
    )


def theta_at(counts: Tensor, totals: Tensor, prior: Tensor, alpha: float, t: Triples) -> Tensor:
    """theta_j(s) at the triples' cells, from the credit `counts` (J x S), its row sums
    `totals` (J,) and `prior` (J x S, or 1 x S for one prior shared by every title)."""
    skills = counts.shape[1]
    prior_at = prior.view(-1)[t.flat] if prior.shape[0] > 1 else prior[0, t.flat % skills]
    dtype = counts.dtype  # float32 in training, float64 where a test wants exact sums
    return (counts.view(-1)[t.flat] + alpha * prior_at.to(dtype)) / (
        totals[t.job].to(dtype) + alpha
    )


def e_step(t: Triples, theta: Tensor, background: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """Credit of each triple (the share of its skill mention given to its title) and the
    predictive probability p(s | profile) of each (profile, skill) entry."""
    share = (1.0 - lam) * t.weight.to(theta.dtype) * theta
    p = (lam * background[t.skill].to(theta.dtype)).index_add_(0, t.entry, share)
    return share.div_(p[t.entry]), p


def profile_kl_sum(t: Triples, p: Tensor) -> float:
    """Sum over the batch's profiles of KL(t || p): t uniform over the profile's listed
    skills, p (E,) the predictive probability of each listed skill (``e_step``)."""
    sizes = t.sizes.double()
    mean_log_p = torch.zeros(sizes.numel(), dtype=torch.float64, device=p.device).index_add_(
        0, t.profile, p.log().double()
    )
    return float((-sizes.log() - mean_log_p / sizes).sum())


def accumulate(
    batches: Iterable[Batch],
    counts: Tensor,
    totals: Tensor,
    prior: Tensor,
    alpha: float,
    background: Tensor,
    lam: float,
) -> EStep:
    """One E-step pass over `batches` (on counts' device) with the current (counts, prior): the
    new credit (J x S, of counts' dtype), and the log-likelihood and summed per-profile KL of
    the current theta."""
    jobs, skills = counts.shape
    new = torch.zeros(jobs * skills, dtype=counts.dtype, device=counts.device)
    log_likelihood, kl_sum, profiles = 0.0, 0.0, 0
    for batch in batches:
        if batch.size == 0:
            continue
        t = batch_triples(batch, skills)
        credit, p = e_step(t, theta_at(counts, totals, prior, alpha, t), background, lam)
        new.index_add_(0, t.flat, credit)
        log_likelihood += float(p.log().double().sum())
        kl_sum += profile_kl_sum(t, p)
        profiles += batch.size
    return EStep(new.view(jobs, skills), log_likelihood, kl_sum, profiles)


def theta_matrix(counts: Tensor, totals: Tensor, prior: Tensor, alpha: float) -> Tensor:
    """Every theta_j (J x S, float32; rows sum to 1)."""
    scaled = alpha * prior
    # One J x S temporary where the prior is one already (a title prior), not two.
    theta = scaled.add_(counts) if scaled.shape == counts.shape else counts + scaled
    return theta.div_((totals + alpha)[:, None])


def objective(
    log_likelihood: float, counts: Tensor, totals: Tensor, prior: Tensor, alpha: float
) -> float:
    """What MAP-EM raises: the log-likelihood (at theta of `counts`) plus the log prior
    sum_j sum_s alpha m_j(s) log theta_j(s) (the Dirichlet's, up to a constant)."""
    theta = theta_matrix(counts.double(), totals.double(), prior.double(), alpha)
    return log_likelihood + float((alpha * prior.double() * theta.log()).sum())


def title_words(titles: Sequence[str]) -> list[list[str]]:
    """The informative words of each title: lower-case alphanumeric runs, stop words and
    seniority markers left out, each word once."""
    out = []
    for title in titles:
        words = re.findall(r"[^\W_]+", title.lower())
        out.append(list(dict.fromkeys(w for w in words if w not in _STOP_WORDS and len(w) > 1)))
    return out


def word_prior(counts: Tensor, titles: Sequence[str], base: Tensor, beta: float) -> Tensor:
    """Each title's prior (J x S, float32, rows sum to 1) from the titles that share its words.

    For a word w held by at least two titles, P_w^(-j) is the credit pooled over the titles
    holding w other than j itself, smoothed toward `base` (S,) with strength `beta`; title
    j's prior is the mean of P_w^(-j) over its words, each weighted by log(J / titles with w)
    (a rarer word is a closer relative). A title sharing no word has prior `base`.
    """
    jobs, skills = counts.shape
    words = title_words(titles)
    holders: dict[str, list[int]] = defaultdict(list)
    for j, ws in enumerate(words):
        for w in ws:
            holders[w].append(j)
    shared = {w: js for w, js in holders.items() if len(js) >= 2}
    index = {w: i for i, w in enumerate(sorted(shared))}
    totals = counts.double().sum(dim=1)
    pool = torch.zeros(len(index), skills, dtype=torch.float64)
    pool_total = torch.zeros(len(index), dtype=torch.float64)
    for w, i in index.items():
        rows = torch.tensor(shared[w])
        pool[i] = counts[rows].double().sum(dim=0)
        pool_total[i] = totals[rows].sum()
    idf = {w: math.log(jobs / len(js)) for w, js in shared.items()}
    base64 = base.double()
    prior = base[None, :].repeat(jobs, 1)
    for j, title_words_j in enumerate(words):
        ws = [w for w in title_words_j if w in index]
        if not ws:
            continue
        a = torch.tensor([idf[w] for w in ws], dtype=torch.float64)
        a = a / a.sum() if a.sum() > 0 else torch.full_like(a, 1.0 / len(ws))
        rows = torch.tensor([index[w] for w in ws])
        others = (pool[rows] - counts[j].double()).clamp_min(0.0)
        others_total = (pool_total[rows] - totals[j]).clamp_min(0.0)
        prior[j] = (a @ ((others + beta * base64) / (others_total + beta)[:, None])).float()
    return prior


def neighbour_prior(
    counts: Tensor, totals: Tensor, p0: Tensor, alpha: float, base: Tensor
) -> Tensor:
    """Each title's prior (J x S, float32, rows sum to 1) from the titles nearest in skill space.

    `counts` (J x S) is the credit, `totals` (J,) its row sums, and theta the popularity
    phase's: theta_k(s) = (c_k(s) + alpha p0(s)) / (n_k + alpha). Title k's score for title j
    is sum_s c_j(s) log theta_k(s): the log-likelihood of the credit j received under k's skill
    distribution. j's prior mixes the theta_k of the _NEIGHBOURS highest-scoring titles k other
    than j, weighted by the softmax of their scores (in practice the best one nearly always).
    A title with no credit (and the one title of a one-title vocabulary) has prior `base` (S,).

    With g_k(s) = log(1 + c_k(s) / (alpha p0(s))), zero where k has no credit, the score is
    sum_s c_j(s) g_k(s) - n_j log(n_k + alpha) plus a term of j alone, which changes neither
    the choice nor the weights. So it takes a product of two sparse matrices: C G^T, over the
    pairs of titles credited with the same skill. The few skills credited to more than
    _DENSE_SKILL_TITLES titles go through a dense product instead, which costs J x J per skill
    whatever the pairs. The mixing is sparse too: theta_k = (c_k + alpha p0) / (n_k + alpha).
    """
    jobs, skills = counts.shape
    prior = base[None, :].repeat(jobs, 1)
    if jobs < 2:
        return prior
    with warnings.catch_warnings():  # CSR is "in beta state"; its products are exact here
        warnings.filterwarnings("ignore", "Sparse CSR tensor support", UserWarning)
        credit = counts.to_sparse_csr()
        scale = alpha * p0
        crow, col, value = credit.crow_indices(), credit.col_indices(), credit.values()
        wide = torch.bincount(col, minlength=skills) > _DENSE_SKILL_TITLES
        wide_ids = wide.nonzero().squeeze(1)
        wide_counts = counts.index_select(1, wide_ids)
        wide_gain_t = torch.log1p(wide_counts / scale[wide_ids]).t().contiguous()
        row = torch.repeat_interleave(torch.arange(jobs), crow.diff())
        narrow = ~wide[col]
        row, col, value = row[narrow], col[narrow], value[narrow]
        gain_t = _csr_of(col, row, torch.log1p(value / scale[col]), (skills, jobs))
        first = torch.zeros(jobs + 1, dtype=torch.int64)  # where each title's entries start
        first[1:] = torch.cumsum(torch.bincount(row, minlength=jobs), 0)
        log_mass = (totals + alpha).log().float()
        n = min(_NEIGHBOURS, jobs - 1)
        for lo in range(0, jobs, _NEIGHBOUR_BLOCK):
            hi = min(lo + _NEIGHBOUR_BLOCK, jobs)
            a, b = int(first[lo]), int(first[hi])
            block = torch.sparse_csr_tensor(
                first[lo : hi + 1] - a, col[a:b], value[a:b], (hi - lo, skills),
                check_invariants=False,
            )  # fmt: skip
            scores = (wide_counts[lo:hi] @ wide_gain_t).addmm_(block, gain_t)
            scores -= totals[lo:hi, None].float() * log_mass[None, :]
            rows = torch.arange(hi - lo)
            scores[rows, rows + lo] = -math.inf  # never itself
            top = scores.topk(n, dim=1)
            ids, order = top.indices.sort(dim=1)  # a CSR row's columns in order
            share = torch.softmax(top.values, dim=1).gather(1, order) / (
                totals.float()[ids] + alpha
            )
            credited = totals[lo:hi] > 0
            share[~credited] = 0.0
            mixed = prior[lo:hi]
            mixed[credited] = (alpha * share[credited].sum(dim=1))[:, None] * p0[None, :]
            weights = torch.sparse_csr_tensor(
                torch.arange(0, (hi - lo) * n + 1, n), ids.reshape(-1), share.reshape(-1),
                (hi - lo, jobs), check_invariants=False,
            )  # fmt: skip
            mixed.addmm_(weights, credit)
    return prior


def _csr_of(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix of `shape` from entries in any order (no two at the same cell)."""
    coo = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, shape, check_invariants=False
    )  # fmt: skip
    return coo.coalesce().to_sparse_csr()


def train_mixture(
    manifest_path: Path,
    params: TrainConfig,
    checkpoint_path: Path,
    *,
    resume: bool = False,
    device: str | None = None,
    config_json: str | None = None,
    log: TextIO = sys.stderr,
    ranks: Ranks = _ALONE,
) -> TrainResult:
    """Fit the mixture by EM on the manifest's train split, one streamed pass per iteration.

    Iterations (epochs) run until validation NDCG@10 has not improved by more than
    params.min_improvement for params.patience iterations, or params.max_epochs. With
    title_prior "neighbours" or "words" a first phase uses the popularity prior and ends at its
    first iteration that does not improve validation NDCG@10; then each title's prior becomes
    ``neighbour_prior`` (or ``word_prior``) of the credit so far and EM goes on, with the
    stopping rule above.
    The iteration with the best validation NDCG@10 is returned: phi_t = log theta (J x S),
    background = log p0; the test split is never read. With several ranks each reads its
    share of the shards and the credit is summed across them; rank 0 writes the best
    iteration's file for the driver (``with_best_phi``). The fit takes under a minute at paper
    scale, so there is nothing to resume: `resume` is refused.

    On `device` (else params.device) a GPU holds the credit and theta and runs the E-step
    passes and the validation scoring; the title priors are built once, on the CPU. The fit is
    deterministic on the CPU; on a GPU the credit's scatter-adds run in no fixed order, so two
    fits agree to float32 rounding, not bit for bit.
    """
    if resume:
        raise ValueError("--resume applies to train.model=softmax; a mixture fit starts over")
    target = training_device(device, params)
    manifest = Manifest.read(manifest_path)
    if manifest.rows.get("validation", 0) == 0:
        raise ValueError(f"manifest {manifest_path}: the validation split is empty")
    jobs, skills = manifest.jobs, manifest.skills
    lam, alpha = params.background_weight, params.prior_strength

    def train_batches() -> Iterator[Batch]:
        batches = iterate_batches(
            manifest.shards["train"], _PASS_BATCH, shuffle=False, rank=ranks.rank, world=ranks.world
        )
        if target.type == "cpu":
            return (batch for _, batch in batches)
        # The next batches are read and pinned in a thread while the GPU takes this one.
        return (b.to(target) for b in read_ahead(batch.pin_memory() for _, batch in batches))

    p0 = skill_popularity(manifest, _PASS_BATCH, ranks).to(target)
    background = p0.log()
    counts = torch.zeros(jobs, skills, dtype=torch.float32, device=target)
    totals = torch.zeros(jobs, dtype=torch.float64, device=target)
    prior, phase = p0[None, :], "popularity"
    history: list[EpochRecord] = []
    best: tuple[float, int, float, Tensor | None] = (-math.inf, 0, math.nan, None)
    bad_epochs, epoch = 0, 0
    while epoch < params.max_epochs:
        epoch += 1
        started = time.perf_counter()
        step = accumulate(train_batches(), counts, totals, prior, alpha, p0, lam)
        counts = step.counts
        if ranks.world > 1:
            dist.all_reduce(counts)
        kl_sum, profiles = ranks.sum([step.kl_sum, float(step.profiles)])
        totals = counts.sum(dim=1, dtype=torch.float64)
        theta = theta_matrix(counts, totals.float(), prior, alpha)
        method = mixture_of(theta, p0, lam, in_place=False)
        validation_loss, ndcg = score_split(
            method, manifest, "validation", params.batch_size, ranks
        )
        del method
        seconds = time.perf_counter() - started
        history.append(EpochRecord(epoch, kl_sum / profiles, validation_loss, ndcg, seconds))
        improved = ndcg > best[0]
        bad_epochs = 0 if ndcg > best[0] + params.min_improvement else bad_epochs + 1
        if improved:
            best = (ndcg, epoch, validation_loss, theta)
        print(
            f"iteration {epoch} ({phase} prior) train_loss={kl_sum / profiles:.6f}"
            f" validation_loss={validation_loss:.6f} validation_ndcg@{SELECTION_K}={ndcg:.6f}"
            f" seconds={seconds:.2f}" + (" (best)" if improved else ""),
            file=log,
            flush=True,
        )
        del theta
        if phase == "popularity" and params.title_prior != "popularity" and not improved:
            # This phase only has to attribute the credit that the title priors pool.
            switched = time.perf_counter()
            base = (
                counts.sum(dim=0, dtype=torch.float64) + params.word_prior_strength * p0.double()
            ) / (totals.sum() + params.word_prior_strength)
            cpu = torch.device("cpu")
            if params.title_prior == "words":
                titles, _ = read_vocabulary(manifest, "job")
                prior = word_prior(
                    counts.to(cpu), titles, base.float().to(cpu), params.word_prior_strength
                )
            else:
                prior = neighbour_prior(
                    counts.to(cpu), totals.to(cpu), p0.to(cpu), alpha, base.float().to(cpu)
                )
            prior = prior.to(target)
            phase, bad_epochs = params.title_prior, 0
            print(
                f"iteration {epoch}: each title's prior is now its {phase}'"
                f" ({time.perf_counter() - switched:.1f} s)",
                file=log,
            )
        elif bad_epochs >= params.patience:
            break
    best_ndcg, best_epoch, best_loss, best_theta = best
    if best_theta is None:
        raise ValueError("the validation NDCG was never a number")
    best_phi, background = best_theta.log_().cpu(), background.cpu()
    if ranks.world > 1 and ranks.rank == 0:
        save_best(checkpoint_path, best_epoch, best_phi, background.float())
    print(
        f"stopped after iteration {epoch}; best iteration {best_epoch}"
        f" validation_ndcg@{SELECTION_K}={best_ndcg:.6f} validation_loss={best_loss:.6f}",
        file=log,
    )
    return TrainResult(
        best_phi, background.float(), best_epoch, best_loss, best_ndcg, epoch, history
    )
