"""One synthetic sample: patch -> voxel maps -> simulated image, with its exact label and record."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np

from octasim.synth.config import SynthConfig, plain
from octasim.synth.sources import PatchSource, as_patch_source

if TYPE_CHECKING:
    from octasim.extract import Patch


@dataclass
class Sample:
    """One synthetic sample: image float32 in [0, 1], label uint8 {0, 1}, and its record."""

    image: np.ndarray
    label: np.ndarray
    record: dict


def sample_seed(config: SynthConfig, index: int) -> int:
    """The seed of sample ``index`` (a 32-bit integer derived from (config.seed, index))."""
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    return int(np.random.SeedSequence([config.seed, int(index)]).generate_state(1, dtype=np.uint32)[0])


def sample_id(index: int) -> str:
    """Zero-padded sample id, e.g. ``sample_0007``."""
    return f"sample_{index:04d}"


def render_sample(config: SynthConfig, index: int,
                  patch_source: PatchSource | Sequence[Patch] | None = None) -> Sample:
    """Render sample ``index`` of the dataset ``config`` (deterministic in (config, index)).

    ``patch_source``: a source (``draw(rng, geometry) -> (patch, record)``, see
    :mod:`octasim.synth.sources`) or a list of ``Patch``; default: the config's graph file (patches
    extracted once per process) or a fresh procedural cortex block. The profile's random parameters
    are sampled per sample and recorded.

    Geometry (``config.voxel_size_um`` and ``config.depth_offset_um``, each fixed or a range) is
    drawn from a stream of its own and recorded as ``voxel_size_um`` / ``depth_offset_um``; the
    sources cut the window of the drawn FOV at the drawn offset. With a fixed voxel size and
    offset 0 the result is exactly that of the reference rule.
    """
    from octasim.profiles import sample_parameters
    from octasim.simulate import simulate
    from octasim.simulate.acquisition import factors, label_on_scanner_grid
    from octasim.voxelize import voxelize

    config = config.resolved()
    seed = sample_seed(config, index)
    # spawn(4)[:3] == spawn(3): the geometry stream leaves the reference streams unchanged
    patch_ss, param_ss, sim_ss, geo_ss = np.random.SeedSequence(seed).spawn(4)
    geometry = config.draw_geometry(np.random.default_rng(geo_ss))
    source = as_patch_source(patch_source, config)
    patch, source_record = source.draw(np.random.default_rng(patch_ss), geometry)
    params = plain(sample_parameters(config.profile, np.random.default_rng(param_ss)))
    vs, cut = geometry.voxel_size_um, config.label_min_occupancy
    maps = voxelize(patch.graph, config.shape, vs, occupancy=config.occupancy or cut is not None)
    maps.depth_origin_um = float(geometry.depth_offset_um)  # the window lies this far below the surface start
    label = np.asarray(maps.label) > 0
    if cut is not None:
        label |= np.asarray(maps.occupancy) >= np.float32(cut)
        if not config.occupancy:
            maps = replace(maps, occupancy=None)
    image = simulate(maps, params, np.random.default_rng(sim_ss))
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if config.label_acquisition and params.get("acquisition"):
        label = label_on_scanner_grid(label, factors(params, vs))
    label = label.astype(np.uint8)
    pial = geometry.pial_radius_min_um
    record = {"id": sample_id(index), "index": int(index), "seed": seed, "source": plain(source_record),
              "profile": config.profile_name, "params": params,
              "voxel_size_um": float(vs), "depth_offset_um": float(geometry.depth_offset_um),
              **({} if pial is None else {"pial_radius_min_um": float(pial)}),
              "vessel_fraction": float(label.mean())}
    return Sample(image=image, label=label, record=record)
