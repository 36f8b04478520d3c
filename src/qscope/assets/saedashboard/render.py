"""Render this SAEDashboard export to HTML with SAEDashboard's own loader and renderer.

    pip install sae-dashboard            # in an environment of its own: its pins clash with qscope's
    python render.py                     # -> feature_vis.html beside this file
    python render.py --out vis.html --feature 123 --separate

Written by `qscope features export --format saedashboard` next to sae_vis_data.json, vocab.json
and layout.json. No model is loaded: SAEDashboard's renderer reads only `model.tokenizer.vocab`
(token string -> id) to turn token ids back into text, so the export's vocab.json stands in for
the model; the encoder is not read at all. Prints one JSON line: the HTML file(s) and features.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

from sae_dashboard.components_config import ActsHistogramConfig, Column, LogitsTableConfig, SequencesConfig
from sae_dashboard.data_writing_fns import save_feature_centric_vis
from sae_dashboard.layout import SaeVisLayoutConfig
from sae_dashboard.sae_vis_data import SaeVisConfig, SaeVisData

HERE = Path(__file__).resolve().parent


def feature_centric_layout(layout: dict) -> SaeVisLayoutConfig:
    """SAEDashboard's feature-centric layout with the components this data fills: activation
    histogram and logit table (when every feature has rows for it), then the sequence groups."""
    left = [ActsHistogramConfig()]
    if layout["logits_table_rows"] > 0:
        left.append(LogitsTableConfig(n_rows=layout["logits_table_rows"]))
    sequences = SequencesConfig(buffer=tuple(layout["buffer"]), n_quantiles=layout["n_quantiles"],
                                top_acts_group_size=layout["top_acts_group_size"],
                                quantile_group_size=layout["quantile_group_size"], stack_mode="stack-none")
    return SaeVisLayoutConfig(columns=[Column(*left), Column(sequences)], height=750)


def load(folder: Path = HERE) -> SaeVisData:
    """The export through `SaeVisData.load_json`, with the vocabulary as the model's tokenizer."""
    layout = json.loads((folder / "layout.json").read_text(encoding="utf-8"))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    cfg = SaeVisConfig(hook_point=layout["hook_point"], features=layout["features"],
                       feature_centric_layout=feature_centric_layout(layout))
    model = SimpleNamespace(tokenizer=SimpleNamespace(vocab=vocab))
    return SaeVisData.load_json(folder / "sae_vis_data.json", cfg=cfg, model=model, encoder=None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=HERE, help="the export folder (default: this file's)")
    parser.add_argument("--out", type=Path, help="HTML file (default: <folder>/feature_vis.html)")
    parser.add_argument("--feature", type=int, help="the feature the page opens on (default: the first)")
    parser.add_argument("--separate", action="store_true", help="one HTML file per feature")
    args = parser.parse_args(argv)
    data = load(args.folder)
    out = args.out or args.folder / "feature_vis.html"
    save_feature_centric_vis(data, out, feature_idx=args.feature, separate_files=args.separate)
    files = sorted(out.parent.glob(f"{out.stem}_feature_*.html")) if args.separate else [out]
    print(json.dumps({"html": [str(f) for f in files], "features": list(data.feature_data_dict)}))


if __name__ == "__main__":
    main()
