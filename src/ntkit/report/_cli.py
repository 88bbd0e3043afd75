"""`ntkit report`: command-line options, and the run that writes the report."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of `ntkit report` on ``parser``."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="TOML file describing your data and network (see docs/report.md); default: the built-in example",
    )
    parser.add_argument(
        "--out", metavar="DIR", default="ntkit-report", help="output folder (default: ./ntkit-report)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="the same sections at smaller sizes (under 30 s)"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="where to compute (default: cpu)"
    )
    parser.add_argument("--seed", type=int, default=None, metavar="N", help="random seed (default: 0)")


def run(args: argparse.Namespace) -> int:
    """Write the report; returns 0. Bad configurations raise ValueError with a one-line message."""
    from ._pipeline import generate_report

    page = generate_report(args.config, args.out, quick=args.quick, device=args.device, seed=args.seed)
    print(f"report written to {page}", file=sys.stderr)
    return 0
