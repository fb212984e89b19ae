"""train: learn phi from the shards that prepare wrote (publishing to Delta comes later).

    ./spark-submit.sh train [--workdir DIR] [--resume] [--device cpu|cuda] [--conf train.KEY=VALUE]

Reads only <workdir>/<catalog.shards_dir>/manifest.json and the files it lists; writes a
checkpoint after every epoch to <workdir>/<train.checkpoint_dir>/checkpoint.pt (see
docs/trainer.md). `--resume` continues from that checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs._cli import Stage, StageContext, StageError, StageResult, run_stages
from skillrank.config import Config
from skillrank.trainer import train

CHECKPOINT_FILE = "checkpoint.pt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--device", help="cpu or cuda (default: train.device of the config)")


def _paths(workdir: Path, config: Config) -> tuple[Path, Path]:
    manifest = workdir / config.catalog.shards_dir / "manifest.json"
    checkpoint = workdir / config.train.checkpoint_dir / CHECKPOINT_FILE
    return manifest, checkpoint


def check(args: argparse.Namespace, config: Config) -> None:
    """Fail fast, before Spark starts, when there is nothing to train on or resume from."""
    manifest, checkpoint = _paths(Path(args.workdir).resolve(), config)
    if not manifest.is_file():
        raise StageError(f"no training shards: {manifest} does not exist (run prepare first)")
    if args.resume and not checkpoint.is_file():
        raise StageError(f"--resume: no checkpoint at {checkpoint}")


def run(ctx: StageContext) -> StageResult:
    manifest, checkpoint = _paths(ctx.workdir, ctx.config)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = train(
            manifest,
            ctx.config.train,
            checkpoint,
            resume=ctx.args.resume,
            device=ctx.args.device,
            config_json=json.dumps(ctx.config.to_dict(), sort_keys=True),
            log=sys.stdout,
        )
    except ValueError as exc:
        raise StageError(str(exc)) from exc
    rows = json.loads(manifest.read_text())["splits"]["train"]["rows"]
    jobs, skills = result.phi_t.shape
    return StageResult(
        rows_in=rows,
        rows_out=jobs * skills,
        summary=[
            f"phi: {skills} skills x {jobs} jobs; {result.epochs_run} epochs,"
            f" best epoch {result.best_epoch}",
            f"validation loss {result.best_validation_loss:.6f}, test loss {result.test_loss:.6f}",
            f"checkpoint: {checkpoint}",
        ],
    )


STAGE = Stage(name="train", add_arguments=add_arguments, run=run, check=check)


def main() -> None:
    raise SystemExit(run_stages([STAGE]))


if __name__ == "__main__":
    main()
