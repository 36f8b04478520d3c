"""Several steering methods, one yardstick: success against side effects, with intervals.

`compare_methods` runs `evaluate_steering` for every method of a `MethodSet` (same prompts,
same strengths, same judges, shared cache) plus the unsteered model once and the prompting
baselines once, and answers the precision question: at a given KL budget on neutral prompts,
which method reaches the highest success? (`best_at_kl`.)
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import QScopeError
from .evaluate import NEUTRAL_PROMPTS, SteerPoint, evaluate_steering
from .methods import MethodSet

if TYPE_CHECKING:
    from ..model.lm import LM

# the scores of a point that go into the comparison's JSON (the outputs stay in `details`)
POINT_KEYS = ("strength", "edit_norm_ratio", "success", "success_ci", "success_alt", "judge_agreement", "kl", "kl_ci",
              "perplexity", "perplexity_ci", "mean_tokens", "target_mean")


def _row(point: SteerPoint) -> dict:
    d = point.to_dict()
    return {k: d[k] for k in POINT_KEYS}


@dataclass
class MethodComparison:
    """Per method, one row per strength (the unsteered model first, at strength 0)."""

    methods: dict[str, list[dict]]
    prompting: list[dict]  # one row per instruction, with its text
    setup: dict
    outputs: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # method -> strength -> answers

    def to_dict(self, with_outputs: bool = False) -> dict:
        out = {"methods": self.methods, "prompting": self.prompting, "setup": self.setup,
               "best_at_kl": self.best_at_kl()}
        if with_outputs:
            out["outputs"] = self.outputs
        return out

    def best_at_kl(self, budgets: Sequence[float] = (0.05, 0.1, 0.2, 0.5)) -> list[dict]:
        """For each KL budget: every method's highest success among its points whose KL is within
        the budget (the unsteered model always is), and the method with the highest."""
        rows = []
        for budget in budgets:
            per = {}
            for name, points in {**self.methods, **{p["label"]: [p] for p in self.prompting}}.items():
                ok = [p for p in points if p["kl"] <= budget and p["success"] is not None]
                if ok:
                    best = max(ok, key=lambda p: p["success"])
                    per[name] = {"success": best["success"], "success_ci": best["success_ci"], "kl": best["kl"],
                                 "strength": best.get("strength"), "perplexity": best["perplexity"]}
            winner = max(per, key=lambda m: per[m]["success"]) if per else None
            rows.append({"kl_budget": budget, "best": winner, "by_method": per})
        return rows

    def plot(self, path: str | Path) -> Path:
        """PNG: success against KL on neutral prompts, one frontier per method (95% intervals as
        error bars), prompting instructions as stars."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..io import save_png

        fig, ax = plt.subplots(figsize=(7.5, 5))
        colours = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"])
        for name, points in self.methods.items():
            pts = sorted((p for p in points if p["success"] is not None), key=lambda p: p["kl"])
            xs = [max(p["kl"], 1e-4) for p in pts]
            ys = [p["success"] for p in pts]
            err = [[y - p["success_ci"][0] for y, p in zip(ys, pts)], [p["success_ci"][1] - y for y, p in zip(ys, pts)]]
            control = name.startswith("random")  # the controls: thin, grey, no error bars
            if control:
                ax.plot(xs, ys, "--", marker=".", lw=1, color="0.55" if "direction" in name else "0.75",
                        label=name if "@" not in name else None)
            else:
                ax.errorbar(xs, ys, yerr=err, fmt="o-", ms=4, capsize=2, color=next(colours, None), label=name)
        for p, marker in zip(self.prompting, ["*", "P", "X", "D"]):
            ax.plot([max(p["kl"], 1e-4)], [p["success"]], marker, ms=12, color="black", mfc="gold",
                    label=p["label"][:45], linestyle="none")
        ax.set_xscale("log")
        ax.set_xlabel("KL(plain || steered) on neutral prompts, nats/token (log; lower = fewer side effects)")
        ax.set_ylabel(f"success ({self.setup.get('detector')})")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", title="random controls: dashed grey, every seed", title_fontsize=7)
        ax.set_title(self.setup.get("title", "steering methods"), fontsize=9)
        fig.tight_layout()
        return save_png(fig, path)


def compare_methods(lm: LM, methods: MethodSet, strengths: Sequence[float], prompts: Sequence[str],
                    detector: Callable[[str], bool], baselines: Sequence[str] = (),
                    neutral_prompts: Sequence[str] = NEUTRAL_PROMPTS, max_new_tokens: int = 32,
                    batch_size: int = 8, cache: MutableMapping[str, list[str]] | None = None,
                    second_detector: Callable[[str], bool] | None = None,
                    progress: Callable[[int], None] | None = None, title: str | None = None) -> MethodComparison:
    """Evaluate every method of `methods` at the nominal `strengths` (0 is left out: the
    unsteered model is evaluated once and heads every method's row list)."""
    strengths = [float(s) for s in strengths if float(s) != 0]
    if not strengths:
        raise QScopeError("give at least one non-zero strength to compare steering methods")
    cache = {} if cache is None else cache
    common = dict(detector=detector, neutral_prompts=neutral_prompts, max_new_tokens=max_new_tokens,
                  batch_size=batch_size, cache=cache, progress=progress, second_detector=second_detector)
    first = next(iter(methods.factories.values()))
    plain = evaluate_steering(lm, first, prompts, [0.0], baseline_prompt=list(baselines),
                              edit_norm_ratio=lambda s: 0.0, **common)
    rows: dict[str, list[dict]] = {}
    outputs: dict[str, dict[str, list[str]]] = {"plain": {"0": plain.points[0].outputs}}
    for name, factory in methods.factories.items():
        result = evaluate_steering(lm, factory, prompts, strengths,
                                   edit_norm_ratio=lambda s, m=name: methods.edit_norm_ratio(m, s), **common)
        rows[name] = [_row(plain.points[0])] + [_row(p) for p in result.points]
        outputs[name] = {f"{p.strength:g}": p.outputs for p in result.points}
    prompting = [{"label": b.label, "instruction": text, **_row(b)} for b, text in zip(plain.baselines, baselines)]
    for b, text in zip(plain.baselines, baselines):
        outputs[f"prompting: {text}"] = {"-": b.outputs}
    setup = {**methods.describe(), "strengths": strengths, "n_prompts": len(prompts),
             "n_neutral": len(neutral_prompts), "max_new_tokens": max_new_tokens,
             "detector": getattr(detector, "__name__", None),
             "second_detector": getattr(second_detector, "__name__", None), "title": title or ""}
    return MethodComparison(rows, prompting, setup, outputs)
