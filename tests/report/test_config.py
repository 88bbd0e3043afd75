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
    # line 1 is the header "target", so the NaN of row 2 is on line 3
    with pytest.raises(ConfigError, match=r"'data.y_train' \(.*y.csv\): line 3, column 'target': nan is not"):
        load_dataset(config, torch.device("cpu"), torch.float64)


def test_non_numeric_csv_is_rejected(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 1)))
    (tmp_path / "y.csv").write_text("a\nb\nc\n")
    (tmp_path / "r.toml").write_text('[data]\nsource = "files"\nx_train = "x.npy"\ny_train = "y.csv"\n')
    # "a" is taken as the header, so the first value that is not a number is on line 2
    with pytest.raises(
        ConfigError, match=r"'data.y_train' .*y.csv\): line 2, column 'a': 'b' is not a number"
    ):
        load_dataset(load_config(tmp_path / "r.toml"), torch.device("cpu"), torch.float64)


def test_test_file_shapes_are_checked(tmp_path):
    np.save(tmp_path / "xt.npy", np.zeros((4, 3)))
    config = _files_config(tmp_path, np.zeros((5, 2)), np.zeros(5), x_test="xt.npy")
    with pytest.raises(ConfigError, match=r"'data.x_test' has 3 columns but 'data.x_train' has 2"):
        load_dataset(config, torch.device("cpu"), torch.float64)


def test_resolved_config_round_trips_through_toml():
    resolved = resolve_config({"model": {"width": 96}}, quick=True)
    parsed = tomllib.loads(dump_toml(resolved))
    for key in ("x_train", "y_train", "x_test", "y_test", "train", "test", "target"):  # unset: comments
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


def _csv_config(tmp_path, text):
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    (tmp_path / "y.csv").write_text(text)
    (tmp_path / "r.toml").write_text('[data]\nsource = "files"\nx_train = "x.npy"\ny_train = "y.csv"\n')
    return load_config(tmp_path / "r.toml")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a,b\n1,2\n3,\n5,6\n", "line 3, column 'b': empty value"),
        ("a,b\n1,2\n\n3,4\n5,x7\n", "line 5, column 'b': 'x7' is not a number"),  # blank lines still count
        ("a,b\n1,2\n3,4,5\n6,7\n", "line 3 has 3 value(s) but the header names 2 column(s)"),
        ("1,2\n3,4\n5,inf\n", "line 3, column 2: inf is not a finite number"),  # no header: columns by number
        (
            "# a,b\n1,2\n3,4\nnan,6\n",
            "line 4, column 'a': nan is not a finite number",
        ),  # numpy.savetxt header
    ],
)
def test_csv_errors_give_the_line_and_the_column(tmp_path, text, where):
    config = _csv_config(tmp_path, text)
    with pytest.raises(ConfigError, match=r"'data.y_train' \(.*y.csv\): (.*)$") as info:
        load_dataset(config, torch.device("cpu"), torch.float64)
    assert str(info.value).endswith(where), str(info.value)


def _single_csv(tmp_path, train_columns, test_columns=None, target='"y"'):
    rng = np.random.default_rng(0)
    tables = {"train": (train_columns, rng.standard_normal((6, len(train_columns))))}
    if test_columns is not None:
        tables["test"] = (test_columns, rng.standard_normal((4, len(test_columns))))
    text = f'[data]\nsource = "files"\ntarget = {target}\n'
    for name, (columns, values) in tables.items():
        np.savetxt(tmp_path / f"{name}.csv", values, delimiter=",", header=",".join(columns), comments="")
        text += f'{name} = "{name}.csv"\n'
    (tmp_path / "r.toml").write_text(text)
    return load_config(tmp_path / "r.toml"), {k: v for k, (_, v) in tables.items()}


def test_a_single_csv_with_a_target_column(tmp_path):
    config, tables = _single_csv(tmp_path, ["a", "y", "b"], ["b", "y", "a"])
    data = load_dataset(config, torch.device("cpu"), torch.float64)
    train, test = tables["train"], tables["test"]
    torch.testing.assert_close(data.x_train, torch.as_tensor(train[:, [0, 2]]))  # a, b
    torch.testing.assert_close(data.y_train, torch.as_tensor(train[:, [1]]))
    torch.testing.assert_close(data.x_test, torch.as_tensor(test[:, [2, 0]]))  # reordered to a, b
    torch.testing.assert_close(data.y_test, torch.as_tensor(test[:, [1]]))
    assert data.test_given and "target column(s) 'y'" in data.description


def test_a_single_csv_with_two_targets_and_a_test_file_without_them(tmp_path):
    config, tables = _single_csv(tmp_path, ["u", "v", "w"], ["w"], target='["u", "v"]')
    data = load_dataset(config, torch.device("cpu"), torch.float64)
    torch.testing.assert_close(data.y_train, torch.as_tensor(tables["train"][:, :2]))
    torch.testing.assert_close(data.x_test, torch.as_tensor(tables["test"]))
    assert data.y_test is None and "no test error" in data.description


@pytest.mark.parametrize(
    ("train", "test", "target", "match"),
    [
        (["a", "b"], None, '"y"', r"'data.target' column 'y' is not in data.train \(.*\); its columns: a, b"),
        (["y"], None, '"y"', r"no input columns are left"),
        (["a", "y"], ["y"], '"y"', r"'data.test' \(.*\) has no column 'a', an input column of data.train"),
        (["a", "y"], ["a", "c", "y"], '"y"', r"has a column 'c' that data.train does not have"),
    ],
)
def test_single_csv_errors_name_the_column(tmp_path, train, test, target, match):
    config, _ = _single_csv(tmp_path, train, test, target)
    with pytest.raises(ConfigError, match=match):
        load_dataset(config, torch.device("cpu"), torch.float64)


def test_single_csv_needs_a_header_and_excludes_the_separate_files(tmp_path):
    np.savetxt(tmp_path / "train.csv", np.ones((3, 2)), delimiter=",")
    (tmp_path / "r.toml").write_text('[data]\nsource = "files"\ntrain = "train.csv"\ntarget = "y"\n')
    with pytest.raises(ConfigError, match=r"'data.train' \(.*\): needs a header line naming its columns"):
        load_dataset(load_config(tmp_path / "r.toml"), torch.device("cpu"), torch.float64)
    np.save(tmp_path / "x.npy", np.ones(3))
    (tmp_path / "r.toml").write_text(
        '[data]\nsource = "files"\ntrain = "train.csv"\ntarget = "y"\nx_train = "x.npy"\n'
    )
    with pytest.raises(ConfigError, match=r"give either data.x_train and data.y_train or data.train"):
        load_config(tmp_path / "r.toml")
    with pytest.raises(ConfigError, match=r"'data.target' must name the target column"):
        resolve_config({"data": {"source": "files", "train": str(tmp_path / "train.csv")}})
    with pytest.raises(ConfigError, match=r"'data.train' must be a .csv file"):
        resolve_config({"data": {"source": "files", "train": str(tmp_path / "x.npy"), "target": "y"}})
