"""Data-parallel training: disjoint shards per rank, the distributed step, and two processes
against one (real torch.distributed process groups over gloo, started here without Spark;
tests/test_cluster.py runs the train stage through TorchDistributor, on the driver's machine
and on a cluster's executors)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from skillrank.config import TrainConfig
from skillrank.families import FAMILIES
from skillrank.mixture import train_mixture
from skillrank.model import Batch
from skillrank.shards import Manifest, iterate_batches
from skillrank.trainer import (
    Ranks,
    TrainResult,
    _distributed_step,
    _make_optimizer,
    _torch_step,
    clear_process_errors,
    process_errors,
    train,
    train_process,
    with_best_phi,
)
from tests.conftest import free_port, profile_batch
from tests.test_trainer import _params, _planted_case, _simple_profiles, _write_shards

# Two processes may differ from one in the order of the data they see, not in what they learn.
VALIDATION_LOSS_TOLERANCE = 0.01  # relative
# The NDCG@10 of the 300 validation profiles of the planted case moves by about 0.01 from one
# epoch or data order to the next.
VALIDATION_NDCG_TOLERANCE = 0.02  # absolute


def _as_rank(rank: int, world: int, port: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run fn(*args) with the environment torchrun gives rank `rank` of `world`."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    fn(*args)


def _run_ranks(world: int, fn: Callable[..., Any], *args: Any) -> list[int | None]:
    """fn(*args) in `world` fresh processes that form one torch.distributed group; their exit
    codes."""
    port = free_port()
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_as_rank, args=(rank, world, port, fn, *args))
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    return [p.exitcode for p in processes]


# --- disjoint shards --------------------------------------------------------------------------


def _ids_of(files: list[Path], **kwargs: Any) -> list[str]:
    return [i for ids, _ in iterate_batches(files, batch_size=40, **kwargs) for i in ids]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_disjoint_whole_shards_that_cover_the_split(tmp_path: Path, world: int) -> None:
    profiles = _simple_profiles(500, "p")
    manifest = Manifest.read(_write_shards(tmp_path, {"train": profiles}, 7, 8, shards=5))
    files = manifest.shards["train"]
    file_of = {i: f for f in files for i in _ids_of([f], shuffle=False)}
    for epoch in (1, 2):
        seen = [
            _ids_of(files, shuffle=True, seed=3, epoch=epoch, buffer_size=100, rank=r, world=world)
            for r in range(world)
        ]
        everyone = [i for ids in seen for i in ids]
        assert sorted(everyone) == sorted(p[0] for p in profiles)  # each profile exactly once
        read_by = [{file_of[i] for i in ids} for ids in seen]
        assert sum(map(len, read_by)) == len(files)  # whole, disjoint files
        assert max(map(len, read_by)) - min(map(len, read_by)) <= 1
    with pytest.raises(ValueError, match="rank must be in"):
        _ids_of(files, shuffle=False, rank=2, world=2)


# --- one distributed step ---------------------------------------------------------------------

PHI_SHAPE = (6, 9)


def _parts() -> list[Batch]:
    """Rank 0's 3 profiles and rank 1's 2 (uneven on purpose)."""
    jobs = [[0, 2], [5], [1, 2, 4], [3], [0, 5]]
    weights = [[0.5, 0.5], [1.0], [0.2, 0.3, 0.5], [1.0], [0.75, 0.25]]
    skills = [[1, 7], [0], [2, 3, 8], [4, 5], [6]]
    return [
        profile_batch(list(zip(jobs[a:b], weights[a:b], skills[a:b], strict=True)), torch.float64)
        for a, b in ((0, 3), (3, 5))
    ]


def _initial_phi() -> torch.Tensor:
    return torch.randn(*PHI_SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


OPTIMIZERS = ("sgd", "adam")


def _step_params(optimizer: str) -> TrainConfig:
    return _params(optimizer=optimizer, learning_rate=0.5, batch_size=5)


def _steps_as_rank(out: Path) -> None:
    """Each optimizer's steps from the same start, one after the other in one process group."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name in OPTIMIZERS:
        params = _step_params(name)
        phi_t = _initial_phi()
        batch = _parts()[rank]
        optimizer = _make_optimizer(phi_t, params)
        profiles, loss = _distributed_step(phi_t, optimizer, batch, params)
        after_union = phi_t.clone()
        # Rank 1 has run out: it takes part with an empty batch.
        _distributed_step(phi_t, optimizer, batch if rank == 0 else _empty_like(batch), params)
        # Once all have, the step says so.
        done = _distributed_step(phi_t, optimizer, _empty_like(batch), params)
        saved = {"phi_t": after_union, "tail": phi_t, "profiles": profiles, "loss": loss}
        torch.save({**saved, "done": done}, out / f"{name}-{rank}")
    dist.barrier()  # no rank leaves while another still talks to it
    dist.destroy_process_group()


def _empty_like(batch: Batch) -> Batch:
    none = batch.job_ids[:0]
    return Batch(none, batch.job_weights[:0], none.new_zeros(1), none, none.new_zeros(1))


@pytest.fixture(scope="module")
def distributed_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ranks' steps with every optimizer: one pair of processes for all (each costs
    seconds to start)."""
    out = tmp_path_factory.mktemp("steps")
    assert _run_ranks(2, _steps_as_rank, out) == [0, 0]
    return out


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_distributed_step_is_the_step_on_the_union_of_the_batches(
    distributed_steps: Path, optimizer: str
) -> None:
    params = _step_params(optimizer)

    union = profile_batch(
        [
            (jobs, weights, skills)
            for part in _parts()
            for jobs, weights, skills in _profiles_of(part)
        ],
        torch.float64,
    )
    phi_t = _initial_phi()
    loss = float(_torch_step(phi_t, _make_optimizer(phi_t, params), union, params))
    # The step of rank 0's 3 profiles alone: 3 of batch_size 5, so 3/5 of their mean gradient.
    tail = phi_t.clone()
    smaller = dataclasses.replace(params, learning_rate=params.learning_rate * 3 / 5)
    _torch_step(tail, _make_optimizer(tail, smaller), _parts()[0], smaller)
    for rank in (0, 1):
        got = torch.load(distributed_steps / f"{optimizer}-{rank}", weights_only=True)
        assert got["profiles"] == 5
        assert got["loss"] == pytest.approx(loss, rel=1e-12)
        assert torch.allclose(got["phi_t"], phi_t, rtol=0, atol=1e-12)
        if optimizer == "sgd":  # (Adam's steps do not scale with the gradient)
            assert torch.allclose(got["tail"], tail, rtol=0, atol=1e-12)
            assert not torch.equal(tail, phi_t)
        assert got["done"] == (0, 0.0)
    assert not torch.equal(phi_t, _initial_phi())


def _profiles_of(batch: Batch) -> list[tuple[list[int], list[float], list[int]]]:
    j, s = batch.job_offsets.tolist(), batch.skill_offsets.tolist()
    return [
        (
            batch.job_ids[j[i] : j[i + 1]].tolist(),
            batch.job_weights[j[i] : j[i + 1]].tolist(),
            batch.skill_ids[s[i] : s[i + 1]].tolist(),
        )
        for i in range(batch.size)
    ]


# --- training with two processes --------------------------------------------------------------


def _train_as_rank(
    manifest: Path, params: TrainConfig, checkpoint: Path, out: Path, resume: bool = False
) -> None:
    fit = FAMILIES[params.model].fit
    result = train_process(fit, str(manifest), params, str(checkpoint), resume, "cpu", "{}")
    torch.save(result, out / f"result-{os.environ['RANK']}.pt")


def test_two_processes_reach_the_validation_scores_of_one(tmp_path: Path) -> None:
    manifest, planted = _planted_case(tmp_path, shards=4)  # two shards per rank
    # As many epochs for both: the best epoch, chosen on a nearly flat validation NDCG, may
    # differ between two data orders; what they learn by each epoch may not.
    params = _params(max_epochs=5, patience=10)
    with open(os.devnull, "w") as quiet:
        one = train(manifest, params, tmp_path / "one" / "ckpt.pt", log=quiet)

    checkpoint = tmp_path / "two" / "ckpt.pt"
    two_params = dataclasses.replace(params, num_processes=2)
    assert _run_ranks(2, _train_as_rank, manifest, two_params, checkpoint, tmp_path) == [0, 0]
    results = [torch.load(tmp_path / f"result-{r}.pt", weights_only=False) for r in (0, 1)]
    # Both ranks saw the same losses and NDCG (summed over the ranks) and sent no phi back.
    assert [(e.train_loss, e.validation_loss, e.validation_ndcg) for e in results[0].history] == [
        (e.train_loss, e.validation_loss, e.validation_ndcg) for e in results[1].history
    ]
    assert results[0].phi_t.numel() == 0
    two = with_best_phi(results[0], checkpoint)
    assert two.phi_t.shape == one.phi_t.shape
    best = torch.load(checkpoint.with_name(f"ckpt.best-epoch-{two.best_epoch}.pt"))
    assert torch.equal(two.background, best["background"])
    for a, b in zip(one.history, two.history, strict=True):
        assert b.validation_loss == pytest.approx(a.validation_loss, rel=VALIDATION_LOSS_TOLERANCE)
        assert b.validation_ndcg == pytest.approx(a.validation_ndcg, abs=VALIDATION_NDCG_TOLERANCE)
    # The bias too: it started at the same log popularity and learned about the same.
    last = [torch.load(d / "ckpt.pt")["background"] for d in (tmp_path / "one", tmp_path / "two")]
    assert torch.any(last[0] != 0)
    assert torch.allclose(last[1], last[0], atol=0.05), (last[1] - last[0]).abs().max()
    top = two.phi_t.argmax(dim=1)
    assert all(top[j] in planted[j] for j in range(len(planted)))
    print(
        f"validation NDCG@10: one process {one.best_validation_ndcg:.6f} (epoch"
        f" {one.best_epoch}), two {two.best_validation_ndcg:.6f} (epoch {two.best_epoch})"
    )


@pytest.mark.slow  # three two-process runs
def test_a_resumed_two_process_run_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    manifest, _ = _planted_case(tmp_path, shards=2)
    params = _params(num_processes=2, max_epochs=4, patience=10)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir()
    cut.mkdir()
    assert _run_ranks(2, _train_as_rank, manifest, params, whole / "ckpt.pt", whole) == [0, 0]
    stopped = dataclasses.replace(params, max_epochs=2)  # as if killed after epoch 2
    assert _run_ranks(2, _train_as_rank, manifest, stopped, cut / "ckpt.pt", cut) == [0, 0]
    assert _run_ranks(2, _train_as_rank, manifest, params, cut / "ckpt.pt", cut, True) == [0, 0]

    def result(directory: Path) -> TrainResult:
        got = torch.load(directory / "result-0.pt", weights_only=False)
        return with_best_phi(got, directory / "ckpt.pt")

    uninterrupted, resumed = result(whole), result(cut)
    losses = [
        (e.epoch, e.train_loss, e.validation_loss, e.validation_ndcg) for e in uninterrupted.history
    ]
    assert [e.epoch for e in uninterrupted.history] == [1, 2, 3, 4]
    assert [
        (e.epoch, e.train_loss, e.validation_loss, e.validation_ndcg) for e in resumed.history
    ] == losses
    assert resumed.best_epoch == uninterrupted.best_epoch
    assert torch.equal(resumed.phi_t, uninterrupted.phi_t)  # bit for bit on CPU
    assert torch.equal(resumed.background, uninterrupted.background)

    # One process may carry on from the two processes' checkpoint.
    with open(os.devnull, "w") as quiet:
        one = train(
            manifest,
            dataclasses.replace(params, num_processes=1, max_epochs=5),
            cut / "ckpt.pt",
            resume=True,
            log=quiet,
        )
    assert [
        (e.epoch, e.train_loss, e.validation_loss, e.validation_ndcg) for e in one.history[:4]
    ] == losses
    assert [e.epoch for e in one.history] == [1, 2, 3, 4, 5]


def test_a_failing_process_leaves_its_error_for_the_driver(tmp_path: Path) -> None:
    manifest, _ = _planted_case(tmp_path, shards=2)
    lost = Manifest.read(manifest).shards["train"][1]
    lost.unlink()  # one rank's shard is gone: that rank fails, the other loses its peer
    checkpoint = tmp_path / "ckpt.pt"
    (tmp_path / "ckpt.pt.rank-5.error").write_text("rank 5: an earlier run's error")
    clear_process_errors(checkpoint)
    assert process_errors(checkpoint) == []

    codes = _run_ranks(2, _train_as_rank, manifest, _params(num_processes=2), checkpoint, tmp_path)
    assert 0 not in codes
    errors = process_errors(checkpoint)
    assert len(errors) == 2
    assert errors[0].startswith(("rank 0: FileNotFoundError: ", "rank 1: FileNotFoundError: "))
    assert lost.name in errors[0]
    assert "\n" not in errors[0]


def test_fewer_train_shards_than_processes_is_refused(tmp_path: Path) -> None:
    manifest, _ = _planted_case(tmp_path)
    with pytest.raises(ValueError, match="3 shard files, fewer than the 4 training processes"):
        train(manifest, _params(), tmp_path / "ckpt.pt", ranks=Ranks(0, 4))


def test_two_processes_fit_the_mixture_of_one(tmp_path: Path) -> None:
    manifest, _ = _planted_case(tmp_path, shards=4)
    params = _params(model="mixture", title_prior="popularity", max_epochs=6, patience=10)
    with open(os.devnull, "w") as quiet:
        one = train_mixture(manifest, params, tmp_path / "one" / "ckpt.pt", log=quiet)
    two_params = dataclasses.replace(params, num_processes=2)
    checkpoint = tmp_path / "two" / "ckpt.pt"
    assert _run_ranks(2, _train_as_rank, manifest, two_params, checkpoint, tmp_path) == [0, 0]
    two = with_best_phi(torch.load(tmp_path / "result-0.pt", weights_only=False), checkpoint)
    # The credit is summed across the ranks: the same fit up to float32 summation order.
    assert two.best_epoch == one.best_epoch and two.epochs_run == one.epochs_run
    torch.testing.assert_close(two.phi_t, one.phi_t, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two.background, one.background)
    for a, b in zip(one.history, two.history, strict=True):
        assert a.validation_ndcg == pytest.approx(b.validation_ndcg, abs=1e-6)
