"""OCTA vessel signal and projection tails (docs/design.md, "Signal model"; reference defaults).

Vessel voxel value ``vessel_gain * s`` with ``s = w * I_ang + (1 - w) * r_hat``,
``r_hat = clip(radius / r_norm_um, 0, 1)``, ``I_ang = angle_loss_floor ** (1 - a)`` (= 0.1 * 10**a for
the reference floor 0.1), optionally raised to ``sigmoid(slope * (r_hat - center))``.

Tails: below every lower-wall voxel (i, j, k0) the voxels k0 + 1 ... k0 + L along +k, with
``L = round(r_hat * tail_length_um * len_tail / voxel_size_um)``, take values decaying
geometrically from ``tail_start_gain * s * r_hat`` (first voxel below the wall) to ``tail_end_value``
(L-th voxel), plus Gaussian noise (``tail_noise_std``, drawn per tail and voxel, inside the tail
only), clipped to ``[0, tail_cap_fraction * vessel_gain * s]``. Overlapping tails combine by maximum
(exactly: every tail is evaluated in full, then max-combined), tails running past the bottom of the
volume are cut there. The image is ``max(tails, vessel values)``.
"""
from __future__ import annotations

import numpy as np

from octasim.voxelize import VoxelMaps

#: max tail voxels evaluated at once (bounds the temporary memory to ~16 bytes per element)
_CHUNK = 1 << 21


def signal_strength(radius_um: np.ndarray, orientation: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """(s, r_hat) for vessel voxels with the given radius (um) and orientation value a, float32."""
    r_hat = np.clip(radius_um.astype(np.float32) / np.float32(p["r_norm_um"]), 0.0, 1.0)
    if p["angle_loss"]:
        a = orientation.astype(np.float32)
        i_ang = np.power(np.float32(p["angle_loss_floor"]), 1.0 - a, dtype=np.float32)
        if p["angle_correction"]:
            z = np.float32(p["angle_correction_slope"]) * (r_hat - np.float32(p["angle_correction_center"]))
            i_ang = np.maximum(i_ang, 1.0 / (1.0 + np.exp(-z)), dtype=np.float32)
    else:
        i_ang = np.ones_like(r_hat)
    w = np.float32(p["signal_angle_weight"])
    s = (w * i_ang + (1.0 - w) * r_hat).astype(np.float32)
    return s, r_hat


def vessel_signal(maps: VoxelMaps, p: dict) -> np.ndarray:
    """Float32 volume: ``vessel_gain * s`` at vessel voxels, 0 elsewhere."""
    out = np.zeros(maps.shape, dtype=np.float32)
    flat = out.reshape(-1)
    idx = np.flatnonzero(np.asarray(maps.label).reshape(-1))
    s, _ = signal_strength(np.asarray(maps.radius).reshape(-1)[idx], np.asarray(maps.orientation).reshape(-1)[idx], p)
    flat[idx] = np.float32(p["vessel_gain"]) * s
    return out


def tail_length_vox(r_hat: np.ndarray, p: dict, voxel_size_um: float) -> np.ndarray:
    """Tail length in voxels, ``round(r_hat * tail_length_um * len_tail / voxel_size_um)``."""
    return np.rint(r_hat * (p["tail_length_um"] * p["len_tail"] / voxel_size_um)).astype(np.int64)


def tails(maps: VoxelMaps, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Float32 volume of the max-combined projection tails below lower walls (0 elsewhere)."""
    shape = maps.shape
    nz = shape[2]
    out = np.zeros(shape, dtype=np.float32)
    flat = out.reshape(-1)
    wall = np.flatnonzero(np.ascontiguousarray(maps.lower_wall).reshape(-1))  # k fastest: sorted per column
    if wall.size == 0:
        return out
    s, r_hat = signal_strength(np.asarray(maps.radius).reshape(-1)[wall],
                               np.asarray(maps.orientation).reshape(-1)[wall], p)
    length = tail_length_vox(r_hat, p, maps.voxel_size_um)
    k0 = wall % nz
    n_in = np.minimum(length, nz - 1 - k0)  # voxels of the tail inside the volume
    keep = n_in >= 1
    wall, s, r_hat, length, n_in = wall[keep], s[keep], r_hat[keep], length[keep], n_in[keep]
    if wall.size == 0:
        return out
    start = np.maximum(np.float32(p["tail_start_gain"]) * s * r_hat, np.float32(1e-12))
    cap = (np.float32(p["tail_cap_fraction"] * p["vessel_gain"]) * s).astype(np.float32)
    # geometric decay start -> end over `length` voxels: value(d) = start * q**d, d = 0 .. length-1
    log_q = np.where(length > 1, np.log(np.float32(p["tail_end_value"]) / start) / np.maximum(length - 1, 1), 0.0)
    log_q = log_q.astype(np.float32)
    log_start = np.log(start).astype(np.float32)
    noise_std = np.float32(p["tail_noise_std"])

    # rank of each wall within its column (0 = shallowest): walls of one rank never share a column,
    # so each rank can be scattered with plain fancy indexing and combined by np.maximum.
    col = wall // nz
    first = np.ones(wall.size, dtype=bool)
    first[1:] = col[1:] != col[:-1]
    pos = np.arange(wall.size)
    rank = pos - np.maximum.accumulate(np.where(first, pos, 0))
    order = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[order], np.arange(rank.max() + 2))
    for r in range(rank.max() + 1):
        members = order[bounds[r]:bounds[r + 1]]
        csum = np.cumsum(n_in[members])
        # split the rank into chunks of at most _CHUNK tail voxels
        cuts = np.searchsorted(csum, np.arange(_CHUNK, csum[-1], _CHUNK), side="right")
        for w in np.split(members, cuts):
            if w.size == 0:
                continue
            n_w = n_in[w]
            total = int(n_w.sum())
            # position d along each tail (0 = first voxel below the wall), float32 exact here
            d = np.arange(total, dtype=np.float32)
            d -= np.repeat((np.cumsum(n_w) - n_w).astype(np.float32), n_w)
            val = np.repeat(log_q[w], n_w)
            val *= d
            val += np.repeat(log_start[w], n_w)
            np.exp(val, out=val)
            if noise_std > 0:
                noise = rng.standard_normal(total, dtype=np.float32)
                noise *= noise_std
                val += noise
            np.minimum(val, np.repeat(cap[w], n_w), out=val)
            np.maximum(val, 0.0, out=val)
            idx = np.repeat(wall[w] + 1, n_w)
            idx += d.astype(idx.dtype)
            if r > 0:  # rank 0 writes into zeros: no need to combine
                np.maximum(val, flat[idx], out=val)
            flat[idx] = val
    return out
