"""The `ntkit` command: `ntkit demo`, `ntkit report` and `ntkit reproduce`."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

from .tiling import MemoryBudgetError

# subcommand -> (module with add_arguments(parser) and run(args) -> int, one-line help)
_COMMANDS = {
    "demo": ("ntkit._demo", "finite-width NTKs against the infinite-width NTK, by width (under a minute)"),
    "report": (
        "ntkit.report._cli",
        "the NTK theory end to end on real training, as an HTML report with figures",
    ),
    "reproduce": (
        "ntkit.reproduce._cli",
        "published NTK experiments, one command each, checked against the papers (--list names them)",
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntkit",
        description="Neural Tangent Kernels in PyTorch: kernels, dynamics, analyses and reports.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ntkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ntkit` command; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    start = time.perf_counter()
    try:
        if getattr(args, "out", None) is not None:
            # every command with --out: a file, or a folder that cannot be written, stops it before any work
            from ._artifacts import check_out_folder

            check_out_folder(args.out)
        status = importlib.import_module(args._module).run(args)
    except KeyboardInterrupt:
        print(f"\nntkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, MemoryBudgetError) as err:
        # Bad input, or a file system that refuses a file: one clear line, no traceback.
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"ntkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
