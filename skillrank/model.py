"""The SkillRank model's math in one place: logits, the exact KL loss, its explicit gradient.

phi in R^{S x J} scores skill s for job title j. It is stored transposed, as ``phi_t`` of
shape (J, S), one row per job: a profile's logits are a weighted sum of a few job rows, so
the forward gather and the gradient scatter touch contiguous rows instead of strided columns.

A profile holds a distribution over job titles (``job_ids``, ``job_weights``, summing to 1)
and a set of skills. With x its job distribution and t the uniform distribution over its
skills::

    logits = phi x = sum_k w_k phi_t[job_k]          (S values)
    p      = softmax(logits)                          (over all S skills)
    loss   = KL(t || p) = sum_s t_s (log t_s - log p_s)

Over a batch of B profiles the loss is the mean of the per-profile KL. Its gradient with
respect to the logits of profile i is (p_i - t_i) / B, and with respect to job row j it is
sum over the (profile i, weight w) pairs holding j of w (p_i - t_i) / B. ``kl_loss_and_grad``
computes that directly, without autograd, in two parts that distributed training uses
apart: ``kl_loss_and_residual`` (the residuals p_i - t_i) and ``row_gradients`` (residuals to
job rows); ``kl_loss_autograd`` is the plain reference path.

The trainer's per-skill bias b (logits = b + sum_k w_k phi_t[job_k]) is one more row of
phi_t that every profile holds (``append_job``), so none of this, nor the fused kernel, needs
to know about it.

A batch is in CSR form (``Batch``): the job ids and weights of all profiles flattened, with
offsets marking where each profile starts, and the same for skill ids.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """B profiles in CSR form.

    job_ids (int64, n_jobs), job_weights (float, n_jobs), job_offsets (int64, B + 1);
    skill_ids (int64, n_skills), skill_offsets (int64, B + 1). Profile i's jobs are
    job_ids[job_offsets[i]:job_offsets[i + 1]], likewise for skills. Every profile holds
    at least one job and one skill (the shard contract guarantees both).
    """

    job_ids: Tensor
    job_weights: Tensor
    job_offsets: Tensor
    skill_ids: Tensor
    skill_offsets: Tensor

    @property
    def size(self) -> int:
        return self.job_offsets.numel() - 1

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """The same batch on `device`, with weights cast to `dtype` when given. A copy to a
        GPU from pinned memory (``pin_memory``) does not wait for the GPU's earlier work."""
        non_blocking = torch.device(device).type == "cuda"
        return Batch(
            job_ids=self.job_ids.to(device, non_blocking=non_blocking),
            job_weights=self.job_weights.to(
                device, dtype=dtype or self.job_weights.dtype, non_blocking=non_blocking
            ),
            job_offsets=self.job_offsets.to(device, non_blocking=non_blocking),
            skill_ids=self.skill_ids.to(device, non_blocking=non_blocking),
            skill_offsets=self.skill_offsets.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """The same batch in page-locked host memory, for copies to a GPU."""
        return Batch(*(tensor.pin_memory() for tensor in dataclasses.astuple(self)))


def append_job(batch: Batch, job: int, weight: float) -> Batch:
    """The same profiles, each with one more job `job` of weight `weight`, after its own.

    The trainer's skill bias is such a job: a row of phi_t that every profile holds.
    """
    profiles = torch.arange(batch.size + 1, device=batch.job_offsets.device)
    job_offsets = batch.job_offsets + profiles
    own = torch.ones(batch.job_ids.numel() + batch.size, dtype=torch.bool, device=profiles.device)
    own[job_offsets[1:] - 1] = False  # each profile's last slot: the appended job
    job_ids = torch.full(own.shape, job, dtype=batch.job_ids.dtype, device=own.device)
    job_ids[own] = batch.job_ids
    job_weights = torch.full(own.shape, weight, dtype=batch.job_weights.dtype, device=own.device)
    job_weights[own] = batch.job_weights
    return Batch(job_ids, job_weights, job_offsets, batch.skill_ids, batch.skill_offsets)


def init_phi(jobs: int, skills: int, std: float, generator: torch.Generator) -> Tensor:
    """phi_t (jobs x skills, float32): normal(0, std) entries drawn from `generator`."""
    return torch.randn(jobs, skills, generator=generator, dtype=torch.float32).mul_(std)


def compute_logits(phi_t: Tensor, batch: Batch) -> Tensor:
    """(B, S) logits: for each profile, the job-weighted sum of its jobs' rows of phi_t."""
    return F.embedding_bag(
        batch.job_ids,
        phi_t,
        batch.job_offsets[:-1],
        mode="sum",
        per_sample_weights=batch.job_weights.to(phi_t.dtype),
    )


def kl_loss(phi_t: Tensor, batch: Batch) -> Tensor:
    """Mean over the batch of KL(uniform over the profile's skills || softmax(logits))."""
    return _kl_from_log_probs(torch.log_softmax(compute_logits(phi_t, batch), dim=1), batch)


def kl_loss_and_grad(phi_t: Tensor, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """The mean KL loss and its gradient with respect to phi_t, without autograd.

    Returns (loss, rows, row_grads): the gradient is sparse, row_grads[k] (S values) belongs
    to row rows[k] of phi_t; rows repeats when several profiles of the batch hold one job, and
    the full gradient is ``zeros_like(phi_t).index_add_(0, rows, row_grads)``.
    """
    loss, residual = kl_loss_and_residual(phi_t, batch)
    rows, row_grads = row_gradients(
        residual, batch.job_ids, batch.job_weights, batch.job_offsets, 1.0 / batch.size
    )
    return loss, rows, row_grads


def kl_loss_and_residual(phi_t: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """The mean KL loss and the (B, S) residual softmax - target of every profile.

    The residual is B times the gradient of the mean loss with respect to the logits; it is
    computed in place on the log-probabilities, one (B, S) buffer.
    """
    log_p = torch.log_softmax(compute_logits(phi_t, batch), dim=1)
    loss = _kl_from_log_probs(log_p, batch)
    residual = log_p.exp_()
    counts = torch.diff(batch.skill_offsets)
    # output_size: the sizes are known on the host, so a GPU need not be waited for.
    mentions = batch.skill_ids.numel()
    profile_of_skill = torch.repeat_interleave(
        torch.arange(batch.size, device=residual.device), counts, output_size=mentions
    )
    residual.index_put_(
        (profile_of_skill, batch.skill_ids),
        -(1.0 / counts.to(residual.dtype)).repeat_interleave(counts, output_size=mentions),
        accumulate=True,
    )
    return loss, residual


def row_gradients(
    residual: Tensor, job_ids: Tensor, job_weights: Tensor, job_offsets: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """The sparse gradient (rows, row_grads) of phi_t from the residuals of a batch's profiles
    (job_ids, job_weights, job_offsets in the CSR form of ``Batch``): profile i's residual,
    times each of its job weights and `scale`, goes to each of its job rows.

    With scale 1/B this is the gradient of the batch's mean loss.
    """
    job_counts = torch.diff(job_offsets)
    profile_of_job = torch.repeat_interleave(
        torch.arange(job_counts.numel(), device=residual.device),
        job_counts,
        output_size=job_ids.numel(),
    )
    weights = job_weights.to(residual.dtype) * scale
    return job_ids, residual[profile_of_job] * weights[:, None]


def kl_loss_autograd(phi_t: Tensor, batch: Batch) -> Tensor:
    """Reference path: the same loss from a dense target and ``F.kl_div``, for autograd."""
    logits = compute_logits(phi_t, batch)
    target = torch.zeros_like(logits)
    counts = torch.diff(batch.skill_offsets)
    rows = torch.repeat_interleave(torch.arange(batch.size, device=logits.device), counts)
    target[rows, batch.skill_ids] = (1.0 / counts.to(logits.dtype)).repeat_interleave(counts)
    return F.kl_div(torch.log_softmax(logits, dim=1), target, reduction="batchmean")


def _kl_from_log_probs(log_p: Tensor, batch: Batch) -> Tensor:
    # With t uniform over n skills: KL_i = sum_k (1/n)(log(1/n) - log p_k) = -log n - mean log p_k.
    counts = torch.diff(batch.skill_offsets)
    rows = torch.repeat_interleave(
        torch.arange(batch.size, device=log_p.device), counts, output_size=batch.skill_ids.numel()
    )
    picked = log_p[rows, batch.skill_ids]
    mean_log_p = torch.zeros(batch.size, dtype=log_p.dtype, device=log_p.device)
    mean_log_p.index_add_(0, rows, picked).div_(counts.to(log_p.dtype))
    per_profile = -torch.log(counts.to(log_p.dtype)) - mean_log_p
    return per_profile.mean()
