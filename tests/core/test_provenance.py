"""Artefacts carry the command, version, commit, seeds and time that made them."""

from __future__ import annotations

import json
from datetime import datetime

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import qscope  # noqa: E402
from qscope import provenance  # noqa: E402
from qscope.io import save_png, write_json  # noqa: E402


def test_record_has_command_version_commit_seeds_and_time():
    rec = provenance.record(seeds={"split": 3}, command="qscope evals overlap -f x.json")
    assert rec["command"] == "qscope evals overlap -f x.json"
    assert rec["qscope_version"] == qscope.__version__
    assert rec["seeds"] == {"split": 3}
    assert datetime.fromisoformat(rec["created_utc"]).utcoffset().total_seconds() == 0
    commit = rec["git_commit"]
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)
    assert rec["git_dirty"] in (None, True, False)


def test_command_line_names_the_cli_and_repo_relative_scripts():
    assert provenance.command_line(["/venv/bin/qscope", "evals", "rank", "a b"]) == "qscope evals rank 'a b'"
    assert provenance.command_line(["/x/src/qscope/__main__.py", "compare"]) == "qscope compare"
    script = provenance.REPO / "experiments" / "some_script.py"
    assert provenance.command_line([str(script), "--seeds", "0,1"]) == "python experiments/some_script.py --seeds 0,1"


def test_json_artefact_keeps_its_fields_and_gains_provenance(tmp_path):
    rec = provenance.record(seeds=[0, 1], command="python experiments/x.py")
    write_json(tmp_path / "r.json", {"score": 0.5}, provenance=rec)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["score"] == 0.5
    assert provenance.read(tmp_path / "r.json") == rec
    write_json(tmp_path / "plain.json", {"score": 0.5})
    assert provenance.read(tmp_path / "plain.json") is None
    with pytest.raises(TypeError):
        write_json(tmp_path / "list.json", [1, 2], provenance=rec)


def test_png_carries_provenance_given_or_recorded(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    rec = provenance.record(seeds=7, command="qscope compare a b --text 'déjà vu'")
    save_png(fig, tmp_path / "given.png", provenance=rec)
    assert provenance.read(tmp_path / "given.png") == rec
    fig, ax = plt.subplots()
    save_png(fig, tmp_path / "auto.png")
    auto = provenance.read(tmp_path / "auto.png")
    assert auto["qscope_version"] == qscope.__version__ and auto["command"] == provenance.command_line()


def test_stamp_png_adds_provenance_to_a_foreign_png(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 4), "white").save(tmp_path / "shot.png")
    assert provenance.read(tmp_path / "shot.png") is None
    rec = provenance.record(command="python experiments/web_tour.py --store STORE --feature 15/6644 --shots docs/web")
    provenance.stamp_png(tmp_path / "shot.png", rec)
    assert provenance.read(tmp_path / "shot.png") == rec
    with Image.open(tmp_path / "shot.png") as img:
        assert img.size == (8, 4)
