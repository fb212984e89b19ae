"""The mixture family: EM's math on small batches made here, and its training loop on shards."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from skillrank import mixture
from skillrank.config import TrainConfig, load_config
from skillrank.evaluate import baseline_methods, count_cooccurrences
from skillrank.mixture import (
    accumulate,
    neighbour_prior,
    objective,
    theta_matrix,
    title_words,
    train_mixture,
    word_prior,
)
from skillrank.model import Batch
from skillrank.shards import Manifest
from skillrank.trainer import popularity
from tests.conftest import profile_batch, random_batch
from tests.test_trainer import _planted_case

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _fit(
    batches: list[Batch], jobs: int, skills: int, lam: float, alpha: float, iterations: int
) -> tuple[torch.Tensor, list[float]]:
    """theta after `iterations` EM iterations with the popularity prior, and the objective
    before each iteration (and after the last)."""
    mentions = torch.zeros(skills, dtype=torch.float64)
    for batch in batches:
        mentions += torch.bincount(batch.skill_ids, minlength=skills).double()
    p0 = popularity(mentions)
    prior = p0[None, :].double()
    counts = torch.zeros(jobs, skills, dtype=torch.float64)
    totals = torch.zeros(jobs, dtype=torch.float64)
    objectives = []
    for _ in range(iterations):
        step = accumulate(batches, counts, totals, prior, alpha, p0, lam)
        objectives.append(objective(step.log_likelihood, counts, totals, prior, alpha))
        counts, totals = step.counts, step.counts.sum(dim=1)
    step = accumulate(batches, counts, totals, prior, alpha, p0, lam)
    objectives.append(objective(step.log_likelihood, counts, totals, prior, alpha))
    return theta_matrix(counts, totals, prior, alpha), objectives


def _batch(profiles: list[tuple[list[int], list[int]]]) -> Batch:
    """Profiles of (titles, skills), each title weighing the same."""
    rows = [(held, [1.0 / len(held)] * len(held), listed) for held, listed in profiles]
    return profile_batch(rows, torch.float32)


def _random_profiles(
    rng: np.random.Generator, count: int, jobs: int, skills: int, max_jobs: int
) -> list[tuple[list[int], list[int]]]:
    rows = []
    for _ in range(count):
        held = rng.choice(jobs, size=int(rng.integers(1, max_jobs + 1)), replace=False)
        listed = rng.choice(skills, size=int(rng.integers(1, 6)), replace=False)
        rows.append((sorted(held.tolist()), sorted(listed.tolist())))
    return rows


def test_without_background_and_one_title_each_the_mixture_is_smoothed_cooccurrence() -> None:
    rng = np.random.default_rng(3)
    jobs, skills = 6, 9
    profiles = _random_profiles(rng, 200, jobs, skills, max_jobs=1)
    batches = [_batch(profiles[:120]), _batch(profiles[120:])]
    cooccurrence = baseline_methods(count_cooccurrences(batches, jobs, skills), 1.0)[1]
    for iterations in (1, 5):
        theta, _ = _fit(batches, jobs, skills, lam=0.0, alpha=1.0, iterations=iterations)
        torch.testing.assert_close(
            theta, cooccurrence.title_scores, rtol=1e-6, atol=1e-7, check_dtype=False
        )


def test_em_never_decreases_its_objective() -> None:
    rng = np.random.default_rng(5)
    jobs, skills = 8, 12
    batches = [random_batch(rng, 150, jobs, skills)]
    _, objectives = _fit(batches, jobs, skills, lam=0.2, alpha=2.0, iterations=25)
    steps = np.diff(objectives)
    assert (steps >= -1e-9 * abs(objectives[0])).all(), steps
    assert objectives[-1] > objectives[0] + 1.0, objectives


def test_the_mixture_splits_companion_titles_that_counting_merges() -> None:
    # Titles 0 and 1 are nearly always held together but need different skills: 0 needs
    # 0-2, 1 needs 3-5; skill 9 is generic (half of all profiles list it).
    rng = np.random.default_rng(7)
    jobs, skills = 2, 10
    needs = {0: [0, 1, 2], 1: [3, 4, 5]}

    def person(held: list[int]) -> tuple[list[int], list[int]]:
        listed = {s for j in held for s in needs[j] if rng.random() < 0.8}
        if rng.random() < 0.5 or not listed:
            listed.add(9)
        return held, sorted(listed)

    profiles = [person([0, 1]) for _ in range(300)]
    profiles += [person([0]) for _ in range(8)] + [person([1]) for _ in range(8)]
    batches = [_batch(profiles)]
    counts = count_cooccurrences(batches, jobs, skills)
    counted = baseline_methods(counts, 1.0)[1].title_scores
    theta, _ = _fit(batches, jobs, skills, lam=0.1, alpha=1.0, iterations=300)

    def others_share(rows: torch.Tensor, j: int) -> float:
        """Mass of the other title's skills relative to title j's own skills."""
        return float(rows[j, needs[1 - j]].sum() / rows[j, needs[j]].sum())

    for j in (0, 1):
        assert others_share(counted, j) > 0.8, counted  # counting: both sets alike
        assert others_share(theta, j) < 0.2, theta  # EM: each title its own set
        assert set(theta[j].topk(3).indices.tolist()) == set(needs[j])


def test_title_words_drop_seniority_and_stop_words() -> None:
    assert title_words(["Senior Java Developer", "head of sales", "R&D engineer"]) == [
        ["java", "developer"],
        ["sales"],
        ["engineer"],
    ]


def test_word_prior_borrows_from_titles_sharing_a_word_never_from_itself() -> None:
    titles = ["java developer", "senior java developer", "nurse", "registered nurse", "pilot"]
    counts = torch.zeros(5, 4)
    counts[0, 0] = 50.0  # java developer -> skill 0
    counts[1, 1] = 5.0  # senior java developer, seen little -> skill 1
    counts[3, 2] = 40.0  # registered nurse -> skill 2
    base = torch.full((4,), 0.25)
    prior = word_prior(counts, titles, base, beta=1.0)
    torch.testing.assert_close(prior.sum(dim=1), torch.ones(5))
    assert int(prior[1].argmax()) == 0  # from java developer
    assert int(prior[0].argmax()) == 1  # from senior java developer only, not itself
    assert int(prior[2].argmax()) == 2  # nurse <- registered nurse
    torch.testing.assert_close(prior[4], base)  # pilot shares no word
    # "developer" and "java" are both held by exactly titles 0 and 1: title 1's prior is
    # title 0's counts smoothed by beta toward the base.
    torch.testing.assert_close(prior[1], (counts[0] + 1.0 * base) / (50.0 + 1.0))


def test_neighbour_prior_borrows_from_the_title_whose_skills_explain_its_credit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 0 "air force officer" (well seen) and 1 "flight lieutenant" (seen little) share no word
    # but the same skills 0-2; 2 "nurse" needs 3-4; 3 "pilot" has no credit at all.
    counts = torch.zeros(4, 6)
    counts[0, :3] = torch.tensor([40.0, 30.0, 20.0])
    counts[1, [0, 2]] = torch.tensor([8.0, 4.0])
    counts[2, 3:5] = torch.tensor([25.0, 15.0])
    totals = counts.double().sum(dim=1)
    # The popularity phase's theta, whose prior the search assumes.
    p0 = torch.tensor([0.1, 0.1, 0.1, 0.2, 0.2, 0.3])
    theta = theta_matrix(counts, totals.float(), p0[None, :], 1.0)
    base = torch.full((6,), 1 / 6)
    # Reference: every other title's log-likelihood of j's credit, softmax over the best 3.
    expected = base[None, :].repeat(4, 1)
    for j in range(3):
        others = [k for k in range(4) if k != j]
        scores = torch.stack([(counts[j] * theta[k].log()).sum() for k in others])
        weights = torch.softmax(scores, dim=0)
        expected[j] = sum(w * theta[k] for w, k in zip(weights, others, strict=True))
    monkeypatch.setattr(mixture, "_NEIGHBOUR_BLOCK", 3)  # two blocks, split inside the titles
    for dense_above in (0, 1, 2):  # every credited skill dense; skills 0 and 2 dense; none
        monkeypatch.setattr(mixture, "_DENSE_SKILL_TITLES", dense_above)
        prior = neighbour_prior(counts, totals, p0, 1.0, base)
        torch.testing.assert_close(prior, expected)
    torch.testing.assert_close(prior.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(prior[1], theta[0], atol=1e-3, rtol=0)  # lieutenant <- officer
    # The nurse has no relative: the nearest is the pilot's uninformed theta, not its own.
    torch.testing.assert_close(prior[2], theta[3], atol=1e-3, rtol=0)
    assert float((prior[0] - theta[0]).abs().max()) > 0.1  # the officer's is not its own
    torch.testing.assert_close(prior[3], base)
    alone = neighbour_prior(counts[:1], totals[:1], p0, 1.0, base)
    torch.testing.assert_close(alone, base[None, :])


def _params(**changes: object) -> TrainConfig:
    base = load_config().train
    values = {"max_epochs": 40, "patience": 3, "min_improvement": 0.0, "batch_size": 100}
    return dataclasses.replace(
        base, **{"model": "mixture", "title_prior": "popularity", **values, **changes}
    )


def test_train_mixture_finds_the_planted_skills_and_keeps_the_best_iteration(
    tmp_path: Path,
) -> None:
    manifest, planted = _planted_case(tmp_path)
    log = io.StringIO()
    result = train_mixture(manifest, _params(), tmp_path / "ckpt.pt", log=log)
    theta = torch.softmax(result.phi_t, dim=1)
    torch.testing.assert_close(theta.sum(dim=1), torch.ones(len(planted)))
    top3 = theta.topk(3, dim=1).indices.numpy()
    missed = {j: sorted(top3[j]) for j in range(len(planted)) if set(top3[j]) != set(planted[j])}
    assert not missed, f"job -> top 3 skills, planted {planted.tolist()}: {missed}"
    ndcg = [r.validation_ndcg for r in result.history]
    assert result.best_validation_ndcg == max(ndcg) == ndcg[result.best_epoch - 1]
    assert result.epochs_run == len(result.history) < 40
    assert ndcg[result.best_epoch - 1] > ndcg[0]
    assert result.background.shape == (50,)
    assert "validation_ndcg@10=" in log.getvalue()


def test_train_mixture_refuses_resume_and_a_gpu_torch_cannot_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, _ = _planted_case(tmp_path, train_rows=300)
    with pytest.raises(ValueError, match="--resume applies to train.model=softmax"):
        train_mixture(manifest, _params(), tmp_path / "c.pt", resume=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device cuda requested but torch sees no GPU"):
        train_mixture(manifest, _params(), tmp_path / "c.pt", device="cuda")


def test_selection_never_reads_the_test_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, _ = _planted_case(tmp_path, train_rows=600)
    for shard in Manifest.read(manifest).shards["test"]:
        shard.unlink()  # any read of the test split would now fail
    spec = importlib.util.spec_from_file_location("select_model", BENCHMARKS / "select_model.py")
    assert spec is not None and spec.loader is not None
    select_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(select_model)
    settings = ["train.max_epochs=4", "train.batch_size=100", "train.learning_rate=50.0"]
    settings += ["train.title_prior=popularity"]
    code = select_model.main(
        ["--workdir", str(tmp_path), "--grid", "model=mixture,softmax"]
        + [arg for setting in settings for arg in ("--conf", setting)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "mixture: model=mixture" in out and "softmax: model=softmax" in out
    assert "of those the lowest validation KL:" in out
