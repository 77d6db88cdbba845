"""The evaluation figures as PNG files, drawn with matplotlib (Agg: no display needed).

matplotlib is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike,
                  title: str = "") -> Path:
    """A confusion matrix (rows: true class, columns: predicted) as a heat map of each row's
    share, every cell annotated with its count."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    n = len(classes)
    size = max(4.5, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def curves_png(levels: Sequence[float], curves: Mapping[str, Sequence[float]],
               path: str | os.PathLike, xlabel: str, ylabel: str, title: str = "") -> Path:
    """One line per curve (a metric against a degradation level), every point marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(levels))
    for name, values in curves.items():
        ax.plot(x, values, marker="o", label=name)
    ax.set_xticks(x, [f"{v:g}" for v in levels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
