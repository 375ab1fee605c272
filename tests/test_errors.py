"""One exception hierarchy: every user-facing error class is an OctasimError, printed by the CLI without a traceback."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import octasim
from octasim.errors import OctasimError
from octasim.cli import main

PACKAGE = Path(octasim.__file__).resolve().parent
ROOT = PACKAGE.parent

#: the error classes the issue names (module, class); any other *Error class found in octasim is checked too
KNOWN = {("octasim.graph", "GraphError"), ("octasim.graph_io", "GraphFileNotFoundError"),
         ("octasim.nifti", "VolumeError"), ("octasim.model", "CheckpointError"),
         ("octasim.train.config", "ConfigError"),
         ("octasim.train.trainer", "TrainError"), ("octasim.preprocess", "PreprocessError"),
         ("octasim.synth.manifest", "DatasetError"), ("octasim.extract", "NoPatchError"),
         ("octasim.profiles", "ProfileError")}


def defined_error_classes() -> set[tuple[str, str]]:
    """(module, class) of every top-level class named *Error defined in the octasim package."""
    found = set()
    for f in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(f.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                found.add((module, node.name))
    return found


def test_every_error_class_is_an_octasim_error():
    found = defined_error_classes()
    assert KNOWN <= found
    for module, name in sorted(found):
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, OctasimError), f"{module}.{name} is not an OctasimError"
        assert issubclass(cls, ValueError), f"{module}.{name}: callers catching ValueError would miss it"
    from octasim.graph_io import GraphFileNotFoundError

    assert issubclass(GraphFileNotFoundError, FileNotFoundError)  # OSError base kept


def test_no_patch_error_is_defined_once():
    import octasim.extract
    import octasim.synth

    assert [m for m, n in defined_error_classes() if n == "NoPatchError"] == ["octasim.extract"]
    assert octasim.synth.NoPatchError is octasim.extract.NoPatchError


def test_one_class_for_unusable_data():
    """Training's DataError is the dataset stage's DatasetError (one class, one strict manifest reader)."""
    from octasim.synth import DatasetError
    from octasim.train.data import DataError

    assert DataError is DatasetError
    assert [m for m, n in defined_error_classes() if n in ("DataError", "DatasetError")] == ["octasim.synth.manifest"]


def test_cli_prints_an_octasim_error_without_traceback(monkeypatch, capsys):
    import octasim.cli.graph

    def fail(args):
        raise OctasimError(f"{args.graph}: the problem")

    monkeypatch.setattr(octasim.cli.graph, "run_info", fail)
    assert main(["graph", "info", "some.npz"]) == 2
    err = capsys.readouterr().err
    assert err == "octasim graph: error: some.npz: the problem\n"
    with pytest.raises(OctasimError):  # --debug shows the traceback
        main(["--debug", "graph", "info", "some.npz"])


def test_cli_process_exit_code_and_message_for_a_corrupt_file(tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"PK\x03\x04 not an archive")
    proc = subprocess.run([sys.executable, "-m", "octasim.cli", "graph", "info", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("octasim graph: error: ") and "broken.npz" in proc.stderr
    assert "Traceback" not in proc.stderr
