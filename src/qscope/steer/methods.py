"""The steering methods compared by `qscope steer eval --methods`, at matched edit sizes.

Each method turns one nominal strength s (the per-feature strength of the SAE edit) into a
steering object:

| method | edit at strength s |
| --- | --- |
| `sae` | h + s * sum_f d_f over the chosen features (Qwen-Scope) |
| `sae-gated` | the same, only at positions where each feature itself fires |
| `diffmean` | h + sign(s) * n(s) * u_diffmean |
| `repe` | h + sign(s) * n(s) * u_repe |
| `random-feature` | h + s * sum_g d_g, g drawn among features of similar firing density |
| `random-direction` | h + sign(s) * n(s) * u_random |

where n(s) = ||s * sum_f d_f|| is the norm of the SAE edit, so every full-layer method moves the
residual by exactly as much as the SAE edit does. Each point also reports that norm relative to
the mean residual norm at the layer (`edit_norm_ratio`), so sweeps are comparable across layers
and models.
"""

from __future__ import annotations

import math

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..errors import QScopeError
from .directions import DirectionSteering, diffmean_direction, random_direction, repe_direction
from .steering import FeatureEdit, Positions, Steering

if TYPE_CHECKING:
    from ..model.lm import LM
    from ..sae import SAE

METHODS = ("sae", "sae-gated", "diffmean", "repe", "random-feature", "random-direction")
NEEDS_TEXTS = ("diffmean", "repe")


def density_matched_features(rates: torch.Tensor, features: Sequence[int], seed: int = 0,
                             window: int = 20) -> list[int]:
    """For each feature, a random other feature among the `window` whose firing rate (share of
    tokens it fires on) is closest in log scale; never a chosen feature, never a dead one."""
    rates = rates.double().cpu()
    chosen = set(int(f) for f in features)
    alive = [i for i in range(len(rates)) if rates[i] > 0 and i not in chosen]
    if len(alive) < len(chosen):
        raise QScopeError("too few live features to draw a density-matched random control")
    log_alive = torch.log(rates[alive])
    gen = torch.Generator().manual_seed(seed)
    picked: list[int] = []
    for f in features:
        target = torch.log(rates[f].clamp(min=rates[rates > 0].min()))
        order = (log_alive - target).abs().argsort()
        pool = [alive[int(i)] for i in order if alive[int(i)] not in picked][:window]
        picked.append(pool[int(torch.randint(len(pool), (1,), generator=gen))])
    return picked


@dataclass
class MethodSet:
    """Steering factories (nominal strength -> steering object) for several methods, all at
    one layer and matched in edit norm to the SAE edit of `features`."""

    sae: SAE
    layer: int
    features: list[int]
    factories: dict[str, Callable[[float], object]]
    residual_norm: float
    feature_sets: dict[str, list[int]] = field(default_factory=dict)  # SAE methods on other features

    def edit_norm(self, strength: float, features: Sequence[int] | None = None) -> float:
        """||s * sum_f d_f||: the SAE edit's norm at nominal strength s, matched by every
        full-layer method."""
        feats = self.features if features is None else features
        return float(Steering.add(self.sae, {f: float(strength) for f in feats}).edit_vector().norm())

    def edit_norm_ratio(self, method: str, strength: float) -> float:
        """The edit's norm relative to the mean residual norm (an SAE method on other features,
        e.g. random ones: the norm of its own edit)."""
        return self.edit_norm(strength, self.feature_sets.get(method)) / self.residual_norm

    def add_features(self, name: str, features: Sequence[int], gated: bool = False,
                     positions: Positions = "all") -> None:
        """Add an SAE method steering other features at the same nominal strengths (e.g.
        features chosen by another ranking)."""
        feats = [int(f) for f in features]
        self.feature_sets[name] = feats
        self.factories[name] = lambda s: Steering(self.sae, [FeatureEdit(f, float(s), "add", gate=f if gated else None)
                                                             for f in feats], positions, self.layer)

    def describe(self) -> dict:
        return {"layer": self.layer, "features": self.features, "feature_sets": self.feature_sets,
                "residual_norm": self.residual_norm, "methods": list(self.factories)}


def build_methods(lm: LM, sae: SAE, features: Sequence[int], methods: Sequence[str], residual_norm: float,
                  positive: Sequence[str] = (), negative: Sequence[str] = (), rates: torch.Tensor | None = None,
                  layer: int | None = None, positions: Positions = "all", seed: int = 0,
                  control_seeds: Sequence[int] = ()) -> MethodSet:
    """Factories for `methods` (names from METHODS). `positive`/`negative` texts are needed by
    diffmean and repe (the same sets the features were found on), `rates` (per-feature firing
    rates, e.g. `collect_stats(...).rate`) by random-feature. `seed` draws the random controls
    and repe's pairing; each of `control_seeds` adds another draw of each random control, named
    e.g. `random-direction@2`."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise QScopeError(f"unknown steering method {unknown[0]!r}; choose from {', '.join(METHODS)} (and prompt)")
    features = [int(f) for f in features]
    if not features:
        raise QScopeError("give at least one feature to steer")
    layer = lm.check_sae(sae, layer)
    if any(m in NEEDS_TEXTS for m in methods) and (not positive or not negative):
        raise QScopeError("diffmean and repe need the positive and negative texts the features were found on "
                          "(--pos and --neg)")
    if "random-feature" in methods and rates is None:
        raise QScopeError("random-feature needs the features' firing rates to match densities")
    out = MethodSet(sae, layer, features, {}, residual_norm)

    def add_direction(name: str, direction: torch.Tensor) -> None:
        base = DirectionSteering(direction, layer, 0.0, positions, name)
        out.factories[name] = lambda s: base.at(math.copysign(out.edit_norm(s), s) if s else 0.0)

    for name in methods:
        if name in ("sae", "sae-gated"):
            out.add_features(name, features, gated=name == "sae-gated", positions=positions)
        elif name == "diffmean":
            add_direction(name, diffmean_direction(lm, layer, positive, negative))
        elif name == "repe":
            add_direction(name, repe_direction(lm, layer, positive, negative, seed))
        for i, draw in enumerate([seed, *[c for c in control_seeds if c != seed]]):
            suffix = f"@{draw}" if i else ""
            if name == "random-feature":
                out.add_features(name + suffix, density_matched_features(rates, features, draw), positions=positions)
            elif name == "random-direction":
                add_direction(name + suffix, random_direction(lm.d_model, draw))
    return out
