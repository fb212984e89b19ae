"""The trainer: the model's math, the shard reader, and the training loop (no Spark needed)."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from skillrank.config import SPLITS, TrainConfig, load_config
from skillrank.model import Batch, append_job, kl_loss, kl_loss_and_grad, kl_loss_autograd
from skillrank.shards import Manifest, ShardFile, iterate_batches, read_ahead
from skillrank.trainer import train
from tests.conftest import random_batch


def test_explicit_gradient_equals_autograd() -> None:
    rng = np.random.default_rng(7)
    jobs, skills = 6, 9
    batch = random_batch(rng, profiles=12, jobs=jobs, skills=skills)
    phi_t = torch.tensor(rng.normal(size=(jobs, skills)), dtype=torch.float64)

    reference = phi_t.clone().requires_grad_(True)
    expected_loss = kl_loss_autograd(reference, batch)
    expected_loss.backward()

    loss, rows, row_grads = kl_loss_and_grad(phi_t, batch)
    grad = torch.zeros_like(phi_t).index_add_(0, rows, row_grads)
    assert torch.allclose(loss, expected_loss.detach(), rtol=1e-12, atol=1e-12), (
        loss.item(),
        expected_loss.item(),
    )
    assert reference.grad is not None
    assert torch.allclose(grad, reference.grad, rtol=1e-10, atol=1e-12), (
        (grad - reference.grad).abs().max().item()
    )
    assert torch.allclose(kl_loss(phi_t, batch), expected_loss.detach(), atol=1e-12)
    assert torch.equal(phi_t, reference.detach()), "kl_loss_and_grad changed phi_t in place"


def test_training_needs_no_spark() -> None:
    """The trainer, every model family and the training benchmark import no pyspark: the
    processes TorchDistributor starts, and a GPU machine with torch alone, can train."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks');"
        " import skillrank.families, skillrank.shards, train;"
        " print(sorted({m.split('.')[0] for m in sys.modules} & {'pyspark', 'py4j'}))"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_loss_is_zero_only_when_prediction_matches_target() -> None:
    # One job, one profile with skills {0, 1} out of 3: phi = (big, big, -big) gives KL ~ 0.
    batch = Batch(
        job_ids=torch.tensor([0]),
        job_weights=torch.tensor([1.0], dtype=torch.float64),
        job_offsets=torch.tensor([0, 1]),
        skill_ids=torch.tensor([0, 1]),
        skill_offsets=torch.tensor([0, 2]),
    )
    good = torch.tensor([[30.0, 30.0, -30.0]], dtype=torch.float64)
    uniform = torch.zeros(1, 3, dtype=torch.float64)
    assert kl_loss(good, batch).item() < 1e-12
    # Uniform prediction: KL = log 3 - log 2.
    assert abs(kl_loss(uniform, batch).item() - (np.log(3) - np.log(2))) < 1e-12


# --- shards -----------------------------------------------------------------------------------

Profile = tuple[str, list[int], list[float], list[int]]


def _write_split(root: Path, split: str, profiles: list[Profile], shards: int) -> list[ShardFile]:
    (root / "set" / split).mkdir(parents=True, exist_ok=True)
    listing = []
    for index, chunk in enumerate(np.array_split(np.arange(len(profiles)), shards)):
        rows = [profiles[i] for i in chunk]
        table = pa.table(
            {
                "profile_id": pa.array([r[0] for r in rows], pa.string()),
                "job_ids": pa.array([r[1] for r in rows], pa.list_(pa.int32())),
                "job_weights": pa.array([r[2] for r in rows], pa.list_(pa.float32())),
                "skill_ids": pa.array([r[3] for r in rows], pa.list_(pa.int32())),
            }
        )
        relative = f"set/{split}/part-{index:05d}.parquet"
        # Small row groups so that a shard is read in several pieces.
        pq.write_table(table, root / relative, row_group_size=97)
        listing.append(ShardFile(relative, len(rows)))
    return listing


def _write_shards(
    root: Path, splits: dict[str, list[Profile]], jobs: int, skills: int, shards: int = 3
) -> Path:
    """Shards and a manifest.json as `prepare` writes them (docs/tables.md); its path."""
    manifest = Manifest(
        prepare_run_id="prepare-test",
        created_at="2026-11-29T00:00:00+00:00",
        config_fingerprint="test",
        split_fractions={"train": 0.9, "validation": 0.05, "test": 0.05},
        split_salt="test",
        job_weighting="uniform",
        jobs=jobs,
        skills=skills,
        vocab_files={"job_vocab": [], "skill_vocab": []},
        split_files={s: _write_split(root, s, rows, shards) for s, rows in splits.items()},
        shard_columns={},
        delta_versions={},
        inputs_fingerprint="test-inputs",
    )
    path = root / "manifest.json"
    path.write_text(manifest.to_json())
    return path


def _simple_profiles(count: int, prefix: str) -> list[Profile]:
    return [(f"{prefix}{i:05d}", [i % 7], [1.0], [i % 5, 5 + i % 3]) for i in range(count)]


def _epoch_ids(files: list[Path], seed: int, epoch: int) -> list[str]:
    ids: list[str] = []
    for batch_ids, batch in iterate_batches(
        files, batch_size=50, shuffle=True, seed=seed, epoch=epoch, buffer_size=300
    ):
        assert batch.size == len(batch_ids) <= 50
        ids.extend(batch_ids)
    return ids


def test_every_profile_once_per_epoch_in_a_seeded_order(tmp_path: Path) -> None:
    profiles = _simple_profiles(1234, "p")
    manifest = Manifest.read(
        _write_shards(tmp_path, {"train": profiles}, jobs=7, skills=8, shards=4)
    )
    assert (manifest.jobs, manifest.skills, manifest.rows) == (7, 8, {"train": 1234})
    files = manifest.shards["train"]
    first = _epoch_ids(files, seed=1, epoch=0)
    assert sorted(first) == sorted(p[0] for p in profiles)
    assert len(first) == len(set(first))
    assert _epoch_ids(files, seed=1, epoch=0) == first
    assert _epoch_ids(files, seed=1, epoch=1) != first
    assert _epoch_ids(files, seed=2, epoch=0) != first
    assert first != sorted(first)


def test_batches_carry_each_profiles_jobs_and_skills(tmp_path: Path) -> None:
    profiles = [
        ("a", [0, 3], [0.25, 0.75], [1]),
        ("b", [2], [1.0], [0, 4, 5]),
        ("c", [1, 2, 3], [0.5, 0.25, 0.25], [2, 3]),
    ]
    files = Manifest.read(_write_shards(tmp_path, {"test": profiles}, 4, 6, shards=2)).shards[
        "test"
    ]
    ((ids, batch),) = list(iterate_batches(files, batch_size=10, shuffle=False))
    assert ids == ["a", "b", "c"]
    assert batch.job_ids.tolist() == [0, 3, 2, 1, 2, 3]
    assert batch.job_weights.tolist() == [0.25, 0.75, 1.0, 0.5, 0.25, 0.25]
    assert batch.job_offsets.tolist() == [0, 2, 3, 6]
    assert batch.skill_ids.tolist() == [1, 0, 4, 5, 2, 3]
    assert batch.skill_offsets.tolist() == [0, 1, 4, 6]


def test_read_ahead_keeps_order_raises_in_place_and_stops_when_closed() -> None:
    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise RuntimeError("shard 3 unreadable")

    got = []
    with pytest.raises(RuntimeError, match="shard 3 unreadable"):
        for item in read_ahead(failing()):
            got.append(item)
    assert got == [1, 2]

    produced: list[int] = []

    def endless() -> Iterator[int]:
        for i in itertools.count():
            produced.append(i)
            yield i

    ahead = read_ahead(endless(), depth=2)
    assert next(ahead) == 0
    ahead.close()
    assert "read-ahead" not in [thread.name for thread in threading.enumerate()]
    # One taken, two queued, one waiting for room when the stop came.
    assert len(produced) <= 4


def test_append_job_gives_every_profile_one_more_job_after_its_own() -> None:
    batch = Batch(
        job_ids=torch.tensor([0, 3, 2, 1, 2, 3]),
        job_weights=torch.tensor([0.25, 0.75, 1.0, 0.5, 0.25, 0.25]),
        job_offsets=torch.tensor([0, 2, 3, 6]),
        skill_ids=torch.tensor([1, 0, 4]),
        skill_offsets=torch.tensor([0, 1, 2, 3]),
    )
    got = append_job(batch, 4, 0.5)
    assert got.job_ids.tolist() == [0, 3, 4, 2, 4, 1, 2, 3, 4]
    assert got.job_weights.tolist() == [0.25, 0.75, 0.5, 1.0, 0.5, 0.5, 0.25, 0.25, 0.5]
    assert got.job_offsets.tolist() == [0, 3, 5, 9]
    assert got.skill_ids is batch.skill_ids and got.skill_offsets is batch.skill_offsets
    assert batch.job_ids.numel() == 6, "append_job changed its input"


def test_a_manifest_without_vocabulary_or_of_another_format_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"format_version": 1, "splits": {}}))
    with pytest.raises(ValueError, match="lacks 'vocabulary'"):
        Manifest.read(path)
    for version in (2, None):
        path.write_text(json.dumps({"format_version": version, "splits": {}}))
        with pytest.raises(ValueError, match=f"has format_version {version}; this version"):
            Manifest.read(path)


def test_a_manifest_reads_back_what_it_wrote(tmp_path: Path) -> None:
    profiles = _simple_profiles(30, "p")
    written = Manifest.read(_write_shards(tmp_path, {"train": profiles, "test": profiles}, 7, 8))
    assert written.rows == {"train": 30, "test": 30}
    assert Manifest.parse(written.to_json(), tmp_path) == written
    assert json.loads(written.to_json())["splits"]["train"]["rows"] == 30
    assert written.inputs_fingerprint == "test-inputs"
    # A manifest from before inputs_fingerprint was recorded reads with an empty one, which
    # no rerun of prepare matches.
    older = json.loads(written.to_json())
    del older["inputs_fingerprint"]
    assert Manifest.parse(json.dumps(older), tmp_path).inputs_fingerprint == ""


# --- training ---------------------------------------------------------------------------------


def _planted_profiles(
    rng: np.random.Generator, count: int, planted: np.ndarray, skills: int, prefix: str
) -> list[Profile]:
    """Profiles of 1-3 jobs; each held job shows each planted skill with probability 0.8,
    plus one random skill (noise) per profile half of the time."""
    jobs = len(planted)
    rows: list[Profile] = []
    for i in range(count):
        held = sorted(rng.choice(jobs, size=rng.integers(1, 4), replace=False).tolist())
        shown = {int(s) for j in held for s in planted[j] if rng.random() < 0.8}
        if rng.random() < 0.5 or not shown:
            shown.add(int(rng.integers(skills)))
        rows.append((f"{prefix}{i:05d}", held, [1.0 / len(held)] * len(held), sorted(shown)))
    return rows


def _planted_case(
    tmp_path: Path, train_rows: int = 3000, shards: int = 3
) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(11)
    jobs, skills = 20, 50
    planted = np.stack([rng.choice(skills, size=3, replace=False) for _ in range(jobs)])
    splits = {
        "train": _planted_profiles(rng, train_rows, planted, skills, "t"),
        "validation": _planted_profiles(rng, 300, planted, skills, "v"),
        "test": _planted_profiles(rng, 300, planted, skills, "x"),
    }
    return _write_shards(tmp_path / "shards", splits, jobs, skills, shards), planted


def _params(**changes: object) -> TrainConfig:
    base = load_config().train
    return dataclasses.replace(
        base,
        **{
            "model": "softmax",
            # The small planted data here wants a smaller step than the paper-scale default.
            "learning_rate": 50.0,
            "l2": 0.0,  # the default suits the default learning rate, not 50
            "min_improvement": 0.0,
            "batch_size": 100,
            "shuffle_buffer": 500,
            "max_epochs": 30,
            "patience": 3,
            **changes,
        },
    )


@pytest.mark.parametrize("skill_bias", [True, False])
def test_planted_skills_are_found_and_the_loss_goes_down(tmp_path: Path, skill_bias: bool) -> None:
    manifest, planted = _planted_case(tmp_path)
    log = io.StringIO()
    result = train(manifest, _params(skill_bias=skill_bias), tmp_path / "ckpt.pt", log=log)
    # With the bias, phi's rows are deviations from the background: a title's planted skills
    # still stand out in its own row.
    top = result.phi_t.argmax(dim=1).numpy()
    missed = {
        j: (int(top[j]), sorted(planted[j].tolist()))
        for j in range(len(planted))
        if top[j] not in planted[j]
    }
    assert not missed, f"job -> (top skill, planted skills): {missed}"
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < losses[0] * 0.8, losses
    # 1-3 titles of 3 planted skills each, each listed with probability 0.8, plus noise: the
    # planted skills ranked first give an NDCG@10 of about 0.85 (popularity alone: 0.2).
    assert result.best_validation_ndcg > 0.8, result.history
    assert torch.any(result.background != 0) == skill_bias
    assert "validation_ndcg@10=" in log.getvalue() and "profiles/s" in log.getvalue()


def _mentions(manifest: Path, skills: int) -> torch.Tensor:
    """Each skill's number of mentions in the train split, counted here from the shards."""
    files = Manifest.read(manifest).shards["train"]
    ids = [s for _, batch in iterate_batches(files, 64, shuffle=False) for s in batch.skill_ids]
    return torch.bincount(torch.stack(ids), minlength=skills).double()


def test_the_bias_starts_at_log_popularity_and_is_not_part_of_phi(tmp_path: Path) -> None:
    manifest, planted = _planted_case(tmp_path)
    jobs, skills = planted.shape[0], 50
    # A step too small to move anything visibly: the result is the starting point.
    params = _params(learning_rate=1e-6, max_epochs=1)
    result = train(manifest, params, tmp_path / "c.pt", log=io.StringIO())

    mentions = _mentions(manifest, skills)
    log_popularity = ((mentions + 1) / (mentions.sum() + skills)).log().float()
    assert torch.allclose(result.background, log_popularity, atol=1e-5), (
        (result.background - log_popularity).abs().max()
    )
    # phi_t holds the J titles' rows only, still at their normal(0, init_std) start.
    assert result.phi_t.shape == (jobs, skills)
    assert result.phi_t.std().item() == pytest.approx(params.init_std, rel=0.1)
    # The checkpoint's trained rows are phi_t's rows, then the bias row (b / weight).
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["parameters"].shape == (jobs + 1, skills)
    assert torch.equal(state["parameters"][:jobs], result.phi_t)
    weight = params.batch_size**-0.5
    assert torch.equal(state["parameters"][jobs] * weight, result.background)

    without = train(
        manifest,
        _params(learning_rate=1e-6, max_epochs=1, skill_bias=False),
        tmp_path / "d.pt",
        log=io.StringIO(),
    )
    assert torch.equal(without.background, torch.zeros(skills))


def test_l2_decays_the_rows_of_phi_but_not_the_bias(tmp_path: Path) -> None:
    manifest, _ = _planted_case(tmp_path)
    l2 = 1e-4  # with learning rate 50: a factor 0.995 per step
    # One epoch: the decay is the factor of its 30 steps (3000 profiles, 100 a batch), applied
    # to phi's rows after the epoch's steps; the steps, and so the bias, are those without it.
    plain = train(manifest, _params(max_epochs=1), tmp_path / "a.pt", log=io.StringIO())
    decayed = train(manifest, _params(max_epochs=1, l2=l2), tmp_path / "b.pt", log=io.StringIO())
    factor = (1 - 50.0 * l2) ** 30
    assert torch.allclose(decayed.phi_t, plain.phi_t * factor, rtol=1e-6, atol=1e-7)
    assert torch.equal(decayed.background, plain.background)
    # Over several epochs (each last checkpoint's phi: the same number of epochs) the decay
    # keeps phi smaller.
    norms = {}
    for name, value in (("plain", 0.0), ("decayed", l2)):
        checkpoint = tmp_path / f"{name}.pt"
        train(manifest, _params(max_epochs=4, patience=10, l2=value), checkpoint, log=io.StringIO())
        norms[name] = torch.load(checkpoint, weights_only=True)["phi_t"].norm().item()
    assert norms["decayed"] < 0.9 * norms["plain"], norms


def test_early_stopping_follows_validation_ndcg_not_the_loss(tmp_path: Path) -> None:
    # Training and validation agree: job 0 -> skill 0. Skill 0 is ranked first from the first
    # epoch on (NDCG 1, which cannot improve) while the validation loss keeps falling: the
    # best epoch is 1 and training stops `patience` epochs later.
    rows = [(f"t{i:04d}", [0], [1.0], [0]) for i in range(400)]
    validation_rows = [(f"v{i:04d}", [0], [1.0], [0]) for i in range(50)]
    manifest = _write_shards(
        tmp_path / "shards",
        {"train": rows, "validation": validation_rows, "test": validation_rows},
        jobs=2,
        skills=4,
    )
    result = train(
        manifest, _params(max_epochs=50, patience=2), tmp_path / "c.pt", log=io.StringIO()
    )
    assert (result.best_epoch, result.epochs_run) == (1, 3), result.history
    assert [r.validation_ndcg for r in result.history] == [1.0] * 3
    validation = [r.validation_loss for r in result.history]
    assert validation == sorted(validation, reverse=True) and validation[2] < validation[0]
    assert (result.best_validation_loss, result.best_validation_ndcg) == (validation[0], 1.0)


def test_small_improvements_do_not_reset_patience_and_the_highest_ndcg_wins(
    tmp_path: Path,
) -> None:
    manifest, _ = _planted_case(tmp_path, train_rows=600)
    checkpoint = tmp_path / "c.pt"
    # No NDCG improvement can exceed 10: training stops `patience` epochs after the first,
    # while the result is the epoch of the highest validation NDCG (kept on disk, one file).
    result = train(
        manifest, _params(min_improvement=10.0, patience=3), checkpoint, log=io.StringIO()
    )
    ndcg = [r.validation_ndcg for r in result.history]
    validation = [r.validation_loss for r in result.history]
    assert result.epochs_run == 1 + 3 and max(ndcg) > ndcg[0], ndcg
    assert result.best_epoch == 1 + ndcg.index(max(ndcg)), ndcg
    # Here the lowest validation loss is another epoch's: the selection is not by the loss.
    assert result.best_epoch != 1 + validation.index(min(validation)), validation
    best = result.history[result.best_epoch - 1]
    assert (result.best_validation_ndcg, result.best_validation_loss) == (
        best.validation_ndcg,
        best.validation_loss,
    )
    # Best files kept: the one of the last checkpoint and the one of the previous checkpoint.
    previous = torch.load(tmp_path / "c.previous.pt", weights_only=True)
    assert previous["epoch"] == result.epochs_run - 1
    kept = {p.name for p in tmp_path.glob("c.best-epoch-*.pt")}
    assert kept == {f"c.best-epoch-{e}.pt" for e in (result.best_epoch, previous["best_epoch"])}
    best_file = torch.load(tmp_path / f"c.best-epoch-{result.best_epoch}.pt", weights_only=True)
    assert torch.equal(best_file["phi_t"], result.phi_t)
    assert torch.equal(best_file["background"], result.background)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_reaches_the_phi_of_an_uninterrupted_run(tmp_path: Path, optimizer: str) -> None:
    manifest, _ = _planted_case(tmp_path, train_rows=1000)
    lr = 50.0 if optimizer == "sgd" else 0.05
    straight_ckpt, split_ckpt = tmp_path / "straight.pt", tmp_path / "split.pt"
    params = _params(optimizer=optimizer, learning_rate=lr, max_epochs=4, patience=10)
    straight = train(manifest, params, straight_ckpt, log=io.StringIO())

    first = train(
        manifest,
        _params(optimizer=optimizer, learning_rate=lr, max_epochs=2, patience=10),
        split_ckpt,
        log=io.StringIO(),
    )
    assert first.epochs_run == 2
    resumed = train(manifest, params, split_ckpt, resume=True, log=io.StringIO())

    assert resumed.epochs_run == straight.epochs_run == 4
    assert resumed.history == [
        dataclasses.replace(r, seconds=s.seconds)
        for r, s in zip(straight.history, resumed.history, strict=True)
    ]
    assert torch.equal(resumed.phi_t, straight.phi_t)
    assert torch.equal(resumed.background, straight.background)
    last_straight = torch.load(straight_ckpt, weights_only=True)
    last_resumed = torch.load(split_ckpt, weights_only=True)
    assert torch.equal(last_resumed["parameters"], last_straight["parameters"])
    assert last_resumed["epoch"] == 4
    assert json.loads(last_resumed["config"])["optimizer"] == optimizer


@pytest.mark.parametrize("damage", ["truncated", "not_a_checkpoint"])
def test_resume_from_an_unreadable_checkpoint_uses_the_previous_one(
    tmp_path: Path, damage: str
) -> None:
    manifest, _ = _planted_case(tmp_path, train_rows=600)
    params = _params(max_epochs=4, patience=10)
    straight = train(manifest, params, tmp_path / "straight.pt", log=io.StringIO())

    checkpoint = tmp_path / "c.pt"
    train(manifest, _params(max_epochs=3, patience=10), checkpoint, log=io.StringIO())
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"garbage")
    log = io.StringIO()
    resumed = train(manifest, params, checkpoint, resume=True, log=log)

    assert "resuming from the previous checkpoint (epoch 2)" in log.getvalue()
    assert (tmp_path / "c.unreadable.pt").read_bytes() != data
    assert resumed.epochs_run == 4 and torch.equal(resumed.phi_t, straight.phi_t)
    assert torch.equal(resumed.background, straight.background)
    assert [(r.validation_loss, r.validation_ndcg) for r in resumed.history] == [
        (r.validation_loss, r.validation_ndcg) for r in straight.history
    ]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path: Path) -> None:
    manifest, _ = _planted_case(tmp_path, train_rows=200)
    checkpoint = tmp_path / "c.pt"
    train(manifest, _params(max_epochs=1, learning_rate=20.0), checkpoint, log=io.StringIO())
    with pytest.raises(ValueError, match=r"train.learning_rate 20.0 -> 1.0"):
        train(manifest, _params(learning_rate=1.0), checkpoint, resume=True, log=io.StringIO())
    other = _write_shards(
        tmp_path / "other", {s: _simple_profiles(30, s) for s in SPLITS}, jobs=7, skills=8
    )
    moved = r"trained on other shards .*now prepare-test \(7 jobs x 8"
    with pytest.raises(ValueError, match=moved):
        train(other, _params(max_epochs=1, learning_rate=20.0), checkpoint, resume=True)
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        train(manifest, _params(), tmp_path / "missing.pt", resume=True, log=io.StringIO())


def test_resume_refuses_a_checkpoint_it_cannot_use_when_there_is_no_previous_one(
    tmp_path: Path,
) -> None:
    manifest, _ = _planted_case(tmp_path, train_rows=200)
    checkpoint = tmp_path / "c.pt"
    # One epoch of a fresh run: its checkpoint, its best file, and no previous checkpoint.
    train(manifest, _params(max_epochs=1), checkpoint, log=io.StringIO())
    assert not (tmp_path / "c.previous.pt").exists()
    state = torch.load(checkpoint, weights_only=True)
    assert (state["format"], state["epoch"], state["best_epoch"]) == (4, 1, 1)
    best = tmp_path / "c.best-epoch-1.pt"

    def refused(message: str) -> None:
        with pytest.raises(ValueError, match=re.escape(f"checkpoint {checkpoint} {message}")):
            train(manifest, _params(max_epochs=2), checkpoint, resume=True, log=io.StringIO())
        assert checkpoint.is_file() and not (tmp_path / "c.unreadable.pt").exists()

    torch.save({**state, "format": 3}, checkpoint)
    refused("has format 3, expected 4")
    torch.save([1, 2], checkpoint)
    refused("has format 'list', expected 4")
    torch.save({k: v for k, v in state.items() if k not in ("rng_state", "shards")}, checkpoint)
    refused("lacks rng_state, shards")
    torch.save(state, checkpoint)
    best.rename(tmp_path / "elsewhere.pt")
    refused("names best epoch 1, whose file is missing")
    (tmp_path / "elsewhere.pt").rename(best)
    resumed = train(manifest, _params(max_epochs=2), checkpoint, resume=True, log=io.StringIO())
    assert [r.epoch for r in resumed.history] == [1, 2]


def test_training_without_validation_profiles_is_refused(tmp_path: Path) -> None:
    rows = _simple_profiles(20, "p")
    manifest = _write_shards(
        tmp_path, {"train": rows, "validation": [], "test": rows}, jobs=7, skills=8, shards=1
    )
    with pytest.raises(ValueError, match="the validation split is empty"):
        train(manifest, _params(), tmp_path / "c.pt", log=io.StringIO())
    assert not (tmp_path / "c.pt").exists()


def test_settings_of_another_family_are_refused(tmp_path: Path) -> None:
    # (The ranges of the settings, l2 against the learning rate included, are checked when
    # the config loads: tests/test_config.py.)
    manifest, _ = _planted_case(tmp_path, train_rows=100)
    with pytest.raises(ValueError, match=re.escape("train.model=softmax, got 'mixture'")):
        train(manifest, _params(model="mixture"), tmp_path / "c.pt", log=io.StringIO())
    assert not (tmp_path / "c.pt").exists()
