"""The `ntkit` command: the demo runs and reports the width scaling; bad options give one clear line."""

import re

import pytest

from ntkit import cli


def test_demo_prints_errors_that_shrink_with_width(capsys):
    assert cli.main(["demo", "--widths", "32", "512", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\d+)\s+([0-9.]+) \+- ([0-9.]+)", out, flags=re.M)
    assert [int(w) for w, _, _ in rows] == [32, 512]
    errors = [float(e) for _, e, _ in rows]
    # 16x the width: the error should shrink by about 4x (width**-1/2); 1.5x is a loose floor for 3 seeds
    assert errors[0] > 1.5 * errors[1], errors
    assert "fitted log-log slope" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--depth", "0"], "--depth"),
        (["demo", "--widths", "0"], "widths"),
        (["demo", "--device", "cuda:banana"], "--device"),
    ],
)
def test_bad_options_give_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ntkit demo: error:") and message in err[-1], err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_out_that_is_a_file_gives_one_line_for_every_command_with_out(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("x")
    for argv in (["report", "--quick"], ["reproduce", "jacot2018-fig1", "--quick"]):
        assert cli.main([*argv, "--out", str(taken)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"ntkit {argv[0]}: error: --out {taken}: is a file, not a folder; name a folder (it is "
            "created if needed)"
        ], err
    assert not any(p.name != "taken" for p in tmp_path.iterdir())


def test_a_file_system_error_is_one_line(tmp_path, capsys, monkeypatch):
    """An OSError from deep in a command (here: the disk refuses a write) ends it with one line, status 2."""
    import errno

    import ntkit._demo as demo

    def refuse(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "f"))

    monkeypatch.setattr(demo, "run", refuse)
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ntkit demo: error: [Errno 28] No space left on device: '{tmp_path / 'f'}'"]
