"""Job arrays: each task renders one shard of a dataset folder (``generate_dataset(..., shard=(i, n))``)
and records it in ``DIR/shards/shard_I_of_N.json``; ``finalize_dataset`` checks them all. The shard
files, and which shard should have produced a missing sample."""
from __future__ import annotations

import json
from pathlib import Path

from octasim import __version__
from octasim.errors import OctasimError
from octasim.synth.config import SynthConfig
from octasim.synth.manifest import DatasetError
from octasim.synth.sample import sample_id

#: folder of the per-shard files of a job array
SHARDS_DIR = "shards"
SHARD_FORMAT = "octasim-dataset-shard"


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``(i, n_shards)`` as ints with 0 <= i < n_shards; else OctasimError."""
    try:
        i, count = (int(v) for v in shard)
    except (TypeError, ValueError) as exc:
        raise OctasimError(f"shard must be (I, N), two integers, got {shard!r}") from exc
    if count < 1 or not 0 <= i < count:
        raise OctasimError(f"shard {i}/{count}: expected I/N with N >= 1 and 0 <= I < N "
                           "(SLURM: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-N-1)")
    return i, count


def shard_path(out_dir: Path, shard: tuple[int, int]) -> Path:
    """``out_dir/shards/shard_I_of_N.json``."""
    return out_dir / SHARDS_DIR / f"shard_{shard[0]}_of_{shard[1]}.json"


def shard_files(out_dir: Path) -> list[tuple[Path, dict]]:
    """(path, content) of the shard files in ``out_dir/shards`` (one per shard that has started)."""
    folder = out_dir / SHARDS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("shard_*_of_*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: unreadable shard file ({exc}); delete it and run that shard again") from exc
        if not isinstance(data, dict) or data.get("format") != SHARD_FORMAT:
            raise DatasetError(f"{path}: not an octasim shard file; delete it")
        found.append((path, data))
    return found


def shard_record(config: SynthConfig, n: int, shard: tuple[int, int], complete: bool) -> dict:
    """The content of a shard file: the dataset's config, n, the shard and whether it finished."""
    return {"format": SHARD_FORMAT, "octasim_version": __version__, "config": config.to_dict(), "n": int(n),
            "shard": list(shard), "complete": bool(complete)}


def _index_list(indices: list[int], most: int = 40) -> str:
    """``1, 3, 5`` (the first ``most``, then how many more)."""
    text = ", ".join(str(i) for i in indices[:most])
    return text + (f" and {len(indices) - most} more" if len(indices) > most else "")


def missing_message(out_dir: Path, n: int, problems: dict[int, str]) -> str:
    """Which samples are missing or damaged, grouped by the shard(s) that should have produced them."""
    shards = {tuple(d.get("shard", ())): d for _, d in shard_files(out_dir)}
    counts = sorted({int(s[1]) for s in shards if len(s) == 2})
    groups: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for i in sorted(problems):
        groups.setdefault(tuple((i % c, c) for c in counts), []).append(i)
    lines = [f"{out_dir}: {len(problems)} of {n} samples are missing or damaged, so dataset.json was not written:"]
    for owners, indices in groups.items():
        if owners:
            states = []
            for owner in owners:
                data = shards.get(owner)
                state = ("never started" if data is None else
                         "finished, but its files were removed or damaged since" if data.get("complete") else
                         "started but did not finish (still running, or stopped)")
                states.append(f"shard {owner[0]}/{owner[1]} ({state})")
            who = " or ".join(states) + " should have produced"
        else:
            who = f"no shard has started (no shard file in {out_dir / SHARDS_DIR}); run --shard I/N first to produce"
        details = "; ".join(f"{sample_id(i)}: {problems[i]}" for i in indices[:3])
        lines.append(f"  {who} indices {_index_list(indices)} ({details}{'; ...' if len(indices) > 3 else ''})")
    lines.append("Run those shards again with the same arguments (finished samples are skipped), then --finalize.")
    return "\n".join(lines)
