"""Dataset folders: generate (in this process, a process pool or a dask cluster), resume, job-array
shards and their finalization.

Folder layout written by :func:`generate_dataset`::

    DIR/dataset.json            manifest (:mod:`octasim.synth.manifest`), written atomically
    DIR/images/<id>.nii.gz      float32 image in [0, 1], affine in mm (the sample's drawn voxel size)
    DIR/labels/<id>.nii.gz      uint8 binary vessel label
    DIR/qc/<id>.png             orthogonal slices + depth projection, image and label
    DIR/records/<id>.json       per-sample record, written last: marks the sample as finished
    DIR/contact_sheet.png       depth projections of the samples
    DIR/shards/shard_I_of_N.json  while a job array fills the folder (``shard=``): one per shard
                                that has started (config, n, complete); removed by :func:`finalize_dataset`

Samples render in this process, in a process pool (``workers``), or as one task each on a
dask.distributed cluster (``scheduler``); a job array's tasks each render one shard (``shard``)
and :func:`finalize_dataset` writes the shared files. The files are the same in every case.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from octasim.atomic import atomic_path
from octasim.errors import OctasimError
from octasim.synth.config import SynthConfig
from octasim.synth.manifest import FORMAT, MANIFEST, DatasetError, manifest
from octasim.synth.sample import render_sample, sample_id, sample_seed
from octasim.synth.shards import SHARDS_DIR, check_shard, missing_message, shard_files, shard_path, shard_record
from octasim.synth.sources import patch_source_for

#: the contact sheet shows at most this many samples (the first ones)
CONTACT_SHEET_MAX = 100
SUBDIRS = ("images", "labels", "qc", "records")
#: how often dask runs a sample's task again after an error (a lost worker's tasks are rerun anyway)
DASK_RETRIES = 2
#: seconds to wait for a dask scheduler to answer
SCHEDULER_TIMEOUT_S = 30


class MissingSamplesError(DatasetError):
    """``finalize_dataset``: samples are missing or damaged; ``indices`` lists them."""

    def __init__(self, message: str, indices: list[int]):
        super().__init__(message)
        self.indices = list(indices)


class ClusterError(OctasimError):
    """The dask scheduler cannot be reached, or its workers cannot see the output folder."""


def _sample_paths(out_dir: Path, sid: str) -> dict[str, Path]:
    return {"image": out_dir / "images" / f"{sid}.nii.gz", "label": out_dir / "labels" / f"{sid}.nii.gz",
            "qc": out_dir / "qc" / f"{sid}.png", "record": out_dir / "records" / f"{sid}.json"}


def _is_done(out_dir: Path, sid: str, qc: bool) -> bool:
    paths = _sample_paths(out_dir, sid)
    needed = ["record", "image", "label"] + (["qc"] if qc else [])
    return all(paths[k].is_file() for k in needed)


def _unreadable_file(out_dir: Path, sid: str) -> Path | None:
    """The first of a finished sample's record, image and label that cannot be read completely (a file
    truncated or damaged after it was written), else None. Decompresses every volume in full: the
    whole gzip stream (length and checksum) and as many voxels as the NIfTI header announces."""
    import gzip

    import nibabel as nib

    paths = _sample_paths(out_dir, sid)
    try:
        json.loads(paths["record"].read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return paths["record"]
    for key in ("image", "label"):
        try:
            image = nib.Nifti1Image.from_bytes(gzip.decompress(paths[key].read_bytes()))
            np.asarray(image.dataobj)
        except Exception:  # gzip, zlib and nibabel raise many types for a truncated or corrupt file
            return paths[key]
    return None


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def _make_sample(config_dict: dict, out_dir: str, index: int, qc: bool) -> tuple[int, dict, np.ndarray]:
    """Worker: render sample ``index``, write its files (record last); return (index, record, MIP)."""
    from octasim.nifti import affine_for_spacing, write_volume
    from octasim.qc import save_sample_qc

    config = SynthConfig.from_dict(config_dict)
    out = Path(out_dir)
    sample = render_sample(config, index)
    sid = sample.record["id"]
    paths = _sample_paths(out, sid)
    spacing = sample.record["voxel_size_um"]  # the drawn one, for a voxel-size range
    # octasim's one convention: depth k points inferior, voxel (0, 0, 0)'s centre at world 0
    affine = affine_for_spacing(spacing)
    write_volume(paths["image"], sample.image, affine=affine)
    write_volume(paths["label"], sample.label, affine=affine)
    if qc:
        src = sample.record["source"]
        title = (f"{sid}  seed {sample.record['seed']}  profile {config.profile_name}  "
                 f"source {Path(str(src.get('graph'))).name}  vessel fraction {sample.record['vessel_fraction']:.3f}")
        save_sample_qc(sample.image, sample.label, paths["qc"], title=title, spacing_um=spacing)
    record = dict(sample.record)
    record.update({"image": f"images/{sid}.nii.gz", "label": f"labels/{sid}.nii.gz",
                   "qc": f"qc/{sid}.png" if qc else None})
    _write_json(paths["record"], record)
    return index, record, sample.image.max(axis=2)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two plain-data trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(key)
            else:
                out.extend(_diff_keys(a[k], b[k], key))
        return out
    return [] if a == b else [prefix or "(root)"]


def _remove_stale_temps(out_dir: Path, ids: set[str] | None = None) -> None:
    """Delete temporary files an interrupted run left behind (``.<name>.tmp-<pid>...``); with ``ids``,
    only those of these samples (a shard must not delete the files other shards are writing)."""
    for sub in (out_dir, *(out_dir / s for s in SUBDIRS)):
        if sub.is_dir():
            for p in sub.iterdir():
                if p.name.startswith(".") and ".tmp-" in p.name and p.is_file():
                    if ids is None or p.name.split(".tmp-")[0][1:] in ids:
                        p.unlink(missing_ok=True)


def _check_folder(out_dir: Path, config: SynthConfig) -> None:
    """Refuse a folder that holds a different dataset (manifest or shard files) or unrelated files."""
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{manifest_path}: unreadable dataset manifest ({exc}); "
                               "choose another --out folder or delete this one") from exc
        if old.get("format") != FORMAT:
            raise DatasetError(f"{manifest_path}: not an octasim dataset manifest; choose another --out folder")
        diff = _diff_keys(old.get("config"), config.to_dict())
        if diff:
            raise DatasetError(
                f"{out_dir}: the folder holds a different dataset (config differs in: {', '.join(diff)}); "
                "choose another --out folder, or repeat the original settings to resume it")
    elif out_dir.exists() and any(p for p in out_dir.iterdir() if p.name not in (*SUBDIRS, SHARDS_DIR)):
        raise DatasetError(f"{out_dir}: the folder is not empty and holds no dataset.json; "
                           "choose a new or empty --out folder")
    for path, data in shard_files(out_dir):
        diff = _diff_keys(data.get("config"), config.to_dict())
        if diff:
            raise DatasetError(
                f"{path}: this shard of a job array rendered a different dataset into {out_dir} (config "
                f"differs in: {', '.join(diff)}); repeat the shards' settings, or choose another --out folder")


# --------------------------------------------------------------------------- executors
def _render(todo: list[int], cfg: dict, out: Path, qc: bool, workers: int,
            scheduler: str | None) -> Iterator[tuple[int, dict, np.ndarray]]:
    """Render samples ``todo`` with :func:`_make_sample`, yielding its results as they finish: in this
    process, in a pool of ``workers`` spawned processes, or on a dask cluster (``scheduler``)."""
    if not todo:
        return
    if scheduler is not None:
        yield from _render_on_dask(todo, cfg, out, qc, scheduler, workers)
    elif workers <= 1 or len(todo) <= 1:
        for i in todo:
            yield _make_sample(cfg, str(out), i, qc)
    else:
        with _single_threaded_env(), ProcessPoolExecutor(
                max_workers=min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            pending = {pool.submit(_make_sample, cfg, str(out), i, qc) for i in todo}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        yield fut.result()
            except BaseException:  # also GeneratorExit: the caller stopped early
                for fut in pending:
                    fut.cancel()
                raise


@contextmanager
def _dask_client(scheduler: str, workers: int) -> Iterator[Any]:
    """A ``distributed.Client`` of the scheduler at ``scheduler`` (an address such as
    ``tcp://host:8786``), or, for ``"local"``, of a new LocalCluster of ``workers`` processes with
    one thread each (closed afterwards)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ClusterError("--scheduler needs dask.distributed: pip install 'dask[distributed]'") from exc
    if scheduler == "local":
        with _single_threaded_env(), LocalCluster(n_workers=max(1, int(workers)), threads_per_worker=1,
                                                  processes=True, dashboard_address=None) as cluster, \
                Client(cluster, set_as_default=False) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"cannot reach the dask scheduler at {scheduler!r} ({exc}); start one "
                           "(`dask scheduler`, dask-jobqueue) and give its address, or use --scheduler local") from exc
    try:
        yield client
    finally:
        client.close()


def _dask_task(marker: str, config_dict: dict, out_dir: str, index: int, qc: bool) -> tuple[int, dict, np.ndarray]:
    """Dask task: :func:`_make_sample`, once this worker has shown that it sees the client's output
    folder (the ``marker`` file the client wrote there); else ClusterError."""
    if not os.path.exists(marker):
        import socket

        raise ClusterError(f"dask worker on {socket.gethostname()} cannot see {out_dir} (no {marker}): --out "
                           "must be a folder that the client and every worker see at the same path "
                           "(a shared filesystem)")
    return _make_sample(config_dict, out_dir, index, qc)


def _render_on_dask(todo: list[int], cfg: dict, out: Path, qc: bool, scheduler: str,
                    workers: int) -> Iterator[tuple[int, dict, np.ndarray]]:
    """One dask task per sample (retried ``DASK_RETRIES`` times on an error; a lost worker's tasks
    are run again elsewhere by the scheduler); yields results in the order they finish."""
    from distributed import KilledWorker, as_completed

    root = out.resolve()
    token = uuid.uuid4().hex[:12]
    marker = root / "records" / f".dask-{token}.tmp-{os.getpid()}"
    marker.write_text("octasim generate: dask workers check that they see this folder\n")
    try:
        with _dask_client(scheduler, workers) as client:
            futures = [client.submit(_dask_task, str(marker), cfg, str(root), i, qc, retries=DASK_RETRIES,
                                     key=f"octasim-{sample_id(i)}-{token}") for i in todo]
            try:
                for fut in as_completed(futures, loop=client.loop):
                    try:
                        result = fut.result()
                    except KilledWorker as exc:
                        raise ClusterError(f"dask: every worker that rendered {fut.key} died ({exc}); out of "
                                           "memory? give the workers more memory or use a smaller --shape") from exc
                    fut.release()
                    yield result
            finally:
                client.cancel([f for f in futures if not f.done()])
    finally:
        marker.unlink(missing_ok=True)


# --------------------------------------------------------------------------- dataset folders
def generate_dataset(config: SynthConfig, out_dir: str | Path, n: int, workers: int = 1,
                     progress: bool = True, qc: bool = True,
                     on_sample: Callable[[dict], None] | None = None,
                     on_broken: Callable[[str, Path], None] | None = None,
                     scheduler: str | None = None, shard: tuple[int, int] | None = None) -> Path:
    """Write ``n`` samples of ``config`` into ``out_dir``; return the path of ``dataset.json``.

    Resumes a folder holding the same dataset: finished samples, marked by their record file, are
    skipped once their record and volumes read completely; a sample with a truncated or damaged file
    is rendered again and ``on_broken(sample id, file)`` is called; files are written under temporary
    names and renamed. A folder holding a different dataset raises DatasetError naming the differing
    config keys. ``workers`` > 1 renders in that many processes (spawn); the files are identical for
    any number of workers.

    ``scheduler``: render on a dask.distributed cluster instead, one task per sample: a scheduler
    address (``tcp://host:8786``; the workers must see ``out_dir`` at the same path) or ``"local"``
    (a LocalCluster of ``workers`` processes, one thread each). A task is retried on an error, and
    a lost worker's samples are rendered elsewhere; the files are the same as from one process.

    ``shard=(i, n_shards)`` (one task of a job array): render only the samples whose index %
    n_shards == i, write their files and ``shards/shard_<i>_of_<n_shards>.json`` but no shared
    file, and return the shard file's path; :func:`finalize_dataset` writes dataset.json and the
    contact sheet once every shard is done. Shards may run at the same time.
    """
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    if shard is not None:
        shard = check_shard(shard)
    config = config.resolved()
    out = Path(out_dir)
    _check_folder(out, config)
    # fail early, before anything is written, with a clear message if the source yields no patch
    patch_source_for(config)
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    indices = list(range(n)) if shard is None else list(range(shard[0], n, shard[1]))
    ids = None if shard is None else {sample_id(i) for i in indices}
    _remove_stale_temps(out, ids)
    if shard is None:
        _write_json(out / MANIFEST, manifest(config, n, [], complete=False))
    else:  # per-shard file only: concurrent shards never write the same file
        _write_json(shard_path(out, shard), shard_record(config, n, shard, complete=False))

    records: dict[int, dict] = {}
    mips: dict[int, np.ndarray] = {}
    todo = []
    for i in indices:
        sid = sample_id(i)
        if not _is_done(out, sid, qc):
            todo.append(i)
        elif (broken := _unreadable_file(out, sid)) is not None:
            _sample_paths(out, sid)["record"].unlink()  # no longer marked finished until rendered again
            if on_broken is not None:
                on_broken(sid, broken)
            todo.append(i)
        else:
            records[i] = json.loads(_sample_paths(out, sid)["record"].read_text())

    from tqdm import tqdm

    bar = tqdm(total=len(indices), initial=len(indices) - len(todo), unit="sample",
               desc="generate" if shard is None else f"shard {shard[0]}/{shard[1]}",
               disable=None if progress else True)
    cfg = config.to_dict()

    def done(result):
        i, rec, mip = result
        records[i] = rec
        mips[i] = mip
        bar.update(1)
        if on_sample is not None:
            on_sample(rec)

    try:
        with closing(_render(todo, cfg, out, qc, workers, scheduler)) as results:
            for result in results:
                done(result)
    finally:
        bar.close()

    _remove_stale_temps(out, ids)  # e.g. of a worker lost mid-sample
    if shard is not None:
        _write_json(shard_path(out, shard), shard_record(config, n, shard, complete=True))
        return shard_path(out, shard)
    return _write_final(out, config, n, qc, records, mips)


def finalize_dataset(config: SynthConfig, out_dir: str | Path, n: int, qc: bool = True,
                     progress: bool = True) -> Path:
    """After the shards of a job array (``generate_dataset(..., shard=...)``): check that each of
    the ``n`` samples has its record, image, label (and QC picture with ``qc``), that they read
    completely and belong to ``config``; then write the contact sheet and dataset.json. Return the
    manifest's path. Missing or damaged samples raise MissingSamplesError naming their indices and
    the shard that should have produced them; nothing is written then."""
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    config = config.resolved()
    out = Path(out_dir)
    if not out.is_dir():
        raise DatasetError(f"{out}: no such dataset folder; run the shards (--shard I/N) before --finalize")
    _check_folder(out, config)
    for path, data in shard_files(out):
        if data.get("n") != n:
            raise DatasetError(f"{path}: the shards rendered --n {data.get('n')}, --finalize got --n {n}; "
                               "give --finalize the shards' arguments (or delete the stale shard file)")
    from tqdm import tqdm

    records: dict[int, dict] = {}
    problems: dict[int, str] = {}
    needed = ["record", "image", "label"] + (["qc"] if qc else [])
    for i in tqdm(range(n), desc="check", unit="sample", disable=None if progress else True):
        sid = sample_id(i)
        paths = _sample_paths(out, sid)
        missing = [paths[k] for k in needed if not paths[k].is_file()]
        if missing:
            problems[i] = "missing " + ", ".join(str(p.relative_to(out)) for p in missing)
        elif (broken := _unreadable_file(out, sid)) is not None:
            problems[i] = f"{broken.relative_to(out)} cannot be read completely"
        else:
            rec = json.loads(paths["record"].read_text())
            if rec.get("id") != sid or rec.get("seed") != sample_seed(config, i):
                problems[i] = f"{paths['record'].relative_to(out)} belongs to another dataset (seed {rec.get('seed')})"
            else:
                records[i] = rec
    if problems:
        raise MissingSamplesError(missing_message(out, n, problems), sorted(problems))
    _remove_stale_temps(out)
    return _write_final(out, config, n, qc, records, {})


def _write_final(out: Path, config: SynthConfig, n: int, qc: bool, records: dict[int, dict],
                 mips: dict[int, np.ndarray]) -> Path:
    """The shared files of a finished dataset: contact sheet (``qc``; depth projections from
    ``mips`` or read from the images) and the complete dataset.json; shard files are removed."""
    from octasim.qc import save_contact_sheet

    samples = [records[i] for i in range(n)]
    if qc:
        shown = list(range(min(n, CONTACT_SHEET_MAX)))
        tiles = []
        for i in shown:
            mip = mips.get(i)
            if mip is None:
                from octasim.nifti import read_volume

                mip = read_volume(out / samples[i]["image"]).data.max(axis=2)
            tiles.append(mip[..., None])
        save_contact_sheet(tiles, [sample_id(i) for i in shown], out / "contact_sheet.png")
    manifest_path = out / MANIFEST
    _write_json(manifest_path, manifest(config, n, samples, complete=True))
    for path, _ in shard_files(out):
        path.unlink(missing_ok=True)
    if (out / SHARDS_DIR).is_dir() and not any((out / SHARDS_DIR).iterdir()):
        (out / SHARDS_DIR).rmdir()
    return manifest_path


def exit_with_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """Worker initializer: end this process as soon as its parent is gone (e.g. killed with SIGKILL,
    which gives the pool no chance to stop its workers), instead of rendering samples for nobody."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class _single_threaded_env:
    """Context manager: one BLAS/OpenMP thread per worker process (spawned children inherit it)."""

    VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.VARS}
        for k in self.VARS:
            os.environ.setdefault(k, "1")
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return False
