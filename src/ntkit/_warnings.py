"""Warnings at the public boundary: old spellings kept for one release, and warnings that point at user code.

`renamed_keywords` keeps a renamed keyword argument working: the old name is passed on as the new one, with a
DeprecationWarning naming the new one, attributed to the line that used the old name (so a project that runs
its tests with ``-W error::DeprecationWarning:ntkit`` finds its own stale call sites). `deprecated_alias` does
the same for a renamed attribute, and `moved_attribute` for a name that moved to another module.
`external_stacklevel` attributes a warning about the user's data to the first frame outside ntkit, however
many ntkit frames (wrappers included) sit in between.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_REMOVAL = "will be removed in the next release"

F = TypeVar("F", bound=Callable[..., Any])
Converter = Callable[[Any], Any]


def external_stacklevel() -> int:
    """The `stacklevel` for a `warnings.warn` in the calling function that names the first frame outside ntkit."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def renamed_keywords(**renames: str | tuple[str, Converter]) -> Callable[[F], F]:
    """Decorator: each keyword `old=new` (or `old=(new, convert)`) still works, as `new=convert(value)`.

    A call that passes both the old and the new name is a TypeError, as for any duplicated argument. The
    warning names the function, the old and the new spelling (with the converted value when it changes form,
    e.g. ``steps='discrete'`` -> ``discrete=True``).
    """

    def decorate(function: F) -> F:
        where = function.__qualname__.replace(".__init__", "")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, spec in renames.items():
                if old not in kwargs:
                    continue
                new, convert = (spec, None) if isinstance(spec, str) else spec
                if new in kwargs:
                    raise TypeError(f"{where}() got both {old!r} (its deprecated name) and {new!r}")
                value = kwargs.pop(old)
                if convert is None:
                    hint = f"use {new}= instead"
                else:
                    value = convert(value)
                    hint = f"use {new}={value!r} instead"
                warnings.warn(
                    f"{where}(): the keyword {old!r} is deprecated and {_REMOVAL}; {hint}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = value
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _discrete_from_steps(value: Any) -> bool:
    from ._validation import check_choice

    return check_choice(value, "steps", ("continuous", "discrete")) == "discrete"


def _steps_from_discrete(value: bool) -> str:
    return "discrete" if value else "continuous"


STEPS_TO_DISCRETE = ("discrete", _discrete_from_steps)
"""The renaming of the old steps="continuous" | "discrete" option: `steps` now always counts gradient steps."""
DISCRETE_TO_STEPS = _steps_from_discrete
"""The old attribute value `steps` ("continuous" | "discrete") from the new `discrete`."""


def deprecated_alias(new: str, old: str, owner: str, convert: Converter | None = None) -> property:
    """A read-only property `old` that returns attribute `new` (through `convert`) with a DeprecationWarning."""

    def getter(self: Any) -> Any:
        warnings.warn(
            f"{owner}.{old} is deprecated and {_REMOVAL}; use {owner}.{new}", DeprecationWarning, stacklevel=2
        )
        value = getattr(self, new)
        return value if convert is None else convert(value)

    return property(getter, doc=f"Deprecated alias of `{new}`.")


def moved_attribute(module: str, name: str, new_module: str) -> Any:
    """The object `new_module.name`, fetched for `module.name` with a DeprecationWarning (module __getattr__)."""
    warnings.warn(
        f"{module}.{name} is deprecated and {_REMOVAL}; use {new_module}.{name}",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(new_module), name)
