"""Export a feature store as a Neuronpedia export: the folder a Neuronpedia instance imports.

Layout (what Neuronpedia's importer reads for one source, `<model>/<layer>-<source set>/`):

    release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl          one row each
    features/batch-<n>.jsonl.gz      rows of its `Neuron` table (one per feature)
    activations/batch-<n>.jsonl.gz   rows of its `Activation` table (top contexts + interval samples)
    explanations/batch-<n>.jsonl.gz  rows of its `Explanation` table

The importer inserts each JSONL file with `jsonb_to_recordset` using the first row's keys as the
column list, so every row of a file has the same keys, and ids that the database does not make
itself (activation and explanation ids) are written here: deterministic, so a re-export of the
same store gives the same ids and a re-import adds nothing twice. Column names and types follow
Neuronpedia's Prisma schema (`apps/webapp/prisma/schema.prisma`).

Mapping from a qscope dashboard: density -> `frac_nonzero`, max activation -> `maxActApprox`,
promoted / suppressed tokens -> `pos_str`/`pos_values` / `neg_str`/`neg_values`, the log-binned
histogram -> `freq_hist_data_bar_values` (bin centres) / `..._heights` (counts), top contexts ->
activations with `binMin=-1` (Neuronpedia's marker for the top bin), interval samples ->
activations with that interval's `binMin`/`binMax`/`binContains` (its share of firings).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import QScopeError
from ..features.store import FeatureStore
from ..features.store.results import Example, FeatureDashboard
from ..io import atomic_dir
from .store_export import dashboard_batches, exported_features

# The bot user that a fresh Neuronpedia database is seeded with: the default creator of uploads.
NEURONPEDIA_BOT_USER = "clkht01d40000jv08hvalcvly"
FEATURES_PER_BATCH = 1024
_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,127}$")


@dataclass
class NeuronpediaTarget:
    """Where the features land on Neuronpedia: model id, source set (the source id is
    `<layer>-<source_set>`), the release they belong to, and who created them."""

    model_id: str
    source_set: str = "qscope-res"
    release: str = "qscope"
    description: str = "Residual stream SAE (qscope)"
    creator_id: str = NEURONPEDIA_BOT_USER
    creator_name: str = "qscope"
    n_layers: int | None = None
    neurons_per_layer: int | None = None
    dataset: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        for name in ("model_id", "source_set", "release"):
            value = getattr(self, name)
            if not _ID_PATTERN.match(value or ""):
                raise QScopeError(f"Neuronpedia {name.replace('_', ' ')} {value!r}: use lowercase letters, digits, "
                                  "'-' and '_' (e.g. smollm2-135m-instruct)")


def default_model_id(model: str) -> str:
    """'HuggingFaceTB/SmolLM2-135M-Instruct' -> 'smollm2-135m-instruct' (Neuronpedia ids are lowercase)."""
    base = Path(model.rstrip("/")).name or model
    return re.sub(r"[^a-z0-9_-]+", "-", base.lower()).strip("-") or "model"


def _id(*parts: object) -> str:
    """A deterministic 25-character cuid-shaped id (lowercase, starts with a letter)."""
    return "q" + hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:24]


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0


def _model_shape(store: FeatureStore, target: NeuronpediaTarget) -> tuple[int, int]:
    from ..sae.registry import DEFAULT_RELEASE, QWEN_SCOPE

    if target.n_layers is not None and target.neurons_per_layer is not None:
        return target.n_layers, target.neurons_per_layer
    model = str(store.meta.get("model", ""))
    release = next((r for r in (DEFAULT_RELEASE, *QWEN_SCOPE) if r.model.lower() == model.lower()), None)
    if release is None:
        raise QScopeError(f"{store.path}: model {model!r} is not one qscope knows the shape of; "
                          "give its layer count and width (--n-layers, --neurons-per-layer)")
    return target.n_layers or release.n_layers, target.neurons_per_layer or release.d_model


# ------------------------------------------------------------------------------ rows
def feature_row(dash: FeatureDashboard, model_id: str, source_id: str, target: NeuronpediaTarget) -> dict:
    """One row of Neuronpedia's `Neuron` table."""
    centres = [math.sqrt(lo * hi) for lo, hi, _ in dash.histogram]
    return {
        "modelId": model_id, "layer": source_id, "index": str(dash.feature), "sourceSetName": target.source_set,
        "creatorId": target.creator_id, "maxActApprox": _finite(dash.max_act), "hasVector": False,
        "pos_str": [t for t, _ in dash.promoted], "pos_values": [round(v, 4) for _, v in dash.promoted],
        "neg_str": [t for t, _ in dash.suppressed], "neg_values": [round(v, 4) for _, v in dash.suppressed],
        "frac_nonzero": _finite(dash.density),
        "freq_hist_data_bar_values": [round(c, 4) for c in centres],
        "freq_hist_data_bar_heights": [float(n) for _, _, n in dash.histogram],
    }


def activation_row(ex: Example, model_id: str, source_id: str, feature: int, creator_id: str, key: str,
                   bin_min: float, bin_max: float, bin_contains: float) -> dict:
    """One row of Neuronpedia's `Activation` table: a context with the feature's value on each token."""
    values = [float(v) for v in ex.acts]
    top = max(range(len(values)), key=values.__getitem__) if values else 0
    return {
        "id": _id(model_id, source_id, feature, key), "modelId": model_id, "layer": source_id, "index": str(feature),
        "tokens": list(ex.tokens), "values": values, "maxValue": values[top] if values else 0.0,
        "maxValueTokenIndex": top, "minValue": min(values) if values else 0.0, "creatorId": creator_id,
        "dataSource": ex.label, "dataIndex": str(ex.text_index), "qualifyingTokenIndex": ex.focus,
        "binMin": bin_min, "binMax": bin_max, "binContains": bin_contains,
    }


def activation_rows(dash: FeatureDashboard, model_id: str, source_id: str, creator_id: str) -> list[dict]:
    """Top contexts (binMin = -1) then interval samples of one feature."""
    rows = [activation_row(ex, model_id, source_id, dash.feature, creator_id, f"top{i}", -1.0, _finite(dash.max_act), -1.0)
            for i, ex in enumerate(dash.top)]
    for n, iv in enumerate(dash.intervals):
        rows += [activation_row(ex, model_id, source_id, dash.feature, creator_id, f"iv{n}.{i}", iv.low, iv.high,
                                round(iv.share, 6)) for i, ex in enumerate(iv.examples)]
    return rows


def explanation_rows(dash: FeatureDashboard, model_id: str, source_id: str, creator_id: str) -> list[dict]:
    """The feature's explanations; the source (manual or the LLM's name) goes to `notes`."""
    return [{"id": _id(model_id, source_id, dash.feature, "explanation", e.id), "modelId": model_id,
             "layer": source_id, "index": str(dash.feature), "description": e.text, "authorId": creator_id,
             "notes": f"qscope: {e.source}", "createdAt": e.created_at} for e in dash.explanations]


def metadata_rows(store: FeatureStore, target: NeuronpediaTarget, source_id: str) -> dict[str, dict]:
    """The one-row files: release, model, source set, source."""
    layers, width = _model_shape(store, target)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    urls = [target.url] if target.url else []
    meta = store.meta
    return {
        "release": {"name": target.release, "description": target.description, "descriptionShort": target.description,
                    "urls": urls, "creatorName": target.creator_name, "creatorNameShort": target.creator_name,
                    "creatorId": target.creator_id, "visibility": "PUBLIC", "createdAt": now},
        "model": {"id": target.model_id, "displayName": str(meta["model"]), "displayNameShort": target.model_id,
                  "creatorId": target.creator_id, "layers": layers, "neuronsPerLayer": width, "owner": target.creator_name,
                  "visibility": "PUBLIC", "createdAt": now, "updatedAt": now},
        "sourceset": {"modelId": target.model_id, "name": target.source_set, "description": target.description,
                      "creatorName": target.creator_name, "creatorId": target.creator_id, "urls": urls,
                      "releaseName": target.release, "visibility": "PUBLIC", "createdAt": now},
        "source": {"id": source_id, "modelId": target.model_id, "setName": target.source_set,
                   "creatorId": target.creator_id, "visibility": "PUBLIC", "hasDashboards": True,
                   "num_prompts": int(meta["texts_done"]), "num_tokens_in_prompt": int(meta["max_length"]),
                   "dataset": target.dataset or "qscope training mix", "notes": f"qscope feature store {store.path.name}",
                   "createdAt": now},
    }


# ------------------------------------------------------------------------------ writing
def _write_jsonl(path: Path, rows: Iterable[dict], gz: bool = False) -> None:
    """One JSON object per line; no file at all for no rows (the importer reads a file's first row)."""
    rows = list(rows)
    if not rows:
        return
    text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    text = text.replace("\\u0000", " ")  # Postgres text cannot hold NUL (byte-level tokens can be one)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=5, mtime=0) if gz else text.encode("utf-8"))


def export_neuronpedia(store: FeatureStore, out: str | Path, target: NeuronpediaTarget,
                       features: Sequence[int] | None = None, batch_size: int = FEATURES_PER_BATCH) -> Path:
    """Write the export under `out/<model_id>/<layer>-<source_set>/` (atomically); returns that folder."""
    source_id = f"{store.layer}-{target.source_set}"
    folder = Path(out) / target.model_id / source_id
    ids = exported_features(store, features)
    meta = metadata_rows(store, target, source_id)
    with atomic_dir(folder) as tmp:
        for name, row in meta.items():
            _write_jsonl(tmp / f"{name}.jsonl", [row])
        for batch, dashes in enumerate(dashboard_batches(store, ids, batch_size)):
            name = f"batch-{batch}.jsonl.gz"
            _write_jsonl(tmp / "features" / name, (feature_row(d, target.model_id, source_id, target) for d in dashes), True)
            _write_jsonl(tmp / "activations" / name, (row for d in dashes for row in
                                                      activation_rows(d, target.model_id, source_id, target.creator_id)), True)
            _write_jsonl(tmp / "explanations" / name, (row for d in dashes for row in
                                                       explanation_rows(d, target.model_id, source_id, target.creator_id)), True)
    return folder
