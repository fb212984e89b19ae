"""Publishing's neighbour searches (job_neighbors, skill_neighbors) on the CPU and on a GPU.

    .venv/bin/python benchmarks/neighbors.py --manifest <workdir>/shards/manifest.json
        [--devices cpu,cuda] [--repeat N] [--workdir DIR] [--keep]

It fits the default model family (train.model) on the shards with the default settings, on
the last of --devices (the GPU, when one is listed: the fit is the same to float32 rounding,
see docs/trainer.md), then runs each search as the train stage stages it
(skillrank.rankings, block rankings.RANK_BLOCK, k = publish.neighbors_k) --repeat times on
each device, the whole generator from phi to numpy columns, and prints the seconds of each
run. For every device after the first it compares the neighbours with the first device's:
recall@k of each row's neighbour set, the share of rows whose list is identical, and the
largest difference of a similarity at the same (row, rank). It asserts nothing. Without
pyspark: it runs on a GPU machine with torch, numpy, pyarrow and PyYAML alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `skillrank` importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _workdir import work_directory  # noqa: E402

from skillrank import rankings  # noqa: E402
from skillrank.config import load_config  # noqa: E402
from skillrank.families import FAMILIES  # noqa: E402

Search = Callable[[torch.Tensor, int, int, str], Iterator[rankings.Columns]]
SEARCHES: dict[str, tuple[Search, str]] = {
    "job_neighbors": (rankings.job_neighbors, "neighbor_job_id"),
    "skill_neighbors": (rankings.skill_neighbors, "neighbor_skill_id"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, required=True, help="the shards' manifest.json")
    parser.add_argument(
        "--devices",
        default="cpu",
        help="comma-separated devices, the first one the reference (default cpu; e.g. cpu,cuda)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of each search (default 2)")
    parser.add_argument("--workdir", metavar="DIR", help="where the fit's files go (must be new)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = parser.parse_args(argv)
    args.devices = args.devices.split(",")
    if "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices names cuda, but torch sees no GPU")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


def search(
    phi_t: torch.Tensor, name: str, k: int, device: str
) -> tuple[float, np.ndarray, np.ndarray]:
    """One run of a search: its seconds, then the (rows, k) neighbour ids and similarities."""
    function, neighbor_key = SEARCHES[name]
    clock = time.perf_counter()
    blocks = list(function(phi_t, k, rankings.RANK_BLOCK, device))
    seconds = time.perf_counter() - clock
    ids = np.concatenate([b[neighbor_key] for b in blocks])
    similarity = np.concatenate([b["similarity"] for b in blocks])
    width = int(blocks[0]["rank"].max())
    return seconds, ids.reshape(-1, width), similarity.reshape(-1, width)


def compare(ids: np.ndarray, sims: np.ndarray, ref_ids: np.ndarray, ref_sims: np.ndarray) -> str:
    """How a search's neighbours agree with the reference's."""
    shared = [len(set(a) & set(b)) for a, b in zip(ids.tolist(), ref_ids.tolist(), strict=True)]
    recall = float(np.mean(shared)) / ids.shape[1]
    identical = float((ids == ref_ids).all(axis=1).mean())
    largest = float(np.abs(sims - ref_sims).max())
    return (
        f"recall@{ids.shape[1]} {recall:.6f}, identical lists {identical:.4%},"
        f" similarity at the same rank within {largest:.1e}"
    )


def run(args: argparse.Namespace, base: Path) -> None:
    config = load_config()
    k = config.publish.neighbors_k
    fit_device = args.devices[-1]
    print("\n=== Neighbour searches ===")
    gpu = f"; GPU: {torch.cuda.get_device_name()}" if "cuda" in args.devices else ""
    print(
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores;"
        f" threads: {torch.get_num_threads()}; torch {torch.__version__}{gpu}"
    )
    params = dataclasses.replace(config.train, device=fit_device)
    clock = time.perf_counter()
    result = FAMILIES[params.model].fit(
        args.manifest, params, base / "ckpt.pt", log=io.StringIO()
    )  # fmt: skip
    jobs, skills = result.phi_t.shape
    print(
        f"phi: {params.model} fitted on {fit_device} in {time.perf_counter() - clock:.1f} s;"
        f" J = {jobs:,}, S = {skills:,}; k = {k}, block {rankings.RANK_BLOCK}"
    )
    for name in SEARCHES:
        reference = None
        for device in args.devices:
            runs = [search(result.phi_t, name, k, device) for _ in range(args.repeat)]
            seconds = ", ".join(f"{r[0]:.2f}" for r in runs)
            line = f"  {name:<15} on {device:<4}: {seconds} s"
            if reference is None:
                reference = runs[-1]
            else:
                line += (
                    "; against " + args.devices[0] + ": " + compare(*runs[-1][1:], *reference[1:])
                )
            print(line)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with work_directory("neighbors", args.workdir, args.keep) as base:
        run(args, base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
