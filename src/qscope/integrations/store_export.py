"""What every feature-store export shares: which features it covers and reading their dashboards
in batches, so each exporter only maps a dashboard to its tool's format."""

from __future__ import annotations

from typing import Iterator, Sequence

from ..errors import QScopeError
from ..features.store import FeatureStore
from ..features.store.results import FeatureDashboard


def exported_features(store: FeatureStore, features: Sequence[int] | None = None) -> list[int]:
    """The features asked for, else every feature that fired at least once; an export of nothing is an error."""
    if features:
        return [store._check_feature(f) for f in features]
    ids = [f for (f,) in store.conn.execute("SELECT feature FROM feature_stats WHERE fires > 0 ORDER BY feature")]
    if not ids:
        raise QScopeError(f"{store.path}: no feature has fired yet; nothing to export")
    return ids


def dashboard_batches(store: FeatureStore, ids: Sequence[int], batch_size: int) -> Iterator[list[FeatureDashboard]]:
    """The dashboards of `ids`, `batch_size` at a time (an export never holds the whole store in memory)."""
    for start in range(0, len(ids), batch_size):
        yield [store.dashboard(f) for f in ids[start:start + batch_size]]
