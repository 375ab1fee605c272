"""``dataset.json``: the manifest of a dataset folder; its writer and the one (strict) reader, used by
:mod:`octasim.synth.folder` and by training (``octasim.train.data``)."""
from __future__ import annotations

import json
from pathlib import Path

from octasim import __version__
from octasim.errors import OctasimError
from octasim.synth.config import SynthConfig

FORMAT = "octasim-dataset"
FORMAT_VERSION = 1
MANIFEST = "dataset.json"
#: keys every manifest holds, and every sample of it
MANIFEST_KEYS = ("config", "voxel_size_um", "shape", "n", "samples")
SAMPLE_KEYS = ("id", "image", "label", "seed")


class DatasetError(OctasimError):
    """A dataset folder or manifest (or other training data) cannot be used; the message names the
    file or folder and the problem. ``octasim.train.data.DataError`` is this class."""


def manifest(config: SynthConfig, n: int, samples: list[dict], complete: bool) -> dict:
    """The content of dataset.json: the resolved config, the nominal voxel size (um), shape, n and
    the sample records (all ``n`` when ``complete``)."""
    return {"format": FORMAT, "version": FORMAT_VERSION, "octasim_version": __version__,
            "config": config.to_dict(), "voxel_size_um": config.nominal_voxel_size_um,
            "shape": list(config.shape), "n": int(n), "complete": bool(complete), "samples": samples}


def load_dataset(path: str | Path) -> dict:
    """Read and check ``dataset.json`` of a dataset folder (or the file itself).

    Returns the manifest with ``root`` (the folder, absolute) added; sample paths stay relative to
    it. Raises DatasetError naming the file for a missing folder or manifest, a malformed one (not
    JSON, another format or version, missing keys), an unfinished run, no samples, or missing
    sample files.
    """
    path = Path(path)
    folder = path.is_dir() or not path.suffix
    if folder and not path.is_dir():
        raise DatasetError(f"{path}: no such dataset folder")
    manifest_path = path / MANIFEST if folder else path
    if not manifest_path.is_file():
        raise DatasetError(f"{manifest_path}: no such dataset manifest (expected a folder written by "
                           "`octasim generate`)")
    try:
        data = json.loads(manifest_path.read_text())
    except OSError as exc:
        raise DatasetError(f"{manifest_path}: unreadable dataset manifest ({exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{manifest_path}: unreadable dataset manifest, not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"{manifest_path}: not an octasim dataset manifest (format {data.get('format')!r})"
                           if isinstance(data, dict) else f"{manifest_path}: not an octasim dataset manifest")
    if data.get("version") != FORMAT_VERSION:
        raise DatasetError(f"{manifest_path}: dataset format version {data.get('version')!r} "
                           f"is not supported (expected {FORMAT_VERSION})")
    for key in MANIFEST_KEYS:
        if key not in data:
            raise DatasetError(f"{manifest_path}: the manifest lacks the key {key!r}")
    samples = data["samples"]
    if not isinstance(samples, list):
        raise DatasetError(f"{manifest_path}: 'samples' must be a list of sample records")
    if not data.get("complete", True) or len(samples) != data["n"]:
        raise DatasetError(f"{manifest_path}: the dataset is unfinished ({len(samples)} of {data['n']} "
                           "samples listed); run the same `octasim generate` command again to complete it")
    if not samples:
        raise DatasetError(f"{manifest_path}: the dataset has no samples")
    root = manifest_path.parent.resolve()
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            raise DatasetError(f"{manifest_path}: sample {i} is not a record")
        for key in SAMPLE_KEYS:
            if key not in s:
                raise DatasetError(f"{manifest_path}: sample {s.get('id', i)!r} lacks {key!r}")
        for key in ("image", "label"):
            if not (root / s[key]).is_file():
                raise DatasetError(f"{manifest_path}: sample {s['id']!r}: missing file {root / s[key]}")
    data["root"] = str(root)
    return data
