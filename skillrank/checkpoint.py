"""The softmax family's checkpoint: what training resumes from, and the best epoch's phi.

The files beside a checkpoint ``<dir>/<stem>.pt``:

- ``<stem>.pt``: the ``Checkpoint`` after the last epoch run, written to a temporary file,
  fsynced and renamed over the old one, so a crash leaves the previous epoch's whole;
- ``<stem>.previous.pt``: the checkpoint it replaced (a hard link, no extra write), the
  fallback when ``<stem>.pt`` turns out unreadable;
- ``<stem>.best-epoch-<N>.pt``: the best epoch's checkpoint (a hard link made before the
  rename, so a checkpoint never names a best file that is missing), or the mixture's best
  iteration (``save_best``); ``load_best`` reads its phi_t and background;
- ``<stem>.unreadable.pt``: a checkpoint that could not be resumed from, set aside when the
  previous one took its place.

Every file loads with ``torch.load(path, weights_only=True)``: no pickled objects.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor

from skillrank.config import TrainConfig

CHECKPOINT_FORMAT = 4
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
class Checkpoint:
    """The softmax family's state after an epoch: everything training resumes from.

    parameters (J + 1, S) on CPU: phi_t's rows, then the bias row (b / its weight);
    background (S,): b; optimizer: the optimizer's state_dict(); the best epoch so far (its
    validation KL and NDCG@10) and the epochs since the last improvement; rng_state:
    torch.get_rng_state(); history, train_config, config: JSON text (the epochs' records, the
    train section, the whole configuration); shards: what identifies the training data.
    """

    parameters: Tensor
    background: Tensor
    optimizer: dict[str, Any]
    epoch: int
    best_validation_loss: float
    best_validation_ndcg: float
    best_epoch: int
    bad_epochs: int
    rng_state: Tensor
    history: str
    train_config: str
    config: str
    shards: str

    @property
    def phi_t(self) -> Tensor:
        """phi_t (J, S): the parameters without the bias row, a view (on disk once)."""
        return self.parameters[:-1]

    def save(self, path: Path, *, previous_best: int | None) -> None:
        """Write the checkpoint to `path`, replacing it atomically.

        When this epoch is the best, the finished file is also hard-linked (copied where
        links are not supported) to its best-epoch file before the rename: the best phi is
        kept without writing phi twice. `previous_best`: the best epoch of the checkpoint
        being replaced, which stays as the previous one with its best file; None when what
        is replaced belongs to another run (a fresh run's first save), which then goes. Best
        files of older epochs are deleted.
        """
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        # phi_t after parameters, of which it is a view: stored once, read alone by load_best.
        state = {"format": CHECKPOINT_FORMAT, "parameters": self.parameters, "phi_t": self.phi_t}
        state |= fields
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if self.best_epoch == self.epoch:
            _link(tmp, _best_path(path, self.epoch))
        if previous_best is None:
            _previous_path(path).unlink(missing_ok=True)
        elif path.exists():
            _link(path, _previous_path(path))
        os.replace(tmp, path)
        kept = {self.best_epoch} if previous_best is None else {self.best_epoch, previous_best}
        _remove_stale_best(path, kept)

    @classmethod
    def load(cls, path: Path, params: TrainConfig, log: TextIO) -> Checkpoint:
        """The checkpoint at `path`, or, when that file is unreadable (truncated, not a
        checkpoint, its best file gone), the previous epoch's beside it, with a warning.
        ValueError when neither can be used, or when it was written with settings other than
        `params` in more than those that may change on resume (_RESUMABLE_CHANGES)."""
        if not path.is_file():
            raise ValueError(f"no checkpoint to resume from at {path}")
        try:
            state = _read_checkpoint(path, path)
        except ValueError as exc:
            previous = _previous_path(path)
            if not previous.is_file():
                raise
            state = _read_checkpoint(previous, path)
            # Set the unreadable file aside and put the previous one in its place, so that
            # the next save keeps a readable previous checkpoint.
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
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls)})


# Every key of a checkpoint file: the format, the fields, and phi_t (a view of parameters).
_CHECKPOINT_KEYS = {"format", "phi_t"} | {f.name for f in dataclasses.fields(Checkpoint)}


def save_best(checkpoint_path: Path, epoch: int, phi_t: Tensor, background: Tensor) -> None:
    """Write a best epoch's file beside `checkpoint_path` (for ``load_best``), replacing
    other best files: how a family without checkpoints hands its result to the driver."""
    path = _best_path(checkpoint_path, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"epoch": epoch, "phi_t": phi_t, "background": background}, tmp)
    os.replace(tmp, path)
    _remove_stale_best(checkpoint_path, {epoch})


def load_best(checkpoint_path: Path, epoch: int) -> tuple[Tensor, Tensor]:
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


def _best_path(checkpoint_path: Path, epoch: int) -> Path:
    return checkpoint_path.with_name(f"{checkpoint_path.stem}.best-epoch-{epoch}.pt")


def _previous_path(checkpoint_path: Path) -> Path:
    return checkpoint_path.with_name(f"{checkpoint_path.stem}.previous.pt")


def _remove_stale_best(checkpoint_path: Path, best_epochs: set[int]) -> None:
    """Delete best-phi files other than those the checkpoint and the previous one name."""
    keep = {_best_path(checkpoint_path, epoch) for epoch in best_epochs}
    for path in checkpoint_path.parent.glob(f"{checkpoint_path.stem}.best-epoch-*.pt"):
        if path not in keep:
            path.unlink()


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
