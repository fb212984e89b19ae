"""Model selection on the validation split: a small grid of train.* settings, one fit each.

    .venv/bin/python benchmarks/select_model.py --workdir DIR [--grid KEY=V1,V2,...]...
        [--conf KEY=VALUE]...

Reads the training shards that `prepare` wrote in DIR (DIR/<catalog.shards_dir>/manifest.json)
and, for every combination of the --grid values (keys of the `train` section; each combination
applied over conf/skillrank.yml and the --conf settings, checked as `spark-submit.sh` checks
them), fits the model family it names with skillrank.families.FAMILIES, exactly as the train
stage does, then scores the validation profiles with the result as `evaluate` scores test
profiles. It prints, per combination, the best iteration, validation NDCG@10 (the selection
metric), recall@20 and KL, the paired difference in NDCG@10 from the best combination with its
95% bootstrap interval over the validation profiles, and the fit's seconds.

The rule: the highest validation NDCG@10 wins, except that combinations whose interval of the
difference from it contains 0 are tied with it (the validation split cannot tell them apart on
NDCG@10), and among tied combinations the lowest validation KL wins. Its choice is the one to
make the default in conf/skillrank.yml.

The fits read the train and validation splits only, never the test split (tests/test_mixture.py
checks this of every family), so a choice made here cannot be tuned on the test figures. It
writes nothing but a scratch checkpoint directory under DIR. See benchmarks/README.md,
"select_model.py".
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `skillrank` importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from skillrank.config import ConfigError, load_config  # noqa: E402
from skillrank.evaluate import mean_intervals, score_profiles  # noqa: E402
from skillrank.families import FAMILIES  # noqa: E402
from skillrank.shards import Manifest, iterate_batches  # noqa: E402

# Validation columns kept per profile, in this order; the bootstrap's resamples and seed.
_COLUMNS = [("ndcg", 10), ("recall", 20), ("kl", None)]
_SAMPLES, _SEED = 1000, 20261129


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    grid: dict[str, list[str]] = {}
    for item in args.grid:
        key, _, values = item.partition("=")
        if not values:
            parser.error(f"--grid expects KEY=V1,V2,..., got {item!r}")
        grid[key.strip()] = [v.strip() for v in values.split(",")]
    combinations = [
        dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())
    ]
    try:  # every combination checked before the first fit
        configs = [
            load_config(overrides=[*args.conf, *(f"train.{k}={v}" for k, v in c.items())])
            for c in combinations
        ]
    except ConfigError as exc:
        parser.error(str(exc))
    manifest = args.workdir / configs[0].catalog.shards_dir / "manifest.json"
    if not manifest.is_file():
        parser.error(f"no training shards: {manifest} does not exist (run prepare first)")

    manifest_data = Manifest.read(manifest)
    rows = []
    print(
        f"{'setting':<58} {'best':>4} {'of':>3} {'NDCG@10':>7} {'rec@20':>6} {'KL':>6}"
        f" {'NDCG@10 - best [95% interval]':>30} {'s':>5}"
    )
    for combination, config in zip(combinations, configs, strict=True):
        label = " ".join(f"{k}={v}" for k, v in combination.items()) or "(defaults)"
        params = config.train
        started = time.perf_counter()
        family = FAMILIES[params.model]
        result = family.fit(
            manifest,
            params,
            args.workdir / "select-checkpoints" / "checkpoint.pt",
            log=io.StringIO(),
        )
        seconds = time.perf_counter() - started
        method = family.method(result.phi_t, result.background, params.background_weight)
        batches = iterate_batches(manifest_data.shards["validation"], 1000, shuffle=False)
        scores = score_profiles([method], batches, {}, [10, 20])
        columns = scores.metrics[method.name]
        values = scores.values[method.name][:, [columns.index(c) for c in _COLUMNS]]
        rows.append(
            (f"{params.model}: {label}", result.best_epoch, result.epochs_run, seconds, values)
        )
        del method, result  # phi is J x S: one fit's at a time

    best = max(range(len(rows)), key=lambda i: rows[i][4][:, 0].mean())
    rng = np.random.default_rng(_SEED)
    tied = []
    for i, (label, best_epoch, epochs_run, seconds, values) in enumerate(rows):
        difference = values[:, :1] - rows[best][4][:, :1]
        mean, bounds = mean_intervals(difference, _SAMPLES, rng)
        low, high = (float(bounds[0, 0]), float(bounds[1, 0])) if bounds is not None else (0, 0)
        if low <= 0 <= high:
            tied.append(i)
        ndcg, recall, kl = values.mean(axis=0)
        interval = f"{mean[0]:+.4f} [{low:+.4f}, {high:+.4f}]"
        print(
            f"{label:<58} {best_epoch:>4} {epochs_run:>3} {ndcg:>7.4f}"
            f" {recall:>6.4f} {kl:>6.4f} {interval:>30} {seconds:>5.0f}"
        )
    chosen = min(tied, key=lambda i: rows[i][4][:, 2].mean())
    print(
        f"highest validation NDCG@10: {rows[best][0]}; tied with it (interval of the difference"
        f" holds 0): {len(tied)}; of those the lowest validation KL: {rows[chosen][0]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
