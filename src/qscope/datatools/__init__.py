"""Application 3: data tools - feature classifiers and feature-driven data synthesis.

One entry point per job, each with a config and a result that has `to_dict()`:
`run_discovery` (DiscoveryConfig -> FeatureClassifier), `run_classify` (ClassifyConfig ->
ClassifyResult), `run_classify_eval` (ClassifyEvalConfig -> ClassifyEvalResult), `run_corpus`
(CorpusConfig -> CorpusResult), `run_coverage` (CoverageConfig -> Coverage) and `run_synthesis`
(SynthConfig -> SynthResult).
"""

from .classify import FeatureClassifier
from .classify_runs import (ClassifyConfig, ClassifyEvalConfig, ClassifyEvalResult, ClassifyResult, CorpusConfig,
                            DiscoveryConfig, run_classify, run_classify_eval, run_corpus, run_discovery)
from .scale import CorpusResult
from .synth import Coverage
from .synth_runs import CoverageConfig, SynthConfig, SynthResult, run_coverage, run_synthesis

__all__ = ["FeatureClassifier", "ClassifyConfig", "ClassifyEvalConfig", "ClassifyEvalResult", "ClassifyResult",
           "CorpusConfig", "DiscoveryConfig", "run_classify", "run_classify_eval", "run_corpus", "run_discovery",
           "CorpusResult", "Coverage", "CoverageConfig", "SynthConfig", "SynthResult", "run_coverage", "run_synthesis"]
