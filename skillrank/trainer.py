"""The training loop: learn phi from the shards with early stopping, checkpoint every epoch.

Reads only the shard manifest and its Parquet files (skillrank.shards), computes the loss
and its gradient with skillrank.model, and writes one checkpoint file, replaced atomically
after every epoch. ``train(..., resume=True)`` continues from that file and, on CPU,
reaches bit for bit the phi of an uninterrupted run: the data order depends only on
(seed, epoch), and the checkpoint holds everything else that changes between epochs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor

from skillrank.config import TrainConfig
from skillrank.model import init_phi, kl_loss, kl_loss_and_grad
from skillrank.shards import Manifest, iterate_batches, read_manifest

CHECKPOINT_FORMAT = 1
# Settings that may change on resume; any other difference is an error.
_RESUMABLE_CHANGES = {"device", "max_epochs", "patience", "checkpoint_dir"}


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    validation_loss: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """phi_t of the best epoch (jobs x skills, on CPU) and how training went."""

    phi_t: Tensor
    best_epoch: int
    best_validation_loss: float
    test_loss: float
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
) -> TrainResult:
    """Train phi on the manifest's train split; early stopping on its validation split.

    `device` overrides params.device. `config_json` (the whole configuration, as JSON) is
    stored in the checkpoint; it defaults to the train section. With `resume`, training
    continues from `checkpoint_path`, which must come from the same settings (only device,
    max_epochs, patience and checkpoint_dir may differ). Returns the best epoch's phi_t and
    its test loss.
    """
    _check_params(params)
    manifest = read_manifest(manifest_path)
    for split in ("train", "validation", "test"):
        if split not in manifest.shards:
            raise ValueError(f"manifest {manifest_path} has no {split!r} split")
    if manifest.rows["validation"] == 0:
        # Early stopping needs a validation loss; without one no epoch could ever be best.
        raise ValueError(f"manifest {manifest_path}: the validation split is empty")
    target = torch.device(device or params.device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch sees no GPU")
    config_json = config_json or json.dumps(dataclasses.asdict(params), sort_keys=True)

    if resume:
        state = _load_checkpoint(checkpoint_path, params)
        phi_t = state["phi_t"].to(target)
        optimizer = _make_optimizer(phi_t, params)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_state"])
        epoch = state["epoch"]
        best_loss, best_epoch = state["best_validation_loss"], state["best_epoch"]
        best_phi_t = state["best_phi_t"].to(target)
        bad_epochs = state["bad_epochs"]
        history = [EpochRecord(**r) for r in json.loads(state["history"])]
        print(f"resumed from {checkpoint_path} after epoch {epoch}", file=log)
    else:
        generator = torch.Generator().manual_seed(params.seed)
        phi_t = init_phi(manifest.jobs, manifest.skills, params.init_std, generator).to(target)
        optimizer = _make_optimizer(phi_t, params)
        epoch, best_loss, best_epoch, bad_epochs = 0, math.inf, 0, 0
        best_phi_t = phi_t.clone()
        history = []

    while epoch < params.max_epochs and bad_epochs < params.patience:
        epoch += 1
        started = time.perf_counter()
        train_loss, profiles = _train_epoch(phi_t, optimizer, manifest, params, epoch, target)
        train_seconds = time.perf_counter() - started
        print(
            f"epoch {epoch}: {profiles} profiles, {profiles / train_seconds:,.0f} profiles/s",
            file=log,
        )
        validation_loss = evaluate(phi_t, manifest, "validation", params.batch_size)
        seconds = time.perf_counter() - started
        history.append(EpochRecord(epoch, train_loss, validation_loss, seconds))
        if validation_loss < best_loss:
            best_loss, best_epoch, bad_epochs = validation_loss, epoch, 0
            best_phi_t = phi_t.clone()
        else:
            bad_epochs += 1
        print(
            f"epoch {epoch} train_loss={train_loss:.6f} validation_loss={validation_loss:.6f}"
            f" seconds={seconds:.2f}" + ("" if bad_epochs else " (best)"),
            file=log,
        )
        _save_checkpoint(
            checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                "phi_t": phi_t.cpu(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "best_validation_loss": best_loss,
                "best_epoch": best_epoch,
                "best_phi_t": best_phi_t.cpu(),
                "bad_epochs": bad_epochs,
                "rng_state": torch.get_rng_state(),
                "history": json.dumps([dataclasses.asdict(r) for r in history]),
                "train_config": json.dumps(dataclasses.asdict(params), sort_keys=True),
                "config": config_json,
            },
        )

    test_loss = evaluate(best_phi_t, manifest, "test", params.batch_size)
    why = "patience exhausted" if bad_epochs >= params.patience else "max_epochs reached"
    print(
        f"stopped after epoch {epoch} ({why}); best epoch {best_epoch}"
        f" validation_loss={best_loss:.6f} test_loss={test_loss:.6f}",
        file=log,
    )
    return TrainResult(best_phi_t.cpu(), best_epoch, best_loss, test_loss, epoch, history)


def evaluate(phi_t: Tensor, manifest: Manifest, split: str, batch_size: int) -> float:
    """Mean KL loss over every profile of `split` (nan for an empty split)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for _, batch in iterate_batches(manifest.shards[split], batch_size, shuffle=False):
            loss = kl_loss(phi_t, batch.to(phi_t.device, phi_t.dtype))
            total += loss.item() * batch.size
            count += batch.size
    return total / count if count else math.nan


def _train_epoch(
    phi_t: Tensor,
    optimizer: torch.optim.Optimizer,
    manifest: Manifest,
    params: TrainConfig,
    epoch: int,
    device: torch.device,
) -> tuple[float, int]:
    total, count = 0.0, 0
    batches = iterate_batches(
        manifest.shards["train"],
        params.batch_size,
        shuffle=True,
        seed=params.seed,
        epoch=epoch,
        buffer_size=params.shuffle_buffer,
    )
    for _, batch in batches:
        loss, rows, row_grads = kl_loss_and_grad(phi_t, batch.to(device, phi_t.dtype))
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
        total += loss.item() * batch.size
        count += batch.size
    if not count:
        raise ValueError("the train split holds no profiles")
    return total / count, count


def _make_optimizer(phi_t: Tensor, params: TrainConfig) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD([phi_t], lr=params.learning_rate)
    return torch.optim.Adam([phi_t], lr=params.learning_rate)


def _check_params(params: TrainConfig) -> None:
    for key in ("batch_size", "max_epochs", "patience", "shuffle_buffer"):
        if getattr(params, key) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {getattr(params, key)}")
    if not params.learning_rate > 0:
        raise ValueError(f"train.learning_rate must be > 0, got {params.learning_rate}")
    if params.init_std < 0:
        raise ValueError(f"train.init_std must be >= 0, got {params.init_std}")


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` beside `path`, flush it to disk, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_checkpoint(path: Path, params: TrainConfig) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"no checkpoint to resume from at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} has format {state.get('format')!r}")
    saved = json.loads(state["train_config"])
    current = dataclasses.asdict(params)
    changed = sorted(k for k in current if saved.get(k) != current[k])
    if set(changed) - _RESUMABLE_CHANGES:
        raise ValueError(
            f"checkpoint {path} was written with other settings: "
            + ", ".join(f"train.{k} {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        )
    return state
