"""The synthesis jobs, one entry point each: which target features a data set covers, and
generating data for the targets it misses (against a random baseline at the same budget)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from .synth import (ENDPOINT_TEMPLATE, EXAMPLES_TEMPLATE, Candidate, Coverage, Endpoint, Generator, LocalPrompted,
                    LocalSteered, check_targets, coverage_from_acts, describe_by_examples, describe_by_tokens,
                    max_acts_of, synthesize, untargeted)

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

Progress = Callable[[str, int, int], None]  # (stage, n texts or generations, total)


@dataclass(frozen=True)
class CoverageConfig:
    max_length: int = 128  # tokens per text
    batch_size: int = 16


def run_coverage(lm: LM, sae: SAE, texts: Sequence[str], targets: Sequence[int], config: CoverageConfig | None = None,
                 progress: Callable[[int], None] | None = None) -> Coverage:
    """Which targets the texts cover: some text fires the feature (max over tokens > 0)."""
    config = config or CoverageConfig()
    texts = [t for t in texts if t.strip()]
    return coverage_from_acts(max_acts_of(lm, sae, texts, max_length=config.max_length,
                                          batch_size=config.batch_size, progress=progress), targets)


@dataclass(frozen=True)
class SynthConfig:
    """How candidates are generated: by default the local model steered towards the target;
    with example texts, the local model prompted with the target's top-activating examples;
    with `endpoint`, an OpenAI-compatible endpoint given the target's description."""

    per_target: int = 4  # candidates per uncovered target (the budget)
    seed: int = 0  # sampling seed
    random_baseline: bool = True  # also untargeted generation at the same budget
    max_length: int = 128  # tokens per text when checking which features fire
    strength: float = 60.0  # local steering: multiple of the target's decoder direction added
    max_new_tokens: int = 40  # tokens per local candidate
    endpoint: str | None = None  # OpenAI-compatible base URL, e.g. http://localhost:8000/v1
    endpoint_model: str = "gpt-4o-mini"
    template: str | None = None  # prompt with {description} (default: per generator)


@dataclass
class SynthReport:
    """Coverage of the targets by the seed set, and after adding synthesised vs random data."""

    layer: int
    targets: list[int]
    seed: Coverage
    per_target: int
    budget: int
    feature_driven: dict = field(default_factory=dict)
    random: dict = field(default_factory=dict)
    per_feature: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seed"] = self.seed.to_dict()
        return d


def _summary(cands: list[Candidate], seed_cov: Coverage, use_all: bool) -> dict:
    """Coverage of seed + candidates (kept ones, or all for the random baseline)."""
    added = [c for c in cands if c.kept or use_all]
    hit = set(seed_cov.covered) | {t for c in added for t in c.hits}
    uncovered = seed_cov.uncovered
    new = [t for t in uncovered if t in hit]
    return {
        "generated": len(cands),
        "added": len(added),
        "newly_covered": new,
        "coverage_of_uncovered": len(new) / len(uncovered) if uncovered else 1.0,
        "coverage_total": len(hit & set(seed_cov.targets)) / len(seed_cov.targets),
    }


@dataclass
class SynthResult:
    """The report, and every candidate: the synthesised ones and the random baseline's."""

    report: SynthReport
    synthesised: list[Candidate] = field(default_factory=list)
    random: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict:
        return self.report.to_dict()


def generator_for(lm: LM, sae: SAE, config: SynthConfig, examples: Sequence[str] | None = None,
                  progress: Progress | None = None) -> Generator:
    """The generator `config` and `examples` (a pool of texts describing targets) call for."""
    describe = None
    if examples:
        tick = (lambda n: progress("example pool", n, len(examples))) if progress else None
        describe = describe_by_examples(examples, max_acts_of(lm, sae, examples, progress=tick), seed=config.seed)
    if config.endpoint:
        return Endpoint(config.endpoint, config.endpoint_model, describe or describe_by_tokens(lm, sae),
                        config.template or (EXAMPLES_TEMPLATE if describe else ENDPOINT_TEMPLATE),
                        describe_untargeted=bool(describe))
    if describe:
        return LocalPrompted(lm, describe, config.template or EXAMPLES_TEMPLATE, max_new_tokens=config.max_new_tokens)
    return LocalSteered(lm, sae, strength=config.strength, max_new_tokens=config.max_new_tokens)


def run_synthesis(lm: LM, sae: SAE, seed_texts: Sequence[str], targets: Sequence[int],
                  config: SynthConfig | None = None, examples: Sequence[str] | None = None,
                  generator: Generator | None = None, progress: Progress | None = None) -> SynthResult:
    """Seed coverage of `targets`, candidates for the uncovered ones (kept only if they fire
    their target) and the random baseline. `generator` replaces the one `config` describes."""
    config = config or SynthConfig()
    layer = lm.check_sae(sae)
    targets = check_targets(targets, sae.cfg.d_sae)
    generator = generator or generator_for(lm, sae, config, examples, progress)
    tick = (lambda what, total: lambda n: progress(what, n, total)) if progress else (lambda what, total: None)
    texts = [t for t in seed_texts if t.strip()]
    seed_cov = coverage_from_acts(
        max_acts_of(lm, sae, texts, max_length=config.max_length, progress=tick("seed set", len(texts))), targets)
    todo = seed_cov.uncovered
    budget = config.per_target * len(todo)
    synth = synthesize(lm, sae, todo, generator, config.per_target, config.seed, config.max_length,
                       tick("feature-driven", budget)) if todo else []
    rand = untargeted(lm, sae, targets, generator, budget, config.seed, max_length=config.max_length,
                      progress=tick("random", budget)) if config.random_baseline and budget else []
    report = SynthReport(layer, targets, seed_cov, config.per_target, budget, _summary(synth, seed_cov, False),
                         _summary(rand, seed_cov, True) if config.random_baseline else {})
    for t in todo:
        mine = [c for c in synth if c.target == t]
        report.per_feature.append({"feature": t, "kept": sum(c.kept for c in mine), "tried": len(mine),
                                   "max_activation": max((c.activation for c in mine), default=0.0),
                                   "random_hits": sum(t in c.hits for c in rand)})
    return SynthResult(report, synth, rand)
