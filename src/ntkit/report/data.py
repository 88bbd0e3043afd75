"""Report data: the built-in sine example, the user's .npy/.csv files (checked), and scikit-learn's digits."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError

__all__ = ["Dataset", "Digits", "data_fingerprint", "load_dataset", "load_digits_split", "read_array"]


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

    @property
    def input_dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def outputs(self) -> int:
        return self.y_train.shape[1]


def read_array(path: str | Path, key: str) -> np.ndarray:
    """Read a .npy or .csv file as a float64 array; a .csv may start with one header line.

    Raises:
        ConfigError: naming ``key`` and the file when it cannot be read, is not numeric, or holds NaN/inf.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            try:
                array = np.loadtxt(path, delimiter=",", ndmin=1, dtype=np.float64)
            except ValueError:
                array = np.loadtxt(path, delimiter=",", ndmin=1, dtype=np.float64, skiprows=1)
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
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise ConfigError(f"config: '{key}' ({path}): contains {bad} NaN or infinite value(s)")
    return array


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
        if x_test is None:
            x_test = x_train
        name = Path(data["x_train"]).stem
        description = (
            f"{x_train.shape[0]} training points with {x_train.shape[1]} feature(s) and {y_train.shape[1]} "
            f"output(s) from {data['x_train']}"
        )

    def tensor(array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.as_tensor(array, dtype=dtype, device=device)

    grid = None
    if x_train.shape[1] == 1:
        low, high = float(min(x_train.min(), x_test.min())), float(max(x_train.max(), x_test.max()))
        margin = 0.05 * (high - low) if high > low else 1.0
        grid = torch.linspace(low - margin, high + margin, 200, dtype=dtype, device=device)[:, None]
    return Dataset(name, description, tensor(x_train), tensor(y_train), tensor(x_test), tensor(y_test), grid)


def data_fingerprint(config: dict[str, Any]) -> str:
    """A hash of the user's data files' contents (empty for the built-in example), for resuming safely."""
    digest = hashlib.sha256()
    for key in ("x_train", "y_train", "x_test", "y_test"):
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
