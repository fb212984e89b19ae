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

import io
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps, rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure as MplFigure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch, Rectangle
from matplotlib.typing import ColorType
from sklearn.cluster import KMeans
from sklearn.manifold import TSNE
from torch import Tensor

from skillrank.evaluate import BASELINES, DIFFERENCE, truncated_svd

DPI = 110
# Entries per block of phi_t: small enough that torch.histc's float32 counts stay exact
# (float32 holds every integer up to 2**24) and a block's temporaries stay a few MiB.
BLOCK_ELEMENTS = 1 << 22
PHI_BINS = 100
PAPER_POSITIVE_PERCENT = 1.13
LABEL_CHARS = 30
# Fig 4's tick labels, one per row or column: room for longer names.
TICK_CHARS = 40
# The maps' labels: font size in points, and the white box around each, in font sizes.
MAP_LABEL_POINTS = 7.0
MAP_LABEL_PAD = 0.25
# Retrieval metrics in the order the paper reports them; any other "all" metric follows.
RANKING_METRICS = ("recall", "precision", "ndcg", "map")
MODEL_METHOD = "model"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Power iterations of the randomized SVDs of Fig 4 and of the maps' PCA: as many as sklearn's
# randomized_svd and PCA (which these replaced) take for a few leading components.
_POWER_ITERATIONS = 7
# t-SNE's iterations, its 250 of early exaggeration included, and its learning rate as a
# share of the points: n / 12 (openTSNE's default, n / early exaggeration) instead of
# sklearn's n / 48 (at least 50). On the paper-scale maps (2,000 points each, 2026-12-04) 600
# iterations at n / 12 end at a final KL divergence of 0.596 (job2vec) and 0.624 (skill2vec)
# against 0.600 and 0.627 for 750 at sklearn's rate, in 8.1-8.7 s against 9.8-10.0 s for
# the two; 500 iterations ended 1% higher.
_TSNE_ITERATIONS = 600
_TSNE_RATE_SHARE = 1 / 12


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
    # The maps: the figure as SVG, its labels as text, shown on the page instead of the PNG.
    svg: str | None = field(default=None, repr=False, compare=False)

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
        # aminmax gives NaN for a block holding one, and an infinite value as itself.
        block_low, block_high = (float(v) for v in torch.aminmax(block))
        if not (math.isfinite(block_low) and math.isfinite(block_high)):
            raise ValueError("phi_t holds NaN or infinite values")
        low, high = min(low, block_low), max(high, block_high)
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
    1 + ceil(log2 n_clusters) by randomized SVD (torch's, 1.4 s at the paper's scale against
    sklearn's 2.5 s, with the same 10 extra directions and 7 power iterations); k-means
    (k-means++, 10 starts) on the rows' and the columns' vectors, each scaled back the same
    way. Here in float32 on one scaled copy of the matrix: sklearn's class works on float64
    copies, 8.1 GiB of peak memory for the report at the paper's scale (12,000 x 15,000).
    """
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"expected a non-empty 2-D matrix, got shape {matrix.shape}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be at least 1, got {n_clusters}")
    # One pass: aminmax gives NaN for a matrix holding one, and an infinite value as itself.
    low, high = (float(v) for v in torch.aminmax(torch.from_numpy(matrix)))
    if not (low >= 0 and math.isfinite(high)):
        raise ValueError("cocluster needs a finite, non-negative matrix")
    rows, columns = matrix.shape
    n_clusters = min(n_clusters, rows, columns)
    if n_clusters == 1:
        # The first singular vector is discarded, leaving nothing to cluster.
        return np.zeros(rows, dtype=np.int64), np.zeros(columns, dtype=np.int64)
    values = matrix.astype(np.float32, copy=False)
    row_scale, column_scale = (
        _inverse_sqrt(values.sum(axis=1, dtype=np.float64)),
        _inverse_sqrt(values.sum(axis=0, dtype=np.float64)),
    )
    # The scaled copy is made by torch, whose allocator hands out a large block faster than
    # numpy's (paper scale: the whole function 1.1 s faster); the same float32 products.
    scaled = torch.from_numpy(values).mul(torch.from_numpy(row_scale)[:, None])
    scaled.mul_(torch.from_numpy(column_scale)[None, :])
    vectors = 1 + math.ceil(math.log2(n_clusters))
    u_t, _, v_t = truncated_svd(scaled, vectors, seed, _POWER_ITERATIONS)
    del scaled
    u, v = u_t.numpy(), v_t.numpy()
    points = np.vstack((row_scale[:, None] * u[:, 1:], column_scale[:, None] * v[:, 1:]))
    labels = KMeans(n_clusters, init="k-means++", n_init=10, random_state=seed).fit(points)
    return labels.labels_[:rows].astype(np.int64), labels.labels_[rows:].astype(np.int64)


def _inverse_sqrt(sums: np.ndarray) -> np.ndarray:
    """1 / sqrt(sums) as float32, 0 where a sum is 0 (an empty row or column)."""
    with np.errstate(divide="ignore"):
        return np.where(sums > 0, 1.0 / np.sqrt(sums), 0.0).astype(np.float32)


@dataclass(frozen=True)
class TopCocluster:
    """One co-cluster as Fig 4 shows it: its label, the training profiles of its titles, and
    the ids of its most common titles and of the skills its titles weigh most."""

    label: int
    profiles: float
    rows: list[int]
    columns: list[int]


def top_coclusters(
    matrix: np.ndarray,
    row_labels: np.ndarray,
    col_labels: np.ndarray,
    row_weights: np.ndarray,
    count: int,
    per_cluster: int,
) -> list[TopCocluster]:
    """The ``count`` co-clusters whose rows weigh most (``row_weights``: the titles' training
    profiles), heaviest first, each holding a row and a column: per co-cluster its
    ``per_cluster`` heaviest rows, and the ``per_cluster`` of its columns with the largest
    mean over all its rows (ties by id)."""
    if row_labels.shape != (matrix.shape[0],) or row_weights.shape != row_labels.shape:
        raise ValueError(f"need one row label and weight per row of {matrix.shape}")
    if col_labels.shape != (matrix.shape[1],):
        raise ValueError(f"need one column label per column: {col_labels.shape} vs {matrix.shape}")
    labels = int(max(row_labels.max(initial=0), col_labels.max(initial=0))) + 1
    weight = np.bincount(row_labels, weights=row_weights, minlength=labels)
    both = (np.bincount(row_labels, minlength=labels) > 0) & (
        np.bincount(col_labels, minlength=labels) > 0
    )
    chosen = [int(c) for c in np.argsort(-weight, kind="stable") if both[c]][:count]
    shown = []
    for label in chosen:
        members = np.flatnonzero(row_labels == label)
        columns = np.flatnonzero(col_labels == label)
        # Summed in blocks of rows: a co-cluster of thousands of titles x every skill stays small.
        strength = np.zeros(matrix.shape[1])
        for start in range(0, members.size, 1024):
            strength += matrix[members[start : start + 1024]].sum(axis=0, dtype=np.float64)
        heaviest = members[np.argsort(-row_weights[members], kind="stable")[:per_cluster]]
        strongest = columns[np.argsort(-strength[columns], kind="stable")[:per_cluster]]
        shown.append(
            TopCocluster(label, float(weight[label]), heaviest.tolist(), strongest.tolist())
        )
    return shown


def cocluster_figure(
    out_dir: Path,
    matrix: np.ndarray,
    shown: Sequence[TopCocluster],
    row_names: Sequence[str],
    col_names: Sequence[str],
    clusters: int,
) -> Figure:
    """Fig 4: the co-clusters of ``shown`` named by their titles (rows) and skills (columns).

    Takes the matrix cocluster saw (rows = jobs, columns = skills), the co-clusters to show
    (``top_coclusters``) and how many co-clusters there are; draws the matrix restricted to
    the shown rows and columns, grouped by co-cluster, each co-cluster's block outlined and
    numbered; writes ``fig4_cocluster.png`` with the colour on a log scale.
    """
    if not shown:
        raise ValueError("no co-cluster to show")
    rows = [r for cluster in shown for r in cluster.rows]
    cols = [c for cluster in shown for c in cluster.columns]
    values = np.asarray(matrix[np.ix_(rows, cols)], dtype=np.float64)
    cmap = colormaps["viridis"].with_extremes(bad=colormaps["viridis"](0.0))
    fig = MplFigure(figsize=(4.0 + 0.2 * len(cols), 3.0 + 0.2 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(
        values, aspect="auto", interpolation="nearest", cmap=cmap, norm=_log_norm(values)
    )
    ax.set_yticks(range(len(rows)), [_shorten(row_names[r], TICK_CHARS) for r in rows], fontsize=7)
    ax.set_xticks(
        range(len(cols)),
        [_shorten(col_names[c], TICK_CHARS) for c in cols],
        fontsize=7,
        rotation=60,
        ha="right",
        rotation_mode="anchor",
    )
    top = left = 0
    for number, cluster in enumerate(shown, start=1):
        height, width = len(cluster.rows), len(cluster.columns)
        ax.add_patch(
            Rectangle(
                (left - 0.5, top - 0.5), width, height, fill=False, edgecolor="white", linewidth=1.5
            )
        )
        ax.text(
            left + width - 0.6,
            top - 0.3,
            f"C{number}",
            color="white",
            fontsize=8,
            ha="right",
            va="top",
            fontweight="bold",
        )
        top, left = top + height, left + width
    ax.set_xlabel("skills: the ones each co-cluster's titles weigh most")
    ax.set_ylabel("job titles: each co-cluster's most common")
    fig.colorbar(image, ax=ax, shrink=0.6, label="job2vec probability (log scale)")
    caption = (
        f"The {len(shown)} co-clusters (of {clusters}) whose job titles hold the most training"
        " profiles, C1 the most, each with its most common titles and the skills its titles"
        " weigh most; colour: the title's job2vec probability of the skill. Bright blocks on"
        " the diagonal: a co-cluster's titles share its skills. Every title's and skill's"
        " co-cluster is in the table coclusters."
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
    # PCA first: t-SNE's neighbour search on 16000 dims would dominate the run time. By torch's
    # randomized SVD with sklearn's PCA's power iterations (2000 x 15185 at the paper's scale:
    # 0.4 s against sklearn's 1.3 s, 99.96% of its captured variance).
    components = min(50, n, dims)
    u, s, _ = truncated_svd(
        torch.from_numpy(vectors).float(), components, seed, _POWER_ITERATIONS, center=True
    )
    reduced = (u * s).numpy()
    perplexity = min(perplexity, max(1.0, (n - 1) / 3))
    tsne = TSNE(
        n_components=2, init="pca", perplexity=perplexity, random_state=seed,
        max_iter=_TSNE_ITERATIONS, learning_rate=max(n * _TSNE_RATE_SHARE, 50.0),
    )  # fmt: skip
    return np.asarray(tsne.fit_transform(reduced), dtype=np.float64)


def map_figure(
    out_dir: Path,
    key: str,
    title: str,
    coords: np.ndarray,
    labels: Sequence[str],
    labelled: int = 40,
) -> Figure:
    """Fig 6 / 7: a 2-D map of all points, ``labelled`` of them named without overlap.

    Takes (n, 2) coordinates and one label per point (the caller puts the most frequent
    first). The labels go to the most frequent points that leave room for them
    (``place_labels``): a point whose label would overlap one already placed is passed over
    for the next. Writes ``<key>.png``; the page shows the figure as SVG with the labels as
    text, the points as an image inside it.
    """
    if coords.ndim != 2 or coords.shape[1] != 2 or len(labels) != coords.shape[0]:
        raise ValueError(f"need (n, 2) coords and n labels, got {coords.shape}, {len(labels)}")
    n = coords.shape[0]
    # Fixed axes (no layout engine): the labels are placed in the pixels they are drawn in.
    fig = MplFigure(figsize=(11.0, 9.0), dpi=DPI)
    ax = fig.add_axes((0.07, 0.06, 0.91, 0.92))
    ax.scatter(
        coords[:, 0], coords[:, 1], s=4, color="#8da0cb", alpha=0.6, linewidths=0, rasterized=True
    )
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    texts = [_shorten(str(label), LABEL_CHARS) for label in labels]
    renderer = FigureCanvasAgg(fig).get_renderer()
    font = FontProperties(size=MAP_LABEL_POINTS)
    pad = MAP_LABEL_PAD * MAP_LABEL_POINTS * DPI / 72
    # One line's height for every label ("lp": an ascender and a descender, as matplotlib
    # lays out a line), so that a browser's line boxes fit where the labels were placed.
    _, line, _ = renderer.get_text_width_height_descent("lp", font, ismath=False)
    anchors = ax.transData.transform(coords)
    # Only the labels of the points place_labels reaches are measured (0.6 ms each: 2000 took
    # 1.4 s). It goes through the points in order and stops at `labelled`, so its answer on
    # the first points stands once it holds that many; else it looks at twice as many.
    widths: list[float] = []
    count = min(n, 4 * labelled)
    while True:
        widths += [
            renderer.get_text_width_height_descent(t, font, ismath=False)[0]
            for t in texts[len(widths) : count]
        ]
        sizes = np.column_stack([np.asarray(widths, dtype=np.float64), np.full(count, line)])
        placed = place_labels(
            anchors[:count],
            sizes + 2 * pad,
            tuple(ax.bbox.extents),
            labelled,
            offset=3 * DPI / 72,
        )
        if len(placed) >= labelled or count == n:
            break
        count = min(n, 2 * count)
    to_data = ax.transData.inverted()
    for index, x0, y0 in placed:
        x, y = to_data.transform((x0 + pad, y0 + pad))
        ax.text(
            x,
            y,
            texts[index],
            fontproperties=font,
            ha="left",
            va="bottom",
            bbox={
                "boxstyle": f"square,pad={MAP_LABEL_PAD}",
                "facecolor": "white",
                "alpha": 0.75,
                "lw": 0,
            },
            gid=f"{key}-label-{index}",
        )
    chosen = [index for index, _, _ in placed]
    ax.scatter(coords[chosen, 0], coords[chosen, 1], s=12, color="#1f3b73", linewidths=0)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.grid(alpha=0.2)
    skipped = max(chosen, default=-1) + 1 - len(chosen)
    caption = (
        f"{n:,} points, the most frequent first; {len(chosen)} named, the most frequent whose"
        f" label had room ({skipped} more frequent ones passed over)."
    )
    svg = _svg(fig, key)
    return Figure(key, title, caption, _save(fig, out_dir, key), svg)


def place_labels(
    anchors: np.ndarray,
    sizes: np.ndarray,
    bounds: tuple[float, ...],
    limit: int,
    offset: float = 3.0,
) -> list[tuple[int, float, float]]:
    """Where to put up to ``limit`` labels so that none overlaps another or a labelled point.

    ``anchors``: (n, 2) points and ``sizes``: (n, 2) label widths and heights, in one unit
    (pixels, y up); ``bounds``: (x0, y0, x1, y1) every label must stay inside. In the points'
    order, each label goes to the first of four spots ``offset`` from its point (up-right,
    up-left, down-right, down-left) that stays inside, overlaps no label placed before and
    covers no point labelled before, nor is its point under an earlier label; a point with no
    such spot is passed over. Returns (point index, x0, y0 of the label's lower-left corner).
    """
    x_min, y_min, x_max, y_max = bounds
    boxes: list[tuple[float, float, float, float]] = []
    points: list[tuple[float, float]] = []
    placed: list[tuple[int, float, float]] = []
    for index, ((x, y), (width, height)) in enumerate(zip(anchors, sizes, strict=True)):
        if len(placed) >= limit:
            break
        if any(a <= x <= c and b <= y <= d for a, b, c, d in boxes):
            continue
        for dx, dy in (
            (offset, offset),
            (-offset - width, offset),
            (offset, -offset - height),
            (-offset - width, -offset - height),
        ):
            box = (x + dx, y + dy, x + dx + width, y + dy + height)
            inside = x_min <= box[0] and box[2] <= x_max and y_min <= box[1] and box[3] <= y_max
            if (
                inside
                and not any(_overlap(box, other) for other in boxes)
                and not any(box[0] <= px <= box[2] and box[1] <= py <= box[3] for px, py in points)
            ):
                boxes.append(box)
                points.append((float(x), float(y)))
                placed.append((index, box[0], box[1]))
                break
    return placed


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


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


@dataclass(frozen=True)
class Headline:
    """A measure the report leads with: an evaluation metric at a cut-off k (None: the k the
    rows have, or a metric without k) in one segment."""

    metric: str
    k: int | None
    segment: str
    name: str
    lower_is_better: bool = False


# The model-quality issue's measures: test KL, recall@20 and NDCG@10 over the test profiles,
# precision@k of the planted skills over the titles.
HEADLINES = (
    Headline("kl", None, "all", "KL", lower_is_better=True),
    Headline("recall", 20, "all", "recall@20"),
    Headline("ndcg", 10, "all", "NDCG@10"),
    Headline("planted_precision", None, "titles", "planted precision"),
)
# Methods' colours, the model's first; every method one of its own.
METHOD_COLOURS = (
    "#d62728",
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_BUCKET = re.compile(r"titles_(?:(\d+)_(\d+)|min_(\d+))_profiles")

Cell = tuple[str, str, int | None, str]  # method, metric, k, segment


@dataclass(frozen=True)
class Scores:
    """The evaluation rows of one run, indexed: (method, metric, k, segment) -> value and,
    where known, its 95% interval. Methods keep the order they came in, the model first;
    "a - b" methods are the paired differences."""

    values: dict[Cell, float]
    intervals: dict[Cell, tuple[float, float]]
    methods: list[str]

    @staticmethod
    def of(rows: Sequence[Mapping[str, object]]) -> Scores:
        values: dict[Cell, float] = {}
        intervals: dict[Cell, tuple[float, float]] = {}
        methods: list[str] = []
        for row in rows:
            if row["value"] is None:
                continue
            method = str(row["method"])
            k = None if row.get("k") is None else int(_number(row, "k"))
            cell = (method, str(row["metric"]), k, str(row["segment"]))
            values[cell] = _number(row, "value")
            if row.get("ci_low") is not None and row.get("ci_high") is not None:
                intervals[cell] = (_number(row, "ci_low"), _number(row, "ci_high"))
            if DIFFERENCE not in method and method not in methods:
                methods.append(method)
        # The model, the baselines in their usual order, any other method (another family).
        order = (MODEL_METHOD, *BASELINES)
        methods.sort(key=lambda m: (order.index(m) if m in order else len(order), m))
        return Scores(values, intervals, methods)

    def headline_cell(self, headline: Headline) -> tuple[str, int | None, str] | None:
        """(metric, k, segment) of a headline in these rows: its own k, else the smallest k
        the model has for the metric there; None when the model has none."""
        ks = sorted(
            (
                k
                for m, metric, k, segment in self.values
                if (m, metric, segment) == (MODEL_METHOD, headline.metric, headline.segment)
            ),
            key=lambda k: -1 if k is None else k,
        )
        if not ks:
            return None
        k = headline.k if headline.k in ks else ks[0]
        return headline.metric, k, headline.segment

    def headlines(self) -> Iterator[tuple[Headline, tuple[str, int | None, str], str]]:
        """Each headline the model has rows for: it, its (metric, k, segment) here, and its
        name with the k, e.g. 'planted precision@10'."""
        for headline in HEADLINES:
            cell = self.headline_cell(headline)
            if cell is not None:
                k = f"@{cell[1]}" if cell[1] and "@" not in headline.name else ""
                yield headline, cell, headline.name + k

    def shown(self, cell: Cell, sign: str = "") -> str:
        """The value with its interval, e.g. '0.353 [0.349, 0.357]' ('+0.024 [+0.022,
        +0.026]' with sign '+')."""
        text = f"{self.values[cell]:{sign}.3f}"
        if cell in self.intervals:
            low, high = self.intervals[cell]
            text += f" [{low:{sign}.3f}, {high:{sign}.3f}]"
        return text


def evaluation_figure(out_dir: Path, rows: Sequence[Mapping[str, object]]) -> Figure:
    """The evaluation table as bars, one colour per method, each bar with its interval.

    Takes rows with keys method, metric, k, segment, value and optionally ci_low, ci_high.
    Panels: the test KL (segment "all"); each ranking metric over k (segment "all"); planted
    precision over all titles ("titles") and per title-frequency bucket ("titles_<a>_<b>_
    profiles", "titles_min_<a>_profiles"). Rows of other segments and differences between
    methods ("model - cooccurrence") are left out; a near-zero bar is labelled with its
    value. Writes ``evaluation.png``; the caption gives the headline measures.
    """
    scores = Scores.of(rows)
    panels: list[tuple[str, list[tuple[Cell, str]]]] = []
    kl: list[tuple[Cell, str]] = [(("", "kl", None, "all"), "test profiles")]
    if _any(scores, kl):
        panels.append(("KL divergence (lower is better)", kl))
    found = {metric for _, metric, k, segment in scores.values if segment == "all" and k}
    for metric in [m for m in RANKING_METRICS if m in found] + sorted(found - {*RANKING_METRICS}):
        ks = sorted({k for _, m, k, seg in scores.values if (m, seg) == (metric, "all") and k})
        panels.append(
            (f"{metric}@k, test profiles", [(("", metric, k, "all"), str(k)) for k in ks])
        )
    planted = sorted(
        {
            (k, segment)
            for _, metric, k, segment in scores.values
            if metric == "planted_precision" and (segment == "titles" or _BUCKET.fullmatch(segment))
        },
        key=lambda cell: (cell[0] or 0, cell[1] != "titles", _bucket_low(cell[1])),
    )
    if planted:
        k = planted[0][0]
        cells = [
            (("", "planted_precision", k, seg), _bucket_name(seg)) for kk, seg in planted if kk == k
        ]
        panels.append((f"planted precision@{k} by training profiles per title", cells))
    if not panels:
        raise ValueError("no evaluation rows for segment 'all' nor planted-truth rows")
    colours = dict(zip(scores.methods, METHOD_COLOURS * 2, strict=False))

    # Two rows of up to three panels; a shorter row's panels widen, so no slot stays empty.
    per_row = 3 if len(panels) > 4 else 2 if len(panels) > 1 else 1
    lines = [panels[i : i + per_row] for i in range(0, len(panels), per_row)]
    fig = MplFigure(figsize=(4.6 * per_row, 3.7 * len(lines) + 0.5), layout="constrained")
    grid = fig.add_gridspec(len(lines), 6)
    for row_index, line in enumerate(lines):
        span = 6 // len(line)
        for column, (title, cells) in enumerate(line):
            ax = fig.add_subplot(grid[row_index, column * span : (column + 1) * span])
            _grouped_bars(ax, scores, colours, cells)
            ax.set_title(title, fontsize=10)
    handles = [
        Patch(facecolor=colours[m], edgecolor="black" if m == MODEL_METHOD else "none")
        for m in scores.methods
    ]
    fig.legend(
        handles, scores.methods, loc="outside upper center", ncols=min(len(scores.methods), 7)
    )
    key = "evaluation"
    caption = _evaluation_caption(scores)
    return Figure(key, "Evaluation: model against baselines", caption, _save(fig, out_dir, key))


def best_baseline(
    scores: Scores, cell: tuple[str, int | None, str], lower_is_better: bool
) -> str | None:
    """The baseline with the best value at (metric, k, segment), or None without one."""
    found = [(scores.values[(b, *cell)], b) for b in BASELINES if (b, *cell) in scores.values]
    if not found:
        return None
    return (min(found) if lower_is_better else max(found))[1]


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


def _svg(fig: MplFigure, key: str) -> str:
    """``fig`` as an SVG element to inline in the page: text as text (the browser draws it,
    and a reader can select it), ids salted with the key so that two maps on one page share
    none."""
    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": key}):
        fig.savefig(buffer, format="svg", dpi=DPI, bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


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


def _any(scores: Scores, cells: Sequence[tuple[Cell, str]]) -> bool:
    return any((m, *cell[1:]) in scores.values for m in scores.methods for cell, _ in cells)


def _bucket_low(segment: str) -> int:
    match = _BUCKET.fullmatch(segment)
    return 0 if match is None else int(match.group(1) or match.group(3))


def _bucket_name(segment: str) -> str:
    """'titles' -> 'all titles', 'titles_5_19_profiles' -> '5-19', 'titles_min_50_profiles'
    -> '>= 50'."""
    match = _BUCKET.fullmatch(segment)
    if match is None:
        return "all titles"
    low, high, least = match.groups()
    return f">= {least}" if least else f"{low}-{high}"


def _grouped_bars(
    ax: Axes, scores: Scores, colours: Mapping[str, ColorType], cells: Sequence[tuple[Cell, str]]
) -> None:
    """One group of bars per cell ('' standing for the method) at x = 0, 1, ..., a bar for
    each method that has a value there, side by side, with its interval as an error bar."""
    width = 0.8 / max(1, len(scores.methods))
    top = max(
        (
            scores.values[(m, *cell[1:])]
            for m in scores.methods
            for cell, _ in cells
            if (m, *cell[1:]) in scores.values
        ),
        default=1.0,
    )
    for x, (cell, _) in enumerate(cells):
        present = [m for m in scores.methods if (m, *cell[1:]) in scores.values]
        for index, method in enumerate(present):
            at = x + (index - (len(present) - 1) / 2) * width
            full = (method, *cell[1:])
            height = scores.values[full]
            is_model = method == MODEL_METHOD
            ax.bar(
                at,
                height,
                width=width,
                color=colours[method],
                edgecolor="black" if is_model else "none",
                linewidth=1.0 if is_model else 0.0,
                zorder=3 if is_model else 2,
            )
            if full in scores.intervals:
                low, high = scores.intervals[full]
                # max(0, ...): rounding may leave a value a hair outside its own interval.
                ax.errorbar(
                    at,
                    height,
                    yerr=[[max(0.0, height - low)], [max(0.0, high - height)]],
                    fmt="none",
                    ecolor="black",
                    elinewidth=0.8,
                    capsize=2.0,
                    zorder=4,
                )
            if abs(height) < 0.03 * abs(top):
                ax.text(at, 0, f"{height:.2f}", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(cells)), [label for _, label in cells], fontsize=8)
    ax.set_xlim(-0.5, len(cells) - 0.5)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)


def _evaluation_caption(scores: Scores) -> str:
    """The headline measures: the model against the best baseline, with their intervals."""
    parts = []
    for headline, cell, name in scores.headlines():
        text = f"{name} {scores.shown((MODEL_METHOD, *cell))}"
        best = best_baseline(scores, cell, headline.lower_is_better)
        if best is not None:
            text += f" against {best}'s {scores.shown((best, *cell))}"
        parts.append(text)
    sentences = []
    if parts:
        sentences.append("The model against the best baseline: " + "; ".join(parts) + ".")
    sentences.append(f"Methods: {', '.join(scores.methods)}.")
    if scores.intervals:
        sentences.append("Error bars: 95% bootstrap intervals.")
    return " ".join(sentences)
