"""The feature store: every feature's dashboard for one model + SAE + layer, in one SQLite file.

Why SQLite: one self-contained file that any tool can open, queried without loading the model,
readable while a build is still writing (WAL mode), and one transaction per checkpoint, so a
killed build never leaves a half-counted store: it resumes from the last committed text.

What a dashboard holds (the parts sae_vis / SAEDashboard / Neuronpedia show): firing count and
density, max / mean activation, a log-binned activation histogram, the top-N contexts by max
activation (at most one per text, so the list is not twenty neighbouring tokens of one text),
samples from several activation intervals, the tokens the decoder direction promotes and
suppresses, explanations, and an automatic label per feature (`labels`) for the lists to show
until an explanation replaces it. Position 0 of every text is skipped, as in `FeatureStats`:
attention-sink tokens carry "register" features that say nothing about the text.

Modules by job: `layout` (the file and where it lives), `builder` (+ `accumulate`, its in-memory
state) writes a store, `reader` reads it (`results`: what reading returns), `auto_labels` serves both.
"""

from .builder import build_store
from .layout import default_store_path, find_store
from .reader import FeatureStore

__all__ = ["FeatureStore", "build_store", "default_store_path", "find_store"]
