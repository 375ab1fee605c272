"""Voxelizer: vessel graph patch -> label, radius, orientation and lower-wall maps on a voxel grid."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from octasim.graph import VesselGraph


@dataclass
class VoxelMaps:
    """Per-voxel maps of one patch, arrays of shape (X, Y, Z) with depth along the third axis.

    label:       uint8, 1 inside a vessel.
    radius:      float32, radius (um) of the vessel occupying the voxel, 0 outside.
    orientation: float32, orientation value a of that vessel (1 lateral, 0 diving), 0 outside.
    lower_wall:  bool, vessel voxels whose next voxel in depth (k + 1) is not vessel: tails start here.
    occupancy:   float32 fraction of the voxel inside a vessel (partial volume), or None.
    voxel_size_um: edge length of the (isotropic) voxels, um.
    """

    label: np.ndarray
    radius: np.ndarray
    orientation: np.ndarray
    lower_wall: np.ndarray
    occupancy: np.ndarray | None
    voxel_size_um: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.label.shape)


def voxelize(graph: VesselGraph, shape: tuple[int, int, int], voxel_size_um: float,
             occupancy: bool = False) -> VoxelMaps:
    """Rasterize ``graph`` (um, patch origin at 0) into a grid; voxel (i, j, k) has its centre at
    ((i + 0.5), (j + 0.5), (k + 0.5)) * voxel_size_um in graph coordinates (x, y, z)."""
    raise NotImplementedError  # being written
