"""Report configuration and data loading: defaults, --quick, and one clear line for each kind of bad input."""

import sys

import numpy as np
import pytest
import torch

from ntkit.report.config import DEFAULTS, QUICK, ConfigError, dump_toml, load_config, resolve_config
from ntkit.report.data import load_dataset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_defaults_are_the_sine_example_and_quick_shrinks_them():
    full = resolve_config()
    assert full["data"]["source"] == "sine" and full["data"]["n_train"] == 20
    assert full["model"]["depth"] == 2 and full["model"]["activation"] == "relu"
    quick = resolve_config(quick=True)
    assert quick["training"]["steps"] == QUICK["training"]["steps"] < full["training"]["steps"]
    assert quick["width"]["widths"][-1] < full["width"]["widths"][-1]
    assert quick["sections"] == full["sections"]  # the same sections, smaller sizes


def test_user_values_win_over_quick_and_command_line_over_both():
    resolved = resolve_config(
        {"model": {"width": 64}, "seed": 3}, quick=True, overrides={"seed": 7, "device": None}
    )
    assert resolved["model"]["width"] == 64
    assert resolved["seed"] == 7
    assert resolved["device"] == DEFAULTS["device"]


@pytest.mark.parametrize(
    ("user", "match"),
    [
        ({"modle": {}}, r"unknown key 'modle'"),
        ({"model": {"widht": 3}}, r"unknown key 'model.widht' \(known keys at \[model\]"),
        ({"model": {"width": 0}}, r"'model.width' must be a positive integer"),
        ({"model": {"width": 2.5}}, r"'model.width' must be a positive integer"),
        ({"model": {"activation": "swish"}}, r"'model.activation' must be one of"),
        ({"model": 3}, r"'model' must be a table"),
        ({"training": {"learning_rate": -1.0}}, r"'training.learning_rate' must be \"auto\" or"),
        ({"data": {"noise": float("nan")}}, r"'data.noise' must be a finite number"),
        ({"width": {"widths": [64]}}, r"'width.widths' needs at least two widths"),
        ({"width": {"widths": [64, "wide"]}}, r"'width.widths' must be a non-empty list"),
        ({"sections": ["kernel", "everything"]}, r"unknown section 'everything'"),
        ({"digits": {"n_train": 1500, "n_test": 500}}, r"'digits.n_train' \+ 'digits.n_test' = 2000"),
        ({"conv": {"n_train": 1000, "n_test": 900}}, r"'conv.n_train' \+ 'conv.n_test' = 1900"),
        ({"conv": {"channels": 0}}, r"'conv.channels' must be a positive integer"),
        ({"conv": {"learning_rate": "fast"}}, r"'conv.learning_rate' must be \"auto\" or"),
        ({"data": {"source": "files"}}, r"'data.x_train' is required"),
        ({"data": {"x_train": "x.npy"}}, r"'data.x_train': file not found"),
    ],
)
def test_bad_configs_stop_with_one_line_naming_the_key(user, match):
    with pytest.raises(ConfigError, match=match) as info:
        resolve_config(user)
    assert "\n" not in str(info.value)


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="--config: file not found"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\nwidth = 3\n")
    with pytest.raises(ConfigError, match=r"broken.toml: not valid TOML"):
        load_config(broken)


def _files_config(tmp_path, x, y, **extra):
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "y.csv", y, delimiter=",", header="target", comments="")
    text = '[data]\nsource = "files"\nx_train = "x.npy"\ny_train = "y.csv"\n'
    for key, value in extra.items():
        text += f'{key} = "{value}"\n'
    path = tmp_path / "report.toml"
    path.write_text(text)
    return load_config(path)


def test_user_files_load_with_relative_paths_and_a_csv_header(tmp_path):
    x = np.linspace(-1, 1, 7)[:, None].repeat(2, axis=1)
    y = np.arange(7.0)
    config = _files_config(tmp_path, x, y)
    assert config["data"]["x_train"] == str(tmp_path / "x.npy")
    data = load_dataset(config, torch.device("cpu"), torch.float64)
    assert data.x_train.shape == (7, 2) and data.y_train.shape == (7, 1)
    torch.testing.assert_close(data.y_train[:, 0], torch.arange(7.0, dtype=torch.float64))
    assert data.grid is None  # 2-D inputs: no function plot grid
    assert data.x_test.shape == (7, 2)  # without x_test the training inputs are the evaluation points


def test_shape_mismatch_names_both_keys(tmp_path):
    config = _files_config(tmp_path, np.zeros((5, 1)), np.zeros(4))
    with pytest.raises(ConfigError, match=r"'data.y_train' has 4 rows but 'data.x_train' has 5"):
        load_dataset(config, torch.device("cpu"), torch.float64)


def test_non_finite_data_names_the_key_and_file(tmp_path):
    y = np.array([1.0, np.nan, 2.0])
    config = _files_config(tmp_path, np.zeros((3, 1)), y)
    with pytest.raises(ConfigError, match=r"'data.y_train' \(.*y.csv\): contains 1 NaN or infinite"):
        load_dataset(config, torch.device("cpu"), torch.float64)


def test_non_numeric_csv_is_rejected(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 1)))
    (tmp_path / "y.csv").write_text("a\nb\nc\n")
    (tmp_path / "r.toml").write_text('[data]\nsource = "files"\nx_train = "x.npy"\ny_train = "y.csv"\n')
    with pytest.raises(ConfigError, match=r"'data.y_train' .*cannot read numbers"):
        load_dataset(load_config(tmp_path / "r.toml"), torch.device("cpu"), torch.float64)


def test_test_file_shapes_are_checked(tmp_path):
    np.save(tmp_path / "xt.npy", np.zeros((4, 3)))
    config = _files_config(tmp_path, np.zeros((5, 2)), np.zeros(5), x_test="xt.npy")
    with pytest.raises(ConfigError, match=r"'data.x_test' has 3 columns but 'data.x_train' has 2"):
        load_dataset(config, torch.device("cpu"), torch.float64)


def test_resolved_config_round_trips_through_toml():
    resolved = resolve_config({"model": {"width": 96}}, quick=True)
    parsed = tomllib.loads(dump_toml(resolved))
    for key in ("x_train", "y_train", "x_test", "y_test"):  # unset optional files are written as comments
        resolved["data"].pop(key)
    assert parsed == resolved


def test_sine_example_is_deterministic_per_seed():
    device, dtype = torch.device("cpu"), torch.float64
    first = load_dataset(resolve_config(), device, dtype)
    again = load_dataset(resolve_config(), device, dtype)
    other = load_dataset(resolve_config(overrides={"seed": 1}), device, dtype)
    torch.testing.assert_close(first.y_train, again.y_train)
    assert not torch.equal(first.x_train, other.x_train)
    assert first.x_train.shape == (20, 1) and first.grid is not None
    # the test targets are the noise-free function
    torch.testing.assert_close(first.y_test, torch.sin(2 * torch.pi * first.x_test))


def test_documented_example_is_the_built_in_configuration():
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "report.md"
    example = tomllib.loads(docs.read_text().split("```toml\n")[1].split("```")[0])
    for key, value in DEFAULTS.items():
        if isinstance(value, dict):
            documented = {k: v for k, v in value.items() if v is not None}
            assert example[key] == documented, key
        else:
            assert example[key] == value, key
