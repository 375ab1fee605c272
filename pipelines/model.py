"""``octasim model``: list and describe the bundled models; export a training checkpoint as one."""
from __future__ import annotations

import argparse

from octasim.models import DEFAULT_MODEL

DESCRIPTION = f"""\
Bundled models are trained checkpoints shipped in data/models/ (float16 weights, a model card);
`octasim segment` uses {DEFAULT_MODEL} unless --model says otherwise.

  octasim model info                       # every bundled model: training summary, grid, views
  octasim model info runs/a/best.pt        # the same for any checkpoint
  octasim model export runs/a/best.pt --out data/models/NAME.pt --command "octasim train ..."
  octasim model export runs/a/last.pt --out data/models/NAME.pt --command "..." \
      --coarse-views octasim-multiscale-v3    # another network segments the coarser views
"""


def register(subparsers) -> None:
    from .cli import HelpFormatter

    p = subparsers.add_parser("model", help="describe bundled models; export a checkpoint as one",
                              description=DESCRIPTION, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="training summary of bundled models or checkpoints",
                          formatter_class=HelpFormatter)
    info.add_argument("models", nargs="*", metavar="MODEL",
                      help="bundled model names or checkpoint files (default: every bundled model)")
    exp = sub.add_parser("export", help="write a bundled model (float16, inference keys, model card)",
                         formatter_class=HelpFormatter)
    exp.add_argument("checkpoint", help="training checkpoint (runs/NAME/best.pt or last.pt)")
    exp.add_argument("--out", required=True, help="bundled model file to write (data/models/NAME.pt)")
    exp.add_argument("--command", required=True, dest="training_command",  # not `command`: the CLI's subcommand
                     help="the exact command that trained the checkpoint (recorded in the model card)")
    exp.add_argument("--coarse-views", metavar="MODEL", default=None,
                     help="a bundled model's name or a checkpoint whose network segments the coarser views "
                          "of the image pyramid (trained on the same grid and input); default: the "
                          "checkpoint's own network segments every view")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from octasim.model import load_checkpoint
    from octasim.models import bundled_models, export_model, model_summary, resolve_model

    if args.action == "export":
        out = export_model(args.checkpoint, args.out, command=args.training_command, coarse_views=args.coarse_views)
        size_mb = out.stat().st_size / 2 ** 20
        print(f"wrote {out} ({size_mb:.1f} MB)")
        print(model_summary(load_checkpoint(out), str(out)))
        return 0
    names = args.models or bundled_models()
    if not names:
        print("no bundled models in data/models/")
        return 1
    for name in names:
        path = resolve_model(name)
        state = load_checkpoint(path)
        print(model_summary(state, str(path)))
        card = state.get("model_card") or {}
        if card.get("training_command"):
            which = "finest view " if state.get("coarse_views") is not None else ""
            print(f"  {which}trained with: {card['training_command']}")
            print(f"  hardware: {card.get('hardware', '?')}")
    return 0
