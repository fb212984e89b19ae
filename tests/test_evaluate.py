"""Evaluation metrics and baselines (skillrank.evaluate): hand-computed and known-answer tests.

No Spark: everything here is numpy/torch on hand-written batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from skillrank import evaluate, rankings
from skillrank.evaluate import (
    BASELINES,
    Bootstrap,
    CoCounts,
    EvaluationRow,
    Method,
    baseline_methods,
    count_cooccurrences,
    interval_coverage,
    planted_relevance,
    planted_segment_relevance,
    planted_shares,
    profile_metrics,
    segment_rows,
    segment_truth_rows,
    softmax_method,
    taxonomy_relevance,
    title_buckets,
    title_rows,
    title_truth_metrics,
)
from skillrank.generate import Taxonomy
from skillrank.model import Batch, kl_loss, kl_loss_and_grad
from skillrank.prepare import alias_lookup
from tests.conftest import profile_batch, random_batch

NO_EXCLUDE = np.zeros(0, dtype=np.int64)


def make_batch(profiles: Sequence[tuple[Sequence[int], Sequence[int]]]) -> Batch:
    """A Batch of (job ids, skill ids) profiles, jobs weighted uniformly (as listed)."""
    weighted = [(jobs, [1.0 / len(jobs)] * len(jobs), skills) for jobs, skills in profiles]
    return profile_batch(weighted, torch.float32)


def as_table(rows: list[EvaluationRow]) -> dict[tuple[str, str, int | None, str], float]:
    table = {(r.method, r.metric, r.k, r.segment): r.value for r in rows}
    assert len(table) == len(rows), "duplicate (method, metric, k, segment) rows"
    return table


# --- profile metrics, by hand ---------------------------------------------------------------


def test_profile_metrics_by_hand() -> None:
    # Skills 0..4. Title 0 ranks 1 (0.9), then 2 and 3 tied at 0.5 (2 first: lower id), 0, 4.
    # Title 1 ranks 0 (0.3), 4 (0.25), 1, 2, 3.
    hand = Method(
        "hand",
        torch.tensor([[0.1, 0.9, 0.5, 0.5, 0.0], [0.3, 0.2, 0.1, 0.0, 0.25]]),
        "sum",
    )
    # Profile p0: title 0, truth {1, 3} -> relevance of the ranking 1, 2, 3: 1, 0, 1.
    # Profile p1: title 1, truth {4} (|truth| = 1 < k) -> relevance of 0, 4, 1: 0, 1, 0.
    batch = make_batch([([0], [1, 3]), ([1], [4])])
    table = as_table(profile_metrics([hand], [(["p0", "p1"], batch)], {}, ks=[1, 2, 3]))
    log2 = math.log2
    expected = {
        # k = 1: p0 hits skill 1; p1 misses.
        ("precision", 1): (1 / 1 + 0) / 2,
        ("recall", 1): (1 / 2 + 0) / 2,
        ("ndcg", 1): (1 + 0) / 2,
        ("map", 1): ((1 / 1) / 1 + 0) / 2,
        # k = 2: the tie decides: p0's top 2 is {1, 2} (1 hit), not {1, 3} (2 hits).
        ("precision", 2): (1 / 2 + 1 / 2) / 2,
        ("recall", 2): (1 / 2 + 1 / 1) / 2,
        ("ndcg", 2): ((1 / log2(2)) / (1 / log2(2) + 1 / log2(3)) + (1 / log2(3)) / 1) / 2,
        ("map", 2): ((1 / 1) / 2 + (1 / 2) / 1) / 2,
        # k = 3: p0 hits at ranks 1 and 3; p1 at rank 2, with one relevant skill only.
        ("precision", 3): (2 / 3 + 1 / 3) / 2,
        ("recall", 3): (2 / 2 + 1 / 1) / 2,
        ("ndcg", 3): ((1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3)) + (1 / log2(3)) / 1)
        / 2,
        ("map", 3): ((1 / 1 + 2 / 3) / 2 + (1 / 2) / 1) / 2,
    }
    got = {(metric, k): table[("hand", metric, k, "all")] for metric, k in expected}
    assert got == pytest.approx(expected, rel=1e-6), got
    assert table[("hand", "profiles", None, "all")] == 2
    # A "sum" method has no distribution: no kl or cross-entropy rows.
    assert ("hand", "kl", None, "all") not in table
    assert ("hand", "cross_entropy", None, "all") not in table


def test_mixture_kl_by_hand() -> None:
    # One profile holding titles 0 and 1 (weights 1/2): p = (0.3, 0.175, 0.525); truth {0, 2}.
    mixture = Method("mix", torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]), "mixture")
    batch = make_batch([([0, 1], [0, 2])])
    table = as_table(profile_metrics([mixture], [(["p"], batch)], {}, ks=[1]))
    kl = 0.5 * math.log(0.5 / 0.3) + 0.5 * math.log(0.5 / 0.525)
    cross_entropy = -0.5 * math.log(0.3) - 0.5 * math.log(0.525)
    assert table[("mix", "kl", None, "all")] == pytest.approx(kl, rel=1e-6)
    assert table[("mix", "cross_entropy", None, "all")] == pytest.approx(cross_entropy, rel=1e-6)
    # Top 1 is skill 2 (0.525), relevant.
    assert table[("mix", "precision", 1, "all")] == 1.0


def test_model_kl_equals_training_loss() -> None:
    rng = np.random.default_rng(11)
    jobs, skills = 7, 12
    phi_t = torch.tensor(rng.normal(size=(jobs, skills)), dtype=torch.float64)
    first = random_batch(rng, profiles=9, jobs=jobs, skills=skills)
    second = random_batch(rng, profiles=4, jobs=jobs, skills=skills)
    batches = [([f"a{i}" for i in range(9)], first), ([f"b{i}" for i in range(4)], second)]
    model = softmax_method(phi_t, torch.zeros(phi_t.shape[1]))
    table = as_table(profile_metrics([model], batches, {}, ks=[3]))

    # The mean per profile over both batches = the batch means weighted by batch size.
    expected_kl = (9 * kl_loss(phi_t, first).item() + 4 * kl_loss(phi_t, second).item()) / 13
    kl = table[("model", "kl", None, "all")]
    assert kl == pytest.approx(expected_kl, rel=1e-10), (kl, expected_kl)
    # Cross-entropy - KL = entropy of t, uniform over n skills: log n, averaged.
    sizes = torch.cat([torch.diff(first.skill_offsets), torch.diff(second.skill_offsets)])
    entropy = torch.log(sizes.to(torch.float64)).mean().item()
    cross_entropy = table[("model", "cross_entropy", None, "all")]
    assert cross_entropy - kl == pytest.approx(entropy, rel=1e-10)
    assert table[("model", "profiles", None, "all")] == 13


def test_profile_metrics_rejects_bad_input() -> None:
    method = Method("m", torch.zeros(2, 3), "sum")
    batch = make_batch([([0], [1])])
    with pytest.raises(ValueError, match="ks"):
        profile_metrics([method], [(["p"], batch)], {}, ks=[0])
    with pytest.raises(ValueError, match="ks"):
        profile_metrics([method], [(["p"], batch)], {}, ks=[2, 2])
    with pytest.raises(ValueError, match="nan"):
        nan = Method("nan", torch.full((2, 3), math.nan), "sum")
        profile_metrics([nan], [(["p"], batch)], {}, ks=[1])
    with pytest.raises(ValueError, match="unique"):
        profile_metrics([method, method], [(["p"], batch)], {}, ks=[1])
    with pytest.raises(ValueError, match="profile ids"):
        profile_metrics([method], [(["p", "q"], batch)], {}, ks=[1])
    with pytest.raises(ValueError, match="outside"):
        profile_metrics([method], [(["p"], make_batch([([5], [1])]))], {}, ks=[1])
    with pytest.raises(ValueError, match="combine"):
        Method("m", torch.zeros(2, 3), "product")


# --- segments: against an independent per-profile reference -----------------------------------


def reference_metrics(
    method: Method, jobs: Sequence[int], skills: Sequence[int], ks: Sequence[int]
) -> dict[tuple[str, int | None], float]:
    """One profile's metrics, computed plainly in numpy (a sort, not topk)."""
    table = method.title_scores.double().numpy()
    scores = table[[j if len(table) > 1 else 0 for j in jobs]].mean(axis=0)
    truth = set(skills)
    # Ranking: score descending, then skill id ascending.
    ranking = np.lexsort((np.arange(scores.size), -scores))
    out: dict[tuple[str, int | None], float] = {}
    if method.combine == "softmax":
        log_p = scores - np.log(np.exp(scores - scores.max()).sum()) - scores.max()
        cross_entropy = -np.mean([log_p[s] for s in skills])
        out[("cross_entropy", None)] = cross_entropy
        out[("kl", None)] = cross_entropy - math.log(len(truth))
    for k in ks:
        rel = [1.0 if s in truth else 0.0 for s in ranking[:k]]
        hits = sum(rel)
        ideal = min(k, len(truth))
        out[("precision", k)] = hits / k
        out[("recall", k)] = hits / len(truth)
        dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rel))
        out[("ndcg", k)] = dcg / sum(1 / math.log2(i + 2) for i in range(ideal))
        out[("map", k)] = sum(r * sum(rel[: i + 1]) / (i + 1) for i, r in enumerate(rel)) / ideal
    return out


def test_segment_means_equal_means_over_their_profiles() -> None:
    rng = np.random.default_rng(5)
    jobs, skills, ks = 5, 8, [1, 3, 10]
    # Integer scores with one or two titles (weights 1 or 1/2, exact in binary): many ties,
    # so the tie-breaking of the topk path is compared with a plain sort.
    integers = torch.tensor(rng.integers(0, 3, size=(jobs, skills)), dtype=torch.float32)
    tied = Method("tied", integers, "sum")
    phi_t = torch.tensor(rng.normal(size=(jobs, skills)), dtype=torch.float64)
    model = softmax_method(phi_t, torch.zeros(phi_t.shape[1]))
    profiles, ids = [], []
    for i in range(23):
        held = sorted(rng.choice(jobs, size=rng.integers(1, 3), replace=False).tolist())
        listed = sorted(rng.choice(skills, size=rng.integers(1, 6), replace=False).tolist())
        profiles.append((held, listed))
        ids.append(f"p{i}")
    segments_of = {
        pid: labels
        for i, pid in enumerate(ids)
        for labels in [
            (["city=SEATTLE"] if i % 3 == 0 else ["city=PITTSBURGH"] if i % 3 == 1 else [])
            + (["industry=RESEARCH", "industry=RESEARCH"] if i % 4 == 0 else [])
        ]
        if i % 5 != 4  # every fifth profile is absent from the mapping: only in "all"
    }
    batches = [
        (ids[start : start + 10], make_batch(profiles[start : start + 10]))
        for start in range(0, len(ids), 10)
    ]
    table = as_table(profile_metrics([tied, model], batches, segments_of, ks))

    members = {"all": list(range(len(ids)))}
    for i, pid in enumerate(ids):
        for label in set(segments_of.get(pid, [])):
            members.setdefault(label, []).append(i)
    assert {key[3] for key in table} == set(members)
    for method in (tied, model):
        per_profile = [reference_metrics(method, *profiles[i], ks) for i in range(len(ids))]
        for label, rows in members.items():
            assert table[(method.name, "profiles", None, label)] == len(rows), label
            for (metric, k), _ in per_profile[0].items():
                expected = np.mean([per_profile[i][(metric, k)] for i in rows])
                got = table[(method.name, metric, k, label)]
                assert got == pytest.approx(expected, rel=1e-6, abs=1e-9), (
                    method.name,
                    label,
                    metric,
                    k,
                )
    # Profiles 0, 8, 12, 16, 20 hold industry=RESEARCH, listed twice but counted once (4
    # would too, but it is absent from the mapping).
    assert table[("model", "profiles", None, "industry=RESEARCH")] == 5


# --- counts and baselines -------------------------------------------------------------------


def test_count_cooccurrences_by_hand() -> None:
    first = make_batch(
        [
            ([0, 0], [1, 2]),  # title 0 listed twice: counts once per skill
            ([0, 2], [2]),
        ]
    )
    second = make_batch([([1], [0, 2, 2])])  # skill 2 listed twice: counts once
    counts = count_cooccurrences([first, second], jobs=3, skills=3)
    expected_pair = [
        [0, 1, 2],  # title 0: skill 1 (first profile), skill 2 (first and second)
        [1, 0, 1],  # title 1: skills 0 and 2 (third profile)
        [0, 0, 1],  # title 2: skill 2 (second profile)
    ]
    assert counts.pair.tolist() == expected_pair
    assert counts.job.tolist() == [2, 1, 1]
    assert counts.skill.tolist() == [1, 1, 3]
    assert counts.profiles == 3
    with pytest.raises(ValueError, match="job ids"):
        count_cooccurrences([make_batch([([3], [0])])], jobs=3, skills=3)


def hand_counts() -> CoCounts:
    # 3 skills: skill 0 is everywhere (100 profiles), skill 1 rare (3) and all with title 0.
    return CoCounts(
        pair=torch.tensor([[5.0, 3.0, 0.0], [50.0, 0.0, 10.0], [0.0, 0.0, 0.0]]),
        job=torch.tensor([6.0, 60.0, 0.0]),
        skill=torch.tensor([100.0, 3.0, 10.0]),
        profiles=120,
    )


def test_baselines_by_hand() -> None:
    a = 1.0
    methods = {m.name: m for m in baseline_methods(hand_counts(), smoothing=a)}
    assert list(methods) == ["popularity", "cooccurrence", "pmi", "ppmi_svd"]
    assert tuple(methods) == BASELINES
    assert [m.combine for m in methods.values()] == ["mixture", "mixture", "sum", "sum"]

    # popularity: (count + a) / (113 + 3a) per skill.
    p_pop = torch.tensor([101 / 116, 4 / 116, 11 / 116])
    assert methods["popularity"].title_scores.shape == (1, 3)
    assert torch.allclose(methods["popularity"].title_scores[0], p_pop)

    cooc = methods["cooccurrence"].title_scores
    assert cooc.shape == (3, 3)
    assert torch.allclose(cooc.sum(dim=1), torch.ones(3))
    assert (cooc > 0).all()
    # Title 0: (pair + a p_pop) / (8 + a); title 2 was never seen: popularity itself.
    assert torch.allclose(cooc[0], (torch.tensor([5.0, 3.0, 0.0]) + a * p_pop) / 9)
    assert torch.allclose(cooc[2], p_pop)

    # Title 0: co-occurrence ranks the ubiquitous skill 0 first (5 > 3 profiles); the lift
    # ranks the rare skill 1 first: P(1|0)/P(1) = ((3 + 4/116)/9) / (4/116) ~ 9.8, against
    # P(0|0)/P(0) = ((5 + 101/116)/9) / (101/116) ~ 0.75 and P(2|0)/P(2) = 1/9.
    pmi = methods["pmi"].title_scores
    assert cooc[0].argsort(descending=True).tolist() == [0, 1, 2]
    assert pmi[0].argsort(descending=True).tolist() == [1, 0, 2]
    assert pmi[0, 1].item() == pytest.approx(math.log((3 + 4 / 116) / 9 / (4 / 116)), rel=1e-5)
    assert pmi[0, 2].item() == pytest.approx(math.log(1 / 9), rel=1e-5)

    # With rank >= min(J, S) the truncated SVD reconstructs the positive PMI itself.
    assert torch.allclose(methods["ppmi_svd"].title_scores, pmi.clamp(min=0), atol=1e-4)


def test_ppmi_svd_is_low_rank_and_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    # A rank of 3 on a 12 x 15 matrix stands for 100 on the paper's 12k x 16k: small enough
    # to stay fast, still below both dimensions.
    monkeypatch.setattr(evaluate, "SVD_RANK", 3)
    rng = np.random.default_rng(2)
    pair = torch.tensor(rng.poisson(1.0, size=(12, 15)), dtype=torch.float32)
    counts = CoCounts(pair, pair.sum(1), pair.sum(0), profiles=50)
    state = torch.get_rng_state()
    first = baseline_methods(counts, smoothing=1.0)[3].title_scores
    assert torch.equal(torch.get_rng_state(), state), "the caller's random state changed"
    second = baseline_methods(counts, smoothing=1.0)[3].title_scores
    assert first.shape == (12, 15)
    assert torch.equal(first, second)
    assert torch.linalg.matrix_rank(first.double(), rtol=1e-5).item() == 3
    # The best rank-3 approximation of the positive PMI (Eckart-Young), up to the
    # randomized SVD's accuracy.
    ppmi = baseline_methods(counts, smoothing=1.0)[2].title_scores.clamp(min=0).double()
    u, s, vh = torch.linalg.svd(ppmi, full_matrices=False)
    best = (u[:, :3] * s[:3]) @ vh[:3]
    assert torch.allclose(first.double(), best, atol=1e-3), (first - best).abs().max()


def test_baselines_need_positive_smoothing() -> None:
    with pytest.raises(ValueError, match="smoothing"):
        baseline_methods(hand_counts(), smoothing=0.0)


# --- title truth ----------------------------------------------------------------------------


def test_title_truth_metrics_excludes_generic_skills() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.9, 0.0, 0.0, 0.5, 0.0, 0.5],
        ]
    )
    method = Method("m", scores, "sum")
    generic = np.array([0, 2])
    relevant = {
        2: np.array([3, 5]),
        0: np.array([1, 2, 4]),  # generic skill 2 is removed: {1, 4}
        1: np.array([0]),  # nothing left once skill 0 is excluded: dropped
    }
    result = title_truth_metrics(method, relevant, generic, k=2)
    assert result["job_id"].tolist() == [0, 2]
    assert result["relevant"].tolist() == [2, 2]
    # Title 0 ranks 1, 3, 4, 5 once 0 and 2 are out: top 2 = {1, 3}, one hit at rank 1.
    # Title 2 ranks 3 and 5 (tied at 0.5, 3 first), then 1, 4: both hits.
    assert result["precision"].tolist() == pytest.approx([1 / 2, 2 / 2])
    assert result["recall"].tolist() == pytest.approx([1 / 2, 2 / 2])
    assert result["ndcg"].tolist() == pytest.approx([1 / (1 + 1 / math.log2(3)), 1.0])

    # Without the exclusion skill 0 (0.9) would take title 0's first place.
    plain = title_truth_metrics(method, {0: np.array([1, 4])}, NO_EXCLUDE, k=2)
    assert plain["precision"].tolist() == [1 / 2]
    assert plain["ndcg"].tolist() == pytest.approx([(1 / math.log2(3)) / (1 + 1 / math.log2(3))])

    # A one-row method ranks every title by its only row.
    popularity = Method("popularity", scores[:1], "mixture")
    same = title_truth_metrics(popularity, {4: np.array([1, 4])}, generic, k=2)
    assert same["job_id"].tolist() == [4]
    assert same["precision"].tolist() == [1 / 2]


def test_title_truth_metrics_match_a_plain_sort_with_ties_and_exclusions() -> None:
    # Few distinct scores (many ties) and exclusions that fill some rows' top places and not
    # others': each title's top k must be its kept skills sorted by score, then by id.
    rng = np.random.default_rng(7)
    jobs, skills, k = 40, 30, 5
    scores = torch.from_numpy(rng.integers(0, 4, size=(jobs, skills)).astype(np.float32))
    method = Method("m", scores, "sum")
    # Every title judged, or every fifth (its rows are then copied out before ranking).
    cases = [
        (exclude, judged)
        for exclude in (np.array([], dtype=np.int64), np.array([0, 3, 4, 17]), np.arange(0, 30, 2))
        for judged in (range(jobs), range(0, jobs, 5))
    ]
    for exclude, judged in cases:
        relevant = {j: rng.choice(skills, size=6, replace=False) for j in judged}
        result = title_truth_metrics(method, relevant, exclude, k)
        kept = [s for s in range(skills) if s not in set(exclude.tolist())]
        expected = []
        for job in result["job_id"].tolist():
            truth = set(relevant[job].tolist()) - set(exclude.tolist())
            top = sorted(kept, key=lambda s: (-float(scores[job, s]), s))[:k]
            hits = [s in truth for s in top]
            ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(truth))))
            dcg = sum(hit / math.log2(i + 2) for i, hit in enumerate(hits))
            expected.append((sum(hits) / k, sum(hits) / len(truth), dcg / ideal))
        assert len(expected) > 0.75 * len(judged)
        assert result["precision"].tolist() == pytest.approx([e[0] for e in expected])
        assert result["recall"].tolist() == pytest.approx([e[1] for e in expected])
        assert result["ndcg"].tolist() == pytest.approx([e[2] for e in expected])


# --- planted and taxonomy truth -------------------------------------------------------------


def test_planted_relevance_maps_truth_onto_vocabulary() -> None:
    job_titles = ["data scientist", "nurse", "analyst", "chef"]
    skill_names = ["python", "statistics", "teamwork", "patient care", "cooking"]
    title_lookup = alias_lookup({"Data Scientist": ["Machine Learning Scientist"]}, True)
    skill_lookup = alias_lookup({"Python": ["py"]}, True)
    truth_titles = {
        "title": ["Machine Learning Scientist", "Nurse", "Analyst", "Analyst", "Chef", "Pilot"],
        "title_key": ["machine learning scientist", "nurse", "analyst", "analyst", "chef", "pilot"],
        # "analyst" belongs to two occupations: ambiguous, skipped.
        "occupation_id": ["A", "B", "C", "D", "E", "F"],
        "probability": [1.0, 1.0, 0.5, 0.5, 1.0, 1.0],
    }
    rows = [
        # occupation, skill_key, relation, is_generic
        ("A", "py", "essential", False),  # alias of python
        ("A", "statistics", "essential", False),
        ("A", "deep learning", "essential", False),  # not in the vocabulary
        ("A", "cooking", "optional", False),  # only with relations including optional
        ("A", "teamwork", None, True),  # generic
        ("B", "patient care", "essential", False),
        ("B", "teamwork", "essential", True),  # generic even where the occupation lists it
        ("C", "statistics", "essential", False),
        ("D", "python", "essential", False),
        ("E", "molecular gastronomy", "essential", False),  # chef: nothing left
        ("E", "teamwork", None, True),
    ]
    truth_skills = {
        "occupation_id": [r[0] for r in rows],
        "skill": [r[1].title() for r in rows],
        "skill_key": [r[1] for r in rows],
        "relation": [r[2] for r in rows],
        "is_generic": [r[3] for r in rows],
        "probability": [0.5] * len(rows),
    }
    relevant, generic = planted_relevance(
        job_titles, skill_names, truth_titles, truth_skills, title_lookup, skill_lookup
    )
    assert {j: ids.tolist() for j, ids in relevant.items()} == {0: [0, 1], 1: [3]}
    assert generic.tolist() == [2]
    assert generic.dtype == np.int64 and relevant[0].dtype == np.int64

    wider, _ = planted_relevance(
        job_titles,
        skill_names,
        truth_titles,
        truth_skills,
        title_lookup,
        skill_lookup,
        relations=("essential", "optional"),
    )
    assert {j: ids.tolist() for j, ids in wider.items()} == {0: [0, 1, 4], 1: [3]}


def test_interval_coverage_judges_planted_shares_of_non_generic_skills() -> None:
    job_titles = ["nurse", "chef"]
    skill_names = ["triage", "ultrasound", "teamwork", "grilling"]
    truth_titles = {"title_key": ["nurse", "chef"], "occupation_id": ["N", "C"]}
    truth_skills = {  # nurse rates 0.6, 0.2, 0.2 (generic): shares 0.6, 0.2, 0.2
        "occupation_id": ["N", "N", "N", "N", "C"],
        "skill_key": ["triage", "ultrasound", "teamwork", "laser surgery", "grilling"],
        "probability": [0.6, 0.2, 0.2, 0.5, 0.4],
    }
    shares = planted_shares(job_titles, skill_names, truth_titles, truth_skills, {}, {})
    assert shares[0] == pytest.approx({0: 0.6, 1: 0.2, 2: 0.2})
    assert shares[1] == pytest.approx({3: 1.0})
    published = {
        0: [(0, 0.5, 0.7), (1, 0.25, 0.3), (2, 0.0, 0.1), (3, 0.0, 1.0)],  # 1 of 2 judged in
        1: [(3, 0.9, 1.0)],  # in
    }
    covered = interval_coverage(published, shares, np.array([2]))
    assert covered == {0: 0.5, 1: 1.0}


def test_planted_segment_skills_are_scored_per_segment_and_title() -> None:
    job_titles = ["nurse", "registered nurse", "chef"]
    skill_names = ["triage", "ultrasound", "sushi", "teamwork", "grilling"]
    truth_titles = {
        "title_key": ["nurse", "registered nurse", "chef"],
        "occupation_id": ["N", "N", "C"],
    }
    rows = [  # segment, occupation, skill_key
        ("SEATTLE", "N", "ultrasound"),
        ("SEATTLE", "N", "teamwork"),  # generic: left out
        ("SEATTLE", "N", "laser surgery"),  # not in the vocabulary
        ("MUMBAI", "C", "sushi"),
        ("MUMBAI", "C", "grilling"),
    ]
    truth_segments = {
        "segment_type": ["city"] * len(rows),
        "segment": [r[0] for r in rows],
        "occupation_id": [r[1] for r in rows],
        "skill_key": [r[2] for r in rows],
    }
    generic = np.array([3])
    planted = planted_segment_relevance(
        job_titles, skill_names, truth_titles, truth_segments, {}, {}, generic
    )
    assert {key: ids.tolist() for key, ids in planted.items()} == {
        ("city", "SEATTLE", 0): [1],
        ("city", "SEATTLE", 1): [1],
        ("city", "MUMBAI", 2): [2, 4],
    }
    rankings = {  # k = 2, after dropping the generic skill 3
        "model": {
            ("city", "SEATTLE", 0): np.array([3, 1, 0, 2]),  # ultrasound 1st: 1/2
            ("city", "SEATTLE", 1): np.array([0, 2, 1, 4]),  # 3rd: 0
            ("city", "MUMBAI", 2): np.array([4, 2, 0, 1]),  # both: 2/2
        },
        "pooled": {
            ("city", "SEATTLE", 0): np.array([0, 3, 2, 1]),
            ("city", "SEATTLE", 1): np.array([0, 2, 1, 4]),
            ("city", "MUMBAI", 2): np.array([4, 0, 2, 1]),
            # a pair only one method ranks is not judged
            ("city", "MUMBAI", 0): np.array([0, 1, 2, 4]),
        },
    }
    out = segment_truth_rows(
        rankings, planted, generic, 2, "segment_jobs", Bootstrap(200, 1, (("model", "pooled"),))
    )
    values = {(r.method, r.metric): r for r in out}
    assert values["model", "pairs"].value == 3
    assert values["model", "segment_precision"].value == pytest.approx((0.5 + 0 + 1) / 3)
    assert values["pooled", "segment_precision"].value == pytest.approx((0 + 0 + 0.5) / 3)
    difference = values["model - pooled", "segment_precision"]
    assert difference.value == pytest.approx(1.0 / 3)
    assert difference.ci_low <= difference.value <= difference.ci_high
    assert {r.segment for r in out} == {"segment_jobs"}


def occupation(occupation_id: str, label: str, onet_code: str) -> dict[str, str]:
    return {
        "occupation_id": occupation_id,
        "isco_group": "0000",
        "label": label,
        "onet_code": onet_code,
    }


def test_taxonomy_relevance_matches_preferred_labels() -> None:
    taxonomy = Taxonomy(
        occupations=[
            occupation("1", "Data  Scientist", "15-2051.00"),
            occupation("2", "nurse", ""),
            occupation("3", "analyst", "13-2051.00"),
            occupation("4", "Analyst", "13-2051.00"),
        ],
        titles=[],
        occupation_skills=[
            {"occupation_id": "1", "skill": "Py", "relation": "essential"},
            {"occupation_id": "1", "skill": "statistics", "relation": "optional"},
            {"occupation_id": "2", "skill": "patient care", "relation": "essential"},
            {"occupation_id": "3", "skill": "statistics", "relation": "essential"},
            {"occupation_id": "4", "skill": "statistics", "relation": "essential"},
        ],
        onet_technology=[
            {"onet_code": "15-2051.00", "skill": "Python", "hot": "Y"},
            {"onet_code": "15-2051.00", "skill": "SAS", "hot": "N"},
            {"onet_code": "13-2051.00", "skill": "Microsoft Excel", "hot": "Y"},
        ],
        onet_related=[],
        generic_candidates=[],
    )
    job_titles = ["analyst", "data scientist", "nurse"]
    skill_names = ["microsoft excel", "patient care", "python", "statistics"]
    relevance = taxonomy_relevance(
        job_titles,
        skill_names,
        taxonomy,
        alias_lookup({}, True),
        alias_lookup({"Python": ["Py"]}, True),
    )
    # "analyst" is two ESCO occupations (ambiguous) but one O*NET code (kept there).
    assert {j: v.tolist() for j, v in relevance["esco_essential"].items()} == {1: [2], 2: [1]}
    # SAS is not in the vocabulary; the nurse has no O*NET link.
    assert {j: v.tolist() for j, v in relevance["onet_technology"].items()} == {0: [0], 1: [2]}


# --- known answer: multiple attribution -----------------------------------------------------


def test_model_untangles_companion_jobs_that_cooccurrence_confuses() -> None:
    # Six jobs in three pairs (A, B) = (0, 1), (2, 3), (4, 5); job j's planted skills are
    # 5j..5j+4, skills 30..59 are noise (one per profile). A almost always comes with B (60
    # profiles listing A's skills with probability 0.5 and B's with 0.9), B often alone (60),
    # A rarely (12). In A's co-occurrence row B's skills (0.9 x 60 = 54 profiles each)
    # outnumber A's own (0.5 x 72 = 36); the model explains B's skills by B, whose solo
    # profiles pin them down, and keeps A's own. (Kept small: 396 profiles x 60 skills stay
    # under torch's parallel grain, so the loop takes well under a second on a busy CPU.)
    rng = np.random.default_rng(3)
    jobs, skills, per_job = 6, 60, 5

    def listed(job: int, rate: float) -> list[int]:
        own = range(job * per_job, (job + 1) * per_job)
        return [s for s in own if rng.random() < rate]

    profiles: list[tuple[list[int], list[int]]] = []
    for a, b in [(0, 1), (2, 3), (4, 5)]:
        for held, count in (([a, b], 60), ([b], 60), ([a], 12)):
            for _ in range(count):
                planted = (listed(a, 0.5) if a in held else []) + (
                    listed(b, 0.9) if b in held else []
                )
                profiles.append((held, sorted({*planted, int(rng.integers(30, 60))})))
    batch = make_batch(profiles)

    # Full-batch Adam on the model's exact loss and gradient: 200 cheap steps. One thread:
    # on tensors this small a second one only adds synchronisation, which costs seconds on
    # a busy 2-core machine.
    phi_t = torch.zeros(jobs, skills)
    optimizer = torch.optim.Adam([phi_t], lr=0.1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(200):
            _, rows, row_grads = kl_loss_and_grad(phi_t, batch)
            phi_t.grad = torch.zeros_like(phi_t).index_add_(0, rows, row_grads)
            optimizer.step()
    finally:
        torch.set_num_threads(threads)

    counts = count_cooccurrences([batch], jobs, skills)
    model_scores = softmax_method(phi_t, torch.zeros(phi_t.shape[1]))
    methods = {m.name: m for m in [model_scores, *baseline_methods(counts, 1.0)]}
    relevant = {j: np.arange(j * per_job, (j + 1) * per_job) for j in range(jobs)}
    precision = {
        name: title_truth_metrics(m, relevant, NO_EXCLUDE, k=per_job)["precision"]
        for name, m in methods.items()
    }
    model, cooccurrence = precision["model"], precision["cooccurrence"]
    # Measured: the model finds all 30 planted skills (precision 1 for every job);
    # co-occurrence ranks B's skills first for every A (0 for jobs 0, 2, 4), 1 for every B.
    assert model.mean() >= 0.9, precision
    assert model.min() >= 0.8, precision
    assert cooccurrence.mean() <= 0.7, precision
    assert cooccurrence[[0, 2, 4]].max() <= 0.4, precision
    assert model.mean() - cooccurrence.mean() >= 0.3, precision


# --- bootstrap intervals, paired differences, title buckets ----------------------------------


def planted_profiles(
    rng: np.random.Generator, count: int, jobs: int = 20, per_job: int = 4, noise: int = 20
) -> list[tuple[list[int], list[int]]]:
    """Profiles of one or two titles listing each planted skill of their titles (job j's are
    per_job * j ...) with probability 0.8, plus one of `noise` skills shared by everyone."""
    profiles = []
    for _ in range(count):
        held = sorted(rng.choice(jobs, size=rng.integers(1, 3), replace=False).tolist())
        listed = {
            s for j in held for s in range(j * per_job, (j + 1) * per_job) if rng.random() < 0.8
        }
        listed.add(jobs * per_job + int(rng.integers(noise)))
        profiles.append((held, sorted(listed)))
    return profiles


def planted_methods(seed: int) -> tuple[list[Method], list[tuple[list[str], Batch]]]:
    """The count baselines of 2,000 planted training profiles and 300 test profiles in three
    batches, every other one in segment city=A."""
    rng = np.random.default_rng(seed)
    counts = count_cooccurrences([make_batch(planted_profiles(rng, 2000))], jobs=20, skills=100)
    test = planted_profiles(rng, 300)
    batches = [
        ([f"p{i}" for i in range(start, start + 100)], make_batch(test[start : start + 100]))
        for start in range(0, 300, 100)
    ]
    return baseline_methods(counts, smoothing=1.0), batches


def test_a_clearly_better_method_has_an_interval_excluding_zero() -> None:
    methods, batches = planted_methods(seed=4)
    segments_of = {f"p{i}": ["city=A"] for i in range(0, 300, 2)}
    pairs = (("cooccurrence", "popularity"), ("cooccurrence", "cooccurrence"))
    rows = profile_metrics(methods, batches, segments_of, [5], Bootstrap(500, 1, pairs))
    table = {(r.method, r.metric, r.k, r.segment): r for r in rows}

    for segment, profiles in (("all", 300), ("city=A", 150)):
        # Every method row carries its value inside its interval, counts none.
        for method in BASELINES:
            count = table[(method, "profiles", None, segment)]
            assert (count.value, count.ci_low, count.ci_high) == (profiles, None, None)
        for r in rows:
            if r.segment == segment and " - " not in r.method and r.metric != "profiles":
                assert r.ci_low is not None and r.ci_high is not None, r
                assert r.ci_low <= r.value <= r.ci_high, r
                assert r.ci_high - r.ci_low > 0, r  # profiles differ: a real interval
        # Co-occurrence knows each title's planted skills, popularity does not: the paired
        # interval of the difference lies clearly on one side of 0.
        better = table[("cooccurrence - popularity", "precision", 5, segment)]
        plain = [table[(m, "precision", 5, segment)].value for m in ("cooccurrence", "popularity")]
        assert better.value == pytest.approx(plain[0] - plain[1], abs=1e-12)
        assert better.value > 0.3 and better.ci_low is not None and better.ci_low > 0.2, better
        lower_kl = table[("cooccurrence - popularity", "kl", None, segment)]
        assert lower_kl.ci_high is not None and lower_kl.ci_high < 0, lower_kl
        # A method against itself: exactly 0, in the degenerate interval [0, 0].
        for metric, k in (("kl", None), ("cross_entropy", None), ("precision", 5), ("map", 5)):
            same = table[("cooccurrence - cooccurrence", metric, k, segment)]
            assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0), same
    # Differences only for metrics both methods have (pmi has no kl), and no count rows.
    assert ("cooccurrence - popularity", "profiles", None, "all") not in table
    rows_pmi = profile_metrics(
        methods, batches, {}, [5], Bootstrap(10, 1, (("pmi", "popularity"),))
    )
    assert {r.metric for r in rows_pmi if r.method == "pmi - popularity"} == {
        "precision",
        "recall",
        "ndcg",
        "map",
    }


def test_planted_title_intervals_are_paired_and_deterministic_for_a_seed() -> None:
    methods, _ = planted_methods(seed=4)
    relevant = {j: np.arange(4 * j, 4 * j + 4) for j in range(20)}
    segments = {"titles": np.arange(20), "even": np.arange(0, 20, 2), "none": np.array([99])}
    pairs = (("cooccurrence", "popularity"), ("popularity", "popularity"))

    def run(seed: int) -> list[EvaluationRow]:
        return title_rows(
            methods, relevant, NO_EXCLUDE, 4, "planted", segments, Bootstrap(1000, seed, pairs)
        )

    rows = run(seed=3)
    table = {(r.method, r.metric, r.k, r.segment): r for r in rows}
    assert {r.segment for r in rows} == {"titles", "even"}  # "none" judges no title
    assert table[("pmi", "titles", None, "even")].value == 10
    better = table[("cooccurrence - popularity", "planted_precision", 4, "titles")]
    assert better.ci_low is not None and better.ci_low > 0, better
    same = table[("popularity - popularity", "planted_ndcg", 4, "titles")]
    assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    # The same seed gives the same intervals; another seed other intervals, the same means.
    assert run(seed=3) == rows
    other = run(seed=4)
    assert [r.value for r in other] == [r.value for r in rows]
    assert [(r.ci_low, r.ci_high) for r in other] != [(r.ci_low, r.ci_high) for r in rows]


def test_bootstrap_interval_of_a_mean_matches_normal_theory() -> None:
    # 400 draws of N(0, 1): the 95% interval of the mean is about mean +- 1.96 sd / 20; the
    # bootstrap's own noise at 2,000 resamples is a few thousandths.
    values = np.random.default_rng(0).normal(size=400)
    count, row = segment_rows("s", "profiles", 400, {"m": {("x", None): values}}, Bootstrap(2000))
    assert (count.metric, count.value) == ("profiles", 400)
    half = 1.96 * values.std(ddof=1) / 20
    assert row.value == pytest.approx(values.mean(), abs=1e-12)
    assert row.ci_low == pytest.approx(values.mean() - half, abs=0.015), (row, half)
    assert row.ci_high == pytest.approx(values.mean() + half, abs=0.015), (row, half)
    # A constant column resamples to itself exactly; without resamples there is no interval.
    (_, flat) = segment_rows("s", "titles", 3, {"m": {("x", 1): np.full(3, 0.1)}}, Bootstrap(50))
    assert (flat.value, flat.ci_low, flat.ci_high) == (0.1, 0.1, 0.1)
    (_, bare) = segment_rows("s", "titles", 3, {"m": {("x", 1): np.arange(3.0)}}, Bootstrap())
    assert (bare.value, bare.ci_low, bare.ci_high) == (1.0, None, None)


def test_segment_rows_reject_bad_input() -> None:
    values = {"m": {("x", None): np.zeros(3)}}
    with pytest.raises(ValueError, match="without values"):
        segment_rows("s", "profiles", 3, values, Bootstrap(10, 0, (("m", "other"),)))
    with pytest.raises(ValueError, match="3 values per metric"):
        segment_rows("s", "profiles", 3, {"m": {("x", None): np.zeros(4)}}, Bootstrap(10))
    with pytest.raises(ValueError, match="samples"):
        Bootstrap(-1)


def test_title_buckets_hold_exactly_the_titles_of_their_range() -> None:
    counts = np.array([1, 4, 5, 19, 20, 49, 50, 51, 1000, 3, 7])
    buckets = title_buckets(counts, [5, 20, 50])
    assert {label: ids.tolist() for label, ids in buckets.items()} == {
        "titles_1_4_profiles": [0, 1, 9],
        "titles_5_19_profiles": [2, 3, 10],
        "titles_20_49_profiles": [4, 5],
        "titles_min_50_profiles": [6, 7, 8],
    }
    assert list(buckets) == [  # in this order, which summaries follow
        "titles_1_4_profiles",
        "titles_5_19_profiles",
        "titles_20_49_profiles",
        "titles_min_50_profiles",
    ]
    assert list(title_buckets(counts, [2])) == ["titles_1_1_profiles", "titles_min_2_profiles"]
    for edges in ([], [1, 5], [5, 5], [20, 5]):
        with pytest.raises(ValueError, match="strictly increasing"):
            title_buckets(counts, edges)

    # Per bucket, title_rows averages exactly the judged titles in it. Title j's relevant skill
    # is j % 5: skill 3 is excluded, so titles 3 and 8 are judged in no bucket.
    method = Method("m", torch.zeros(len(counts), 6), "sum")
    relevant = {j: np.array([j % 5]) for j in range(len(counts))}
    rows = title_rows([method], relevant, np.array([3]), 2, "planted", buckets)
    titles = {r.segment: r.value for r in rows if r.metric == "titles"}
    assert titles == {
        "titles_1_4_profiles": 3,
        "titles_5_19_profiles": 2,  # 2 and 10, not 3
        "titles_20_49_profiles": 2,
        "titles_min_50_profiles": 2,  # 6 and 7, not 8
    }


def test_published_ranks_break_ties_by_the_lower_id() -> None:
    # Weights from {0, 1, 2}: many ties, inside the top k and across its edge. SkillRank
    # (per job) and the converse per skill rank by weight, then by the lower id, in every
    # block, so a rerun publishes the same ranks.
    rng = np.random.default_rng(3)
    phi_t = torch.tensor(rng.integers(0, 3, size=(7, 9)), dtype=torch.float32)
    for blocks, rows, k, row_key, item_key in (
        (rankings.top_skills_per_job(phi_t, 4, block=3), phi_t, 4, "job_id", "skill_id"),
        (rankings.top_jobs_per_skill(phi_t, 5, block=2), phi_t.T, 5, "skill_id", "job_id"),
    ):
        got: dict[int, list[tuple[int, int, float]]] = {}
        for columns in blocks:
            for r, rank, item, weight in zip(
                columns[row_key], columns["rank"], columns[item_key], columns["weight"],
                strict=True,
            ):  # fmt: skip
                got.setdefault(int(r), []).append((int(rank), int(item), float(weight)))
        assert sorted(got) == list(range(len(rows)))
        for r, values in enumerate(rows.tolist()):
            best = sorted(range(len(values)), key=lambda i, v=values: (-v[i], i))[:k]
            assert got[r] == [(n, i, values[i]) for n, i in enumerate(best, 1)], (item_key, r)


def test_rankings_of_a_wide_phi_are_the_whole_rows_arithmetic() -> None:
    # Wide enough that each row's total is taken a few rows at a time and each skill's column
    # is copied in bands of jobs (rankings' cache-sized pieces, ragged at the end): the ranks
    # and the probabilities are those of whole rows in double, to the bit.
    phi_t = torch.randn(300, 17_000, generator=torch.Generator().manual_seed(8))
    for (columns,), rows, row_key, item_key in (
        (list(rankings.top_skills_per_job(phi_t, 3, block=300)), phi_t, "job_id", "skill_id"),
        (
            list(rankings.top_jobs_per_skill(phi_t, 3, block=17_000)),
            phi_t.T.contiguous(),  # a sum over a strided row may round differently
            "skill_id",
            "job_id",
        ),
    ):
        top = torch.topk(rows, 3, dim=1)  # real-valued draws: no ties
        log_total = torch.logsumexp(rows.double(), dim=1, keepdim=True)
        assert columns[row_key].tolist() == [r for r in range(len(rows)) for _ in range(3)]
        assert columns[item_key].tolist() == top.indices.reshape(-1).tolist()
        assert np.array_equal(columns["weight"], top.values.reshape(-1).numpy())
        expected = torch.exp(top.values.double() - log_total).reshape(-1).numpy()
        assert np.array_equal(columns["probability"], expected), item_key


# The neighbour searches run on a GPU too (the train stage's --device cuda): checked there
# wherever torch sees one (benchmarks/neighbors.py compares the two at paper scale).
@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_neighbors_in_blocks_are_the_exact_cosine_top_k(device: str) -> None:
    # 11 jobs x 8 skills in blocks of 3 (and of 20: one block): every pair of blocks, the
    # diagonal ones and the ragged last one, must give each row its k most similar others.
    phi_t = torch.randn(11, 8, generator=torch.Generator().manual_seed(5))
    for neighbors, vectors, key, other in (
        (rankings.job_neighbors, torch.softmax(phi_t.double(), 1), "job_id", "neighbor_job_id"),
        (
            rankings.skill_neighbors,
            torch.softmax(phi_t.double(), 0).T,
            "skill_id",
            "neighbor_skill_id",
        ),
    ):
        unit = vectors / vectors.norm(dim=1, keepdim=True)
        cosine = (unit @ unit.T).fill_diagonal_(-torch.inf)
        for k, block in ((4, 3), (4, 20), (30, 3)):
            rows = [
                (int(r), int(rank), int(n), float(s))
                for columns in neighbors(phi_t, k, block, device)
                for r, rank, n, s in zip(
                    columns[key], columns["rank"], columns[other], columns["similarity"],
                    strict=True,
                )
            ]  # fmt: skip
            width = min(k, len(vectors) - 1)
            assert len(rows) == len(vectors) * width, (key, k, block)
            for r, rank, n, similarity in rows:
                assert n != r and similarity == pytest.approx(float(cosine[r, n]), abs=1e-6)
                expected = torch.sort(cosine[r], descending=True).values[rank - 1]
                assert similarity == pytest.approx(float(expected), abs=1e-6), (key, r, rank)
            assert {(r, n) for r, _, n, _ in rows} == {
                (r, int(n)) for r in range(len(vectors)) for n in cosine[r].topk(width).indices
            }


def test_top_k_ranks_by_score_then_lowest_id() -> None:
    # Scores from {0, 1, 2, 3}: ties at the k-th score in most rows, and inside the top k.
    rng = np.random.default_rng(8)
    scores = torch.tensor(rng.integers(0, 4, size=(60, 25)), dtype=torch.float32)
    for k in (1, 4, 10, 25, 40):
        expected = [
            sorted(range(25), key=lambda s, row=row: (-float(scores[row, s]), s))[:k]
            for row in range(60)
        ]
        assert rankings.top_k(scores, k).tolist() == expected, k
    # Real-valued scores (ties rare) with -inf in some rows, many of them in one row.
    scores = torch.tensor(rng.normal(size=(60, 25)), dtype=torch.float32)
    scores[rng.random(size=(60, 25)) < 0.1] = -torch.inf
    scores[7, 3:] = -torch.inf
    for k in (1, 4, 10, 25):
        expected = [
            sorted(range(25), key=lambda s, row=row: (-float(scores[row, s]), s))[:k]
            for row in range(60)
        ]
        assert rankings.top_k(scores, k).tolist() == expected, k
    # A nan anywhere in a row (with either sign bit, beside -inf) is refused whatever k.
    for row, column in ((0, 0), (30, 24), (7, 2)):
        for nan in (torch.nan, -torch.nan):
            bad = scores.clone()
            bad[row, column] = nan
            for k in (1, 10):
                with pytest.raises(ValueError, match="scores hold nan: cannot rank"):
                    rankings.top_k(bad, k)
