"""Report data: the built-in sine example, the user's .npy/.csv files (checked), and scikit-learn's digits."""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError

__all__ = [
    "Dataset",
    "Digits",
    "data_fingerprint",
    "load_dataset",
    "load_digits_split",
    "read_array",
    "read_csv",
]


@dataclass(frozen=True)
class Dataset:
    """A regression problem: training and test inputs (n, d) and targets (n, k), on the report's device."""

    name: str
    description: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    grid: torch.Tensor | None  # for 1-D inputs: a dense grid over the inputs' range, for plotting functions
    test_given: bool = True  # False: no test inputs were given, and x_test is x_train standing in for them

    @property
    def input_dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def outputs(self) -> int:
        return self.y_train.shape[1]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _header(path: Path, key: str) -> tuple[list[str] | None, int]:
    """The column names of a .csv whose first non-blank line is not all numbers (None if it is), and the
    number of lines up to and including that first line."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if not row or all(not field.strip() for field in row):
                continue
            fields = [field.strip() for field in row]
            if all(_is_number(field) for field in fields):
                return None, reader.line_num - 1
            if fields[0].startswith("#"):  # numpy.savetxt writes its header as a comment
                fields[0] = fields[0].lstrip("#").strip()
            return fields, reader.line_num
    raise ConfigError(f"config: '{key}' ({path}): the file is empty")


def _locate_csv_error(path: Path, key: str, names: list[str] | None, skip: int) -> str | None:
    """The first unreadable value of a .csv as "line L, column 'NAME': what is wrong", or None.

    Slow (Python per value), so it only runs once numpy has refused the file or found a non-finite value.
    """
    width = None if names is None else len(names)
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if reader.line_num <= skip or not row or all(not f.strip() for f in row):
                continue
            if row[0].lstrip().startswith("#"):
                continue
            line = reader.line_num
            if width is None:
                width = len(row)
            if len(row) != width:
                expected = "the header names" if names is not None else "the first line has"
                return f"line {line} has {len(row)} value(s) but {expected} {width} column(s)"
            for index, field in enumerate(row):
                column = f"'{names[index]}'" if names is not None else f"{index + 1}"
                text = field.strip()
                if not text:
                    return f"line {line}, column {column}: empty value"
                try:
                    value = float(text)
                except ValueError:
                    return f"line {line}, column {column}: {text!r} is not a number"
                if not math.isfinite(value):
                    return f"line {line}, column {column}: {text} is not a finite number"
    return None


def read_csv(path: str | Path, key: str) -> tuple[list[str] | None, np.ndarray]:
    """Read a .csv of numbers as (column names or None, float64 array of shape (rows, columns)).

    A first line that is not all numbers is the header (a leading '#', as numpy.savetxt writes it, is
    dropped); blank lines and lines starting with '#' are skipped.

    Raises:
        ConfigError: naming ``key``, the file, and the line and column of the first value that is missing,
            not a number, or not finite.
    """
    path = Path(path)
    try:
        names, skip = _header(path, key)
        try:
            array = np.loadtxt(
                path, delimiter=",", ndmin=2, dtype=np.float64, skiprows=skip, encoding="utf-8"
            )
        except ValueError as err:
            problem = _locate_csv_error(path, key, names, skip)
            if problem is None:
                problem = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"config: '{key}' ({path}): {problem}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config: '{key}' ({path}): not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    except MemoryError:
        raise ConfigError(_too_large(path, key)) from None
    except OSError as err:
        raise ConfigError(f"config: '{key}' ({path}): cannot read it: {err.strerror or err}") from None
    if array.size == 0:
        raise ConfigError(f"config: '{key}' ({path}): has no rows of numbers")
    if names is not None and array.shape[1] != len(names):
        raise ConfigError(
            f"config: '{key}' ({path}): the rows have {array.shape[1]} value(s) but the header names "
            f"{len(names)} column(s)"
        )
    if not np.isfinite(array).all():
        problem = _locate_csv_error(path, key, names, skip) or "contains NaN or infinite values"
        raise ConfigError(f"config: '{key}' ({path}): {problem}")
    return names, array


def _too_large(path: Path, key: str) -> str:
    size_mb = path.stat().st_size / 1e6
    return (
        f"config: '{key}' ({path}): not enough memory to load its {size_mb:.1f} MB; use a subset of the rows "
        "(the report inverts an n x n kernel, so a few thousand rows are its practical limit)"
    )


def read_array(path: str | Path, key: str) -> np.ndarray:
    """Read a .npy or .csv file as a float64 array; a .csv may start with one header line.

    Raises:
        ConfigError: naming ``key`` and the file when it cannot be read, is not numeric, or holds NaN/inf
            (for a .csv, with the line and column of the first bad value).
    """
    path = Path(path)
    if path.suffix.lower() != ".npy":
        _, array = read_csv(path, key)
        return array[:, 0] if array.shape[1] == 1 else array
    try:
        array = np.load(path, allow_pickle=False)
    except MemoryError:
        raise ConfigError(_too_large(path, key)) from None
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"config: '{key}' ({path}): cannot read numbers from it: {first}") from None
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ConfigError(f"config: '{key}' ({path}): must hold numbers, got dtype {array.dtype}")
    array = np.asarray(array, dtype=np.float64)
    if array.ndim not in (1, 2) or array.size == 0:
        raise ConfigError(
            f"config: '{key}' ({path}): must be a non-empty 1-D or 2-D array, got shape {array.shape}"
        )
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(
            f"config: '{key}' ({path}): contains {int(bad.sum())} NaN or infinite value(s), the first at "
            f"index {first[0] if len(first) == 1 else first}"
        )
    return array


def _split_columns(
    names: list[str], array: np.ndarray, targets: list[str], key: str, path: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(inputs, targets, input column names) of a single .csv holding both."""
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError(
            f"config: 'data.target' column {missing[0]!r} is not in {key} ({path}); its columns: "
            f"{', '.join(names)}"
        )
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"config: '{key}' ({path}): column {duplicated[0]!r} appears more than once")
    features = [n for n in names if n not in targets]
    if not features:
        raise ConfigError(
            f"config: '{key}' ({path}): no input columns are left once the target column(s) "
            f"{', '.join(targets)} are taken out"
        )
    x = array[:, [names.index(n) for n in features]]
    return x, array[:, [names.index(t) for t in targets]], features


def _single_csv(data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """x_train, y_train, x_test, y_test from data.train (and data.test) and the data.target column(s)."""
    targets = [data["target"]] if isinstance(data["target"], str) else list(data["target"])
    names, array = read_csv(data["train"], "data.train")
    if names is None:
        raise ConfigError(
            f"config: 'data.train' ({data['train']}): needs a header line naming its columns, so that "
            f"data.target = {data['target']!r} can be found"
        )
    x_train, y_train, features = _split_columns(names, array, targets, "data.train", data["train"])
    if data["test"] is None:
        return x_train, y_train, None, None
    test_names, test_array = read_csv(data["test"], "data.test")
    if test_names is None:
        raise ConfigError(
            f"config: 'data.test' ({data['test']}): needs a header line naming its columns, like data.train"
        )
    duplicated = sorted({n for n in test_names if test_names.count(n) > 1})
    absent = [n for n in features if n not in test_names]
    extra = [n for n in test_names if n not in names]
    missing = [t for t in targets if t not in test_names]
    problem = None
    if duplicated:
        problem = f"column {duplicated[0]!r} appears more than once"
    elif absent:
        problem = f"has no column {absent[0]!r}, an input column of data.train"
    elif extra:
        problem = f"has a column {extra[0]!r} that data.train does not have"
    elif missing and len(missing) < len(targets):
        problem = (
            f"has target column(s) {', '.join(t for t in targets if t not in missing)} but not {missing[0]!r}"
        )
    if problem is not None:
        raise ConfigError(f"config: 'data.test' ({data['test']}) {problem}")
    x_test = test_array[:, [test_names.index(n) for n in features]]  # in data.train's column order
    y_test = None if missing else test_array[:, [test_names.index(t) for t in targets]]
    return x_train, y_train, x_test, y_test


def _as_rows(array: np.ndarray) -> np.ndarray:
    return array[:, None] if array.ndim == 1 else array


def _sine(config: dict[str, Any]) -> tuple[np.ndarray, ...]:
    data = config["data"]
    rng = np.random.default_rng(config["seed"])
    n, m, noise = data["n_train"], data["n_test"], data["noise"]
    x_train = np.sort(rng.uniform(-1.0, 1.0, size=n))
    y_train = np.sin(2 * math.pi * x_train) + noise * rng.standard_normal(n)
    x_test = rng.uniform(-1.0, 1.0, size=m)
    y_test = np.sin(2 * math.pi * x_test)  # noise-free: the test error measures recovery of the function
    return x_train[:, None], y_train[:, None], x_test[:, None], y_test[:, None]


def load_dataset(config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Dataset:
    """The report's regression data as tensors, checked for shapes before any heavy work starts."""
    data = config["data"]
    if data["source"] == "sine":
        x_train, y_train, x_test, y_test = _sine(config)
        name = "sine"
        description = (
            f"y = sin(2 pi x) + {data['noise']:g} N(0, 1) noise at {data['n_train']} points drawn uniformly "
            f"on [-1, 1]; {data['n_test']} noise-free test points"
        )
    elif data["train"] is not None:
        x_train, y_train, x_test, y_test = _single_csv(data)
        if x_train.shape[0] < 2:
            raise ConfigError(f"config: 'data.train' needs at least 2 rows, got {x_train.shape[0]}")
        name = Path(data["train"]).stem
        targets = [data["target"]] if isinstance(data["target"], str) else data["target"]
        description = (
            f"{x_train.shape[0]} training points with {x_train.shape[1]} feature(s) and target column(s) "
            f"{', '.join(map(repr, targets))} from {data['train']}"
        )
        if x_test is not None:
            description += f"; {x_test.shape[0]} test points from {data['test']}"
            if y_test is None:
                description += " (no target column there: no test error)"
    else:
        x_train = _as_rows(read_array(data["x_train"], "data.x_train"))
        y_train = _as_rows(read_array(data["y_train"], "data.y_train"))
        if y_train.shape[0] != x_train.shape[0]:
            raise ConfigError(
                f"config: 'data.y_train' has {y_train.shape[0]} rows but 'data.x_train' has "
                f"{x_train.shape[0]}"
            )
        if x_train.shape[0] < 2:
            raise ConfigError(f"config: 'data.x_train' needs at least 2 rows, got {x_train.shape[0]}")
        x_test = y_test = None
        if data["x_test"] is not None:
            x_test = _as_rows(read_array(data["x_test"], "data.x_test"))
            if x_test.shape[1] != x_train.shape[1]:
                raise ConfigError(
                    f"config: 'data.x_test' has {x_test.shape[1]} columns but 'data.x_train' has "
                    f"{x_train.shape[1]}"
                )
        if data["y_test"] is not None:
            y_test = _as_rows(read_array(data["y_test"], "data.y_test"))
            if y_test.shape != (x_test.shape[0], y_train.shape[1]):
                raise ConfigError(
                    f"config: 'data.y_test' must have shape ({x_test.shape[0]}, {y_train.shape[1]}) to match "
                    f"data.x_test and data.y_train, got {y_test.shape}"
                )
        name = Path(data["x_train"]).stem
        description = (
            f"{x_train.shape[0]} training points with {x_train.shape[1]} feature(s) and {y_train.shape[1]} "
            f"output(s) from {data['x_train']}"
        )
        if x_test is not None:
            description += f"; {x_test.shape[0]} test points from {data['x_test']}"
            if y_test is None:
                description += " (no data.y_test: no test error)"
    test_given = x_test is not None
    if not test_given:
        x_test = x_train  # the functions are still evaluated somewhere; sections say that these are not test points
        description += "; no test points given"

    def tensor(array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.as_tensor(array, dtype=dtype, device=device)

    grid = None
    if x_train.shape[1] == 1:
        low, high = float(min(x_train.min(), x_test.min())), float(max(x_train.max(), x_test.max()))
        margin = 0.05 * (high - low) if high > low else 1.0
        grid = torch.linspace(low - margin, high + margin, 200, dtype=dtype, device=device)[:, None]
    return Dataset(
        name,
        description,
        tensor(x_train),
        tensor(y_train),
        tensor(x_test),
        tensor(y_test),
        grid,
        test_given,
    )


def data_fingerprint(config: dict[str, Any]) -> str:
    """A hash of the user's data files' contents (empty for the built-in example), for resuming safely."""
    digest = hashlib.sha256()
    for key in ("x_train", "y_train", "x_test", "y_test", "train", "test"):
        path = config["data"][key]
        if path is not None:
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Digits:
    """scikit-learn's 8x8 handwritten digits, split, with centred one-hot targets."""

    x_train: torch.Tensor
    y_train: torch.Tensor  # (n, 10), one-hot minus 1/10
    labels_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    labels_test: torch.Tensor


def load_digits_split(
    n_train: int, n_test: int, seed: int, device: torch.device, dtype: torch.dtype
) -> Digits:
    """A random split of sklearn.datasets.load_digits (1797 images, shipped with scikit-learn).

    Pixels are centred by the training mean and each image scaled to norm sqrt(64), so that the input
    covariance x.x'/d (docs/architecture.md) is 1 on the diagonal.
    """
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    if n_train + n_test > len(labels):
        raise ConfigError(
            f"config: 'digits.n_train' + 'digits.n_test' = {n_train + n_test} exceeds the {len(labels)} "
            "images"
        )
    order = np.random.default_rng(seed).permutation(len(labels))
    train_idx, test_idx = order[:n_train], order[n_train : n_train + n_test]
    mean = images[train_idx].mean(axis=0)

    def features(idx: np.ndarray) -> torch.Tensor:
        x = images[idx] - mean
        x = x / np.linalg.norm(x, axis=1, keepdims=True) * math.sqrt(x.shape[1])
        return torch.as_tensor(x, dtype=dtype, device=device)

    def targets(idx: np.ndarray) -> torch.Tensor:
        one_hot = np.eye(10)[labels[idx]] - 0.1
        return torch.as_tensor(one_hot, dtype=dtype, device=device)

    def classes(idx: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(labels[idx], device=device)

    return Digits(
        features(train_idx),
        targets(train_idx),
        classes(train_idx),
        features(test_idx),
        targets(test_idx),
        classes(test_idx),
    )
