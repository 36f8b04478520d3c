"""Application 2: what benchmarks test, how redundant they are, how they overlap.

One entry point per job, each with a config and a result that has `to_dict()`:
`run_footprint` (FootprintConfig -> FootprintResult), `run_redundancy` (RedundancyConfig ->
RedundancyResult), `run_overlap` (OverlapConfig -> OverlapResult), `run_rank` (RankConfig ->
RankResult) and `run_accuracy` (AccuracyConfig -> AccuracyResult).
"""

from .accuracy import AccuracyConfig, AccuracyResult, load_accuracy, run_accuracy
from .footprint import Footprint, FootprintConfig, FootprintResult, load_footprints, run_footprint, save_footprints
from .overlap import OverlapConfig, OverlapResult, RankConfig, RankResult, run_overlap, run_rank
from .redundancy import RedundancyConfig, RedundancyResult, run_redundancy

__all__ = ["AccuracyConfig", "AccuracyResult", "load_accuracy", "run_accuracy",
           "Footprint", "FootprintConfig", "FootprintResult", "load_footprints", "run_footprint", "save_footprints",
           "OverlapConfig", "OverlapResult", "RankConfig", "RankResult", "run_overlap", "run_rank",
           "RedundancyConfig", "RedundancyResult", "run_redundancy"]
