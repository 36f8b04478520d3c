"""Feature-store export: the Neuronpedia import folder checked against Neuronpedia's database schema and
the rules of its importer."""

import gzip
import json
from datetime import datetime
from pathlib import Path

import pytest

from qscope.errors import QScopeError
from qscope.features.store import FeatureStore
from qscope.integrations.neuronpedia import NeuronpediaTarget, default_model_id, export_neuronpedia

LAYER = 2  # the layer of the tiny store (conftest.py)

# Neuronpedia's tables as its Prisma schema (apps/webapp/prisma/schema.prisma) declares them: column -> (type,
# required). Required = NOT NULL with no default in the database (Prisma's cuid() ids are made by its client, so a
# raw import must supply them). Only the columns an export may touch are listed; relations are not columns.
NEURONPEDIA_TABLES = {
    "Neuron": {
        "modelId": ("String", True), "layer": ("String", True), "index": ("String", True),
        "sourceSetName": ("String", False), "creatorId": ("String", False), "createdAt": ("DateTime", False),
        "maxActApprox": ("Float", False), "hasVector": ("Boolean", False), "vector": ("Float[]", False),
        "vectorLabel": ("String", False), "vectorDefaultSteerStrength": ("Float", False), "hookName": ("String", False),
        "topkCosSimIndices": ("Int[]", False), "topkCosSimValues": ("Float[]", False),
        **{name: ("Float[]", False) for name in (
            "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_pearson", "correlated_neurons_l1",
            "correlated_features_pearson", "correlated_features_l1", "neg_values", "pos_values",
            "freq_hist_data_bar_heights", "freq_hist_data_bar_values", "logits_hist_data_bar_heights",
            "logits_hist_data_bar_values", "decoder_weights_dist")},
        **{name: ("Int[]", False) for name in ("neuron_alignment_indices", "correlated_neurons_indices",
                                               "correlated_features_indices")},
        "neg_str": ("String[]", False), "pos_str": ("String[]", False), "frac_nonzero": ("Float", False),
        "umap_cluster": ("Int", False), "umap_log_feature_sparsity": ("Float", False), "umap_x": ("Float", False),
        "umap_y": ("Float", False),
    },
    "Activation": {
        "id": ("String", True), "tokens": ("String[]", True), "dataIndex": ("String", False), "index": ("String", True),
        "layer": ("String", True), "modelId": ("String", True), "dataSource": ("String", False),
        "maxValue": ("Float", True), "maxValueTokenIndex": ("Int", True), "minValue": ("Float", True),
        "values": ("Float[]", True), "dfaValues": ("Float[]", False), "dfaTargetIndex": ("Int", False),
        "dfaMaxValue": ("Float", False), "zQIndices": ("Int[]", False), "zKIndices": ("Int[]", False),
        "zValues": ("Float[]", False), "creatorId": ("String", True), "createdAt": ("DateTime", False),
        "lossValues": ("Float[]", False), "logitContributions": ("String", False), "binMin": ("Float", False),
        "binMax": ("Float", False), "binContains": ("Float", False), "qualifyingTokenIndex": ("Int", False),
    },
    "Explanation": {
        "id": ("String", True), "modelId": ("String", True), "layer": ("String", True), "index": ("String", True),
        "description": ("String", True), "authorId": ("String", True), "triggeredByUserId": ("String", False),
        "notes": ("String", False), "scoreV1": ("Float", False), "scoreV2": ("Float", False),
        "typeName": ("String", False), "explanationModelName": ("String", False), "createdAt": ("DateTime", False),
        "updatedAt": ("DateTime", False),
    },
    "Source": {
        "id": ("String", True), "modelId": ("String", True), "hasDashboards": ("Boolean", False),
        "inferenceEnabled": ("Boolean", False), "saelensConfig": ("Json", False), "saelensRelease": ("String", False),
        "saelensSaeId": ("String", False), "hfRepoId": ("String", False), "hfFolderId": ("String", False),
        "visibility": ("Visibility", False), "setName": ("String", True), "creatorId": ("String", True),
        "num_prompts": ("Int", False), "num_tokens_in_prompt": ("Int", False), "dataset": ("String", False),
        "notes": ("String", False), "createdAt": ("DateTime", False),
    },
    "SourceSet": {
        "modelId": ("String", True), "name": ("String", True), "hasDashboards": ("Boolean", False),
        "visibility": ("Visibility", False), "description": ("String", True), "type": ("String", False),
        "creatorName": ("String", True), "urls": ("String[]", True), "creatorEmail": ("String", False),
        "creatorId": ("String", True), "releaseName": ("String", False), "createdAt": ("DateTime", False),
    },
    "SourceRelease": {
        "name": ("String", True), "visibility": ("Visibility", False), "featured": ("Boolean", False),
        "description": ("String", True), "descriptionShort": ("String", False), "urls": ("String[]", True),
        "creatorEmail": ("String", False), "creatorName": ("String", True), "creatorNameShort": ("String", False),
        "creatorId": ("String", True), "createdAt": ("DateTime", False),
    },
    "Model": {
        "id": ("String", True), "displayNameShort": ("String", False), "displayName": ("String", False),
        "creatorId": ("String", True), "visibility": ("Visibility", False), "instruct": ("Boolean", False),
        "layers": ("Int", True), "neuronsPerLayer": ("Int", True), "createdAt": ("DateTime", False),
        "owner": ("String", True), "updatedAt": ("DateTime", False), "website": ("String", False),
    },
}
FILES = {"release.jsonl": "SourceRelease", "model.jsonl": "Model", "sourceset.jsonl": "SourceSet",
         "source.jsonl": "Source", "features": "Neuron", "activations": "Activation", "explanations": "Explanation"}


def _type_ok(kind: str, value) -> bool:
    if value is None:
        return True
    if kind.endswith("[]"):
        return isinstance(value, list) and all(_type_ok(kind[:-2], v) and v is not None for v in value)
    return {
        "String": lambda v: isinstance(v, str), "Int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "Float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "Boolean": lambda v: isinstance(v, bool),
        "DateTime": lambda v: isinstance(v, str) and datetime.fromisoformat(v) is not None,
        "Visibility": lambda v: v in ("PUBLIC", "UNLISTED", "PRIVATE"), "Json": lambda v: True,
    }[kind](value)


def check_rows(table: str, rows: list[dict]) -> None:
    """What Neuronpedia's importer needs: known columns only, the first row's keys in every row (its
    column list), every required column non-null, values of the column's type, no NUL characters."""
    columns = NEURONPEDIA_TABLES[table]
    assert rows, f"{table}: empty file"
    for row in rows:
        assert set(row) == set(rows[0]), f"{table}: rows with different keys"
        unknown = set(row) - set(columns)
        assert not unknown, f"{table}: not columns of Neuronpedia's schema: {unknown}"
        for name, (kind, required) in columns.items():
            assert not required or row.get(name) is not None, f"{table}: required column {name} missing"
            assert _type_ok(kind, row.get(name)), f"{table}.{name}: {row.get(name)!r} is not {kind}"
        assert "\\u0000" not in json.dumps(row)


def read_export(folder: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for name, table in FILES.items():
        paths = [folder / name] if name.endswith(".jsonl") else sorted((folder / name).glob("*.jsonl.gz"))
        for path in paths:
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
            check_rows(table, rows)
            out.setdefault(table, []).extend(rows)
    return out


TARGET = dict(model_id="tiny-llama", n_layers=4, neurons_per_layer=32)


def test_neuronpedia_export_matches_schema_and_store(store_path, tmp_path):
    with FeatureStore(store_path) as st:
        folder = export_neuronpedia(st, tmp_path, NeuronpediaTarget(**TARGET), batch_size=16)
        fired = [f for (f,) in st.conn.execute("SELECT feature FROM feature_stats WHERE fires > 0")]
        dashes = {f: st.dashboard(f) for f in fired}
    assert folder == tmp_path / "tiny-llama" / f"{LAYER}-qscope-res"
    assert len(list((folder / "features").glob("*.jsonl.gz"))) == -(-len(fired) // 16)
    tables = read_export(folder)
    source = tables["Source"][0]
    assert (source["id"], source["modelId"], source["setName"]) == (f"{LAYER}-qscope-res", "tiny-llama", "qscope-res")
    assert tables["SourceSet"][0]["releaseName"] == tables["SourceRelease"][0]["name"]
    # Every feature that fired, with its stats; every row points at an exported feature of this source.
    neurons = {int(n["index"]): n for n in tables["Neuron"]}
    assert sorted(neurons) == sorted(fired)
    for f, n in neurons.items():
        assert (n["modelId"], n["layer"]) == (source["modelId"], source["id"])
        assert n["frac_nonzero"] == pytest.approx(dashes[f].density)
        assert n["maxActApprox"] == pytest.approx(dashes[f].max_act)
        assert sum(n["freq_hist_data_bar_heights"]) == dashes[f].fires
        assert n["pos_str"] == [t for t, _ in dashes[f].promoted]
    for row in tables["Activation"] + tables["Explanation"]:
        assert (row["modelId"], row["layer"]) == (source["modelId"], source["id"]) and int(row["index"]) in neurons
    # Activations: the top contexts (binMin -1) and the interval samples, values aligned with tokens.
    acts = [a for a in tables["Activation"] if int(a["index"]) == fired[0]]
    assert len(acts) == len(dashes[fired[0]].top) + sum(len(iv.examples) for iv in dashes[fired[0]].intervals)
    for a in tables["Activation"]:
        assert len(a["tokens"]) == len(a["values"]) and a["values"][a["maxValueTokenIndex"]] == a["maxValue"]
    tops = sorted((a for a in acts if a["binMin"] == -1), key=lambda a: -a["maxValue"])
    assert [a["maxValue"] for a in tops] == pytest.approx([ex.act for ex in dashes[fired[0]].top], abs=1e-2)
    assert len({a["id"] for a in tables["Activation"]}) == len(tables["Activation"])
    # Explanations keep text and source.
    assert sorted((e["description"], e["notes"]) for e in tables["Explanation"]) == [
        ("articles", "qscope: some-llm"), ("the word 'the'", "qscope: manual")]


def test_neuronpedia_export_is_deterministic_and_selective(store_path, tmp_path):
    with FeatureStore(store_path) as st:
        first = export_neuronpedia(st, tmp_path / "a", NeuronpediaTarget(**TARGET), features=[1, 2])
        second = export_neuronpedia(st, tmp_path / "b", NeuronpediaTarget(**TARGET), features=[1, 2])
    assert [int(n["index"]) for n in read_export(first)["Neuron"]] == [1, 2]
    for name in ("features/batch-0.jsonl.gz", "activations/batch-0.jsonl.gz"):
        assert (first / name).read_bytes() == (second / name).read_bytes()  # same ids: a re-import adds nothing


def test_neuronpedia_export_errors(store_path, tmp_path):
    with pytest.raises(QScopeError, match="lowercase"):
        NeuronpediaTarget("Bad Model")
    with FeatureStore(store_path) as st:
        with pytest.raises(QScopeError, match="--n-layers"):
            export_neuronpedia(st, tmp_path, NeuronpediaTarget("tiny-llama"))
        with pytest.raises(QScopeError, match="out of range"):
            export_neuronpedia(st, tmp_path, NeuronpediaTarget(**TARGET), features=[10_000])
    assert default_model_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2-135m-instruct"


def test_cli_export_neuronpedia(store_path, tmp_path, capsys):
    from typer.testing import CliRunner

    from qscope.cli import run
    from qscope.cli.features import app

    result = CliRunner().invoke(app, ["export", "--store", str(store_path), "--format", "neuronpedia",
                                      "-o", str(tmp_path), "--model-id", "tiny-llama", "--n-layers", "4",
                                      "--neurons-per-layer", "32", "--features", "0,1,2", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert "features/batch-0.jsonl.gz" in info["files"]
    assert [int(n["index"]) for n in read_export(Path(info["folder"]))["Neuron"]] == [0, 1, 2]
    assert run(["features", "export", "--store", str(store_path), "--format", "csv", "-o", str(tmp_path)]) == 2
    assert "expected neuronpedia" in capsys.readouterr().err
