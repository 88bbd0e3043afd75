"""`ntkit reproduce NAME [--quick] [--out DIR] [--device ...]` and `ntkit reproduce --list`."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of `ntkit reproduce` on ``parser``."""
    parser.add_argument("name", nargs="?", metavar="NAME", help="the experiment (see --list)")
    parser.add_argument("--list", action="store_true", help="name the experiments with their sources")
    parser.add_argument("--quick", action="store_true", help="the same experiment at small sizes (seconds)")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="output folder (default: ./ntkit-reproduce/NAME)"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="where to compute (default: cpu)"
    )


def run(args: argparse.Namespace) -> int:
    """List the experiments, or run one; returns 0 when every check held, 1 when one failed."""
    from ._runner import EXPERIMENTS, experiment, run_experiment

    if args.list:
        for name in EXPERIMENTS:
            module = experiment(name)
            print(f"{name}\n    {module.TITLE}\n    source: {module.SOURCE}\n    checks: {module.CHECKS}")
        return 0
    if args.name is None:
        raise ValueError("name an experiment (ntkit reproduce --list shows them)")
    page = run_experiment(args.name, args.out, quick=args.quick, device=args.device)
    print(f"page written to {page}", file=sys.stderr)
    import json

    metrics = json.loads((page.parent / "metrics.json").read_text(encoding="utf-8"))
    return 0 if metrics["all_checks_held"] else 1
