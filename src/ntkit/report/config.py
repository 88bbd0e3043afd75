"""Report configuration: the TOML schema and its defaults, --quick sizes, validation, the resolved dump."""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "ACTIVATIONS",
    "DEFAULTS",
    "QUICK",
    "SECTIONS",
    "ConfigError",
    "dump_toml",
    "load_config",
    "resolve_config",
]

SECTIONS = ("kernel", "training", "spectrum", "labels", "width", "features", "digits", "conv")
ACTIVATIONS = ("relu", "abs", "erf", "tanh", "sigmoid", "gelu", "softplus", "identity")


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line naming the key or file."""


# Every key the report knows, with its default. A value of None means "not set" (optional files).
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "dtype": "float32",  # float32 trains 3-8x faster on CPUs; the analyses decompose kernels in float64
    "device": "cpu",
    "sections": list(SECTIONS),
    "data": {
        "source": "sine",  # "sine": the built-in example; "files": x_train, y_train (and tests) below
        "n_train": 20,
        "n_test": 200,
        "noise": 0.1,
        "x_train": None,
        "y_train": None,
        "x_test": None,
        "y_test": None,
        "train": None,  # or one .csv with a header: the feature columns and the target column(s) ...
        "test": None,  # ... and optionally a test .csv with the same columns
        "target": None,  # the target column's name in data.train (or a list of names)
        "max_file_mb": 200,  # data files larger than this (in MB, 10^6 bytes) are refused before loading
    },
    "model": {
        "depth": 2,
        "width": 512,
        "activation": "relu",
        "w_std": math.sqrt(2.0),
        "b_std": 0.5,
        "parametrization": "ntk",
    },
    "training": {
        "steps": 1000,
        "learning_rate": "auto",  # "auto": eta * lambda_max / N = 0.5 on the analytic NTK
        "record": 60,
    },
    "kernel": {"grid": 40},
    "spectrum": {"directions": 4},
    "labels": {"diag_reg": 0.0},
    "width": {
        "widths": [64, 128, 256, 512, 1024, 2048],
        "seeds": 12,
        "drift_widths": [64, 256, 1024, 2048],
        "drift_steps": 300,
    },
    "features": {"units": 4},
    "digits": {
        "n_train": 500,
        "n_test": 500,
        "depth": 2,
        "width": 512,
        "steps": 500,
        "learning_rate": "auto",
    },
    "conv": {  # 3x3 "same" convolutions on the 8x8 digits, with the [model] activation, w_std, b_std
        "n_train": 150,
        "n_test": 150,
        "depth": 2,  # convolutional layers before the global average pooling
        "channels": 96,
        "steps": 300,
        "learning_rate": "auto",
    },
}

# --quick: the same sections at smaller sizes (what the test suite runs).
QUICK: dict[str, Any] = {
    "data": {"n_test": 80},
    "training": {"steps": 400, "record": 40},
    "kernel": {"grid": 24},
    "width": {
        "widths": [64, 128, 256, 512, 1024],
        "seeds": 12,
        "drift_widths": [64, 256, 1024],
        "drift_steps": 200,
    },
    "digits": {"n_train": 150, "n_test": 150, "width": 256, "steps": 200},
    "conv": {"n_train": 60, "n_test": 60, "channels": 64, "steps": 100},
}

_CHOICES = {
    "dtype": ("float32", "float64"),
    "device": ("cpu", "cuda"),
    "data.source": ("sine", "files"),
    "model.activation": ACTIVATIONS,
    "model.parametrization": ("ntk", "standard"),
}
_FILES = ("data.x_train", "data.y_train", "data.x_test", "data.y_test", "data.train", "data.test")
_CSV_ONLY = ("data.train", "data.test")  # a header names the columns, so data.target can find its column
_POSITIVE_INTS = (
    "data.n_train",
    "data.n_test",
    "model.depth",
    "model.width",
    "training.steps",
    "training.record",
    "kernel.grid",
    "spectrum.directions",
    "width.seeds",
    "width.drift_steps",
    "features.units",
    "digits.n_train",
    "digits.n_test",
    "digits.depth",
    "digits.width",
    "digits.steps",
    "conv.n_train",
    "conv.n_test",
    "conv.depth",
    "conv.channels",
    "conv.steps",
)
_NON_NEGATIVE_REALS = ("data.noise", "model.w_std", "model.b_std", "labels.diag_reg")
_POSITIVE_REALS = ("data.max_file_mb",)
_LEARNING_RATES = ("training.learning_rate", "digits.learning_rate", "conv.learning_rate")
_DIGITS_IMAGES = 1797  # sklearn.datasets.load_digits
_WIDTH_LISTS = ("width.widths", "width.drift_widths")


def _merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> None:
    """Merge ``update`` into ``base`` in place, rejecting keys ``base`` does not have."""
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in base:
            known = ", ".join(sorted(base))
            where = f"[{prefix[:-1]}]" if prefix else "the top level"
            raise ConfigError(f"config: unknown key '{name}' (known keys at {where}: {known})")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config: '{name}' must be a table [{name}], got {type(value).__name__}")
            _merge(base[key], value, f"{name}.")
        else:
            base[key] = value


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value[part]
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate(config: dict[str, Any], base_dir: Path) -> None:
    """Check every value's type and range, and that data files exist; raise ConfigError naming the key."""
    if not _is_int(config["seed"]) or config["seed"] < 0:
        raise ConfigError(f"config: 'seed' must be a non-negative integer, got {config['seed']!r}")
    for key, choices in _CHOICES.items():
        value = _get(config, key)
        if value not in choices:
            raise ConfigError(
                f"config: '{key}' must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )
    for key in _POSITIVE_INTS:
        value = _get(config, key)
        if not _is_int(value) or value < 1:
            raise ConfigError(f"config: '{key}' must be a positive integer, got {value!r}")
    for key in _NON_NEGATIVE_REALS:
        value = _get(config, key)
        if not _is_real(value) or value < 0:
            raise ConfigError(f"config: '{key}' must be a finite number >= 0, got {value!r}")
    for key in _POSITIVE_REALS:
        value = _get(config, key)
        if not _is_real(value) or value <= 0:
            raise ConfigError(f"config: '{key}' must be a finite number > 0, got {value!r}")
    for key in _LEARNING_RATES:
        value = _get(config, key)
        if value != "auto" and (not _is_real(value) or value <= 0):
            raise ConfigError(f"config: '{key}' must be \"auto\" or a finite number > 0, got {value!r}")
    for key in _WIDTH_LISTS:
        value = _get(config, key)
        if not isinstance(value, list) or not value or not all(_is_int(w) and w >= 1 for w in value):
            raise ConfigError(f"config: '{key}' must be a non-empty list of positive integers, got {value!r}")
        if len(value) < 2:
            raise ConfigError(f"config: '{key}' needs at least two widths to fit a slope, got {value!r}")
    for name in ("digits", "conv"):
        split = config[name]
        if split["n_train"] + split["n_test"] > _DIGITS_IMAGES:
            raise ConfigError(
                f"config: '{name}.n_train' + '{name}.n_test' = {split['n_train'] + split['n_test']} exceeds "
                f"the {_DIGITS_IMAGES} images of sklearn's digits"
            )
    sections = config["sections"]
    if not isinstance(sections, list) or not all(isinstance(s, str) for s in sections):
        raise ConfigError(f"config: 'sections' must be a list of section names, got {sections!r}")
    for name in sections:
        if name not in SECTIONS:
            raise ConfigError(
                f"config: 'sections' has unknown section {name!r} (known: {', '.join(SECTIONS)})"
            )
    if not sections:
        raise ConfigError("config: 'sections' must name at least one section")
    data = config["data"]
    for key in _FILES:
        value = _get(config, key)
        if value is None:
            continue
        kinds = "a .csv" if key in _CSV_ONLY else "a .npy or .csv"
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config: '{key}' must be a path to {kinds} file, got {value!r}")
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = (base_dir / path).resolve()
        if path.suffix.lower() not in ((".csv",) if key in _CSV_ONLY else (".npy", ".csv")):
            raise ConfigError(f"config: '{key}' must be {kinds} file, got {str(path)!r}")
        if path.is_dir():
            raise ConfigError(f"config: '{key}': {path} is a folder, not a file")
        if not path.is_file():
            raise ConfigError(f"config: '{key}': file not found: {path}")
        _check_size(path, key, data["max_file_mb"])
        data[key.split(".")[1]] = str(path)
    _validate_data_files(data)


def _check_size(path: Path, key: str, limit_mb: float) -> None:
    """Refuse a data file over data.max_file_mb from its size on disk, before reading a byte of it: the
    report's kernels are n x n, so a file that large is far beyond what the closed form can invert."""
    size_mb = path.stat().st_size / 1e6
    if size_mb > limit_mb:
        raise ConfigError(
            f"config: '{key}' ({path}) is {size_mb:.1f} MB, over data.max_file_mb = {limit_mb:g}; the report "
            "inverts an n x n kernel, so use a subset of a few thousand rows, or raise data.max_file_mb"
        )


def _validate_data_files(data: dict[str, Any]) -> None:
    """Which data files go together: x_train and y_train, or one train .csv with its target column(s)."""
    separate = [k for k in ("x_train", "y_train", "x_test", "y_test") if data[k] is not None]
    single = [k for k in ("train", "test") if data[k] is not None]
    target = data["target"]
    if target is not None:
        names = [target] if isinstance(target, str) else target
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n.strip() for n in names)
            or len(set(names)) != len(names)
        ):
            raise ConfigError(
                "config: 'data.target' must be a column name or a list of distinct column names, got "
                f"{target!r}"
            )
    if data["source"] != "files":
        if separate or single or target is not None:
            given = ", ".join(f"data.{k}" for k in [*separate, *single, *(["target"] if target else [])])
            raise ConfigError(
                f'config: {given} given but \'data.source\' is "sine"; set data.source = "files"'
            )
        return
    if single and separate:
        raise ConfigError(
            f"config: give either data.x_train and data.y_train or data.train with data.target, not both "
            f"(got {', '.join(f'data.{k}' for k in separate + single)})"
        )
    if single or target is not None:
        if data["train"] is None:
            raise ConfigError("config: 'data.train' is required with 'data.test' or 'data.target'")
        if target is None:
            raise ConfigError("config: 'data.target' must name the target column(s) of data.train")
        return
    for key in ("x_train", "y_train"):
        if data[key] is None:
            raise ConfigError(
                f"config: 'data.{key}' is required when data.source = \"files\" (or give data.train and "
                "data.target: one .csv holding the inputs and the target column)"
            )
    if data["y_test"] is not None and data["x_test"] is None:
        raise ConfigError("config: 'data.y_test' is given without 'data.x_test'")


def resolve_config(
    user: Mapping[str, Any] | None = None,
    *,
    quick: bool = False,
    overrides: Mapping[str, Any] | None = None,
    base_dir: str | Path = ".",
) -> dict[str, Any]:
    """The full configuration: defaults, then the --quick sizes, then the user's file, then command-line
    overrides.

    Values set in the user's file win over the --quick sizes, so ``--quick`` only shrinks what the file leaves
    at its default. Relative data paths are resolved against ``base_dir`` (the config file's folder).

    Raises:
        ConfigError: on an unknown key, a value of the wrong type or range, or a missing data file.
    """
    config = copy.deepcopy(DEFAULTS)
    if quick:
        _merge(config, QUICK)
    if user:
        _merge(config, user)
    if overrides:
        _merge(config, {k: v for k, v in overrides.items() if v is not None})
    _validate(config, Path(base_dir))
    return config


def load_config(
    path: str | Path | None,
    *,
    quick: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read a TOML configuration file (None: the built-in example) and resolve it (:func:`resolve_config`)."""
    if path is None:
        return resolve_config(None, quick=quick, overrides=overrides)
    file = Path(path).expanduser()
    if file.is_dir():
        raise ConfigError(f"--config {file}: is a folder; give the TOML file (see docs/report.md)")
    if not file.is_file():
        raise ConfigError(f"--config: file not found: {file}")
    try:
        with open(file, "rb") as handle:
            user = tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--config {file}: not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config {file}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"--config {file}: cannot read it: {err.strerror or err}") from None
    return resolve_config(user, quick=quick, overrides=overrides, base_dir=file.resolve().parent)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(config: Mapping[str, Any]) -> str:
    """The configuration as TOML text (unset optional values are written as comments)."""
    lines = ["# ntkit report: resolved configuration (defaults, --quick sizes, your file, command line)"]
    tables = []
    for key, value in config.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append("")
        lines.append(f"[{name}]")
        for key, value in table.items():
            if value is None:
                lines.append(f"# {key} = (not set)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
