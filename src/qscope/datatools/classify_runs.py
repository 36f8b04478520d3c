"""The feature-classifier jobs, one entry point each: discover a classifier on a labelled task,
label a few texts, score classifiers against probes on tasks, classify a large corpus.

Every job takes a config and returns a result with `to_dict()`; `progress(stage, n, total)`
reports encoding (n texts of total) and stage changes (n = total = 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from ..errors import QScopeError
from ..io import write_json
from .cache import CodeCache, ResidualStore, encode_examples
from .classify import (KS, FeatureClassifier, TaskReport, choose_layer, discover, evaluate_task, multi_layer,
                       plot_efficiency, top1_diff)
from .scale import CorpusResult, Loader, classify_ray, classify_stream

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE
    from .labelled import Task

Progress = Callable[[str, int, int], None]


def code_cache(lm: LM, saes: dict[int, SAE], cache_dir: str | Path | None, max_length: int,
               keep_residuals: bool = False) -> CodeCache:
    """The code cache of `saes` on `lm` (QSCOPE_HOME/codes by default), optionally fed by a residual store."""
    store = ResidualStore(lm, sorted(saes), None, max_length) if keep_residuals else None
    return CodeCache(lm, saes, cache_dir, max_length=max_length, residuals=store)


def _encoding(progress: Progress | None, stage: str, total: int) -> Callable[[int], None] | None:
    return (lambda n: progress(stage, n, total)) if progress else None


# ------------------------------------------------------------------------- discover
@dataclass(frozen=True)
class DiscoveryConfig:
    k: int = 5  # features ORed together (top K by delta)
    multi: int = 0  # >0: instead OR the best feature of the top-m layers
    layer: int | None = None  # this layer instead of the top1-diff choice
    max_length: int = 128  # tokens per text
    cache_dir: str | None = None  # code cache (default QSCOPE_HOME/codes)
    model: str = "default"  # the sources recorded in the classifier, so that it can be reloaded
    sae: str = "default"


def run_discovery(lm: LM, saes: dict[int, SAE], task: Task, config: DiscoveryConfig | None = None,
                  progress: Progress | None = None) -> FeatureClassifier:
    """The OR classifier whose features' example-level firing best separates the task's
    discovery positives from its negatives (codes cached, so reruns need no forward)."""
    config = config or DiscoveryConfig()
    cache = code_cache(lm, saes, config.cache_dir, config.max_length)
    stage = "encoding discovery texts"
    codes = cache.codes(task.discovery.texts,
                        progress=_encoding(progress, stage, len(cache.missing(task.discovery.texts))))
    y = task.discovery.labels
    meta = {"model": config.model, "sae": config.sae, "task": task.name, "max_length": config.max_length,
            "n_discovery": len(y)}
    if config.multi:
        return multi_layer(codes, y, config.multi, meta)
    if config.layer is not None and config.layer not in saes:
        raise QScopeError(f"layer {config.layer} is not among the loaded layers {sorted(saes)}")
    chosen = config.layer if config.layer is not None else choose_layer(codes, y)
    return discover(codes, y, chosen, config.k,
                    dict(meta, top1_diff={str(l): f.delta for l, f in top1_diff(codes, y).items()}))


# ------------------------------------------------------------------------- label texts
@dataclass(frozen=True)
class ClassifyConfig:
    max_length: int | None = None  # tokens per text (default: the classifier's own)


@dataclass
class TextLabel:
    text: str
    label: bool
    fired: list[list[int]]  # [layer, feature] of each selected feature that fired


@dataclass
class ClassifyResult:
    labels: list[TextLabel]

    def to_dict(self) -> dict:
        return {"labels": [asdict(t) for t in self.labels]}


def run_classify(lm: LM, saes: dict[int, SAE], classifier: FeatureClassifier, texts: Sequence[str],
                 config: ClassifyConfig | None = None) -> ClassifyResult:
    """Label each text with the classifier, naming the features that fired."""
    config = config or ClassifyConfig()
    if not texts:
        raise QScopeError("no texts to classify")
    max_length = config.max_length or classifier.meta.get("max_length", 128)
    fired = classifier.fired(encode_examples(lm, saes, list(texts), max_length))
    return ClassifyResult([TextLabel(t, bool(f.any()), [[c.layer, c.feature] for c, on in zip(classifier.features, f)
                                                       if on]) for t, f in zip(texts, fired)])


# ------------------------------------------------------------------------- evaluate on tasks
@dataclass(frozen=True)
class ClassifyEvalConfig:
    ks: tuple[int, ...] = KS  # K values (features ORed)
    seeds: int = 5  # repeats per data fraction of the efficiency curve
    max_length: int = 128
    cache_dir: str | None = None
    keep_residuals: bool = False  # also cache per-token residuals (other SAEs then need no forward)


@dataclass
class ClassifyEvalResult:
    reports: list[TaskReport]
    data: dict[str, dict] = field(default_factory=dict)  # task -> how its splits were built

    @staticmethod
    def _summary(report: TaskReport) -> dict:
        return {"chosen_layer": report.chosen_layer, "chosen_k": report.chosen_k,
                "top1_diff": {str(l): v["delta"] for l, v in report.top1_diff.items()}, **report.headline()}

    def to_dict(self) -> dict:
        return {r.task: self._summary(r) for r in self.reports}


def run_classify_eval(lm: LM, saes: dict[int, SAE], tasks: Sequence[Task], config: ClassifyEvalConfig | None = None,
                      progress: Progress | None = None) -> ClassifyEvalResult:
    """Feature classifiers per layer x K on each task's test splits, the top1-diff choice,
    multi-layer ORs, logistic probes and the data-efficiency curve (`classify.evaluate`)."""
    config = config or ClassifyEvalConfig()
    cache = code_cache(lm, saes, config.cache_dir, config.max_length, config.keep_residuals)
    result = ClassifyEvalResult([])
    for t in tasks:
        stage = f"{t.name}: encoding"
        result.reports.append(evaluate_task(
            t, cache, ks=config.ks, seeds=config.seeds,
            encoded=_encoding(progress, stage, len(cache.missing(t.all_texts()))),
            progress=(lambda what, name=t.name: progress(f"{name}: {what}", 0, 0)) if progress else None))
        result.data[t.name] = t.to_dict()
    return result


def write_classify_eval(result: ClassifyEvalResult, out: str | Path, provenance: dict | None = None) -> list[Path]:
    """`<task>.json` (the full report and its data), `summary.json` and `efficiency.png` in `out`."""
    out = Path(out)
    paths = []
    for rep in result.reports:
        paths.append(out / f"{rep.task}.json")
        write_json(paths[-1], dict(rep.to_dict(), data=result.data[rep.task]), provenance=provenance)
    paths.append(out / "summary.json")
    write_json(paths[-1], result.to_dict(), provenance=provenance)
    paths.append(out / "efficiency.png")
    plot_efficiency(result.reports, paths[-1], provenance=provenance)
    return paths


# ------------------------------------------------------------------------- a large corpus
@dataclass(frozen=True)
class CorpusConfig:
    batch_size: int = 16  # texts per forward
    max_length: int | None = None  # default: the classifier's own
    keep_text: bool = False  # copy each text into its output line
    limit: int | None = None  # stop after this many texts
    ray: bool = False  # a Ray Data actor pool (not resumable) instead of streaming in this process
    actors: int = 2  # Ray actors, each holding a model + SAEs


def run_corpus(load: Loader, classifier: FeatureClassifier, texts: Iterable[str], out: str | Path,
               config: CorpusConfig | None = None, progress: Callable[[int], None] | None = None) -> CorpusResult:
    """Classify `texts` into JSONL `out`; streaming resumes where a killed run stopped. `load()`
    gives (lm, {layer: SAE}) - called here, or once per Ray actor (then it must pickle)."""
    config = config or CorpusConfig()
    max_length = config.max_length or classifier.meta.get("max_length", 128)
    common = dict(batch_size=config.batch_size, max_length=max_length, keep_text=config.keep_text,
                  progress=progress, limit=config.limit)
    if config.ray:
        return classify_ray(load, classifier, texts, out, actors=config.actors, **common)
    lm, saes = load()
    return classify_stream(lm, saes, classifier, texts, out, **common)
