import argparse

import pytest

from octasim.cli.cli import SUBCOMMANDS, build_parser, main


def _subparsers(parser: argparse.ArgumentParser, prefix=()):
    """Yield (command path, parser) for every (nested) subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def test_every_subcommand_is_registered():
    registered = {path[0] for path, _ in _subparsers(build_parser())}
    assert set(SUBCOMMANDS) <= registered


def test_every_option_of_every_command_is_explained():
    for path, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and len(action.help) > 8, f"octasim {' '.join(path)} {action.dest}: no help text"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_exits_cleanly(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: octasim " + command in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 1
    assert "COMMAND" in capsys.readouterr().out


def test_options_in_micrometres_say_so():
    import re

    for path, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if action.dest.endswith("_um") or "voxel_size" in action.dest or action.dest.endswith("_um3"):
                assert re.search(r"\bum(\^3|3)?\b", action.help or ""), \
                    f"octasim {' '.join(path)} --{action.dest}: help does not give the unit (um)"
