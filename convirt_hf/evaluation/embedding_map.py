"""Embedding maps: a 2-D t-SNE (and UMAP) of image embeddings coloured by label, saved as a PNG (the paper's Fig. 4).

Needs the ``eval`` extra (scikit-learn and matplotlib): ``pip install "convirt-hf[eval]"``. UMAP is drawn too when
``umap-learn`` is installed (it is not a dependency of any extra) and skipped with a logged note when it is not.

The picture is deterministic for a seed: t-SNE starts from PCA with ``random_state=seed``, UMAP gets the same
``random_state``, and colours follow the sorted label names. The PNG is drawn with matplotlib's Agg canvas (no
pyplot, no display, no global backend switch) at an exact size: ``panel_size`` pixels square per method plus
``legend_width`` pixels for the legend.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convirt_hf.atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["EMBEDDING_MAP_METHODS", "EmbeddingMap", "plot_embedding_map", "project_embeddings", "umap_available"]

EMBEDDING_MAP_METHODS = ("tsne", "umap")
METHOD_TITLES = {"tsne": "t-SNE", "umap": "UMAP"}
EVAL_EXTRA_HINT = 'pip install "convirt-hf[eval]"'


def _require_eval_extra() -> None:
    try:
        import matplotlib  # noqa: F401
        import matplotlib.figure  # noqa: F401
        import sklearn.manifold  # noqa: F401
        from matplotlib.backends import backend_agg  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"embedding maps need scikit-learn and matplotlib, which are not installed ({error}); install the eval "
            f"extra: {EVAL_EXTRA_HINT}"
        ) from error


def umap_available() -> bool:
    return importlib.util.find_spec("umap") is not None


def _as_array(embeddings) -> np.ndarray:
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().numpy()  # keep the dtype: float64 stays float64
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (num_points, dim), got shape {array.shape}")
    if array.shape[0] < 3:
        raise ValueError(f"an embedding map needs at least 3 points, got {array.shape[0]}")
    if not np.isfinite(array).all():
        raise ValueError("embeddings must be finite")
    return array


def _label_names(labels: Sequence, count: int) -> list[str]:
    names = []
    for label in labels:
        if isinstance(label, (list, tuple)):  # a record's labels list
            label = " + ".join(label) if label else "no label"
        names.append(str(label))
    if len(names) != count:
        raise ValueError(f"got {len(names)} labels for {count} embeddings")
    return names


def project_embeddings(embeddings, method: str = "tsne", seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """
    2-D coordinates `(num_points, 2)` of `embeddings` by t-SNE (`"tsne"`, scikit-learn) or UMAP (`"umap"`,
    umap-learn). t-SNE's perplexity defaults to min(30, (num_points - 1) / 3).
    """
    array = _as_array(embeddings)
    count = array.shape[0]
    if method == "tsne":
        _require_eval_extra()
        from sklearn.manifold import TSNE

        perplexity = perplexity if perplexity is not None else max(1.0, min(30.0, (count - 1) / 3.0))
        if not 0 < perplexity < count:
            raise ValueError(f"t-SNE perplexity must be in (0, {count}) for {count} points, got {perplexity}")
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return np.asarray(tsne.fit_transform(array), dtype=np.float64)
    if method == "umap":
        try:
            import umap
        except ImportError as error:
            raise ImportError("UMAP maps need umap-learn (pip install umap-learn), which is not installed") from error
        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=max(2, min(15, count - 1)))
        return np.asarray(reducer.fit_transform(array), dtype=np.float64)
    raise ValueError(f"unknown embedding map method {method!r}; expected one of {EMBEDDING_MAP_METHODS}")


@dataclass
class EmbeddingMap:
    """What [`plot_embedding_map`] drew: the PNG's path, the 2-D coordinates per method, the labels, the size."""

    path: Path
    coordinates: dict[str, np.ndarray] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)


def _colours(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    count = len(names)
    if count <= 10:
        palette = colormaps["tab10"]
        return {name: palette(i) for i, name in enumerate(names)}
    if count <= 20:
        palette = colormaps["tab20"]
        return {name: palette(i) for i, name in enumerate(names)}
    palette = colormaps["hsv"]
    return {name: palette(i / count) for i, name in enumerate(names)}


def plot_embedding_map(
    embeddings,
    labels: Sequence,
    output_path: str | os.PathLike,
    methods: Sequence[str] = EMBEDDING_MAP_METHODS,
    seed: int = 0,
    title: str | None = None,
    perplexity: float | None = None,
    panel_size: int = 480,
    legend_width: int = 200,
    dpi: int = 100,
) -> EmbeddingMap:
    """
    Draws `embeddings` (`(num_points, dim)`, e.g. L2-normalised image embeddings) in 2-D, one panel per method,
    points coloured by `labels` (one name per point, or a record's list of names), with a legend, and writes the PNG
    atomically to `output_path`.

    Args:
        methods: among `("tsne", "umap")`; UMAP is skipped with a logged note when umap-learn is not installed.
        seed: makes the layout (and so the picture) reproducible.
        title: a caption above the panels (e.g. the model's name).
        panel_size: side of each square panel in pixels; legend_width: the legend column's width in pixels. The
            PNG is `(len(drawn methods) * panel_size + legend_width, panel_size)` pixels.

    Raises:
        ImportError: scikit-learn or matplotlib missing (install the `eval` extra), or only UMAP asked for without
            umap-learn. ValueError: bad inputs or an unknown method.
    """
    _require_eval_extra()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    array = _as_array(embeddings)
    names = _label_names(labels, array.shape[0])
    unknown = [method for method in methods if method not in EMBEDDING_MAP_METHODS]
    if unknown or not methods:
        raise ValueError(f"embedding map methods must be among {EMBEDDING_MAP_METHODS}, got {list(methods)}")
    drawn = list(dict.fromkeys(methods))
    if "umap" in drawn and not umap_available():
        if drawn == ["umap"]:
            raise ImportError("UMAP maps need umap-learn (pip install umap-learn), which is not installed")
        logger.info("umap-learn is not installed: the embedding map shows t-SNE only (pip install umap-learn for UMAP)")
        drawn.remove("umap")
    coordinates = {method: project_embeddings(array, method, seed, perplexity) for method in drawn}

    width, height = panel_size * len(drawn) + legend_width, panel_size
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    categories = sorted(set(names))
    colours = _colours(categories)
    marker_size = float(np.clip(3000.0 / len(names), 4.0, 30.0))
    label_array = np.asarray(names, dtype=object)
    top = 0.86 if title else 0.90
    for index, method in enumerate(drawn):
        left = (index * panel_size) / width
        axes = figure.add_axes((left + 0.04 * panel_size / width, 0.04, 0.92 * panel_size / width, top - 0.04))
        points = coordinates[method]
        for category in categories:
            mask = label_array == category
            axes.scatter(points[mask, 0], points[mask, 1], s=marker_size, color=colours[category], alpha=0.8,
                         linewidths=0)
        axes.set_title(METHOD_TITLES[method], fontsize=10)
        axes.set_xticks([])
        axes.set_yticks([])
    handles = [Line2D([0], [0], marker="o", linestyle="", markersize=6, color=colours[category], label=category)
               for category in categories]
    figure.legend(handles=handles, loc="center left", bbox_to_anchor=(panel_size * len(drawn) / width, 0.5),
                  fontsize=8, frameon=False, title="label", title_fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10, y=0.98)

    output = Path(output_path).expanduser()
    with atomic_path(output) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi, metadata={"Software": None})
    logger.info("embedding map (%s) of %d points written to %s", ", ".join(METHOD_TITLES[m] for m in drawn),
                len(names), output)
    return EmbeddingMap(output, coordinates, names, (width, height))
