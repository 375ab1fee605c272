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


def _spacing3(spacing_um) -> tuple[float, float, float]:
    """Voxel size (um) along i, j, k from one number or three."""
    si, sj, sk = (float(s) for s in np.broadcast_to(np.asarray(spacing_um, float), (3,)))
    return si, sj, sk


def _views(vol: np.ndarray, spacing_um=(1.0, 1.0, 1.0)) -> list[tuple[str, np.ndarray, float]]:
    """Three orthogonal central slices (depth k drawn downwards) and the max projection along depth,
    each with the pixel aspect ratio (height / width) that shows it at its physical scale."""
    si, sj, sk = _spacing3(spacing_um)
    i, j, k = (s // 2 for s in vol.shape)
    return [("lateral slice k=%d (i-j)" % k, vol[:, :, k], si / sj),
            ("B-scan j=%d (i-depth)" % j, vol[:, j, :].T, sk / si),
            ("B-scan i=%d (j-depth)" % i, vol[i, :, :].T, sk / sj),
            ("max projection over depth", vol.max(axis=2), si / sj)]


def _column_spacings(spacing_um) -> list[float]:
    """Voxel size (um) along the horizontal axis of each panel of :func:`_views`: j, i, j, j."""
    si, sj, _ = _spacing3(spacing_um)
    return [sj, si, sj, sj]


def scale_bar_length(panel_width_um: float, fraction: float = 0.2) -> float:
    """A round scale-bar length (um, 1-2-5 steps: ... 10, 20, 50, 100, 200, 500 ...) closest, on a log
    scale, to ``fraction`` (about 1/5) of a panel ``panel_width_um`` wide; e.g. 512 um -> 100 um."""
    target = float(panel_width_um) * fraction
    if not np.isfinite(target) or target <= 0:
        raise ValueError(f"panel width must be a positive number of um, got {panel_width_um!r}")
    decade = 10.0 ** np.floor(np.log10(target))
    steps = [m * decade for m in (1.0, 2.0, 5.0, 10.0)]
    best = min(steps, key=lambda v: abs(np.log(v / target)))
    return float(f"{best:.6g}")  # no float noise such as 0.30000000000000004


def _length_text(um: float) -> str:
    """'500 µm', '2 mm' or '0.5 µm' for a scale-bar length in um."""
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def _add_scale_bar(ax, width_px: int, um_per_px: float) -> None:
    """A white bar with a black outline and its length as text, in the lower right corner of an image
    axes whose image is ``width_px`` columns of ``um_per_px`` um each (the image fills the axes)."""
    from matplotlib import patheffects
    from matplotlib.transforms import ScaledTranslation

    length = scale_bar_length(width_px * um_per_px)
    frac = length / (width_px * um_per_px)
    x1 = 0.95
    x0 = x1 - frac
    outline = [patheffects.Stroke(linewidth=6, foreground="black"), patheffects.Normal()]
    ax.plot([x0, x1], [0.06, 0.06], transform=ax.transAxes, color="white", linewidth=3.5,
            solid_capstyle="butt", path_effects=outline, clip_on=False)
    up = ax.transAxes + ScaledTranslation(0, 6 / 72, ax.figure.dpi_scale_trans)  # 6 points above the bar
    ax.text((x0 + x1) / 2, 0.06, _length_text(length), transform=up, ha="center", va="bottom", color="white",
            fontsize=8, fontweight="bold", path_effects=[patheffects.withStroke(linewidth=2.5, foreground="black")])


def _voxel_line(spacing_um) -> str:
    """'voxel 2 x 2 x 5 µm (i, j, k = depth, drawn downwards)' for the figure title."""
    if spacing_um is None:
        return "voxel size not given: drawn as cubes, no scale bar"
    si, sj, sk = _spacing3(spacing_um)
    return f"voxel {si:.4g} × {sj:.4g} × {sk:.4g} µm (i × j × k; k = depth, drawn downwards)"


def _title(title: str, spacing_um) -> str:
    """The caller's title with the voxel size on a line of its own."""
    return f"{title}\n{_voxel_line(spacing_um)}" if title else _voxel_line(spacing_um)


def save_sample_qc(image: np.ndarray, label: np.ndarray, path: str | Path, title: str = "",
                   spacing_um=None) -> Path:
    """Image (top row) and label (bottom row): central slices and the projection along depth.

    ``spacing_um`` (voxel size in um along i, j, k, or one number) sets the aspect ratio, so anisotropic
    scans look right, adds a scale bar to every panel and the voxel size to the title; None draws
    cubic voxels without a scale bar.
    """
    plt = _pyplot()
    shown = (1.0, 1.0, 1.0) if spacing_um is None else spacing_um
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6))
    for row, (vol, cmap, vmax) in enumerate([(image, "gray", 1.0), (label, "magma", 1.0)]):
        for ax, (name, view, aspect), col_um in zip(axes[row], _views(np.asarray(vol, dtype=np.float32), shown),
                                                    _column_spacings(shown)):
            ax.imshow(view, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest", aspect=aspect)
            ax.set_title(("image: " if row == 0 else "label: ") + name, fontsize=8)
            ax.axis("off")
            if spacing_um is not None:
                _add_scale_bar(ax, view.shape[1], col_um)
    fig.suptitle(_title(title, spacing_um), fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def save_overlay_qc(image: np.ndarray, mask: np.ndarray, path: str | Path, title: str = "",
                    spacing_um=None) -> Path:
    """Mask in red over the image, on the three central slices and the depth projection.

    ``spacing_um`` (voxel size in um along i, j, k, or one number) sets the aspect ratio, so anisotropic
    scans look right, adds a scale bar to every panel and the voxel size to the title; None draws
    cubic voxels without a scale bar.
    """
    plt = _pyplot()
    shown = (1.0, 1.0, 1.0) if spacing_um is None else spacing_um
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5])
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    fig, axes = plt.subplots(1, 4, figsize=(14, 4.3))
    for ax, (name, view, aspect), (_, mview, _), col_um in zip(axes, _views(image, shown),
                                                               _views(np.asarray(mask, np.float32), shown),
                                                               _column_spacings(shown)):
        ax.imshow(view, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect=aspect)
        overlay = np.zeros((*mview.shape, 4), np.float32)
        overlay[..., 0] = 1.0
        overlay[..., 3] = 0.45 * (mview > 0)
        ax.imshow(overlay, interpolation="nearest", aspect=aspect)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
        if spacing_um is not None:
            _add_scale_bar(ax, view.shape[1], col_um)
    fig.suptitle(_title(title, spacing_um), fontsize=10)
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
