"""The distribution installs one top-level import name, ``octasim``; the folder pipelines/ is ``octasim.cli``."""
from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _options() -> configparser.SectionProxy:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg["options"]


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_every_package_folder_is_listed_and_nothing_else_is_top_level():
    """setup.cfg lists the packages by hand (package_dir maps pipelines/ to octasim.cli): a new subpackage
    of octasim/ that is not listed would be left out of the wheel."""
    packages = set(_lines(_options()["packages"]))
    mapping = dict(line.replace(" ", "").split("=") for line in _lines(_options()["package_dir"]))
    assert mapping == {"octasim.cli": "pipelines"}
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "octasim").rglob("__init__.py")}
    assert packages == found | {"octasim.cli"}
    assert {name.split(".")[0] for name in packages} == {"octasim"}


def test_cli_is_imported_under_the_package_name():
    import octasim.cli
    from octasim.cli import cli, graph

    assert Path(octasim.cli.__file__).parent == ROOT / "pipelines"
    assert graph.__name__ == "octasim.cli.graph" and cli.main is octasim.cli.main
