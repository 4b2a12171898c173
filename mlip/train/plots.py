"""Learning curves and parity plots as PNG files (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from mlip.train.metrics import DISPLAY, HEAD_QUANTITIES, UNITS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    from mlip.checkpoint import atomic_file

    # no bbox_inches="tight": it draws the figure twice, and the layout below already fits
    with atomic_file(path, "wb") as fh:  # a failed write leaves no temporary file behind
        fig.savefig(fh, dpi=110, format="png")


def learning_curve(history: Sequence[Mapping[str, float]], path: str,
                   stage_two_epoch: Optional[int] = None) -> Optional[str]:
    """Loss and RMSEs per epoch, train and validation, on log axes. Returns the path written."""
    if not history:
        return None
    plt = _pyplot()
    epochs = np.array([h["epoch"] for h in history], dtype=float)
    panels = [("loss", "loss", "")]
    for q in ("energy", "forces", "stress") + HEAD_QUANTITIES:
        if any(math.isfinite(h.get(f"train_{q}_rmse", math.nan)) or math.isfinite(h.get(f"valid_{q}_rmse", math.nan))
               for h in history):
            panels.append((f"{q}_rmse", f"{q} RMSE", DISPLAY[q][0]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.9, wspace=0.3)
    for ax, (key, title, unit) in zip(axes[0], panels):
        factor = 1.0 if key == "loss" else DISPLAY[key[:-len("_rmse")]][1]
        for split, style in (("train", "-"), ("valid", "-o")):
            y = np.array([h.get(f"{split}_{key}", math.nan) for h in history], dtype=float) * factor
            ok = np.isfinite(y) & (y > 0)
            if ok.any():
                ax.plot(epochs[ok], y[ok], style, markersize=3, label=split)
        if stage_two_epoch is not None and epochs.size and stage_two_epoch < epochs.max():
            # history epochs count from 1; stage two begins after `stage_two_epoch` of them
            ax.axvline(stage_two_epoch + 0.5, color="grey", ls="--", lw=1, label="stage two")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{title} [{unit}]" if unit else title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return path


def parity_plot(ref: np.ndarray, pred: np.ndarray, path: str, quantity: str, title: str = "") -> Optional[str]:
    """Predicted against reference values with the y = x line, MAE and RMSE in the corner.

    ``quantity`` is energy (per atom), forces, stress or a head's quantity (dipole,
    polarizability, ...; :data:`mlip.train.metrics.UNITS`); values are in base units (eV...).
    """
    ref = np.asarray(ref, dtype=float).ravel()
    pred = np.asarray(pred, dtype=float).ravel()
    if ref.size == 0:
        return None
    plt = _pyplot()
    units = UNITS[quantity]
    err = pred - ref
    mae, rmse = float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err ** 2)))
    disp_unit, f = DISPLAY[quantity]
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    fig.subplots_adjust(left=0.2, right=0.95, bottom=0.13, top=0.92)
    ax.scatter(ref, pred, s=4 if ref.size > 2000 else 10, alpha=0.5, lw=0)
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(f"reference {quantity} [{units}]")
    ax.set_ylabel(f"predicted {quantity} [{units}]")
    ax.set_title(title or quantity)
    ax.text(0.04, 0.96, f"MAE {mae * f:.3g} {disp_unit}\nRMSE {rmse * f:.3g} {disp_unit}\nN = {ref.size}",
            transform=ax.transAxes, va="top", fontsize=8,
            bbox=dict(boxstyle="round", fc="white", alpha=0.8, lw=0.5))
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return path
