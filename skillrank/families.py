"""The model families behind `train.model`, one training function each.

Every family's function takes (manifest_path, params, checkpoint_path, *, resume, device,
config_json, log, ranks), reads only the train and validation splits of the shards, and
returns a ``skillrank.trainer.TrainResult``: phi_t (J x S), the background (S,), the best
epoch by validation NDCG@10 and the history. ``skillrank.evaluate.model_method`` turns a
result into predictions; docs/trainer.md says what phi means for each family.
"""

from __future__ import annotations

from skillrank.mixture import train_mixture
from skillrank.trainer import train

FAMILIES = {"softmax": train, "mixture": train_mixture}
