"""`ntkit reproduce --list`, bad names, and a resumed run reusing its finished pieces."""

import json

import pytest

from ntkit.cli import main
from ntkit.reproduce import EXPERIMENTS, run_experiment


def test_list_names_every_experiment_with_its_source(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert f"{name}\n" in out
    assert out.count("source: ") == len(EXPERIMENTS) == 7


def test_unknown_name_and_missing_name_are_one_line_errors(capsys):
    assert main(["reproduce", "no-such-paper"]) == 2
    assert "unknown experiment 'no-such-paper'" in capsys.readouterr().err
    assert main(["reproduce"]) == 2
    assert "--list" in capsys.readouterr().err


def test_unknown_name_raises_value_error():
    with pytest.raises(ValueError, match="known: jacot2018-fig1"):
        run_experiment("nope")


def test_rerun_reuses_finished_pieces(tmp_path):
    out = tmp_path / "fig3"
    assert main(["reproduce", "jacot2018-fig3", "--quick", "--out", str(out)]) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert first["reused_pieces"] == []
    damaged = sorted((out / "records").glob("*.json"))[0]
    damaged.write_text("{not json")  # a damaged record is recomputed, never trusted
    assert main(["reproduce", "jacot2018-fig3", "--quick", "--out", str(out)]) == 0
    second = json.loads((out / "metrics.json").read_text())
    assert len(second["reused_pieces"]) == len(list((out / "records").glob("*.json"))) - 1
    assert second["metrics"]["orthogonal_max"] == first["metrics"]["orthogonal_max"]
