"""The paper's figures for one training run: PNG files and one self-contained HTML page.

Each ``*_figure`` function draws one figure from arrays the caller has already read, writes
``<out_dir>/<key>.png`` and returns a :class:`Figure` (key, title, a caption with the run's
numbers, and the PNG bytes). ``render_html`` turns those into one page with the images inlined.

Figures are drawn on ``matplotlib.figure.Figure`` objects rather than through pyplot: pyplot
keeps every figure in a global registry until it is closed, so a figure that is simply dropped
here is freed, and no backend has to be selected (PNG output always goes through Agg).

``phi_t`` (jobs x skills) can hold 190 million entries, so everything computed from it walks it
in blocks of rows and never makes a float64 copy.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure as MplFigure
from matplotlib.patches import Patch
from matplotlib.typing import ColorType
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.utils.extmath import randomized_svd
from torch import Tensor

from skillrank.evaluate import BASELINES, DIFFERENCE

DPI = 110
# Entries per block of phi_t: small enough that torch.histc's float32 counts stay exact
# (float32 holds every integer up to 2**24) and a block's temporaries stay a few MiB.
BLOCK_ELEMENTS = 1 << 22
PHI_BINS = 100
PAPER_POSITIVE_PERCENT = 1.13
LABEL_CHARS = 30
# Retrieval metrics in the order the paper reports them; any other "all" metric follows.
RANKING_METRICS = ("recall", "precision", "ndcg", "map")
PLANTED_METRICS = ("planted_precision", "planted_ndcg")
MODEL_METHOD = "model"
MODEL_COLOUR = "#d62728"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Figure:
    """One written figure: file stem, HTML heading, caption and the PNG bytes it wrote.

    ``png`` rides along so that ``render_html`` can inline the image without reading files
    (the PNG is also at ``<out_dir>/<key>.png``, which the page links to).
    """

    key: str
    title: str
    caption: str
    png: bytes = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        # The key becomes a file name and an href: no paths, no spaces, no markup.
        if not _KEY.fullmatch(self.key):
            raise ValueError(f"figure key must match {_KEY.pattern}, got {self.key!r}")


def loss_figure(
    out_dir: Path,
    epochs: Sequence[int],
    train_loss: Sequence[float],
    validation_loss: Sequence[float],
    best_epoch: int,
    test_loss: float,
) -> Figure:
    """Fig 2: training and validation loss per epoch, the kept epoch and its test loss.

    Takes one loss per epoch for each split; writes ``fig2_loss.png``.
    """
    if not len(epochs) == len(train_loss) == len(validation_loss) or not epochs:
        raise ValueError(
            "epochs, train_loss and validation_loss must be non-empty and of one length, got "
            f"{len(epochs)}, {len(train_loss)}, {len(validation_loss)}"
        )
    fig = MplFigure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(epochs, train_loss, marker="o", markersize=3, label="training loss")
    ax.plot(epochs, validation_loss, marker="o", markersize=3, label="validation loss")
    ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
    ax.annotate(
        f"best epoch {best_epoch}",
        xy=(best_epoch, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(4, -12),
        textcoords="offset points",
        fontsize=8,
        color="dimgrey",
    )
    ax.axhline(test_loss, color="black", linestyle=":", linewidth=1)
    ax.plot([best_epoch], [test_loss], marker="*", markersize=12, color="black", linestyle="none")
    ax.plot([], [], marker="*", color="black", linestyle=":", label=f"test loss {test_loss:.4f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean KL divergence per profile)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    by_epoch = dict(zip(epochs, validation_loss, strict=True))
    kept = (
        f"epoch {best_epoch} (validation loss {by_epoch[best_epoch]:.4f})"
        if best_epoch in by_epoch
        else f"epoch {best_epoch}"
    )
    caption = (
        f"{len(epochs)} epochs trained; early stopping kept {kept}. "
        f"Test loss at that epoch: {test_loss:.4f}."
    )
    key = "fig2_loss"
    return Figure(key, "Fig 2: training and validation loss", caption, _save(fig, out_dir, key))


def phi_histogram_figure(out_dir: Path, phi_t: Tensor) -> Figure:
    """Fig 3: histogram of every entry of phi (log count axis) and the share that is positive.

    Takes ``phi_t`` (jobs x skills), read in blocks of rows; writes ``fig3_phi_histogram.png``.
    """
    total = phi_t.numel()
    if total == 0:
        raise ValueError("phi_t is empty")
    low, high, positive = np.inf, -np.inf, 0
    for block in _row_blocks(phi_t):
        if not bool(torch.isfinite(block).all()):
            raise ValueError("phi_t holds NaN or infinite values")
        block_low, block_high = torch.aminmax(block)
        low, high = min(low, float(block_low)), max(high, float(block_high))
        positive += int((block > 0).sum())
    if low == high:
        # histc would fall back to the data's own range; give a constant matrix a visible bin.
        low, high = low - 0.5, high + 0.5
    counts = np.zeros(PHI_BINS, dtype=np.int64)
    for block in _row_blocks(phi_t):
        # histc keeps the input dtype; float64 stays as is so no value drifts out of range.
        exact = block if block.dtype == torch.float64 else block.float()
        block_counts = torch.histc(exact, bins=PHI_BINS, min=low, max=high)
        counts += block_counts.round().to(torch.int64).cpu().numpy()
    edges = np.linspace(low, high, PHI_BINS + 1)
    share = 100.0 * positive / total

    fig = MplFigure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    # Weighted hist of the bin starts redraws the precomputed counts; log=True keeps empty
    # bins off a log axis. (matplotlib types bins as Sequence[float]; an array is what it takes.)
    ax.hist(edges[:-1], bins=edges, weights=counts, log=True, color="#4c72b0")  # type: ignore[arg-type]
    ax.axvline(0.0, color="black", linewidth=1)
    ax.text(
        0.98,
        0.95,
        f"{share:.2f}% positive; the paper saw {PAPER_POSITIVE_PERCENT:.2f}%",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=9,
        bbox={"facecolor": "white", "edgecolor": "lightgrey"},
    )
    ax.set_xlabel("phi value (job-skill weight)")
    ax.set_ylabel("number of entries (log scale)")
    ax.grid(alpha=0.3)
    jobs, skills = phi_t.shape
    caption = (
        f"All {total:,} entries of phi ({jobs:,} jobs x {skills:,} skills), "
        f"from {low:.3g} to {high:.3g}: {share:.2f}% are positive "
        f"(the paper saw {PAPER_POSITIVE_PERCENT:.2f}%)."
    )
    key = "fig3_phi_histogram"
    return Figure(key, "Fig 3: distribution of phi", caption, _save(fig, out_dir, key))


def cocluster(matrix: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Spectral co-clustering of a non-negative matrix (rows = jobs, columns = skills).

    Returns (row labels, column labels), one integer label per row and per column; rows and
    columns that share a label form one co-cluster. ``n_clusters`` is lowered to
    ``min(rows, columns)`` when larger (there cannot be more co-clusters than rows or
    columns); with a single co-cluster every label is 0.

    Dhillon's algorithm, as sklearn's SpectralCoclustering runs it: the matrix scaled by its
    row sums and its column sums to the power -1/2; its singular vectors 2 to
    1 + ceil(log2 n_clusters) by randomized SVD; k-means (k-means++, 10 starts) on the rows'
    and the columns' vectors, each scaled back the same way. Here in float32 on one scaled
    copy of the matrix: sklearn's class works on float64 copies, 8.1 GiB of peak memory for
    the report at the paper's scale (12,000 x 15,000).
    """
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"expected a non-empty 2-D matrix, got shape {matrix.shape}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be at least 1, got {n_clusters}")
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise ValueError("cocluster needs a finite, non-negative matrix")
    rows, columns = matrix.shape
    n_clusters = min(n_clusters, rows, columns)
    if n_clusters == 1:
        # The first singular vector is discarded, leaving nothing to cluster.
        return np.zeros(rows, dtype=np.int64), np.zeros(columns, dtype=np.int64)
    scaled = matrix.astype(np.float32)  # a copy, scaled in place
    row_scale, column_scale = (
        _inverse_sqrt(scaled.sum(axis=1, dtype=np.float64)),
        _inverse_sqrt(scaled.sum(axis=0, dtype=np.float64)),
    )
    scaled *= row_scale[:, None]
    scaled *= column_scale[None, :]
    vectors = 1 + math.ceil(math.log2(n_clusters))
    u, _, vt = randomized_svd(scaled, vectors, random_state=seed)
    del scaled
    points = np.vstack((row_scale[:, None] * u[:, 1:], column_scale[:, None] * vt[1:].T))
    labels = KMeans(n_clusters, init="k-means++", n_init=10, random_state=seed).fit(points)
    return labels.labels_[:rows].astype(np.int64), labels.labels_[rows:].astype(np.int64)


def _inverse_sqrt(sums: np.ndarray) -> np.ndarray:
    """1 / sqrt(sums) as float32, 0 where a sum is 0 (an empty row or column)."""
    with np.errstate(divide="ignore"):
        return np.where(sums > 0, 1.0 / np.sqrt(sums), 0.0).astype(np.float32)


def cocluster_figure(
    out_dir: Path,
    matrix: np.ndarray,
    row_labels: np.ndarray,
    col_labels: np.ndarray,
    max_rows: int = 300,
    max_cols: int = 300,
) -> Figure:
    """Fig 4: the first ``max_rows`` x ``max_cols`` of the matrix before and after co-clustering.

    Takes the matrix cocluster saw (rows = jobs, columns = skills, most frequent first) and its
    labels; writes ``fig4_cocluster.png`` with the colour on a log scale.
    """
    if matrix.ndim != 2 or row_labels.shape != (matrix.shape[0],):
        raise ValueError(f"need one row label per row: {row_labels.shape} vs {matrix.shape}")
    if col_labels.shape != (matrix.shape[1],):
        raise ValueError(f"need one column label per column: {col_labels.shape} vs {matrix.shape}")
    shown = np.asarray(matrix[:max_rows, :max_cols], dtype=np.float64)
    if shown.size == 0:
        raise ValueError("nothing to show: the matrix or max_rows/max_cols is empty")
    rows_shown, cols_shown = row_labels[:max_rows], col_labels[:max_cols]
    # Stable sorts keep the caller's most-frequent-first order inside each co-cluster.
    row_order = np.argsort(rows_shown, kind="stable")
    col_order = np.argsort(cols_shown, kind="stable")
    norm = _log_norm(shown)
    cmap = colormaps["viridis"].with_extremes(bad=colormaps["viridis"](0.0))

    fig = MplFigure(figsize=(12.0, 5.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    image = left.imshow(shown, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
    left.set_title("before: most frequent first", fontsize=10)
    right.imshow(
        shown[np.ix_(row_order, col_order)],
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        norm=norm,
    )
    right.set_title("after: rows and columns grouped by co-cluster", fontsize=10)
    # Thin lines where the label changes mark the co-cluster blocks.
    for boundary in _boundaries(rows_shown[row_order]):
        right.axhline(boundary - 0.5, color="white", linewidth=0.6)
    for boundary in _boundaries(cols_shown[col_order]):
        right.axvline(boundary - 0.5, color="white", linewidth=0.6)
    left.set_xlabel(f"skills (first {cols_shown.size}, most frequent first)")
    left.set_ylabel(f"jobs (first {rows_shown.size}, most frequent first)")
    right.set_xlabel(f"the same {cols_shown.size} skills, by co-cluster")
    right.set_ylabel(f"the same {rows_shown.size} jobs, by co-cluster")
    fig.colorbar(image, ax=[left, right], shrink=0.85, label="value (log scale)")

    clusters = np.unique(np.concatenate([row_labels, col_labels])).size
    shown_clusters = np.unique(rows_shown).size
    caption = (
        f"The first {rows_shown.size:,} of {matrix.shape[0]:,} jobs and {cols_shown.size:,} of "
        f"{matrix.shape[1]:,} skills, before and after grouping by {clusters} co-clusters "
        f"({shown_clusters} of them hold a shown job)."
    )
    key = "fig4_cocluster"
    return Figure(key, "Fig 4: co-clusters of jobs and skills", caption, _save(fig, out_dir, key))


def association_histograms_figure(out_dir: Path, phi_t: Tensor) -> Figure:
    """Fig 5: how many positive phi entries each job (row) and each skill (column) has.

    Takes ``phi_t`` (jobs x skills), read in blocks; writes ``fig5_associations.png``.
    """
    jobs, skills = phi_t.shape
    if jobs == 0 or skills == 0:
        raise ValueError(f"phi_t is empty: shape {tuple(phi_t.shape)}")
    per_job = np.empty(jobs, dtype=np.int64)
    per_skill = torch.zeros(skills, dtype=torch.int64, device=phi_t.device)
    start = 0
    for block in _row_blocks(phi_t):
        positive = block > 0
        per_job[start : start + len(block)] = positive.sum(dim=1).cpu().numpy()
        per_skill += positive.sum(dim=0)
        start += len(block)
    per_skill_counts = per_skill.cpu().numpy()
    job_median, skill_median = float(np.median(per_job)), float(np.median(per_skill_counts))

    fig = MplFigure(figsize=(11.0, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    _count_histogram(left, per_job, job_median, f"positive skills per job (of {skills:,})", "jobs")
    _count_histogram(
        right, per_skill_counts, skill_median, f"positive jobs per skill (of {jobs:,})", "skills"
    )
    caption = (
        f"Median {_format_count(job_median)} positive skills per job (of {skills:,}) and "
        f"median {_format_count(skill_median)} positive jobs per skill (of {jobs:,})."
    )
    key = "fig5_associations"
    title = "Fig 5: positive associations per job and per skill"
    return Figure(key, title, caption, _save(fig, out_dir, key))


def embed_2d(vectors: np.ndarray, seed: int, perplexity: float = 30.0) -> np.ndarray:
    """t-SNE map of the rows of ``vectors`` (n x d) after a seeded PCA to at most 50 dims.

    Returns (n, 2) float coordinates. ``perplexity`` is lowered to (n - 1) / 3 (at least 1)
    for small n, since t-SNE needs it well below the number of points.
    """
    if vectors.ndim != 2 or vectors.shape[0] < 2 or vectors.shape[1] < 1:
        raise ValueError(f"need at least 2 rows of at least 1 column, got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors hold NaN or infinite values")
    n, dims = vectors.shape
    # PCA first: t-SNE's neighbour search on 16000 dims would dominate the run time.
    components = min(50, n, dims)
    reduced = PCA(n_components=components, random_state=seed).fit_transform(vectors)
    perplexity = min(perplexity, max(1.0, (n - 1) / 3))
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
    return np.asarray(tsne.fit_transform(reduced), dtype=np.float64)


def map_figure(
    out_dir: Path,
    key: str,
    title: str,
    coords: np.ndarray,
    labels: Sequence[str],
    labelled: int = 40,
) -> Figure:
    """Fig 6 / 7: a 2-D map of all points, with the first ``labelled`` named.

    Takes (n, 2) coordinates and one label per point (the caller puts the most frequent
    first); writes ``<key>.png``. Labels are cut to 30 characters and drawn small.
    """
    if coords.ndim != 2 or coords.shape[1] != 2 or len(labels) != coords.shape[0]:
        raise ValueError(f"need (n, 2) coords and n labels, got {coords.shape}, {len(labels)}")
    n = coords.shape[0]
    labelled = max(0, min(labelled, n))
    fig = MplFigure(figsize=(11.0, 9.0), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(coords[:, 0], coords[:, 1], s=4, color="#8da0cb", alpha=0.6, linewidths=0)
    ax.scatter(coords[:labelled, 0], coords[:labelled, 1], s=12, color="#1f3b73", linewidths=0)
    for (x, y), label in zip(coords[:labelled], labels[:labelled], strict=True):
        ax.annotate(
            _shorten(str(label), LABEL_CHARS),
            (x, y),
            xytext=(3, 2),
            textcoords="offset points",
            fontsize=6.5,
            bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "alpha": 0.6, "lw": 0},
        )
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.grid(alpha=0.2)
    caption = f"{n:,} points; the {labelled} most frequent are named."
    return Figure(key, title, caption, _save(fig, out_dir, key))


def segment_pair(
    pairs: Sequence[tuple[str, str, str, int]],
) -> tuple[str, str, str, str] | None:
    """The title and two segments of one type to show side by side: among (segment_type,
    segment, job_title, profiles) rows, the title whose second best-supported segment of a
    type has the most profiles (ties: the lower title by name). Returns (segment_type,
    job_title, first segment, second segment), or None when no title has two segments."""
    grouped: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for segment_type, segment, title, profiles in pairs:
        grouped.setdefault((segment_type, title), []).append((profiles, segment))
    best: tuple[int, str, str, str, str] | None = None
    for (segment_type, title), members in sorted(grouped.items()):
        if len(members) < 2:
            continue
        (_, first), (second_profiles, second) = sorted(members, key=lambda m: (-m[0], m[1]))[:2]
        if best is None or second_profiles > best[0]:
            best = (second_profiles, segment_type, title, first, second)
    return None if best is None else best[1:]


def segment_figure(
    out_dir: Path,
    job_title: str,
    panels: Sequence[tuple[str, Sequence[Mapping[str, object]]]],
) -> Figure:
    """SkillRank of one title in two (or more) segments, side by side: each panel's rows
    (rank order: skill_name, probability, probability_low, probability_high, lift, profiles)
    as bars with their intervals; a dark bar is a skill the segment needs more than the title
    overall with the interval's lower end above the pooled probability."""
    if not panels or any(not rows for _, rows in panels):
        raise ValueError("every panel needs rows")
    key = "fig8_segments"
    fig = MplFigure(figsize=(5.6 * len(panels), 4.6), layout="constrained")
    fig.suptitle(job_title)
    axes = fig.subplots(1, len(panels), sharex=True)
    for ax, (segment, rows) in zip(np.atleast_1d(axes), panels, strict=True):
        p = np.array([_number(r, "probability") for r in rows])
        low = np.array([_number(r, "probability_low") for r in rows])
        high = np.array([_number(r, "probability_high") for r in rows])
        pooled = p / np.array([_number(r, "lift") for r in rows])
        distinct = low > pooled
        y = np.arange(len(rows))[::-1]
        ax.barh(y, p, color=np.where(distinct, "#1f3b73", "#a6b8db"))
        ax.errorbar(p, y, xerr=[p - low, high - p], fmt="none", ecolor="black", lw=0.8)
        ax.scatter(pooled, y, marker="|", color="#d95f02", s=60, zorder=3)
        ax.set_yticks(y, [_shorten(str(r["skill_name"]), LABEL_CHARS) for r in rows], fontsize=8)
        ax.set_title(f"{segment} ({_number(rows[0], 'profiles'):,.0f} training profiles)")
        ax.set_xlabel("probability within the segment")
        ax.grid(axis="x", alpha=0.2)
    caption = (
        f"The top {len(panels[0][1])} skills of '{job_title}' in "
        + " and in ".join(segment for segment, _ in panels)
        + ", with 90% intervals (black); orange ticks: the title's pooled probability. Dark"
        " bars: skills the segment needs more than the title overall, the interval's lower"
        " end above the pooled probability (view distinctive_skills)."
    )
    title = f"Fig 8: '{job_title}' in two segments"
    return Figure(key, title, caption, _save(fig, out_dir, key))


def evaluation_figure(out_dir: Path, rows: Sequence[Mapping[str, object]]) -> Figure:
    """The evaluation table as bars: one subplot per metric over k, one bar per method.

    Takes rows with keys method, metric, k, segment, value and optionally ci_low, ci_high;
    draws segment "all" and, when present, the planted-truth rows (segment "titles") in a last
    subplot, each bar with its interval as an error bar when the row has both ends. Rows
    without a k (kl, cross_entropy, counts), of other segments, of differences between methods
    ("model - cooccurrence") or whose value is None are left out. Writes ``evaluation.png``.
    """
    scores: dict[tuple[str, str, int], float] = {}
    planted: dict[tuple[str, str, int], float] = {}
    intervals: dict[tuple[str, str, int], tuple[float, float]] = {}
    methods: list[str] = []
    for row in rows:
        segment, metric, method = str(row["segment"]), str(row["metric"]), str(row["method"])
        # A null k marks a loss or a count, not a ranking metric at a cut-off.
        if row["value"] is None or row.get("k") is None or DIFFERENCE in method:
            continue
        if segment == "all" and metric not in PLANTED_METRICS:
            target = scores
        elif segment == "titles" and metric in PLANTED_METRICS:
            target = planted
        else:
            continue
        cell = (method, metric, int(_number(row, "k")))
        target[cell] = _number(row, "value")
        if row.get("ci_low") is not None and row.get("ci_high") is not None:
            intervals[cell] = (_number(row, "ci_low"), _number(row, "ci_high"))
        if method not in methods:
            methods.append(method)
    if not scores and not planted:
        raise ValueError("no evaluation rows for segment 'all' nor planted-truth rows")
    # The model leads the legend; baselines keep the order they came in.
    methods.sort(key=lambda method: method != MODEL_METHOD)
    baselines = [method for method in methods if method != MODEL_METHOD]
    shades = colormaps["Blues"](np.linspace(0.35, 0.85, len(baselines)))
    colours: dict[str, ColorType] = {
        method: (float(r), float(g), float(b), float(a))
        for method, (r, g, b, a) in zip(baselines, shades, strict=True)
    }
    colours[MODEL_METHOD] = MODEL_COLOUR

    found = {metric for _, metric, _ in scores}
    metrics = [m for m in RANKING_METRICS if m in found] + sorted(found - set(RANKING_METRICS))
    panels = len(metrics) + bool(planted)
    columns = min(panels, 3)
    grid_rows = -(-panels // columns)
    fig = MplFigure(figsize=(4.4 * columns, 3.6 * grid_rows + 0.4), layout="constrained")
    axes = fig.subplots(grid_rows, columns, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        groups = sorted({k for _, m, k in scores if m == metric})
        _grouped_bars(ax, scores, intervals, methods, colours, [(metric, k) for k in groups])
        ax.set_xticks(range(len(groups)), [str(k) for k in groups])
        ax.set_xlabel("k")
        ax.set_title(f"{metric}@k (segment: all)", fontsize=10)
    if planted:
        ax = axes[len(metrics)]
        groups_planted = sorted({(m, k) for _, m, k in planted})
        _grouped_bars(ax, planted, intervals, methods, colours, groups_planted)
        names = [f"{m.removeprefix('planted_')}@{k}" for m, k in groups_planted]
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title("planted truth (titles)", fontsize=10)
    for ax in axes[panels:]:
        ax.set_visible(False)
    handles = [
        Patch(facecolor=colours[m], edgecolor="black" if m == MODEL_METHOD else "none")
        for m in methods
    ]
    fig.legend(handles, methods, loc="outside upper center", ncols=min(len(methods), 6))

    key = "evaluation"
    caption = _evaluation_caption(scores, planted, intervals, methods)
    return Figure(key, "Evaluation: model against baselines", caption, _save(fig, out_dir, key))


def top_pairs_html(pairs: Sequence[Mapping[str, object]]) -> str:
    """Table 4 analogue: an HTML table of job-skill pairs (job_title, skill_name, weight, support).

    Returns an escaped ``<table>`` fragment, one row per pair in the order given.
    """
    body = []
    for pair in pairs:
        support = pair.get("support")
        cells = [
            html.escape(str(pair["job_title"])),
            html.escape(str(pair["skill_name"])),
            f"{_number(pair, 'weight'):.3f}",
            "" if support is None else f"{int(_number(pair, 'support')):,}",
        ]
        body.append(
            f"<tr><td>{cells[0]}</td><td>{cells[1]}</td>"
            f'<td class="num">{cells[2]}</td><td class="num">{cells[3]}</td></tr>'
        )
    return (
        '<table class="pairs"><thead><tr><th>job title</th><th>skill</th>'
        '<th class="num">phi weight</th><th class="num">support (profiles)</th></tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def render_html(
    run_id: str,
    figures: Sequence[Figure],
    tables: Sequence[tuple[str, str]],
    summary: Sequence[str],
) -> str:
    """One self-contained HTML page: summary, each figure inlined with caption, then tables.

    Takes the run id, the figures (PNG bytes inlined as data URIs, each also linked as
    ``<key>.png`` next to the page), (heading, HTML fragment) tables and summary lines. Text is
    escaped; table fragments are inserted as they are, so build them with ``top_pairs_html``
    or escape them yourself.
    """
    run = html.escape(run_id)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>SkillRank report: run {run}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>SkillRank report: run {run}</h1>",
    ]
    if summary:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in summary)
        parts.append(f'<ul class="summary">{items}</ul>')
    for figure in figures:
        data = base64.b64encode(figure.png).decode("ascii")
        name = html.escape(f"{figure.key}.png")
        title = html.escape(figure.title)
        parts.append(
            f'<section class="figure"><h2>{title}</h2>'
            f'<img src="data:image/png;base64,{data}" alt="{title}">'
            f'<p class="caption">{html.escape(figure.caption)} '
            f'<a href="{name}">{name}</a></p></section>'
        )
    for heading, fragment in tables:
        parts.append(f'<section class="table"><h2>{html.escape(heading)}</h2>{fragment}</section>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
    "color:#222}"
    "h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}"
    ".summary li{margin:.2em 0}"
    "img{max-width:100%;height:auto;border:1px solid #ddd}"
    ".caption{font-size:.92em;color:#444}"
    "table{border-collapse:collapse;font-size:.9em}"
    "th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left}"
    ".num{text-align:right;font-variant-numeric:tabular-nums}"
)


def _save(fig: MplFigure, out_dir: Path, key: str) -> bytes:
    """Render ``fig`` to PNG once, write it to ``<out_dir>/<key>.png`` and return the bytes."""
    buffer = io.BytesIO()
    # Matplotlib's PNGs carry no timestamp, so the same inputs give the same bytes.
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    fig.clear()
    png = buffer.getvalue()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{key}.png").write_bytes(png)
    return png


def _row_blocks(phi_t: Tensor) -> Iterator[Tensor]:
    """``phi_t`` as consecutive blocks of whole rows, about BLOCK_ELEMENTS entries each."""
    rows = max(1, BLOCK_ELEMENTS // max(1, phi_t.shape[1]))
    # detach, not no_grad: a no_grad block held open across yields would leak into the caller.
    for start in range(0, phi_t.shape[0], rows):
        yield phi_t[start : start + rows].detach()


def _log_norm(values: np.ndarray) -> Normalize:
    """A log colour scale from the 1st percentile of the positive values to the largest.

    Falls back to a linear scale when fewer than two distinct positive values exist; values
    at or below zero show in the lowest colour (the caller's colormap maps them as bad).
    """
    positive = values[values > 0]
    if positive.size and positive.min() < positive.max():
        low, high = float(np.quantile(positive, 0.01)), float(positive.max())
        if low < high:
            return LogNorm(vmin=low, vmax=high, clip=True)
    return Normalize(vmin=float(values.min()), vmax=float(values.max()))


def _boundaries(sorted_labels: np.ndarray) -> np.ndarray:
    """Indices where a sorted label run changes (the first index of every run but the first)."""
    return np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1


def _count_histogram(ax: Axes, counts: np.ndarray, median: float, xlabel: str, what: str) -> None:
    """Histogram of integer counts with at most 50 bins and the median marked."""
    top = int(counts.max())
    bins = min(50, top + 1)
    # Bin edges on half-integers so each integer count falls inside one bin.
    # (matplotlib types bins as Sequence[float]; an array is what it takes.)
    ax.hist(counts, bins=np.linspace(-0.5, top + 0.5, bins + 1), color="#4c72b0")  # type: ignore[arg-type]
    ax.axvline(median, color="black", linestyle="--", linewidth=1)
    ax.text(
        0.97,
        0.95,
        f"median {_format_count(median)}",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=9,
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"number of {what}")
    ax.grid(alpha=0.3)


def _format_count(value: float) -> str:
    """A median of counts: whole numbers without decimals, halves with one."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _number(row: Mapping[str, object], key: str) -> float:
    """``row[key]`` as a float; a clear error for anything that is not a plain number."""
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{key} must be a number, got {value!r} in {dict(row)}")
    return float(value)


def _grouped_bars(
    ax: Axes,
    values: Mapping[tuple[str, str, int], float],
    intervals: Mapping[tuple[str, str, int], tuple[float, float]],
    methods: Sequence[str],
    colours: Mapping[str, ColorType],
    groups: Sequence[tuple[str, int]],
) -> None:
    """Bars for each (metric, k) group at x = 0, 1, ..., one bar per method in each group,
    with an error bar from low to high where `intervals` holds the bar's (low, high)."""
    width = 0.8 / max(1, len(methods))
    for index, method in enumerate(methods):
        offset = (index - (len(methods) - 1) / 2) * width
        xs = [x + offset for x, (m, k) in enumerate(groups) if (method, m, k) in values]
        heights = [values[(method, m, k)] for m, k in groups if (method, m, k) in values]
        spans = [intervals.get((method, m, k)) for m, k in groups if (method, m, k) in values]
        bars = [(x, h, span) for x, h, span in zip(xs, heights, spans, strict=True) if span]
        if bars:
            # max(0, ...): rounding may leave a value a hair outside its own interval.
            ax.errorbar(
                [x for x, _, _ in bars],
                [h for _, h, _ in bars],
                yerr=[
                    [max(0.0, h - lo) for _, h, (lo, _) in bars],
                    [max(0.0, hi - h) for _, h, (_, hi) in bars],
                ],
                fmt="none",
                ecolor="black",
                elinewidth=0.8,
                capsize=2.0,
                zorder=4,
            )
        is_model = method == MODEL_METHOD
        ax.bar(
            xs,
            heights,
            width=width,
            color=colours[method],
            edgecolor="black" if is_model else "none",
            linewidth=1.0 if is_model else 0.0,
            zorder=3 if is_model else 2,
        )
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)


def _evaluation_caption(
    scores: Mapping[tuple[str, str, int], float],
    planted: Mapping[tuple[str, str, int], float],
    intervals: Mapping[tuple[str, str, int], tuple[float, float]],
    methods: Sequence[str],
) -> str:
    """One or two sentences: the model against the best count baseline at the headline
    metric, with their intervals when known."""

    def interval(key: tuple[str, str, int]) -> str:
        return f" [{intervals[key][0]:.3f}, {intervals[key][1]:.3f}]" if key in intervals else ""

    sentences = []
    for values, metric, what in (
        (scores, "ndcg", "ndcg"),
        (planted, "planted_precision", "planted-truth precision"),
    ):
        ks = sorted({k for method, m, k in values if m == metric and method == MODEL_METHOD})
        if not ks:
            continue
        k = ks[-1]
        model = (MODEL_METHOD, metric, k)
        sentence = f"Model {what}@{k}: {values[model]:.3f}{interval(model)}"
        baselines = [
            (values[(method, metric, k)], method)
            for method in methods
            if method in BASELINES and (method, metric, k) in values
        ]
        if baselines:
            best, name = max(baselines)
            sentence += f", best baseline {name} {best:.3f}{interval((name, metric, k))}"
        sentences.append(sentence + ".")
    sentences.append(f"Methods: {', '.join(methods)}.")
    if intervals:
        sentences.append("Error bars: 95% bootstrap intervals.")
    return " ".join(sentences)
