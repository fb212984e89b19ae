"""Segment rankings (skillrank.segments) and the intervals of published probabilities."""

from __future__ import annotations

import numpy as np
import torch

from skillrank.rankings import INTERVAL_LEVEL, beta_interval, top_skills_per_job
from skillrank.segments import fit_segments, segment_kl, segment_rankings
from tests.conftest import profile_batch

NURSE, RESEARCHER = 0, 1
SKILLS = 6
CITY_SKILL = 5  # listed by every nurse of city A, by no one else
# The pooled rows the segments start from: nurse skills 0-2, researcher skills 3-4.
THETA = torch.tensor([[0.35, 0.35, 0.1, 0.02, 0.02, 0.16], [0.05, 0.05, 0.05, 0.4, 0.4, 0.05]])
P0 = torch.full((SKILLS,), 1.0 / SKILLS)
LAM = 0.05
A, B, C = 0, 1, 2  # segments: cities A and B, and C with a single profile


def _profiles() -> list[tuple[str, int, list[int], list[int]]]:
    """(profile id, segment, titles, skills): 60 nurses in A (20 of them also researchers)
    listing CITY_SKILL always and skills 0 and 1 three times in four; 40 nurses in B; one in
    C; 10 researchers without a city (-1)."""
    rows = []
    for i in range(60):
        skills = [s for s in (0, 1) if i % 4 != s] + [CITY_SKILL]
        titles = [NURSE, RESEARCHER] if i < 20 else [NURSE]
        rows.append((f"a{i}", A, titles, sorted(skills + ([3, 4] if i < 20 else []))))
    rows += [(f"b{i}", B, [NURSE], [0, 1] if i % 2 else [0, 1, 2]) for i in range(40)]
    rows.append(("c0", C, [NURSE], [0, 2]))
    rows += [(f"n{i}", -1, [RESEARCHER], [3, 4]) for i in range(10)]
    return rows


def _batches(rows: list[tuple[str, int, list[int], list[int]]], size: int = 16):
    def stream():
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            batch = profile_batch(
                [(t, [1.0 / len(t)] * len(t), s) for _, _, t, s in chunk], torch.float32
            )
            yield [pid for pid, _, _, _ in chunk], batch

    return stream


def _segment_of(rows):
    segment = {pid: g for pid, g, _, _ in rows}
    return lambda ids: torch.tensor([[segment[p]] for p in ids], dtype=torch.int64)


def _fit(strength: float):
    """The fit and its rankings (every skill), by (segment, title)."""
    rows = _profiles()
    fit = fit_segments(_batches(rows)(), _segment_of(rows), 3, THETA, P0, LAM)
    strengths = torch.full((3,), strength, dtype=torch.float64)
    blocks = list(segment_rankings(fit, THETA, strengths, 1, SKILLS))
    columns = {key: np.concatenate([b[key] for b in blocks]) for key in blocks[0]}
    pairs = set(zip(columns["segment_index"].tolist(), columns["job_id"].tolist(), strict=True))
    return fit, {
        (g, j): {
            key: value[(columns["segment_index"] == g) & (columns["job_id"] == j)]
            for key, value in columns.items()
        }
        for g, j in pairs
    }


def test_a_city_specific_skill_ranks_first_in_that_city_and_not_elsewhere() -> None:
    fit, rows = _fit(strength=5.0)
    in_a, in_b = rows[A, NURSE], rows[B, NURSE]
    assert in_a["skill_id"][0] == CITY_SKILL
    assert in_a["lift"][0] > 2.0
    b_rank = int(np.flatnonzero(in_b["skill_id"] == CITY_SKILL)[0])
    assert b_rank >= 3 and in_b["lift"][b_rank] < 0.5
    # The profiles holding both titles list CITY_SKILL too: EM credits it to the nurse, whose
    # row in A explains it, not to the researcher.
    researcher_a = rows[A, RESEARCHER]
    at = int(np.flatnonzero(researcher_a["skill_id"] == CITY_SKILL)[0])
    assert researcher_a["probability"][at] < 0.5 * in_a["probability"][0]
    # Counts: 60 nurses in A, all listing the city's skill; the researchers without a city
    # belong to no segment.
    assert in_a["profiles"][0] == 60 and in_a["support"][0] == 60
    assert set(rows) == {(A, NURSE), (A, RESEARCHER), (B, NURSE), (C, NURSE)}
    for block in rows.values():
        assert np.allclose(block["probability"], np.exp(block["weight"]), rtol=1e-6)
        assert np.all(np.diff(block["probability"]) <= 0)


def test_a_segment_with_one_profile_keeps_the_pooled_ranking() -> None:
    strength = 300.0
    fit, rows = _fit(strength)
    in_c = rows[C, NURSE]
    pooled_order = torch.argsort(THETA[NURSE], descending=True, stable=True).numpy()
    assert np.array_equal(in_c["skill_id"], pooled_order)
    credit = float(fit.totals(2, SKILLS)[C, NURSE])
    assert 0 < credit <= 2.0  # one profile lists two skills
    shift = np.abs(in_c["probability"] - THETA[NURSE].numpy()[in_c["skill_id"]])
    assert shift.max() <= credit / (credit + strength) + 1e-9
    assert in_c["profiles"][0] == 1


def test_segment_intervals_narrow_as_support_grows() -> None:
    _, rows = _fit(strength=5.0)
    width = {
        g: rows[g, NURSE]["probability_high"] - rows[g, NURSE]["probability_low"] for g in (A, B, C)
    }
    top = {g: rows[g, NURSE]["skill_id"] for g in (A, B, C)}
    skill0 = {g: width[g][top[g] == 0][0] for g in (A, B, C)}
    assert skill0[A] < skill0[C] and skill0[B] < skill0[C]
    for block in rows.values():
        assert np.all(block["probability_low"] < block["probability"])
        assert np.all(block["probability"] < block["probability_high"])


def test_pooled_intervals_narrow_as_the_credit_grows() -> None:
    phi_t = THETA.log()
    (thin,) = top_skills_per_job(phi_t, 3, 16, torch.tensor([20.0, 20.0]))
    (thick,) = top_skills_per_job(phi_t, 3, 16, torch.tensor([2000.0, 2000.0]))
    assert np.array_equal(thin["skill_id"], thick["skill_id"])
    for block in (thin, thick):
        assert np.all(block["probability_low"] < block["probability"])
        assert np.all(block["probability"] < block["probability_high"])
    thin_width = thin["probability_high"] - thin["probability_low"]
    thick_width = thick["probability_high"] - thick["probability_low"]
    assert np.all(thick_width < thin_width / 5)
    (none,) = top_skills_per_job(phi_t, 3, 16)
    assert "probability_low" not in none


def test_rank_ranges_settle_as_the_credit_grows() -> None:
    # The nurse row ranks skills 0 and 1 (0.35 each), then 5 (0.16); skill 2 (0.10) is the
    # first one left out of a top 3.
    phi_t = THETA.log()
    (thin,) = top_skills_per_job(phi_t, 3, 16, torch.tensor([20.0, 20.0]))
    (thick,) = top_skills_per_job(phi_t, 3, 16, torch.tensor([2000.0, 2000.0]))
    assert thick["skill_id"][:3].tolist() == [0, 1, 5]
    # 2000 pseudo-counts: the tied pair may swap, skill 5 is third for sure.
    assert thick["rank_best"][:3].tolist() == [1, 1, 3]
    assert thick["rank_worst"][:3].tolist() == [2, 2, 3]
    # 20: skill 5 could be first, and every skill could give its place to skill 2.
    assert thin["rank_best"][:3].tolist() == [1, 1, 1]
    assert thin["rank_worst"].mask[:3].tolist() == [True, True, True]
    # The researcher row at 2000: skills 3 and 4 (0.4 each) may only swap; the third (0.05)
    # ties with three skills left out, so it may leave the list.
    assert thick["rank_worst"][3:5].tolist() == [2, 2]
    assert thick["rank_worst"].mask[3:].tolist() == [False, False, True]
    # With every skill ranked nothing can leave: the worst rank is always known.
    (full,) = top_skills_per_job(phi_t, SKILLS, 16, torch.tensor([20.0, 20.0]))
    assert not np.ma.is_masked(full["rank_worst"])
    assert np.all(full["rank_best"] <= full["rank"])
    assert np.all(full["rank"] <= full["rank_worst"])


def test_beta_interval_covers_its_level_of_beta_draws() -> None:
    for a, b in [
        (1.0, 20.0),
        (3.0, 60.0),
        (20.0, 400.0),
        (200.0, 4000.0),
        (50.0, 50.0),
        (8.0, 2.0),
    ]:
        torch.manual_seed(int(a * 1000 + b))  # torch.distributions draws from the global one
        draws = torch.distributions.Beta(torch.tensor(a), torch.tensor(b)).sample((200_000,))
        low, high = beta_interval(torch.tensor(a / (a + b)), torch.tensor(a + b))
        for tail in ((draws < low).double().mean(), (draws > high).double().mean()):
            assert abs(float(tail) - (1 - INTERVAL_LEVEL) / 2) < 0.01, (a, b, float(tail))


def test_segment_kl_is_the_mixture_kl_and_prefers_the_segments_rows() -> None:
    rows = _profiles()
    fit = fit_segments(_batches(rows)(), _segment_of(rows), 3, THETA, P0, LAM)
    grid = [1e9, 5.0]
    kl, kl_pooled, count = segment_kl(
        _batches(rows)(), _segment_of(rows), fit, THETA, P0, LAM, grid
    )
    assert count == len(rows) and kl.shape == (1, 2)
    expected = []
    for _, _, titles, skills in rows:
        mixed = sum(THETA[j].double() / len(titles) for j in titles)
        p = LAM * P0.double() + (1 - LAM) * mixed
        expected.append(-np.log(len(skills)) - float(p[skills].log().mean()))
    assert abs(kl_pooled - float(np.mean(expected))) < 1e-9
    # An overwhelming prior gives the pooled rows back; a weak one fits the city's skill.
    assert abs(kl[0, 0] - kl_pooled) < 1e-6
    assert kl[0, 1] < kl_pooled - 0.05
