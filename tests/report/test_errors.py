"""`ntkit report` when something is wrong: one line naming the option, key or file, exit status 2, no
traceback; a damaged record of a finished section is computed again with a notice.

The runs here use the features section alone (under a second) or stop before any section runs.
"""

import json
import os

import numpy as np
import pytest
import torch

from ntkit.cli import main
from ntkit.report import ConfigError, generate_report
from ntkit.report._context import Context
from ntkit.report.config import resolve_config

_FEATURES = {"sections": ["features"], "features": {"units": 2}}


def _one_error_line(capsys, command="report"):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ntkit {command}: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def test_out_that_is_a_file_or_inside_one(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    assert main(["report", "--quick", "--out", str(taken)]) == 2
    assert f"--out {taken}: is a file, not a folder" in _one_error_line(capsys)
    assert main(["report", "--quick", "--out", str(taken / "report")]) == 2
    assert f"{taken} is a file, so no folder can be made inside it" in _one_error_line(capsys)
    assert taken.read_text() == "not a folder"


def test_out_that_is_not_writable(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() == 0:  # root writes anywhere: emulate the permission check of an ordinary user
            real_access = os.access

            def access(path, mode, **kwargs):
                return False if os.fspath(path).startswith(str(locked)) else real_access(path, mode, **kwargs)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(os, "access", access)
                status = main(["report", "--quick", "--out", str(locked / "report")])
        else:
            status = main(["report", "--quick", "--out", str(locked / "report")])
    finally:
        locked.chmod(0o700)
    assert status == 2
    line = _one_error_line(capsys)
    assert f"--out {locked / 'report'}: {locked}, where it would be made, is not writable" in line
    assert not (locked / "report").exists()


def test_a_file_system_refusal_while_writing_names_out(tmp_path, capsys):
    """A folder the report needs inside --out is a file: mkdir fails for root too, as a read-only disk would."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "sections").write_text("in the way")
    config = tmp_path / "features.toml"
    config.write_text('sections = ["features"]\n')
    assert main(["report", "--quick", "--config", str(config), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"ntkit report: error: --out {out}: cannot write {out / 'sections'}"), line


def test_config_that_is_a_folder(tmp_path, capsys):
    assert main(["report", "--config", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert f"--config {tmp_path}: is a folder" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def _rate_limit(kernel, entries):
    """2 N / lambda_max from the eigenvalues: the largest rate for which discrete descent does not diverge."""
    return 2 * entries / float(torch.linalg.eigvalsh(kernel.double())[-1])


def test_learning_rate_above_the_stability_limit_stops_before_training(tmp_path, capsys):
    """Before: the closed form diverged and matplotlib raised OverflowError while drawing it (a traceback)."""
    ctx = Context(resolve_config(None, quick=True), progress=False)
    limit = _rate_limit(ctx.kernel_train, ctx.data.y_train.numel())
    config = tmp_path / "fast.toml"
    config.write_text(f'sections = ["training"]\n[training]\nlearning_rate = {1.5 * limit}\n')
    out = tmp_path / "out"
    assert main(["report", "--quick", "--config", str(config), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert f"config: 'training.learning_rate' = {1.5 * limit:g} is at or above {limit:.4g}" in line
    assert not (out / "sections").exists()  # stopped before the first section


def test_rate_below_the_analytic_limit_but_above_the_networks_own_names_the_key():
    ctx = Context(resolve_config(None, quick=True), progress=False)
    entries = ctx.data.y_train.numel()
    analytic = _rate_limit(ctx.kernel_train, entries)
    own = _rate_limit(ctx.empirical_kernel_train, entries)
    if own >= analytic:  # pragma: no cover - the seed-0 network's kernel is the larger one (measured)
        pytest.skip("the finite network's NTK has the smaller top eigenvalue for this seed")
    rate = (own + analytic) / 2
    ctx = Context(resolve_config({"training": {"learning_rate": rate}}, quick=True), progress=False)
    assert ctx.learning_rate == rate  # accepted: below the analytic limit
    with pytest.raises(ConfigError, match=rf"'training.learning_rate' = {rate:.4g} is at or above {own:.4g}"):
        _ = ctx.linear_run


def test_digits_learning_rate_above_its_limit_names_its_key(tmp_path):
    from ntkit.report.sections import module

    config = resolve_config(
        {"sections": ["digits"], "digits": {"n_train": 30, "n_test": 20, "width": 32, "steps": 3}}
    )
    config["digits"]["learning_rate"] = 1e4  # far above 2 N / lambda_max of any NTK of these digits
    with pytest.raises(ConfigError, match=r"^config: 'digits.learning_rate' = 10000 is at or above"):
        module("digits").run(Context(config, progress=False), tmp_path)


def test_data_file_over_the_size_limit_is_refused_before_reading(tmp_path, capsys):
    x = np.linspace(-1, 1, 50_000)
    np.save(tmp_path / "x.npy", x[:, None])  # 400 kB
    np.save(tmp_path / "y.npy", np.sin(x))
    config = tmp_path / "big.toml"
    config.write_text('[data]\nsource = "files"\nx_train = "x.npy"\ny_train = "y.npy"\nmax_file_mb = 0.1\n')
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "load", lambda *a, **k: pytest.fail("the file was read"))
        assert main(["report", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys)
    assert f"'data.x_train' ({tmp_path / 'x.npy'}) is 0.4 MB, over data.max_file_mb = 0.1" in line


def test_data_that_does_not_fit_in_memory_names_the_key(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((4, 1)))
    np.save(tmp_path / "y.npy", np.zeros(4))
    config = tmp_path / "r.toml"
    config.write_text('[data]\nsource = "files"\nx_train = "x.npy"\ny_train = "y.npy"\n')

    def no_memory(*args, **kwargs):
        raise MemoryError

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "load", no_memory)
        assert main(["report", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert f"'data.x_train' ({tmp_path / 'x.npy'}): not enough memory to load" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda out: _cut(out / "sections" / "features.json"), "is damaged (not valid JSON"),
        (lambda out: (out / "sections" / "features.json").write_text('{"fingerprint": 1}'), "not a section"),
        (lambda out: _cut(out / "figures" / "features.png"), "features.png is damaged (cut short)"),
        (lambda out: (out / "figures" / "features.svg").unlink(), "features.svg is missing"),
    ],
)
def test_damaged_record_is_computed_again_with_a_notice(tmp_path, capsys, damage, reason):
    out = tmp_path / "report"
    generate_report(_FEATURES, out, quick=True, progress=False)
    first = json.loads((out / "metrics.json").read_text())
    damage(out)
    capsys.readouterr()
    generate_report(_FEATURES, out, quick=True, progress=False)
    err = capsys.readouterr().err
    notices = [line for line in err.splitlines() if line.startswith("ntkit report:")]
    assert len(notices) == 1 and reason in notices[0] and "computing section 'features' again" in notices[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reused_sections"] == [] and reason in metrics["recomputed_sections"]["features"]
    assert metrics["sections"]["features"]["features"] == first["sections"]["features"]["features"]
    assert "Computed again: features (" in (out / "report.html").read_text()
    # the record is whole again: the next run reuses it, and says so
    generate_report(_FEATURES, out, quick=True, progress=False)
    assert json.loads((out / "metrics.json").read_text())["reused_sections"] == ["features"]
    assert "reused 1 of 1 section(s) finished by an earlier run (features)" in capsys.readouterr().err


def _cut(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
