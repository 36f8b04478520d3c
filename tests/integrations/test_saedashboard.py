"""Feature-store export for SAEDashboard: the JSON checked against SAEDashboard's dataclasses and the
store, and (where sae-dashboard is installed) loaded with its own `load_json` and rendered to HTML."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qscope.errors import QScopeError
from qscope.features.store import FeatureStore
from qscope.features.store.layout import LEFT, RIGHT
from qscope.integrations.saedashboard import DATA_FILE, LAYOUT_FILE, PAD, RENDER_FILE, VOCAB_FILE, export_saedashboard

# The fields of SAEDashboard's dataclasses (sae_dashboard 0.8.0: feature_data.py, components.py,
# utils_fns.py), as `save_json` writes them: what `load_json` maps back onto those classes.
SEQUENCE = {"original_index", "qualifying_token_index", "token_ids", "feat_acts", "loss_contribution", "token_logits",
            "top_token_ids", "top_logits", "bottom_token_ids", "bottom_logits"}
HISTOGRAM = {"bar_heights", "bar_values", "tick_vals", "title"}
FEATURE_DATA = {
    "feature_tables_data": {f"{kind}_{col}" for kind, cols in (
        ("neuron_alignment", ("indices", "values", "l1")), ("correlated_neurons", ("indices", "pearson", "cossim")),
        ("correlated_features", ("indices", "pearson", "cossim")), ("correlated_b_features", ("indices", "pearson", "cossim")))
        for col in cols},
    "acts_histogram_data": HISTOGRAM, "logits_histogram_data": HISTOGRAM,
    "logits_table_data": {"bottom_token_ids", "bottom_logits", "top_token_ids", "top_logits"},
    "sequence_data": {"seq_group_data"}, "prompt_data": SEQUENCE, "dfa_data": None, "decoder_weights_data": None,
}
FEATURE_STATS = {"max", "frac_nonzero", "skew", "kurtosis", "quantile_data", "quantiles", "ranges_and_precisions"}


def read(folder: Path) -> tuple[dict, dict[int, str], dict]:
    data = json.loads((folder / DATA_FILE).read_text(encoding="utf-8"))
    vocab = json.loads((folder / VOCAB_FILE).read_text(encoding="utf-8"))
    return data, {i: t for t, i in vocab.items()}, json.loads((folder / LAYOUT_FILE).read_text(encoding="utf-8"))


def check_shape(data: dict) -> None:
    """Every object has exactly the fields of the SAEDashboard class it stands for."""
    assert set(data) == {"feature_data_dict", "feature_stats"} and set(data["feature_stats"]) == FEATURE_STATS
    for key, fd in data["feature_data_dict"].items():
        assert key.isdigit() and set(fd) == set(FEATURE_DATA)
        for name, fields in FEATURE_DATA.items():
            assert fields is None or set(fd[name]) == fields, name
        for group in fd["sequence_data"]["seq_group_data"]:
            assert set(group) == {"title", "seq_data"} and all(set(s) == SEQUENCE for s in group["seq_data"])


def test_saedashboard_export_matches_its_classes_and_the_store(store_path, tmp_path):
    with FeatureStore(store_path) as st:
        folder = export_saedashboard(st, tmp_path, batch_size=5)
        fired = [f for (f,) in st.conn.execute("SELECT feature FROM feature_stats WHERE fires > 0 ORDER BY feature")]
        dashes = {f: st.dashboard(f) for f in fired}
    assert folder == tmp_path / store_path.stem
    assert sorted(p.name for p in folder.iterdir()) == sorted([DATA_FILE, VOCAB_FILE, LAYOUT_FILE, RENDER_FILE])
    data, token, layout = read(folder)
    check_shape(data)
    features = data["feature_data_dict"]
    assert [int(f) for f in features] == fired == layout["features"]
    assert data["feature_stats"]["max"] == pytest.approx([dashes[f].max_act for f in fired], abs=1e-5)
    assert data["feature_stats"]["frac_nonzero"] == pytest.approx([dashes[f].density for f in fired], abs=1e-5)
    assert layout["buffer"] == [LEFT, RIGHT] and layout["hook_point"] == "blocks.2.hook_resid_post"
    for f, dash in dashes.items():
        fd = features[str(f)]
        hist = fd["acts_histogram_data"]
        assert sum(hist["bar_heights"]) == dash.fires and len(hist["bar_values"]) == len(dash.histogram)
        assert all(lo <= x <= hi for x, (lo, hi, _) in zip(hist["bar_values"], dash.histogram))
        assert hist["tick_vals"][0] == 0 and max(hist["bar_values"]) / 2 < hist["tick_vals"][-1] <= dash.histogram[-1][1]
        table = fd["logits_table_data"]
        assert [token[i] for i in table["top_token_ids"]] == [t for t, _ in dash.promoted]
        assert table["bottom_logits"] == pytest.approx([v for _, v in dash.suppressed])
        # Top contexts first, then the intervals strongest first; the qualifying token at index LEFT.
        groups = fd["sequence_data"]["seq_group_data"]
        assert len(groups) == 1 + len(dash.intervals) <= 1 + layout["n_quantiles"]
        examples = [dash.top, *(iv.examples for iv in reversed(dash.intervals))]
        assert [g["title"].startswith("TOP ACTIVATIONS") for g in groups] == [True] + [False] * len(dash.intervals)
        for group, exs in zip(groups, examples):
            assert len(group["seq_data"]) == len(exs)
            for seq, ex in zip(group["seq_data"], exs):
                assert len(seq["token_ids"]) == len(seq["feat_acts"]) == len(seq["token_logits"]) == LEFT + RIGHT + 1
                assert seq["feat_acts"][LEFT] == pytest.approx(ex.act, abs=1e-2)
                assert "".join(token[i] for i in seq["token_ids"]) == "".join(ex.tokens)
                assert (seq["original_index"], seq["qualifying_token_index"]) == (ex.text_index, ex.position)
        assert layout["top_acts_group_size"] >= len(dash.top)
        assert layout["quantile_group_size"] >= max((len(iv.examples) for iv in dash.intervals), default=0)
        assert 0 < layout["logits_table_rows"] <= min(len(dash.promoted), len(dash.suppressed))
    assert token[0] == PAD
    assert layout["top_acts_group_size"] == max(len(d.top) for d in dashes.values())
    assert layout["quantile_group_size"] == max(len(iv.examples) for d in dashes.values() for iv in d.intervals)


def test_saedashboard_export_is_deterministic_and_selective(store_path, tmp_path):
    with FeatureStore(store_path) as st:
        first = export_saedashboard(st, tmp_path / "a", features=[3, 1])
        second = export_saedashboard(st, tmp_path / "b", features=[3, 1])
        with pytest.raises(QScopeError, match="out of range"):
            export_saedashboard(st, tmp_path, features=[10_000])
    assert list(read(first)[0]["feature_data_dict"]) == ["3", "1"]
    for name in (DATA_FILE, VOCAB_FILE, LAYOUT_FILE):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_cli_export_saedashboard(store_path, tmp_path, capsys):
    from typer.testing import CliRunner

    from qscope.cli import run
    from qscope.cli.features import app

    result = CliRunner().invoke(app, ["export", "--store", str(store_path), "--format", "saedashboard",
                                      "-o", str(tmp_path), "--features", "0,1,2", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["format"] == "saedashboard" and DATA_FILE in info["files"]
    assert list(read(Path(info["folder"]))[0]["feature_data_dict"]) == ["0", "1", "2"]
    assert run(["features", "export", "--store", str(store_path), "--format", "csv", "-o", str(tmp_path)]) == 2
    assert "expected neuronpedia or saedashboard" in capsys.readouterr().err
    assert run(["features", "export", "--store", str(store_path), "--format", "saedashboard", "-o", str(tmp_path),
                "--n-layers", "4"]) == 2
    assert "--n-layers: only for --format neuronpedia" in capsys.readouterr().err


def saedashboard_python() -> str | None:
    """A Python with sae-dashboard: this one, else QSCOPE_SAEDASHBOARD_PYTHON, else the repo's .venv-saedash
    (experiments/saedashboard_venv.sh makes it; sae-dashboard's pins clash with qscope's own)."""
    if importlib.util.find_spec("sae_dashboard"):
        return sys.executable
    venv = Path(__file__).resolve().parents[2] / ".venv-saedash" / "bin" / "python"
    candidate = os.environ.get("QSCOPE_SAEDASHBOARD_PYTHON") or (str(venv) if venv.exists() else None)
    return candidate if candidate and Path(candidate).exists() else None


@pytest.mark.skipif(saedashboard_python() is None, reason="needs sae-dashboard: bash experiments/saedashboard_venv.sh "
                    "(or QSCOPE_SAEDASHBOARD_PYTHON=<a python that has it>)")
def test_saedashboard_loads_and_renders_the_export(store_path, tmp_path):
    with FeatureStore(store_path) as st:
        folder = export_saedashboard(st, tmp_path)
        dash = st.dashboard(st.top_features_by_density(1)[0].feature)
    run = subprocess.run([saedashboard_python(), str(folder / RENDER_FILE)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    assert info["features"] == read(folder)[2]["features"]
    html = Path(info["html"][0]).read_text(encoding="utf-8")
    script = html.split("function defineData()", 1)[1].split("return ", 1)[1]
    page = json.JSONDecoder().raw_decode(script)[0]  # the data the page's script draws
    assert set(page["DASHBOARD_DATA"]) == {str(f) for f in info["features"]}
    drawn = page["DASHBOARD_DATA"][str(dash.feature)]
    assert drawn["actsHistogramData"]["0"]["y"] == [float(n) for _, _, n in dash.histogram]
    assert [row["symbol"] for row in drawn["logitsTableData"]["0"]["posLogits"]] == [t for t, _ in dash.promoted]
    shown = [tok for group in drawn["tokenData"].values() for seq in group["data"] for tok in seq if tok.get("isBold")]
    assert [t["featAct"] for t in shown[:len(dash.top)]] == pytest.approx([ex.act for ex in dash.top], abs=1e-2)
