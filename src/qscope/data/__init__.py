"""Text for qscope: readers for any text source, built-in offline corpora, the default training mix,
benchmark items and their graders (`benchmarks`, `graders`), offline language detection (`language`)."""

from .corpora import CORPORA, list_corpora, pull_corpus
from .mix import MIX_WEIGHTS, export_mix, held_out_texts, training_mix
from .sources import iter_texts, load_texts, texts_by_language

__all__ = [
    "CORPORA",
    "MIX_WEIGHTS",
    "export_mix",
    "held_out_texts",
    "iter_texts",
    "list_corpora",
    "load_texts",
    "pull_corpus",
    "texts_by_language",
    "training_mix",
]
