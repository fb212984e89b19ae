"""The training loop of the softmax family: learn phi (and a per-skill bias) from the shards
with early stopping on validation NDCG@10, checkpoint every epoch.

Reads only the shard manifest and its Parquet files (skillrank.shards), computes the loss
and its gradient with skillrank.model (or, for SGD on CPU, the fused kernel of
skillrank.kernel, which computes the same step), and writes one checkpoint file, replaced
atomically after every epoch. The best epoch's phi lives on disk beside it
(``best-epoch-<N>.pt``), not in memory, so training holds one copy of phi.

The model: a profile's logits are b + sum_k w_k phi_t[job_k] (job weights summing to 1).
With train.skill_bias, the bias b (S,) starts at log p0, the log of each skill's smoothed
share of the train split's skill mentions (``skillrank.trainer.popularity``), so that phi's
rows learn deviations from the background; without it b = 0. Training keeps b as one more
row of phi_t, row J, holding b / v, and every profile holds that row as one more job of
weight v = 1 / sqrt(batch_size) (``skillrank.model.append_job``): the loss, its gradient and
the fused kernel stay those of plain phi. Why v: SGD moves b by learning_rate * v^2 times the
gradient, here (learning_rate / batch_size) times the batch's mean residual, the step of a
title that one profile of the batch holds. With v = 1 the step would be batch_size times
that, and at a learning rate of 10,000 the bias of any skill whose mean predicted
probability exceeds 2 / 10,000 (the loss's curvature along b_s) would oscillate and diverge.

L2 (train.l2 = lambda >= 0): decoupled weight decay of phi_t's J rows, never of b. After each
epoch's n optimizer steps, phi_t[:J] *= (1 - learning_rate * lambda)^n: the shrinkage that
decaying every row by (1 - learning_rate * lambda) at every step (SGD on the loss plus
(lambda / 2) |phi|^2, the decay applied apart from the loss's gradient as in AdamW) gives over
the epoch, applied at once after the epoch's gradient steps rather than between them; one
pass over phi per epoch instead of one per step.

Selection: after every epoch the validation split is scored with ``score_split`` (the model as
``skillrank.evaluate.model_method("softmax", phi_t, b, 0)``): mean KL and NDCG@10. The epoch
of the highest NDCG@10 is the best; training stops after train.patience epochs without an
improvement of more than train.min_improvement, or after train.max_epochs.
``train(..., resume=True)`` continues from the checkpoint and, on CPU, reaches bit for bit
the phi of an uninterrupted run: the data order depends only on (seed, epoch), and the
checkpoint holds everything else that changes between epochs.

Data-parallel training: ``train_process`` is what each of the N processes that pyspark's
TorchDistributor starts runs (``ranks``: this process's rank of N). Each rank reads a disjoint
set of the train shards; every step, the ranks all-gather their profiles' residuals (the
gradient with respect to the logits) and job rows, and each applies the same update, that of
the union of their batches: the average of their gradients, weighted by profiles. Only rank 0
logs and writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import Tensor

from skillrank.config import TrainConfig
from skillrank.evaluate import (
    CoCounts,
    Method,
    cooccurrence_method,
    count_cooccurrences,
    model_method,
    profile_metrics,
)
from skillrank.kernel import Kernel, KernelUnavailable, load_kernel
from skillrank.model import (
    Batch,
    append_job,
    init_phi,
    kl_loss_and_grad,
    kl_loss_and_residual,
    row_gradients,
)
from skillrank.shards import Manifest, iterate_batches

CHECKPOINT_FORMAT = 4
# Cut-off of the selection metric: the best epoch has the highest validation NDCG@10.
SELECTION_K = 10
_CHECKPOINT_KEYS = {
    "format",
    "parameters",
    "phi_t",
    "background",
    "optimizer",
    "epoch",
    "best_validation_loss",
    "best_validation_ndcg",
    "best_epoch",
    "bad_epochs",
    "rng_state",
    "history",
    "train_config",
    "config",
    "shards",
}
# Seconds between progress updates: redrawn in place on a terminal, a line in a log file.
_PROGRESS_SECONDS = {True: 0.5, False: 30.0}
# What a rank that has run out of train profiles contributes to a distributed step.
_EMPTY_BATCH = Batch(
    job_ids=torch.zeros(0, dtype=torch.int64),
    job_weights=torch.zeros(0),
    job_offsets=torch.zeros(1, dtype=torch.int64),
    skill_ids=torch.zeros(0, dtype=torch.int64),
    skill_offsets=torch.zeros(1, dtype=torch.int64),
)
# Settings that may change on resume; any other difference is an error.
_RESUMABLE_CHANGES = {
    "device",
    "max_epochs",
    "patience",
    "min_improvement",
    "checkpoint_dir",
    "num_processes",
    "local_mode",
}


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes training together (torch.distributed)."""

    rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Each value summed over the ranks."""
        if self.world == 1:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.tolist()


@dataclass(frozen=True)
class EpochRecord:
    """One epoch (an EM iteration for the mixture): the mean KL on the train split, and the
    mean KL and NDCG@10 (the selection metric) on the validation split."""

    epoch: int
    train_loss: float
    validation_loss: float
    validation_ndcg: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """What every model family returns: phi_t of the best epoch (jobs x skills, on CPU), the
    background (S,; the softmax's skill bias, the mixture's log p0: see
    ``skillrank.evaluate.model_method``) and how training went."""

    phi_t: Tensor
    background: Tensor
    best_epoch: int
    best_validation_loss: float
    best_validation_ndcg: float
    epochs_run: int
    history: list[EpochRecord]


def train(
    manifest_path: Path,
    params: TrainConfig,
    checkpoint_path: Path,
    *,
    resume: bool = False,
    device: str | None = None,
    config_json: str | None = None,
    log: TextIO = sys.stderr,
    ranks: Ranks = Ranks(),
) -> TrainResult:
    """Train the softmax family on the manifest's train split; early stopping on validation
    NDCG@10.

    `device` overrides params.device. `config_json` (the whole configuration, as JSON) is
    stored in the checkpoint; it defaults to the train section. With `resume`, training
    continues from `checkpoint_path`, which must come from the same settings (only those of
    ``_RESUMABLE_CHANGES`` may differ: device, max_epochs, patience, min_improvement,
    checkpoint_dir, num_processes, local_mode). Returns the best
    epoch's phi_t (J x S) and skill bias (`background`, S; zeros without params.skill_bias),
    and its validation KL and NDCG@10; it never reads the test split. With `ranks` of a world
    > 1, this is one process of data-parallel training (see ``train_process``).
    """
    if params.model != "softmax":  # (every setting's range was checked on load)
        raise ValueError(f"train() trains train.model=softmax, got {params.model!r}")
    manifest = Manifest.read(manifest_path)
    for split in ("train", "validation"):
        if split not in manifest.shards:
            raise ValueError(f"manifest {manifest_path} has no {split!r} split")
    if manifest.rows["validation"] == 0:
        # Early stopping needs a validation score; without one no epoch could ever be best.
        raise ValueError(f"manifest {manifest_path}: the validation split is empty")
    target = torch.device(device or params.device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch sees no GPU")
    config_json = config_json or json.dumps(dataclasses.asdict(params), sort_keys=True)

    if ranks.world > len(manifest.shards["train"]):
        raise ValueError(
            f"the train split has {len(manifest.shards['train'])} shard files, fewer than the"
            f" {ranks.world} training processes: lower prepare.rows_per_shard and rerun prepare"
        )
    if len(manifest.shards["train"]) % ranks.world:
        print(
            f"warning: the train split's {len(manifest.shards['train'])} shard files do not"
            f" divide evenly among {ranks.world} processes: once the ranks with fewer run out,"
            " steps take fewer profiles (see prepare.rows_per_shard)",
            file=log,
        )
    # Distributed steps exchange residuals, which the fused kernel does not expose.
    kernel = _fused_kernel(params, target, log) if ranks.world == 1 else None
    shards = _shard_set(manifest)
    jobs, bias_weight = manifest.jobs, _bias_weight(params)
    if resume:
        if ranks.rank > 0:  # rank 0 first: it may set an unreadable checkpoint aside
            ranks.barrier()
        state = _load_checkpoint(checkpoint_path, params, log)
        if ranks.rank == 0:
            ranks.barrier()
        if state["shards"] != shards:
            raise ValueError(
                f"checkpoint {checkpoint_path} was trained on other shards ({state['shards']},"
                f" now {shards}); train without --resume"
            )
        phi_bias = state["parameters"].to(target)
        optimizer = _make_optimizer(phi_bias, params)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_state"])
        epoch, best_epoch, bad_epochs = state["epoch"], state["best_epoch"], state["bad_epochs"]
        best_loss, best_ndcg = state["best_validation_loss"], state["best_validation_ndcg"]
        history = [EpochRecord(**r) for r in json.loads(state["history"])]
        del state
        print(f"resumed from {checkpoint_path} after epoch {epoch}", file=log)
    else:
        # phi_bias: phi_t's J rows and the bias row b / bias_weight (see the module docstring).
        generator = torch.Generator().manual_seed(params.seed)
        phi_bias = init_phi(jobs + 1, manifest.skills, params.init_std, generator)
        if params.skill_bias:
            phi_bias[jobs] = skill_popularity(manifest, params.batch_size, ranks).log()
            phi_bias[jobs] /= bias_weight
        else:
            phi_bias[jobs] = 0.0
        phi_bias = phi_bias.to(target)
        optimizer = _make_optimizer(phi_bias, params)
        epoch, best_epoch, bad_epochs = 0, 0, 0
        best_loss, best_ndcg = math.nan, -math.inf
        history = []

    while epoch < params.max_epochs and bad_epochs < params.patience:
        epoch += 1
        started = time.perf_counter()
        train_loss, steps = _train_epoch(
            phi_bias, optimizer, kernel, manifest, params, epoch, log, ranks
        )
        if params.l2:
            # Decoupled weight decay, all of the epoch's steps at once; never on the bias.
            phi_bias[:jobs].mul_((1.0 - params.learning_rate * params.l2) ** steps)
        if ranks.world > 1:
            # Every rank applied the same updates; on GPU scatter-adds are not deterministic,
            # so rank 0's phi, the one checkpointed, is made everyone's.
            dist.broadcast(phi_bias, 0)
        validation_loss, validation_ndcg = _validation_scores(
            phi_bias, bias_weight, manifest, params.batch_size, ranks
        )
        seconds = time.perf_counter() - started
        history.append(EpochRecord(epoch, train_loss, validation_loss, validation_ndcg, seconds))
        # The highest validation NDCG is the best phi (nan, of a diverged phi, never is); only
        # an improvement of more than min_improvement resets the patience count.
        bad_epochs = 0 if validation_ndcg > best_ndcg + params.min_improvement else bad_epochs + 1
        improved = validation_ndcg > best_ndcg
        previous_best_epoch = best_epoch  # the best of the checkpoint about to be replaced
        if improved:
            best_loss, best_ndcg, best_epoch = validation_loss, validation_ndcg, epoch
        print(
            f"epoch {epoch} train_loss={train_loss:.6f} validation_loss={validation_loss:.6f}"
            f" validation_ndcg@{SELECTION_K}={validation_ndcg:.6f} seconds={seconds:.2f}"
            + (" (best)" if improved else ""),
            file=log,
            flush=True,
        )
        if ranks.rank > 0:
            continue
        saved = phi_bias.cpu()
        _save_checkpoint(
            checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                # What training resumes from; phi_t (a view of it: on disk once) and the
                # bias b are what ``with_best_phi`` reads, as from the mixture's best file.
                "parameters": saved,
                "phi_t": saved[:jobs],
                "background": saved[jobs] * bias_weight,
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "best_validation_loss": best_loss,
                "best_validation_ndcg": best_ndcg,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "rng_state": torch.get_rng_state(),
                "history": json.dumps([dataclasses.asdict(r) for r in history]),
                "train_config": json.dumps(dataclasses.asdict(params), sort_keys=True),
                "config": config_json,
                "shards": shards,
            },
            best_copy=_best_path(checkpoint_path, epoch) if improved else None,
            # A fresh run's first save replaces another run's checkpoint: not a fallback.
            keep_previous=resume or epoch > 1,
        )
        _remove_stale_best(checkpoint_path, {best_epoch, previous_best_epoch})

    if not best_epoch:
        raise ValueError(
            "the validation NDCG was never a number (phi diverged); lower train.learning_rate"
        )
    # Free the last epoch's phi (and optimizer state) before loading the best one.
    del optimizer, phi_bias
    ranks.barrier()  # rank 0 has written the best epoch's file
    best_phi_t, background = _load_best(checkpoint_path, best_epoch)
    why = (
        f"validation NDCG@{SELECTION_K} improved by at most {params.min_improvement}"
        f" for {params.patience} epochs"
        if bad_epochs >= params.patience
        else "max_epochs reached"
    )
    print(
        f"stopped after epoch {epoch} ({why}); best epoch {best_epoch}"
        f" validation_ndcg@{SELECTION_K}={best_ndcg:.6f} validation_loss={best_loss:.6f}",
        file=log,
    )
    return TrainResult(best_phi_t, background, best_epoch, best_loss, best_ndcg, epoch, history)


def train_process(
    family: Callable[..., TrainResult],
    manifest_path: str,
    params: TrainConfig,
    checkpoint_path: str,
    resume: bool,
    device: str,
    config_json: str,
) -> TrainResult:
    """One of the processes of data-parallel training, as TorchDistributor starts them
    (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT).

    Joins the process group (gloo on CPU, NCCL on GPU, one GPU per process), runs `family`
    (a training function of skillrank.families, ``train`` for the softmax) as its rank, and
    returns the result without phi (an empty tensor; phi is in the best
    epoch's checkpoint file, see ``with_best_phi``), so that nothing large is sent back.
    A process that fails leaves its error in one line beside the checkpoint (see
    ``process_errors``): on the executors, TorchDistributor tells the driver only that
    training failed.
    """
    cuda = torch.device(device).type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    ranks = Ranks(dist.get_rank(), dist.get_world_size())
    try:
        if cuda:
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
            torch.cuda.set_device(device)
        with open(os.devnull, "w") if ranks.rank else nullcontext(sys.stdout) as log:
            result = family(
                Path(manifest_path),
                params,
                Path(checkpoint_path),
                resume=resume,
                device=device,
                config_json=config_json,
                log=log,
                ranks=ranks,
            )
        ranks.barrier()  # leave together: gloo may abort a process whose peer has gone
        return dataclasses.replace(result, phi_t=torch.empty(0))
    except Exception as exc:
        error = _error_path(Path(checkpoint_path), ranks.rank)
        error.parent.mkdir(parents=True, exist_ok=True)
        error.write_text(f"rank {ranks.rank}: {type(exc).__name__}: {exc}".splitlines()[0])
        raise
    finally:
        dist.destroy_process_group()


def process_errors(checkpoint_path: Path) -> list[str]:
    """The one-line errors that the processes of a distributed run left, first written
    first: the process that failed first holds the cause, the others see it go."""
    files = sorted(_error_files(checkpoint_path), key=lambda f: f.stat().st_mtime_ns)
    return [f.read_text() for f in files]


def clear_process_errors(checkpoint_path: Path) -> None:
    """Remove the errors an earlier distributed run left (before a new one starts)."""
    for path in _error_files(checkpoint_path):
        path.unlink(missing_ok=True)


def _error_path(checkpoint_path: Path, rank: int) -> Path:
    return checkpoint_path.with_name(f"{checkpoint_path.name}.rank-{rank}.error")


def _error_files(checkpoint_path: Path) -> list[Path]:
    return list(checkpoint_path.parent.glob(f"{checkpoint_path.name}.rank-*.error"))


def with_best_phi(result: TrainResult, checkpoint_path: Path) -> TrainResult:
    """`result` (of ``train_process``) with the best epoch's phi_t and background read from
    its file."""
    phi_t, background = _load_best(checkpoint_path, result.best_epoch)
    return dataclasses.replace(result, phi_t=phi_t, background=background)


def score_split(
    method: Method, manifest: Manifest, split: str, batch_size: int, ranks: Ranks = Ranks()
) -> tuple[float, float]:
    """Mean KL and NDCG@SELECTION_K of `method` over the profiles of `split` (nan for an
    empty split), scored as the evaluate stage scores test profiles; with several ranks, each
    scores its share of the shards and the sums are added up."""
    batches = iterate_batches(
        manifest.shards[split], batch_size, shuffle=False, rank=ranks.rank, world=ranks.world
    )
    values = {
        r.metric: r.value
        for r in profile_metrics([method], batches, {}, [SELECTION_K])
        if r.segment == "all"
    }
    count = values["profiles"]
    sums = [values["kl"] * count, values["ndcg"] * count] if count else [0.0, 0.0]
    kl, ndcg, count = ranks.sum([*sums, count], method.title_scores.device)
    return (kl / count, ndcg / count) if count else (math.nan, math.nan)


def count_split(manifest: Manifest, split: str, batch_size: int) -> CoCounts:
    """The (title, skill) co-occurrence counts of a split's profiles (the count baselines)."""
    batches = iterate_batches(manifest.shards[split], batch_size, shuffle=False)
    return count_cooccurrences((batch for _, batch in batches), manifest.jobs, manifest.skills)


def cooccurrence_validation_ndcg(manifest: Manifest, smoothing: float, batch_size: int) -> float:
    """Validation NDCG@SELECTION_K of co-occurrence counting (counted on the train split,
    smoothed by `smoothing`), scored as score_split scores a model: the promotion gate's
    baseline."""
    method = cooccurrence_method(count_split(manifest, "train", batch_size), smoothing)
    return score_split(method, manifest, "validation", batch_size)[1]


def _train_epoch(
    phi_t: Tensor,
    optimizer: torch.optim.Optimizer,
    kernel: Kernel | None,
    manifest: Manifest,
    params: TrainConfig,
    epoch: int,
    log: TextIO,
    ranks: Ranks,
) -> tuple[float, int]:
    """One pass over the train split; returns the mean of the batch losses per profile and
    the number of optimizer steps.

    phi_t holds a row per job and, last, the bias row, which every profile holds with
    train.skill_bias. With several ranks, each reads its own shards in batches of
    batch_size / world profiles, and steps go on, in lockstep, until every rank has run out
    (a rank that has contributes an empty batch).
    """
    progress = _Progress(f"epoch {epoch}", manifest.rows["train"], log)
    batches = iterate_batches(
        manifest.shards["train"],
        -(-params.batch_size // ranks.world),
        shuffle=True,
        seed=params.seed,
        epoch=epoch,
        buffer_size=params.shuffle_buffer,
        rank=ranks.rank,
        world=ranks.world,
    )
    steps = 0
    if ranks.world > 1:
        while True:
            _, batch = next(batches, ([], _EMPTY_BATCH))
            profiles, loss = _distributed_step(
                phi_t, optimizer, _with_bias(batch, manifest.jobs, params), params
            )
            if not profiles:
                break
            steps += 1
            progress.update(profiles, loss)
    else:
        for _, batch in batches:
            # The epoch's last, smaller batch is a smaller step: in every step each profile
            # weighs 1 / batch_size, as in distributed steps.
            weight = min(1.0, batch.size / params.batch_size)
            batch = _with_bias(batch, manifest.jobs, params)
            if kernel is not None:
                loss = kernel.sgd_step(phi_t, batch, params.learning_rate * weight)
            else:
                loss = _torch_step(
                    phi_t, optimizer, batch.to(phi_t.device, phi_t.dtype), params, weight
                )
            steps += 1
            progress.update(batch.size, loss)
    if not progress.count:
        raise ValueError("the train split holds no profiles")
    return progress.finish(), steps


def _with_bias(batch: Batch, bias_row: int, params: TrainConfig) -> Batch:
    """`batch` with the bias row held by every profile; unchanged without train.skill_bias."""
    return append_job(batch, bias_row, _bias_weight(params)) if params.skill_bias else batch


def _bias_weight(params: TrainConfig) -> float:
    """The weight of the bias row in every profile, so that b = bias row * this weight (see
    the module docstring)."""
    return params.batch_size**-0.5


def popularity(skill_mentions: Tensor) -> Tensor:
    """p0: each skill's share of the training skill mentions, add-one smoothed (S,): the
    background of both families (the mixture's p0, the softmax's starting bias log p0)."""
    mentions = skill_mentions.double()
    return ((mentions + 1.0) / (mentions.sum() + mentions.numel())).to(torch.float32)


def skill_popularity(manifest: Manifest, batch_size: int, ranks: Ranks = Ranks()) -> Tensor:
    """``popularity`` of the train split's skill mentions (S,); with several ranks each
    counts its share of the shards and the counts are summed."""
    mentions = torch.zeros(manifest.skills, dtype=torch.float64)
    batches = iterate_batches(
        manifest.shards["train"], batch_size, shuffle=False, rank=ranks.rank, world=ranks.world
    )
    for _, batch in batches:
        mentions += torch.bincount(batch.skill_ids, minlength=manifest.skills)
    summed = ranks.sum(mentions.tolist(), torch.device("cpu"))
    return popularity(torch.tensor(summed, dtype=torch.float64))


def _validation_scores(
    phi_bias: Tensor, bias_weight: float, manifest: Manifest, batch_size: int, ranks: Ranks
) -> tuple[float, float]:
    """Validation KL and NDCG@SELECTION_K of phi_bias (phi_t's rows, then the bias row);
    nan for both when it holds an inf or nan (a diverging learning rate): no ranking then."""
    # One pass without a J x S temporary; finite values whose float32 sum overflows would be
    # logits far beyond any sane model too.
    if not math.isfinite(phi_bias.sum().item()):
        return math.nan, math.nan
    jobs = phi_bias.shape[0] - 1
    method = model_method("softmax", phi_bias[:jobs], phi_bias[jobs] * bias_weight, 0.0)
    return score_split(method, manifest, "validation", batch_size, ranks)


def _torch_step(
    phi_t: Tensor,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    params: TrainConfig,
    weight: float = 1.0,
) -> float:
    """One step on the batch's mean loss times `weight`; returns the mean loss."""
    loss, rows, row_grads = kl_loss_and_grad(phi_t, batch)
    if weight != 1.0:
        row_grads.mul_(weight)
    _apply_gradient(phi_t, optimizer, rows, row_grads, params)
    return loss.item()


def _distributed_step(
    phi_t: Tensor, optimizer: torch.optim.Optimizer, batch: Batch, params: TrainConfig
) -> tuple[int, float]:
    """One step of every rank together on the union of their batches; returns the union's
    profile count (0 when every rank has run out) and its mean loss.

    Each rank computes its profiles' residuals (softmax - target, B_r x S), then all-gather
    the residuals and the profiles' job rows and weights, and every rank applies the same
    gradient: that of the union's mean loss, sum_r B_r * (rank r's mean gradient) / sum_r B_r
    (divided by batch_size instead when the union is smaller). This moves B x S floats per
    step instead of a dense J x S gradient.
    """
    device = phi_t.device
    batch = batch.to(device, phi_t.dtype)
    if batch.size:
        loss, residual = kl_loss_and_residual(phi_t, batch)
        loss_sum = loss.item() * batch.size
    else:
        loss_sum, residual = 0.0, phi_t.new_zeros(0, phi_t.shape[1])
    local = torch.tensor(
        [batch.size, batch.job_ids.numel(), loss_sum], dtype=torch.float64, device=device
    )
    sizes = _all_gather_padded(local[None], [1] * dist.get_world_size())
    profiles = [int(n) for n in sizes[:, 0].tolist()]
    jobs = [int(n) for n in sizes[:, 1].tolist()]
    if not sum(profiles):
        return 0, 0.0
    residuals = _all_gather_padded(residual, profiles)
    job_ids = _all_gather_padded(batch.job_ids, jobs)
    job_weights = _all_gather_padded(batch.job_weights, jobs)
    job_counts = _all_gather_padded(torch.diff(batch.job_offsets), profiles)
    job_offsets = torch.cat([job_counts.new_zeros(1), job_counts.cumsum(0)])
    # A step of fewer than batch_size profiles (the epoch's last, or once some ranks have run
    # out) is a smaller step: each profile weighs 1 / batch_size, as in every full step.
    scale = 1 / max(sum(profiles), params.batch_size)
    rows, row_grads = row_gradients(residuals, job_ids, job_weights, job_offsets, scale)
    _apply_gradient(phi_t, optimizer, rows, row_grads, params)
    return sum(profiles), float(sizes[:, 2].sum()) / sum(profiles)


def _all_gather_padded(tensor: Tensor, counts: list[int]) -> Tensor:
    """Every rank's `tensor` (rank r's has counts[r] rows), concatenated in rank order."""
    padded = tensor.new_zeros(max(counts), *tensor.shape[1:])
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:count] for part, count in zip(gathered, counts, strict=True)])


def _apply_gradient(
    phi_t: Tensor,
    optimizer: torch.optim.Optimizer,
    rows: Tensor,
    row_grads: Tensor,
    params: TrainConfig,
) -> None:
    """One optimizer step with the sparse gradient (rows, row_grads) of phi_t."""
    if params.optimizer == "sgd":
        # Only the batch's job rows change: a sparse gradient keeps SGD's cost per batch
        # proportional to the rows touched, not to all of phi.
        phi_t.grad = torch.sparse_coo_tensor(
            rows[None], row_grads, phi_t.shape, check_invariants=False
        )
    else:
        phi_t.grad = torch.zeros_like(phi_t).index_add_(0, rows, row_grads)
    optimizer.step()
    phi_t.grad = None


class _Progress:
    """Progress of one epoch: profiles done, profiles/s and the running mean loss."""

    def __init__(self, label: str, total: int, log: TextIO) -> None:
        self.label, self.total, self.log = label, total, log
        self.interactive = log.isatty()
        self.started = self.shown = time.perf_counter()
        self.count, self.loss_sum = 0, 0.0

    def update(self, profiles: int, batch_loss: float) -> None:
        self.count += profiles
        self.loss_sum += batch_loss * profiles
        now = time.perf_counter()
        if now - self.shown >= _PROGRESS_SECONDS[self.interactive]:
            self.shown = now
            self._show(final=False)

    def finish(self) -> float:
        self._show(final=True)
        return self.loss_sum / self.count

    def _show(self, final: bool) -> None:
        filled = round(20 * self.count / max(self.total, 1))
        rate = self.count / max(time.perf_counter() - self.started, 1e-9)
        text = (
            f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] {self.count:,}/{self.total:,}"
            f" profiles {rate:,.0f} profiles/s loss={self.loss_sum / max(self.count, 1):.6f}"
        )
        if self.interactive:  # redraw one line; end it when the epoch is done
            self.log.write("\r" + text + ("\n" if final else ""))
        else:
            self.log.write(text + "\n")
        self.log.flush()


def _make_optimizer(phi_t: Tensor, params: TrainConfig) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD([phi_t], lr=params.learning_rate)
    return torch.optim.Adam([phi_t], lr=params.learning_rate)


def _fused_kernel(params: TrainConfig, device: torch.device, log: TextIO) -> Kernel | None:
    """The fused kernel when the settings call for it (SGD on CPU) and it builds, else None."""
    if params.kernel != "fused" or params.optimizer != "sgd" or device.type != "cpu":
        return None
    try:
        return load_kernel()
    except KernelUnavailable as exc:
        print(f"warning: fused kernel unavailable, using the torch path: {exc}", file=log)
        return None


def _best_path(checkpoint_path: Path, epoch: int) -> Path:
    return checkpoint_path.with_name(f"{checkpoint_path.stem}.best-epoch-{epoch}.pt")


def _remove_stale_best(checkpoint_path: Path, best_epochs: set[int]) -> None:
    """Delete best-phi files other than those the checkpoint and the previous one name."""
    keep = {_best_path(checkpoint_path, epoch) for epoch in best_epochs}
    for path in checkpoint_path.parent.glob(f"{checkpoint_path.stem}.best-epoch-*.pt"):
        if path not in keep:
            path.unlink()


def save_best(checkpoint_path: Path, epoch: int, phi_t: Tensor, background: Tensor) -> None:
    """Write a best epoch's file beside `checkpoint_path` (for ``with_best_phi``), replacing
    other best files: how a family without checkpoints hands its result to the driver."""
    path = _best_path(checkpoint_path, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"epoch": epoch, "phi_t": phi_t, "background": background}, tmp)
    os.replace(tmp, path)
    _remove_stale_best(checkpoint_path, {epoch})


def _load_best(checkpoint_path: Path, epoch: int) -> tuple[Tensor, Tensor]:
    """phi_t and background of a best epoch's file (a softmax checkpoint or the mixture's)."""
    path = _best_path(checkpoint_path, epoch)
    if not path.is_file():
        raise ValueError(f"the best phi of epoch {epoch} is missing: {path}")
    # Memory-mapped, not copied: only phi's pages are read, not the optimizer state beside
    # it, and they stay valid even if a later run deletes the file.
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if state["epoch"] != epoch:
        raise ValueError(f"{path} holds epoch {state['epoch']}, expected {epoch}")
    return state["phi_t"], state["background"]


def _save_checkpoint(
    path: Path, state: dict[str, Any], best_copy: Path | None, keep_previous: bool
) -> None:
    """Write `state` beside `path`, flush it to disk, then rename it over `path`.

    With `best_copy`, the finished file is also hard-linked there before the rename: the
    best phi is kept without writing phi twice, and a crash never leaves a checkpoint naming
    a best epoch whose file is missing. The checkpoint being replaced stays as the previous
    one (`<stem>.previous.pt`), the fallback when the new one turns out unreadable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if best_copy is not None:
        _link(tmp, best_copy)
    if keep_previous and path.exists():
        _link(path, _previous_path(path))
    elif not keep_previous:
        _previous_path(path).unlink(missing_ok=True)
    os.replace(tmp, path)


def _link(source: Path, target: Path) -> None:
    """Make `target` a hard link to `source` (a copy where links are not supported),
    replacing it in one rename."""
    staged = target.with_name(f".{target.name}.tmp")
    staged.unlink(missing_ok=True)  # left by a crash
    try:
        os.link(source, staged)
    except OSError:
        shutil.copyfile(source, staged)
    os.replace(staged, target)


def _shard_set(manifest: Manifest) -> str:
    """What identifies the training data: the prepare run and the vocabulary sizes."""
    return f"{manifest.prepare_run_id} ({manifest.jobs} jobs x {manifest.skills} skills)"


def _previous_path(checkpoint_path: Path) -> Path:
    return checkpoint_path.with_name(f"{checkpoint_path.stem}.previous.pt")


def _load_checkpoint(path: Path, params: TrainConfig, log: TextIO) -> dict[str, Any]:
    """The checkpoint at `path`, or, when that file is unreadable (truncated, not a
    checkpoint, its best file gone), the previous epoch's beside it, with a warning."""
    if not path.is_file():
        raise ValueError(f"no checkpoint to resume from at {path}")
    try:
        state = _read_checkpoint(path, path)
    except ValueError as exc:
        previous = _previous_path(path)
        if not previous.is_file():
            raise
        state = _read_checkpoint(previous, path)
        # Set the unreadable file aside and put the previous one in its place, so that the
        # next save keeps a readable previous checkpoint.
        aside = path.with_name(f"{path.stem}.unreadable.pt")
        os.replace(path, aside)
        os.replace(previous, path)
        print(
            f"warning: {exc}; resuming from the previous checkpoint (epoch {state['epoch']});"
            f" the unreadable file is kept as {aside}",
            file=log,
        )
    saved = json.loads(state["train_config"])
    current = dataclasses.asdict(params)
    changed = sorted(k for k in current if saved.get(k) != current[k])
    if set(changed) - _RESUMABLE_CHANGES:
        raise ValueError(
            f"checkpoint {path} was written with other settings: "
            + ", ".join(f"train.{k} {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        )
    return state


def _read_checkpoint(path: Path, checkpoint_path: Path) -> dict[str, Any]:
    """Load and check one checkpoint file (`checkpoint_path` or the previous one beside it);
    ValueError when it cannot be used."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"checkpoint {path} is unreadable ({first})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path} has format {found!r}, expected {CHECKPOINT_FORMAT}")
    missing = _CHECKPOINT_KEYS - set(state)
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(sorted(missing))}")
    best = state["best_epoch"]
    if best and not _best_path(checkpoint_path, best).is_file():
        raise ValueError(f"checkpoint {path} names best epoch {best}, whose file is missing")
    return state
