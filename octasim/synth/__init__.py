"""The synthetic-data stage: one sample = vessel patch -> voxel maps -> simulated image with its exact
label; datasets of them on disk.

A dataset is fully defined by a :class:`SynthConfig` (profile, volume shape, voxel size, vessel
source, seed). Sample ``index`` is a deterministic function of ``(config, index)`` alone, so samples
can be rendered in any order, by any number of worker processes, on disk (:func:`generate_dataset`)
or on the fly during training (:func:`render_sample`), with identical results.

Modules: :mod:`~octasim.synth.config` (SynthConfig, per-sample geometry), :mod:`~octasim.synth.sources`
(patch sources), :mod:`~octasim.synth.sample` (one sample), :mod:`~octasim.synth.folder` (dataset
folders: generate, resume, executors), :mod:`~octasim.synth.shards` (job arrays),
:mod:`~octasim.synth.manifest` (dataset.json: writer and the one reader).
"""
from octasim.extract import NoPatchError
from octasim.synth.config import Geometry, SynthConfig, profile_display_name, resolve_profile
from octasim.synth.folder import ClusterError, MissingSamplesError, finalize_dataset, generate_dataset
from octasim.synth.manifest import FORMAT, FORMAT_VERSION, DatasetError, load_dataset
from octasim.synth.sample import Sample, render_sample, sample_id, sample_seed
from octasim.synth.shards import SHARDS_DIR, check_shard
from octasim.synth.sources import GivenPatches, GraphSource, NoPatch, ProceduralSource, patch_source_for

__all__ = ["SynthConfig", "Geometry", "profile_display_name", "resolve_profile", "render_sample", "Sample", "sample_seed",
           "sample_id", "generate_dataset", "finalize_dataset", "load_dataset", "check_shard", "SHARDS_DIR",
           "FORMAT", "FORMAT_VERSION", "DatasetError", "MissingSamplesError", "ClusterError", "NoPatchError",
           "NoPatch", "GraphSource", "ProceduralSource", "GivenPatches", "patch_source_for"]
