"""Correctness prediction: does the model know when it is about to be wrong?

`run_label(lm, items, LabelConfig)` runs the model on benchmark items (cached per item) and
`run_report(lm, saes, data, ReportConfig)` puts every confidence score side by side on the same items: logit
baselines, tracing uncertainty, Feature Rivalry, a residual probe per layer and a sparse probe
on SAE codes, each with AUROC, a paired bootstrap CI and its difference to max-prob.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from .dataset import LabelConfig, LabelledItem, LabelledSet, run_label
from .probes import SAEProbe, residual_probe, sae_probe
from .report import (
    ScoreResult,
    UncertaintyReport,
    auroc,
    bootstrap_aurocs,
    ci,
    judge,
    plot_layers,
    plot_selective,
    score_key,
    selective_curve,
    summary_rows,
    write_report,
)
from .scores import logit_scores, rivalry, rivalry_scores, trace_features, trace_score

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

__all__ = ["LabelConfig", "LabelledItem", "LabelledSet", "run_label", "ReportConfig", "run_report", "UncertaintyReport",
           "ScoreResult", "auroc", "bootstrap_aurocs", "ci", "selective_curve", "rivalry", "rivalry_scores",
           "logit_scores", "trace_features", "trace_score", "residual_probe", "sae_probe", "SAEProbe",
           "write_report", "plot_layers", "plot_selective", "summary_rows"]

LABEL_METHODS = {"letter": "choice-letter log-likelihood after 'Answer:'",
                 "cloze": "choice-text log-likelihood (per character) after 'Answer:'",
                 "open": "greedy answer, normalised alias match", "math": "greedy solution, final answer match"}


def label_method(data: LabelledSet) -> str:
    kind = data.items[0].kind
    key = data.config.get("mc_scoring", "letter") if kind == "mc" else kind
    return LABEL_METHODS.get(key, key)


@dataclass(frozen=True)
class ReportConfig:
    probe_layers: tuple[int, ...] | None = None  # layers of the raw-residual probe (None: all)
    folds: int = 5  # cross-validation folds of the learned scores
    seed: int = 0  # folds and bootstrap
    n_boot: int = 1000  # bootstrap resamples for the CIs


def run_report(lm: LM | None, saes: dict[int, SAE] | None, data: LabelledSet, config: ReportConfig | None = None,
               progress: Callable[[str], None] | None = None) -> UncertaintyReport:
    """Score `data` with every method. `saes` maps layer -> SAE (rivalry + SAE probe at each);
    `lm` only names the SAE probe's features by their promoted tokens."""
    config = config or ReportConfig()
    folds, seed, n_boot = config.folds, config.seed, config.n_boot
    say = progress or (lambda _msg: None)
    y = data.labels
    kind = data.items[0].kind
    scores: list[tuple[str, str, int | None, np.ndarray]] = [
        (name, "logit", None, values) for name, values in logit_scores(data).items()]
    say("tracing uncertainty")
    trace = trace_score(data, folds, seed)
    if trace is not None:
        scores.append(("trace_lr", "trace", None, trace))
    layers = list(range(data.n_layers)) if config.probe_layers is None else list(config.probe_layers)
    for layer in layers:
        say(f"residual probe, layer {layer}")
        scores.append(("resid_probe", "probe", layer, residual_probe(data, layer, folds, seed)))
    probes: dict[int, dict] = {}
    for layer, sae in sorted((saes or {}).items()):
        say(f"rivalry and SAE probe, layer {layer}")
        for name, values in rivalry_scores(data, sae, layer).items():
            scores.append((name, "feature", layer, values))
        fitted = sae_probe(data, sae, layer, folds, seed, lm=lm)
        scores.append(("sae_probe", "probe", layer, fitted.scores))
        probes[layer] = {"n_nonzero": fitted.n_nonzero, "C": fitted.C, "features": [f.to_dict() for f in fitted.features]}
    reference = "choice_max_prob" if kind == "mc" and any(s[0] == "choice_max_prob" for s in scores) else "max_prob"
    say("bootstrap")
    results = judge(y, scores, reference, n_boot, seed)
    report = UncertaintyReport(data.benchmark, data.model, len(y), int(y.sum()), label_method(data), reference,
                               results, probes, config={"folds": folds, "seed": seed, "n_boot": n_boot,
                                                        "probe_layers": layers, "sae_layers": sorted(saes or {}),
                                                        "label": data.config})
    values = {score_key(n, layer): v for n, _, layer, v in scores}
    picks = [reference] + [score_key(r.name, r.layer) for r in _best_per_family(results, exclude=reference)]
    report.selective = {key: selective_curve(y, values[key]) for key in dict.fromkeys(picks)}
    return report


def _best_per_family(results: list[ScoreResult], exclude: str) -> list[ScoreResult]:
    """The best score of each family and of each named learned/feature score, for the curves."""
    best: dict[str, ScoreResult] = {}
    for r in results:
        group = r.family if r.family in ("logit", "trace") else r.name
        if score_key(r.name, r.layer) != exclude and (group not in best or r.auroc > best[group].auroc):
            best[group] = r
    return list(best.values())
