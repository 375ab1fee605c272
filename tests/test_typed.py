"""octasim.typed.from_mapping: dataclasses built from mappings by their type hints, errors naming file and key."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from octasim.errors import OctasimError
from octasim.typed import from_mapping


@dataclass
class Part:
    SHORTHAND: ClassVar[str] = "name"

    name: str = "a"
    size: float = 1.0


@dataclass
class Whole:
    parts: list[Part] = field(default_factory=list)
    count: int | None = None
    options: dict[str, Any] = field(default_factory=dict, metadata={"keys": lambda: {"x", "y"}})


def test_builds_nested_dataclasses_with_the_lossless_conversions():
    w = from_mapping(Whole, {"parts": ["b", {"name": "c", "size": "2e-1"}], "count": 3.0, "options": {"x": 1}})
    assert w == Whole([Part("b"), Part("c", 0.2)], 3, {"x": 1})
    assert isinstance(w.count, int) and from_mapping(Whole, None) == Whole()


@pytest.mark.parametrize("data, message", [
    ({"cuont": 1}, "f.yaml: unknown key 'cuont' (known: count, options, parts)"),
    ({"parts": [{"nme": "b"}]}, "f.yaml: unknown key 'parts[0].nme' (known: name, size)"),
    ({"options": {"z": 1}}, "f.yaml: unknown key 'options.z' (known: x, y)"),
    ({"count": 2.5}, "f.yaml: count: expected an integer or null, got 2.5"),
    ({"count": True}, "f.yaml: count: expected an integer or null, got True"),
    ({"parts": [3]}, "f.yaml: parts[0]: expected a mapping of keys, got 3"),
    ({"parts": "b"}, "f.yaml: parts: expected a list of mappings, got 'b'"),
])
def test_errors_name_the_file_and_the_key(data, message):
    with pytest.raises(OctasimError) as info:
        from_mapping(Whole, data, "f.yaml")
    assert str(info.value) == message


def test_training_configs_check_synth_option_values_with_the_simulator():
    from octasim.train.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"^my.yaml: on_the_fly.synth_options: .*voxel_size_um"):
        config_from_dict({"on_the_fly": {"synth_options": {"voxel_size_um": [2.0, 1.0]}}}, "my.yaml")
    with pytest.raises(ConfigError, match=r"^my.yaml: unknown key 'on_the_fly.synth_options.seed'"):
        config_from_dict({"on_the_fly": {"synth_options": {"seed": 1}}}, "my.yaml")  # the renderer sets it
