"""The report's figures with matplotlib (Agg), as inline PNG data URIs (no files, no network).

Per class, one figure of five panels: image ROC and PR (from the image scores), pixel ROC
and PRO up to FPR 0.3 (from the class's pixel histograms, when the run wrote them), and the
histogram of image scores of normal vs anomalous images with the decision threshold.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

# matplotlib and scikit-learn load when a figure is drawn (about 1 s and 3 s of imports that a
# run's start-up does not need); matplotlib's object API, not pyplot: no global figure
# state, no display backend to choose

PRO_FPR_LIMIT = 0.3
_NORMAL, _ANOMALOUS = "#1f77b4", "#d62728"
_MAX_POINTS = 2000


def _thin(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """At most _MAX_POINTS points (keeps the first and last)."""
    n = len(arrays[0])
    if n <= _MAX_POINTS:
        return arrays
    idx = np.unique(np.linspace(0, n - 1, _MAX_POINTS).round().astype(int))
    return tuple(a[idx] for a in arrays)


def _data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _empty(ax, title: str, why: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def class_figure(labels: Sequence[int | None], scores: Sequence[float], pixel: dict[str, np.ndarray] | None,
                 threshold: float | None, threshold_name: str, metrics: dict[str, float | None]) -> str:
    """The five panels of one class as a PNG data URI (``labels[i]`` None: unlabelled image)."""
    known = np.array([v is not None for v in labels], dtype=bool)
    all_scores = np.asarray(scores, dtype=float)
    labels_a, scores_a = np.array([v for v in labels if v is not None], dtype=int), all_scores[known]
    both = bool(labels_a.size) and 0 < labels_a.sum() < labels_a.size
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 3.4))
    axes = fig.subplots(1, 5)

    def pct(name: str) -> str:
        v = metrics.get(name)
        return "" if v is None else f" ({100 * v:.1f})"

    ax = axes[0]
    if both:
        from sklearn.metrics import precision_recall_curve, roc_curve

        fpr, tpr, _ = roc_curve(labels_a, scores_a)
        ax.plot(fpr, tpr, color=_ANOMALOUS, drawstyle="default")
        ax.plot([0, 1], [0, 1], ls=":", color="#999")
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title("image ROC, AUROC" + pct("image_auroc"), fontsize=10)
    else:
        _empty(ax, "image ROC", "needs normal and anomalous images")
    ax = axes[1]
    if both:
        precision, recall, _ = precision_recall_curve(labels_a, scores_a)
        ax.plot(recall, precision, color=_ANOMALOUS, drawstyle="steps-post")
        ax.axhline(labels_a.mean(), ls=":", color="#999")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title("image PR, AUPR" + pct("image_aupr"), fontsize=10)
    else:
        _empty(ax, "image PR", "needs normal and anomalous images")
    ax = axes[2]
    if pixel is not None:
        fpr, tpr = _thin(pixel["fpr"], pixel["tpr"])
        ax.plot(fpr, tpr, color=_ANOMALOUS)
        ax.plot([0, 1], [0, 1], ls=":", color="#999")
        ax.set(xlabel="false-positive rate (pixels)", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title("pixel ROC, AUROC" + pct("pixel_auroc"), fontsize=10)
    else:
        _empty(ax, "pixel ROC", "no pixel statistics in this run folder\n(no masks, or an older run)")
    ax = axes[3]
    if pixel is not None and pixel["pro"][-1] > 0:
        keep = pixel["fpr"] <= PRO_FPR_LIMIT
        fpr, pro = _thin(pixel["fpr"][keep], pixel["pro"][keep])
        ax.plot(fpr, pro, color=_ANOMALOUS)
        ax.plot([0, PRO_FPR_LIMIT], [0, PRO_FPR_LIMIT], ls=":", color="#999")
        ax.set(xlabel="false-positive rate (pixels)", ylabel="per-region overlap", xlim=(0, PRO_FPR_LIMIT),
               ylim=(0, 1.02))
        ax.set_title("PRO up to FPR 0.3" + pct("pro"), fontsize=10)
    else:
        _empty(ax, "PRO", "no defect regions or no pixel statistics")
    ax = axes[4]
    if all_scores.size:
        bins = np.histogram_bin_edges(all_scores, bins=min(40, max(8, all_scores.size // 3)))
        if labels_a.size:
            ax.hist(scores_a[labels_a == 0], bins=bins, alpha=0.6, color=_NORMAL, label="normal")
            ax.hist(scores_a[labels_a == 1], bins=bins, alpha=0.6, color=_ANOMALOUS, label="anomalous")
        if (~known).any():
            ax.hist(all_scores[~known], bins=bins, alpha=0.6, color="#777", label="unlabelled")
        if threshold is not None:
            ax.axvline(threshold, color="black", ls="--", label=threshold_name.split(" (")[0])
        ax.set_ylim(0, ax.get_ylim()[1] * 1.35)  # room for the legend
        ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
        ax.set(xlabel="image score", ylabel="images")
        ax.set_title("image scores", fontsize=10)
    else:
        _empty(ax, "image scores", "no scored images")
    fig.subplots_adjust(left=0.035, right=0.995, bottom=0.16, top=0.9, wspace=0.28)  # fixed: tight_layout is slow
    return _data_uri(fig)
