"""report draws each figure to a readable PNG with the run's numbers, and one HTML page."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skillrank import report
from skillrank.report import (
    Figure,
    Scores,
    association_histograms_figure,
    cocluster,
    cocluster_figure,
    embed_2d,
    evaluation_figure,
    loss_figure,
    map_figure,
    phi_histogram_figure,
    place_labels,
    top_coclusters,
)
from skillrank.report_page import (
    TitleSkills,
    TopPair,
    metadata_html,
    render_html,
    skillrank_says_html,
    top_pairs_html,
    verdict_html,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(out_dir: Path, figure: Figure) -> None:
    """The figure's PNG is on disk under its key, readable, non-empty and the bytes it carries."""
    path = out_dir / f"{figure.key}.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG: {data[:8]!r}"
    assert data == figure.png, f"{path} differs from the bytes the Figure carries"
    with Image.open(path) as image:
        image.load()
        width, height = image.size
    assert width > 100 and height > 100, f"{path} is only {width} x {height}"


def _same_partition(found: np.ndarray, planted: np.ndarray) -> bool:
    """True when both labelings split the items into the same groups, whatever the label values."""
    pairs = set(zip(found.tolist(), planted.tolist(), strict=True))
    return len(pairs) == len(set(found.tolist())) == len(set(planted.tolist()))


def _planted_blocks(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy 3-block diagonal matrix of unequal blocks, rows and columns shuffled."""
    rng = np.random.default_rng(seed)
    row_blocks = np.repeat([0, 1, 2], [30, 20, 25])
    col_blocks = np.repeat([0, 1, 2], [40, 30, 35])
    matrix = rng.uniform(0.0, 0.1, size=(row_blocks.size, col_blocks.size))
    inside = row_blocks[:, None] == col_blocks[None, :]
    matrix[inside] += rng.uniform(1.0, 2.0, size=int(inside.sum()))
    rows, cols = rng.permutation(row_blocks.size), rng.permutation(col_blocks.size)
    return matrix[np.ix_(rows, cols)], row_blocks[rows], col_blocks[cols]


def test_loss_figure_marks_best_epoch_and_test_loss(tmp_path: Path) -> None:
    epochs = list(range(1, 11))
    train = [1.0 / e for e in epochs]
    validation = [1.2 / e + 0.02 * max(0, e - 7) for e in epochs]
    figure = loss_figure(tmp_path, epochs, train, validation, best_epoch=7, test_loss=0.1834)

    _check_png(tmp_path, figure)
    assert figure.key == "fig2_loss"
    assert "epoch 7" in figure.caption, figure.caption
    assert f"{validation[6]:.4f}" in figure.caption, figure.caption
    assert "0.1834" in figure.caption, figure.caption


def test_loss_figure_rejects_mismatched_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one length"):
        loss_figure(tmp_path, [1, 2, 3], [1.0, 0.5], [1.0, 0.6, 0.5], best_epoch=2, test_loss=0.5)


def test_phi_histogram_caption_has_the_positive_share(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    # Mostly negative, as trained phi is: about 2.3% of a standard normal lies above 2.
    phi_t = torch.randn(300, 500, generator=generator) - 2.0
    share = 100.0 * int((phi_t > 0).sum()) / phi_t.numel()

    figure = phi_histogram_figure(tmp_path, phi_t)

    _check_png(tmp_path, figure)
    assert f"{share:.2f}% are positive" in figure.caption, (share, figure.caption)
    assert "1.13%" in figure.caption
    assert "150,000" in figure.caption, figure.caption


def test_phi_histogram_walks_blocks_without_changing_phi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blocks of 2 rows: the per-block counts must add up to the whole matrix's.
    monkeypatch.setattr("skillrank.report.BLOCK_ELEMENTS", 10)
    phi_t = torch.tensor([[-1.0, 2.0, -3.0], [0.0, -0.5, 1.5], [-2.0, -2.0, -2.0]])
    before = phi_t.clone()

    figure = phi_histogram_figure(tmp_path, phi_t)

    assert f"{100 * 2 / 9:.2f}% are positive" in figure.caption, figure.caption
    assert torch.equal(phi_t, before)


def test_phi_histogram_rejects_nan_and_infinite_values(tmp_path: Path) -> None:
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="NaN or infinite"):
            phi_histogram_figure(tmp_path, torch.tensor([[0.0, 1.0], [bad, 2.0]]))


def test_cocluster_recovers_planted_blocks() -> None:
    matrix, row_blocks, col_blocks = _planted_blocks(seed=0)

    row_labels, col_labels = cocluster(matrix, n_clusters=3, seed=0)

    assert _same_partition(row_labels, row_blocks), (row_labels, row_blocks)
    assert _same_partition(col_labels, col_blocks), (col_labels, col_blocks)
    # Each job block is paired with its own skill block, not just partitioned alike.
    for block in range(3):
        assert set(row_labels[row_blocks == block]) == set(col_labels[col_blocks == block])


def test_cocluster_is_deterministic_given_the_seed() -> None:
    matrix, _, _ = _planted_blocks(seed=1)
    first = cocluster(matrix.astype(np.float32), n_clusters=3, seed=4)
    second = cocluster(matrix.astype(np.float32), n_clusters=3, seed=4)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_cocluster_lowers_too_many_clusters() -> None:
    matrix = np.random.default_rng(2).uniform(size=(4, 7))

    row_labels, col_labels = cocluster(matrix, n_clusters=20, seed=0)

    assert row_labels.shape == (4,) and col_labels.shape == (7,)
    assert set(row_labels) | set(col_labels) <= set(range(4))
    single = cocluster(matrix[:1], n_clusters=5, seed=0)
    assert single[0].tolist() == [0] and single[1].tolist() == [0] * 7


def test_cocluster_rejects_negative_nan_and_infinite_values() -> None:
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite, non-negative"):
            cocluster(np.array([[1.0, bad], [0.5, 0.5]]), n_clusters=2, seed=0)


def test_top_coclusters_name_each_block_by_its_heaviest_titles_and_strongest_skills() -> None:
    matrix, row_blocks, col_blocks = _planted_blocks(seed=0)
    row_labels, col_labels = cocluster(matrix, n_clusters=3, seed=0)
    # Block 1 holds the most training profiles, then block 2, then block 0.
    weights = np.array([1.0, 30.0, 10.0])[row_blocks] + np.arange(row_blocks.size) / 100

    shown = top_coclusters(matrix, row_labels, col_labels, weights, count=2, per_cluster=4)

    assert [len(c.rows) for c in shown] == [4, 4] and [len(c.columns) for c in shown] == [4, 4]
    for cluster, block in zip(shown, (1, 2), strict=True):
        assert set(row_blocks[cluster.rows]) == {block} == set(col_blocks[cluster.columns])
        members = np.flatnonzero(row_blocks == block)
        assert cluster.rows == sorted(members, key=lambda r: -weights[r])[:4]
        assert cluster.profiles == pytest.approx(weights[members].sum())
        # The strongest skills: the largest column sums over the co-cluster's rows.
        sums = matrix[members].sum(axis=0)
        columns = np.flatnonzero(col_blocks == block)
        assert cluster.columns == sorted(columns, key=lambda c: -sums[c])[:4]


def test_cocluster_figure_names_the_shown_titles_and_skills(tmp_path: Path) -> None:
    matrix, row_blocks, _ = _planted_blocks(seed=0)
    row_labels, col_labels = cocluster(matrix, n_clusters=3, seed=0)
    shown = top_coclusters(matrix, row_labels, col_labels, np.ones(75), count=3, per_cluster=5)
    names = [f"title {i}" for i in range(75)], [f"skill {i}" for i in range(105)]

    figure = cocluster_figure(tmp_path, matrix, shown, *names, clusters=3)

    _check_png(tmp_path, figure)
    assert figure.key == "fig4_cocluster"
    assert "The 3 co-clusters (of 3)" in figure.caption, figure.caption
    with pytest.raises(ValueError, match="no co-cluster"):
        cocluster_figure(tmp_path, matrix, [], *names, clusters=3)


def test_association_histograms_report_medians(tmp_path: Path) -> None:
    # Positives per job (row): 1, 2, 3, 0, 2 -> median 2. Per skill (column): 3, 2, 1, 2 ->
    # median 2. A single-row block size checks that the per-block sums add up.
    phi_t = torch.tensor(
        [
            [0.5, -1.0, -1.0, -2.0],
            [0.1, 0.2, -1.0, -2.0],
            [0.3, -1.0, 0.4, 0.9],
            [-0.1, -1.0, -1.0, 0.0],
            [-1.0, 1.0, -1.0, 2.0],
        ]
    )
    figure = association_histograms_figure(tmp_path, phi_t)

    _check_png(tmp_path, figure)
    assert "Median 2 positive skills per job (of 4)" in figure.caption, figure.caption
    assert "median 2 positive jobs per skill (of 5)" in figure.caption, figure.caption


def test_association_histograms_half_medians(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("skillrank.report.BLOCK_ELEMENTS", 1)
    # Per job: 1, 2 -> median 1.5. Per skill: 2, 1, 0 -> median 1.
    phi_t = torch.tensor([[1.0, -1.0, -1.0], [1.0, 1.0, -1.0]])

    figure = association_histograms_figure(tmp_path, phi_t)

    assert "Median 1.5 positive skills per job" in figure.caption, figure.caption
    assert "median 1 positive jobs per skill" in figure.caption, figure.caption


def test_embed_2d_keeps_planted_clusters_apart() -> None:
    rng = np.random.default_rng(0)
    planted = np.repeat([0, 1], 60)
    centres = rng.normal(size=(2, 200)) * 5.0
    vectors = (centres[planted] + rng.normal(size=(planted.size, 200))).astype(np.float32)

    coords = embed_2d(vectors, seed=0)

    assert coords.shape == (120, 2)
    assert np.isfinite(coords).all()
    means = np.stack([coords[planted == c].mean(axis=0) for c in (0, 1)])
    nearest = np.argmin(((coords[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
    assert (nearest == planted).all(), f"{int((nearest != planted).sum())} points misplaced"
    np.testing.assert_array_equal(coords, embed_2d(vectors, seed=0))


def test_embed_2d_copes_with_few_points() -> None:
    vectors = np.random.default_rng(1).uniform(size=(8, 30))

    coords = embed_2d(vectors, seed=0, perplexity=30.0)

    assert coords.shape == (8, 2) and np.isfinite(coords).all()


def test_place_labels_keeps_labels_apart_inside_the_bounds() -> None:
    rng = np.random.default_rng(3)
    anchors = np.vstack([rng.normal(50, 5, size=(150, 2)), rng.uniform(0, 400, size=(150, 2))])
    sizes = rng.uniform([20, 6], [80, 10], size=(300, 2))
    bounds = (0.0, 0.0, 400.0, 400.0)

    placed = place_labels(anchors, sizes, bounds, limit=40)

    assert len(placed) == 40
    indices = [i for i, _, _ in placed]
    assert indices == sorted(indices) and indices[0] == 0
    boxes = [(x, y, x + sizes[i][0], y + sizes[i][1]) for i, x, y in placed]
    for n, (x0, y0, x1, y1) in enumerate(boxes):
        assert 0 <= x0 and x1 <= 400 and 0 <= y0 and y1 <= 400
        for other in boxes[n + 1 :]:
            assert x1 <= other[0] or other[2] <= x0 or y1 <= other[1] or other[3] <= y0
        # No labelled point lies under a label.
        for i, _, _ in placed:
            px, py = anchors[i]
            assert not (x0 < px < x1 and y0 < py < y1)
    # The dense cluster holds the first 150 points, but has room for only a few labels: the
    # rest went to the points spread around it.
    assert 5 < sum(i < 150 for i in indices) < 30
    assert place_labels(anchors, sizes, bounds, limit=0) == []


def test_map_figure_names_points_as_text_on_the_page(tmp_path: Path) -> None:
    coords = np.random.default_rng(0).normal(size=(200, 2))
    labels = [f"job title number {i} with a rather long descriptive tail" for i in range(200)]

    figure = map_figure(tmp_path, "fig6_job_map", "Fig 6: jobs", coords, labels, labelled=25)

    _check_png(tmp_path, figure)
    assert (figure.key, figure.title) == ("fig6_job_map", "Fig 6: jobs")
    assert figure.svg is not None and figure.svg.startswith("<svg")
    named = re.findall(r'<g id="fig6_job_map-label-(\d+)">', figure.svg)
    assert len(named) == 25 and named[0] == "0", named
    # Labels stay text (cut to 30 characters), the points an image inside the SVG.
    assert ">job title number 0 with a rat\u2026</text>" in figure.svg
    assert "data:image/png;base64," in figure.svg
    skipped = int(named[-1]) + 1 - 25
    assert "200 points, the most frequent first; 25 named" in figure.caption, figure.caption
    assert f"({skipped} more frequent ones passed over)" in figure.caption, figure.caption


def test_map_figure_looks_past_crowded_points_for_room(tmp_path: Path) -> None:
    # The 120 most frequent points share one spot, where four labels fit (one per corner);
    # the other six must come from the 80 spread points after them.
    spread = np.random.default_rng(1).uniform(-50, 50, size=(80, 2))
    coords = np.vstack([np.zeros((120, 2)), spread])
    labels = [f"title {i}" for i in range(200)]

    figure = map_figure(tmp_path, "fig6_crowded", "Fig 6", coords, labels, labelled=10)

    assert figure.svg is not None
    named = [int(i) for i in re.findall(r'<g id="fig6_crowded-label-(\d+)">', figure.svg)]
    assert sorted(named)[:4] == [0, 1, 2, 3] and len(named) == 10, named
    assert all(i >= 120 for i in sorted(named)[4:]), named
    assert "10 named, the most frequent whose label had room (116 more" in figure.caption


def test_map_figure_rejects_unsafe_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="figure key"):
        map_figure(tmp_path, "../escape", "x", np.zeros((2, 2)), ["a", "b"])


def _evaluation_rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    methods = {"model": 0.40, "popularity": 0.20, "cooccurrence": 0.30, "pmi": 0.25}
    for method, base in methods.items():
        for offset, metric in enumerate(("recall", "precision", "ndcg", "map")):
            for k in (5, 10, 20):
                value = round(base + 0.01 * offset + 0.001 * k, 4)
                rows.append(
                    {"method": method, "metric": metric, "k": k, "segment": "all", "value": value}
                )
                # Other segments are not drawn; a wild value would show in the caption.
                rows.append(
                    {"method": method, "metric": metric, "k": k, "segment": "rare", "value": 9.0}
                )
        # Planted precision over all titles and per bucket; popularity finds none.
        planted = 0.0 if method == "popularity" else base
        for segment in ("titles", "titles_1_4_profiles", "titles_min_50_profiles"):
            row = {"method": method, "metric": "planted_precision", "k": 3, "segment": segment}
            rows.append({**row, "value": planted})
        # A loss has no k (null in the table); a count is not drawn.
        kl = round(3.0 - base, 4)
        rows.append({"method": method, "metric": "kl", "k": None, "segment": "all", "value": kl})
    rows.append({"method": "model", "metric": "profiles", "k": None, "segment": "all", "value": 9})
    return rows


def test_evaluation_figure_gives_the_headline_measures(tmp_path: Path) -> None:
    figure = evaluation_figure(tmp_path, _evaluation_rows())

    _check_png(tmp_path, figure)
    # recall@20: model 0.40 + 0.02 = 0.42; best baseline cooccurrence 0.30 + 0.02 = 0.32.
    # NDCG@10: 0.40 + 0.02 + 0.01. KL: lower is better, 3 - 0.3 for co-occurrence.
    assert figure.caption.startswith(
        "The model against the best baseline: KL 2.600 against cooccurrence's 2.700;"
        " recall@20 0.420 against cooccurrence's 0.320; NDCG@10 0.430 against cooccurrence's"
        " 0.330; planted precision@3 0.400 against cooccurrence's 0.300."
    ), figure.caption
    assert "9.000" not in figure.caption
    # Rows of other segments draw nothing: the chart is the same without them.
    drawn = [r for r in _evaluation_rows() if r["segment"] != "rare"]
    assert evaluation_figure(tmp_path / "drawn", drawn).png == figure.png
    # The test KL is drawn: without it, another picture.
    without_kl = [r for r in _evaluation_rows() if r["metric"] != "kl"]
    assert evaluation_figure(tmp_path / "no_kl", without_kl).png != figure.png


def _with_intervals(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The rows with an interval around each value but the counts', and the difference
    rows evaluate writes beside them (a wild value, which would show if drawn)."""
    out: list[dict[str, object]] = []
    for row in rows:
        value = row["value"]
        assert isinstance(value, int | float)
        if row["metric"] == "profiles":
            out.append({**row, "ci_low": None, "ci_high": None})
            continue
        out.append({**row, "ci_low": value - 0.05, "ci_high": value + 0.02})
        if row["method"] == "model":
            difference = {**row, "method": "model - cooccurrence", "value": -9.0}
            out.append({**difference, "ci_low": -9.5, "ci_high": -8.5})
    return out


def test_evaluation_figure_draws_intervals_as_error_bars(tmp_path: Path) -> None:
    rows = _with_intervals(_evaluation_rows())

    figure = evaluation_figure(tmp_path, rows)

    _check_png(tmp_path, figure)
    # The same bars, now with error bars: another picture.
    plain = evaluation_figure(tmp_path / "plain", _evaluation_rows())
    assert figure.png != plain.png
    # Difference rows are not bars of their own: the chart is the same without them.
    methods_only = [r for r in rows if " - " not in str(r["method"])]
    assert evaluation_figure(tmp_path / "methods", methods_only).png == figure.png
    assert "model - cooccurrence" not in figure.caption and "-9.0" not in figure.caption
    # The caption gives the model's and the best baseline's intervals.
    assert "recall@20 0.420 [0.370, 0.440]" in figure.caption, figure.caption
    assert "against cooccurrence's 0.320 [0.270, 0.340]" in figure.caption, figure.caption
    assert "95% bootstrap intervals" in figure.caption
    # Rounding can leave a value a hair outside its interval: drawn all the same (matplotlib
    # refuses negative error bars).
    outside = [{**r, "ci_low": r["ci_high"]} for r in rows]
    _check_png(tmp_path / "outside", evaluation_figure(tmp_path / "outside", outside))


def test_evaluation_figure_without_planted_rows_or_model(tmp_path: Path) -> None:
    rows = [r for r in _evaluation_rows() if r["segment"] == "all" and r["method"] != "model"]

    figure = evaluation_figure(tmp_path, rows)

    _check_png(tmp_path, figure)
    assert figure.caption == "Methods: popularity, cooccurrence, pmi."


def test_evaluation_figure_rejects_no_rows(tmp_path: Path) -> None:
    rows = [{"method": "model", "metric": "ndcg", "k": 5, "segment": "rare", "value": 0.1}]
    with pytest.raises(ValueError, match="no evaluation rows"):
        evaluation_figure(tmp_path, rows)


def _compared(differences: dict[tuple[str, str], tuple[float, float]]) -> Scores:
    """Model and baselines at the four headline measures, with intervals; `differences`:
    (baseline, metric) -> the interval of model - baseline (the value its midpoint)."""
    cells = {
        ("kl", None, "all"): {"model": 1.8, "popularity": 2.9, "cooccurrence": 2.2},
        ("recall", 20, "all"): {"model": 0.35, "popularity": 0.24, "cooccurrence": 0.33},
        ("ndcg", 10, "all"): {"model": 0.52, "popularity": 0.46, "cooccurrence": 0.51},
        ("planted_precision", 10, "titles"): {"model": 0.88, "popularity": 0.0,
                                              "cooccurrence": 0.66},
    }  # fmt: skip
    rows: list[dict[str, object]] = []
    for (metric, k, segment), values in cells.items():
        for method, value in values.items():
            cell = {"metric": metric, "k": k, "segment": segment}
            rows.append({**cell, "method": method, "value": value, "ci_low": value - 0.01,
                         "ci_high": value + 0.01})  # fmt: skip
            if method != "model":
                low, high = differences[(method, metric)]
                rows.append({**cell, "method": f"model - {method}", "value": (low + high) / 2,
                             "ci_low": low, "ci_high": high})  # fmt: skip
    rows.append({"method": "model", "metric": "profiles", "k": None, "segment": "all",
                 "value": 7785.0, "ci_low": None, "ci_high": None})  # fmt: skip
    return Scores.of(rows)


_WINS = {
    ("popularity", "kl"): (-1.2, -1.0), ("cooccurrence", "kl"): (-0.45, -0.40),
    ("popularity", "recall"): (0.10, 0.12), ("cooccurrence", "recall"): (0.02, 0.03),
    ("popularity", "ndcg"): (0.05, 0.07), ("cooccurrence", "ndcg"): (0.006, 0.015),
    ("popularity", "planted_precision"): (0.8, 0.9),
    ("cooccurrence", "planted_precision"): (0.21, 0.23),
}  # fmt: skip


def test_the_verdict_says_the_model_beats_every_baseline_where_every_interval_does() -> None:
    verdict = verdict_html(_compared(_WINS), "mixture")

    assert verdict.startswith(
        '<p class="verdict"><strong>The published model (mixture) beats every baseline'
        " (popularity and cooccurrence) on every headline measure: KL, recall@20, NDCG@10 and"
        " planted precision@10.</strong>"
    ), verdict
    # Then the numbers against the best baseline of each, with the paired interval.
    assert (
        "recall@20 0.350 [0.340, 0.360] against cooccurrence&#x27;s 0.330 [0.320, 0.340],"
        " difference +0.025 [+0.020, +0.030] over 7,785 test profiles"
    ) in verdict, verdict
    assert "KL 1.800 [1.790, 1.810] against cooccurrence&#x27;s 2.200" in verdict, verdict


def test_the_verdict_names_ties_and_losses_baseline_by_baseline() -> None:
    mixed = {
        **_WINS,
        ("cooccurrence", "ndcg"): (-0.004, 0.012),  # contains 0: a tie
        ("popularity", "kl"): (0.1, 0.3),  # KL: lower is better, so a loss
    }

    verdict = verdict_html(_compared(mixed), "softmax")

    assert (
        "<strong>The published model (softmax) does not beat every baseline on every headline"
        " measure: on KL it beats cooccurrence and loses to popularity; it beats every baseline"
        " on recall@20; on NDCG@10 it beats popularity and ties with cooccurrence; it beats"
        " every baseline on planted precision@10.</strong>"
    ) in verdict, verdict


def test_the_verdict_of_a_run_without_evaluation_says_what_to_run() -> None:
    verdict = verdict_html(Scores.of([]), "mixture")
    assert "has not been evaluated" in verdict and "./spark-submit.sh evaluate" in verdict


def test_the_verdict_without_intervals_says_how_to_get_them() -> None:
    # evaluate.bootstrap_samples=0: values, but no paired differences to judge a win by.
    rows = [
        {"metric": "recall", "k": 20, "segment": "all", "method": method, "value": value,
         "ci_low": None, "ci_high": None}
        for method, value in (("model", 0.35), ("cooccurrence", 0.33))
    ]  # fmt: skip
    verdict = verdict_html(Scores.of(rows), "mixture")
    assert "No headline measure of this run has an interval" in verdict, verdict
    assert "evaluate.bootstrap_samples of at least 1" in verdict and "beats" not in verdict


def test_render_html_inlines_every_figure_and_escapes_text(tmp_path: Path) -> None:
    loss = loss_figure(tmp_path, [1, 2, 3], [0.9, 0.5, 0.4], [1.0, 0.7, 0.8], 2, 0.71)
    phi = phi_histogram_figure(tmp_path, torch.tensor([[1.0, -1.0], [-2.0, -3.0]]))
    coords = np.random.default_rng(0).normal(size=(20, 2))
    names = [f"<i>title</i> {i}" for i in range(20)]
    mapped = map_figure(tmp_path, "fig6_jobs", "Fig 6", coords, names, labelled=5)
    pairs = [
        TopPair("<b>R&D</b> engineer", "C++", 31.25, 0.0412, 1200),
        TopPair("nurse", "triage", 12.5, 0.1, 20),
    ]
    says = [TitleSkills("<b>R&D</b> lead", 340, ["C++", "<script>"], [("nurse", 0.913)])]
    meta = [("run", "trained by <b>R&D</b>")]
    lead = verdict_html(Scores.of([]), "mixture") + metadata_html(meta)
    page = render_html(
        "run <b>R&D</b>",
        lead + skillrank_says_html(says),
        [loss, phi, mapped, ("Top pairs", top_pairs_html(pairs))],
    )

    for figure in (loss, phi, mapped):
        assert f'<a href="{figure.key}.png">{figure.key}.png</a>' in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    files = [(tmp_path / f"{f.key}.png").read_bytes() for f in (loss, phi)]
    assert [base64.b64decode(image) for image in images] == files
    # The map is inline SVG, its labels escaped text.
    assert mapped.svg is not None and mapped.svg in page
    assert "&lt;i&gt;title&lt;/i&gt; 0</text>" in page
    # The verdict comes first, right after the heading.
    assert page.index('<p class="verdict">') < page.index("<table") < page.index("<section")
    assert "<b>R&D</b>" not in page and "<script>" not in page
    assert page.count("&lt;b&gt;R&amp;D&lt;/b&gt;") == 5, "title, heading, meta, card, table"
    assert "31.2" in page and "0.0412" in page and "1,200" in page and "C++" in page
    assert "340 training profiles" in page and "nurse (0.91)" in page
    # Self-contained: nothing fetched from elsewhere.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page


def test_figures_leave_no_pyplot_state(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    for _ in range(3):
        loss_figure(tmp_path, [1, 2], [1.0, 0.5], [1.0, 0.6], 2, 0.6)
    assert plt.get_fignums() == []


def test_segment_pair_takes_the_title_best_supported_in_two_segments() -> None:
    pairs = [
        ("city", "SEATTLE", "nurse", 300),
        ("city", "MUMBAI", "nurse", 40),
        ("city", "SEATTLE", "chef", 90),
        ("city", "MUMBAI", "chef", 80),
        ("industry", "RESEARCH", "nurse", 500),  # one segment of its type only
    ]
    assert report.segment_pair(pairs) == ("city", "chef", "SEATTLE", "MUMBAI")
    assert report.segment_pair(pairs[-1:]) is None


def test_segment_figure_shows_both_segments_with_their_intervals(tmp_path: Path) -> None:
    def rows(lifts: list[float]) -> list[dict[str, object]]:
        return [
            {"skill_name": f"skill {i}", "probability": 0.3 - 0.05 * i,
             "probability_low": 0.25 - 0.05 * i, "probability_high": 0.35 - 0.05 * i,
             "lift": lift, "profiles": 120}
            for i, lift in enumerate(lifts)
        ]  # fmt: skip

    figure = report.segment_figure(
        tmp_path, "nurse", [("SEATTLE", rows([3.0, 1.0])), ("MUMBAI", rows([1.0, 0.9]))]
    )
    assert (tmp_path / "fig8_segments.png").read_bytes() == figure.png
    assert "'nurse' in SEATTLE and in MUMBAI" in figure.caption
    with pytest.raises(ValueError, match="rows"):
        report.segment_figure(tmp_path, "nurse", [("SEATTLE", [])])
