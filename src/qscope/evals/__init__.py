"""Application 2: what benchmarks test, how redundant they are, how they overlap."""
