"""How time and memory grow with the data: generate, ingest, prepare and a fixed number of
training epochs at several multiples of the paper's scale.

    .venv/bin/python benchmarks/scale.py [--sizes 1,4,10] [--epochs 2] [--workdir DIR] [--keep]
        [--conf KEY=VALUE ...]

Size 1 is the default generated crawl (generate.profiles people in generate.shards files:
about 157k profiles pass prepare's filter, the paper's run); size k multiplies both. Each
size runs in its own work directory, stage by stage through ./spark-submit.sh, training
`--epochs` epochs (early stopping cannot end it sooner) and publishing as usual. `--conf`
settings go to every stage (e.g. prepare.max_jobs=0 and prepare.max_skills=0 lift the default
cap on the vocabularies, the paper's sizes, and let phi grow with the data).

Printed per size and stage: wall time, throughput, the peak RSS of the stage's largest
process (the driver JVM or the driver's Python, from wait4's rusage over the process tree)
and, for train, the trainer's own peak (the Python process that trains and publishes, as
the stage reports it) and the seconds of the training epochs alone; then the growth of each
figure against size 1, with the targets: time at most 1.2 x the data ratio (10x the data in
12x the time), trainer peak RSS flat (within 1.25x of size 1).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `skillrank` importable
    sys.path.insert(0, str(ROOT))

from _workdir import work_directory  # noqa: E402

from skillrank.config import load_config  # noqa: E402

SCRIPT = str(ROOT / "spark-submit.sh")
STAGES = ("generate", "ingest", "prepare", "train")
# What each stage's throughput counts, from its own summary lines.
_COUNTS = {
    "generate": re.compile(r"^\[generate\] wrote \d+ profiles as (\d+) lines", re.M),
    "ingest": re.compile(r"^\[ingest\] raw lines (\d+)", re.M),
    "prepare": re.compile(r"^\[prepare\] profiles_raw rows (\d+)", re.M),
}
_TRAIN_SPLIT = re.compile(r"^\[prepare\] shards: train=(\d+)", re.M)
_EPOCH = re.compile(r"^epoch \d+ train_loss=\S+ validation_loss=\S+ seconds=([\d.]+)")
_TRAINER_PEAK = re.compile(r"peak memory of this Python process.*?: ([\d.]+) GiB")
TIME_TARGET = 1.2  # time ratio / data ratio
RSS_TARGET = 1.25  # trainer peak RSS ratio


@dataclass
class StageRun:
    stage: str
    seconds: float
    peak_rss_gib: float  # largest process of the stage's tree
    items: int | None  # lines or profiles, for throughput
    epoch_seconds: float | None = None
    trainer_peak_gib: float | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,10", help="multiples of the paper's scale")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per size")
    parser.add_argument("--workdir", help="keep every size's work directory here (empty)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="for every stage"
    )
    return parser.parse_args(argv)


def run_stage(stage: str, workdir: Path, options: list[str], log: Path) -> StageRun:
    """Run one stage to completion, measuring its wall time and its tree's peak RSS."""
    command = [SCRIPT, stage, "--workdir", str(workdir), *options]
    print(f"$ {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    if code != 0:
        print("\n".join(text.splitlines()[-15:]), file=sys.stderr)
        raise SystemExit(f"scale benchmark: {stage} exited {code}; see {log}")
    run = StageRun(stage, seconds, usage.ru_maxrss / 2**20, _count(stage, text))
    if stage == "train":
        epochs = [float(m.group(1)) for m in map(_EPOCH.match, text.splitlines()) if m]
        run.epoch_seconds = sum(epochs)
        peak = _TRAINER_PEAK.search(text)
        run.trainer_peak_gib = float(peak.group(1)) if peak else None
    print(f"  {stage}: {seconds:.1f} s, peak RSS {run.peak_rss_gib:.2f} GiB", flush=True)
    return run


def _count(stage: str, text: str) -> int | None:
    pattern = _COUNTS.get(stage)
    found = pattern.findall(text) if pattern else []
    return int(found[-1]) if found else None


def run_size(size: float, base: Path, epochs: int, settings: list[str]) -> dict[str, StageRun]:
    config = load_config()
    workdir = base / f"size-{size:g}"
    workdir.mkdir(parents=True)
    options = [
        *("--conf", f"generate.profiles={round(config.generate.profiles * size)}"),
        *("--conf", f"generate.shards={max(1, round(config.generate.shards * size))}"),
        *("--conf", f"train.max_epochs={epochs}", "--conf", f"train.patience={epochs + 1}"),
        *(option for setting in settings for option in ("--conf", setting)),
    ]
    print(f"\n== size {size:g}: {round(config.generate.profiles * size):,} people", flush=True)
    runs = {stage: run_stage(stage, workdir, options, workdir / f"{stage}.log") for stage in STAGES}
    split = _TRAIN_SPLIT.search((workdir / "prepare.log").read_text(errors="replace"))
    runs["train"].items = int(split.group(1)) * epochs if split else None  # profile-epochs
    return runs


def print_report(results: dict[float, dict[str, StageRun]]) -> int:
    sizes = sorted(results)
    print("\n== per size")
    header = f"{'size':>5} {'stage':<9} {'wall s':>9} {'items/s':>11} {'peak RSS GiB':>13}"
    print(header + f" {'epochs s':>9} {'trainer GiB':>12}")
    for size in sizes:
        for stage, run in results[size].items():
            rate = f"{run.items / run.seconds:,.0f}" if run.items else "-"
            extra = ""
            if stage == "train":
                extra = f" {run.epoch_seconds or 0:9.1f} {run.trainer_peak_gib or 0:12.2f}"
            print(
                f"{size:>5g} {stage:<9} {run.seconds:9.1f} {rate:>11} {run.peak_rss_gib:13.2f}"
                + extra
            )
    base, failures = sizes[0], 0
    print(f"\n== growth against size {base:g} (targets: time <= {TIME_TARGET} x data ratio;")
    print(f"   trainer peak RSS <= {RSS_TARGET} x)")
    for size in sizes[1:]:
        ratio = size / base
        for stage in STAGES:
            now, then = results[size][stage], results[base][stage]
            growth = now.seconds / then.seconds
            met = growth <= TIME_TARGET * ratio
            failures += not met
            line = f"  {size:g}x/{base:g}x {stage:<9} data x{ratio:g}, time x{growth:.2f}"
            if stage == "train" and now.epoch_seconds and then.epoch_seconds:
                line += f" (epochs x{now.epoch_seconds / then.epoch_seconds:.2f})"
            print(f"{line}: {'met' if met else 'NOT met'}")
        now_rss, then_rss = (
            results[size]["train"].trainer_peak_gib,
            results[base]["train"].trainer_peak_gib,
        )
        if now_rss and then_rss:
            met = now_rss / then_rss <= RSS_TARGET
            failures += not met
            print(
                f"  {size:g}x/{base:g}x trainer peak RSS {then_rss:.2f} -> {now_rss:.2f} GiB"
                f" (x{now_rss / then_rss:.2f}): {'met' if met else 'NOT met'}"
            )
    own = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"\nlargest process of all runs: {own:.2f} GiB (of this machine's memory)")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",")]
    results = {}
    with work_directory("scale", args.workdir, args.keep) as base:
        for size in sizes:
            results[size] = run_size(size, base, args.epochs, args.conf)
            if not (args.workdir or args.keep):  # a few GB each: free them as we go
                shutil.rmtree(base / f"size-{size:g}", ignore_errors=True)
        return print_report(results)


if __name__ == "__main__":
    raise SystemExit(main())
