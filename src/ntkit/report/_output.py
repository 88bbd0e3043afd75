"""The output folder of `ntkit report` (and of the other commands with --out): checked before any work."""

from __future__ import annotations

import os
from pathlib import Path

from .config import ConfigError

__all__ = ["check_out_folder"]


def check_out_folder(out: str | os.PathLike, option: str = "--out") -> Path:
    """``out`` as a Path, once it is known that a folder can be made or written there; creates nothing.

    Raises:
        ConfigError: one line naming ``option`` when ``out`` is a file, lies inside a file, or its nearest
            existing folder is not writable.
    """
    directory = Path(out).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{option} {out}: is a file, not a folder; name a folder (it is created if needed)")
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {out}: {existing} is a file, so no folder can be made inside it")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "the folder" if existing == directory else f"{existing}, where it would be made,"
        raise ConfigError(f"{option} {out}: {where} is not writable; choose a folder you can write to")
    return directory
