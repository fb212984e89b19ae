"""The fused SGD kernel (skillrank/kernel.py) against the torch reference path of skillrank.model.

These tests need a C compiler with OpenMP: without one load_kernel raises and they fail.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from skillrank.kernel import Kernel, KernelUnavailable, build_kernel, load_kernel
from skillrank.model import Batch, append_job, kl_loss_and_grad
from tests.conftest import random_batch

LR = 5.0


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    return load_kernel()


@pytest.fixture
def threads() -> Iterator[None]:
    """Restore torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _reference_step(phi_t: torch.Tensor, batch: Batch, lr: float) -> tuple[float, torch.Tensor]:
    """kl_loss_and_grad and a plain SGD step, as the trainer's torch path; (loss, new phi_t)."""
    loss, rows, row_grads = kl_loss_and_grad(phi_t, batch.to("cpu", phi_t.dtype))
    grad = torch.zeros_like(phi_t).index_add_(0, rows, row_grads)
    return loss.item(), phi_t - lr * grad


def _phi(rng: np.random.Generator, jobs: int, skills: int, scale: float = 1.0) -> torch.Tensor:
    return torch.tensor(rng.normal(scale=scale, size=(jobs, skills)), dtype=torch.float32)


@pytest.mark.parametrize("weights", [torch.float64, torch.float32])
def test_sgd_steps_match_the_torch_reference(kernel: Kernel, weights: torch.dtype) -> None:
    rng = np.random.default_rng(3)
    # 8 jobs for 20 profiles: several profiles of a batch share a job (row collisions), and
    # 37 skills is not a multiple of the kernel's 16 lanes.
    jobs, skills = 8, 37
    phi_t = _phi(rng, jobs, skills)
    expected = phi_t.clone()
    for step in range(4):
        batch = random_batch(rng, profiles=20, jobs=jobs, skills=skills)
        batch = dataclasses.replace(batch, job_weights=batch.job_weights.to(weights))
        assert batch.job_ids.unique().numel() < batch.job_ids.numel(), "no row collision"
        expected_loss, expected = _reference_step(expected, batch, LR)
        loss = kernel.sgd_step(phi_t, batch, LR)
        assert loss == pytest.approx(expected_loss, rel=1e-5), step
        assert torch.allclose(phi_t, expected, rtol=1e-5, atol=1e-5), (
            step,
            (phi_t - expected).abs().max().item(),
        )


def test_a_row_every_profile_holds_is_updated_as_by_the_torch_path(kernel: Kernel) -> None:
    # The trainer's skill bias: row 8, held by all 200 profiles (a run of 200 pairs that one
    # thread sums tile by tile), with a small weight.
    rng = np.random.default_rng(10)
    jobs, skills = 8, 300
    phi_t = _phi(rng, jobs + 1, skills)
    batch = append_job(random_batch(rng, profiles=200, jobs=jobs, skills=skills), jobs, 0.03)
    expected_loss, expected = _reference_step(phi_t, batch, LR)
    loss = kernel.sgd_step(phi_t, batch, LR)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert torch.allclose(phi_t, expected, rtol=1e-5, atol=1e-5), (
        (phi_t - expected).abs().max().item()
    )


def test_rows_of_jobs_outside_the_batch_are_untouched(kernel: Kernel) -> None:
    rng = np.random.default_rng(4)
    phi_t = _phi(rng, 30, 50)
    batch = random_batch(rng, profiles=5, jobs=10, skills=50)
    before = phi_t.clone()
    kernel.sgd_step(phi_t, batch, LR)
    held = batch.job_ids.unique()
    assert torch.equal(phi_t[10:], before[10:])
    assert not torch.equal(phi_t[held], before[held])


def test_large_logits_give_a_finite_loss(kernel: Kernel) -> None:
    # Logits in the hundreds overflow a naive exp; the kernel subtracts each profile's max.
    rng = np.random.default_rng(6)
    phi_t = _phi(rng, 6, 40, scale=300.0)
    batch = random_batch(rng, profiles=10, jobs=6, skills=40)
    expected_loss, expected = _reference_step(phi_t, batch, LR)
    loss = kernel.sgd_step(phi_t, batch, LR)
    assert np.isfinite(loss) and loss == pytest.approx(expected_loss, rel=1e-5)
    assert torch.allclose(phi_t, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.usefixtures("threads")
def test_steps_are_bit_identical_whatever_the_thread_count(kernel: Kernel) -> None:
    # Big enough that every thread gets profiles and job rows, and rows span several tiles.
    rng = np.random.default_rng(8)
    jobs, skills = 40, 1500
    start = _phi(rng, jobs, skills, scale=0.1)
    batches = [random_batch(rng, profiles=200, jobs=jobs, skills=skills) for _ in range(3)]
    results = {}
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        phi_t = start.clone()
        losses = [kernel.sgd_step(phi_t, batch, LR) for batch in batches]
        results[threads] = (phi_t, losses)
    one_phi, one_losses = results[1]
    for threads, (phi_t, losses) in results.items():
        assert torch.equal(phi_t, one_phi), (threads, (phi_t - one_phi).abs().max().item())
        assert losses == one_losses, threads


def test_bad_inputs_are_refused_and_leave_phi_alone(kernel: Kernel) -> None:
    rng = np.random.default_rng(9)
    phi_t = _phi(rng, 5, 20)
    batch = random_batch(rng, profiles=4, jobs=5, skills=20)
    before = phi_t.clone()
    bad_job = dataclasses.replace(batch, job_ids=batch.job_ids + 5)
    with pytest.raises(ValueError, match="job id is outside"):
        kernel.sgd_step(phi_t, bad_job, LR)
    bad_skill = dataclasses.replace(batch, skill_ids=batch.skill_ids - 20)
    with pytest.raises(ValueError, match="skill id is outside"):
        kernel.sgd_step(phi_t, bad_skill, LR)
    no_skills = dataclasses.replace(batch, skill_offsets=torch.zeros_like(batch.skill_offsets))
    with pytest.raises(ValueError, match="offsets"):
        kernel.sgd_step(phi_t, no_skills, LR)
    assert torch.equal(phi_t, before)
    with pytest.raises(ValueError, match="float32"):
        kernel.sgd_step(phi_t.double(), batch, LR)
    with pytest.raises(ValueError, match="contiguous"):
        kernel.sgd_step(phi_t.t(), batch, LR)


def test_the_build_is_cached_and_atomic(tmp_path: Path) -> None:
    build_kernel(tmp_path)
    (library,) = tmp_path.iterdir()
    assert library.suffix == ".so" and not library.name.startswith(".")
    built = library.stat().st_mtime_ns
    build_kernel(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [library.name]
    assert library.stat().st_mtime_ns == built, "recompiled although the build was cached"


def test_a_missing_or_failing_compiler_is_reported(tmp_path: Path) -> None:
    with pytest.raises(KernelUnavailable, match="cannot run the C compiler"):
        build_kernel(tmp_path, compiler=str(tmp_path / "no-such-cc"))
    failing = tmp_path / "failing-cc"
    failing.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "fake cc 1.0"; exit 0; fi\n'
        'echo "sgd_kernel.c: In function f:" >&2\n'
        'echo "sgd_kernel.c:1:1: error: boom" >&2\n'
        "exit 1\n"
    )
    failing.chmod(0o755)
    cache = tmp_path / "cache"
    with pytest.raises(KernelUnavailable, match=r"failed: sgd_kernel.c:1:1: error: boom$"):
        build_kernel(cache, compiler=str(failing))
    assert not os.listdir(cache), "a failed build left files behind"
