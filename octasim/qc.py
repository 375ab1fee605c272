"""Quality-control pictures (PNG): orthogonal slices and depth projections a person can look at."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from octasim.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _views(vol: np.ndarray, spacing_um=(1.0, 1.0, 1.0)) -> list[tuple[str, np.ndarray, float]]:
    """Three orthogonal central slices (depth k drawn downwards) and the max projection along depth,
    each with the pixel aspect ratio (height / width) that shows it at its physical scale."""
    si, sj, sk = (float(s) for s in np.broadcast_to(np.asarray(spacing_um, float), (3,)))
    i, j, k = (s // 2 for s in vol.shape)
    return [("lateral slice k=%d (i-j)" % k, vol[:, :, k], si / sj),
            ("B-scan j=%d (i-depth)" % j, vol[:, j, :].T, sk / si),
            ("B-scan i=%d (j-depth)" % i, vol[i, :, :].T, sk / sj),
            ("max projection over depth", vol.max(axis=2), si / sj)]


def save_sample_qc(image: np.ndarray, label: np.ndarray, path: str | Path, title: str = "",
                   spacing_um=(1.0, 1.0, 1.0)) -> Path:
    """Image (top row) and label (bottom row): central slices and the projection along depth.

    ``spacing_um`` (voxel size along i, j, k) sets the aspect ratio, so anisotropic scans look right.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6))
    for row, (vol, cmap, vmax) in enumerate([(image, "gray", 1.0), (label, "magma", 1.0)]):
        for ax, (name, view, aspect) in zip(axes[row], _views(np.asarray(vol, dtype=np.float32), spacing_um)):
            ax.imshow(view, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest", aspect=aspect)
            ax.set_title(("image: " if row == 0 else "label: ") + name, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def save_overlay_qc(image: np.ndarray, mask: np.ndarray, path: str | Path, title: str = "",
                    spacing_um=(1.0, 1.0, 1.0)) -> Path:
    """Mask in red over the image, on the three central slices and the depth projection.

    ``spacing_um`` (voxel size along i, j, k) sets the aspect ratio, so anisotropic scans look right.
    """
    plt = _pyplot()
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5])
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    fig, axes = plt.subplots(1, 4, figsize=(14, 4))
    for ax, (name, view, aspect), (_, mview, _) in zip(axes, _views(image, spacing_um),
                                                       _views(np.asarray(mask, np.float32), spacing_um)):
        ax.imshow(view, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect=aspect)
        overlay = np.zeros((*mview.shape, 4), np.float32)
        overlay[..., 0] = 1.0
        overlay[..., 3] = 0.45 * (mview > 0)
        ax.imshow(overlay, interpolation="nearest", aspect=aspect)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def save_contact_sheet(images: list[np.ndarray], names: list[str], path: str | Path, columns: int = 6) -> Path:
    """Depth projections of many volumes in a grid, one named tile each."""
    plt = _pyplot()
    n = max(1, len(images))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, vol, name in zip(axes.ravel(), images, names):
        ax.imshow(np.asarray(vol).max(axis=2), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=8)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path, plt) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path
