"""The training loop of the softmax family: learn phi (and a per-skill bias) from the shards
with early stopping on validation NDCG@10, checkpoint every epoch.

Reads only the shard manifest and its Parquet files (skillrank.shards), computes the loss
and its gradient with skillrank.model (or, for SGD on CPU, the fused kernel of
skillrank.kernel, which computes the same step), and writes a checkpoint after every epoch
(``skillrank.checkpoint``: replaced atomically, the previous one kept as a fallback). The best
epoch's phi lives on disk beside it (``best-epoch-<N>.pt``), not in memory, so training holds
one copy of phi.

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
``skillrank.evaluate.softmax_method(phi_t, b)``): mean KL and NDCG@10. The epoch
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
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
import torch.distributed as dist
from torch import Tensor

from skillrank.checkpoint import Checkpoint, load_best
from skillrank.config import TrainConfig
from skillrank.evaluate import (
    CoCounts,
    Method,
    cooccurrence_method,
    count_cooccurrences,
    profile_metrics,
    softmax_method,
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
from skillrank.shards import Manifest, iterate_batches, read_ahead

# Cut-off of the selection metric: the best epoch has the highest validation NDCG@10.
SELECTION_K = 10
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


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes training together (torch.distributed)."""

    rank: int = 0
    world: int = 1
    # Where the process group's collectives take their tensors: NCCL only reduces on the GPU.
    device: torch.device = torch.device("cpu")

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks."""
        if self.world == 1:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
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
    background (S,; the softmax's skill bias, the mixture's log p0: see the family's
    ``method`` in skillrank.families) and how training went."""

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
    continues from `checkpoint_path`, which must come from the same settings (only device,
    max_epochs, patience, min_improvement, checkpoint_dir, num_processes and local_mode may
    differ: ``skillrank.checkpoint``). Returns the best epoch's phi_t (J x S) and skill bias
    (`background`, S; zeros without params.skill_bias), and its validation KL and NDCG@10; it
    never reads the test split. With `ranks` of a world > 1, this is one process of
    data-parallel training (see ``train_process``).
    """
    manifest, target = _set_up(manifest_path, params, device, ranks, log)
    # Distributed steps exchange residuals, which the fused kernel does not expose.
    kernel = _fused_kernel(params, target, log) if ranks.world == 1 else None
    if resume:
        phi_bias, optimizer, run = _resume(checkpoint_path, manifest, params, target, log, ranks)
    else:
        phi_bias, optimizer, run = _start(manifest, params, target, ranks)

    while run.epoch < params.max_epochs and run.bad_epochs < params.patience:
        epoch, started = run.epoch + 1, time.perf_counter()
        train_loss, steps = _train_epoch(
            phi_bias, optimizer, kernel, manifest, params, epoch, log, ranks
        )
        if params.l2:
            # Decoupled weight decay, all of the epoch's steps at once; never on the bias.
            phi_bias[: manifest.jobs].mul_((1.0 - params.learning_rate * params.l2) ** steps)
        if ranks.world > 1:
            # Every rank applied the same updates; on GPU scatter-adds are not deterministic,
            # so rank 0's phi, the one checkpointed, is made everyone's.
            dist.broadcast(phi_bias, 0)
        validation_loss, validation_ndcg = _validation_scores(
            phi_bias, _bias_weight(params), manifest, params.batch_size, ranks
        )
        seconds = time.perf_counter() - started
        record = EpochRecord(epoch, train_loss, validation_loss, validation_ndcg, seconds)
        # The checkpoint about to be replaced stays as the fallback, unless it is another
        # run's (at a fresh run's first save).
        previous_best = run.best_epoch if run.epoch else None
        run = run.after(record, params.min_improvement)
        _log_epoch(run, log)
        if ranks.rank == 0:
            checkpoint = _checkpoint(phi_bias, optimizer, run, params, config_json, manifest)
            checkpoint.save(checkpoint_path, previous_best=previous_best)

    if not run.best_epoch:
        raise ValueError(
            "the validation NDCG was never a number (phi diverged); lower train.learning_rate"
        )
    # Free the last epoch's phi (and optimizer state) before loading the best one.
    del optimizer, phi_bias
    ranks.barrier()  # rank 0 has written the best epoch's file
    best_phi_t, background = load_best(checkpoint_path, run.best_epoch)
    _log_stop(run, params, log)
    return TrainResult(
        best_phi_t,
        background,
        run.best_epoch,
        run.best_validation_loss,
        run.best_validation_ndcg,
        run.epoch,
        list(run.history),
    )


@dataclass(frozen=True)
class _Selection:
    """The epochs run so far and early stopping's state: the best epoch (the highest
    validation NDCG@10) with its scores, and the epochs since the last improvement."""

    epoch: int = 0
    best_epoch: int = 0
    best_validation_loss: float = math.nan
    best_validation_ndcg: float = -math.inf
    bad_epochs: int = 0
    history: tuple[EpochRecord, ...] = ()

    def after(self, record: EpochRecord, min_improvement: float) -> _Selection:
        """The selection after `record`'s epoch. The highest validation NDCG is the best phi
        (nan, of a diverged phi, never is); only an improvement of more than min_improvement
        resets the patience count."""
        ndcg, best = record.validation_ndcg, self.best_validation_ndcg
        improved = ndcg > best
        return _Selection(
            epoch=record.epoch,
            best_epoch=record.epoch if improved else self.best_epoch,
            best_validation_loss=record.validation_loss if improved else self.best_validation_loss,
            best_validation_ndcg=ndcg if improved else best,
            bad_epochs=0 if ndcg > best + min_improvement else self.bad_epochs + 1,
            history=(*self.history, record),
        )


def training_device(device: str | None, params: TrainConfig) -> torch.device:
    """The device a fit runs on: `device`, else train.device; ValueError for cuda when torch
    sees no GPU."""
    target = torch.device(device or params.device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch sees no GPU")
    return target


def _set_up(
    manifest_path: Path, params: TrainConfig, device: str | None, ranks: Ranks, log: TextIO
) -> tuple[Manifest, torch.device]:
    """The manifest and the device to train on, once they are checked; ValueError when
    training cannot start."""
    if params.model != "softmax":  # (every setting's range was checked on load)
        raise ValueError(f"train() trains train.model=softmax, got {params.model!r}")
    manifest = Manifest.read(manifest_path)
    for split in ("train", "validation"):
        if split not in manifest.shards:
            raise ValueError(f"manifest {manifest_path} has no {split!r} split")
    if manifest.rows["validation"] == 0:
        # Early stopping needs a validation score; without one no epoch could ever be best.
        raise ValueError(f"manifest {manifest_path}: the validation split is empty")
    target = training_device(device, params)
    shards = len(manifest.shards["train"])
    if ranks.world > shards:
        raise ValueError(
            f"the train split has {shards} shard files, fewer than the {ranks.world} training"
            " processes: lower prepare.rows_per_shard and rerun prepare"
        )
    if shards % ranks.world:
        print(
            f"warning: the train split's {shards} shard files do not divide evenly among"
            f" {ranks.world} processes: once the ranks with fewer run out, steps take fewer"
            " profiles (see prepare.rows_per_shard)",
            file=log,
        )
    return manifest, target


def _start(
    manifest: Manifest, params: TrainConfig, target: torch.device, ranks: Ranks
) -> tuple[Tensor, torch.optim.Optimizer, _Selection]:
    """A fresh start: phi_bias (phi_t's J rows from normal(0, init_std), then the bias row
    b / its weight with b = log popularity, or 0 without train.skill_bias; see the module
    docstring), its optimizer, and no epoch run."""
    jobs = manifest.jobs
    generator = torch.Generator().manual_seed(params.seed)
    phi_bias = init_phi(jobs + 1, manifest.skills, params.init_std, generator)
    if params.skill_bias:
        phi_bias[jobs] = skill_popularity(manifest, params.batch_size, ranks).log()
        phi_bias[jobs] /= _bias_weight(params)
    else:
        phi_bias[jobs] = 0.0
    phi_bias = phi_bias.to(target)
    return phi_bias, _make_optimizer(phi_bias, params), _Selection()


def _resume(
    checkpoint_path: Path,
    manifest: Manifest,
    params: TrainConfig,
    target: torch.device,
    log: TextIO,
    ranks: Ranks,
) -> tuple[Tensor, torch.optim.Optimizer, _Selection]:
    """phi_bias, its optimizer, the RNG state and the selection as the checkpoint left them."""
    if ranks.rank > 0:  # rank 0 first: it may set an unreadable checkpoint aside
        ranks.barrier()
    checkpoint = Checkpoint.load(checkpoint_path, params, log)
    if ranks.rank == 0:
        ranks.barrier()
    shards = _shard_set(manifest)
    if checkpoint.shards != shards:
        raise ValueError(
            f"checkpoint {checkpoint_path} was trained on other shards ({checkpoint.shards},"
            f" now {shards}); train without --resume"
        )
    phi_bias = checkpoint.parameters.to(target)
    optimizer = _make_optimizer(phi_bias, params)
    optimizer.load_state_dict(checkpoint.optimizer)
    torch.set_rng_state(checkpoint.rng_state)
    run = _Selection(
        epoch=checkpoint.epoch,
        best_epoch=checkpoint.best_epoch,
        best_validation_loss=checkpoint.best_validation_loss,
        best_validation_ndcg=checkpoint.best_validation_ndcg,
        bad_epochs=checkpoint.bad_epochs,
        history=tuple(EpochRecord(**r) for r in json.loads(checkpoint.history)),
    )
    print(f"resumed from {checkpoint_path} after epoch {run.epoch}", file=log)
    return phi_bias, optimizer, run


def _checkpoint(
    phi_bias: Tensor,
    optimizer: torch.optim.Optimizer,
    run: _Selection,
    params: TrainConfig,
    config_json: str | None,
    manifest: Manifest,
) -> Checkpoint:
    """The checkpoint after the epoch just run: phi_bias and the optimizer as they are now;
    `config_json` (the whole configuration) defaults to the train section."""
    saved = phi_bias.cpu()
    train_config = json.dumps(dataclasses.asdict(params), sort_keys=True)
    return Checkpoint(
        parameters=saved,
        background=saved[-1] * _bias_weight(params),
        optimizer=optimizer.state_dict(),
        epoch=run.epoch,
        best_validation_loss=run.best_validation_loss,
        best_validation_ndcg=run.best_validation_ndcg,
        best_epoch=run.best_epoch,
        bad_epochs=run.bad_epochs,
        rng_state=torch.get_rng_state(),
        history=json.dumps([dataclasses.asdict(r) for r in run.history]),
        train_config=train_config,
        config=config_json or train_config,
        shards=_shard_set(manifest),
    )


def _shard_set(manifest: Manifest) -> str:
    """What identifies the training data: the prepare run and the vocabulary sizes."""
    return f"{manifest.prepare_run_id} ({manifest.jobs} jobs x {manifest.skills} skills)"


def _log_epoch(run: _Selection, log: TextIO) -> None:
    """The log line of the epoch just run, ` (best)` when it is the best so far."""
    r = run.history[-1]
    print(
        f"epoch {r.epoch} train_loss={r.train_loss:.6f} validation_loss={r.validation_loss:.6f}"
        f" validation_ndcg@{SELECTION_K}={r.validation_ndcg:.6f} seconds={r.seconds:.2f}"
        + (" (best)" if run.best_epoch == r.epoch else ""),
        file=log,
        flush=True,
    )


def _log_stop(run: _Selection, params: TrainConfig, log: TextIO) -> None:
    """The final log line: why training stopped, and the best epoch."""
    why = (
        f"validation NDCG@{SELECTION_K} improved by at most {params.min_improvement}"
        f" for {params.patience} epochs"
        if run.bad_epochs >= params.patience
        else "max_epochs reached"
    )
    print(
        f"stopped after epoch {run.epoch} ({why}); best epoch {run.best_epoch}"
        f" validation_ndcg@{SELECTION_K}={run.best_validation_ndcg:.6f}"
        f" validation_loss={run.best_validation_loss:.6f}",
        file=log,
    )


def train_process(
    fit: Callable[..., TrainResult],
    manifest_path: str,
    params: TrainConfig,
    checkpoint_path: str,
    resume: bool,
    device: str,
    config_json: str,
) -> TrainResult:
    """One of the processes of data-parallel training, as TorchDistributor starts them
    (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT).

    Joins the process group (gloo on CPU, NCCL on GPU, one GPU per process), runs `fit` (a
    family's training function, skillrank.families; ``train`` for the softmax) as its rank, and
    returns the result without phi (an empty tensor; phi is in the best
    epoch's checkpoint file, see ``with_best_phi``), so that nothing large is sent back.
    A process that fails leaves its error in one line beside the checkpoint (see
    ``process_errors``): on the executors, TorchDistributor tells the driver only that
    training failed.
    """
    rank = int(os.environ.get("RANK", "0"))
    try:
        if torch.device(device).type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise ValueError(
                    f"local process {local} has no GPU of its own (torch sees"
                    f" {torch.cuda.device_count()}): NCCL takes one GPU per process"
                )
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
        ranks = Ranks(rank, dist.get_world_size(), torch.device(device))
        with open(os.devnull, "w") if rank else nullcontext(sys.stdout) as log:
            result = fit(
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
        error = _error_path(Path(checkpoint_path), rank)
        error.parent.mkdir(parents=True, exist_ok=True)
        error.write_text(f"rank {rank}: {type(exc).__name__}: {exc}".splitlines()[0])
        raise
    finally:
        if dist.is_initialized():
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
    phi_t, background = load_best(checkpoint_path, result.best_epoch)
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
    kl, ndcg, count = ranks.sum([*sums, count])
    return (kl / count, ndcg / count) if count else (math.nan, math.nan)


def count_split(manifest: Manifest, split: str, batch_size: int) -> CoCounts:
    """The (title, skill) co-occurrence counts of a split's profiles (the count baselines)."""
    batches = iterate_batches(manifest.shards[split], batch_size, shuffle=False)
    return count_cooccurrences((batch for _, batch in batches), manifest.jobs, manifest.skills)


def cooccurrence_validation_ndcg(
    counts: CoCounts, manifest: Manifest, smoothing: float, batch_size: int
) -> float:
    """Validation NDCG@SELECTION_K of co-occurrence counting (`counts`: count_split of the
    train split, smoothed by `smoothing`), scored as score_split scores a model: the promotion
    gate's baseline."""
    return score_split(cooccurrence_method(counts, smoothing), manifest, "validation", batch_size)[
        1
    ]


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
    loss: float | Tensor
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
        prepared: Iterator[Batch] = (
            _with_bias(batch, manifest.jobs, params) for _, batch in batches
        )
        if phi_t.device.type == "cuda":
            # The next batches are read and pinned in a thread while the GPU takes this one.
            prepared = read_ahead(batch.pin_memory() for batch in prepared)
        for batch in prepared:
            # The epoch's last, smaller batch is a smaller step: in every step each profile
            # weighs 1 / batch_size, as in distributed steps.
            weight = min(1.0, batch.size / params.batch_size)
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
    summed = ranks.sum(mentions.tolist())
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
    method = softmax_method(phi_bias[:jobs], phi_bias[jobs] * bias_weight)
    return score_split(method, manifest, "validation", batch_size, ranks)


def _torch_step(
    phi_t: Tensor,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    params: TrainConfig,
    weight: float = 1.0,
) -> Tensor:
    """One step on the batch's mean loss times `weight`; returns the mean loss, a tensor on
    phi_t's device (reading it waits for a GPU; the progress line reads it now and then)."""
    loss, rows, row_grads = kl_loss_and_grad(phi_t, batch)
    if weight != 1.0:
        row_grads.mul_(weight)
    _apply_gradient(phi_t, optimizer, rows, row_grads, params)
    return loss.detach()


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
    if params.optimizer == "sgd" and phi_t.is_cuda:
        # The same SGD step, phi_t[rows] -= lr * row_grads, duplicates summed: in place on a
        # GPU, where coalescing a sparse gradient would wait for the device every step.
        phi_t.index_add_(0, rows, row_grads, alpha=-params.learning_rate)
    elif params.optimizer == "sgd":
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
        self.count = 0
        # A tensor on the GPU while training there, read only when shown.
        self.loss_sum: float | Tensor = 0.0

    def update(self, profiles: int, batch_loss: float | Tensor) -> None:
        self.count += profiles
        self.loss_sum += batch_loss * profiles
        now = time.perf_counter()
        if now - self.shown >= _PROGRESS_SECONDS[self.interactive]:
            self.shown = now
            self._show(final=False)

    def finish(self) -> float:
        self._show(final=True)
        return float(self.loss_sum) / self.count

    def _show(self, final: bool) -> None:
        filled = round(20 * self.count / max(self.total, 1))
        rate = self.count / max(time.perf_counter() - self.started, 1e-9)
        text = (
            f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] {self.count:,}/{self.total:,}"
            f" profiles {rate:,.0f} profiles/s loss={float(self.loss_sum) / max(self.count, 1):.6f}"
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
