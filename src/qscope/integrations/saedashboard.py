"""Export a feature store as SAEDashboard (sae_vis) data: the JSON that `SaeVisData.load_json`
reads and `save_feature_centric_vis` renders to its HTML dashboard.

Folder (`<out>/<store name>/`):

    sae_vis_data.json   what `SaeVisData.save_json` writes: {feature_data_dict, feature_stats}
    vocab.json          {token string: id} for the token ids in sae_vis_data.json
    layout.json         the settings its feature-centric layout needs for this data
    render.py           loads the three with SAEDashboard's `load_json` and writes its HTML
                        (run it where sae-dashboard is installed: `python render.py`)

SAEDashboard stores token ids and turns them back into text through `model.tokenizer.vocab`; a
store keeps token strings, so the ids here number the distinct strings of this export and
`vocab.json` is the table to decode them with (any object whose `tokenizer.vocab` is that dict
stands in for the model: the renderer reads nothing else from it).

Mapping from a qscope dashboard: the log-binned activation histogram -> `acts_histogram_data`
(bin centres / counts, titled with the density as SAEDashboard does), promoted / suppressed tokens
-> `logits_table_data`, top contexts -> the "TOP ACTIVATIONS" sequence group, interval samples ->
one "INTERVAL" group each, strongest first (their share is of the feature's firings). Every context
is padded with empty tokens to `LEFT` tokens before and `RIGHT` after the token it is about, so
SAEDashboard's `buffer=(LEFT, RIGHT)` puts its bold mark on that token. Not stored, so left
empty: the logits histogram, per-token logit effects and loss contributions, the neuron and
feature correlation tables, activation quantiles (the prompt-centric view needs a model anyway).
"""

from __future__ import annotations

import json
import math
import shutil
from importlib import resources
from pathlib import Path
from typing import Sequence

from ..features.store import FeatureStore
from ..features.store.layout import LEFT, RIGHT
from ..features.store.results import Example, FeatureDashboard
from ..io import atomic_dir
from .store_export import dashboard_batches, exported_features

DATA_FILE, VOCAB_FILE, LAYOUT_FILE, RENDER_FILE = "sae_vis_data.json", "vocab.json", "layout.json", "render.py"
PAD = ""  # the token a context is padded with (renders as nothing, activation 0)
# SAEDashboard's default quantile ranges (`FeatureStatistics.ranges_and_precisions`), kept as it saves them.
RANGES_AND_PRECISIONS = [[[0.0, 0.95], 3], [[0.95, 0.99], 4], [[0.99, 1.0], 5]]
FEATURES_PER_BATCH = 256


class Vocab:
    """Ids for token strings, in order of first use (what `vocab.json` holds)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {PAD: 0}

    def __call__(self, token: str) -> int:
        return self.ids.setdefault(token, len(self.ids))


def ticks(top: float, most: int = 5) -> list[float]:
    """Round tick values from 0 to `top` (steps of 1, 2 or 5 times a power of ten), at most `most` + 1."""
    if not top > 0:
        return [0.0]
    power = 10 ** math.floor(math.log10(top / most))
    step = next(m * power for m in (1, 2, 5, 10) if top / (m * power) <= most)
    return [round(float(i * step), 6) for i in range(int(top / step + 1e-9) + 1)]


def _sequence_data(text: int = 0, position: int = 0, token_ids: list[int] | None = None,
                   acts: list[float] | None = None) -> dict:
    """A SAEDashboard `SequenceData` as `save_json` writes it; per-token logit effects are not stored (zeros)."""
    token_ids, acts = token_ids or [], acts or []
    return {"original_index": text, "qualifying_token_index": position, "token_ids": token_ids, "feat_acts": acts,
            "loss_contribution": [], "token_logits": [0.0] * len(token_ids), "top_token_ids": [], "top_logits": [],
            "bottom_token_ids": [], "bottom_logits": []}


def sequence(ex: Example, vocab: Vocab) -> dict:
    """One context, padded so that the token it is about sits at index LEFT."""
    left, right = LEFT - ex.focus, RIGHT - (len(ex.tokens) - ex.focus - 1)
    tokens = [PAD] * left + list(ex.tokens) + [PAD] * right
    acts = [0.0] * left + [round(float(a), 4) for a in ex.acts] + [0.0] * right
    return _sequence_data(ex.text_index, ex.position, [vocab(t) for t in tokens], acts)


def sequence_groups(dash: FeatureDashboard, vocab: Vocab) -> list[dict]:
    """The top contexts, then the interval samples from the strongest interval down."""
    groups = [{"title": f"TOP ACTIVATIONS<br>MAX = {dash.max_act:.3f}", "seq_data": [sequence(e, vocab) for e in dash.top]}]
    for iv in reversed(dash.intervals):
        groups.append({"title": f"INTERVAL {iv.low:.3f} - {iv.high:.3f}<br>CONTAINS {iv.share:.3%} OF FIRINGS",
                       "seq_data": [sequence(e, vocab) for e in iv.examples]})
    return groups


def _empty_histogram() -> dict:
    return {"bar_heights": [], "bar_values": [], "tick_vals": [], "title": None}


def feature_data(dash: FeatureDashboard, vocab: Vocab) -> dict:
    """One SAEDashboard `FeatureData`, every field as `save_json` writes it."""
    centres = [round(math.sqrt(lo * hi), 6) for lo, hi, _ in dash.histogram]
    tables = ("neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
              *(f"{kind}_{col}" for kind in ("correlated_neurons", "correlated_features", "correlated_b_features")
                for col in ("indices", "pearson", "cossim")))
    return {
        "feature_tables_data": {name: [] for name in tables},
        "acts_histogram_data": {"bar_heights": [float(n) for _, _, n in dash.histogram], "bar_values": centres,
                                "tick_vals": ticks(dash.histogram[-1][1] if dash.histogram else 0.0),
                                "title": f"ACTIVATIONS<br>DENSITY = {dash.density:.3%}"},
        "logits_table_data": {"bottom_token_ids": [vocab(t) for t, _ in dash.suppressed],
                              "bottom_logits": [float(v) for _, v in dash.suppressed],
                              "top_token_ids": [vocab(t) for t, _ in dash.promoted],
                              "top_logits": [float(v) for _, v in dash.promoted]},
        "logits_histogram_data": _empty_histogram(),
        "sequence_data": {"seq_group_data": sequence_groups(dash, vocab)},
        "prompt_data": _sequence_data(),
        "dfa_data": {},
        "decoder_weights_data": None,
    }


def layout(store: FeatureStore, dashes: dict[int, dict]) -> dict:
    """What a feature-centric layout for this data is set to (SAEDashboard's own names): the
    context buffer, how many sequence groups of what size, and how many logit-table rows every
    feature can fill (0: leave the table out)."""
    rows = min((min(len(d["logits_table_data"]["top_logits"]), len(d["logits_table_data"]["bottom_logits"]))
                for d in dashes.values()), default=0)
    groups = [d["sequence_data"]["seq_group_data"] for d in dashes.values()]
    return {"hook_point": f"blocks.{store.layer}.hook_resid_post", "features": list(dashes), "buffer": [LEFT, RIGHT],
            "n_quantiles": max(len(g) - 1 for g in groups),
            "top_acts_group_size": max(len(g[0]["seq_data"]) for g in groups),
            "quantile_group_size": max((len(iv["seq_data"]) for g in groups for iv in g[1:]), default=0),
            "logits_table_rows": rows, "model": store.meta["model"], "sae": store.meta["sae"], "layer": store.layer}


def export_saedashboard(store: FeatureStore, out: str | Path, features: Sequence[int] | None = None,
                        batch_size: int = FEATURES_PER_BATCH) -> Path:
    """Write the export under `out/<store file name>/` (atomically); returns that folder."""
    ids = exported_features(store, features)
    vocab, dashes, maxes, densities = Vocab(), {}, [], []
    for batch in dashboard_batches(store, ids, batch_size):
        for dash in batch:
            dashes[dash.feature] = feature_data(dash, vocab)
            maxes.append(round(float(dash.max_act), 5))
            densities.append(round(float(dash.density), 5))
    data = {"feature_data_dict": dashes,
            "feature_stats": {"max": maxes, "frac_nonzero": densities, "skew": [], "kurtosis": [], "quantile_data": [],
                              "quantiles": [], "ranges_and_precisions": RANGES_AND_PRECISIONS}}
    folder = Path(out) / store.path.stem
    with atomic_dir(folder) as tmp:
        for name, obj in ((DATA_FILE, data), (VOCAB_FILE, vocab.ids), (LAYOUT_FILE, layout(store, dashes))):
            (tmp / name).write_text(json.dumps(obj, ensure_ascii=False, allow_nan=False), encoding="utf-8")
        shutil.copyfile(str(resources.files("qscope") / "assets" / "saedashboard" / RENDER_FILE), tmp / RENDER_FILE)
    return folder
