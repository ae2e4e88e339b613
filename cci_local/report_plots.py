"""The report's plots: each ``plot_*`` function draws one figure with matplotlib's Agg
backend (no display needed) and returns it as PNG bytes, or None when there is
nothing to draw.  The PNGs leave out matplotlib's Software tag, so the same data
(and matplotlib) gives the same bytes.  cci_local/report.py decides what to plot
and where each figure goes.
"""

from __future__ import annotations

import io


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def _errors(cells: list[dict | None]):
    values = [c["value"] if c else 0.0 for c in cells]
    low = [max(0.0, c["value"] - c["low"]) if c else 0.0 for c in cells]
    high = [max(0.0, c["high"] - c["value"]) if c else 0.0 for c in cells]
    return values, [low, high]


def plot_curves(curves: dict[str, list]) -> bytes | None:
    """Loss per optimizer step, one line per adapter; None when no curve has a point."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    for label, points in curves.items():
        ax.plot([s for s, _ in points], [loss for _, loss in points], marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_survey(res: dict) -> bytes | None:
    """Survey accuracy with 95% CI bars, one panel per answer key, with the majority-letter
    (dashed) and random (dotted) baselines; None when no key has respondents."""
    import numpy as np

    groups = [(c, v) for c, v in res["communities"].items() if v["respondents"]]
    if not groups:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups) + 1, 3.2), squeeze=False)
    for ax, (c, v) in zip(axes[0], groups, strict=True):
        labels = list(v["respondents"])
        values, err = _errors([v["respondents"][r]["accuracy"] for r in labels])
        ax.bar(np.arange(len(labels)), values, yerr=err, capsize=4, color="#4c72b0")
        if v["majority_letter"]:
            ax.axhline(v["majority_letter"]["value"], color="k", linestyle="--", linewidth=1)
        ax.axhline(v["random"], color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(np.arange(len(labels)), [lb.split(":")[0] for lb in labels])
        ax.set_ylim(0, 1)
        ax.set_title(f"key r/{c}", fontsize=10)
    axes[0][0].set_ylabel("accuracy")
    return _png(fig)


def plot_heatmap(matrix: dict, keys: list[str]) -> bytes | None:
    """A cross-community accuracy matrix (rows: models, columns: answer ``keys``) as a
    heatmap; None when the matrix is empty."""
    import numpy as np

    if not matrix:
        return None
    plt = _pyplot()
    rows = list(matrix)
    values = np.array([[(matrix[r].get(c) or {}).get("value", np.nan) for c in keys]
                       for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 * len(keys) + 2, 0.6 * len(rows) + 1.2))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
    for i in range(len(rows)):
        for j in range(len(keys)):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center",
                        color="white" if values[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(keys)), [f"key r/{c}" for c in keys])
    ax.set_yticks(range(len(rows)), rows)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _png(fig)


def plot_emotions(dists: dict[str, list[float]]) -> bytes | None:
    """Emotion profiles (share of each NRC emotion) side by side; None with fewer than two."""
    import numpy as np

    from .evaluate.emotion import EMOTIONS

    if len(dists) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3))
    width = 0.8 / len(dists)
    x = np.arange(len(EMOTIONS))
    for i, (label, values) in enumerate(dists.items()):
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=label)
    ax.set_xticks(x, EMOTIONS, rotation=30, fontsize=8)
    ax.set_ylabel("share of emotion words")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)


def plot_scores(respondents: dict, measures: list[str]) -> bytes | None:
    """Each respondent's instrument scores with 95% CI bars; None when there are none."""
    import numpy as np

    if not respondents or not measures:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(measures) * len(respondents) / 2), 3))
    width = 0.8 / len(respondents)
    x = np.arange(len(measures))
    for i, (who, v) in enumerate(respondents.items()):
        values, err = _errors([v["scores"][m] for m in measures])
        ax.bar(x + i * width - 0.4 + width / 2, values, width, yerr=err, capsize=3, label=who)
    ax.set_xticks(x, measures, fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)
