"""What reading a store returns: dashboards, contexts, explanations and labels as dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..labels import AUTO


class AsDict:
    """Results that leave as JSON (the web API, `--json`) as their fields."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Example:
    """One context: tokens around `position` (the token the example is about) with the feature's
    activation on each token; `focus` indexes that token within `tokens`."""

    text_index: int
    label: str | None
    position: int
    act: float
    focus: int
    tokens: list[str]
    acts: list[float]


@dataclass
class Interval:
    """Samples of firings whose activation lies in [low, high); `share` = fraction of all firings."""

    low: float
    high: float
    count: int
    share: float
    examples: list[Example] = field(default_factory=list)


@dataclass
class Explanation(AsDict):
    id: int
    feature: int
    text: str
    source: str
    created_at: str



@dataclass
class FeatureSummary(AsDict):
    feature: int
    fires: int
    density: float
    max_act: float
    mean_act: float



@dataclass
class FeatureDashboard(AsDict):
    feature: int
    layer: int
    model: str
    sae: str
    n_texts: int
    n_tokens: int
    fires: int
    text_fires: int
    density: float  # firings per token
    text_density: float  # share of texts where it fires at least once
    max_act: float
    mean_act: float  # mean activation when firing
    histogram: list[tuple[float, float, int]]  # (low, high, count), nonzero range only
    top: list[Example]
    intervals: list[Interval]
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    explanations: list[Explanation]
    label: str = ""  # the newest explanation, else the automatic label
    label_source: str = AUTO  # that explanation's source, or "auto"
    auto_label: str = ""



@dataclass
class Label:
    """What lists show for a feature: the newest explanation, else its automatic label."""

    text: str
    source: str  # "auto", "manual" or the explaining model's name

    def to_dict(self) -> dict:
        return {"label": self.text, "label_source": self.source}

