"""The model families behind `train.model`: each a ``Family``, so that callers look one up
in ``FAMILIES`` instead of branching on its name.

Every family's fit reads only the train and validation splits of the shards and returns a
``skillrank.trainer.TrainResult``: phi_t (J x S), the background (S,), the best epoch by
validation NDCG@10 and the history; its method turns that result into predictions.
docs/trainer.md says what phi means for each family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from skillrank.evaluate import Method, mixture_method, softmax_method
from skillrank.mixture import train_mixture
from skillrank.trainer import TrainResult, train


@dataclass(frozen=True)
class Family:
    """A model family: how it is fitted, how a fit predicts, and what it takes.

    fit(manifest_path, params, checkpoint_path, *, resume, device, config_json, log, ranks):
    the training function (``skillrank.trainer.train_process`` runs it as one rank of
    several). method(phi_t, background, background_weight, name="model"): a fit's prediction
    of a profile's skills, as an evaluation method. resumable: it checkpoints every epoch,
    so --resume continues a fit; segment_rows: the train stage fits and publishes its rows
    per city and industry (``skillrank.segments``, which needs the mixture's theta). Every
    family fits on the CPU or on a GPU (`device`).
    """

    fit: Callable[..., TrainResult]
    method: Callable[..., Method]
    resumable: bool
    segment_rows: bool


FAMILIES = {
    "softmax": Family(train, softmax_method, resumable=True, segment_rows=False),
    "mixture": Family(train_mixture, mixture_method, resumable=False, segment_rows=True),
}
