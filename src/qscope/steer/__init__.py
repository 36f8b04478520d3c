"""Application 1: steer generation with SAE feature directions."""

from .steering import FeatureEdit, Steering

__all__ = ["FeatureEdit", "Steering"]
