"""Training benchmark: seconds per epoch of the fused kernel, the torch path and a naive model.

    .venv/bin/python benchmarks/train.py [--profiles N] [--epochs N] [--threads N]
        [--naive-batches N] [--skip-naive] [--skip-torch] [--skip-rss] [--skip-families]
        [--manifest PATH] [--workdir DIR] [--keep] [--device cpu|cuda] [--compare-cpu]

It writes paper-shaped training shards (J = 12,652 job titles, S = 15,185 skills, 125,801
training profiles of about 3 titles and 17 skills, validation and test at 5% each) and their
manifest.json exactly as `prepare` writes them (docs/tables.md, "Training shards"), then
measures, in one run:

- the data loader alone: one pass of skillrank.shards.iterate_batches over the train split;
- the fused kernel through skillrank.trainer.train (train.kernel=fused): a warm-up epoch and
  --epochs timed ones; the median training pass, the epoch with validation, the wall time
  per epoch with checkpoints, and the paper's 122 epochs extrapolated;
- the torch reference path the same way (train.kernel=torch; a warm-up and one timed epoch);
- a naive model (a dense one-hot input matrix, nn.Linear, Adam, autograd) on a few batches,
  extrapolated to an epoch, and its ratio to the fused kernel;
- each model family's whole fit with the default settings (skillrank.families, as the train
  stage calls it): seconds, epochs (EM iterations for the mixture), against the target of
  <= 60 s for the default family at paper scale;
- the trainer's peak RSS for 2 epochs at 1x and 2x the training profiles, each in its own
  subprocess.

With `--manifest PATH` it times on shards that `prepare` wrote (e.g. on the default crawl)
instead of synthetic ones: the families' figures mean most there, as the EM's and early
stopping's iterations depend on the data.

It measures and reports against the targets (<= 3 s per epoch, >= 200x the naive model,
peak RSS <= 2 GB and flat in the number of profiles); it asserts nothing. See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `skillrank` importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _workdir import work_directory  # noqa: E402

from skillrank.config import Config, TrainConfig, load_config  # noqa: E402
from skillrank.families import FAMILIES  # noqa: E402
from skillrank.kernel import build_kernel  # noqa: E402
from skillrank.shards import (  # noqa: E402
    SHARD_COLUMNS,
    SHARD_FILE_SCHEMA,
    Manifest,
    ShardFile,
    iterate_batches,
)
from skillrank.trainer import TrainResult, train  # noqa: E402

# The paper's shape.
JOBS, SKILLS, TRAIN_PROFILES, PAPER_EPOCHS = 12_652, 15_185, 125_801, 122
TITLES_PER_PROFILE, SKILLS_PER_PROFILE = 3, 17
# Popularity of the rank-r job or skill ~ (r + offset) ** -exponent (Zipf-Mandelbrot), fitted
# to the title and skill counts of the default generated crawl (`generate`, then `prepare`).
JOB_POPULARITY = (1.2, 100)
SKILL_POPULARITY = (1.3, 30)
# Validation and test are each 5% of the profiles, as prepare's default split fractions.
HELD_OUT_FRACTION = 0.05 / 0.90
TARGET_EPOCH_S, TARGET_RATIO, TARGET_RSS_BYTES = 3.0, 200.0, 2 * 10**9
# A training pass on one GPU (docs/trainer.md).
TARGET_GPU_EPOCH_S = 0.3
# The default family's whole fit at paper scale (model-quality issue).
TARGET_FIT_S = 60.0

# Last progress line of an epoch in train()'s log: "epoch N [...] done/total profiles R profiles/s".
_PROGRESS = re.compile(r"^epoch (\d+) \[[#.]*\] ([\d,]+)/[\d,]+ profiles ([\d,]+) profiles/s")
# Trains for a given number of epochs and prints the process's peak RSS in KiB: VmHWM, not
# ru_maxrss, which on Linux keeps the high-water mark of the forked parent across exec.
_RSS_CHILD = """
import dataclasses, io, sys, torch
from pathlib import Path
from skillrank.config import load_config
from skillrank.trainer import train
manifest, checkpoint, epochs, threads = sys.argv[1:5]
torch.set_num_threads(int(threads))
params = dataclasses.replace(
    load_config().train, model="softmax", max_epochs=int(epochs), patience=int(epochs) + 1
)
train(Path(manifest), params, Path(checkpoint), log=io.StringIO())
status = Path("/proc/self/status").read_text().splitlines()
print(next(line for line in status if line.startswith("VmHWM:")).split()[1])
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time training epochs: fused kernel, torch path, naive dense model."
    )
    parser.add_argument(
        "--profiles",
        type=int,
        default=TRAIN_PROFILES,
        help=f"training profiles (default: the paper's {TRAIN_PROFILES:,})",
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="timed epochs of the fused path (default 3)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch and kernel threads (default: torch's, one per core)"
    )
    parser.add_argument(
        "--naive-batches", type=int, default=3, help="timed batches of the naive model (default 3)"
    )
    parser.add_argument("--skip-naive", action="store_true", help="do not time the naive model")
    parser.add_argument(
        "--skip-torch", action="store_true", help="do not time the torch reference path"
    )
    parser.add_argument(
        "--skip-rss", action="store_true", help="do not measure peak RSS (two subprocesses)"
    )
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="where shards and checkpoints go; must not exist yet (default: a temp dir, removed)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    parser.add_argument(
        "--manifest",
        type=Path,
        help="time on these shards (e.g. <workdir>/shards/manifest.json after prepare on the"
        " default crawl) instead of synthetic ones; peak RSS is then skipped",
    )
    parser.add_argument(
        "--skip-families", action="store_true", help="do not time each model family's whole fit"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: time the torch path on the GPU (the fused kernel is CPU only) against the"
        " CPU torch path, the naive model and each family's whole fit on the GPU; no RSS",
    )
    parser.add_argument(
        "--compare-cpu",
        action="store_true",
        help="with --device cuda: fit each family on the CPU too and print how the two fits"
        " agree (best iteration, validation NDCG@10, phi, each title's top 10)",
    )
    args = parser.parse_args(argv)
    if args.compare_cpu and args.device != "cuda":
        parser.error("--compare-cpu compares a --device cuda fit with the CPU's")
    return args


# --- data ------------------------------------------------------------------------------------


def popularity(count: int, exponent: float, offset: float) -> np.ndarray:
    """Probabilities of ranks 0..count-1, proportional to (rank + 1 + offset) ** -exponent."""
    weights = (np.arange(1, count + 1) + offset) ** -exponent
    return weights / weights.sum()


def draw_sets(
    rng: np.random.Generator, sizes: np.ndarray, probabilities: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per profile, `sizes[i]` draws by `probabilities`, duplicates dropped, sorted.

    Returns (values int32, offsets int64 of len(sizes) + 1); every set keeps >= 1 value.
    """
    owner = np.repeat(np.arange(len(sizes)), sizes)
    values = rng.choice(len(probabilities), size=len(owner), p=probabilities)
    order = np.lexsort((values, owner))
    owner, values = owner[order], values[order]
    first = np.ones(len(values), dtype=bool)
    first[1:] = (owner[1:] != owner[:-1]) | (values[1:] != values[:-1])
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner[first], minlength=len(sizes)), out=offsets[1:])
    return values[first].astype(np.int32), offsets


def synthesize_profiles(rng: np.random.Generator, prefix: str, count: int) -> pa.Table:
    """`count` profiles in the shard schema: 1 + Poisson titles and skills (means 3 and 17),
    drawn by popularity; uniform job weights; ids `<prefix>00000000` upwards (sorted)."""
    titles = 1 + rng.poisson(TITLES_PER_PROFILE - 1, count)
    skills = 1 + rng.poisson(SKILLS_PER_PROFILE - 1, count)
    job_ids, job_offsets = draw_sets(rng, titles, popularity(JOBS, *JOB_POPULARITY))
    skill_ids, skill_offsets = draw_sets(rng, skills, popularity(SKILLS, *SKILL_POPULARITY))
    held = np.diff(job_offsets)
    weights = np.repeat(1.0 / held, held).astype(np.float32)
    columns = {
        "profile_id": pa.array([f"{prefix}{i:08d}" for i in range(count)]),
        "job_ids": pa.ListArray.from_arrays(job_offsets.astype(np.int32), job_ids),
        "job_weights": pa.ListArray.from_arrays(job_offsets.astype(np.int32), weights),
        "skill_ids": pa.ListArray.from_arrays(skill_offsets.astype(np.int32), skill_ids),
    }
    return pa.table(columns).cast(SHARD_FILE_SCHEMA)


def write_dataset(root: Path, train_profiles: int, rows_per_shard: int, seed: int) -> Path:
    """Shards, vocabularies and manifest.json under `root` as prepare lays them out; the
    manifest's path."""
    rng = np.random.default_rng(seed)
    run_id = "prepare-benchmark"
    held_out = round(train_profiles * HELD_OUT_FRACTION)
    counts = {"train": train_profiles, "validation": held_out, "test": held_out}
    splits: dict[str, list[ShardFile]] = {}
    for split, count in counts.items():
        table = synthesize_profiles(rng, split[0], count)
        (root / run_id / split).mkdir(parents=True)
        listing = []
        for index, start in enumerate(range(0, count, rows_per_shard)):
            path = f"{run_id}/{split}/part-{index:05d}-benchmark-c000.snappy.parquet"
            pq.write_table(table.slice(start, rows_per_shard), root / path)
            listing.append(ShardFile(path, min(rows_per_shard, count - start)))
        splits[split] = listing
    vocabulary = {}
    for name, key, label, size in (
        ("job_vocab", "job_id", "job_title", JOBS),
        ("skill_vocab", "skill_id", "skill_name", SKILLS),
    ):
        path = f"{run_id}/{name}/part-00000-benchmark-c000.snappy.parquet"
        (root / path).parent.mkdir(parents=True)
        vocab = pa.table(
            {
                key: pa.array(np.arange(size, dtype=np.int32)),
                label: pa.array([f"{label} {i}" for i in range(size)]),
                "profile_count": pa.array(np.zeros(size, dtype=np.int64)),
            }
        )
        pq.write_table(vocab, root / path)
        vocabulary[name] = [ShardFile(path, size)]
    manifest = Manifest(
        prepare_run_id=run_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        config_fingerprint="benchmark",
        split_fractions={"train": 0.9, "validation": 0.05, "test": 0.05},
        split_salt="benchmark",
        job_weighting="uniform",
        jobs=JOBS,
        skills=SKILLS,
        vocab_files=vocabulary,
        split_files=splits,
        shard_columns=SHARD_COLUMNS,
        delta_versions={},
    )
    path = root / "manifest.json"
    path.write_text(manifest.to_json())
    return path


# --- measurements ----------------------------------------------------------------------------


def time_loader(manifest_path: Path, params: TrainConfig, passes: int = 3) -> list[float]:
    """Seconds of one shuffled pass of iterate_batches over the train split, `passes` times."""
    files = Manifest.read(manifest_path).shards["train"]
    seconds = []
    for epoch in range(1, passes + 1):
        clock = time.perf_counter()
        for _ in iterate_batches(
            files,
            params.batch_size,
            shuffle=True,
            seed=params.seed,
            epoch=epoch,
            buffer_size=params.shuffle_buffer,
        ):
            pass
        seconds.append(time.perf_counter() - clock)
    return seconds


@dataclasses.dataclass
class TrainRun:
    """Timings of one train() call: per epoch, the training pass and the whole epoch."""

    label: str  # the path and device, e.g. "fused path on cpu"
    passes: dict[int, float]
    epochs: dict[int, float]
    scores: dict[int, tuple[float, float]]  # validation KL and NDCG@10 per epoch
    wall_s: float

    def timed(self, values: dict[int, float]) -> list[float]:
        """The values of the epochs after the first (warm-up) one."""
        return [s for epoch, s in sorted(values.items()) if epoch > 1]


def time_train(manifest_path: Path, params: TrainConfig, checkpoint: Path) -> TrainRun:
    """Run train() and collect its per-epoch training-pass seconds (from its progress log)
    and epoch seconds (training pass + validation, from its history)."""
    log = io.StringIO()
    clock = time.perf_counter()
    result = train(manifest_path, params, checkpoint, log=log)
    wall_s = time.perf_counter() - clock
    passes = {}
    for line in log.getvalue().replace("\r", "\n").splitlines():
        if found := _PROGRESS.match(line):
            done, rate = (float(found.group(i).replace(",", "")) for i in (2, 3))
            passes[int(found.group(1))] = done / rate
    if "fused kernel unavailable" in log.getvalue():
        raise SystemExit(f"train benchmark: error: {log.getvalue().splitlines()[0]}")
    if len(passes) != len(result.history):
        raise SystemExit("train benchmark: error: train()'s log has no progress line per epoch")
    epochs = {r.epoch: r.seconds for r in result.history}
    scores = {r.epoch: (r.validation_loss, r.validation_ndcg) for r in result.history}
    return TrainRun(f"{params.kernel} path on {params.device}", passes, epochs, scores, wall_s)


def _dense(
    batch_ids: np.ndarray, offsets: np.ndarray, values: np.ndarray, width: int
) -> torch.Tensor:
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    dense = torch.zeros(len(offsets) - 1, width)
    dense[torch.from_numpy(rows), torch.from_numpy(batch_ids)] = torch.from_numpy(values)
    return dense


def time_naive(manifest_path: Path, params: TrainConfig, batches: int) -> list[float]:
    """Seconds per batch of the textbook model: dense one-hot jobs (B x J) and targets (B x S),
    nn.Linear(J, S), log_softmax + kl_div, autograd, Adam, on params.device; one warm-up
    batch, then `batches`."""
    manifest = Manifest.read(manifest_path)
    device = torch.device(params.device)
    model = torch.nn.Linear(manifest.jobs, manifest.skills, bias=False, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    stream = iterate_batches(
        manifest.shards["train"],
        params.batch_size,
        shuffle=True,
        seed=params.seed,
        epoch=1,
        buffer_size=params.shuffle_buffer,
    )
    seconds = []
    for _, (_, batch) in zip(range(batches + 1), stream, strict=False):
        clock = time.perf_counter()
        jobs = _dense(
            batch.job_ids.numpy(),
            batch.job_offsets.numpy(),
            batch.job_weights.numpy(),
            manifest.jobs,
        ).to(device)
        counts = np.diff(batch.skill_offsets.numpy())
        target = _dense(
            batch.skill_ids.numpy(),
            batch.skill_offsets.numpy(),
            np.repeat(1.0 / counts, counts).astype(np.float32),
            manifest.skills,
        ).to(device)
        loss = F.kl_div(F.log_softmax(model(jobs), dim=1), target, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - clock)
    return seconds[1:]


def peak_rss(manifest_path: Path, checkpoint: Path, epochs: int, threads: int) -> int:
    """Peak RSS in bytes of a fresh process that runs train() for `epochs` epochs."""
    done = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(manifest_path), str(checkpoint), str(epochs)]
        + [str(threads)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"train benchmark: error: the RSS child failed ({done.returncode})")
    return int(done.stdout.split()[-1]) * 1024


# --- report ----------------------------------------------------------------------------------


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{s:.2f}" for s in values) + " s"


def _verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def report_run(run: TrainRun, batches_per_epoch: int) -> float:
    """Print one train() run; returns its median training pass in seconds."""
    passes, epochs = run.timed(run.passes), run.timed(run.epochs)
    median = statistics.median(passes)
    count = len(run.epochs)
    print(f"\n{run.label}, through skillrank.trainer.train (epoch 1 = warm-up):")
    print(
        f"  training pass   : {_seconds(passes)} -> median {median:.2f} s/epoch"
        f" ({median / batches_per_epoch * 1e3:.1f} ms/batch, loading included)"
    )
    print(f"  with validation : {_seconds(epochs)} -> median {statistics.median(epochs):.2f} s")
    print(
        f"  train() wall    : {run.wall_s:.1f} s for {count} epochs ({run.wall_s / count:.2f}"
        " s/epoch with phi's initialisation, checkpoints and the test loss)"
    )
    print(
        f"  paper's {PAPER_EPOCHS} epochs: {PAPER_EPOCHS * median / 60:.1f} min of training"
        f" passes, {PAPER_EPOCHS * run.wall_s / count / 60:.1f} min at train()'s wall rate"
    )
    return median


def report_naive(seconds: list[float], batches_per_epoch: int, ours: str, ours_s: float) -> float:
    """Print the naive model's timings against `ours` (the label of the trainer's path);
    returns its extrapolated seconds per epoch."""
    epoch_s = statistics.median(seconds) * batches_per_epoch
    print("\nnaive model (dense one-hot B x J input, nn.Linear, Adam, autograd), same device:")
    print(f"  per batch: {_seconds(seconds)} -> {epoch_s:,.1f} s/epoch extrapolated")
    print(
        f"  paper's {PAPER_EPOCHS} epochs: {PAPER_EPOCHS * epoch_s / 3600:.2f} h;"
        f" naive / {ours}: {epoch_s / ours_s:,.0f}x"
    )
    return epoch_s


def report_agreement(gpu: TrainRun, cpu: TrainRun) -> None:
    """The cuda run's validation scores beside the CPU torch path's, epoch by epoch: the same
    steps on other hardware (float32 sums in another order; scatter-adds on the GPU are not
    deterministic)."""
    print(f"\n{gpu.label} against the {cpu.label}, same data, seed and steps:")
    for epoch, (kl, ndcg) in sorted(cpu.scores.items()):
        gpu_kl, gpu_ndcg = gpu.scores[epoch]
        print(
            f"  epoch {epoch}: validation KL {gpu_kl:.6f} vs {kl:.6f} ({gpu_kl - kl:+.1e}),"
            f" NDCG@10 {gpu_ndcg:.6f} vs {ndcg:.6f} ({gpu_ndcg - ndcg:+.1e})"
        )


def report_targets(
    ours: str,
    epoch_s: float,
    target_s: float,
    naive_s: float | None,
    rss: dict[int, int] | None,
    profiles: int,
) -> None:
    """The figures against their targets; `ours` labels the timed path (fused on cpu, torch
    on cuda), whose training pass takes `epoch_s` against `target_s`."""
    scale = (
        ""
        if profiles == TRAIN_PROFILES
        else f" (set for {TRAIN_PROFILES:,} profiles, not {profiles:,})"
    )
    print(f"\ntargets{scale}:")
    print(
        f"  {ours} training pass <= {target_s:g} s/epoch: {epoch_s:.2f} s"
        f" {_verdict(epoch_s <= target_s)}"
    )
    if naive_s is not None:
        ratio = naive_s / epoch_s
        met = _verdict(ratio >= TARGET_RATIO)
        print(f"  naive / {ours} >= {TARGET_RATIO:g}x: {ratio:,.0f}x {met}")
    if rss is not None:
        worst = max(rss.values())
        print(
            f"  peak RSS <= {TARGET_RSS_BYTES / 1e9:g} GB at 1x and 2x: {worst / 1e9:.2f} GB"
            f" {_verdict(worst <= TARGET_RSS_BYTES)}; 1x -> 2x: {(rss[2] - rss[1]) / 1e6:+,.0f} MB"
        )
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end: {load} (1 / 5 / 15 min; other work skews timings)")


def _fit(manifest_path: Path, params: TrainConfig, base: Path) -> tuple[TrainResult, float]:
    """A family's whole fit through FAMILIES, as the train stage calls it, and its seconds."""
    clock = time.perf_counter()
    result = FAMILIES[params.model].fit(manifest_path, params, base / "ckpt.pt", log=io.StringIO())
    seconds = time.perf_counter() - clock
    shutil.rmtree(base, ignore_errors=True)
    return result, seconds


def _describe_fit(name: str, result: TrainResult, seconds: float, target: str = "") -> str:
    return (
        f"  {name:<8} {seconds:6.1f} s for {result.epochs_run} epochs (iterations),"
        f" {seconds / result.epochs_run:.2f} s each; best {result.best_epoch},"
        f" validation NDCG@10 {result.best_validation_ndcg:.4f}{target}"
    )


def report_fit_agreement(gpu: TrainResult, cpu: TrainResult) -> None:
    """How a GPU fit and a CPU fit of the same family on the same shards agree: per iteration
    validation NDCG@10, phi where both are finite, and each title's top 10 skills."""
    ndcg = [
        abs(g.validation_ndcg - c.validation_ndcg)
        for g, c in zip(gpu.history, cpu.history, strict=False)
    ]
    finite = gpu.phi_t.isfinite() & cpu.phi_t.isfinite()
    same_finite = bool((gpu.phi_t.isfinite() == cpu.phi_t.isfinite()).all())
    phi_diff = float((gpu.phi_t - cpu.phi_t)[finite].abs().max())
    top = [phi.topk(10, dim=1).indices for phi in (gpu.phi_t, cpu.phi_t)]
    same_top = float((top[0] == top[1]).all(dim=1).double().mean())
    print(
        f"           against the CPU: best iteration {gpu.best_epoch} vs {cpu.best_epoch},"
        f" iterations {gpu.epochs_run} vs {cpu.epochs_run}; validation NDCG@10 differs by at"
        f" most {max(ndcg):.1e} per iteration; phi by at most {phi_diff:.1e} (finite in the"
        f" same cells: {same_finite}); titles whose top 10 is the same list: {same_top:.4%}"
    )


def report_families(
    manifest_path: Path, config: Config, base: Path, device: str, compare_cpu: bool
) -> None:
    """Each model family's whole fit with the default settings on `device`, the default family
    first, against the target for it; with `compare_cpu`, each one's CPU fit beside it."""
    print(
        f"\nwhole fit per model family on {device} (default settings; default family"
        f" {config.train.model}):"
    )
    for name in sorted(FAMILIES, key=lambda name: name != config.train.model):
        params = dataclasses.replace(config.train, model=name, device=device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result, seconds = _fit(manifest_path, params, base / name)
        target = ""
        if device == "cuda":
            target = f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        if name == config.train.model:
            target += f"; target <= {TARGET_FIT_S:g} s: {_verdict(seconds <= TARGET_FIT_S)}"
        print(_describe_fit(name, result, seconds, target))
        if compare_cpu:
            on_cpu = dataclasses.replace(params, device="cpu")
            cpu_result, cpu_seconds = _fit(manifest_path, on_cpu, base / f"{name}-cpu")
            print(_describe_fit("  on cpu", cpu_result, cpu_seconds))
            report_fit_agreement(result, cpu_result)


def run(args: argparse.Namespace, base: Path) -> None:
    """Build the data under `base`, measure everything, print the report."""
    config = load_config()
    params = dataclasses.replace(config.train, device=args.device)
    rows_per_shard = config.prepare.rows_per_shard
    threads = torch.get_num_threads()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("train benchmark: error: --device cuda, but torch sees no GPU")
    print("\n=== Training benchmark ===")
    gpu = f"; GPU: {torch.cuda.get_device_name()}" if cuda else ""
    print(
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores;"
        f" threads: {threads}; torch {torch.__version__}{gpu}"
    )
    clock = time.perf_counter()
    manifest_path = args.manifest or write_dataset(
        base / "shards", args.profiles, rows_per_shard, params.seed
    )
    manifest = Manifest.read(manifest_path)
    batches = -(-manifest.rows["train"] // params.batch_size)
    size = sum(p.stat().st_size for p in manifest_path.parent.rglob("*.parquet")) / 2**20
    print(
        f"data: J = {manifest.jobs:,}, S = {manifest.skills:,}; profiles: train"
        f" {manifest.rows['train']:,}, validation {manifest.rows['validation']:,},"
        f" test {manifest.rows['test']:,}; {size:.1f} MiB of shards, built in"
        f" {time.perf_counter() - clock:.1f} s"
    )
    print(
        f"batch size {params.batch_size} ({batches} per epoch), shuffle buffer"
        f" {params.shuffle_buffer:,}"
    )

    if not cuda:
        clock = time.perf_counter()
        build_kernel(base / "kernel-cache")
        seconds = time.perf_counter() - clock
        print(f"fused kernel, compiled at first use (empty cache): {seconds:.2f} s")
    loader = time_loader(manifest_path, params)
    print(
        f"\nloader alone (iterate_batches over the train split): {_seconds(loader)}"
        f" -> median {statistics.median(loader):.2f} s/epoch"
    )

    # The timed path: the fused kernel on cpu, the torch path on cuda (the kernel is CPU only).
    timed = dataclasses.replace(
        params,
        model="softmax",
        max_epochs=1 + args.epochs,
        patience=args.epochs + 2,
        kernel="torch" if cuda else "fused",
    )
    main_run = time_train(manifest_path, timed, base / "timed" / "ckpt.pt")
    main_s = report_run(main_run, batches)
    shutil.rmtree(base / "timed")
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"  peak GPU memory allocated by torch: {peak:.2f} GiB")
    ours = main_run.label
    if not args.skip_torch:
        reference = dataclasses.replace(timed, max_epochs=2, kernel="torch", device="cpu")
        torch_run = time_train(manifest_path, reference, base / "torch" / "ckpt.pt")
        torch_s = report_run(torch_run, batches)
        shutil.rmtree(base / "torch")
        print(f"  {torch_run.label} / {main_run.label} training pass: {torch_s / main_s:.1f}x")
        if cuda:
            report_agreement(main_run, torch_run)

    naive_s = None
    if not args.skip_naive:
        naive = time_naive(manifest_path, params, args.naive_batches)
        naive_s = report_naive(naive, batches, ours, main_s)

    if not args.skip_families:
        report_families(manifest_path, config, base, args.device, args.compare_cpu)

    rss = None
    if not args.skip_rss and not args.manifest and not cuda:
        double = write_dataset(base / "shards-2x", 2 * args.profiles, rows_per_shard, params.seed)
        rss = {
            scale: peak_rss(path, base / f"rss-{scale}x" / "ckpt.pt", 2, threads)
            for scale, path in ((1, manifest_path), (2, double))
        }
        print("\npeak RSS of train() for 2 epochs, each in its own process (VmHWM):")
        for scale, value in rss.items():
            profiles = scale * args.profiles
            print(f"  {scale}x ({profiles:,} training profiles): {value / 1e9:.2f} GB")
    target_s = TARGET_GPU_EPOCH_S if cuda else TARGET_EPOCH_S
    report_targets(ours, main_s, target_s, naive_s, rss, args.profiles)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with work_directory("train", args.workdir, args.keep) as base:
        run(args, base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
