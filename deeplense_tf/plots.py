"""Figures shared by training (TensorBoard), evaluation reports and EDA."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def binned_quantiles(x, y, bins, quantiles=(0.16, 0.5, 0.84)):
    """Per-bin quantiles of y against x: (centres, counts, array (len(quantiles), n_bins))."""
    edges = np.asarray(bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    index = np.clip(np.digitize(x, edges) - 1, 0, len(centres) - 1)
    out = np.full((len(quantiles), len(centres)), np.nan)
    counts = np.bincount(index, minlength=len(centres))
    for b in range(len(centres)):
        if counts[b]:
            out[:, b] = np.quantile(y[index == b], quantiles)
    return centres, counts, out


def predicted_vs_true(y_true, y_pred, name: str, *, bins: int = 20, title: str = ""):
    """2-D histogram of prediction against truth, with the binned median and 16-84% band."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    lo, hi = np.min(y_true), np.max(y_true)
    pad = 0.05 * (hi - lo or 1.0)
    edges = np.linspace(lo - pad, hi + pad, bins + 1)
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=100)
    ax.hist2d(y_true, y_pred, bins=[edges, edges], cmap="Greys", cmin=1)
    centres, counts, q = binned_quantiles(y_true, y_pred, edges)
    ok = counts > 0
    ax.fill_between(centres[ok], q[0, ok], q[2, ok], color="tab:blue", alpha=0.3,
                    label="16-84% of predictions")
    ax.plot(centres[ok], q[1, ok], color="tab:blue", label="median prediction")
    ax.plot(edges[[0, -1]], edges[[0, -1]], "k--", lw=1, label="truth")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(edges[0], edges[-1])
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel(f"predicted {name}")
    ax.set_title(title or f"{name}: predicted vs true", fontsize=10)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig


def to_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
